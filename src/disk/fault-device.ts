/**
 * A BlockDevice wrapper that injects faults, for the tests of every layer above the disk
 * (lease self-fencing, metadata crash consistency, replication): failures, delays, stalls, torn
 * writes and crashes that lose unflushed writes. Rules are added and removed while I/O runs.
 *
 * It models a disk with a volatile write cache: every write is journaled with its pre-image
 * (crash-journal.ts) until a flush or FUA covers it, so `crash()` can roll the base device back
 * to exactly what a power loss could have left. Deterministic: randomness comes from a seed or
 * an injected function, delays from an injected `sleep`.
 */
import { TandemError } from '../errors.js';
import type {
  BlockDevice,
  BlockDeviceCapabilities,
  BlockStatusExtent,
  DiscardOptions,
  WriteOptions,
  WriteZeroesOptions,
} from './block-device.js';
import { checkDataRange, checkRange, checkStatusRange, closedError, goneError } from './checks.js';
import { type CrashKeep, CrashJournal } from './crash-journal.js';
import {
  type DelayRuleOptions,
  type FailRuleOptions,
  type FaultRule,
  type IoEvent,
  type IoKind,
  type IoMatch,
  type RuleAction,
  type StallHandle,
  type TearRuleOptions,
  ioKinds,
  Rule,
  Stall,
} from './fault-rules.js';
import { createSeededRandom } from './seeded-random.js';

export type { CrashKeep } from './crash-journal.js';
export type {
  DelayRuleOptions,
  FailRuleOptions,
  FaultRule,
  IoEvent,
  IoKind,
  IoMatch,
  RuleSchedule,
  StallHandle,
  TearRuleOptions,
} from './fault-rules.js';
export { ioKinds } from './fault-rules.js';

export interface CrashOptions {
  /** Unflushed writes: 'none' lost, 'all' kept, 'random' a seeded random subset of sectors. */
  readonly keep: CrashKeep;
  /** Seed for 'random'; the device's random function otherwise. */
  readonly seed?: number;
}

export interface FaultInjectingDeviceOptions {
  /** Seed of the device's random function (default 1). */
  readonly seed?: number;
  /** Or the random function itself, e.g. the simulation's. */
  readonly random?: () => number;
  /** How delays wait; setTimeout by default, virtual time in the simulation. */
  readonly sleep?: (delayMs: number) => Promise<void>;
  readonly description?: string;
}

type TearAction = Extract<RuleAction, { type: 'tear' }>;

const defaultSleep = (delayMs: number): Promise<void> =>
  new Promise((resolve) => setTimeout(resolve, delayMs));

export class FaultInjectingDevice implements BlockDevice {
  readonly description: string;
  readonly sizeBytes: number;
  readonly alignmentBytes: number;
  readonly logicalSectorSizeBytes: number;
  readonly physicalSectorSizeBytes: number;
  readonly maximumIoBytes: number;
  readonly readOnly: boolean;
  readonly capabilities: BlockDeviceCapabilities;
  /** Called for every request before any rule, e.g. to crash at the nth write. */
  onIo: ((event: IoEvent) => void) | undefined;

  private readonly mutableCounts: Record<IoKind, number>;
  private readonly random: () => number;
  private readonly sleep: (delayMs: number) => Promise<void>;
  private readonly journal: CrashJournal;
  private readonly baseOperations = new Set<Promise<unknown>>();
  private rules: Rule[] = [];
  private ioIndex = 0;
  private closing: Promise<void> | undefined;
  private inFlightCount = 0;
  private onDrained: (() => void) | undefined;
  private crashing: Promise<void> | undefined;

  constructor(
    readonly base: BlockDevice,
    options: FaultInjectingDeviceOptions = {},
  ) {
    this.description = options.description ?? `fault(${base.description})`;
    this.sizeBytes = base.sizeBytes;
    this.alignmentBytes = base.alignmentBytes;
    this.logicalSectorSizeBytes = base.logicalSectorSizeBytes;
    this.physicalSectorSizeBytes = base.physicalSectorSizeBytes;
    this.maximumIoBytes = base.maximumIoBytes;
    this.readOnly = base.readOnly;
    // The wrapper has a volatile cache (that is what crash() loses), so flush and FUA matter.
    this.capabilities = { ...base.capabilities, flush: true, fua: true };
    this.random = options.random ?? createSeededRandom(options.seed ?? 1);
    this.sleep = options.sleep ?? defaultSleep;
    this.journal = new CrashJournal(
      base,
      Math.max(base.logicalSectorSizeBytes, base.alignmentBytes),
    );
    this.mutableCounts = Object.fromEntries(ioKinds.map((kind) => [kind, 0])) as Record<
      IoKind,
      number
    >;
  }

  /** Requests received, by kind (including those that then failed). */
  get counts(): Readonly<Record<IoKind, number>> {
    return this.mutableCounts;
  }

  get crashed(): boolean {
    return this.crashing !== undefined;
  }

  /** Writes that a crash with keep 'none' would undo. */
  get unflushedWriteCount(): number {
    return this.journal.unflushedCount;
  }

  /** Fails matching requests with `code` (DISK_IO by default) before they reach the base. */
  failIo(options: FailRuleOptions = {}): FaultRule {
    const action: RuleAction = {
      type: 'fail',
      code: options.code ?? 'DISK_IO',
      errno: options.errno ?? 'EIO',
    };
    return this.addRule(new Rule(options, action, (rule) => this.removeRule(rule)));
  }

  delayIo(options: DelayRuleOptions): FaultRule {
    const action: RuleAction = { type: 'delay', delayMs: options.delayMs };
    return this.addRule(new Rule(options, action, (rule) => this.removeRule(rule)));
  }

  /** Holds matching requests (before they reach the base) until `release()`. */
  stall(options: { match?: IoMatch; nth?: number; times?: number } = {}): StallHandle {
    const stall = new Stall();
    const rule = this.addRule(
      new Rule(options, { type: 'stall', stall }, (removed) => this.removeRule(removed)),
    );
    return {
      get firedCount() {
        return rule.firedCount;
      },
      get stalledCount() {
        return stall.stalledCount;
      },
      waitForStalled: (count = 1) => stall.waitForStalled(count),
      release: () => {
        this.removeRule(rule);
        stall.release();
      },
      remove: () => {
        this.removeRule(rule);
        stall.release();
      },
    };
  }

  /** Tears matching writes (kind 'write' only): the first sectors land, then fail or crash. */
  tearWrite(options: TearRuleOptions): FaultRule {
    const action: RuleAction = {
      type: 'tear',
      keepSectors: options.keepSectors,
      then: options.then,
      crashKeep: options.crashKeep ?? 'none',
      seed: options.seed,
    };
    const schedule = { ...options, match: { kinds: ['write'] as const, ...options.match } };
    return this.addRule(new Rule(schedule, action, (rule) => this.removeRule(rule)));
  }

  /** Removes every rule and lets stalled requests go. */
  clearFaults(): void {
    const rules = this.rules;
    this.rules = [];
    for (const rule of rules) if (rule.action.type === 'stall') rule.action.stall.release();
  }

  /**
   * Power loss: refuses new requests with DISK_GONE at once, waits for those in flight on the
   * base device (they too fail), then rolls back unflushed writes as `keep` says.
   */
  crash(options: CrashOptions = { keep: 'none' }): Promise<void> {
    return this.crashThen(options, undefined);
  }

  /** Accepts requests again once the crash is fully applied (like a reboot). */
  async restart(): Promise<void> {
    if (this.crashing !== undefined) await this.crashing;
    this.crashing = undefined;
    this.journal.clear();
  }

  read(buffer: Buffer, offsetBytes: number): Promise<void> {
    return this.request(async () => {
      checkDataRange(this, offsetBytes, buffer.length, false);
      await this.admit('read', offsetBytes, buffer.length, false);
      await this.onBase(this.base.read(buffer, offsetBytes));
    });
  }

  write(buffer: Buffer, offsetBytes: number, options?: WriteOptions): Promise<void> {
    return this.request(async () => {
      checkDataRange(this, offsetBytes, buffer.length, true);
      const fua = options?.fua === true;
      const tear = await this.admit('write', offsetBytes, buffer.length, fua);
      if (tear !== undefined) return this.tear(tear, buffer, offsetBytes);
      await this.modify(offsetBytes, buffer.length, fua, () =>
        this.base.write(buffer, offsetBytes, options),
      );
    });
  }

  flush(): Promise<void> {
    return this.request(async () => {
      await this.admit('flush', 0, 0, false);
      const covered = this.journal.completedEntries();
      await this.onBase(this.base.flush());
      this.journal.markDurable(covered);
    });
  }

  discard(offsetBytes: number, lengthBytes: number, options?: DiscardOptions): Promise<void> {
    return this.request(async () => {
      checkRange(this, offsetBytes, lengthBytes, true);
      const fua = options?.fua === true;
      await this.admit('discard', offsetBytes, lengthBytes, fua);
      await this.modify(offsetBytes, lengthBytes, fua, () =>
        this.base.discard(offsetBytes, lengthBytes, options),
      );
    });
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, options?: WriteZeroesOptions) {
    return this.request(async () => {
      checkRange(this, offsetBytes, lengthBytes, true);
      const fua = options?.fua === true;
      await this.admit('writeZeroes', offsetBytes, lengthBytes, fua);
      await this.modify(offsetBytes, lengthBytes, fua, () =>
        this.base.writeZeroes(offsetBytes, lengthBytes, options),
      );
    });
  }

  blockStatus(offsetBytes: number, lengthBytes: number): Promise<BlockStatusExtent[]> {
    return this.request(async () => {
      checkStatusRange(this, offsetBytes, lengthBytes);
      await this.admit('blockStatus', offsetBytes, lengthBytes, false);
      return this.onBase(this.base.blockStatus(offsetBytes, lengthBytes));
    });
  }

  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.request(async () => {
      checkRange(this, offsetBytes, lengthBytes, false);
      await this.admit('cache', offsetBytes, lengthBytes, false);
      await this.onBase(this.base.cache(offsetBytes, lengthBytes));
    });
  }

  /** Releases stalled requests, waits for every request in flight, then closes the base. */
  close(): Promise<void> {
    if (this.closing === undefined) {
      this.closing = (async () => {
        this.clearFaults();
        if (this.inFlightCount > 0) {
          await new Promise<void>((resolve) => (this.onDrained = resolve));
        }
        await this.base.close();
      })();
    }
    return this.closing;
  }

  /** Every public request: refused once closed, counted in flight until it settles. */
  private async request<T>(body: () => Promise<T>): Promise<T> {
    if (this.closing !== undefined) throw closedError(this);
    this.inFlightCount++;
    try {
      return await body();
    } finally {
      this.inFlightCount--;
      if (this.inFlightCount === 0) this.onDrained?.();
    }
  }

  private addRule(rule: Rule): Rule {
    this.rules.push(rule);
    return rule;
  }

  private removeRule(rule: Rule): void {
    this.rules = this.rules.filter((candidate) => candidate !== rule);
  }

  private checkRunning(): void {
    if (this.crashing !== undefined) throw goneError(this);
  }

  /**
   * Counts the request, runs the hook and the rules: delays and stalls first (in rule order),
   * then an injected failure. Returns a tear to apply, if one fired on a write.
   */
  private async admit(
    kind: IoKind,
    offsetBytes: number,
    lengthBytes: number,
    fua: boolean,
  ): Promise<TearAction | undefined> {
    const event: IoEvent = {
      kind,
      offsetBytes,
      lengthBytes,
      fua,
      index: this.ioIndex++,
      indexOfKind: this.mutableCounts[kind]++,
    };
    this.onIo?.(event);
    this.checkRunning();
    const fired = this.rules.filter((rule) => rule.fires(event)).map((rule) => rule.action);
    if (fired.length === 0) return undefined;
    for (const action of fired) {
      if (action.type === 'delay') await this.sleep(action.delayMs);
      if (action.type === 'stall') await action.stall.hold();
    }
    this.checkRunning();
    let tear: TearAction | undefined;
    for (const action of fired) {
      if (action.type === 'fail') {
        throw new TandemError(action.code, `injected ${kind} failure on ${this.description}`, {
          details: { errno: action.errno, kind, offsetBytes, lengthBytes, injected: true },
        });
      }
      if (action.type === 'tear' && kind === 'write') tear = action;
    }
    return tear;
  }

  /** Tracks a base request (crash waits for it) and fails it if the device crashed meanwhile. */
  private async onBase<T>(operation: Promise<T>): Promise<T> {
    this.baseOperations.add(operation);
    try {
      const result = await operation;
      this.checkRunning();
      return result;
    } catch (error) {
      // A crashed disk acknowledges nothing, whatever the base said.
      this.checkRunning();
      throw error;
    } finally {
      this.baseOperations.delete(operation);
    }
  }

  /** Journals the range's pre-image, then modifies it on the base device. */
  private async modify(
    offsetBytes: number,
    lengthBytes: number,
    fua: boolean,
    perform: () => Promise<void>,
  ): Promise<void> {
    if (lengthBytes === 0) {
      await this.onBase(perform());
      return;
    }
    const entry = await this.onBase(this.journal.readPreImage(offsetBytes, lengthBytes));
    // A crash may have started since the read settled: never touch the base after its rollback.
    this.checkRunning();
    this.journal.append(entry);
    try {
      await this.onBase(perform());
    } finally {
      // Even a failed request may have changed part of the range: it stays rollback-able.
      entry.completed = true;
    }
    if (fua) this.journal.markDurable([entry]);
  }

  private async tear(tear: TearAction, buffer: Buffer, offsetBytes: number): Promise<void> {
    const keepBytes = Math.min(tear.keepSectors * this.journal.unitBytes, buffer.length);
    const part = buffer.subarray(0, keepBytes);
    if (tear.then === 'fail') {
      await this.modify(offsetBytes, keepBytes, false, () => this.base.write(part, offsetBytes));
      throw new TandemError('DISK_IO', `injected torn write on ${this.description}`, {
        details: {
          errno: 'EIO',
          offsetBytes,
          lengthBytes: buffer.length,
          keepBytes,
          injected: true,
        },
      });
    }
    // The sectors that reached the media before the power went stay, whatever `crashKeep`.
    await this.crashThen({ keep: tear.crashKeep, seed: tear.seed }, async () => {
      if (keepBytes > 0) await this.base.write(part, offsetBytes);
    });
    throw goneError(this);
  }

  private crashThen(options: CrashOptions, afterRollback: (() => Promise<void>) | undefined) {
    if (this.crashing !== undefined) return this.crashing;
    const random = options.seed === undefined ? this.random : createSeededRandom(options.seed);
    const inFlight = [...this.baseOperations];
    this.crashing = (async () => {
      await Promise.allSettled(inFlight);
      await this.journal.restore(options.keep, random);
      if (afterRollback !== undefined) await afterRollback();
    })();
    return this.crashing;
  }
}
