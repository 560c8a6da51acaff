/**
 * The rules of FaultInjectingDevice: which I/O they match, when they fire, what they do.
 */
import type { ErrorCode } from '../errors.js';
import type { CrashKeep } from './crash-journal.js';

export type IoKind =
  'read' | 'write' | 'flush' | 'discard' | 'writeZeroes' | 'blockStatus' | 'cache';

export const ioKinds: readonly IoKind[] = [
  'read',
  'write',
  'flush',
  'discard',
  'writeZeroes',
  'blockStatus',
  'cache',
];

/** One request as the rules and the `onIo` hook see it, before it reaches the base device. */
export interface IoEvent {
  readonly kind: IoKind;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly fua: boolean;
  /** 0-based position among all requests since the device was created. */
  readonly index: number;
  /** 0-based position among requests of the same kind (`counts[kind]` before this one). */
  readonly indexOfKind: number;
}

export interface IoMatch {
  /** Kinds to match; all kinds when absent. */
  readonly kinds?: readonly IoKind[];
  /**
   * With `lengthBytes`, matches requests overlapping [offsetBytes, offsetBytes + lengthBytes);
   * flush (no range) never matches a range.
   */
  readonly offsetBytes?: number;
  readonly lengthBytes?: number;
  readonly predicate?: (event: IoEvent) => boolean;
}

/** When a rule fires among the requests it matches (counted from when it was added). */
export interface RuleSchedule {
  readonly match?: IoMatch;
  /** Fire on the nth matching request only (1-based). */
  readonly nth?: number;
  /** Fire on at most this many matching requests (default: every one). */
  readonly times?: number;
}

export interface FailRuleOptions extends RuleSchedule {
  /** The error code to fail with; DISK_IO by default. */
  readonly code?: ErrorCode;
  /** The errno to report in `details.errno`, e.g. 'EIO' (the default). */
  readonly errno?: string;
}

export interface DelayRuleOptions extends RuleSchedule {
  readonly delayMs: number;
}

export interface TearRuleOptions extends RuleSchedule {
  /** How many whole sectors of the write reach the base device. */
  readonly keepSectors: number;
  /** After the partial write: fail it (DISK_IO), or crash the device (DISK_GONE). */
  readonly then: 'fail' | 'crash';
  /** With 'crash': what becomes of the other unflushed writes (default 'none'). */
  readonly crashKeep?: CrashKeep;
  readonly seed?: number;
}

export interface FaultRule {
  /** How many requests the rule acted on. */
  readonly firedCount: number;
  remove(): void;
}

export interface StallHandle extends FaultRule {
  /** Requests currently held. */
  readonly stalledCount: number;
  /** Resolves once `count` requests (in total) have been held by this stall. */
  waitForStalled(count?: number): Promise<void>;
  /** Lets every held request proceed and removes the stall. */
  release(): void;
}

export type RuleAction =
  | { readonly type: 'fail'; readonly code: ErrorCode; readonly errno: string }
  | { readonly type: 'delay'; readonly delayMs: number }
  | { readonly type: 'stall'; readonly stall: Stall }
  | {
      readonly type: 'tear';
      readonly keepSectors: number;
      readonly then: 'fail' | 'crash';
      readonly crashKeep: CrashKeep;
      readonly seed: number | undefined;
    };

export class Rule implements FaultRule {
  firedCount = 0;
  private matchedCount = 0;

  constructor(
    private readonly schedule: RuleSchedule,
    readonly action: RuleAction,
    private readonly onRemove: (rule: Rule) => void,
  ) {}

  /** Counts the request if it matches, and says whether the rule fires on it. */
  fires(event: IoEvent): boolean {
    if (!matches(this.schedule.match, event)) return false;
    this.matchedCount++;
    const { nth, times } = this.schedule;
    const fire =
      nth !== undefined
        ? this.matchedCount === nth
        : times === undefined || this.firedCount < times;
    if (fire) this.firedCount++;
    return fire;
  }

  remove(): void {
    this.onRemove(this);
  }
}

export function matches(match: IoMatch | undefined, event: IoEvent): boolean {
  if (match === undefined) return true;
  if (match.kinds !== undefined && !match.kinds.includes(event.kind)) return false;
  if (match.offsetBytes !== undefined || match.lengthBytes !== undefined) {
    if (event.kind === 'flush') return false;
    const startBytes = match.offsetBytes ?? 0;
    const endBytes = startBytes + (match.lengthBytes ?? Number.MAX_SAFE_INTEGER - startBytes);
    const eventEndBytes = event.offsetBytes + Math.max(1, event.lengthBytes);
    if (eventEndBytes <= startBytes || event.offsetBytes >= endBytes) return false;
  }
  return match.predicate === undefined || match.predicate(event);
}

/** Holds matching requests until released. */
export class Stall {
  stalledCount = 0;
  private totalStalledCount = 0;
  private released = false;
  private waiting: (() => void)[] = [];
  private countWaiters: { count: number; resolve: () => void }[] = [];

  hold(): Promise<void> {
    if (this.released) return Promise.resolve();
    this.stalledCount++;
    this.totalStalledCount++;
    const promise = new Promise<void>((resolve) => this.waiting.push(resolve));
    this.countWaiters = this.countWaiters.filter((waiter) => {
      if (this.totalStalledCount < waiter.count) return true;
      waiter.resolve();
      return false;
    });
    return promise;
  }

  waitForStalled(count: number): Promise<void> {
    if (this.totalStalledCount >= count) return Promise.resolve();
    return new Promise((resolve) => this.countWaiters.push({ count, resolve }));
  }

  release(): void {
    this.released = true;
    const waiting = this.waiting;
    this.waiting = [];
    this.stalledCount = 0;
    for (const resolve of waiting) resolve();
  }
}
