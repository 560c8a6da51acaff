/**
 * Virtual time for the deterministic simulation and for unit tests of timing code.
 *
 * One scheduler owns "now" and a queue of timers ordered by (due time, insertion order). `run*`
 * lets every pending promise continuation run (one setImmediate turn drains the microtask queue),
 * then fires the earliest timer and moves now to its due time. Nothing real happens in between, so
 * a run is a pure function of the code and the seed: replayable.
 *
 * Each simulated host gets its own Clock from `clockFor`: monotonic time may run at a slightly
 * different rate (drift), and the wall clock may be offset and jump, as on real machines.
 */
import type { Clock, Random } from '../../src/clock.js';
import { createSeededRandom } from '../../src/disk/seeded-random.js';

interface Timer {
  readonly dueMs: number;
  readonly sequence: number;
  readonly fire: () => void;
  cancelled: boolean;
}

export interface HostClockOptions {
  /** Monotonic rate relative to true time, e.g. 1.0001 (default 1). */
  readonly rate?: number;
  /** Wall clock = true time + this (default 0); change it with `jumpWall`. */
  readonly wallOffsetMs?: number;
}

export interface HostClock extends Clock {
  /** Makes the wall clock jump by `deltaMs` (may be negative); monotonic time is unaffected. */
  jumpWall(deltaMs: number): void;
}

const wallEpochMs = Date.UTC(2026, 0, 1);

export class VirtualScheduler {
  private nowMsValue = 0;
  private sequence = 0;
  private timers: Timer[] = [];
  /** Timers fired so far (a measure of work, and a bound for runaway loops). */
  firedCount = 0;

  get nowMs(): number {
    return this.nowMsValue;
  }

  /** Calls `fire` at true time `dueMs` (at once if in the past). Returns a cancel function. */
  at(dueMs: number, fire: () => void): () => void {
    const timer: Timer = {
      dueMs: Math.max(dueMs, this.nowMsValue),
      sequence: this.sequence++,
      fire,
      cancelled: false,
    };
    // Sorted insert; the queue stays small (a few timers per host).
    let index = this.timers.length;
    while (index > 0) {
      const previous = this.timers[index - 1];
      if (previous === undefined || previous.dueMs <= timer.dueMs) break;
      index -= 1;
    }
    this.timers.splice(index, 0, timer);
    return () => {
      timer.cancelled = true;
    };
  }

  after(delayMs: number, fire: () => void): () => void {
    return this.at(this.nowMsValue + Math.max(0, delayMs), fire);
  }

  /** A promise that resolves after `delayMs` of true time. */
  sleep(delayMs: number, signal?: AbortSignal): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (signal?.aborted === true) {
        reject(signal.reason);
        return;
      }
      const onAbort = (): void => {
        cancel();
        reject(signal?.reason);
      };
      const cancel = this.after(delayMs, () => {
        signal?.removeEventListener('abort', onAbort);
        resolve();
      });
      signal?.addEventListener('abort', onAbort, { once: true });
    });
  }

  clockFor(options: HostClockOptions = {}): HostClock {
    const rate = options.rate ?? 1;
    let wallOffsetMs = options.wallOffsetMs ?? 0;
    return {
      nowMs: () => this.nowMsValue * rate,
      wallMs: () => Math.round(wallEpochMs + this.nowMsValue + wallOffsetMs),
      // A host's delay of d on its own clock is d / rate of true time.
      sleep: (delayMs, signal) => this.sleep(delayMs / rate, signal),
      jumpWall: (deltaMs) => {
        wallOffsetMs += deltaMs;
      },
    };
  }

  /** Lets every runnable promise continuation run, without moving time. */
  async settle(): Promise<void> {
    // Two turns: a continuation may schedule an immediate of its own (e.g. stream code).
    await new Promise<void>((resolve) => setImmediate(resolve));
    await new Promise<void>((resolve) => setImmediate(resolve));
  }

  /** Fires the next timer (after settling); false when none is left. */
  async step(): Promise<boolean> {
    await this.settle();
    return this.fireNext();
  }

  private fireNext(): boolean {
    for (;;) {
      const timer = this.timers.shift();
      if (timer === undefined) return false;
      if (timer.cancelled) continue;
      this.nowMsValue = timer.dueMs;
      this.firedCount += 1;
      timer.fire();
      return true;
    }
  }

  /** Runs until true time reaches `untilMs` (timers due later stay queued). */
  async runUntil(untilMs: number): Promise<void> {
    for (;;) {
      await this.settle();
      const next = this.timers.find((timer) => !timer.cancelled);
      if (next === undefined || next.dueMs > untilMs) break;
      await this.step();
    }
    this.nowMsValue = Math.max(this.nowMsValue, untilMs);
    await this.settle();
  }

  /** True time of the next timer, or undefined when none is queued. */
  nextDueMs(): number | undefined {
    return this.timers.find((timer) => !timer.cancelled)?.dueMs;
  }

  /**
   * Fires timers one by one until true time would pass `untilMs`, `maxSteps` timers fired, or
   * `stop` says so; after each timer, once the continuations it released have run, calls
   * `afterStep` (the simulation checks its invariants there). Returns the timers fired.
   */
  async runSteps(options: {
    readonly untilMs: number;
    readonly maxSteps?: number;
    readonly afterStep?: () => void;
    readonly stop?: () => boolean;
  }): Promise<number> {
    const maxSteps = options.maxSteps ?? Number.POSITIVE_INFINITY;
    let steps = 0;
    await this.settle();
    while (steps < maxSteps && options.stop?.() !== true) {
      const nextMs = this.nextDueMs();
      if (nextMs === undefined || nextMs > options.untilMs) break;
      this.fireNext();
      steps += 1;
      await this.settle();
      options.afterStep?.();
    }
    return steps;
  }

  async runFor(durationMs: number): Promise<void> {
    await this.runUntil(this.nowMsValue + durationMs);
  }

  /**
   * Runs until `promise` settles, failing if that needs more than `limitMs` of virtual time:
   * a test never hangs on a protocol that does not terminate.
   */
  async runUntilSettled<T>(promise: Promise<T>, limitMs = 600_000): Promise<T> {
    let settled = false;
    const observed = promise.then(
      (value) => {
        settled = true;
        return value;
      },
      (error: unknown) => {
        settled = true;
        throw error;
      },
    );
    observed.catch(() => undefined);
    const deadlineMs = this.nowMsValue + limitMs;
    while (!settled) {
      await this.settle();
      if (settled) break;
      const next = this.timers.find((timer) => !timer.cancelled);
      if (next === undefined)
        throw new Error('virtual time: deadlock (no timer left, promise pending)');
      if (next.dueMs > deadlineMs)
        throw new Error(`virtual time: promise still pending after ${limitMs} ms`);
      await this.step();
    }
    return observed;
  }
}

export function seededRandom(seed: number): Random {
  const next = createSeededRandom(seed);
  return { next };
}
