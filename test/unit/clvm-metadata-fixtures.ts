/**
 * VG metadata for the allocator and operations tests: small VGs built by the real operations,
 * a map of every LV extent to where its data lives (to prove changes move nothing else), and a
 * deep freeze that turns any mutation of an input into a TypeError.
 */
import assert from 'node:assert/strict';
import { isTandemError, type ErrorCode } from '../../src/errors.js';
import type { LvRecord, PvMoveRecord, PvRecord, VgMetadata } from '../../src/clvm/types.js';
import { createLv, createVgMetadata, type ChangeContext } from '../../src/clvm/vg-operations.js';

export const context: ChangeContext = { wallMs: 1_767_225_600_000, updatedBy: 'host-a' };
export const extentSizeBytes = 4 * 1024 * 1024;
const dataStartBytes = 1024 * 1024;

export function pvRecord(uuid: string, extentCount: number): PvRecord {
  return {
    uuid,
    deviceHint: `/dev/${uuid}`,
    sizeBytes: dataStartBytes + extentCount * extentSizeBytes,
    dataStartBytes,
    extentCount,
    allocatable: true,
  };
}

/** A VG named vg0 on PVs pv0, pv1, ... of these sizes, with a lockspace of that many extents. */
export function newVg(pvExtentCounts: readonly number[], lockspaceExtentCount = 1): VgMetadata {
  return createVgMetadata({
    uuid: 'vg-uuid',
    name: 'vg0',
    extentSizeBytes,
    maxHosts: 16,
    ioTimeoutMs: 1000,
    maxLvs: 64,
    pvs: pvExtentCounts.map((count, index) => pvRecord(`pv${index}`, count)),
    lockspaceBytes: lockspaceExtentCount * extentSizeBytes,
    lockspaceLvUuid: 'lockspace-uuid',
    context,
  });
}

/** Adds LV `name` (uuid `<name>-uuid`) with more CreateLvSpec fields (stripes, policy...). */
export function addLv(
  md: VgMetadata,
  name: string,
  extentCount: number,
  more: object = {},
): VgMetadata {
  return createLv(md, { uuid: `${name}-uuid`, name, extentCount, ...more }, context);
}

export function lvNamed(md: VgMetadata, name: string): LvRecord {
  const lv = md.lvs.find((candidate) => candidate.name === name);
  assert.ok(lv !== undefined, `LV ${name} exists`);
  return lv;
}

/**
 * Where each LE of each LV lives: "pv:pe/stripes/stripeSize/position". A striped row of N LEs
 * maps as a whole to one PE of each area; the LE at row position j is listed with area j's PE,
 * which describes the mapping completely without depending on segment boundaries.
 */
export function extentMap(md: VgMetadata): Map<string, string[]> {
  const map = new Map<string, string[]>();
  for (const lv of md.lvs) {
    const extents: string[] = [];
    for (const segment of lv.segments) {
      const stripes = segment.areas.length;
      for (let offset = 0; offset < segment.extentCount; offset += 1) {
        const area = segment.areas[offset % stripes];
        assert.ok(area !== undefined);
        const pe = area.pvExtentStart + Math.floor(offset / stripes);
        extents.push(
          `${area.pvUuid}:${pe}/${stripes}/${segment.stripeSizeBytes}/${offset % stripes}`,
        );
      }
    }
    map.set(lv.uuid, extents);
  }
  return map;
}

/**
 * The extent map `before` should become when `step` finishes: the step's LEs of the moved area
 * (the first one on the source PV) point at consecutive PEs of the target run; nothing else moves.
 */
export function expectedAfterStep(md: VgMetadata, step: PvMoveRecord): Map<string, string[]> {
  const expected = extentMap(md);
  const extents = expected.get(step.lvUuid);
  assert.ok(extents !== undefined);
  for (let lvExtent = step.lvExtentStart; lvExtent < step.lvExtentStart + step.extentCount;) {
    const entry = extents[lvExtent];
    assert.ok(entry !== undefined);
    const [location = '', stripesText = '1', stripeSize = '0', position = '0'] = entry.split('/');
    const stripes = Number(stripesText);
    const row = Math.floor((lvExtent - step.lvExtentStart) / stripes);
    // The first area on the source PV of this row is the one that moves.
    const rowEntries = extents.slice(lvExtent, lvExtent + stripes);
    const movedPosition = rowEntries.findIndex((item) => item.startsWith(`${step.sourcePvUuid}:`));
    assert.ok(movedPosition >= 0 && location.length > 0 && position === String(0));
    extents[lvExtent + movedPosition] =
      `${step.targetPvUuid}:${step.targetPvExtentStart + row}/${stripes}/${stripeSize}/` +
      `${movedPosition}`;
    lvExtent += stripes;
  }
  return expected;
}

/** Every PE in use, as "pv:pe", to check that no extent is used twice. */
export function usedPhysicalExtents(md: VgMetadata): string[] {
  return [...extentMap(md).values()].flat().map((entry) => entry.split('/')[0] ?? '');
}

export function deepFreeze<T>(value: T): T {
  if (typeof value === 'object' && value !== null && !Object.isFrozen(value)) {
    Object.freeze(value);
    for (const child of Object.values(value)) {
      deepFreeze(child);
    }
  }
  return value;
}

/** Runs `action`, which must throw a TandemError with `code` (and a message matching). */
export function expectCode(action: () => unknown, code: ErrorCode, message?: RegExp): void {
  assert.throws(action, (error: unknown) => {
    assert.ok(isTandemError(error), `a TandemError, not ${String(error)}`);
    assert.equal(error.code, code, error.message);
    if (message !== undefined) {
      assert.match(error.message, message);
    }
    return true;
  });
}
