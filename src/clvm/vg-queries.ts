/**
 * Read-only questions about VG metadata: which LV has a name, how big it is, which physical
 * extents are taken. Pure functions of a VgMetadata; vg-operations.ts re-exports them.
 */
import type {
  LockspaceMoveRecord,
  LvRecord,
  LvSegment,
  PvMoveRecord,
  VgMetadata,
} from './types.js';
import { lockspaceLvName } from './types.js';

/** A run of physical extents on one PV. */
export interface ExtentRun {
  readonly pvExtentStart: number;
  readonly extentCount: number;
}

/** A run of physical extents and what holds it, for the overlap check and error messages. */
export interface UsedExtentRun extends ExtentRun {
  /** "lv vm1-disk0 segment 2 area 0", "the pv move target" or "the lockspace move target ...". */
  readonly owner: string;
}

/** The PEs each area of a segment holds (a striped segment spreads its LEs over its areas). */
export function areaExtentCount(segment: LvSegment): number {
  return segment.extentCount / segment.areas.length;
}

/** The LV of that name, hidden LVs included (the lockspace code looks up lockspaceLvName). */
export function findLv(md: VgMetadata, name: string): LvRecord | undefined {
  return md.lvs.find((lv) => lv.name === name);
}

export function findLvByUuid(md: VgMetadata, uuid: string): LvRecord | undefined {
  return md.lvs.find((lv) => lv.uuid === uuid);
}

export function lvExtentCount(lv: LvRecord): number {
  let count = 0;
  for (const segment of lv.segments) {
    count += segment.extentCount;
  }
  return count;
}

export function lvSizeBytes(md: VgMetadata, lv: LvRecord): number {
  return lvExtentCount(lv) * md.extentSizeBytes;
}

/**
 * The PEs of a PV that LV segments hold. The runs a move reserves (a move step's target run, a
 * lockspace move's target segments) are not counted: pv move counts its progress with this on
 * its source PV, which neither kind of move ever targets.
 */
export function pvUsedExtents(md: VgMetadata, pvUuid: string): number {
  let count = 0;
  for (const lv of md.lvs) {
    for (const segment of lv.segments) {
      for (const area of segment.areas) {
        if (area.pvUuid === pvUuid) {
          count += areaExtentCount(segment);
        }
      }
    }
  }
  return count;
}

/** The LVs (hidden ones included) with at least one extent on the PV, in metadata order. */
export function lvsOnPv(md: VgMetadata, pvUuid: string): LvRecord[] {
  return md.lvs.filter((lv) => segmentsOnPv(lv.segments, pvUuid));
}

function segmentsOnPv(segments: readonly LvSegment[], pvUuid: string): boolean {
  return segments.some((segment) => segment.areas.some((area) => area.pvUuid === pvUuid));
}

/** Whether the hidden lockspace LV has an area on the PV. */
export function lockspaceOnPv(md: VgMetadata, pvUuid: string): boolean {
  const lockspace = findLv(md, lockspaceLvName);
  return lockspace !== undefined && segmentsOnPv(lockspace.segments, pvUuid);
}

/** Whether a lockspace move's target segments have an area on the PV. */
export function lockspaceMoveOnPv(record: LockspaceMoveRecord, pvUuid: string): boolean {
  return segmentsOnPv(record.segments, pvUuid);
}

/** "a lockspace move (epoch 7, run by host hv-01)", for the messages of refused changes. */
export function describeLockspaceMove(record: LockspaceMoveRecord): string {
  return `a lockspace move (epoch ${record.epoch}, run by host ${record.moverHostName})`;
}

/** The run a move step reserves on its target PV: as many PEs as one area of the step holds. */
export function moveTargetExtentCount(md: VgMetadata, move: PvMoveRecord): number {
  const segment = findLvByUuid(md, move.lvUuid)?.segments.find(
    (candidate) =>
      candidate.lvExtentStart <= move.lvExtentStart &&
      move.lvExtentStart < candidate.lvExtentStart + candidate.extentCount,
  );
  return segment === undefined ? move.extentCount : move.extentCount / segment.areas.length;
}

/**
 * Every used run per PV, sorted by start: LV areas, the move step's target run and the target
 * segments of a lockspace move (reserved until the move finishes or aborts). Runs of a valid VG
 * never overlap; validateVgMetadata uses this to prove it, and the allocator allocates only
 * around them.
 */
export function usedExtentRuns(md: VgMetadata): Map<string, UsedExtentRun[]> {
  const used = new Map<string, UsedExtentRun[]>();
  const add = (pvUuid: string, run: UsedExtentRun): void => {
    const runs = used.get(pvUuid);
    if (runs === undefined) {
      used.set(pvUuid, [run]);
    } else {
      runs.push(run);
    }
  };
  const addSegments = (segments: readonly LvSegment[], owner: string): void => {
    segments.forEach((segment, segmentIndex) => {
      segment.areas.forEach((area, areaIndex) => {
        add(area.pvUuid, {
          pvExtentStart: area.pvExtentStart,
          extentCount: areaExtentCount(segment),
          owner: `${owner} segment ${segmentIndex} area ${areaIndex}`,
        });
      });
    });
  };
  for (const lv of md.lvs) {
    addSegments(lv.segments, `lv ${lv.name}`);
  }
  if (md.move !== undefined) {
    add(md.move.targetPvUuid, {
      pvExtentStart: md.move.targetPvExtentStart,
      extentCount: moveTargetExtentCount(md, md.move),
      owner: 'the pv move target',
    });
  }
  if (md.lockspaceMove !== undefined) {
    addSegments(
      md.lockspaceMove.segments,
      `the lockspace move target (epoch ${md.lockspaceMove.epoch})`,
    );
  }
  for (const runs of used.values()) {
    runs.sort((a, b) => a.pvExtentStart - b.pvExtentStart);
  }
  return used;
}

/** PEs in the VG, and those neither in an LV nor reserved by a move (step or lockspace move). */
export function vgExtentTotals(md: VgMetadata): { extentCount: number; freeExtentCount: number } {
  let extentCount = 0;
  for (const pv of md.pvs) {
    extentCount += pv.extentCount;
  }
  let usedCount = 0;
  for (const runs of usedExtentRuns(md).values()) {
    for (const run of runs) {
      usedCount += run.extentCount;
    }
  }
  return { extentCount, freeExtentCount: extentCount - usedCount };
}
