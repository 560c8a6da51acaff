/**
 * What a power loss may undo: the pre-images of every write not yet covered by a flush (or FUA),
 * recorded sector by sector before the write reaches the device, so that FaultInjectingDevice
 * can put the device into any state a real disk with a volatile cache could be left in.
 *
 * Model: each sector is atomic (the logical sector size). After a crash, a sector holds either
 * its durable content (after the last write to it that a flush or FUA covered) or, with 'random',
 * any later version of it, chosen per sector; 'all' keeps every completed write.
 * Simplification: a flush credits the writes completed when it started; a write that overlaps
 * a flush in flight is credited by the next one.
 */
import { assert } from '../errors.js';
import type { BlockDevice } from './block-device.js';

export type CrashKeep = 'none' | 'all' | 'random';

export interface JournalEntry {
  /** Sector-aligned start of the recorded range. */
  readonly offsetBytes: number;
  /** The range's content before the write (sector-aligned, whole sectors). */
  readonly preImage: Buffer;
  completed: boolean;
  durable: boolean;
}

/** The successive contents of one sector since its last durable point. */
interface SectorHistory {
  /** versions[k] is the content before the k-th journaled write to the sector. */
  readonly versions: Buffer[];
  /** Index into versions (after `current` is appended) of the content that is durable. */
  durableIndex: number;
}

export class CrashJournal {
  private entries: JournalEntry[] = [];

  /** `unitBytes`: the atomic unit, a multiple of the base device's alignment. */
  constructor(
    private readonly base: BlockDevice,
    readonly unitBytes: number,
  ) {
    assert(unitBytes > 0 && unitBytes % Math.max(1, base.alignmentBytes) === 0, 'journal unit');
  }

  get unflushedCount(): number {
    return this.entries.filter((entry) => !entry.durable).length;
  }

  /** Reads what a modifying request over the range will overwrite (not yet journaled). */
  async readPreImage(offsetBytes: number, lengthBytes: number): Promise<JournalEntry> {
    const startBytes = Math.floor(offsetBytes / this.unitBytes) * this.unitBytes;
    const endBytes = Math.min(
      Math.ceil((offsetBytes + lengthBytes) / this.unitBytes) * this.unitBytes,
      this.base.sizeBytes,
    );
    const preImage = Buffer.alloc(endBytes - startBytes);
    const stepMaximumBytes =
      Math.max(1, Math.floor(this.base.maximumIoBytes / this.unitBytes)) * this.unitBytes;
    for (let doneBytes = 0; doneBytes < preImage.length; doneBytes += stepMaximumBytes) {
      const stepBytes = Math.min(stepMaximumBytes, preImage.length - doneBytes);
      await this.base.read(
        preImage.subarray(doneBytes, doneBytes + stepBytes),
        startBytes + doneBytes,
      );
    }
    return { offsetBytes: startBytes, preImage, completed: false, durable: false };
  }

  append(entry: JournalEntry): void {
    this.entries.push(entry);
  }

  /** The entries a flush starting now will make durable. */
  completedEntries(): JournalEntry[] {
    return this.entries.filter((entry) => entry.completed && !entry.durable);
  }

  markDurable(entries: readonly JournalEntry[]): void {
    for (const entry of entries) entry.durable = true;
    // A durable prefix can never be rolled back past: forget it.
    let firstKept = 0;
    while (firstKept < this.entries.length && this.entries[firstKept]?.durable === true)
      firstKept++;
    if (firstKept > 0) this.entries = this.entries.slice(firstKept);
  }

  clear(): void {
    this.entries = [];
  }

  /**
   * Rewrites the base device into a state the crash could have left, then forgets everything.
   * Callers must have waited for every request in flight on the base device.
   */
  async restore(keep: CrashKeep, random: () => number): Promise<void> {
    if (keep === 'all') {
      this.clear();
      return;
    }
    const histories = this.sectorHistories();
    for (const [sectorIndex, history] of histories) {
      const offsetBytes = sectorIndex * this.unitBytes;
      // The last sector of a device whose size is not a whole number of units is shorter.
      const current = Buffer.alloc(Math.min(this.unitBytes, this.base.sizeBytes - offsetBytes));
      await this.base.read(current, offsetBytes);
      history.versions.push(current);
      let chosenIndex = history.durableIndex;
      if (keep === 'random') {
        const choiceCount = history.versions.length - history.durableIndex;
        chosenIndex += Math.min(choiceCount - 1, Math.floor(random() * choiceCount));
      }
      const chosen = history.versions[chosenIndex];
      assert(chosen !== undefined, 'crash journal version index');
      if (chosen !== current) await this.base.write(chosen, offsetBytes);
    }
    this.clear();
  }

  private sectorHistories(): Map<number, SectorHistory> {
    const histories = new Map<number, SectorHistory>();
    for (const entry of this.entries) {
      const firstSector = entry.offsetBytes / this.unitBytes;
      const sectorCount = Math.ceil(entry.preImage.length / this.unitBytes);
      for (let index = 0; index < sectorCount; index++) {
        let history = histories.get(firstSector + index);
        if (history === undefined) {
          history = { versions: [], durableIndex: 0 };
          histories.set(firstSector + index, history);
        }
        const startBytes = index * this.unitBytes;
        const endBytes = Math.min(startBytes + this.unitBytes, entry.preImage.length);
        history.versions.push(entry.preImage.subarray(startBytes, endBytes));
        // The content after a durable write is the next version (or the current content).
        if (entry.durable) history.durableIndex = history.versions.length;
      }
    }
    return histories;
  }
}
