/**
 * The leases this host holds: their registry, the events about them, and the disk operations on
 * a held lease (complete an acquire, convert, write the value, release). Every change of a held
 * lease goes through `transitionLease`; every operation runs under the manager's per-resource
 * mutex, which lock-manager.ts takes before calling in here.
 */
import { TandemError } from '../errors.js';
import type { Logger } from '../log.js';
import type { HostInstance } from '../heartbeat-store/types.js';
import { type HeldLease, createHeldLease, transitionLease } from './held-lease.js';
import {
  type AttemptResult,
  type ConflictCause,
  attemptAcquire,
  liveSharers,
  setSharedFlag,
  setWaitTicket,
} from './lock-attempt.js';
import { type LeaseContext, PaxosLease } from './paxos-lease.js';
import type {
  AcquireOptions,
  LockEvent,
  LockEventKind,
  LockInfo,
  LockMode,
  LockOwner,
} from './types.js';

/** A waiting acquire or convert of this host. */
export interface Waiter {
  /** Our published wait ticket, once written. */
  ticket: number | undefined;
  /** When we started deferring to an older waiter on another host. */
  deferSinceMs: number | undefined;
  /** The lease version a live owner held when it last blocked us (leader-only polls). */
  blockedVersion: number | undefined;
}

export function newWaiter(): Waiter {
  return { ticket: undefined, deferSinceMs: undefined, blockedVersion: undefined };
}

export type Step =
  | { readonly kind: 'acquired'; readonly info: LockInfo }
  | {
      readonly kind: 'conflict';
      readonly cause: ConflictCause | 'local';
      readonly reason: string;
      readonly version: number;
    };

export interface HeldLeasesDeps {
  readonly context: LeaseContext;
  readonly logger: Logger;
  readonly hostNameOf: ((hostId: number) => string) | undefined;
  /** Whether the manager still takes leases (not fencing, fenced or closed), and why not. */
  readonly managerState: () => { readonly open: boolean; readonly reason: string };
}

export class HeldLeases {
  readonly leases = new Map<string, HeldLease>();
  private readonly listeners = new Set<(event: LockEvent) => void>();

  constructor(private readonly deps: HeldLeasesDeps) {}

  watch(listener: (event: LockEvent) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Writes the value of a lease held exclusive here. */
  async writeValue(held: HeldLease, value: Buffer): Promise<LockInfo> {
    this.requireState(held, 'held');
    transitionLease(this.deps.logger, held, 'updating');
    const lease = new PaxosLease(this.deps.context, held.areaIndex);
    let written;
    try {
      written = await lease.writeValue(held.version, value);
    } catch (error) {
      if (held.state === 'updating') transitionLease(this.deps.logger, held, 'held');
      throw error;
    }
    this.requireNotLost(held);
    if (written === undefined) return this.loseTaken(held);
    transitionLease(this.deps.logger, held, 'held', { value, reason: 'value written' });
    this.emit('value', held, undefined);
    return this.heldInfo(held, []);
  }

  async completeAcquire(
    name: string,
    lease: PaxosLease,
    result: Extract<AttemptResult, { kind: 'acquired' }>,
    options: AcquireOptions,
    waiter: Waiter | undefined,
    holder: HostInstance,
  ): Promise<LockInfo> {
    let leader = result.leader;
    if (options.mode === 'ex' && waiter?.ticket !== undefined) {
      await setWaitTicket(this.deps.context, lease, 0);
    }
    // Served: the ticket is gone (cleared above, or with the shared flag).
    if (waiter !== undefined) waiter.ticket = undefined;
    if (options.value !== undefined) {
      const written = await lease.writeValue(leader.leaseVersion, options.value);
      if (written === undefined)
        throw new TandemError('LEASE_IO', `${name}: leader changed under us`);
      leader = written;
    }
    const state = this.deps.managerState();
    if (!state.open) {
      throw new TandemError('FENCED', `${name}: fenced while acquiring (${state.reason})`);
    }
    const held = createHeldLease(
      this.deps.logger,
      {
        name,
        areaIndex: lease.areaIndex,
        holder,
        mode: options.mode,
        version: leader.leaseVersion,
        value: Buffer.from(leader.value),
        sinceWallMs: options.mode === 'ex' ? leader.takenWallMs : this.deps.context.clock.wallMs(),
      },
      'acquired',
    );
    this.leases.set(name, held);
    this.emit('acquired', held, undefined);
    const others =
      options.mode === 'sh' ? liveSharers(this.deps.context, result.snapshot, holder.hostId) : [];
    return this.heldInfo(held, others);
  }

  /** Gives back what a failed acquire took on disk (best effort). */
  async undoAcquire(lease: PaxosLease, mode: LockMode, version: number): Promise<void> {
    try {
      if (mode === 'sh') await setSharedFlag(this.deps.context, lease, false);
      else await lease.releaseLeader(version);
    } catch (error) {
      this.deps.logger.warn('could not undo a failed acquire', { area: lease.areaIndex, error });
    }
  }

  async convertToShared(held: HeldLease): Promise<LockInfo> {
    this.requireState(held, 'held');
    transitionLease(this.deps.logger, held, 'converting');
    const lease = new PaxosLease(this.deps.context, held.areaIndex);
    try {
      // Flag first, then free the leader: never a moment with neither protecting the data.
      await setSharedFlag(this.deps.context, lease, true);
      const released = await lease.releaseLeader(held.version);
      if (released === 'not-ours')
        this.deps.logger.warn('convert to sh: leader no longer ours', { name: held.name });
    } catch (error) {
      if (held.state === 'converting') transitionLease(this.deps.logger, held, 'held');
      throw error;
    }
    this.requireNotLost(held);
    transitionLease(this.deps.logger, held, 'held', { mode: 'sh', reason: 'converted ex→sh' });
    this.emit('converted', held, undefined);
    return this.heldInfo(held, []);
  }

  async convertToExclusiveOnce(
    held: HeldLease,
    waiter: Waiter,
    deferExpired: boolean,
  ): Promise<Step> {
    this.requireState(held, 'held');
    if (held.mode === 'ex') return { kind: 'acquired', info: this.heldInfo(held, []) };
    transitionLease(this.deps.logger, held, 'converting');
    const lease = new PaxosLease(this.deps.context, held.areaIndex);
    try {
      const result = await attemptAcquire(this.deps.context, lease, {
        name: held.name,
        mode: 'ex',
        ownTicket: waiter.ticket,
        deferExpired,
      });
      if (result.kind === 'conflict') {
        this.requireNotLost(held);
        transitionLease(this.deps.logger, held, 'held', {
          reason: `convert blocked: ${result.reason}`,
        });
        return result;
      }
      await this.clearSharedAndTicket(lease, result.leader.leaseVersion);
      waiter.ticket = undefined;
      this.requireNotLost(held);
      transitionLease(this.deps.logger, held, 'held', {
        mode: 'ex',
        version: result.leader.leaseVersion,
        value: result.leader.value,
        reason: 'converted sh→ex',
      });
      this.emit('converted', held, undefined);
      return { kind: 'acquired', info: this.heldInfo(held, []) };
    } catch (error) {
      if (held.state === 'converting') transitionLease(this.deps.logger, held, 'held');
      throw error;
    }
  }

  /** After winning the leader for sh→ex: our shared flag and ticket go; on failure, the leader. */
  async clearSharedAndTicket(lease: PaxosLease, version: number): Promise<void> {
    try {
      await lease.updateOwnBallot((ballot) => ({
        ...ballot,
        modeFlags: 0,
        sharedGeneration: 0,
        waitTicket: 0,
        ticketGeneration: 0,
      }));
    } catch (error) {
      await lease.releaseLeader(version).catch(() => undefined);
      throw error;
    }
  }

  async releaseHeld(
    held: HeldLease,
    value: Buffer | undefined,
    kind: 'released' | 'lost',
    reason: string | undefined,
  ): Promise<void> {
    this.requireState(held, 'held');
    transitionLease(this.deps.logger, held, 'releasing', { reason });
    const lease = new PaxosLease(this.deps.context, held.areaIndex);
    let outcome: 'released' | 'not-ours' = 'released';
    try {
      if (held.mode === 'ex') outcome = await lease.releaseLeader(held.version, value);
      else await setSharedFlag(this.deps.context, lease, false);
    } catch (error) {
      // The lease is still ours on disk: keep it, so the caller may retry.
      if (held.state === 'releasing') transitionLease(this.deps.logger, held, 'held');
      throw error;
    }
    this.requireNotLost(held);
    if (outcome === 'not-ours') {
      this.loseTaken(held);
      return;
    }
    transitionLease(this.deps.logger, held, kind === 'released' ? 'released' : 'lost', { reason });
    this.leases.delete(held.name);
    this.emit(kind, held, reason);
  }

  dropLost(held: HeldLease, reason: string): void {
    if (held.state === 'lost' || held.state === 'released') return;
    transitionLease(this.deps.logger, held, 'lost', { reason });
    this.leases.delete(held.name);
    this.emit('lost', held, reason);
  }

  loseTaken(held: HeldLease): never {
    this.dropLost(held, 'the leader no longer names this host');
    throw new TandemError('LOCK_NOT_HELD', `${held.name}: the lease was taken over`);
  }

  requireState(held: HeldLease, state: 'held'): void {
    this.requireNotLost(held);
    if (held.state !== state) {
      throw new TandemError('LOCK_NOT_HELD', `${held.name}: lease is ${held.state}`);
    }
  }

  requireNotLost(held: HeldLease): void {
    if (held.state === 'lost' || held.state === 'released') {
      throw new TandemError(
        this.deps.managerState().open ? 'LOCK_NOT_HELD' : 'FENCED',
        `${held.name}: the lease was ${held.state} meanwhile`,
      );
    }
  }

  hostName(hostId: number): string {
    return this.deps.hostNameOf?.(hostId) ?? '';
  }

  heldInfo(held: HeldLease, otherSharers: readonly HostInstance[]): LockInfo {
    const holder: LockOwner = { ...held.holder, hostName: this.hostName(held.holder.hostId) };
    const others = otherSharers.map((instance) => ({
      ...instance,
      hostName: this.hostName(instance.hostId),
    }));
    return {
      name: held.name,
      mode: held.mode,
      owner: held.mode === 'ex' ? holder : undefined,
      sharedOwners: held.mode === 'sh' ? [holder, ...others] : [],
      version: held.version,
      value: Buffer.from(held.value),
      sinceWallMs: held.sinceWallMs,
      heldHere: held.mode,
    };
  }

  emit(kind: LockEventKind, held: HeldLease, reason: string | undefined): void {
    const event: LockEvent = {
      kind,
      name: held.name,
      mode: kind === 'released' || kind === 'lost' ? 'free' : held.mode,
      version: held.version,
      ...(reason === undefined ? {} : { reason }),
    };
    for (const listener of [...this.listeners]) {
      try {
        listener(event);
      } catch (error) {
        this.deps.logger.error('lock event listener failed', { error, kind });
      }
    }
  }
}
