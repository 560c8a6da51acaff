/**
 * The safety invariants of the lease simulation, checked after every scheduler step and on every
 * data write as it is issued and as it lands:
 *
 * (a) never two exclusive owners of one resource at the same true time, as the hosts themselves
 *     believe (LockService.held()); a belief is void from the moment its host crashed, fenced
 *     (closed its write gate) or began to release or convert down;
 * (b) never an exclusive holder and a shared holder (of another host) at once;
 * (c) no data write is issued to a resource's region while another host holds the resource, and
 *     no data write of an older lease version lands after one of a newer version (a write of a
 *     fenced holder that lands late would);
 * plus: lease versions of exclusive grants strictly increase per resource, a host's generation
 * increases with every join of its host id, and no two running hosts share a host id.
 * Liveness (d) and host states (e) are in host-checks.ts.
 */
import type { LockMode } from '../../src/locking/types.js';
import { decodeDataTag } from './data-tag.js';
import type { IssuedWrite, LandedWrite } from './sim-disk.js';
import type { SimCluster, SimHost } from './sim-cluster.js';

export type InvariantName =
  | 'two-exclusive-owners'
  | 'exclusive-and-shared'
  | 'write-while-other-holds'
  | 'write-after-fence'
  | 'stale-write-landed'
  | 'lease-version-not-increasing'
  | 'generation-not-increasing'
  | 'host-id-shared'
  | 'failed-too-early'
  | 'failed-too-late'
  | 'liveness'
  | 'orphaned-lease'
  | 'harness';

export interface Violation {
  readonly invariant: InvariantName;
  readonly timeMs: number;
  readonly message: string;
}

export interface Belief {
  readonly host: SimHost;
  readonly mode: LockMode;
}

/** Collects violations; the runner stops a run at the first one. */
export class ViolationLog {
  readonly violations: Violation[] = [];

  constructor(private readonly cluster: SimCluster) {}

  report(invariant: InvariantName, message: string): void {
    const violation = { invariant, timeMs: this.cluster.nowMs, message };
    this.violations.push(violation);
    this.cluster.trace.add(undefined, `VIOLATION ${invariant}: ${message}`);
  }

  get failed(): boolean {
    return this.violations.length > 0;
  }
}

/** What each running host currently believes it holds, by resource name. */
export function currentBeliefs(cluster: SimCluster): Map<string, Belief[]> {
  const beliefs = new Map<string, Belief[]>();
  for (const host of cluster.hosts) {
    const runtime = host.runtime;
    if (host.status !== 'up' || runtime === undefined || !runtime.gateOpen()) continue;
    const state = runtime.localState();
    if (state === 'fenced' || state === 'left') continue;
    for (const info of runtime.locks.held()) {
      const mode = info.heldHere;
      if (mode === undefined || host.releasing.has(info.name)) continue;
      const believed = mode === 'ex' && host.downgrading.has(info.name) ? 'sh' : mode;
      let list = beliefs.get(info.name);
      if (list === undefined) {
        list = [];
        beliefs.set(info.name, list);
      }
      list.push({ host, mode: believed });
    }
  }
  return beliefs;
}

function describe(beliefs: readonly Belief[]): string {
  return beliefs
    .map((belief) => `${belief.host.name}#${belief.host.incarnation}:${belief.mode}`)
    .join(', ');
}

export class SafetyChecker {
  /** Highest lease version granted exclusive, per resource. */
  private readonly grantedVersion = new Map<string, number>();
  /** Highest lease version whose data landed, per resource. */
  private readonly landedVersion = new Map<string, { version: number; host: number }>();
  /** Highest generation per host id. */
  private readonly generations = new Map<number, number>();
  private beliefs = new Map<string, Belief[]>();

  constructor(
    private readonly cluster: SimCluster,
    private readonly log: ViolationLog,
  ) {}

  attach(): void {
    const data = this.cluster.dataDisk;
    data.issueListeners.push((write) => this.onDataIssued(write));
    data.landListeners.push((write) => this.onDataLanded(write));
  }

  /** (a), (b): after every step. */
  afterStep(): void {
    this.beliefs = currentBeliefs(this.cluster);
    for (const [name, beliefs] of this.beliefs) {
      const exclusive = beliefs.filter((belief) => belief.mode === 'ex');
      if (exclusive.length > 1) {
        this.log.report('two-exclusive-owners', `${name} held exclusive by ${describe(exclusive)}`);
      } else if (exclusive.length === 1 && beliefs.length > 1) {
        this.log.report('exclusive-and-shared', `${name} held by ${describe(beliefs)}`);
      }
    }
  }

  resourceOfOffset(offsetBytes: number): string | undefined {
    const index = Math.floor(offsetBytes / this.cluster.config.dataRegionBytes);
    return this.cluster.config.resourceNames[index];
  }

  /** (c) at issue: the beliefs are refreshed first (the write may come in the middle of a step). */
  private onDataIssued(write: IssuedWrite): void {
    const name = this.resourceOfOffset(write.offsetBytes);
    const writer = this.cluster.host(write.host);
    if (name === undefined) {
      this.log.report('harness', `data write outside every region at ${write.offsetBytes}`);
      return;
    }
    if (writer.incarnation !== write.incarnation || writer.status !== 'up') {
      this.log.report(
        'write-after-fence',
        `${writer.name}#${write.incarnation} issued a data write to ${name} while ${writer.status}`,
      );
      return;
    }
    if (writer.runtime?.gateOpen() !== true) {
      this.log.report('write-after-fence', `${writer.name} wrote ${name} through a closed gate`);
      return;
    }
    const others = (currentBeliefs(this.cluster).get(name) ?? []).filter(
      (belief) => belief.host !== writer,
    );
    if (others.length > 0) {
      this.log.report(
        'write-while-other-holds',
        `${writer.name}#${write.incarnation} wrote ${name} while ${describe(others)} held it`,
      );
    }
  }

  /** (c) at landing: fencing-token order on the media. */
  private onDataLanded(write: LandedWrite): void {
    const tag = decodeDataTag(write.data);
    const name = this.resourceOfOffset(write.offsetBytes);
    if (tag === undefined || name === undefined) return;
    const newest = this.landedVersion.get(name);
    if (newest !== undefined && tag.leaseVersion < newest.version) {
      this.log.report(
        'stale-write-landed',
        `${name}: a write of lease version ${tag.leaseVersion} by host-${tag.host} (issued ` +
          `${write.issuedMs.toFixed(1)}, ${write.how}) landed after version ${newest.version} by host-${newest.host}`,
      );
    }
    if (newest === undefined || tag.leaseVersion > newest.version) {
      this.landedVersion.set(name, { version: tag.leaseVersion, host: tag.host });
    }
  }

  /** An exclusive grant (acquire or convert up) completed on a host. */
  onExclusiveGranted(host: SimHost, name: string, version: number): void {
    const previous = this.grantedVersion.get(name);
    if (previous !== undefined && version <= previous) {
      this.log.report(
        'lease-version-not-increasing',
        `${host.name} got ${name} exclusive at version ${version} after version ${previous}`,
      );
    }
    this.grantedVersion.set(name, Math.max(version, previous ?? 0));
  }

  /** A host joined: its generation must be new for its host id, and the id its own. */
  onJoined(host: SimHost): void {
    const instance = host.runtime?.instance;
    if (instance === undefined) return;
    const previous = this.generations.get(instance.hostId);
    if (previous !== undefined && instance.generation <= previous) {
      this.log.report(
        'generation-not-increasing',
        `${host.name} joined host id ${instance.hostId} with generation ${instance.generation} after ${previous}`,
      );
    }
    this.generations.set(instance.hostId, Math.max(instance.generation, previous ?? 0));
    for (const other of this.cluster.hosts) {
      const otherRuntime = other.runtime;
      if (other === host || other.status !== 'up' || otherRuntime === undefined) continue;
      if (otherRuntime.instance.hostId === instance.hostId && otherRuntime.gateOpen()) {
        this.log.report(
          'host-id-shared',
          `${host.name} joined host id ${instance.hostId}, which ${other.name} still holds`,
        );
      }
    }
  }
}
