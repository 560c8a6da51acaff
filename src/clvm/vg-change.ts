/**
 * What every VG change shares: the ChangeContext, the commit of the next version (seqno + 1,
 * stamped, validated), the merge of segments that continue each other, and the checks of user
 * input that raise INVALID_ARGUMENT.
 */
import { TandemError } from '../errors.js';
import type { LvRecord, LvSegment, VgMetadata } from './types.js';
import { areaExtentCount } from './vg-queries.js';
import { nameProblem, validateVgMetadata } from './vg-validate.js';

/** Who makes a change and when (their wall clock): recorded in the metadata for people. */
export interface ChangeContext {
  readonly wallMs: number;
  readonly updatedBy: string;
}

/** The next version of `previous` with `changes`, stamped and validated. */
export function commitChange(
  previous: VgMetadata,
  changes: Partial<VgMetadata>,
  lastChange: string,
  context: ChangeContext,
): VgMetadata {
  if (previous.removing === true) {
    throw new TandemError(
      'FAILED_PRECONDITION',
      `VG ${previous.name} is being removed; run vg remove again to finish removing it`,
    );
  }
  return validateVgMetadata({
    ...previous,
    ...changes,
    seqno: previous.seqno + 1,
    updatedWallMs: context.wallMs,
    updatedBy: context.updatedBy,
    lastChange,
  });
}

/**
 * Joins neighbouring segments that continue each other on the same PVs with the same striping,
 * so extending in place keeps one segment. Joining two striped segments keeps the data where it
 * is because each one maps whole rows (a multiple of its stripe count).
 */
export function mergeSegments(segments: readonly LvSegment[]): LvSegment[] {
  const merged: LvSegment[] = [];
  for (const segment of segments) {
    const previous = merged.at(-1);
    if (previous !== undefined && continues(previous, segment)) {
      merged[merged.length - 1] = {
        ...previous,
        extentCount: previous.extentCount + segment.extentCount,
      };
    } else {
      merged.push(segment);
    }
  }
  return merged;
}

function continues(previous: LvSegment, next: LvSegment): boolean {
  const previousAreaCount = areaExtentCount(previous);
  return (
    previous.lvExtentStart + previous.extentCount === next.lvExtentStart &&
    previous.stripeSizeBytes === next.stripeSizeBytes &&
    previous.areas.length === next.areas.length &&
    previous.areas.every((area, index) => {
      const following = next.areas[index];
      return (
        following !== undefined &&
        following.pvUuid === area.pvUuid &&
        following.pvExtentStart === area.pvExtentStart + previousAreaCount
      );
    })
  );
}

/** The LVs with `lv` in place of the record with its uuid. */
export function replaceLv(md: VgMetadata, lv: LvRecord): { lvs: LvRecord[] } {
  return { lvs: md.lvs.map((candidate) => (candidate.uuid === lv.uuid ? lv : candidate)) };
}

export function checkName(kind: 'VG' | 'LV', name: string): void {
  const problem = nameProblem(name);
  checkArgument(problem === undefined, `${kind} name ${JSON.stringify(name)} ${problem}`);
}

export function checkArgument(condition: boolean, message: string): asserts condition {
  if (!condition) {
    throw new TandemError('INVALID_ARGUMENT', message);
  }
}

export function isPositiveInteger(value: number): boolean {
  return Number.isSafeInteger(value) && value > 0;
}
