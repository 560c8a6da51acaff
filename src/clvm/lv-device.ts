/**
 * A logical volume as a BlockDevice: LV bytes map through the LV's segments (lv-mapping.ts) to
 * the PV devices, which it shares with the other LVs of the VG and never closes.
 *
 * This device serves VM disks over NBD, so its hot path is lean: a request that falls within one
 * piece (one segment run or stripe chunk, within the PV device's maximumIoBytes) costs a binary
 * search, no allocation beyond the tracking promise, and one call to the PV device. Larger
 * requests are split and their pieces issued in parallel.
 *
 * Mapping changes (online resize, the switch at the end of a PV evacuation) swap an immutable
 * table: a request finishes on the table it started with. Each table lives in a generation that
 * counts its requests in flight, so that the caller can wait for the requests of old mappings
 * (`drainRetiredMappings`) before it gives their extents to another LV.
 *
 * A PV evacuation mirrors a run of extents to its new place while the LV is in use
 * (`startMirror`, `copyMirror`, `stopMirror`; the range lock is in lv-mirror.ts).
 */
import type {
  BlockDevice,
  BlockDeviceCapabilities,
  BlockStatusExtent,
  DiscardOptions,
  WriteOptions,
  WriteZeroesOptions,
} from '../disk/block-device.js';
import { checkDataRange, checkRange, checkStatusRange, closedError } from '../disk/checks.js';
import { TandemError } from '../errors.js';
import { LvMappingTable, MappedRun, type PvResolver } from './lv-mapping.js';
import {
  type CopyMirrorOptions,
  type LvMirror,
  type MirroredPart,
  type MirrorTarget,
  checkCopyShape,
  createMirror,
  mirrorChunkBytesDefault,
  mirrorCopyDepthDefault,
  settleAll,
} from './lv-mirror.js';
import { type MirrorRunOptions, findMirrorRun, mirroredParts } from './lv-mirror-run.js';
import type { LvSegment } from './types.js';

export type { PvResolver } from './lv-mapping.js';
export type { CopyMirrorOptions, MirrorTarget } from './lv-mirror.js';

/** The largest request the LV accepts; larger PV limits do not matter, smaller ones split. */
export const lvMaximumIoBytes = 32 * 1024 * 1024;
/** blockStatus asks the PVs about at most this many pieces and answers for those. */
export const lvBlockStatusPiecesMax = 256;

export interface LogicalVolumeDeviceOptions {
  readonly description: string;
  readonly extentSizeBytes: number;
  readonly segments: readonly LvSegment[];
  /** Where each PV is; undefined for a missing PV, whose part of the LV then fails DISK_GONE. */
  readonly resolvePv: PvResolver;
  readonly readOnly?: boolean;
}

export interface StartMirrorOptions extends MirrorRunOptions {
  readonly target: MirrorTarget;
}

/** How a request is checked: data or not, mutating or not. */
type RequestKind = 'read' | 'write' | 'mutate' | 'cache' | 'status';

/** One mapping table and the requests in flight on it. */
class MappingGeneration {
  inFlightCount = 0;
  private idleWaiters: (() => void)[] = [];

  constructor(readonly table: LvMappingTable) {}

  /** Counts the request until it settles; `end` and `fail` are bound once, not per request. */
  track<T>(promise: Promise<T>): Promise<T> {
    this.inFlightCount++;
    return promise.then(this.end, this.fail);
  }

  whenIdle(): Promise<void> {
    if (this.inFlightCount === 0) return Promise.resolve();
    return new Promise((resolve) => this.idleWaiters.push(resolve));
  }

  private readonly end = <T>(value: T): T => {
    this.inFlightCount--;
    if (this.inFlightCount === 0 && this.idleWaiters.length > 0) {
      for (const wake of this.idleWaiters.splice(0)) wake();
    }
    return value;
  };

  private readonly fail = (error: unknown): never => {
    this.end(undefined);
    throw error;
  };
}

export class LogicalVolumeDevice implements BlockDevice {
  readonly description: string;
  readonly extentSizeBytes: number;
  readonly maximumIoBytes = lvMaximumIoBytes;
  readonly readOnly: boolean;
  private readonly resolvePv: PvResolver;
  private generation: MappingGeneration;
  private retired: MappingGeneration[] = [];
  private mirror: LvMirror | undefined;
  /** LV bytes that may touch the mirrored run: a quick test before any translation. */
  private mirrorLvStartBytes = 0;
  private mirrorLvEndBytes = 0;
  private closed = false;
  /** The hot path's translation scratch: filled and read without an await in between. */
  private readonly run = new MappedRun();

  constructor(options: LogicalVolumeDeviceOptions) {
    this.description = options.description;
    this.extentSizeBytes = options.extentSizeBytes;
    this.readOnly = options.readOnly ?? false;
    this.resolvePv = options.resolvePv;
    this.generation = new MappingGeneration(this.buildTable(options.segments));
  }

  get sizeBytes(): number {
    return this.generation.table.sizeBytes;
  }
  get alignmentBytes(): number {
    return this.generation.table.alignmentBytes;
  }
  get logicalSectorSizeBytes(): number {
    return this.generation.table.logicalSectorSizeBytes;
  }
  get physicalSectorSizeBytes(): number {
    return this.generation.table.physicalSectorSizeBytes;
  }
  get capabilities(): BlockDeviceCapabilities {
    return this.generation.table.capabilities;
  }

  /**
   * Switches to a new mapping (online grow or shrink, or the target after an evacuation). PVs
   * are resolved now: calling it again with the same segments picks up a PV that came back.
   */
  setSegments(segments: readonly LvSegment[]): void {
    this.replaceGeneration(this.buildTable(segments));
  }

  /** Resolves when every request issued on an earlier mapping has finished. */
  async drainRetiredMappings(): Promise<void> {
    await Promise.all(this.retired.map((generation) => generation.whenIdle()));
    this.retired = this.retired.filter((generation) => generation.inFlightCount > 0);
  }

  read(buffer: Buffer, offsetBytes: number): Promise<void> {
    const generation = this.generation;
    const refusal = this.refusal('read', offsetBytes, buffer.length);
    if (refusal !== undefined) return Promise.reject(refusal);
    if (buffer.length === 0) return Promise.resolve();
    const run = this.run;
    generation.table.locate(offsetBytes, run);
    const device = run.device;
    if (device !== undefined && run.holds(buffer.length, device)) {
      return generation.track(device.read(buffer, run.pvOffsetBytes));
    }
    return generation.track(this.readPieces(generation.table, buffer, offsetBytes));
  }

  write(buffer: Buffer, offsetBytes: number, options?: WriteOptions): Promise<void> {
    const generation = this.generation;
    const refusal = this.refusal('write', offsetBytes, buffer.length);
    if (refusal !== undefined) return Promise.reject(refusal);
    if (buffer.length === 0) return Promise.resolve();
    const table = generation.table;
    // The hot path: no closures for the mirror when there is none.
    if (this.mirror === undefined) {
      return generation.track(this.writeOn(table, buffer, offsetBytes, options));
    }
    const source = () => this.writeOn(table, buffer, offsetBytes, options);
    return this.runMutation(
      generation,
      offsetBytes,
      buffer.length,
      true,
      source,
      (mirror, targets) =>
        settleAll([
          source(),
          ...targets.map((target) =>
            mirror.writeTarget(
              buffer.subarray(target.requestOffsetBytes, target.requestEndBytes),
              target.offsetBytes,
              options,
            ),
          ),
        ]),
    );
  }

  /** Forwards the pieces as they are when the request maps to one PV run; joins them otherwise. */
  writeGathered(pieces: readonly Buffer[], offsetBytes: number, options?: WriteOptions) {
    let lengthBytes = 0;
    for (const piece of pieces) lengthBytes += piece.length;
    const generation = this.generation;
    const refusal = this.refusal('write', offsetBytes, lengthBytes);
    if (refusal !== undefined) return Promise.reject(refusal);
    if (lengthBytes === 0) return Promise.resolve();
    const run = this.run;
    generation.table.locate(offsetBytes, run);
    const device = run.device;
    if (
      device?.writeGathered !== undefined &&
      run.holds(lengthBytes, device) &&
      (this.mirror === undefined || !this.mayTouchMirror(offsetBytes, lengthBytes))
    ) {
      return generation.track(device.writeGathered(pieces, run.pvOffsetBytes, options));
    }
    return this.write(Buffer.concat(pieces, lengthBytes), offsetBytes, options);
  }

  /** Flushes every PV the LV maps (and the mirror target), in parallel; missing PVs hold nothing. */
  flush(): Promise<void> {
    if (this.closed) return Promise.reject(closedError(this));
    const generation = this.generation;
    const devices = new Set(generation.table.devices);
    if (this.mirror !== undefined) devices.add(this.mirror.target.device);
    return generation.track(settleAll([...devices].map((device) => device.flush())));
  }

  discard(offsetBytes: number, lengthBytes: number, options?: DiscardOptions): Promise<void> {
    const generation = this.generation;
    const refusal = this.refusal('mutate', offsetBytes, lengthBytes);
    if (refusal !== undefined) return Promise.reject(refusal);
    if (lengthBytes === 0) return Promise.resolve();
    const table = generation.table;
    const source = () =>
      this.onRanges(table, offsetBytes, lengthBytes, (device, pvOffsetBytes, length) =>
        device.discard(pvOffsetBytes, length, options),
      );
    return this.runMutation(
      generation,
      offsetBytes,
      lengthBytes,
      false,
      source,
      (mirror, targets) =>
        settleAll([
          source(),
          ...targets.map((target) =>
            mirror.discardTarget(target.offsetBytes, target.lengthBytes, options),
          ),
        ]),
    );
  }

  writeZeroes(offsetBytes: number, lengthBytes: number, options?: WriteZeroesOptions) {
    const generation = this.generation;
    const refusal = this.refusal('mutate', offsetBytes, lengthBytes);
    if (refusal !== undefined) return Promise.reject(refusal);
    // Refused before any PV zeroes its part, so that a refusal leaves the data intact.
    if (options?.fastOnly === true && !generation.table.capabilities.fastZero) {
      const error = new TandemError('DISK_NOT_SUPPORTED', `${this.description} cannot zero fast`);
      return Promise.reject(error);
    }
    if (lengthBytes === 0) return Promise.resolve();
    const table = generation.table;
    const source = () =>
      this.onRanges(table, offsetBytes, lengthBytes, (device, pvOffsetBytes, length) =>
        device.writeZeroes(pvOffsetBytes, length, options),
      );
    return this.runMutation(
      generation,
      offsetBytes,
      lengthBytes,
      false,
      source,
      async (mirror, targets) => {
        const zeroTarget = () =>
          settleAll(
            targets.map((target) =>
              mirror.zeroTarget(target.offsetBytes, target.lengthBytes, options),
            ),
          );
        if (options?.fastOnly !== true) return settleAll([source(), zeroTarget()]);
        // The source may still refuse a fast zero: the target (never fast-only) must not go first.
        await source();
        await zeroTarget();
      },
    );
  }

  blockStatus(offsetBytes: number, lengthBytes: number): Promise<BlockStatusExtent[]> {
    const generation = this.generation;
    const refusal = this.refusal('status', offsetBytes, lengthBytes);
    if (refusal !== undefined) return Promise.reject(refusal);
    return generation.track(this.statusOn(generation.table, offsetBytes, lengthBytes));
  }

  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    const generation = this.generation;
    const refusal = this.refusal('cache', offsetBytes, lengthBytes);
    if (refusal !== undefined) return Promise.reject(refusal);
    if (lengthBytes === 0) return Promise.resolve();
    const cached = this.onRanges(generation.table, offsetBytes, lengthBytes, (device, pv, length) =>
      device.cache(pv, length),
    );
    return generation.track(cached);
  }

  /** Refuses later requests; the PV devices stay open, since other LVs share them. */
  async close(): Promise<void> {
    this.closed = true;
  }

  /**
   * From now on, every write, write zeroes and discard touching the run (the part of LV extents
   * [lvExtentStart, lvExtentStart + extentCount) on PV `pvUuid`) also goes to the target. Reads
   * still come from the source. Requests already in flight are not mirrored: copyMirror waits
   * for them.
   */
  startMirror(options: StartMirrorOptions): void {
    this.checkOpen();
    if (this.mirror !== undefined) {
      throw new TandemError('FAILED_PRECONDITION', `${this.description} is already mirrored`);
    }
    const run = findMirrorRun(this, this.generation.table, this.resolvePv, options);
    this.mirror = createMirror(this, run.source, options.target);
    this.mirrorLvStartBytes = run.lvStartBytes;
    this.mirrorLvEndBytes = run.lvEndBytes;
    // A new generation, so that the copy can wait for the requests issued before the mirror.
    this.replaceGeneration(this.generation.table);
  }

  /**
   * Copies the mirrored run from the source PV to the target while the LV is in use, then
   * flushes the target. Holds `depth` chunk buffers. Rejects between chunks with the signal's reason
   * (an AbortError unless the caller gave another) when aborted, with DISK_IO once a mirrored
   * write to the target failed, and with FAILED_PRECONDITION when the mirror was stopped.
   */
  async copyMirror(options: CopyMirrorOptions = {}): Promise<void> {
    const mirror = this.mirror;
    if (mirror === undefined) {
      throw new TandemError('FAILED_PRECONDITION', `${this.description} is not mirrored`);
    }
    const chunkBytes = options.chunkBytes ?? mirrorChunkBytesDefault;
    const depth = options.depth ?? mirrorCopyDepthDefault;
    const unitBytes = Math.max(this.alignmentBytes, mirror.target.device.alignmentBytes);
    checkCopyShape(chunkBytes, depth, unitBytes);
    await this.drainRetiredMappings();
    await mirror.copy({ ...options, chunkBytes, depth });
  }

  /**
   * Ends mirroring: new writes go to the current mapping only. Call it right after setSegments
   * switched to the target (or after an abort). Resolves when the mirrored writes and every
   * request of earlier mappings have finished, so the source extents may then be reused.
   */
  async stopMirror(): Promise<void> {
    const mirror = this.mirror;
    this.mirror = undefined;
    this.mirrorLvStartBytes = 0;
    this.mirrorLvEndBytes = 0;
    if (mirror !== undefined) await mirror.stop();
    await this.drainRetiredMappings();
  }

  /**
   * Runs a write, write zeroes or discard on `generation`: `source` alone, or, when part of it
   * lands on the mirrored run, `mirrored` (source and target parts) under the mirror's lock.
   */
  private runMutation(
    generation: MappingGeneration,
    offsetBytes: number,
    lengthBytes: number,
    withData: boolean,
    source: () => Promise<void>,
    mirrored: (mirror: LvMirror, targets: readonly MirroredPart[]) => Promise<void>,
  ): Promise<void> {
    const mirror = this.mirror;
    if (mirror !== undefined && this.mayTouchMirror(offsetBytes, lengthBytes)) {
      const table = generation.table;
      const parts = mirroredParts(mirror, table, offsetBytes, lengthBytes, withData);
      if (parts instanceof Error) return Promise.reject(parts);
      if (parts.length > 0) {
        return generation.track(mirror.runWrite(parts, (targets) => mirrored(mirror, targets)));
      }
    }
    return generation.track(source());
  }

  private mayTouchMirror(offsetBytes: number, lengthBytes: number): boolean {
    return (
      offsetBytes < this.mirrorLvEndBytes && offsetBytes + lengthBytes > this.mirrorLvStartBytes
    );
  }

  private buildTable(segments: readonly LvSegment[]): LvMappingTable {
    return new LvMappingTable(this.description, this.extentSizeBytes, segments, this.resolvePv);
  }

  private replaceGeneration(table: LvMappingTable): void {
    this.retired = this.retired.filter((generation) => generation.inFlightCount > 0);
    this.retired.push(this.generation);
    this.generation = new MappingGeneration(table);
  }

  private checkOpen(): void {
    if (this.closed) throw closedError(this);
  }

  /** Why a request is refused before any I/O (disk/checks.ts), or undefined if it is not. */
  private refusal(kind: RequestKind, offsetBytes: number, lengthBytes: number): unknown {
    try {
      this.checkOpen();
      if (kind === 'read' || kind === 'write') {
        checkDataRange(this, offsetBytes, lengthBytes, kind === 'write');
      } else if (kind === 'status') {
        checkStatusRange(this, offsetBytes, lengthBytes);
      } else {
        checkRange(this, offsetBytes, lengthBytes, kind === 'mutate');
      }
      return undefined;
    } catch (error) {
      return error;
    }
  }

  private writeOn(
    table: LvMappingTable,
    buffer: Buffer,
    offsetBytes: number,
    options: WriteOptions | undefined,
  ): Promise<void> {
    const run = this.run;
    table.locate(offsetBytes, run);
    const device = run.device;
    if (device !== undefined && run.holds(buffer.length, device)) {
      return device.write(buffer, run.pvOffsetBytes, options);
    }
    return this.writePieces(table, buffer, offsetBytes, options);
  }

  private async readPieces(table: LvMappingTable, buffer: Buffer, offsetBytes: number) {
    const pieces = table.pieces(offsetBytes, buffer.length, true);
    await settleAll(
      pieces.map((piece) =>
        piece.device.read(
          buffer.subarray(piece.requestOffsetBytes, piece.requestOffsetBytes + piece.lengthBytes),
          piece.pvOffsetBytes,
        ),
      ),
    );
  }

  private async writePieces(
    table: LvMappingTable,
    buffer: Buffer,
    offsetBytes: number,
    options: WriteOptions | undefined,
  ): Promise<void> {
    const pieces = table.pieces(offsetBytes, buffer.length, true);
    await settleAll(
      pieces.map((piece) =>
        piece.device.write(
          buffer.subarray(piece.requestOffsetBytes, piece.requestOffsetBytes + piece.lengthBytes),
          piece.pvOffsetBytes,
          options,
        ),
      ),
    );
  }

  /** Runs a request without data on each PV run of a range (at most one per segment area). */
  private async onRanges(
    table: LvMappingTable,
    offsetBytes: number,
    lengthBytes: number,
    operation: (device: BlockDevice, pvOffsetBytes: number, lengthBytes: number) => Promise<void>,
  ): Promise<void> {
    const ranges = table.ranges(offsetBytes, lengthBytes);
    await settleAll(
      ranges.map((range) => operation(range.device, range.pvOffsetBytes, range.lengthBytes)),
    );
  }

  /** Asks each piece's PV in parallel, then merges adjacent extents of the same state. */
  private async statusOn(table: LvMappingTable, offsetBytes: number, lengthBytes: number) {
    if (!table.capabilities.blockStatus) {
      table.ranges(offsetBytes, lengthBytes); // Fails DISK_GONE on a missing PV, as I/O would.
      return [{ lengthBytes, hole: false, zero: false }];
    }
    const pieces = table.pieces(offsetBytes, lengthBytes, false, lvBlockStatusPiecesMax);
    const answers = await Promise.all(
      pieces.map((piece) => piece.device.blockStatus(piece.pvOffsetBytes, piece.lengthBytes)),
    );
    const extents: { lengthBytes: number; hole: boolean; zero: boolean }[] = [];
    for (const [index, answer] of answers.entries()) {
      let coveredBytes = 0;
      for (const extent of answer) {
        coveredBytes += extent.lengthBytes;
        const last = extents[extents.length - 1];
        if (last !== undefined && last.hole === extent.hole && last.zero === extent.zero) {
          last.lengthBytes += extent.lengthBytes;
        } else {
          extents.push({ ...extent });
        }
      }
      // A PV that answered for less than its piece leaves a gap: the answer ends there.
      if (coveredBytes < (pieces[index]?.lengthBytes ?? 0)) break;
    }
    return extents;
  }
}
