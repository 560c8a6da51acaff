/**
 * Where a PV evacuation's mirror sits in an LV: the run it copies (one range of one PV) and the
 * parts of each request that land on it. The run of a linear segment is a range of LV bytes;
 * the run of one area of a striped segment is every Nth stripe chunk of the segment's rows, so
 * both are found through the LV's mapping table rather than computed from LV offsets.
 */
import type { BlockDevice } from '../disk/block-device.js';
import { checkRange } from '../disk/checks.js';
import { TandemError } from '../errors.js';
import type { LvMappingTable, PvRange, PvResolver } from './lv-mapping.js';
import type { LvMirror, MirrorSource, SourcePart } from './lv-mirror.js';

export interface MirrorRunOptions {
  /** The LV extents the run belongs to (for a striped segment: whole rows of it). */
  readonly lvExtentStart: number;
  readonly extentCount: number;
  /**
   * The PV whose part of those extents moves: the run is the one range of the extents on it.
   * Optional when the extents map to one range of one PV.
   */
  readonly pvUuid?: string;
}

export interface MirrorRun {
  readonly source: MirrorSource;
  /** The LV bytes of the extents: requests outside them never touch the run. */
  readonly lvStartBytes: number;
  readonly lvEndBytes: number;
}

/** The run of `options` in `lv` (mapped by `table`); refused unless it is one range of one PV. */
export function findMirrorRun(
  lv: BlockDevice & { readonly extentSizeBytes: number },
  table: LvMappingTable,
  resolvePv: PvResolver,
  options: MirrorRunOptions,
): MirrorRun {
  const { lvExtentStart, extentCount } = options;
  const lvStartBytes = lvExtentStart * lv.extentSizeBytes;
  const lengthBytes = extentCount * lv.extentSizeBytes;
  const details = { lvExtentStart, extentCount, pvUuid: options.pvUuid };
  if (!Number.isSafeInteger(lvExtentStart) || lvExtentStart < 0 || !(extentCount > 0)) {
    throw new TandemError('DISK_INVALID_ARGUMENT', 'bad mirror extent range', { details });
  }
  checkRange(lv, lvStartBytes, lengthBytes, false);
  let ranges: PvRange[] = table.ranges(lvStartBytes, lengthBytes);
  if (options.pvUuid !== undefined) {
    const device = resolvePv(options.pvUuid)?.device;
    if (device === undefined) {
      throw new TandemError('DISK_GONE', `PV ${options.pvUuid} of the mirror is missing`, {
        details,
      });
    }
    ranges = ranges.filter((range) => range.device === device);
  }
  const run = ranges[0];
  if (run === undefined || ranges.length > 1) {
    throw new TandemError(
      'DISK_INVALID_ARGUMENT',
      `extents ${lvExtentStart}+${extentCount} of ${lv.description} are not one run on one PV`,
      { details: { ...details, runCount: ranges.length } },
    );
  }
  return {
    source: { device: run.device, offsetBytes: run.pvOffsetBytes, lengthBytes: run.lengthBytes },
    lvStartBytes,
    lvEndBytes: lvStartBytes + lengthBytes,
  };
}

/**
 * The parts of a request on `table` that land on the mirrored run, in source PV bytes; an
 * Error (DISK_GONE) when part of the request maps to a missing PV. Requests without data
 * (`withData` false) need no place in the request: their parts say 0.
 */
export function mirroredParts(
  mirror: LvMirror,
  table: LvMappingTable,
  offsetBytes: number,
  lengthBytes: number,
  withData: boolean,
): SourcePart[] | Error {
  try {
    const device = mirror.source.device;
    const onSource: SourcePart[] = [];
    if (withData) {
      for (const piece of table.pieces(offsetBytes, lengthBytes, true)) {
        if (piece.device !== device) continue;
        onSource.push({
          offsetBytes: piece.pvOffsetBytes,
          lengthBytes: piece.lengthBytes,
          requestOffsetBytes: piece.requestOffsetBytes,
        });
      }
    } else {
      for (const range of table.ranges(offsetBytes, lengthBytes)) {
        if (range.device !== device) continue;
        onSource.push({
          offsetBytes: range.pvOffsetBytes,
          lengthBytes: range.lengthBytes,
          requestOffsetBytes: 0,
        });
      }
    }
    return mirror.clip(onSource);
  } catch (error) {
    return error instanceof Error ? error : new Error(String(error));
  }
}
