/**
 * The NBD server's buffer handling: write payloads kept as the socket chunks they arrived in
 * (ByteQueue.takePieces, written with one gather write) and the pool of READ reply buffers,
 * down to a real file, with the addon and with the portable fallback.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { type FileDevice, openFileDevice } from '../../src/disk/file-device.js';
import { fallbackDiskNative } from '../../src/disk/native.js';
import { ByteQueue } from '../../src/nbd/byte-queue.js';
import { ReplyBufferPool } from '../../src/nbd/reply-buffers.js';
import * as wire from '../../src/nbd/wire.js';
import {
  ClientPool,
  type TestServer,
  delay,
  patternBuffer,
  replyData,
  replyErrno,
  startServer,
} from './helpers/raw-nbd.js';

describe('ByteQueue.takePieces', () => {
  it('returns views of the chunks in order, without copying, and leaves the rest queued', () => {
    const queue = new ByteQueue();
    const first = Buffer.from('abcdef');
    const second = Buffer.from('ghij');
    const third = Buffer.from('klmnop');
    queue.push(first);
    queue.push(second);
    queue.push(third);
    queue.consume(2);
    const pieces = queue.takePieces(10);
    assert.deepEqual(
      pieces.map((piece) => piece.toString()),
      ['cdef', 'ghij', 'kl'],
    );
    // Views share memory with the chunks: nothing was copied.
    assert.equal(pieces[0]?.buffer, first.buffer);
    assert.equal(pieces[2]?.buffer, third.buffer);
    assert.equal(queue.length, 4);
    assert.equal(queue.take(4).toString(), 'mnop');
    assert.deepEqual(queue.takePieces(0), []);
  });

  it('refuses to take more than is queued', () => {
    const queue = new ByteQueue();
    queue.push(Buffer.from('abc'));
    assert.throws(() => queue.takePieces(4), /past the queued bytes/);
  });
});

describe('ReplyBufferPool', () => {
  it('hands a returned buffer out again for the same size only', () => {
    const pool = new ReplyBufferPool(1024 * 1024);
    const buffer = pool.take(65536 + 16);
    assert.equal(buffer.length, 65536 + 16);
    pool.give(buffer);
    assert.equal(pool.pooledSizeBytes, 65536 + 16);
    assert.notEqual(pool.take(65536 + 32), buffer);
    assert.equal(pool.take(65536 + 16), buffer);
    assert.equal(pool.pooledSizeBytes, 0);
  });

  it('keeps at most its limit, and makes room for a new size by dropping others', () => {
    const pool = new ReplyBufferPool(3 * 65536);
    const buffers = [pool.take(65536), pool.take(65536), pool.take(65536), pool.take(65536)];
    for (const buffer of buffers) pool.give(buffer);
    assert.equal(pool.pooledSizeBytes, 3 * 65536);
    // A size the pool lacks while full: the other sizes go, later returns can be kept.
    const other = pool.take(131072);
    assert.equal(pool.pooledSizeBytes, 0);
    pool.give(other);
    assert.equal(pool.pooledSizeBytes, 131072);
  });

  it('does not pool small buffers', () => {
    const pool = new ReplyBufferPool(1024 * 1024);
    pool.give(pool.take(512));
    assert.equal(pool.pooledSizeBytes, 0);
  });
});

const fileSizeBytes = 4 * 1024 * 1024;
const largeBytes = 1024 * 1024;

const variants = [
  { name: 'addon, payloads read in JavaScript', addon: true, transmissionThread: false },
  { name: 'portable fallback', addon: false, transmissionThread: false },
  { name: 'addon, transmission thread', addon: true, transmissionThread: true },
] as const;

for (const variant of variants) {
  describe(`NBD payloads and replies over a file (${variant.name})`, () => {
    const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-nbd-buffers-'));
    const filePath = path.join(directory, 'disk.img');
    let device: FileDevice;
    let fixture: TestServer;
    const pool = new ClientPool(() => fixture.port);
    let nextHandle = 1n;
    const gatheredPieceCounts: number[] = [];

    before(async () => {
      fs.writeFileSync(filePath, Buffer.alloc(0));
      fs.truncateSync(filePath, fileSizeBytes);
      const native = variant.addon ? undefined : fallbackDiskNative;
      device = await openFileDevice(filePath, native === undefined ? {} : { native });
      const gather = device.writeGathered.bind(device);
      device.writeGathered = (pieces, offsetBytes, options) => {
        gatheredPieceCounts.push(pieces.length);
        return gather(pieces, offsetBytes, options);
      };
      fixture = await startServer(
        [{ name: 'disk', device }],
        {},
        { transmissionThread: variant.transmissionThread },
      );
    });
    after(async () => {
      pool.closeAll();
      await fixture.close();
      await device.close();
      fs.rmSync(directory, { recursive: true, force: true });
    });

    it('writes a payload that arrives in many uneven socket chunks exactly', async () => {
      const client = await pool.connect();
      await client.attach('disk', { structured: true });
      const data = patternBuffer(largeBytes, 3);
      const handle = (nextHandle += 1n);
      const request = client.prepareRequest({
        type: wire.CMD_WRITE,
        handle,
        offset: 4096 + 17,
        length: data.length,
        payload: data,
      });
      // Uneven slices with pauses, so the server sees them as separate socket reads.
      let cursor = 0;
      for (const step of [10, 28, 1, 4095, 70_000, 3, 200_000]) {
        client.send(request.subarray(cursor, cursor + step));
        cursor += step;
        await delay(2);
      }
      client.send(request.subarray(cursor));
      assert.equal(replyErrno(await client.readReply()), 0);
      if (variant.transmissionThread) {
        // The thread wrote the payload to the file itself; the device never saw it.
        assert.deepEqual(gatheredPieceCounts, []);
      } else {
        assert.ok(
          gatheredPieceCounts.some((count) => count > 1),
          'the payload reached the device as several pieces',
        );
      }
      const onDisk = fs.readFileSync(filePath).subarray(4096 + 17, 4096 + 17 + data.length);
      assert.ok(onDisk.equals(data));
    });

    it('answers many pipelined reads from reused buffers with the right data each', async () => {
      const client = await pool.connect();
      await client.attach('disk', { structured: false });
      const blocks = 12;
      for (let index = 0; index < blocks; index++) {
        const payload = patternBuffer(128 * 1024, 100 + index);
        const reply = await client.request({
          type: wire.CMD_WRITE,
          flags: index % 3 === 0 ? wire.CMD_FLAG_FUA : 0,
          handle: (nextHandle += 1n),
          offset: 2 * largeBytes + index * payload.length,
          length: payload.length,
          payload,
        });
        assert.equal(replyErrno(reply), 0);
      }
      assert.equal(
        replyErrno(
          await client.request({
            type: wire.CMD_FLUSH,
            handle: (nextHandle += 1n),
            offset: 0,
            length: 0,
          }),
        ),
        0,
      );
      for (let round = 0; round < 3; round++) {
        const handles = new Map<bigint, number>();
        for (let index = 0; index < blocks; index++) {
          const handle = (nextHandle += 1n);
          handles.set(handle, index);
          client.sendRequest({
            type: wire.CMD_READ,
            handle,
            offset: 2 * largeBytes + index * 128 * 1024,
            length: 128 * 1024,
          });
        }
        for (let count = 0; count < blocks; count++) {
          const reply = await client.readReply();
          const index = handles.get(reply.handle);
          assert.ok(index !== undefined);
          assert.ok(replyData(reply).equals(patternBuffer(128 * 1024, 100 + index)));
        }
      }
    });
  });
}
