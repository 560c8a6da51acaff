/**
 * The Linux calls that Node's fs module lacks (fallocate, SEEK_DATA/SEEK_HOLE, block device
 * ioctls, buffer addresses for O_DIRECT), from the optional addon in native/ when it was built,
 * or a portable fallback that stays correct but slower: callers learn what is missing from
 * `isNative` and from rejections with code 'EOPNOTSUPP', and then zero by writing zero buffers
 * and report every range as data.
 *
 * Devices take a `DiskNative` as an option, so tests can force the fallback on one device
 * (`fallbackDiskNative`); `TANDEM_DISK_NATIVE=0` forces it for the whole process.
 */
import { existsSync } from 'node:fs';
import { readFile } from 'node:fs/promises';
import { createRequire } from 'node:module';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

export interface BlockDeviceGeometry {
  readonly sizeBytes: number;
  readonly logicalSectorSizeBytes: number;
  readonly physicalSectorSizeBytes: number;
}

export interface DirectIoAlignment {
  /** 0 when unknown. */
  readonly memoryAlignmentBytes: number;
  /** 0 when unknown. */
  readonly offsetAlignmentBytes: number;
}

export interface DiskNative {
  /** True when the addon is loaded; false for the portable fallback. */
  readonly isNative: boolean;
  readonly fallocateModes: { readonly punchHole: number; readonly zeroRange: number };
  /** fallocate(2) off the main thread; `mode` is one of `fallocateModes` (both keep the size). */
  fallocate(fd: number, mode: number, offsetBytes: number, lengthBytes: number): Promise<void>;
  /** lseek(SEEK_DATA): the next data offset at or after `offsetBytes`, -1 when none (ENXIO). */
  seekData(fd: number, offsetBytes: number): Promise<number>;
  /** lseek(SEEK_HOLE): the next hole at or after `offsetBytes` (EOF counts), -1 when none. */
  seekHole(fd: number, offsetBytes: number): Promise<number>;
  blockDiscard(fd: number, offsetBytes: number, lengthBytes: number): Promise<void>;
  blockZeroOut(fd: number, offsetBytes: number, lengthBytes: number): Promise<void>;
  /** posix_fadvise(WILLNEED); a no-op in the fallback. */
  adviseWillNeed(fd: number, offsetBytes: number, lengthBytes: number): Promise<void>;
  /** Size and sector sizes of an open block device; `deviceNumber` is fstat's `rdev`. */
  blockDeviceGeometry(fd: number, deviceNumber: number): Promise<BlockDeviceGeometry>;
  directIoAlignment(fd: number): DirectIoAlignment;
  /**
   * A buffer of `sizeBytes` whose address is a multiple of `alignmentBytes` (for O_DIRECT), or
   * undefined when the address cannot be known (fallback).
   */
  allocateAligned(sizeBytes: number, alignmentBytes: number): Buffer | undefined;
  /** Whether `buffer` starts at a multiple of `alignmentBytes`; false when unknown. */
  isAddressAligned(buffer: Buffer, alignmentBytes: number): boolean;
  /**
   * Runs a batch of positional reads and writes on one pool thread (src/disk/batched-io.ts);
   * undefined in the fallback, where each request goes through fs on its own.
   */
  readonly submitBatch: SubmitBatch | undefined;
  readonly batchMaximumOperations: number;
  /**
   * Reads from the page cache only, never waiting on the device: the bytes read, or a negative
   * errno (-EAGAIN: not cached). Undefined in the fallback.
   */
  readonly preadNoWait: ((fd: number, buffer: Buffer, offsetBytes: number) => number) | undefined;
  /**
   * Lets the C heap keep up to `sizeBytes` of freed memory instead of returning it to the kernel
   * at once (glibc's M_TRIM_THRESHOLD), so that short-lived socket buffers reuse pages rather
   * than fault in fresh zeroed ones. Process-wide; false when not applied (fallback).
   */
  retainFreedHeap(sizeBytes: number): boolean;
  /** The NBD transmission thread (native/nbd_thread.c, src/nbd/transmission-thread.ts); not in the fallback. */
  readonly nbdThread: NbdThreadNative | undefined;
}

/** Raw calls of the NBD transmission thread; src/nbd/transmission-thread.ts gives them meaning. */
export interface NbdThreadNative {
  /**
   * Starts a thread serving requests from a dup of `socketFd` with I/O on a dup of `targetFd`;
   * `settings` is [sizeBytes, alignmentBytes, maximumPayloadBytes, maximumSkippedPayloadBytes,
   * maximumQueuedEvents, handBackAfter, writable, servesReads, structuredReplies] (booleans as
   * 0/1). Returns an opaque handle. `leftover` comes with the last batch: bytes the thread
   * received but did not parse.
   */
  start(
    socketFd: number,
    targetFd: number,
    pending: Buffer,
    settings: Float64Array,
    onEvents: (events: Float64Array, leftover: Buffer | undefined) => void,
  ): unknown;
  /** what: 1 pause (value 1) or resume (0), 2 stop the thread (it serves nothing more). */
  control(handle: unknown, what: number, value: number): void;
  /** Copies `bytes` for the thread to send after its own output; false on no memory. */
  send(handle: unknown, bytes: Buffer): boolean;
  /** After the thread stopped: the output it had not sent (its own, then send()'s). */
  takeOutput(handle: unknown): Buffer | undefined;
}

/**
 * results[i] is 0 for success, a positive errno, or -1 when a read met the end of the file.
 * `writes[i]` is 1 for a write and 0 for a read. A write's element may be an array of Buffers,
 * written back to back with one pwritev (a gather write).
 */
export type SubmitBatch = (
  fd: number,
  buffers: Array<Buffer | readonly Buffer[]>,
  offsets: Float64Array,
  writes: Uint8Array,
  done: (results: Int32Array) => void,
) => void;

/** The raw addon exports (native/tandem_disk.c). */
interface NativeAddon {
  fallocate(fd: number, mode: number, offset: number, length: number): Promise<number>;
  seekData(fd: number, offset: number): Promise<number>;
  seekHole(fd: number, offset: number): Promise<number>;
  blockDiscard(fd: number, offset: number, length: number): Promise<number>;
  blockZeroOut(fd: number, offset: number, length: number): Promise<number>;
  adviseWillNeed(fd: number, offset: number, length: number): Promise<number>;
  blockDeviceGeometry(fd: number): BlockDeviceGeometry;
  directIoAlignment(fd: number): DirectIoAlignment;
  addressModulo(buffer: Buffer, alignment: number): number;
  submitBatch: SubmitBatch;
  preadNoWait(fd: number, buffer: Buffer, offset: number): number;
  retainFreedHeap(sizeBytes: number): boolean;
  startThread?: NbdThreadNative['start'];
  controlThread?: NbdThreadNative['control'];
  sendOnThread?: NbdThreadNative['send'];
  takeOutput?: NbdThreadNative['takeOutput'];
  BATCH_MAXIMUM_OPERATIONS: number;
  FALLOC_FL_KEEP_SIZE: number;
  FALLOC_FL_PUNCH_HOLE: number;
  FALLOC_FL_ZERO_RANGE: number;
}

const addonRelativePath = path.join('native', 'build', 'Release', 'tandem_disk.node');
/** dist/src/disk is three levels below the repository, src/disk two; a little slack. */
const addonSearchDepthMaximum = 5;

function notSupported(syscall: string): Error {
  return Object.assign(new Error(`${syscall} is not available without the native addon`), {
    code: 'EOPNOTSUPP',
    syscall,
  });
}

function sysfsDirectory(deviceNumber: number): string {
  // Linux's new_encode_dev: minor bits 0-7 and 20-31, major bits 8-19.
  const major = (deviceNumber >>> 8) & 0xfff;
  const minor = (deviceNumber & 0xff) | ((deviceNumber >>> 12) & 0xfff00);
  return `/sys/dev/block/${major}:${minor}`;
}

async function readSysfsNumber(...candidates: string[]): Promise<number | undefined> {
  for (const candidate of candidates) {
    try {
      const value = Number.parseInt((await readFile(candidate, 'utf8')).trim(), 10);
      if (Number.isSafeInteger(value)) return value;
    } catch {
      // Try the next candidate: partitions keep `queue/` in their parent's directory.
    }
  }
  return undefined;
}

/** Block device geometry from sysfs: `size` counts 512-byte units whatever the sector size. */
export async function sysfsBlockDeviceGeometry(deviceNumber: number): Promise<BlockDeviceGeometry> {
  const directory = sysfsDirectory(deviceNumber);
  const sectorCount = await readSysfsNumber(`${directory}/size`);
  if (sectorCount === undefined) {
    throw Object.assign(new Error(`cannot read ${directory}/size`), { code: 'ENODEV' });
  }
  const logical =
    (await readSysfsNumber(
      `${directory}/queue/logical_block_size`,
      `${directory}/../queue/logical_block_size`,
    )) ?? 512;
  const physical =
    (await readSysfsNumber(
      `${directory}/queue/physical_block_size`,
      `${directory}/../queue/physical_block_size`,
    )) ?? logical;
  return {
    sizeBytes: sectorCount * 512,
    logicalSectorSizeBytes: logical,
    physicalSectorSizeBytes: physical,
  };
}

/** The portable fallback: correct, never fast. */
export const fallbackDiskNative: DiskNative = {
  isNative: false,
  fallocateModes: { punchHole: 0, zeroRange: 0 },
  fallocate: () => Promise.reject(notSupported('fallocate')),
  seekData: () => Promise.reject(notSupported('lseek(SEEK_DATA)')),
  seekHole: () => Promise.reject(notSupported('lseek(SEEK_HOLE)')),
  blockDiscard: () => Promise.reject(notSupported('ioctl(BLKDISCARD)')),
  blockZeroOut: () => Promise.reject(notSupported('ioctl(BLKZEROOUT)')),
  adviseWillNeed: () => Promise.resolve(),
  blockDeviceGeometry: (_fd, deviceNumber) => sysfsBlockDeviceGeometry(deviceNumber),
  directIoAlignment: () => ({ memoryAlignmentBytes: 0, offsetAlignmentBytes: 0 }),
  allocateAligned: () => undefined,
  isAddressAligned: () => false,
  submitBatch: undefined,
  batchMaximumOperations: 0,
  preadNoWait: undefined,
  retainFreedHeap: () => false,
  nbdThread: undefined,
};

function wrapAddon(addon: NativeAddon): DiskNative {
  const keepSize = addon.FALLOC_FL_KEEP_SIZE;
  const ignoreResult = (): void => undefined;
  return {
    isNative: true,
    fallocateModes: {
      punchHole: addon.FALLOC_FL_PUNCH_HOLE | keepSize,
      zeroRange: addon.FALLOC_FL_ZERO_RANGE | keepSize,
    },
    fallocate: (fd, mode, offsetBytes, lengthBytes) =>
      addon.fallocate(fd, mode, offsetBytes, lengthBytes).then(ignoreResult),
    seekData: (fd, offsetBytes) => addon.seekData(fd, offsetBytes),
    seekHole: (fd, offsetBytes) => addon.seekHole(fd, offsetBytes),
    blockDiscard: (fd, offsetBytes, lengthBytes) =>
      addon.blockDiscard(fd, offsetBytes, lengthBytes).then(ignoreResult),
    blockZeroOut: (fd, offsetBytes, lengthBytes) =>
      addon.blockZeroOut(fd, offsetBytes, lengthBytes).then(ignoreResult),
    adviseWillNeed: (fd, offsetBytes, lengthBytes) =>
      addon.adviseWillNeed(fd, offsetBytes, lengthBytes).then(ignoreResult),
    blockDeviceGeometry: (fd) => Promise.resolve().then(() => addon.blockDeviceGeometry(fd)),
    directIoAlignment: (fd) => addon.directIoAlignment(fd),
    allocateAligned: (sizeBytes, alignmentBytes) => {
      // Over-allocate and start at the first aligned address: V8 never moves a backing store.
      const backing = Buffer.allocUnsafeSlow(sizeBytes + alignmentBytes);
      const remainder = addon.addressModulo(backing, alignmentBytes);
      const startBytes = remainder === 0 ? 0 : alignmentBytes - remainder;
      return backing.subarray(startBytes, startBytes + sizeBytes);
    },
    isAddressAligned: (buffer, alignmentBytes) => addon.addressModulo(buffer, alignmentBytes) === 0,
    submitBatch: addon.submitBatch,
    batchMaximumOperations: addon.BATCH_MAXIMUM_OPERATIONS,
    preadNoWait: addon.preadNoWait,
    retainFreedHeap: (sizeBytes) => addon.retainFreedHeap(sizeBytes),
    nbdThread:
      addon.startThread !== undefined &&
      addon.controlThread !== undefined &&
      addon.sendOnThread !== undefined &&
      addon.takeOutput !== undefined
        ? {
            start: addon.startThread,
            control: addon.controlThread,
            send: addon.sendOnThread,
            takeOutput: addon.takeOutput,
          }
        : undefined,
  };
}

function isNativeAddon(value: unknown): value is NativeAddon {
  if (typeof value !== 'object' || value === null) return false;
  const record = value as Record<string, unknown>;
  return (
    typeof record['fallocate'] === 'function' &&
    typeof record['addressModulo'] === 'function' &&
    typeof record['submitBatch'] === 'function' &&
    typeof record['preadNoWait'] === 'function' &&
    typeof record['retainFreedHeap'] === 'function' &&
    typeof record['FALLOC_FL_PUNCH_HOLE'] === 'number'
  );
}

function findAddonPath(): string | undefined {
  let directory = path.dirname(fileURLToPath(import.meta.url));
  for (let depth = 0; depth <= addonSearchDepthMaximum; depth++) {
    const candidate = path.join(directory, addonRelativePath);
    if (existsSync(candidate)) return candidate;
    directory = path.dirname(directory);
  }
  return undefined;
}

let loaded: { native: DiskNative; loadError: unknown } | undefined;

/** The addon if it was built and loads, else the fallback; loaded once per process. */
export function loadDiskNative(): DiskNative {
  if (loaded === undefined) loaded = loadOnce();
  return loaded.native;
}

/** Why the addon is not in use (undefined when it is): for a warning at startup. */
export function diskNativeLoadError(): unknown {
  loadDiskNative();
  return loaded?.loadError;
}

function loadOnce(): { native: DiskNative; loadError: unknown } {
  if (process.env['TANDEM_DISK_NATIVE'] === '0') {
    return { native: fallbackDiskNative, loadError: new Error('TANDEM_DISK_NATIVE=0') };
  }
  const addonPath = findAddonPath();
  if (addonPath === undefined) {
    return {
      native: fallbackDiskNative,
      loadError: new Error(`${addonRelativePath} not found (npm run build:native)`),
    };
  }
  try {
    const addon: unknown = createRequire(import.meta.url)(addonPath);
    if (!isNativeAddon(addon)) throw new Error(`${addonPath} does not export the expected API`);
    return { native: wrapAddon(addon), loadError: undefined };
  } catch (error) {
    return { native: fallbackDiskNative, loadError: error };
  }
}

/**
 * A buffer for device I/O: aligned to `alignmentBytes` when the addon can tell addresses (so an
 * O_DIRECT device needs no bounce copy), an ordinary unpooled buffer otherwise. Contents are
 * uninitialised. For the NBD server's request buffers.
 */
export function allocateIoBuffer(sizeBytes: number, alignmentBytes = 4096): Buffer {
  return (
    loadDiskNative().allocateAligned(sizeBytes, alignmentBytes) ?? Buffer.allocUnsafeSlow(sizeBytes)
  );
}
