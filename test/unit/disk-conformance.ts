/**
 * The BlockDevice conformance suite: every device (file, O_DIRECT file, loop device, memory,
 * fault wrapper, later NBD-backed) runs the same tests (like abstract-level's shipped suite).
 *
 * The factory must return a device of at least 4 MiB that reads as zeroes everywhere, opened
 * read-only when asked (the suite then only reads).
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import type { BlockDevice } from '../../src/disk/block-device.js';
import { type ErrorCode, TandemError } from '../../src/errors.js';

export type BlockDeviceFactory = (options: { readOnly: boolean }) => Promise<BlockDevice>;

export interface ConformanceOptions {
  /** A reason to skip the whole suite (e.g. losetup is missing). */
  readonly skip?: string | undefined;
  readonly before?: () => Promise<void>;
  readonly after?: () => Promise<void>;
}

const mebibyte = 1024 * 1024;

export async function expectCode(promise: Promise<unknown>, code: ErrorCode): Promise<void> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof TandemError, `expected a TandemError ${code}, got ${String(error)}`);
    assert.equal(error.code, code, `expected ${code}: ${error.message}`);
    return;
  }
  assert.fail(`expected a rejection with ${code}, but the call succeeded`);
}

/** A recognisable pattern: every byte depends on its position and the seed. */
export function pattern(lengthBytes: number, seed: number): Buffer {
  const buffer = Buffer.alloc(lengthBytes);
  for (let index = 0; index < lengthBytes; index++)
    buffer[index] = (index * 31 + seed * 7 + 1) & 0xff;
  return buffer;
}

/** The smallest request every device accepts: whole sectors, aligned. */
export function unitOf(device: BlockDevice): number {
  return Math.max(device.alignmentBytes, device.logicalSectorSizeBytes);
}

async function readBack(device: BlockDevice, offsetBytes: number, lengthBytes: number) {
  const buffer = Buffer.alloc(lengthBytes, 0xee);
  await device.read(buffer, offsetBytes);
  return buffer;
}

function isZero(buffer: Buffer): boolean {
  return buffer.every((byte) => byte === 0);
}

export function runBlockDeviceConformance(
  name: string,
  factory: BlockDeviceFactory,
  options: ConformanceOptions = {},
): void {
  describe(`BlockDevice conformance: ${name}`, { skip: options.skip ?? false }, () => {
    if (options.before !== undefined) before(options.before);
    if (options.after !== undefined) after(options.after);

    const withDevice = (title: string, body: (device: BlockDevice) => Promise<void>) =>
      it(title, async () => {
        const device = await factory({ readOnly: false });
        try {
          await body(device);
        } finally {
          await device.close();
        }
      });

    withDevice('reports a sane geometry', async (device) => {
      assert.ok(device.sizeBytes >= 4 * mebibyte, 'the suite needs 4 MiB');
      assert.ok([512, 4096].includes(device.logicalSectorSizeBytes));
      assert.ok(device.physicalSectorSizeBytes >= device.logicalSectorSizeBytes);
      assert.ok(device.alignmentBytes >= 1 && unitOf(device) % device.alignmentBytes === 0);
      assert.ok(device.maximumIoBytes >= 64 * 1024);
      assert.equal(device.readOnly, false);
      assert.equal(typeof device.description, 'string');
    });

    withDevice('reads zeroes from a fresh device, at both ends', async (device) => {
      const unit = unitOf(device);
      assert.ok(isZero(await readBack(device, 0, unit)));
      assert.ok(isZero(await readBack(device, device.sizeBytes - unit, unit)));
    });

    withDevice('round-trips writes at the first, middle and last sectors', async (device) => {
      const unit = unitOf(device);
      const middleBytes = Math.floor(device.sizeBytes / 2 / unit) * unit;
      const offsets = [0, middleBytes, device.sizeBytes - unit, device.sizeBytes - 4 * unit];
      for (const [index, offsetBytes] of offsets.entries()) {
        const data = pattern(index === 3 ? 4 * unit : unit, index);
        await device.write(data, offsetBytes);
        assert.deepEqual(await readBack(device, offsetBytes, data.length), data);
      }
      // Zero-length requests at the very end are in range and do nothing.
      await device.read(Buffer.alloc(0), device.sizeBytes);
      await device.write(Buffer.alloc(0), device.sizeBytes);
    });

    withDevice('gather writes land like one write of the joined pieces', async (device) => {
      const writeGathered = device.writeGathered?.bind(device);
      if (writeGathered === undefined) return;
      const unit = unitOf(device);
      const data = pattern(16 * unit, 7);
      // Uneven piece sizes (as socket chunks come), an empty piece, and misaligned starts.
      const cuts = [0, 1, 1, 100, 3 * unit + 5, 9 * unit, 16 * unit];
      const pieces = cuts.slice(1).map((cut, index) => data.subarray(cuts[index], cut));
      await writeGathered(pieces, unit);
      assert.deepEqual(await readBack(device, unit, data.length), data);
      const durable = pattern(2 * unit, 8);
      await writeGathered([durable.subarray(0, 3), durable.subarray(3)], 0, { fua: true });
      assert.deepEqual(await readBack(device, 0, durable.length), durable);
      // More pieces than one pwritev takes: joined first, same result.
      const many = pattern(2048 * 4, 9);
      const tiny = Array.from({ length: 2048 }, (_, index) =>
        many.subarray(index * 4, index * 4 + 4),
      );
      const manyBytes = Math.ceil(many.length / unit) * unit;
      await writeGathered([...tiny, Buffer.alloc(manyBytes - many.length)], 20 * unit);
      assert.deepEqual(
        (await readBack(device, 20 * unit, manyBytes)).subarray(0, many.length),
        many,
      );
      await expectCode(
        writeGathered([Buffer.alloc(unit), Buffer.alloc(unit)], device.sizeBytes - unit),
        'DISK_OUT_OF_RANGE',
      );
    });

    withDevice('writes odd byte ranges when alignment is 1', async (device) => {
      if (device.alignmentBytes !== 1) return;
      await device.write(pattern(8192, 1), 4096);
      await device.write(Buffer.from([1, 2, 3]), 4097 + 100);
      const expected = pattern(8192, 1);
      expected.set([1, 2, 3], 101);
      assert.deepEqual(await readBack(device, 4096, 8192), expected);
      assert.deepEqual(await readBack(device, 4197, 3), Buffer.from([1, 2, 3]));
    });

    withDevice('refuses requests beyond the end', async (device) => {
      const unit = unitOf(device);
      const end = device.sizeBytes;
      await expectCode(device.read(Buffer.alloc(unit), end), 'DISK_OUT_OF_RANGE');
      await expectCode(device.write(Buffer.alloc(2 * unit), end - unit), 'DISK_OUT_OF_RANGE');
      await expectCode(device.discard(end - unit, 2 * unit), 'DISK_OUT_OF_RANGE');
      await expectCode(device.writeZeroes(end, unit), 'DISK_OUT_OF_RANGE');
      await expectCode(device.blockStatus(end, unit), 'DISK_OUT_OF_RANGE');
      await expectCode(device.cache(end, unit), 'DISK_OUT_OF_RANGE');
      await expectCode(device.read(Buffer.alloc(unit), -unit), 'DISK_INVALID_ARGUMENT');
      await expectCode(device.read(Buffer.alloc(unit), 0.5), 'DISK_INVALID_ARGUMENT');
      await expectCode(device.blockStatus(0, 0), 'DISK_INVALID_ARGUMENT');
      // Nothing was written by the refused write.
      assert.ok(isZero(await readBack(device, end - unit, unit)));
    });

    withDevice('refuses requests over maximumIoBytes', async (device) => {
      const tooLong = device.maximumIoBytes + unitOf(device);
      if (tooLong > device.sizeBytes) return;
      await expectCode(device.read(Buffer.alloc(tooLong), 0), 'DISK_INVALID_ARGUMENT');
    });

    withDevice('refuses misaligned requests when alignment > 1', async (device) => {
      const alignment = device.alignmentBytes;
      if (alignment === 1) return;
      await expectCode(device.read(Buffer.alloc(alignment), 1), 'DISK_MISALIGNED');
      await expectCode(device.read(Buffer.alloc(alignment + 1), 0), 'DISK_MISALIGNED');
      await expectCode(device.write(Buffer.alloc(alignment), alignment / 2), 'DISK_MISALIGNED');
      await expectCode(device.writeZeroes(0, alignment - 1), 'DISK_MISALIGNED');
      await expectCode(device.discard(1, alignment), 'DISK_MISALIGNED');
    });

    withDevice('moves data through buffers at odd memory addresses', async (device) => {
      const unit = unitOf(device);
      const data = Buffer.alloc(2 * unit + 1).subarray(1);
      pattern(2 * unit, 5).copy(data);
      await device.write(data, unit);
      const target = Buffer.alloc(2 * unit + 3).subarray(3);
      await device.read(target, unit);
      assert.deepEqual(target, pattern(2 * unit, 5));
    });

    it('refuses writes when read-only, still reads and flushes', async () => {
      const device = await factory({ readOnly: true });
      try {
        const unit = unitOf(device);
        assert.equal(device.readOnly, true);
        await expectCode(device.write(Buffer.alloc(unit), 0), 'DISK_READ_ONLY');
        await expectCode(device.write(Buffer.alloc(unit), 0, { fua: true }), 'DISK_READ_ONLY');
        await expectCode(device.discard(0, unit), 'DISK_READ_ONLY');
        await expectCode(device.writeZeroes(0, unit), 'DISK_READ_ONLY');
        await device.read(Buffer.alloc(unit), 0);
        await device.flush();
        await device.cache(0, unit);
      } finally {
        await device.close();
      }
    });

    withDevice('flushes, and writes with FUA', async (device) => {
      const unit = unitOf(device);
      await device.write(pattern(unit, 2), 0);
      await device.flush();
      await device.write(pattern(unit, 3), unit, { fua: true });
      assert.deepEqual(await readBack(device, unit, unit), pattern(unit, 3));
      await device.writeZeroes(0, unit, { fua: true });
      await device.discard(2 * unit, unit, { fua: true });
    });

    withDevice('discards without touching neighbours', async (device) => {
      const region = 256 * 1024;
      await device.write(pattern(3 * region, 4), mebibyte);
      await device.discard(mebibyte + region, region);
      await device.read(Buffer.alloc(region), mebibyte + region);
      assert.deepEqual(await readBack(device, mebibyte, region), pattern(region, 4));
      const tail = pattern(3 * region, 4).subarray(2 * region);
      assert.deepEqual(await readBack(device, mebibyte + 2 * region, region), tail);
    });

    for (const mode of [
      {},
      { noHole: true },
      { fastOnly: true },
      { noHole: true, fastOnly: true },
    ]) {
      withDevice(`writes zeroes ${JSON.stringify(mode)}`, async (device) => {
        const unit = unitOf(device);
        const region = Math.max(64 * unit, 64 * 1024);
        const data = pattern(3 * region, 6);
        await device.write(data, 0);
        try {
          await device.writeZeroes(region, region, mode);
        } catch (error) {
          // Fast zeroing may be refused, but only by a typed error, leaving the data intact.
          assert.ok(mode.fastOnly === true && error instanceof TandemError);
          assert.equal(error.code, 'DISK_NOT_SUPPORTED');
          assert.deepEqual(await readBack(device, 0, 3 * region), data);
          return;
        }
        assert.ok(isZero(await readBack(device, region, region)));
        assert.deepEqual(await readBack(device, 0, region), data.subarray(0, region));
        assert.deepEqual(await readBack(device, 2 * region, region), data.subarray(2 * region));
      });
    }

    withDevice('writes zeroes over several mebibytes (the chunked fallback)', async (device) => {
      const lengthBytes = 3 * mebibyte + unitOf(device);
      await device.write(pattern(lengthBytes, 8), 0);
      await device.writeZeroes(0, lengthBytes, { noHole: true });
      assert.ok(isZero(await readBack(device, 0, lengthBytes)));
    });

    withDevice('reports allocation with blockStatus', async (device) => {
      const unit = unitOf(device);
      const all = await device.blockStatus(0, 2 * mebibyte);
      assert.ok(all.length >= 1);
      let totalBytes = 0;
      for (const extent of all) {
        assert.ok(extent.lengthBytes > 0);
        totalBytes += extent.lengthBytes;
      }
      assert.ok(totalBytes <= 2 * mebibyte);
      if (!device.capabilities.blockStatus) {
        assert.deepEqual(all, [{ lengthBytes: 2 * mebibyte, hole: false, zero: false }]);
        return;
      }
      await device.write(pattern(unit, 9), mebibyte);
      const extents = await device.blockStatus(0, 2 * mebibyte);
      assert.equal(extents[0]?.hole, true, 'a fresh sparse device starts with a hole');
      assert.equal(extents[0]?.zero, true);
      assert.ok((extents[0]?.lengthBytes ?? 0) <= mebibyte);
      const atData = await device.blockStatus(mebibyte, unit);
      assert.equal(atData[0]?.hole, false);
      assert.equal(atData[0]?.lengthBytes, unit);
      await device.writeZeroes(mebibyte, mebibyte);
      const zeroed = await device.blockStatus(mebibyte, mebibyte);
      assert.equal(zeroed[0]?.zero, true, 'a punched range reads as zero');
    });

    withDevice('accepts cache hints', async (device) => {
      await device.cache(0, mebibyte);
      await device.cache(0, 0);
    });

    withDevice('keeps many requests in flight', async (device) => {
      const unit = unitOf(device);
      const count = 256;
      const writes = [];
      for (let index = 0; index < count; index++) {
        writes.push(device.write(pattern(unit, index), index * unit * 3));
      }
      await Promise.all(writes);
      const buffers = Array.from({ length: count }, () => Buffer.alloc(unit));
      await Promise.all(buffers.map((buffer, index) => device.read(buffer, index * unit * 3)));
      for (const [index, buffer] of buffers.entries())
        assert.deepEqual(buffer, pattern(unit, index));
    });

    it('refuses everything after close, and closes twice', async () => {
      const device = await factory({ readOnly: false });
      const unit = unitOf(device);
      await device.close();
      await device.close();
      await expectCode(device.read(Buffer.alloc(unit), 0), 'DISK_CLOSED');
      await expectCode(device.write(Buffer.alloc(unit), 0), 'DISK_CLOSED');
      await expectCode(device.flush(), 'DISK_CLOSED');
      await expectCode(device.discard(0, unit), 'DISK_CLOSED');
      await expectCode(device.writeZeroes(0, unit), 'DISK_CLOSED');
      await expectCode(device.blockStatus(0, unit), 'DISK_CLOSED');
      await expectCode(device.cache(0, unit), 'DISK_CLOSED');
    });

    it('lets requests in flight finish when closed', async () => {
      const device = await factory({ readOnly: false });
      const unit = unitOf(device);
      const reads = Array.from({ length: 16 }, (_, index) =>
        device.read(Buffer.alloc(unit), index * unit),
      );
      await device.close();
      await Promise.all(reads);
    });
  });
}
