/**
 * The resource-lease service of one host in one lockspace (LockService, docs/leases.md).
 *
 * Every operation on a resource runs under a per-resource mutex, so this host never races itself
 * on its own ballot block. Waiting acquires queue FIFO per resource on this host; the head of the
 * queue polls the lease area every `pollIntervalMs` and, while blocked by another host, publishes
 * a wait ticket in its ballot block (fair queue across hosts). Each held lease has an explicit
 * state (held-lease.ts) changed only by `transitionLease`.
 *
 * Fencing: when the heartbeat store reports this host fenced (or left), the write gate closes,
 * every held lease is dropped from memory WITHOUT writing the lockspace (our delta lease is no
 * longer trusted: others will take the leases over once we are dead to them), waiters fail with
 * FENCED and 'lost' events go out. `fenceAndReleaseAll` is the orderly variant asked for by RPC.
 */
import type { BlockDevice } from '../disk/block-device.js';
import type { Clock, Random } from '../clock.js';
import { TandemError, isTandemError } from '../errors.js';
import type { Logger } from '../log.js';
import type { HostInstance, LivenessSource, LocalEvent } from '../heartbeat-store/types.js';
import {
  type HeldLease,
  KeyedMutex,
  type ManagerState,
  checkManagerTransition,
} from './held-lease.js';
import { HeldLeases, type Step, type Waiter, newWaiter } from './held-leases.js';
import {
  attemptAcquire,
  checkMode,
  checkValue,
  describeLease,
  setWaitTicket,
  waitTicket,
} from './lock-attempt.js';
import { type LeaseContext, PaxosLease, checkLeaderName, leaderOwner } from './paxos-lease.js';
import { OrphanSweeper } from './orphan-sweeper.js';
import { ResourceDirectory, checkResourceName } from './resource-directory.js';
import {
  type AcquireOptions,
  type LockEvent,
  type LockInfo,
  type LockMode,
  type LockService,
} from './types.js';
import { type GateCloseResult, WriteGate } from './write-gate.js';

/** How often a waiter looks at the lease area again (docs/leases.md, "Fair queue"). */
export const pollIntervalMs = 10;
/** Waiting acquires queued on one resource on this host. */
export const waitersPerResourceMax = 64;
/** A host defers to an older waiter on another host for up to this many ioTimeouts. */
export const deferIoTimeouts = 2;

export interface LockManagerDeps {
  /** The lockspace device (lease writes do NOT pass the write gate: releases must work). */
  readonly device: BlockDevice;
  readonly liveness: LivenessSource;
  readonly clock: Clock;
  readonly random: Random;
  readonly logger: Logger;
  /** The host name of a host id, from the heartbeat store ('' when unknown). */
  readonly hostNameOf?: (hostId: number) => string;
}

export interface FenceResult extends GateCloseResult {
  readonly released: number;
  readonly releaseFailed: number;
}

export class LockManager implements LockService {
  readonly gate: WriteGate;
  private state: ManagerState = 'open';
  private stateReason = '';
  private readonly holdings: HeldLeases;
  private readonly leases: Map<string, HeldLease>;
  private readonly queues = new Map<string, Waiter[]>();
  private readonly mutex = new KeyedMutex();
  /** Aborted when fenced: wakes and fails every waiter. */
  private readonly stopController = new AbortController();
  private readonly context: LeaseContext;
  private readonly directory: ResourceDirectory;
  private readonly sweeper: OrphanSweeper;
  private readonly logger: Logger;
  private readonly unsubscribe: () => void;

  constructor(private readonly deps: LockManagerDeps) {
    const { liveness, clock } = deps;
    this.logger = deps.logger.child({ component: 'lock-manager' });
    this.gate = new WriteGate({
      clock,
      fenceDrainMs: liveness.timings.fenceDrainMs,
      logger: this.logger,
      writesAllowed: liveness.writesAllowed?.bind(liveness),
    });
    this.context = {
      device: deps.device,
      layout: liveness.layout,
      timings: liveness.timings,
      clock,
      random: deps.random,
      logger: this.logger,
      liveness,
      self: () => liveness.localInstance(),
      checkWritable: () => this.checkWritable(),
      onUncertain: (areaIndex, reason) => this.sweeper.schedule(areaIndex, reason),
    };
    this.directory = new ResourceDirectory(this.context);
    this.holdings = new HeldLeases({
      context: this.context,
      logger: this.logger,
      hostNameOf: deps.hostNameOf,
      managerState: () => ({ open: this.state === 'open', reason: this.stateReason }),
    });
    this.leases = this.holdings.leases;
    this.sweeper = new OrphanSweeper({
      context: this.context,
      logger: this.logger,
      mutex: this.mutex,
      stopSignal: this.stopController.signal,
      leases: this.leases,
      directory: this.directory,
    });
    this.unsubscribe = liveness.onLocalState((event) => this.onLocalState(event));
  }

  async acquire(name: string, options: AcquireOptions): Promise<LockInfo> {
    this.enter();
    checkResourceName(name);
    checkMode(options.mode);
    checkValue(options.value, options.mode);
    const waitMs = options.waitMs ?? 0;
    if (!Number.isFinite(waitMs) || waitMs < 0) {
      throw new TandemError('INVALID_ARGUMENT', `waitMs must be >= 0, not ${waitMs}`);
    }
    options.signal?.throwIfAborted();
    return this.directory.withArea(name, true, async (areaIndex) => {
      if (waitMs > 0) return this.acquireWaiting(name, areaIndex, options, waitMs);
      if (this.leases.has(name) || (this.queues.get(name)?.length ?? 0) > 0) {
        throw new TandemError('LOCK_HELD', `${name}: held or awaited by this host`);
      }
      const step = await this.mutex.run(name, () =>
        this.acquireOnce(name, areaIndex, options, undefined),
      );
      if (step.kind === 'conflict') {
        throw new TandemError('LOCK_HELD', `${name}: ${step.reason}`, {
          details: { cause: step.cause },
        });
      }
      return step.info;
    });
  }

  async release(name: string, options: { value?: Buffer } = {}): Promise<void> {
    this.enter();
    const held = this.requireHeld(name);
    checkValue(options.value, held.mode);
    await this.mutex.run(name, () =>
      this.holdings.releaseHeld(held, options.value, 'released', undefined),
    );
  }

  /** Releases a lease because a peer asked (gRPC Locks.RequestRelease); emits 'lost'. */
  async requestRelease(name: string): Promise<void> {
    this.enter();
    const held = this.requireHeld(name);
    await this.mutex.run(name, () =>
      this.holdings.releaseHeld(held, undefined, 'lost', 'asked to release'),
    );
  }

  async convert(
    name: string,
    mode: LockMode,
    options: { waitMs?: number; signal?: AbortSignal } = {},
  ): Promise<LockInfo> {
    this.enter();
    checkMode(mode);
    const held = this.requireHeld(name);
    if (held.mode === mode) return this.holdings.heldInfo(held, []);
    if (mode === 'sh') return this.mutex.run(name, () => this.holdings.convertToShared(held));
    const waitMs = options.waitMs ?? 0;
    const waiter = newWaiter();
    const step = () =>
      this.mutex.run(name, () =>
        this.holdings.convertToExclusiveOnce(held, waiter, this.deferExpired(waiter)),
      );
    if (waitMs <= 0) {
      const result = await step();
      if (result.kind === 'acquired') return result.info;
      throw new TandemError('LOCK_HELD', `${name}: ${result.reason}`, {
        details: { cause: result.cause },
      });
    }
    try {
      return await this.waitLoop(name, held.areaIndex, waitMs, options.signal, waiter, step);
    } finally {
      await this.clearTicket(name, held.areaIndex, waiter);
    }
  }

  async setValue(name: string, value: Buffer): Promise<LockInfo> {
    this.enter();
    const held = this.requireHeld(name);
    if (held.mode !== 'ex') {
      throw new TandemError(
        'LOCK_NOT_HELD',
        `${name}: the value needs the lease held exclusive here`,
      );
    }
    checkValue(value, 'ex');
    return this.mutex.run(name, () => this.holdings.writeValue(held, value));
  }

  async inspect(name: string): Promise<LockInfo> {
    this.enter();
    checkResourceName(name);
    return this.directory.withArea(name, false, (areaIndex) => this.describeArea(name, areaIndex));
  }

  async list(): Promise<LockInfo[]> {
    this.enter();
    const entries = await this.directory.entries();
    const infos: LockInfo[] = [];
    for (const entry of entries) infos.push(await this.describeArea(entry.name, entry.areaIndex));
    return infos;
  }

  held(): LockInfo[] {
    return [...this.leases.values()].map((held) => this.holdings.heldInfo(held, []));
  }

  watch(listener: (event: LockEvent) => void): () => void {
    return this.holdings.watch(listener);
  }

  /**
   * Fencing on request (gRPC Hosts.Fence): closes the gate and waits for it to drain, then
   * releases every lease on disk (best effort; one that fails is still dropped from memory).
   */
  async fenceAndReleaseAll(reason: string): Promise<FenceResult> {
    if (this.state !== 'open') {
      const gateResult = await this.gate.close(reason);
      return { ...gateResult, released: 0, releaseFailed: 0 };
    }
    this.setState('fencing', reason);
    this.stopController.abort(new TandemError('FENCED', `fenced on request: ${reason}`));
    const gateResult = await this.gate.close(reason);
    let released = 0;
    let releaseFailed = 0;
    for (const held of [...this.leases.values()]) {
      try {
        await this.mutex.run(held.name, () =>
          this.holdings.releaseHeld(held, undefined, 'lost', `fenced on request: ${reason}`),
        );
        released += 1;
      } catch (error) {
        releaseFailed += 1;
        this.logger.warn('fence: could not release a lease on disk', { name: held.name, error });
        this.holdings.dropLost(held, `fenced on request: ${reason}`);
      }
    }
    // A liveness fence may have moved us to 'fenced' while the releases ran.
    if (this.currentState() === 'fencing') this.setState('fenced', reason);
    return { ...gateResult, released, releaseFailed };
  }

  /**
   * Stops the manager: no more heartbeat-store events, waiters fail, later calls fail. Writes
   * nothing: leases still held stay on disk until released before leaving, or until our
   * instance is dead to the others.
   */
  async close(): Promise<void> {
    this.unsubscribe();
    if (this.state !== 'closed') this.setState('closed', 'closed');
    this.stopController.abort(
      new TandemError('LOCKSPACE_NOT_JOINED', 'the lock manager is closed'),
    );
  }

  // --- acquiring -------------------------------------------------------------------------------

  private async acquireWaiting(
    name: string,
    areaIndex: number,
    options: AcquireOptions,
    waitMs: number,
  ): Promise<LockInfo> {
    const queue = this.queues.get(name) ?? [];
    if (queue.length >= waitersPerResourceMax) {
      throw new TandemError(
        'LOCK_CONTENDED',
        `${name}: ${queue.length} waiters already queued here`,
      );
    }
    this.queues.set(name, queue);
    const waiter = newWaiter();
    queue.push(waiter);
    try {
      return await this.waitLoop(name, areaIndex, waitMs, options.signal, waiter, async () => {
        // Local FIFO: only the head of the queue, with the lease not held here, tries the disk.
        if (queue[0] !== waiter || this.leases.has(name)) {
          return {
            kind: 'conflict',
            cause: 'local',
            reason: 'queued behind this host',
            version: 0,
          };
        }
        // Blocked by a live owner: one leader block per poll, not the whole area.
        if (await this.stillHeldByOwner(areaIndex, waiter)) {
          return { kind: 'conflict', cause: 'owner', reason: 'still held', version: 0 };
        }
        return this.mutex.run(name, () => this.acquireOnce(name, areaIndex, options, waiter));
      });
    } finally {
      queue.splice(queue.indexOf(waiter), 1);
      if (queue.length === 0 && this.queues.get(name) === queue) this.queues.delete(name);
      await this.clearTicket(name, areaIndex, waiter);
    }
  }

  /** Polls `step` until it acquires, the deadline passes, or the signal or a fence aborts. */
  private async waitLoop(
    name: string,
    areaIndex: number,
    waitMs: number,
    userSignal: AbortSignal | undefined,
    waiter: Waiter,
    step: () => Promise<Step>,
  ): Promise<LockInfo> {
    const signal =
      userSignal === undefined
        ? this.stopController.signal
        : AbortSignal.any([userSignal, this.stopController.signal]);
    const deadlineMs = this.deps.clock.nowMs() + waitMs;
    // While we wait, a leader naming us or our ticket is ours to adopt or clear, not an orphan.
    return this.sweeper.withLocalWaiter(name, async () => {
      for (;;) {
        signal.throwIfAborted();
        const result = await step().catch((error: unknown) => {
          // A lockspace move refuses lease writes for the second or so its copy takes (its
          // ballot, if begun, is simply retried as after contention): a waiter waits it out.
          const moving = isTandemError(error, 'LOCKSPACE_MOVING');
          if (!moving || deadlineMs <= this.deps.clock.nowMs()) throw error;
          return undefined;
        });
        if (result === undefined) {
          const remainingMs = deadlineMs - this.deps.clock.nowMs();
          await this.deps.clock.sleep(Math.min(pollIntervalMs, remainingMs), signal);
          continue;
        }
        if (result.kind === 'acquired') return result.info;
        if (result.cause !== 'local') await this.noteConflict(name, areaIndex, waiter, result);
        const remainingMs = deadlineMs - this.deps.clock.nowMs();
        if (remainingMs <= 0) {
          throw new TandemError(
            'LOCK_TIMEOUT',
            `${name}: not granted within ${waitMs} ms (${result.reason})`,
          );
        }
        await this.deps.clock.sleep(Math.min(pollIntervalMs, remainingMs), signal);
      }
    });
  }

  /** A waiter blocked by another host publishes its ticket and tracks how long it deferred. */
  private async noteConflict(
    name: string,
    areaIndex: number,
    waiter: Waiter,
    result: Extract<Step, { kind: 'conflict' }>,
  ): Promise<void> {
    if (result.cause === 'waiter') waiter.deferSinceMs ??= this.deps.clock.nowMs();
    else waiter.deferSinceMs = undefined;
    if (result.version !== 0)
      waiter.blockedVersion = result.cause === 'owner' ? result.version : undefined;
    if (waiter.ticket !== undefined) return;
    const ticket = waitTicket(result.version, this.context.self().hostId);
    await this.mutex.run(name, () =>
      setWaitTicket(this.context, new PaxosLease(this.context, areaIndex), ticket),
    );
    waiter.ticket = ticket;
  }

  private async clearTicket(name: string, areaIndex: number, waiter: Waiter): Promise<void> {
    if (waiter.ticket === undefined || this.state === 'fenced' || this.state === 'closed') return;
    try {
      await this.mutex.run(name, () =>
        setWaitTicket(this.context, new PaxosLease(this.context, areaIndex), 0),
      );
      waiter.ticket = undefined;
    } catch (error) {
      // A stale ticket only delays others by the defer limit, and dies with our instance.
      this.logger.warn('could not clear a wait ticket', { name, error });
    }
  }

  /** The leader still names the live owner (same version) that blocked this waiter. */
  private async stillHeldByOwner(areaIndex: number, waiter: Waiter): Promise<boolean> {
    if (waiter.blockedVersion === undefined) return false;
    const leader = await new PaxosLease(this.context, areaIndex).readLeader();
    const owner = leaderOwner(leader);
    return (
      owner !== undefined &&
      leader.leaseVersion === waiter.blockedVersion &&
      this.deps.liveness.ownerLiveness(owner) === 'alive'
    );
  }

  private deferExpired(waiter: Waiter | undefined): boolean {
    if (waiter?.deferSinceMs === undefined) return false;
    const deferMs = deferIoTimeouts * this.context.timings.ioTimeoutMs;
    return this.deps.clock.nowMs() - waiter.deferSinceMs >= deferMs;
  }

  /** One attempt, under the resource mutex. */
  private async acquireOnce(
    name: string,
    areaIndex: number,
    options: AcquireOptions,
    waiter: Waiter | undefined,
  ): Promise<Step> {
    if (this.leases.has(name)) {
      return { kind: 'conflict', cause: 'local', reason: 'held by this host', version: 0 };
    }
    const holder = this.enter();
    const lease = new PaxosLease(this.context, areaIndex);
    const result = await attemptAcquire(this.context, lease, {
      name,
      mode: options.mode,
      ownTicket: waiter?.ticket,
      deferExpired: this.deferExpired(waiter),
    });
    if (result.kind === 'conflict') return result;
    try {
      return {
        kind: 'acquired',
        info: await this.holdings.completeAcquire(name, lease, result, options, waiter, holder),
      };
    } catch (error) {
      await this.holdings.undoAcquire(lease, options.mode, result.leader.leaseVersion);
      throw error;
    }
  }

  // --- fencing and state -----------------------------------------------------------------------

  private onLocalState(event: LocalEvent): void {
    if (event.state === 'fenced') {
      this.dropAll(`fenced: ${event.reason ?? 'renewals failed'}`, 'FENCED');
    } else if (event.state === 'left') {
      this.dropAll('left the lockspace', 'LOCKSPACE_NOT_JOINED');
    }
  }

  /** Liveness fence: no lockspace write at all, just forget and tell. */
  private dropAll(reason: string, code: 'FENCED' | 'LOCKSPACE_NOT_JOINED'): void {
    if (this.state === 'fenced' || this.state === 'closed') return;
    this.setState('fenced', reason);
    this.stopController.abort(new TandemError(code, reason));
    void this.gate.close(reason);
    for (const held of [...this.leases.values()]) this.holdings.dropLost(held, reason);
  }

  private currentState(): ManagerState {
    return this.state;
  }

  private setState(to: ManagerState, reason: string): void {
    checkManagerTransition(this.state, to);
    this.logger.warn('lock manager state', { from: this.state, to, reason });
    this.state = to;
    this.stateReason = reason;
  }

  private enter(): HostInstance {
    if (this.state !== 'open') {
      const code = this.state === 'closed' ? 'LOCKSPACE_NOT_JOINED' : 'FENCED';
      throw new TandemError(code, `the lock manager is ${this.state} (${this.stateReason})`);
    }
    return this.deps.liveness.localInstance();
  }

  private checkWritable(): void {
    if (this.state === 'fenced' || this.state === 'closed') {
      throw new TandemError(
        'FENCED',
        `no lockspace writes when ${this.state} (${this.stateReason})`,
      );
    }
    this.deps.liveness.localInstance();
  }

  private requireHeld(name: string): HeldLease {
    checkResourceName(name);
    const held = this.leases.get(name);
    if (held === undefined)
      throw new TandemError('LOCK_NOT_HELD', `${name}: not held by this host`);
    return held;
  }

  // --- reading and reporting -------------------------------------------------------------------

  private async describeArea(name: string, areaIndex: number): Promise<LockInfo> {
    const snapshot = await new PaxosLease(this.context, areaIndex).readArea();
    checkLeaderName(snapshot.leader, name, `lease area ${areaIndex}`);
    this.sweeper.notice(name, areaIndex, snapshot);
    const heldHere = this.leases.get(name)?.mode;
    return describeLease(
      this.context,
      name,
      snapshot,
      heldHere,
      (hostId) => this.deps.hostNameOf?.(hostId) ?? '',
    );
  }
}
