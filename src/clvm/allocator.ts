/**
 * The extent allocator: which free physical extents a new or growing LV gets. Pure: it reads a
 * VgMetadata and returns segments; vg-operations.ts puts them into the LV.
 *
 * Policies, as LVM's:
 * - `normal`: when extending, first the free run right after the LV's last segment (so the
 *   segment simply grows); then one run that holds the rest, on the PV with the most free space;
 *   else the largest run, and again. The stripes of one segment sit on different PVs.
 * - `contiguous`: the new extents are one run per stripe (on different PVs) and, when extending,
 *   continue the last segment on its PVs.
 * - `anywhere`: as normal, but two stripes of a segment may share a PV when that gives a larger
 *   segment (or when there are fewer PVs with free space than stripes).
 *
 * PVs marked not allocatable (`pv change --allocatable n`, and the source of a pv move) are
 * never allocated on, as excluded and missing ones; a VG_NO_SPACE message counts the free extents
 * they hold, so that a user knows where the space went.
 *
 * Rounding: the caller rounds a striped request up to a multiple of the stripe count (see
 * roundUpToStripes); the allocator asserts it, so every segment it returns maps whole rows.
 */
import { assert, TandemError } from '../errors.js';
import type { AllocationPolicy, LvRecord, LvSegment, SegmentArea, VgMetadata } from './types.js';
import { stripeSizeBytesDefault, stripesMax } from './types.js';
import { areaExtentCount, lvExtentCount, usedExtentRuns, type ExtentRun } from './vg-queries.js';

export interface AllocationRequest {
  /** Logical extents to allocate; a multiple of `stripes`. */
  readonly extentCount: number;
  /** 1 for linear. */
  readonly stripes: number;
  /** For stripes ≥ 2 (default stripeSizeBytesDefault); linear segments always get 0. */
  readonly stripeSizeBytes?: number;
  readonly policy: AllocationPolicy;
  /** The PVs allowed (those not allocatable are left out); all PVs of the VG when absent. */
  readonly pvUuids?: readonly string[];
  readonly excludePvUuids?: readonly string[];
  /** PVs this host cannot reach: never allocated on, whatever the other lists say. */
  readonly missingPvUuids?: readonly string[];
  /** The LV being extended: the new extents continue its last segment when they can. */
  readonly after?: LvRecord;
  /** The first LE of the returned segments; default the extent count of `after`, else 0. */
  readonly lvExtentStart?: number;
}

/** One striped (or linear) row of the allocation: `areaExtentCount` PEs on each area. */
interface AllocatedRow {
  readonly areaExtentCount: number;
  readonly areas: readonly SegmentArea[];
}

/** Free runs of one PV during an allocation; taken runs are cut out as rows are chosen. */
interface PvFreeSpace {
  readonly pvUuid: string;
  runs: ExtentRun[];
}

/** The smallest multiple of `stripes` at or above `extentCount` (LVM rounds striped sizes up). */
export function roundUpToStripes(extentCount: number, stripes: number): number {
  return Math.ceil(extentCount / stripes) * stripes;
}

/**
 * Free runs per PV (every PV of the VG has an entry, maybe empty), sorted by start. Extents held
 * by any LV (hidden ones too) and the target run of a move step are not free.
 */
export function freeExtentRuns(md: VgMetadata): Map<string, ExtentRun[]> {
  const used = usedExtentRuns(md);
  const free = new Map<string, ExtentRun[]>();
  for (const pv of md.pvs) {
    const runs: ExtentRun[] = [];
    let cursor = 0;
    for (const run of used.get(pv.uuid) ?? []) {
      if (run.pvExtentStart > cursor) {
        runs.push({ pvExtentStart: cursor, extentCount: run.pvExtentStart - cursor });
      }
      cursor = Math.max(cursor, run.pvExtentStart + run.extentCount);
    }
    if (pv.extentCount > cursor) {
      runs.push({ pvExtentStart: cursor, extentCount: pv.extentCount - cursor });
    }
    free.set(pv.uuid, runs);
  }
  return free;
}

/**
 * Chooses free extents for `request.extentCount` LEs and returns them as segments (not yet
 * merged with `after`'s last one). Throws VG_NO_SPACE when the policy cannot be met, saying how
 * many extents were needed, how many are free, and what was missing.
 */
export function allocateExtents(md: VgMetadata, request: AllocationRequest): LvSegment[] {
  const { extentCount, stripes, policy } = request;
  assert(Number.isSafeInteger(stripes) && stripes >= 1 && stripes <= stripesMax, 'stripe count');
  assert(
    Number.isSafeInteger(extentCount) && extentCount > 0 && extentCount % stripes === 0,
    `extent count ${extentCount} must be a positive multiple of the stripe count ${stripes}`,
  );
  const stripeSizeBytes = stripes === 1 ? 0 : (request.stripeSizeBytes ?? stripeSizeBytesDefault);
  const { space, heldBack } = candidateFreeSpace(md, request);
  const noSpace = (message: string, details: Record<string, unknown>): TandemError =>
    noSpaceError(`${message}${heldBack}`, details);
  const freeCount = space.reduce((sum, pv) => sum + freeOf(pv), 0);
  const scope =
    request.pvUuids !== undefined
      ? 'on the allowed PVs'
      : heldBack === ''
        ? `in VG ${md.name}`
        : `on the allocatable PVs of VG ${md.name}`;
  if (freeCount < extentCount) {
    throw noSpace(`needs ${extentCount} free extents, only ${freeCount} are free ${scope}`, {
      neededExtentCount: extentCount,
      freeExtentCount: freeCount,
    });
  }
  const rows: AllocatedRow[] = [];
  let remaining = extentCount / stripes;
  const continued = continueLastSegment(space, request, stripeSizeBytes, remaining);
  if (continued !== undefined) {
    rows.push(continued);
    remaining -= continued.areaExtentCount;
  }
  const extending = (request.after?.segments.length ?? 0) > 0;
  if (policy === 'contiguous' && remaining > 0) {
    if (extending) {
      throw noSpace(
        `contiguous extension needs ${extentCount} free extents right after the LV's last ` +
          `segment on its PV(s); only ${extentCount - remaining * stripes} are free there ` +
          `(${freeCount} free ${scope}); use policy normal to allow a new segment`,
        { neededExtentCount: extentCount, freeExtentCount: freeCount },
      );
    }
    rows.push(contiguousRow(space, stripes, remaining, { extentCount, freeCount, noSpace }));
    remaining = 0;
  }
  while (remaining > 0) {
    const row = nextRow(space, stripes, remaining, policy === 'anywhere');
    if (row === undefined) {
      const withFree = space.filter((pv) => freeOf(pv) > 0).length;
      throw noSpace(
        `needs ${extentCount} extents in ${stripes} stripes on ${stripes} different PVs; ` +
          `${freeCount} extents are free ${scope}, but after placing ` +
          `${extentCount / stripes - remaining} extents per stripe only ${withFree} PVs have ` +
          `free extents left; add PVs or use policy anywhere`,
        { neededExtentCount: extentCount, freeExtentCount: freeCount },
      );
    }
    rows.push(row);
    remaining -= row.areaExtentCount;
  }
  return toSegments(rows, stripeSizeBytes, request);
}

/**
 * The free runs the request may use: on the allowed PVs, less the excluded, missing and not
 * allocatable ones. `heldBack` names the allowed PVs with free extents that are not allocatable,
 * for the VG_NO_SPACE message.
 */
function candidateFreeSpace(
  md: VgMetadata,
  request: AllocationRequest,
): { space: PvFreeSpace[]; heldBack: string } {
  const known = new Set(md.pvs.map((pv) => pv.uuid));
  for (const pvUuid of request.pvUuids ?? []) {
    if (!known.has(pvUuid)) {
      throw new TandemError('PV_NOT_FOUND', `PV ${pvUuid} is not in VG ${md.name}`, {
        details: { pvUuid },
      });
    }
  }
  const allowed = new Set(request.pvUuids ?? known);
  for (const pvUuid of [...(request.excludePvUuids ?? []), ...(request.missingPvUuids ?? [])]) {
    allowed.delete(pvUuid);
  }
  const notAllocatable = new Set(md.pvs.filter((pv) => !pv.allocatable).map((pv) => pv.uuid));
  const space: PvFreeSpace[] = [];
  const held: PvFreeSpace[] = [];
  for (const [pvUuid, runs] of freeExtentRuns(md)) {
    if (allowed.has(pvUuid)) {
      (notAllocatable.has(pvUuid) ? held : space).push({ pvUuid, runs });
    }
  }
  return { space, heldBack: heldBackNote(md, held) };
}

/** "; 12 more free extents are on PVs marked not allocatable: …", or "" when there are none. */
function heldBackNote(md: VgMetadata, held: readonly PvFreeSpace[]): string {
  const withFree = held.filter((pv) => freeOf(pv) > 0);
  if (withFree.length === 0) {
    return '';
  }
  const count = withFree.reduce((sum, pv) => sum + freeOf(pv), 0);
  const names = withFree.map((pv) => {
    const hint = md.pvs.find((candidate) => candidate.uuid === pv.pvUuid)?.deviceHint;
    return `PV ${pv.pvUuid}${hint === undefined ? '' : ` (${hint})`}`;
  });
  return (
    `; ${count} more free extents are on PVs marked not allocatable: ${names.join(', ')} ` +
    '(pv change PATH --allocatable y allows them)'
  );
}

/** The row that grows the LV's last segment in place, if every one of its areas can grow. */
function continueLastSegment(
  space: PvFreeSpace[],
  request: AllocationRequest,
  stripeSizeBytes: number,
  remaining: number,
): AllocatedRow | undefined {
  const last = request.after?.segments.at(-1);
  if (
    last === undefined ||
    last.areas.length !== request.stripes ||
    last.stripeSizeBytes !== stripeSizeBytes
  ) {
    return undefined;
  }
  let count = remaining;
  const areas: SegmentArea[] = [];
  for (const area of last.areas) {
    const pvExtentStart = area.pvExtentStart + areaExtentCount(last);
    const run = space
      .find((pv) => pv.pvUuid === area.pvUuid)
      ?.runs.find((candidate) => candidate.pvExtentStart === pvExtentStart);
    if (run === undefined) {
      return undefined;
    }
    count = Math.min(count, run.extentCount);
    areas.push({ pvUuid: area.pvUuid, pvExtentStart });
  }
  return take(space, { areaExtentCount: count, areas });
}

/** One row whose areas are each a single run on different PVs, holding all `count` PEs. */
function contiguousRow(
  space: PvFreeSpace[],
  stripes: number,
  count: number,
  failure: {
    readonly extentCount: number;
    readonly freeCount: number;
    readonly noSpace: (message: string, details: Record<string, unknown>) => TandemError;
  },
): AllocatedRow {
  const { extentCount, freeCount, noSpace } = failure;
  const fitting = byFreeDescending(space.filter((pv) => largestRun(pv) >= count));
  if (fitting.length < stripes) {
    const largest = Math.max(0, ...space.map(largestRun));
    const why =
      stripes === 1
        ? `one run of ${count} free extents; the largest free run is ${largest}`
        : `${stripes} PVs with ${count} contiguous free extents each, only ${fitting.length} have`;
    throw noSpace(`contiguous allocation of ${extentCount} extents needs ${why}`, {
      neededExtentCount: extentCount,
      freeExtentCount: freeCount,
    });
  }
  return take(space, {
    areaExtentCount: count,
    areas: fitting.slice(0, stripes).map((pv) => ({
      pvUuid: pv.pvUuid,
      pvExtentStart: firstRunOf(pv, count).pvExtentStart,
    })),
  });
}

/**
 * The next row of a normal or anywhere allocation, or undefined when fewer PVs than stripes have
 * free extents (anywhere never returns undefined while enough extents are free).
 */
function nextRow(
  space: PvFreeSpace[],
  stripes: number,
  remaining: number,
  anywhere: boolean,
): AllocatedRow | undefined {
  const distinct = distinctPvRow(space, stripes, remaining);
  if (!anywhere || stripes === 1) {
    return distinct === undefined ? undefined : take(space, distinct);
  }
  const shared = sharedPvRow(space, stripes, remaining);
  const row =
    distinct !== undefined && distinct.areaExtentCount >= shared.areaExtentCount
      ? distinct
      : shared;
  return take(space, row);
}

/**
 * Stripes on different PVs: the PVs with the most free space among those with a run for the
 * whole rest; else the largest run (linear) or the PVs with the most free space (striped, which
 * keeps the most room for later rows), as many PEs as their smallest largest run holds.
 */
function distinctPvRow(
  space: PvFreeSpace[],
  stripes: number,
  remaining: number,
): AllocatedRow | undefined {
  const fitting = byFreeDescending(space.filter((pv) => largestRun(pv) >= remaining));
  if (fitting.length >= stripes) {
    return {
      areaExtentCount: remaining,
      areas: fitting.slice(0, stripes).map((pv) => ({
        pvUuid: pv.pvUuid,
        pvExtentStart: firstRunOf(pv, remaining).pvExtentStart,
      })),
    };
  }
  const withFree = byFreeDescending(space.filter((pv) => freeOf(pv) > 0));
  if (withFree.length < stripes) {
    return undefined;
  }
  const chosen =
    stripes === 1
      ? [withFree.reduce((best, pv) => (largestRun(pv) > largestRun(best) ? pv : best))]
      : withFree.slice(0, stripes);
  const runs = chosen.map((pv) => ({ pvUuid: pv.pvUuid, run: firstRunOf(pv, largestRun(pv)) }));
  return {
    areaExtentCount: Math.min(remaining, ...runs.map(({ run }) => run.extentCount)),
    areas: runs.map(({ pvUuid, run }) => ({ pvUuid, pvExtentStart: run.pvExtentStart })),
  };
}

/** Stripes carved from the largest runs wherever they are, several from one run if need be. */
function sharedPvRow(space: PvFreeSpace[], stripes: number, remaining: number): AllocatedRow {
  const runs = space
    .flatMap((pv) => pv.runs.map((run) => ({ pvUuid: pv.pvUuid, run })))
    .sort((a, b) => b.run.extentCount - a.run.extentCount);
  const pieces = (count: number): number =>
    runs.reduce((sum, { run }) => sum + Math.floor(run.extentCount / count), 0);
  // The largest area size that still gives one piece per stripe: pieces() falls as size grows.
  let low = 1;
  let high = remaining;
  assert(pieces(low) >= stripes, 'enough free extents for one row');
  while (low < high) {
    const middle = Math.ceil((low + high) / 2);
    if (pieces(middle) >= stripes) {
      low = middle;
    } else {
      high = middle - 1;
    }
  }
  const areas: SegmentArea[] = [];
  for (const { pvUuid, run } of runs) {
    for (let offset = 0; offset + low <= run.extentCount && areas.length < stripes; offset += low) {
      areas.push({ pvUuid, pvExtentStart: run.pvExtentStart + offset });
    }
  }
  return { areaExtentCount: low, areas };
}

/** Cuts the row's runs out of the free space and returns the row. */
function take(space: PvFreeSpace[], row: AllocatedRow): AllocatedRow {
  for (const area of row.areas) {
    const pv = space.find((candidate) => candidate.pvUuid === area.pvUuid);
    const end = area.pvExtentStart + row.areaExtentCount;
    const run = pv?.runs.find(
      (candidate) =>
        candidate.pvExtentStart <= area.pvExtentStart &&
        end <= candidate.pvExtentStart + candidate.extentCount,
    );
    assert(pv !== undefined && run !== undefined, `area ${area.pvUuid}:${area.pvExtentStart} free`);
    const pieces: ExtentRun[] = [];
    if (area.pvExtentStart > run.pvExtentStart) {
      pieces.push({
        pvExtentStart: run.pvExtentStart,
        extentCount: area.pvExtentStart - run.pvExtentStart,
      });
    }
    if (run.pvExtentStart + run.extentCount > end) {
      pieces.push({ pvExtentStart: end, extentCount: run.pvExtentStart + run.extentCount - end });
    }
    pv.runs = pv.runs.flatMap((candidate) => (candidate === run ? pieces : [candidate]));
  }
  return row;
}

function toSegments(
  rows: readonly AllocatedRow[],
  stripeSizeBytes: number,
  request: AllocationRequest,
): LvSegment[] {
  let lvExtentStart =
    request.lvExtentStart ?? (request.after === undefined ? 0 : lvExtentCount(request.after));
  return rows.map((row) => {
    const segment: LvSegment = {
      lvExtentStart,
      extentCount: row.areaExtentCount * row.areas.length,
      stripeSizeBytes,
      areas: row.areas,
    };
    lvExtentStart += segment.extentCount;
    return segment;
  });
}

function freeOf(pv: PvFreeSpace): number {
  return pv.runs.reduce((sum, run) => sum + run.extentCount, 0);
}

function largestRun(pv: PvFreeSpace): number {
  return pv.runs.reduce((largest, run) => Math.max(largest, run.extentCount), 0);
}

/** The lowest run of the PV that holds `count` extents (the caller knows there is one). */
function firstRunOf(pv: PvFreeSpace, count: number): ExtentRun {
  const run = pv.runs.find((candidate) => candidate.extentCount >= count);
  assert(run !== undefined, `PV ${pv.pvUuid} has a run of ${count} extents`);
  return run;
}

/** Most free space first; the sort is stable, so ties keep the VG's PV order. */
function byFreeDescending(space: PvFreeSpace[]): PvFreeSpace[] {
  return [...space].sort((a, b) => freeOf(b) - freeOf(a));
}

function noSpaceError(message: string, details: Record<string, unknown>): TandemError {
  return new TandemError('VG_NO_SPACE', `not enough free space: ${message}`, { details });
}
