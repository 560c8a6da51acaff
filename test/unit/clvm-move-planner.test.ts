/**
 * pv move planning: steps move exactly their extents (the rest of every LV's mapping stays put)
 * until the source PV is empty, striped areas keep to PVs without another stripe, aborts change
 * nothing, the lockspace LV moves only by a lockspace move (before the steps); and random
 * sequences of LV changes and moves never share a PE or lose an LE.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { isTandemError } from '../../src/errors.js';
import {
  abortLockspaceMove,
  beginLockspaceMove,
  finishLockspaceMove,
  lockspaceOnPv,
} from '../../src/clvm/lockspace-move-plan.js';
import {
  abortMoveStep,
  beginMoveStep,
  finishMoveStep,
  moveStepSourceRun,
  planMoveStep,
  type MovePlanOptions,
} from '../../src/clvm/move-planner.js';
import type { VgMetadata } from '../../src/clvm/types.js';
import { lockspaceLvName } from '../../src/clvm/types.js';
import {
  extendLv,
  lvExtentCount,
  lvsOnPv,
  pvUsedExtents,
  reduceLv,
  reduceVg,
  removeLv,
  setPvAllocatable,
  vgExtentTotals,
} from '../../src/clvm/vg-operations.js';
import {
  addLv as lv,
  context,
  deepFreeze,
  expectCode,
  expectedAfterStep,
  extentMap,
  lvNamed,
  newVg,
  usedPhysicalExtents,
} from './clvm-metadata-fixtures.js';

const mover = { hostId: 1, generation: 1, hostName: 'host-a' };

/** `md` with its lockspace LV moved off the PV, as pv move does before its steps. */
function lockspaceMovedOff(md: VgMetadata, sourcePvUuid: string): VgMetadata {
  const options = { sourcePvUuid, targetPvUuids: [], missingPvUuids: [], mover };
  return finishLockspaceMove(beginLockspaceMove(md, options, context), context);
}

/** Runs a whole pv move of `source`, checking each finished step moved exactly its extents. */
function evacuate(
  md: VgMetadata,
  options: Omit<MovePlanOptions, 'sourcePvUuid'> & { sourcePvUuid: string },
): {
  md: VgMetadata;
  steps: number;
} {
  const totalExtentCount = pvUsedExtents(md, options.sourcePvUuid);
  let movedExtentCount = 0;
  let steps = 0;
  for (;;) {
    const step = planMoveStep(md, { ...options, movedExtentCount, totalExtentCount });
    if (step === undefined) {
      return { md, steps };
    }
    assert.equal(step.totalExtentCount, totalExtentCount);
    assert.equal(step.movedExtentCount, movedExtentCount);
    const begun = beginMoveStep(md, step, context);
    const run = moveStepSourceRun(begun, step);
    assert.ok(run.extentCount <= options.maxStepExtents);
    const expected = expectedAfterStep(begun, step);
    md = finishMoveStep(begun, context);
    assert.equal(md.move, undefined);
    assert.deepEqual(extentMap(md), expected);
    movedExtentCount += run.extentCount;
    steps += 1;
  }
}

describe('pv move planning', () => {
  it('moves every extent off a PV, step by step, the data mapping preserved', () => {
    let md = newVg([30, 30, 30, 30], 2);
    md = lv(md, 'a', 7, { pvUuids: ['pv0'] });
    md = lv(md, 's', 12, { stripes: 3, pvUuids: ['pv0', 'pv1', 'pv2'] });
    md = lv(md, 'b', 5, { pvUuids: ['pv0'] });
    // The lockspace LV is not a step's to move: it moves first, by a lockspace move.
    expectCode(
      () => planMoveStep(md, { sourcePvUuid: 'pv0', targetPvUuids: [], maxStepExtents: 3 }),
      'FAILED_PRECONDITION',
      /holds the lockspace LV/,
    );
    md = lockspaceMovedOff(md, 'pv0');
    const used = pvUsedExtents(md, 'pv0');
    const result = evacuate(md, { sourcePvUuid: 'pv0', targetPvUuids: [], maxStepExtents: 3 });
    assert.equal(pvUsedExtents(result.md, 'pv0'), 0);
    assert.ok(result.steps >= Math.ceil(used / 3));
    const lockspace = lvNamed(result.md, lockspaceLvName).segments;
    assert.deepEqual(
      lockspace.map((segment) => segment.extentCount),
      [2],
    );
    // Consecutive steps onto one run merge back into one segment.
    assert.equal(lvNamed(result.md, 'a').segments.length, 1);
    const stripedPvs = lvNamed(result.md, 's').segments.map(
      (segment) => new Set(segment.areas.map((item) => item.pvUuid)).size,
    );
    assert.ok(stripedPvs.every((count) => count === 3));
    assert.ok(reduceVg(result.md, 'pv0', context).pvs.every((pv) => pv.uuid !== 'pv0'));
  });

  it('moves only to the target PVs, and a striped area never onto another stripe PV', () => {
    let md = newVg([20, 20, 20, 20]);
    md = lv(md, 's', 8, { stripes: 2, pvUuids: ['pv1', 'pv2'] });
    const first = planMoveStep(md, { sourcePvUuid: 'pv1', targetPvUuids: [], maxStepExtents: 2 });
    assert.ok(first !== undefined);
    assert.notEqual(first.targetPvUuid, 'pv2');
    assert.equal(first.extentCount, 4);
    assert.equal(moveStepSourceRun(md, first).extentCount, 2);
    expectCode(
      () => planMoveStep(md, { sourcePvUuid: 'pv1', targetPvUuids: ['pv2'], maxStepExtents: 2 }),
      'VG_NO_SPACE',
      /not holding another stripe/,
    );
    const result = evacuate(md, { sourcePvUuid: 'pv1', targetPvUuids: ['pv3'], maxStepExtents: 2 });
    assert.deepEqual(
      lvsOnPv(result.md, 'pv3').map((record) => record.name),
      ['s'],
    );
    assert.equal(lvNamed(result.md, 's').segments.length, 1);
  });

  it('abort leaves the mapping as it was and frees the target run', () => {
    const md = lockspaceMovedOff(lv(newVg([20, 20]), 'a', 6, { pvUuids: ['pv0'] }), 'pv0');
    const step = planMoveStep(md, {
      sourcePvUuid: 'pv0',
      targetPvUuids: ['pv1'],
      maxStepExtents: 4,
    });
    assert.ok(step !== undefined);
    const begun = beginMoveStep(md, step, context);
    expectCode(
      () => planMoveStep(begun, { sourcePvUuid: 'pv0', targetPvUuids: [], maxStepExtents: 1 }),
      'MOVE_IN_PROGRESS',
    );
    expectCode(() => beginMoveStep(begun, step, context), 'MOVE_IN_PROGRESS');
    expectCode(() => removeLv(begun, 'x', context), 'LV_NOT_FOUND');
    expectCode(() => reduceVg(begun, 'pv1', context), 'MOVE_IN_PROGRESS');
    const aborted = abortMoveStep(begun, context);
    assert.equal(aborted.move, undefined);
    assert.deepEqual(extentMap(aborted), extentMap(md));
    assert.deepEqual(vgExtentTotals(aborted), vgExtentTotals(md));
    expectCode(() => abortMoveStep(aborted, context), 'FAILED_PRECONDITION');
    expectCode(() => finishMoveStep(aborted, context), 'FAILED_PRECONDITION');
  });

  it('refuses to reduce or remove the LV of a running step', () => {
    let md = lv(newVg([20, 20]), 'a', 6, { pvUuids: ['pv0'] });
    md = lv(md, 'b', 3, { pvUuids: ['pv0'] });
    const step = planMoveStep(md, { sourcePvUuid: 'pv1', targetPvUuids: [], maxStepExtents: 4 });
    assert.equal(step, undefined);
    const { md: moved } = evacuate(lv(md, 'c', 1, { pvUuids: ['pv1'] }), {
      sourcePvUuid: 'pv1',
      targetPvUuids: [],
      maxStepExtents: 1,
    });
    assert.equal(pvUsedExtents(moved, 'pv1'), 0);
    const lockspaceDone = lockspaceMovedOff(md, 'pv0');
    const next = planMoveStep(lockspaceDone, {
      sourcePvUuid: 'pv0',
      targetPvUuids: [],
      maxStepExtents: 9,
    });
    assert.ok(next !== undefined);
    const begun = beginMoveStep(lockspaceDone, next, context);
    expectCode(() => reduceLv(begun, 'a', 2, context), 'MOVE_IN_PROGRESS');
    expectCode(() => removeLv(begun, 'a', context), 'MOVE_IN_PROGRESS');
    assert.ok(removeLv(begun, 'b', context).lvs.every((record) => record.name !== 'b'));
    assert.equal(lvExtentCount(lvNamed(extendLv(begun, 'a', 8, {}, context), 'a')), 8);
  });

  it('moves only to allocatable PVs and refuses a target that is not', () => {
    let md = lv(newVg([20, 30, 10]), 'a', 6, { pvUuids: ['pv0'] });
    md = deepFreeze(
      setPvAllocatable(setPvAllocatable(md, 'pv0', false, context), 'pv1', false, context),
    );
    // pv1 has the most free space and would be chosen; it is not allocatable.
    const moved = deepFreeze(lockspaceMovedOff(md, 'pv0'));
    assert.equal(lockspaceOnPv(moved, 'pv2'), true);
    const result = evacuate(moved, { sourcePvUuid: 'pv0', targetPvUuids: [], maxStepExtents: 4 });
    assert.equal(pvUsedExtents(result.md, 'pv0'), 0);
    assert.equal(pvUsedExtents(result.md, 'pv1'), 0);
    assert.equal(pvUsedExtents(result.md, 'pv2'), 7);
    expectCode(
      () => planMoveStep(md, { sourcePvUuid: 'pv0', targetPvUuids: ['pv1'], maxStepExtents: 4 }),
      'FAILED_PRECONDITION',
      /target PV pv1 \(\/dev\/pv1\) is marked not allocatable; allow it first \(pv change PATH --allocatable y\)/,
    );
    // The only allocatable PV is full: the message says which PVs were left out.
    const full = lv(moved, 'b', 9, { pvUuids: ['pv2'] });
    expectCode(
      () => planMoveStep(full, { sourcePvUuid: 'pv0', targetPvUuids: [], maxStepExtents: 4 }),
      'VG_NO_SPACE',
      /none are free on the allowed PVs \(PVs marked not allocatable are not used: \/dev\/pv1\)/,
    );
    // A step planned before its target PV stopped being allocatable is not begun.
    const step = planMoveStep(setPvAllocatable(moved, 'pv1', true, context), {
      sourcePvUuid: 'pv0',
      targetPvUuids: ['pv1'],
      maxStepExtents: 4,
    });
    assert.ok(step !== undefined);
    expectCode(
      () => beginMoveStep(moved, step, context),
      'FAILED_PRECONDITION',
      /no longer allocatable/,
    );
  });

  it('refuses bad plans with clear errors', () => {
    const md = lv(newVg([20, 5]), 'a', 15, { pvUuids: ['pv0'] });
    const options = { sourcePvUuid: 'pv0', targetPvUuids: [], maxStepExtents: 4 };
    expectCode(() => planMoveStep(md, { ...options, sourcePvUuid: 'nope' }), 'PV_NOT_FOUND');
    expectCode(() => planMoveStep(md, { ...options, targetPvUuids: ['pv0'] }), 'INVALID_ARGUMENT');
    expectCode(() => planMoveStep(md, { ...options, maxStepExtents: 0 }), 'INVALID_ARGUMENT');
    expectCode(() => planMoveStep(md, { ...options, missingPvUuids: ['pv0'] }), 'VG_PARTIAL');
    // pv1 holds 5 of the 16 extents: the move goes until it is full, then says so.
    expectCode(
      () => evacuate(lockspaceMovedOff(md, 'pv0'), options),
      'VG_NO_SPACE',
      /moving LV a off PV pv0 needs free extents on another PV; 11 extents are still to move/,
    );
  });
});

type Operation =
  | {
      kind: 'create';
      extentCount: number;
      stripes: number;
      policy: 'normal' | 'contiguous' | 'anywhere';
    }
  | { kind: 'extend'; lvIndex: number; add: number; policy: 'normal' | 'contiguous' | 'anywhere' }
  | { kind: 'reduce'; lvIndex: number; keepPermille: number }
  | { kind: 'remove'; lvIndex: number }
  | { kind: 'move'; pvIndex: number; maxStepExtents: number; abort: boolean };

const policy = fc.constantFrom('normal' as const, 'contiguous' as const, 'anywhere' as const);
// Creation weighs most, so that most sequences have LVs to extend, reduce and move.
const operation: fc.Arbitrary<Operation> = fc.oneof(
  {
    weight: 4,
    arbitrary: fc.record({
      kind: fc.constant('create' as const),
      extentCount: fc.integer({ min: 1, max: 24 }),
      stripes: fc.integer({ min: 1, max: 3 }),
      policy,
    }),
  },
  fc.record({
    kind: fc.constant('extend' as const),
    lvIndex: fc.nat(),
    add: fc.integer({ min: 1, max: 30 }),
    policy,
  }),
  fc.record({
    kind: fc.constant('reduce' as const),
    lvIndex: fc.nat(),
    keepPermille: fc.integer({ min: 0, max: 999 }),
  }),
  fc.record({ kind: fc.constant('remove' as const), lvIndex: fc.nat() }),
  fc.record({
    kind: fc.constant('move' as const),
    pvIndex: fc.nat(),
    maxStepExtents: fc.integer({ min: 1, max: 8 }),
    abort: fc.boolean(),
  }),
);

let created = 0;

/** Applies one operation; checks what it must keep (every LE of other LVs, kept LEs, lengths). */
function apply(md: VgMetadata, op: Operation): VgMetadata {
  const userLvs = md.lvs.filter((record) => !record.hidden);
  const target =
    userLvs.length === 0 ? undefined : userLvs[('lvIndex' in op ? op.lvIndex : 0) % userLvs.length];
  const before = extentMap(md);
  switch (op.kind) {
    case 'create': {
      created += 1;
      const name = `lv${created}`;
      const next = lv(md, name, op.extentCount, { stripes: op.stripes, policy: op.policy });
      assert.ok(lvExtentCount(lvNamed(next, name)) >= op.extentCount);
      assertKept(before, extentMap(next));
      return next;
    }
    case 'extend': {
      if (target === undefined) return md;
      const wanted = lvExtentCount(target) + op.add;
      const next = extendLv(md, target.name, wanted, { policy: op.policy }, context);
      assert.ok(lvExtentCount(lvNamed(next, target.name)) >= wanted);
      assertKept(before, extentMap(next));
      return next;
    }
    case 'reduce': {
      const count = target === undefined ? 0 : lvExtentCount(target);
      if (target === undefined || count < 2) return md;
      const wanted = 1 + Math.floor(((count - 1) * op.keepPermille) / 1000);
      const next = reduceLv(md, target.name, wanted, context);
      const reduced = lvExtentCount(lvNamed(next, target.name));
      assert.ok(reduced >= wanted && reduced < count);
      assertKept(before, extentMap(next));
      return next;
    }
    case 'remove': {
      if (target === undefined) return md;
      const next = removeLv(md, target.name, context);
      before.delete(target.uuid);
      assert.deepEqual(extentMap(next), before);
      return next;
    }
    case 'move':
      return moveOnce(md, op);
  }
}

function moveOnce(md: VgMetadata, op: Extract<Operation, { kind: 'move' }>): VgMetadata {
  const source = md.pvs[op.pvIndex % md.pvs.length];
  assert.ok(source !== undefined);
  if (lockspaceOnPv(md, source.uuid)) {
    return moveLockspaceOnce(md, source.uuid, op.abort);
  }
  const step = planMoveStep(md, {
    sourcePvUuid: source.uuid,
    targetPvUuids: [],
    maxStepExtents: op.maxStepExtents,
  });
  if (step === undefined) {
    assert.equal(pvUsedExtents(md, source.uuid), 0);
    return md;
  }
  const begun = beginMoveStep(md, step, context);
  assert.deepEqual(extentMap(begun), extentMap(md));
  if (op.abort) {
    return abortMoveStep(begun, context);
  }
  const expected = expectedAfterStep(begun, step);
  const finished = finishMoveStep(begun, context);
  assert.deepEqual(extentMap(finished), expected);
  return finished;
}

/** As pv move before its steps: the lockspace LV moves (or its move aborts); nothing else. */
function moveLockspaceOnce(md: VgMetadata, sourcePvUuid: string, abort: boolean): VgMetadata {
  const options = { sourcePvUuid, targetPvUuids: [], missingPvUuids: [], mover };
  const begun = beginLockspaceMove(md, options, context);
  assert.deepEqual(extentMap(begun), extentMap(md));
  // The lockspace LV is linear: its new place, as extentMap lists linear extents.
  const reserved = (begun.lockspaceMove?.segments ?? []).flatMap((segment) =>
    Array.from({ length: segment.extentCount }, (_, offset) => {
      const area = segment.areas[0];
      assert.ok(area !== undefined && segment.areas.length === 1);
      return `${area.pvUuid}:${area.pvExtentStart + offset}/1/0/0`;
    }),
  );
  const used = [...usedPhysicalExtents(begun), ...reserved.map((entry) => entry.split('/')[0])];
  assert.equal(new Set(used).size, used.length);
  if (abort) {
    const aborted = abortLockspaceMove(begun, context);
    assert.deepEqual(aborted.lvs, md.lvs);
    return aborted;
  }
  const finished = finishLockspaceMove(begun, context);
  assert.equal(lockspaceOnPv(finished, sourcePvUuid), false);
  const expected = extentMap(md);
  expected.set(lvNamed(md, lockspaceLvName).uuid, reserved);
  assert.deepEqual(extentMap(finished), expected);
  return finished;
}

/** Every LV still present keeps the mapping of the LEs both versions have. */
function assertKept(before: Map<string, string[]>, after: Map<string, string[]>): void {
  for (const [uuid, extents] of before) {
    const now = after.get(uuid);
    assert.ok(now !== undefined, `LV ${uuid} kept`);
    const common = Math.min(extents.length, now.length);
    assert.deepEqual(now.slice(0, common), extents.slice(0, common));
  }
}

describe('properties', () => {
  it('random changes never share a PE, never lose an LE, and fail cleanly', () => {
    const allowedCodes = new Set(['VG_NO_SPACE', 'INVALID_ARGUMENT']);
    fc.assert(
      fc.property(
        fc.array(fc.integer({ min: 0, max: 80 }), { minLength: 1, maxLength: 5 }),
        fc.array(operation, { minLength: 5, maxLength: 40, size: 'max' }),
        fc.nat(),
        (sizes, operations, evacuatedPvIndex) => {
          let md = deepFreeze(newVg([Math.max(1, sizes[0] ?? 1), ...sizes.slice(1)]));
          for (const op of operations) {
            const copy = structuredClone(md);
            try {
              md = deepFreeze(apply(md, op));
            } catch (error) {
              if (!isTandemError(error) || !allowedCodes.has(error.code)) throw error;
              assert.deepEqual(md, copy);
            }
            const used = usedPhysicalExtents(md);
            assert.equal(new Set(used).size, used.length);
            assert.equal(md.move, undefined);
          }
          // A whole pv move either empties the PV or stops for lack of space elsewhere.
          const source = md.pvs[evacuatedPvIndex % md.pvs.length]?.uuid ?? '';
          try {
            if (lockspaceOnPv(md, source)) md = moveLockspaceOnce(md, source, false);
            const result = evacuate(md, {
              sourcePvUuid: source,
              targetPvUuids: [],
              maxStepExtents: 4,
            });
            assert.equal(pvUsedExtents(result.md, source), 0);
          } catch (error) {
            if (!isTandemError(error, 'VG_NO_SPACE')) throw error;
          }
        },
      ),
      { numRuns: 200, seed: 20260101 },
    );
  });
});
