/**
 * A simulated cluster for heartbeat-store tests: one formatted MemoryDevice shared by several
 * HeartbeatStore instances (one per simulated host), all on one VirtualScheduler.
 */
import type { BlockDevice } from '../../src/disk/block-device.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { HeartbeatStore } from '../../src/heartbeat-store/heartbeat-store.js';
import {
  type LockspaceLayout,
  formatLockspace,
  hostSlotOffset,
} from '../../src/heartbeat-store/layout.js';
import { type DecodedSlot, decodeHostSlot } from '../../src/heartbeat-store/slot-format.js';
import type { HostEvent, LocalEvent, PeerProber } from '../../src/heartbeat-store/types.js';
import { silentLogger } from '../../src/log.js';
import { type HostClock, VirtualScheduler, seededRandom } from '../sim/virtual-time.js';

export interface TestHost {
  readonly name: string;
  readonly store: HeartbeatStore;
  readonly clock: HostClock;
  /** Every HostEvent this host saw, with the true time it was emitted. */
  readonly events: { atMs: number; event: HostEvent }[];
  readonly localEvents: { atMs: number; event: LocalEvent }[];
}

export interface AddHostOptions {
  readonly hostId?: number;
  readonly address?: string;
  readonly device?: BlockDevice;
  readonly prober?: PeerProber;
}

export class TestCluster {
  private seed = 1;

  private constructor(
    readonly scheduler: VirtualScheduler,
    readonly base: MemoryDevice,
    readonly layout: LockspaceLayout,
  ) {}

  static async create(
    options: { sectorBytes?: 512 | 4096; maxHosts?: number; ioTimeoutMs?: number } = {},
  ): Promise<TestCluster> {
    const scheduler = new VirtualScheduler();
    const base = new MemoryDevice({
      sizeBytes: 8 * 1024 * 1024,
      logicalSectorSizeBytes: options.sectorBytes ?? 512,
      alignmentBytes: options.sectorBytes ?? 512,
    });
    const layout = await formatLockspace(base, {
      ioTimeoutMs: options.ioTimeoutMs ?? 250,
      maxHosts: options.maxHosts ?? 8,
      maxResources: 4,
      name: 'test',
      wallMs: 0,
    });
    return new TestCluster(scheduler, base, layout);
  }

  async addHost(name: string, options: AddHostOptions = {}): Promise<TestHost> {
    const clock = this.scheduler.clockFor();
    const store = await HeartbeatStore.open(
      options.device ?? this.base.openAnother({ description: name }),
      { hostName: name, hostId: options.hostId, address: options.address ?? `${name}:7443` },
      { clock, random: seededRandom(this.seed++), logger: silentLogger, prober: options.prober },
    );
    const host: TestHost = { name, store, clock, events: [], localEvents: [] };
    store.watch((event) => host.events.push({ atMs: this.scheduler.nowMs, event }));
    store.onLocalState((event) => host.localEvents.push({ atMs: this.scheduler.nowMs, event }));
    return host;
  }

  run<T>(promise: Promise<T>): Promise<T> {
    return this.scheduler.runUntilSettled(promise);
  }

  async readSlot(hostId: number): Promise<DecodedSlot> {
    const buffer = Buffer.alloc(4096);
    await this.base.read(buffer, hostSlotOffset(this.layout, hostId));
    return decodeHostSlot(buffer, hostId, this.layout.blockSize);
  }

  async closeAll(hosts: readonly TestHost[]): Promise<void> {
    await this.run(Promise.all(hosts.map((host) => host.store.close())));
  }
}

/** The first time `host` saw `hostId` in `state`, or undefined. */
export function firstStateAt(host: TestHost, hostId: number, state: string): number | undefined {
  return host.events.find((e) => e.event.host.hostId === hostId && e.event.host.state === state)
    ?.atMs;
}
