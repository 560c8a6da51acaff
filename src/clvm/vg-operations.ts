/**
 * The changes users make to a VG, as pure functions: each takes VG metadata and returns the next
 * version (seqno + 1, who and when from a ChangeContext), checked by validateVgMetadata before it
 * is returned. Nothing here does I/O or mutates its input; volume-group.ts locks, reads, applies
 * one of these and commits the result.
 *
 * Bad requests are TandemErrors whose message says what to do; a result that breaks an
 * invariant is a bug and fails validation (METADATA_INVALID).
 *
 * The LV changes live in lv-operations.ts and PV evacuation (pv move) in move-planner.ts; this
 * module re-exports the LV changes, the queries and the validation, so callers need one import.
 */
import { TandemError, assert } from '../errors.js';
import { allocateExtents } from './allocator.js';
import { withoutLockspaceMove } from './lockspace-move-plan.js';
import type { LvRecord, LvSegment, PvRecord, VgMetadata } from './types.js';
import {
  extentSizeBytesMax,
  extentSizeBytesMin,
  lockspaceLvName,
  lvsPerVgMax,
  pvsPerVgMax,
  vgMetadataVersion,
} from './types.js';
import {
  checkArgument,
  checkName,
  commitChange,
  isPositiveInteger,
  type ChangeContext,
} from './vg-change.js';
import {
  areaExtentCount,
  describeLockspaceMove,
  findLv,
  lockspaceMoveOnPv,
  lvsOnPv,
  usedExtentRuns,
} from './vg-queries.js';
import { validateVgMetadata } from './vg-validate.js';

export {
  createLv,
  extendLv,
  reduceLv,
  removeLv,
  renameLv,
  setLvTags,
  type CreateLvSpec,
  type ExtendLvOptions,
} from './lv-operations.js';
export { commitChange, mergeSegments, type ChangeContext } from './vg-change.js';
export {
  areaExtentCount,
  findLv,
  findLvByUuid,
  lvExtentCount,
  lvSizeBytes,
  lvsOnPv,
  pvUsedExtents,
  vgExtentTotals,
} from './vg-queries.js';
export { validateVgMetadata } from './vg-validate.js';

export interface CreateVgOptions {
  readonly uuid: string;
  readonly name: string;
  readonly extentSizeBytes: number;
  readonly maxHosts: number;
  readonly ioTimeoutMs: number;
  /** The visible LVs the lockspace has lease room for. */
  readonly maxLvs: number;
  readonly pvs: readonly PvRecord[];
  /** The size of the hidden lockspace LV, rounded up to whole extents. */
  readonly lockspaceBytes: number;
  readonly lockspaceLvUuid: string;
  readonly context: ChangeContext;
}

/** A new VG at seqno 1 holding only its hidden lockspace LV, placed on the first PV if it fits. */
export function createVgMetadata(options: CreateVgOptions): VgMetadata {
  const { name, extentSizeBytes, pvs, context } = options;
  checkName('VG', name);
  checkArgument(
    Number.isSafeInteger(extentSizeBytes) &&
      extentSizeBytes >= extentSizeBytesMin &&
      extentSizeBytes <= extentSizeBytesMax &&
      extentSizeBytes % 4096 === 0,
    `the extent size must be a multiple of 4 KiB from ${extentSizeBytesMin} to ` +
      `${extentSizeBytesMax} bytes, not ${extentSizeBytes}`,
  );
  checkArgument(
    isPositiveInteger(options.maxHosts) && isPositiveInteger(options.ioTimeoutMs),
    'maxHosts and ioTimeoutMs must be positive integers',
  );
  checkArgument(
    isPositiveInteger(options.maxLvs) && options.maxLvs <= lvsPerVgMax,
    `the LV limit must be 1 to ${lvsPerVgMax}, not ${options.maxLvs}`,
  );
  checkArgument(
    pvs.length >= 1 && pvs.length <= pvsPerVgMax,
    `a VG needs 1 to ${pvsPerVgMax} PVs, not ${pvs.length}`,
  );
  checkArgument(new Set(pvs.map((pv) => pv.uuid)).size === pvs.length, 'a PV is given twice');
  checkArgument(isPositiveInteger(options.lockspaceBytes), 'lockspaceBytes must be positive');
  const draft: VgMetadata = {
    version: vgMetadataVersion,
    uuid: options.uuid,
    name,
    seqno: 1,
    extentSizeBytes,
    maxHosts: options.maxHosts,
    ioTimeoutMs: options.ioTimeoutMs,
    maxLvs: options.maxLvs,
    createdWallMs: context.wallMs,
    updatedWallMs: context.wallMs,
    updatedBy: context.updatedBy,
    lastChange: `vg create ${name}`,
    pvs,
    lvs: [],
    move: undefined,
  };
  const extentCount = Math.ceil(options.lockspaceBytes / extentSizeBytes);
  const firstPvUuid = pvs[0]?.uuid;
  let segments: LvSegment[];
  try {
    segments = allocateExtents(draft, {
      extentCount,
      stripes: 1,
      policy: 'contiguous',
      pvUuids: firstPvUuid === undefined ? [] : [firstPvUuid],
    });
  } catch (error) {
    if (!(error instanceof TandemError && error.code === 'VG_NO_SPACE')) {
      throw error;
    }
    // The first PV is too small for the whole lockspace: spread it, as LVM would.
    segments = allocateExtents(draft, { extentCount, stripes: 1, policy: 'normal' });
  }
  const lockspace: LvRecord = {
    uuid: options.lockspaceLvUuid,
    name: lockspaceLvName,
    hidden: true,
    tags: [],
    createdWallMs: context.wallMs,
    segments,
  };
  return validateVgMetadata({ ...draft, lvs: [lockspace] });
}
export function renameVg(md: VgMetadata, newName: string, context: ChangeContext): VgMetadata {
  checkName('VG', newName);
  checkArgument(newName !== md.name, `VG ${md.name} already has that name`);
  return commitChange(md, { name: newName }, `vg rename ${md.name} ${newName}`, context);
}

export function extendVg(
  md: VgMetadata,
  pvRecords: readonly PvRecord[],
  context: ChangeContext,
): VgMetadata {
  checkArgument(pvRecords.length > 0, 'give at least one PV to add');
  const given = new Set<string>();
  for (const pv of pvRecords) {
    if (md.pvs.some((member) => member.uuid === pv.uuid)) {
      throw new TandemError('PV_IN_USE', `PV ${pv.uuid} is already in VG ${md.name}`);
    }
    checkArgument(!given.has(pv.uuid), `PV ${pv.uuid} is given twice`);
    given.add(pv.uuid);
  }
  if (md.pvs.length + pvRecords.length > pvsPerVgMax) {
    throw new TandemError(
      'FAILED_PRECONDITION',
      `VG ${md.name} would hold ${md.pvs.length + pvRecords.length} PVs; the limit is ` +
        `${pvsPerVgMax}`,
    );
  }
  const pvs = [...md.pvs, ...pvRecords];
  const names = pvRecords.map((pv) => pv.deviceHint).join(' ');
  return commitChange(md, { pvs }, `vg extend ${md.name} ${names}`, context);
}

/** Removes an empty PV from the VG; a PV holding extents must be evacuated first (pv move). */
export function reduceVg(md: VgMetadata, pvUuid: string, context: ChangeContext): VgMetadata {
  const pv = md.pvs.find((member) => member.uuid === pvUuid);
  if (pv === undefined) {
    throw new TandemError('PV_NOT_FOUND', `PV ${pvUuid} is not in VG ${md.name}`);
  }
  if (md.move !== undefined && [md.move.sourcePvUuid, md.move.targetPvUuid].includes(pvUuid)) {
    throw new TandemError(
      'MOVE_IN_PROGRESS',
      `a pv move step uses PV ${pvUuid}; let it finish or abort it first`,
    );
  }
  checkNoLockspaceMoveOn(md, pvUuid);
  const users = lvsOnPv(md, pvUuid).map((lv) => lv.name);
  if (users.length > 0) {
    throw new TandemError(
      'PV_IN_USE',
      `PV ${pvUuid} holds extents of LV ${users.join(', ')}; move them off (pv move) first`,
      { details: { lvNames: users } },
    );
  }
  const pvs = md.pvs.filter((member) => member !== pv);
  return commitChange(md, { pvs }, `vg reduce ${md.name} ${pv.deviceHint}`, context);
}

/** vg reduce waits for a lockspace move that empties the PV or fills it. */
function checkNoLockspaceMoveOn(md: VgMetadata, pvUuid: string): void {
  const record = md.lockspaceMove;
  if (record === undefined) {
    return;
  }
  const how = lockspaceMoveOnPv(record, pvUuid)
    ? 'moved onto it'
    : record.sourcePvUuid === pvUuid
      ? 'moved off it'
      : undefined;
  if (how !== undefined) {
    throw new TandemError(
      'MOVE_IN_PROGRESS',
      `PV ${pvUuid} is in use: the lockspace LV is being ${how} (${describeLockspaceMove(record)}); ` +
        'run pv move again to finish or abort that move first',
    );
  }
}

/**
 * Whether new extents may be allocated on a PV (pvchange -x y|n); the extents on it stay. Returns
 * `md` itself, with no new seqno, when the PV already is in that state: nothing to commit.
 */
export function setPvAllocatable(
  md: VgMetadata,
  pvUuid: string,
  allocatable: boolean,
  context: ChangeContext,
): VgMetadata {
  const pv = md.pvs.find((member) => member.uuid === pvUuid);
  if (pv === undefined) {
    throw new TandemError('PV_NOT_FOUND', `PV ${pvUuid} is not in VG ${md.name}`);
  }
  if (pv.allocatable === allocatable) {
    return md;
  }
  const pvs = md.pvs.map((member) => (member === pv ? { ...pv, allocatable } : member));
  return commitChange(
    md,
    { pvs },
    `pv change ${pv.deviceHint} allocatable ${allocatable ? 'y' : 'n'}`,
    context,
  );
}

/**
 * The first step of vg remove: marks a VG without user LVs as being removed, so every host leaves
 * its lockspace before the PVs are wiped. No change is accepted after it.
 */
export function markRemoving(md: VgMetadata, context: ChangeContext): VgMetadata {
  const userLvs = md.lvs.filter((lv) => !lv.hidden).map((lv) => lv.name);
  if (userLvs.length > 0) {
    throw new TandemError(
      'FAILED_PRECONDITION',
      `VG ${md.name} still has LV ${userLvs.slice(0, 5).join(', ')}; remove them first`,
    );
  }
  if (md.move !== undefined) {
    throw new TandemError('MOVE_IN_PROGRESS', `a pv move step runs in VG ${md.name}; abort it`);
  }
  if (md.lockspaceMove !== undefined) {
    throw new TandemError(
      'MOVE_IN_PROGRESS',
      `${describeLockspaceMove(md.lockspaceMove)} runs in VG ${md.name}; run pv move again to ` +
        'finish or abort it',
    );
  }
  return commitChange(md, { removing: true }, `vg remove ${md.name}`, context);
}

/**
 * Makes an older version of the VG current again: its body, with the next seqno, except the
 * lockspace's place. The hidden lockspace LV keeps its current segments, and no lockspace move
 * record comes back: where the lockspace is is not user data, and an older place would point
 * every host at stale lease data.
 */
export function restoreVersion(
  current: VgMetadata,
  old: VgMetadata,
  context: ChangeContext,
): VgMetadata {
  checkArgument(
    old.uuid === current.uuid,
    `the version to restore is of VG ${old.uuid}, not of VG ${current.uuid}`,
  );
  if (current.move !== undefined) {
    throw new TandemError(
      'MOVE_IN_PROGRESS',
      `a pv move step runs in VG ${current.name}; let it finish or abort it first`,
    );
  }
  if (current.lockspaceMove !== undefined) {
    throw new TandemError(
      'MOVE_IN_PROGRESS',
      `${describeLockspaceMove(current.lockspaceMove)} runs in VG ${current.name}; run pv move ` +
        'again to finish or abort it first',
    );
  }
  validateVgMetadata(old);
  const lockspace = findLv(current, lockspaceLvName);
  assert(lockspace !== undefined, 'valid VG metadata has a lockspace LV');
  checkLockspacePlaceFree(old, lockspace.segments);
  const lvs = old.lvs.map((lv) => (lv.hidden ? lockspace : lv));
  return commitChange(
    current,
    { ...withoutLockspaceMove(old), lvs },
    `vg restore seqno ${old.seqno}`,
    context,
  );
}

/**
 * The old version must have room for the lockspace where it is now: its PVs, and no LV (or move
 * step target) of the old version on those extents, which happens when the lockspace moved
 * after that version was current.
 */
function checkLockspacePlaceFree(old: VgMetadata, segments: readonly LvSegment[]): void {
  const others = usedExtentRuns({
    ...withoutLockspaceMove(old),
    lvs: old.lvs.filter((lv) => !lv.hidden),
  });
  for (const segment of segments) {
    const count = areaExtentCount(segment);
    for (const area of segment.areas) {
      const pv = old.pvs.find((candidate) => candidate.uuid === area.pvUuid);
      if (pv === undefined || area.pvExtentStart + count > pv.extentCount) {
        throw new TandemError(
          'FAILED_PRECONDITION',
          `the lockspace LV is now on PV ${area.pvUuid}, which the version of seqno ${old.seqno} ` +
            'does not have (or has smaller); the lockspace stays where it is, so restore a ' +
            'later version',
        );
      }
      const clash = (others.get(area.pvUuid) ?? []).find(
        (run) =>
          run.pvExtentStart < area.pvExtentStart + count &&
          area.pvExtentStart < run.pvExtentStart + run.extentCount,
      );
      if (clash !== undefined) {
        throw new TandemError(
          'FAILED_PRECONDITION',
          `the version of seqno ${old.seqno} has ${clash.owner} on PV ${area.pvUuid} extents ` +
            `${clash.pvExtentStart}-${clash.pvExtentStart + clash.extentCount - 1}, where the ` +
            'lockspace LV is now (it moved after that version); the lockspace stays where it ' +
            'is, so that version cannot be restored',
        );
      }
    }
  }
}
