/**
 * Disk Paxos on one lease area (docs/leases.md, "Resource leases"), as sanlock's
 * paxos_lease_acquire: a ballot for lease version v + 1 among the ballot blocks of the area, then
 * a commit of the leader block. The area is contiguous (leader, then one ballot block per host
 * id), so every phase reads the leader and all ballot blocks in ONE read.
 *
 * Every I/O is bounded by ioTimeoutMs; a read or write that fails, times out, or returns a
 * record failing its CRC fails the operation with LEASE_IO. Nothing damaged is read as free.
 *
 * This module knows nothing of modes or queues: lock-attempt.ts builds shared mode and wait
 * tickets on top of it with the own-ballot helpers below.
 */
import type { BlockDevice } from '../disk/block-device.js';
import type { Clock, Random } from '../clock.js';
import { TandemError, assert, isTandemError } from '../errors.js';
import type { Logger } from '../log.js';
import type { LockspaceLayout } from '../heartbeat-store/layout.js';
import { resourceAreaOffset } from '../heartbeat-store/layout.js';
import type { LeaseTimings } from '../heartbeat-store/timings.js';
import type { HostInstance, LivenessSource } from '../heartbeat-store/types.js';
import {
  type BallotRecord,
  type DecodeResult,
  type LeaderRecord,
  decodeBallot,
  decodeLeader,
  encodeBallot,
  encodeLeader,
  sameBallot,
} from './lease-format.js';

/** Ballots lost to contention or restarted before one acquire attempt gives up. */
export const ballotAttemptsMax = 16;
/** The random backoff after a lost ballot is up to this fraction of ioTimeoutMs. */
export const ballotBackoffFraction = 1 / 8;

/** Everything the lease code needs from its surroundings, injected. */
export interface LeaseContext {
  readonly device: BlockDevice;
  readonly layout: LockspaceLayout;
  readonly timings: LeaseTimings;
  readonly clock: Clock;
  readonly random: Random;
  readonly logger: Logger;
  readonly liveness: Pick<LivenessSource, 'ownerLiveness'>;
  /** This host's instance; throws LOCKSPACE_NOT_JOINED or FENCED when it has none. */
  self(): HostInstance;
  /** Throws (FENCED) when this host must not write the lockspace any more. */
  checkWritable(): void;
  /**
   * Told when the on-disk state of an area may now differ from what this host believes: a write
   * that failed or timed out (it may still land), or a ballot left after its phase 2 was written
   * (another host may commit its value for us). The orphan sweeper re-checks the area.
   */
  readonly onUncertain?: (areaIndex: number, reason: string) => void;
}

export interface AreaSnapshot {
  readonly leader: LeaderRecord;
  /** Index h - 1 holds host h's ballot block. */
  readonly ballots: readonly BallotRecord[];
}

type BallotOutcome =
  | { readonly kind: 'committed'; readonly leader: LeaderRecord }
  | { readonly kind: 'contended' }
  | { readonly kind: 'restart' };

export type LeaderAttempt =
  | { readonly kind: 'won'; readonly leader: LeaderRecord; readonly snapshot: AreaSnapshot }
  | { readonly kind: 'blocked'; readonly reason: string; readonly snapshot: AreaSnapshot };

/**
 * Runs `operation` bounded by ioTimeoutMs. Any failure becomes LEASE_IO (with the cause), except
 * LOCKSPACE_MOVING: a moving lockspace refused the write before it reached the device, and a
 * waiting caller waits the move out (lock-manager.ts).
 */
export async function boundedIo(
  context: LeaseContext,
  what: string,
  operation: () => Promise<void>,
): Promise<void> {
  const timer = new AbortController();
  const started = operation();
  // The operation may settle after the timeout has won the race: keep that rejection handled.
  started.catch(() => undefined);
  const timeout = context.clock
    .sleep(context.timings.ioTimeoutMs, timer.signal)
    .then(() => 'timeout' as const)
    .catch(() => 'cancelled' as const);
  try {
    const result = await Promise.race([started.then(() => 'done' as const), timeout]);
    if (result !== 'done') {
      throw new TandemError(
        'LEASE_IO',
        `${what}: no answer within ${context.timings.ioTimeoutMs} ms`,
      );
    }
  } catch (error) {
    if (isTandemError(error, 'LEASE_IO') || isTandemError(error, 'LOCKSPACE_MOVING')) throw error;
    throw new TandemError('LEASE_IO', `${what} failed`, { cause: error });
  } finally {
    timer.abort();
  }
}

export function requireRecord<T>(decoded: DecodeResult<T>, what: string): T {
  if (decoded.status === 'corrupt') {
    throw new TandemError('LEASE_IO', `${what} is corrupt (${decoded.reason}); not taken as free`);
  }
  return decoded.record;
}

/** The smallest mbal = k × maxHosts + hostId above `seen` (so every host's mbals differ). */
export function nextMbal(seen: number, maxHosts: number, hostId: number): number {
  let mbal = Math.floor(seen / maxHosts) * maxHosts + hostId;
  while (mbal <= seen) mbal += maxHosts;
  return mbal;
}

export function isSelf(owner: HostInstance, self: HostInstance): boolean {
  return owner.hostId === self.hostId && owner.generation === self.generation;
}

export function leaderOwner(leader: LeaderRecord): HostInstance | undefined {
  return leader.ownerHostId === 0
    ? undefined
    : { hostId: leader.ownerHostId, generation: leader.ownerGeneration };
}

/**
 * The leader names its resource once committed; a different name means our directory cache maps
 * this name to another resource's area: the caller re-reads the directory (isNameMismatch).
 */
export function checkLeaderName(leader: LeaderRecord, name: string, what: string): void {
  if (name !== '' && leader.name !== '' && leader.name !== name) {
    throw new TandemError('LEASE_IO', `${what} names '${leader.name}', expected '${name}'`, {
      details: { leaderName: leader.name, expectedName: name },
    });
  }
}

export function isNameMismatch(error: unknown): boolean {
  return isTandemError(error, 'LEASE_IO') && typeof error.details['leaderName'] === 'string';
}

export class PaxosLease {
  private readonly offsetBytes: number;
  private readonly blockBytes: number;
  /** The current acquireLeader wrote a phase-2 ballot (its value may be committed for us). */
  private phase2Written = false;

  constructor(
    private readonly context: LeaseContext,
    readonly areaIndex: number,
  ) {
    this.offsetBytes = resourceAreaOffset(context.layout, areaIndex);
    this.blockBytes = context.layout.blockSize;
  }

  async readLeader(): Promise<LeaderRecord> {
    const block = Buffer.alloc(this.blockBytes);
    await boundedIo(this.context, this.what('read leader'), () =>
      this.context.device.read(block, this.offsetBytes),
    );
    return requireRecord(decodeLeader(block), this.what('leader'));
  }

  /** The leader and every ballot block, in one read. */
  async readArea(): Promise<AreaSnapshot> {
    const maxHosts = this.context.layout.maxHosts;
    const buffer = Buffer.alloc((1 + maxHosts) * this.blockBytes);
    await boundedIo(this.context, this.what('read lease area'), () =>
      this.context.device.read(buffer, this.offsetBytes),
    );
    const leader = requireRecord(
      decodeLeader(buffer.subarray(0, this.blockBytes)),
      this.what('leader'),
    );
    const ballots: BallotRecord[] = [];
    for (let hostId = 1; hostId <= maxHosts; hostId += 1) {
      const block = buffer.subarray(hostId * this.blockBytes, (hostId + 1) * this.blockBytes);
      ballots.push(requireRecord(decodeBallot(block), this.what(`ballot block of host ${hostId}`)));
    }
    return { leader, ballots };
  }

  async writeLeader(leader: LeaderRecord): Promise<void> {
    this.context.checkWritable();
    const block = encodeLeader(leader, this.blockBytes);
    await this.reportingFailure('leader write failed', () =>
      boundedIo(this.context, this.what('write leader'), () =>
        this.context.device.write(block, this.offsetBytes),
      ),
    );
  }

  async readOwnBallot(): Promise<BallotRecord> {
    const block = Buffer.alloc(this.blockBytes);
    await boundedIo(this.context, this.what('read own ballot block'), () =>
      this.context.device.read(block, this.ownBallotOffset()),
    );
    return requireRecord(decodeBallot(block), this.what('own ballot block'));
  }

  async writeOwnBallot(ballot: BallotRecord): Promise<void> {
    this.context.checkWritable();
    const block = encodeBallot(ballot, this.blockBytes);
    await this.reportingFailure('own ballot block write failed', () =>
      boundedIo(this.context, this.what('write own ballot block'), () =>
        this.context.device.write(block, this.ownBallotOffset()),
      ),
    );
  }

  /** A write that failed or timed out may still land: tell the orphan sweeper. */
  private async reportingFailure(reason: string, write: () => Promise<void>): Promise<void> {
    try {
      await write();
    } catch (error) {
      this.context.onUncertain?.(this.areaIndex, reason);
      throw error;
    }
  }

  /** Reads our ballot block, applies `change`, writes it back (mode flags, wait ticket). */
  async updateOwnBallot(change: (ballot: BallotRecord) => BallotRecord): Promise<BallotRecord> {
    const current = await this.readOwnBallot();
    const next = change(current);
    if (!sameBallot(current, next)) await this.writeOwnBallot(next);
    return next;
  }

  /**
   * Takes the leader exclusive: returns `won` once the leader names this instance, or `blocked`
   * when a live owner holds it or `precheck` objects (read from the same snapshot). Lost ballots
   * are retried after a random backoff, up to ballotAttemptsMax, then LOCK_CONTENDED.
   */
  async acquireLeader(
    name: string,
    precheck: (snapshot: AreaSnapshot) => string | undefined,
  ): Promise<LeaderAttempt> {
    this.phase2Written = false;
    let won = false;
    try {
      const attempt = await this.acquireLeaderLoop(name, precheck);
      won = attempt.kind === 'won';
      return attempt;
    } finally {
      // A phase-2 value of ours may still be committed by another host's ballot.
      if (this.phase2Written && !won) {
        this.context.onUncertain?.(this.areaIndex, 'ballot left after its phase 2 was written');
      }
    }
  }

  private async acquireLeaderLoop(
    name: string,
    precheck: (snapshot: AreaSnapshot) => string | undefined,
  ): Promise<LeaderAttempt> {
    for (let attempt = 1; attempt <= ballotAttemptsMax; attempt += 1) {
      const snapshot = await this.readArea();
      const self = this.context.self();
      checkLeaderName(snapshot.leader, name, this.what('leader'));
      const owner = leaderOwner(snapshot.leader);
      if (owner !== undefined && isSelf(owner, self)) {
        // Ours already, e.g. a competing ballot committed our value for us.
        return { kind: 'won', leader: snapshot.leader, snapshot };
      }
      if (owner !== undefined && this.context.liveness.ownerLiveness(owner) === 'alive') {
        return { kind: 'blocked', reason: `held by host ${owner.hostId}`, snapshot };
      }
      const objection = precheck(snapshot);
      if (objection !== undefined) return { kind: 'blocked', reason: objection, snapshot };
      const outcome = await this.runBallot(snapshot, name, self);
      if (outcome.kind === 'committed' && isSelf(leaderOwnerOrFree(outcome.leader), self)) {
        return { kind: 'won', leader: outcome.leader, snapshot };
      }
      if (outcome.kind === 'contended') await this.backoff();
      // 'restart', or a commit naming another host: read again and judge afresh.
    }
    throw new TandemError(
      'LOCK_CONTENDED',
      this.what(`no ballot won in ${ballotAttemptsMax} attempts`),
    );
  }

  /** Writes the leader free (keeping version, name and value) if it still names us at `version`. */
  async releaseLeader(version: number, value?: Buffer): Promise<'released' | 'not-ours'> {
    const leader = await this.readLeader();
    const owner = leaderOwner(leader);
    if (
      owner === undefined ||
      !isSelf(owner, this.context.self()) ||
      leader.leaseVersion !== version
    ) {
      return 'not-ours';
    }
    await this.writeLeader({
      ...leader,
      ownerHostId: 0,
      ownerGeneration: 0,
      takenWallMs: 0,
      value: value ?? leader.value,
    });
    return 'released';
  }

  /** Rewrites the value of a leader that still names us at `version`. */
  async writeValue(version: number, value: Buffer): Promise<LeaderRecord | undefined> {
    const leader = await this.readLeader();
    const owner = leaderOwner(leader);
    if (
      owner === undefined ||
      !isSelf(owner, this.context.self()) ||
      leader.leaseVersion !== version
    ) {
      return undefined;
    }
    const next = { ...leader, value: Buffer.from(value) };
    await this.writeLeader(next);
    return next;
  }

  /** One ballot for version v + 1, where v is the leader version in `start` (fresh). */
  private async runBallot(
    start: AreaSnapshot,
    name: string,
    self: HostInstance,
  ): Promise<BallotOutcome> {
    const { maxHosts } = this.context.layout;
    const version = start.leader.leaseVersion;
    const nextVersion = version + 1;
    const own = this.ownBallot(start);
    const seen = Math.max(...start.ballots.map((ballot) => ballot.mbal));
    const mbal = nextMbal(seen, maxHosts, self.hostId);
    const phase1 = phase1Ballot(own, nextVersion, mbal);
    await this.writeOwnBallot(phase1);
    const afterPhase1 = await this.readArea();
    const judged1 = this.judge(afterPhase1, phase1, version);
    if (judged1 !== undefined) return judged1;

    const chosen = highestBallot(afterPhase1.ballots, nextVersion);
    const phase2 = phase2Ballot(phase1, chosen, self, this.context.clock.wallMs());
    this.phase2Written = true;
    await this.writeOwnBallot(phase2);
    const afterPhase2 = await this.readArea();
    const judged2 = this.judge(afterPhase2, phase2, version);
    if (judged2 !== undefined) return judged2;

    const leader: LeaderRecord = {
      leaseVersion: nextVersion,
      ownerHostId: phase2.inpHostId,
      flags: 0,
      ownerGeneration: phase2.inpGeneration,
      takenWallMs: phase2.inpWallMs,
      name: name === '' ? start.leader.name : name,
      value: start.leader.value,
    };
    await this.writeLeader(leader);
    this.context.logger.debug('lease committed', {
      area: this.areaIndex,
      version: nextVersion,
      owner: phase2.inpHostId,
      mbal,
    });
    return { kind: 'committed', leader };
  }

  /** After a phase read: abort on a larger mbal, restart when someone committed meanwhile. */
  private judge(
    snapshot: AreaSnapshot,
    written: BallotRecord,
    version: number,
  ): BallotOutcome | undefined {
    if (!sameBallot(this.ownBallot(snapshot), written)) {
      throw new TandemError('LEASE_IO', this.what('own ballot block did not read back as written'));
    }
    if (snapshot.leader.leaseVersion > version) return { kind: 'restart' };
    for (const ballot of snapshot.ballots) {
      if (ballot.leaseVersion > version + 1) return { kind: 'restart' };
      if (ballot.leaseVersion === version + 1 && ballot.mbal > written.mbal) {
        return { kind: 'contended' };
      }
    }
    return undefined;
  }

  private ownBallot(snapshot: AreaSnapshot): BallotRecord {
    const own = snapshot.ballots[this.context.self().hostId - 1];
    assert(own !== undefined, 'own host id outside the lease area');
    return own;
  }

  private ownBallotOffset(): number {
    const hostId = this.context.self().hostId;
    assert(hostId >= 1 && hostId <= this.context.layout.maxHosts, 'host id in range');
    return this.offsetBytes + hostId * this.blockBytes;
  }

  private async backoff(): Promise<void> {
    const maxMs = this.context.timings.ioTimeoutMs * ballotBackoffFraction;
    await this.context.clock.sleep(1 + this.context.random.next() * maxMs);
  }

  private what(action: string): string {
    return `${this.context.device.description}: lease area ${this.areaIndex}: ${action}`;
  }
}

function leaderOwnerOrFree(leader: LeaderRecord): HostInstance {
  return { hostId: leader.ownerHostId, generation: leader.ownerGeneration };
}

/**
 * Disk Paxos phase 1 keeps our bal/inp when our block is already for this version; a block for
 * an older version starts empty. Mode flags and the wait ticket ride along untouched.
 */
function phase1Ballot(own: BallotRecord, nextVersion: number, mbal: number): BallotRecord {
  if (own.leaseVersion === nextVersion) return { ...own, mbal };
  return {
    ...own,
    leaseVersion: nextVersion,
    mbal,
    bal: 0,
    inpHostId: 0,
    inpGeneration: 0,
    inpWallMs: 0,
  };
}

/** Phase 2 proposes the value of the highest ballot seen for this version, or else us. */
function phase2Ballot(
  phase1: BallotRecord,
  chosen: BallotRecord | undefined,
  self: HostInstance,
  wallMs: number,
): BallotRecord {
  const value =
    chosen === undefined
      ? { inpHostId: self.hostId, inpGeneration: self.generation, inpWallMs: wallMs }
      : {
          inpHostId: chosen.inpHostId,
          inpGeneration: chosen.inpGeneration,
          inpWallMs: chosen.inpWallMs,
        };
  return { ...phase1, bal: phase1.mbal, ...value };
}

/** The ballot with the highest bal for `version` that carries a value (phase 2's choice). */
function highestBallot(
  ballots: readonly BallotRecord[],
  version: number,
): BallotRecord | undefined {
  let best: BallotRecord | undefined;
  for (const ballot of ballots) {
    if (ballot.leaseVersion !== version || ballot.bal === 0 || ballot.inpHostId === 0) continue;
    if (best === undefined || ballot.bal > best.bal) best = ballot;
  }
  return best;
}
