/**
 * The delta lease on a host id (docs/leases.md, "Delta lease"): join, renew, leave.
 *
 * Join: read the slot; a held slot (not free, not left) must be watched for the host dead time
 * and must not change; write it with generation + 1; wait acquireSettleMs; read it again: if it
 * is not exactly what we wrote, a racing host overwrote it (HOST_ID_BUSY). The wait is longer
 * than a racer's read plus its bounded write, so of two racers at most one sees its own record.
 *
 * This file holds no timers of its own beyond those waits: heartbeat-store.ts drives renewals.
 */
import type { Clock, Random } from '../clock.js';
import { TandemError, assert } from '../errors.js';
import type { Logger } from '../log.js';
import type { LeaseTimings } from './timings.js';
import {
  type DecodedSlot,
  type HeldSlot,
  type HostSlotRecord,
  type SlotMoveAck,
  newJoinNonce,
  noMoveAck,
  encodeHostSlot,
  payloadOffset,
  sameLeaseRecord,
} from './slot-format.js';
import type { SlotIo, SlotObservation } from './slot-io.js';

/** Writes whose outcome we do not know, remembered to recognise our own slot (a named limit). */
export const uncertainWritesMax = 32;

/** Why a slot is written: a join may not begin or end during a lockspace move. */
export type SlotWritePurpose = 'join' | 'renew';

export interface LocalIdentity {
  readonly hostName: string;
  readonly address: string;
}

/**
 * The slot this host holds. On disk there is either the record we last wrote with success, or
 * one we wrote later whose outcome we do not know (failed or timed out: it may have landed).
 * Anything else means another host wrote our slot: we lost it.
 */
export class OwnSlot {
  private confirmed: Buffer;
  private uncertain: Buffer[] = [];

  constructor(
    readonly hostId: number,
    readonly generation: number,
    confirmedLeaseRecord: Buffer,
  ) {
    this.confirmed = confirmedLeaseRecord;
  }

  isOurs(slot: DecodedSlot): slot is HeldSlot {
    if (slot.kind !== 'held' || slot.left) return false;
    if (slot.leaseRecord.equals(this.confirmed)) return true;
    return this.uncertain.some((record) => slot.leaseRecord.equals(record));
  }

  noteWrite(leaseRecord: Buffer, succeeded: boolean): void {
    if (succeeded) {
      this.confirmed = leaseRecord;
      this.uncertain = [];
      return;
    }
    this.uncertain.push(leaseRecord);
    // Forgetting the oldest only makes "ours" stricter: at worst we fence, never steal.
    if (this.uncertain.length > uncertainWritesMax) this.uncertain.shift();
  }
}

export type RenewOutcome =
  | { readonly kind: 'renewed'; readonly startedMs: number }
  | { readonly kind: 'failed'; readonly startedMs: number; readonly error: unknown }
  | { readonly kind: 'lost'; readonly startedMs: number; readonly reason: string };

export interface DeltaLeaseDeps {
  readonly io: SlotIo;
  readonly timings: LeaseTimings;
  readonly clock: Clock;
  readonly random: Random;
  readonly logger: Logger;
  /**
   * Runs right before every slot write is prepared (a join's claim, renewal, leave), and once
   * more when a join's claim has settled, before the join counts; says where this host stands
   * in a move of the lockspace. It may switch the device to another copy first, and a rejection
   * fails that write, or that join (movable-device.ts). Absent: the lockspace never moves.
   */
  readonly beforeSlotWrite?: (purpose: SlotWritePurpose) => Promise<SlotMoveAck>;
}

interface RewriteRequest {
  readonly identity: LocalIdentity;
  readonly payload: Buffer;
  readonly left: boolean;
  readonly mayWrite: () => boolean;
}

export interface JoinRequest {
  readonly hostId?: number;
  readonly identity: LocalIdentity;
  readonly payload: Buffer;
  readonly signal?: AbortSignal;
}

export interface Joined {
  readonly own: OwnSlot;
  /** When the join's write started: the first "last successful renewal". */
  readonly writeStartedMs: number;
}

function busy(hostId: number, why: string): TandemError {
  return new TandemError('HOST_ID_BUSY', `host id ${hostId} is busy: ${why}`, {
    details: { hostId },
  });
}

function describe(slot: DecodedSlot): string {
  if (slot.kind === 'free') return 'free';
  if (slot.kind === 'corrupt') return `corrupt (${slot.reason})`;
  return `${slot.left ? 'left by' : 'held by'} ${slot.hostName} generation ${slot.generation}`;
}

export class DeltaLease {
  constructor(private readonly deps: DeltaLeaseDeps) {}

  /** Acquires the given host id, or picks one (see `joinAny`). */
  async join(request: JoinRequest): Promise<Joined> {
    if (request.hostId === undefined) return this.joinAny(request);
    const hostId = request.hostId;
    const first = await this.deps.io.readSlot(hostId);
    if (first.slot.kind === 'free' || (first.slot.kind === 'held' && first.slot.left)) {
      return this.claim(hostId, first.slot, request);
    }
    const dead = await this.watchUntilDead([first], request.signal);
    const proof = dead.get(hostId);
    if (proof === undefined) throw busy(hostId, `${describe(first.slot)}, and it is renewing`);
    return this.claim(hostId, proof.slot, request);
  }

  /**
   * Auto-pick: a slot left by a host of our own name, else the first free slot, else a slot
   * left by another host, else a held slot that proves dead after watching it for the host dead
   * time (our own name first: a restart after a crash gets its old id back).
   */
  private async joinAny(request: JoinRequest): Promise<Joined> {
    const { io } = this.deps;
    const read = await io.readRange(1, io.layout.maxHosts);
    const failure = read.failures[0];
    if (failure !== undefined) throw failure.error;
    const ownName = (o: SlotObservation) =>
      o.slot.kind === 'held' && o.slot.hostName === request.identity.hostName;
    const isLeft = (o: SlotObservation) => o.slot.kind === 'held' && o.slot.left;
    const ordered = [
      ...read.observations.filter((o) => isLeft(o) && ownName(o)),
      ...read.observations.filter((o) => o.slot.kind === 'free'),
      ...read.observations.filter((o) => isLeft(o) && !ownName(o)),
    ];
    for (const candidate of ordered) {
      const joined = await this.tryCandidate(candidate, request);
      if (joined !== undefined) return joined;
    }
    const held = read.observations.filter((o) => o.slot.kind === 'held' && !o.slot.left);
    held.sort((a, b) => Number(ownName(b)) - Number(ownName(a)) || a.hostId - b.hostId);
    if (held.length > 0) {
      const dead = await this.watchUntilDead(held, request.signal);
      for (const candidate of held) {
        const proof = dead.get(candidate.hostId);
        if (proof === undefined) continue;
        const joined = await this.tryCandidate(proof, request);
        if (joined !== undefined) return joined;
      }
    }
    throw new TandemError(
      'LOCKSPACE_FULL',
      `every one of the ${io.layout.maxHosts} host ids is held by a live host`,
    );
  }

  /** Re-reads a candidate, claims it if unchanged; undefined when another host got there first. */
  private async tryCandidate(
    candidate: SlotObservation,
    request: JoinRequest,
  ): Promise<Joined | undefined> {
    const current = await this.deps.io.readSlot(candidate.hostId);
    if (!sameLeaseRecord(current.slot, candidate.slot)) return undefined;
    try {
      return await this.claim(candidate.hostId, current.slot, request);
    } catch (error) {
      if (!(error instanceof TandemError && error.code === 'HOST_ID_BUSY')) throw error;
      this.deps.logger.info('lost a race for a host id; trying the next', {
        hostId: candidate.hostId,
      });
      // Racers that collided once should not collide again on the next slot in lockstep.
      const backoffMs = this.deps.random.next() * this.deps.timings.monitorIntervalMs;
      await this.deps.clock.sleep(backoffMs, request.signal);
      return undefined;
    }
  }

  /**
   * Writes our record over `previous` (which the caller just read and judged takeable), waits
   * acquireSettleMs and checks that the slot still holds exactly our record.
   */
  private async claim(
    hostId: number,
    previous: DecodedSlot,
    request: JoinRequest,
  ): Promise<Joined> {
    assert(previous.kind === 'free' || previous.kind === 'held', 'a corrupt slot is never claimed');
    const { io, clock, timings } = this.deps;
    const generation = previous.kind === 'held' ? previous.generation + 1 : 1;
    const moveAck = await this.beforeSlotWrite('join');
    const record: HostSlotRecord = {
      hostId,
      left: false,
      generation,
      renewalCounter: 1,
      renewedWallMs: Math.max(0, Math.round(clock.wallMs())),
      hostName: request.identity.hostName,
      address: request.identity.address,
      joinNonce: newJoinNonce(() => this.deps.random.next()),
      payload: request.payload,
      moveAck,
    };
    const slot = encodeHostSlot(record, io.layout.blockSize);
    const leaseRecord = slot.subarray(0, payloadOffset(io.layout.blockSize));
    // A join aborted (by fence, leave or close) while its last read was in flight writes nothing.
    request.signal?.throwIfAborted();
    const writeStartedMs = await io.writeSlot(hostId, slot);
    await clock.sleep(timings.acquireSettleMs, request.signal);
    const check = await io.readSlot(hostId);
    if (check.slot.kind !== 'held' || !check.slot.leaseRecord.equals(leaseRecord)) {
      throw busy(hostId, `a racing host wrote it (${describe(check.slot)})`);
    }
    await this.checkAfterClaim(record);
    this.deps.logger.info('acquired host id', { hostId, generation });
    return { own: new OwnSlot(hostId, generation, Buffer.from(leaseRecord)), writeStartedMs };
  }

  /**
   * The move check once more, after the settle: a lockspace move may have begun while the
   * claim was in flight, after the check before it (a mover that looked at the slots before
   * the claim landed did not wait for us). A join that meets one gives its slot back (left)
   * and fails, so that no host becomes live on a copy without having seen the move mark.
   */
  private async checkAfterClaim(record: HostSlotRecord): Promise<void> {
    try {
      await this.beforeSlotWrite('join');
    } catch (error) {
      const left = encodeHostSlot(
        { ...record, left: true, renewalCounter: 2 },
        this.deps.io.layout.blockSize,
      );
      await this.deps.io.writeSlot(record.hostId, left).catch((leaveError: unknown) => {
        this.deps.logger.warn('giving back a claimed host id failed', {
          hostId: record.hostId,
          error: leaveError,
        });
      });
      throw error;
    }
  }

  /**
   * Watches slots until each either changed (alive) or was seen unchanged by a read that
   * started at least hostDeadMs after the read that first showed its value completed (dead).
   * Returns the dead ones with the read that proved it. A corrupt slot counts as a change on
   * every read, and a failed read ends the watch with its error.
   */
  private async watchUntilDead(
    initial: SlotObservation[],
    signal: AbortSignal | undefined,
  ): Promise<Map<number, SlotObservation>> {
    const { io, clock, timings } = this.deps;
    const watching = new Map(initial.map((o) => [o.hostId, o]));
    const dead = new Map<number, SlotObservation>();
    for (const o of initial) if (o.slot.kind === 'corrupt') watching.delete(o.hostId);
    while (watching.size > 0) {
      await clock.sleep(timings.monitorIntervalMs, signal);
      const ids = [...watching.keys()];
      const first = Math.min(...ids);
      const read = await io.readRange(first, Math.max(...ids) - first + 1);
      const failure = read.failures[0];
      if (failure !== undefined) throw failure.error;
      for (const o of read.observations) {
        const seen = watching.get(o.hostId);
        if (seen === undefined) continue;
        if (!sameLeaseRecord(o.slot, seen.slot)) {
          watching.delete(o.hostId);
        } else if (o.startedMs - seen.completedMs >= timings.hostDeadMs) {
          watching.delete(o.hostId);
          dead.set(o.hostId, o);
        }
      }
    }
    return dead;
  }

  private beforeSlotWrite(purpose: SlotWritePurpose): Promise<SlotMoveAck> {
    return this.deps.beforeSlotWrite?.(purpose) ?? Promise.resolve(noMoveAck);
  }

  /** One renewal: read our slot, check it is still ours, write it with the counter + 1. */
  async renew(
    own: OwnSlot,
    identity: LocalIdentity,
    payload: Buffer,
    mayWrite: () => boolean,
  ): Promise<RenewOutcome> {
    return this.rewrite(own, { identity, payload, left: false, mayWrite });
  }

  /** Writes our slot with the left flag (after the caller released every lease). */
  async leave(
    own: OwnSlot,
    identity: LocalIdentity,
    payload: Buffer,
    mayWrite: () => boolean,
  ): Promise<RenewOutcome> {
    return this.rewrite(own, { identity, payload, left: true, mayWrite });
  }

  /**
   * `mayWrite` is asked right before the write is issued (nothing runs between the answer and
   * the request reaching the device): the owner fences between our read and our write.
   */
  private async rewrite(own: OwnSlot, update: RewriteRequest): Promise<RenewOutcome> {
    const { identity, payload, left } = update;
    const { io, clock } = this.deps;
    const startedMs = clock.nowMs();
    let current: SlotObservation;
    let moveAck: SlotMoveAck;
    try {
      moveAck = await this.beforeSlotWrite('renew');
      current = await io.readSlot(own.hostId);
    } catch (error) {
      return { kind: 'failed', startedMs, error };
    }
    if (current.slot.kind === 'corrupt') {
      // We cannot tell whose record this is, so we neither claim it lost nor write over it.
      const error = new TandemError(
        'LEASE_IO',
        `our host slot reads as corrupt: ${current.slot.reason}`,
      );
      return { kind: 'failed', startedMs, error };
    }
    if (!own.isOurs(current.slot)) {
      return { kind: 'lost', startedMs, reason: `our host slot is now ${describe(current.slot)}` };
    }
    const record: HostSlotRecord = {
      hostId: own.hostId,
      left,
      generation: own.generation,
      renewalCounter: current.slot.renewalCounter + 1,
      renewedWallMs: Math.max(0, Math.round(clock.wallMs())),
      hostName: identity.hostName,
      address: identity.address,
      // isOurs compared the whole record, so this is the nonce of our own join.
      joinNonce: current.slot.joinNonce,
      payload,
      moveAck,
    };
    const slot = encodeHostSlot(record, io.layout.blockSize);
    const leaseRecord = Buffer.from(slot.subarray(0, payloadOffset(io.layout.blockSize)));
    if (!update.mayWrite()) {
      const error = new TandemError('FENCED', 'fenced before the slot write was issued');
      return { kind: 'failed', startedMs, error };
    }
    if (io.writeInFlight(own.hostId)) {
      const error = new TandemError('LEASE_IO', 'the previous slot write has not completed');
      return { kind: 'failed', startedMs, error };
    }
    try {
      await io.writeSlot(own.hostId, slot);
    } catch (error) {
      own.noteWrite(leaseRecord, false);
      return { kind: 'failed', startedMs, error };
    }
    own.noteWrite(leaseRecord, true);
    return { kind: 'renewed', startedMs };
  }
}
