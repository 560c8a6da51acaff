/**
 * The invariants of VG metadata, checked after every change and around every read and write of
 * the metadata area (STYLE: assert around every on-disk record). A broken invariant is
 * METADATA_INVALID with a message that names the record and the rule.
 *
 * The name and tag rules here also check user input (INVALID_ARGUMENT) in vg-operations.ts.
 */
import { TandemError } from '../errors.js';
import type { LvRecord, LvSegment, PvRecord, VgMetadata } from './types.js';
import {
  extentSizeBytesMax,
  extentSizeBytesMin,
  hostNameBytesMax,
  lockspaceLvName,
  lvsPerVgMax,
  nameBytesMax,
  namePattern,
  pvsPerVgMax,
  segmentsPerLvMax,
  stripesMax,
  tagBytesMax,
  tagsPerLvMax,
  vgMetadataVersion,
} from './types.js';
import {
  areaExtentCount,
  findLv,
  findLvByUuid,
  lockspaceMoveOnPv,
  lockspaceOnPv,
  lvExtentCount,
  moveTargetExtentCount,
  usedExtentRuns,
} from './vg-queries.js';

/** LVM's tag characters; a tag may not start with '-' (it would read as an option). */
const tagPattern = /^[A-Za-z0-9_+./=:@][A-Za-z0-9_+.\-/=:@]*$/;
const stripeSizeBytesMin = 4096;

/** Why a VG or LV name is not valid, or undefined when it is. */
export function nameProblem(name: string): string | undefined {
  if (Buffer.byteLength(name) > nameBytesMax) {
    return `is longer than ${nameBytesMax} bytes`;
  }
  if (!namePattern.test(name) || name === '.' || name === '..') {
    return "may hold only A-Z a-z 0-9 + _ . -, may not start with '-', and may not be . or ..";
  }
  return undefined;
}

/** Why a tag is not valid, or undefined when it is. */
export function tagProblem(tag: string): string | undefined {
  if (tag.length === 0 || Buffer.byteLength(tag) > tagBytesMax) {
    return `must be 1 to ${tagBytesMax} bytes`;
  }
  if (!tagPattern.test(tag)) {
    return "may hold only A-Z a-z 0-9 _ + . - / = : @ and may not start with '-'";
  }
  return undefined;
}

export function isStripeSizeValid(stripeSizeBytes: number, extentSizeBytes: number): boolean {
  return (
    Number.isSafeInteger(stripeSizeBytes) &&
    stripeSizeBytes >= stripeSizeBytesMin &&
    (stripeSizeBytes & (stripeSizeBytes - 1)) === 0 &&
    extentSizeBytes % stripeSizeBytes === 0
  );
}

/** The host running a lockspace move, as its record names it. */
export interface LockspaceMover {
  readonly hostId: number;
  readonly generation: number;
  readonly hostName: string;
}

/** Why the mover of a lockspace move is not a possible host of the VG, or undefined when it is. */
export function lockspaceMoverProblem(md: VgMetadata, mover: LockspaceMover): string | undefined {
  if (!Number.isSafeInteger(mover.hostId) || mover.hostId < 1 || mover.hostId > md.maxHosts) {
    return `host id ${mover.hostId} is not 1 to ${md.maxHosts}`;
  }
  if (!Number.isSafeInteger(mover.generation) || mover.generation < 1) {
    return `generation ${mover.generation} is not a positive integer`;
  }
  const nameBytes = Buffer.byteLength(mover.hostName);
  if (nameBytes === 0 || nameBytes > hostNameBytesMax) {
    return `host name ${JSON.stringify(mover.hostName)} is not 1 to ${hostNameBytesMax} bytes`;
  }
  return undefined;
}

/** Throws METADATA_INVALID naming the first broken invariant; returns the metadata unchanged. */
export function validateVgMetadata(md: VgMetadata): VgMetadata {
  check(md.version === vgMetadataVersion, `version ${md.version} is not ${vgMetadataVersion}`);
  check(md.uuid.length > 0, 'the VG uuid is empty');
  const vgNameProblem = nameProblem(md.name);
  check(vgNameProblem === undefined, `VG name ${JSON.stringify(md.name)} ${vgNameProblem}`);
  check(isCount(md.seqno) && md.seqno > 0, `seqno ${md.seqno} is not a positive integer`);
  check(
    isCount(md.extentSizeBytes) &&
      md.extentSizeBytes >= extentSizeBytesMin &&
      md.extentSizeBytes <= extentSizeBytesMax &&
      md.extentSizeBytes % 4096 === 0,
    `extent size ${md.extentSizeBytes} B is not a multiple of 4 KiB in ` +
      `[${extentSizeBytesMin}, ${extentSizeBytesMax}]`,
  );
  check(isCount(md.maxHosts) && md.maxHosts > 0, `maxHosts ${md.maxHosts} is not positive`);
  check(isCount(md.ioTimeoutMs) && md.ioTimeoutMs > 0, `ioTimeoutMs ${md.ioTimeoutMs} invalid`);
  check(
    Number.isFinite(md.createdWallMs) && Number.isFinite(md.updatedWallMs),
    'createdWallMs and updatedWallMs must be finite',
  );
  validatePvs(md);
  validateLvs(md);
  validateMove(md);
  validateLockspaceMove(md);
  validateNoSharedExtents(md);
  return md;
}

function validatePvs(md: VgMetadata): void {
  check(
    md.pvs.length >= 1 && md.pvs.length <= pvsPerVgMax,
    `the VG has ${md.pvs.length} PVs, not 1 to ${pvsPerVgMax}`,
  );
  const uuids = new Set<string>();
  for (const pv of md.pvs) {
    check(pv.uuid.length > 0, 'a PV uuid is empty');
    check(!uuids.has(pv.uuid), `PV uuid ${pv.uuid} appears twice`);
    uuids.add(pv.uuid);
    check(
      isCount(pv.extentCount) && isCount(pv.sizeBytes) && isCount(pv.dataStartBytes),
      `PV ${pv.uuid} has a size, data start or extent count that is not a whole number`,
    );
    check(
      typeof pv.allocatable === 'boolean',
      `PV ${pv.uuid}: allocatable is ${String(pv.allocatable)}, not a boolean`,
    );
    check(
      pv.dataStartBytes + pv.extentCount * md.extentSizeBytes <= pv.sizeBytes,
      `PV ${pv.uuid}: ${pv.extentCount} extents from byte ${pv.dataStartBytes} pass its end`,
    );
  }
}

function validateLvs(md: VgMetadata): void {
  check(md.lvs.length <= lvsPerVgMax, `the VG has ${md.lvs.length} LVs, over ${lvsPerVgMax}`);
  if (md.maxLvs !== undefined) {
    check(
      isCount(md.maxLvs) && md.maxLvs >= 1 && md.maxLvs <= lvsPerVgMax,
      `maxLvs ${md.maxLvs} is not 1 to ${lvsPerVgMax}`,
    );
  }
  const pvs = new Map(md.pvs.map((pv) => [pv.uuid, pv]));
  const names = new Set<string>();
  const uuids = new Set<string>();
  const leaseSlots = new Set<number>();
  let lockspaceCount = 0;
  for (const lv of md.lvs) {
    if (lv.leaseSlot !== undefined) {
      check(
        !lv.hidden && isCount(lv.leaseSlot) && lv.leaseSlot >= 1 && lv.leaseSlot <= lvsPerVgMax,
        `LV ${lv.name} has lease slot ${lv.leaseSlot}; hidden LVs have none, others 1 to ` +
          `${lvsPerVgMax}`,
      );
      check(!leaseSlots.has(lv.leaseSlot), `lease slot ${lv.leaseSlot} is held by two LVs`);
      leaseSlots.add(lv.leaseSlot);
    }
    check(lv.uuid.length > 0, `LV ${lv.name} has an empty uuid`);
    check(!uuids.has(lv.uuid), `LV uuid ${lv.uuid} appears twice`);
    check(!names.has(lv.name), `LV name ${lv.name} appears twice`);
    uuids.add(lv.uuid);
    names.add(lv.name);
    check(
      lv.hidden === (lv.name === lockspaceLvName),
      `LV ${lv.name}: only the lockspace LV ${lockspaceLvName} is hidden, and it always is`,
    );
    if (lv.hidden) {
      lockspaceCount += 1;
    } else {
      const problem = nameProblem(lv.name);
      check(problem === undefined, `LV name ${JSON.stringify(lv.name)} ${problem}`);
    }
    validateTags(lv);
    check(Number.isFinite(lv.createdWallMs), `LV ${lv.name} createdWallMs is not finite`);
    validateSegments(md, lv.segments, `LV ${lv.name}`, pvs);
  }
  check(lockspaceCount === 1, `the VG has ${lockspaceCount} lockspace LVs, not exactly 1`);
}

function validateTags(lv: LvRecord): void {
  check(lv.tags.length <= tagsPerLvMax, `LV ${lv.name} has ${lv.tags.length} tags`);
  check(new Set(lv.tags).size === lv.tags.length, `LV ${lv.name} has a tag twice`);
  for (const tag of lv.tags) {
    const problem = tagProblem(tag);
    check(problem === undefined, `LV ${lv.name} tag ${JSON.stringify(tag)} ${problem}`);
  }
}

/** The segments of an LV (or of where a lockspace move puts one), named `owner` in messages. */
function validateSegments(
  md: VgMetadata,
  segments: readonly LvSegment[],
  owner: string,
  pvs: ReadonlyMap<string, PvRecord>,
): void {
  check(
    segments.length >= 1 && segments.length <= segmentsPerLvMax,
    `${owner} has ${segments.length} segments, not 1 to ${segmentsPerLvMax}`,
  );
  let lvExtentStart = 0;
  segments.forEach((segment, index) => {
    const where = `${owner} segment ${index}`;
    check(
      segment.lvExtentStart === lvExtentStart,
      `${where} starts at LE ${segment.lvExtentStart}, not ${lvExtentStart}`,
    );
    validateSegmentShape(md, segment, where);
    for (const area of segment.areas) {
      const pv = pvs.get(area.pvUuid);
      check(pv !== undefined, `${where} is on PV ${area.pvUuid}, which is not in the VG`);
      check(
        isCount(area.pvExtentStart) &&
          area.pvExtentStart + areaExtentCount(segment) <= pv.extentCount,
        `${where} runs past the end of PV ${pv.uuid} (${pv.extentCount} extents)`,
      );
    }
    lvExtentStart += segment.extentCount;
  });
}

function validateSegmentShape(md: VgMetadata, segment: LvSegment, where: string): void {
  const stripes = segment.areas.length;
  check(stripes >= 1 && stripes <= stripesMax, `${where} has ${stripes} areas`);
  check(
    isCount(segment.extentCount) && segment.extentCount > 0 && segment.extentCount % stripes === 0,
    `${where} maps ${segment.extentCount} extents, not a positive multiple of ${stripes} areas`,
  );
  if (stripes === 1) {
    check(segment.stripeSizeBytes === 0, `${where} is linear but has a stripe size`);
  } else {
    check(
      isStripeSizeValid(segment.stripeSizeBytes, md.extentSizeBytes),
      `${where} stripe size ${segment.stripeSizeBytes} B is not a power of two of at least ` +
        `4 KiB that divides the extent size`,
    );
  }
}

/** The move step must name a run of one area of one segment on the source PV. */
function validateMove(md: VgMetadata): void {
  const move = md.move;
  if (move === undefined) {
    return;
  }
  const lv = findLvByUuid(md, move.lvUuid);
  check(lv !== undefined, `the move step's LV ${move.lvUuid} is not in the VG`);
  check(
    !lv.hidden,
    `the move step's LV is the lockspace LV ${lv.name}, which only a lockspace move moves`,
  );
  const segment = lv.segments.find(
    (candidate) =>
      candidate.lvExtentStart <= move.lvExtentStart &&
      move.lvExtentStart + move.extentCount <= candidate.lvExtentStart + candidate.extentCount,
  );
  check(segment !== undefined, `the move step's LEs are not within one segment of ${lv.name}`);
  const stripes = segment.areas.length;
  check(
    isCount(move.extentCount) &&
      move.extentCount > 0 &&
      move.extentCount % stripes === 0 &&
      (move.lvExtentStart - segment.lvExtentStart) % stripes === 0,
    `the move step (LE ${move.lvExtentStart} + ${move.extentCount}) does not cover whole rows`,
  );
  check(
    segment.areas.some((area) => area.pvUuid === move.sourcePvUuid),
    `the move step's segment of ${lv.name} is not on the source PV ${move.sourcePvUuid}`,
  );
  for (const pvUuid of move.targetPvUuids) {
    check(
      md.pvs.some((pv) => pv.uuid === pvUuid),
      `the move may go to PV ${pvUuid}, which is not in the VG`,
    );
  }
  const target = md.pvs.find((pv) => pv.uuid === move.targetPvUuid);
  check(
    target !== undefined && move.targetPvUuid !== move.sourcePvUuid,
    `the move target PV ${move.targetPvUuid} is not another PV of the VG`,
  );
  check(
    isCount(move.targetPvExtentStart) &&
      move.targetPvExtentStart + moveTargetExtentCount(md, move) <= target.extentCount,
    `the move target run passes the end of PV ${target.uuid}`,
  );
  check(
    isCount(move.movedExtentCount) && move.movedExtentCount <= move.totalExtentCount,
    `the move progress ${move.movedExtentCount} / ${move.totalExtentCount} is not valid`,
  );
}

/**
 * A lockspace move names a PV of the VG that holds the lockspace LV, a mover that can be a host
 * of the VG, and target segments shaped as the lockspace LV's would be, off the source PV. Its
 * target may not overlap anything: validateNoSharedExtents checks that, since usedExtentRuns
 * counts the target.
 */
function validateLockspaceMove(md: VgMetadata): void {
  const record = md.lockspaceMove;
  if (record === undefined) {
    return;
  }
  const what = 'the lockspace move';
  check(md.move === undefined, `${what} and a pv move step are both recorded; one runs at a time`);
  check(
    isCount(record.epoch) && record.epoch >= 1 && record.epoch <= md.seqno,
    `${what} epoch ${record.epoch} is not 1 to the seqno ${md.seqno}`,
  );
  check(
    md.pvs.some((pv) => pv.uuid === record.sourcePvUuid),
    `${what} source PV ${record.sourcePvUuid} is not in the VG`,
  );
  check(
    lockspaceOnPv(md, record.sourcePvUuid),
    `${what} source PV ${record.sourcePvUuid} does not hold the lockspace LV`,
  );
  const moverProblem = lockspaceMoverProblem(md, {
    hostId: record.moverHostId,
    generation: record.moverGeneration,
    hostName: record.moverHostName,
  });
  check(moverProblem === undefined, `${what}'s mover ${moverProblem}`);
  const owner = `${what} target`;
  validateSegments(md, record.segments, owner, new Map(md.pvs.map((pv) => [pv.uuid, pv])));
  // validateLvs has checked that the VG has exactly one lockspace LV.
  const lockspace = findLv(md, lockspaceLvName);
  check(lockspace !== undefined, `${what} is recorded, but the VG has no lockspace LV`);
  const extentCount = record.segments.reduce((sum, segment) => sum + segment.extentCount, 0);
  check(
    extentCount === lvExtentCount(lockspace),
    `${owner} maps ${extentCount} extents, not the ${lvExtentCount(lockspace)} of the lockspace LV`,
  );
  check(
    !lockspaceMoveOnPv(record, record.sourcePvUuid),
    `${owner} has an area on the source PV ${record.sourcePvUuid}`,
  );
}

function validateNoSharedExtents(md: VgMetadata): void {
  for (const [pvUuid, runs] of usedExtentRuns(md)) {
    for (let index = 1; index < runs.length; index += 1) {
      const previous = runs[index - 1];
      const run = runs[index];
      if (previous !== undefined && run !== undefined) {
        check(
          previous.pvExtentStart + previous.extentCount <= run.pvExtentStart,
          `PV ${pvUuid} extent ${run.pvExtentStart} is used by both ${previous.owner} and ` +
            `${run.owner}`,
        );
      }
    }
  }
}

function isCount(value: number): boolean {
  return Number.isSafeInteger(value) && value >= 0;
}

function check(condition: boolean, message: string): asserts condition {
  if (!condition) {
    throw new TandemError('METADATA_INVALID', `invalid VG metadata: ${message}`);
  }
}
