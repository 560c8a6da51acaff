/**
 * The LV changes users make, as pure functions of VG metadata (see vg-operations.ts, which
 * re-exports them): create, extend, reduce, rename, remove, tag.
 */
import { TandemError } from '../errors.js';
import { allocateExtents, roundUpToStripes } from './allocator.js';
import type { AllocationPolicy, LvRecord, LvSegment, VgMetadata } from './types.js';
import {
  lvsPerVgMax,
  segmentsPerLvMax,
  stripeSizeBytesDefault,
  stripesMax,
  tagsPerLvMax,
} from './types.js';
import {
  checkArgument,
  checkName,
  commitChange,
  isPositiveInteger,
  mergeSegments,
  replaceLv,
  type ChangeContext,
} from './vg-change.js';
import { findLv, lvExtentCount } from './vg-queries.js';
import { isStripeSizeValid, tagProblem } from './vg-validate.js';

export interface CreateLvSpec {
  readonly uuid: string;
  readonly name: string;
  /** Rounded up to a multiple of `stripes`. */
  readonly extentCount: number;
  readonly tags?: readonly string[];
  /** 1 (the default) for linear. */
  readonly stripes?: number;
  /** Striped LVs only; default stripeSizeBytesDefault. */
  readonly stripeSizeBytes?: number;
  readonly policy?: AllocationPolicy;
  readonly pvUuids?: readonly string[];
  readonly missingPvUuids?: readonly string[];
}

export interface ExtendLvOptions {
  readonly policy?: AllocationPolicy;
  readonly pvUuids?: readonly string[];
  readonly missingPvUuids?: readonly string[];
}

/** Adds an LV with the lowest free lease slot; a striped size is rounded up to whole rows. */
export function createLv(md: VgMetadata, spec: CreateLvSpec, context: ChangeContext): VgMetadata {
  checkName('LV', spec.name);
  if (findLv(md, spec.name) !== undefined) {
    throw new TandemError('LV_EXISTS', `LV ${spec.name} already exists in VG ${md.name}`);
  }
  if (md.lvs.some((lv) => lv.uuid === spec.uuid)) {
    throw new TandemError('LV_EXISTS', `an LV with uuid ${spec.uuid} already exists`);
  }
  if (md.lvs.length >= lvsPerVgMax) {
    throw new TandemError(
      'FAILED_PRECONDITION',
      `VG ${md.name} holds ${md.lvs.length} LVs, the limit; remove one first`,
    );
  }
  const visibleCount = md.lvs.filter((lv) => !lv.hidden).length;
  if (md.maxLvs !== undefined && visibleCount >= md.maxLvs) {
    throw new TandemError(
      'FAILED_PRECONDITION',
      `VG ${md.name} holds ${visibleCount} LVs, as many as its lockspace has leases for ` +
        `(vg create --max-lvs ${md.maxLvs}); remove one first`,
    );
  }
  const stripes = spec.stripes ?? 1;
  checkArgument(
    Number.isSafeInteger(stripes) && stripes >= 1 && stripes <= stripesMax,
    `the stripe count must be 1 to ${stripesMax}, not ${stripes}`,
  );
  const stripeSizeBytes =
    stripes === 1 ? (spec.stripeSizeBytes ?? 0) : (spec.stripeSizeBytes ?? stripeSizeBytesDefault);
  checkArgument(
    stripes === 1 ? stripeSizeBytes === 0 : isStripeSizeValid(stripeSizeBytes, md.extentSizeBytes),
    stripes === 1
      ? 'a stripe size is given for a linear LV; give stripes ≥ 2 or no stripe size'
      : `the stripe size must be a power of two from 4 KiB up to the extent size, not ` +
          `${stripeSizeBytes} B`,
  );
  checkArgument(isPositiveInteger(spec.extentCount), 'the LV size must be at least one extent');
  const tags = checkedTags(spec.tags ?? []);
  const segments = allocateExtents(md, {
    extentCount: roundUpToStripes(spec.extentCount, stripes),
    stripes,
    stripeSizeBytes,
    policy: spec.policy ?? 'normal',
    pvUuids: spec.pvUuids,
    missingPvUuids: spec.missingPvUuids,
  });
  const lv: LvRecord = {
    uuid: spec.uuid,
    name: spec.name,
    hidden: false,
    tags,
    createdWallMs: context.wallMs,
    segments: checkedSegments(spec.name, mergeSegments(segments)),
    leaseSlot: lowestFreeLeaseSlot(md),
  };
  return commitChange(md, { lvs: [...md.lvs, lv] }, `lv create ${spec.name}`, context);
}

/**
 * Grows an LV to `newExtentCount`, with the stripe count and size of its last segment (as
 * lvextend does); a striped LV's growth is rounded up to a multiple of its stripes.
 */
export function extendLv(
  md: VgMetadata,
  name: string,
  newExtentCount: number,
  options: ExtendLvOptions,
  context: ChangeContext,
): VgMetadata {
  const lv = findUserLv(md, name);
  const current = lvExtentCount(lv);
  checkArgument(
    Number.isSafeInteger(newExtentCount) && newExtentCount > current,
    `LV ${name} has ${current} extents; extending needs more than that, not ${newExtentCount}`,
  );
  const last = lv.segments.at(-1);
  const stripes = last?.areas.length ?? 1;
  const added = allocateExtents(md, {
    extentCount: roundUpToStripes(newExtentCount - current, stripes),
    stripes,
    stripeSizeBytes: last?.stripeSizeBytes,
    policy: options.policy ?? 'normal',
    pvUuids: options.pvUuids,
    missingPvUuids: options.missingPvUuids,
    after: lv,
  });
  const segments = checkedSegments(name, mergeSegments([...lv.segments, ...added]));
  return commitChange(md, replaceLv(md, { ...lv, segments }), `lv extend ${name}`, context);
}

/**
 * Shrinks an LV to `newExtentCount` by cutting segments from its end. A cut inside a striped
 * segment keeps whole rows: the new size is rounded up to the segment's next row boundary (never
 * cutting more than asked), which is an error when that leaves the size unchanged.
 */
export function reduceLv(
  md: VgMetadata,
  name: string,
  newExtentCount: number,
  context: ChangeContext,
): VgMetadata {
  const lv = findUserLv(md, name);
  const current = lvExtentCount(lv);
  checkArgument(
    Number.isSafeInteger(newExtentCount) && newExtentCount >= 1 && newExtentCount < current,
    `LV ${name} has ${current} extents; reducing needs 1 to ${current - 1}, not ${newExtentCount}`,
  );
  checkNotMoving(md, lv);
  const segments: LvSegment[] = [];
  for (const segment of lv.segments) {
    const keep = newExtentCount - segment.lvExtentStart;
    if (keep <= 0) {
      break;
    }
    const kept = roundUpToStripes(Math.min(keep, segment.extentCount), segment.areas.length);
    segments.push({ ...segment, extentCount: kept });
  }
  const reduced = segments.reduce((sum, segment) => sum + segment.extentCount, 0);
  const stripes = lv.segments.at(-1)?.areas.length ?? 1;
  checkArgument(
    reduced < current,
    `LV ${name} ends in a ${stripes}-stripe segment that shrinks by whole rows of ${stripes} ` +
      `extents; ask for ${current - stripes} extents or fewer`,
  );
  return commitChange(
    md,
    replaceLv(md, { ...lv, segments }),
    `lv reduce ${name} to ${reduced} extents`,
    context,
  );
}

export function renameLv(
  md: VgMetadata,
  name: string,
  newName: string,
  context: ChangeContext,
): VgMetadata {
  const lv = findUserLv(md, name);
  checkName('LV', newName);
  checkArgument(newName !== name, `LV ${name} already has that name`);
  if (findLv(md, newName) !== undefined) {
    throw new TandemError('LV_EXISTS', `LV ${newName} already exists in VG ${md.name}`);
  }
  return commitChange(
    md,
    replaceLv(md, { ...lv, name: newName }),
    `lv rename ${name} ${newName}`,
    context,
  );
}

export function removeLv(md: VgMetadata, name: string, context: ChangeContext): VgMetadata {
  const lv = findUserLv(md, name);
  checkNotMoving(md, lv);
  const lvs = md.lvs.filter((candidate) => candidate !== lv);
  return commitChange(md, { lvs }, `lv remove ${name}`, context);
}

/** Adds and removes tags (removing first, so a tag in both lists stays); order is kept. */
export function setLvTags(
  md: VgMetadata,
  name: string,
  add: readonly string[],
  remove: readonly string[],
  context: ChangeContext,
): VgMetadata {
  const lv = findUserLv(md, name);
  const tags = lv.tags.filter((tag) => !remove.includes(tag));
  for (const tag of checkedTags(add)) {
    if (!tags.includes(tag)) {
      tags.push(tag);
    }
  }
  checkArgument(
    tags.length <= tagsPerLvMax,
    `an LV holds at most ${tagsPerLvMax} tags; LV ${name} would have ${tags.length}`,
  );
  return commitChange(md, replaceLv(md, { ...lv, tags }), `lv tag ${name}`, context);
}

/** The user-visible LV of that name; the hidden lockspace LV is not one users may change. */
function findUserLv(md: VgMetadata, name: string): LvRecord {
  const lv = findLv(md, name);
  if (lv === undefined) {
    throw new TandemError('LV_NOT_FOUND', `VG ${md.name} has no LV ${name}`);
  }
  if (lv.hidden) {
    throw new TandemError(
      'INVALID_ARGUMENT',
      `${name} is the VG's hidden lockspace LV; it cannot be changed by LV commands`,
    );
  }
  return lv;
}

/** The lowest lease slot no LV holds, so the lease areas of removed LVs are used again. */
function lowestFreeLeaseSlot(md: VgMetadata): number {
  const taken = new Set(md.lvs.map((lv) => lv.leaseSlot));
  let slot = 1;
  while (taken.has(slot)) {
    slot += 1;
  }
  return slot;
}

function checkNotMoving(md: VgMetadata, lv: LvRecord): void {
  if (md.move?.lvUuid === lv.uuid) {
    throw new TandemError(
      'MOVE_IN_PROGRESS',
      `a pv move step is copying extents of LV ${lv.name}; let it finish or abort it first`,
    );
  }
}

function checkedSegments(name: string, segments: LvSegment[]): LvSegment[] {
  if (segments.length > segmentsPerLvMax) {
    throw new TandemError(
      'VG_NO_SPACE',
      `the free space is too fragmented: LV ${name} would need ${segments.length} segments, ` +
        `over the limit of ${segmentsPerLvMax}; use policy contiguous or free larger runs`,
    );
  }
  return segments;
}

function checkedTags(tags: readonly string[]): string[] {
  for (const tag of tags) {
    const problem = tagProblem(tag);
    checkArgument(problem === undefined, `tag ${JSON.stringify(tag)} ${problem}`);
  }
  const unique = [...new Set(tags)];
  checkArgument(
    unique.length <= tagsPerLvMax,
    `an LV holds at most ${tagsPerLvMax} tags, not ${unique.length}`,
  );
  return unique;
}
