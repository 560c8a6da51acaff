/**
 * PV evacuation (pv move) as pure metadata steps. As LVM's pvmove, the extents move one step at
 * a time and each step is committed, so an interrupted move resumes where it stopped.
 *
 * The caller (holding the VG lock for each commit) loops:
 *
 *   const totalExtentCount = pvUsedExtents(md, source);  let movedExtentCount = 0;
 *   for (;;) {
 *     const step = planMoveStep(md, { ..., movedExtentCount, totalExtentCount });
 *     if (step === undefined) break;                     // the source PV holds no extents
 *     md = commit(beginMoveStep(md, step, context));     // target run reserved; writes mirrored
 *     copy(moveStepSourceRun(md, step) → the target run);
 *     md = commit(finishMoveStep(md, context));          // the LV now maps the target run
 *     movedExtentCount += moveStepSourceRun(...).extentCount;
 *   }
 *
 * After a crash with md.move set, the step is copied again from its start and finished (or
 * aborted with abortMoveStep, which leaves every mapping as it was); the loop then resumes with
 * the progress carried in that record. Between steps md.move is undefined: the caller marks the
 * source PV not allocatable before the first step (setPvAllocatable), so that no new LV or
 * extension lands on it while its move runs. Steps only go to allocatable PVs; a target named
 * explicitly that is not allocatable is refused.
 *
 * A step moves one run of one area of one segment, always from the segment's first LE: for a
 * linear segment up to maxStepExtents PEs; for a striped segment up to maxStepExtents PEs of the
 * first area on the source PV, which is `extentCount / stripes` PEs for the record's
 * `extentCount` LEs (whole rows). Finishing splits the segment at the step's row boundaries,
 * which keeps every byte where it was because a striped segment split at a multiple of its stripe
 * count maps the same chunks to the same places.
 *
 * Steps never move the hidden lockspace LV: every host of the VG writes it, and a step mirrors
 * only this host's writes. A lockspace move (lockspace-move-plan.ts) moves it, before the steps:
 * planning a step off a PV that still holds it is refused, and no step runs while a lockspace
 * move is recorded.
 */
import { TandemError } from '../errors.js';
import { freeExtentRuns } from './allocator.js';
import type { LvRecord, LvSegment, PvMoveRecord, VgMetadata } from './types.js';
import { segmentsPerLvMax } from './types.js';
import { commitChange, mergeSegments, replaceLv, type ChangeContext } from './vg-change.js';
import {
  areaExtentCount,
  describeLockspaceMove,
  findLvByUuid,
  lockspaceOnPv,
  pvUsedExtents,
  type ExtentRun,
} from './vg-queries.js';

/**
 * Extents per step by default: the most a crash makes the move copy again. Each step costs two
 * commits and a flush of the target, so larger steps move faster (bench/clvm: 32-extent steps
 * moved at 0.6× dd overwriting allocated blocks, 128-extent steps at 1.0×).
 */
export const moveStepExtentsDefault = 128;
/** The largest step a caller may ask for (16 GiB of 4 MiB extents). */
export const moveStepExtentsMax = 4096;

export interface MovePlanOptions {
  readonly sourcePvUuid: string;
  /** The PVs the extents may go to; empty means any other PV of the VG. */
  readonly targetPvUuids: readonly string[];
  /** The most PEs one step copies. */
  readonly maxStepExtents: number;
  readonly missingPvUuids?: readonly string[];
  /**
   * Progress carried from step to step by the caller: the source's used extents when the move
   * began, and those moved since (default: the total less what the source still holds).
   */
  readonly movedExtentCount?: number;
  readonly totalExtentCount?: number;
}

/** Where a step's data is on the source PV: the run the copier reads. */
export interface MoveSourceRun {
  readonly lv: LvRecord;
  readonly segmentIndex: number;
  readonly areaIndex: number;
  readonly pvExtentStart: number;
  /** PEs to copy (and to count as moved). */
  readonly extentCount: number;
}

/** The next step off the source PV, or undefined when no LV extent is left on it. */
export function planMoveStep(md: VgMetadata, options: MovePlanOptions): PvMoveRecord | undefined {
  checkPlanOptions(md, options);
  const found = firstAreaOnPv(md, options.sourcePvUuid);
  if (found === undefined) {
    return undefined;
  }
  const { lv, segmentIndex, areaIndex } = found;
  const segment = found.segment;
  const stripes = segment.areas.length;
  const wanted = Math.min(areaExtentCount(segment), options.maxStepExtents);
  const target = chooseTargetRun(md, options, lv, segmentIndex, areaIndex, wanted);
  const usedExtentCount = pvUsedExtents(md, options.sourcePvUuid);
  const movedExtentCount =
    options.movedExtentCount ?? Math.max(0, (options.totalExtentCount ?? 0) - usedExtentCount);
  const record: PvMoveRecord = {
    sourcePvUuid: options.sourcePvUuid,
    targetPvUuids: options.targetPvUuids,
    lvUuid: lv.uuid,
    lvExtentStart: segment.lvExtentStart,
    extentCount: target.extentCount * stripes,
    targetPvUuid: target.pvUuid,
    targetPvExtentStart: target.pvExtentStart,
    movedExtentCount,
    // Extents placed on the source during the move are moved too, so the total may grow.
    totalExtentCount: Math.max(options.totalExtentCount ?? 0, movedExtentCount + usedExtentCount),
  };
  const segmentCount = segmentsAfterStep(lv, record).length;
  if (segmentCount > segmentsPerLvMax) {
    throw new TandemError(
      'VG_NO_SPACE',
      `moving LV ${lv.name} would split it into ${segmentCount} segments, over the limit of ` +
        `${segmentsPerLvMax}; free a run of ${wanted} extents on a target PV`,
    );
  }
  return record;
}

/** Records the step: its target run is reserved and the data path mirrors writes to it. */
export function beginMoveStep(
  md: VgMetadata,
  record: PvMoveRecord,
  context: ChangeContext,
): VgMetadata {
  if (md.move !== undefined || md.lockspaceMove !== undefined) {
    throw moveInProgress(md);
  }
  const lv = findLvByUuid(md, record.lvUuid);
  if (lv?.hidden === true) {
    throw new TandemError(
      'FAILED_PRECONDITION',
      `a pv move step cannot move the lockspace LV ${lv.name}; a lockspace move moves it`,
    );
  }
  const free = freeExtentRuns(md).get(record.targetPvUuid) ?? [];
  const targetCount = record.extentCount / (segmentAt(lv, record.lvExtentStart)?.areas.length ?? 1);
  const targetEnd = record.targetPvExtentStart + targetCount;
  const target = md.pvs.find((pv) => pv.uuid === record.targetPvUuid);
  if (
    lv === undefined ||
    target?.allocatable !== true ||
    !free.some(
      (run) =>
        run.pvExtentStart <= record.targetPvExtentStart &&
        targetEnd <= run.pvExtentStart + run.extentCount,
    )
  ) {
    throw new TandemError(
      'FAILED_PRECONDITION',
      'the move step was planned on other metadata (its LV or target run changed, or the ' +
        'target PV is no longer allocatable); plan again',
    );
  }
  return commitChange(
    md,
    { move: record },
    `pv move ${lv.name} LE ${record.lvExtentStart}+${record.extentCount} to ` +
      `${record.targetPvUuid}:${record.targetPvExtentStart}`,
    context,
  );
}

/** Points the step's LEs at the copied target run and ends the step. */
export function finishMoveStep(md: VgMetadata, context: ChangeContext): VgMetadata {
  const move = md.move;
  const lv = move === undefined ? undefined : findLvByUuid(md, move.lvUuid);
  if (move === undefined || lv === undefined) {
    throw new TandemError('FAILED_PRECONDITION', `no pv move step runs in VG ${md.name}`);
  }
  const segments = segmentsAfterStep(lv, move);
  return commitChange(
    md,
    { ...replaceLv(md, { ...lv, segments }), move: undefined },
    `pv move ${lv.name} LE ${move.lvExtentStart}+${move.extentCount} done`,
    context,
  );
}

/** Ends the step without changing any mapping; the target run is free again. */
export function abortMoveStep(md: VgMetadata, context: ChangeContext): VgMetadata {
  if (md.move === undefined) {
    throw new TandemError('FAILED_PRECONDITION', `no pv move step runs in VG ${md.name}`);
  }
  return commitChange(md, { move: undefined }, 'pv move step aborted', context);
}

/** The source run of a step (as planned or as recorded in md.move) in `md`. */
export function moveStepSourceRun(md: VgMetadata, move: PvMoveRecord): MoveSourceRun {
  const lv = findLvByUuid(md, move.lvUuid);
  const segment = lv === undefined ? undefined : segmentAt(lv, move.lvExtentStart);
  const areaIndex = segment?.areas.findIndex((area) => area.pvUuid === move.sourcePvUuid) ?? -1;
  const area = segment?.areas[areaIndex];
  if (lv === undefined || segment === undefined || area === undefined) {
    throw new TandemError('FAILED_PRECONDITION', 'the move step does not match the metadata');
  }
  const stripes = segment.areas.length;
  return {
    lv,
    segmentIndex: lv.segments.indexOf(segment),
    areaIndex,
    pvExtentStart: area.pvExtentStart + (move.lvExtentStart - segment.lvExtentStart) / stripes,
    extentCount: move.extentCount / stripes,
  };
}

/**
 * The LV's segments once the step is done: the step's segment split into the rows before it, the
 * step's rows (with the moved area on the target) and the rows after it, merged where they
 * continue their neighbours.
 */
function segmentsAfterStep(lv: LvRecord, move: PvMoveRecord): LvSegment[] {
  const segment = segmentAt(lv, move.lvExtentStart);
  const areaIndex = segment?.areas.findIndex((area) => area.pvUuid === move.sourcePvUuid) ?? -1;
  if (segment === undefined || areaIndex < 0) {
    throw new TandemError('METADATA_INVALID', `the move step does not match LV ${lv.name}`);
  }
  const stripes = segment.areas.length;
  const rowsBefore = (move.lvExtentStart - segment.lvExtentStart) / stripes;
  const rowsMoved = move.extentCount / stripes;
  const piece = (firstRow: number, rowCount: number, moved: boolean): LvSegment => ({
    lvExtentStart: segment.lvExtentStart + firstRow * stripes,
    extentCount: rowCount * stripes,
    stripeSizeBytes: segment.stripeSizeBytes,
    areas: segment.areas.map((area, index) =>
      moved && index === areaIndex
        ? { pvUuid: move.targetPvUuid, pvExtentStart: move.targetPvExtentStart }
        : { pvUuid: area.pvUuid, pvExtentStart: area.pvExtentStart + firstRow },
    ),
  });
  const rowsAfter = areaExtentCount(segment) - rowsBefore - rowsMoved;
  const pieces = [
    ...(rowsBefore > 0 ? [piece(0, rowsBefore, false)] : []),
    piece(rowsBefore, rowsMoved, true),
    ...(rowsAfter > 0 ? [piece(rowsBefore + rowsMoved, rowsAfter, false)] : []),
  ];
  return mergeSegments(
    lv.segments.flatMap((candidate) => (candidate === segment ? pieces : [candidate])),
  );
}

/**
 * The target run for a step of `wanted` PEs: right after the same area of the previous segment
 * when that continues it (so the segments merge back), else a run that holds the whole step on
 * the PV with the most free space, else the largest free run (a shorter step).
 */
function chooseTargetRun(
  md: VgMetadata,
  options: MovePlanOptions,
  lv: LvRecord,
  segmentIndex: number,
  areaIndex: number,
  wanted: number,
): ExtentRun & { pvUuid: string } {
  const segment = lv.segments[segmentIndex];
  const allowed = new Set(
    options.targetPvUuids.length > 0 ? options.targetPvUuids : md.pvs.map((pv) => pv.uuid),
  );
  allowed.delete(options.sourcePvUuid);
  for (const pvUuid of options.missingPvUuids ?? []) {
    allowed.delete(pvUuid);
  }
  for (const pv of md.pvs) {
    if (!pv.allocatable) allowed.delete(pv.uuid);
  }
  // Two stripes of one segment on one PV would halve its bandwidth: keep them apart.
  segment?.areas.forEach((area, index) => index !== areaIndex && allowed.delete(area.pvUuid));
  const candidates = [...freeExtentRuns(md)]
    .filter(([pvUuid]) => allowed.has(pvUuid))
    .flatMap(([pvUuid, runs]) => runs.map((run) => ({ pvUuid, ...run })));
  const previousArea = lv.segments[segmentIndex - 1]?.areas[areaIndex];
  const previous = lv.segments[segmentIndex - 1];
  if (previous !== undefined && previousArea !== undefined) {
    const start = previousArea.pvExtentStart + areaExtentCount(previous);
    const run = candidates.find(
      (candidate) => candidate.pvUuid === previousArea.pvUuid && candidate.pvExtentStart === start,
    );
    if (run !== undefined) {
      return { ...run, extentCount: Math.min(wanted, run.extentCount) };
    }
  }
  const freeOf = (pvUuid: string): number =>
    candidates.reduce((sum, run) => sum + (run.pvUuid === pvUuid ? run.extentCount : 0), 0);
  const fitting = candidates
    .filter((run) => run.extentCount >= wanted)
    .sort((a, b) => freeOf(b.pvUuid) - freeOf(a.pvUuid));
  const largest = [...candidates].sort((a, b) => b.extentCount - a.extentCount)[0];
  const chosen = fitting[0] ?? largest;
  if (chosen === undefined) {
    throw new TandemError(
      'VG_NO_SPACE',
      `not enough free space: moving LV ${lv.name} off PV ${options.sourcePvUuid} needs free ` +
        `extents on another PV${segment !== undefined && segment.areas.length > 1 ? ' not holding another stripe of it' : ''}; ` +
        `${pvUsedExtents(md, options.sourcePvUuid)} extents are still to move and none are free ` +
        `on the allowed PVs${notAllocatableNote(md, options.sourcePvUuid)}; add a PV (vg extend) ` +
        'or free space',
    );
  }
  return { ...chosen, extentCount: Math.min(wanted, chosen.extentCount) };
}

function checkPlanOptions(md: VgMetadata, options: MovePlanOptions): void {
  if (md.move !== undefined || md.lockspaceMove !== undefined) {
    throw moveInProgress(md);
  }
  checkMovePvs(md, options);
  if (!Number.isSafeInteger(options.maxStepExtents) || options.maxStepExtents < 1) {
    throw new TandemError('INVALID_ARGUMENT', 'the move step size must be at least one extent');
  }
  if (options.missingPvUuids?.includes(options.sourcePvUuid) === true) {
    throw new TandemError(
      'VG_PARTIAL',
      `PV ${options.sourcePvUuid} is missing on this host, so its extents cannot be copied`,
    );
  }
  if (lockspaceOnPv(md, options.sourcePvUuid)) {
    throw new TandemError(
      'FAILED_PRECONDITION',
      `PV ${options.sourcePvUuid} holds the lockspace LV of VG ${md.name}; pv move steps never ` +
        'move it: move it off first (a lockspace move), then plan the steps',
    );
  }
}

/**
 * The source and target PVs of a move are PVs of the VG, the source is not a target, and every
 * target named is allocatable. Also for the caller to check before it changes anything.
 */
export function checkMovePvs(
  md: VgMetadata,
  options: Pick<MovePlanOptions, 'sourcePvUuid' | 'targetPvUuids'>,
): void {
  for (const pvUuid of [options.sourcePvUuid, ...options.targetPvUuids]) {
    if (!md.pvs.some((pv) => pv.uuid === pvUuid)) {
      throw new TandemError('PV_NOT_FOUND', `PV ${pvUuid} is not in VG ${md.name}`);
    }
  }
  if (options.targetPvUuids.includes(options.sourcePvUuid)) {
    throw new TandemError('INVALID_ARGUMENT', 'the source PV cannot also be a target PV');
  }
  const held = md.pvs.filter((pv) => options.targetPvUuids.includes(pv.uuid) && !pv.allocatable);
  if (held.length > 0) {
    throw new TandemError(
      'FAILED_PRECONDITION',
      `target PV ${held.map((pv) => `${pv.uuid} (${pv.deviceHint})`).join(', ')} is marked not ` +
        'allocatable; allow it first (pv change PATH --allocatable y) or name another target',
      { details: { pvUuids: held.map((pv) => pv.uuid) } },
    );
  }
}

/** " (PVs marked not allocatable are not used: …)" when the VG has such PVs besides the source. */
function notAllocatableNote(md: VgMetadata, sourcePvUuid: string): string {
  const held = md.pvs.filter((pv) => !pv.allocatable && pv.uuid !== sourcePvUuid);
  return held.length === 0
    ? ''
    : ` (PVs marked not allocatable are not used: ${held.map((pv) => pv.deviceHint).join(', ')})`;
}

/**
 * The first visible LV (in metadata order) and segment with an area on the PV, and that area.
 * The hidden lockspace LV is passed over: a step never moves it (checkPlanOptions refuses a
 * source that holds it; this keeps that true whatever a caller checked).
 */
function firstAreaOnPv(
  md: VgMetadata,
  pvUuid: string,
): { lv: LvRecord; segment: LvSegment; segmentIndex: number; areaIndex: number } | undefined {
  for (const lv of md.lvs.filter((candidate) => !candidate.hidden)) {
    for (const [segmentIndex, segment] of lv.segments.entries()) {
      const areaIndex = segment.areas.findIndex((area) => area.pvUuid === pvUuid);
      if (areaIndex >= 0) {
        return { lv, segment, segmentIndex, areaIndex };
      }
    }
  }
  return undefined;
}

function segmentAt(lv: LvRecord | undefined, lvExtent: number): LvSegment | undefined {
  return lv?.segments.find(
    (segment) =>
      segment.lvExtentStart <= lvExtent && lvExtent < segment.lvExtentStart + segment.extentCount,
  );
}

function moveInProgress(md: VgMetadata): TandemError {
  if (md.lockspaceMove !== undefined) {
    return new TandemError(
      'MOVE_IN_PROGRESS',
      `${describeLockspaceMove(md.lockspaceMove)} runs in VG ${md.name}; run pv move again to ` +
        'finish or abort it first',
    );
  }
  const lv = md.move === undefined ? undefined : findLvByUuid(md, md.move.lvUuid);
  return new TandemError(
    'MOVE_IN_PROGRESS',
    `a pv move step of LV ${lv?.name ?? '?'} runs in VG ${md.name}; finish or abort it first`,
  );
}
