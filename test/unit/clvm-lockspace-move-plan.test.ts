/**
 * Moving the hidden lockspace LV as metadata (lockspace-move-plan.ts): begin reserves a place off
 * the source PV, finish points the LV at it, abort frees it; while the record exists its extents
 * are nobody else's and the changes that would lose it (pv move steps, vg remove, vg restore,
 * vg reduce of a PV it uses) are refused.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { freeExtentRuns } from '../../src/clvm/allocator.js';
import {
  abortLockspaceMove,
  beginLockspaceMove,
  finishLockspaceMove,
  lockspaceMoveSegments,
  lockspaceOnPv,
  type BeginLockspaceMoveOptions,
} from '../../src/clvm/lockspace-move-plan.js';
import { decodeVgMetadata, encodeVgMetadata } from '../../src/clvm/metadata-codec.js';
import { beginMoveStep, planMoveStep } from '../../src/clvm/move-planner.js';
import type { VgMetadata } from '../../src/clvm/types.js';
import { lockspaceLvName } from '../../src/clvm/types.js';
import {
  extendVg,
  lvExtentCount,
  markRemoving,
  pvUsedExtents,
  reduceVg,
  removeLv,
  restoreVersion,
  setPvAllocatable,
  vgExtentTotals,
} from '../../src/clvm/vg-operations.js';
import {
  addLv as lv,
  context,
  deepFreeze,
  expectCode,
  extentMap,
  lvNamed,
  newVg,
  pvRecord,
  usedPhysicalExtents,
} from './clvm-metadata-fixtures.js';

const mover = { hostId: 2, generation: 5, hostName: 'hv-02' };

/** Options to move the lockspace off `sourcePvUuid`, with `more` in place of the defaults. */
function off(
  sourcePvUuid: string,
  more: Partial<BeginLockspaceMoveOptions> = {},
): BeginLockspaceMoveOptions {
  return { sourcePvUuid, targetPvUuids: [], missingPvUuids: [], mover, ...more };
}

/** The PEs "pv:pe" the record reserves, in LE order. */
function targetExtents(md: VgMetadata): string[] {
  return (lockspaceMoveSegments(md) ?? []).flatMap((segment) => {
    const area = segment.areas[0];
    assert.ok(area !== undefined && segment.areas.length === 1);
    return Array.from(
      { length: segment.extentCount },
      (_, offset) => `${area.pvUuid}:${area.pvExtentStart + offset}`,
    );
  });
}

function lockspaceExtents(md: VgMetadata): string[] {
  return (extentMap(md).get(lvNamed(md, lockspaceLvName).uuid) ?? []).map(
    (entry) => entry.split('/')[0] ?? '',
  );
}

describe('beginLockspaceMove', () => {
  it('records the move at the next seqno, one run off the source, and changes no mapping', () => {
    const md = deepFreeze(lv(newVg([20, 20, 30], 3), 'a', 4, { pvUuids: ['pv1'] }));
    assert.equal(lockspaceOnPv(md, 'pv0'), true);
    assert.equal(lockspaceOnPv(md, 'pv1'), false);
    const begun = beginLockspaceMove(md, off('pv0'), context);
    assert.equal(begun.seqno, md.seqno + 1);
    assert.equal(begun.lastChange, `lockspace move begins (epoch ${begun.seqno}) off /dev/pv0`);
    const record = begun.lockspaceMove;
    assert.ok(record !== undefined);
    const { segments, ...rest } = record;
    assert.deepEqual(rest, {
      epoch: begun.seqno,
      sourcePvUuid: 'pv0',
      moverHostId: 2,
      moverGeneration: 5,
      moverHostName: 'hv-02',
    });
    // One run, on the PV with the most free space (pv2), as long as the lockspace LV.
    assert.deepEqual(segments, [
      {
        lvExtentStart: 0,
        extentCount: 3,
        stripeSizeBytes: 0,
        areas: [{ pvUuid: 'pv2', pvExtentStart: 0 }],
      },
    ]);
    assert.deepEqual(extentMap(begun), extentMap(md));
    assert.equal(md.lockspaceMove, undefined);
  });

  it('takes one run when some PV has it, else several runs (normal policy)', () => {
    // pv1 has 4 free extents in two runs, pv2 a run of 2: no single run of 3.
    let md = lv(newVg([10, 6, 2], 3), 'x', 1, { pvUuids: ['pv1'] });
    md = lv(md, 'y', 2, { pvUuids: ['pv1'] });
    md = lv(md, 'z', 1, { pvUuids: ['pv1'] });
    md = removeLv(md, 'y', context);
    const begun = beginLockspaceMove(md, off('pv0'), context);
    const segments = lockspaceMoveSegments(begun) ?? [];
    assert.ok(segments.length > 1);
    let lvExtentStart = 0;
    for (const segment of segments) {
      assert.equal(segment.lvExtentStart, lvExtentStart);
      lvExtentStart += segment.extentCount;
    }
    assert.equal(lvExtentStart, 3);
    assert.ok(targetExtents(begun).every((pe) => !pe.startsWith('pv0:')));
    // With room for one run, the run wins.
    const roomy = extendVg(md, [pvRecord('pv3', 3)], context);
    assert.deepEqual(targetExtents(beginLockspaceMove(roomy, off('pv0'), context)), [
      'pv3:0',
      'pv3:1',
      'pv3:2',
    ]);
  });

  it('never allocates on the source, missing or not allocatable PVs, and only on the targets', () => {
    const md = lv(newVg([10, 20, 30, 40], 2), 'a', 4, { pvUuids: ['pv0'] });
    const onPvs = (begun: VgMetadata) =>
      new Set(targetExtents(begun).map((pe) => pe.split(':')[0]));
    // pv3 has the most free space.
    assert.deepEqual(onPvs(beginLockspaceMove(md, off('pv0'), context)), new Set(['pv3']));
    assert.deepEqual(
      onPvs(beginLockspaceMove(md, off('pv0', { missingPvUuids: ['pv3'] }), context)),
      new Set(['pv2']),
    );
    const held = setPvAllocatable(
      setPvAllocatable(md, 'pv3', false, context),
      'pv2',
      false,
      context,
    );
    assert.deepEqual(onPvs(beginLockspaceMove(held, off('pv0'), context)), new Set(['pv1']));
    assert.deepEqual(
      onPvs(beginLockspaceMove(md, off('pv0', { targetPvUuids: ['pv1'] }), context)),
      new Set(['pv1']),
    );
    // The source is never used, even with free space and allocatable.
    const small = newVg([10, 1], 2);
    expectCode(
      () => beginLockspaceMove(small, off('pv0'), context),
      'VG_NO_SPACE',
      /the lockspace LV of VG vg0 needs 2 free extents on the other PVs to move off \/dev\/pv0: not enough free space/,
    );
  });

  it('refuses what cannot be moved, or where it cannot go', () => {
    const md = lv(newVg([10, 10], 2), 'a', 2, { pvUuids: ['pv1'] });
    expectCode(
      () => beginLockspaceMove(md, off('pv1'), context),
      'INVALID_ARGUMENT',
      /PV pv1 \(\/dev\/pv1\) does not hold the lockspace LV of VG vg0/,
    );
    expectCode(() => beginLockspaceMove(md, off('pv9'), context), 'PV_NOT_FOUND');
    expectCode(
      () => beginLockspaceMove(md, off('pv0', { targetPvUuids: ['pv0'] }), context),
      'INVALID_ARGUMENT',
    );
    expectCode(
      () => beginLockspaceMove(md, off('pv0', { missingPvUuids: ['pv0'] }), context),
      'VG_PARTIAL',
    );
    expectCode(
      () =>
        beginLockspaceMove(
          setPvAllocatable(md, 'pv1', false, context),
          off('pv0', { targetPvUuids: ['pv1'] }),
          context,
        ),
      'FAILED_PRECONDITION',
      /not allocatable/,
    );
    for (const bad of [
      { ...mover, hostId: 0 },
      { ...mover, hostId: 17 },
      { ...mover, generation: 0 },
      { ...mover, hostName: '' },
      { ...mover, hostName: 'h'.repeat(65) },
    ]) {
      expectCode(
        () => beginLockspaceMove(md, off('pv0', { mover: bad }), context),
        'INVALID_ARGUMENT',
        /the mover of a lockspace move/,
      );
    }
    const big = newVg([10, 2], 3);
    expectCode(
      () => beginLockspaceMove(big, off('pv0', { targetPvUuids: ['pv1'] }), context),
      'VG_NO_SPACE',
      /needs 3 free extents on the target PVs/,
    );
  });

  it('refuses while a move of either kind is recorded', () => {
    const md = lv(newVg([10, 10], 2), 'a', 2, { pvUuids: ['pv0'] });
    const begun = beginLockspaceMove(md, off('pv0'), context);
    expectCode(
      () => beginLockspaceMove(begun, off('pv0'), context),
      'MOVE_IN_PROGRESS',
      /a lockspace move \(epoch \d+, run by host hv-02\) runs in VG vg0/,
    );
    const moved = finishLockspaceMove(begun, context);
    const step = planMoveStep(moved, { sourcePvUuid: 'pv0', targetPvUuids: [], maxStepExtents: 1 });
    assert.ok(step !== undefined);
    const stepping = beginMoveStep(moved, step, context);
    expectCode(
      () => beginLockspaceMove(stepping, off('pv1'), context),
      'MOVE_IN_PROGRESS',
      /a pv move step of LV a runs/,
    );
  });
});

describe('the reserved extents', () => {
  it('are nobody else’s while the record exists, and free again after an abort', () => {
    const md = deepFreeze(newVg([4, 4], 2));
    const begun = beginLockspaceMove(md, off('pv0'), context);
    assert.deepEqual(targetExtents(begun), ['pv1:0', 'pv1:1']);
    assert.equal(vgExtentTotals(begun).freeExtentCount, vgExtentTotals(md).freeExtentCount - 2);
    assert.deepEqual(freeExtentRuns(begun).get('pv1'), [{ pvExtentStart: 2, extentCount: 2 }]);
    expectCode(() => lv(begun, 'a', 3, { pvUuids: ['pv1'] }), 'VG_NO_SPACE');
    // What is left is allocated around the reservation.
    const filled = lv(lv(begun, 'a', 2, { pvUuids: ['pv1'] }), 'b', 2, { pvUuids: ['pv0'] });
    assert.equal(vgExtentTotals(filled).freeExtentCount, 0);
    const used = [...usedPhysicalExtents(filled), ...targetExtents(filled)];
    assert.equal(new Set(used).size, 8);

    const aborted = abortLockspaceMove(begun, context, begun.lockspaceMove?.epoch);
    assert.equal('lockspaceMove' in aborted, false);
    assert.equal(aborted.seqno, begun.seqno + 1);
    assert.match(aborted.lastChange, /^lockspace move aborted \(epoch \d+\)$/);
    assert.deepEqual(extentMap(aborted), extentMap(md));
    assert.deepEqual(vgExtentTotals(aborted), vgExtentTotals(md));
    assert.equal(lvExtentCount(lvNamed(lv(aborted, 'a', 4, { pvUuids: ['pv1'] }), 'a')), 4);
  });

  it('become the lockspace LV at finish, and its old extents are free', () => {
    const md = lv(newVg([6, 6], 2), 'a', 4, { pvUuids: ['pv0'] });
    const begun = beginLockspaceMove(md, off('pv0'), context);
    const reserved = targetExtents(begun);
    const epoch = begun.lockspaceMove?.epoch;
    expectCode(
      () => finishLockspaceMove(begun, context, (epoch ?? 0) + 1),
      'FAILED_PRECONDITION',
      /cannot finish the lockspace move of epoch \d+: VG vg0 records a lockspace move \(epoch/,
    );
    const done = finishLockspaceMove(begun, context, epoch);
    assert.equal('lockspaceMove' in done, false);
    assert.equal(done.lastChange, `lockspace move done (epoch ${epoch})`);
    assert.deepEqual(lockspaceExtents(done), reserved);
    assert.deepEqual(lvNamed(done, lockspaceLvName).segments, lockspaceMoveSegments(begun));
    assert.equal(lvNamed(done, lockspaceLvName).uuid, lvNamed(md, lockspaceLvName).uuid);
    assert.equal(lockspaceOnPv(done, 'pv0'), false);
    // Only the lockspace LV moved; its two old extents on pv0 are free.
    const others = extentMap(done);
    others.delete(lvNamed(done, lockspaceLvName).uuid);
    const before = extentMap(md);
    before.delete(lvNamed(md, lockspaceLvName).uuid);
    assert.deepEqual(others, before);
    assert.deepEqual(freeExtentRuns(done).get('pv0'), [{ pvExtentStart: 0, extentCount: 2 }]);
    assert.deepEqual(vgExtentTotals(done), vgExtentTotals(md));
    assert.equal(pvUsedExtents(done, 'pv0'), 4);
    // Nothing recorded, nothing to end.
    expectCode(
      () => finishLockspaceMove(done, context),
      'FAILED_PRECONDITION',
      /no lockspace move/,
    );
    expectCode(() => abortLockspaceMove(done, context), 'FAILED_PRECONDITION', /nothing to abort/);
  });

  it('round trip through the metadata codec with the rest of the VG', () => {
    const begun = beginLockspaceMove(lv(newVg([6, 6], 2), 'a', 1), off('pv0'), context);
    const decoded = decodeVgMetadata(encodeVgMetadata(begun), 'test');
    assert.deepStrictEqual(decoded, begun);
    const done = finishLockspaceMove(decoded, context);
    assert.deepStrictEqual(decodeVgMetadata(encodeVgMetadata(done), 'test'), done);
  });
});

describe('changes refused while a lockspace move is recorded', () => {
  const md = lv(newVg([10, 10, 10], 2), 'a', 3, { pvUuids: ['pv0'] });
  const begun = deepFreeze(beginLockspaceMove(md, off('pv0', { targetPvUuids: ['pv1'] }), context));

  it('pv move steps: never planned or begun, and never of the lockspace LV', () => {
    expectCode(
      () => planMoveStep(begun, { sourcePvUuid: 'pv2', targetPvUuids: [], maxStepExtents: 4 }),
      'MOVE_IN_PROGRESS',
      /a lockspace move \(epoch \d+, run by host hv-02\) runs in VG vg0; run pv move again/,
    );
    const other = lv(md, 'b', 1, { pvUuids: ['pv2'] });
    const step = planMoveStep(other, { sourcePvUuid: 'pv2', targetPvUuids: [], maxStepExtents: 4 });
    assert.ok(step !== undefined);
    const otherBegun = beginLockspaceMove(other, off('pv0', { targetPvUuids: ['pv1'] }), context);
    expectCode(() => beginMoveStep(otherBegun, step, context), 'MOVE_IN_PROGRESS');
    // Without a record, the source holding the lockspace is still refused: it moves first.
    expectCode(
      () => planMoveStep(md, { sourcePvUuid: 'pv0', targetPvUuids: [], maxStepExtents: 4 }),
      'FAILED_PRECONDITION',
      /PV pv0 holds the lockspace LV of VG vg0; pv move steps never move it/,
    );
    // A step of the lockspace LV built by hand is not begun.
    const lockspace = lvNamed(md, lockspaceLvName);
    expectCode(
      () =>
        beginMoveStep(
          md,
          {
            sourcePvUuid: 'pv0',
            targetPvUuids: [],
            lvUuid: lockspace.uuid,
            lvExtentStart: 0,
            extentCount: 2,
            targetPvUuid: 'pv2',
            targetPvExtentStart: 0,
            movedExtentCount: 0,
            totalExtentCount: 5,
          },
          context,
        ),
      'FAILED_PRECONDITION',
      /cannot move the lockspace LV/,
    );
  });

  it('vg reduce of a PV the move fills or empties', () => {
    expectCode(
      () => reduceVg(begun, 'pv1', context),
      'MOVE_IN_PROGRESS',
      /PV pv1 is in use: the lockspace LV is being moved onto it \(a lockspace move \(epoch \d+, run by host hv-02\)\)/,
    );
    expectCode(
      () => reduceVg(begun, 'pv0', context),
      'MOVE_IN_PROGRESS',
      /the lockspace LV is being moved off it/,
    );
    const pvs = reduceVg(extendVg(begun, [pvRecord('pv3', 4)], context), 'pv3', context).pvs;
    assert.deepEqual(
      pvs.map((pv) => pv.uuid),
      ['pv0', 'pv1', 'pv2'],
    );
    // Once finished, the source is empty of the lockspace and only its LV a is left.
    expectCode(
      () => reduceVg(finishLockspaceMove(begun, context), 'pv0', context),
      'PV_IN_USE',
      /holds extents of LV a;/,
    );
  });

  it('vg remove', () => {
    const empty = beginLockspaceMove(newVg([10, 10], 2), off('pv0'), context);
    expectCode(
      () => markRemoving(empty, context),
      'MOVE_IN_PROGRESS',
      /a lockspace move .* runs in VG vg0; run pv move again to finish or abort it/,
    );
    assert.equal(markRemoving(abortLockspaceMove(empty, context), context).removing, true);
  });

  it('vg restore', () => {
    expectCode(() => restoreVersion(begun, md, context), 'MOVE_IN_PROGRESS', /lockspace move/);
  });
});

describe('restoreVersion and the lockspace', () => {
  it('keeps the lockspace where it is now, and brings back no lockspace move', () => {
    const old = lv(newVg([10, 10, 10], 2), 'a', 2, { pvUuids: ['pv1'] });
    const begun = beginLockspaceMove(old, off('pv0', { targetPvUuids: ['pv2'] }), context);
    const current = removeLv(finishLockspaceMove(begun, context), 'a', context);
    const restored = restoreVersion(current, old, context);
    assert.equal(restored.seqno, current.seqno + 1);
    assert.deepEqual(lvNamed(restored, 'a'), lvNamed(old, 'a'));
    assert.deepEqual(lvNamed(restored, lockspaceLvName), lvNamed(current, lockspaceLvName));
    assert.deepEqual(lockspaceExtents(restored), ['pv2:0', 'pv2:1']);
    // A version taken during a lockspace move: its record does not come back.
    const fromBegun = restoreVersion(current, begun, context);
    assert.equal('lockspaceMove' in fromBegun, false);
    assert.deepEqual(lockspaceExtents(fromBegun), ['pv2:0', 'pv2:1']);
  });

  it('refuses a version whose LVs sit where the lockspace is now', () => {
    const start = newVg([10, 10], 2);
    // Version `old` has LV a on pv1:0-3; a is removed, then the lockspace moves there.
    const old = lv(start, 'a', 4, { pvUuids: ['pv1'] });
    const freed = removeLv(old, 'a', context);
    const current = finishLockspaceMove(beginLockspaceMove(freed, off('pv0'), context), context);
    assert.deepEqual(lockspaceExtents(current), ['pv1:0', 'pv1:1']);
    expectCode(
      () => restoreVersion(current, old, context),
      'FAILED_PRECONDITION',
      /the version of seqno \d+ has lv a segment 0 area 0 on PV pv1 extents 0-3, where the lockspace LV is now/,
    );
    // A version from before the PV the lockspace is on joined the VG.
    const early = newVg([10], 2);
    const joined = extendVg(early, [pvRecord('pv1', 10)], context);
    const movedToNew = finishLockspaceMove(
      beginLockspaceMove(joined, off('pv0'), context),
      context,
    );
    expectCode(
      () => restoreVersion(movedToNew, early, context),
      'FAILED_PRECONDITION',
      /the lockspace LV is now on PV pv1, which the version of seqno 1 does not have/,
    );
  });
});
