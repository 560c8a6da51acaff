/**
 * An audit of the lease areas on the platters against the hosts' beliefs, every T/4 of virtual
 * time: a lease that names a running instance as its exclusive owner (leader) or as a shared
 * holder (shared flag in its ballot block) must be held by that instance, or the instance must be
 * busy on it (an acquire, convert or release in progress). An "orphaned" lease that stays so for
 * `orphanLimitMs` is a stuck lock: nobody can take it while its owner lives, and its owner does
 * not know it holds it.
 */
import { decodeBallot, decodeLeader, modeFlagShared } from '../../src/locking/lease-format.js';
import { resourceAreaOffset } from '../../src/heartbeat-store/layout.js';
import type { ViolationLog } from './invariants.js';
import type { SimCluster, SimHost } from './sim-cluster.js';

function lockIoImpaired(host: SimHost): boolean {
  const faults = host.lockView?.faults;
  if (faults === undefined) return false;
  return faults.stalled || faults.failChance > 0 || faults.lostWriteChance > 0;
}

export class LeaseAudit {
  private nextAuditMs = 0;
  /** "name/ex/hostIndex" → since when it looked orphaned. */
  private readonly orphanSince = new Map<string, number>();

  constructor(
    private readonly cluster: SimCluster,
    private readonly log: ViolationLog,
    private readonly orphanLimitMs: number,
  ) {}

  afterStep(): void {
    const now = this.cluster.nowMs;
    if (now < this.nextAuditMs) return;
    this.nextAuditMs = now + this.cluster.timings.monitorIntervalMs;
    const seen = new Set<string>();
    for (const claim of this.claims()) {
      const key = `${claim.name}/${claim.mode}/${claim.host.index}`;
      // A host whose lockspace I/O is failing or stalled cannot repair anything: the limit runs
      // from when its I/O works again (its orphan sweeper then needs a few I/O timeouts).
      if (lockIoImpaired(claim.host)) continue;
      seen.add(key);
      const since = this.orphanSince.get(key) ?? now;
      this.orphanSince.set(key, since);
      if (now - since >= this.orphanLimitMs) {
        this.log.report(
          'orphaned-lease',
          `${claim.name}: the lockspace names ${claim.host.name} (host id ${claim.hostId} ` +
            `generation ${claim.generation}) as ${claim.mode === 'ex' ? 'owner' : 'shared holder'} ` +
            `since ${since.toFixed(1)}, but it does not hold it`,
        );
        this.orphanSince.delete(key);
      }
    }
    for (const key of [...this.orphanSince.keys()])
      if (!seen.has(key)) this.orphanSince.delete(key);
  }

  /** Leases on the platters that name a running instance which neither holds nor works on them. */
  private claims(): {
    name: string;
    mode: 'ex' | 'sh';
    host: SimHost;
    hostId: number;
    generation: number;
  }[] {
    const layout = this.cluster.layout;
    const platters = this.cluster.lockDisk.platters;
    const block = Buffer.alloc(layout.blockSize);
    const found: ReturnType<LeaseAudit['claims']> = [];
    for (let area = 1; area <= layout.maxResources; area++) {
      const areaOffset = resourceAreaOffset(layout, area);
      // MemoryDevice copies synchronously inside the call.
      void platters.read(block, areaOffset);
      const leader = decodeLeader(block);
      if (leader.status !== 'record' || leader.record.name === '') continue;
      const name = leader.record.name;
      const owner = this.orphanHolder(
        name,
        leader.record.ownerHostId,
        leader.record.ownerGeneration,
        'ex',
      );
      if (owner !== undefined)
        found.push({
          name,
          mode: 'ex',
          host: owner,
          hostId: leader.record.ownerHostId,
          generation: leader.record.ownerGeneration,
        });
      for (let hostId = 1; hostId <= layout.maxHosts; hostId++) {
        void platters.read(block, areaOffset + hostId * layout.blockSize);
        const ballot = decodeBallot(block);
        if (ballot.status !== 'record' || (ballot.record.modeFlags & modeFlagShared) === 0)
          continue;
        const generation = ballot.record.sharedGeneration;
        const sharer = this.orphanHolder(name, hostId, generation, 'sh');
        if (sharer !== undefined)
          found.push({ name, mode: 'sh', host: sharer, hostId, generation });
      }
    }
    return found;
  }

  /** The running host of that instance if it does not hold `name` and is not busy on it. */
  private orphanHolder(
    name: string,
    hostId: number,
    generation: number,
    mode: 'ex' | 'sh',
  ): SimHost | undefined {
    if (hostId === 0) return undefined;
    const host = this.cluster.hosts.find((candidate) => {
      const instance = candidate.runtime?.instance;
      return (
        candidate.status === 'up' &&
        instance !== undefined &&
        instance.hostId === hostId &&
        instance.generation === generation
      );
    });
    const runtime = host?.runtime;
    if (host === undefined || runtime === undefined || host.busy.has(name)) return undefined;
    const state = runtime.localState();
    if (!runtime.gateOpen() || (state !== 'joined' && state !== 'renewal-failing'))
      return undefined;
    const held = runtime.locks.held().find((info) => info.name === name);
    // An exclusive holder also carries the leader; a shared holder its flag (and, while it
    // converts, the leader too).
    if (held !== undefined && (held.heldHere === mode || held.heldHere === 'ex')) return undefined;
    if (held !== undefined && mode === 'ex' && held.heldHere === 'sh') return host;
    return held === undefined ? host : undefined;
  }
}
