/**
 * Claims on free PVs (src/clvm/pv-claim.ts): the label round trip of a claim, racing claimers of
 * which at most one wins, a stale claim waited out, a claim that is used by a commit, and a
 * holder that took too long.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { systemClock } from '../../src/clock.js';
import type { BlockDevice, WriteOptions } from '../../src/disk/block-device.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { createSeededRandom } from '../../src/disk/seeded-random.js';
import { isTandemError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import type { PvHandle } from '../../src/clvm/metadata-store.js';
import { claimFreePvs, releaseClaims } from '../../src/clvm/pv-claim.js';
import {
  type PvLabel,
  createPv,
  decodePvLabel,
  encodePvLabel,
  readPvLabel,
  setPvVgUuid,
} from '../../src/clvm/pv-label.js';

const mebibyte = 1024 * 1024;
const ioTimeoutMs = 40;
const validMs = 400;

async function makePvs(count: number, sectorBytes: 512 | 4096 = 512): Promise<MemoryDevice[]> {
  const devices: MemoryDevice[] = [];
  for (let index = 0; index < count; index++) {
    const device = new MemoryDevice({
      sizeBytes: 16 * mebibyte,
      logicalSectorSizeBytes: sectorBytes,
      description: `pv${index}`,
    });
    await createPv(device, { wallMs: 1 });
    devices.push(device);
  }
  return devices;
}

/** One host's view of the PVs: its own handles (labels as it last read them). */
async function handlesOf(devices: BlockDevice[]): Promise<PvHandle[]> {
  return Promise.all(
    devices.map(async (device) => ({
      path: device.description,
      device,
      label: await readPvLabel(device),
    })),
  );
}

/** The same device with 0-7 ms before each read and write, so racing claimers interleave. */
function withLatency(base: BlockDevice, random: () => number): BlockDevice {
  const slow = Object.create(base) as BlockDevice;
  const jitter = () => new Promise((resolve) => setTimeout(resolve, Math.floor(random() * 8)));
  slow.read = async (buffer: Buffer, offsetBytes: number) => {
    await jitter();
    return base.read(buffer, offsetBytes);
  };
  slow.write = async (buffer: Buffer, offsetBytes: number, options?: WriteOptions) => {
    await jitter();
    return base.write(buffer, offsetBytes, options);
  };
  return slow;
}

function claim(handles: PvHandle[], hostName: string) {
  return claimFreePvs(handles, {
    hostName,
    ioTimeoutMs,
    validMs,
    clock: systemClock,
    logger: silentLogger,
    purpose: `vg create by ${hostName}`,
  });
}

describe('PV claims', () => {
  for (const sectorBytes of [512, 4096] as const) {
    it(`a claim round-trips in the label; labels without one read unclaimed (${sectorBytes} B)`, async () => {
      const [device] = await makePvs(1, sectorBytes);
      assert.ok(device !== undefined);
      const label = await readPvLabel(device);
      assert.equal(label.claim, undefined, 'a new PV is unclaimed');
      const claimed: PvLabel = {
        ...label,
        claim: { nonce: crypto.randomUUID(), wallMs: 1234, hostName: 'höst-a' },
      };
      const decoded = decodePvLabel(encodePvLabel(claimed), 'test');
      assert.deepEqual(decoded.claim, claimed.claim);
      // Joining a VG ends the claim.
      await device.write(encodePvLabel(claimed), 0);
      const joined = await setPvVgUuid(device, await readPvLabel(device), crypto.randomUUID());
      assert.equal(joined.claim, undefined);
      assert.equal((await readPvLabel(device)).claim, undefined);
    });
  }

  it('one claimer alone wins and its claim is in every label', async () => {
    const devices = await makePvs(2);
    const won = await claim(await handlesOf(devices), 'a');
    for (const device of devices) {
      const label = await readPvLabel(device);
      assert.equal(label.claim?.nonce, won.nonce);
      assert.equal(label.claim?.hostName, 'a');
    }
    won.check();
  });

  it('racing claimers on the same PVs: never two winners that may go on', async () => {
    for (let round = 0; round < 8; round++) {
      const devices = await makePvs(3);
      const random = createSeededRandom(round + 1);
      const view = (picked: MemoryDevice[]) =>
        handlesOf(picked.map((device) => withLatency(device, random)));
      // Two hosts name the PVs in the same order (they read them free at about the same time),
      // one in another order (the hosts may each hold some of them for a while).
      const hosts = [
        await view(devices),
        await view(devices),
        (await view(devices.slice(1))).reverse(),
      ];
      // A claimer that wins only after the others' claims went stale (they never commit here)
      // may not go on either: check() says so. What must never happen is two claimers that may
      // go on at once, or one that may go on while a label it claimed names someone else.
      const usable: string[] = [];
      const results = await Promise.allSettled(
        hosts.map(async (handles, index) => {
          const won = await claim(handles, `host-${index}`);
          let mayGoOn = true;
          try {
            won.check();
          } catch {
            mayGoOn = false;
          }
          if (!mayGoOn) return;
          usable.push(`host-${index}`);
          for (const handle of handles) {
            assert.equal((await readPvLabel(handle.device)).claim?.nonce, won.nonce);
          }
          // Commit at once, as vg create does: the label names the VG and the claim ends.
          for (const handle of handles) {
            await setPvVgUuid(handle.device, await readPvLabel(handle.device), crypto.randomUUID());
          }
        }),
      );
      assert.ok(usable.length <= 1, `round ${round}: ${usable.join(', ')} may all go on`);
      for (const result of results) {
        if (result.status === 'rejected') {
          assert.ok(
            isTandemError(result.reason) &&
              (result.reason.code === 'PV_CLAIM_LOST' || result.reason.code === 'PV_IN_USE'),
            String(result.reason),
          );
        }
      }
    }
  });

  it('a claim left by a crashed host is waited out, then taken over', async () => {
    const [free, crashed] = await makePvs(2);
    assert.ok(free !== undefined && crashed !== undefined);
    const label = await readPvLabel(crashed);
    await crashed.write(
      encodePvLabel({
        ...label,
        claim: { nonce: crypto.randomUUID(), wallMs: 1, hostName: 'crashed' },
      }),
      0,
    );
    const startedMs = performance.now();
    const won = await claim(await handlesOf([free, crashed]), 'b');
    assert.ok(performance.now() - startedMs >= validMs, 'waited for the claim to go stale');
    for (const device of [free, crashed]) {
      assert.equal((await readPvLabel(device)).claim?.nonce, won.nonce);
    }
    // The wait came before any claim was written: the new claim is young enough to go on.
    won.check();
  });

  it('a PV that joins a VG while a claimer waits is refused', async () => {
    const [device] = await makePvs(1);
    assert.ok(device !== undefined);
    const first = await claim(await handlesOf([device]), 'a');
    const waiting = claim(await handlesOf([device]), 'b');
    // A commits its VG: the label write names the VG and ends the claim.
    await setPvVgUuid(device, await readPvLabel(device), crypto.randomUUID());
    await assert.rejects(waiting, (error: unknown) => isTandemError(error, 'PV_IN_USE'));
    first.check();
  });

  it('a holder that took too long may not go on; releasing clears only its own claim', async () => {
    const devices = await makePvs(2);
    const handles = await handlesOf(devices);
    const won = await claim(handles, 'a');
    await new Promise((resolve) => setTimeout(resolve, validMs / 2 + 20));
    assert.throws(
      () => won.check(),
      (error: unknown) => isTandemError(error, 'PV_CLAIM_LOST'),
    );
    const other = crypto.randomUUID();
    const [first, second] = devices;
    assert.ok(first !== undefined && second !== undefined);
    await second.write(
      encodePvLabel({
        ...(await readPvLabel(second)),
        claim: { nonce: other, wallMs: 2, hostName: 'c' },
      }),
      0,
    );
    await releaseClaims(handles, won.nonce, silentLogger);
    assert.equal((await readPvLabel(first)).claim, undefined, 'its own claim is cleared');
    assert.equal((await readPvLabel(second)).claim?.nonce, other, "another's claim stays");
  });
});
