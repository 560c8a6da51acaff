/**
 * The extent allocator: free runs, each policy (normal, contiguous, anywhere), striping on
 * different PVs, continuing an LV's last segment, PV restrictions, and VG_NO_SPACE messages that
 * say what was needed and what is free.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { allocateExtents, freeExtentRuns, roundUpToStripes } from '../../src/clvm/allocator.js';
import { beginMoveStep, planMoveStep } from '../../src/clvm/move-planner.js';
import type { VgMetadata } from '../../src/clvm/types.js';
import {
  createLv,
  removeLv,
  setPvAllocatable,
  vgExtentTotals,
} from '../../src/clvm/vg-operations.js';
import { context, deepFreeze, expectCode, lvNamed, newVg } from './clvm-metadata-fixtures.js';

/** vg0 with an LV `name` of `extentCount` extents on one PV (linear, contiguous). */
function withLv(md: VgMetadata, name: string, extentCount: number, pvUuid: string): VgMetadata {
  return createLv(
    md,
    { uuid: `${name}-uuid`, name, extentCount, policy: 'contiguous', pvUuids: [pvUuid] },
    context,
  );
}

describe('freeExtentRuns', () => {
  it('lists the gaps between used runs of every PV, sorted, including empty PVs', () => {
    let md = newVg([20, 10, 0], 2);
    md = withLv(md, 'a', 3, 'pv0');
    md = withLv(md, 'b', 4, 'pv0');
    md = removeLv(md, 'a', context);
    assert.deepEqual(
      freeExtentRuns(md),
      new Map([
        [
          'pv0',
          [
            { pvExtentStart: 2, extentCount: 3 },
            { pvExtentStart: 9, extentCount: 11 },
          ],
        ],
        ['pv1', [{ pvExtentStart: 0, extentCount: 10 }]],
        ['pv2', []],
      ]),
    );
    assert.deepEqual(vgExtentTotals(md), { extentCount: 30, freeExtentCount: 24 });
  });

  it('counts the target run of a move step as used', () => {
    let md = newVg([10, 10]);
    md = withLv(md, 'a', 4, 'pv1');
    const step = planMoveStep(md, {
      sourcePvUuid: 'pv1',
      targetPvUuids: ['pv0'],
      maxStepExtents: 3,
    });
    assert.ok(step !== undefined);
    md = beginMoveStep(md, step, context);
    // The step moves 3 of a's extents to the run after the lockspace LV's one extent on pv0.
    assert.deepEqual(freeExtentRuns(md).get('pv0'), [{ pvExtentStart: 4, extentCount: 6 }]);
  });
});

describe('allocateExtents, linear', () => {
  it('normal puts a new LV in one run on the PV with the most free space', () => {
    const md = deepFreeze(newVg([10, 30, 20]));
    assert.deepEqual(allocateExtents(md, { extentCount: 15, stripes: 1, policy: 'normal' }), [
      {
        lvExtentStart: 0,
        extentCount: 15,
        stripeSizeBytes: 0,
        areas: [{ pvUuid: 'pv1', pvExtentStart: 0 }],
      },
    ]);
  });

  it('normal spans PVs, largest run first, when no run holds it all', () => {
    const md = deepFreeze(newVg([10, 30, 20]));
    const segments = allocateExtents(md, { extentCount: 45, stripes: 1, policy: 'normal' });
    assert.deepEqual(
      segments.map((segment) => [
        segment.lvExtentStart,
        segment.extentCount,
        segment.areas[0]?.pvUuid,
      ]),
      [
        [0, 30, 'pv1'],
        [30, 15, 'pv2'],
      ],
    );
  });

  it('normal continues right after the LV it extends, even on a fuller PV', () => {
    let md = newVg([20, 40]);
    md = withLv(md, 'a', 5, 'pv0');
    const [first, ...rest] = allocateExtents(md, {
      extentCount: 4,
      stripes: 1,
      policy: 'normal',
      after: lvNamed(md, 'a'),
    });
    assert.deepEqual(first, {
      lvExtentStart: 5,
      extentCount: 4,
      stripeSizeBytes: 0,
      areas: [{ pvUuid: 'pv0', pvExtentStart: 6 }],
    });
    assert.equal(rest.length, 0);
  });

  it('normal takes what follows the last segment, then the rest elsewhere', () => {
    let md = newVg([20, 40]);
    md = withLv(md, 'a', 5, 'pv0');
    md = withLv(md, 'c', 2, 'pv0');
    md = withLv(md, 'x', 2, 'pv0');
    md = withLv(md, 'd', 9, 'pv0');
    md = removeLv(md, 'x', context); // pv0: lockspace, a × 5, c × 2, free × 2, d × 9, free
    const segments = allocateExtents(md, {
      extentCount: 6,
      stripes: 1,
      policy: 'normal',
      after: lvNamed(md, 'c'),
    });
    assert.deepEqual(
      segments.map((segment) => [
        segment.extentCount,
        segment.areas[0]?.pvUuid,
        segment.areas[0]?.pvExtentStart,
      ]),
      [
        [2, 'pv0', 8],
        [4, 'pv1', 0],
      ],
    );
  });

  it('contiguous needs one run and says how large the largest is', () => {
    let md = newVg([10, 10]);
    md = withLv(md, 'a', 4, 'pv0');
    assert.equal(
      allocateExtents(md, { extentCount: 10, stripes: 1, policy: 'contiguous' }).length,
      1,
    );
    expectCode(
      () => allocateExtents(md, { extentCount: 11, stripes: 1, policy: 'contiguous' }),
      'VG_NO_SPACE',
      /contiguous allocation of 11 extents needs one run of 11 free extents; the largest free run is 10/,
    );
  });

  it('contiguous extension must continue the last segment', () => {
    let md = newVg([20, 20]);
    md = withLv(md, 'a', 4, 'pv0');
    md = withLv(md, 'b', 2, 'pv0');
    expectCode(
      () =>
        allocateExtents(md, {
          extentCount: 2,
          stripes: 1,
          policy: 'contiguous',
          after: lvNamed(md, 'a'),
        }),
      'VG_NO_SPACE',
      /contiguous extension needs 2 free extents right after the LV's last segment on its PV\(s\); only 0 are free there/,
    );
    const [grown] = allocateExtents(md, {
      extentCount: 3,
      stripes: 1,
      policy: 'contiguous',
      after: lvNamed(md, 'b'),
    });
    assert.deepEqual(grown?.areas, [{ pvUuid: 'pv0', pvExtentStart: 7 }]);
  });

  it('anywhere places linear extents as normal does', () => {
    const md = newVg([10, 30]);
    const request = { extentCount: 35, stripes: 1 } as const;
    assert.deepEqual(
      allocateExtents(md, { ...request, policy: 'anywhere' }),
      allocateExtents(md, { ...request, policy: 'normal' }),
    );
  });

  it('says how many extents were needed and how many are free', () => {
    const md = newVg([10, 5]);
    expectCode(
      () => allocateExtents(md, { extentCount: 15, stripes: 1, policy: 'normal' }),
      'VG_NO_SPACE',
      /needs 15 free extents, only 14 are free in VG vg0/,
    );
  });

  it('keeps to the allowed PVs and never uses missing or excluded ones', () => {
    const md = newVg([10, 30, 20]);
    const pvsOf = (request: Parameters<typeof allocateExtents>[1]): string[] =>
      allocateExtents(md, request).flatMap((segment) => segment.areas.map((area) => area.pvUuid));
    assert.deepEqual(pvsOf({ extentCount: 5, stripes: 1, policy: 'normal', pvUuids: ['pv2'] }), [
      'pv2',
    ]);
    assert.deepEqual(
      pvsOf({ extentCount: 25, stripes: 1, policy: 'normal', missingPvUuids: ['pv1'] }),
      ['pv2', 'pv0'],
    );
    assert.deepEqual(
      pvsOf({ extentCount: 5, stripes: 1, policy: 'normal', excludePvUuids: ['pv1', 'pv2'] }),
      ['pv0'],
    );
    expectCode(
      () =>
        allocateExtents(md, {
          extentCount: 21,
          stripes: 1,
          policy: 'normal',
          pvUuids: ['pv1', 'pv2'],
          missingPvUuids: ['pv1'],
        }),
      'VG_NO_SPACE',
      /needs 21 free extents, only 20 are free on the allowed PVs/,
    );
    expectCode(
      () => allocateExtents(md, { extentCount: 1, stripes: 1, policy: 'normal', pvUuids: ['pv9'] }),
      'PV_NOT_FOUND',
    );
  });

  it('never uses a PV marked not allocatable, and counts its free extents when space runs out', () => {
    const md = deepFreeze(setPvAllocatable(newVg([10, 30, 20]), 'pv1', false, context));
    const pvsOf = (request: Parameters<typeof allocateExtents>[1]): string[] =>
      allocateExtents(md, request).flatMap((segment) => segment.areas.map((area) => area.pvUuid));
    // pv1 has the most free space and would come first.
    assert.deepEqual(pvsOf({ extentCount: 25, stripes: 1, policy: 'normal' }), ['pv2', 'pv0']);
    assert.deepEqual(pvsOf({ extentCount: 4, stripes: 2, policy: 'normal' }), ['pv2', 'pv0']);
    const held =
      /; 30 more free extents are on PVs marked not allocatable: PV pv1 \(\/dev\/pv1\) \(pv change PATH --allocatable y allows them\)$/;
    expectCode(
      () => allocateExtents(md, { extentCount: 30, stripes: 1, policy: 'normal' }),
      'VG_NO_SPACE',
      /needs 30 free extents, only 29 are free on the allocatable PVs of VG vg0; 30 more/,
    );
    expectCode(
      () => allocateExtents(md, { extentCount: 1, stripes: 1, policy: 'normal', pvUuids: ['pv1'] }),
      'VG_NO_SPACE',
      /only 0 are free on the allowed PVs; 30 more free extents/,
    );
    expectCode(
      () => allocateExtents(md, { extentCount: 21, stripes: 1, policy: 'contiguous' }),
      'VG_NO_SPACE',
      held,
    );
    expectCode(
      () => allocateExtents(md, { extentCount: 6, stripes: 3, policy: 'normal' }),
      'VG_NO_SPACE',
      held,
    );
    // Excluded, or with no free extents: nothing to say about it.
    expectCode(
      () =>
        allocateExtents(md, {
          extentCount: 30,
          stripes: 1,
          policy: 'normal',
          excludePvUuids: ['pv1'],
        }),
      'VG_NO_SPACE',
      /only 29 are free in VG vg0$/,
    );
    const full = setPvAllocatable(withLv(newVg([10, 5]), 'a', 5, 'pv1'), 'pv1', false, context);
    expectCode(
      () => allocateExtents(full, { extentCount: 10, stripes: 1, policy: 'normal' }),
      'VG_NO_SPACE',
      /needs 10 free extents, only 9 are free in VG vg0$/,
    );
  });

  it('asserts that the request is a multiple of the stripe count', () => {
    assert.throws(
      () => allocateExtents(newVg([10, 10]), { extentCount: 5, stripes: 2, policy: 'normal' }),
      /assertion failed: extent count 5 must be a positive multiple of the stripe count 2/,
    );
    assert.equal(roundUpToStripes(5, 2), 6);
    assert.equal(roundUpToStripes(6, 3), 6);
    assert.equal(roundUpToStripes(7, 1), 7);
  });
});

describe('allocateExtents, striped', () => {
  it('normal puts each stripe on a different PV, most free space first', () => {
    const md = newVg([10, 30, 20, 25]);
    assert.deepEqual(
      allocateExtents(md, {
        extentCount: 30,
        stripes: 3,
        policy: 'normal',
        stripeSizeBytes: 65536,
      }),
      [
        {
          lvExtentStart: 0,
          extentCount: 30,
          stripeSizeBytes: 65536,
          areas: [
            { pvUuid: 'pv1', pvExtentStart: 0 },
            { pvUuid: 'pv3', pvExtentStart: 0 },
            { pvUuid: 'pv2', pvExtentStart: 0 },
          ],
        },
      ],
    );
  });

  it('normal builds several striped segments when no PVs have long enough runs', () => {
    let md = newVg([21, 12, 12]);
    md = withLv(md, 'a', 5, 'pv1'); // pv1: 5 used, 7 free
    md = withLv(md, 'b', 6, 'pv2'); // pv2: 6 used, 6 free
    const segments = allocateExtents(md, { extentCount: 20, stripes: 2, policy: 'normal' });
    for (const segment of segments) {
      assert.equal(new Set(segment.areas.map((area) => area.pvUuid)).size, 2);
    }
    assert.equal(
      segments.reduce((sum, segment) => sum + segment.extentCount, 0),
      20,
    );
    assert.ok(segments.length >= 2);
  });

  it('normal refuses when fewer PVs than stripes have free extents, saying so', () => {
    const md = newVg([10, 40]);
    expectCode(
      () => allocateExtents(md, { extentCount: 6, stripes: 3, policy: 'normal' }),
      'VG_NO_SPACE',
      /needs 6 extents in 3 stripes on 3 different PVs; 49 extents are free in VG vg0, but after placing 0 extents per stripe only 2 PVs have free extents left/,
    );
  });

  it('contiguous needs one run per stripe on different PVs', () => {
    const md = newVg([30, 30, 8]);
    expectCode(
      () => allocateExtents(md, { extentCount: 30, stripes: 3, policy: 'contiguous' }),
      'VG_NO_SPACE',
      /needs 3 PVs with 10 contiguous free extents each, only 2 have/,
    );
    const [segment, ...rest] = allocateExtents(md, {
      extentCount: 24,
      stripes: 3,
      policy: 'contiguous',
    });
    assert.equal(rest.length, 0);
    assert.deepEqual(segment?.areas.map((area) => area.pvUuid).sort(), ['pv0', 'pv1', 'pv2']);
  });

  it('anywhere may put two stripes on one PV', () => {
    const md = newVg([41, 3]);
    const segments = allocateExtents(md, { extentCount: 40, stripes: 2, policy: 'anywhere' });
    assert.deepEqual(segments, [
      {
        lvExtentStart: 0,
        extentCount: 40,
        stripeSizeBytes: 65536,
        areas: [
          { pvUuid: 'pv0', pvExtentStart: 1 },
          { pvUuid: 'pv0', pvExtentStart: 21 },
        ],
      },
    ]);
  });

  it('continues every stripe of the last segment when extending', () => {
    let md = newVg([30, 30]);
    md = createLv(
      md,
      { uuid: 's', name: 's', extentCount: 10, stripes: 2, policy: 'normal' },
      context,
    );
    const lv = lvNamed(md, 's');
    const [segment, ...rest] = allocateExtents(md, {
      extentCount: 6,
      stripes: 2,
      stripeSizeBytes: 65536,
      policy: 'contiguous',
      after: lv,
    });
    assert.equal(rest.length, 0);
    assert.deepEqual(
      segment?.areas,
      lv.segments[0]?.areas.map((area) => ({ ...area, pvExtentStart: area.pvExtentStart + 5 })),
    );
    assert.equal(segment?.lvExtentStart, 10);
  });
});
