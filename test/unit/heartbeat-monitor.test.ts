/**
 * HostMonitor on its own: the exact bounds of the failed verdict, failed reads and corrupt slots
 * counting as changes, isolation, and when an owner instance may be called dead.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { HostMonitor } from '../../src/heartbeat-store/host-monitor.js';
import {
  type DecodedSlot,
  decodeHostSlot,
  encodeHostSlot,
} from '../../src/heartbeat-store/slot-format.js';
import { deriveTimings } from '../../src/heartbeat-store/timings.js';

const timings = deriveTimings(1_000);
const { hostDeadMs, isolationMs } = timings;

function slot(counter: number, options: { generation?: number; left?: boolean } = {}) {
  const record = {
    hostId: 1,
    left: options.left ?? false,
    generation: options.generation ?? 1,
    renewalCounter: counter,
    renewedWallMs: 0,
    hostName: 'a',
    address: 'a:1',
    joinNonce: 42,
    payload: Buffer.alloc(0),
  };
  return decodeHostSlot(encodeHostSlot(record, 512), 1, 512);
}

function see(monitor: HostMonitor, value: DecodedSlot, startedMs: number, completedMs = startedMs) {
  monitor.recordObservation({ hostId: 1, slot: value, startedMs, completedMs });
}

function stateOf(monitor: HostMonitor, nowMs: number) {
  return monitor.hosts(nowMs).find((host) => host.hostId === 1)?.state;
}

describe('HostMonitor', () => {
  it('calls a host failed only on a read started hostDeadMs after the change was seen', () => {
    const monitor = new HostMonitor(timings);
    see(monitor, slot(1), 0, 10);
    see(monitor, slot(2), 100, 130); // changed: seen at 130 (completion of the read)
    see(monitor, slot(2), 130 + hostDeadMs - 1, 130 + hostDeadMs + 50);
    assert.equal(stateOf(monitor, 130 + hostDeadMs + 50), 'live');
    assert.equal(monitor.ownerLiveness({ hostId: 1, generation: 1 }, 0), 'alive');
    see(monitor, slot(2), 130 + hostDeadMs);
    assert.equal(stateOf(monitor, 130 + hostDeadMs), 'failed');
    assert.equal(monitor.ownerLiveness({ hostId: 1, generation: 1 }, 0), 'dead');
    assert.equal(monitor.ownerLiveness({ hostId: 1, generation: 2 }, 0), 'alive');
  });

  it('counts a failed read and a corrupt slot as changes', () => {
    const monitor = new HostMonitor(timings);
    see(monitor, slot(1), 0);
    monitor.recordReadFailure({
      firstHostId: 1,
      count: 1,
      startedMs: 500,
      completedMs: 900,
      error: new Error('EIO'),
    });
    see(monitor, slot(1), hostDeadMs + 100);
    assert.equal(stateOf(monitor, hostDeadMs + 100), 'live');
    see(monitor, slot(1), 900 + hostDeadMs);
    assert.equal(stateOf(monitor, 900 + hostDeadMs), 'failed');
    const corrupt: DecodedSlot = { kind: 'corrupt', reason: 'bad CRC' };
    for (let atMs = 10_000; atMs < 10_000 + 3 * hostDeadMs; atMs += 250)
      see(monitor, corrupt, atMs);
    assert.equal(stateOf(monitor, 20_000), 'live');
    // The instance seen failed before stays dead: it fenced itself and never comes back.
    assert.equal(monitor.ownerLiveness({ hostId: 1, generation: 1 }, 20_000), 'dead');
  });

  it('knows left, newer generations, and never watched hosts', () => {
    const monitor = new HostMonitor(timings);
    assert.equal(monitor.ownerLiveness({ hostId: 1, generation: 1 }, 0), 'alive');
    see(monitor, slot(5, { left: true }), 0);
    assert.equal(stateOf(monitor, 0), 'left');
    assert.equal(monitor.ownerLiveness({ hostId: 1, generation: 1 }, 0), 'dead');
    see(monitor, slot(1, { generation: 2 }), 10);
    assert.equal(stateOf(monitor, 10), 'live');
    assert.equal(monitor.ownerLiveness({ hostId: 1, generation: 1 }, 10), 'dead');
    assert.equal(monitor.ownerLiveness({ hostId: 1, generation: 2 }, 10), 'alive');
  });

  it('takes a free slot as proof of death only from a fresh read', () => {
    const monitor = new HostMonitor(timings);
    see(monitor, { kind: 'free' }, 0);
    const owner = { hostId: 1, generation: 1 };
    assert.equal(monitor.ownerLiveness(owner, timings.acquireSettleMs / 2), 'dead');
    assert.equal(monitor.ownerLiveness(owner, timings.acquireSettleMs / 2 + 1), 'alive');
    assert.deepEqual(monitor.hosts(0), []);
  });

  it('calls a live host isolated after isolationMs without a probe answer', () => {
    const monitor = new HostMonitor(timings);
    const instance = { hostId: 1, generation: 1 };
    see(monitor, slot(1), 0);
    monitor.recordProbe(instance, 0, 5, false);
    see(monitor, slot(2), isolationMs);
    assert.equal(stateOf(monitor, isolationMs - 1), 'live');
    assert.equal(stateOf(monitor, isolationMs), 'isolated');
    assert.equal(monitor.ownerLiveness(instance, isolationMs), 'alive');
    monitor.recordProbe(instance, isolationMs, isolationMs + 5, true);
    assert.equal(stateOf(monitor, isolationMs + 10), 'live');
    // A probe of an older instance tells nothing about the current one.
    monitor.recordProbe({ hostId: 1, generation: 7 }, 0, 0, false);
    assert.equal(stateOf(monitor, 2 * isolationMs), 'live');
  });
});
