/**
 * BatchedIo: the native batched pread/pwrite path and the page-cache-only read fast path.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, it } from 'node:test';
import { BatchedIo, type BatchDone } from '../../src/disk/batched-io.js';
import { loadDiskNative } from '../../src/disk/native.js';

const native = loadDiskNative();
const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-batch-'));
after(() => fs.rmSync(directory, { recursive: true, force: true }));

function run(start: (done: BatchDone) => void): Promise<NodeJS.ErrnoException | null> {
  return new Promise((resolve) => start(resolve));
}

describe(
  'BatchedIo',
  { skip: native.submitBatch === undefined ? 'addon not built' : false },
  () => {
    const submit = native.submitBatch;
    const file = path.join(directory, 'data.img');
    fs.writeFileSync(file, Buffer.alloc(1024 * 1024));
    const fd = fs.openSync(file, 'r+');
    after(() => fs.closeSync(fd));

    it('runs many requests of one turn in capped batches, each completing once', async () => {
      assert.ok(submit !== undefined);
      const batchSizes: number[] = [];
      const counting: typeof submit = (...args) => {
        batchSizes.push(args[1].length);
        submit(...args);
      };
      const io = new BatchedIo(fd, counting, 4, undefined);
      const writes = Array.from({ length: 10 }, (_, index) => Buffer.alloc(4096, index + 1));
      const results = await Promise.all(
        writes.map((data, index) => run((done) => io.write(data, index * 4096, done))),
      );
      assert.deepEqual(results, Array(10).fill(null));
      assert.deepEqual(batchSizes, [4, 4, 2]);
      const reads = await Promise.all(
        writes.map(async (_, index) => {
          const buffer = Buffer.alloc(4096);
          assert.equal(await run((done) => io.read(buffer, index * 4096, done)), null);
          return buffer;
        }),
      );
      reads.forEach((buffer, index) => assert.ok(buffer.equals(writes[index] ?? Buffer.alloc(0))));
    });

    it('writes gathered pieces back to back with one operation', async () => {
      assert.ok(submit !== undefined);
      const operations: Array<Buffer | readonly Buffer[]> = [];
      const counting: typeof submit = (...args) => {
        operations.push(...args[1]);
        submit(...args);
      };
      const io = new BatchedIo(fd, counting, 8, undefined);
      const data = Buffer.alloc(300 * 1024);
      for (let index = 0; index < data.length; index++) data[index] = (index * 7) % 251;
      const pieces = [data.subarray(0, 1), data.subarray(1, 65537), data.subarray(65537)];
      assert.equal(await run((done) => io.writeGathered(pieces, 4096, done)), null);
      assert.equal(operations.length, 1);
      assert.ok(Array.isArray(operations[0]));
      const readBack = Buffer.alloc(data.length);
      assert.equal(await run((done) => io.read(readBack, 4096, done)), null);
      assert.ok(readBack.equals(data));
    });

    it('refuses a gather read and a gather write without pieces', () => {
      assert.ok(submit !== undefined);
      const ignore = (): void => undefined;
      const offsets = Float64Array.from([0]);
      assert.throws(
        () => submit(fd, [[Buffer.alloc(4)]], offsets, Uint8Array.from([0]), ignore),
        /only a write may gather/,
      );
      assert.throws(
        () => submit(fd, [[]], offsets, Uint8Array.from([1]), ignore),
        /1 to 8192 pieces/,
      );
    });

    it('reports a read past the end of the file as EEOF, and errno failures by name', async () => {
      assert.ok(submit !== undefined);
      const io = new BatchedIo(fd, submit, 8, undefined);
      const eof = await run((done) => io.read(Buffer.alloc(8192), 1024 * 1024 - 4096, done));
      assert.equal(eof?.code, 'EEOF');
      const readOnlyFd = fs.openSync(file, 'r');
      try {
        const readOnly = new BatchedIo(readOnlyFd, submit, 8, undefined);
        const denied = await run((done) => readOnly.write(Buffer.alloc(512), 0, done));
        assert.equal(denied?.code, 'EBADF');
        assert.equal(denied?.syscall, 'pwrite');
      } finally {
        fs.closeSync(readOnlyFd);
      }
    });

    it('answers cached reads at once without a batch, and falls back when not cached', async () => {
      assert.ok(submit !== undefined);
      let batches = 0;
      const counting: typeof submit = (...args) => {
        batches += 1;
        submit(...args);
      };
      const io = new BatchedIo(fd, counting, 8, native.preadNoWait);
      fs.writeSync(fd, Buffer.alloc(4096, 0x5a), 0, 4096, 65536);
      const buffer = Buffer.alloc(4096);
      let completedSynchronously = false;
      io.read(buffer, 65536, (error) => {
        assert.equal(error, null);
        completedSynchronously = true;
      });
      assert.ok(completedSynchronously, 'a page-cache hit completes before read() returns');
      assert.ok(buffer.every((byte) => byte === 0x5a));
      assert.equal(batches, 0);
      // Past the end of the file the cache-only read is short, so the batch path answers.
      const eof = await run((done) => io.read(Buffer.alloc(8192), 1024 * 1024 - 4096, done));
      assert.equal(eof?.code, 'EEOF');
      assert.equal(batches, 1);
    });
  },
);
