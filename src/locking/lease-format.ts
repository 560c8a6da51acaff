/**
 * The on-disk records of resource leases (docs/leases.md, "Resource leases"): the leader block
 * and the ballot block of a lease area, and the 64 B entries of the resource directory.
 *
 * Every record is little-endian, carries a CRC32C, and is written as one block (the lockspace's
 * atomic write unit), so it is either old or new, never half of each. Decoding never turns a
 * damaged record into a free one: an all-zero record is `empty` (never written since format), a
 * record with a bad magic, version, CRC or out-of-range field is `corrupt`, and callers turn
 * `corrupt` into LEASE_IO. 64-bit fields are read as bigint and checked to be safe integers.
 *
 *   leader: 0 magic "TNDMLEAD" · 8 u32 version · 12 u32 crc32c · 16 u64 lease version
 *     24 u32 owner host id (0 = free) · 28 u32 flags · 32 u64 owner generation
 *     40 u64 wall ms when taken · 48 resource name (48 B) · 96 u32 value bytes · 100 value (64 B)
 *   ballot: 0 magic "TNDMBALT" · 8 u32 version · 12 u32 crc32c · 16 u64 lease version
 *     24 u64 mbal · 32 u64 bal · 40 u32 inp host id · 48 u64 inp generation · 56 u64 inp wall ms
 *     64 u32 mode flags (1 = shared holder) · 72 u64 generation of the shared hold
 *     80 u64 wait ticket (0 = none) · 88 u64 generation of the waiter that wrote the ticket
 *   directory entry (64 B): 0 u32 crc32c · 4 u32 flags (1 = in use) · 8 u32 name bytes
 *     12 u32 reserved · 16 name (48 B)
 *
 * The CRC of a leader or ballot covers its whole block with the CRC field zeroed; the CRC of a
 * directory entry covers its 64 bytes with the CRC field zeroed.
 */
import { assert } from '../errors.js';
import { crc32c } from '../crc32c.js';
import { resourceNameBytesMax, resourceNamePattern, valueBlockBytesMax } from './types.js';

export const leaderMagic = Buffer.from('TNDMLEAD', 'ascii');
export const ballotMagic = Buffer.from('TNDMBALT', 'ascii');
export const leaseFormatVersion = 1;
/** The smallest block a lease record is written in (the lockspace block is max(512, sector)). */
export const leaseBlockBytesMin = 512;
export const directoryEntryBytes = 64;
/** Ballot mode flag: this host holds the lease shared (with the generation at offset 72). */
export const modeFlagShared = 1;
/** Directory entry flag: the entry names a resource. */
export const entryFlagInUse = 1;

const crcOffset = 12;
const nameOffset = 48;
const valueLengthOffset = 96;
const valueOffset = 100;
const entryNameOffset = 16;

export interface LeaderRecord {
  readonly leaseVersion: number;
  /** 0 when free. */
  readonly ownerHostId: number;
  readonly flags: number;
  readonly ownerGeneration: number;
  readonly takenWallMs: number;
  /** '' for an area never committed. */
  readonly name: string;
  readonly value: Buffer;
}

export interface BallotRecord {
  readonly leaseVersion: number;
  readonly mbal: number;
  readonly bal: number;
  readonly inpHostId: number;
  readonly inpGeneration: number;
  readonly inpWallMs: number;
  readonly modeFlags: number;
  readonly sharedGeneration: number;
  readonly waitTicket: number;
  readonly ticketGeneration: number;
}

export type DecodeResult<T> =
  | { readonly status: 'record'; readonly record: T }
  | { readonly status: 'empty'; readonly record: T }
  | { readonly status: 'corrupt'; readonly reason: string };

export const emptyLeader: LeaderRecord = Object.freeze({
  leaseVersion: 0,
  ownerHostId: 0,
  flags: 0,
  ownerGeneration: 0,
  takenWallMs: 0,
  name: '',
  value: Buffer.alloc(0),
});

export const emptyBallot: BallotRecord = Object.freeze({
  leaseVersion: 0,
  mbal: 0,
  bal: 0,
  inpHostId: 0,
  inpGeneration: 0,
  inpWallMs: 0,
  modeFlags: 0,
  sharedGeneration: 0,
  waitTicket: 0,
  ticketGeneration: 0,
});

class CorruptRecord extends Error {}

function isAllZero(bytes: Buffer): boolean {
  for (const byte of bytes) if (byte !== 0) return false;
  return true;
}

function checkBlock(block: Buffer): void {
  assert(
    block.length >= leaseBlockBytesMin && block.length % leaseBlockBytesMin === 0,
    `lease block of ${block.length} bytes`,
  );
}

function writeU64(block: Buffer, value: number, offset: number): void {
  assert(Number.isSafeInteger(value) && value >= 0, `u64 field ${value} at ${offset}`);
  block.writeBigUInt64LE(BigInt(value), offset);
}

function readU64(block: Buffer, offset: number): number {
  const value = block.readBigUInt64LE(offset);
  if (value > BigInt(Number.MAX_SAFE_INTEGER)) {
    throw new CorruptRecord(`u64 field at ${offset} is out of range`);
  }
  return Number(value);
}

function writeU32(block: Buffer, value: number, offset: number): void {
  assert(Number.isInteger(value) && value >= 0 && value <= 0xffffffff, `u32 field ${value}`);
  block.writeUInt32LE(value, offset);
}

function crcWithFieldZeroed(bytes: Buffer, offset: number): number {
  const copy = Buffer.from(bytes);
  copy.writeUInt32LE(0, offset);
  return crc32c(copy);
}

/** Checks magic, version and CRC of a leader or ballot block. */
function checkHeader(block: Buffer, magic: Buffer): void {
  if (!block.subarray(0, 8).equals(magic)) throw new CorruptRecord('wrong magic');
  const version = block.readUInt32LE(8);
  if (version !== leaseFormatVersion) throw new CorruptRecord(`format version ${version}`);
  const stored = block.readUInt32LE(crcOffset);
  const computed = crcWithFieldZeroed(block, crcOffset);
  if (stored !== computed) {
    throw new CorruptRecord(
      `CRC mismatch (stored ${stored.toString(16)}, computed ${computed.toString(16)})`,
    );
  }
}

function decodeName(bytes: Buffer): string {
  const end = bytes.indexOf(0);
  const name = bytes.subarray(0, end === -1 ? bytes.length : end).toString('utf8');
  if (name !== '' && !resourceNamePattern.test(name)) throw new CorruptRecord('bad name');
  return name;
}

function guarded<T>(block: Buffer, empty: T, decode: () => T): DecodeResult<T> {
  if (isAllZero(block)) return { status: 'empty', record: empty };
  try {
    return { status: 'record', record: decode() };
  } catch (error) {
    if (error instanceof CorruptRecord) return { status: 'corrupt', reason: error.message };
    throw error;
  }
}

export function decodeLeader(block: Buffer): DecodeResult<LeaderRecord> {
  checkBlock(block);
  return guarded(block, emptyLeader, () => {
    checkHeader(block, leaderMagic);
    const valueBytes = block.readUInt32LE(valueLengthOffset);
    if (valueBytes > valueBlockBytesMax) throw new CorruptRecord(`value of ${valueBytes} bytes`);
    return {
      leaseVersion: readU64(block, 16),
      ownerHostId: block.readUInt32LE(24),
      flags: block.readUInt32LE(28),
      ownerGeneration: readU64(block, 32),
      takenWallMs: readU64(block, 40),
      name: decodeName(block.subarray(nameOffset, nameOffset + resourceNameBytesMax)),
      value: Buffer.from(block.subarray(valueOffset, valueOffset + valueBytes)),
    };
  });
}

export function sameLeader(a: LeaderRecord, b: LeaderRecord): boolean {
  return (
    a.leaseVersion === b.leaseVersion &&
    a.ownerHostId === b.ownerHostId &&
    a.flags === b.flags &&
    a.ownerGeneration === b.ownerGeneration &&
    a.takenWallMs === b.takenWallMs &&
    a.name === b.name &&
    a.value.equals(b.value)
  );
}

export function encodeLeader(record: LeaderRecord, blockBytes: number): Buffer {
  const block = Buffer.alloc(blockBytes);
  checkBlock(block);
  assert(record.value.length <= valueBlockBytesMax, 'leader value too long');
  assert(record.name === '' || resourceNamePattern.test(record.name), 'leader name');
  leaderMagic.copy(block, 0);
  writeU32(block, leaseFormatVersion, 8);
  writeU64(block, record.leaseVersion, 16);
  writeU32(block, record.ownerHostId, 24);
  writeU32(block, record.flags, 28);
  writeU64(block, record.ownerGeneration, 32);
  writeU64(block, record.takenWallMs, 40);
  block.write(record.name, nameOffset, resourceNameBytesMax, 'utf8');
  writeU32(block, record.value.length, valueLengthOffset);
  record.value.copy(block, valueOffset);
  block.writeUInt32LE(crc32c(block), crcOffset);
  // Assert around every on-disk record (STYLE.md): what we write decodes to what we meant.
  const decoded = decodeLeader(block);
  assert(decoded.status === 'record' && sameLeader(decoded.record, record), 'leader round trip');
  return block;
}

export function decodeBallot(block: Buffer): DecodeResult<BallotRecord> {
  checkBlock(block);
  return guarded(block, emptyBallot, () => {
    checkHeader(block, ballotMagic);
    return {
      leaseVersion: readU64(block, 16),
      mbal: readU64(block, 24),
      bal: readU64(block, 32),
      inpHostId: block.readUInt32LE(40),
      inpGeneration: readU64(block, 48),
      inpWallMs: readU64(block, 56),
      modeFlags: block.readUInt32LE(64),
      sharedGeneration: readU64(block, 72),
      waitTicket: readU64(block, 80),
      ticketGeneration: readU64(block, 88),
    };
  });
}

const ballotKeys = Object.keys(emptyBallot) as (keyof BallotRecord)[];

export function sameBallot(a: BallotRecord, b: BallotRecord): boolean {
  return ballotKeys.every((key) => a[key] === b[key]);
}

export function encodeBallot(record: BallotRecord, blockBytes: number): Buffer {
  const block = Buffer.alloc(blockBytes);
  checkBlock(block);
  ballotMagic.copy(block, 0);
  writeU32(block, leaseFormatVersion, 8);
  writeU64(block, record.leaseVersion, 16);
  writeU64(block, record.mbal, 24);
  writeU64(block, record.bal, 32);
  writeU32(block, record.inpHostId, 40);
  writeU64(block, record.inpGeneration, 48);
  writeU64(block, record.inpWallMs, 56);
  writeU32(block, record.modeFlags, 64);
  writeU64(block, record.sharedGeneration, 72);
  writeU64(block, record.waitTicket, 80);
  writeU64(block, record.ticketGeneration, 88);
  block.writeUInt32LE(crc32c(block), crcOffset);
  const decoded = decodeBallot(block);
  assert(decoded.status === 'record' && sameBallot(decoded.record, record), 'ballot round trip');
  return block;
}

/** A directory entry: the resource name of area index + 1, or empty. */
export function decodeDirectoryEntry(entry: Buffer): DecodeResult<string> {
  assert(entry.length === directoryEntryBytes, 'directory entry size');
  return guarded(entry, '', () => {
    const stored = entry.readUInt32LE(0);
    const computed = crcWithFieldZeroed(entry, 0);
    if (stored !== computed) throw new CorruptRecord('directory entry CRC mismatch');
    if (entry.readUInt32LE(4) !== entryFlagInUse) throw new CorruptRecord('entry flags');
    const nameBytes = entry.readUInt32LE(8);
    if (nameBytes < 1 || nameBytes > resourceNameBytesMax) throw new CorruptRecord('name size');
    const name = entry.subarray(entryNameOffset, entryNameOffset + nameBytes).toString('utf8');
    if (!resourceNamePattern.test(name)) throw new CorruptRecord('bad entry name');
    return name;
  });
}

export function encodeDirectoryEntry(name: string): Buffer {
  assert(resourceNamePattern.test(name), `directory name '${name}'`);
  const entry = Buffer.alloc(directoryEntryBytes);
  entry.writeUInt32LE(entryFlagInUse, 4);
  const written = entry.write(name, entryNameOffset, resourceNameBytesMax, 'utf8');
  entry.writeUInt32LE(written, 8);
  entry.writeUInt32LE(crc32c(entry), 0);
  const decoded = decodeDirectoryEntry(entry);
  assert(decoded.status === 'record' && decoded.record === name, 'directory entry round trip');
  return entry;
}
