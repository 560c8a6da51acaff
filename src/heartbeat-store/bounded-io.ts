/**
 * Lockspace I/O with a time bound (docs/leases.md: "A renewal whose read or write takes longer
 * than T counts as failed").
 *
 * A timed-out request cannot be cancelled: it stays in flight in the kernel (or the NBD server)
 * and may still land later. So the bound only decides how the *caller* counts it, and
 * `SlotWriteGuard` makes sure no second write to the same slot starts while one is in flight,
 * which would let an old record land over a newer one.
 */
import type { Clock } from '../clock.js';
import { TandemError, assert } from '../errors.js';

export interface BoundedOutcome<T> {
  readonly ok: boolean;
  readonly value: T | undefined;
  readonly error: unknown;
  readonly startedMs: number;
  readonly completedMs: number;
}

/**
 * Runs `operation` and waits for it at most `timeoutMs` (on `clock`). It counts as failed when
 * it rejected, did not settle in time, or settled but took longer than the bound as measured
 * afterwards (after an event-loop stall both may be ready at once; the measure decides).
 */
const timerDone = new Error('bounded I/O settled');

export async function bounded<T>(
  clock: Clock,
  timeoutMs: number,
  what: string,
  operation: Promise<T>,
  startedMs = clock.nowMs(),
): Promise<BoundedOutcome<T>> {
  const timer = new AbortController();
  const timeout = clock.sleep(timeoutMs, timer.signal).then(
    () => 'timeout' as const,
    () => 'aborted' as const,
  );
  const settled = operation.then(
    (value) => ({ ok: true as const, value }),
    (error: unknown) => ({ ok: false as const, error }),
  );
  const first = await Promise.race([settled, timeout]);
  // A constant reason: abort() without one builds a DOMException (and its stack) every I/O.
  timer.abort(timerDone);
  const completedMs = clock.nowMs();
  if (first === 'timeout' || first === 'aborted') {
    return {
      ok: false,
      value: undefined,
      error: timedOut(what, timeoutMs),
      startedMs,
      completedMs,
    };
  }
  if (!first.ok) {
    const error = new TandemError('LEASE_IO', `${what} failed`, { cause: first.error });
    return { ok: false, value: undefined, error, startedMs, completedMs };
  }
  if (completedMs - startedMs > timeoutMs) {
    return {
      ok: false,
      value: undefined,
      error: timedOut(what, timeoutMs),
      startedMs,
      completedMs,
    };
  }
  return { ok: true, value: first.value, error: undefined, startedMs, completedMs };
}

function timedOut(what: string, timeoutMs: number): TandemError {
  return new TandemError('LEASE_IO', `${what} took longer than ${timeoutMs} ms`);
}

/** At most one write in flight per slot, including writes whose caller gave up waiting. */
export class SlotWriteGuard {
  private readonly inFlight = new Map<number, Promise<void>>();

  busy(hostId: number): boolean {
    return this.inFlight.has(hostId);
  }

  /** Starts `write` for `hostId`; the caller must have checked `busy` first. */
  start(hostId: number, write: () => Promise<void>): Promise<void> {
    assert(
      !this.inFlight.has(hostId),
      `a second write to host slot ${hostId} while one is in flight`,
    );
    const promise = write();
    this.inFlight.set(hostId, promise);
    const clear = () => {
      if (this.inFlight.get(hostId) === promise) this.inFlight.delete(hostId);
    };
    promise.then(clear, clear);
    return promise;
  }

  /** Resolves when the write in flight to `hostId` (if any) has settled. */
  async drained(hostId: number): Promise<void> {
    const promise = this.inFlight.get(hostId);
    if (promise !== undefined) await promise.catch(() => undefined);
  }
}
