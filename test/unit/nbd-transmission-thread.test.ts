/**
 * The native transmission thread (src/nbd/transmission-thread.ts, native/nbd_thread.c) on a
 * real file: taking over at a large WRITE and handing back after requests it does not serve,
 * many times in one pipelined stream; reads on a read-only export; a file that shrank under
 * its export (a failed pread); a client that stops reading its replies; a client that
 * vanishes in the middle of a payload; an export removed under a stream of writes; a write
 * the file system refuses (ENOSPC on a small tmpfs). The bad-input cases run with the thread
 * in nbd-transmission.test.ts.
 */
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
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
  type TestServer,
  delay,
  patternBuffer,
  replyData,
  replyErrno,
  startServer,
  waitUntil,
  withTimeout,
} from './helpers/raw-nbd.js';

const fileSizeBytes = 16 * 1024 * 1024;
const largeBytes = 256 * 1024;
const smallBytes = 4096;
const policy = { takeOverBytes: 64 * 1024, handBackAfter: 3 };
const testTimeout = { timeout: 20_000 };
const skip = loadDiskNative().nbdThread === undefined ? 'the native addon is not built' : false;

interface Fixture {
  readonly directory: string;
  readonly filePath: string;
  readonly device: FileDevice;
  /** Times the device lent its descriptor: once per take-over. */
  readonly takeOvers: () => number;
}

async function openCountedFile(directory: string, sizeBytes: number): Promise<Fixture> {
  const filePath = path.join(directory, 'disk.img');
  fs.writeFileSync(filePath, Buffer.alloc(0));
  fs.truncateSync(filePath, sizeBytes);
  const device = await openFileDevice(filePath);
  let count = 0;
  const borrow = device.borrowDescriptor.bind(device);
  device.borrowDescriptor = () => {
    count += 1;
    return borrow();
  };
  return { directory, filePath, device, takeOvers: () => count };
}

describe('NBD transmission thread', { skip }, () => {
  let fixture: Fixture;
  let server: TestServer;
  const pool = new ClientPool(() => server.port);
  let nextHandle = 1n;
  const handle = (): bigint => (nextHandle += 1n);

  before(async () => {
    const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-nbd-thread-'));
    fixture = await openCountedFile(directory, fileSizeBytes);
    server = await startServer(
      [{ name: 'disk', device: fixture.device }],
      { maximumRequestsInFlight: 8 },
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
    await fixture.device.close();
    fs.rmSync(fixture.directory, { recursive: true, force: true });
  });

  it(
    'takes over at large writes and hands back after requests it does not serve, in one stream',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.attach('disk', { structured: true });
      const before = fixture.takeOvers();
      const expected = Buffer.alloc(fileSizeBytes);
      const requests: Buffer[] = [];
      /** Reads whose data is known when sent: nothing in the stream writes their range. */
      const stableReads = new Map<bigint, Buffer>();
      const readHandles = new Set<bigint>();
      const write = (offset: number, data: Buffer, flags = 0): void => {
        data.copy(expected, offset);
        requests.push(
          client.prepareRequest({
            type: wire.CMD_WRITE,
            flags,
            handle: handle(),
            offset,
            length: data.length,
            payload: data,
          }),
        );
      };
      const read = (offset: number, length: number, stable: boolean): void => {
        const readHandle = handle();
        readHandles.add(readHandle);
        if (stable)
          stableReads.set(readHandle, Buffer.from(expected.subarray(offset, offset + length)));
        requests.push(
          client.prepareRequest({ type: wire.CMD_READ, handle: readHandle, offset, length }),
        );
      };
      // The writes stay under 8 MiB; the rest of the file holds a known pattern, written
      // before the stream, that large reads check.
      const tailOffset = fileSizeBytes / 2;
      const tail = patternBuffer(fileSizeBytes - tailOffset, 31);
      const descriptor = fs.openSync(fixture.filePath, 'r+');
      try {
        fs.writeSync(descriptor, tail, 0, tail.length, tailOffset);
      } finally {
        fs.closeSync(descriptor);
      }
      tail.copy(expected, tailOffset);
      let cursor = 0;
      // Rounds of: large writes (the thread takes over), small writes and reads (it serves
      // them too), three flushes (it hands back after three requests it does not serve), then
      // small writes parsed in JavaScript (under the take-over size), all sent in one go so
      // take-over and hand-back meet queued bytes.
      for (let round = 0; round < 6; round++) {
        for (let index = 0; index < 3; index++) {
          write(
            cursor,
            patternBuffer(largeBytes, round * 10 + index),
            index === 2 ? wire.CMD_FLAG_FUA : 0,
          );
          cursor += largeBytes;
        }
        for (let index = 0; index < 5; index++) {
          write(cursor, patternBuffer(smallBytes, 500 + round * 10 + index));
          read(cursor, smallBytes, false);
          cursor += smallBytes;
        }
        read(tailOffset + round * largeBytes, largeBytes, true);
        for (let index = 0; index < 3; index++) {
          requests.push(
            client.prepareRequest({ type: wire.CMD_FLUSH, handle: handle(), offset: 0, length: 0 }),
          );
        }
        for (let index = 0; index < 2; index++) {
          write(cursor, patternBuffer(smallBytes, 900 + round * 10 + index));
          cursor += smallBytes;
        }
      }
      client.send(Buffer.concat(requests));
      const readData = new Map<bigint, Buffer>();
      while (client.outstanding > 0) {
        const reply = await client.readReply();
        assert.equal(replyErrno(reply), 0);
        if (readHandles.has(reply.handle)) readData.set(reply.handle, replyData(reply));
      }
      // A read sent after a write on one connection may still overtake it (NBD leaves the
      // order of requests in flight open): those reads are checked for their length, the
      // file once every reply came.
      const onDisk = fs.readFileSync(fixture.filePath);
      assert.ok(cursor <= tailOffset);
      assert.ok(onDisk.equals(expected));
      assert.equal(readData.size, readHandles.size);
      for (const [readHandle, data] of stableReads) {
        assert.ok(readData.get(readHandle)?.equals(data), `read ${readHandle} returned its data`);
      }
      assert.ok(
        fixture.takeOvers() - before >= 6,
        `the thread took over ${fixture.takeOvers() - before} times, wanted one per round`,
      );
      // Still in step afterwards.
      const reply = await client.request({
        type: wire.CMD_READ,
        handle: handle(),
        offset: 0,
        length: largeBytes,
      });
      assert.ok(replyData(reply).equals(expected.subarray(0, largeBytes)));
    },
  );

  it(
    'answers a read past the end of a file that shrank under its export with EIO',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.attach('disk');
      const data = patternBuffer(largeBytes, 41);
      const written = await client.request({
        type: wire.CMD_WRITE,
        handle: handle(),
        offset: 0,
        length: largeBytes,
        payload: data,
      });
      assert.equal(replyErrno(written), 0);
      fs.truncateSync(fixture.filePath, fileSizeBytes / 2);
      try {
        const failed = await client.request({
          type: wire.CMD_READ,
          handle: handle(),
          offset: fileSizeBytes - largeBytes,
          length: largeBytes,
        });
        assert.equal(replyErrno(failed), wire.NBD_EIO);
        const reply = await client.request({
          type: wire.CMD_READ,
          handle: handle(),
          offset: 0,
          length: largeBytes,
        });
        assert.ok(replyData(reply).equals(data));
      } finally {
        fs.truncateSync(fixture.filePath, fileSizeBytes);
      }
    },
  );

  it(
    'pauses for a client that does not read its replies, then serves it',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.attach('disk');
      client.socket.pause();
      const count = 64;
      const batch: Buffer[] = [];
      const data = patternBuffer(largeBytes, 77);
      for (let index = 0; index < count; index++) {
        batch.push(
          client.prepareRequest({
            type: wire.CMD_WRITE,
            handle: handle(),
            offset: (index * largeBytes) % fileSizeBytes,
            length: largeBytes,
            payload: data,
          }),
        );
      }
      // Then 16 MiB of reads of the half no write touches: more than the socket and the
      // thread's output hold, so the thread waits for the client.
      const readOffset = (index: number): number =>
        fileSizeBytes / 2 + ((index * largeBytes) % (fileSizeBytes / 2));
      for (let index = 0; index < count; index++) {
        batch.push(
          client.prepareRequest({
            type: wire.CMD_READ,
            handle: 1_000_000n + BigInt(index),
            offset: readOffset(index),
            length: largeBytes,
          }),
        );
      }
      client.send(Buffer.concat(batch));
      await delay(300);
      client.socket.resume();
      const reads = new Map<bigint, Buffer>();
      for (let index = 0; index < 2 * count; index++) {
        const reply = await client.readReply(5000);
        assert.equal(replyErrno(reply), 0);
        if (reply.handle >= 1_000_000n) reads.set(reply.handle, replyData(reply));
      }
      const onDisk = fs.readFileSync(fixture.filePath);
      assert.ok(onDisk.subarray(0, largeBytes).equals(data));
      for (let index = 0; index < count; index++) {
        const expected = onDisk.subarray(readOffset(index), readOffset(index) + largeBytes);
        assert.ok(reads.get(1_000_000n + BigInt(index))?.equals(expected), `read ${index}`);
      }
    },
  );

  it('cleans up after a client that vanishes in the middle of a payload', testTimeout, async () => {
    const client = await pool.connect();
    await client.attach('disk');
    const request = client.prepareRequest({
      type: wire.CMD_WRITE,
      handle: handle(),
      offset: 0,
      length: largeBytes,
      payload: patternBuffer(largeBytes, 5),
    });
    client.send(request.subarray(0, request.length / 2));
    await delay(50);
    client.socket.destroy();
    await waitUntil(() => server.server.connectionCount === 0, 3000, 'connection closed');
  });
});

describe('NBD transmission thread, ending', { skip }, () => {
  let directory: string;
  const servers: TestServer[] = [];

  before(() => {
    directory = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-nbd-thread-end-'));
  });
  after(async () => {
    for (const server of servers) await server.close();
    fs.rmSync(directory, { recursive: true, force: true });
  });

  it(
    'answers or refuses every write when the export is removed under a stream of them',
    testTimeout,
    async () => {
      const fixture = await openCountedFile(fs.mkdtempSync(path.join(directory, 'r-')), 4 << 20);
      const server = await startServer(
        [{ name: 'disk', device: fixture.device }],
        {},
        {
          transmissionThread: policy,
        },
      );
      servers.push(server);
      const pool = new ClientPool(() => server.port);
      try {
        const client = await pool.connect();
        await client.attach('disk', { structured: true });
        const data = patternBuffer(largeBytes, 9);
        const batch: Buffer[] = [];
        for (let index = 0; index < 48; index++) {
          batch.push(
            client.prepareRequest({
              type: wire.CMD_WRITE,
              handle: BigInt(index + 1),
              offset: (index * largeBytes) % (4 << 20),
              length: largeBytes,
              payload: data,
            }),
          );
        }
        client.send(Buffer.concat(batch));
        const errnos = [replyErrno(await client.readReply())];
        assert.equal(errnos[0], 0);
        const removed = withTimeout(server.server.removeExport('disk'), 5000, 'removeExport');
        // Every reply that comes is success or ESHUTDOWN, whole; then the server closes.
        for (;;) {
          try {
            errnos.push(replyErrno(await client.readReply()));
          } catch (error) {
            if (error instanceof ConnectionClosedError) break;
            throw error;
          }
        }
        await removed;
        assert.ok(
          errnos.every((errno) => errno === 0 || errno === wire.NBD_ESHUTDOWN),
          `errnos ${errnos.join(',')}`,
        );
        // The device closes: the thread gave its descriptor back.
        await withTimeout(fixture.device.close(), 3000, 'device.close');
      } finally {
        pool.closeAll();
      }
    },
  );

  it(
    'sends every read it served when the export is removed while the client does not read',
    testTimeout,
    async () => {
      const fixture = await openCountedFile(fs.mkdtempSync(path.join(directory, 'q-')), 4 << 20);
      const data = patternBuffer(4 << 20, 17);
      fs.writeFileSync(fixture.filePath, data);
      const server = await startServer(
        [{ name: 'disk', device: fixture.device }],
        {},
        { transmissionThread: policy },
      );
      const pool = new ClientPool(() => server.port);
      try {
        const client = await pool.connect();
        await client.attach('disk', { structured: true });
        client.socket.pause();
        const count = 48;
        const offsetOf = (index: number): number => (index * largeBytes) % (4 << 20);
        const batch: Buffer[] = [];
        for (let index = 0; index < count; index++) {
          batch.push(
            client.prepareRequest({
              type: wire.CMD_READ,
              handle: BigInt(index + 1),
              offset: offsetOf(index),
              length: largeBytes,
            }),
          );
        }
        client.send(Buffer.concat(batch));
        await delay(200);
        const removed = withTimeout(server.server.removeExport('disk'), 5000, 'removeExport');
        await delay(100);
        client.socket.resume();
        // Each reply comes whole, with its data or ESHUTDOWN; then the server closes.
        let answered = 0;
        for (;;) {
          let reply;
          try {
            reply = await client.readReply();
          } catch (error) {
            if (error instanceof ConnectionClosedError) break;
            throw error;
          }
          answered += 1;
          const errno = replyErrno(reply);
          if (errno === 0) {
            const offset = offsetOf(Number(reply.handle) - 1);
            assert.ok(replyData(reply).equals(data.subarray(offset, offset + largeBytes)));
          } else {
            assert.equal(errno, wire.NBD_ESHUTDOWN);
          }
        }
        await removed;
        assert.ok(answered >= 1, `${answered} replies`);
        await withTimeout(fixture.device.close(), 3000, 'device.close');
      } finally {
        pool.closeAll();
        await server.close();
      }
    },
  );

  it('serves reads of a read-only export and refuses its writes', testTimeout, async () => {
    const fixture = await openCountedFile(fs.mkdtempSync(path.join(directory, 'ro-')), 4 << 20);
    const data = patternBuffer(4 << 20, 12);
    fs.writeFileSync(fixture.filePath, data);
    const server = await startServer(
      [{ name: 'ro', device: fixture.device, readOnly: true }],
      {},
      { transmissionThread: policy },
    );
    const pool = new ClientPool(() => server.port);
    try {
      for (const structured of [false, true]) {
        const client = await pool.connect();
        await client.attach('ro', { structured });
        const read = await client.request({
          type: wire.CMD_READ,
          handle: 1n,
          offset: largeBytes,
          length: largeBytes,
        });
        assert.ok(replyData(read).equals(data.subarray(largeBytes, 2 * largeBytes)));
        const refused = await client.request({
          type: wire.CMD_WRITE,
          handle: 2n,
          offset: 0,
          length: largeBytes,
          payload: patternBuffer(largeBytes, 13),
        });
        assert.equal(replyErrno(refused), wire.NBD_EPERM);
        const again = await client.request({
          type: wire.CMD_READ,
          handle: 3n,
          offset: 0,
          length: smallBytes,
        });
        assert.ok(replyData(again).equals(data.subarray(0, smallBytes)));
      }
      assert.ok(fixture.takeOvers() >= 2, `took over ${fixture.takeOvers()} times`);
      assert.ok(fs.readFileSync(fixture.filePath).equals(data));
    } finally {
      pool.closeAll();
      await server.close();
      await fixture.device.close();
    }
  });

  it('answers ENOSPC when the file system is full, and stays in step', testTimeout, async (t) => {
    const mountPoint = fs.mkdtempSync(path.join(directory, 'tmpfs-'));
    try {
      execFileSync('mount', ['-t', 'tmpfs', '-o', 'size=1m', 'tandem-test', mountPoint]);
    } catch (error) {
      t.skip(`cannot mount a tmpfs here: ${String(error)}`);
      return;
    }
    let server: TestServer | undefined;
    const pool = new ClientPool(() => server?.port ?? 0);
    let fixture: Fixture | undefined;
    try {
      fixture = await openCountedFile(mountPoint, 4 << 20);
      server = await startServer(
        [{ name: 'disk', device: fixture.device }],
        {},
        {
          transmissionThread: policy,
        },
      );
      const client = await pool.connect();
      await client.attach('disk');
      const data = patternBuffer(largeBytes, 3);
      const errnos: number[] = [];
      for (let index = 0; index < 8; index++) {
        const reply = await client.request({
          type: wire.CMD_WRITE,
          handle: BigInt(index + 1),
          offset: index * largeBytes,
          length: largeBytes,
          payload: data,
        });
        errnos.push(replyErrno(reply));
      }
      assert.equal(errnos[0], 0);
      assert.ok(errnos.includes(wire.NBD_ENOSPC), `errnos ${errnos.join(',')}`);
      assert.ok(fixture.takeOvers() >= 1);
      const read = await client.request({
        type: wire.CMD_READ,
        handle: 100n,
        offset: 0,
        length: largeBytes,
      });
      assert.ok(replyData(read).equals(data));
    } finally {
      pool.closeAll();
      if (server !== undefined) await server.close();
      if (fixture !== undefined) await fixture.device.close();
      execFileSync('umount', [mountPoint]);
    }
  });
});
