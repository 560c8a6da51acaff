/**
 * Time as the lease and replication protocols see it, injected so that a whole cluster can run in
 * one process on virtual time (test/sim) and replay from a seed.
 *
 * Protocol code never calls Date, setTimeout or performance.now directly: it gets a Clock.
 */
import { setTimeout as sleepTimer } from 'node:timers/promises';

export interface Clock {
  /**
   * Monotonic milliseconds on this host. Only differences of two readings on the same host mean
   * anything; decisions about other hosts are taken from these, never from wall clocks.
   */
  nowMs(): number;
  /** Wall-clock milliseconds since the epoch, for humans only (it may jump, and differ by host). */
  wallMs(): number;
  /** Resolves after `delayMs`; rejects with the signal's reason if it is aborted first. */
  sleep(delayMs: number, signal?: AbortSignal): Promise<void>;
}

/** Randomness, injected for the same reason as the clock. */
export interface Random {
  /** A number in [0, 1). */
  next(): number;
}

export const systemClock: Clock = {
  nowMs: () => performance.now(),
  wallMs: () => Date.now(),
  sleep: async (delayMs, signal) => {
    await sleepTimer(
      Math.max(0, delayMs),
      undefined,
      signal === undefined ? undefined : { signal },
    );
  },
};

export const systemRandom: Random = { next: () => Math.random() };
