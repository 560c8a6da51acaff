/**
 * The logical-volume device: the BlockDevice conformance suite on linear and striped LVs, the
 * exact bytes each PV receives, online resize under I/O, partial VGs, and the mirror of a PV
 * evacuation under concurrent writes.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BlockDevice, WriteOptions } from '../../src/disk/block-device.js';
import { FaultInjectingDevice } from '../../src/disk/fault-device.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { createSeededRandom } from '../../src/disk/seeded-random.js';
import { LogicalVolumeDevice, lvMaximumIoBytes } from '../../src/clvm/lv-device.js';
import type { LvSegment } from '../../src/clvm/types.js';
import { type ErrorCode, TandemError } from '../../src/errors.js';
import { expectCode, pattern, runBlockDeviceConformance } from './disk-conformance.js';

const kibibyte = 1024;
const mebibyte = 1024 * kibibyte;
const dataStartBytes = mebibyte;

/** A memory PV that also takes gathered writes, and counts them (the forwarding path). */
class GatheringMemoryDevice extends MemoryDevice {
  gatheredCount = 0;
  writeGathered(pieces: readonly Buffer[], offsetBytes: number, _options?: WriteOptions) {
    this.gatheredCount++;
    return this.write(Buffer.concat(pieces), offsetBytes);
  }
}

type PvSet = Map<string, BlockDevice>;

function memoryPvs(names: readonly string[], sizeBytes: number, sector: 512 | 4096): PvSet {
  const alignmentBytes = sector === 4096 ? 4096 : 1;
  const device = (name: string) =>
    new GatheringMemoryDevice({
      sizeBytes,
      logicalSectorSizeBytes: sector,
      alignmentBytes,
      description: name,
    });
  return new Map(names.map((name) => [name, device(name)]));
}

function lvOver(
  pvs: PvSet,
  segments: readonly LvSegment[],
  extentSizeBytes: number,
  options: { readOnly?: boolean; missing?: ReadonlySet<string> } = {},
): LogicalVolumeDevice {
  return new LogicalVolumeDevice({
    description: 'vg0/lv0',
    extentSizeBytes,
    segments,
    readOnly: options.readOnly ?? false,
    resolvePv: (pvUuid) => {
      const device = pvs.get(pvUuid);
      if (device === undefined || options.missing?.has(pvUuid) === true) return undefined;
      return { device, dataStartBytes };
    },
  });
}

const linear = (lvExtentStart: number, extentCount: number, pvUuid: string, pvExtentStart = 0) => ({
  lvExtentStart,
  extentCount,
  stripeSizeBytes: 0,
  areas: [{ pvUuid, pvExtentStart }],
});

/** Linear over two PVs, in four segments that jump back and forth between them. */
const linearSegments: LvSegment[] = [
  linear(0, 2, 'pv-a', 3),
  linear(2, 3, 'pv-b', 0),
  linear(5, 1, 'pv-a', 0),
  linear(6, 2, 'pv-b', 5),
];

function stripedSegments(stripeSizeBytes: number): LvSegment[] {
  return [
    {
      lvExtentStart: 0,
      extentCount: 6,
      stripeSizeBytes,
      areas: [
        { pvUuid: 'pv-a', pvExtentStart: 1 },
        { pvUuid: 'pv-b', pvExtentStart: 0 },
        { pvUuid: 'pv-c', pvExtentStart: 4 },
      ],
    },
    linear(6, 1, 'pv-a', 6),
  ];
}

for (const sector of [512, 4096] as const) {
  runBlockDeviceConformance(`linear LV over 2 PVs, ${sector} B sectors`, async ({ readOnly }) =>
    lvOver(memoryPvs(['pv-a', 'pv-b'], 16 * mebibyte, sector), linearSegments, mebibyte, {
      readOnly,
    }),
  );
  runBlockDeviceConformance(
    `LV of 3 stripes of 64 KiB, ${sector} B sectors`,
    async ({ readOnly }) =>
      lvOver(
        memoryPvs(['pv-a', 'pv-b', 'pv-c'], 16 * mebibyte, sector),
        stripedSegments(64 * kibibyte),
        mebibyte,
        { readOnly },
      ),
  );
}

/** Reads a range in requests the device accepts. */
async function readAll(device: BlockDevice, offsetBytes: number, lengthBytes: number) {
  const buffer = Buffer.alloc(lengthBytes);
  for (let doneBytes = 0; doneBytes < lengthBytes; doneBytes += device.maximumIoBytes) {
    const piece = buffer.subarray(doneBytes, doneBytes + device.maximumIoBytes);
    await device.read(piece, offsetBytes + doneBytes);
  }
  return buffer;
}

/** The byte every LV byte holds in the mapping tests: depends on its position only. */
function lvByteValue(lvByte: number): number {
  return (lvByte ^ ((lvByte >>> 8) * 7) ^ ((lvByte >>> 16) * 13)) & 0xff;
}

/** Where an LV byte lives, computed byte by byte from the segments (the reference). */
function referenceLocate(segments: readonly LvSegment[], extentSizeBytes: number, lvByte: number) {
  for (const segment of segments) {
    const startBytes = segment.lvExtentStart * extentSizeBytes;
    const relativeBytes = lvByte - startBytes;
    if (relativeBytes < 0 || relativeBytes >= segment.extentCount * extentSizeBytes) continue;
    const stripeCount = segment.areas.length;
    const stripeSizeBytes = stripeCount === 1 ? relativeBytes + 1 : segment.stripeSizeBytes;
    const chunk = Math.floor(relativeBytes / stripeSizeBytes);
    const area = segment.areas[chunk % stripeCount];
    assert.ok(area !== undefined);
    const withinArea =
      Math.floor(chunk / stripeCount) * stripeSizeBytes + (relativeBytes % stripeSizeBytes);
    const offsetBytes = dataStartBytes + area.pvExtentStart * extentSizeBytes + withinArea;
    return { pvUuid: area.pvUuid, offsetBytes };
  }
  throw new Error(`LV byte ${lvByte} is not mapped`);
}

/** Checks every byte of every PV: mapped bytes hold the LV image, all others stay zero. */
async function assertPvBytes(
  pvs: PvSet,
  segments: readonly LvSegment[],
  extentSizeBytes: number,
  lvImage: Buffer,
): Promise<void> {
  const expected = new Map([...pvs].map(([name, pv]) => [name, Buffer.alloc(pv.sizeBytes)]));
  for (let lvByte = 0; lvByte < lvImage.length; lvByte++) {
    const { pvUuid, offsetBytes } = referenceLocate(segments, extentSizeBytes, lvByte);
    const image = expected.get(pvUuid);
    assert.ok(image !== undefined);
    image[offsetBytes] = lvImage[lvByte] ?? 0;
  }
  for (const [name, pv] of pvs) {
    const actual = await readAll(pv, 0, pv.sizeBytes);
    assert.ok(actual.equals(expected.get(name) ?? Buffer.alloc(0)), `the bytes of ${name}`);
  }
}

describe('LV mapping', () => {
  const extentSizeBytes = 64 * kibibyte;
  const segments: LvSegment[] = [
    linear(0, 3, 'pv-a', 2),
    {
      lvExtentStart: 3,
      extentCount: 6,
      stripeSizeBytes: 16 * kibibyte,
      areas: [
        { pvUuid: 'pv-a', pvExtentStart: 8 },
        { pvUuid: 'pv-b', pvExtentStart: 0 },
        { pvUuid: 'pv-c', pvExtentStart: 0 },
      ],
    },
    linear(9, 2, 'pv-b', 5),
  ];
  const lvBytes = 11 * extentSizeBytes;

  function mappingPvs(): PvSet {
    const pv = (name: string, maximumIoBytes?: number) =>
      new MemoryDevice({ sizeBytes: 2 * mebibyte, description: name, maximumIoBytes });
    // pv-b takes at most 24 KiB per request, so requests also split at its limit.
    return new Map([
      ['pv-a', pv('pv-a')],
      ['pv-b', pv('pv-b', 24 * kibibyte)],
      ['pv-c', pv('pv-c')],
    ]);
  }

  it('puts every byte where the segments say, through requests of every size', async () => {
    const pvs = mappingPvs();
    const lv = lvOver(pvs, segments, extentSizeBytes);
    assert.equal(lv.sizeBytes, lvBytes);
    const image = Buffer.alloc(lvBytes);
    for (let lvByte = 0; lvByte < lvBytes; lvByte++) image[lvByte] = lvByteValue(lvByte);
    const random = createSeededRandom(7);
    for (let offsetBytes = 0; offsetBytes < lvBytes;) {
      const lengthBytes = Math.min(
        1 + Math.floor(random() * 100 * kibibyte),
        lvBytes - offsetBytes,
      );
      await lv.write(image.subarray(offsetBytes, offsetBytes + lengthBytes), offsetBytes);
      offsetBytes += lengthBytes;
    }
    await assertPvBytes(pvs, segments, extentSizeBytes, image);
    for (let round = 0; round < 200; round++) {
      const offsetBytes = Math.floor(random() * lvBytes);
      const lengthBytes = Math.min(Math.floor(random() * 120 * kibibyte), lvBytes - offsetBytes);
      const buffer = Buffer.alloc(lengthBytes, 0xee);
      await lv.read(buffer, offsetBytes);
      assert.ok(buffer.equals(image.subarray(offsetBytes, offsetBytes + lengthBytes)));
    }
  });

  it('lands known bytes at the offsets computed by hand', async () => {
    const pvs = mappingPvs();
    const lv = lvOver(pvs, segments, extentSizeBytes);
    const stripeStart = 3 * extentSizeBytes;
    const stripe = 16 * kibibyte;
    // Chunk 0 on pv-a (extent 8), chunk 1 on pv-b (extent 0), chunk 4 on pv-b's second row.
    const cases = [
      { lvByte: 0, pv: 'pv-a', offsetBytes: dataStartBytes + 2 * extentSizeBytes },
      {
        lvByte: stripeStart - 1,
        pv: 'pv-a',
        offsetBytes: dataStartBytes + 5 * extentSizeBytes - 1,
      },
      { lvByte: stripeStart, pv: 'pv-a', offsetBytes: dataStartBytes + 8 * extentSizeBytes },
      { lvByte: stripeStart + stripe, pv: 'pv-b', offsetBytes: dataStartBytes },
      {
        lvByte: stripeStart + 4 * stripe + 5,
        pv: 'pv-b',
        offsetBytes: dataStartBytes + stripe + 5,
      },
      // The segment's last byte: chunk 23, on pv-c (23 mod 3), at the end of its row 7.
      { lvByte: 9 * extentSizeBytes - 1, pv: 'pv-c', offsetBytes: dataStartBytes + 8 * stripe - 1 },
      {
        lvByte: 9 * extentSizeBytes,
        pv: 'pv-b',
        offsetBytes: dataStartBytes + 5 * extentSizeBytes,
      },
    ];
    for (const [index, { lvByte }] of cases.entries()) {
      await lv.write(Buffer.from([index + 1]), lvByte);
    }
    for (const [index, { pv, offsetBytes }] of cases.entries()) {
      const byte = Buffer.alloc(1);
      await pvs.get(pv)?.read(byte, offsetBytes);
      assert.equal(byte[0], index + 1, `case ${index}`);
    }
  });

  it('zeroes and discards exactly the mapped bytes of ranges across stripes', async () => {
    const pvs = mappingPvs();
    const lv = lvOver(pvs, segments, extentSizeBytes);
    const image = Buffer.alloc(lvBytes);
    for (let lvByte = 0; lvByte < lvBytes; lvByte++) image[lvByte] = lvByteValue(lvByte);
    await lv.write(image, 0);
    const random = createSeededRandom(11);
    for (let round = 0; round < 40; round++) {
      const offsetBytes = Math.floor(random() * lvBytes);
      const lengthBytes = Math.min(Math.floor(random() * 200 * kibibyte), lvBytes - offsetBytes);
      if (round % 2 === 0) await lv.writeZeroes(offsetBytes, lengthBytes);
      else await lv.discard(offsetBytes, lengthBytes);
      // MemoryDevice discards read back as zeroes, so both leave zeroes.
      image.fill(0, offsetBytes, offsetBytes + lengthBytes);
    }
    await assertPvBytes(pvs, segments, extentSizeBytes, image);
    const readBack = Buffer.alloc(lvBytes);
    await lv.read(readBack, 0);
    assert.ok(readBack.equals(image));
  });

  it('sends a request within one piece to the PV as one call, with the same buffer', async () => {
    const base = new MemoryDevice({ sizeBytes: 2 * mebibyte });
    const pv = new FaultInjectingDevice(base);
    const events: string[] = [];
    pv.onIo = (event) => events.push(`${event.kind}@${event.offsetBytes}+${event.lengthBytes}`);
    const lv = lvOver(new Map([['pv-a', pv]]), [linear(0, 4, 'pv-a', 1)], extentSizeBytes);
    await lv.write(pattern(4096, 1), 8192);
    await lv.read(Buffer.alloc(4096), 8192);
    const at = dataStartBytes + extentSizeBytes + 8192;
    assert.deepEqual(events, [`write@${at}+4096`, `read@${at}+4096`]);
  });

  it('forwards gathered writes within one piece, and joins the others', async () => {
    const pvs = memoryPvs(['pv-a', 'pv-b'], 16 * mebibyte, 512);
    const lv = lvOver(pvs, linearSegments, mebibyte);
    const data = pattern(8192, 3);
    await lv.writeGathered([data.subarray(0, 100), data.subarray(100)], 4096);
    const pvA = pvs.get('pv-a');
    assert.ok(pvA instanceof GatheringMemoryDevice);
    assert.equal(pvA.gatheredCount, 1);
    // Across the end of the first segment (2 MiB): two PVs, so joined and split.
    await lv.writeGathered([data.subarray(0, 5), data.subarray(5)], 2 * mebibyte - 4096);
    assert.equal(pvA.gatheredCount, 1);
    const readBack = Buffer.alloc(8192);
    await lv.read(readBack, 2 * mebibyte - 4096);
    assert.ok(readBack.equals(data));
  });

  it('accepts requests up to its maximumIoBytes across PVs, and refuses larger ones', async () => {
    const pvs = memoryPvs(['pv-a', 'pv-b'], 64 * mebibyte, 512);
    const lv = lvOver(pvs, [linear(0, 5, 'pv-a', 0), linear(5, 5, 'pv-b', 0)], 4 * mebibyte);
    assert.equal(lv.maximumIoBytes, lvMaximumIoBytes);
    const data = Buffer.alloc(lvMaximumIoBytes, pattern(4099, 4));
    await lv.write(data, 4 * mebibyte);
    assert.ok((await readAll(lv, 4 * mebibyte, data.length)).equals(data));
    await expectCode(lv.read(Buffer.alloc(lvMaximumIoBytes + 512), 0), 'DISK_INVALID_ARGUMENT');
  });

  it('refuses segments that do not tile the LV or overrun a PV', () => {
    const pvs = memoryPvs(['pv-a'], 4 * mebibyte, 512);
    assert.throws(
      () => lvOver(pvs, [linear(1, 2, 'pv-a')], mebibyte),
      isCode('DISK_INVALID_ARGUMENT'),
    );
    assert.throws(
      () => lvOver(pvs, [linear(0, 4, 'pv-a')], mebibyte),
      isCode('DISK_INVALID_ARGUMENT'),
    );
    // A stripe size that does not divide the area leaves a partial chunk at each area's end.
    const [firstStriped] = stripedSegments(3000);
    assert.ok(firstStriped !== undefined);
    const threePvs = memoryPvs(['pv-a', 'pv-b', 'pv-c'], 16 * mebibyte, 512);
    assert.throws(
      () => lvOver(threePvs, [firstStriped], mebibyte),
      isCode('DISK_INVALID_ARGUMENT'),
    );
  });
});

/**
 * A memory PV whose requests each take a few event-loop turns, chosen by a seeded random
 * function, so that requests really are in flight together and complete out of order.
 */
function jitteryPv(name: string, sizeBytes: number, seed: number) {
  const random = createSeededRandom(seed);
  const base = new MemoryDevice({ sizeBytes, description: name });
  const pv = new FaultInjectingDevice(base, {
    description: name,
    sleep: async () => {
      const turns = Math.floor(random() * 4);
      for (let turn = 0; turn < turns; turn++)
        await new Promise((resolve) => setImmediate(resolve));
    },
  });
  pv.delayIo({ delayMs: 0, match: { kinds: ['read', 'write', 'writeZeroes', 'discard'] } });
  return { base, pv };
}

interface WritersOptions {
  readonly workers: number;
  readonly regionBytes: number;
  /** Operations per worker at most (the loop is bounded even if `stop` never says so). */
  readonly operationsMax: number;
  readonly seed: number;
  readonly stop?: () => boolean;
  /** Called after each completed operation with the total count so far. */
  readonly onOperation?: (count: number, endBytes: number) => void;
  /** Read each range back after writing it (the worker owns it, so it must match). */
  readonly verify?: boolean;
  /** Where the regions start (default 0); they end at the LV's end. */
  readonly windowStartBytes?: number;
}

/**
 * Concurrent writers that never overlap one another: worker w owns the regions whose index mod
 * `workers` is w, so `model` (updated after each completed operation) is exactly what the LV
 * must hold. Regions are chosen below the LV's size at the time of each operation.
 */
async function runWriters(lv: BlockDevice, model: Buffer, options: WritersOptions) {
  let count = 0;
  const worker = async (workerIndex: number) => {
    const random = createSeededRandom(options.seed * 100 + workerIndex);
    for (let operation = 0; operation < options.operationsMax; operation++) {
      if (options.stop?.() === true) return;
      const windowStartBytes = options.windowStartBytes ?? 0;
      const regionCount = Math.floor((lv.sizeBytes - windowStartBytes) / options.regionBytes);
      const owned = Math.floor((regionCount - workerIndex - 1) / options.workers) + 1;
      const region = workerIndex + options.workers * Math.floor(random() * owned);
      const regionStartBytes = windowStartBytes + region * options.regionBytes;
      const startBytes = regionStartBytes + Math.floor(random() * options.regionBytes);
      const regionEndBytes = regionStartBytes + options.regionBytes;
      const lengthBytes = 1 + Math.floor(random() * (regionEndBytes - startBytes));
      const endBytes = startBytes + lengthBytes;
      const choice = random();
      if (choice < 0.8) {
        const data = pattern(lengthBytes, options.seed + count);
        await lv.write(data, startBytes);
        data.copy(model, startBytes);
      } else if (choice < 0.9) {
        await lv.writeZeroes(startBytes, lengthBytes);
        model.fill(0, startBytes, endBytes);
      } else {
        await lv.discard(startBytes, lengthBytes);
        model.fill(0, startBytes, endBytes);
      }
      if (options.verify === true) {
        const readBack = Buffer.alloc(lengthBytes);
        await lv.read(readBack, startBytes);
        assert.ok(readBack.equals(model.subarray(startBytes, endBytes)), 'read after write');
      }
      count++;
      options.onOperation?.(count, endBytes);
    }
  };
  await Promise.all(Array.from({ length: options.workers }, (_, index) => worker(index)));
  return count;
}

describe('LV online resize', () => {
  const extentSizeBytes = 256 * kibibyte;
  const small = [linear(0, 2, 'pv-a', 0)];
  const large = [linear(0, 2, 'pv-a', 0), linear(2, 3, 'pv-b', 1)];

  it('grows while writers and readers run, and shrinks to refuse the cut end', async () => {
    const pvs: PvSet = new Map([
      ['pv-a', jitteryPv('pv-a', 4 * mebibyte, 1).pv],
      ['pv-b', jitteryPv('pv-b', 4 * mebibyte, 2).pv],
    ]);
    const lv = lvOver(pvs, small, extentSizeBytes);
    const model = Buffer.alloc(5 * extentSizeBytes);
    let grownAt = 0;
    let beyondOldEnd = 0;
    const count = await runWriters(lv, model, {
      workers: 6,
      regionBytes: 20 * kibibyte,
      operationsMax: 60,
      seed: 3,
      verify: true,
      onOperation: (done, endBytes) => {
        if (done === 100) {
          lv.setSegments(large);
          grownAt = done;
        }
        if (endBytes > 2 * extentSizeBytes) beyondOldEnd++;
      },
    });
    assert.equal(count, 360);
    assert.equal(grownAt, 100, 'the mapping grew mid-stream');
    assert.equal(lv.sizeBytes, 5 * extentSizeBytes);
    assert.ok(beyondOldEnd > 0, 'writes reached the grown part');
    assert.ok((await readAll(lv, 0, lv.sizeBytes)).equals(model));

    lv.setSegments(small);
    assert.equal(lv.sizeBytes, 2 * extentSizeBytes);
    await expectCode(lv.read(Buffer.alloc(512), 2 * extentSizeBytes), 'DISK_OUT_OF_RANGE');
    await expectCode(lv.write(Buffer.alloc(1024), 2 * extentSizeBytes - 512), 'DISK_OUT_OF_RANGE');
    const kept = model.subarray(0, 2 * extentSizeBytes);
    assert.ok((await readAll(lv, 0, lv.sizeBytes)).equals(kept));
  });

  it('finishes a request in flight on the mapping it started with', async () => {
    const base = new MemoryDevice({ sizeBytes: 4 * mebibyte });
    const pv = new FaultInjectingDevice(base);
    const lv = lvOver(new Map([['pv-a', pv]]), [linear(0, 4, 'pv-a', 0)], extentSizeBytes);
    const stall = pv.stall({ match: { kinds: ['write'] } });
    const data = pattern(4096, 5);
    const write = lv.write(data, 3 * extentSizeBytes);
    await stall.waitForStalled(1);
    lv.setSegments([linear(0, 2, 'pv-a', 0)]);
    let drained = false;
    const drain = lv.drainRetiredMappings().then(() => (drained = true));
    await new Promise((resolve) => setImmediate(resolve));
    assert.equal(drained, false, 'the old mapping still has a write in flight');
    await expectCode(lv.write(data, 3 * extentSizeBytes), 'DISK_OUT_OF_RANGE');
    stall.release();
    await write;
    await drain;
    assert.equal(drained, true);
    const landed = await readAll(base, dataStartBytes + 3 * extentSizeBytes, data.length);
    assert.ok(landed.equals(data), 'the write landed where the old mapping put it');
  });
});

describe('LV with a missing PV', () => {
  it('fails I/O touching the missing PV with DISK_GONE, and serves the rest', async () => {
    const pvs = memoryPvs(['pv-a', 'pv-b'], 16 * mebibyte, 512);
    const missing = new Set(['pv-b']);
    const lv = lvOver(pvs, linearSegments, mebibyte, { missing });
    const data = pattern(8192, 1);
    await lv.write(data, 0);
    assert.ok((await readAll(lv, 0, data.length)).equals(data));
    await lv.write(data, 5 * mebibyte);
    await lv.writeZeroes(5 * mebibyte, 4096);
    await lv.flush();
    try {
      await lv.write(data, 2 * mebibyte);
      assert.fail('a write to the missing PV succeeded');
    } catch (error) {
      assert.ok(error instanceof TandemError && error.code === 'DISK_GONE');
      assert.equal(error.details.pvUuid, 'pv-b');
      assert.match(error.message, /pv-b/);
    }
    // A request across both PVs fails before any I/O: the part on pv-a is not written either.
    await expectCode(lv.write(data, 2 * mebibyte - 4096), 'DISK_GONE');
    assert.ok((await readAll(lv, 2 * mebibyte - 4096, 4096)).every((byte) => byte === 0));
    await expectCode(lv.read(Buffer.alloc(4096), 7 * mebibyte), 'DISK_GONE');
    await expectCode(lv.discard(0, lv.sizeBytes), 'DISK_GONE');
    await expectCode(lv.blockStatus(3 * mebibyte, 4096), 'DISK_GONE');
    await expectCode(lv.cache(6 * mebibyte, 4096), 'DISK_GONE');

    missing.delete('pv-b');
    lv.setSegments(linearSegments);
    await lv.write(data, 2 * mebibyte);
    assert.ok((await readAll(lv, 2 * mebibyte, data.length)).equals(data));
  });
});

describe('LV mirror (PV evacuation)', () => {
  const extentSizeBytes = 256 * kibibyte;
  /** LEs 0-5 on pv-a from PE 2, LEs 6-7 on pv-b; LEs 1-4 move to pv-c at PE 5. */
  const before = [linear(0, 6, 'pv-a', 2), linear(6, 2, 'pv-b', 0)];
  const after = [
    linear(0, 1, 'pv-a', 2),
    linear(1, 4, 'pv-c', 5),
    linear(5, 1, 'pv-a', 7),
    linear(6, 2, 'pv-b', 0),
  ];
  const mirrorBytes = 4 * extentSizeBytes;
  const sourceOffsetBytes = dataStartBytes + 3 * extentSizeBytes;
  const targetOffsetBytes = dataStartBytes + 5 * extentSizeBytes;

  function setup(seed: number) {
    const a = jitteryPv('pv-a', 4 * mebibyte, seed);
    const b = jitteryPv('pv-b', 4 * mebibyte, seed + 1);
    const c = jitteryPv('pv-c', 4 * mebibyte, seed + 2);
    const pvs: PvSet = new Map([
      ['pv-a', a.pv],
      ['pv-b', b.pv],
      ['pv-c', c.pv],
    ]);
    const lv = lvOver(pvs, before, extentSizeBytes);
    const target = { device: c.pv, offsetBytes: targetOffsetBytes };
    return { lv, source: a, target, targetBase: c.base };
  }

  it('copies under concurrent writes, leaves identical copies, then switches', async () => {
    const { lv, source, target, targetBase } = setup(20);
    const model = Buffer.alloc(lv.sizeBytes);
    // Data from before the mirror, which only the copy carries to the target.
    const initial = pattern(lv.sizeBytes, 99);
    await lv.write(initial, 0);
    initial.copy(model);
    lv.startMirror({ lvExtentStart: 1, extentCount: 4, target });

    const progress: number[] = [];
    let copied = false;
    const copy = lv
      .copyMirror({
        chunkBytes: 16 * kibibyte,
        onProgress: (copiedBytes, totalBytes) => {
          assert.equal(totalBytes, mirrorBytes);
          progress.push(copiedBytes);
        },
      })
      .then(() => (copied = true));
    let writesDuringCopy = 0;
    // Writers crowd the mirrored range (and its edges), where the chunks are locked.
    await runWriters(lv, model, {
      workers: 8,
      regionBytes: 24 * kibibyte,
      windowStartBytes: extentSizeBytes - 40 * kibibyte,
      operationsMax: 5000,
      seed: 21,
      stop: () => copied,
      onOperation: () => writesDuringCopy++,
    });
    await copy;
    assert.equal(progress.length, mirrorBytes / (16 * kibibyte));
    assert.equal(progress.at(-1), mirrorBytes);
    assert.ok(writesDuringCopy > 50, `only ${writesDuringCopy} writes ran during the copy`);

    // Writes after the copy are still mirrored.
    await runWriters(lv, model, {
      workers: 4,
      regionBytes: 24 * kibibyte,
      operationsMax: 30,
      seed: 22,
    });
    const sourceBytes = await readAll(source.base, sourceOffsetBytes, mirrorBytes);
    const targetBytes = await readAll(targetBase, targetOffsetBytes, mirrorBytes);
    assert.ok(sourceBytes.equals(targetBytes), 'the target is identical to the source');
    assert.ok((await readAll(lv, 0, lv.sizeBytes)).equals(model));

    // The switch, while writers run: new writes take the new mapping, old ones finish on both.
    let stopped: Promise<void> | undefined;
    await runWriters(lv, model, {
      workers: 6,
      regionBytes: 24 * kibibyte,
      operationsMax: 60,
      seed: 23,
      onOperation: (count) => {
        if (count !== 120) return;
        lv.setSegments(after);
        stopped = lv.stopMirror();
      },
    });
    assert.ok(stopped !== undefined, 'the mapping switched mid-stream');
    await stopped;
    assert.ok((await readAll(lv, 0, lv.sizeBytes)).equals(model));
    // Reads now come from the target: wiping the old source changes nothing.
    await source.base.writeZeroes(sourceOffsetBytes, mirrorBytes);
    assert.ok((await readAll(lv, 0, lv.sizeBytes)).equals(model));
  });

  it('copies only once the writes issued before the mirror have finished', async () => {
    const { lv, source, target, targetBase } = setup(60);
    const stall = source.pv.stall({ match: { kinds: ['write'] } });
    const data = pattern(4096, 7);
    const write = lv.write(data, 2 * extentSizeBytes);
    await stall.waitForStalled(1);
    lv.startMirror({ lvExtentStart: 1, extentCount: 4, target });
    let copied = false;
    const copy = lv.copyMirror().then(() => (copied = true));
    for (let turn = 0; turn < 20; turn++) await new Promise((resolve) => setImmediate(resolve));
    assert.equal(copied, false, 'the copy waits for the unmirrored write');
    stall.release();
    await write;
    await copy;
    const landed = await readAll(targetBase, targetOffsetBytes + extentSizeBytes, data.length);
    assert.ok(landed.equals(data), 'the copy carried the earlier write');
    await lv.stopMirror();
  });

  it('copies depth chunks at once, and a write waits only for the chunk it overlaps', async () => {
    const { lv, source, target, targetBase } = setup(70);
    const initial = pattern(lv.sizeBytes, 71);
    await lv.write(initial, 0);
    lv.startMirror({ lvExtentStart: 1, extentCount: 4, target });
    const stall = source.pv.stall({ match: { kinds: ['read'] } });
    const copy = lv.copyMirror({ chunkBytes: 64 * kibibyte, depth: 3 });
    await stall.waitForStalled(3);
    // A write into the third locked chunk waits; one past the locked chunks does not.
    const blocked = pattern(4096, 72);
    let blockedDone = false;
    const blockedWrite = lv
      .write(blocked, extentSizeBytes + 128 * kibibyte)
      .then(() => (blockedDone = true));
    const free = pattern(4096, 73);
    await lv.write(free, extentSizeBytes + 256 * kibibyte);
    assert.equal(blockedDone, false, 'a write into a locked chunk waits for its copy');
    stall.release();
    await copy;
    await blockedWrite;
    const expected = Buffer.from(initial.subarray(extentSizeBytes, extentSizeBytes + mirrorBytes));
    blocked.copy(expected, 128 * kibibyte);
    free.copy(expected, 256 * kibibyte);
    const targetBytes = await readAll(targetBase, targetOffsetBytes, mirrorBytes);
    assert.ok(targetBytes.equals(expected), 'the target holds the copy and both writes');
    await lv.stopMirror();
  });

  it('flushes the target during the copy, and fails the copy when such a flush fails', async () => {
    const { lv, target } = setup(75);
    lv.startMirror({ lvExtentStart: 1, extentCount: 4, target });
    const flushes = target.device.delayIo({ delayMs: 0, match: { kinds: ['flush'] } });
    await lv.copyMirror({ chunkBytes: 64 * kibibyte, flushEveryBytes: 256 * kibibyte });
    // 1 MiB in 256 KiB intervals: three flushes during the copy, and the final one.
    assert.equal(flushes.firedCount, 4);
    await lv.stopMirror();
    lv.startMirror({ lvExtentStart: 1, extentCount: 4, target });
    target.device.failIo({ match: { kinds: ['flush'] }, times: 1 });
    await expectCode(
      lv.copyMirror({ chunkBytes: 64 * kibibyte, flushEveryBytes: 256 * kibibyte }),
      'DISK_IO',
    );
    await lv.stopMirror();
  });

  it('stops between chunks when aborted, and mirrors nothing after stopMirror', async () => {
    const { lv, target, targetBase } = setup(30);
    await lv.write(pattern(lv.sizeBytes, 5), 0);
    lv.startMirror({ lvExtentStart: 1, extentCount: 4, target });
    const controller = new AbortController();
    let chunks = 0;
    const copy = lv.copyMirror({
      chunkBytes: 128 * kibibyte,
      depth: 1,
      signal: controller.signal,
      onProgress: () => {
        chunks++;
        if (chunks === 2) controller.abort();
      },
    });
    await assert.rejects(copy, (error: unknown) => {
      assert.ok(error instanceof Error && error.name === 'AbortError', String(error));
      return true;
    });
    assert.equal(chunks, 2);
    await lv.stopMirror();
    const targetBefore = await readAll(targetBase, targetOffsetBytes, mirrorBytes);
    assert.ok(
      targetBefore
        .subarray(0, 256 * kibibyte)
        .equals(pattern(lv.sizeBytes, 5).subarray(extentSizeBytes, 2 * extentSizeBytes)),
    );
    assert.ok(
      targetBefore.subarray(256 * kibibyte).every((byte) => byte === 0),
      'only two chunks copied',
    );
    await lv.write(pattern(8192, 6), 2 * extentSizeBytes);
    const targetAfter = await readAll(targetBase, targetOffsetBytes, mirrorBytes);
    assert.ok(targetAfter.equals(targetBefore), 'no write reaches the target once stopped');
  });

  it('fails the write and the copy when a write to the target fails', async () => {
    const { lv, target } = setup(40);
    lv.startMirror({ lvExtentStart: 1, extentCount: 4, target });
    target.device.failIo({ match: { kinds: ['write'] }, times: 1 });
    await expectCode(lv.write(pattern(4096, 1), 2 * extentSizeBytes), 'DISK_IO');
    await lv.write(pattern(4096, 1), 0);
    await expectCode(lv.copyMirror(), 'DISK_IO');
    await lv.stopMirror();
  });

  it('refuses a second mirror, a bad range, and a bad chunk size or depth', async () => {
    const { lv, target } = setup(50);
    await expectCode(lv.copyMirror(), 'FAILED_PRECONDITION');
    assert.throws(
      () => lv.startMirror({ lvExtentStart: 6, extentCount: 4, target }),
      isCode('DISK_OUT_OF_RANGE'),
    );
    lv.startMirror({ lvExtentStart: 1, extentCount: 4, target });
    assert.throws(
      () => lv.startMirror({ lvExtentStart: 1, extentCount: 4, target }),
      isCode('FAILED_PRECONDITION'),
    );
    await expectCode(lv.copyMirror({ chunkBytes: 0 }), 'DISK_INVALID_ARGUMENT');
    await expectCode(lv.copyMirror({ depth: 0 }), 'DISK_INVALID_ARGUMENT');
    await expectCode(
      lv.copyMirror({ chunkBytes: 16 * 1024 * kibibyte, depth: 4 }),
      'DISK_INVALID_ARGUMENT',
    );
    await lv.stopMirror();
  });
});

describe('LV mirror of one stripe (PV evacuation of a striped LV)', () => {
  const extentSizeBytes = 256 * kibibyte;
  const stripeSizeBytes = 64 * kibibyte;
  const striped = (
    lvExtentStart: number,
    rows: number,
    a: [string, number],
    b: [string, number],
  ) => ({
    lvExtentStart,
    extentCount: 2 * rows,
    stripeSizeBytes,
    areas: [
      { pvUuid: a[0], pvExtentStart: a[1] },
      { pvUuid: b[0], pvExtentStart: b[1] },
    ],
  });
  /**
   * 4 rows over pv-a and pv-b, both from PE 2 (so the stripe that stays sits at the same PV
   * bytes as the run that moves); rows 1-2 of pv-a move to pv-c PE 5.
   */
  const before = [striped(0, 4, ['pv-a', 2], ['pv-b', 2])];
  const after = [
    striped(0, 1, ['pv-a', 2], ['pv-b', 2]),
    striped(2, 2, ['pv-c', 5], ['pv-b', 3]),
    striped(6, 1, ['pv-a', 5], ['pv-b', 5]),
  ];
  const runBytes = 2 * extentSizeBytes;
  const sourceOffsetBytes = dataStartBytes + 3 * extentSizeBytes;
  const targetOffsetBytes = dataStartBytes + 5 * extentSizeBytes;

  it('mirrors only the stripe that moves, under concurrent writes, then switches', async () => {
    const a = jitteryPv('pv-a', 4 * mebibyte, 81);
    const b = jitteryPv('pv-b', 4 * mebibyte, 82);
    const c = jitteryPv('pv-c', 4 * mebibyte, 83);
    const pvs: PvSet = new Map([
      ['pv-a', a.pv],
      ['pv-b', b.pv],
      ['pv-c', c.pv],
    ]);
    const lv = lvOver(pvs, before, extentSizeBytes);
    const model = Buffer.alloc(lv.sizeBytes);
    const initial = pattern(lv.sizeBytes, 84);
    await lv.write(initial, 0);
    initial.copy(model);
    assert.throws(
      () =>
        lv.startMirror({
          lvExtentStart: 2,
          extentCount: 4,
          target: { device: c.pv, offsetBytes: 0 },
        }),
      isCode('DISK_INVALID_ARGUMENT'),
      'two stripes are two runs: the PV must be named',
    );
    lv.startMirror({
      lvExtentStart: 2,
      extentCount: 4,
      pvUuid: 'pv-a',
      target: { device: c.pv, offsetBytes: targetOffsetBytes },
    });
    let copied = false;
    const copy = lv.copyMirror({ chunkBytes: 16 * kibibyte, depth: 3 }).then(() => (copied = true));
    let writesDuringCopy = 0;
    // Writes across the whole LV: both stripes, inside and outside the rows that move.
    await runWriters(lv, model, {
      workers: 8,
      regionBytes: 40 * kibibyte,
      operationsMax: 5000,
      seed: 85,
      stop: () => copied,
      onOperation: () => writesDuringCopy++,
    });
    await copy;
    assert.ok(writesDuringCopy > 50, `only ${writesDuringCopy} writes ran during the copy`);
    const sourceBytes = await readAll(a.base, sourceOffsetBytes, runBytes);
    const targetBytes = await readAll(c.base, targetOffsetBytes, runBytes);
    assert.ok(sourceBytes.equals(targetBytes), 'the target run is identical to the source run');
    const beyond = await readAll(c.base, targetOffsetBytes + runBytes, extentSizeBytes);
    assert.ok(
      beyond.every((byte) => byte === 0),
      'nothing lands past the target run',
    );

    lv.setSegments(after);
    await lv.stopMirror();
    assert.ok((await readAll(lv, 0, lv.sizeBytes)).equals(model));
    // Reads of the moved rows now come from pv-c: wiping the old run changes nothing.
    await a.base.writeZeroes(sourceOffsetBytes, runBytes);
    assert.ok((await readAll(lv, 0, lv.sizeBytes)).equals(model));
  });
});

function isCode(code: ErrorCode) {
  return (error: unknown) => error instanceof TandemError && error.code === code;
}
