/**
 * FaultInjectingDevice: each fault kind, and the crash model (what survives a power loss).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FaultInjectingDevice, type IoEvent } from '../../src/disk/fault-device.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { TandemError } from '../../src/errors.js';
import { expectCode, pattern } from './disk-conformance.js';

const sector = 512;

function setup(options: { sectorBytes?: 512 | 4096 } = {}) {
  const base = new MemoryDevice({
    sizeBytes: 1024 * 1024,
    logicalSectorSizeBytes: options.sectorBytes ?? 512,
  });
  const device = new FaultInjectingDevice(base);
  return { base, device };
}

async function readFrom(
  device: MemoryDevice | FaultInjectingDevice,
  offset: number,
  length: number,
) {
  const buffer = Buffer.alloc(length);
  await device.read(buffer, offset);
  return buffer;
}

describe('FaultInjectingDevice counting', () => {
  it('counts requests by kind and shows each to onIo first', async () => {
    const { device } = setup();
    const events: IoEvent[] = [];
    device.onIo = (event) => events.push(event);
    await device.write(Buffer.alloc(sector), 0, { fua: true });
    await device.write(Buffer.alloc(sector), sector);
    await device.read(Buffer.alloc(sector), 0);
    await device.flush();
    await device.discard(0, sector);
    await device.writeZeroes(0, sector);
    await device.blockStatus(0, sector);
    await device.cache(0, sector);
    assert.deepEqual(device.counts, {
      read: 1,
      write: 2,
      flush: 1,
      discard: 1,
      writeZeroes: 1,
      blockStatus: 1,
      cache: 1,
    });
    assert.equal(events.length, 8);
    assert.deepEqual(events[1], {
      kind: 'write',
      offsetBytes: sector,
      lengthBytes: sector,
      fua: false,
      index: 1,
      indexOfKind: 1,
    });
    assert.equal(events[0]?.fua, true);
  });
});

describe('FaultInjectingDevice failures', () => {
  it('fails exactly the nth matching request', async () => {
    const { device } = setup();
    const rule = device.failIo({ match: { kinds: ['write'] }, nth: 3 });
    await device.read(Buffer.alloc(sector), 0);
    await device.write(pattern(sector, 1), 0);
    await device.write(pattern(sector, 2), 0);
    try {
      await device.write(pattern(sector, 3), 0);
      assert.fail('the third write should fail');
    } catch (error) {
      assert.ok(error instanceof TandemError);
      assert.equal(error.code, 'DISK_IO');
      assert.equal(error.details['errno'], 'EIO');
    }
    await device.write(pattern(sector, 4), sector);
    assert.equal(rule.firedCount, 1);
    // The failed write never reached the base device.
    assert.deepEqual(await readFrom(device, 0, sector), pattern(sector, 2));
  });

  it('fails requests overlapping a range, with a chosen code, until removed', async () => {
    const { device } = setup();
    const rule = device.failIo({
      match: { kinds: ['read'], offsetBytes: 4096, lengthBytes: 4096 },
      code: 'DISK_GONE',
      errno: 'ENXIO',
    });
    await device.read(Buffer.alloc(4096), 0);
    await device.read(Buffer.alloc(4096), 8192);
    await expectCode(device.read(Buffer.alloc(4096), 4096), 'DISK_GONE');
    await expectCode(device.read(Buffer.alloc(4096), 2048), 'DISK_GONE');
    await device.write(Buffer.alloc(4096), 4096);
    rule.remove();
    await device.read(Buffer.alloc(4096), 4096);
    assert.equal(rule.firedCount, 2);
  });

  it('fails with a predicate, at most `times` times', async () => {
    const { device } = setup();
    device.failIo({ match: { predicate: (event) => event.fua }, times: 1 });
    await device.write(Buffer.alloc(sector), 0);
    await expectCode(device.write(Buffer.alloc(sector), 0, { fua: true }), 'DISK_IO');
    await device.write(Buffer.alloc(sector), 0, { fua: true });
  });
});

describe('FaultInjectingDevice delays and stalls', () => {
  it('delays matching requests through the injected sleep', async () => {
    const sleeps: number[] = [];
    let wake: () => void = () => assert.fail('no sleep started');
    const base = new MemoryDevice({ sizeBytes: 65536 });
    const device = new FaultInjectingDevice(base, {
      sleep: (delayMs) => {
        sleeps.push(delayMs);
        return new Promise((resolve) => (wake = resolve));
      },
    });
    device.delayIo({ match: { kinds: ['write'] }, delayMs: 250 });
    let done = false;
    const write = device.write(pattern(sector, 1), 0).then(() => (done = true));
    await new Promise((resolve) => setImmediate(resolve));
    assert.deepEqual(sleeps, [250]);
    assert.equal(done, false);
    assert.deepEqual(await readFrom(base, 0, sector), Buffer.alloc(sector));
    wake();
    await write;
    assert.deepEqual(await readFrom(base, 0, sector), pattern(sector, 1));
  });

  it('holds matching requests until released', async () => {
    const { base, device } = setup();
    const stall = device.stall({ match: { kinds: ['write'] } });
    const writes = [device.write(pattern(sector, 1), 0), device.write(pattern(sector, 2), sector)];
    await stall.waitForStalled(2);
    assert.equal(stall.stalledCount, 2);
    await device.read(Buffer.alloc(sector), 0);
    assert.deepEqual(await readFrom(base, 0, 2 * sector), Buffer.alloc(2 * sector));
    stall.release();
    await Promise.all(writes);
    assert.deepEqual(await readFrom(base, sector, sector), pattern(sector, 2));
    await device.write(pattern(sector, 3), 0);
  });

  it('lets stalled requests go on close', async () => {
    const { device } = setup();
    device.stall();
    const read = device.read(Buffer.alloc(sector), 0);
    await device.close();
    await read;
    await expectCode(device.read(Buffer.alloc(sector), 0), 'DISK_CLOSED');
  });
});

describe('FaultInjectingDevice torn writes', () => {
  it('lands only the first sectors, then fails', async () => {
    const { base, device } = setup();
    device.tearWrite({ keepSectors: 1, then: 'fail', nth: 1 });
    await expectCode(device.write(pattern(4 * sector, 1), 0), 'DISK_IO');
    const expected = Buffer.alloc(4 * sector);
    pattern(4 * sector, 1).copy(expected, 0, 0, sector);
    assert.deepEqual(await readFrom(base, 0, 4 * sector), expected);
  });

  it('lands the first sectors, then crashes losing other unflushed writes', async () => {
    const { base, device } = setup({ sectorBytes: 4096 });
    await device.write(pattern(4096, 1), 0);
    await device.flush();
    await device.write(pattern(4096, 2), 65536);
    device.tearWrite({ keepSectors: 2, then: 'crash', match: { offsetBytes: 8192 } });
    await expectCode(device.write(pattern(4 * 4096, 3), 8192), 'DISK_GONE');
    await expectCode(device.read(Buffer.alloc(4096), 0), 'DISK_GONE');
    await device.restart();
    assert.deepEqual(await readFrom(device, 0, 4096), pattern(4096, 1));
    assert.deepEqual(await readFrom(base, 65536, 4096), Buffer.alloc(4096));
    const expected = Buffer.alloc(4 * 4096);
    pattern(4 * 4096, 3).copy(expected, 0, 0, 2 * 4096);
    assert.deepEqual(await readFrom(device, 8192, 4 * 4096), expected);
  });
});

/** Flushed A at [0, 4 sectors); then unflushed B over sectors 2..5 and C at 64 KiB. */
async function flushedThenUnflushed(device: FaultInjectingDevice) {
  await device.write(pattern(4 * sector, 1), 0);
  await device.flush();
  await device.write(pattern(4 * sector, 2), 2 * sector);
  await device.write(pattern(sector, 3), 65536);
  await device.writeZeroes(0, sector);
  assert.equal(device.unflushedWriteCount, 3);
}

describe('FaultInjectingDevice crashes', () => {
  it("keeps exactly the flushed data with keep 'none'", async () => {
    const { device } = setup();
    await flushedThenUnflushed(device);
    await device.crash({ keep: 'none' });
    assert.equal(device.crashed, true);
    await expectCode(device.write(Buffer.alloc(sector), 0), 'DISK_GONE');
    await expectCode(device.flush(), 'DISK_GONE');
    await device.restart();
    const expected = Buffer.alloc(6 * sector);
    pattern(4 * sector, 1).copy(expected);
    assert.deepEqual(await readFrom(device, 0, 6 * sector), expected);
    assert.deepEqual(await readFrom(device, 65536, sector), Buffer.alloc(sector));
  });

  it("keeps every completed write with keep 'all'", async () => {
    const { device } = setup();
    await flushedThenUnflushed(device);
    await device.crash({ keep: 'all' });
    await device.restart();
    const expected = Buffer.alloc(6 * sector);
    pattern(4 * sector, 1).copy(expected);
    pattern(4 * sector, 2).copy(expected, 2 * sector);
    expected.fill(0, 0, sector);
    assert.deepEqual(await readFrom(device, 0, 6 * sector), expected);
    assert.deepEqual(await readFrom(device, 65536, sector), pattern(sector, 3));
  });

  it('counts FUA writes as durable, even over unflushed ones', async () => {
    const { device } = setup();
    await device.write(pattern(sector, 1), 0);
    await device.write(pattern(sector, 2), 0, { fua: true });
    await device.write(pattern(sector, 3), sector, { fua: true });
    await device.write(pattern(sector, 4), sector);
    await device.crash({ keep: 'none' });
    await device.restart();
    assert.deepEqual(await readFrom(device, 0, sector), pattern(sector, 2));
    assert.deepEqual(await readFrom(device, sector, sector), pattern(sector, 3));
  });

  it("keeps a seeded random subset of sectors with keep 'random'", async () => {
    const outcomes: Buffer[] = [];
    for (const seed of [7, 7, 8]) {
      const { device } = setup();
      await device.write(pattern(64 * sector, 1), 0);
      await device.flush();
      await device.write(pattern(64 * sector, 2), 0);
      await device.crash({ keep: 'random', seed });
      await device.restart();
      const after = await readFrom(device, 0, 64 * sector);
      let keptCount = 0;
      for (let index = 0; index < 64; index++) {
        const got = after.subarray(index * sector, (index + 1) * sector);
        const old = pattern(64 * sector, 1).subarray(index * sector, (index + 1) * sector);
        const fresh = pattern(64 * sector, 2).subarray(index * sector, (index + 1) * sector);
        assert.ok(got.equals(old) || got.equals(fresh), 'each sector is one whole version');
        if (got.equals(fresh)) keptCount++;
      }
      assert.ok(keptCount > 0 && keptCount < 64, `kept ${keptCount} of 64`);
      outcomes.push(after);
    }
    assert.deepEqual(outcomes[0], outcomes[1], 'the same seed gives the same crash');
    assert.notDeepEqual(outcomes[0], outcomes[2]);
  });

  it('fails requests in flight and never applies a stalled write after the crash', async () => {
    const { base, device } = setup();
    const stall = device.stall({ match: { kinds: ['write'] } });
    const write = device.write(pattern(sector, 1), 0);
    await stall.waitForStalled();
    await device.crash({ keep: 'all' });
    stall.release();
    await expectCode(write, 'DISK_GONE');
    assert.deepEqual(await readFrom(base, 0, sector), Buffer.alloc(sector));
  });

  it('crashes at every single write of a workload (the crash-test pattern)', async () => {
    const workload = async (device: FaultInjectingDevice, flushedUpTo: { count: number }) => {
      for (let index = 0; index < 6; index++) {
        await device.write(pattern(sector, index + 1), index * sector);
        if (index % 2 === 1) {
          await device.flush();
          flushedUpTo.count = index + 1;
        }
      }
    };
    const reference = setup();
    await workload(reference.device, { count: 0 });
    const writeCount = reference.device.counts.write;
    assert.equal(writeCount, 6);
    for (let crashAt = 0; crashAt < writeCount; crashAt++) {
      const { device } = setup();
      device.onIo = (event) => {
        if (event.kind === 'write' && event.indexOfKind === crashAt) void device.crash();
      };
      const flushedUpTo = { count: 0 };
      await expectCode(workload(device, flushedUpTo), 'DISK_GONE');
      device.onIo = undefined;
      await device.restart();
      for (let index = 0; index < 6; index++) {
        const expected =
          index < flushedUpTo.count ? pattern(sector, index + 1) : Buffer.alloc(sector);
        assert.deepEqual(
          await readFrom(device, index * sector, sector),
          expected,
          `crash at ${crashAt}`,
        );
      }
    }
  });
});
