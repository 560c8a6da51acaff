/**
 * The transmission thread's read helper (native/nbd_reader.c): pipelined large READs are read
 * by a second thread (or by the transmission thread while it would wait) and their replies
 * leave in the order submitted, between the thread's other replies. Each test checks the data
 * of every reply, in simple and structured mode: reads mixed with small reads and writes; reads
 * past the end of a file that shrank, each failure answered in its turn; a client that does
 * not read 48 MiB of replies, so replies stop half sent; an export removed meanwhile, so the
 * replies not sent yet go back to the connection. Each asserts that the helper thread ran.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, afterEach, before, describe, it } from 'node:test';
import { type FileDevice, openFileDevice } from '../../src/disk/file-device.js';
import { loadDiskNative } from '../../src/disk/native.js';
import * as wire from '../../src/nbd/wire.js';
import {
  ClientPool,
  ConnectionClosedError,
  type RawNbdClient,
  type Reply,
  type TestServer,
  delay,
  patternBuffer,
  replyData,
  replyErrno,
  startServer,
  waitUntil,
  withTimeout,
} from './helpers/raw-nbd.js';

const fileSizeBytes = 64 * 1024 * 1024;
const mebibyte = 1024 * 1024;
const testTimeout = { timeout: 30_000 };
const policy = { takeOverBytes: 1, handBackAfter: 0 };
const skip = loadDiskNative().nbdThread === undefined ? 'the native addon is not built' : false;
const helperThreadName = 'tandem-nbd-read';

/** How many read helper threads this process runs now (threads are named in nbd_reader.c). */
function helperThreads(): number {
  let count = 0;
  for (const task of fs.readdirSync('/proc/self/task')) {
    try {
      if (fs.readFileSync(`/proc/self/task/${task}/comm`, 'utf8').trim() === helperThreadName) {
        count += 1;
      }
    } catch {
      // The thread ended between the listing and the read.
    }
  }
  return count;
}

async function readReplies(client: RawNbdClient, count: number): Promise<Map<bigint, Reply>> {
  const replies = new Map<bigint, Reply>();
  for (let index = 0; index < count; index++) {
    const reply = await client.readReply(10_000);
    assert.ok(!replies.has(reply.handle), `one reply for handle ${reply.handle}`);
    replies.set(reply.handle, reply);
  }
  return replies;
}

/**
 * Pauses the client, sends `count` READs at once (handles 1 to count), and waits until the
 * read helper runs: the replies then wait for the client to resume.
 */
async function sendReads(
  client: RawNbdClient,
  count: number,
  offsetOf: (index: number) => number,
  lengthOf: (index: number) => number,
): Promise<void> {
  client.socket.pause();
  const batch = Array.from({ length: count }, (_, index) =>
    client.prepareRequest({
      type: wire.CMD_READ,
      handle: BigInt(index + 1),
      offset: offsetOf(index),
      length: lengthOf(index),
    }),
  );
  client.send(Buffer.concat(batch));
  await waitUntil(() => helperThreads() >= 1, 3000, 'the read helper runs');
}

describe('NBD read helper', { skip }, () => {
  let directory: string;
  let filePath: string;
  let contents: Buffer;
  let device: FileDevice;
  let server: TestServer;
  const pool = new ClientPool(() => server.port);

  before(async () => {
    directory = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-nbd-read-helper-'));
    filePath = path.join(directory, 'disk.img');
    contents = patternBuffer(fileSizeBytes, 29);
    fs.writeFileSync(filePath, contents);
    device = await openFileDevice(filePath);
    server = await startServer(
      [{ name: 'disk', device }],
      { maximumRequestsInFlight: 64 },
      { transmissionThread: policy },
    );
  });
  afterEach(async () => {
    pool.closeAll();
    await waitUntil(() => server.server.connectionCount === 0, 3000, 'connections closed');
  });
  after(async () => {
    pool.closeAll();
    await server.close();
    await device.close();
    fs.rmSync(directory, { recursive: true, force: true });
  });

  for (const structured of [false, true]) {
    it(
      `answers pipelined large reads between small reads and writes (${structured ? 'structured' : 'simple'} replies)`,
      testTimeout,
      async () => {
        const client = await pool.connect();
        await client.attach('disk', { structured });
        client.socket.pause();
        const expected = new Map<bigint, Buffer>();
        const batch: Buffer[] = [];
        let handle = 0n;
        // Writes go to the first 4 MiB; reads come from the rest, which nothing writes.
        const written = patternBuffer(256 * 1024, structured ? 3 : 4);
        const writeOffsets: number[] = [];
        for (let index = 0; index < 40; index++) {
          const length = [mebibyte, 256 * 1024, 4096, 4 * mebibyte, 3 * mebibyte][index % 5] ?? 0;
          const offset = 4 * mebibyte + ((index * 5 * mebibyte + 4096 * index) % (48 * mebibyte));
          handle += 1n;
          expected.set(handle, contents.subarray(offset, offset + length));
          batch.push(client.prepareRequest({ type: wire.CMD_READ, handle, offset, length }));
          if (index % 7 === 3) {
            handle += 1n;
            writeOffsets.push((index % 16) * written.length);
            batch.push(
              client.prepareRequest({
                type: wire.CMD_WRITE,
                handle,
                offset: (index % 16) * written.length,
                length: written.length,
                payload: written,
              }),
            );
          }
        }
        client.send(Buffer.concat(batch));
        await waitUntil(() => helperThreads() >= 1, 3000, 'the read helper runs');
        client.socket.resume();
        const replies = await readReplies(client, Number(handle));
        for (const [handle, reply] of replies) {
          assert.equal(replyErrno(reply), 0, `handle ${handle}`);
          const data = expected.get(handle);
          if (data !== undefined) assert.ok(replyData(reply).equals(data), `read ${handle}`);
        }
        const onDisk = fs.readFileSync(filePath);
        for (const offset of writeOffsets) {
          assert.ok(onDisk.subarray(offset, offset + written.length).equals(written));
        }
        assert.ok(onDisk.subarray(4 * mebibyte).equals(contents.subarray(4 * mebibyte)));
        fs.writeFileSync(filePath, contents); // for the tests after this one
      },
    );
  }

  for (const structured of [false, true]) {
    it(
      `answers each large read past the end of a shrunk file with EIO in its turn (${structured ? 'structured' : 'simple'} replies)`,
      testTimeout,
      async () => {
        const client = await pool.connect();
        await client.attach('disk', { structured });
        const halfBytes = fileSizeBytes / 2;
        fs.truncateSync(filePath, halfBytes);
        try {
          const past = (index: number): boolean => index % 3 === 1;
          const offsetOf = (index: number): number =>
            past(index) ? halfBytes + index * mebibyte : index * mebibyte;
          await sendReads(client, 24, offsetOf, () => mebibyte);
          client.socket.resume();
          const replies = await readReplies(client, 24);
          for (const [handle, reply] of replies) {
            if (past(Number(handle) - 1)) {
              assert.equal(replyErrno(reply), wire.NBD_EIO, `handle ${handle}`);
              continue;
            }
            const offset = (Number(handle) - 1) * mebibyte;
            assert.ok(replyData(reply).equals(contents.subarray(offset, offset + mebibyte)));
          }
          // The stream is still in step.
          const again = await client.request({
            type: wire.CMD_READ,
            handle: 100n,
            offset: 0,
            length: mebibyte,
          });
          assert.ok(replyData(again).equals(contents.subarray(0, mebibyte)));
        } finally {
          fs.truncateSync(filePath, fileSizeBytes);
          fs.writeFileSync(filePath, contents);
        }
      },
    );
  }

  it(
    'keeps each reply whole when small replies and large ones wait for the client',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.attach('disk', { structured: false });
      // Mostly 4 KiB reads (their replies gather in the thread's output) with a 1 MiB read (a
      // slot) every 64: when the socket fills, a reply of either kind is likely half sent.
      const count = 3000;
      const lengthOf = (index: number): number => (index % 64 === 63 ? mebibyte : 4096);
      const offsetOf = (index: number): number => (index * 8192) % (fileSizeBytes - mebibyte);
      await sendReads(client, count, offsetOf, lengthOf);
      await delay(200);
      client.socket.resume();
      const replies = await readReplies(client, count);
      for (const [handle, reply] of replies) {
        const index = Number(handle) - 1;
        const offset = offsetOf(index);
        assert.ok(replyData(reply).equals(contents.subarray(offset, offset + lengthOf(index))));
      }
    },
  );

  it(
    'stops for a client that does not read 48 MiB of replies, then serves it',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.attach('disk', { structured: true });
      const count = 48;
      const offsetOf = (index: number): number =>
        (index * 7 * mebibyte) % (fileSizeBytes - mebibyte);
      await sendReads(client, count, offsetOf, () => mebibyte);
      await delay(300);
      client.socket.resume();
      const replies = await readReplies(client, count);
      for (const [handle, reply] of replies) {
        const offset = offsetOf(Number(handle) - 1);
        assert.ok(replyData(reply).equals(contents.subarray(offset, offset + mebibyte)));
      }
    },
  );
});

describe('NBD read helper, export removed', { skip }, () => {
  it(
    'sends the rest of each reply begun, and the others whole or refused, when the export goes',
    testTimeout,
    async () => {
      const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-nbd-read-helper-end-'));
      const filePath = path.join(directory, 'disk.img');
      const contents = patternBuffer(16 * mebibyte, 31);
      fs.writeFileSync(filePath, contents);
      const device = await openFileDevice(filePath);
      const server = await startServer(
        [{ name: 'disk', device }],
        { maximumRequestsInFlight: 64 },
        {
          transmissionThread: policy,
        },
      );
      const pool = new ClientPool(() => server.port);
      try {
        const client = await pool.connect();
        await client.attach('disk', { structured: false });
        const count = 48;
        const offsetOf = (index: number): number => (index * 3 * mebibyte) % (15 * mebibyte);
        await sendReads(client, count, offsetOf, () => mebibyte);
        await delay(200);
        const removed = withTimeout(server.server.removeExport('disk'), 5000, 'removeExport');
        await delay(100);
        client.socket.resume();
        let answered = 0;
        const handles = new Set<bigint>();
        for (;;) {
          let reply;
          try {
            reply = await client.readReply(5000);
          } catch (error) {
            if (error instanceof ConnectionClosedError) break;
            throw error;
          }
          answered += 1;
          handles.add(reply.handle);
          const errno = replyErrno(reply);
          if (errno === 0) {
            const offset = offsetOf(Number(reply.handle) - 1);
            assert.ok(replyData(reply).equals(contents.subarray(offset, offset + mebibyte)));
          } else {
            assert.equal(errno, wire.NBD_ESHUTDOWN);
          }
        }
        await removed;
        // Requests are parsed in order and each one parsed is answered: the rest never were.
        assert.ok(answered >= 1, `${answered} replies`);
        assert.deepEqual(
          [...handles].sort((left, right) => Number(left - right)),
          Array.from({ length: answered }, (_, index) => BigInt(index + 1)),
        );
        await withTimeout(device.close(), 3000, 'device.close');
        await waitUntil(() => helperThreads() === 0, 3000, 'the read helper ended');
      } finally {
        pool.closeAll();
        await server.close();
        fs.rmSync(directory, { recursive: true, force: true });
      }
    },
  );
});
