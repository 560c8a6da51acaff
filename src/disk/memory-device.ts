/**
 * A BlockDevice in memory, for tests and the deterministic simulation.
 *
 * Storage is sparse: fixed-size chunks allocated on first write, so a "1 TiB" device costs only
 * what is written. An absent chunk is a hole that reads as zeroes, which also gives blockStatus
 * real holes to report (at chunk granularity). Every request completes at once and in call
 * order; latency, failures and volatile caches are the business of FaultInjectingDevice.
 */
import type {
  BlockDevice,
  BlockDeviceCapabilities,
  BlockStatusExtent,
  WriteZeroesOptions,
} from './block-device.js';
import { checkDataRange, checkRange, checkStatusRange, closedError } from './checks.js';
import { TandemError } from '../errors.js';

/** Allocation unit of the sparse storage (and the granularity of holes). */
export const memoryDeviceChunkBytes = 64 * 1024;
const memoryDeviceMaximumIoBytesDefault = 32 * 1024 * 1024;

export interface MemoryDeviceOptions {
  readonly sizeBytes: number;
  /** 512 (default) or 4096. */
  readonly logicalSectorSizeBytes?: 512 | 4096;
  /** Defaults to the logical sector size. */
  readonly physicalSectorSizeBytes?: number;
  /** 1 (default, like a buffered file) or a power of two, e.g. the sector size (like O_DIRECT). */
  readonly alignmentBytes?: number;
  readonly maximumIoBytes?: number;
  readonly readOnly?: boolean;
  readonly description?: string;
}

/** The bytes themselves, shared by every handle from `openAnother`. */
class SparseStorage {
  readonly chunks = new Map<number, Buffer>();
}

function isPowerOfTwo(value: number): boolean {
  return Number.isSafeInteger(value) && value > 0 && (value & (value - 1)) === 0;
}

export class MemoryDevice implements BlockDevice {
  readonly description: string;
  readonly sizeBytes: number;
  readonly alignmentBytes: number;
  readonly logicalSectorSizeBytes: number;
  readonly physicalSectorSizeBytes: number;
  readonly maximumIoBytes: number;
  readonly readOnly: boolean;
  readonly capabilities: BlockDeviceCapabilities = {
    flush: false,
    fua: false,
    discard: true,
    fastZero: true,
    blockStatus: true,
    consistentAcrossConnections: true,
  };
  private readonly storage: SparseStorage;
  private closed = false;

  constructor(options: MemoryDeviceOptions, storage: SparseStorage = new SparseStorage()) {
    const logical = options.logicalSectorSizeBytes ?? 512;
    const physical = options.physicalSectorSizeBytes ?? logical;
    const alignment = options.alignmentBytes ?? 1;
    if (!Number.isSafeInteger(options.sizeBytes) || options.sizeBytes < 0) {
      throw new TandemError('DISK_INVALID_ARGUMENT', `bad size ${options.sizeBytes}`);
    }
    if ((logical !== 512 && logical !== 4096) || !isPowerOfTwo(physical) || physical < logical) {
      throw new TandemError('DISK_INVALID_ARGUMENT', `bad sector sizes ${logical}/${physical}`);
    }
    if (!isPowerOfTwo(alignment) || options.sizeBytes % alignment !== 0) {
      throw new TandemError('DISK_INVALID_ARGUMENT', `bad alignment ${alignment}`);
    }
    this.sizeBytes = options.sizeBytes;
    this.logicalSectorSizeBytes = logical;
    this.physicalSectorSizeBytes = physical;
    this.alignmentBytes = alignment;
    this.maximumIoBytes = options.maximumIoBytes ?? memoryDeviceMaximumIoBytesDefault;
    this.readOnly = options.readOnly ?? false;
    this.description = options.description ?? `memory:${options.sizeBytes}`;
    this.storage = storage;
  }

  /**
   * Another handle on the same bytes (another connection, another host of the simulation):
   * closing one does not close the others.
   */
  openAnother(options: { readOnly?: boolean; description?: string } = {}): MemoryDevice {
    return new MemoryDevice(
      {
        sizeBytes: this.sizeBytes,
        logicalSectorSizeBytes: this.logicalSectorSizeBytes === 4096 ? 4096 : 512,
        physicalSectorSizeBytes: this.physicalSectorSizeBytes,
        alignmentBytes: this.alignmentBytes,
        maximumIoBytes: this.maximumIoBytes,
        readOnly: options.readOnly ?? this.readOnly,
        description: options.description ?? this.description,
      },
      this.storage,
    );
  }

  /** Bytes actually held in memory (allocated chunks). */
  get allocatedBytes(): number {
    return this.storage.chunks.size * memoryDeviceChunkBytes;
  }

  async read(buffer: Buffer, offsetBytes: number): Promise<void> {
    this.checkOpen();
    checkDataRange(this, offsetBytes, buffer.length, false);
    this.forEachChunk(
      offsetBytes,
      buffer.length,
      (chunkIndex, startInChunk, doneBytes, stepBytes) => {
        const chunk = this.storage.chunks.get(chunkIndex);
        if (chunk === undefined) {
          buffer.fill(0, doneBytes, doneBytes + stepBytes);
        } else {
          chunk.copy(buffer, doneBytes, startInChunk, startInChunk + stepBytes);
        }
      },
    );
  }

  async write(buffer: Buffer, offsetBytes: number): Promise<void> {
    this.checkOpen();
    checkDataRange(this, offsetBytes, buffer.length, true);
    this.forEachChunk(
      offsetBytes,
      buffer.length,
      (chunkIndex, startInChunk, doneBytes, stepBytes) => {
        const chunk = this.allocatedChunk(chunkIndex);
        buffer.copy(chunk, startInChunk, doneBytes, doneBytes + stepBytes);
      },
    );
  }

  async flush(): Promise<void> {
    this.checkOpen();
  }

  async discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkOpen();
    checkRange(this, offsetBytes, lengthBytes, true);
    this.zeroRange(offsetBytes, lengthBytes, false);
  }

  async writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options?: WriteZeroesOptions,
  ): Promise<void> {
    this.checkOpen();
    checkRange(this, offsetBytes, lengthBytes, true);
    this.zeroRange(offsetBytes, lengthBytes, options?.noHole === true);
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<BlockStatusExtent[]> {
    this.checkOpen();
    checkStatusRange(this, offsetBytes, lengthBytes);
    const extents: { lengthBytes: number; hole: boolean; zero: boolean }[] = [];
    this.forEachChunk(offsetBytes, lengthBytes, (chunkIndex, _start, _done, stepBytes) => {
      const hole = !this.storage.chunks.has(chunkIndex);
      const last = extents[extents.length - 1];
      if (last !== undefined && last.hole === hole) {
        last.lengthBytes += stepBytes;
      } else {
        extents.push({ lengthBytes: stepBytes, hole, zero: hole });
      }
    });
    return extents;
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkOpen();
    checkRange(this, offsetBytes, lengthBytes, false);
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  private checkOpen(): void {
    if (this.closed) throw closedError(this);
  }

  private allocatedChunk(chunkIndex: number): Buffer {
    let chunk = this.storage.chunks.get(chunkIndex);
    if (chunk === undefined) {
      chunk = Buffer.alloc(memoryDeviceChunkBytes);
      this.storage.chunks.set(chunkIndex, chunk);
    }
    return chunk;
  }

  /** Whole chunks become holes unless `keepAllocated`; partial chunks are filled with zeroes. */
  private zeroRange(offsetBytes: number, lengthBytes: number, keepAllocated: boolean): void {
    this.forEachChunk(offsetBytes, lengthBytes, (chunkIndex, startInChunk, _done, stepBytes) => {
      const whole = startInChunk === 0 && stepBytes === memoryDeviceChunkBytes;
      if (whole && !keepAllocated) {
        this.storage.chunks.delete(chunkIndex);
        return;
      }
      const chunk = keepAllocated
        ? this.allocatedChunk(chunkIndex)
        : this.storage.chunks.get(chunkIndex);
      chunk?.fill(0, startInChunk, startInChunk + stepBytes);
    });
  }

  private forEachChunk(
    offsetBytes: number,
    lengthBytes: number,
    visit: (chunkIndex: number, startInChunk: number, doneBytes: number, stepBytes: number) => void,
  ): void {
    let doneBytes = 0;
    while (doneBytes < lengthBytes) {
      const positionBytes = offsetBytes + doneBytes;
      const chunkIndex = Math.floor(positionBytes / memoryDeviceChunkBytes);
      const startInChunk = positionBytes - chunkIndex * memoryDeviceChunkBytes;
      const stepBytes = Math.min(memoryDeviceChunkBytes - startInChunk, lengthBytes - doneBytes);
      visit(chunkIndex, startInChunk, doneBytes, stepBytes);
      doneBytes += stepBytes;
    }
  }
}
