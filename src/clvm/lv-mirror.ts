/**
 * The mirror of a PV evacuation (pv move): while a run of extents of one LV area is copied from
 * the source PV to its new place, every write to the run also goes to the target, so that when
 * the copy ends the target holds exactly what the source holds and the mapping can switch to it.
 *
 * The mirror works on source PV bytes, not LV bytes: the run of a linear segment is a range of
 * LV bytes, but the run of one area of a striped segment is every Nth stripe chunk of the LV.
 * The LV device translates each write into the parts of it that land on the run (`SourcePart`).
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

export interface MirrorTarget {
  readonly device: BlockDevice;
  /** The target byte of the run's first byte. */
  readonly offsetBytes: number;
}

/** The run being moved: source PV bytes [offsetBytes, offsetBytes + lengthBytes). */
export interface MirrorSource {
  readonly device: BlockDevice;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

/** The part of a request that lands on the run: `lengthBytes` at source PV byte `offsetBytes`. */
export interface SourcePart {
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  /** Where the part starts in the request. */
  readonly requestOffsetBytes: number;
}

export interface CopyMirrorOptions {
  /** The copy unit, and the size of each of the copy's buffers (default 1 MiB). */
  readonly chunkBytes?: number;
  /** Chunks copied at once (default 4); the copy holds depth × chunkBytes of memory. */
  readonly depth?: number;
  /**
   * Starts a flush of the target after every this many bytes copied (default 64 MiB; 0: only
   * at the end), so that writing back the copy overlaps the copy instead of all of it waiting
   * for the final flush. Flushing more often never changes what the copy leaves.
   */
  readonly flushEveryBytes?: number;
  readonly onProgress?: (copiedBytes: number, totalBytes: number) => void;
  readonly signal?: AbortSignal;
}

export const mirrorChunkBytesDefault = 1024 * 1024;
export const mirrorCopyDepthDefault = 4;
export const mirrorFlushEveryBytesDefault = 64 * 1024 * 1024;
/** The memory a copy may hold: chunk size times depth. */
export const mirrorCopyBytesMax = 32 * 1024 * 1024;

/** Where a mirrored part of a write goes: target bytes, and its place in the request. */
export interface MirroredPart {
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly requestOffsetBytes: number;
  readonly requestEndBytes: number;
}

/** A mirrored write admitted past the lock: its parts, in source PV bytes. */
type MirrorWrite = readonly SourcePart[];

/** A chunk the copier holds: source PV bytes [startBytes, endBytes). */
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

  /** Source PV bytes [startBytes, endBytes) are mirrored. */
  readonly startBytes: number;
  readonly endBytes: number;

  constructor(
    private readonly description: string,
    readonly source: MirrorSource,
    readonly target: MirrorTarget,
  ) {
    this.startBytes = source.offsetBytes;
    this.endBytes = source.offsetBytes + source.lengthBytes;
  }

  /** The parts of `parts` (source PV bytes of a request) within the run, clipped to it. */
  clip(parts: readonly SourcePart[]): SourcePart[] {
    const clipped: SourcePart[] = [];
    for (const part of parts) {
      const startBytes = Math.max(part.offsetBytes, this.startBytes);
      const endBytes = Math.min(part.offsetBytes + part.lengthBytes, this.endBytes);
      if (startBytes >= endBytes) continue;
      clipped.push({
        offsetBytes: startBytes,
        lengthBytes: endBytes - startBytes,
        requestOffsetBytes: part.requestOffsetBytes + (startBytes - part.offsetBytes),
      });
    }
    return clipped;
  }

  /**
   * Runs a write whose `parts` (from clip) land on the run, once no locked chunk overlaps any of
   * them: `operation` writes the source through the LV mapping and each target part through
   * writeTarget, zeroTarget or discardTarget.
   */
  async runWrite(
    parts: readonly SourcePart[],
    operation: (targets: readonly MirroredPart[]) => Promise<void>,
  ): Promise<void> {
    this.pendingCount++;
    let admitted: MirrorWrite | undefined;
    try {
      while (parts.some((part) => this.overlapsLockedChunk(part))) {
        await new Promise<void>((resolve) => this.unlockWaiters.push(resolve));
      }
      admitted = parts;
      this.admitted.add(admitted);
      await operation(
        parts.map((part) => ({
          offsetBytes: this.target.offsetBytes + (part.offsetBytes - this.startBytes),
          lengthBytes: part.lengthBytes,
          requestOffsetBytes: part.requestOffsetBytes,
          requestEndBytes: part.requestOffsetBytes + part.lengthBytes,
        })),
      );
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
   * Copies the run from the source PV to the target, `depth` chunks at a time, each under the
   * range lock, then flushes the target. Stops taking new chunks at the first failure, waits for
   * the chunks in flight, then rejects with that failure.
   */
  async copy(options: CopyMirrorOptions): Promise<void> {
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
      const flushEveryBytes = options.flushEveryBytes ?? mirrorFlushEveryBytesDefault;
      if (!Number.isSafeInteger(flushEveryBytes) || flushEveryBytes < 0) {
        throw new TandemError('DISK_INVALID_ARGUMENT', `bad flush interval ${flushEveryBytes}`);
      }
      let unflushedBytes = 0;
      const earlyFlushes: Promise<void>[] = [];
      const copier = async (): Promise<void> => {
        const chunk = Buffer.alloc(chunkBytes);
        while (nextBytes < this.endBytes) {
          options.signal?.throwIfAborted();
          this.checkUsable();
          const positionBytes = nextBytes;
          const lengthBytes = Math.min(chunkBytes, this.endBytes - positionBytes);
          nextBytes += lengthBytes;
          await this.copyChunk(chunk.subarray(0, lengthBytes), positionBytes);
          copiedBytes += lengthBytes;
          unflushedBytes += lengthBytes;
          // The last chunk needs none: the final flush follows.
          if (
            flushEveryBytes > 0 &&
            unflushedBytes >= flushEveryBytes &&
            copiedBytes < totalBytes
          ) {
            unflushedBytes = 0;
            const flush = this.target.device.flush();
            flush.catch(() => undefined); // Awaited below; not an unhandled rejection meanwhile.
            earlyFlushes.push(flush);
          }
          options.onProgress?.(copiedBytes, totalBytes);
        }
      };
      const copiers: Promise<void>[] = [];
      for (let index = 0; index < depth; index++) copiers.push(copier());
      // A failed copier ends the copy: the others stop before their next chunk.
      try {
        await settleAll(
          copiers.map((running) =>
            running.catch((error: unknown) => {
              nextBytes = this.endBytes;
              throw error;
            }),
          ),
        );
      } finally {
        await Promise.allSettled(earlyFlushes);
      }
      await settleAll(earlyFlushes);
      await this.target.device.flush();
      this.checkUsable();
    } finally {
      this.copying = false;
    }
  }

  private async copyChunk(buffer: Buffer, positionBytes: number): Promise<void> {
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
      await this.source.device.read(buffer, positionBytes);
      await this.writeTarget(buffer, this.target.offsetBytes + (positionBytes - this.startBytes));
    } finally {
      this.locked.delete(chunk);
      wakeAll(this.unlockWaiters);
    }
  }

  private overlapsLockedChunk(part: SourcePart): boolean {
    for (const chunk of this.locked) {
      if (overlap(part, chunk)) return true;
    }
    return false;
  }

  private busyIn(chunk: LockedChunk): boolean {
    for (const write of this.admitted) {
      if (write.some((part) => overlap(part, chunk))) return true;
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
 * A mirror of the run `source` onto `target`, checked: within both devices, and no stricter
 * alignment on the target than on the LV (or writes the LV accepts would fail on the target).
 */
export function createMirror(
  lv: BlockDevice,
  source: MirrorSource,
  target: MirrorTarget,
): LvMirror {
  const details = {
    sourceOffsetBytes: source.offsetBytes,
    lengthBytes: source.lengthBytes,
    targetOffsetBytes: target.offsetBytes,
  };
  if (!(source.lengthBytes > 0)) {
    throw new TandemError('DISK_INVALID_ARGUMENT', 'an empty mirror run', { details });
  }
  checkRange(source.device, source.offsetBytes, source.lengthBytes, false);
  checkRange(target.device, target.offsetBytes, source.lengthBytes, true);
  if (lv.alignmentBytes % target.device.alignmentBytes !== 0) {
    throw new TandemError(
      'DISK_MISALIGNED',
      `the mirror target ${target.device.description} needs a larger alignment than ` +
        lv.description,
      { details },
    );
  }
  return new LvMirror(lv.description, source, target);
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

function overlap(part: SourcePart, chunk: LockedChunk): boolean {
  return (
    part.offsetBytes < chunk.endBytes && part.offsetBytes + part.lengthBytes > chunk.startBytes
  );
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
