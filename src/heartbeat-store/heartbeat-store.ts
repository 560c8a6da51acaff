/**
 * The heartbeat store of one lockspace on one host: it holds this host's delta lease (join,
 * renew every T/2, leave), fences itself when renewals stop succeeding, watches every other
 * host's slot (all slots in one read every T/4), probes peers over the network, and answers
 * the resource-lease layer's question "may this owner still hold leases?" (LivenessSource).
 *
 * Self-fencing (docs/leases.md): when no renewal that *started* in the last renewalFailMs (4T)
 * has succeeded, or a renewal read shows the slot is no longer ours, the local state becomes
 * `fenced` and this host never writes that slot again. The deadline is checked on every loop
 * tick, by a timer due at lastSuccessStart + 4T, and right before every slot write, so neither
 * a late timer nor an event-loop stall lets a write through after the deadline.
 *
 * Everything timed goes through the injected Clock, so a cluster runs in virtual time.
 */
import type { BlockDevice } from '../disk/block-device.js';
import type { Clock, Random } from '../clock.js';
import { TandemError, assert } from '../errors.js';
import type { Logger } from '../log.js';
import {
  DeltaLease,
  type LocalIdentity,
  type OwnSlot,
  type RenewOutcome,
  type SlotWritePurpose,
} from './delta-lease.js';
import { type LockspaceLayout, readLockspaceHeader } from './layout.js';
import { LocalStateMachine } from './local-state.js';
import { LockspaceObserver } from './lockspace-observer.js';
import { PublishQueue } from './publish-queue.js';
import {
  addressBytesMax,
  hostNameBytesMax,
  payloadBytesMax,
  textFieldProblem,
} from './slot-format.js';
import { SlotIo } from './slot-io.js';
import type { SlotMoveAck } from './slot-format.js';
import { type LeaseTimings, deriveTimings } from './timings.js';
import type {
  HostEvent,
  HostInstance,
  HostView,
  LivenessSource,
  LocalEvent,
  LocalState,
  PeerProber,
} from './types.js';

export interface HeartbeatStoreOptions {
  readonly hostName: string;
  /** The host id to join with; picked automatically when absent. */
  readonly hostId?: number;
  /** "host:port" of this host's gRPC API, published for peers ('' by default). */
  readonly address?: string;
}

export interface HeartbeatStoreDeps {
  readonly clock: Clock;
  readonly random: Random;
  readonly logger: Logger;
  readonly prober?: PeerProber;
  /** See DeltaLeaseDeps.beforeSlotWrite: the hook of a lockspace that can move. */
  readonly beforeSlotWrite?: (purpose: SlotWritePurpose) => Promise<SlotMoveAck>;
}

function invalid(message: string): TandemError {
  return new TandemError('INVALID_ARGUMENT', message);
}

function checkOptions(options: HeartbeatStoreOptions, layout: LockspaceLayout): void {
  if (options.hostName === '') throw invalid('host name must not be empty');
  const nameProblem = textFieldProblem(options.hostName, hostNameBytesMax);
  if (nameProblem !== undefined) throw invalid(`host name ${nameProblem}`);
  const addressProblem = textFieldProblem(options.address ?? '', addressBytesMax);
  if (addressProblem !== undefined) throw invalid(`address ${addressProblem}`);
  const hostId = options.hostId;
  if (
    hostId !== undefined &&
    (!Number.isInteger(hostId) || hostId < 1 || hostId > layout.maxHosts)
  ) {
    throw invalid(`host id must be an integer in 1..${layout.maxHosts}, not ${hostId}`);
  }
}

export class HeartbeatStore implements LivenessSource {
  private readonly io: SlotIo;
  private readonly lease: DeltaLease;
  private readonly observer: LockspaceObserver;
  private readonly logger: Logger;
  private readonly machine: LocalStateMachine;
  private readonly publishes = new PublishQueue();
  private readonly identity: LocalIdentity;
  private own: OwnSlot | undefined;
  private lastSuccessStartMs = 0;
  private fencedAtMs: number | undefined;
  private closed = false;
  /** Stops the renewal loop and the fence timer of the current join. */
  private renewing: AbortController | undefined;
  private renewalLoop: Promise<void> | undefined;
  private fenceTimer: AbortController | undefined;
  private joinAbort: AbortController | undefined;
  private wake: AbortController | undefined;
  private wakeRequested = false;

  private constructor(
    readonly layout: LockspaceLayout,
    readonly timings: LeaseTimings,
    options: HeartbeatStoreOptions,
    private readonly deps: HeartbeatStoreDeps,
    device: BlockDevice,
    private readonly requestedHostId: number | undefined,
  ) {
    const logger = deps.logger.child({
      lockspace: layout.name || layout.uuid,
      host: options.hostName,
    });
    this.identity = { hostName: options.hostName, address: options.address ?? '' };
    this.io = new SlotIo(device, layout, deps.clock);
    this.lease = new DeltaLease({
      io: this.io,
      timings,
      clock: deps.clock,
      random: deps.random,
      logger,
      beforeSlotWrite: deps.beforeSlotWrite,
    });
    this.logger = logger;
    this.machine = new LocalStateMachine(logger);
    this.observer = new LockspaceObserver(this.io, timings, deps.clock, logger, deps.prober, {
      tick: () => {
        this.checkRenewalDeadline();
      },
      self: () => (this.machine.renewing ? this.own : undefined),
      hostName: options.hostName,
    });
  }

  /** Opens the lockspace on `device` (reads and checks its header); does not join. */
  static async open(
    device: BlockDevice,
    options: HeartbeatStoreOptions,
    deps: HeartbeatStoreDeps,
  ): Promise<HeartbeatStore> {
    const layout = await readLockspaceHeader(device);
    checkOptions(options, layout);
    // The header's T, not our own configuration: every host of a lockspace uses the same timings.
    const timings = deriveTimings(layout.ioTimeoutMs);
    return new HeartbeatStore(layout, timings, options, deps, device, options.hostId);
  }

  private get now(): number {
    return this.deps.clock.nowMs();
  }

  // ---- Local lease lifecycle -------------------------------------------------------------

  /** Acquires a host id (docs/leases.md, "Delta lease"), then renews it until leave or fence. */
  async join(signal?: AbortSignal): Promise<HostInstance> {
    if (this.closed) throw new TandemError('FAILED_PRECONDITION', 'the heartbeat store is closed');
    const from = this.machine.state;
    if (from !== 'idle' && from !== 'fenced' && from !== 'left') {
      throw new TandemError('FAILED_PRECONDITION', `cannot join while ${from}`);
    }
    // A fenced instance's renewal loop is stopped; wait for it so that it never overlaps ours.
    await this.stopRenewing();
    this.machine.transition('joining', 'join requested');
    this.observer.start();
    this.joinAbort = new AbortController();
    const joinSignal =
      signal === undefined
        ? this.joinAbort.signal
        : AbortSignal.any([signal, this.joinAbort.signal]);
    const payloadVersion = this.publishes.version;
    let joined;
    try {
      joined = await this.lease.join({
        hostId: this.requestedHostId,
        identity: this.identity,
        payload: this.publishes.payload,
        signal: joinSignal,
      });
    } catch (error) {
      if (this.machine.state === 'joining')
        this.machine.transition('idle', `join failed: ${String(error)}`);
      throw error;
    } finally {
      this.joinAbort = undefined;
    }
    if (this.machine.state !== 'joining') {
      // fence() or close() came while the last read was in flight: we hold nothing.
      throw new TandemError('FENCED', 'fenced while joining');
    }
    this.own = joined.own;
    this.lastSuccessStartMs = joined.writeStartedMs;
    this.fencedAtMs = undefined;
    this.machine.transition(
      'joined',
      `host id ${joined.own.hostId} generation ${joined.own.generation}`,
    );
    this.publishes.written(payloadVersion);
    this.startRenewing(joined.own);
    const instance = { hostId: joined.own.hostId, generation: joined.own.generation };
    this.checkRenewalDeadline();
    this.observer.refresh();
    return instance;
  }

  /** Writes the slot with the left flag (after the caller released every lease), stops. */
  async leave(): Promise<void> {
    if (this.machine.state === 'joining')
      this.joinAbort?.abort(new TandemError('LOCKSPACE_NOT_JOINED', 'left while joining'));
    const own = this.own;
    if (!this.machine.renewing || own === undefined) {
      await this.stopEverything();
      return;
    }
    await this.stopRenewing();
    if (!this.machine.renewing) {
      // The fail time passed while the last renewal finished: fenced, and we may not write.
      await this.stopEverything();
      throw new TandemError('FENCED', 'fenced before the leave could be written');
    }
    const version = this.publishes.version;
    const outcome = await this.lease.leave(own, this.identity, this.publishes.payload, () =>
      this.mayWrite(own),
    );
    if (outcome.kind === 'renewed') {
      this.publishes.written(version);
      this.own = undefined;
      this.machine.transition('left', 'left cleanly');
      await this.stopEverything();
      return;
    }
    const reason =
      outcome.kind === 'lost' ? outcome.reason : `leave failed: ${String(outcome.error)}`;
    this.fenceNow(reason);
    await this.stopEverything();
    throw new TandemError('FENCED', reason, {
      cause: outcome.kind === 'failed' ? outcome.error : undefined,
    });
  }

  /** Stops every loop without writing (shutdown after leave, or a simulated crash). */
  async close(): Promise<void> {
    if (this.machine.state === 'joining')
      this.joinAbort?.abort(new TandemError('FAILED_PRECONDITION', 'closed'));
    // Without renewals our leases expire for others: the layers above must stop writing now.
    if (this.machine.renewing) this.fenceNow('the heartbeat store was closed without leaving');
    this.closed = true;
    await this.stopEverything();
  }

  /** Fences on request: stops renewing at once; this instance never writes its slot again. */
  fence(reason: string): void {
    if (this.machine.state === 'joining') {
      this.joinAbort?.abort(new TandemError('FENCED', `fenced on request: ${reason}`));
      this.machine.transition('fenced', `fenced on request while joining: ${reason}`);
      this.fencedAtMs = this.now;
      return;
    }
    if (this.machine.renewing) this.fenceNow(`fenced on request: ${reason}`);
  }

  /** When this host fenced itself (its monotonic clock), or undefined if it has not. */
  fencedAt(): number | undefined {
    return this.fencedAtMs;
  }

  localState(): LocalState {
    return this.machine.state;
  }

  localInstance(): HostInstance {
    if (this.machine.state === 'fenced') {
      throw new TandemError('FENCED', 'this host fenced itself; join again for a new generation');
    }
    const own = this.own;
    if (!this.machine.renewing || own === undefined) {
      throw new TandemError(
        'LOCKSPACE_NOT_JOINED',
        `this host has not joined (${this.machine.state})`,
      );
    }
    return { hostId: own.hostId, generation: own.generation };
  }

  onLocalState(listener: (event: LocalEvent) => void): () => void {
    return this.machine.onChange(listener);
  }

  /** Publishes `payload` (≤ 1 KiB) in our slot; resolves once a renewal has written it. */
  publish(payload: Buffer): Promise<void> {
    if (payload.length > payloadBytesMax) {
      return Promise.reject(
        invalid(`payload is ${payload.length} bytes, at most ${payloadBytesMax}`),
      );
    }
    const state = this.machine.state;
    if (this.closed || state === 'left') {
      return Promise.reject(
        new TandemError('LOCKSPACE_NOT_JOINED', `cannot publish while ${state}`),
      );
    }
    if (state === 'fenced')
      return Promise.reject(new TandemError('FENCED', 'cannot publish: fenced'));
    const written = this.publishes.publish(payload);
    if (this.machine.renewing) this.renewSoon();
    return written;
  }

  // ---- Liveness of others ----------------------------------------------------------------

  ownerLiveness(owner: HostInstance): 'alive' | 'dead' {
    const own = this.own;
    if (
      this.machine.renewing &&
      own?.hostId === owner.hostId &&
      own.generation === owner.generation
    ) {
      return 'alive';
    }
    return this.observer.monitor.ownerLiveness(owner, this.now);
  }

  /** Every non-free slot as this host last read it (our own instance shows as live). */
  hosts(): HostView[] {
    return this.observer.hosts();
  }

  watch(listener: (event: HostEvent) => void): () => void {
    return this.observer.watch(listener);
  }

  // ---- Renewal ---------------------------------------------------------------------------

  private startRenewing(own: OwnSlot): void {
    assert(this.renewing === undefined, 'one renewal loop at a time');
    const controller = new AbortController();
    this.renewing = controller;
    this.armFenceTimer();
    this.renewalLoop = this.runRenewals(own, controller.signal).catch((error: unknown) => {
      this.logger.error('renewal loop failed', { error });
      this.fenceNow(`renewal loop failed: ${String(error)}`);
    });
  }

  private async runRenewals(own: OwnSlot, stop: AbortSignal): Promise<void> {
    const { clock } = this.deps;
    let nextStartMs = clock.nowMs();
    while (!stop.aborted && this.machine.renewing && this.own === own) {
      if (!this.wakeRequested) {
        this.wake = new AbortController();
        const delayMs = Math.max(0, nextStartMs - clock.nowMs());
        await clock
          .sleep(delayMs, AbortSignal.any([stop, this.wake.signal]))
          .catch(() => undefined);
      }
      this.wakeRequested = false;
      if (stop.aborted || this.checkRenewalDeadline()) return;
      nextStartMs = clock.nowMs() + this.timings.renewalIntervalMs;
      const version = this.publishes.version;
      const outcome = await this.lease.renew(own, this.identity, this.publishes.payload, () =>
        this.mayWrite(own),
      );
      if (this.own !== own || !this.machine.renewing) return;
      this.afterRenewal(outcome, version);
    }
  }

  private afterRenewal(outcome: RenewOutcome, payloadVersion: number): void {
    // A success that comes after the deadline does not count: by then we had to be fenced.
    if (this.checkRenewalDeadline()) return;
    if (outcome.kind === 'renewed') {
      this.lastSuccessStartMs = Math.max(this.lastSuccessStartMs, outcome.startedMs);
      this.armFenceTimer();
      this.publishes.written(payloadVersion);
      if (this.machine.state === 'renewal-failing')
        this.machine.transition('joined', 'renewal succeeded');
      return;
    }
    if (outcome.kind === 'lost') {
      this.fenceNow(outcome.reason);
      return;
    }
    this.logger.warn('renewal failed', { error: outcome.error });
    if (this.machine.state === 'joined') {
      this.machine.transition('renewal-failing', `renewal failed: ${String(outcome.error)}`);
    }
  }

  /** The last check before a slot write: still ours, still renewing, deadline not passed. */
  private mayWrite(own: OwnSlot): boolean {
    return (
      this.own === own &&
      this.machine.renewing &&
      this.now - this.lastSuccessStartMs < this.timings.renewalFailMs
    );
  }

  writesAllowed(): boolean {
    if (this.checkRenewalDeadline()) return false;
    return this.machine.renewing && this.own !== undefined;
  }

  /** Fences when no renewal started within renewalFailMs has succeeded; true if fenced. */
  private checkRenewalDeadline(): boolean {
    if (!this.machine.renewing) return this.machine.state === 'fenced';
    const sinceMs = this.now - this.lastSuccessStartMs;
    if (sinceMs < this.timings.renewalFailMs) return false;
    this.fenceNow(`no renewal started in the last ${this.timings.renewalFailMs} ms succeeded`);
    return true;
  }

  private armFenceTimer(): void {
    this.fenceTimer?.abort();
    const controller = new AbortController();
    this.fenceTimer = controller;
    const dueMs = this.lastSuccessStartMs + this.timings.renewalFailMs;
    this.deps.clock.sleep(Math.max(0, dueMs - this.now), controller.signal).then(
      () => {
        if (this.fenceTimer === controller) this.checkRenewalDeadline();
      },
      () => undefined,
    );
  }

  private fenceNow(reason: string): void {
    if (!this.machine.renewing) return;
    this.fencedAtMs = this.now;
    this.machine.transition('fenced', reason);
    this.renewing?.abort();
    this.fenceTimer?.abort();
    this.publishes.rejectAll(new TandemError('FENCED', `fenced: ${reason}`));
  }

  /** Starts the next renewal now instead of at its time (a lockspace move waits for it). */
  renewSoon(): void {
    this.wakeRequested = true;
    this.wake?.abort();
  }

  private async stopRenewing(): Promise<void> {
    this.renewing?.abort();
    this.fenceTimer?.abort();
    await this.renewalLoop;
    this.renewing = undefined;
    this.renewalLoop = undefined;
  }

  private async stopEverything(): Promise<void> {
    await this.stopRenewing();
    await this.observer.stop();
    const state = this.machine.state;
    this.publishes.rejectAll(
      state === 'fenced'
        ? new TandemError('FENCED', 'fenced')
        : new TandemError('LOCKSPACE_NOT_JOINED', `the heartbeat store is ${state}`),
    );
  }
}
