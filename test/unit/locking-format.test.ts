/**
 * Lease records (leader, ballot, directory entry): round trips on 512 B and 4 KiB blocks, and
 * damaged records decode as corrupt (LEASE_IO for the lease code), never as free.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import {
  decodeBallot,
  decodeDirectoryEntry,
  decodeLeader,
  emptyBallot,
  encodeBallot,
  encodeDirectoryEntry,
  encodeLeader,
  type BallotRecord,
  type LeaderRecord,
} from '../../src/locking/lease-format.js';
import { nextMbal, requireRecord } from '../../src/locking/paxos-lease.js';
import { code } from './locking-harness.js';

const leader: LeaderRecord = {
  leaseVersion: 7,
  ownerHostId: 3,
  flags: 0,
  ownerGeneration: 12,
  takenWallMs: 1_767_225_600_000,
  name: 'vg0/lv:disk-1@a+b',
  value: Buffer.from('metadata seqno 42'),
};

const ballot: BallotRecord = {
  leaseVersion: 8,
  mbal: 19,
  bal: 19,
  inpHostId: 3,
  inpGeneration: 12,
  inpWallMs: 1_767_225_600_001,
  modeFlags: 1,
  sharedGeneration: 12,
  waitTicket: 8 * 4096 + 3,
  ticketGeneration: 12,
};

for (const blockBytes of [512, 4096]) {
  describe(`lease records on ${blockBytes} B blocks`, () => {
    it('round-trips a leader', () => {
      const decoded = decodeLeader(encodeLeader(leader, blockBytes));
      assert.equal(decoded.status, 'record');
      assert.deepEqual(decoded.status === 'record' ? decoded.record : undefined, leader);
    });

    it('round-trips a ballot block', () => {
      const decoded = decodeBallot(encodeBallot(ballot, blockBytes));
      assert.deepEqual(decoded, { status: 'record', record: ballot });
    });

    it('decodes an all-zero block as empty', () => {
      assert.equal(decodeLeader(Buffer.alloc(blockBytes)).status, 'empty');
      assert.deepEqual(decodeBallot(Buffer.alloc(blockBytes)), {
        status: 'empty',
        record: emptyBallot,
      });
    });

    it('decodes a flipped bit anywhere in the block as corrupt, never free', () => {
      for (const offset of [0, 13, 20, 60, 150, blockBytes - 1]) {
        const block = encodeLeader(leader, blockBytes);
        block[offset] = (block[offset] ?? 0) ^ 0x10;
        assert.equal(decodeLeader(block).status, 'corrupt', `leader byte ${offset}`);
        const ballotBlock = encodeBallot(ballot, blockBytes);
        ballotBlock[offset] = (ballotBlock[offset] ?? 0) ^ 0x10;
        assert.equal(decodeBallot(ballotBlock).status, 'corrupt', `ballot byte ${offset}`);
      }
    });
  });
}

describe('lease record checks', () => {
  it('rejects a ballot block where a leader is expected (wrong magic)', () => {
    const decoded = decodeLeader(encodeBallot(ballot, 512));
    assert.deepEqual(decoded, { status: 'corrupt', reason: 'wrong magic' });
  });

  it('turns a corrupt record into LEASE_IO', () => {
    const block = encodeLeader(leader, 512);
    block.fill(0xff, 200, 260);
    assert.throws(() => requireRecord(decodeLeader(block), 'leader'), code('LEASE_IO'));
    const garbage = Buffer.alloc(512, 0x5a);
    assert.throws(() => requireRecord(decodeBallot(garbage), 'ballot'), code('LEASE_IO'));
  });

  it('round-trips directory entries, empty and corrupt', () => {
    const entry = encodeDirectoryEntry('vg0');
    assert.equal(entry.length, 64);
    assert.deepEqual(decodeDirectoryEntry(entry), { status: 'record', record: 'vg0' });
    assert.equal(decodeDirectoryEntry(Buffer.alloc(64)).status, 'empty');
    entry[20] = 0x41;
    assert.equal(decodeDirectoryEntry(entry).status, 'corrupt');
    const longest = 'n'.repeat(48);
    assert.deepEqual(decodeDirectoryEntry(encodeDirectoryEntry(longest)), {
      status: 'record',
      record: longest,
    });
  });

  it('refuses to encode records out of range (programmer errors)', () => {
    assert.throws(() => encodeLeader({ ...leader, value: Buffer.alloc(65) }, 512));
    assert.throws(() => encodeLeader({ ...leader, leaseVersion: -1 }, 512));
    assert.throws(() => encodeDirectoryEntry('bad name'));
  });

  it('picks mbals of the form k × maxHosts + hostId above every one seen', () => {
    assert.equal(nextMbal(0, 8, 3), 3);
    assert.equal(nextMbal(3, 8, 3), 11);
    assert.equal(nextMbal(12, 8, 3), 19);
    assert.equal(nextMbal(15, 8, 8), 16);
    assert.equal(nextMbal(16, 8, 8), 24);
  });
});
