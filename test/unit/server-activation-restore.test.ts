/**
 * The restore of recorded LV activations at a start, against fakes of the VG host and the
 * activations on a virtual clock: a lease an earlier instance of this host holds is waited for
 * (bounded), one another host holds is a conflict, a gone LV or VG drops its entry, a renamed LV
 * is activated under its current name, and a stop ends every wait.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import type { Clock } from '../../src/clock.js';
import { TandemError } from '../../src/errors.js';
import { deriveTimings } from '../../src/heartbeat-store/timings.js';
import type { LockInfo, LockMode, LockOwner } from '../../src/locking/types.js';
import { createLogger } from '../../src/log.js';
import { type ActivationIntent, ActivationIntents } from '../../src/server/activation-intent.js';
import {
  ActivationRestorer,
  otherHolders,
  restoreMarginIoTimeouts,
} from '../../src/server/activation-restore.js';
import type { Activation, LvActivations } from '../../src/server/lv-activations.js';
import type { VgEntry, VolumeEvent, VolumeHost } from '../../src/server/volume-host.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-activation-restore-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let directoryCount = 0;

const bootId = '0b2c4e1a-6f51-4c0e-9d1e-5f7a2b3c4d5e';
const ioTimeoutMs = 100;
const timings = deriveTimings(ioTimeoutMs);
const vgUuid = '11111111-2222-4333-8444-555555555555';
const lvUuid = 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee';
const intent: ActivationIntent = { vgUuid, vgName: 'vg0', lvUuid, lvName: 'disk', mode: 'ex' };

function owner(hostName: string, hostId: number, generation: number): LockOwner {
  return { hostName, hostId, generation };
}

function heldBy(holder: LockOwner | undefined): LockInfo {
  return {
    name: 'lv:0',
    mode: holder === undefined ? 'free' : 'ex',
    owner: holder,
    sharedOwners: [],
    version: 3,
    value: Buffer.alloc(0),
    sinceWallMs: 0,
    heldHere: undefined,
  };
}

class VirtualClock implements Clock {
  now = 0;
  nowMs(): number {
    return this.now;
  }
  wallMs(): number {
    return this.now;
  }
  sleep(delayMs: number, signal?: AbortSignal): Promise<void> {
    if (signal?.aborted === true) return Promise.reject(new Error('aborted'));
    this.now += delayMs;
    return new Promise((resolve) => setImmediate(resolve));
  }
}

/** One VG on a fake host; `holder` says who holds the LV's lease at each try. */
function world(options: {
  lvName?: string;
  holder: (attempt: number) => LockOwner | undefined;
  joined?: boolean;
  vgKnown?: boolean;
}) {
  directoryCount += 1;
  const dataDir = path.join(root, `data-${directoryCount}`);
  fs.mkdirSync(dataDir);
  const bootIdPath = path.join(dataDir, 'boot_id');
  fs.writeFileSync(bootIdPath, bootId);
  const lines: Array<{ level: string; message: string; [key: string]: unknown }> = [];
  const logger = createLogger({
    level: 'debug',
    sink: { write: (line) => void lines.push(JSON.parse(line) as (typeof lines)[number]) },
  });
  const clock = new VirtualClock();
  const calls: Array<{ lvName: string; mode: LockMode; atMs: number }> = [];
  const active = new Map<string, Activation>();
  let lock = heldBy(undefined);
  const member = {
    store: { timings },
    locks: () => ({ inspect: () => Promise.resolve(lock) }),
  };
  const entry = {
    vg: {
      uuid: vgUuid,
      name: 'vg0',
      metadata: {
        ioTimeoutMs,
        lvs: [{ uuid: lvUuid, name: options.lvName ?? 'disk', hidden: false, leaseSlot: 0 }],
      },
    },
    member: options.joined === false ? undefined : member,
  };
  const listeners = new Set<(event: VolumeEvent) => void>();
  const host = {
    watch: (listener: (event: VolumeEvent) => void) => {
      listeners.add(listener);
      return () => listeners.delete(listener);
    },
    byUuid: (uuid: string) => (options.vgKnown === false || uuid !== vgUuid ? undefined : entry),
  } as unknown as VolumeHost;
  let restored: () => void = () => undefined;
  const restoredOnce = new Promise<void>((resolve) => (restored = resolve));
  const activations = {
    activeHere: (uuid: string) => active.get(uuid),
    activate: (_entry: VgEntry, lvName: string, mode: LockMode) => {
      calls.push({ lvName, mode, atMs: clock.now });
      const holder = options.holder(calls.length);
      lock = heldBy(holder);
      if (holder !== undefined) {
        return Promise.reject(new TandemError('LV_ACTIVE_ELSEWHERE', `held by ${holder.hostName}`));
      }
      const activation = { exportName: `vg0/${lvName}`, lvUuid, mode } as unknown as Activation;
      active.set(lvUuid, activation);
      restored();
      return Promise.resolve(activation);
    },
  } as unknown as LvActivations;
  return {
    dataDir,
    lines,
    clock,
    calls,
    restoredOnce,
    entry,
    member,
    emit: (event: VolumeEvent) => {
      for (const listener of listeners) listener(event);
    },
    async restorer(): Promise<{ restorer: ActivationRestorer; intents: ActivationIntents }> {
      const seed = await ActivationIntents.load({ dataDir, restore: true, logger, bootIdPath });
      await seed.activated(intent);
      const intents = await ActivationIntents.load({ dataDir, restore: true, logger, bootIdPath });
      const restorer = new ActivationRestorer({
        activations,
        intents,
        hostName: 'host-a',
        logger,
        clock,
      });
      await restorer.start(host);
      return { restorer, intents };
    },
  };
}

async function until(condition: () => boolean, what: string): Promise<void> {
  for (let index = 0; index < 10_000; index++) {
    if (condition()) return;
    await new Promise((resolve) => setImmediate(resolve));
  }
  assert.fail(`never: ${what}`);
}

describe('restoring recorded activations', () => {
  test('a free lease: restored by the first try, before start() resolves', async () => {
    const setup = world({ holder: () => undefined });
    const { restorer, intents } = await setup.restorer();
    assert.deepEqual(setup.calls, [{ lvName: 'disk', mode: 'ex', atMs: 0 }]);
    assert.ok(setup.lines.some((line) => line.message === 'LV activation restored'));
    assert.equal(intents.get(lvUuid)?.lvName, 'disk', 'still recorded');
    await restorer.stop();
  });

  test('held by an earlier instance of this host (kill -9): waited for, then restored', async () => {
    const earlier = owner('host-a', 1, 4);
    const setup = world({ holder: (attempt) => (attempt <= 5 ? earlier : undefined) });
    const { restorer, intents } = await setup.restorer();
    await setup.restoredOnce;
    assert.equal(setup.calls.length, 6);
    assert.equal(setup.calls[5]?.atMs, 5 * (ioTimeoutMs / 2), 'a try every T/2');
    const waiting = setup.lines.filter(
      (line) => line.message === 'waiting to restore an LV activation',
    );
    assert.equal(waiting.length, 1, 'progress is logged, not once per try');
    assert.match(String(waiting[0]?.['reason']), /host-a \(host id 1/);
    assert.ok(intents.get(lvUuid) !== undefined);
    await restorer.stop();
  });

  test('still held past hostDeadMs + margin: given up, never spinning, entry dropped', async () => {
    const setup = world({ holder: () => owner('host-a', 1, 4) });
    const { restorer, intents } = await setup.restorer();
    await until(() => intents.get(lvUuid) === undefined, 'the entry dropped');
    const boundMs = timings.hostDeadMs + restoreMarginIoTimeouts * ioTimeoutMs;
    assert.equal(setup.calls.length, boundMs / (ioTimeoutMs / 2) + 1, 'one try per T/2, bounded');
    assert.ok((setup.calls.at(-1)?.atMs ?? 0) >= boundMs);
    const gaveUp = setup.lines.find((line) => line.message === 'LV activation not restored');
    assert.equal(gaveUp?.level, 'warn');
    assert.match(String(gaveUp?.['reason']), /gave up/);
    await restorer.stop();
  });

  test('active on another host: dropped at once with a warning naming the holder', async () => {
    const setup = world({ holder: () => owner('host-b', 2, 1) });
    const { restorer, intents } = await setup.restorer();
    assert.equal(setup.calls.length, 1);
    assert.equal(intents.get(lvUuid), undefined);
    const line = setup.lines.find(
      (candidate) => candidate.message === 'LV activation not restored',
    );
    assert.equal(line?.level, 'warn');
    assert.match(String(line?.['holder']), /host-b \(host id 2, exclusive\)/);
    const stored = JSON.parse(
      fs.readFileSync(path.join(setup.dataDir, 'activations.json'), 'utf8'),
    );
    assert.deepEqual(stored.activations, [], 'the file no longer lists it');
    await restorer.stop();
  });

  test('renamed while tandemd was down: activated under its current name', async () => {
    const setup = world({ lvName: 'disk-renamed', holder: () => undefined });
    const { restorer } = await setup.restorer();
    assert.equal(setup.calls[0]?.lvName, 'disk-renamed');
    const line = setup.lines.find((candidate) => candidate.message === 'LV activation restored');
    assert.equal(line?.['recordedAs'], 'vg0/disk');
    await restorer.stop();
  });

  test('the LV is gone, or its VG: dropped with a warning', async () => {
    const gone = world({ holder: () => undefined });
    gone.entry.vg.metadata.lvs.length = 0;
    const first = await gone.restorer();
    assert.equal(first.intents.get(lvUuid), undefined);
    assert.match(JSON.stringify(gone.lines), /the LV is gone/);
    await first.restorer.stop();

    const noVg = world({ holder: () => undefined, vgKnown: false });
    const second = await noVg.restorer();
    assert.equal(second.intents.get(lvUuid), undefined);
    assert.match(JSON.stringify(noVg.lines), /VG was not found/);
    assert.equal(noVg.calls.length, 0);
    await second.restorer.stop();
  });

  test('a VG joined after the start is restored when it joins', async () => {
    const setup = world({ holder: () => undefined, joined: false });
    const { restorer } = await setup.restorer();
    assert.equal(setup.calls.length, 0, 'not joined yet');
    (setup.entry as { member: unknown }).member = setup.member;
    setup.emit({ kind: 'vg-changed', vgUuid });
    await setup.restoredOnce;
    assert.equal(setup.calls.length, 1);
    await restorer.stop();
  });

  test('a stop ends the wait; the entry stays recorded for the next start', async () => {
    const setup = world({ holder: () => owner('host-a', 1, 4) });
    const { restorer, intents } = await setup.restorer();
    await restorer.stop();
    const tries = setup.calls.length;
    await new Promise((resolve) => setTimeout(resolve, 20));
    assert.equal(setup.calls.length, tries, 'no try after the stop');
    assert.ok(intents.get(lvUuid) !== undefined);
  });

  test('otherHolders: by host name; unknown names are not a conflict', () => {
    assert.deepEqual(otherHolders(heldBy(owner('host-a', 3, 9)), 'host-a'), []);
    assert.deepEqual(otherHolders(heldBy(owner('', 3, 9)), 'host-a'), []);
    assert.equal(otherHolders(heldBy(owner('host-b', 2, 1)), 'host-a').length, 1);
    const shared: LockInfo = {
      ...heldBy(undefined),
      mode: 'sh',
      sharedOwners: [owner('host-a', 1, 4), owner('host-c', 3, 2)],
    };
    assert.deepEqual(
      otherHolders(shared, 'host-a').map((holder) => holder.hostName),
      ['host-c'],
    );
  });
});
