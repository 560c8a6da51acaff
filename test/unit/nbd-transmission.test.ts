/**
 * Transmission phase of the NBD server (proto.md "Transmission"), through a raw socket: every
 * command with simple and structured replies, pipelining, and every kind of bad request, each
 * followed by a check that the connection is still in step (or that it was dropped, where a
 * limit says so).
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, afterEach, before, describe, test } from 'node:test';
import type { BlockDevice, BlockDeviceCapabilities } from '../../src/disk/block-device.js';
import { FaultInjectingDevice } from '../../src/disk/fault-device.js';
import { openFileDevice } from '../../src/disk/file-device.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import * as wire from '../../src/nbd/wire.js';
import {
  ClientPool,
  type RawNbdClient,
  type Reply,
  type TestServer,
  delay,
  encodeRequest,
  patternBuffer,
  replyData,
  replyErrno,
  startServer,
  waitUntil,
  withTimeout,
} from './helpers/raw-nbd.js';

const sizeBytes = 1024 * 1024;
const maximumPayloadBytes = 64 * 1024;
const maximumSkippedPayloadBytes = 256 * 1024;
const failingReadBytes = 4096;
const testTimeout = { timeout: 15_000 };

/** Like a device whose zeroing always writes buffers: FAST_ZERO must be refused. */
class NoFastZeroDevice extends MemoryDevice {
  override readonly capabilities: BlockDeviceCapabilities = {
    flush: false,
    fua: false,
    discard: true,
    fastZero: false,
    blockStatus: true,
    consistentAcrossConnections: true,
  };
}

type Mode = 'simple' | 'structured';
const modes: readonly Mode[] = ['simple', 'structured'];

/**
 * The export 'disk' of each suite is a memory device (every byte parsed in JavaScript) or a
 * file, whose connections a native thread serves (src/nbd/transmission-thread.ts): each test
 * that uses 'disk' runs against both.
 */
const diskKinds = ['memory', 'file with transmission thread'] as const;
/** The thread takes over at the first READ or WRITE and never hands back. */
const alwaysThread = { takeOverBytes: 1, handBackAfter: 0 };
type DiskKind = (typeof diskKinds)[number];

async function openDisk(kind: DiskKind): Promise<{ device: BlockDevice; remove(): Promise<void> }> {
  if (kind === 'memory') {
    return { device: new MemoryDevice({ sizeBytes }), remove: () => Promise.resolve() };
  }
  const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-nbd-transmission-'));
  const filePath = path.join(directory, 'disk.img');
  fs.writeFileSync(filePath, Buffer.alloc(0));
  fs.truncateSync(filePath, sizeBytes);
  const device = await openFileDevice(filePath);
  return {
    device,
    remove: async () => {
      await device.close();
      fs.rmSync(directory, { recursive: true, force: true });
    },
  };
}

for (const diskKind of diskKinds) {
  describe(`NBD transmission ('disk' on ${diskKind})`, () => {
    let fixture: TestServer;
    let disk: Awaited<ReturnType<typeof openDisk>>;
    const pool = new ClientPool(() => fixture.port);
    const faulty = new FaultInjectingDevice(new MemoryDevice({ sizeBytes }));
    const slow = new FaultInjectingDevice(new MemoryDevice({ sizeBytes }));
    let nextHandle = 0x1_0000_0000n;
    const handle = (): bigint => (nextHandle += 0x1_0000_0001n);

    before(async () => {
      faulty.failIo({ match: { kinds: ['read'], offsetBytes: 0, lengthBytes: failingReadBytes } });
      disk = await openDisk(diskKind);
      fixture = await startServer(
        [
          { name: 'disk', device: disk.device },
          { name: 'bs', device: new MemoryDevice({ sizeBytes }) },
          { name: 'ro', device: new MemoryDevice({ sizeBytes }), readOnly: true },
          { name: 'nofast', device: new NoFastZeroDevice({ sizeBytes }) },
          { name: 'faulty', device: faulty },
          { name: 'slow', device: slow },
        ],
        { maximumPayloadBytes, maximumSkippedPayloadBytes },
        { transmissionThread: alwaysThread },
      );
    });
    afterEach(async () => {
      pool.closeAll();
      // Each test starts with no connection left from the one before.
      await waitUntil(() => fixture.server.connectionCount === 0, 3000, 'connections closed');
    });
    after(async () => {
      pool.closeAll();
      await fixture.close();
      await disk.remove();
    });

    async function attach(name: string, mode: Mode, baseAllocation = false): Promise<RawNbdClient> {
      const client = await pool.connect();
      await client.attach(name, { structured: mode === 'structured', baseAllocation });
      return client;
    }

    /** Asserts an error reply with `errno`, in the form the negotiated mode requires. */
    function assertError(reply: Reply, errno: number, mode: Mode): void {
      assert.equal(replyErrno(reply), errno, `errno ${replyErrno(reply)}, expected ${errno}`);
      if (mode === 'structured' && reply.structured) {
        assert.equal(reply.type, wire.REPLY_TYPE_ERROR);
        assert.equal(reply.flags & wire.REPLY_FLAG_DONE, wire.REPLY_FLAG_DONE);
      }
    }

    /** Same-connection liveness check: a write and a read of it round-trip. */
    async function assertInStep(client: RawNbdClient, offset: number): Promise<void> {
      const data = patternBuffer(512, offset & 0xff);
      const write = await client.request({
        type: wire.CMD_WRITE,
        handle: handle(),
        offset,
        length: 512,
        payload: data,
      });
      assert.equal(replyErrno(write), 0);
      const read = await client.request({
        type: wire.CMD_READ,
        handle: handle(),
        offset,
        length: 512,
      });
      assert.deepEqual(replyData(read), data);
    }

    for (const mode of modes) {
      test(`${mode}: write then read back`, testTimeout, async () => {
        const client = await attach('disk', mode);
        const offset = mode === 'simple' ? 8192 : 16384;
        const data = patternBuffer(4096, 3);
        const write = await client.request({
          type: wire.CMD_WRITE,
          handle: handle(),
          offset,
          length: 4096,
          payload: data,
        });
        assert.equal(replyErrno(write), 0);
        const read = await client.request({
          type: wire.CMD_READ,
          handle: handle(),
          offset,
          length: 4096,
        });
        assert.deepEqual(replyData(read), data);
        if (mode === 'structured') {
          assert.ok(read.structured);
          assert.equal(read.type, wire.REPLY_TYPE_OFFSET_DATA);
          assert.equal(read.flags, wire.REPLY_FLAG_DONE);
          assert.ok(read.chunk.kind === 'offset-data');
          assert.equal(read.chunk.offset, offset);
          const df = await client.request({
            type: wire.CMD_READ,
            flags: wire.CMD_FLAG_DF,
            handle: handle(),
            offset,
            length: 4096,
          });
          assert.deepEqual(replyData(df), data);
        } else {
          assert.equal(read.structured, false);
        }
        assert.equal(client.bufferedBytes, 0, 'no bytes beyond the replies');
      });

      test(
        `${mode}: many requests pipelined in one write, replies matched by handle`,
        testTimeout,
        async () => {
          const client = await attach('disk', mode);
          const base = mode === 'simple' ? 128 * 1024 : 256 * 1024;
          const blockBytes = 2048;
          const expected = new Map<bigint, Buffer | undefined>();
          const randomHandle = (index: number): bigint =>
            (BigInt(index * 2654435761) << 20n) ^ 0xdead_beef_0000_0000n ^ BigInt(index);
          // Batch 1: 32 writes. Batch 2: reads of those 32 blocks and 32 writes elsewhere.
          const firstBatch: Buffer[] = [];
          for (let index = 0; index < 32; index++) {
            const requestHandle = randomHandle(index);
            expected.set(requestHandle, undefined);
            const payload = patternBuffer(blockBytes, index);
            firstBatch.push(
              client.prepareRequest({
                type: wire.CMD_WRITE,
                handle: requestHandle,
                offset: base + index * blockBytes,
                length: blockBytes,
                payload,
              }),
            );
          }
          client.send(Buffer.concat(firstBatch));
          for (let index = 0; index < 32; index++) {
            expected.set(randomHandle(100 + index), patternBuffer(blockBytes, index));
          }
          const seen = new Set<bigint>();
          for (let index = 0; index < 32; index++) {
            const reply = await client.readReply();
            assert.ok(
              expected.has(reply.handle) && !seen.has(reply.handle),
              `handle ${reply.handle}`,
            );
            seen.add(reply.handle);
            assert.equal(replyErrno(reply), 0);
          }
          // Register the reads, then send them with 32 more writes in one socket write.
          const batch: Buffer[] = [];
          for (let index = 0; index < 32; index++) {
            const readHandle = randomHandle(100 + index);
            batch.push(
              client.prepareRequest({
                type: wire.CMD_READ,
                handle: readHandle,
                offset: base + index * blockBytes,
                length: blockBytes,
              }),
            );
            const writeHandle = randomHandle(200 + index);
            expected.set(writeHandle, undefined);
            batch.push(
              client.prepareRequest({
                type: wire.CMD_WRITE,
                handle: writeHandle,
                offset: base + (32 + index) * blockBytes,
                length: blockBytes,
                payload: patternBuffer(blockBytes, 200 + index),
              }),
            );
          }
          client.send(Buffer.concat(batch));
          for (let index = 0; index < 64; index++) {
            const reply = await client.readReply();
            assert.ok(
              expected.has(reply.handle) && !seen.has(reply.handle),
              `handle ${reply.handle}`,
            );
            seen.add(reply.handle);
            const want = expected.get(reply.handle);
            if (want === undefined) assert.equal(replyErrno(reply), 0);
            else assert.deepEqual(replyData(reply), want);
          }
          assert.equal(seen.size, 96);
          assert.equal(client.outstanding, 0);
          const check = await client.request({
            type: wire.CMD_READ,
            handle: handle(),
            offset: base + 40 * blockBytes,
            length: blockBytes,
          });
          assert.deepEqual(replyData(check), patternBuffer(blockBytes, 208));
        },
      );

      test(`${mode}: FUA write, FLUSH, TRIM, WRITE_ZEROES, CACHE`, testTimeout, async () => {
        const client = await attach('disk', mode);
        const offset = mode === 'simple' ? 512 * 1024 : 640 * 1024;
        const data = patternBuffer(8192, 9);
        const ok = async (
          type: number,
          flags: number,
          length: number,
          payload?: Buffer,
        ): Promise<void> => {
          const spec =
            payload === undefined
              ? { type, flags, handle: handle(), offset, length }
              : { type, flags, handle: handle(), offset, length, payload };
          const reply = await client.request(spec);
          assert.equal(replyErrno(reply), 0, `command ${wire.COMMAND_NAMES[type]} flags ${flags}`);
        };
        await ok(wire.CMD_WRITE, wire.CMD_FLAG_FUA, data.length, data);
        const flush = await client.request({
          type: wire.CMD_FLUSH,
          handle: handle(),
          offset: 0,
          length: 0,
        });
        assert.equal(replyErrno(flush), 0);
        const read = await client.request({
          type: wire.CMD_READ,
          flags: wire.CMD_FLAG_FUA,
          handle: handle(),
          offset,
          length: data.length,
        });
        assert.deepEqual(replyData(read), data);
        await ok(wire.CMD_CACHE, 0, data.length);
        await ok(wire.CMD_WRITE_ZEROES, 0, 4096);
        const zeroed = await client.request({
          type: wire.CMD_READ,
          handle: handle(),
          offset,
          length: data.length,
        });
        assert.deepEqual(
          replyData(zeroed),
          Buffer.concat([Buffer.alloc(4096), data.subarray(4096)]),
        );
        await ok(wire.CMD_WRITE, 0, data.length, data);
        await ok(wire.CMD_WRITE_ZEROES, wire.CMD_FLAG_NO_HOLE | wire.CMD_FLAG_FUA, data.length);
        const zeroedAgain = await client.request({
          type: wire.CMD_READ,
          handle: handle(),
          offset,
          length: data.length,
        });
        assert.deepEqual(replyData(zeroedAgain), Buffer.alloc(data.length));
        await ok(wire.CMD_WRITE_ZEROES, wire.CMD_FLAG_FAST_ZERO, data.length);
        await ok(wire.CMD_TRIM, 0, data.length);
        await ok(wire.CMD_TRIM, wire.CMD_FLAG_FUA, data.length);
      });

      test(`${mode}: FLUSH with a non-zero length or offset is EINVAL`, testTimeout, async () => {
        const client = await attach('disk', mode);
        assertError(
          await client.request({ type: wire.CMD_FLUSH, handle: handle(), offset: 0, length: 4096 }),
          wire.NBD_EINVAL,
          mode,
        );
        assertError(
          await client.request({ type: wire.CMD_FLUSH, handle: handle(), offset: 4096, length: 0 }),
          wire.NBD_EINVAL,
          mode,
        );
        await assertInStep(client, 900 * 1024);
      });

      test(
        `${mode}: WRITE_ZEROES with FAST_ZERO on a device without fast zeroing is ENOTSUP`,
        testTimeout,
        async () => {
          const client = await attach('nofast', mode);
          const reply = await client.request({
            type: wire.CMD_WRITE_ZEROES,
            flags: wire.CMD_FLAG_FAST_ZERO,
            handle: handle(),
            offset: 0,
            length: 4096,
          });
          assertError(reply, wire.NBD_ENOTSUP, mode);
          assert.equal(wire.NBD_ENOTSUP, 95);
          const slowZero = await client.request({
            type: wire.CMD_WRITE_ZEROES,
            handle: handle(),
            offset: 0,
            length: 4096,
          });
          assert.equal(replyErrno(slowZero), 0);
        },
      );

      test(
        `${mode}: BLOCK_STATUS without a negotiated context is EINVAL`,
        testTimeout,
        async () => {
          const client = await attach('bs', mode);
          assertError(
            await client.request({
              type: wire.CMD_BLOCK_STATUS,
              handle: handle(),
              offset: 0,
              length: 4096,
            }),
            wire.NBD_EINVAL,
            mode,
          );
          await assertInStep(client, mode === 'simple' ? 900 * 1024 : 901 * 1024);
        },
      );

      test(
        `${mode}: unknown command, unknown flags and DF are checked, the connection continues`,
        testTimeout,
        async () => {
          const client = await attach('disk', mode);
          const offset = mode === 'simple' ? 700 * 1024 : 710 * 1024;
          assertError(
            await client.request({ type: 99, handle: handle(), offset: 0, length: 512 }),
            wire.NBD_EINVAL,
            mode,
          );
          assertError(
            await client.request({
              type: wire.CMD_READ,
              flags: 0x8000,
              handle: handle(),
              offset: 0,
              length: 512,
            }),
            wire.NBD_EINVAL,
            mode,
          );
          assertError(
            await client.request({
              type: wire.CMD_READ,
              flags: wire.CMD_FLAG_REQ_ONE,
              handle: handle(),
              offset: 0,
              length: 512,
            }),
            wire.NBD_EINVAL,
            mode,
          );
          // A rejected WRITE's payload must still be consumed.
          const rejectedWrite = await client.request({
            type: wire.CMD_WRITE,
            flags: wire.CMD_FLAG_NO_HOLE,
            handle: handle(),
            offset,
            length: 512,
            payload: Buffer.alloc(512, 0xff),
          });
          assertError(rejectedWrite, wire.NBD_EINVAL, mode);
          const unchanged = await client.request({
            type: wire.CMD_READ,
            handle: handle(),
            offset,
            length: 512,
          });
          assert.deepEqual(
            replyData(unchanged),
            Buffer.alloc(512),
            'rejected write changed nothing',
          );
          const df = await client.request({
            type: wire.CMD_READ,
            flags: wire.CMD_FLAG_DF,
            handle: handle(),
            offset: 0,
            length: 512,
          });
          if (mode === 'simple') assertError(df, wire.NBD_EINVAL, mode);
          else assert.equal(replyData(df).length, 512);
          await assertInStep(client, offset + 4096);
        },
      );

      test(
        `${mode}: zero length, past the end and 2^53 offsets are refused without harm`,
        testTimeout,
        async () => {
          const client = await attach('disk', mode);
          const offset = mode === 'simple' ? 720 * 1024 : 730 * 1024;
          assertError(
            await client.request({ type: wire.CMD_READ, handle: handle(), offset: 0, length: 0 }),
            wire.NBD_EINVAL,
            mode,
          );
          assertError(
            await client.request({
              type: wire.CMD_READ,
              handle: handle(),
              offset: sizeBytes - 512,
              length: 1024,
            }),
            wire.NBD_EINVAL,
            mode,
          );
          assertError(
            await client.request({
              type: wire.CMD_READ,
              handle: handle(),
              offset: sizeBytes,
              length: 1,
            }),
            wire.NBD_EINVAL,
            mode,
          );
          // Past the end: ENOSPC, and the payload is consumed (the next request is parsed right).
          const pastEnd = await client.request({
            type: wire.CMD_WRITE,
            handle: handle(),
            offset: sizeBytes - 512,
            length: 4096,
            payload: patternBuffer(4096, 1),
          });
          assertError(pastEnd, wire.NBD_ENOSPC, mode);
          await assertInStep(client, offset);
          for (const hugeOffset of [2 ** 53, 2 ** 63, 2 ** 64 - 4096]) {
            const read = await client.request({
              type: wire.CMD_READ,
              handle: handle(),
              offset: hugeOffset,
              length: 512,
            });
            assert.notEqual(replyErrno(read), 0, `read at ${hugeOffset}`);
            const write = await client.request({
              type: wire.CMD_WRITE,
              handle: handle(),
              offset: hugeOffset,
              length: 512,
              payload: Buffer.alloc(512, 1),
            });
            assert.notEqual(replyErrno(write), 0, `write at ${hugeOffset}`);
            const trim = await client.request({
              type: wire.CMD_TRIM,
              handle: handle(),
              offset: hugeOffset,
              length: 512,
            });
            assert.notEqual(replyErrno(trim), 0, `trim at ${hugeOffset}`);
          }
          await assertInStep(client, offset + 512);
        },
      );

      test(
        `${mode}: payload over the maximum is EOVERFLOW; a write's payload is skipped`,
        testTimeout,
        async () => {
          const client = await attach('disk', mode);
          const offset = mode === 'simple' ? 0 : 128 * 1024;
          assertError(
            await client.request({
              type: wire.CMD_READ,
              handle: handle(),
              offset,
              length: maximumPayloadBytes + 1,
            }),
            wire.NBD_EOVERFLOW,
            mode,
          );
          const exactly = await client.request({
            type: wire.CMD_READ,
            handle: handle(),
            offset,
            length: maximumPayloadBytes,
          });
          assert.equal(replyData(exactly).length, maximumPayloadBytes);
          const overWrite = await client.request({
            type: wire.CMD_WRITE,
            handle: handle(),
            offset,
            length: 2 * maximumPayloadBytes,
            payload: Buffer.alloc(2 * maximumPayloadBytes, 0xab),
          });
          assertError(overWrite, wire.NBD_EOVERFLOW, mode);
          const unchanged = await client.request({
            type: wire.CMD_READ,
            handle: handle(),
            offset: offset + maximumPayloadBytes,
            length: 512,
          });
          assert.ok(
            !replyData(unchanged).equals(Buffer.alloc(512, 0xab)),
            'skipped payload was not written',
          );
          await assertInStep(client, 740 * 1024 + (mode === 'simple' ? 0 : 4096));
        },
      );
    }

    test(
      'a write far over maximumSkippedPayloadBytes ends the connection',
      testTimeout,
      async () => {
        const client = await attach('disk', 'simple');
        client.sendRequest(
          {
            type: wire.CMD_WRITE,
            handle: handle(),
            offset: 0,
            length: maximumSkippedPayloadBytes + 1,
          },
          false,
        );
        assert.equal((await client.waitForClose()).length, 0);
      },
    );

    test('wrong request magic ends the connection', testTimeout, async () => {
      const client = await attach('disk', 'simple');
      const request = encodeRequest({
        type: wire.CMD_READ,
        handle: handle(),
        offset: 0,
        length: 512,
      });
      request.writeUInt32BE(0x25609514, 0);
      client.send(request);
      assert.equal((await client.waitForClose()).length, 0);
    });

    for (const mode of modes) {
      test(`${mode}: BLOCK_STATUS with and without REQ_ONE`, testTimeout, async () => {
        const client = await attach('bs', mode, mode === 'structured');
        if (mode === 'simple') {
          // BLOCK_STATUS needs structured replies, hence a context: refused here.
          assertError(
            await client.request({
              type: wire.CMD_BLOCK_STATUS,
              handle: handle(),
              offset: 0,
              length: 4096,
            }),
            wire.NBD_EINVAL,
            mode,
          );
          return;
        }
        const region = 512 * 1024;
        const write = await client.request({
          type: wire.CMD_WRITE,
          handle: handle(),
          offset: region,
          length: 64 * 1024,
          payload: patternBuffer(64 * 1024, 5),
        });
        assert.equal(replyErrno(write), 0);
        const length = 256 * 1024;
        for (const flags of [0, wire.CMD_FLAG_REQ_ONE]) {
          const reply = await client.request({
            type: wire.CMD_BLOCK_STATUS,
            flags,
            handle: handle(),
            offset: region,
            length,
          });
          assert.ok(reply.structured);
          assert.equal(reply.type, wire.REPLY_TYPE_BLOCK_STATUS);
          assert.equal(reply.flags & wire.REPLY_FLAG_DONE, wire.REPLY_FLAG_DONE);
          assert.ok(reply.chunk.kind === 'block-status');
          assert.notEqual(reply.chunk.contextId, 0);
          const descriptors = reply.chunk.descriptors;
          assert.ok(descriptors.length >= 1);
          const total = descriptors.reduce((sum, descriptor) => sum + descriptor.length, 0);
          assert.ok(total <= length, `descriptors cover ${total} > ${length}`);
          for (const descriptor of descriptors)
            assert.ok(descriptor.length > 0, 'no zero-length descriptor');
          const first = descriptors[0];
          assert.ok(first !== undefined);
          assert.equal(first.flags & wire.STATE_HOLE, 0, 'written data is not a hole');
          if (flags === wire.CMD_FLAG_REQ_ONE) {
            assert.equal(descriptors.length, 1);
          } else {
            assert.equal(total, length, 'full answer covers the request');
            assert.equal(first.length, 64 * 1024);
            assert.deepEqual(descriptors[1], {
              length: length - 64 * 1024,
              flags: wire.STATE_HOLE | wire.STATE_ZERO,
            });
          }
        }
        // Past the end of the export.
        assertError(
          await client.request({
            type: wire.CMD_BLOCK_STATUS,
            handle: handle(),
            offset: sizeBytes - 512,
            length: 4096,
          }),
          wire.NBD_EINVAL,
          mode,
        );
      });

      test(
        `${mode}: read-only export refuses write, trim and zero with EPERM, reads work`,
        testTimeout,
        async () => {
          const client = await attach('ro', mode);
          const write = await client.request({
            type: wire.CMD_WRITE,
            handle: handle(),
            offset: 0,
            length: 4096,
            payload: patternBuffer(4096, 2),
          });
          assertError(write, wire.NBD_EPERM, mode);
          assertError(
            await client.request({
              type: wire.CMD_TRIM,
              handle: handle(),
              offset: 0,
              length: 4096,
            }),
            wire.NBD_EPERM,
            mode,
          );
          assertError(
            await client.request({
              type: wire.CMD_WRITE_ZEROES,
              handle: handle(),
              offset: 0,
              length: 4096,
            }),
            wire.NBD_EPERM,
            mode,
          );
          const read = await client.request({
            type: wire.CMD_READ,
            handle: handle(),
            offset: 0,
            length: 4096,
          });
          assert.deepEqual(replyData(read), Buffer.alloc(4096));
          const flush = await client.request({
            type: wire.CMD_FLUSH,
            handle: handle(),
            offset: 0,
            length: 0,
          });
          assert.equal(replyErrno(flush), 0);
        },
      );

      test(
        `${mode}: a device read error is EIO and the connection continues`,
        testTimeout,
        async () => {
          const client = await attach('faulty', mode);
          const reply = await client.request({
            type: wire.CMD_READ,
            handle: handle(),
            offset: 0,
            length: 512,
          });
          assertError(reply, wire.NBD_EIO, mode);
          if (reply.structured) {
            assert.ok(reply.chunk.kind === 'error');
            assert.ok(reply.chunk.message.length > 0, 'error chunk carries a message');
          }
          const fine = await client.request({
            type: wire.CMD_READ,
            handle: handle(),
            offset: failingReadBytes,
            length: 512,
          });
          assert.deepEqual(replyData(fine), Buffer.alloc(512));
          await assertInStep(client, mode === 'simple' ? 8192 : 16384);
        },
      );
    }

    test(
      'clients that vanish mid-header or mid-payload do not disturb other connections',
      testTimeout,
      async () => {
        const halfHeader = await attach('disk', 'simple');
        halfHeader.send(
          encodeRequest({ type: wire.CMD_READ, handle: handle(), offset: 0, length: 512 }).subarray(
            0,
            13,
          ),
        );
        const halfPayload = await attach('disk', 'structured');
        halfPayload.send(
          encodeRequest({
            type: wire.CMD_WRITE,
            handle: handle(),
            offset: 0,
            length: 8192,
            payload: Buffer.alloc(8192, 7),
          }).subarray(0, 28 + 3000),
        );
        const survivor = await attach('disk', 'simple');
        await delay(50);
        halfHeader.destroy();
        halfPayload.destroy();
        await assertInStep(survivor, 800 * 1024);
        await waitUntil(
          () => fixture.server.connectionCount === 1,
          3000,
          'server forgets vanished clients',
        );
        await assertInStep(survivor, 801 * 1024);
        const untouched = await survivor.request({
          type: wire.CMD_READ,
          handle: handle(),
          offset: 0,
          length: 8192,
        });
        assert.ok(
          !replyData(untouched).equals(Buffer.alloc(8192, 7)),
          'half a payload is never written',
        );
      },
    );

    test(
      'NBD_CMD_DISC with requests in flight: their replies arrive, then the server closes',
      testTimeout,
      async () => {
        const client = await attach('slow', 'simple');
        const written = patternBuffer(4096, 11);
        const write = await client.request({
          type: wire.CMD_WRITE,
          handle: handle(),
          offset: 4096,
          length: 4096,
          payload: written,
        });
        assert.equal(replyErrno(write), 0);
        const stall = slow.stall({ match: { kinds: ['read'] } });
        try {
          const handles = [handle(), handle(), handle()];
          const batch = handles.map((requestHandle) =>
            client.prepareRequest({
              type: wire.CMD_READ,
              handle: requestHandle,
              offset: 4096,
              length: 4096,
            }),
          );
          batch.push(
            encodeRequest({ type: wire.CMD_DISC, handle: handle(), offset: 0, length: 0 }),
          );
          client.send(Buffer.concat(batch));
          await withTimeout(stall.waitForStalled(3), 3000, 'reads reach the device');
          await client.expectQuiet(100);
          stall.release();
          const replied = new Set<bigint>();
          for (let index = 0; index < handles.length; index++) {
            const reply = await client.readReply();
            assert.deepEqual(replyData(reply), written);
            replied.add(reply.handle);
          }
          assert.deepEqual([...replied].sort(), [...handles].sort());
          assert.equal((await client.waitForClose()).length, 0);
        } finally {
          stall.release();
        }
      },
    );
  });

  describe(`NBD transmission flow control ('disk' on ${diskKind})`, () => {
    let fixture: TestServer;
    let disk: Awaited<ReturnType<typeof openDisk>>;
    const pool = new ClientPool(() => fixture.port);

    before(async () => {
      disk = await openDisk(diskKind);
      fixture = await startServer(
        [{ name: 'disk', device: disk.device }],
        { maximumRequestsInFlight: 4, maximumBytesInFlight: 64 * 1024 },
        { transmissionThread: alwaysThread },
      );
    });
    afterEach(() => pool.closeAll());
    after(async () => {
      pool.closeAll();
      await fixture.close();
      await disk.remove();
    });

    test(
      'more requests than maximumRequestsInFlight in one write are all answered',
      testTimeout,
      async () => {
        const client = await pool.connect();
        await client.attach('disk');
        const data = patternBuffer(sizeBytes, 21);
        const batch: Buffer[] = [];
        const count = 200;
        const blockBytes = 4096;
        for (let index = 0; index < count; index++) {
          const offset = (index * blockBytes) % sizeBytes;
          batch.push(
            client.prepareRequest({
              type: wire.CMD_WRITE,
              handle: BigInt(index + 1),
              offset,
              length: blockBytes,
              payload: data.subarray(offset, offset + blockBytes),
            }),
          );
        }
        client.send(Buffer.concat(batch));
        for (let index = 0; index < count; index++)
          assert.equal(replyErrno(await client.readReply()), 0);
        const read = await client.request({
          type: wire.CMD_READ,
          handle: 9999n,
          offset: 0,
          length: 65536,
        });
        assert.deepEqual(replyData(read), data.subarray(0, 65536));
      },
    );

    test(
      'a burst of requests the connection runs, more than may wait for it, are all answered',
      testTimeout,
      async () => {
        const client = await pool.connect();
        await client.attach('disk');
        // The WRITE starts the thread on a file; each FLUSH after it goes to the connection,
        // 200 of them against a queue of 4 (maximumRequestsInFlight).
        const batch = [
          client.prepareRequest({
            type: wire.CMD_WRITE,
            handle: 1n,
            offset: 0,
            length: 4096,
            payload: patternBuffer(4096, 22),
          }),
        ];
        const count = 200;
        for (let index = 0; index < count; index++) {
          batch.push(
            client.prepareRequest({
              type: wire.CMD_FLUSH,
              handle: BigInt(index + 2),
              offset: 0,
              length: 0,
            }),
          );
        }
        client.send(Buffer.concat(batch));
        for (let index = 0; index <= count; index++) {
          assert.equal(replyErrno(await client.readReply()), 0);
        }
      },
    );

    test(
      'a client that does not read its replies is paused, then served when it reads',
      testTimeout,
      async () => {
        const client = await pool.connect();
        await client.attach('disk', { structured: true });
        client.socket.pause();
        const count = 400;
        const length = 32 * 1024;
        const batch: Buffer[] = [];
        for (let index = 0; index < count; index++) {
          batch.push(
            client.prepareRequest({
              type: wire.CMD_READ,
              handle: BigInt(index + 1),
              offset: (index * length) % sizeBytes,
              length,
            }),
          );
        }
        client.send(Buffer.concat(batch));
        await delay(300);
        client.socket.resume();
        const seen = new Set<bigint>();
        for (let index = 0; index < count; index++) {
          const reply = await client.readReply(5000);
          assert.equal(replyData(reply).length, length);
          seen.add(reply.handle);
        }
        assert.equal(seen.size, count);
      },
    );
  });
}
