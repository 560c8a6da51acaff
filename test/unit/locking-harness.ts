/**
 * A small cluster for lock-manager tests: one MemoryDevice formatted as a lockspace, one
 * LockManager per simulated host on virtual time, and a fake LivenessSource whose answers the
 * test controls (which instances are dead, this host's local state).
 */
import type { BlockDevice } from '../../src/disk/block-device.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { TandemError, isTandemError, type ErrorCode } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { type LockspaceLayout, formatLockspace } from '../../src/heartbeat-store/layout.js';
import { type LeaseTimings, deriveTimings } from '../../src/heartbeat-store/timings.js';
import type {
  HostInstance,
  LivenessSource,
  LocalEvent,
  LocalState,
} from '../../src/heartbeat-store/types.js';
import { LockManager } from '../../src/locking/lock-manager.js';
import { VirtualScheduler, seededRandom } from '../sim/virtual-time.js';

export const ioTimeoutMs = 250;

/** What every host's fake liveness agrees on: which instances are dead. */
export class World {
  readonly dead = new Set<string>();
  kill(instance: HostInstance): void {
    this.dead.add(`${instance.hostId}/${instance.generation}`);
  }
}

export class FakeLiveness implements LivenessSource {
  state: LocalState = 'joined';
  private readonly listeners = new Set<(event: LocalEvent) => void>();

  constructor(
    readonly layout: LockspaceLayout,
    readonly timings: LeaseTimings,
    readonly instance: HostInstance,
    private readonly world: World,
  ) {}

  localInstance(): HostInstance {
    if (this.state === 'fenced') throw new TandemError('FENCED', 'fenced');
    if (this.state !== 'joined') throw new TandemError('LOCKSPACE_NOT_JOINED', 'not joined');
    return this.instance;
  }

  ownerLiveness(owner: HostInstance): 'alive' | 'dead' {
    return this.world.dead.has(`${owner.hostId}/${owner.generation}`) ? 'dead' : 'alive';
  }

  onLocalState(listener: (event: LocalEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  setState(state: LocalState, reason?: string): void {
    this.state = state;
    for (const listener of [...this.listeners]) listener({ state, reason });
  }
}

export interface TestHost {
  readonly hostId: number;
  readonly manager: LockManager;
  readonly liveness: FakeLiveness;
}

export interface ClusterOptions {
  readonly hostCount: number;
  readonly maxHosts?: number;
  readonly maxResources?: number;
  readonly sectorBytes?: 512 | 4096;
  /** Wraps the shared device for one host (delays, faults). */
  readonly wrap?: (device: BlockDevice, hostId: number, scheduler: VirtualScheduler) => BlockDevice;
}

export interface Cluster {
  readonly scheduler: VirtualScheduler;
  readonly device: MemoryDevice;
  readonly layout: LockspaceLayout;
  readonly world: World;
  readonly hosts: TestHost[];
  host(hostId: number): TestHost;
  run<T>(promise: Promise<T>): Promise<T>;
}

export async function createCluster(options: ClusterOptions): Promise<Cluster> {
  const scheduler = new VirtualScheduler();
  const device = new MemoryDevice({
    sizeBytes: 16 * 1024 * 1024,
    logicalSectorSizeBytes: options.sectorBytes ?? 512,
  });
  const layout = await formatLockspace(device, {
    maxHosts: options.maxHosts ?? 8,
    maxResources: options.maxResources ?? 8,
    ioTimeoutMs,
    wallMs: 0,
  });
  const timings = deriveTimings(ioTimeoutMs);
  const world = new World();
  const hosts: TestHost[] = [];
  for (let hostId = 1; hostId <= options.hostCount; hostId += 1) {
    const liveness = new FakeLiveness(layout, timings, { hostId, generation: 1 }, world);
    const manager = new LockManager({
      device: options.wrap?.(device, hostId, scheduler) ?? device,
      liveness,
      clock: scheduler.clockFor(),
      random: seededRandom(hostId),
      logger: silentLogger,
      hostNameOf: (id) => `host${id}`,
    });
    hosts.push({ hostId, manager, liveness });
  }
  return {
    scheduler,
    device,
    layout,
    world,
    hosts,
    host: (hostId) => {
      const found = hosts[hostId - 1];
      if (found === undefined) throw new Error(`no host ${hostId}`);
      return found;
    },
    run: (promise) => scheduler.runUntilSettled(promise, 60_000),
  };
}

/** An assert.rejects matcher for a TandemError code. */
export function code(expected: ErrorCode): (error: unknown) => boolean {
  return (error: unknown) => {
    if (isTandemError(error, expected)) return true;
    throw new Error(`expected ${expected}, got ${String(error)}`, { cause: error });
  };
}

/** Records what a callback saw, so a test can assert it really ran. */
export function recorder<T>(): { readonly calls: T[]; readonly listener: (value: T) => void } {
  const calls: T[] = [];
  return { calls, listener: (value) => calls.push(value) };
}
