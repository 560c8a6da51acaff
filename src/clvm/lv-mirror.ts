/**
 * The mirror of a PV evacuation (pv move): while a run of an LV's extents is copied to its new
 * place, every write to the run also goes to the target, so that when the copy ends the target
 * holds exactly what the source holds and the mapping can switch to it.
 *
 * The copy and the writes meet on a small range lock. The copier locks a chunk, waits for the
 * mirrored writes in flight on it, reads it from the source and writes it to the target, then
 * unlocks it. A write overlapping a locked chunk waits for the unlock before it starts. So a
 * write lands on the target either before the chunk is read (and the copy carries it) or after
 * the chunk was written (and the write itself carries it), never in between. A few chunks are
 * copied at once (`depth`), each under its own lock, so that the source and the target are
 * both busy: one chunk at a time left each device idle half of the time.
 *
 * Limitation: like any mirror, it keeps the copies identical only for writes that do not overlap
 * each other while in flight; the order of overlapping concurrent writes is undefined on one disk
 * already, and may then differ between the two. A discard goes to both copies; where a device
 * ignores discards the discarded bytes may then differ, which discard's contract allows.
 */
import type {
  BlockDevice,
  DiscardOptions,
  WriteOptions,
  WriteZeroesOptions,
} from '../disk/block-device.js';
import { checkRange } from '../disk/checks.js';
import { TandemError } from '../errors.js';

/** What a mirror needs to know of its LV. */
export interface LogicalVolumeLike extends BlockDevice {
  readonly extentSizeBytes: number;
}

export interface MirrorTarget {
  readonly device: BlockDevice;
  /** The target byte of the mirror's first LV byte. */
  readonly offsetBytes: number;
}

export interface CopyMirrorOptions {
  /** The copy unit, and the size of each of the copy's buffers (default 1 MiB). */
  readonly chunkBytes?: number;
  /** Chunks copied at once (default 4); the copy holds depth × chunkBytes of memory. */
  readonly depth?: number;
  readonly onProgress?: (copiedBytes: number, totalBytes: number) => void;
  readonly signal?: AbortSignal;
}

export const mirrorChunkBytesDefault = 1024 * 1024;
export const mirrorCopyDepthDefault = 4;
/** The memory a copy may hold: chunk size times depth. */
export const mirrorCopyBytesMax = 32 * 1024 * 1024;

/** Where the mirrored part of a write goes: target bytes, and its place in the request. */
export interface MirroredPart {
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly requestOffsetBytes: number;
  readonly requestEndBytes: number;
}

/** A mirrored write admitted past the lock: [startBytes, endBytes) in LV bytes. */
interface MirrorWrite {
  readonly startBytes: number;
  readonly endBytes: number;
}

/** A chunk the copier holds: LV bytes [startBytes, endBytes). */
interface LockedChunk {
  readonly startBytes: number;
  readonly endBytes: number;
  /** Called when the admitted writes no longer overlap the chunk. */
  quietWaiter: (() => void) | undefined;
}

export class LvMirror {
  /** Set by the first target write that failed: the copy is no longer trustworthy. */
  private failure: unknown = undefined;
  private stopped = false;
  private copying = false;
  /** The chunks the copier holds. */
  private readonly locked = new Set<LockedChunk>();
  private unlockWaiters: (() => void)[] = [];
  private readonly admitted = new Set<MirrorWrite>();
  /** Mirrored writes issued and not finished, waiting for the lock or admitted. */
  private pendingCount = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(
    private readonly description: string,
    /** LV bytes [startBytes, endBytes) are mirrored. */
    readonly startBytes: number,
    readonly endBytes: number,
    readonly target: MirrorTarget,
  ) {}

  overlaps(offsetBytes: number, lengthBytes: number): boolean {
    return offsetBytes < this.endBytes && offsetBytes + lengthBytes > this.startBytes;
  }

  /**
   * Runs a write of LV bytes [offsetBytes, offsetBytes + lengthBytes) that overlaps the mirror,
   * once no locked chunk overlaps it: `operation` writes the source through the LV mapping and
   * the `target` part (the overlap) through writeTarget, zeroTarget or discardTarget.
   */
  async runWrite(
    offsetBytes: number,
    lengthBytes: number,
    operation: (target: MirroredPart) => Promise<void>,
  ): Promise<void> {
    const startBytes = Math.max(offsetBytes, this.startBytes);
    const endBytes = Math.min(offsetBytes + lengthBytes, this.endBytes);
    this.pendingCount++;
    let admitted: MirrorWrite | undefined;
    try {
      while (this.overlapsLockedChunk(startBytes, endBytes)) {
        await new Promise<void>((resolve) => this.unlockWaiters.push(resolve));
      }
      admitted = { startBytes, endBytes };
      this.admitted.add(admitted);
      await operation({
        offsetBytes: this.target.offsetBytes + (startBytes - this.startBytes),
        lengthBytes: endBytes - startBytes,
        requestOffsetBytes: startBytes - offsetBytes,
        requestEndBytes: endBytes - offsetBytes,
      });
    } finally {
      if (admitted !== undefined) {
        this.admitted.delete(admitted);
        this.wakeQuietChunks();
      }
      this.pendingCount--;
      if (this.pendingCount === 0) wakeAll(this.idleWaiters);
    }
  }

  /** Writes `buffer` to the target in pieces the target device accepts. */
  writeTarget(buffer: Buffer, targetOffsetBytes: number, options?: WriteOptions): Promise<void> {
    const device = this.target.device;
    const pieces: Promise<void>[] = [];
    for (let doneBytes = 0; doneBytes < buffer.length; doneBytes += device.maximumIoBytes) {
      const piece = buffer.subarray(doneBytes, doneBytes + device.maximumIoBytes);
      pieces.push(device.write(piece, targetOffsetBytes + doneBytes, options));
    }
    return this.guard(settleAll(pieces));
  }

  /** Zeroes a target range; never `fastOnly`, since the target must end like the source. */
  zeroTarget(targetOffsetBytes: number, lengthBytes: number, options?: WriteZeroesOptions) {
    const fua = options?.fua === true;
    const noHole = options?.noHole === true;
    return this.guard(
      this.target.device.writeZeroes(targetOffsetBytes, lengthBytes, { fua, noHole }),
    );
  }

  discardTarget(targetOffsetBytes: number, lengthBytes: number, options?: DiscardOptions) {
    return this.guard(this.target.device.discard(targetOffsetBytes, lengthBytes, options));
  }

  /**
   * A failed target write fails the client's write (the LV is about to live on the target, so
   * the write is not safe) and the copy (the target can no longer be trusted).
   */
  private async guard(promise: Promise<void>): Promise<void> {
    try {
      await promise;
    } catch (error) {
      this.failure ??= error;
      throw error;
    }
  }

  /**
   * Copies the mirrored range from the source (`readSource` reads LV bytes through the current
   * mapping) to the target, `depth` chunks at a time, each under the range lock, then flushes
   * the target. Stops taking new chunks at the first failure, waits for the chunks in flight,
   * then rejects with that failure.
   */
  async copy(
    readSource: (buffer: Buffer, offsetBytes: number) => Promise<void>,
    options: CopyMirrorOptions,
  ): Promise<void> {
    const totalBytes = this.endBytes - this.startBytes;
    const chunkBytes = Math.min(options.chunkBytes ?? mirrorChunkBytesDefault, totalBytes);
    const depth = Math.min(
      options.depth ?? mirrorCopyDepthDefault,
      Math.ceil(totalBytes / chunkBytes),
    );
    if (this.copying) {
      throw new TandemError('FAILED_PRECONDITION', `a copy of ${this.description} already runs`);
    }
    this.copying = true;
    try {
      let nextBytes = this.startBytes;
      let copiedBytes = 0;
      const copier = async (): Promise<void> => {
        const chunk = Buffer.alloc(chunkBytes);
        while (nextBytes < this.endBytes) {
          options.signal?.throwIfAborted();
          this.checkUsable();
          const positionBytes = nextBytes;
          const lengthBytes = Math.min(chunkBytes, this.endBytes - positionBytes);
          nextBytes += lengthBytes;
          await this.copyChunk(chunk.subarray(0, lengthBytes), positionBytes, readSource);
          copiedBytes += lengthBytes;
          options.onProgress?.(copiedBytes, totalBytes);
        }
      };
      const copiers: Promise<void>[] = [];
      for (let index = 0; index < depth; index++) copiers.push(copier());
      // A failed copier ends the copy: the others stop before their next chunk.
      await settleAll(
        copiers.map((running) =>
          running.catch((error: unknown) => {
            nextBytes = this.endBytes;
            throw error;
          }),
        ),
      );
      await this.target.device.flush();
      this.checkUsable();
    } finally {
      this.copying = false;
    }
  }

  private async copyChunk(
    buffer: Buffer,
    positionBytes: number,
    readSource: (buffer: Buffer, offsetBytes: number) => Promise<void>,
  ): Promise<void> {
    const chunk: LockedChunk = {
      startBytes: positionBytes,
      endBytes: positionBytes + buffer.length,
      quietWaiter: undefined,
    };
    this.locked.add(chunk);
    try {
      if (this.busyIn(chunk)) {
        await new Promise<void>((resolve) => (chunk.quietWaiter = resolve));
      }
      chunk.quietWaiter = undefined;
      await readSource(buffer, positionBytes);
      await this.writeTarget(buffer, this.target.offsetBytes + (positionBytes - this.startBytes));
    } finally {
      this.locked.delete(chunk);
      wakeAll(this.unlockWaiters);
    }
  }

  private overlapsLockedChunk(startBytes: number, endBytes: number): boolean {
    for (const chunk of this.locked) {
      if (startBytes < chunk.endBytes && endBytes > chunk.startBytes) return true;
    }
    return false;
  }

  private busyIn(chunk: LockedChunk): boolean {
    for (const write of this.admitted) {
      if (write.startBytes < chunk.endBytes && write.endBytes > chunk.startBytes) return true;
    }
    return false;
  }

  private wakeQuietChunks(): void {
    for (const chunk of this.locked) {
      const wake = chunk.quietWaiter;
      if (wake !== undefined && !this.busyIn(chunk)) {
        chunk.quietWaiter = undefined;
        wake();
      }
    }
  }

  private checkUsable(): void {
    if (this.failure !== undefined) {
      throw new TandemError(
        'DISK_IO',
        `a write to the mirror target of ${this.description} failed`,
        {
          cause: this.failure,
        },
      );
    }
    if (this.stopped) {
      throw new TandemError('FAILED_PRECONDITION', `the mirror of ${this.description} was stopped`);
    }
  }

  /**
   * Ends the mirror for new writes (the caller stopped routing them here); resolves when every
   * mirrored write issued before has finished on both copies.
   */
  stop(): Promise<void> {
    this.stopped = true;
    if (this.pendingCount === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }
}

/**
 * A mirror of LV extents [lvExtentStart, lvExtentStart + extentCount) of `lv` onto `target`,
 * checked: within the LV, within the target, and no stricter alignment on the target than on the
 * LV (or writes the LV accepts would fail on the target).
 */
export function createMirror(
  lv: LogicalVolumeLike,
  lvExtentStart: number,
  extentCount: number,
  target: MirrorTarget,
): LvMirror {
  const startBytes = lvExtentStart * lv.extentSizeBytes;
  const lengthBytes = extentCount * lv.extentSizeBytes;
  const details = { lvExtentStart, extentCount, targetOffsetBytes: target.offsetBytes };
  if (!Number.isSafeInteger(lvExtentStart) || lvExtentStart < 0 || !(extentCount > 0)) {
    throw new TandemError('DISK_INVALID_ARGUMENT', 'bad mirror extent range', { details });
  }
  checkRange(lv, startBytes, lengthBytes, false);
  checkRange(target.device, target.offsetBytes, lengthBytes, true);
  if (lv.alignmentBytes % target.device.alignmentBytes !== 0) {
    throw new TandemError(
      'DISK_MISALIGNED',
      `the mirror target ${target.device.description} needs a larger alignment than ` +
        lv.description,
      { details },
    );
  }
  return new LvMirror(lv.description, startBytes, startBytes + lengthBytes, target);
}

/**
 * A copy chunk is whole units of both devices; chunk times depth (the copy's memory) is bounded.
 */
export function checkCopyShape(chunkBytes: number, depth: number, unitBytes: number): void {
  const details = { chunkBytes, depth, unitBytes, copyBytesMax: mirrorCopyBytesMax };
  if (!Number.isSafeInteger(chunkBytes) || chunkBytes <= 0 || chunkBytes % unitBytes !== 0) {
    throw new TandemError('DISK_INVALID_ARGUMENT', `bad mirror copy chunk ${chunkBytes}`, {
      details,
    });
  }
  if (!Number.isSafeInteger(depth) || depth < 1 || chunkBytes * depth > mirrorCopyBytesMax) {
    throw new TandemError(
      'DISK_INVALID_ARGUMENT',
      `bad mirror copy depth ${depth} (${depth} chunks of ${chunkBytes} bytes)`,
      { details },
    );
  }
}

function wakeAll(waiters: (() => void)[]): void {
  const woken = waiters.splice(0);
  for (const wake of woken) wake();
}

/** Waits for every promise (none is left running), then fails with the first failure. */
export async function settleAll(promises: readonly Promise<void>[]): Promise<void> {
  const results = await Promise.allSettled(promises);
  for (const result of results) {
    if (result.status === 'rejected') throw result.reason;
  }
}
