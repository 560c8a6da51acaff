/**
 * The VG name lock (src/server/vg-name-lock.ts): which lockspace holds it (the global one, else
 * the oldest VG's, else none), that the work runs between the acquire and the release with a
 * rescan in between, that the lease is released when the work fails, and what a host that cannot
 * take it says.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { TandemError, isTandemError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { ClusteredVg } from '../../src/clvm/volume-group.js';
import type { LockInfo, LockService } from '../../src/locking/types.js';
import {
  type NameLockCandidate,
  type NameLockHost,
  VgNameLock,
  checkVgNameFree,
  nameLockVgOf,
  vgNamesLockName,
} from '../../src/server/vg-name-lock.js';
import type { VgEntry } from '../../src/server/volume-host.js';
import { newVg } from './clvm-metadata-fixtures.js';

function entryOf(name: string, uuid: string, createdWallMs: number, removing = false): VgEntry {
  const metadata = { ...newVg([8]), name, uuid, createdWallMs, removing };
  return {
    vg: new ClusteredVg(metadata, [], silentLogger),
    member: undefined,
    joining: undefined,
    joinError: undefined,
    lockspace: undefined,
  };
}

const freeInfo: LockInfo = {
  name: vgNamesLockName,
  mode: 'free',
  owner: undefined,
  sharedOwners: [],
  version: 0,
  value: Buffer.alloc(0),
  sinceWallMs: 0,
  heldHere: undefined,
};

/** A lock service that records its calls in `events` ("acquire global", "release global"). */
function fakeLocks(
  label: string,
  events: string[],
  options: { refuse?: TandemError; holder?: LockInfo } = {},
): LockService {
  const unused = (): never => {
    throw new Error('not used by the name lock');
  };
  return {
    acquire: async (name, acquireOptions) => {
      events.push(`acquire ${label} ${name} ${acquireOptions.mode} ${acquireOptions.waitMs}`);
      if (options.refuse !== undefined) throw options.refuse;
      return freeInfo;
    },
    release: async (name) => {
      events.push(`release ${label} ${name}`);
    },
    inspect: async () => options.holder ?? freeInfo,
    convert: unused,
    setValue: unused,
    list: unused,
    held: unused,
    watch: unused,
  };
}

/** A host knowing `entries`, joined to the lockspaces in `joined` (by VG uuid). */
function fakeHost(
  entries: VgEntry[],
  joined: Map<string, LockService>,
  events: string[],
  refreshFails = false,
): NameLockHost {
  return {
    rescan: async () => {
      events.push('rescan');
    },
    list: () => entries,
    refresh: async (entry) => {
      events.push(`refresh ${entry.vg.name}`);
      if (refreshFails) throw new TandemError('DISK_IO', 'the PV is gone');
    },
    locksOf: (entry) => {
      const locks = joined.get(entry.vg.uuid);
      if (locks === undefined) {
        throw new TandemError(
          'LOCKSPACE_NOT_JOINED',
          `this host has not joined the lockspace of VG ${entry.vg.name} (not joined)`,
        );
      }
      return locks;
    },
    whenLockspaceSettled: async () => undefined,
  };
}

function nameLock(host: NameLockHost, global: LockService | undefined): VgNameLock {
  return new VgNameLock({
    host: () => host,
    globalLocks: () => global,
    logger: silentLogger,
    waitMs: 1234,
  });
}

describe('nameLockVgOf: which VG lockspace holds the name lock', () => {
  const vg = (uuid: string, createdWallMs: number, removing?: boolean): NameLockCandidate => ({
    uuid,
    createdWallMs,
    removing,
  });

  it('takes the oldest VG, the smallest uuid among equally old ones, none being removed', () => {
    assert.equal(nameLockVgOf([]), undefined);
    assert.equal(nameLockVgOf([vg('b', 20), vg('a', 30), vg('c', 10)])?.uuid, 'c');
    assert.equal(nameLockVgOf([vg('b', 10), vg('a', 10), vg('c', 10)])?.uuid, 'a');
    assert.equal(nameLockVgOf([vg('a', 5, true), vg('b', 10)])?.uuid, 'b');
    assert.equal(nameLockVgOf([vg('a', 5, true)]), undefined);
  });

  it('every host that sees the same VGs picks the same one, whatever order it lists them in', () => {
    const candidate = fc.record({
      uuid: fc.uuid(),
      createdWallMs: fc.integer({ min: 0, max: 20 }),
      removing: fc.option(fc.boolean(), { nil: undefined }),
    });
    const listings = fc
      .uniqueArray(candidate, { selector: (item) => item.uuid, maxLength: 12 })
      .chain((vgs) =>
        fc.tuple(
          fc.constant(vgs),
          fc.shuffledSubarray(vgs, { minLength: vgs.length, maxLength: vgs.length }),
        ),
      );
    fc.assert(
      fc.property(listings, ([vgs, shuffled]) => {
        const chosen = nameLockVgOf(vgs);
        assert.equal(nameLockVgOf(shuffled)?.uuid, chosen?.uuid);
        const live = vgs.filter((item) => item.removing !== true);
        assert.equal(chosen === undefined, live.length === 0);
        for (const other of live) {
          assert.ok(chosen !== undefined);
          const before =
            chosen.createdWallMs < other.createdWallMs ||
            (chosen.createdWallMs === other.createdWallMs && chosen.uuid <= other.uuid);
          assert.ok(before, `${chosen.uuid} comes before ${other.uuid}`);
        }
      }),
    );
  });
});

describe('VgNameLock.hold', () => {
  const vg0 = entryOf('vg0', 'uuid-0', 100);
  const vg1 = entryOf('vg1', 'uuid-1', 50);
  const removing = entryOf('vg2', 'uuid-2', 10, true);

  it('with a global lockspace: the lease there, a rescan under it, then the work', async () => {
    const events: string[] = [];
    const joined = new Map([[vg0.vg.uuid, fakeLocks('vg0', events)]]);
    const lock = nameLock(fakeHost([vg0], joined, events), fakeLocks('global', events));
    const result = await lock.hold('vg create vgx', async () => {
      events.push('work');
      return 7;
    });
    assert.equal(result, 7);
    assert.deepEqual(events, [
      'acquire global vg-names ex 1234',
      'rescan',
      'refresh vg0',
      'work',
      'release global vg-names',
    ]);
  });

  it("without one: the oldest VG's lockspace, chosen on a fresh view", async () => {
    const events: string[] = [];
    const joined = new Map([
      [vg0.vg.uuid, fakeLocks('vg0', events)],
      [vg1.vg.uuid, fakeLocks('vg1', events)],
      [removing.vg.uuid, fakeLocks('vg2', events)],
    ]);
    const host = fakeHost([vg0, vg1, removing], joined, events);
    await nameLock(host, undefined).hold('vg rename vg0 vgn', async () => {
      events.push('work');
    });
    assert.deepEqual(events, [
      'rescan',
      'refresh vg0',
      'refresh vg1',
      'refresh vg2',
      'acquire vg1 vg-names ex 1234',
      'rescan',
      'refresh vg0',
      'refresh vg1',
      'refresh vg2',
      'work',
      'release vg1 vg-names',
    ]);
  });

  it('with no lockspace at all (the first VG): the work runs without a lease', async () => {
    const events: string[] = [];
    await nameLock(fakeHost([], new Map(), events), undefined).hold('vg create vg0', async () => {
      events.push('work');
    });
    assert.deepEqual(events, ['rescan', 'work']);
  });

  it('releases the lease when the work fails', async () => {
    const events: string[] = [];
    const lock = nameLock(fakeHost([], new Map(), events), fakeLocks('global', events));
    await assert.rejects(
      lock.hold('vg create vgx', async () => {
        events.push('work');
        throw new TandemError('VG_EXISTS', 'a VG named vgx exists');
      }),
      (error: unknown) => isTandemError(error, 'VG_EXISTS'),
    );
    assert.deepEqual(events, [
      'acquire global vg-names ex 1234',
      'rescan',
      'work',
      'release global vg-names',
    ]);
  });

  it('a VG that cannot be re-read keeps its last name read; the work still runs', async () => {
    const events: string[] = [];
    const lock = nameLock(fakeHost([vg0], new Map(), events, true), fakeLocks('global', events));
    await lock.hold('vg create vgx', async () => {
      events.push('work');
    });
    assert.ok(events.includes('work'));
  });

  it('a lease not granted in time: LOCK_TIMEOUT naming the holder, and no work', async () => {
    const events: string[] = [];
    const holder: LockInfo = {
      ...freeInfo,
      mode: 'ex',
      owner: { hostId: 2, generation: 3, hostName: 'host-b' },
      version: 9,
    };
    const refuse = new TandemError('LOCK_TIMEOUT', 'vg-names: not granted within 1234 ms');
    const global = fakeLocks('global', events, { refuse, holder });
    const lock = nameLock(fakeHost([], new Map(), events), global);
    await assert.rejects(
      lock.hold('vg create vgx', async () => {
        events.push('work');
      }),
      (error: unknown) => {
        assert.ok(isTandemError(error, 'LOCK_TIMEOUT'));
        assert.match(
          error.message,
          /^vg create vgx: the VG name lock \(vg-names in the global lockspace\) is held by host-b \(host id 2, exclusive\); not granted within 1234 ms$/,
        );
        assert.equal(error.cause, refuse);
        return true;
      },
    );
    assert.deepEqual(events, ['acquire global vg-names ex 1234']);
  });

  it("the chosen VG's lockspace not joined here: a refusal that says where the lock lives", async () => {
    const events: string[] = [];
    const joined = new Map([[vg0.vg.uuid, fakeLocks('vg0', events)]]);
    const lock = nameLock(fakeHost([vg0, vg1], joined, events), undefined);
    await assert.rejects(
      lock.hold('vg create vgx', async () => {
        events.push('work');
      }),
      (error: unknown) => {
        assert.ok(isTandemError(error, 'LOCKSPACE_NOT_JOINED'));
        assert.match(error.message, /the VG name lock lives in the lockspace of VG vg1/);
        return true;
      },
    );
    assert.ok(!events.includes('work'), 'no work without the lease');
    assert.ok(!events.some((event) => event.startsWith('acquire')), 'not taken elsewhere either');
  });
});

describe('checkVgNameFree', () => {
  it('refuses a name a known VG has, saying which VG and its last change', () => {
    checkVgNameFree([entryOf('vg0', 'uuid-0', 1)], 'vg1');
    assert.throws(
      () => checkVgNameFree([entryOf('vg0', 'uuid-0', 1)], 'vg0'),
      (error: unknown) => {
        assert.ok(isTandemError(error, 'VG_EXISTS'));
        assert.match(
          error.message,
          /^a VG named vg0 exists \(uuid uuid-0, last change on host-a: /,
        );
        return true;
      },
    );
  });
});
