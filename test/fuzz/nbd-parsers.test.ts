/**
 * Property tests for the NBD parsing code: the byte queue that splits a socket stream into
 * headers and payloads, and the option parsers. Regression: ByteQueue.contiguous() once lost
 * the read position of a partly read chunk when it merged chunks, so a request header that
 * spanned two socket chunks was parsed from the wrong bytes.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import fc from 'fast-check';
import { ByteQueue } from '../../src/nbd/byte-queue.js';
import { parseInfoRequest, parseMetaContextRequest } from '../../src/nbd/negotiation.js';

type QueueStep = { kind: 'take' | 'contiguous' | 'skip' | 'copy'; count: number };

test('ByteQueue returns the stream in order whatever the chunking and reads', () => {
  fc.assert(
    fc.property(
      fc.array(fc.uint8Array({ minLength: 0, maxLength: 64 }), { minLength: 1, maxLength: 20 }),
      fc.array(
        fc.record({
          kind: fc.constantFrom<QueueStep['kind']>('take', 'contiguous', 'skip', 'copy'),
          count: fc.integer({ min: 0, max: 80 }),
        }),
        { maxLength: 40 },
      ),
      (chunks, steps) => {
        const stream = Buffer.concat(chunks.map((chunk) => Buffer.from(chunk)));
        const queue = new ByteQueue();
        for (const chunk of chunks) queue.push(Buffer.from(chunk));
        let position = 0;
        for (const step of steps) {
          const count = Math.min(step.count, queue.length);
          assert.equal(queue.length, stream.length - position);
          if (step.kind === 'take') {
            assert.deepEqual(queue.take(count), stream.subarray(position, position + count));
            position += count;
          } else if (step.kind === 'contiguous' && count > 0) {
            const { buffer, offset } = queue.contiguous(count);
            assert.deepEqual(
              buffer.subarray(offset, offset + count),
              stream.subarray(position, position + count),
            );
          } else if (step.kind === 'skip') {
            assert.equal(queue.skip(count), count);
            position += count;
          } else if (step.kind === 'copy') {
            const target = Buffer.alloc(count + 3, 0xee);
            assert.equal(queue.copyInto(target, 3, count), count);
            assert.deepEqual(target.subarray(3), stream.subarray(position, position + count));
            position += count;
          }
        }
        assert.deepEqual(queue.take(queue.length), stream.subarray(position));
      },
    ),
    { numRuns: 2000 },
  );
});

test('option parsers never throw and never read past the option', () => {
  fc.assert(
    fc.property(fc.uint8Array({ maxLength: 200 }), (bytes) => {
      const data = Buffer.from(bytes);
      const info = parseInfoRequest(data);
      if (typeof info !== 'string') {
        assert.ok(Buffer.byteLength(info.name) <= data.length);
      }
      const meta = parseMetaContextRequest(data);
      if (typeof meta !== 'string') {
        const used = meta.queries.reduce((sum, query) => sum + 4 + Buffer.byteLength(query), 8);
        assert.ok(used + Buffer.byteLength(meta.exportName) <= data.length);
      }
    }),
    { numRuns: 3000 },
  );
});

test('well-formed GO data parses back to what was encoded', () => {
  fc.assert(
    fc.property(
      fc.string({ maxLength: 40 }),
      fc.array(fc.integer({ min: 0, max: 0xffff }), { maxLength: 8 }),
      (name, requests) => {
        const nameBytes = Buffer.from(name, 'utf8');
        const data = Buffer.alloc(4 + nameBytes.length + 2 + requests.length * 2);
        data.writeUInt32BE(nameBytes.length, 0);
        nameBytes.copy(data, 4);
        data.writeUInt16BE(requests.length, 4 + nameBytes.length);
        requests.forEach((request, index) =>
          data.writeUInt16BE(request, 4 + nameBytes.length + 2 + index * 2),
        );
        assert.deepEqual(parseInfoRequest(data), { name: nameBytes.toString('utf8'), requests });
      },
    ),
  );
});
