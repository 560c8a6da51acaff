/**
 * Space management for a FileDevice: discard, fast zeroing and allocation status, with the
 * fallbacks each needs when the filesystem, the device or the missing addon says no.
 *
 * A capability found unsupported (EOPNOTSUPP and friends) is remembered so that the next request
 * goes straight to its fallback instead of paying for a failing system call each time.
 */
import type { BlockStatusExtent } from './block-device.js';
import { isNotSupportedError } from './checks.js';
import type { DiskNative } from './native.js';

/** blockStatus answers with at most this many extents (the caller asks again for the rest). */
export const blockStatusExtentCountMaximum = 1024;

export interface FileSpaceOptions {
  readonly fd: number;
  readonly kind: 'file' | 'block';
  readonly native: DiskNative;
  readonly logicalSectorSizeBytes: number;
  /** The slow path, shared with FileDevice: zero buffers written in bounded chunks. */
  readonly writeZeroBuffers: (offsetBytes: number, lengthBytes: number) => Promise<void>;
}

/** A range cut at logical sector boundaries: block device ioctls take whole sectors only. */
interface SectorSplit {
  readonly headBytes: number;
  readonly middleOffsetBytes: number;
  readonly middleBytes: number;
  readonly tailBytes: number;
}

export class FileSpaceManager {
  private punchHoleSupported: boolean;
  private zeroRangeSupported: boolean;
  private blockDiscardSupported: boolean;
  private blockZeroOutSupported: boolean;
  private seekSupported: boolean;

  constructor(private readonly options: FileSpaceOptions) {
    const native = options.native.isNative;
    this.punchHoleSupported = native;
    this.zeroRangeSupported = native;
    this.blockDiscardSupported = native && options.kind === 'block';
    this.blockZeroOutSupported = native && options.kind === 'block';
    this.seekSupported = native && options.kind === 'file';
  }

  /** Releases space when possible; discard is a hint, so "not supported" is success. */
  async discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    const { fd, native } = this.options;
    if (this.options.kind === 'file') {
      if (!this.punchHoleSupported) return;
      try {
        await native.fallocate(fd, native.fallocateModes.punchHole, offsetBytes, lengthBytes);
      } catch (error) {
        if (!isNotSupportedError(error)) throw error;
        this.punchHoleSupported = false;
      }
      return;
    }
    const split = this.splitAtSectors(offsetBytes, lengthBytes);
    if (!this.blockDiscardSupported || split.middleBytes === 0) return;
    try {
      await native.blockDiscard(fd, split.middleOffsetBytes, split.middleBytes);
    } catch (error) {
      if (!isNotSupportedError(error)) throw error;
      this.blockDiscardSupported = false;
    }
  }

  /**
   * Zeroes the range without writing zero buffers when the system can; false when it cannot
   * (nothing was changed then). For block devices, partial sectors at the edges are written as
   * zero buffers (small); BLKZEROOUT, which the kernel may turn into writes, is used only when
   * the caller did not ask for fast zeroing only (like nbdkit's file plugin).
   */
  async zeroFast(
    offsetBytes: number,
    lengthBytes: number,
    noHole: boolean,
    fastOnly: boolean,
  ): Promise<boolean> {
    if (this.options.kind === 'file') {
      return this.zeroFileRange(offsetBytes, lengthBytes, noHole);
    }
    const split = this.splitAtSectors(offsetBytes, lengthBytes);
    if (split.middleBytes === 0 || !(await this.zeroBlockRange(split, noHole, fastOnly)))
      return false;
    if (split.headBytes > 0) await this.options.writeZeroBuffers(offsetBytes, split.headBytes);
    if (split.tailBytes > 0) {
      const tailOffsetBytes = split.middleOffsetBytes + split.middleBytes;
      await this.options.writeZeroBuffers(tailOffsetBytes, split.tailBytes);
    }
    return true;
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<BlockStatusExtent[]> {
    if (!this.seekSupported) return [{ lengthBytes, hole: false, zero: false }];
    try {
      return await this.seekExtents(offsetBytes, lengthBytes);
    } catch (error) {
      if (!isNotSupportedError(error)) throw error;
      this.seekSupported = false;
      return [{ lengthBytes, hole: false, zero: false }];
    }
  }

  private async seekExtents(offsetBytes: number, lengthBytes: number) {
    const { fd, native } = this.options;
    const endBytes = offsetBytes + lengthBytes;
    const extents: BlockStatusExtent[] = [];
    let positionBytes = offsetBytes;
    while (positionBytes < endBytes && extents.length < blockStatusExtentCountMaximum) {
      const dataBytes = await native.seekData(fd, positionBytes);
      if (dataBytes === -1 || dataBytes > positionBytes) {
        // A hole up to the next data (or to the end: no data after this point).
        const holeEndBytes = dataBytes === -1 ? endBytes : Math.min(dataBytes, endBytes);
        extents.push({ lengthBytes: holeEndBytes - positionBytes, hole: true, zero: true });
        positionBytes = holeEndBytes;
        continue;
      }
      const holeBytes = await native.seekHole(fd, positionBytes);
      const dataEndBytes = holeBytes === -1 ? endBytes : Math.min(holeBytes, endBytes);
      if (dataEndBytes <= positionBytes) break;
      extents.push({ lengthBytes: dataEndBytes - positionBytes, hole: false, zero: false });
      positionBytes = dataEndBytes;
    }
    return extents;
  }

  private async zeroFileRange(offsetBytes: number, lengthBytes: number, noHole: boolean) {
    const { fd, native } = this.options;
    // A punched hole reads as zeroes; with noHole the blocks must stay allocated.
    if (!noHole && this.punchHoleSupported) {
      try {
        await native.fallocate(fd, native.fallocateModes.punchHole, offsetBytes, lengthBytes);
        return true;
      } catch (error) {
        if (!isNotSupportedError(error)) throw error;
        this.punchHoleSupported = false;
      }
    }
    if (this.zeroRangeSupported) {
      try {
        await native.fallocate(fd, native.fallocateModes.zeroRange, offsetBytes, lengthBytes);
        return true;
      } catch (error) {
        if (!isNotSupportedError(error)) throw error;
        this.zeroRangeSupported = false;
      }
    }
    return false;
  }

  private async zeroBlockRange(split: SectorSplit, noHole: boolean, fastOnly: boolean) {
    const { fd, native } = this.options;
    // On a block device, punch hole = zeroing by unmapping that the kernel never falls back
    // from (BLKDEV_ZERO_NOFALLBACK); BLKZEROOUT keeps blocks mapped (BLKDEV_ZERO_NOUNMAP).
    if (!noHole && this.punchHoleSupported) {
      try {
        const mode = native.fallocateModes.punchHole;
        await native.fallocate(fd, mode, split.middleOffsetBytes, split.middleBytes);
        return true;
      } catch (error) {
        if (!isNotSupportedError(error)) throw error;
        this.punchHoleSupported = false;
      }
    }
    if (this.blockZeroOutSupported && !fastOnly) {
      try {
        await native.blockZeroOut(fd, split.middleOffsetBytes, split.middleBytes);
        return true;
      } catch (error) {
        if (!isNotSupportedError(error)) throw error;
        this.blockZeroOutSupported = false;
      }
    }
    return false;
  }

  private splitAtSectors(offsetBytes: number, lengthBytes: number): SectorSplit {
    const sectorBytes = this.options.logicalSectorSizeBytes;
    const endBytes = offsetBytes + lengthBytes;
    const middleOffsetBytes = Math.ceil(offsetBytes / sectorBytes) * sectorBytes;
    const middleEndBytes = Math.floor(endBytes / sectorBytes) * sectorBytes;
    if (middleEndBytes <= middleOffsetBytes) {
      return {
        headBytes: lengthBytes,
        middleOffsetBytes: offsetBytes,
        middleBytes: 0,
        tailBytes: 0,
      };
    }
    return {
      headBytes: middleOffsetBytes - offsetBytes,
      middleOffsetBytes,
      middleBytes: middleEndBytes - middleOffsetBytes,
      tailBytes: endBytes - middleEndBytes,
    };
  }
}
