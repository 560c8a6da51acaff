/**
 * Reads and writes of host slots, each bounded by the lockspace's ioTimeoutMs, with at most one
 * write in flight per slot (bounded-io.ts says why).
 */
import type { BlockDevice } from '../disk/block-device.js';
import type { Clock } from '../clock.js';
import { TandemError, assert } from '../errors.js';
import { bounded, SlotWriteGuard } from './bounded-io.js';
import { type LockspaceLayout, hostSlotBytes, hostSlotOffset } from './layout.js';
import { type DecodedSlot, decodeHostSlot } from './slot-format.js';

/** One slot as one read showed it; `startedMs`/`completedMs` are the reader's monotonic clock. */
export interface SlotObservation {
  readonly hostId: number;
  readonly slot: DecodedSlot;
  readonly startedMs: number;
  readonly completedMs: number;
}

/** A read of consecutive slots that failed or timed out. */
export interface FailedSlotRead {
  readonly firstHostId: number;
  readonly count: number;
  readonly startedMs: number;
  readonly completedMs: number;
  readonly error: unknown;
}

export interface SlotRangeRead {
  readonly observations: SlotObservation[];
  readonly failures: FailedSlotRead[];
}

export class SlotIo {
  private readonly writes = new SlotWriteGuard();
  /** Slots per read request: all of them in one read unless the device caps request sizes. */
  private readonly slotsPerRead: number;

  constructor(
    readonly device: BlockDevice,
    readonly layout: LockspaceLayout,
    private readonly clock: Clock,
  ) {
    this.slotsPerRead = Math.max(1, Math.floor(device.maximumIoBytes / hostSlotBytes));
  }

  /** Reads one slot; throws LEASE_IO when the read fails or takes longer than ioTimeoutMs. */
  async readSlot(hostId: number): Promise<SlotObservation> {
    const read = await this.readRange(hostId, 1);
    const failure = read.failures[0];
    if (failure !== undefined) throw failure.error;
    const observation = read.observations[0];
    assert(observation !== undefined && observation.hostId === hostId, 'one slot read');
    return observation;
  }

  /** Reads slots first..first+count-1, in as few requests as the device allows. */
  async readRange(firstHostId: number, count: number): Promise<SlotRangeRead> {
    assert(count >= 1 && firstHostId + count - 1 <= this.layout.maxHosts, 'slot range');
    const observations: SlotObservation[] = [];
    const failures: FailedSlotRead[] = [];
    for (let done = 0; done < count; done += this.slotsPerRead) {
      const chunkFirst = firstHostId + done;
      const chunkCount = Math.min(this.slotsPerRead, count - done);
      const buffer = Buffer.alloc(chunkCount * hostSlotBytes);
      const outcome = await bounded(
        this.clock,
        this.layout.ioTimeoutMs,
        `read of host slots ${chunkFirst}..${chunkFirst + chunkCount - 1}`,
        this.device.read(buffer, hostSlotOffset(this.layout, chunkFirst)),
      );
      const { startedMs, completedMs } = outcome;
      if (!outcome.ok) {
        failures.push({
          firstHostId: chunkFirst,
          count: chunkCount,
          startedMs,
          completedMs,
          error: outcome.error,
        });
        continue;
      }
      for (let index = 0; index < chunkCount; index++) {
        const hostId = chunkFirst + index;
        const bytes = buffer.subarray(index * hostSlotBytes, (index + 1) * hostSlotBytes);
        const slot = decodeHostSlot(bytes, hostId, this.layout.blockSize);
        observations.push({ hostId, slot, startedMs, completedMs });
      }
    }
    return { observations, failures };
  }

  /** Whether a write to this slot is still in flight (possibly one whose caller gave up). */
  writeInFlight(hostId: number): boolean {
    return this.writes.busy(hostId);
  }

  /**
   * Writes a whole encoded slot (FUA: a lease write is durable when acknowledged). Throws
   * LEASE_IO when it fails or takes longer than ioTimeoutMs; it may still land afterwards.
   * Returns the time the write started.
   */
  async writeSlot(hostId: number, slot: Buffer): Promise<number> {
    assert(slot.length === hostSlotBytes, 'a slot write is one whole slot');
    if (this.writes.busy(hostId)) {
      throw new TandemError(
        'LEASE_IO',
        `host slot ${hostId}: the previous write has not completed; not starting another`,
      );
    }
    const startedMs = this.clock.nowMs();
    const write = this.writes.start(hostId, () =>
      this.device.write(slot, hostSlotOffset(this.layout, hostId), { fua: true }),
    );
    const outcome = await bounded(
      this.clock,
      this.layout.ioTimeoutMs,
      `write of host slot ${hostId}`,
      write,
      startedMs,
    );
    if (!outcome.ok) throw outcome.error;
    return startedMs;
  }

  /** Waits until no write is in flight on `hostId` (used only when shutting down). */
  drained(hostId: number): Promise<void> {
    return this.writes.drained(hostId);
  }
}
