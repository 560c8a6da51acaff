/**
 * The host slot format (docs/leases.md, "Host slot"): round trips on 512 B and 4 KiB blocks,
 * free slots, and every way a slot can be corrupt (never free).
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { crc32c } from '../../src/crc32c.js';
import { hostSlotBytes } from '../../src/heartbeat-store/layout.js';
import {
  type HostSlotRecord,
  decodeHostSlot,
  encodeHostSlot,
  payloadBytesMax,
  payloadOffset,
  sameLeaseRecord,
} from '../../src/heartbeat-store/slot-format.js';

const record: HostSlotRecord = {
  hostId: 7,
  left: false,
  generation: 3,
  renewalCounter: 12_345,
  renewedWallMs: 1_767_225_600_000,
  hostName: 'hv-07.example',
  address: '10.0.0.7:7443',
  joinNonce: 0xabcdef012345,
  payload: Buffer.from('{"vms":["a","b"]}'),
  moveAck: { epoch: 41, phase: 'ready' },
};

/** Rewrites the lease CRC after a test changed a field, so only that field is wrong. */
function reseal(slot: Buffer, blockSize: number): void {
  const lease = slot.subarray(0, payloadOffset(blockSize));
  lease.writeUInt32LE(0, 12);
  lease.writeUInt32LE(crc32c(lease), 12);
}

function corruptReason(slot: Buffer, blockSize: number, hostId = record.hostId): string {
  const decoded = decodeHostSlot(slot, hostId, blockSize);
  assert.equal(decoded.kind, 'corrupt');
  return decoded.kind === 'corrupt' ? decoded.reason : '';
}

for (const blockSize of [512, 4096]) {
  describe(`host slot format, ${blockSize} B blocks`, () => {
    it('round trips every field, at the documented offsets', () => {
      const slot = encodeHostSlot(record, blockSize);
      assert.equal(slot.length, hostSlotBytes);
      assert.equal(slot.subarray(0, 8).toString('ascii'), 'TNDMHOST');
      assert.equal(slot.readUInt32LE(8), 1);
      assert.equal(slot.readUInt32LE(16), 7);
      assert.equal(slot.readBigUInt64LE(24), 3n);
      assert.equal(slot.readBigUInt64LE(32), 12_345n);
      assert.equal(slot.readBigUInt64LE(40), 1_767_225_600_000n);
      assert.equal(slot.readUInt32LE(48), record.payload.length);
      assert.equal(slot.readUInt32LE(52), crc32c(record.payload));
      assert.equal(slot.toString('utf8', 56, 56 + record.hostName.length), record.hostName);
      assert.equal(slot.toString('utf8', 120, 120 + record.address.length), record.address);
      assert.equal(slot.readBigUInt64LE(184), BigInt(record.joinNonce));
      assert.equal(slot.readBigUInt64LE(192), 41n);
      assert.equal(slot.readUInt32LE(200), 1);
      const at = payloadOffset(blockSize);
      assert.equal(at, blockSize === 512 ? 512 : 3072);
      assert.ok(slot.subarray(at, at + record.payload.length).equals(record.payload));
      const decoded = decodeHostSlot(slot, 7, blockSize);
      assert.equal(decoded.kind, 'held');
      if (decoded.kind !== 'held') return;
      assert.deepEqual(
        { ...decoded, payload: decoded.payload?.toString(), leaseRecord: undefined },
        {
          kind: 'held',
          hostId: 7,
          left: false,
          generation: 3,
          joinNonce: record.joinNonce,
          renewalCounter: 12_345,
          renewedWallMs: 1_767_225_600_000,
          hostName: record.hostName,
          address: record.address,
          payload: record.payload.toString(),
          payloadSizeBytes: record.payload.length,
          leaseRecord: undefined,
          moveAck: { epoch: 41, phase: 'ready' },
        },
      );
    });

    it('round trips the left flag, a full payload, and the largest safe integers', () => {
      const big: HostSlotRecord = {
        ...record,
        left: true,
        generation: Number.MAX_SAFE_INTEGER,
        renewalCounter: Number.MAX_SAFE_INTEGER,
        payload: Buffer.alloc(payloadBytesMax, 0xab),
        hostName: 'h'.repeat(64),
        address: 'ä'.repeat(32),
      };
      const decoded = decodeHostSlot(encodeHostSlot(big, blockSize), 7, blockSize);
      assert.ok(decoded.kind === 'held' && decoded.left);
      assert.ok(decoded.kind === 'held' && decoded.generation === Number.MAX_SAFE_INTEGER);
      assert.ok(decoded.kind === 'held' && decoded.payload?.equals(big.payload));
      assert.ok(decoded.kind === 'held' && decoded.address === big.address);
    });

    it('refuses to encode what the format cannot hold', () => {
      assert.throws(() =>
        encodeHostSlot({ ...record, payload: Buffer.alloc(payloadBytesMax + 1) }, blockSize),
      );
      assert.throws(() => encodeHostSlot({ ...record, hostName: 'x'.repeat(65) }, blockSize));
      assert.throws(() => encodeHostSlot({ ...record, generation: 2 ** 53 }, blockSize));
      assert.throws(() => encodeHostSlot({ ...record, generation: 0 }, blockSize));
    });

    it('decodes an all-zero slot as free', () => {
      assert.deepEqual(decodeHostSlot(Buffer.alloc(hostSlotBytes), 1, blockSize), {
        kind: 'free',
      });
    });

    it('decodes a bad magic, version, CRC, host id, flags or size as corrupt, never free', () => {
      const cases: [string, (slot: Buffer) => void, RegExp][] = [
        ['magic', (slot) => slot.write('TNDMHOSX', 0, 'ascii'), /magic/],
        ['version', (slot) => slot.writeUInt32LE(2, 8), /version/],
        ['crc', (slot) => slot.writeUInt8(slot.readUInt8(60) ^ 1, 60), /CRC/],
        ['one stray byte', (slot) => slot.writeUInt8(1, 300), /CRC/],
      ];
      for (const [what, damage, reason] of cases) {
        const slot = encodeHostSlot(record, blockSize);
        damage(slot);
        assert.match(corruptReason(slot, blockSize), reason, what);
      }
      const resealed: [string, (slot: Buffer) => void, RegExp][] = [
        ['flags', (slot) => slot.writeUInt32LE(4, 20), /flags/],
        ['generation', (slot) => slot.writeBigUInt64LE(2n ** 60n, 24), /range/],
        ['payload size', (slot) => slot.writeUInt32LE(payloadBytesMax + 1, 48), /payload/],
        ['move epoch', (slot) => slot.writeBigUInt64LE(2n ** 60n, 192), /range/],
        ['move phase', (slot) => slot.writeUInt32LE(3, 200), /move phase/],
      ];
      for (const [what, damage, reason] of resealed) {
        const slot = encodeHostSlot(record, blockSize);
        damage(slot);
        reseal(slot, blockSize);
        assert.match(corruptReason(slot, blockSize), reason, what);
      }
      // A valid record in the wrong place (e.g. a misdirected write) is not ours to trust.
      assert.match(corruptReason(encodeHostSlot(record, blockSize), blockSize, 8), /host id/);
      // Only the lease area zero, nothing else: still a record with a broken CRC.
      const onlyMagic = Buffer.alloc(hostSlotBytes);
      onlyMagic.write('TNDMHOST', 0, 'ascii');
      assert.equal(decodeHostSlot(onlyMagic, 7, blockSize).kind, 'corrupt');
    });

    it('reads a slot written before the move fields existed as no move', () => {
      const slot = encodeHostSlot({ ...record, moveAck: undefined }, blockSize);
      assert.equal(slot.readBigUInt64LE(192), 0n);
      assert.equal(slot.readUInt32LE(200), 0);
      const decoded = decodeHostSlot(slot, 7, blockSize);
      assert.deepEqual(decoded.kind === 'held' ? decoded.moveAck : undefined, {
        epoch: 0,
        phase: 'none',
      });
    });

    it('keeps the lease fields when only the payload is damaged', () => {
      const slot = encodeHostSlot(record, blockSize);
      const at = payloadOffset(blockSize);
      slot.writeUInt8(slot.readUInt8(at) ^ 0xff, at);
      const decoded = decodeHostSlot(slot, 7, blockSize);
      assert.ok(decoded.kind === 'held', 'lease fields survive');
      assert.equal(decoded.kind === 'held' ? decoded.payload : 'x', undefined);
      assert.equal(decoded.kind === 'held' ? decoded.payloadSizeBytes : 0, record.payload.length);
    });

    it('tells changed records apart, and never calls a corrupt slot unchanged', () => {
      const a = decodeHostSlot(encodeHostSlot(record, blockSize), 7, blockSize);
      const same = decodeHostSlot(encodeHostSlot(record, blockSize), 7, blockSize);
      const next = decodeHostSlot(
        encodeHostSlot({ ...record, renewalCounter: record.renewalCounter + 1 }, blockSize),
        7,
        blockSize,
      );
      assert.ok(sameLeaseRecord(a, same));
      assert.ok(!sameLeaseRecord(a, next));
      const bad = { kind: 'corrupt', reason: 'test' } as const;
      assert.ok(!sameLeaseRecord(bad, bad));
      assert.ok(sameLeaseRecord({ kind: 'free' }, { kind: 'free' }));
    });
  });
}
