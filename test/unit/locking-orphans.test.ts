/**
 * Orphan leases (src/locking/orphan-sweeper.ts): lockspace state naming a live instance that does
 * not hold the lease in memory. Each case makes one write fail but land (it reaches the
 * MemoryDevice, then the promise rejects with DISK_IO), and checks that another host gets the
 * lease within a bounded virtual time while the first host stays alive; and that a lease held
 * here is never "repaired".
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BlockDevice } from '../../src/disk/block-device.js';
import { TandemError } from '../../src/errors.js';
import { resourceAreaOffset } from '../../src/heartbeat-store/layout.js';
import {
  decodeBallot,
  decodeLeader,
  encodeLeader,
  modeFlagShared,
} from '../../src/locking/lease-format.js';
import { type Cluster, code, createCluster, ioTimeoutMs } from './locking-harness.js';

/** 'land': the write reaches the device, then fails. 'drop': it fails without landing. */
type WriteFault = 'land' | 'drop' | undefined;
type WriteRule = (offsetBytes: number, buffer: Buffer) => WriteFault;

interface FaultSwitch {
  rule: WriteRule | undefined;
  failed: number;
}

function faultyDevice(base: BlockDevice, faults: FaultSwitch): BlockDevice {
  const device = Object.create(base) as BlockDevice;
  device.write = async (buffer, offsetBytes, options) => {
    const fault = faults.rule?.(offsetBytes, buffer);
    if (fault === 'land') await base.write(buffer, offsetBytes, options);
    if (fault === undefined) return base.write(buffer, offsetBytes, options);
    faults.failed += 1;
    throw new TandemError('DISK_IO', `injected write failure at ${offsetBytes} (${fault})`);
  };
  return device;
}

/** A cluster whose host 1 writes through a switchable fault layer. */
async function faultyCluster(
  hostCount: number,
): Promise<{ cluster: Cluster; faults: FaultSwitch }> {
  const faults: FaultSwitch = { rule: undefined, failed: 0 };
  const cluster = await createCluster({
    hostCount,
    wrap: (device, hostId) => (hostId === 1 ? faultyDevice(device, faults) : device),
  });
  return { cluster, faults };
}

function leaderOffset(cluster: Cluster, areaIndex: number): number {
  return resourceAreaOffset(cluster.layout, areaIndex);
}

function ballotOffset(cluster: Cluster, areaIndex: number, hostId: number): number {
  return resourceAreaOffset(cluster.layout, areaIndex) + hostId * cluster.layout.blockSize;
}

/** Fails (landing) the first write at `offset` that `match` accepts, once. */
function once(offset: number, match: (buffer: Buffer) => boolean, fault: WriteFault): WriteRule {
  let done = false;
  return (offsetBytes, buffer) => {
    if (done || offsetBytes !== offset || !match(buffer)) return undefined;
    done = true;
    return fault;
  };
}

function leaderOwnerIs(hostId: number): (buffer: Buffer) => boolean {
  return (buffer) => {
    const decoded = decodeLeader(buffer);
    return decoded.status === 'record' && decoded.record.ownerHostId === hostId;
  };
}

function ballotWith(check: (bal: number, flags: number) => boolean): (buffer: Buffer) => boolean {
  return (buffer) => {
    const decoded = decodeBallot(buffer);
    return decoded.status === 'record' && check(decoded.record.bal, decoded.record.modeFlags);
  };
}

async function readLeaderOwner(cluster: Cluster, areaIndex: number): Promise<number> {
  const block = Buffer.alloc(cluster.layout.blockSize);
  await cluster.device.read(block, leaderOffset(cluster, areaIndex));
  const decoded = decodeLeader(block);
  assert.equal(decoded.status, 'record');
  return decoded.status === 'record' ? decoded.record.ownerHostId : -1;
}

async function readSharedFlag(
  cluster: Cluster,
  areaIndex: number,
  hostId: number,
): Promise<number> {
  const block = Buffer.alloc(cluster.layout.blockSize);
  await cluster.device.read(block, ballotOffset(cluster, areaIndex, hostId));
  const decoded = decodeBallot(block);
  return decoded.status === 'record' ? decoded.record.modeFlags & modeFlagShared : 0;
}

/** Host 2 waits for `name` exclusive; returns how long it took. Host 1 must still be alive. */
async function takeoverMs(cluster: Cluster, name: string): Promise<number> {
  const startMs = cluster.scheduler.nowMs;
  const info = await cluster.run(
    cluster.host(2).manager.acquire(name, { mode: 'ex', waitMs: 40 * ioTimeoutMs }),
  );
  assert.equal(info.owner?.hostId, 2);
  assert.equal(cluster.host(1).liveness.ownerLiveness(cluster.host(1).liveness.instance), 'alive');
  assert.equal(cluster.host(1).liveness.state, 'joined');
  return cluster.scheduler.nowMs - startMs;
}

/** Where the sweeper repairs at the latest: its first re-check at T/2, plus I/O and a poll. */
const repairBoundMs = ioTimeoutMs;

describe('orphan leases', () => {
  it('an acquire whose commit write failed but landed: the leader is released', async () => {
    const { cluster, faults } = await faultyCluster(2);
    const h1 = cluster.host(1).manager;
    // Create the resource (area 1), then fail-but-land host 1's commit.
    await cluster.run(h1.acquire('vg0', { mode: 'ex' }));
    await cluster.run(h1.release('vg0'));
    faults.rule = once(leaderOffset(cluster, 1), leaderOwnerIs(1), 'land');
    await assert.rejects(cluster.run(h1.acquire('vg0', { mode: 'ex' })), code('LEASE_IO'));
    assert.equal(faults.failed, 1);
    assert.equal(await readLeaderOwner(cluster, 1), 1, 'the failed commit landed');
    assert.deepEqual(h1.held(), []);
    const tookMs = await takeoverMs(cluster, 'vg0');
    assert.ok(tookMs <= repairBoundMs, `took ${tookMs} ms`);
  });

  it('a ballot we left after phase 2, committed for us by another host, is released', async () => {
    const { cluster, faults } = await faultyCluster(2);
    const [h1, h2] = [cluster.host(1).manager, cluster.host(2).manager];
    await cluster.run(h1.acquire('vg0', { mode: 'ex' }));
    await cluster.run(h1.release('vg0'));
    // Host 1's phase-2 ballot (bal set, inp = host 1) lands but fails: host 1 gives up.
    faults.rule = once(
      ballotOffset(cluster, 1, 1),
      ballotWith((bal) => bal !== 0),
      'land',
    );
    await assert.rejects(cluster.run(h1.acquire('vg0', { mode: 'ex' })), code('LEASE_IO'));
    assert.equal(await readLeaderOwner(cluster, 1), 0);
    // Host 2's ballot adopts host 1's value (the highest bal) and commits it: LOCK_HELD by 1.
    await assert.rejects(cluster.run(h2.acquire('vg0', { mode: 'ex' })), code('LOCK_HELD'));
    assert.equal(await readLeaderOwner(cluster, 1), 1, 'host 2 committed host 1 as owner');
    assert.deepEqual(h1.held(), []);
    const tookMs = await takeoverMs(cluster, 'vg0');
    assert.ok(tookMs <= repairBoundMs, `took ${tookMs} ms`);
  });

  it('a convert to shared whose flag write failed but landed: the flag is cleared', async () => {
    const { cluster, faults } = await faultyCluster(2);
    const h1 = cluster.host(1).manager;
    await cluster.run(h1.acquire('vg0', { mode: 'ex' }));
    const flagSet = ballotWith((_bal, flags) => (flags & modeFlagShared) !== 0);
    faults.rule = once(ballotOffset(cluster, 1, 1), flagSet, 'land');
    await assert.rejects(cluster.run(h1.convert('vg0', 'sh')), code('LEASE_IO'));
    assert.equal(await readSharedFlag(cluster, 1, 1), modeFlagShared, 'the flag write landed');
    assert.deepEqual(
      h1.held().map((info) => info.heldHere),
      ['ex'],
    );
    await cluster.run(h1.release('vg0'));
    const tookMs = await takeoverMs(cluster, 'vg0');
    assert.ok(tookMs <= repairBoundMs, `took ${tookMs} ms`);
    assert.equal(await readSharedFlag(cluster, 1, 1), 0);
  });

  it('a leader naming us that inspect shows is repaired at once', async () => {
    const cluster = await createCluster({ hostCount: 2 });
    const h1 = cluster.host(1).manager;
    await cluster.run(h1.acquire('vg0', { mode: 'ex' }));
    await cluster.run(h1.release('vg0'));
    // As if a commit of ours had landed unnoticed (no uncertain event on host 1).
    const leader = encodeLeader(
      {
        leaseVersion: 2,
        ownerHostId: 1,
        flags: 0,
        ownerGeneration: 1,
        takenWallMs: 0,
        name: 'vg0',
        value: Buffer.alloc(0),
      },
      cluster.layout.blockSize,
    );
    await cluster.device.write(leader, leaderOffset(cluster, 1));
    await assert.rejects(
      cluster.run(cluster.host(2).manager.acquire('vg0', { mode: 'ex' })),
      code('LOCK_HELD'),
    );
    assert.equal((await cluster.run(h1.inspect('vg0'))).owner?.hostId, 1);
    const tookMs = await takeoverMs(cluster, 'vg0');
    assert.ok(tookMs <= repairBoundMs, `took ${tookMs} ms`);
  });

  it('a waiting acquire adopts a leader that names it', async () => {
    const { cluster, faults } = await faultyCluster(2);
    const h1 = cluster.host(1).manager;
    await cluster.run(h1.acquire('vg0', { mode: 'ex' }));
    await cluster.run(h1.release('vg0'));
    faults.rule = once(leaderOffset(cluster, 1), leaderOwnerIs(1), 'land');
    await assert.rejects(cluster.run(h1.acquire('vg0', { mode: 'ex' })), code('LEASE_IO'));
    const info = await cluster.run(h1.acquire('vg0', { mode: 'ex', waitMs: ioTimeoutMs }));
    assert.equal(info.owner?.hostId, 1);
    assert.equal(info.version, 2, 'adopted, no new ballot');
    await cluster.scheduler.runFor(10 * ioTimeoutMs);
    assert.equal(await readLeaderOwner(cluster, 1), 1, 'the sweeper left the adopted lease');
  });

  it('never repairs a lease held here (exclusive leader, shared flag)', async () => {
    const { cluster, faults } = await faultyCluster(2);
    const [h1, h2] = [cluster.host(1).manager, cluster.host(2).manager];
    await cluster.run(h1.acquire('vg0', { mode: 'ex' }));
    await cluster.run(h1.acquire('lv1', { mode: 'sh' }));
    // Failed writes on both (not landing) start sweeps of both resources.
    faults.rule = (offsetBytes) =>
      offsetBytes === leaderOffset(cluster, 1) || offsetBytes === leaderOffset(cluster, 2)
        ? 'drop'
        : undefined;
    await assert.rejects(cluster.run(h1.setValue('vg0', Buffer.from('x'))), code('LEASE_IO'));
    faults.rule = (offsetBytes) =>
      offsetBytes === ballotOffset(cluster, 2, 1) ? 'drop' : undefined;
    await assert.rejects(cluster.run(h1.convert('lv1', 'ex')), code('LEASE_IO'));
    faults.rule = undefined;
    assert.ok(faults.failed >= 2);
    await cluster.scheduler.runFor(10 * ioTimeoutMs);
    assert.deepEqual(
      h1
        .held()
        .map((info) => [info.name, info.heldHere])
        .sort(),
      [
        ['lv1', 'sh'],
        ['vg0', 'ex'],
      ],
    );
    assert.equal(await readLeaderOwner(cluster, 1), 1);
    assert.equal(await readSharedFlag(cluster, 2, 1), modeFlagShared);
    await assert.rejects(cluster.run(h2.acquire('vg0', { mode: 'ex' })), code('LOCK_HELD'));
    await assert.rejects(cluster.run(h2.acquire('lv1', { mode: 'ex' })), code('LOCK_HELD'));
  });
});
