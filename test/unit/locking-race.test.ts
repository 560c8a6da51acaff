/**
 * Safety under racing ballots: five hosts repeatedly acquire one lease exclusive (try and
 * waiting acquires mixed), with every lockspace I/O delayed by a seeded random amount so that
 * ballots interleave differently for every seed. Two hosts must never hold it at once, and the
 * lease version (the fencing token) must grow with every new owner.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BlockDevice } from '../../src/disk/block-device.js';
import { isTandemError } from '../../src/errors.js';
import type { Random } from '../../src/clock.js';
import { seededRandom, type VirtualScheduler } from '../sim/virtual-time.js';
import { type Cluster, createCluster } from './locking-harness.js';

/** Each read and write lands after a random delay and completes after another. */
function delayingDevice(
  base: BlockDevice,
  scheduler: VirtualScheduler,
  random: Random,
  maxDelayMs: number,
): BlockDevice {
  const device = Object.create(base) as BlockDevice;
  const delay = () => scheduler.sleep(random.next() * maxDelayMs);
  device.read = async (buffer, offset) => {
    await delay();
    await base.read(buffer, offset);
    await delay();
  };
  device.write = async (buffer, offset) => {
    await delay();
    await base.write(buffer, offset);
    await delay();
  };
  return device;
}

interface RaceStats {
  acquired: number;
  conflicts: number;
  maxVersion: number;
}

async function hostLoop(
  cluster: Cluster,
  hostId: number,
  random: Random,
  holders: Set<number>,
  stats: RaceStats,
) {
  const { manager } = cluster.host(hostId);
  const scheduler = cluster.scheduler;
  for (let round = 0; round < 6; round += 1) {
    await scheduler.sleep(random.next() * 20);
    const waitMs = random.next() < 0.5 ? 0 : 200;
    try {
      const info = await manager.acquire('vg0', { mode: 'ex', waitMs });
      assert.equal(holders.size, 0, `host ${hostId} acquired while ${[...holders].join(',')} hold`);
      assert.ok(info.version > stats.maxVersion, `version ${info.version} did not grow`);
      stats.maxVersion = info.version;
      stats.acquired += 1;
      holders.add(hostId);
      await scheduler.sleep(random.next() * 10);
      // Leave the set before the release write can land: a successor may win right after.
      holders.delete(hostId);
      await manager.release('vg0');
    } catch (error) {
      const expected = ['LOCK_HELD', 'LOCK_TIMEOUT', 'LOCK_CONTENDED'] as const;
      if (!expected.some((code) => isTandemError(error, code))) throw error;
      stats.conflicts += 1;
    }
  }
}

describe('LockManager racing ballots', () => {
  for (const seed of [1, 2, 3, 4, 5, 6, 7, 8]) {
    it(`never grants two exclusive owners (seed ${seed})`, async () => {
      const cluster = await createCluster({
        hostCount: 5,
        wrap: (device, hostId, scheduler) =>
          delayingDevice(device, scheduler, seededRandom(seed * 100 + hostId), 4),
      });
      const holders = new Set<number>();
      const stats: RaceStats = { acquired: 0, conflicts: 0, maxVersion: 0 };
      const loops = cluster.hosts.map((host) =>
        hostLoop(cluster, host.hostId, seededRandom(seed * 1000 + host.hostId), holders, stats),
      );
      await cluster.run(Promise.all(loops));
      assert.ok(stats.acquired >= 5, `only ${stats.acquired} acquisitions`);
      assert.equal(stats.acquired + stats.conflicts, 30);
    });
  }
});
