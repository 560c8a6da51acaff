/**
 * VG metadata operations: every change returns a new, validated version (seqno + 1, stamped)
 * and leaves its input alone; bad requests are TandemErrors that say what to do; validation
 * catches each broken invariant. (pv move planning: clvm-move-planner.test.ts.)
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { beginLockspaceMove } from '../../src/clvm/lockspace-move-plan.js';
import type { LockspaceMoveRecord, LvRecord, VgMetadata } from '../../src/clvm/types.js';
import {
  lockspaceLvName,
  lvsPerVgMax,
  pvsPerVgMax,
  segmentsPerLvMax,
  tagsPerLvMax,
} from '../../src/clvm/types.js';
import {
  createLv,
  createVgMetadata,
  extendLv,
  extendVg,
  findLv,
  lvExtentCount,
  lvSizeBytes,
  lvsOnPv,
  markRemoving,
  pvUsedExtents,
  reduceLv,
  reduceVg,
  removeLv,
  renameLv,
  renameVg,
  restoreVersion,
  setLvTags,
  setPvAllocatable,
  validateVgMetadata,
  vgExtentTotals,
} from '../../src/clvm/vg-operations.js';
import {
  addLv as lv,
  context,
  deepFreeze,
  expectCode,
  extentMap,
  extentSizeBytes,
  lvNamed,
  newVg,
  pvRecord,
} from './clvm-metadata-fixtures.js';

const later = { wallMs: context.wallMs + 1000, updatedBy: 'host-b' };

describe('createVgMetadata', () => {
  it('starts at seqno 1 with the hidden lockspace LV contiguous on the first PV', () => {
    const md = newVg([100, 100], 3);
    assert.equal(md.seqno, 1);
    assert.equal(md.lastChange, 'vg create vg0');
    const lockspace = findLv(md, lockspaceLvName);
    assert.deepEqual(lockspace?.segments, [
      {
        lvExtentStart: 0,
        extentCount: 3,
        stripeSizeBytes: 0,
        areas: [{ pvUuid: 'pv0', pvExtentStart: 0 }],
      },
    ]);
    assert.equal(lockspace?.hidden, true);
  });

  it('rounds the lockspace up to whole extents and spreads it when the first PV is too small', () => {
    const md = createVgMetadata({
      uuid: 'u',
      name: 'vg1',
      extentSizeBytes,
      maxHosts: 8,
      ioTimeoutMs: 1000,
      maxLvs: 16,
      pvs: [pvRecord('small', 2), pvRecord('big', 10)],
      lockspaceBytes: 2 * extentSizeBytes + 1,
      lockspaceLvUuid: 'ls',
      context,
    });
    assert.equal(lvExtentCount(lvNamed(md, lockspaceLvName)), 3);
    assert.deepEqual(
      lvNamed(md, lockspaceLvName).segments.map((segment) => segment.areas[0]?.pvUuid),
      ['big'],
    );
  });

  it('refuses bad names, extent sizes and PV lists', () => {
    const base = {
      uuid: 'u',
      name: 'vg1',
      extentSizeBytes,
      maxHosts: 8,
      ioTimeoutMs: 1000,
      maxLvs: 16,
      pvs: [pvRecord('pv0', 10)],
      lockspaceBytes: extentSizeBytes,
      lockspaceLvUuid: 'ls',
      context,
    };
    expectCode(
      () => createVgMetadata({ ...base, name: '-vg' }),
      'INVALID_ARGUMENT',
      /VG name "-vg"/,
    );
    expectCode(() => createVgMetadata({ ...base, name: '..' }), 'INVALID_ARGUMENT');
    expectCode(() => createVgMetadata({ ...base, extentSizeBytes: 1000 }), 'INVALID_ARGUMENT');
    expectCode(() => createVgMetadata({ ...base, pvs: [] }), 'INVALID_ARGUMENT', /1 to 256 PVs/);
    expectCode(
      () => createVgMetadata({ ...base, pvs: [pvRecord('a', 1), pvRecord('a', 1)] }),
      'INVALID_ARGUMENT',
      /given twice/,
    );
    expectCode(
      () => createVgMetadata({ ...base, lockspaceBytes: 11 * extentSizeBytes }),
      'VG_NO_SPACE',
    );
  });
});

describe('LV operations', () => {
  it('createLv returns a new version, stamped, and leaves the input alone', () => {
    const md = deepFreeze(newVg([100, 100]));
    const next = createLv(
      md,
      { uuid: 'u1', name: 'vm1-disk0', extentCount: 10, tags: ['vm=1'] },
      later,
    );
    assert.equal(next.seqno, 2);
    assert.equal(next.updatedBy, 'host-b');
    assert.equal(next.updatedWallMs, later.wallMs);
    assert.equal(next.lastChange, 'lv create vm1-disk0');
    assert.equal(md.lvs.length, 1);
    const created = lvNamed(next, 'vm1-disk0');
    assert.deepEqual(created.tags, ['vm=1']);
    assert.equal(created.hidden, false);
    assert.equal(created.leaseSlot, 1);
    assert.equal(lvSizeBytes(next, created), 10 * extentSizeBytes);
  });

  it('createLv checks names, uniqueness, tags, stripes and limits', () => {
    const md = lv(newVg([100, 100]), 'a', 1);
    expectCode(() => lv(md, 'a', 1, { uuid: 'other' }), 'LV_EXISTS', /LV a already exists/);
    expectCode(
      () => createLv(md, { uuid: 'a-uuid', name: 'b', extentCount: 1 }, context),
      'LV_EXISTS',
    );
    expectCode(() => lv(md, 'bad name', 1), 'INVALID_ARGUMENT', /may hold only/);
    expectCode(() => lv(md, 'x'.repeat(65), 1), 'INVALID_ARGUMENT', /longer than 64 bytes/);
    expectCode(() => lv(md, lockspaceLvName, 1), 'INVALID_ARGUMENT');
    expectCode(() => lv(md, 'b', 0), 'INVALID_ARGUMENT', /at least one extent/);
    expectCode(() => lv(md, 'b', 1, { tags: ['-x'] }), 'INVALID_ARGUMENT', /tag "-x"/);
    expectCode(() => lv(md, 'b', 1, { tags: ['a b'] }), 'INVALID_ARGUMENT');
    expectCode(() => lv(md, 'b', 1, { tags: ['t'.repeat(129)] }), 'INVALID_ARGUMENT');
    const manyTags = Array.from({ length: tagsPerLvMax + 1 }, (_, index) => `t${index}`);
    expectCode(() => lv(md, 'b', 1, { tags: manyTags }), 'INVALID_ARGUMENT', /at most 32 tags/);
    expectCode(() => lv(md, 'b', 2, { stripes: 33 }), 'INVALID_ARGUMENT', /stripe count/);
    expectCode(() => lv(md, 'b', 2, { stripes: 2, stripeSizeBytes: 3000 }), 'INVALID_ARGUMENT');
    expectCode(() => lv(md, 'b', 2, { stripeSizeBytes: 65536 }), 'INVALID_ARGUMENT', /linear/);
    expectCode(() => lv(md, 'b', 1000), 'VG_NO_SPACE');
  });

  it('createLv refuses past the LV limit', () => {
    let md = newVg([lvsPerVgMax + 10]);
    const template = lvNamed(lv(md, 'x', 1), 'x');
    const lvs: LvRecord[] = [...md.lvs];
    for (let index = 1; lvs.length < lvsPerVgMax; index += 1) {
      lvs.push({
        ...template,
        uuid: `u${index}`,
        name: `lv${index}`,
        leaseSlot: index,
        segments: [
          {
            lvExtentStart: 0,
            extentCount: 1,
            stripeSizeBytes: 0,
            areas: [{ pvUuid: 'pv0', pvExtentStart: index }],
          },
        ],
      });
    }
    md = validateVgMetadata({ ...md, lvs });
    expectCode(() => lv(md, 'one-more', 1), 'FAILED_PRECONDITION', /4096 LVs, the limit/);
  });

  it('createLv refuses past the LVs the lockspace has leases for (--max-lvs)', () => {
    let md = newVg([200]);
    assert.equal(md.maxLvs, 64);
    for (let index = 0; index < 64; index++) md = lv(md, `lv${index}`, 1);
    expectCode(() => lv(md, 'one-more', 1), 'FAILED_PRECONDITION', /64 LVs.*--max-lvs 64/);
    md = removeLv(md, 'lv10', later);
    md = lv(md, 'one-more', 1);
    assert.equal(lvNamed(md, 'one-more').leaseSlot, 11, 'the freed lease slot is taken again');
  });

  it('createLv refuses an allocation that would pass the segment limit', () => {
    // Two PVs whose free space is every other extent: a 1025-extent LV needs 1025 segments.
    const holes = (name: string, pvUuid: string, slot: number): LvRecord => ({
      uuid: name,
      name,
      hidden: false,
      tags: [],
      createdWallMs: 0,
      leaseSlot: slot,
      segments: Array.from({ length: segmentsPerLvMax }, (_, index) => ({
        lvExtentStart: index,
        extentCount: 1,
        stripeSizeBytes: 0,
        areas: [{ pvUuid, pvExtentStart: 2 * index + 1 }],
      })),
    });
    const base = newVg([2049, 2048]);
    const md = validateVgMetadata({
      ...base,
      lvs: [...base.lvs, holes('a', 'pv0', 1), holes('b', 'pv1', 2)],
    });
    expectCode(
      () => lv(md, 'c', 1025),
      'VG_NO_SPACE',
      /too fragmented: LV c would need 1025 segments/,
    );
    assert.equal(lvNamed(lv(md, 'c', 1024), 'c').segments.length, 1024);
  });

  it('gives each LV the lowest free lease slot, reusing those of removed LVs', () => {
    let md = lv(lv(lv(newVg([100]), 'a', 1), 'b', 1), 'c', 1);
    md = removeLv(md, 'b', context);
    md = lv(md, 'd', 1);
    assert.deepEqual(
      md.lvs.map((candidate) => [candidate.name, candidate.leaseSlot]),
      [
        [lockspaceLvName, undefined],
        ['a', 1],
        ['c', 3],
        ['d', 2],
      ],
    );
  });

  it('rounds a striped LV up to a multiple of its stripes', () => {
    const md = lv(newVg([100, 100, 100]), 's', 10, { stripes: 3 });
    assert.equal(lvExtentCount(lvNamed(md, 's')), 12);
    assert.equal(lvNamed(md, 's').segments[0]?.stripeSizeBytes, 65536);
  });

  it('extendLv continues the last segment and merges into it', () => {
    let md = lv(newVg([100, 100]), 'a', 10, { pvUuids: ['pv0'] });
    md = lv(md, 'b', 5, { pvUuids: ['pv1'] });
    const before = extentMap(md);
    md = extendLv(md, 'a', 25, { policy: 'normal' }, later);
    assert.equal(md.lastChange, 'lv extend a');
    assert.deepEqual(lvNamed(md, 'a').segments, [
      {
        lvExtentStart: 0,
        extentCount: 25,
        stripeSizeBytes: 0,
        areas: [{ pvUuid: 'pv0', pvExtentStart: 1 }],
      },
    ]);
    assert.deepEqual(extentMap(md).get('a-uuid')?.slice(0, 10), before.get('a-uuid'));
    assert.deepEqual(extentMap(md).get('b-uuid'), before.get('b-uuid'));
  });

  it('extendLv keeps the stripes of the last segment and rounds up', () => {
    let md = lv(newVg([100, 100]), 's', 10, { stripes: 2 });
    md = extendLv(md, 's', 15, { policy: 'contiguous' }, context);
    const segments = lvNamed(md, 's').segments;
    assert.equal(segments.length, 1);
    assert.equal(segments[0]?.extentCount, 16);
  });

  it('extendLv refuses sizes that do not grow, and the hidden LV', () => {
    const md = lv(newVg([100]), 'a', 10);
    expectCode(() => extendLv(md, 'a', 10, {}, context), 'INVALID_ARGUMENT', /has 10 extents/);
    expectCode(() => extendLv(md, lockspaceLvName, 10, {}, context), 'INVALID_ARGUMENT', /hidden/);
    expectCode(() => extendLv(md, 'nope', 10, {}, context), 'LV_NOT_FOUND');
    expectCode(() => extendLv(md, 'a', 200, {}, context), 'VG_NO_SPACE', /needs 190 free extents/);
  });

  it('reduceLv cuts from the end, splitting a segment', () => {
    let md = lv(newVg([20, 20]), 'a', 25);
    const before = extentMap(md).get('a-uuid') ?? [];
    assert.equal(lvNamed(md, 'a').segments.length, 2);
    md = reduceLv(md, 'a', 7, later);
    assert.deepEqual(lvNamed(md, 'a').segments, [
      {
        lvExtentStart: 0,
        extentCount: 7,
        stripeSizeBytes: 0,
        areas: lvNamed(md, 'a').segments[0]?.areas,
      },
    ]);
    assert.deepEqual(extentMap(md).get('a-uuid'), before.slice(0, 7));
    assert.equal(md.lastChange, 'lv reduce a to 7 extents');
    assert.equal(vgExtentTotals(md).freeExtentCount, 40 - 1 - 7);
  });

  it('reduceLv keeps whole rows of a striped segment, rounding the size up', () => {
    let md = lv(newVg([50, 50, 50]), 's', 30, { stripes: 3 });
    const before = extentMap(md).get('s-uuid') ?? [];
    md = reduceLv(md, 's', 13, context);
    assert.equal(lvExtentCount(lvNamed(md, 's')), 15);
    assert.deepEqual(extentMap(md).get('s-uuid'), before.slice(0, 15));
    expectCode(
      () => reduceLv(md, 's', 14, context),
      'INVALID_ARGUMENT',
      /ask for 12 extents or fewer/,
    );
    expectCode(() => reduceLv(md, 's', 0, context), 'INVALID_ARGUMENT');
    expectCode(() => reduceLv(md, 's', 15, context), 'INVALID_ARGUMENT');
  });

  it('renames, removes and tags LVs, never the hidden one', () => {
    let md = lv(lv(newVg([100]), 'a', 1), 'b', 1);
    md = renameLv(md, 'a', 'c', context);
    assert.equal(md.lastChange, 'lv rename a c');
    assert.equal(findLv(md, 'a'), undefined);
    expectCode(() => renameLv(md, 'c', 'b', context), 'LV_EXISTS');
    expectCode(() => renameLv(md, 'c', 'c', context), 'INVALID_ARGUMENT');
    expectCode(() => renameLv(md, 'c', 'bad/name', context), 'INVALID_ARGUMENT');
    expectCode(() => renameLv(md, lockspaceLvName, 'x', context), 'INVALID_ARGUMENT', /hidden/);
    expectCode(() => removeLv(md, lockspaceLvName, context), 'INVALID_ARGUMENT', /hidden/);
    expectCode(() => setLvTags(md, lockspaceLvName, ['t'], [], context), 'INVALID_ARGUMENT');
    md = setLvTags(md, 'c', ['x', 'y', 'x'], [], context);
    md = setLvTags(md, 'c', ['z'], ['x', 'absent'], context);
    assert.deepEqual(lvNamed(md, 'c').tags, ['y', 'z']);
    expectCode(() => setLvTags(md, 'c', ['ok', 'not ok'], [], context), 'INVALID_ARGUMENT');
    const many = Array.from({ length: tagsPerLvMax - 1 }, (_, index) => `t${index}`);
    expectCode(() => setLvTags(md, 'c', many, [], context), 'INVALID_ARGUMENT', /would have 33/);
    md = removeLv(md, 'b', context);
    assert.deepEqual(
      md.lvs.map((candidate) => candidate.name),
      [lockspaceLvName, 'c'],
    );
    expectCode(() => removeLv(md, 'b', context), 'LV_NOT_FOUND');
  });
});

describe('VG operations', () => {
  it('renames the VG and adds PVs', () => {
    let md = renameVg(newVg([10]), 'vg9', context);
    assert.equal(md.name, 'vg9');
    expectCode(() => renameVg(md, 'vg9', context), 'INVALID_ARGUMENT');
    expectCode(() => renameVg(md, 'a b', context), 'INVALID_ARGUMENT');
    md = extendVg(md, [pvRecord('pv1', 5)], context);
    assert.deepEqual(vgExtentTotals(md), { extentCount: 15, freeExtentCount: 14 });
    expectCode(() => extendVg(md, [pvRecord('pv1', 5)], context), 'PV_IN_USE', /already in VG/);
    expectCode(
      () => extendVg(md, [pvRecord('n', 5), pvRecord('n', 5)], context),
      'INVALID_ARGUMENT',
    );
    const full = newVg(Array.from({ length: pvsPerVgMax }, () => 1));
    expectCode(() => extendVg(full, [pvRecord('x', 1)], context), 'FAILED_PRECONDITION');
  });

  it('reduceVg refuses a PV in use, naming its LVs, and removes an empty one', () => {
    let md = lv(lv(newVg([10, 10, 10]), 'a', 15), 'b', 2, { pvUuids: ['pv2'] });
    assert.deepEqual(
      lvsOnPv(md, 'pv2').map((candidate) => candidate.name),
      ['a', 'b'],
    );
    expectCode(
      () => reduceVg(md, 'pv2', context),
      'PV_IN_USE',
      /holds extents of LV a, b; move them off/,
    );
    expectCode(() => reduceVg(md, 'pv0', context), 'PV_IN_USE', /\[lockspace\]/);
    expectCode(() => reduceVg(md, 'pv7', context), 'PV_NOT_FOUND');
    const emptyPv = ['pv0', 'pv1', 'pv2'].find((pvUuid) => pvUsedExtents(md, pvUuid) === 0);
    assert.equal(emptyPv, undefined);
    md = extendVg(md, [pvRecord('pv3', 4)], context);
    md = reduceVg(md, 'pv3', context);
    assert.deepEqual(
      md.pvs.map((pv) => pv.uuid),
      ['pv0', 'pv1', 'pv2'],
    );
  });

  it('restoreVersion brings back an old body at the next seqno', () => {
    const old = lv(newVg([10]), 'a', 1);
    const current = removeLv(renameVg(old, 'vg7', context), 'a', context);
    const restored = restoreVersion(current, old, later);
    assert.equal(restored.seqno, current.seqno + 1);
    assert.equal(restored.name, 'vg0');
    assert.deepEqual(restored.lvs, old.lvs);
    assert.equal(restored.lastChange, `vg restore seqno ${old.seqno}`);
    expectCode(() => restoreVersion(current, { ...old, uuid: 'other' }, later), 'INVALID_ARGUMENT');
  });

  it('setPvAllocatable commits once; the same value again commits nothing', () => {
    const md = deepFreeze(lv(newVg([10, 10]), 'a', 2, { pvUuids: ['pv1'] }));
    const held = setPvAllocatable(md, 'pv1', false, later);
    assert.equal(held.seqno, md.seqno + 1);
    assert.equal(held.lastChange, 'pv change /dev/pv1 allocatable n');
    assert.equal(held.updatedBy, 'host-b');
    assert.deepEqual(
      held.pvs.map((pv) => pv.allocatable),
      [true, false],
    );
    // The extents on it stay where they were.
    assert.deepEqual(extentMap(held), extentMap(md));
    assert.equal(setPvAllocatable(held, 'pv1', false, later), held);
    const allowed = setPvAllocatable(held, 'pv1', true, later);
    assert.equal(allowed.seqno, held.seqno + 1);
    assert.equal(allowed.lastChange, 'pv change /dev/pv1 allocatable y');
    assert.deepEqual(allowed.pvs, md.pvs);
    assert.equal(setPvAllocatable(md, 'pv0', true, later), md);
    expectCode(() => setPvAllocatable(md, 'pv7', false, later), 'PV_NOT_FOUND');
    expectCode(
      () => setPvAllocatable(markRemoving(newVg([10]), context), 'pv0', false, later),
      'FAILED_PRECONDITION',
      /being removed/,
    );
  });

  it('markRemoving needs a VG without LVs and freezes it', () => {
    expectCode(() => markRemoving(lv(newVg([10]), 'a', 1), context), 'FAILED_PRECONDITION');
    const removing = markRemoving(newVg([10]), context);
    assert.equal(removing.removing, true);
    expectCode(() => lv(removing, 'a', 1), 'FAILED_PRECONDITION', /being removed/);
  });
});

describe('validateVgMetadata', () => {
  const valid = lv(lv(newVg([20, 20]), 'a', 4), 's', 4, { stripes: 2 });
  const withLv = (name: string, change: (lvRecord: LvRecord) => LvRecord): VgMetadata => ({
    ...valid,
    lvs: valid.lvs.map((candidate) => (candidate.name === name ? change(candidate) : candidate)),
  });
  const area = (
    pvUuid: string,
    pvExtentStart: number,
  ): LvRecord['segments'][number]['areas'][number] => ({
    pvUuid,
    pvExtentStart,
  });
  // The lockspace LV (pv0:0) on its way to pv1, whose extents 0 to 5 hold a and s.
  const moving = beginLockspaceMove(
    valid,
    {
      sourcePvUuid: 'pv0',
      targetPvUuids: ['pv1'],
      missingPvUuids: [],
      mover: { hostId: 3, generation: 2, hostName: 'hv-03' },
    },
    context,
  );
  const record = moving.lockspaceMove;
  assert.ok(record !== undefined);
  const withRecord = (change: Partial<LockspaceMoveRecord>): VgMetadata => ({
    ...moving,
    lockspaceMove: { ...record, ...change },
  });
  const linear = (lvExtentStart: number, extentCount: number, pvUuid: string, pe: number) => ({
    lvExtentStart,
    extentCount,
    stripeSizeBytes: 0,
    areas: [area(pvUuid, pe)],
  });
  const brokenLockspaceMoves: Array<[string, VgMetadata, RegExp]> = [
    ['a lockspace move epoch 0', withRecord({ epoch: 0 }), /lockspace move epoch 0 is not 1/],
    [
      'a lockspace move epoch past the seqno',
      withRecord({ epoch: moving.seqno + 1 }),
      /lockspace move epoch \d+ is not 1 to the seqno/,
    ],
    ['a fractional lockspace move epoch', withRecord({ epoch: 1.5 }), /lockspace move epoch 1.5/],
    [
      'a lockspace move source not in the VG',
      withRecord({ sourcePvUuid: 'pv9' }),
      /lockspace move source PV pv9 is not in the VG/,
    ],
    [
      'a lockspace move source without the lockspace LV',
      withRecord({ sourcePvUuid: 'pv1', segments: [linear(0, 1, 'pv0', 10)] }),
      /lockspace move source PV pv1 does not hold the lockspace LV/,
    ],
    [
      'a lockspace move target without segments',
      withRecord({ segments: [] }),
      /lockspace move target has 0 segments/,
    ],
    [
      'a lockspace move target not from LE 0',
      withRecord({ segments: [linear(1, 1, 'pv1', 10)] }),
      /lockspace move target segment 0 starts at LE 1, not 0/,
    ],
    [
      'a lockspace move target with a gap',
      withRecord({ segments: [linear(0, 1, 'pv1', 10), linear(2, 1, 'pv1', 12)] }),
      /lockspace move target segment 1 starts at LE 2, not 1/,
    ],
    [
      'a lockspace move target with a stripe size on a linear segment',
      withRecord({ segments: [{ ...linear(0, 1, 'pv1', 10), stripeSizeBytes: 65536 }] }),
      /lockspace move target segment 0 is linear but has a stripe size/,
    ],
    [
      'a lockspace move target on an unknown PV',
      withRecord({ segments: [linear(0, 1, 'pv9', 0)] }),
      /lockspace move target segment 0 is on PV pv9, which is not in the VG/,
    ],
    [
      'a lockspace move target past the end of its PV',
      withRecord({ segments: [linear(0, 1, 'pv1', 20)] }),
      /lockspace move target segment 0 runs past the end of PV pv1/,
    ],
    [
      'a lockspace move target of another size than the lockspace LV',
      withRecord({ segments: [linear(0, 2, 'pv1', 10)] }),
      /lockspace move target maps 2 extents, not the 1 of the lockspace LV/,
    ],
    [
      'a lockspace move target on the source PV',
      withRecord({ segments: [linear(0, 1, 'pv0', 10)] }),
      /lockspace move target has an area on the source PV pv0/,
    ],
    ['a mover host id 0', withRecord({ moverHostId: 0 }), /mover host id 0 is not 1 to 16/],
    [
      'a mover host id past maxHosts',
      withRecord({ moverHostId: 17 }),
      /mover host id 17 is not 1 to 16/,
    ],
    [
      'a mover generation 0',
      withRecord({ moverGeneration: 0 }),
      /mover generation 0 is not a positive integer/,
    ],
    [
      'an empty mover host name',
      withRecord({ moverHostName: '' }),
      /mover host name "" is not 1 to 64 bytes/,
    ],
    [
      'a mover host name over 64 bytes',
      withRecord({ moverHostName: 'é'.repeat(33) }),
      /mover host name "é+" is not 1 to 64 bytes/,
    ],
    [
      'a lockspace move target on used extents',
      withRecord({ segments: [linear(0, 1, 'pv1', 2)] }),
      /PV pv1 extent 2 is used by both lv a segment 0 area 0 and the lockspace move target \(epoch \d+\) segment 0 area 0/,
    ],
    [
      'a lockspace move and a pv move step at once',
      {
        ...moving,
        move: {
          sourcePvUuid: 'pv1',
          targetPvUuids: [],
          lvUuid: 'a-uuid',
          lvExtentStart: 0,
          extentCount: 2,
          targetPvUuid: 'pv0',
          targetPvExtentStart: 10,
          movedExtentCount: 0,
          totalExtentCount: 5,
        },
      },
      /the lockspace move and a pv move step are both recorded/,
    ],
    [
      'a pv move step of the lockspace LV',
      {
        ...valid,
        move: {
          sourcePvUuid: 'pv0',
          targetPvUuids: [],
          lvUuid: 'lockspace-uuid',
          lvExtentStart: 0,
          extentCount: 1,
          targetPvUuid: 'pv1',
          targetPvExtentStart: 10,
          movedExtentCount: 0,
          totalExtentCount: 1,
        },
      },
      /the move step's LV is the lockspace LV \[lockspace\], which only a lockspace move moves/,
    ],
  ];
  const broken: Array<[string, VgMetadata, RegExp]> = [
    ...brokenLockspaceMoves,
    ['seqno 0', { ...valid, seqno: 0 }, /seqno 0/],
    ['fractional seqno', { ...valid, seqno: 1.5 }, /seqno 1.5/],
    ['newer version', { ...valid, version: 2 }, /version 2/],
    ['bad VG name', { ...valid, name: '-x' }, /VG name/],
    [
      'duplicate PV',
      { ...valid, pvs: [...valid.pvs, pvRecord('pv0', 3)] },
      /PV uuid pv0 appears twice/,
    ],
    [
      'PV past its device',
      { ...valid, pvs: [{ ...pvRecord('pv0', 20), sizeBytes: 100 }, pvRecord('pv1', 20)] },
      /pass its end/,
    ],
    [
      'allocatable not a boolean',
      {
        ...valid,
        pvs: [
          { ...pvRecord('pv0', 20), allocatable: 'n' as unknown as boolean },
          pvRecord('pv1', 20),
        ],
      },
      /allocatable is n, not a boolean/,
    ],
    [
      'duplicate LV name',
      withLv('s', (record) => ({ ...record, name: 'a' })),
      /LV name a appears twice/,
    ],
    [
      'duplicate LV uuid',
      withLv('s', (record) => ({ ...record, uuid: 'a-uuid' })),
      /LV uuid a-uuid appears twice/,
    ],
    ['bad LV name', withLv('a', (record) => ({ ...record, name: 'a b' })), /LV name "a b"/],
    [
      'no lockspace',
      { ...valid, lvs: valid.lvs.filter((record) => !record.hidden) },
      /0 lockspace LVs/,
    ],
    [
      'a second hidden LV',
      withLv('a', (record) => ({ ...record, hidden: true, leaseSlot: undefined })),
      /only the lockspace LV/,
    ],
    ['bad tag', withLv('a', (record) => ({ ...record, tags: ['a b'] })), /tag "a b"/],
    [
      'duplicate lease slot',
      withLv('s', (record) => ({ ...record, leaseSlot: 1 })),
      /lease slot 1 is held by two/,
    ],
    ['no segments', withLv('a', (record) => ({ ...record, segments: [] })), /0 segments/],
    [
      'a gap between segments',
      withLv('a', (record) => ({
        ...record,
        segments: [
          { lvExtentStart: 0, extentCount: 2, stripeSizeBytes: 0, areas: [area('pv0', 1)] },
          { lvExtentStart: 3, extentCount: 2, stripeSizeBytes: 0, areas: [area('pv0', 3)] },
        ],
      })),
      /segment 1 starts at LE 3, not 2/,
    ],
    [
      'a striped count not a multiple of its areas',
      withLv('s', (record) => ({
        ...record,
        segments: record.segments.map((segment) => ({ ...segment, extentCount: 5 })),
      })),
      /maps 5 extents, not a positive multiple of 2 areas/,
    ],
    [
      'a striped segment without a valid stripe size',
      withLv('s', (record) => ({
        ...record,
        segments: record.segments.map((segment) => ({ ...segment, stripeSizeBytes: 3000 })),
      })),
      /stripe size 3000 B/,
    ],
    [
      'a linear segment with a stripe size',
      withLv('a', (record) => ({
        ...record,
        segments: record.segments.map((segment) => ({ ...segment, stripeSizeBytes: 65536 })),
      })),
      /is linear but has a stripe size/,
    ],
    [
      'an area past the end of its PV',
      withLv('a', (record) => ({
        ...record,
        segments: [
          { lvExtentStart: 0, extentCount: 4, stripeSizeBytes: 0, areas: [area('pv0', 17)] },
        ],
      })),
      /runs past the end of PV pv0/,
    ],
    [
      'an area on an unknown PV',
      withLv('a', (record) => ({
        ...record,
        segments: [
          { lvExtentStart: 0, extentCount: 4, stripeSizeBytes: 0, areas: [area('pv9', 0)] },
        ],
      })),
      /PV pv9, which is not in the VG/,
    ],
    [
      'an extent used twice',
      withLv('a', (record) => ({
        ...record,
        segments: [
          { lvExtentStart: 0, extentCount: 4, stripeSizeBytes: 0, areas: [area('pv0', 0)] },
        ],
      })),
      /PV pv0 extent 0 is used by both lv \[lockspace\] segment 0 area 0 and lv a segment 0 area 0/,
    ],
    [
      'a move target on used extents',
      {
        ...valid,
        move: {
          sourcePvUuid: 'pv1',
          targetPvUuids: [],
          lvUuid: 'a-uuid',
          lvExtentStart: 0,
          extentCount: 2,
          targetPvUuid: 'pv0',
          targetPvExtentStart: 0,
          movedExtentCount: 0,
          totalExtentCount: 5,
        },
      },
      /is used by both .* and the pv move target/,
    ],
  ];
  for (const [what, md, message] of broken) {
    it(`catches ${what}`, () => {
      expectCode(() => validateVgMetadata(md), 'METADATA_INVALID', message);
    });
  }

  it('passes valid metadata through', () => {
    assert.equal(validateVgMetadata(valid), valid);
    assert.equal(validateVgMetadata(moving), moving);
    assert.deepEqual(record.segments, [linear(0, 1, 'pv1', 6)]);
    assert.equal(lvNamed(valid, 's').segments[0]?.areas[0]?.pvUuid, 'pv0');
  });
});
