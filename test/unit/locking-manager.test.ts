/**
 * LockManager: several simulated hosts, one lockspace device, virtual time, a fake liveness
 * source. Exclusive and shared modes, waiting and hand-over, conversion, values, takeover,
 * corrupt blocks, the directory, names, and the resource-level API surface.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { resourceAreaOffset } from '../../src/heartbeat-store/layout.js';
import {
  decodeLeader,
  encodeDirectoryEntry,
  encodeLeader,
} from '../../src/locking/lease-format.js';
import type { BlockDevice } from '../../src/disk/block-device.js';
import { TandemError } from '../../src/errors.js';
import type { LockEvent } from '../../src/locking/types.js';
import { code, createCluster, recorder } from './locking-harness.js';

describe('LockManager exclusive mode', () => {
  it('acquires, is seen by others, and releases', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    const [h1, h2] = [cluster.host(1), cluster.host(2)];
    const events = recorder<LockEvent>();
    h1.manager.watch(events.listener);
    const info = await cluster.run(h1.manager.acquire('vg0', { mode: 'ex' }));
    assert.equal(info.mode, 'ex');
    assert.deepEqual(info.owner, { hostId: 1, generation: 1, hostName: 'host1' });
    assert.equal(info.version, 1);
    assert.equal(info.heldHere, 'ex');
    const seen = await cluster.run(h2.manager.inspect('vg0'));
    assert.equal(seen.mode, 'ex');
    assert.equal(seen.owner?.hostId, 1);
    assert.equal(seen.heldHere, undefined);
    assert.deepEqual(
      h1.manager.held().map((lock) => lock.name),
      ['vg0'],
    );
    await cluster.run(h1.manager.release('vg0'));
    const after = await cluster.run(h2.manager.inspect('vg0'));
    assert.equal(after.mode, 'free');
    assert.equal(after.version, 1);
    assert.deepEqual(h1.manager.held(), []);
    assert.deepEqual(
      events.calls.map((event) => event.kind),
      ['acquired', 'released'],
    );
  });

  it('fails a try-acquire with LOCK_HELD while another host holds it', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    await cluster.run(cluster.host(1).manager.acquire('vg0', { mode: 'ex' }));
    await assert.rejects(
      cluster.run(cluster.host(2).manager.acquire('vg0', { mode: 'ex' })),
      code('LOCK_HELD'),
    );
    await assert.rejects(
      cluster.run(cluster.host(2).manager.acquire('vg0', { mode: 'sh' })),
      code('LOCK_HELD'),
    );
    await assert.rejects(
      cluster.run(cluster.host(1).manager.acquire('vg0', { mode: 'ex' })),
      code('LOCK_HELD'),
    );
  });

  it('hands the lease to a waiting host soon after release', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    const { scheduler } = cluster;
    await cluster.run(cluster.host(1).manager.acquire('vg0', { mode: 'ex' }));
    const waiting = cluster.host(2).manager.acquire('vg0', { mode: 'ex', waitMs: 5_000 });
    await scheduler.runFor(200);
    await cluster.run(cluster.host(1).manager.release('vg0'));
    const releasedAtMs = scheduler.nowMs;
    const info = await cluster.run(waiting);
    assert.equal(info.owner?.hostId, 2);
    assert.equal(info.version, 2);
    assert.ok(
      scheduler.nowMs - releasedAtMs <= 20,
      `hand-over took ${scheduler.nowMs - releasedAtMs} ms`,
    );
  });

  it('fails with LOCK_TIMEOUT at the deadline, and leaves no wait ticket behind', async () => {
    const cluster = await createCluster({ hostCount: 3 });
    const { scheduler } = cluster;
    await cluster.run(cluster.host(1).manager.acquire('vg0', { mode: 'ex' }));
    const startMs = scheduler.nowMs;
    await assert.rejects(
      cluster.run(cluster.host(2).manager.acquire('vg0', { mode: 'ex', waitMs: 300 })),
      code('LOCK_TIMEOUT'),
    );
    assert.ok(scheduler.nowMs - startMs >= 300);
    await cluster.run(cluster.host(1).manager.release('vg0'));
    // Host 3 does not defer to host 2: its ticket was cleared when it stopped waiting.
    const info = await cluster.run(cluster.host(3).manager.acquire('vg0', { mode: 'ex' }));
    assert.equal(info.owner?.hostId, 3);
  });

  it('waits out a lockspace move that refuses its writes, unless it may not wait', async () => {
    // Host 1's writes are refused as a moving lockspace refuses them, for the first 600 ms.
    let movingUntilMs = 0;
    const cluster = await createCluster({
      hostCount: 2,
      wrap: (device, hostId, scheduler) => {
        if (hostId !== 1) return device;
        const moving = Object.create(device) as BlockDevice;
        moving.write = (buffer, offsetBytes, options) =>
          scheduler.nowMs < movingUntilMs
            ? Promise.reject(new TandemError('LOCKSPACE_MOVING', 'moving'))
            : device.write(buffer, offsetBytes, options);
        return moving;
      },
    });
    const h1 = cluster.host(1).manager;
    // Names are added to the directory before the move, so that only ballots meet it.
    await cluster.run(h1.acquire('vg0', { mode: 'ex' }));
    await cluster.run(h1.release('vg0'));
    movingUntilMs = cluster.scheduler.nowMs + 600;
    await assert.rejects(cluster.run(h1.acquire('vg0', { mode: 'ex' })), code('LOCKSPACE_MOVING'));
    const startedMs = cluster.scheduler.nowMs;
    const info = await cluster.run(h1.acquire('vg0', { mode: 'ex', waitMs: 5_000 }));
    assert.equal(info.heldHere, 'ex');
    assert.ok(cluster.scheduler.nowMs >= movingUntilMs, 'granted once the move ended');
    assert.ok(cluster.scheduler.nowMs - startedMs < 5_000, 'before the deadline');
    const seen = await cluster.run(cluster.host(2).manager.inspect('vg0'));
    assert.equal(seen.owner?.hostId, 1);
  });

  it('honours an AbortSignal while waiting', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    await cluster.run(cluster.host(1).manager.acquire('vg0', { mode: 'ex' }));
    const controller = new AbortController();
    const waiting = cluster.host(2).manager.acquire('vg0', {
      mode: 'ex',
      waitMs: 10_000,
      signal: controller.signal,
    });
    cluster.scheduler.after(50, () => controller.abort(new Error('caller gone')));
    await assert.rejects(cluster.run(waiting), /caller gone/);
    assert.ok(cluster.scheduler.nowMs < 100);
  });

  it('serves local waiters on one host in FIFO order', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    const h2 = cluster.host(2).manager;
    await cluster.run(cluster.host(1).manager.acquire('vg0', { mode: 'ex' }));
    const order: string[] = [];
    const first = h2.acquire('vg0', { mode: 'ex', waitMs: 5_000 }).then(() => order.push('first'));
    await cluster.scheduler.runFor(5);
    const second = h2
      .acquire('vg0', { mode: 'ex', waitMs: 5_000 })
      .then(() => order.push('second'));
    await cluster.scheduler.runFor(50);
    await cluster.run(cluster.host(1).manager.release('vg0'));
    await cluster.run(first);
    assert.deepEqual(order, ['first']);
    await cluster.run(h2.release('vg0'));
    await cluster.run(second);
    assert.deepEqual(order, ['first', 'second']);
  });
});

describe('LockManager shared mode and conversion', () => {
  it('lets three hosts share, blocks an exclusive acquire, then grants it', async () => {
    const cluster = await createCluster({ hostCount: 4 });
    for (const hostId of [1, 2, 3]) {
      const info = await cluster.run(cluster.host(hostId).manager.acquire('vg0', { mode: 'sh' }));
      assert.equal(info.mode, 'sh');
      assert.equal(info.heldHere, 'sh');
    }
    const seen = await cluster.run(cluster.host(4).manager.inspect('vg0'));
    assert.equal(seen.mode, 'sh');
    assert.deepEqual(
      seen.sharedOwners.map((owner) => owner.hostId),
      [1, 2, 3],
    );
    await assert.rejects(
      cluster.run(cluster.host(4).manager.acquire('vg0', { mode: 'ex' })),
      code('LOCK_HELD'),
    );
    const waiting = cluster.host(4).manager.acquire('vg0', { mode: 'ex', waitMs: 5_000 });
    for (const hostId of [1, 2, 3]) {
      await cluster.scheduler.runFor(30);
      await cluster.run(cluster.host(hostId).manager.release('vg0'));
    }
    const info = await cluster.run(waiting);
    assert.equal(info.mode, 'ex');
    assert.equal(info.owner?.hostId, 4);
  });

  it('converts sh→ex only when no other host shares, and ex→sh', async () => {
    const cluster = await createCluster({ hostCount: 3 });
    const [h1, h2, h3] = [cluster.host(1), cluster.host(2), cluster.host(3)];
    await cluster.run(h1.manager.acquire('vg0', { mode: 'sh' }));
    await cluster.run(h2.manager.acquire('vg0', { mode: 'sh' }));
    await assert.rejects(cluster.run(h1.manager.convert('vg0', 'ex')), code('LOCK_HELD'));
    assert.equal(h1.manager.held()[0]?.mode, 'sh');
    await cluster.run(h2.manager.release('vg0'));
    const converted = await cluster.run(h1.manager.convert('vg0', 'ex'));
    assert.equal(converted.mode, 'ex');
    assert.equal((await cluster.run(h3.manager.inspect('vg0'))).mode, 'ex');
    await assert.rejects(cluster.run(h2.manager.acquire('vg0', { mode: 'sh' })), code('LOCK_HELD'));
    const shared = await cluster.run(h1.manager.convert('vg0', 'sh'));
    assert.equal(shared.mode, 'sh');
    await cluster.run(h2.manager.acquire('vg0', { mode: 'sh' }));
    const seen = await cluster.run(h3.manager.inspect('vg0'));
    assert.deepEqual(
      seen.sharedOwners.map((owner) => owner.hostId),
      [1, 2],
    );
  });

  it('waits in convert until the other sharer leaves', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    const [h1, h2] = [cluster.host(1), cluster.host(2)];
    await cluster.run(h1.manager.acquire('vg0', { mode: 'sh' }));
    await cluster.run(h2.manager.acquire('vg0', { mode: 'sh' }));
    const converting = h1.manager.convert('vg0', 'ex', { waitMs: 2_000 });
    await cluster.scheduler.runFor(100);
    await cluster.run(h2.manager.release('vg0'));
    assert.equal((await cluster.run(converting)).mode, 'ex');
  });
});

describe('LockManager values', () => {
  it('writes the value with acquire, setValue and release; others read it', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    const [h1, h2] = [cluster.host(1), cluster.host(2)];
    const acquired = await cluster.run(
      h1.manager.acquire('vg0', { mode: 'ex', value: Buffer.from('seq 1') }),
    );
    assert.equal(acquired.value.toString(), 'seq 1');
    assert.equal((await cluster.run(h2.manager.inspect('vg0'))).value.toString(), 'seq 1');
    await cluster.run(h1.manager.setValue('vg0', Buffer.from('seq 2')));
    assert.equal((await cluster.run(h2.manager.inspect('vg0'))).value.toString(), 'seq 2');
    await cluster.run(h1.manager.release('vg0', { value: Buffer.from('seq 3') }));
    const taken = await cluster.run(h2.manager.acquire('vg0', { mode: 'ex' }));
    assert.equal(taken.value.toString(), 'seq 3');
  });

  it('rejects values that are too long, for sh, or for leases not held ex', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    const h1 = cluster.host(1).manager;
    await assert.rejects(
      h1.acquire('vg0', { mode: 'ex', value: Buffer.alloc(65) }),
      code('INVALID_ARGUMENT'),
    );
    await assert.rejects(
      h1.acquire('vg0', { mode: 'sh', value: Buffer.alloc(1) }),
      code('INVALID_ARGUMENT'),
    );
    await assert.rejects(h1.setValue('vg0', Buffer.alloc(1)), code('LOCK_NOT_HELD'));
    await cluster.run(h1.acquire('vg0', { mode: 'sh' }));
    await assert.rejects(h1.setValue('vg0', Buffer.alloc(1)), code('LOCK_NOT_HELD'));
    await assert.rejects(h1.release('other'), code('LOCK_NOT_HELD'));
  });
});

describe('LockManager takeover and damaged blocks', () => {
  it('takes over the lease of a dead owner, never of a live one', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    await cluster.run(cluster.host(1).manager.acquire('vg0', { mode: 'ex' }));
    await assert.rejects(
      cluster.run(cluster.host(2).manager.acquire('vg0', { mode: 'ex' })),
      code('LOCK_HELD'),
    );
    cluster.world.kill({ hostId: 1, generation: 1 });
    const info = await cluster.run(cluster.host(2).manager.acquire('vg0', { mode: 'ex' }));
    assert.equal(info.owner?.hostId, 2);
    assert.equal(info.version, 2);
  });

  it('ignores the shared flag of a dead sharer', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    await cluster.run(cluster.host(1).manager.acquire('vg0', { mode: 'sh' }));
    await assert.rejects(
      cluster.run(cluster.host(2).manager.acquire('vg0', { mode: 'ex' })),
      code('LOCK_HELD'),
    );
    cluster.world.kill({ hostId: 1, generation: 1 });
    assert.equal(
      (await cluster.run(cluster.host(2).manager.acquire('vg0', { mode: 'ex' }))).mode,
      'ex',
    );
  });

  it('fails with LEASE_IO on a corrupt ballot block or leader, never treating it as free', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    const h1 = cluster.host(1).manager;
    await cluster.run(h1.acquire('vg0', { mode: 'ex' }));
    await cluster.run(h1.release('vg0'));
    const areaOffset = resourceAreaOffset(cluster.layout, 1);
    const blockSize = cluster.layout.blockSize;
    const ballotOfHost3 = areaOffset + 3 * blockSize;
    await cluster.device.write(Buffer.alloc(blockSize, 0x77), ballotOfHost3);
    await assert.rejects(
      cluster.run(cluster.host(2).manager.acquire('vg0', { mode: 'ex' })),
      code('LEASE_IO'),
    );
    await assert.rejects(cluster.run(cluster.host(2).manager.inspect('vg0')), code('LEASE_IO'));
    await cluster.device.write(Buffer.alloc(blockSize), ballotOfHost3);
    const leader = Buffer.alloc(blockSize);
    await cluster.device.read(leader, areaOffset);
    leader[30] = (leader[30] ?? 0) ^ 1;
    await cluster.device.write(leader, areaOffset);
    await assert.rejects(
      cluster.run(cluster.host(2).manager.acquire('vg0', { mode: 'ex' })),
      code('LEASE_IO'),
    );
  });
});

describe('LockManager directory and names', () => {
  it('fails with LOCKSPACE_NO_RESOURCES when every area is named', async () => {
    const cluster = await createCluster({ hostCount: 2, maxResources: 2 });
    await cluster.run(cluster.host(1).manager.acquire('a', { mode: 'ex' }));
    await cluster.run(cluster.host(2).manager.acquire('b', { mode: 'sh' }));
    await assert.rejects(
      cluster.run(cluster.host(1).manager.acquire('c', { mode: 'ex' })),
      code('LOCKSPACE_NO_RESOURCES'),
    );
    const listed = await cluster.run(cluster.host(2).manager.list());
    assert.deepEqual(
      listed.map((info) => [info.name, info.mode, info.heldHere]),
      [
        ['a', 'ex', undefined],
        ['b', 'sh', 'sh'],
      ],
    );
    assert.equal(listed[0]?.owner?.hostName, 'host1');
  });

  it('gives a name added by one host the same area on every host', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    const [h1, h2] = [cluster.host(1).manager, cluster.host(2).manager];
    await cluster.run(
      Promise.all([h1.acquire('x', { mode: 'sh' }), h2.acquire('y', { mode: 'sh' })]),
    );
    await cluster.run(
      Promise.all([h1.acquire('y', { mode: 'sh' }), h2.acquire('x', { mode: 'sh' })]),
    );
    const listed = await cluster.run(h1.list());
    assert.deepEqual(listed.map((info) => [info.name, info.sharedOwners.length]).sort(), [
      ['x', 2],
      ['y', 2],
    ]);
  });

  it('rejects invalid names with INVALID_ARGUMENT and unknown ones with NOT_FOUND', async () => {
    const cluster = await createCluster({ hostCount: 1 });
    const manager = cluster.host(1).manager;
    for (const name of ['', 'has space', 'n'.repeat(49), 'é', 'a\u0000b']) {
      await assert.rejects(manager.acquire(name, { mode: 'ex' }), code('INVALID_ARGUMENT'), name);
      await assert.rejects(manager.inspect(name), code('INVALID_ARGUMENT'), name);
    }
    await assert.rejects(cluster.run(manager.inspect('never-used')), code('NOT_FOUND'));
    await assert.rejects(manager.acquire('vg0', { mode: 'xx' as 'ex' }), code('INVALID_ARGUMENT'));
  });

  it('re-reads the directory when the leader names another resource (stale cache)', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    const h1 = cluster.host(1).manager;
    await cluster.run(h1.acquire('a', { mode: 'ex' }));
    await cluster.run(h1.release('a'));
    // Behind host 1's back the directory now says: area 1 is 'b', area 2 is 'a'; the leader of
    // area 1 names 'b'. Host 1 still caches 'a' → area 1.
    const { directoryOffset, blockSize } = cluster.layout;
    const block = Buffer.alloc(blockSize);
    encodeDirectoryEntry('b').copy(block, 0);
    encodeDirectoryEntry('a').copy(block, 64);
    await cluster.device.write(block, directoryOffset);
    const leaderOffset = resourceAreaOffset(cluster.layout, 1);
    const leader = Buffer.alloc(blockSize);
    await cluster.device.read(leader, leaderOffset);
    const decoded = decodeLeader(leader);
    assert.equal(decoded.status, 'record');
    if (decoded.status !== 'record') return;
    await cluster.device.write(
      encodeLeader({ ...decoded.record, name: 'b' }, blockSize),
      leaderOffset,
    );
    const info = await cluster.run(h1.acquire('a', { mode: 'ex' }));
    assert.equal(info.version, 1, 'area 2 starts at version 0');
    assert.equal((await cluster.run(cluster.host(2).manager.inspect('b'))).version, 1);
  });

  it('works on a 4 KiB sector lockspace', async () => {
    const cluster = await createCluster({ hostCount: 2, sectorBytes: 4096 });
    assert.equal(cluster.layout.blockSize, 4096);
    await cluster.run(cluster.host(1).manager.acquire('vg0', { mode: 'sh' }));
    await cluster.run(cluster.host(2).manager.acquire('vg0', { mode: 'sh' }));
    await assert.rejects(
      cluster.run(cluster.host(2).manager.convert('vg0', 'ex')),
      code('LOCK_HELD'),
    );
    await cluster.run(cluster.host(1).manager.release('vg0'));
    assert.equal((await cluster.run(cluster.host(2).manager.convert('vg0', 'ex'))).mode, 'ex');
  });
});
