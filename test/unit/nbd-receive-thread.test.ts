/**
 * The native receive thread (src/nbd/native-receiver.ts, native/nbd_receiver.c) on a real file:
 * taking over at a large WRITE and handing back after small requests, many times in one
 * pipelined stream; a client that stops reading its replies; a client that vanishes in the
 * middle of a payload; an export removed under a stream of writes; a write the file system
 * refuses (ENOSPC on a small tmpfs). The bad-input cases run with the thread in
 * nbd-transmission.test.ts.
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
const policy = { largeWriteBytes: 64 * 1024, handBackAfter: 3 };
const testTimeout = { timeout: 20_000 };
const skip = loadDiskNative().nbdReceiver === undefined ? 'the native addon is not built' : false;

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

describe('NBD receive thread', { skip }, () => {
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
      { receiveThread: policy },
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
    'takes over at large writes and hands back after small requests, in one pipelined stream',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.attach('disk', { structured: true });
      const before = fixture.takeOvers();
      const expected = Buffer.alloc(fileSizeBytes);
      const requests: Buffer[] = [];
      const reads: { handle: bigint; offset: number; length: number }[] = [];
      let cursor = 0;
      // Rounds of: large writes (the thread takes over), then small writes and reads (it hands
      // back after three), all sent in one go so take-over and hand-back meet queued bytes.
      for (let round = 0; round < 6; round++) {
        for (let index = 0; index < 3; index++) {
          const data = patternBuffer(largeBytes, round * 10 + index);
          const offset = cursor;
          cursor = (cursor + largeBytes) % fileSizeBytes;
          data.copy(expected, offset);
          const flags = index === 2 ? wire.CMD_FLAG_FUA : 0;
          requests.push(
            client.prepareRequest({
              type: wire.CMD_WRITE,
              flags,
              handle: handle(),
              offset,
              length: largeBytes,
              payload: data,
            }),
          );
        }
        for (let index = 0; index < 5; index++) {
          const data = patternBuffer(smallBytes, 500 + round * 10 + index);
          const offset = cursor;
          cursor = (cursor + smallBytes) % fileSizeBytes;
          data.copy(expected, offset);
          requests.push(
            client.prepareRequest({
              type: wire.CMD_WRITE,
              handle: handle(),
              offset,
              length: smallBytes,
              payload: data,
            }),
          );
          const readHandle = handle();
          reads.push({ handle: readHandle, offset, length: smallBytes });
          requests.push(
            client.prepareRequest({
              type: wire.CMD_READ,
              handle: readHandle,
              offset,
              length: smallBytes,
            }),
          );
        }
        requests.push(
          client.prepareRequest({ type: wire.CMD_FLUSH, handle: handle(), offset: 0, length: 0 }),
        );
      }
      client.send(Buffer.concat(requests));
      const readData = new Map<bigint, Buffer>();
      while (client.outstanding > 0) {
        const reply = await client.readReply();
        assert.equal(replyErrno(reply), 0);
        if (reads.some((read) => read.handle === reply.handle)) {
          readData.set(reply.handle, replyData(reply));
        }
      }
      // A read sent after a write on one connection may still overtake it (NBD leaves the
      // order of requests in flight open): reads are checked for their length, the file once
      // every reply came.
      const onDisk = fs.readFileSync(fixture.filePath);
      assert.ok(onDisk.subarray(0, cursor).equals(expected.subarray(0, cursor)));
      for (const read of reads) {
        assert.equal(readData.get(read.handle)?.length, read.length);
      }
      assert.ok(
        fixture.takeOvers() - before >= 6,
        `the thread took over ${fixture.takeOvers() - before} times, wanted one per round`,
      );
      // Still in step afterwards, back in JavaScript.
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
      client.send(Buffer.concat(batch));
      await delay(300);
      client.socket.resume();
      for (let index = 0; index < count; index++) {
        assert.equal(replyErrno(await client.readReply(5000)), 0);
      }
      assert.ok(fs.readFileSync(fixture.filePath).subarray(0, largeBytes).equals(data));
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

describe('NBD receive thread, ending', { skip }, () => {
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
          receiveThread: policy,
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
          receiveThread: policy,
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
