/**
 * Where everything of a lockspace lives on its device, and the lockspace header.
 *
 * All offsets are multiples of 4 KiB (ARCHITECTURE.md, On-disk layout), so 512 B and 4 KiB sector
 * devices both work. A *block* is the lockspace's unit of atomic write for lease records:
 * max(512, the device's logical sector size); one record never spans two blocks.
 *
 *   0                   header: one 4 KiB area, the record in its first block
 *   hostSlotsOffset     host slots: maxHosts × 4 KiB, host id h (1-based) at hostSlotsOffset + (h-1) × 4 KiB
 *   directoryOffset     resource directory: maxResources entries of 64 B (the names), rounded up
 *                       to 4 KiB; entry i names resource area i + 1
 *   resourcesOffset     resource areas: (1 + maxResources) areas of resourceAreaBytes each;
 *                       area 0 is the directory's own lease (held while a name is added),
 *                       area i (1..maxResources) is the resource named by directory entry i - 1.
 *                       In an area, block 0 is the leader and block h is host h's ballot block.
 *
 * Header record (little-endian; the CRC32C covers the first block with the CRC field zeroed):
 *   0 magic "TNDMLKSP" · 8 u32 format version · 12 u32 crc32c · 16 uuid (16 B) · 32 u32 maxHosts
 *   36 u32 maxResources · 40 u32 blockSize · 44 u32 ioTimeoutMs · 48 u64 sizeBytes
 *   56 u64 createdWallMs · 64 u64 hostSlotsOffset · 72 u64 directoryOffset
 *   80 u64 resourcesOffset · 88 u64 resourceAreaBytes · 96 name (64 B, UTF-8, zero padded)
 *   160 u32 move state (0 none, 1 moving, 2 forwarded, 3 aborted) · 164 u32 mover host id
 *   168 u64 move epoch · 176 u64 mover generation
 *
 * The move fields are the lockspace's side of moving it to other extents while it is in use
 * (docs/adr/0002-moving-the-lockspace-lv.md): only the host running the move writes them, into
 * the header of the copy being left, and every host decides from them which copy is the
 * lockspace. Headers written before they existed hold zeros there: no move.
 */
import { randomUUID } from 'node:crypto';
import type { BlockDevice } from '../disk/block-device.js';
import { TandemError, assert } from '../errors.js';
import { crc32c } from '../crc32c.js';
import { deriveTimings } from './timings.js';

export const lockspaceMagic = Buffer.from('TNDMLKSP', 'ascii');
export const lockspaceFormatVersion = 1;
export const alignmentBytes = 4096;
export const hostSlotBytes = 4096;
export const directoryEntryBytes = 64;
export const headerBlockBytes = 512;

export const maxHostsDefault = 128;
export const maxHostsLimit = 2000;
export const maxResourcesDefault = 256;
export const maxResourcesLimit = 16_384;
export const lockspaceNameBytesMax = 64;

const moveOffsets = { state: 160, moverHostId: 164, epoch: 168, moverGeneration: 176 } as const;
const moveStates = ['none', 'moving', 'forwarded', 'aborted'] as const;

/**
 * Where a move of the lockspace stands, as the header of the copy being left says:
 * - `moving`: hosts write their slots here and then to the new copy, and no other lease write;
 * - `forwarded`: the new copy is the lockspace (the move's commit point);
 * - `aborted`: this copy stays the lockspace.
 */
export type LockspaceMoveState = (typeof moveStates)[number];

export interface LockspaceMoveMark {
  readonly state: LockspaceMoveState;
  /** The move's epoch (the VG metadata seqno that began it); 0 with state none. */
  readonly epoch: number;
  /** The host running the move: its host id and the generation of its join. */
  readonly moverHostId: number;
  readonly moverGeneration: number;
}

export const noMoveMark: LockspaceMoveMark = {
  state: 'none',
  epoch: 0,
  moverHostId: 0,
  moverGeneration: 0,
};

/** A lockspace header as read: its geometry and the move mark. */
export interface LockspaceHeaderRecord {
  readonly layout: LockspaceLayout;
  readonly mark: LockspaceMoveMark;
}

export interface LockspaceLayout {
  readonly uuid: string;
  readonly name: string;
  readonly maxHosts: number;
  readonly maxResources: number;
  readonly blockSize: number;
  readonly ioTimeoutMs: number;
  readonly sizeBytes: number;
  readonly createdWallMs: number;
  readonly hostSlotsOffset: number;
  readonly directoryOffset: number;
  readonly resourcesOffset: number;
  readonly resourceAreaBytes: number;
}

export interface LayoutOptions {
  readonly maxHosts?: number;
  readonly maxResources?: number;
  readonly ioTimeoutMs: number;
  /** The device's logical sector size; the block is max(512, it). */
  readonly logicalSectorSizeBytes: number;
  readonly name?: string;
}

function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

function checkCount(value: number, what: string, limit: number): void {
  if (!Number.isInteger(value) || value < 1 || value > limit) {
    throw new TandemError(
      'INVALID_ARGUMENT',
      `${what} must be an integer in 1..${limit}, not ${value}`,
    );
  }
}

/** The geometry of a new lockspace (no I/O). */
export function computeLayout(
  options: LayoutOptions,
  now: { uuid: string; wallMs: number },
): LockspaceLayout {
  const maxHosts = options.maxHosts ?? maxHostsDefault;
  const maxResources = options.maxResources ?? maxResourcesDefault;
  checkCount(maxHosts, 'max hosts', maxHostsLimit);
  checkCount(maxResources, 'max resources', maxResourcesLimit);
  deriveTimings(options.ioTimeoutMs);
  const blockSize = Math.max(512, options.logicalSectorSizeBytes);
  if (blockSize > alignmentBytes || !Number.isInteger(Math.log2(blockSize))) {
    throw new TandemError(
      'INVALID_ARGUMENT',
      `sector size ${options.logicalSectorSizeBytes} is not supported (512..4096)`,
    );
  }
  const name = options.name ?? '';
  if (Buffer.byteLength(name, 'utf8') > lockspaceNameBytesMax) {
    throw new TandemError(
      'INVALID_ARGUMENT',
      `lockspace name is longer than ${lockspaceNameBytesMax} bytes`,
    );
  }
  const hostSlotsOffset = alignmentBytes;
  const directoryOffset = hostSlotsOffset + maxHosts * hostSlotBytes;
  const resourcesOffset =
    directoryOffset + roundUp(maxResources * directoryEntryBytes, alignmentBytes);
  const resourceAreaBytes = roundUp((1 + maxHosts) * blockSize, alignmentBytes);
  const sizeBytes = resourcesOffset + (1 + maxResources) * resourceAreaBytes;
  return {
    uuid: now.uuid,
    name,
    maxHosts,
    maxResources,
    blockSize,
    ioTimeoutMs: options.ioTimeoutMs,
    sizeBytes,
    createdWallMs: now.wallMs,
    hostSlotsOffset,
    directoryOffset,
    resourcesOffset,
    resourceAreaBytes,
  };
}

export function hostSlotOffset(layout: LockspaceLayout, hostId: number): number {
  assert(
    Number.isInteger(hostId) && hostId >= 1 && hostId <= layout.maxHosts,
    `host id ${hostId} out of range`,
  );
  return layout.hostSlotsOffset + (hostId - 1) * hostSlotBytes;
}

/** Area 0 is the directory lease; areas 1..maxResources are resources. */
export function resourceAreaOffset(layout: LockspaceLayout, areaIndex: number): number {
  assert(
    Number.isInteger(areaIndex) && areaIndex >= 0 && areaIndex <= layout.maxResources,
    `resource area ${areaIndex} out of range`,
  );
  return layout.resourcesOffset + areaIndex * layout.resourceAreaBytes;
}

function uuidToBytes(uuid: string): Buffer {
  const hex = uuid.replaceAll('-', '');
  assert(/^[0-9a-f]{32}$/.test(hex), `bad uuid ${uuid}`);
  return Buffer.from(hex, 'hex');
}

function bytesToUuid(bytes: Buffer): string {
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

export function encodeHeader(
  layout: LockspaceLayout,
  mark: LockspaceMoveMark = noMoveMark,
): Buffer {
  const block = Buffer.alloc(headerBlockBytes);
  lockspaceMagic.copy(block, 0);
  block.writeUInt32LE(lockspaceFormatVersion, 8);
  uuidToBytes(layout.uuid).copy(block, 16);
  block.writeUInt32LE(layout.maxHosts, 32);
  block.writeUInt32LE(layout.maxResources, 36);
  block.writeUInt32LE(layout.blockSize, 40);
  block.writeUInt32LE(layout.ioTimeoutMs, 44);
  block.writeBigUInt64LE(BigInt(layout.sizeBytes), 48);
  block.writeBigUInt64LE(BigInt(layout.createdWallMs), 56);
  block.writeBigUInt64LE(BigInt(layout.hostSlotsOffset), 64);
  block.writeBigUInt64LE(BigInt(layout.directoryOffset), 72);
  block.writeBigUInt64LE(BigInt(layout.resourcesOffset), 80);
  block.writeBigUInt64LE(BigInt(layout.resourceAreaBytes), 88);
  block.write(layout.name, 96, lockspaceNameBytesMax, 'utf8');
  assert(moveMarkProblem(mark, layout.maxHosts) === undefined, 'a valid move mark');
  block.writeUInt32LE(moveStates.indexOf(mark.state), moveOffsets.state);
  block.writeUInt32LE(mark.moverHostId, moveOffsets.moverHostId);
  block.writeBigUInt64LE(BigInt(mark.epoch), moveOffsets.epoch);
  block.writeBigUInt64LE(BigInt(mark.moverGeneration), moveOffsets.moverGeneration);
  block.writeUInt32LE(crc32c(block), 12);
  // Assert around every on-disk record (STYLE.md): what we write must decode to what we meant.
  const decoded = decodeHeaderRecord(block, 'encodeHeader');
  assert(
    decoded.layout.sizeBytes === layout.sizeBytes &&
      decoded.layout.uuid === layout.uuid &&
      sameMoveMark(decoded.mark, mark),
    'header round trip',
  );
  return block;
}

export function sameMoveMark(a: LockspaceMoveMark, b: LockspaceMoveMark): boolean {
  return (
    a.state === b.state &&
    a.epoch === b.epoch &&
    a.moverHostId === b.moverHostId &&
    a.moverGeneration === b.moverGeneration
  );
}

/** Why a move mark is not valid, or undefined. */
function moveMarkProblem(mark: LockspaceMoveMark, maxHosts: number): string | undefined {
  if (mark.state === 'none') {
    const zero = mark.epoch === 0 && mark.moverHostId === 0 && mark.moverGeneration === 0;
    return zero ? undefined : 'move fields are set without a move state';
  }
  if (!Number.isSafeInteger(mark.epoch) || mark.epoch < 1) return `move epoch ${mark.epoch}`;
  if (!Number.isInteger(mark.moverHostId) || mark.moverHostId < 1 || mark.moverHostId > maxHosts)
    return `mover host id ${mark.moverHostId}`;
  if (!Number.isSafeInteger(mark.moverGeneration) || mark.moverGeneration < 1)
    return `mover generation ${mark.moverGeneration}`;
  return undefined;
}

function decodeMoveMark(block: Buffer, maxHosts: number, where: string): LockspaceMoveMark {
  const stateIndex = block.readUInt32LE(moveOffsets.state);
  const state = moveStates[stateIndex];
  if (state === undefined) {
    throw new TandemError(
      'LOCKSPACE_CORRUPT',
      `${where}: unknown lockspace move state ${stateIndex}`,
    );
  }
  const mark: LockspaceMoveMark = {
    state,
    epoch: safeNumber(block.readBigUInt64LE(moveOffsets.epoch), 'move epoch', where),
    moverHostId: block.readUInt32LE(moveOffsets.moverHostId),
    moverGeneration: safeNumber(
      block.readBigUInt64LE(moveOffsets.moverGeneration),
      'mover generation',
      where,
    ),
  };
  const problem = moveMarkProblem(mark, maxHosts);
  if (problem !== undefined) {
    throw new TandemError('LOCKSPACE_CORRUPT', `${where}: lockspace move mark: ${problem}`);
  }
  return mark;
}

function safeNumber(value: bigint, what: string, where: string): number {
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new TandemError(
      'LOCKSPACE_CORRUPT',
      `${where}: lockspace header field ${what} is out of range`,
    );
  }
  return Number(value);
}

/** Decodes and checks a header block; `where` names the device for the error message. */
export function decodeHeader(block: Buffer, where: string): LockspaceLayout {
  return decodeHeaderRecord(block, where).layout;
}

/** Decodes and checks a header block with its move mark. */
export function decodeHeaderRecord(block: Buffer, where: string): LockspaceHeaderRecord {
  if (block.length < headerBlockBytes) {
    throw new TandemError('LOCKSPACE_NOT_FOUND', `${where}: too small to hold a lockspace header`);
  }
  if (!block.subarray(0, 8).equals(lockspaceMagic)) {
    throw new TandemError(
      'LOCKSPACE_NOT_FOUND',
      `${where}: no lockspace here (wrong magic; run 'tandem lockspace init')`,
    );
  }
  const version = block.readUInt32LE(8);
  if (version !== lockspaceFormatVersion) {
    throw new TandemError(
      'LOCKSPACE_CORRUPT',
      `${where}: lockspace format version ${version} is not supported (expected ${lockspaceFormatVersion})`,
    );
  }
  const stored = block.readUInt32LE(12);
  const copy = Buffer.from(block.subarray(0, headerBlockBytes));
  copy.writeUInt32LE(0, 12);
  const computed = crc32c(copy);
  if (stored !== computed) {
    throw new TandemError(
      'LOCKSPACE_CORRUPT',
      `${where}: lockspace header fails its CRC (stored ${stored.toString(16)}, computed ${computed.toString(16)})`,
    );
  }
  const nameBytes = block.subarray(96, 96 + lockspaceNameBytesMax);
  const nameEnd = nameBytes.indexOf(0);
  const layout: LockspaceLayout = {
    uuid: bytesToUuid(block.subarray(16, 32)),
    name: nameBytes.subarray(0, nameEnd === -1 ? nameBytes.length : nameEnd).toString('utf8'),
    maxHosts: block.readUInt32LE(32),
    maxResources: block.readUInt32LE(36),
    blockSize: block.readUInt32LE(40),
    ioTimeoutMs: block.readUInt32LE(44),
    sizeBytes: safeNumber(block.readBigUInt64LE(48), 'sizeBytes', where),
    createdWallMs: safeNumber(block.readBigUInt64LE(56), 'createdWallMs', where),
    hostSlotsOffset: safeNumber(block.readBigUInt64LE(64), 'hostSlotsOffset', where),
    directoryOffset: safeNumber(block.readBigUInt64LE(72), 'directoryOffset', where),
    resourcesOffset: safeNumber(block.readBigUInt64LE(80), 'resourcesOffset', where),
    resourceAreaBytes: safeNumber(block.readBigUInt64LE(88), 'resourceAreaBytes', where),
  };
  // The geometry must be exactly what computeLayout gives for these parameters: a header whose
  // offsets disagree would make us read and write the wrong blocks.
  let expected: LockspaceLayout;
  try {
    expected = computeLayout(
      {
        maxHosts: layout.maxHosts,
        maxResources: layout.maxResources,
        ioTimeoutMs: layout.ioTimeoutMs,
        logicalSectorSizeBytes: layout.blockSize,
        name: layout.name,
      },
      { uuid: layout.uuid, wallMs: layout.createdWallMs },
    );
  } catch (error) {
    throw new TandemError(
      'LOCKSPACE_CORRUPT',
      `${where}: lockspace header has impossible parameters`,
      { cause: error },
    );
  }
  for (const key of [
    'blockSize',
    'sizeBytes',
    'hostSlotsOffset',
    'directoryOffset',
    'resourcesOffset',
    'resourceAreaBytes',
  ] as const) {
    if (expected[key] !== layout[key]) {
      throw new TandemError(
        'LOCKSPACE_CORRUPT',
        `${where}: lockspace header field ${key} is ${layout[key]}, expected ${expected[key]}`,
      );
    }
  }
  return { layout, mark: decodeMoveMark(block, layout.maxHosts, where) };
}

export interface FormatOptions extends Omit<LayoutOptions, 'logicalSectorSizeBytes'> {
  /** Format even over a valid lockspace (which must not be in use). */
  readonly force?: boolean;
  readonly wallMs: number;
}

/**
 * Writes a new, empty lockspace on `device`: zeroes every slot, directory entry and lease area,
 * flushes, then writes the header and flushes again, so a crash mid-format never leaves a valid
 * header over stale leases. Refuses to format over a valid lockspace unless `force`.
 */
export async function formatLockspace(
  device: BlockDevice,
  options: FormatOptions,
): Promise<LockspaceLayout> {
  const layout = computeLayout(
    { ...options, logicalSectorSizeBytes: device.logicalSectorSizeBytes },
    { uuid: randomUUID(), wallMs: options.wallMs },
  );
  if (layout.sizeBytes > device.sizeBytes) {
    throw new TandemError(
      'DISK_NO_SPACE',
      `${device.description}: a lockspace for ${layout.maxHosts} hosts and ${layout.maxResources} resources needs ${layout.sizeBytes} bytes, the device has ${device.sizeBytes}`,
    );
  }
  if (options.force !== true) {
    const existing = await readLockspaceHeader(device).catch(() => undefined);
    if (existing !== undefined) {
      throw new TandemError(
        'ALREADY_EXISTS',
        `${device.description} already holds lockspace ${existing.uuid}${existing.name === '' ? '' : ` (${existing.name})`}; use --force to format over it (every host must have left it)`,
      );
    }
  }
  await device.writeZeroes(0, layout.sizeBytes, { noHole: false });
  await device.flush();
  const header = Buffer.alloc(alignmentBytes);
  encodeHeader(layout).copy(header, 0);
  await device.write(header, 0, { fua: true });
  await device.flush();
  return layout;
}

/** Reads and checks the header of the lockspace on `device`. */
export async function readLockspaceHeader(device: BlockDevice): Promise<LockspaceLayout> {
  return (await readLockspaceHeaderRecord(device)).layout;
}

/** Reads and checks the header of the lockspace on `device`, with its move mark. */
export async function readLockspaceHeaderRecord(
  device: BlockDevice,
): Promise<LockspaceHeaderRecord> {
  if (device.sizeBytes < alignmentBytes) {
    throw new TandemError(
      'LOCKSPACE_NOT_FOUND',
      `${device.description}: too small to hold a lockspace`,
    );
  }
  const block = Buffer.alloc(alignmentBytes);
  await device.read(block, 0);
  const record = decodeHeaderRecord(block, device.description);
  if (record.layout.sizeBytes > device.sizeBytes) {
    throw new TandemError(
      'LOCKSPACE_CORRUPT',
      `${device.description}: lockspace needs ${record.layout.sizeBytes} bytes but the device has ${device.sizeBytes}`,
    );
  }
  return record;
}

/**
 * Writes the header of the lockspace on `device` with `mark`: one block, FUA, so that it lands
 * whole (a single-sector write is atomic) and is durable when this resolves.
 */
export async function writeLockspaceMoveMark(
  device: BlockDevice,
  layout: LockspaceLayout,
  mark: LockspaceMoveMark,
): Promise<void> {
  const block = Buffer.alloc(layout.blockSize);
  encodeHeader(layout, mark).copy(block, 0);
  await device.write(block, 0, { fua: true });
}
