/**
 * Orphan leases (sanlock's "orphan" handling): on-disk lease state naming this host's current
 * instance that this host does not believe in. It is left by a write that failed or timed out
 * but landed (a leader commit, a shared flag, a wait ticket), or by a ballot we left after its
 * phase 2 was written, whose value another host's ballot then committed for us. Nobody else can
 * take such a lease while our delta lease lives, so it must be repaired by us.
 *
 * After each such event (PaxosLease reports it through LeaseContext.onUncertain) the sweeper
 * re-checks the area a bounded number of times (orphanSweepDelays × ioTimeoutMs after it), under
 * the resource's mutex so that it never races an operation of this host on the same resource:
 *
 * - a leader naming our instance, while we do not hold the lease exclusive and no local acquire
 *   or convert waits on it, is released (only if it still names us at that version);
 * - our shared flag, while we do not hold the lease shared, is cleared;
 * - our wait ticket, while no local acquire or convert waits on it, is cleared.
 *
 * Never the other way round: a lease held here is never released or unflagged, and a flag that
 * memory wants but the disk lacks is only reported (setting it again could not be made safe).
 * Lockspace writes still go through checkWritable, and the sweeper stops once fenced or closed.
 * inspect/list also hand their snapshots in (notice) to repair what they happen to see.
 */
import { isTandemError } from '../errors.js';
import type { Logger } from '../log.js';
import type { HostInstance } from '../heartbeat-store/types.js';
import type { HeldLease, KeyedMutex } from './held-lease.js';
import { type BallotRecord, modeFlagShared } from './lease-format.js';
import {
  type AreaSnapshot,
  type LeaseContext,
  PaxosLease,
  isSelf,
  leaderOwner,
} from './paxos-lease.js';
import type { ResourceDirectory } from './resource-directory.js';
import type { LockMode } from './types.js';

/** When an area is re-checked after an uncertain event, in ioTimeoutMs (T/2, T, 2T, 4T, 8T). */
export const orphanSweepDelays: readonly number[] = [0.5, 1, 2, 4, 8];
/** After the last re-check failed (I/O error), retry every this many ioTimeoutMs until one works. */
export const orphanRetryIoTimeouts = 0.25;

export interface OrphanSweeperDeps {
  readonly context: LeaseContext;
  readonly logger: Logger;
  /** The manager's per-resource mutex (every operation of this host on a resource holds it). */
  readonly mutex: KeyedMutex;
  /** Aborted when the manager is fenced or closed: every sweep stops. */
  readonly stopSignal: AbortSignal;
  /** The leases this host holds (memory: what the disk should show). */
  readonly leases: ReadonlyMap<string, HeldLease>;
  /** For the resource name of an area not held here. */
  readonly directory: Pick<ResourceDirectory, 'nameOf'>;
}

/** What disagrees between the area and this host's memory (all false: nothing to repair). */
export interface OrphanFindings {
  readonly releaseLeader: boolean;
  readonly clearFlag: boolean;
  readonly clearTicket: boolean;
  /** Memory holds the lease shared, but our flag is not on disk: reported only. */
  readonly flagMissing: boolean;
}

function hasSharedFlag(ballot: BallotRecord): boolean {
  return (ballot.modeFlags & modeFlagShared) !== 0 || ballot.sharedGeneration !== 0;
}

/** Compares an area with this host's belief (a pure function: decisions only). */
export function findOrphans(
  snapshot: AreaSnapshot,
  self: HostInstance,
  heldMode: LockMode | undefined,
  waiting: boolean,
): OrphanFindings {
  const owner = leaderOwner(snapshot.leader);
  const own = snapshot.ballots[self.hostId - 1];
  const flagged = own !== undefined && hasSharedFlag(own);
  const ourFlag = flagged && own.sharedGeneration === self.generation;
  return {
    releaseLeader: owner !== undefined && isSelf(owner, self) && heldMode !== 'ex' && !waiting,
    clearFlag: flagged && heldMode !== 'sh',
    clearTicket: own !== undefined && own.waitTicket !== 0 && !waiting,
    flagMissing: heldMode === 'sh' && !ourFlag,
  };
}

function needsRepair(findings: OrphanFindings): boolean {
  return findings.releaseLeader || findings.clearFlag || findings.clearTicket;
}

export class OrphanSweeper {
  /** Resource name → the sweep running for it. */
  private readonly sweeps = new Map<string, AbortController>();
  /** Resource name → local acquires and converts waiting on it. */
  private readonly waiting = new Map<string, number>();

  constructor(private readonly deps: OrphanSweeperDeps) {}

  /** Runs a waiting acquire or convert: meanwhile its leader and ticket are not orphans. */
  async withLocalWaiter<T>(name: string, work: () => Promise<T>): Promise<T> {
    this.waiting.set(name, (this.waiting.get(name) ?? 0) + 1);
    try {
      return await work();
    } finally {
      const count = (this.waiting.get(name) ?? 1) - 1;
      if (count <= 0) this.waiting.delete(name);
      else this.waiting.set(name, count);
    }
  }

  /** (Re)starts the bounded re-checks of an area whose on-disk state may differ from memory. */
  schedule(areaIndex: number, reason: string, immediate = false): void {
    if (this.deps.stopSignal.aborted) return;
    const name = this.nameOf(areaIndex);
    if (name === undefined) {
      this.deps.logger.debug('orphan sweep: area of unknown name', { areaIndex, reason });
      return;
    }
    this.sweeps.get(name)?.abort();
    const controller = new AbortController();
    this.sweeps.set(name, controller);
    this.deps.logger.info('orphan sweep scheduled', { name, areaIndex, reason });
    void this.run(name, areaIndex, controller, immediate);
  }

  /** A snapshot read for other reasons (inspect, list): repair soon if it shows an orphan. */
  notice(name: string, areaIndex: number, snapshot: AreaSnapshot): void {
    if (this.deps.stopSignal.aborted || this.sweeps.has(name)) return;
    const self = this.selfOrUndefined();
    if (self === undefined) return;
    const findings = findOrphans(snapshot, self, this.heldMode(name), this.isWaiting(name));
    if (needsRepair(findings)) this.schedule(areaIndex, 'a read showed an orphan', true);
  }

  private async run(
    name: string,
    areaIndex: number,
    controller: AbortController,
    immediate: boolean,
  ): Promise<void> {
    const signal = AbortSignal.any([controller.signal, this.deps.stopSignal]);
    const { clock, timings } = this.deps.context;
    const delays = immediate ? [0, ...orphanSweepDelays] : orphanSweepDelays;
    let elapsedMs = 0;
    let checked = false;
    try {
      for (const delay of delays) {
        const atMs = delay * timings.ioTimeoutMs;
        await clock.sleep(atMs - elapsedMs, signal);
        elapsedMs = atMs;
        checked = await this.deps.mutex.run(name, () => this.checkOnce(name, areaIndex));
      }
      // The disk may still be failing: the repair must not give up before it could look.
      while (!checked) {
        await clock.sleep(orphanRetryIoTimeouts * timings.ioTimeoutMs, signal);
        checked = await this.deps.mutex.run(name, () => this.checkOnce(name, areaIndex));
      }
    } catch {
      // Aborted: fenced, closed, or replaced by a newer sweep of the same resource.
    } finally {
      if (this.sweeps.get(name) === controller) this.sweeps.delete(name);
    }
  }

  /** One check under the resource mutex: false when it could not complete (throws only if stopped). */
  private async checkOnce(name: string, areaIndex: number): Promise<boolean> {
    this.deps.stopSignal.throwIfAborted();
    const lease = new PaxosLease(this.deps.context, areaIndex);
    try {
      const snapshot = await lease.readArea();
      if (snapshot.leader.name !== '' && snapshot.leader.name !== name) return true;
      await this.repair(name, lease, snapshot);
      return true;
    } catch (error) {
      const level = isTandemError(error, 'FENCED') ? 'debug' : 'warn';
      this.deps.logger[level]('orphan sweep: check failed', { name, areaIndex, error });
      return false;
    }
  }

  private async repair(name: string, lease: PaxosLease, snapshot: AreaSnapshot): Promise<void> {
    const self = this.deps.context.self();
    const heldMode = this.heldMode(name);
    const findings = findOrphans(snapshot, self, heldMode, this.isWaiting(name));
    const details = { name, areaIndex: lease.areaIndex, version: snapshot.leader.leaseVersion };
    if (findings.flagMissing) {
      this.deps.logger.warn('orphan sweep: held shared here, but our flag is not on disk', details);
    }
    if (findings.releaseLeader) {
      const outcome = await lease.releaseLeader(snapshot.leader.leaseVersion);
      this.deps.logger.warn('orphan sweep: released a leader naming this host', {
        ...details,
        heldMode,
        outcome,
      });
    }
    if (!findings.clearFlag && !findings.clearTicket) return;
    await lease.updateOwnBallot((ballot) => ({
      ...ballot,
      ...(findings.clearFlag ? { modeFlags: ballot.modeFlags & ~modeFlagShared } : {}),
      ...(findings.clearFlag ? { sharedGeneration: 0 } : {}),
      ...(findings.clearTicket ? { waitTicket: 0, ticketGeneration: 0 } : {}),
    }));
    this.deps.logger.warn('orphan sweep: rewrote our ballot block to match memory', {
      ...details,
      clearedFlag: findings.clearFlag,
      clearedTicket: findings.clearTicket,
    });
  }

  private heldMode(name: string): LockMode | undefined {
    return this.deps.leases.get(name)?.mode;
  }

  private nameOf(areaIndex: number): string | undefined {
    for (const held of this.deps.leases.values())
      if (held.areaIndex === areaIndex) return held.name;
    return this.deps.directory.nameOf(areaIndex);
  }

  private isWaiting(name: string): boolean {
    return (this.waiting.get(name) ?? 0) > 0;
  }

  private selfOrUndefined(): HostInstance | undefined {
    try {
      return this.deps.context.self();
    } catch {
      return undefined;
    }
  }
}
