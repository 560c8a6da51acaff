/**
 * The timing invariants of the lease simulation:
 *
 * (d) liveness: when a holder crashes while the rest of the cluster is healthy, a host waiting
 *     for its resource gets it within hostDeadMs + livenessSlackMs of the crash;
 * (e) host states: an observer never calls a host instance 'failed' before (the last change that
 *     landed in its slot + hostDeadMs), and calls a crashed instance 'failed' no later than
 *     crash + hostDeadMs + monitorIntervalMs + 2T while the observer itself is healthy.
 *
 * "Healthy" means no fault interval of any host other than the crashed one (stall, failing or
 * slow disk, lost or torn writes, partition, crash) overlaps the window being judged.
 */
import type { HostInstance } from '../../src/heartbeat-store/types.js';
import type { LockMode } from '../../src/locking/types.js';
import type { ViolationLog } from './invariants.js';
import { currentBeliefs } from './invariants.js';
import type { SimCluster, SimHost } from './sim-cluster.js';
import type { LandedWrite } from './sim-disk.js';
import { hostSlotBytes } from '../../src/heartbeat-store/layout.js';

interface Waiter {
  readonly host: SimHost;
  readonly incarnation: number;
  readonly name: string;
  readonly mode: LockMode;
  readonly startMs: number;
  /** True time when the caller's wait ends. */
  readonly untilMs: number;
  pending: boolean;
}

interface LivenessWatch {
  readonly name: string;
  readonly crashed: SimHost;
  readonly crashedIncarnation: number;
  readonly crashMs: number;
  readonly deadlineMs: number;
  satisfied: boolean;
}

interface FailedWatch {
  readonly crashed: SimHost;
  readonly crashedIncarnation: number;
  readonly instance: HostInstance;
  readonly crashMs: number;
  readonly deadlineMs: number;
  /** Observer index → the observer's incarnation when the crash happened. */
  readonly observers: Map<number, number>;
}

export interface HostChecksOptions {
  /** Allowed time after the dead time for a waiter to get a crashed holder's lease. */
  readonly livenessSlackMs: number;
  /** Clock-rate allowance in the "not before" bound (relative, e.g. 2 × drift). */
  readonly rateAllowance: number;
}

export class HostChecker {
  /** How many liveness and failed-state deadlines were judged (not skipped as unhealthy). */
  readonly judgedCounts = { liveness: 0, failedState: 0, failedEarly: 0 };
  private readonly waiters = new Set<Waiter>();
  private readonly livenessWatches: LivenessWatch[] = [];
  private readonly failedWatches: FailedWatch[] = [];
  /** Host id → true time when the last write landed in the first block of its slot. */
  private readonly slotLandedMs = new Map<number, number>();
  /** "hostId/generation/renewedWallMs" of each slot record → true time it landed (last time). */
  private readonly recordLandedMs = new Map<string, number>();
  /** Observer-instance-and-target keys already judged for the "not before" bound. */
  private readonly judged = new Set<string>();

  constructor(
    private readonly cluster: SimCluster,
    private readonly log: ViolationLog,
    private readonly options: HostChecksOptions,
  ) {}

  attach(): void {
    const layout = this.cluster.layout;
    const slotsEnd = layout.hostSlotsOffset + layout.maxHosts * hostSlotBytes;
    this.cluster.lockDisk.landListeners.push((write) => {
      const first = write.offsetBytes;
      const last = write.offsetBytes + write.lengthBytes;
      for (
        let offset = Math.max(first, layout.hostSlotsOffset);
        offset < Math.min(last, slotsEnd);
      ) {
        const index = Math.floor((offset - layout.hostSlotsOffset) / hostSlotBytes);
        const blockStart = layout.hostSlotsOffset + index * hostSlotBytes;
        if (offset < blockStart + layout.blockSize) {
          this.slotLandedMs.set(index + 1, write.landedMs);
          this.noteSlotRecord(index + 1, write, blockStart - write.offsetBytes);
        }
        offset = blockStart + hostSlotBytes;
      }
    });
  }

  /** Remembers when the slot record (generation, renewal wall ms) in a landed write landed. */
  private noteSlotRecord(hostId: number, write: LandedWrite, startInWrite: number): void {
    // Host slot record (docs/leases.md): 24 u64 generation, 40 u64 wall ms at renewal.
    if (startInWrite < 0 || write.lengthBytes < startInWrite + 48) return;
    const generation = Number(write.data.readBigUInt64LE(startInWrite + 24));
    const renewedWallMs = Number(write.data.readBigUInt64LE(startInWrite + 40));
    this.recordLandedMs.set(`${hostId}/${generation}/${renewedWallMs}`, write.landedMs);
  }

  /** An acquire (or convert) with a wait began; returns the function to call when it ends. */
  waitBegan(host: SimHost, name: string, mode: LockMode, waitMs: number): () => void {
    const waiter: Waiter = {
      host,
      incarnation: host.incarnation,
      name,
      mode,
      startMs: this.cluster.nowMs,
      untilMs: this.cluster.nowMs + waitMs * 0.999,
      pending: true,
    };
    this.waiters.add(waiter);
    return () => {
      waiter.pending = false;
      this.waiters.delete(waiter);
    };
  }

  /** A host got a resource (any mode): a liveness watch on it is satisfied. */
  granted(host: SimHost, name: string): void {
    for (const watch of this.livenessWatches) {
      if (watch.name !== name || watch.satisfied) continue;
      if (host === watch.crashed && host.incarnation === watch.crashedIncarnation) continue;
      watch.satisfied = true;
    }
  }

  /** Before a crash: note what the host held and who watched it. */
  beforeCrash(host: SimHost): void {
    const now = this.cluster.nowMs;
    const timings = this.cluster.timings;
    const runtime = host.runtime;
    if (host.status !== 'up' || runtime === undefined) return;
    const beliefs = currentBeliefs(this.cluster);
    for (const [name, holders] of beliefs) {
      if (!holders.some((belief) => belief.host === host)) continue;
      if (holders.some((belief) => belief.host !== host)) continue;
      this.livenessWatches.push({
        name,
        crashed: host,
        crashedIncarnation: host.incarnation,
        crashMs: now,
        deadlineMs: now + timings.hostDeadMs + this.options.livenessSlackMs,
        satisfied: false,
      });
    }
    const observers = new Map<number, number>();
    for (const other of this.cluster.hosts) {
      if (other === host || other.status !== 'up' || other.joinedAtMs === undefined) continue;
      observers.set(other.index, other.incarnation);
    }
    this.failedWatches.push({
      crashed: host,
      crashedIncarnation: host.incarnation,
      instance: runtime.instance,
      crashMs: now,
      deadlineMs: now + timings.hostDeadMs + timings.monitorIntervalMs + 2 * timings.ioTimeoutMs,
      observers,
    });
  }

  afterStep(): void {
    this.checkNotFailedEarly();
    this.checkFailedWatches();
    this.checkLivenessWatches();
  }

  /** Whether every host but `except` stayed free of faults during [fromMs, toMs]. */
  private clusterHealthy(except: SimHost, fromMs: number, toMs: number): boolean {
    return this.cluster.hosts.every((host) => host === except || host.healthyDuring(fromMs, toMs));
  }

  /** (e), lower bound: for every observer and every instance it calls failed, once. */
  private checkNotFailedEarly(): void {
    const now = this.cluster.nowMs;
    const deadMs = this.cluster.timings.hostDeadMs * (1 - this.options.rateAllowance);
    for (const observer of this.cluster.hosts) {
      const runtime = observer.runtime;
      if (observer.status !== 'up' || runtime === undefined) continue;
      for (const view of runtime.hosts()) {
        if (view.state !== 'failed' || view.self) continue;
        const key = `${observer.index}.${observer.incarnation}:${view.hostId}.${view.generation}`;
        if (this.judged.has(key)) continue;
        this.judged.add(key);
        this.judgedCounts.failedEarly += 1;
        // The observer's verdict rests on the record it last read: that record must have stood
        // on the platters for the dead time (a read sees the platters at its completion).
        const recordKey = `${view.hostId}/${view.generation}/${view.renewedWallMs}`;
        const landedMs = this.recordLandedMs.get(recordKey);
        if (landedMs !== undefined && now < landedMs + deadMs) {
          this.log.report(
            'failed-too-early',
            `${observer.name} calls host id ${view.hostId} generation ${view.generation} failed ` +
              `${(now - landedMs).toFixed(1)} ms after the record it shows landed (dead time ${this.cluster.timings.hostDeadMs})`,
          );
        }
      }
    }
  }

  /** (e), upper bound: every healthy observer calls a crashed instance failed in time. */
  private checkFailedWatches(): void {
    const now = this.cluster.nowMs;
    for (const watch of this.failedWatches) {
      if (watch.observers.size === 0 || now < watch.deadlineMs) continue;
      // Once the slot changed (the host joined again), the old instance is simply replaced.
      const restarted = (this.slotLandedMs.get(watch.instance.hostId) ?? 0) > watch.crashMs;
      for (const [index, incarnation] of watch.observers) {
        watch.observers.delete(index);
        const observer = this.cluster.host(index);
        const runtime = observer.runtime;
        if (restarted || observer.incarnation !== incarnation || runtime === undefined) continue;
        if (observer.status !== 'up') continue;
        // Only the observer's own disk decides what it sees of the crashed host's slot.
        if (!observer.healthyDuring(watch.crashMs - this.cluster.timings.hostDeadMs, now)) continue;
        const view = runtime
          .hosts()
          .find((candidate) => candidate.hostId === watch.instance.hostId);
        if (view === undefined || view.generation !== watch.instance.generation) continue;
        this.judgedCounts.failedState += 1;
        if (view.state !== 'failed') {
          this.log.report(
            'failed-too-late',
            `${observer.name} still calls ${watch.crashed.name} (host id ${view.hostId}) ` +
              `'${view.state}' ${(now - watch.crashMs).toFixed(1)} ms after its crash`,
          );
        }
      }
    }
  }

  /** (d): a crashed holder's resource reaches a waiter in time when the cluster is healthy. */
  private checkLivenessWatches(): void {
    const now = this.cluster.nowMs;
    for (let index = this.livenessWatches.length - 1; index >= 0; index--) {
      const watch = this.livenessWatches[index];
      if (watch === undefined || now < watch.deadlineMs) continue;
      this.livenessWatches.splice(index, 1);
      if (watch.satisfied) {
        this.judgedCounts.liveness += 1;
        continue;
      }
      const fromMs = watch.crashMs - 2 * this.cluster.timings.ioTimeoutMs;
      if (!this.clusterHealthy(watch.crashed, fromMs, now)) continue;
      const waiter = [...this.waiters].find(
        (candidate) =>
          candidate.pending &&
          candidate.name === watch.name &&
          candidate.host !== watch.crashed &&
          candidate.host.incarnation === candidate.incarnation &&
          candidate.host.status === 'up' &&
          candidate.host.joinedAtMs !== undefined &&
          candidate.host.joinedAtMs <= watch.crashMs &&
          candidate.startMs <= watch.crashMs + this.cluster.timings.hostDeadMs &&
          candidate.untilMs >= now,
      );
      if (waiter === undefined) continue;
      this.judgedCounts.liveness += 1;
      this.log.report(
        'liveness',
        `${watch.name}: ${watch.crashed.name} crashed at ${watch.crashMs.toFixed(1)}; ` +
          `${waiter.host.name} has waited since ${waiter.startMs.toFixed(1)} and still has not got it`,
      );
    }
  }
}
