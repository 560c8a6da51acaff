/**
 * The PV label and the geometry of a PV (docs/clvm.md, "On-disk format").
 *
 *   0                  label: one 4 KiB block, the record in its first 512 bytes
 *   4 KiB              metadata area 0 (MDA 0): metadataAreaBytes (1 MiB by default)
 *   dataStartBytes     data area: the physical extents, 1 MiB aligned, up to MDA 1
 *   dataEndBytes       metadata area 1 (MDA 1): the last metadataAreaBytes, 4 KiB aligned
 *
 * Label record (little-endian; the CRC32C covers the first 512 bytes with the CRC field zeroed):
 *   0 magic "TNDMPVLB" · 8 u32 format version · 12 u32 crc32c · 16 PV UUID (16 B)
 *   32 VG UUID (16 B, zero when in no VG) · 48 u64 device size · 56 u64 MDA 0 offset
 *   64 u64 MDA 0 size · 72 u64 MDA 1 offset · 80 u64 MDA 1 size · 88 u64 data start
 *   96 u64 data end · 104 u64 created wall ms
 *   112 claim nonce (16 B, zero when unclaimed) · 128 u64 claim wall ms · 136 claiming host
 *   name (64 B, UTF-8, zero padded) · 200..512 zero
 *
 * The record fits in one 512 B sector, so its write is atomic on 512 B and 4 KiB sector devices
 * alike. The VG UUID is a hint for scanning: the metadata areas are the truth. The claim is the
 * mark a host leaves while it makes a free PV part of a VG (pv-claim.ts); labels written before
 * claims existed have zeroes there, which read as "unclaimed".
 */
import { randomUUID } from 'node:crypto';
import type { BlockDevice } from '../disk/block-device.js';
import { TandemError, assert, isTandemError } from '../errors.js';
import { crc32c } from '../crc32c.js';

export const pvLabelMagic = Buffer.from('TNDMPVLB', 'ascii');
export const pvLabelFormatVersion = 1;
export const pvLabelBytes = 4096;
/** The part of the label block that holds the record and its CRC (one small sector). */
export const pvLabelRecordBytes = 512;
export const pvAlignmentBytes = 4096;
export const dataAlignmentBytes = 1024 * 1024;
export const metadataAreaBytesDefault = 1024 * 1024;
export const metadataAreaBytesMin = 64 * 1024;
export const metadataAreaBytesMax = 256 * 1024 * 1024;
/** The smallest data area a PV may have: one extent of the smallest extent size. */
export const dataAreaBytesMin = 1024 * 1024;

export interface MetadataAreaLocation {
  readonly offsetBytes: number;
  readonly sizeBytes: number;
}

export interface PvGeometry {
  readonly deviceSizeBytes: number;
  /** MDA 0 right after the label, MDA 1 at the end of the device. */
  readonly metadataAreas: readonly [MetadataAreaLocation, MetadataAreaLocation];
  /** The data area is [dataStartBytes, dataEndBytes); dataEndBytes is MDA 1's offset. */
  readonly dataStartBytes: number;
  readonly dataEndBytes: number;
}

export interface PvLabel extends PvGeometry {
  readonly pvUuid: string;
  /** '' when the PV is in no VG. */
  readonly vgUuid: string;
  readonly createdWallMs: number;
  /** Set while a host claims this free PV for a VG (pv-claim.ts). */
  readonly claim?: PvClaimMark;
}

/** Who claims a free PV: a random nonce per claim, and for people the host and its wall clock. */
export interface PvClaimMark {
  readonly nonce: string;
  readonly wallMs: number;
  readonly hostName: string;
}

export const claimHostNameBytesMax = 64;

const offsets = {
  magic: 0,
  version: 8,
  crc: 12,
  pvUuid: 16,
  vgUuid: 32,
  deviceSize: 48,
  mda0Offset: 56,
  mda0Size: 64,
  mda1Offset: 72,
  mda1Size: 80,
  dataStart: 88,
  dataEnd: 96,
  createdWallMs: 104,
  claimNonce: 112,
  claimWallMs: 128,
  claimHostName: 136,
} as const;

const uuidPattern = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/;

export function roundUp(value: number, multiple: number): number {
  return Math.ceil(value / multiple) * multiple;
}

export function isAllZero(bytes: Uint8Array): boolean {
  for (const byte of bytes) if (byte !== 0) return false;
  return true;
}

/** Refuses anything but a lower-case RFC 4122 text UUID (what randomUUID gives). */
export function checkUuid(uuid: string, what: string): void {
  if (!uuidPattern.test(uuid)) {
    throw new TandemError('INVALID_ARGUMENT', `${what} '${uuid}' is not a lower-case UUID`);
  }
}

/** 16 bytes; '' (no UUID) is all zeroes. */
export function encodeUuid(uuid: string, what: string): Buffer {
  if (uuid === '') return Buffer.alloc(16);
  checkUuid(uuid, what);
  return Buffer.from(uuid.replaceAll('-', ''), 'hex');
}

export function decodeUuid(bytes: Buffer): string {
  if (isAllZero(bytes)) return '';
  const hex = bytes.toString('hex');
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-${hex.slice(12, 16)}-${hex.slice(16, 20)}-${hex.slice(20)}`;
}

/** A u64 field as a number, or undefined when it is not a safe integer. */
export function readSafeU64(block: Buffer, offset: number): number | undefined {
  const value = block.readBigUInt64LE(offset);
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? undefined : Number(value);
}

export function writeU64(block: Buffer, value: number, offset: number): void {
  assert(Number.isSafeInteger(value) && value >= 0, `u64 field ${value}`);
  block.writeBigUInt64LE(BigInt(value), offset);
}

/** Where label, metadata areas and data area go on a device of this size (no I/O). */
export function computePvGeometry(
  deviceSizeBytes: number,
  options: { metadataAreaBytes?: number } = {},
): PvGeometry {
  const metadataAreaBytes = options.metadataAreaBytes ?? metadataAreaBytesDefault;
  if (
    !Number.isSafeInteger(metadataAreaBytes) ||
    metadataAreaBytes % pvAlignmentBytes !== 0 ||
    metadataAreaBytes < metadataAreaBytesMin ||
    metadataAreaBytes > metadataAreaBytesMax
  ) {
    throw new TandemError(
      'INVALID_ARGUMENT',
      `metadata area size ${metadataAreaBytes} must be a multiple of 4 KiB in ${metadataAreaBytesMin}..${metadataAreaBytesMax}`,
    );
  }
  assert(Number.isSafeInteger(deviceSizeBytes) && deviceSizeBytes >= 0, 'device size');
  const dataStartBytes = roundUp(pvLabelBytes + metadataAreaBytes, dataAlignmentBytes);
  const minimumBytes = dataStartBytes + dataAreaBytesMin + metadataAreaBytes;
  if (deviceSizeBytes < minimumBytes) {
    throw new TandemError(
      'DISK_NO_SPACE',
      `a PV needs at least ${minimumBytes} bytes (label, two metadata areas of ${metadataAreaBytes} bytes, one 1 MiB extent); the device has ${deviceSizeBytes}`,
    );
  }
  const mda1OffsetBytes =
    Math.floor((deviceSizeBytes - metadataAreaBytes) / pvAlignmentBytes) * pvAlignmentBytes;
  return {
    deviceSizeBytes,
    metadataAreas: [
      { offsetBytes: pvLabelBytes, sizeBytes: metadataAreaBytes },
      { offsetBytes: mda1OffsetBytes, sizeBytes: metadataAreaBytes },
    ],
    dataStartBytes,
    dataEndBytes: mda1OffsetBytes,
  };
}

function labelCrc(record: Buffer): number {
  const copy = Buffer.from(record.subarray(0, pvLabelRecordBytes));
  copy.writeUInt32LE(0, offsets.crc);
  return crc32c(copy);
}

/** The whole 4 KiB label block; asserts that it decodes back to `label`. */
export function encodePvLabel(label: PvLabel): Buffer {
  const block = Buffer.alloc(pvLabelBytes);
  pvLabelMagic.copy(block, offsets.magic);
  block.writeUInt32LE(pvLabelFormatVersion, offsets.version);
  encodeUuid(label.pvUuid, 'PV UUID').copy(block, offsets.pvUuid);
  encodeUuid(label.vgUuid, 'VG UUID').copy(block, offsets.vgUuid);
  const [mda0, mda1] = label.metadataAreas;
  writeU64(block, label.deviceSizeBytes, offsets.deviceSize);
  writeU64(block, mda0.offsetBytes, offsets.mda0Offset);
  writeU64(block, mda0.sizeBytes, offsets.mda0Size);
  writeU64(block, mda1.offsetBytes, offsets.mda1Offset);
  writeU64(block, mda1.sizeBytes, offsets.mda1Size);
  writeU64(block, label.dataStartBytes, offsets.dataStart);
  writeU64(block, label.dataEndBytes, offsets.dataEnd);
  writeU64(block, label.createdWallMs, offsets.createdWallMs);
  if (label.claim !== undefined) encodeClaim(block, label.claim);
  block.writeUInt32LE(labelCrc(block), offsets.crc);
  // Assert around every on-disk record (STYLE.md): what we write must read back as what we meant.
  const decoded = decodePvLabel(block, 'encodePvLabel');
  assert(
    decoded.pvUuid === label.pvUuid &&
      decoded.vgUuid === label.vgUuid &&
      decoded.createdWallMs === label.createdWallMs &&
      decoded.claim?.nonce === label.claim?.nonce,
    'PV label round trip',
  );
  return block;
}

/** The label without its claim (a claim ends when the PV joins a VG, or is given up). */
export function withoutClaim(label: PvLabel): PvLabel {
  const copy: { -readonly [K in keyof PvLabel]: PvLabel[K] } = { ...label };
  delete copy.claim;
  return copy;
}

function encodeClaim(block: Buffer, claim: PvClaimMark): void {
  assert(claim.nonce !== '', 'a claim has a nonce');
  encodeUuid(claim.nonce, 'claim nonce').copy(block, offsets.claimNonce);
  writeU64(block, claim.wallMs, offsets.claimWallMs);
  const name = Buffer.from(claim.hostName, 'utf8');
  assert(name.length <= claimHostNameBytesMax, `claiming host name of ${name.length} bytes`);
  name.copy(block, offsets.claimHostName);
}

function decodeClaim(block: Buffer, where: string): PvClaimMark | undefined {
  const nonce = decodeUuid(block.subarray(offsets.claimNonce, offsets.claimNonce + 16));
  if (nonce === '') return undefined;
  const wallMs = readSafeU64(block, offsets.claimWallMs);
  if (wallMs === undefined) throw corrupt(where, 'field claim wall ms is out of range');
  const nameBytes = block.subarray(
    offsets.claimHostName,
    offsets.claimHostName + claimHostNameBytesMax,
  );
  const end = nameBytes.indexOf(0);
  const hostName = nameBytes.subarray(0, end === -1 ? nameBytes.length : end).toString('utf8');
  return { nonce, wallMs, hostName };
}

function corrupt(where: string, problem: string): TandemError {
  return new TandemError('PV_LABEL_CORRUPT', `${where}: the PV label ${problem}`);
}

function readGeometryFields(block: Buffer, where: string) {
  const read = (offset: number, what: string): number => {
    const value = readSafeU64(block, offset);
    if (value === undefined) throw corrupt(where, `field ${what} is out of range`);
    return value;
  };
  return {
    deviceSizeBytes: read(offsets.deviceSize, 'device size'),
    metadataAreas: [
      {
        offsetBytes: read(offsets.mda0Offset, 'MDA 0 offset'),
        sizeBytes: read(offsets.mda0Size, 'MDA 0 size'),
      },
      {
        offsetBytes: read(offsets.mda1Offset, 'MDA 1 offset'),
        sizeBytes: read(offsets.mda1Size, 'MDA 1 size'),
      },
    ] as const,
    dataStartBytes: read(offsets.dataStart, 'data start'),
    dataEndBytes: read(offsets.dataEnd, 'data end'),
  };
}

/** The geometry must be exactly what computePvGeometry gives, or we would use wrong offsets. */
function checkGeometry(geometry: PvGeometry, where: string): void {
  let expected: PvGeometry;
  try {
    expected = computePvGeometry(geometry.deviceSizeBytes, {
      metadataAreaBytes: geometry.metadataAreas[0].sizeBytes,
    });
  } catch (error) {
    throw new TandemError('PV_LABEL_CORRUPT', `${where}: the PV label has impossible geometry`, {
      cause: error,
    });
  }
  const pairs: Array<[string, number, number]> = [
    ['MDA 0 offset', geometry.metadataAreas[0].offsetBytes, expected.metadataAreas[0].offsetBytes],
    ['MDA 1 offset', geometry.metadataAreas[1].offsetBytes, expected.metadataAreas[1].offsetBytes],
    ['MDA 1 size', geometry.metadataAreas[1].sizeBytes, expected.metadataAreas[1].sizeBytes],
    ['data start', geometry.dataStartBytes, expected.dataStartBytes],
    ['data end', geometry.dataEndBytes, expected.dataEndBytes],
  ];
  for (const [what, actual, wanted] of pairs) {
    if (actual !== wanted) throw corrupt(where, `field ${what} is ${actual}, expected ${wanted}`);
  }
}

/**
 * Decodes a label block; `where` names the device. PV_NOT_FOUND when the block holds no tandem
 * label (all zeroes or another magic), PV_LABEL_CORRUPT when it is a tandem label that fails
 * its version, CRC or geometry checks.
 */
export function decodePvLabel(block: Buffer, where: string): PvLabel {
  if (block.length < pvLabelRecordBytes) {
    throw new TandemError('PV_NOT_FOUND', `${where}: too small to hold a PV label`);
  }
  if (!block.subarray(0, 8).equals(pvLabelMagic)) {
    const what = isAllZero(block.subarray(0, pvLabelRecordBytes))
      ? 'is blank'
      : 'holds no PV label';
    throw new TandemError('PV_NOT_FOUND', `${where}: ${what} (no tandem PV here)`);
  }
  const version = block.readUInt32LE(offsets.version);
  if (version !== pvLabelFormatVersion) {
    throw corrupt(where, `has format version ${version}, expected ${pvLabelFormatVersion}`);
  }
  const stored = block.readUInt32LE(offsets.crc);
  const computed = labelCrc(block);
  if (stored !== computed) {
    throw corrupt(
      where,
      `fails its CRC (stored ${stored.toString(16)}, computed ${computed.toString(16)})`,
    );
  }
  const createdWallMs = readSafeU64(block, offsets.createdWallMs);
  if (createdWallMs === undefined) throw corrupt(where, 'field created wall ms is out of range');
  const pvUuid = decodeUuid(block.subarray(offsets.pvUuid, offsets.pvUuid + 16));
  if (pvUuid === '') throw corrupt(where, 'has no PV UUID');
  const geometry = readGeometryFields(block, where);
  checkGeometry(geometry, where);
  const claim = decodeClaim(block, where);
  return {
    ...geometry,
    pvUuid,
    vgUuid: decodeUuid(block.subarray(offsets.vgUuid, offsets.vgUuid + 16)),
    createdWallMs,
    ...(claim === undefined ? {} : { claim }),
  };
}

/** Reads and checks the label of `device`, including that it was made for a device this size. */
export async function readPvLabel(device: BlockDevice): Promise<PvLabel> {
  if (device.sizeBytes < pvLabelBytes) {
    throw new TandemError('PV_NOT_FOUND', `${device.description}: too small to hold a PV label`);
  }
  const block = Buffer.alloc(pvLabelBytes);
  await device.read(block, 0);
  const label = decodePvLabel(block, device.description);
  if (label.deviceSizeBytes !== device.sizeBytes) {
    throw new TandemError(
      'PV_LABEL_CORRUPT',
      `${device.description}: the PV label was written for a device of ${label.deviceSizeBytes} bytes, this device has ${device.sizeBytes} (resized, or a copy of another device?)`,
    );
  }
  return label;
}

async function readRange(device: BlockDevice, offsetBytes: number, lengthBytes: number) {
  const buffer = Buffer.alloc(lengthBytes);
  await device.read(buffer, offsetBytes);
  return buffer;
}

/** Refuses to write over a label or over data tandem cannot account for. */
async function checkBlank(device: BlockDevice, geometry: PvGeometry, force: boolean) {
  const labelBlock = await readRange(device, 0, pvLabelBytes);
  let existing: PvLabel | undefined;
  try {
    existing = decodePvLabel(labelBlock, device.description);
  } catch (error) {
    // A corrupt tandem label is data we cannot account for: only --force writes over it.
    if (!isTandemError(error, 'PV_NOT_FOUND') && !isTandemError(error, 'PV_LABEL_CORRUPT')) {
      throw error;
    }
  }
  if (existing !== undefined) {
    throw new TandemError(
      'PV_EXISTS',
      `${device.description} is already PV ${existing.pvUuid}${existing.vgUuid === '' ? '' : ` (of VG ${existing.vgUuid})`}; remove it with 'tandem pv remove' first`,
    );
  }
  if (force) return;
  const [mda0] = geometry.metadataAreas;
  const mdaBytes = await readRange(device, mda0.offsetBytes, mda0.sizeBytes);
  if (!isAllZero(labelBlock) || !isAllZero(mdaBytes)) {
    throw new TandemError(
      'PV_EXISTS',
      `${device.description} is not blank where the PV label and metadata would go (the first ${mda0.offsetBytes + mda0.sizeBytes} bytes); nothing is written over data tandem cannot account for: use --force to overwrite`,
    );
  }
}

export interface CreatePvOptions {
  readonly wallMs: number;
  /** Write over non-blank data (never over a valid PV label). */
  readonly force?: boolean;
  readonly uuid?: string;
  readonly metadataAreaBytes?: number;
}

/**
 * Makes `device` a PV in no VG. Zeroes both metadata area headers, flushes, then writes the label
 * and flushes again, so a crash leaves either no label or a complete PV with empty areas.
 */
export async function createPv(device: BlockDevice, options: CreatePvOptions): Promise<PvLabel> {
  let geometry: PvGeometry;
  try {
    geometry = computePvGeometry(device.sizeBytes, options);
  } catch (error) {
    if (!(error instanceof TandemError)) throw error;
    throw new TandemError(error.code, `${device.description}: ${error.message}`, { cause: error });
  }
  const pvUuid = options.uuid ?? randomUUID();
  checkUuid(pvUuid, 'PV UUID');
  await checkBlank(device, geometry, options.force === true);
  const label: PvLabel = { ...geometry, pvUuid, vgUuid: '', createdWallMs: options.wallMs };
  const labelBlock = encodePvLabel(label);
  for (const area of geometry.metadataAreas) {
    await device.write(Buffer.alloc(pvAlignmentBytes), area.offsetBytes);
  }
  await device.flush();
  await device.write(labelBlock, 0);
  await device.flush();
  return label;
}

/** Rewrites the label with a new VG UUID ('' for none) and flushes; returns the new label. */
export async function setPvVgUuid(
  device: BlockDevice,
  label: PvLabel,
  vgUuid: string,
): Promise<PvLabel> {
  const updated = await writePvVgUuid(device, label, vgUuid);
  await device.flush();
  return updated;
}

/** The label write of setPvVgUuid without the flush, for callers that flush later. */
export async function writePvVgUuid(
  device: BlockDevice,
  label: PvLabel,
  vgUuid: string,
): Promise<PvLabel> {
  // A claim ends when the PV joins a VG (or leaves one): the label no longer carries it.
  const updated: PvLabel = { ...withoutClaim(label), vgUuid };
  await device.write(encodePvLabel(updated), 0);
  return updated;
}

/**
 * Removes the PV: zeroes both metadata areas, flushes, then zeroes the label and flushes,
 * so a crash in between leaves a PV with no metadata (unassigned), never metadata without label.
 */
export async function wipePv(device: BlockDevice, label: PvLabel): Promise<void> {
  // The whole areas, not only their headers: old records left in a ring would make the device
  // look like it holds data, and `pv create` would refuse it afterwards.
  for (const area of label.metadataAreas) {
    await device.writeZeroes(area.offsetBytes, area.sizeBytes);
  }
  await device.flush();
  await device.write(Buffer.alloc(pvLabelBytes), 0);
  await device.flush();
}
