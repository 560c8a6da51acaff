/**
 * The VG metadata body: VgMetadata (types.ts) to and from the protobuf bytes a metadata record
 * carries (proto/tandem/v1/vg_metadata.proto, package tandem.v1.ondisk).
 *
 * protobufjs is used directly rather than through the generated gRPC types: the body is a disk
 * format, not an API. Decoding trusts nothing: every field is type-checked, 64-bit fields must be
 * safe integers, and a body written by a newer tandem (version above vgMetadataVersion) is
 * refused with MDA_VERSION rather than half understood.
 */
import path from 'node:path';
import protobuf from 'protobufjs';
import { protoDirectory } from '../generated/tandem-proto.js';
import { TandemError, assert } from '../errors.js';
import {
  type LockspaceMoveRecord,
  type LvRecord,
  type LvSegment,
  type PvMoveRecord,
  type PvRecord,
  type SegmentArea,
  type VgMetadata,
  vgMetadataVersion,
  vgMetadataVersionLockspaceMove,
} from './types.js';

let vgMetadataType: protobuf.Type | undefined;

/** Loaded once, on first use, so that importing this module costs no file I/O. */
function messageType(): protobuf.Type {
  vgMetadataType ??= protobuf
    .loadSync(path.join(protoDirectory(), 'tandem/v1/vg_metadata.proto'))
    .lookupType('tandem.v1.ondisk.VgMetadata');
  return vgMetadataType;
}

const uint32Max = 0xffff_ffff;

/** Numbers out of their wire range would be truncated silently by the encoder: refuse them. */
function checkUint(value: number, what: string, maximum: number): number {
  if (!Number.isSafeInteger(value) || value < 0 || value > maximum) {
    throw new TandemError(
      'METADATA_INVALID',
      `VG metadata field ${what} is ${value}, not an integer in 0..${maximum}`,
    );
  }
  return value;
}

const u32 = (value: number, what: string) => checkUint(value, what, uint32Max);
const u64 = (value: number, what: string) => checkUint(value, what, Number.MAX_SAFE_INTEGER);

function pvToWire(pv: PvRecord) {
  return {
    uuid: pv.uuid,
    deviceHint: pv.deviceHint,
    sizeBytes: u64(pv.sizeBytes, 'pv.sizeBytes'),
    dataStartBytes: u64(pv.dataStartBytes, 'pv.dataStartBytes'),
    extentCount: u32(pv.extentCount, 'pv.extentCount'),
    // Negated on the wire, so metadata written before the flag existed reads as allocatable.
    notAllocatable: !pv.allocatable,
  };
}

function segmentToWire(segment: LvSegment) {
  return {
    lvExtentStart: u32(segment.lvExtentStart, 'segment.lvExtentStart'),
    extentCount: u32(segment.extentCount, 'segment.extentCount'),
    stripeSizeBytes: u32(segment.stripeSizeBytes, 'segment.stripeSizeBytes'),
    areas: segment.areas.map((area) => ({
      pvUuid: area.pvUuid,
      pvExtentStart: u32(area.pvExtentStart, 'area.pvExtentStart'),
    })),
  };
}

function lvToWire(lv: LvRecord) {
  return {
    uuid: lv.uuid,
    name: lv.name,
    hidden: lv.hidden,
    tags: [...lv.tags],
    createdWallMs: u64(lv.createdWallMs, 'lv.createdWallMs'),
    segments: lv.segments.map(segmentToWire),
    // Slots start at 1: 0 on the wire is "no slot" (hidden LVs).
    leaseSlot: lv.leaseSlot === undefined ? 0 : checkUint(lv.leaseSlot, 'lv.leaseSlot', uint32Max),
  };
}

function moveToWire(move: PvMoveRecord) {
  return {
    sourcePvUuid: move.sourcePvUuid,
    targetPvUuids: [...move.targetPvUuids],
    lvUuid: move.lvUuid,
    lvExtentStart: u32(move.lvExtentStart, 'move.lvExtentStart'),
    extentCount: u32(move.extentCount, 'move.extentCount'),
    targetPvUuid: move.targetPvUuid,
    targetPvExtentStart: u32(move.targetPvExtentStart, 'move.targetPvExtentStart'),
    movedExtentCount: u32(move.movedExtentCount, 'move.movedExtentCount'),
    totalExtentCount: u32(move.totalExtentCount, 'move.totalExtentCount'),
  };
}

function lockspaceMoveToWire(record: LockspaceMoveRecord) {
  return {
    epoch: u64(record.epoch, 'lockspaceMove.epoch'),
    sourcePvUuid: record.sourcePvUuid,
    segments: record.segments.map(segmentToWire),
    moverHostId: u32(record.moverHostId, 'lockspaceMove.moverHostId'),
    moverGeneration: u64(record.moverGeneration, 'lockspaceMove.moverGeneration'),
    moverHostName: record.moverHostName,
  };
}

/** The body bytes of `md`; METADATA_INVALID when a number does not fit its field. */
export function encodeVgMetadata(md: VgMetadata): Buffer {
  const wire = {
    version:
      md.lockspaceMove === undefined ? u32(md.version, 'version') : vgMetadataVersionLockspaceMove,
    uuid: md.uuid,
    name: md.name,
    seqno: u64(md.seqno, 'seqno'),
    extentSizeBytes: u64(md.extentSizeBytes, 'extentSizeBytes'),
    maxHosts: u32(md.maxHosts, 'maxHosts'),
    ioTimeoutMs: u32(md.ioTimeoutMs, 'ioTimeoutMs'),
    createdWallMs: u64(md.createdWallMs, 'createdWallMs'),
    updatedWallMs: u64(md.updatedWallMs, 'updatedWallMs'),
    updatedBy: md.updatedBy,
    lastChange: md.lastChange,
    pvs: md.pvs.map(pvToWire),
    lvs: md.lvs.map(lvToWire),
    ...(md.move === undefined ? {} : { move: moveToWire(md.move) }),
    ...(md.lockspaceMove === undefined
      ? {}
      : { lockspaceMove: lockspaceMoveToWire(md.lockspaceMove) }),
    removing: md.removing === true,
    maxLvs: md.maxLvs === undefined ? 0 : u32(md.maxLvs, 'maxLvs'),
  };
  const type = messageType();
  const encoded = type.encode(type.fromObject(wire)).finish();
  const bytes = Buffer.from(encoded.buffer, encoded.byteOffset, encoded.byteLength);
  // Assert around every on-disk record (STYLE.md): the bytes must read back as what we meant.
  const decoded = decodeVgMetadata(bytes, 'encodeVgMetadata');
  assert(
    decoded.seqno === md.seqno &&
      decoded.uuid === md.uuid &&
      decoded.pvs.length === md.pvs.length &&
      decoded.lvs.length === md.lvs.length &&
      (decoded.move === undefined) === (md.move === undefined) &&
      decoded.lockspaceMove?.epoch === md.lockspaceMove?.epoch &&
      decoded.lockspaceMove?.segments.length === md.lockspaceMove?.segments.length,
    'VG metadata round trip',
  );
  return Buffer.from(bytes);
}

/** Reads the fields of one decoded message, each checked for its type. */
class FieldReader {
  constructor(
    private readonly object: Record<string, unknown>,
    private readonly what: string,
    private readonly where: string,
  ) {}

  private corrupt(field: string, problem: string): TandemError {
    return new TandemError(
      'MDA_CORRUPT',
      `${this.where}: VG metadata field ${this.what}.${field} ${problem}`,
    );
  }

  string(field: string): string {
    const value = this.object[field];
    if (typeof value !== 'string') throw this.corrupt(field, 'is not a string');
    return value;
  }

  boolean(field: string): boolean {
    const value = this.object[field];
    if (typeof value !== 'boolean') throw this.corrupt(field, 'is not a boolean');
    return value;
  }

  uint32(field: string): number {
    const value = this.object[field];
    if (typeof value !== 'number' || !Number.isInteger(value) || value < 0) {
      throw this.corrupt(field, 'is not an unsigned integer');
    }
    return value;
  }

  /** uint64 fields arrive as decimal strings (toObject with `longs: String`), Long or not. */
  uint64(field: string): number {
    const value = this.object[field];
    if (typeof value !== 'string' || !/^[0-9]{1,20}$/.test(value)) {
      throw this.corrupt(field, 'is not an unsigned 64-bit integer');
    }
    const wide = BigInt(value);
    if (wide > BigInt(Number.MAX_SAFE_INTEGER)) {
      throw this.corrupt(field, `is ${value}, beyond the safe integer range`);
    }
    return Number(wide);
  }

  strings(field: string): string[] {
    return this.array(field).map((value, index) => {
      if (typeof value !== 'string') throw this.corrupt(`${field}[${index}]`, 'is not a string');
      return value;
    });
  }

  messages(field: string): FieldReader[] {
    return this.array(field).map((value, index) => this.wrap(value, `${field}[${index}]`));
  }

  /** An optional message field: undefined when absent. */
  message(field: string): FieldReader | undefined {
    const value = this.object[field];
    return value === null || value === undefined ? undefined : this.wrap(value, field);
  }

  private array(field: string): unknown[] {
    const value = this.object[field];
    if (!Array.isArray(value)) throw this.corrupt(field, 'is not a list');
    return value;
  }

  private wrap(value: unknown, field: string): FieldReader {
    if (typeof value !== 'object' || value === null || Array.isArray(value)) {
      throw this.corrupt(field, 'is not a message');
    }
    return new FieldReader(value as Record<string, unknown>, `${this.what}.${field}`, this.where);
  }
}

function pvFromWire(fields: FieldReader): PvRecord {
  return {
    uuid: fields.string('uuid'),
    deviceHint: fields.string('deviceHint'),
    sizeBytes: fields.uint64('sizeBytes'),
    dataStartBytes: fields.uint64('dataStartBytes'),
    extentCount: fields.uint32('extentCount'),
    allocatable: !fields.boolean('notAllocatable'),
  };
}

function areaFromWire(fields: FieldReader): SegmentArea {
  return { pvUuid: fields.string('pvUuid'), pvExtentStart: fields.uint32('pvExtentStart') };
}

function segmentFromWire(fields: FieldReader): LvSegment {
  return {
    lvExtentStart: fields.uint32('lvExtentStart'),
    extentCount: fields.uint32('extentCount'),
    stripeSizeBytes: fields.uint32('stripeSizeBytes'),
    areas: fields.messages('areas').map(areaFromWire),
  };
}

function lvFromWire(fields: FieldReader): LvRecord {
  const leaseSlot = fields.uint32('leaseSlot');
  return {
    uuid: fields.string('uuid'),
    name: fields.string('name'),
    hidden: fields.boolean('hidden'),
    tags: fields.strings('tags'),
    createdWallMs: fields.uint64('createdWallMs'),
    segments: fields.messages('segments').map(segmentFromWire),
    // Optional fields are left out when unset, so that a decoded record equals the one encoded.
    ...(leaseSlot === 0 ? {} : { leaseSlot }),
  };
}

function moveFromWire(fields: FieldReader): PvMoveRecord {
  return {
    sourcePvUuid: fields.string('sourcePvUuid'),
    targetPvUuids: fields.strings('targetPvUuids'),
    lvUuid: fields.string('lvUuid'),
    lvExtentStart: fields.uint32('lvExtentStart'),
    extentCount: fields.uint32('extentCount'),
    targetPvUuid: fields.string('targetPvUuid'),
    targetPvExtentStart: fields.uint32('targetPvExtentStart'),
    movedExtentCount: fields.uint32('movedExtentCount'),
    totalExtentCount: fields.uint32('totalExtentCount'),
  };
}

function lockspaceMoveFromWire(fields: FieldReader): LockspaceMoveRecord {
  return {
    epoch: fields.uint64('epoch'),
    sourcePvUuid: fields.string('sourcePvUuid'),
    segments: fields.messages('segments').map(segmentFromWire),
    moverHostId: fields.uint32('moverHostId'),
    moverGeneration: fields.uint64('moverGeneration'),
    moverHostName: fields.string('moverHostName'),
  };
}

function parse(bytes: Uint8Array, where: string): Record<string, unknown> {
  const type = messageType();
  try {
    return type.toObject(type.decode(bytes), {
      longs: String,
      defaults: true,
      arrays: true,
    }) as Record<string, unknown>;
  } catch (error) {
    throw new TandemError('MDA_CORRUPT', `${where}: the VG metadata body is not valid protobuf`, {
      cause: error,
    });
  }
}

/**
 * Decodes a body; `where` names the device and offset for messages. MDA_CORRUPT when the bytes
 * are not a VG metadata body, MDA_VERSION when a newer tandem wrote it.
 */
export function decodeVgMetadata(bytes: Uint8Array, where: string): VgMetadata {
  const fields = new FieldReader(parse(bytes, where), 'vg', where);
  const version = fields.uint32('version');
  if (version === 0) {
    throw new TandemError('MDA_CORRUPT', `${where}: the VG metadata body has no version`);
  }
  if (version > vgMetadataVersionLockspaceMove) {
    throw new TandemError(
      'MDA_VERSION',
      `${where}: the VG metadata has version ${version}, this tandem reads up to ${vgMetadataVersionLockspaceMove} (upgrade tandem)`,
    );
  }
  const move = fields.message('move');
  const lockspaceMove = fields.message('lockspaceMove');
  return {
    // Version 2 only marks a body with a lockspace move for older readers; it is 1 in memory.
    version: vgMetadataVersion,
    uuid: fields.string('uuid'),
    name: fields.string('name'),
    seqno: fields.uint64('seqno'),
    extentSizeBytes: fields.uint64('extentSizeBytes'),
    maxHosts: fields.uint32('maxHosts'),
    ioTimeoutMs: fields.uint32('ioTimeoutMs'),
    createdWallMs: fields.uint64('createdWallMs'),
    updatedWallMs: fields.uint64('updatedWallMs'),
    updatedBy: fields.string('updatedBy'),
    lastChange: fields.string('lastChange'),
    pvs: fields.messages('pvs').map(pvFromWire),
    lvs: fields.messages('lvs').map(lvFromWire),
    move: move === undefined ? undefined : moveFromWire(move),
    // Absent in metadata written before lockspace moves existed, and whenever none runs.
    ...(lockspaceMove === undefined ? {} : { lockspaceMove: lockspaceMoveFromWire(lockspaceMove) }),
    ...(fields.boolean('removing') ? { removing: true } : {}),
    ...(fields.uint32('maxLvs') === 0 ? {} : { maxLvs: fields.uint32('maxLvs') }),
  };
}
