/**
 * A BlockDevice over a regular file or a block device (e.g. /dev/sdb, /dev/loop3).
 *
 * `direct: 'auto'` (the default) opens block devices with O_DIRECT, because a LUN shared by
 * several hosts must not be read through one host's page cache (a cached sector would hide
 * another host's lease renewal), and regular files buffered, like nbdkit's file plugin without
 * cache=none: an embedded single-host file is faster through the page cache and needs no
 * alignment. With O_DIRECT, `alignmentBytes` is the logical sector size (or what statx reports
 * for a file) and data moves through memory-aligned buffers, copying through an aligned bounce
 * buffer when the caller's buffer is not aligned.
 */
import fs from 'node:fs';
import { readFileSync } from 'node:fs';
import { TandemError, systemErrnoName, systemErrorCode } from '../errors.js';
import type {
  BlockDevice,
  BlockDeviceCapabilities,
  BlockStatusExtent,
  DiscardOptions,
  WriteOptions,
  WriteZeroesOptions,
} from './block-device.js';
import {
  checkDataRange,
  checkRange,
  checkStatusRange,
  closedError,
  systemErrorToDiskError,
} from './checks.js';
import { BatchedIo } from './batched-io.js';
import {
  type TransferDone,
  endOfFileError,
  fdatasync,
  readFully,
  readInto,
  writeFrom,
  writeFully,
  writeGatheredFrom,
  writeGatheredFully,
} from './file-io.js';
import { type DiskNative, loadDiskNative } from './native.js';
import { FileSpaceManager } from './file-space.js';

export type DirectIoMode = 'auto' | 'on' | 'off';

export interface FileDeviceOptions {
  readonly readOnly?: boolean;
  /** O_DIRECT: 'auto' = on for block devices, off for regular files (see the file comment). */
  readonly direct?: DirectIoMode;
  /** The native calls to use; tests pass `fallbackDiskNative` to force the portable path. */
  readonly native?: DiskNative;
}

export type FileDeviceKind = 'file' | 'block';

/** NBD clients send at most 32 MiB per request; larger requests are a caller bug. */
export const fileDeviceMaximumIoBytes = 32 * 1024 * 1024;
/** When statx cannot say, 4 KiB satisfies O_DIRECT on every 512 B or 4 KiB sector device. */
const directAlignmentDefaultBytes = 4096;
const bufferedLogicalSectorBytes = 512;

interface OpenedFile {
  readonly fd: number;
  readonly direct: boolean;
}

function openFlags(readOnly: boolean, direct: boolean): number {
  const { O_RDONLY, O_RDWR, O_DIRECT } = fs.constants;
  return (readOnly ? O_RDONLY : O_RDWR) | (direct ? O_DIRECT : 0);
}

function openFd(path: string, flags: number): Promise<number> {
  return new Promise((resolve, reject) => {
    fs.open(path, flags, (error, fd) => (error === null ? resolve(fd) : reject(error)));
  });
}

function fstat(fd: number): Promise<fs.Stats> {
  return new Promise((resolve, reject) => {
    fs.fstat(fd, (error, stats) => (error === null ? resolve(stats) : reject(error)));
  });
}

function closeFd(fd: number): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.close(fd, (error) => (error === null ? resolve() : reject(error)));
  });
}

function openError(path: string, error: unknown): TandemError {
  const errno = systemErrorCode(error) ?? 'EUNKNOWN';
  const details = { path, errno };
  if (errno === 'ENOENT') {
    return new TandemError('NOT_FOUND', `${path} does not exist`, { cause: error, details });
  }
  if (errno === 'EROFS' || errno === 'EACCES' || errno === 'EPERM') {
    return new TandemError('DISK_READ_ONLY', `cannot open ${path} for writing (${errno})`, {
      cause: error,
      details,
    });
  }
  return new TandemError('DISK_IO', `cannot open ${path} (${errno})`, { cause: error, details });
}

async function openWithDirectMode(
  path: string,
  kind: FileDeviceKind,
  readOnly: boolean,
  mode: DirectIoMode,
  native: DiskNative,
): Promise<OpenedFile> {
  const wantDirect = mode === 'on' || (mode === 'auto' && kind === 'block' && native.isNative);
  if (wantDirect && !native.isNative) {
    throw new TandemError(
      'DISK_NOT_SUPPORTED',
      `O_DIRECT on ${path} needs the native addon for aligned buffers`,
      { details: { path } },
    );
  }
  if (!wantDirect) return { fd: await openFd(path, openFlags(readOnly, false)), direct: false };
  try {
    return { fd: await openFd(path, openFlags(readOnly, true)), direct: true };
  } catch (error) {
    // EINVAL: the filesystem (tmpfs, some FUSE) refuses O_DIRECT.
    if (systemErrorCode(error) !== 'EINVAL') throw error;
    if (mode === 'on') {
      throw new TandemError('DISK_NOT_SUPPORTED', `${path} refuses O_DIRECT`, {
        cause: error,
        details: { path },
      });
    }
    return { fd: await openFd(path, openFlags(readOnly, false)), direct: false };
  }
}

function isPowerOfTwo(value: number): boolean {
  return Number.isSafeInteger(value) && value > 0 && (value & (value - 1)) === 0;
}

interface Geometry {
  sizeBytes: number;
  alignmentBytes: number;
  logicalSectorSizeBytes: number;
  physicalSectorSizeBytes: number;
}

async function measure(
  fd: number,
  stats: fs.Stats,
  kind: FileDeviceKind,
  direct: boolean,
  native: DiskNative,
): Promise<Geometry> {
  if (kind === 'block') {
    const geometry = await native.blockDeviceGeometry(fd, stats.rdev);
    return {
      ...geometry,
      alignmentBytes: direct ? geometry.logicalSectorSizeBytes : 1,
    };
  }
  let logical = bufferedLogicalSectorBytes;
  if (direct) {
    const reported = native.directIoAlignment(fd).offsetAlignmentBytes;
    logical = isPowerOfTwo(reported) ? reported : directAlignmentDefaultBytes;
  }
  const physical =
    isPowerOfTwo(stats.blksize) && stats.blksize >= logical && stats.blksize <= 65536
      ? stats.blksize
      : logical;
  const alignmentBytes = direct ? logical : 1;
  // O_DIRECT cannot reach a partial last sector: the device ends at the last whole one.
  const sizeBytes = stats.size - (stats.size % alignmentBytes);
  return {
    sizeBytes,
    alignmentBytes,
    logicalSectorSizeBytes: logical,
    physicalSectorSizeBytes: physical,
  };
}

/** Opens a regular file or a block device as a BlockDevice. */
/**
 * Requests per native batch: large enough to amortise the thread-pool hand-off, small enough
 * that a burst spreads over several pool threads (measured: bench/nbd.ts).
 */
const batchOperationsMaximum = 8;
/**
 * Pieces per gather write: IOV_MAX, so one pwritev takes them all. A 32 MiB payload in Node's
 * 64 KiB socket chunks is about 513 pieces.
 */
const gatherPiecesMaximum = 1024;

export async function openFileDevice(
  path: string,
  options: FileDeviceOptions = {},
): Promise<FileDevice> {
  const native = options.native ?? loadDiskNative();
  const readOnly = options.readOnly ?? false;
  let stats: fs.Stats;
  try {
    stats = await fs.promises.stat(path);
  } catch (error) {
    throw openError(path, error);
  }
  if (!stats.isFile() && !stats.isBlockDevice()) {
    throw new TandemError('DISK_INVALID_ARGUMENT', `${path} is neither a file nor a block device`);
  }
  const kind: FileDeviceKind = stats.isBlockDevice() ? 'block' : 'file';
  let opened: OpenedFile;
  try {
    opened = await openWithDirectMode(path, kind, readOnly, options.direct ?? 'auto', native);
  } catch (error) {
    throw error instanceof TandemError ? error : openError(path, error);
  }
  try {
    const openedStats = await fstat(opened.fd);
    const geometry = await measure(opened.fd, openedStats, kind, opened.direct, native);
    return new FileDevice(path, opened, kind, readOnly, geometry, openedStats.rdev, native);
  } catch (error) {
    await closeFd(opened.fd).catch(() => undefined);
    throw error instanceof TandemError ? error : openError(path, error);
  }
}

/** FileDevice.borrowDescriptor's loan. */
export interface BorrowedDescriptor {
  readonly fd: number;
  release(): void;
  /** `systemErrno` -1: the file ended before the range did. */
  readError(systemErrno: number, offsetBytes: number, lengthBytes: number): TandemError;
  writeError(systemErrno: number, offsetBytes: number, lengthBytes: number): TandemError;
}

/** An error shaped like Node's system errors, from a positive errno. */
function systemError(systemErrno: number): NodeJS.ErrnoException {
  const code = systemErrnoName(systemErrno);
  return Object.assign(new Error(code), { code, errno: -systemErrno });
}

export class FileDevice implements BlockDevice {
  readonly description: string;
  readonly sizeBytes: number;
  readonly alignmentBytes: number;
  readonly logicalSectorSizeBytes: number;
  readonly physicalSectorSizeBytes: number;
  readonly maximumIoBytes = fileDeviceMaximumIoBytes;
  readonly readOnly: boolean;
  readonly capabilities: BlockDeviceCapabilities;
  readonly kind: FileDeviceKind;
  /** Whether the device was opened with O_DIRECT. */
  readonly direct: boolean;

  private readonly fd: number;
  private readonly native: DiskNative;
  private readonly space: FileSpaceManager;
  private readonly deviceNumber: number;
  private closed = false;
  private closing: Promise<void> | undefined;
  /** Hot-path transfers: batched through the addon when it is there, else fs per request. */
  private readonly readTransfer: (buffer: Buffer, offsetBytes: number, done: TransferDone) => void;
  private readonly writeTransfer: (buffer: Buffer, offsetBytes: number, done: TransferDone) => void;
  private readonly writeGatheredTransfer: (
    pieces: readonly Buffer[],
    offsetBytes: number,
    done: TransferDone,
  ) => void;
  private inFlightCount = 0;
  private onDrained: (() => void) | undefined;

  constructor(
    path: string,
    opened: OpenedFile,
    kind: FileDeviceKind,
    readOnly: boolean,
    geometry: Geometry,
    deviceNumber: number,
    native: DiskNative,
  ) {
    this.description = path;
    this.fd = opened.fd;
    this.direct = opened.direct;
    this.kind = kind;
    this.readOnly = readOnly;
    this.native = native;
    this.deviceNumber = deviceNumber;
    this.sizeBytes = geometry.sizeBytes;
    this.alignmentBytes = geometry.alignmentBytes;
    this.logicalSectorSizeBytes = geometry.logicalSectorSizeBytes;
    this.physicalSectorSizeBytes = geometry.physicalSectorSizeBytes;
    this.capabilities = {
      flush: true,
      fua: true,
      discard: native.isNative,
      fastZero: native.isNative,
      blockStatus: kind === 'file' && native.isNative,
      consistentAcrossConnections: true,
    };
    const submitBatch = native.submitBatch;
    if (submitBatch !== undefined) {
      // O_DIRECT reads bypass the page cache, so the cache-only attempt would only cost a call.
      const readCached = opened.direct ? undefined : native.preadNoWait;
      const batched = new BatchedIo(this.fd, submitBatch, batchOperationsMaximum, readCached);
      this.readTransfer = (buffer, offsetBytes, done) => batched.read(buffer, offsetBytes, done);
      this.writeTransfer = (buffer, offsetBytes, done) => batched.write(buffer, offsetBytes, done);
      this.writeGatheredTransfer = (pieces, offsetBytes, done) =>
        batched.writeGathered(pieces, offsetBytes, done);
    } else {
      const fd = this.fd;
      this.readTransfer = (buffer, offsetBytes, done) => readInto(fd, buffer, offsetBytes, done);
      this.writeTransfer = (buffer, offsetBytes, done) => writeFrom(fd, buffer, offsetBytes, done);
      this.writeGatheredTransfer = (pieces, offsetBytes, done) =>
        writeGatheredFrom(fd, pieces, offsetBytes, done);
    }
    this.space = new FileSpaceManager({
      fd: this.fd,
      kind,
      native,
      logicalSectorSizeBytes: this.logicalSectorSizeBytes,
      writeZeroBuffers: (offsetBytes, lengthBytes) =>
        this.writeZeroBuffers(offsetBytes, lengthBytes),
    });
  }

  /** The hot path: one Promise per request, checks before any I/O, no copy when aligned. */
  read(buffer: Buffer, offsetBytes: number): Promise<void> {
    try {
      if (this.closed) throw closedError(this);
      checkDataRange(this, offsetBytes, buffer.length, false);
    } catch (error) {
      return Promise.reject(error);
    }
    if (buffer.length === 0) return Promise.resolve();
    if (this.direct && !this.native.isAddressAligned(buffer, this.alignmentBytes)) {
      return this.readBounced(buffer, offsetBytes);
    }
    this.inFlightCount++;
    return new Promise((resolve, reject) => {
      this.readTransfer(buffer, offsetBytes, (error) => {
        this.endIo();
        if (error === null) resolve();
        else reject(this.mapError(error, 'read', offsetBytes, buffer.length));
      });
    });
  }

  write(buffer: Buffer, offsetBytes: number, options?: WriteOptions): Promise<void> {
    try {
      if (this.closed) throw closedError(this);
      checkDataRange(this, offsetBytes, buffer.length, true);
    } catch (error) {
      return Promise.reject(error);
    }
    const aligned = !this.direct || this.native.isAddressAligned(buffer, this.alignmentBytes);
    if (options?.fua === true || !aligned || buffer.length === 0) {
      return this.writeSlowly(buffer, offsetBytes, options?.fua === true);
    }
    this.inFlightCount++;
    return new Promise((resolve, reject) => {
      this.writeTransfer(buffer, offsetBytes, (error) => {
        this.endIo();
        if (error === null) resolve();
        else reject(this.mapError(error, 'write', offsetBytes, buffer.length));
      });
    });
  }

  /**
   * Like write() of the pieces' concatenation. Buffered, the pieces go to one pwritev as they
   * are; with O_DIRECT every piece would have to be aligned, so they are joined into one aligned
   * buffer (the bounce copy write() would make anyway).
   */
  writeGathered(pieces: readonly Buffer[], offsetBytes: number, options?: WriteOptions) {
    let lengthBytes = 0;
    for (const piece of pieces) lengthBytes += piece.length;
    try {
      if (this.closed) throw closedError(this);
      checkDataRange(this, offsetBytes, lengthBytes, true);
    } catch (error) {
      return Promise.reject(error);
    }
    if (this.direct) {
      return this.write(this.joinAligned(pieces, lengthBytes), offsetBytes, options);
    }
    if (pieces.length === 1 || pieces.length > gatherPiecesMaximum) {
      // Many tiny pieces (a client trickling its payload) cost more as vectors than joined.
      const only = pieces.length === 1 ? pieces[0] : undefined;
      return this.write(only ?? Buffer.concat(pieces, lengthBytes), offsetBytes, options);
    }
    if (options?.fua === true || lengthBytes === 0) {
      return this.writeGatheredSlowly(pieces, offsetBytes, lengthBytes, options?.fua === true);
    }
    this.inFlightCount++;
    return new Promise<void>((resolve, reject) => {
      this.writeGatheredTransfer(pieces, offsetBytes, (error) => {
        this.endIo();
        if (error === null) resolve();
        else reject(this.mapError(error, 'write', offsetBytes, lengthBytes));
      });
    });
  }

  private joinAligned(pieces: readonly Buffer[], lengthBytes: number): Buffer {
    if (lengthBytes === 0) return Buffer.alloc(0);
    const joined = this.allocateAligned(lengthBytes);
    let cursor = 0;
    for (const piece of pieces) cursor += piece.copy(joined, cursor);
    return joined;
  }

  /** A buffered gather write with FUA: fs.writev, then fdatasync. */
  private async writeGatheredSlowly(
    pieces: readonly Buffer[],
    offsetBytes: number,
    lengthBytes: number,
    fua: boolean,
  ): Promise<void> {
    this.inFlightCount++;
    try {
      if (lengthBytes > 0) await writeGatheredFully(this.fd, pieces, offsetBytes);
      if (fua) await fdatasync(this.fd);
    } catch (error) {
      throw this.mapError(error, 'write', offsetBytes, lengthBytes);
    } finally {
      this.endIo();
    }
  }

  private async readBounced(buffer: Buffer, offsetBytes: number): Promise<void> {
    this.inFlightCount++;
    try {
      const bounce = this.allocateAligned(buffer.length);
      await readFully(this.fd, bounce, offsetBytes);
      bounce.copy(buffer);
    } catch (error) {
      throw this.mapError(error, 'read', offsetBytes, buffer.length);
    } finally {
      this.endIo();
    }
  }

  /** Writes through a bounce buffer when misaligned for O_DIRECT, and syncs for FUA. */
  private async writeSlowly(buffer: Buffer, offsetBytes: number, fua: boolean): Promise<void> {
    this.inFlightCount++;
    try {
      if (buffer.length > 0) {
        let source = buffer;
        if (this.direct && !this.native.isAddressAligned(buffer, this.alignmentBytes)) {
          source = this.allocateAligned(buffer.length);
          buffer.copy(source);
        }
        await writeFully(this.fd, source, offsetBytes);
      }
      if (fua) await fdatasync(this.fd);
    } catch (error) {
      throw this.mapError(error, 'write', offsetBytes, buffer.length);
    } finally {
      this.endIo();
    }
  }

  async flush(): Promise<void> {
    if (this.closed) throw closedError(this);
    this.inFlightCount++;
    try {
      await fdatasync(this.fd);
    } catch (error) {
      throw this.mapError(error, 'flush', 0, 0);
    } finally {
      this.endIo();
    }
  }

  async discard(offsetBytes: number, lengthBytes: number, options?: DiscardOptions) {
    if (this.closed) throw closedError(this);
    checkRange(this, offsetBytes, lengthBytes, true);
    this.inFlightCount++;
    try {
      if (lengthBytes > 0) await this.space.discard(offsetBytes, lengthBytes);
      if (options?.fua === true) await fdatasync(this.fd);
    } catch (error) {
      throw this.mapError(error, 'discard', offsetBytes, lengthBytes);
    } finally {
      this.endIo();
    }
  }

  async writeZeroes(offsetBytes: number, lengthBytes: number, options?: WriteZeroesOptions) {
    if (this.closed) throw closedError(this);
    checkRange(this, offsetBytes, lengthBytes, true);
    this.inFlightCount++;
    try {
      if (lengthBytes > 0) {
        const noHole = options?.noHole === true;
        const fastOnly = options?.fastOnly === true;
        const done = await this.space.zeroFast(offsetBytes, lengthBytes, noHole, fastOnly);
        if (!done) {
          if (fastOnly) {
            throw new TandemError(
              'DISK_NOT_SUPPORTED',
              `${this.description} cannot zero ${lengthBytes} bytes at ${offsetBytes} quickly`,
              { details: { offsetBytes, lengthBytes, noHole } },
            );
          }
          await this.writeZeroBuffers(offsetBytes, lengthBytes);
        }
      }
      if (options?.fua === true) await fdatasync(this.fd);
    } catch (error) {
      throw this.mapError(error, 'writeZeroes', offsetBytes, lengthBytes);
    } finally {
      this.endIo();
    }
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<BlockStatusExtent[]> {
    if (this.closed) throw closedError(this);
    checkStatusRange(this, offsetBytes, lengthBytes);
    this.inFlightCount++;
    try {
      return await this.space.blockStatus(offsetBytes, lengthBytes);
    } catch (error) {
      throw this.mapError(error, 'blockStatus', offsetBytes, lengthBytes);
    } finally {
      this.endIo();
    }
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    if (this.closed) throw closedError(this);
    checkRange(this, offsetBytes, lengthBytes, false);
    // With O_DIRECT there is no page cache to fill; otherwise readahead is only a hint.
    if (this.direct || lengthBytes === 0) return;
    this.inFlightCount++;
    try {
      await this.native.adviseWillNeed(this.fd, offsetBytes, lengthBytes);
    } catch {
      // A failed hint changes nothing the caller can observe.
    } finally {
      this.endIo();
    }
  }

  /**
   * Lends the open descriptor to code that reads and writes it outside this object (the NBD
   * transmission thread, src/nbd/transmission-thread.ts, which duplicates it). Counts as I/O
   * in flight until `release`, so close() waits for the borrower; `readError` and `writeError`
   * turn the errno of a failed pread or pwrite into the error read() or write() itself would
   * have given. Undefined once closed.
   */
  borrowDescriptor(): BorrowedDescriptor | undefined {
    if (this.closed) return undefined;
    this.inFlightCount++;
    let released = false;
    return {
      fd: this.fd,
      release: () => {
        if (released) return;
        released = true;
        this.endIo();
      },
      readError: (systemErrno, offsetBytes, lengthBytes) =>
        this.mapError(
          systemErrno < 0 ? endOfFileError(offsetBytes) : systemError(systemErrno),
          'read',
          offsetBytes,
          lengthBytes,
        ),
      writeError: (systemErrno, offsetBytes, lengthBytes) =>
        this.mapError(systemError(systemErrno), 'write', offsetBytes, lengthBytes),
    };
  }

  close(): Promise<void> {
    if (this.closing === undefined) {
      this.closed = true;
      this.closing = (async () => {
        if (this.inFlightCount > 0) {
          await new Promise<void>((resolve) => (this.onDrained = resolve));
        }
        await closeFd(this.fd);
      })();
    }
    return this.closing;
  }

  private endIo(): void {
    this.inFlightCount--;
    if (this.inFlightCount === 0 && this.onDrained !== undefined) this.onDrained();
  }

  private allocateAligned(sizeBytes: number): Buffer {
    const buffer = this.native.allocateAligned(sizeBytes, this.alignmentBytes);
    // openFileDevice never opens O_DIRECT without an addon that can align buffers.
    if (buffer === undefined) throw new Error('assertion failed: O_DIRECT without aligned buffers');
    return buffer;
  }

  private zeroBuffer: Buffer | undefined;

  /** Writes zeroes in bounded chunks, one at a time (a fallback, never the hot path). */
  private async writeZeroBuffers(offsetBytes: number, lengthBytes: number): Promise<void> {
    const chunkBytes = Math.min(lengthBytes, zeroChunkBytes);
    if (this.zeroBuffer === undefined || this.zeroBuffer.length < chunkBytes) {
      const size = Math.max(chunkBytes, this.alignmentBytes);
      this.zeroBuffer = this.direct ? this.allocateAligned(size).fill(0) : Buffer.alloc(size);
    }
    for (let doneBytes = 0; doneBytes < lengthBytes; doneBytes += chunkBytes) {
      const stepBytes = Math.min(chunkBytes, lengthBytes - doneBytes);
      await writeFully(this.fd, this.zeroBuffer.subarray(0, stepBytes), offsetBytes + doneBytes);
    }
  }

  private mapError(error: unknown, operation: string, offsetBytes: number, lengthBytes: number) {
    return systemErrorToDiskError(error, this, operation, offsetBytes, lengthBytes, () =>
      this.isGone(),
    );
  }

  /** On EIO, a block device whose sysfs entry vanished or shrank to 0 (a detached loop) is gone. */
  private isGone(): boolean {
    if (this.kind !== 'block') return false;
    const major = (this.deviceNumber >>> 8) & 0xfff;
    const minor = (this.deviceNumber & 0xff) | ((this.deviceNumber >>> 12) & 0xfff00);
    try {
      return readFileSync(`/sys/dev/block/${major}:${minor}/size`, 'utf8').trim() === '0';
    } catch {
      return true;
    }
  }
}

/** Fallback zeroing writes at most this much per request, so memory stays bounded. */
const zeroChunkBytes = 1024 * 1024;
