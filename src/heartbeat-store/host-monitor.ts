/**
 * Liveness of the other hosts as one observer sees it (docs/leases.md, "Liveness as seen from
 * one host"). Pure bookkeeping: the heartbeat store feeds it slot reads and probe results with
 * times from its own monotonic clock, and asks it for states. It never compares clocks of two
 * hosts, and it never says failed or dead early:
 *
 * - per slot it keeps the value last seen and `changedAtMs`, the completion time of the read
 *   that first showed it; a read that failed, or a slot that fails its CRC, counts as a change;
 * - `failed` needs a read that *started* at least hostDeadMs after `changedAtMs` and still shows
 *   the same value; a host not watched that long is `live`;
 * - `isolated`: the slot is live but the host answered no network probe for isolationMs.
 */
import type { HostInstance, HostState } from './types.js';
import type { LeaseTimings } from './timings.js';
import { type DecodedSlot, type HeldSlot, sameLeaseRecord } from './slot-format.js';
import type { FailedSlotRead, SlotObservation } from './slot-io.js';

interface ProbeTrack {
  readonly generation: number;
  /** When the first probe of this instance started: isolation is measured from here at most. */
  readonly sinceMs: number;
  lastSuccessMs: number | undefined;
}

interface SlotTrack {
  last: DecodedSlot;
  /** The newest valid record (kept while the slot reads as corrupt, for display). */
  lastHeld: HeldSlot | undefined;
  changedAtMs: number;
  failed: boolean;
  /** Start of the newest successful read of this slot. */
  lastReadStartedMs: number;
  /** The highest generation this observer has seen failed: that instance is gone for good. */
  failedGenerationMax: number;
  probe: ProbeTrack | undefined;
}

/** What the monitor knows of one non-free slot. */
export interface MonitoredHost {
  readonly hostId: number;
  readonly record: HeldSlot | undefined;
  readonly state: HostState;
  readonly changedAtMs: number;
}

export class HostMonitor {
  private readonly tracks = new Map<number, SlotTrack>();

  constructor(private readonly timings: LeaseTimings) {}

  recordObservation(observation: SlotObservation): void {
    const { hostId, slot, startedMs, completedMs } = observation;
    const track = this.tracks.get(hostId);
    if (track === undefined) {
      this.tracks.set(hostId, {
        last: slot,
        lastHeld: slot.kind === 'held' ? slot : undefined,
        changedAtMs: completedMs,
        failed: false,
        lastReadStartedMs: startedMs,
        failedGenerationMax: 0,
        probe: undefined,
      });
      return;
    }
    // The store reads sequentially; an older read arriving late must not undo a newer one.
    if (startedMs < track.lastReadStartedMs) return;
    track.lastReadStartedMs = startedMs;
    if (!sameLeaseRecord(slot, track.last)) {
      track.last = slot;
      track.changedAtMs = completedMs;
      track.failed = false;
      if (slot.kind === 'held') {
        if (track.lastHeld?.generation !== slot.generation) track.probe = undefined;
        track.lastHeld = slot;
      }
      return;
    }
    if (startedMs - track.changedAtMs >= this.timings.hostDeadMs) {
      track.failed = true;
      if (slot.kind === 'held') {
        track.failedGenerationMax = Math.max(track.failedGenerationMax, slot.generation);
      }
    }
  }

  /** A read that failed tells nothing, so it counts as a change of every slot it covered. */
  recordReadFailure(failure: FailedSlotRead): void {
    for (let index = 0; index < failure.count; index++) {
      const track = this.tracks.get(failure.firstHostId + index);
      if (track === undefined) continue;
      track.changedAtMs = Math.max(track.changedAtMs, failure.completedMs);
      track.failed = false;
    }
  }

  recordProbe(
    instance: HostInstance,
    startedMs: number,
    completedMs: number,
    answered: boolean,
  ): void {
    const track = this.tracks.get(instance.hostId);
    if (track?.lastHeld?.generation !== instance.generation) return;
    if (track.probe?.generation !== instance.generation) {
      track.probe = {
        generation: instance.generation,
        sinceMs: startedMs,
        lastSuccessMs: undefined,
      };
    }
    if (answered) track.probe.lastSuccessMs = completedMs;
  }

  /** Every non-free slot this observer has read, by host id. */
  hosts(nowMs: number): MonitoredHost[] {
    const hosts: MonitoredHost[] = [];
    for (const [hostId, track] of [...this.tracks].sort((a, b) => a[0] - b[0])) {
      if (track.last.kind === 'free') continue;
      hosts.push({
        hostId,
        record: track.lastHeld,
        state: this.stateOf(track, nowMs),
        changedAtMs: track.changedAtMs,
      });
    }
    return hosts;
  }

  private stateOf(track: SlotTrack, nowMs: number): HostState {
    if (track.last.kind === 'held' && track.last.left) return 'left';
    if (track.failed) return 'failed';
    const probe = track.probe;
    if (probe !== undefined && track.lastHeld !== undefined && track.lastHeld.address !== '') {
      const answeredMs = probe.lastSuccessMs ?? probe.sinceMs;
      if (nowMs - answeredMs >= this.timings.isolationMs) return 'isolated';
    }
    return 'live';
  }

  /**
   * Whether `owner` may still hold leases. 'dead' only on proof that this instance is gone for
   * good: a newer generation in its slot, its clean leave, its slot failed at that generation,
   * or a free slot seen by a read recent enough that the owner's join would have shown.
   */
  ownerLiveness(owner: HostInstance, nowMs: number): 'alive' | 'dead' {
    const track = this.tracks.get(owner.hostId);
    if (track === undefined) return 'alive';
    if (track.failedGenerationMax >= owner.generation) return 'dead';
    const held = track.lastHeld;
    if (held !== undefined && held.generation > owner.generation) return 'dead';
    const last = track.last;
    if (last.kind === 'held' && last.generation === owner.generation) {
      if (last.left || track.failed) return 'dead';
    }
    if (last.kind === 'free') {
      // An owner joined at least acquireSettleMs before it could own a lease, so a read that
      // started within that time before now would show its slot held. We ask for a fresher
      // read than that (half of it), as margin for clock-rate differences between hosts.
      const freshMs = this.timings.acquireSettleMs / 2;
      if (nowMs - track.lastReadStartedMs <= freshMs) return 'dead';
    }
    return 'alive';
  }
}
