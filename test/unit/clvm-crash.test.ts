/**
 * The VG metadata commit under power loss (docs/clvm.md, "Commit protocol"): a 3-PV VG on
 * fault-injecting devices, crashed at every I/O of a commit (every read, write and flush, on each
 * PV) with unflushed writes lost, kept, or kept at random; then at a torn header write. After
 * each crash a reader must see exactly the old or the new VG, and the next commit must bring
 * every copy on every PV to the newest seqno.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FaultInjectingDevice, type CrashOptions } from '../../src/disk/fault-device.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { TandemError } from '../../src/errors.js';
import {
  type PvHandle,
  commitVgMetadata,
  readVgMetadata,
  scanDevices,
} from '../../src/clvm/metadata-store.js';
import { type PvLabel, createPv, readPvLabel } from '../../src/clvm/pv-label.js';
import type { VgMetadata } from '../../src/clvm/types.js';
import { fixture as sharedFixture, vgUuid } from './clvm-vg-fixture.js';

const mebibyte = 1024 * 1024;

/** The shared fixture; lastChange says how many PVs it spans. */
function fixture(labels: readonly PvLabel[], seqno: number): VgMetadata {
  return sharedFixture(labels, seqno, ` with ${labels.length} PVs`);
}

interface World {
  readonly devices: FaultInjectingDevice[];
  readonly handles: PvHandle[];
  /** Committed (seqno 2) on the first two PVs. */
  readonly old: VgMetadata;
  /** The commit under test (seqno 3): adds the third PV, which is in no VG yet. */
  readonly next: VgMetadata;
}

async function setup(sectorBytes: 512 | 4096): Promise<World> {
  const devices: FaultInjectingDevice[] = [];
  const handles: PvHandle[] = [];
  for (let index = 0; index < 3; index++) {
    const base = new MemoryDevice({
      sizeBytes: 8 * mebibyte,
      logicalSectorSizeBytes: sectorBytes,
      alignmentBytes: sectorBytes,
    });
    const device = new FaultInjectingDevice(base, { description: `pv${index}`, seed: index + 1 });
    // Small metadata areas, and no blank check of fresh devices: the test runs 260 of these.
    const label = await createPv(device, {
      wallMs: 1000 + index,
      metadataAreaBytes: 64 * 1024,
      force: true,
    });
    devices.push(device);
    handles.push({ path: `/dev/crash${index}`, device, label });
  }
  const members = handles.slice(0, 2);
  const memberLabels = members.map((handle) => handle.label);
  // Two commits first, so the commit under test places its record after an existing one.
  await commitVgMetadata(members, fixture(memberLabels, 1));
  const old = fixture(memberLabels, 2);
  await commitVgMetadata(members, old);
  return {
    devices,
    handles,
    old,
    next: fixture(
      handles.map((handle) => handle.label),
      3,
    ),
  };
}

/** Lets every request still running after a failed commit reach the crashed devices. */
async function settle(): Promise<void> {
  for (let turn = 0; turn < 3; turn++) await new Promise((resolve) => setImmediate(resolve));
}

/** After the crash: reopen the PVs as a new host would, and check old-or-new. */
async function checkOldOrNew(world: World, context: string): Promise<'old' | 'new'> {
  const handles: PvHandle[] = [];
  for (const [index, device] of world.devices.entries()) {
    handles.push({ path: `/dev/crash${index}`, device, label: await readPvLabel(device) });
  }
  const read = await readVgMetadata(handles);
  const outcome = read.metadata.seqno === world.next.seqno ? 'new' : 'old';
  assert.deepStrictEqual(read.metadata, outcome === 'new' ? world.next : world.old, context);
  // A scan agrees with the read: the added PV belongs to the VG exactly when the new VG won.
  const scan = await scanDevices(handles.map(({ path, device }) => ({ path, device })));
  const added = handles[2]?.label.pvUuid;
  const members = scan.byVg.get(vgUuid)?.map((pv) => pv.label.pvUuid) ?? [];
  assert.equal(
    members.includes(added ?? ''),
    outcome === 'new',
    `${context}: scan of the added PV`,
  );
  // The repair: one more commit brings every copy on every PV to the newest seqno.
  const repaired = { ...world.next, seqno: read.metadata.seqno + 1, lastChange: 'repair' };
  await commitVgMetadata(handles, repaired);
  const after = await readVgMetadata(handles);
  assert.deepStrictEqual(after.metadata, repaired, context);
  assert.deepStrictEqual(after.stalePvUuids, [], context);
  assert.equal(after.copies.length, 6);
  for (const copy of after.copies) assert.equal(copy.seqno, repaired.seqno, context);
  for (const handle of handles) assert.equal((await readPvLabel(handle.device)).vgUuid, vgUuid);
  return outcome;
}

async function expectGone(promise: Promise<unknown>, context: string): Promise<void> {
  await assert.rejects(promise, (error: unknown) => {
    assert.ok(
      error instanceof TandemError && error.code === 'DISK_GONE',
      `${context}: ${String(error)}`,
    );
    return true;
  });
}

/** I/O requests of every kind, over all three devices, that one commit makes. */
async function countCommitIos(sectorBytes: 512 | 4096): Promise<number> {
  const world = await setup(sectorBytes);
  let count = 0;
  for (const device of world.devices) device.onIo = () => count++;
  await commitVgMetadata(world.handles, world.next);
  return count;
}

const crashModes: CrashOptions[] = [
  { keep: 'none' },
  { keep: 'all' },
  { keep: 'random', seed: 11 },
  { keep: 'random', seed: 12 },
  { keep: 'random', seed: 13 },
];

async function crashAt(sectorBytes: 512 | 4096, ioIndex: number, mode: CrashOptions) {
  const world = await setup(sectorBytes);
  const context = `${sectorBytes} B sectors, crash at I/O ${ioIndex}, keep ${mode.keep} ${mode.seed ?? ''}`;
  const crashes: Promise<void>[] = [];
  let seen = 0;
  for (const device of world.devices) {
    device.onIo = () => {
      if (seen++ !== ioIndex) return;
      for (const [index, each] of world.devices.entries()) {
        crashes.push(each.crash({ keep: mode.keep, seed: (mode.seed ?? 0) * 10 + index }));
      }
    };
  }
  await expectGone(commitVgMetadata(world.handles, world.next), context);
  await settle();
  assert.equal(crashes.length, 3, `${context}: the crash ran`);
  await Promise.all(crashes);
  for (const device of world.devices) {
    device.onIo = undefined;
    await device.restart();
  }
  return checkOldOrNew(world, context);
}

describe('VG metadata commit crash safety', () => {
  for (const sectorBytes of [512, 4096] as const) {
    it(`leaves the old or the new VG after a crash at any I/O (${sectorBytes} B sectors)`, async () => {
      const ioCount = await countCommitIos(sectorBytes);
      // Reads of 6 headers, 1 label write, 6 records, 3 flushes, 6 headers, 3 flushes.
      assert.equal(ioCount, 25);
      const outcomes = new Set<string>();
      for (let ioIndex = 0; ioIndex < ioCount; ioIndex++) {
        for (const mode of crashModes) outcomes.add(await crashAt(sectorBytes, ioIndex, mode));
      }
      assert.deepStrictEqual([...outcomes].sort(), ['new', 'old'], 'both outcomes happen');
    });
  }

  it('keeps the new VG after a crash once the commit returned', async () => {
    const world = await setup(512);
    await commitVgMetadata(world.handles, world.next);
    await Promise.all(world.devices.map((device) => device.crash({ keep: 'none' })));
    await Promise.all(world.devices.map((device) => device.restart()));
    assert.equal(await checkOldOrNew(world, 'after the commit'), 'new');
  });

  for (const sectorBytes of [512, 4096] as const) {
    it(`survives a torn MDA header write (${sectorBytes} B sectors)`, async () => {
      const sectorsPerHeader = 4096 / sectorBytes;
      for (let keepSectors = 0; keepSectors <= sectorsPerHeader; keepSectors++) {
        for (const crashKeep of ['none', 'all'] as const) {
          const world = await setup(sectorBytes);
          const [first] = world.devices;
          assert.ok(first !== undefined);
          const rule = first.tearWrite({
            keepSectors,
            then: 'crash',
            crashKeep,
            match: { offsetBytes: 4096, lengthBytes: 4096 },
            nth: 1,
          });
          const context = `torn header keeping ${keepSectors} sectors, keep ${crashKeep}`;
          await expectGone(commitVgMetadata(world.handles, world.next), context);
          assert.equal(rule.firedCount, 1, context);
          await settle();
          await Promise.all(world.devices.map((device) => device.crash({ keep: crashKeep })));
          await Promise.all(world.devices.map((device) => device.restart()));
          const outcome = await checkOldOrNew(world, context);
          // The header record is its first sector: once that landed, this copy is the new VG.
          if (keepSectors >= 1) assert.equal(outcome, 'new', context);
        }
      }
    });
  }

  it('leaves the old VG after a record write fails, and a retry commits the new one', async () => {
    const world = await setup(512);
    const [, second] = world.devices;
    assert.ok(second !== undefined);
    second.tearWrite({
      keepSectors: 3,
      then: 'fail',
      match: { predicate: (event) => event.lengthBytes > 4096 },
      nth: 1,
    });
    await assert.rejects(commitVgMetadata(world.handles, world.next), /injected torn write/);
    await settle();
    assert.equal((await readVgMetadata(world.handles)).metadata.seqno, world.old.seqno);
    await commitVgMetadata(world.handles, world.next);
    assert.deepStrictEqual((await readVgMetadata(world.handles)).metadata, world.next);
  });
});
