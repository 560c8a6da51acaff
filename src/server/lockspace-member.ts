/**
 * This daemon as a member of its lockspace (`tandemd --lockspace PATH`): opens the device,
 * joins (a delta lease on a host id), runs the lock manager, and keeps the membership going.
 *
 * Lifecycle (every change is logged):
 *
 *   start: open device -> HeartbeatStore.open -> join (acquireSettleMs or longer; progress is
 *          logged every second) -> LockManager
 *   fenced (renewals failed past the fail time): every lease is lost and the write gate closed;
 *          after the host dead time, join again with a new generation and a new lock manager
 *          (the old gate never reopens), retrying with backoff up to rejoinAttemptsMax times
 *   fence(): on request (Hosts.Fence): close the gate, release every lease, leave; no rejoin
 *   stop():  release every held lease, leave, close the store and the device
 */
import { type Clock, type Random, systemClock, systemRandom } from '../clock.js';
import type { BlockDevice } from '../disk/block-device.js';
import { openFileDevice } from '../disk/file-device.js';
import { openNbdDevice, parseNbdUri } from '../disk/nbd-device.js';
import { TandemError, isTandemError } from '../errors.js';
import { HeartbeatStore } from '../heartbeat-store/index.js';
import { MovableLockspaceDevice } from '../heartbeat-store/movable-device.js';
import type { HostInstance, LocalEvent, LocalState } from '../heartbeat-store/types.js';
import { LockManager } from '../locking/index.js';
import type { LockEvent } from '../locking/types.js';
import type { Logger } from '../log.js';
import { GrpcPeerProber } from './peer-prober.js';

/** How often a running join logs that it is still running. */
export const joinProgressIntervalMs = 1_000;
/** Rejoins after a fence are tried this often before the daemon gives up (and says so). */
export const rejoinAttemptsMax = 10;
/** The backoff between rejoin attempts doubles up to this many host dead times. */
const rejoinBackoffDeadTimesMax = 8;

export const noLockspaceMessage =
  'this host joined no lockspace; start tandemd with --lockspace PATH';

export interface LockspaceMemberOptions {
  /**
   * A path to a file or block device, or an nbd://host:port/export URI; for a VG's lockspace,
   * the VG's name (the device comes from `openDevice` then).
   */
  readonly lockspace: string;
  /** Opens the lockspace device; by default `openLockspaceDevice(lockspace)`. */
  readonly openDevice?: () => Promise<BlockDevice>;
  readonly hostName: string;
  readonly hostId?: number;
  /** The gRPC address peers reach this host at, published in its slot. */
  readonly address: string;
  readonly logger: Logger;
  readonly clock?: Clock;
  readonly random?: Random;
  /**
   * Called when a fence left writes through the write gate still in flight after the drain time.
   * Nothing in user space cancels a write stuck in the kernel, so the daemon exits here: the role
   * sanlock gives the watchdog (docs/leases.md, "Self-fencing and the write gate").
   */
  readonly onWritesStuck?: (stuckWrites: number) => void;
}

export type MembershipState = LocalState | 'stopping' | 'stopped';

export interface MembershipInfo {
  readonly lockspace: string;
  readonly uuid: string;
  /** 0 while not joined. */
  readonly hostId: number;
  readonly generation: number;
  readonly state: MembershipState;
}

/** Opens the lockspace device named by a path or an nbd:// URI. */
export async function openLockspaceDevice(lockspace: string): Promise<BlockDevice> {
  try {
    if (/^nbd:/i.test(lockspace)) return await openNbdDevice(parseNbdUri(lockspace));
    return await openFileDevice(lockspace);
  } catch (error) {
    if (!isTandemError(error)) throw error;
    throw new TandemError(error.code, `cannot open the lockspace: ${error.message}`, {
      cause: error,
    });
  }
}

export class LockspaceMember {
  private manager: LockManager;
  private instance: HostInstance | undefined;
  private state: MembershipState = 'joined';
  private readonly stopController = new AbortController();
  private readonly lockListeners = new Set<(event: LockEvent) => void>();
  private unwatchManager: () => void = () => undefined;
  private readonly unwatchStore: () => void;
  private rejoining: Promise<void> | undefined;
  /** Fenced on request (the reason): stay out until tandemd restarts. */
  private fencedOnRequest: string | undefined;

  private constructor(
    private readonly options: LockspaceMemberOptions,
    private readonly device: BlockDevice,
    readonly store: HeartbeatStore,
    private readonly prober: GrpcPeerProber,
    instance: HostInstance,
  ) {
    this.instance = instance;
    this.manager = this.newLockManager();
    this.unwatchStore = store.onLocalState((event) => this.onLocalState(event));
  }

  /** Opens the device and joins; resolves once this host holds its host id. */
  static async start(options: LockspaceMemberOptions): Promise<LockspaceMember> {
    const logger = options.logger;
    logger.info('opening lockspace', { lockspace: options.lockspace });
    const device = await (options.openDevice ?? (() => openLockspaceDevice(options.lockspace)))();
    // A VG's lockspace can move (pv move): its device checks the move mark before slot writes.
    const movable = device instanceof MovableLockspaceDevice ? device : undefined;
    let prober: GrpcPeerProber | undefined;
    let store: HeartbeatStore | undefined;
    try {
      // The probe deadline is the lockspace's T, known once the header is read: start with the
      // production T and correct it right after open.
      prober = new GrpcPeerProber({ timeoutMs: 2_000, logger: logger.child({ part: 'prober' }) });
      store = await HeartbeatStore.open(
        device,
        { hostName: options.hostName, hostId: options.hostId, address: options.address },
        {
          clock: options.clock ?? systemClock,
          random: options.random ?? systemRandom,
          logger,
          prober,
          beforeSlotWrite:
            movable === undefined ? undefined : (purpose) => movable.beforeSlotWrite(purpose),
        },
      );
      const opened = store;
      movable?.setLiveness((owner) => opened.ownerLiveness(owner));
      prober.setTimeoutMs(store.timings.ioTimeoutMs);
      logger.info('lockspace opened', {
        uuid: store.layout.uuid,
        name: store.layout.name,
        maxHosts: store.layout.maxHosts,
        ioTimeoutMs: store.timings.ioTimeoutMs,
      });
      const instance = await joinWithProgress(store, logger, undefined);
      return new LockspaceMember(options, device, store, prober, instance);
    } catch (error) {
      await store?.close().catch(() => undefined);
      prober?.close();
      await device.close().catch(() => undefined);
      throw error;
    }
  }

  /** The lock manager of the current join; refuses while stopping or after Hosts.Fence. */
  locks(): LockManager {
    this.checkMember();
    return this.manager;
  }

  /** The heartbeat store, for host lists and the payload; refuses as locks() does. */
  hosts(): HeartbeatStore {
    this.checkMember();
    return this.store;
  }

  private checkMember(): void {
    if (this.state === 'stopping' || this.state === 'stopped') {
      throw new TandemError('LOCKSPACE_NOT_JOINED', 'tandemd is stopping: it left its lockspace');
    }
    if (this.fencedOnRequest !== undefined) {
      throw new TandemError(
        'LOCKSPACE_NOT_JOINED',
        `this host was fenced on request (${this.fencedOnRequest}) and left its lockspace; restart tandemd to join again`,
      );
    }
  }

  /** Aborts when the member stops: every lock wait ends then. */
  get stopSignal(): AbortSignal {
    return this.stopController.signal;
  }

  info(): MembershipInfo {
    const state =
      this.state === 'stopping' || this.state === 'stopped' ? this.state : this.store.localState();
    return {
      lockspace: this.options.lockspace,
      uuid: this.store.layout.uuid,
      hostId: this.instance?.hostId ?? 0,
      generation: this.instance?.generation ?? 0,
      state,
    };
  }

  /** Lock events of this host, across rejoins (each join has its own lock manager). */
  watchLocks(listener: (event: LockEvent) => void): () => void {
    this.lockListeners.add(listener);
    return () => this.lockListeners.delete(listener);
  }

  /** Hosts.Fence: close the gate, release every lease, leave. Stays out until a restart. */
  async fence(reason: string): Promise<void> {
    const logger = this.options.logger;
    if (this.fencedOnRequest !== undefined) return;
    this.fencedOnRequest = reason;
    const state = this.store.localState();
    logger.error('FENCING this host on request', { reason, state });
    await this.manager.fenceAndReleaseAll(reason);
    if (state !== 'left') await this.store.leave();
    this.instance = undefined;
    logger.error('fenced on request: every lease released, left the lockspace', { reason });
  }

  /** Clean stop: release every held lease, leave, close. */
  async stop(): Promise<void> {
    if (this.state === 'stopping' || this.state === 'stopped') return;
    const logger = this.options.logger;
    const localState = this.store.localState();
    const renewing = localState === 'joined' || localState === 'renewal-failing';
    this.state = 'stopping';
    this.stopController.abort(new TandemError('LOCKSPACE_NOT_JOINED', 'tandemd is stopping'));
    await this.rejoining?.catch(() => undefined);
    if (renewing) await this.releaseAll();
    try {
      // Also when not renewing: leave() then only stops the store's loops.
      await this.store.leave();
      if (renewing) logger.info('left the lockspace', { ...this.instance });
    } catch (error) {
      logger.warn('leaving the lockspace failed', { error });
    }
    this.unwatchManager();
    this.unwatchStore();
    await this.manager.close().catch((error: unknown) => {
      logger.warn('closing the lock manager failed', { error });
    });
    await this.store.close().catch((error: unknown) => {
      logger.warn('closing the heartbeat store failed', { error });
    });
    this.prober.close();
    await this.device.close().catch((error: unknown) => {
      logger.warn('closing the lockspace device failed', { error });
    });
    this.state = 'stopped';
  }

  private async releaseAll(): Promise<void> {
    const held = this.manager.held();
    for (const lock of held) {
      try {
        await this.manager.release(lock.name);
        this.options.logger.info('lock released on stop', { name: lock.name });
      } catch (error) {
        this.options.logger.warn('releasing a lock on stop failed', { name: lock.name, error });
      }
    }
  }

  private newLockManager(): LockManager {
    this.unwatchManager();
    const store = this.store;
    const manager = new LockManager({
      device: this.device,
      liveness: store,
      clock: this.options.clock ?? systemClock,
      random: this.options.random ?? systemRandom,
      logger: this.options.logger.child({ part: 'locks' }),
      hostNameOf: (hostId) => store.hosts().find((host) => host.hostId === hostId)?.hostName ?? '',
    });
    this.unwatchManager = manager.watch((event) => {
      for (const listener of this.lockListeners) listener(event);
    });
    return manager;
  }

  private onLocalState(event: LocalEvent): void {
    const logger = this.options.logger;
    const fields = { state: event.state, reason: event.reason, ...this.instance };
    if (event.state !== 'fenced') {
      // The heartbeat store logs every transition itself; this adds the host id.
      logger.debug('lockspace state', fields);
      return;
    }
    logger.error('FENCED: this host lost its lockspace lease; every lock is lost', fields);
    // The lock manager closed its gate on the same event; this is the same drain, awaited here.
    void this.manager.gate.close(event.reason ?? 'fenced').then((result) => {
      if (!result.drained) this.options.onWritesStuck?.(result.stuckWrites);
    });
    if (this.fencedOnRequest !== undefined || this.state === 'stopping' || this.state === 'stopped')
      return;
    this.instance = undefined;
    this.rejoining ??= this.rejoin(event.reason ?? 'fenced').finally(() => {
      this.rejoining = undefined;
    });
  }

  /** After a fence: wait the host dead time, then join again with backoff, bounded. */
  private async rejoin(reason: string): Promise<void> {
    const logger = this.options.logger;
    const clock = this.options.clock ?? systemClock;
    const deadMs = this.store.timings.hostDeadMs;
    const signal = this.stopController.signal;
    // The lock manager saw the fence too: it dropped every lease and closed its gate.
    logger.warn('every lock of this host is lost', { reason });
    let delayMs = deadMs;
    for (let attempt = 1; attempt <= rejoinAttemptsMax; attempt += 1) {
      logger.warn('rejoining the lockspace', { attempt, attemptsMax: rejoinAttemptsMax, delayMs });
      try {
        await clock.sleep(delayMs, signal);
        const instance = await joinWithProgress(this.store, logger, signal);
        if (this.fencedOnRequest !== undefined || signal.aborted) return;
        this.instance = instance;
        const fencedManager = this.manager;
        this.manager = this.newLockManager();
        await fencedManager.close();
        logger.warn('rejoined the lockspace', { attempt, ...instance });
        return;
      } catch (error) {
        if (signal.aborted || this.fencedOnRequest !== undefined) return;
        logger.error('rejoining the lockspace failed', { attempt, error });
        delayMs = Math.min(delayMs * 2, deadMs * rejoinBackoffDeadTimesMax);
      }
    }
    logger.error('gave up rejoining the lockspace: this host takes no locks until restarted', {
      attemptsMax: rejoinAttemptsMax,
    });
  }
}

/** Joins, logging progress every second (a join takes acquireSettleMs, or much longer). */
async function joinWithProgress(
  store: HeartbeatStore,
  logger: Logger,
  signal: AbortSignal | undefined,
): Promise<HostInstance> {
  const startedMs = performance.now();
  logger.info('joining the lockspace', {
    settleMs: store.timings.acquireSettleMs,
    hostDeadMs: store.timings.hostDeadMs,
  });
  const progress = setInterval(() => {
    logger.info('still joining the lockspace', {
      elapsedMs: Math.round(performance.now() - startedMs),
      state: store.localState(),
    });
  }, joinProgressIntervalMs);
  try {
    const instance = await store.join(signal);
    logger.info('joined the lockspace', {
      hostId: instance.hostId,
      generation: instance.generation,
      elapsedMs: Math.round(performance.now() - startedMs),
    });
    return instance;
  } catch (error) {
    if (isTandemError(error)) throw error;
    throw new TandemError('LOCKSPACE_NOT_JOINED', 'joining the lockspace failed', {
      cause: error,
    });
  } finally {
    clearInterval(progress);
  }
}
