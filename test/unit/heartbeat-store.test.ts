/**
 * HeartbeatStore: several simulated hosts on one shared MemoryDevice, in virtual time
 * (docs/leases.md: delta lease, liveness, self-fencing). T = 250 ms: renew every 125 ms, monitor
 * every 62.5 ms, fence at 1 s, failed after 1.5 s.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { FaultInjectingDevice } from '../../src/disk/fault-device.js';
import { isTandemError } from '../../src/errors.js';
import { hostSlotOffset } from '../../src/heartbeat-store/layout.js';
import { type TestHost, TestCluster, firstStateAt } from './heartbeat-cluster.js';

function expectCode(code: string) {
  return (error: unknown) => {
    assert.ok(isTandemError(error), `expected a TandemError, got ${String(error)}`);
    assert.equal(error.code, code, error.message);
    return true;
  };
}

function viewOf(observer: TestHost, hostId: number) {
  return observer.store.hosts().find((host) => host.hostId === hostId);
}

describe('HeartbeatStore join', () => {
  it('formats a lockspace, joins three hosts, and each sees all three live', async () => {
    const cluster = await TestCluster.create();
    const hosts = await Promise.all(
      ['a', 'b', 'c'].map((name, index) => cluster.addHost(name, { hostId: index + 1 })),
    );
    const instances = await cluster.run(Promise.all(hosts.map((host) => host.store.join())));
    assert.deepEqual(
      instances,
      [1, 2, 3].map((hostId) => ({ hostId, generation: 1 })),
    );
    await cluster.scheduler.runFor(1_000);
    for (const [index, host] of hosts.entries()) {
      const views = host.store.hosts();
      assert.deepEqual(
        views.map((view) => [view.hostId, view.hostName, view.state]),
        [
          [1, 'a', 'live'],
          [2, 'b', 'live'],
          [3, 'c', 'live'],
        ],
      );
      assert.deepEqual(
        views.filter((view) => view.self).map((view) => view.hostId),
        [index + 1],
      );
      assert.equal(host.store.localState(), 'joined');
      assert.equal(host.events.filter((e) => e.event.kind === 'joined').length, 3);
    }
    await cluster.closeAll(hosts);
  });

  it('lets only one of two hosts racing for the same host id win', async () => {
    const cluster = await TestCluster.create();
    const a = await cluster.addHost('a', { hostId: 4 });
    const b = await cluster.addHost('b', { hostId: 4 });
    const results = await cluster.run(Promise.allSettled([a.store.join(), b.store.join()]));
    const won = results.filter((result) => result.status === 'fulfilled');
    const lost = results.filter((result) => result.status === 'rejected');
    assert.equal(won.length, 1);
    assert.equal(lost.length, 1);
    assert.ok(lost[0]?.status === 'rejected' && expectCode('HOST_ID_BUSY')(lost[0].reason));
    const winner = results[0]?.status === 'fulfilled' ? a : b;
    const loser = winner === a ? b : a;
    const slot = await cluster.readSlot(4);
    assert.ok(slot.kind === 'held' && slot.hostName === winner.name);
    assert.equal(loser.store.localState(), 'idle');
    assert.throws(() => loser.store.localInstance(), expectCode('LOCKSPACE_NOT_JOINED'));
    await cluster.closeAll([a, b]);
  });

  it('lets only one win when two instances with the same name and address race for an id', async () => {
    // Regression: identical records (same name, address, wall ms) both read back as "ours".
    const cluster = await TestCluster.create();
    const a = await cluster.addHost('twin', { hostId: 2, address: 'twin:1' });
    const b = await cluster.addHost('twin', { hostId: 2, address: 'twin:1' });
    const results = await cluster.run(Promise.allSettled([a.store.join(), b.store.join()]));
    assert.equal(results.filter((result) => result.status === 'fulfilled').length, 1);
    await cluster.closeAll([a, b]);
  });

  it('gives distinct host ids to hosts that pick one at the same time', async () => {
    const cluster = await TestCluster.create();
    const hosts = await Promise.all(['a', 'b', 'c'].map((name) => cluster.addHost(name)));
    const instances = await cluster.run(Promise.all(hosts.map((host) => host.store.join())));
    assert.deepEqual(instances.map((i) => i.hostId).sort(), [1, 2, 3]);
    await cluster.closeAll(hosts);
  });

  it('refuses a host id held by a live host after watching it, and fills up', async () => {
    const cluster = await TestCluster.create({ maxHosts: 2 });
    const [a, b] = [await cluster.addHost('a'), await cluster.addHost('b')];
    await cluster.run(Promise.all([a.store.join(), b.store.join()]));
    const c = await cluster.addHost('c', { hostId: 1 });
    const startMs = cluster.scheduler.nowMs;
    await assert.rejects(cluster.run(c.store.join()), expectCode('HOST_ID_BUSY'));
    // A held slot is watched before the verdict; it changed at the next renewal.
    assert.ok(cluster.scheduler.nowMs - startMs < c.store.timings.hostDeadMs);
    const d = await cluster.addHost('d');
    await assert.rejects(cluster.run(d.store.join()), expectCode('LOCKSPACE_FULL'));
    await cluster.closeAll([a, b, c, d]);
  });

  it('takes over the id of a crashed host only after watching it for the dead time', async () => {
    const cluster = await TestCluster.create();
    const a = await cluster.addHost('a', { hostId: 1 });
    await cluster.run(a.store.join());
    await cluster.scheduler.runFor(500);
    await cluster.run(a.store.close());
    const b = await cluster.addHost('b', { hostId: 1 });
    const startMs = cluster.scheduler.nowMs;
    const instance = await cluster.run(b.store.join());
    const { hostDeadMs, acquireSettleMs } = b.store.timings;
    assert.deepEqual(instance, { hostId: 1, generation: 2 });
    assert.ok(cluster.scheduler.nowMs - startMs >= hostDeadMs + acquireSettleMs);
    await cluster.closeAll([a, b]);
  });

  it('rejoins with generation + 1 after a clean leave, by the same or a new store', async () => {
    const cluster = await TestCluster.create();
    const a = await cluster.addHost('a');
    const other = await cluster.addHost('other', { hostId: 1 });
    assert.deepEqual(await cluster.run(other.store.join()), { hostId: 1, generation: 1 });
    assert.deepEqual(await cluster.run(a.store.join()), { hostId: 2, generation: 1 });
    await cluster.run(a.store.leave());
    await cluster.run(a.store.close());
    const again = await cluster.addHost('a');
    // Our own name's left slot comes before any free one.
    assert.deepEqual(await cluster.run(again.store.join()), { hostId: 2, generation: 2 });
    await cluster.run(again.store.leave());
    assert.deepEqual(await cluster.run(again.store.join()), { hostId: 2, generation: 3 });
    await cluster.closeAll([a, other, again]);
  });
});

describe('HeartbeatStore renewals and liveness', () => {
  it('advances the renewal counter every renewal interval', async () => {
    const cluster = await TestCluster.create();
    const a = await cluster.addHost('a', { hostId: 1 });
    await cluster.run(a.store.join());
    const before = await cluster.readSlot(1);
    await cluster.scheduler.runFor(1_000);
    const after = await cluster.readSlot(1);
    assert.ok(before.kind === 'held' && after.kind === 'held');
    const renewals = after.renewalCounter - before.renewalCounter;
    const expected = 1_000 / a.store.timings.renewalIntervalMs;
    assert.ok(renewals >= expected - 1 && renewals <= expected + 1, `${renewals} renewals`);
    await cluster.closeAll([a]);
  });

  it('shows a crashed host failed exactly hostDeadMs after its last renewal, not before', async () => {
    const cluster = await TestCluster.create();
    const device = new FaultInjectingDevice(cluster.base.openAnother(), {
      sleep: (delayMs) => cluster.scheduler.sleep(delayMs),
    });
    let lastWriteMs = 0;
    device.onIo = (event) => {
      if (event.kind === 'write') lastWriteMs = cluster.scheduler.nowMs;
    };
    const a = await cluster.addHost('a', { hostId: 1, device });
    const b = await cluster.addHost('b', { hostId: 2 });
    const [instanceA] = await cluster.run(Promise.all([a.store.join(), b.store.join()]));
    assert.ok(instanceA !== undefined);
    await cluster.scheduler.runFor(1_037);
    await cluster.run(a.store.close());
    const { hostDeadMs, monitorIntervalMs } = b.store.timings;
    await cluster.scheduler.runUntil(lastWriteMs + hostDeadMs - 1);
    assert.equal(viewOf(b, 1)?.state, 'live');
    assert.equal(b.store.ownerLiveness(instanceA), 'alive');
    await cluster.scheduler.runFor(4 * monitorIntervalMs);
    const failedAtMs = firstStateAt(b, 1, 'failed');
    assert.ok(failedAtMs !== undefined, 'b saw a fail');
    assert.ok(failedAtMs >= lastWriteMs + hostDeadMs, `failed at ${failedAtMs}`);
    // One interval until the change is seen, one until the deciding read.
    assert.ok(failedAtMs <= lastWriteMs + hostDeadMs + 2 * monitorIntervalMs);
    assert.equal(b.store.ownerLiveness(instanceA), 'dead');
    assert.equal(b.store.ownerLiveness({ hostId: 1, generation: 2 }), 'alive');
    await cluster.closeAll([a, b]);
  });

  it('shows a clean leave as left at once, and its leases as free to take', async () => {
    const cluster = await TestCluster.create();
    const a = await cluster.addHost('a', { hostId: 1 });
    const b = await cluster.addHost('b', { hostId: 2 });
    const [instanceA] = await cluster.run(Promise.all([a.store.join(), b.store.join()]));
    assert.ok(instanceA !== undefined);
    await cluster.scheduler.runFor(300);
    const leftAtMs = cluster.scheduler.nowMs;
    await cluster.run(a.store.leave());
    assert.equal(a.store.localState(), 'left');
    await cluster.scheduler.runFor(2 * b.store.timings.monitorIntervalMs);
    const seenMs = firstStateAt(b, 1, 'left');
    assert.ok(seenMs !== undefined && seenMs - leftAtMs <= 2 * b.store.timings.monitorIntervalMs);
    assert.equal(b.store.ownerLiveness(instanceA), 'dead');
    assert.deepEqual(
      a.localEvents.map((e) => e.event.state),
      ['joining', 'joined', 'left'],
    );
    await cluster.closeAll([a, b]);
  });

  it('publishes a payload that the others see', async () => {
    const cluster = await TestCluster.create();
    const a = await cluster.addHost('a', { hostId: 1 });
    const b = await cluster.addHost('b', { hostId: 2 });
    await cluster.run(Promise.all([a.store.join(), b.store.join()]));
    await cluster.scheduler.runFor(200);
    const payload = Buffer.from(JSON.stringify({ vms: ['vm-1', 'vm-2'] }));
    await cluster.run(a.store.publish(payload));
    await cluster.scheduler.runFor(2 * b.store.timings.monitorIntervalMs);
    assert.ok(viewOf(b, 1)?.payload?.equals(payload));
    assert.equal(viewOf(b, 1)?.payloadSizeBytes, payload.length);
    assert.ok(b.events.some((e) => e.event.kind === 'payload' && e.event.host.hostId === 1));
    await assert.rejects(a.store.publish(Buffer.alloc(1025)), expectCode('INVALID_ARGUMENT'));
    await cluster.closeAll([a, b]);
  });

  it('is not disturbed by wall clock jumps', async () => {
    const cluster = await TestCluster.create();
    const a = await cluster.addHost('a', { hostId: 1 });
    const b = await cluster.addHost('b', { hostId: 2 });
    await cluster.run(Promise.all([a.store.join(), b.store.join()]));
    for (let round = 0; round < 10; round++) {
      a.clock.jumpWall(round % 2 === 0 ? -3_600_000 : 7_200_000);
      b.clock.jumpWall(-86_400_000);
      await cluster.scheduler.runFor(b.store.timings.hostDeadMs / 2);
    }
    for (const host of [a, b]) {
      assert.deepEqual(
        host.store.hosts().map((view) => view.state),
        ['live', 'live'],
      );
      assert.ok(!host.events.some((e) => e.event.kind === 'state'));
      assert.equal(host.store.localState(), 'joined');
    }
    await cluster.closeAll([a, b]);
  });

  it('tells an isolated host (no probe answer, slot renewing) apart and keeps it alive', async () => {
    const cluster = await TestCluster.create();
    let answer = false;
    const probed: string[] = [];
    const prober = {
      probe: async (address: string) => {
        probed.push(address);
        return answer;
      },
    };
    const a = await cluster.addHost('a', { hostId: 1, address: '10.0.0.1:7443' });
    const b = await cluster.addHost('b', { hostId: 2, prober });
    const [instanceA] = await cluster.run(Promise.all([a.store.join(), b.store.join()]));
    assert.ok(instanceA !== undefined);
    const { isolationMs, probeIntervalMs } = b.store.timings;
    await cluster.scheduler.runFor(isolationMs + 3 * probeIntervalMs);
    assert.ok(probed.length > 0 && probed.every((address) => address === '10.0.0.1:7443'));
    assert.equal(viewOf(b, 1)?.state, 'isolated');
    assert.equal(b.store.ownerLiveness(instanceA), 'alive');
    answer = true;
    await cluster.scheduler.runFor(2 * probeIntervalMs);
    assert.equal(viewOf(b, 1)?.state, 'live');
    await cluster.closeAll([a, b]);
  });

  it('never takes a corrupt slot as free', async () => {
    const cluster = await TestCluster.create({ maxHosts: 2 });
    const garbage = Buffer.alloc(4096, 0x5a);
    garbage.write('TNDMHOST', 0, 'ascii');
    await cluster.base.write(garbage, hostSlotOffset(cluster.layout, 2));
    const a = await cluster.addHost('a', { hostId: 2 });
    await assert.rejects(cluster.run(a.store.join()), expectCode('HOST_ID_BUSY'));
    const b = await cluster.addHost('b');
    assert.deepEqual(await cluster.run(b.store.join()), { hostId: 1, generation: 1 });
    const c = await cluster.addHost('c');
    await assert.rejects(cluster.run(c.store.join()), expectCode('LOCKSPACE_FULL'));
    const slot = Buffer.alloc(4096);
    await cluster.base.read(slot, hostSlotOffset(cluster.layout, 2));
    assert.ok(slot.equals(garbage), 'the corrupt slot was not written');
    await cluster.scheduler.runFor(3 * b.store.timings.hostDeadMs);
    assert.deepEqual(viewOf(b, 2)?.state, 'live');
    await cluster.closeAll([a, b, c]);
  });

  it('works on a 4 KiB sector device', async () => {
    const cluster = await TestCluster.create({ sectorBytes: 4096 });
    assert.equal(cluster.layout.blockSize, 4096);
    const a = await cluster.addHost('a');
    const b = await cluster.addHost('b');
    await cluster.run(Promise.all([a.store.join(), b.store.join()]));
    await cluster.run(a.store.publish(Buffer.from('on 4k')));
    await cluster.scheduler.runFor(500);
    assert.equal(
      b.store
        .hosts()
        .find((view) => view.hostName === 'a')
        ?.payload?.toString(),
      'on 4k',
    );
    await cluster.closeAll([a, b]);
  });
});

describe('HeartbeatStore self-fencing', () => {
  it('fences a host whose disk stalls before anyone may see it failed', async () => {
    const cluster = await TestCluster.create();
    const device = new FaultInjectingDevice(cluster.base.openAnother(), {
      sleep: (delayMs) => cluster.scheduler.sleep(delayMs),
    });
    let stalled = false;
    let lastWriteMs = 0;
    let writesAfterFence = 0;
    const a = await cluster.addHost('a', { hostId: 1, device });
    device.onIo = (event) => {
      if (event.kind !== 'write') return;
      if (!stalled) lastWriteMs = cluster.scheduler.nowMs;
      if (a.store.fencedAt() !== undefined) writesAfterFence += 1;
    };
    const b = await cluster.addHost('b', { hostId: 2 });
    const [instanceA] = await cluster.run(Promise.all([a.store.join(), b.store.join()]));
    assert.ok(instanceA !== undefined);
    await cluster.scheduler.runFor(700);
    stalled = true;
    const stall = device.stall({ match: { kinds: ['write'] } });
    const { renewalFailMs, hostDeadMs, fenceDrainMs } = a.store.timings;
    await cluster.scheduler.runFor(hostDeadMs + renewalFailMs);
    const fencedAtMs = a.store.fencedAt();
    const failedAtMs = firstStateAt(b, 1, 'failed');
    assert.ok(fencedAtMs !== undefined && failedAtMs !== undefined);
    assert.ok(fencedAtMs <= lastWriteMs + renewalFailMs, `fenced at ${fencedAtMs}`);
    assert.ok(failedAtMs >= lastWriteMs + hostDeadMs);
    assert.ok(failedAtMs - fencedAtMs >= fenceDrainMs, `margin ${failedAtMs - fencedAtMs}`);
    assert.equal(writesAfterFence, 0);
    assert.equal(stall.stalledCount, 1, 'one write stuck, none started beside it');
    const states = a.localEvents.map((e) => e.event.state);
    assert.deepEqual(states, ['joining', 'joined', 'renewal-failing', 'fenced']);
    assert.throws(() => a.store.localInstance(), expectCode('FENCED'));
    assert.equal(b.store.ownerLiveness(instanceA), 'dead');
    await cluster.closeAll([a, b]);
  });

  it('reports failing renewals and recovers when the disk comes back in time', async () => {
    const cluster = await TestCluster.create();
    const device = new FaultInjectingDevice(cluster.base.openAnother(), {
      sleep: (delayMs) => cluster.scheduler.sleep(delayMs),
    });
    const a = await cluster.addHost('a', { hostId: 1, device });
    await cluster.run(a.store.join());
    await cluster.scheduler.runFor(300);
    device.failIo({ match: { kinds: ['write'] }, times: 3 });
    await cluster.scheduler.runFor(a.store.timings.renewalFailMs);
    const states = a.localEvents.map((e) => e.event.state);
    assert.deepEqual(states, ['joining', 'joined', 'renewal-failing', 'joined']);
    assert.equal(a.store.fencedAt(), undefined);
    await cluster.closeAll([a]);
  });

  it('fences on request and then stops writing its slot', async () => {
    const cluster = await TestCluster.create();
    const a = await cluster.addHost('a', { hostId: 1 });
    await cluster.run(a.store.join());
    await cluster.scheduler.runFor(300);
    const fenced: string[] = [];
    a.store.onLocalState((event) => fenced.push(`${event.state}: ${event.reason ?? ''}`));
    a.store.fence('operator asked');
    assert.deepEqual(fenced, ['fenced: fenced on request: operator asked']);
    const before = await cluster.readSlot(1);
    await cluster.scheduler.runFor(2_000);
    const after = await cluster.readSlot(1);
    assert.ok(before.kind === 'held' && after.kind === 'held');
    assert.equal(after.renewalCounter, before.renewalCounter);
    await assert.rejects(a.store.publish(Buffer.from('x')), expectCode('FENCED'));
    await cluster.closeAll([a]);
  });
});
