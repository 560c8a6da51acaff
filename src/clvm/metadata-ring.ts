/**
 * One metadata area (MDA): a 4 KiB header block, then a ring of metadata records
 * (docs/clvm.md, "On-disk format" and "Commit protocol").
 *
 * MDA header (first 512 bytes of the block; CRC32C over them with the CRC field zeroed):
 *   0 magic "TNDMMDAH" · 8 u32 format version · 12 u32 crc32c · 16 VG UUID (16 B)
 *   32 u64 ring size · 40 u64 committed record offset (in the ring) · 48 u64 its body length
 *   56 u64 its seqno · 64 u32 its body crc32c · 68..512 zero
 * An all-zero header block is an empty MDA (no metadata yet).
 *
 * Record: a 4 KiB header block, then the body (protobuf VG metadata) padded to 4 KiB.
 *   0 magic "TNDMMDAR" · 8 u32 format version · 12 u32 crc32c (first 512 bytes)
 *   16 VG UUID (16 B) · 32 u64 seqno · 40 u64 body length · 48 u32 body crc32c · 52 u32 zero
 *   56 u64 previous committed record offset · 64 u64 its seqno (0: none) · 72..512 zero
 *
 * A record never wraps around the ring end, and never overlaps the committed record; the
 * previous-record pointers make history a chain walk that skips records of crashed commits.
 */
import type { BlockDevice } from '../disk/block-device.js';
import { TandemError, assert } from '../errors.js';
import { crc32c } from '../crc32c.js';
import {
  type MetadataAreaLocation,
  decodeUuid,
  encodeUuid,
  isAllZero,
  pvAlignmentBytes,
  readSafeU64,
  roundUp,
  writeU64,
} from './pv-label.js';

export const mdaHeaderMagic = Buffer.from('TNDMMDAH', 'ascii');
export const recordMagic = Buffer.from('TNDMMDAR', 'ascii');
export const mdaFormatVersion = 1;
export const mdaHeaderBytes = 4096;
export const recordHeaderBytes = 4096;
/** The part of a header block covered by its CRC: one small sector, written atomically. */
const structBytes = 512;

/** Where the newest committed record is; what an MDA header holds. */
export interface RecordPointer {
  /** Offset in the ring (from its first byte), 4 KiB aligned. */
  readonly offsetBytes: number;
  readonly bodyLengthBytes: number;
  readonly seqno: number;
  readonly bodyCrc: number;
}

export interface MdaHeader {
  readonly vgUuid: string;
  readonly ringSizeBytes: number;
  readonly committed: RecordPointer;
}

export interface RecordHeader {
  readonly vgUuid: string;
  readonly seqno: number;
  readonly bodyLengthBytes: number;
  readonly bodyCrc: number;
  /** The record that was committed when this one was written; undefined for the first. */
  readonly previous: { readonly offsetBytes: number; readonly seqno: number } | undefined;
}

export interface MetadataRecord {
  readonly offsetBytes: number;
  readonly header: RecordHeader;
  readonly body: Buffer;
}

const field = {
  magic: 0,
  version: 8,
  crc: 12,
  vgUuid: 16,
  // MDA header.
  ringSize: 32,
  committedOffset: 40,
  committedLength: 48,
  committedSeqno: 56,
  committedCrc: 64,
  // Record header.
  seqno: 32,
  bodyLength: 40,
  bodyCrc: 48,
  previousOffset: 56,
  previousSeqno: 64,
} as const;

export function ringStartBytes(mda: MetadataAreaLocation): number {
  return mda.offsetBytes + mdaHeaderBytes;
}

export function ringSizeBytes(mda: MetadataAreaLocation): number {
  return mda.sizeBytes - mdaHeaderBytes;
}

/** A record's footprint in the ring: header block plus the body padded to 4 KiB. */
export function recordSizeBytes(bodyLengthBytes: number): number {
  return recordHeaderBytes + roundUp(bodyLengthBytes, pvAlignmentBytes);
}

function structCrc(block: Buffer): number {
  const copy = Buffer.from(block.subarray(0, structBytes));
  copy.writeUInt32LE(0, field.crc);
  return crc32c(copy);
}

function corrupt(where: string, problem: string): TandemError {
  return new TandemError('MDA_CORRUPT', `${where}: ${problem}`);
}

/** Magic, version and CRC of a header or record block; the u64 reader for its fields. */
function checkStruct(block: Buffer, magic: Buffer, what: string, where: string) {
  if (block.length < structBytes || !block.subarray(0, 8).equals(magic)) {
    throw corrupt(where, `${what} has a wrong magic`);
  }
  const version = block.readUInt32LE(field.version);
  if (version !== mdaFormatVersion) {
    throw new TandemError(
      version > mdaFormatVersion ? 'MDA_VERSION' : 'MDA_CORRUPT',
      `${where}: ${what} has format version ${version}, this tandem knows ${mdaFormatVersion}`,
    );
  }
  const stored = block.readUInt32LE(field.crc);
  const computed = structCrc(block);
  if (stored !== computed) {
    throw corrupt(
      where,
      `${what} fails its CRC (stored ${stored.toString(16)}, computed ${computed.toString(16)})`,
    );
  }
  return (offset: number, name: string): number => {
    const value = readSafeU64(block, offset);
    if (value === undefined) throw corrupt(where, `${what} field ${name} is out of range`);
    return value;
  };
}

function sealStruct(block: Buffer, magic: Buffer): void {
  magic.copy(block, field.magic);
  block.writeUInt32LE(mdaFormatVersion, field.version);
  block.writeUInt32LE(structCrc(block), field.crc);
}

export function encodeMdaHeader(header: MdaHeader): Buffer {
  const block = Buffer.alloc(mdaHeaderBytes);
  encodeUuid(header.vgUuid, 'VG UUID').copy(block, field.vgUuid);
  writeU64(block, header.ringSizeBytes, field.ringSize);
  writeU64(block, header.committed.offsetBytes, field.committedOffset);
  writeU64(block, header.committed.bodyLengthBytes, field.committedLength);
  writeU64(block, header.committed.seqno, field.committedSeqno);
  block.writeUInt32LE(header.committed.bodyCrc, field.committedCrc);
  sealStruct(block, mdaHeaderMagic);
  // Assert around every on-disk record (STYLE.md).
  const decoded = decodeMdaHeader(block, 'encodeMdaHeader', header.ringSizeBytes);
  assert(
    decoded !== undefined &&
      decoded.vgUuid === header.vgUuid &&
      decoded.committed.seqno === header.committed.seqno &&
      decoded.committed.offsetBytes === header.committed.offsetBytes,
    'MDA header round trip',
  );
  return block;
}

/**
 * Decodes an MDA header block: undefined when all zero (an empty MDA), MDA_CORRUPT when it is
 * anything but a valid header whose pointer lies inside a ring of `expectedRingSizeBytes`.
 */
export function decodeMdaHeader(
  block: Buffer,
  where: string,
  expectedRingSizeBytes: number,
): MdaHeader | undefined {
  if (isAllZero(block.subarray(0, structBytes))) return undefined;
  const read = checkStruct(block, mdaHeaderMagic, 'the metadata area header', where);
  const ringSize = read(field.ringSize, 'ring size');
  if (ringSize !== expectedRingSizeBytes) {
    throw corrupt(
      where,
      `the metadata area header says the ring is ${ringSize} bytes, the PV label ${expectedRingSizeBytes}`,
    );
  }
  const committed: RecordPointer = {
    offsetBytes: read(field.committedOffset, 'committed offset'),
    bodyLengthBytes: read(field.committedLength, 'committed length'),
    seqno: read(field.committedSeqno, 'committed seqno'),
    bodyCrc: block.readUInt32LE(field.committedCrc),
  };
  const vgUuid = decodeUuid(block.subarray(field.vgUuid, field.vgUuid + 16));
  if (vgUuid === '' || committed.seqno < 1) {
    throw corrupt(where, 'the metadata area header has no VG UUID or seqno');
  }
  checkRecordFits(committed.offsetBytes, committed.bodyLengthBytes, ringSize, where);
  return { vgUuid, ringSizeBytes: ringSize, committed };
}

function checkRecordFits(offset: number, bodyLength: number, ringSize: number, where: string) {
  if (offset % pvAlignmentBytes !== 0 || offset + recordSizeBytes(bodyLength) > ringSize) {
    throw corrupt(
      where,
      `a record of ${bodyLength} body bytes at ring offset ${offset} does not lie in the ring of ${ringSize} bytes`,
    );
  }
}

/** The whole record (header block and padded body), ready for writeRecord. */
export function encodeRecord(
  header: Omit<RecordHeader, 'bodyCrc' | 'bodyLengthBytes'>,
  body: Buffer,
) {
  assert(Number.isSafeInteger(header.seqno) && header.seqno >= 1, 'record seqno');
  assert(
    header.previous === undefined || header.previous.seqno < header.seqno,
    'the previous record is older',
  );
  const record = Buffer.alloc(recordSizeBytes(body.length));
  encodeUuid(header.vgUuid, 'VG UUID').copy(record, field.vgUuid);
  writeU64(record, header.seqno, field.seqno);
  writeU64(record, body.length, field.bodyLength);
  record.writeUInt32LE(crc32c(body), field.bodyCrc);
  writeU64(record, header.previous?.offsetBytes ?? 0, field.previousOffset);
  writeU64(record, header.previous?.seqno ?? 0, field.previousSeqno);
  sealStruct(record, recordMagic);
  body.copy(record, recordHeaderBytes);
  const decoded = decodeRecordHeader(record, 'encodeRecord');
  assert(
    decoded.seqno === header.seqno && decoded.bodyLengthBytes === body.length,
    'record header round trip',
  );
  return record;
}

export function decodeRecordHeader(block: Buffer, where: string): RecordHeader {
  const read = checkStruct(block, recordMagic, 'the metadata record header', where);
  const vgUuid = decodeUuid(block.subarray(field.vgUuid, field.vgUuid + 16));
  const seqno = read(field.seqno, 'seqno');
  const previousSeqno = read(field.previousSeqno, 'previous seqno');
  if (vgUuid === '' || seqno < 1 || previousSeqno >= seqno) {
    throw corrupt(where, 'the metadata record header has no VG UUID or bad seqnos');
  }
  return {
    vgUuid,
    seqno,
    bodyLengthBytes: read(field.bodyLength, 'body length'),
    bodyCrc: block.readUInt32LE(field.bodyCrc),
    previous:
      previousSeqno === 0
        ? undefined
        : { offsetBytes: read(field.previousOffset, 'previous offset'), seqno: previousSeqno },
  };
}

/** Reads a range in requests the device accepts. */
async function readRange(device: BlockDevice, offsetBytes: number, lengthBytes: number) {
  const buffer = Buffer.alloc(lengthBytes);
  const stepBytes = ioStepBytes(device);
  for (let doneBytes = 0; doneBytes < lengthBytes; doneBytes += stepBytes) {
    const end = Math.min(lengthBytes, doneBytes + stepBytes);
    await device.read(buffer.subarray(doneBytes, end), offsetBytes + doneBytes);
  }
  return buffer;
}

function ioStepBytes(device: BlockDevice): number {
  return Math.max(1, Math.floor(device.maximumIoBytes / pvAlignmentBytes)) * pvAlignmentBytes;
}

function describe(device: BlockDevice, mda: MetadataAreaLocation, ringOffset?: number) {
  const at = ringOffset === undefined ? mda.offsetBytes : ringStartBytes(mda) + ringOffset;
  return `${device.description} metadata area at ${mda.offsetBytes}${ringOffset === undefined ? '' : `, record at byte ${at}`}`;
}

export async function readMdaHeader(
  device: BlockDevice,
  mda: MetadataAreaLocation,
): Promise<MdaHeader | undefined> {
  const block = await readRange(device, mda.offsetBytes, mdaHeaderBytes);
  return decodeMdaHeader(block, describe(device, mda), ringSizeBytes(mda));
}

/** Reads the record at `offsetBytes` in the ring and checks its header and body CRCs. */
export async function readRecord(
  device: BlockDevice,
  mda: MetadataAreaLocation,
  offsetBytes: number,
): Promise<MetadataRecord> {
  const where = describe(device, mda, offsetBytes);
  checkRecordFits(offsetBytes, 0, ringSizeBytes(mda), where);
  const block = await readRange(device, ringStartBytes(mda) + offsetBytes, recordHeaderBytes);
  const header = decodeRecordHeader(block, where);
  checkRecordFits(offsetBytes, header.bodyLengthBytes, ringSizeBytes(mda), where);
  const bodyStart = ringStartBytes(mda) + offsetBytes + recordHeaderBytes;
  const padded = await readRange(
    device,
    bodyStart,
    roundUp(header.bodyLengthBytes, pvAlignmentBytes),
  );
  const body = padded.subarray(0, header.bodyLengthBytes);
  const computed = crc32c(body);
  if (computed !== header.bodyCrc) {
    throw corrupt(
      where,
      `the metadata record body fails its CRC (stored ${header.bodyCrc.toString(16)}, computed ${computed.toString(16)})`,
    );
  }
  return { offsetBytes, header, body };
}

/**
 * The record the header points at, checked against the pointer (seqno, VG UUID, length, body
 * CRC); undefined for an empty MDA. MDA_CORRUPT names the device and offset of any mismatch.
 */
export async function readCommittedRecord(
  device: BlockDevice,
  mda: MetadataAreaLocation,
): Promise<{ header: MdaHeader; record: MetadataRecord } | undefined> {
  const header = await readMdaHeader(device, mda);
  if (header === undefined) return undefined;
  const { committed } = header;
  const record = await readRecord(device, mda, committed.offsetBytes);
  const mismatches: string[] = [];
  if (record.header.seqno !== committed.seqno) mismatches.push(`seqno ${record.header.seqno}`);
  if (record.header.vgUuid !== header.vgUuid) mismatches.push(`VG ${record.header.vgUuid}`);
  if (record.header.bodyLengthBytes !== committed.bodyLengthBytes) mismatches.push('length');
  if (record.header.bodyCrc !== committed.bodyCrc) mismatches.push('body CRC');
  if (mismatches.length > 0) {
    throw corrupt(
      describe(device, mda, committed.offsetBytes),
      `the record is not the one the header points at (seqno ${committed.seqno} of VG ${header.vgUuid}): ${mismatches.join(', ')} differ`,
    );
  }
  return { header, record };
}

/**
 * The committed record and the older ones still intact, newest first. The walk follows the
 * previous-record pointers and stops quietly at the first record that was overwritten since.
 */
export async function history(
  device: BlockDevice,
  mda: MetadataAreaLocation,
): Promise<MetadataRecord[]> {
  const committed = await readCommittedRecord(device, mda);
  if (committed === undefined) return [];
  const records = [committed.record];
  const recordCountMax = Math.floor(ringSizeBytes(mda) / (2 * pvAlignmentBytes));
  let current = committed.record;
  while (current.header.previous !== undefined && records.length < recordCountMax) {
    const wanted = current.header.previous;
    let older: MetadataRecord;
    try {
      older = await readRecord(device, mda, wanted.offsetBytes);
    } catch (error) {
      if (error instanceof TandemError && error.code === 'MDA_CORRUPT') break;
      throw error;
    }
    if (older.header.seqno !== wanted.seqno || older.header.vgUuid !== committed.header.vgUuid) {
      break;
    }
    records.push(older);
    current = older;
  }
  return records;
}

/**
 * Where a new record of `recordBytes` goes: right after the committed record, or at the ring
 * start when it does not fit before the ring end; never over the committed record. MDA_FULL when
 * it is larger than half the ring, or fits in neither gap beside the committed record.
 */
export function placeRecord(
  ringSize: number,
  committed: { offsetBytes: number; sizeBytes: number } | undefined,
  recordBytes: number,
  where: string,
): number {
  assert(recordBytes % pvAlignmentBytes === 0 && recordBytes > 0, 'record size');
  if (recordBytes > ringSize / 2) {
    throw new TandemError(
      'MDA_FULL',
      `${where}: a metadata record of ${recordBytes} bytes does not fit: the ring of ${ringSize} bytes takes records of at most ${Math.floor(ringSize / 2)} bytes (make the metadata areas larger)`,
    );
  }
  if (committed === undefined) return 0;
  const afterBytes = committed.offsetBytes + committed.sizeBytes;
  if (afterBytes + recordBytes <= ringSize) return afterBytes;
  if (recordBytes <= committed.offsetBytes) return 0;
  throw new TandemError(
    'MDA_FULL',
    `${where}: a metadata record of ${recordBytes} bytes fits neither before (${committed.offsetBytes} bytes) nor after (${ringSize - afterBytes} bytes) the committed record in the ring of ${ringSize} bytes`,
  );
}

/** Writes an encoded record at `offsetBytes` in the ring (no flush). */
export async function writeRecord(
  device: BlockDevice,
  mda: MetadataAreaLocation,
  offsetBytes: number,
  record: Buffer,
): Promise<void> {
  assert(offsetBytes % pvAlignmentBytes === 0, 'record offset alignment');
  assert(offsetBytes + record.length <= ringSizeBytes(mda), 'record inside the ring');
  const stepBytes = ioStepBytes(device);
  for (let doneBytes = 0; doneBytes < record.length; doneBytes += stepBytes) {
    const end = Math.min(record.length, doneBytes + stepBytes);
    await device.write(
      record.subarray(doneBytes, end),
      ringStartBytes(mda) + offsetBytes + doneBytes,
    );
  }
}

/** Writes the MDA header block in one write: the commit point of this MDA (no flush). */
export async function writeHeader(
  device: BlockDevice,
  mda: MetadataAreaLocation,
  header: MdaHeader,
): Promise<void> {
  assert(header.ringSizeBytes === ringSizeBytes(mda), 'header ring size');
  await device.write(encodeMdaHeader(header), mda.offsetBytes);
}

/** Zeroes the MDA header: the MDA is empty again (no flush). */
export async function clearHeader(device: BlockDevice, mda: MetadataAreaLocation): Promise<void> {
  await device.write(Buffer.alloc(mdaHeaderBytes), mda.offsetBytes);
}
