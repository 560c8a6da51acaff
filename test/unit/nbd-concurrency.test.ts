/**
 * Several connections with many requests in flight each, checked against a model of the disk.
 *
 * Each connection owns a region; in every round it pipelines 64 reads and writes on distinct
 * blocks of its region (so the result does not depend on the order the server runs them), and
 * the model is updated only from acknowledged writes. A final read of the whole export must
 * equal the model.
 */
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { createSeededRandom } from '../../src/disk/seeded-random.js';
import * as wire from '../../src/nbd/wire.js';
import {
  ClientPool,
  type RawNbdClient,
  type TestServer,
  replyData,
  replyErrno,
  startServer,
} from './helpers/raw-nbd.js';

const connectionCount = 4;
const requestsInFlight = 64;
const rounds = 4;
const blockBytes = 4096;
const blocksPerRegion = 96;
const regionBytes = blocksPerRegion * blockBytes;
const sizeBytes = connectionCount * regionBytes;

describe('NBD concurrency', () => {
  let fixture: TestServer;
  const pool = new ClientPool(() => fixture.port);

  before(async () => {
    fixture = await startServer([{ name: 'disk', device: new MemoryDevice({ sizeBytes }) }]);
  });
  after(async () => {
    pool.closeAll();
    await fixture.close();
  });

  test(
    `${connectionCount} connections × ${requestsInFlight} requests in flight match the model`,
    { timeout: 30_000 },
    async () => {
      const model = Buffer.alloc(sizeBytes);
      const random = createSeededRandom(20240601);
      const clients: RawNbdClient[] = [];
      for (let index = 0; index < connectionCount; index++) {
        const client = await pool.connect();
        await client.attach('disk', { structured: index % 2 === 1 });
        clients.push(client);
      }
      let handleCounter = 0;
      let writes = 0;
      let reads = 0;

      async function round(client: RawNbdClient, region: number): Promise<void> {
        const blocks = Array.from({ length: blocksPerRegion }, (_unused, index) => index);
        for (let index = blocks.length - 1; index > 0; index--) {
          const other = Math.floor(random() * (index + 1));
          [blocks[index], blocks[other]] = [blocks[other] ?? 0, blocks[index] ?? 0];
        }
        const expected = new Map<bigint, { offset: number; write: Buffer | undefined }>();
        const batch: Buffer[] = [];
        for (const block of blocks.slice(0, requestsInFlight)) {
          // Sub-block offsets and lengths exercise unaligned I/O.
          const start = Math.floor(random() * 512);
          const length = 1 + Math.floor(random() * (blockBytes - start - 1));
          const offset = region * regionBytes + block * blockBytes + start;
          handleCounter += 1;
          const requestHandle =
            (BigInt(Math.floor(random() * 0xffffffff)) << 32n) | BigInt(handleCounter);
          if (random() < 0.5) {
            const payload = Buffer.alloc(length);
            for (let byte = 0; byte < length; byte++) payload[byte] = Math.floor(random() * 256);
            expected.set(requestHandle, { offset, write: payload });
            batch.push(
              client.prepareRequest({
                type: wire.CMD_WRITE,
                handle: requestHandle,
                offset,
                length,
                payload,
              }),
            );
          } else {
            expected.set(requestHandle, { offset, write: undefined });
            batch.push(
              client.prepareRequest({ type: wire.CMD_READ, handle: requestHandle, offset, length }),
            );
          }
        }
        client.send(Buffer.concat(batch));
        const readChecks: Array<{ offset: number; data: Buffer }> = [];
        for (let index = 0; index < requestsInFlight; index++) {
          const reply = await client.readReply(10_000);
          const request = expected.get(reply.handle);
          assert.ok(request !== undefined, `unexpected or repeated handle ${reply.handle}`);
          expected.delete(reply.handle);
          if (request.write !== undefined) {
            assert.equal(replyErrno(reply), 0);
            request.write.copy(model, request.offset);
            writes += 1;
          } else {
            readChecks.push({ offset: request.offset, data: replyData(reply) });
          }
        }
        assert.equal(expected.size, 0);
        // Reads touched other blocks than this round's writes, so the model decides them.
        for (const check of readChecks) {
          assert.deepEqual(
            check.data,
            model.subarray(check.offset, check.offset + check.data.length),
            `read at ${check.offset}`,
          );
          reads += 1;
        }
      }

      for (let pass = 0; pass < rounds; pass++) {
        await Promise.all(clients.map((client, region) => round(client, region)));
      }
      assert.ok(writes > 0 && reads > 0);
      assert.equal(writes + reads, rounds * connectionCount * requestsInFlight);

      const checker = clients[0];
      assert.ok(checker !== undefined);
      for (let offset = 0; offset < sizeBytes; offset += 256 * 1024) {
        const length = Math.min(256 * 1024, sizeBytes - offset);
        const reply = await checker.request({
          type: wire.CMD_READ,
          handle: 0xffff_0000n + BigInt(offset),
          offset,
          length,
        });
        assert.ok(
          replyData(reply).equals(model.subarray(offset, offset + length)),
          `final contents at ${offset}`,
        );
      }
    },
  );
});
