/**
 * LockManager fencing and fairness: a liveness fence drops every lease without writing the
 * lockspace and closes the write gate; fencing on request releases on disk; an asked release
 * emits 'lost'; waiters on different hosts are served in wait-ticket order.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { gateDevice } from '../../src/locking/write-gate.js';
import type { LockEvent } from '../../src/locking/types.js';
import { code, createCluster, recorder } from './locking-harness.js';

async function lockspaceBytes(device: MemoryDevice, sizeBytes: number): Promise<Buffer> {
  const buffer = Buffer.alloc(sizeBytes);
  await device.read(buffer, 0);
  return buffer;
}

describe('LockManager fencing', () => {
  it('on a liveness fence: gate closed, leases lost without lockspace writes, waiters fail', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    const [h1, h2] = [cluster.host(1), cluster.host(2)];
    const data = new MemoryDevice({ sizeBytes: 1024 * 1024 });
    const gated = gateDevice(data, h1.manager.gate);
    await cluster.run(h1.manager.acquire('vg0', { mode: 'ex' }));
    await cluster.run(h1.manager.acquire('lv1', { mode: 'sh' }));
    await cluster.run(h2.manager.acquire('lv2', { mode: 'ex' }));
    await gated.write(Buffer.alloc(512, 9), 0);
    const waiter = h1.manager.acquire('lv2', { mode: 'ex', waitMs: 10_000 });
    await cluster.scheduler.runFor(50);
    const events = recorder<LockEvent>();
    h1.manager.watch(events.listener);
    const closedReasons = recorder<string>();
    h1.manager.gate.onClose(closedReasons.listener);
    const before = await lockspaceBytes(cluster.device, cluster.layout.sizeBytes);

    h1.liveness.setState('fenced', 'renewals failed');

    assert.equal(h1.manager.gate.isOpen, false);
    assert.equal(closedReasons.calls.length, 1);
    await assert.rejects(cluster.run(waiter), code('FENCED'));
    assert.deepEqual(events.calls.map((event) => [event.kind, event.name, event.reason]).sort(), [
      ['lost', 'lv1', 'fenced: renewals failed'],
      ['lost', 'vg0', 'fenced: renewals failed'],
    ]);
    assert.deepEqual(h1.manager.held(), []);
    await assert.rejects(gated.write(Buffer.alloc(512, 1), 0), code('FENCED'));
    const check = Buffer.alloc(512);
    await data.read(check, 0);
    assert.equal(check[0], 9, 'the refused write never reached the data device');
    await assert.rejects(h1.manager.acquire('vg0', { mode: 'ex' }), code('FENCED'));
    await assert.rejects(h1.manager.release('vg0'), code('FENCED'));
    await cluster.scheduler.runFor(1_000);
    const after = await lockspaceBytes(cluster.device, cluster.layout.sizeBytes);
    assert.ok(before.equals(after), 'a fenced host wrote the lockspace');
    // The lease still names host 1 on disk: others wait until it is dead to them.
    await assert.rejects(cluster.run(h2.manager.acquire('vg0', { mode: 'ex' })), code('LOCK_HELD'));
    cluster.world.kill(h1.liveness.instance);
    assert.equal((await cluster.run(h2.manager.acquire('vg0', { mode: 'ex' }))).owner?.hostId, 2);
  });

  it('fences on request: gate closed, every lease released on disk at once', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    const [h1, h2] = [cluster.host(1), cluster.host(2)];
    await cluster.run(h1.manager.acquire('vg0', { mode: 'ex' }));
    await cluster.run(h1.manager.acquire('lv1', { mode: 'sh' }));
    const events = recorder<LockEvent>();
    h1.manager.watch(events.listener);
    const result = await cluster.run(h1.manager.fenceAndReleaseAll('operator asked'));
    assert.deepEqual(result, { drained: true, stuckWrites: 0, released: 2, releaseFailed: 0 });
    assert.equal(h1.manager.gate.isOpen, false);
    assert.deepEqual(
      events.calls.map((event) => event.kind),
      ['lost', 'lost'],
    );
    assert.equal((await cluster.run(h2.manager.acquire('vg0', { mode: 'ex' }))).owner?.hostId, 2);
    assert.equal((await cluster.run(h2.manager.acquire('lv1', { mode: 'ex' }))).owner?.hostId, 2);
    await assert.rejects(h1.manager.acquire('x', { mode: 'ex' }), code('FENCED'));
  });

  it('releases a lease when asked, with a lost event', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    const [h1, h2] = [cluster.host(1), cluster.host(2)];
    await cluster.run(h1.manager.acquire('vg0', { mode: 'ex' }));
    const events = recorder<LockEvent>();
    h1.manager.watch(events.listener);
    await cluster.run(h1.manager.requestRelease('vg0'));
    assert.deepEqual(events.calls, [
      { kind: 'lost', name: 'vg0', mode: 'free', version: 1, reason: 'asked to release' },
    ]);
    assert.equal((await cluster.run(h2.manager.acquire('vg0', { mode: 'ex' }))).owner?.hostId, 2);
    await assert.rejects(h1.manager.requestRelease('vg0'), code('LOCK_NOT_HELD'));
  });

  it('refuses every call while not joined', async () => {
    const cluster = await createCluster({ hostCount: 1 });
    const h1 = cluster.host(1);
    h1.liveness.state = 'idle';
    await assert.rejects(h1.manager.acquire('vg0', { mode: 'ex' }), code('LOCKSPACE_NOT_JOINED'));
    await assert.rejects(h1.manager.list(), code('LOCKSPACE_NOT_JOINED'));
    await assert.rejects(h1.manager.inspect('vg0'), code('LOCKSPACE_NOT_JOINED'));
  });
});

describe('LockManager fair queue', () => {
  it('serves waiters on different hosts in wait-ticket order, not polling order', async () => {
    const cluster = await createCluster({ hostCount: 4 });
    const { scheduler } = cluster;
    await cluster.run(cluster.host(1).manager.acquire('vg0', { mode: 'ex' }));
    const order: number[] = [];
    const wait = (hostId: number) =>
      cluster
        .host(hostId)
        .manager.acquire('vg0', { mode: 'ex', waitMs: 10_000 })
        .then(async (info) => {
          order.push(hostId);
          assert.equal(info.owner?.hostId, hostId);
          await scheduler.sleep(30);
          await cluster.host(hostId).manager.release('vg0');
        });
    // Host 3 starts waiting first (its polls come first), host 2 a little later: both saw
    // version 1, so host 2's ticket (2 × 4096 + 2) is older than host 3's (2 × 4096 + 3).
    const third = wait(3);
    await scheduler.runFor(5);
    const second = wait(2);
    await scheduler.runFor(100);
    await cluster.run(cluster.host(1).manager.release('vg0'));
    // A newcomer's try-acquire defers to the live waiters instead of jumping the queue.
    await assert.rejects(
      cluster.run(cluster.host(4).manager.acquire('vg0', { mode: 'ex' })),
      code('LOCK_HELD'),
    );
    await cluster.run(Promise.all([third, second]));
    assert.deepEqual(order, [2, 3]);
  });

  it('stops deferring to an older waiter after twice the io timeout', async () => {
    const cluster = await createCluster({ hostCount: 3 });
    const { scheduler } = cluster;
    await cluster.run(cluster.host(1).manager.acquire('vg0', { mode: 'sh' }));
    // Host 2 waits for ex (blocked by the sharer) with an older ticket than host 3's sh wait.
    const exclusive = cluster.host(2).manager.acquire('vg0', { mode: 'ex', waitMs: 5_000 });
    await scheduler.runFor(20);
    const startMs = scheduler.nowMs;
    const shared = await cluster.run(
      cluster.host(3).manager.acquire('vg0', { mode: 'sh', waitMs: 5_000 }),
    );
    assert.equal(shared.mode, 'sh');
    const waitedMs = scheduler.nowMs - startMs;
    assert.ok(waitedMs >= 500 && waitedMs < 600, `deferred for ${waitedMs} ms`);
    await cluster.run(cluster.host(1).manager.release('vg0'));
    await cluster.run(cluster.host(3).manager.release('vg0'));
    assert.equal((await cluster.run(exclusive)).owner?.hostId, 2);
  });
});
