/**
 * Every lease timing derives from one setting, `ioTimeoutMs` (T): the longest one lockspace I/O
 * may take before it counts as failed. This is sanlock's model (timeouts.h); our constants are
 * chosen to meet the target "a failed host is `failed` for everyone within 16 s" with the
 * production profile, while self-fencing is complete before anyone may take a lease over.
 *
 *   renewal interval     T/2   a host rewrites its slot this often
 *   monitor interval     T/4   each host reads every slot this often
 *   renewal fail time    4T    no successful renewal started in this long: close the write gate
 *   fence drain time     T     in-flight writes are waited for this long after the gate closed
 *   host dead time       6T    a slot seen unchanged this long (observer's clock): host failed
 *
 * Failure timeline for a host H whose last successful renewal started at S (its own clock; the
 * write landed at some time >= S, so every observer saw that change at a time >= S):
 *
 *   S            last renewal starts; its write lands and observers note "changed at" >= S
 *   S + 4T       H has not started a successful renewal since S: gate closed, no new write
 *   S + 5T       in-flight writes drained (or H gives up on them and exits: see docs/leases.md)
 *   S + 6T       earliest moment an observer may judge H failed (its "changed at" >= S and it
 *                needs a read that *started* 6T after that and still saw no change)
 *   S + 6.5T     latest moment a monitoring host judges H failed when I/O is fast: it sees the
 *                last change up to T/4 after it landed (one monitor interval), then needs one
 *                more interval after the 6T; slow I/O adds the time H's renewal took to land
 *                and the time the observer's two deciding reads took (each at most T)
 *
 * The T of margin between S + 5T and S + 6T absorbs event-loop delays and clock-rate
 * differences. Production (T = 2 s): renew every 1 s, fence at 8 s, failed at 12 s..13 s
 * after the last heartbeat (sanlock: renew 20 s, dead 140 s; VMFS: locks breakable after 16 s).
 */
import { TandemError } from '../errors.js';

export type TimingProfile = 'production' | 'fast';

export const ioTimeoutMsByProfile: Readonly<Record<TimingProfile, number>> = {
  production: 2_000,
  // Short enough for tests, long enough that a loaded 2-core CI machine does not stall the
  // event loop past the fail time (4T = 1 s).
  fast: 250,
};

export const ioTimeoutMsMin = 50;
export const ioTimeoutMsMax = 60_000;

export interface LeaseTimings {
  readonly ioTimeoutMs: number;
  readonly renewalIntervalMs: number;
  readonly monitorIntervalMs: number;
  readonly renewalFailMs: number;
  readonly fenceDrainMs: number;
  readonly hostDeadMs: number;
  /** How long a host waits and re-reads after writing a slot it wants (delta lease acquire). */
  readonly acquireSettleMs: number;
  /** A peer that answered no network probe for this long, while its slot renews, is isolated. */
  readonly isolationMs: number;
  /** How often each host probes its peers over the network. */
  readonly probeIntervalMs: number;
}

export function deriveTimings(ioTimeoutMs: number): LeaseTimings {
  if (
    !Number.isInteger(ioTimeoutMs) ||
    ioTimeoutMs < ioTimeoutMsMin ||
    ioTimeoutMs > ioTimeoutMsMax
  ) {
    throw new TandemError(
      'INVALID_ARGUMENT',
      `ioTimeoutMs must be an integer in ${ioTimeoutMsMin}..${ioTimeoutMsMax}, not ${ioTimeoutMs}`,
    );
  }
  const t = ioTimeoutMs;
  return {
    ioTimeoutMs: t,
    renewalIntervalMs: t / 2,
    monitorIntervalMs: t / 4,
    renewalFailMs: 4 * t,
    fenceDrainMs: t,
    hostDeadMs: 6 * t,
    // sanlock waits 2 × io_timeout: a racing host's write has landed by then and is seen.
    acquireSettleMs: 2 * t,
    isolationMs: 2 * t,
    probeIntervalMs: t / 2,
  };
}

export function timingsForProfile(profile: TimingProfile): LeaseTimings {
  return deriveTimings(ioTimeoutMsByProfile[profile]);
}

export function parseTimingProfile(text: string): TimingProfile {
  if (text === 'production' || text === 'fast') return text;
  throw new TandemError(
    'INVALID_ARGUMENT',
    `profile must be 'production' or 'fast', not '${text}'`,
  );
}
