/**
 * A simulated cluster: N hosts on one VirtualScheduler, each with its own clock (drift, wall
 * offset and jumps), its own view of the shared lockspace disk and of the shared data disk, and
 * one lease stack per incarnation (HostRuntime). Hosts crash and restart (a new incarnation on
 * fresh views, which must join again with a higher generation); a network model answers the
 * peer probes, and a partition cuts a host off from it.
 *
 * The daemon's part of self-fencing is modelled here: when the write gate could not drain its
 * writes in time, tandemd exits (the role sanlock gives the watchdog), which the simulation plays
 * as a crash of that host.
 */
import type { Random } from '../../src/clock.js';
import {
  computeLayout,
  encodeHeader,
  type LockspaceLayout,
} from '../../src/heartbeat-store/layout.js';
import { deriveTimings, type LeaseTimings } from '../../src/heartbeat-store/timings.js';
import type { PeerProber } from '../../src/heartbeat-store/types.js';
import { createSeededRandom } from '../../src/disk/seeded-random.js';
import type { HostRuntime, RuntimeFactory } from './host-runtime.js';
import { type LatencyModel, SimDisk, type SimDiskView } from './sim-disk.js';
import { Trace } from './trace.js';
import { type HostClock, VirtualScheduler } from './virtual-time.js';

export interface ClusterConfig {
  readonly seed: number;
  readonly hostCount: number;
  readonly ioTimeoutMs: number;
  readonly maxHosts: number;
  readonly resourceNames: readonly string[];
  readonly sectorBytes: 512 | 4096;
  readonly diskLatency: LatencyModel;
  readonly networkLatencyMs: { readonly minMs: number; readonly maxMs: number };
  /** The largest clock-rate difference from true time, e.g. 1e-4 (0.01 %). */
  readonly driftMax: number;
  /** Hosts ask for host id index + 1; otherwise the store picks a slot. */
  readonly fixedHostIds: boolean;
  /** Bytes of the data disk per resource. */
  readonly dataRegionBytes: number;
  /** Hosts probe each other over the simulated network (isolation detection). */
  readonly probing: boolean;
}

export type HostStatus = 'down' | 'starting' | 'up' | 'fenced' | 'crashed' | 'left';

/** One fault or disturbance on a host, for the checkers' "healthy during" conditions. */
export interface FaultInterval {
  readonly kind: string;
  readonly startMs: number;
  endMs: number | undefined;
}

export class SimHost {
  status: HostStatus = 'down';
  incarnation = 0;
  runtime: HostRuntime | undefined;
  lockView: SimDiskView | undefined;
  dataView: SimDiskView | undefined;
  joinedAtMs: number | undefined;
  fencedAtMs: number | undefined;
  crashedAtMs: number | undefined;
  partitioned = false;
  readonly faults: FaultInterval[] = [];
  /** Resources the workload is releasing or converting down: its exclusive belief has ended. */
  readonly releasing = new Set<string>();
  /** Resources the workload is converting from exclusive to shared: a shared belief until done. */
  readonly downgrading = new Set<string>();
  /** Resources with an acquire, convert, value update or release in progress. */
  readonly busy = new Set<string>();
  private stops: (() => Promise<void>)[] = [];
  private startAbort: AbortController | undefined;

  constructor(
    readonly index: number,
    readonly name: string,
    readonly clock: HostClock,
    readonly random: Random,
  ) {}

  get address(): string {
    return `${this.name}:7000`;
  }

  /** Whether this host may act (its daemon runs): up or still joining. */
  get running(): boolean {
    return this.status === 'up' || this.status === 'starting' || this.status === 'fenced';
  }

  /** True when no fault touched this host during [fromMs, toMs]. */
  healthyDuring(fromMs: number, toMs: number): boolean {
    return this.faults.every(
      (fault) => fault.startMs > toMs || (fault.endMs !== undefined && fault.endMs < fromMs),
    );
  }

  beginStart(): AbortSignal {
    this.incarnation += 1;
    this.status = 'starting';
    this.stops = [];
    this.startAbort = new AbortController();
    this.releasing.clear();
    this.downgrading.clear();
    this.busy.clear();
    this.joinedAtMs = undefined;
    this.fencedAtMs = undefined;
    return this.startAbort.signal;
  }

  addStop(stop: () => Promise<void>): void {
    this.stops.push(stop);
  }

  /** Stops every loop of the incarnation (no writes: the views are dead or about to be). */
  async stopRuntime(): Promise<void> {
    this.startAbort?.abort(new Error(`${this.name} stopped`));
    const stops = this.stops;
    this.stops = [];
    for (const stop of stops.reverse()) await stop().catch(() => undefined);
  }
}

/** Listeners the scenario and the checkers attach to a cluster. */
export interface ClusterHooks {
  /** Before a host's crash takes effect (its beliefs are still readable). */
  readonly beforeCrash: ((host: SimHost, why: string) => void)[];
  readonly afterCrash: ((host: SimHost, why: string) => void)[];
  readonly afterStart: ((host: SimHost) => void)[];
  readonly onFenced: ((host: SimHost, reason: string, drained: boolean) => void)[];
}

/** Splits one seed into independent streams (one per host, disk, network, workload). */
export function seedStream(seed: number): () => number {
  const next = createSeededRandom(seed ^ 0x5eed1234);
  return () => Math.floor(next() * 4294967296);
}

export function randomFrom(seed: number): Random {
  return { next: createSeededRandom(seed) };
}

export class SimCluster {
  readonly scheduler = new VirtualScheduler();
  readonly timings: LeaseTimings;
  readonly layout: LockspaceLayout;
  readonly lockDisk: SimDisk;
  readonly dataDisk: SimDisk;
  readonly hosts: SimHost[] = [];
  readonly hooks: ClusterHooks = { beforeCrash: [], afterCrash: [], afterStart: [], onFenced: [] };
  readonly trace: Trace;
  private readonly networkRandom: Random;

  constructor(
    readonly config: ClusterConfig,
    readonly factory: RuntimeFactory,
    traceOptions: { capacity?: number; live?: (line: string) => void; debug?: boolean } = {},
  ) {
    this.trace = new Trace({
      capacity: traceOptions.capacity ?? 300,
      nowMs: () => this.scheduler.nowMs,
      live: traceOptions.live,
      debug: traceOptions.debug,
    });
    const nextSeed = seedStream(config.seed);
    this.timings = deriveTimings(config.ioTimeoutMs);
    const uuidBytes = Array.from({ length: 16 }, () =>
      (nextSeed() & 0xff).toString(16).padStart(2, '0'),
    );
    const hex = uuidBytes.join('');
    this.layout = computeLayout(
      {
        maxHosts: config.maxHosts,
        maxResources: Math.max(1, config.resourceNames.length),
        ioTimeoutMs: config.ioTimeoutMs,
        logicalSectorSizeBytes: config.sectorBytes,
        name: 'sim',
      },
      {
        uuid: `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`,
        wallMs: 1_767_225_600_000,
      },
    );
    this.lockDisk = new SimDisk({
      name: 'lockspace',
      sizeBytes: this.layout.sizeBytes,
      logicalSectorSizeBytes: config.sectorBytes,
      scheduler: this.scheduler,
      random: randomFrom(nextSeed()),
      latency: config.diskLatency,
    });
    this.dataDisk = new SimDisk({
      name: 'data',
      sizeBytes: Math.max(1, config.resourceNames.length) * config.dataRegionBytes,
      logicalSectorSizeBytes: config.sectorBytes,
      scheduler: this.scheduler,
      random: randomFrom(nextSeed()),
      latency: config.diskLatency,
    });
    this.networkRandom = randomFrom(nextSeed());
    for (let index = 0; index < config.hostCount; index++) {
      const hostRandom = randomFrom(nextSeed());
      const rate = 1 + (hostRandom.next() * 2 - 1) * config.driftMax;
      const wallOffsetMs = Math.round((hostRandom.next() * 2 - 1) * 5_000);
      const clock = this.scheduler.clockFor({ rate, wallOffsetMs });
      this.hosts.push(new SimHost(index, `host-${index}`, clock, hostRandom));
    }
  }

  /** Writes the lockspace header (the rest of a fresh MemoryDevice already reads as zeroes). */
  async format(): Promise<void> {
    const header = Buffer.alloc(4096);
    encodeHeader(this.layout).copy(header, 0);
    await this.lockDisk.platters.write(header, 0);
  }

  host(index: number): SimHost {
    const host = this.hosts[index];
    if (host === undefined) throw new Error(`no host ${index}`);
    return host;
  }

  get nowMs(): number {
    return this.scheduler.nowMs;
  }

  /**
   * Starts a new incarnation of a host: fresh views, open, join, lock manager. Resolves true
   * once joined; false if it failed or the host crashed meanwhile.
   */
  async startHost(index: number): Promise<boolean> {
    const host = this.host(index);
    if (host.running) throw new Error(`${host.name} is already running`);
    const signal = host.beginStart();
    const incarnation = host.incarnation;
    host.lockView = this.lockDisk.viewFor(index, incarnation);
    host.dataView = this.dataDisk.viewFor(index, incarnation);
    host.lockView.onTornCrash = () => this.crashHost(index, 'torn write');
    host.dataView.onTornCrash = () => this.crashHost(index, 'torn data write');
    this.trace.add(index, `start incarnation ${incarnation}`);
    try {
      const runtime = await this.factory({
        hostIndex: index,
        hostName: host.name,
        hostId: this.config.fixedHostIds ? index + 1 : undefined,
        address: host.address,
        lockDevice: host.lockView,
        dataDevice: host.dataView,
        clock: host.clock,
        random: host.random,
        logger: this.trace.loggerFor(index),
        prober: this.config.probing ? this.proberFor(host) : undefined,
        signal,
        onStoppable: (stop) => host.addStop(stop),
      });
      if (host.incarnation !== incarnation || host.status !== 'starting') {
        await runtime.stop().catch(() => undefined);
        return false;
      }
      host.runtime = runtime;
      host.status = 'up';
      host.joinedAtMs = this.nowMs;
      runtime.onFenced((notice) => this.onFenced(host, incarnation, notice.reason, notice.drained));
      this.trace.add(index, `joined`, { ...runtime.instance });
      for (const hook of this.hooks.afterStart) hook(host);
      return true;
    } catch (error) {
      if (host.incarnation === incarnation && host.status === 'starting') {
        this.trace.add(index, 'start failed', { error });
        await host.stopRuntime();
        host.status = 'down';
      }
      return false;
    }
  }

  private onFenced(host: SimHost, incarnation: number, reason: string, drained: boolean): void {
    if (host.incarnation !== incarnation || host.status !== 'up') return;
    host.status = 'fenced';
    host.fencedAtMs ??= this.nowMs;
    this.trace.add(host.index, `fenced`, { reason, drained });
    for (const hook of this.hooks.onFenced) hook(host, reason, drained);
    // Writes stuck past the drain time: tandemd exits, as sanlock's watchdog would reset.
    if (!drained) this.crashHost(host.index, 'write gate could not drain');
  }

  /** Power loss (or process exit) of a host: its views die, its loops stop. */
  crashHost(index: number, why: string): void {
    const host = this.host(index);
    if (!host.running) return;
    for (const hook of this.hooks.beforeCrash) hook(host, why);
    this.trace.add(index, `crash (${why})`);
    const endFault = this.beginFault(index, 'crash');
    host.status = 'crashed';
    host.crashedAtMs = this.nowMs;
    host.lockView?.crash();
    host.dataView?.crash();
    host.runtime = undefined;
    endFault();
    void host.stopRuntime();
    for (const hook of this.hooks.afterCrash) hook(host, why);
  }

  /** Stops a fenced or running incarnation without a crash (before it joins again). */
  async retireHost(index: number, why: string): Promise<void> {
    const host = this.host(index);
    if (!host.running) return;
    this.trace.add(index, `retire (${why})`);
    host.status = 'down';
    host.runtime = undefined;
    await host.stopRuntime();
  }

  /**
   * Ends the run: every incarnation stops (no writes). Not awaited: nothing runs the scheduler
   * any more, and the store's close must not need it.
   */
  stopAll(): void {
    for (const host of this.hosts) {
      if (!host.running) continue;
      host.status = 'down';
      host.runtime = undefined;
      void host.stopRuntime();
    }
  }

  /** Opens a fault interval on a host; returns the function that ends it. */
  beginFault(index: number, kind: string): () => void {
    const host = this.host(index);
    const fault: FaultInterval = { kind, startMs: this.nowMs, endMs: undefined };
    host.faults.push(fault);
    this.trace.add(index, `fault ${kind} begins`);
    return () => {
      if (fault.endMs !== undefined) return;
      fault.endMs = this.nowMs;
      this.trace.add(index, `fault ${kind} ends`);
    };
  }

  private proberFor(source: SimHost): PeerProber {
    return {
      probe: (address, signal) =>
        new Promise<boolean>((resolve, reject) => {
          const target = this.hosts.find((host) => host.address === address);
          const reachable =
            target !== undefined && target.running && !source.partitioned && !target.partitioned;
          const { minMs, maxMs } = this.config.networkLatencyMs;
          const latencyMs = minMs + this.networkRandom.next() * (maxMs - minMs);
          // An unreachable peer does not answer: the caller's own timeout (or ours) decides.
          const delayMs = reachable ? 2 * latencyMs : this.timings.ioTimeoutMs;
          const onAbort = (): void => {
            cancel();
            reject(signal.reason);
          };
          const cancel = this.scheduler.after(delayMs, () => {
            signal.removeEventListener('abort', onAbort);
            resolve(reachable && source.running);
          });
          if (signal.aborted) onAbort();
          else signal.addEventListener('abort', onAbort, { once: true });
        }),
    };
  }
}
