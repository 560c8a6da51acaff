/**
 * The host slot: one 4 KiB record per host id, the delta lease of that host (docs/leases.md,
 * "Host slot"). One encode/decode pair, little-endian, with a CRC32C over the lease fields and a
 * second CRC32C over the payload, so a write torn by a crash can damage the payload but never
 * the lease fields.
 *
 *   0 magic "TNDMHOST" · 8 u32 version · 12 u32 crc32c (lease record, this field zeroed)
 *   16 u32 hostId · 20 u32 flags (1 = left cleanly) · 24 u64 generation · 32 u64 renewal counter
 *   40 u64 wall ms at renewal (humans only) · 48 u32 payload bytes · 52 u32 payload crc32c
 *   56 host name (64 B) · 120 address (64 B, "host:port" of the gRPC API)
 *   184 u64 join nonce (random, chosen at join, kept by every renewal of that join)
 *   192 u64 move epoch · 200 u32 move phase (0 none, 1 ready, 2 done): where this host stands
 *       in a move of the lockspace (docs/adr/0002-moving-the-lockspace-lv.md); zero in slots
 *       written before these fields existed
 *   payloadOffset.. payload (≤ 1 KiB)
 *
 * The lease record is the first block (blockSize bytes) and the payload starts right after it,
 * as docs/leases.md says, whenever that fits in the 4 KiB slot (blockSize 512..2048). With
 * 4 KiB blocks the first block is the whole slot and "payload at blockSize" would spill into
 * the next host's slot, so there the payload takes the last KiB of the slot (offset 3072) and
 * the lease CRC covers the 3 KiB before it. Such a slot is a single sector, written atomically,
 * so the torn-write separation the layout exists for is kept by the device itself.
 */
import { assert } from '../errors.js';
import { crc32c } from '../crc32c.js';
import { hostSlotBytes } from './layout.js';

export const hostSlotMagic = Buffer.from('TNDMHOST', 'ascii');
export const hostSlotFormatVersion = 1;
export const payloadBytesMax = 1024;
export const hostNameBytesMax = 64;
export const addressBytesMax = 64;
export const hostSlotFlagLeft = 1;
const knownFlags = hostSlotFlagLeft;

const offsets = {
  magic: 0,
  version: 8,
  crc: 12,
  hostId: 16,
  flags: 20,
  generation: 24,
  renewalCounter: 32,
  renewedWallMs: 40,
  payloadBytes: 48,
  payloadCrc: 52,
  hostName: 56,
  address: 120,
  joinNonce: 184,
  moveEpoch: 192,
  movePhase: 200,
  end: 204,
} as const;

const movePhases = ['none', 'ready', 'done'] as const;

/**
 * A host's answer to a move of the lockspace, written in its slot:
 * - `ready`: it writes its slot to both copies and makes no other lease write (the copy may run);
 * - `done`: it left the move (uses one copy again, the new one or the old), so the copy it left
 *   may be given to other data once every host says so.
 */
export type MovePhase = (typeof movePhases)[number];

export interface SlotMoveAck {
  readonly epoch: number;
  readonly phase: MovePhase;
}

export const noMoveAck: SlotMoveAck = { epoch: 0, phase: 'none' };

/** The fields of a held slot, as written by its host. */
export interface HostSlotRecord {
  readonly hostId: number;
  readonly left: boolean;
  readonly generation: number;
  readonly renewalCounter: number;
  readonly renewedWallMs: number;
  readonly hostName: string;
  readonly address: string;
  /**
   * Random per join. Two hosts with the same name and address racing for one id in the same
   * millisecond would otherwise write byte-identical records and both believe they won.
   */
  readonly joinNonce: number;
  readonly payload: Buffer;
  /** Absent: no move (noMoveAck). */
  readonly moveAck?: SlotMoveAck;
}

/** A held slot as read: the record's fields, with a payload that may be unreadable. */
export type HeldSlot = Omit<HostSlotRecord, 'payload' | 'moveAck'> & {
  readonly kind: 'held';
  readonly moveAck: SlotMoveAck;
  /** Undefined when the payload fails its CRC (e.g. torn by a crash). */
  readonly payload: Buffer | undefined;
  readonly payloadSizeBytes: number;
  /** The raw lease bytes: what observers compare for changes. */
  readonly leaseRecord: Buffer;
};

/** A decoded slot: free (all zero), corrupt (never free), or held. */
export type DecodedSlot =
  { readonly kind: 'free' } | { readonly kind: 'corrupt'; readonly reason: string } | HeldSlot;

/** Where the payload starts in a slot of a lockspace with this block size (see above). */
export function payloadOffset(blockSize: number): number {
  assert(
    Number.isInteger(blockSize) && blockSize >= 512 && blockSize <= hostSlotBytes,
    `block size ${blockSize}`,
  );
  return Math.min(blockSize, hostSlotBytes - payloadBytesMax);
}

function isAllZero(bytes: Buffer): boolean {
  for (const byte of bytes) if (byte !== 0) return false;
  return true;
}

function leaseCrc(leaseRecord: Buffer): number {
  const copy = Buffer.from(leaseRecord);
  copy.writeUInt32LE(0, offsets.crc);
  return crc32c(copy);
}

function writeText(block: Buffer, text: string, offset: number, bytesMax: number, what: string) {
  assert(Buffer.byteLength(text, 'utf8') <= bytesMax, `${what} longer than ${bytesMax} bytes`);
  assert(!text.includes('\0'), `${what} contains NUL`);
  block.write(text, offset, bytesMax, 'utf8');
}

function readText(block: Buffer, offset: number, bytesMax: number): string {
  const bytes = block.subarray(offset, offset + bytesMax);
  const end = bytes.indexOf(0);
  return bytes.subarray(0, end === -1 ? bytes.length : end).toString('utf8');
}

function checkSafe(value: number, what: string): bigint {
  assert(Number.isSafeInteger(value) && value >= 0, `${what} ${value} is not a safe integer`);
  return BigInt(value);
}

/** Encodes a whole 4 KiB slot; asserts that it decodes back to `record`. */
export function encodeHostSlot(record: HostSlotRecord, blockSize: number): Buffer {
  assert(record.payload.length <= payloadBytesMax, 'payload too large');
  assert(record.hostId >= 1 && Number.isInteger(record.hostId), 'host id');
  assert(record.generation >= 1, 'a held slot has a generation >= 1');
  const slot = Buffer.alloc(hostSlotBytes);
  const leaseBytes = payloadOffset(blockSize);
  hostSlotMagic.copy(slot, offsets.magic);
  slot.writeUInt32LE(hostSlotFormatVersion, offsets.version);
  slot.writeUInt32LE(record.hostId, offsets.hostId);
  slot.writeUInt32LE(record.left ? hostSlotFlagLeft : 0, offsets.flags);
  slot.writeBigUInt64LE(checkSafe(record.generation, 'generation'), offsets.generation);
  slot.writeBigUInt64LE(checkSafe(record.renewalCounter, 'counter'), offsets.renewalCounter);
  slot.writeBigUInt64LE(checkSafe(record.renewedWallMs, 'wall ms'), offsets.renewedWallMs);
  slot.writeBigUInt64LE(checkSafe(record.joinNonce, 'join nonce'), offsets.joinNonce);
  const moveAck = record.moveAck ?? noMoveAck;
  slot.writeBigUInt64LE(checkSafe(moveAck.epoch, 'move epoch'), offsets.moveEpoch);
  slot.writeUInt32LE(movePhases.indexOf(moveAck.phase), offsets.movePhase);
  slot.writeUInt32LE(record.payload.length, offsets.payloadBytes);
  slot.writeUInt32LE(crc32c(record.payload), offsets.payloadCrc);
  writeText(slot, record.hostName, offsets.hostName, hostNameBytesMax, 'host name');
  writeText(slot, record.address, offsets.address, addressBytesMax, 'address');
  record.payload.copy(slot, leaseBytes);
  slot.writeUInt32LE(leaseCrc(slot.subarray(0, leaseBytes)), offsets.crc);
  // Assert around every on-disk record (STYLE.md): what we write must read back as what we meant.
  const decoded = decodeHostSlot(slot, record.hostId, blockSize);
  assert(
    decoded.kind === 'held' &&
      decoded.left === record.left &&
      decoded.generation === record.generation &&
      decoded.renewalCounter === record.renewalCounter &&
      decoded.renewedWallMs === record.renewedWallMs &&
      decoded.hostName === record.hostName &&
      decoded.address === record.address &&
      decoded.joinNonce === record.joinNonce &&
      decoded.moveAck.epoch === moveAck.epoch &&
      decoded.moveAck.phase === moveAck.phase &&
      decoded.payload !== undefined &&
      decoded.payload.equals(record.payload),
    'host slot round trip',
  );
  return slot;
}

function safeField(slot: Buffer, offset: number): number | undefined {
  const value = slot.readBigUInt64LE(offset);
  return value > BigInt(Number.MAX_SAFE_INTEGER) ? undefined : Number(value);
}

/**
 * Decodes a slot read from host id `expectedHostId`'s place. An all-zero lease record is free;
 * anything else that is not a valid record of ours (magic, version, CRC, host id, flags, sizes)
 * is 'corrupt' and never free.
 */
export function decodeHostSlot(
  slot: Buffer,
  expectedHostId: number,
  blockSize: number,
): DecodedSlot {
  assert(slot.length >= hostSlotBytes, `a host slot is ${hostSlotBytes} bytes`);
  const leaseBytes = payloadOffset(blockSize);
  const leaseRecord = slot.subarray(0, leaseBytes);
  if (isAllZero(leaseRecord)) return { kind: 'free' };
  if (!leaseRecord.subarray(0, 8).equals(hostSlotMagic)) return corrupt('bad magic');
  const version = leaseRecord.readUInt32LE(offsets.version);
  if (version !== hostSlotFormatVersion) return corrupt(`unsupported version ${version}`);
  if (leaseRecord.readUInt32LE(offsets.crc) !== leaseCrc(leaseRecord)) return corrupt('bad CRC');
  const hostId = leaseRecord.readUInt32LE(offsets.hostId);
  if (hostId !== expectedHostId) return corrupt(`names host id ${hostId}`);
  const flags = leaseRecord.readUInt32LE(offsets.flags);
  if ((flags & ~knownFlags) !== 0) return corrupt(`unknown flags ${flags.toString(16)}`);
  const generation = safeField(leaseRecord, offsets.generation);
  const renewalCounter = safeField(leaseRecord, offsets.renewalCounter);
  const renewedWallMs = safeField(leaseRecord, offsets.renewedWallMs);
  const joinNonce = safeField(leaseRecord, offsets.joinNonce);
  const moveEpoch = safeField(leaseRecord, offsets.moveEpoch);
  if (
    generation === undefined ||
    renewalCounter === undefined ||
    renewedWallMs === undefined ||
    joinNonce === undefined ||
    moveEpoch === undefined
  ) {
    return corrupt('a 64-bit field is out of range');
  }
  const movePhaseIndex = leaseRecord.readUInt32LE(offsets.movePhase);
  const movePhase = movePhases[movePhaseIndex];
  if (movePhase === undefined) return corrupt(`unknown move phase ${movePhaseIndex}`);
  if (generation < 1) return corrupt('generation 0');
  const payloadSizeBytes = leaseRecord.readUInt32LE(offsets.payloadBytes);
  if (payloadSizeBytes > payloadBytesMax) return corrupt(`payload of ${payloadSizeBytes} bytes`);
  const payloadBytes = slot.subarray(leaseBytes, leaseBytes + payloadSizeBytes);
  const payloadValid = crc32c(payloadBytes) === leaseRecord.readUInt32LE(offsets.payloadCrc);
  const decoded: DecodedSlot = {
    kind: 'held',
    hostId,
    left: (flags & hostSlotFlagLeft) !== 0,
    generation,
    renewalCounter,
    renewedWallMs,
    hostName: readText(leaseRecord, offsets.hostName, hostNameBytesMax),
    address: readText(leaseRecord, offsets.address, addressBytesMax),
    joinNonce,
    moveAck: { epoch: moveEpoch, phase: movePhase },
    payload: payloadValid ? Buffer.from(payloadBytes) : undefined,
    payloadSizeBytes,
    leaseRecord: Buffer.from(leaseRecord),
  };
  assert(decoded.hostId === expectedHostId, 'decoded slot is for the host id asked');
  return decoded;
}

/** A fresh join nonce: 48 random bits, a safe integer. */
export function newJoinNonce(random: () => number): number {
  return Math.floor(random() * 2 ** 48);
}

function corrupt(reason: string): DecodedSlot {
  return { kind: 'corrupt', reason };
}

/** Whether two decoded slots hold the very same lease record (the "unchanged" test). */
export function sameLeaseRecord(a: DecodedSlot, b: DecodedSlot): boolean {
  if (a.kind === 'free' && b.kind === 'free') return true;
  if (a.kind === 'held' && b.kind === 'held') return a.leaseRecord.equals(b.leaseRecord);
  // A corrupt slot counts as a change every time it is read (docs/leases.md).
  return false;
}

/** Checks a host name or address for the slot (the caller maps a failure to INVALID_ARGUMENT). */
export function textFieldProblem(text: string, bytesMax: number): string | undefined {
  if (text.includes('\0')) return 'contains a NUL character';
  if (Buffer.byteLength(text, 'utf8') > bytesMax) return `is longer than ${bytesMax} bytes`;
  return undefined;
}
