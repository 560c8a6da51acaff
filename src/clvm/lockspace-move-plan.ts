/**
 * Moving the hidden lockspace LV (pv move of the PV that holds it) as pure metadata steps; the
 * protocol around them is docs/adr/0002-moving-the-lockspace-lv.md. The mover, holding the VG
 * lock exclusive, commits:
 *
 *   M1  = beginLockspaceMove(md, { sourcePvUuid, ..., mover }, context)  // NEW reserved
 *         ... every live host in move mode, OLD copied to NEW, OLD's header says forwarded E ...
 *   M2  = finishLockspaceMove(M1, context, E)    // the LV maps NEW; OLD's extents are free
 *   or, before the commit point (OLD's header says aborted E):
 *   M1' = abortLockspaceMove(M1, context, E)     // NEW is free again; the LV stays on OLD
 *
 * The record's epoch E is the seqno M1 gets, so two moves of one VG never share an epoch. While
 * the record exists its segments are reserved (usedExtentRuns counts them), no pv move step is
 * planned or begun, and vg remove and vg restore are refused; a crash keeps the record, and
 * whoever opens the lockspace next decides from OLD's header which of M2 and M1' to commit.
 */
import { TandemError, assert, isTandemError } from '../errors.js';
import { allocateExtents, type AllocationRequest } from './allocator.js';
import { checkMovePvs } from './move-planner.js';
import type { LockspaceMoveRecord, LvSegment, VgMetadata } from './types.js';
import { lockspaceLvName } from './types.js';
import { checkArgument, commitChange, mergeSegments, replaceLv } from './vg-change.js';
import type { ChangeContext } from './vg-change.js';
import {
  describeLockspaceMove,
  findLv,
  findLvByUuid,
  lockspaceOnPv,
  lvExtentCount,
} from './vg-queries.js';
import { lockspaceMoverProblem, type LockspaceMover } from './vg-validate.js';

export { lockspaceOnPv } from './vg-queries.js';
export type { LockspaceMover } from './vg-validate.js';

export interface BeginLockspaceMoveOptions {
  /** The PV to move the lockspace LV off; it must hold some of it. */
  readonly sourcePvUuid: string;
  /** The PVs the lockspace LV may go to; empty means any other PV of the VG. */
  readonly targetPvUuids: readonly string[];
  /** PVs this host cannot reach: never allocated on; the source may not be one. */
  readonly missingPvUuids: readonly string[];
  /** This host, as it holds its host id in the VG's lockspace now. */
  readonly mover: LockspaceMover;
}

/** The segments the lockspace LV moves to, or undefined when no lockspace move is recorded. */
export function lockspaceMoveSegments(md: VgMetadata): readonly LvSegment[] | undefined {
  return md.lockspaceMove?.segments;
}

/**
 * M1: reserves as many free extents as the lockspace LV has, off the source PV (one run when
 * there is one), and records the move with its epoch and mover. MOVE_IN_PROGRESS while a move
 * of either kind is recorded; INVALID_ARGUMENT when the source does not hold the lockspace LV;
 * VG_NO_SPACE when the extents are not free where they may go.
 */
export function beginLockspaceMove(
  md: VgMetadata,
  options: BeginLockspaceMoveOptions,
  context: ChangeContext,
): VgMetadata {
  refuseRunningMove(md);
  // PVs of the VG, the source not among the targets, every target named allocatable.
  checkMovePvs(md, options);
  const moverProblem = lockspaceMoverProblem(md, options.mover);
  checkArgument(moverProblem === undefined, `the mover of a lockspace move: ${moverProblem}`);
  const source = md.pvs.find((pv) => pv.uuid === options.sourcePvUuid);
  assert(source !== undefined, 'checkMovePvs found the source PV');
  checkArgument(
    lockspaceOnPv(md, source.uuid),
    `PV ${source.uuid} (${source.deviceHint}) does not hold the lockspace LV of VG ${md.name}`,
  );
  if (options.missingPvUuids.includes(source.uuid)) {
    throw new TandemError(
      'VG_PARTIAL',
      `PV ${source.uuid} is missing on this host, so the lockspace LV cannot be copied off it`,
    );
  }
  const lockspace = findLv(md, lockspaceLvName);
  assert(lockspace !== undefined, 'valid VG metadata has a lockspace LV');
  const segments = allocateTarget(md, options, lvExtentCount(lockspace));
  // The seqno this commit gets, so the epoch names this move and no other.
  const epoch = md.seqno + 1;
  const record: LockspaceMoveRecord = {
    epoch,
    sourcePvUuid: source.uuid,
    segments,
    moverHostId: options.mover.hostId,
    moverGeneration: options.mover.generation,
    moverHostName: options.mover.hostName,
  };
  return commitChange(
    md,
    { lockspaceMove: record },
    `lockspace move begins (epoch ${epoch}) off ${source.deviceHint}`,
    context,
  );
}

/**
 * M2, after the commit point: the lockspace LV maps the record's segments and the record is
 * cleared, which frees the extents it used before. `epoch`, when given, must be the record's:
 * a caller that read `forwarded E` in OLD's header finishes move E and no other.
 */
export function finishLockspaceMove(
  md: VgMetadata,
  context: ChangeContext,
  epoch?: number,
): VgMetadata {
  const record = recordedMove(md, epoch, 'finish');
  const lockspace = findLv(md, lockspaceLvName);
  assert(lockspace !== undefined, 'valid VG metadata has a lockspace LV');
  return commitChange(
    withoutLockspaceMove(md),
    replaceLv(md, { ...lockspace, segments: record.segments }),
    `lockspace move done (epoch ${record.epoch})`,
    context,
  );
}

/**
 * M1': the record is cleared and its extents are free again; the lockspace LV stays where it
 * was. `epoch`, when given, must be the record's.
 */
export function abortLockspaceMove(
  md: VgMetadata,
  context: ChangeContext,
  epoch?: number,
): VgMetadata {
  const record = recordedMove(md, epoch, 'abort');
  return commitChange(
    withoutLockspaceMove(md),
    {},
    `lockspace move aborted (epoch ${record.epoch})`,
    context,
  );
}

/**
 * The metadata without its lockspace move record: the field left out rather than undefined, as
 * decoding gives it, so that a committed version equals the one read back.
 */
export function withoutLockspaceMove(md: VgMetadata): VgMetadata {
  const copy: { -readonly [K in keyof VgMetadata]: VgMetadata[K] } = { ...md };
  delete copy.lockspaceMove;
  return copy;
}

function refuseRunningMove(md: VgMetadata): void {
  if (md.lockspaceMove !== undefined) {
    throw new TandemError(
      'MOVE_IN_PROGRESS',
      `${describeLockspaceMove(md.lockspaceMove)} runs in VG ${md.name}; run pv move again ` +
        'to finish or abort it first',
    );
  }
  if (md.move !== undefined) {
    const lvName = findLvByUuid(md, md.move.lvUuid)?.name ?? md.move.lvUuid;
    throw new TandemError(
      'MOVE_IN_PROGRESS',
      `a pv move step of LV ${lvName} runs in VG ${md.name}; let it finish or abort it first`,
    );
  }
}

function recordedMove(
  md: VgMetadata,
  epoch: number | undefined,
  verb: 'finish' | 'abort',
): LockspaceMoveRecord {
  const record = md.lockspaceMove;
  if (record === undefined) {
    throw new TandemError(
      'FAILED_PRECONDITION',
      `no lockspace move is recorded in VG ${md.name}; nothing to ${verb}`,
    );
  }
  if (epoch !== undefined && record.epoch !== epoch) {
    throw new TandemError(
      'FAILED_PRECONDITION',
      `cannot ${verb} the lockspace move of epoch ${epoch}: VG ${md.name} records ` +
        `${describeLockspaceMove(record)}`,
    );
  }
  return record;
}

/**
 * Free extents for the whole lockspace LV, never on the source, missing or not allocatable PVs:
 * one run if any PV has one (a lockspace in one piece), else as the normal policy finds them.
 */
function allocateTarget(
  md: VgMetadata,
  options: BeginLockspaceMoveOptions,
  extentCount: number,
): LvSegment[] {
  const request: Omit<AllocationRequest, 'policy'> = {
    extentCount,
    stripes: 1,
    ...(options.targetPvUuids.length > 0 ? { pvUuids: options.targetPvUuids } : {}),
    excludePvUuids: [options.sourcePvUuid],
    missingPvUuids: options.missingPvUuids,
    lvExtentStart: 0,
  };
  try {
    return allocateExtents(md, { ...request, policy: 'contiguous' });
  } catch (error) {
    if (!isTandemError(error, 'VG_NO_SPACE')) throw error;
  }
  try {
    return mergeSegments(allocateExtents(md, { ...request, policy: 'normal' }));
  } catch (error) {
    if (!isTandemError(error, 'VG_NO_SPACE')) throw error;
    const where = options.targetPvUuids.length > 0 ? 'on the target PVs' : 'on the other PVs';
    const source = md.pvs.find((pv) => pv.uuid === options.sourcePvUuid);
    throw new TandemError(
      'VG_NO_SPACE',
      `the lockspace LV of VG ${md.name} needs ${extentCount} free extents ${where} to move ` +
        `off ${source?.deviceHint ?? `PV ${options.sourcePvUuid}`}: ${error.message}`,
      { cause: error, details: error.details },
    );
  }
}
