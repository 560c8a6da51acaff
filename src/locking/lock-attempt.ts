/**
 * One attempt to take a resource lease in a mode, on top of the Disk Paxos leader
 * (docs/leases.md, "Shared mode" and "Fair queue"):
 *
 * - exclusive: win the leader, then re-read the area: a shared flag of another host whose
 *   generation is a live instance is a conflict (the leader is released again);
 * - shared: win the leader, set the shared flag (with our generation) in our own ballot block,
 *   release the leader;
 * - either mode defers to a live waiter on another host with an older wait ticket, until the
 *   caller says the defer limit has passed.
 *
 * An attempt never waits; lock-manager.ts loops over attempts while a caller waits.
 */
import { TandemError } from '../errors.js';
import type { HostInstance } from '../heartbeat-store/types.js';
import { type BallotRecord, type LeaderRecord, modeFlagShared } from './lease-format.js';
import { type AreaSnapshot, type LeaseContext, PaxosLease, leaderOwner } from './paxos-lease.js';
import { type LockInfo, type LockMode, type LockOwner, valueBlockBytesMax } from './types.js';

/** Wait tickets are (lease version first seen + 1) × this + host id: above every host id. */
export const ticketHostSpan = 4096;

export interface AttemptRequest {
  readonly name: string;
  readonly mode: LockMode;
  /** Our wait ticket, when we are a waiter that wrote one. */
  readonly ownTicket: number | undefined;
  /** We have deferred to older waiters for the defer limit: go ahead regardless. */
  readonly deferExpired: boolean;
}

export type ConflictCause = 'owner' | 'sharers' | 'waiter';

export type AttemptResult =
  | {
      readonly kind: 'acquired';
      readonly leader: LeaderRecord;
      readonly snapshot: AreaSnapshot;
    }
  | {
      readonly kind: 'conflict';
      readonly cause: ConflictCause;
      readonly reason: string;
      /** The lease version seen, for a wait ticket. */
      readonly version: number;
    };

export function checkMode(mode: unknown): asserts mode is LockMode {
  if (mode !== 'ex' && mode !== 'sh') {
    throw new TandemError(
      'INVALID_ARGUMENT',
      `lock mode must be 'ex' or 'sh', not '${String(mode)}'`,
    );
  }
}

export function checkValue(value: Buffer | undefined, mode: LockMode): void {
  if (value === undefined) return;
  if (mode !== 'ex') {
    throw new TandemError(
      'INVALID_ARGUMENT',
      'a value can only be written with an exclusive lease',
    );
  }
  if (!Buffer.isBuffer(value) || value.length > valueBlockBytesMax) {
    throw new TandemError(
      'INVALID_ARGUMENT',
      `a lease value is at most ${valueBlockBytesMax} bytes`,
    );
  }
}

export function waitTicket(versionSeen: number, hostId: number): number {
  return (versionSeen + 1) * ticketHostSpan + hostId;
}

function isShared(ballot: BallotRecord): boolean {
  return (ballot.modeFlags & modeFlagShared) !== 0 && ballot.sharedGeneration !== 0;
}

/** Shared holders whose hold belongs to a live instance (host `exceptHostId` left out). */
export function liveSharers(
  context: LeaseContext,
  snapshot: AreaSnapshot,
  exceptHostId: number | undefined,
): HostInstance[] {
  const sharers: HostInstance[] = [];
  snapshot.ballots.forEach((ballot, index) => {
    const hostId = index + 1;
    if (hostId === exceptHostId || !isShared(ballot)) return;
    const instance = { hostId, generation: ballot.sharedGeneration };
    if (context.liveness.ownerLiveness(instance) === 'alive') sharers.push(instance);
  });
  return sharers;
}

/** The host of a live waiter whose ticket is older than ours (or than the one we would take). */
function olderWaiter(
  context: LeaseContext,
  snapshot: AreaSnapshot,
  self: HostInstance,
  ownTicket: number | undefined,
): number | undefined {
  const ours = ownTicket ?? waitTicket(snapshot.leader.leaseVersion, self.hostId);
  let oldest: { hostId: number; ticket: number } | undefined;
  snapshot.ballots.forEach((ballot, index) => {
    const hostId = index + 1;
    if (hostId === self.hostId || ballot.waitTicket === 0 || ballot.waitTicket >= ours) return;
    const instance = { hostId, generation: ballot.ticketGeneration };
    if (ballot.ticketGeneration === 0 || context.liveness.ownerLiveness(instance) !== 'alive') {
      return; // A waiter that died is ignored once dead.
    }
    if (oldest === undefined || ballot.waitTicket < oldest.ticket) {
      oldest = { hostId, ticket: ballot.waitTicket };
    }
  });
  return oldest?.hostId;
}

function describeHosts(hosts: readonly HostInstance[]): string {
  return hosts.map((host) => host.hostId).join(', ');
}

export async function attemptAcquire(
  context: LeaseContext,
  lease: PaxosLease,
  request: AttemptRequest,
): Promise<AttemptResult> {
  const self = context.self();
  let cause: ConflictCause = 'owner';
  const attempt = await lease.acquireLeader(request.name, (snapshot) => {
    if (request.mode === 'ex') {
      const sharers = liveSharers(context, snapshot, self.hostId);
      if (sharers.length > 0) {
        cause = 'sharers';
        return `held shared by host(s) ${describeHosts(sharers)}`;
      }
    }
    const waiter = request.deferExpired
      ? undefined
      : olderWaiter(context, snapshot, self, request.ownTicket);
    if (waiter === undefined) return undefined;
    cause = 'waiter';
    return `deferring to host ${waiter}, waiting longer`;
  });
  if (attempt.kind === 'blocked') {
    return {
      kind: 'conflict',
      cause,
      reason: attempt.reason,
      version: attempt.snapshot.leader.leaseVersion,
    };
  }
  return request.mode === 'ex'
    ? finishExclusive(context, lease, attempt.leader)
    : finishShared(context, lease, attempt.leader, attempt.snapshot);
}

/** We hold the leader: a sharer that got in before our ballot still blocks us. */
async function finishExclusive(
  context: LeaseContext,
  lease: PaxosLease,
  leader: LeaderRecord,
): Promise<AttemptResult> {
  const after = await lease.readArea();
  const sharers = liveSharers(context, after, context.self().hostId);
  if (sharers.length === 0) return { kind: 'acquired', leader, snapshot: after };
  await lease.releaseLeader(leader.leaseVersion);
  return {
    kind: 'conflict',
    cause: 'sharers',
    reason: `held shared by host(s) ${describeHosts(sharers)}`,
    version: leader.leaseVersion,
  };
}

async function finishShared(
  context: LeaseContext,
  lease: PaxosLease,
  leader: LeaderRecord,
  snapshot: AreaSnapshot,
): Promise<AttemptResult> {
  try {
    await setSharedFlag(context, lease, true);
    await lease.releaseLeader(leader.leaseVersion);
  } catch (error) {
    // Leave neither a shared flag nor the leader behind for an acquire that failed. Best effort:
    // if the disk is failing, both are ignored by others once our delta lease expires.
    await setSharedFlag(context, lease, false).catch(() => undefined);
    await lease.releaseLeader(leader.leaseVersion).catch(() => undefined);
    throw error;
  }
  return { kind: 'acquired', leader: { ...leader, ownerHostId: 0 }, snapshot };
}

/** Sets or clears our shared flag; setting also clears our wait ticket (we are served). */
export async function setSharedFlag(
  context: LeaseContext,
  lease: PaxosLease,
  shared: boolean,
): Promise<void> {
  const self = context.self();
  await lease.updateOwnBallot((ballot) =>
    shared
      ? {
          ...ballot,
          modeFlags: ballot.modeFlags | modeFlagShared,
          sharedGeneration: self.generation,
          waitTicket: 0,
          ticketGeneration: 0,
        }
      : { ...ballot, modeFlags: ballot.modeFlags & ~modeFlagShared, sharedGeneration: 0 },
  );
}

/** Writes (ticket > 0) or clears (0) our wait ticket. */
export async function setWaitTicket(
  context: LeaseContext,
  lease: PaxosLease,
  ticket: number,
): Promise<void> {
  const generation = ticket === 0 ? 0 : context.self().generation;
  await lease.updateOwnBallot((ballot) => ({
    ...ballot,
    waitTicket: ticket,
    ticketGeneration: generation,
  }));
}

/** What a snapshot says about a resource, as one host sees its owners' liveness. */
export function describeLease(
  context: LeaseContext,
  name: string,
  snapshot: AreaSnapshot,
  heldHere: LockMode | undefined,
  hostNameOf: (hostId: number) => string,
): LockInfo {
  const toOwner = (instance: HostInstance): LockOwner => ({
    ...instance,
    hostName: hostNameOf(instance.hostId),
  });
  const leader = snapshot.leader;
  const exclusive = leaderOwner(leader);
  const owner =
    exclusive !== undefined && context.liveness.ownerLiveness(exclusive) === 'alive'
      ? toOwner(exclusive)
      : undefined;
  const sharedOwners =
    owner === undefined ? liveSharers(context, snapshot, undefined).map(toOwner) : [];
  return {
    name,
    mode: owner !== undefined ? 'ex' : sharedOwners.length > 0 ? 'sh' : 'free',
    owner,
    sharedOwners,
    version: leader.leaseVersion,
    value: Buffer.from(leader.value),
    sinceWallMs: owner === undefined ? 0 : leader.takenWallMs,
    heldHere,
  };
}
