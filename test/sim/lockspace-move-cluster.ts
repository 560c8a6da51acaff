/**
 * A simulated cluster for moving a lockspace while every host uses it
 * (docs/adr/0002-moving-the-lockspace-lv.md), on virtual time and replayable by seed.
 *
 * Two shared disks: OLD, formatted as a lockspace, and NEW, blank and of the same size. Each host
 * has its own handles on both (MemoryDevice.openAnother), each wrapped in a FaultInjectingDevice
 * with small seeded delays so that the hosts' I/Os interleave; a MovableLockspaceDevice over its
 * OLD handle whose `locate` returns its NEW handle (the VG metadata's role); a HeartbeatStore on
 * the movable device with its `beforeSlotWrite` hook; and a LockManager on the movable device.
 * A crash makes every handle of a host fail from then on and stops its loops without leaving.
 *
 * Every write is watched as it lands on either disk, and after every scheduler step the checker
 * looks for:
 * - two hosts that each believe they hold one resource exclusively (or one exclusively and
 *   another shared) at the same time; a crashed host, or one whose store no longer renews
 *   (fenced, left), does not count;
 * - a lease write (outside the header and the host slots) landing on OLD after `forwarded` has
 *   landed in OLD's header: a lease decision in the copy that is no longer the lockspace;
 * - a lease write landing on NEW before that, other than the mover's copy.
 */
import type { Random } from '../../src/clock.js';
import { assert } from '../../src/errors.js';
import type {
  BlockDevice,
  BlockStatusExtent,
  DiscardOptions,
  WriteOptions,
  WriteZeroesOptions,
} from '../../src/disk/block-device.js';
import { FaultInjectingDevice } from '../../src/disk/fault-device.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { createSeededRandom } from '../../src/disk/seeded-random.js';
import { HeartbeatStore } from '../../src/heartbeat-store/heartbeat-store.js';
import {
  type LockspaceLayout,
  type LockspaceMoveMark,
  decodeHeaderRecord,
  formatLockspace,
  noMoveMark,
} from '../../src/heartbeat-store/layout.js';
import type { MoverContext } from '../../src/heartbeat-store/lockspace-move.js';
import { MovableLockspaceDevice } from '../../src/heartbeat-store/movable-device.js';
import { type LeaseTimings, deriveTimings } from '../../src/heartbeat-store/timings.js';
import { LockManager } from '../../src/locking/lock-manager.js';
import type { Logger } from '../../src/log.js';
import { Trace } from './trace.js';
import { type HostClock, VirtualScheduler, seededRandom } from './virtual-time.js';

export type Copy = 'old' | 'new';

/** A write as it reached one of the two disks. */
export interface LandedWrite {
  readonly copy: Copy;
  readonly hostId: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  /** The bytes written (undefined for a discard or a zeroing). */
  readonly data: Buffer | undefined;
}

/**
 * A handle that reports every write once it reached the disk below (MemoryDevice completes it
 * inside the call, so the report comes at the write's virtual moment).
 */
class WatchedDevice implements BlockDevice {
  constructor(
    private readonly base: BlockDevice,
    private readonly landed: (write: Omit<LandedWrite, 'copy' | 'hostId'>) => void,
  ) {}

  get description(): string {
    return this.base.description;
  }
  get sizeBytes(): number {
    return this.base.sizeBytes;
  }
  get alignmentBytes(): number {
    return this.base.alignmentBytes;
  }
  get logicalSectorSizeBytes(): number {
    return this.base.logicalSectorSizeBytes;
  }
  get physicalSectorSizeBytes(): number {
    return this.base.physicalSectorSizeBytes;
  }
  get maximumIoBytes(): number {
    return this.base.maximumIoBytes;
  }
  get readOnly(): boolean {
    return this.base.readOnly;
  }
  get capabilities(): BlockDevice['capabilities'] {
    return this.base.capabilities;
  }
  read(buffer: Buffer, offsetBytes: number): Promise<void> {
    return this.base.read(buffer, offsetBytes);
  }
  async write(buffer: Buffer, offsetBytes: number, options?: WriteOptions): Promise<void> {
    await this.base.write(buffer, offsetBytes, options);
    this.landed({ offsetBytes, lengthBytes: buffer.length, data: Buffer.from(buffer) });
  }
  flush(): Promise<void> {
    return this.base.flush();
  }
  async discard(offsetBytes: number, lengthBytes: number, options?: DiscardOptions) {
    await this.base.discard(offsetBytes, lengthBytes, options);
    this.landed({ offsetBytes, lengthBytes, data: undefined });
  }
  async writeZeroes(offsetBytes: number, lengthBytes: number, options?: WriteZeroesOptions) {
    await this.base.writeZeroes(offsetBytes, lengthBytes, options);
    this.landed({ offsetBytes, lengthBytes, data: undefined });
  }
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<BlockStatusExtent[]> {
    return this.base.blockStatus(offsetBytes, lengthBytes);
  }
  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.base.cache(offsetBytes, lengthBytes);
  }
  close(): Promise<void> {
    return this.base.close();
  }
}

export interface MoveHost {
  readonly hostId: number;
  readonly name: string;
  readonly clock: HostClock;
  readonly random: Random;
  readonly logger: Logger;
  /** Every handle this host opened (a crash fails them all). */
  readonly handles: FaultInjectingDevice[];
  /** The handle the host opened its lockspace on, and the copy it is on. */
  readonly first: FaultInjectingDevice;
  readonly firstCopy: Copy;
  /** Its handle on NEW, which `locate` returns (undefined for a host opened on a plain handle). */
  readonly next: FaultInjectingDevice | undefined;
  readonly movable: MovableLockspaceDevice | undefined;
  readonly store: HeartbeatStore;
  readonly manager: LockManager;
  /** The epochs `locate` was asked for. */
  readonly located: number[];
  crashed: boolean;
  crashedAtMs: number | undefined;
}

export interface AddHostOptions {
  /** The copy the host opens its lockspace on (OLD by default). */
  readonly copy?: Copy;
  /** A MovableLockspaceDevice (the default), or a plain handle. */
  readonly movable?: boolean;
  /** The move the movable device already left (a host opened on NEW after the commit point). */
  readonly resolvedEpoch?: number;
}

export interface MoveClusterHooks {
  /** A host's `locate` was called (it read a `moving` mark it is not in yet). */
  onLocate?: (host: MoveHost, epoch: number) => void;
  /** A write reached OLD or NEW. */
  onLanded?: (write: LandedWrite) => void;
  /** After each scheduler step, after the checks. */
  afterStep?: () => void;
}

export const moveIoTimeoutMs = 250;
/** The host whose lockspace moves are checked as the mover (its copy writes go to NEW). */
export const moverHostId = 1;

/** Seeded delays per handle: most I/Os take 0-1 ms, a few up to ~20 ms (T is 250 ms). */
const delayBuckets: readonly { readonly delayMs: number; readonly chance: number }[] = [
  { delayMs: 0.5, chance: 0.5 },
  { delayMs: 2, chance: 0.3 },
  { delayMs: 6, chance: 0.1 },
  { delayMs: 15, chance: 0.03 },
];

export class MoveCluster {
  readonly scheduler = new VirtualScheduler();
  readonly trace: Trace;
  readonly hosts = new Map<number, MoveHost>();
  readonly violations: string[] = [];
  readonly hooks: MoveClusterHooks = {};
  readonly timings: LeaseTimings;
  /** OLD's header mark as the last write that landed there says, and when forwarded landed. */
  oldMark: LockspaceMoveMark = noMoveMark;
  forwardedLandedAtMs: number | undefined;
  private handleCount = 0;

  private constructor(
    readonly seed: number,
    readonly oldDisk: MemoryDevice,
    readonly newDisk: MemoryDevice,
    readonly layout: LockspaceLayout,
  ) {
    this.timings = deriveTimings(layout.ioTimeoutMs);
    this.trace = new Trace({
      capacity: 600,
      nowMs: () => this.scheduler.nowMs,
      debug: process.env['TANDEM_SIM_DEBUG'] === '1',
      live:
        process.env['TANDEM_SIM_LIVE'] === '1'
          ? (line) => process.stdout.write(`${line}\n`)
          : undefined,
    });
  }

  static async create(seed: number): Promise<MoveCluster> {
    const sizeBytes = 1024 * 1024;
    const oldDisk = new MemoryDevice({ sizeBytes, description: 'OLD' });
    const newDisk = new MemoryDevice({ sizeBytes, description: 'NEW' });
    const layout = await formatLockspace(oldDisk, {
      ioTimeoutMs: moveIoTimeoutMs,
      maxHosts: 8,
      maxResources: 16,
      name: 'move-sim',
      wallMs: 0,
    });
    return new MoveCluster(seed, oldDisk, newDisk, layout);
  }

  get nowMs(): number {
    return this.scheduler.nowMs;
  }

  host(hostId: number): MoveHost {
    const host = this.hosts.get(hostId);
    if (host === undefined) throw new Error(`no host ${hostId}`);
    return host;
  }

  /** A new handle of `host` on `copy`: watched, with seeded delays on virtual time. */
  handle(host: Pick<MoveHost, 'hostId' | 'clock' | 'handles'>, copy: Copy): FaultInjectingDevice {
    const disk = copy === 'old' ? this.oldDisk : this.newDisk;
    const name = `h${host.hostId} ${copy.toUpperCase()}#${++this.handleCount}`;
    const watched = new WatchedDevice(disk.openAnother({ description: name }), (write) =>
      this.onLanded({ ...write, copy, hostId: host.hostId }),
    );
    const draw = createSeededRandom(this.seed * 7919 + this.handleCount * 104_729);
    const device = new FaultInjectingDevice(watched, {
      random: draw,
      sleep: (delayMs) => host.clock.sleep(delayMs),
      description: name,
    });
    for (const { delayMs, chance } of delayBuckets) {
      device.delayIo({ delayMs, match: { predicate: () => draw() < chance } });
    }
    host.handles.push(device);
    if (this.hosts.get(host.hostId)?.crashed === true) {
      void device.crash({ keep: 'all' }).catch(() => undefined);
    }
    return device;
  }

  /** Opens a host's lockspace (does not join). */
  async addHost(hostId: number, options: AddHostOptions = {}): Promise<MoveHost> {
    if (this.hosts.has(hostId)) throw new Error(`host ${hostId} exists`);
    const name = `host${hostId}`;
    const clock = this.scheduler.clockFor();
    const logger = this.trace.loggerFor(hostId);
    const random = seededRandom(this.seed * 1000 + hostId);
    const handles: FaultInjectingDevice[] = [];
    const shell = { hostId, clock, handles };
    const firstCopy = options.copy ?? 'old';
    const first = this.handle(shell, firstCopy);
    const useMovable = options.movable ?? true;
    const next = useMovable ? this.handle(shell, 'new') : undefined;
    const located: number[] = [];
    const movable =
      next === undefined
        ? undefined
        : new MovableLockspaceDevice({
            device: first,
            resolvedEpoch: options.resolvedEpoch,
            locate: (epoch) => {
              located.push(epoch);
              this.trace.add(hostId, `locate move ${epoch}`);
              const self = this.hosts.get(hostId);
              if (self !== undefined) this.hooks.onLocate?.(self, epoch);
              return Promise.resolve(next);
            },
            ioTimeoutMs: this.layout.ioTimeoutMs,
            clock,
            logger,
          });
    const device: BlockDevice = movable ?? first;
    const store = await this.drive(
      HeartbeatStore.open(
        device,
        { hostName: name, hostId, address: `${name}:7443` },
        {
          clock,
          random,
          logger,
          beforeSlotWrite:
            movable === undefined ? undefined : (purpose) => movable.beforeSlotWrite(purpose),
        },
      ),
      4 * this.timings.ioTimeoutMs,
      `open ${name}`,
    );
    movable?.setLiveness((owner) => store.ownerLiveness(owner));
    const manager = new LockManager({
      device,
      liveness: store,
      clock,
      random,
      logger,
      hostNameOf: (id) => `host${id}`,
    });
    const host: MoveHost = {
      hostId,
      name,
      clock,
      random,
      logger,
      handles,
      first,
      firstCopy,
      next,
      movable,
      store,
      manager,
      located,
      crashed: false,
      crashedAtMs: undefined,
    };
    this.hosts.set(hostId, host);
    return host;
  }

  /** The mover's side of a host (lockspace-move.ts). */
  moverContext(host: MoveHost): MoverContext {
    if (host.movable === undefined) throw new Error(`${host.name} has no movable device`);
    return { store: host.store, device: host.movable, clock: host.clock, logger: host.logger };
  }

  /**
   * Power loss of a host: every handle fails from now on (writes already on the disk stay), its
   * store stops without leaving, its lock manager stops; its pending promises are abandoned.
   */
  crash(host: MoveHost, why: string): void {
    if (host.crashed) return;
    host.crashed = true;
    host.crashedAtMs = this.nowMs;
    this.trace.add(host.hostId, `CRASH (${why})`);
    for (const device of host.handles) void device.crash({ keep: 'all' }).catch(() => undefined);
    void host.manager.close();
    void host.store.close().catch(() => undefined);
  }

  /**
   * Stops a host that holds nothing (its join was refused) and forgets it, so that it can be
   * opened again, e.g. on the other copy, as the server reopens a lockspace from the metadata.
   */
  async retire(host: MoveHost, why: string): Promise<void> {
    assert(host.manager.held().length === 0, `${host.name} holds no lease`);
    this.trace.add(host.hostId, `retire (${why})`);
    this.hosts.delete(host.hostId);
    await host.manager.close();
    await this.drive(host.store.close(), 4 * this.timings.ioTimeoutMs, `close ${host.name}`);
  }

  /** Whether a host's beliefs count: not crashed, and its store still renews. */
  counts(host: MoveHost): boolean {
    if (host.crashed) return false;
    const state = host.store.localState();
    return state === 'joined' || state === 'renewal-failing';
  }

  private onLanded(write: LandedWrite): void {
    const layout = this.layout;
    const end = write.offsetBytes + write.lengthBytes;
    const touchesLeases = end > layout.directoryOffset;
    if (write.copy === 'old' && write.offsetBytes < layout.hostSlotsOffset && write.data) {
      const { mark } = decodeHeaderRecord(write.data, 'OLD');
      this.oldMark = mark;
      this.trace.add(write.hostId, `OLD header now says ${mark.state} ${mark.epoch}`);
      if (mark.state === 'forwarded') this.forwardedLandedAtMs ??= this.nowMs;
    }
    if (touchesLeases && write.copy === 'old' && this.forwardedLandedAtMs !== undefined) {
      this.violate(
        `host${write.hostId} wrote OLD at ${write.offsetBytes}+${write.lengthBytes} (a lease ` +
          `write) after the forwarded mark landed there at ${this.forwardedLandedAtMs} ms`,
      );
    }
    const copying = write.hostId === moverHostId;
    if (touchesLeases && write.copy === 'new' && this.forwardedLandedAtMs === undefined) {
      if (!copying) {
        this.violate(
          `host${write.hostId} wrote NEW at ${write.offsetBytes}+${write.lengthBytes} (a lease ` +
            `write) before the forwarded mark landed in OLD`,
        );
      }
    }
    this.hooks.onLanded?.(write);
  }

  violate(message: string): void {
    this.violations.push(`${this.nowMs.toFixed(3)} ms: ${message}`);
    this.trace.add(undefined, `VIOLATION ${message}`);
  }

  /** The invariants that hold after every step (top of this file). */
  check(): void {
    const holders = new Map<string, { host: MoveHost; mode: string }[]>();
    for (const host of this.hosts.values()) {
      if (!this.counts(host)) continue;
      for (const info of host.manager.held()) {
        if (info.heldHere === undefined) continue;
        const list = holders.get(info.name) ?? [];
        list.push({ host, mode: info.heldHere });
        holders.set(info.name, list);
      }
    }
    for (const [name, list] of holders) {
      const exclusive = list.filter((holder) => holder.mode === 'ex');
      const who = list.map((holder) => `${holder.host.name}:${holder.mode}`).join(', ');
      if (exclusive.length > 1) this.violate(`${name} held exclusively by ${who}`);
      else if (exclusive.length === 1 && list.length > 1) this.violate(`${name} held by ${who}`);
    }
    this.hooks.afterStep?.();
  }

  /** An error naming the seed, the violations and the newest trace lines. */
  failure(message: string): Error {
    return new Error(
      [
        `seed ${this.seed}: ${message}`,
        ...this.violations,
        '--- trace (newest last) ---',
        ...this.trace.tail(80),
      ].join('\n'),
    );
  }

  private throwIfViolated(): void {
    if (this.violations.length > 0) throw this.failure('an invariant broke');
  }

  /**
   * Runs the scheduler, checking after every step, until `promise` settles; fails if that takes
   * more than `limitMs` of virtual time or an invariant breaks.
   */
  async drive<T>(promise: Promise<T>, limitMs: number, what: string): Promise<T> {
    let outcome: { ok: true; value: T } | { ok: false; error: unknown } | undefined;
    promise.then(
      (value) => {
        outcome = { ok: true, value };
      },
      (error: unknown) => {
        outcome = { ok: false, error };
      },
    );
    await this.scheduler.runSteps({
      untilMs: this.nowMs + limitMs,
      afterStep: () => this.check(),
      stop: () => outcome !== undefined || this.violations.length > 0,
    });
    this.throwIfViolated();
    if (outcome === undefined) throw this.failure(`${what}: still pending after ${limitMs} ms`);
    if (!outcome.ok) throw outcome.error;
    return outcome.value;
  }

  /** Runs until `condition` holds (checked after every step); fails after `limitMs`. */
  async until(condition: () => boolean, limitMs: number, what: string): Promise<void> {
    await this.scheduler.runSteps({
      untilMs: this.nowMs + limitMs,
      afterStep: () => this.check(),
      stop: () => condition() || this.violations.length > 0,
    });
    this.throwIfViolated();
    if (!condition()) throw this.failure(`${what}: not reached within ${limitMs} ms`);
  }

  /** Runs `durationMs` of virtual time, checking after every step. */
  async runFor(durationMs: number): Promise<void> {
    const untilMs = this.nowMs + durationMs;
    await this.scheduler.runSteps({
      untilMs,
      afterStep: () => this.check(),
      stop: () => this.violations.length > 0,
    });
    this.throwIfViolated();
    await this.scheduler.runUntil(untilMs);
  }

  /** Ends the run: every host stops without writing (nothing drives the scheduler after). */
  stopAll(): void {
    for (const host of this.hosts.values()) {
      host.crashed = true;
      void host.manager.close();
      void host.store.close().catch(() => undefined);
    }
  }
}
