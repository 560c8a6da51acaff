/**
 * `pv move` of the PV that holds a VG's hidden lockspace LV (`[lockspace]`), across three real
 * daemons that all heartbeat into it and hold LV leases in it while it moves
 * (docs/adr/0002-moving-the-lockspace-lv.md; the mover is src/server/lockspace-mover.ts, each
 * host's side src/heartbeat-store/movable-device.ts).
 *
 * Every test starts from the same VG, made again by setUpVg: vg0 on pv1..pv3 with the default
 * lockspace size (128 hosts, 1024 LVs: 72 MiB, whose copy takes long enough to kill the mover in
 * the middle of it), ioTimeout 500 ms (host dead 3 s) as in clvm.test.ts, the lockspace LV on
 * pv1 (vg create puts it on the first PV), and one LV per host on pv3, active exclusive there.
 * So `pv move pv1` moves the lockspace LV and nothing else.
 *
 * What a storage engineer would try: move it under fio on every host and check that the leases
 * still work in the new place; kill -9 the mover while it copies, and right after its commit
 * point, and finish from another host; name a target without room.
 */
import assert from 'node:assert/strict';
import path from 'node:path';
import { type TestContext, after, before, describe, test } from 'node:test';
import { setTimeout as delay } from 'node:timers/promises';
import { lockspaceLvName, type VgMetadata } from '../../src/clvm/types.js';
import { lvExtentCount } from '../../src/clvm/vg-queries.js';
import {
  TestCluster,
  checkFails,
  checkOk,
  makeSharedStorage,
  validVgOnDisk,
  vgsOf,
} from './helpers/clvm.js';
import { type DaemonHandle, cliBin, stopAllDaemons } from './helpers/daemon.js';
import {
  type BackgroundProcess,
  CleanupStack,
  type CommandResult,
  describeResult,
  missingTools,
  nbdUri,
  parseFioJson,
  runCommand,
  startBackground,
  waitFor,
} from './helpers/tools.js';

const mebibyte = 1024 * 1024;
const pvSizeBytes = 512 * mebibyte;
const ioTimeoutMs = 500;
/** The lease timings of vg0 (heartbeat-store/timings.ts): a silent host is dead after 6T. */
const hostDeadMs = 6 * ioTimeoutMs;
const hostNames = ['a', 'b', 'c'] as const;
/** What fio writes on each LV while the lockspace moves (rate-limited: see the first test). */
const loadSizeBytes = 16 * mebibyte;
/** What fio writes on an LV of a host that stays up while the mover was killed. */
const afterKillSizeBytes = 4 * mebibyte;
const skip = missingTools(['nbdinfo', 'fio']).length > 0 ? 'needs nbdinfo and fio' : false;

/** A line of a daemon's JSON log. */
type LogEntry = Record<string, unknown> & { message?: unknown };

/** LV name -> the hosts it is active on, as `daemon` sees it. */
async function activeOn(daemon: DaemonHandle): Promise<Record<string, string[]>> {
  const output = checkOk(
    await daemon.runCli(['lv', 'list', '-o', 'name,active_on', '--json']),
    'lv list',
  );
  const { lvs } = JSON.parse(output) as { lvs: Array<{ name: string; active_on: string[] }> };
  return Object.fromEntries(lvs.map((lv) => [lv.name, lv.active_on]));
}

/** The PVs (by device hint, the path here) that hold extents of LV `lvName`. */
function pvsHolding(metadata: VgMetadata, lvName: string): string[] {
  const lv = metadata.lvs.find((candidate) => candidate.name === lvName);
  assert.ok(lv !== undefined, `LV ${lvName} in the metadata`);
  const uuids = new Set(lv.segments.flatMap((segment) => segment.areas.map((area) => area.pvUuid)));
  return metadata.pvs.filter((pv) => uuids.has(pv.uuid)).map((pv) => pv.deviceHint);
}

function lockspaceLv(metadata: VgMetadata): VgMetadata['lvs'][number] {
  const lv = metadata.lvs.find(
    (candidate) => candidate.hidden && candidate.name === lockspaceLvName,
  );
  assert.ok(lv !== undefined, 'the metadata has the lockspace LV');
  return lv;
}

/** The JSON log lines of `daemon` written after `offset` with `message`. */
function logEntries(daemon: DaemonHandle, offset: number, message: string): LogEntry[] {
  return daemon
    .stderr()
    .slice(offset)
    .split('\n')
    .filter((line) => line.startsWith('{') && line.includes(message))
    .map((line) => JSON.parse(line) as LogEntry)
    .filter((entry) => entry.message === message);
}

/** fio on `vg0/<lvName>` through `host`'s NBD export, writing then verifying every block. */
function fioArgs(host: DaemonHandle, lvName: string, extra: readonly string[]): string[] {
  return [
    `--name=${lvName}`,
    '--ioengine=nbd',
    `--uri=${nbdUri(host.nbdHost, host.nbdPort, `vg0/${lvName}`)}`,
    '--rw=randwrite',
    '--bs=4k',
    '--iodepth=8',
    '--verify=crc32c',
    '--output-format=json',
    ...extra,
  ];
}

/** fio exited 0 with no error, and read back (verified) all `sizeBytes` it was given. */
function checkFioOutput(
  code: number | null,
  stdout: string,
  sizeBytes: number,
  what: string,
  details: () => string,
): void {
  assert.equal(code, 0, `${what}:\n${details()}`);
  const job = parseFioJson(stdout)[0];
  assert.ok(job !== undefined, `${what}: fio reports a job`);
  assert.equal(job.error, 0, `${what}: fio reports an error\n${details()}`);
  assert.equal(job.read.ioBytes, sizeBytes, `${what}: every block verified`);
}

function checkFioResult(result: CommandResult, sizeBytes: number, what: string): void {
  checkFioOutput(result.code, result.stdout, sizeBytes, what, () => describeResult(result));
}

async function checkFioPassed(
  fio: BackgroundProcess,
  sizeBytes: number,
  what: string,
): Promise<void> {
  const exit = await fio.waitForExit(120_000);
  checkFioOutput(exit.code, fio.stdout(), sizeBytes, what, () => fio.stderr());
}

describe('pv move of the lockspace PV, three daemons', { skip, timeout: 300_000 }, () => {
  const cleanup = new CleanupStack();
  let directory = '';
  let pvDirectory = '';
  let cluster: TestCluster;
  const pv = (index: number): string => path.join(pvDirectory, `pv${index}.img`);
  const daemon = (name: string): DaemonHandle => cluster.daemon(name);

  /** Where each host's log ends now: what a step logs is read after it. */
  function logOffsets(): Map<string, number> {
    return new Map([...cluster.daemons].map(([name, handle]) => [name, handle.stderr().length]));
  }

  /** Each host in `names` sees lv-<host> active on <host> and nowhere else, for every host. */
  async function checkEachLvActiveOnItsHost(names: readonly string[]): Promise<void> {
    for (const viewer of names) {
      const view = await activeOn(daemon(viewer));
      for (const holder of hostNames) {
        assert.deepEqual(
          view[`lv-${holder}`],
          [holder],
          `${viewer} sees lv-${holder} on ${holder}`,
        );
      }
    }
  }

  /** Removes vg0 if a test left it (deactivating and removing its LVs first). */
  async function removeVg(): Promise<void> {
    const a = daemon('a');
    if (!(await vgsOf(a)).some((vg) => vg.name === 'vg0')) return;
    for (const [lvName, holders] of Object.entries(await activeOn(a))) {
      for (const holder of holders) {
        checkOk(await daemon(holder).runCli(['lv', 'deactivate', `vg0/${lvName}`]), 'deactivate');
      }
      checkOk(await a.runCli(['lv', 'remove', `vg0/${lvName}`]), `lv remove ${lvName}`);
    }
    checkOk(await a.runCli(['vg', 'remove', 'vg0']), 'vg remove');
  }

  /** vg0 as the top of this file says, made again from scratch. */
  async function setUpVg(): Promise<void> {
    await removeVg();
    const a = daemon('a');
    checkOk(
      await a.runCli([
        'vg',
        'create',
        'vg0',
        pv(1),
        pv(2),
        pv(3),
        '--io-timeout',
        `${ioTimeoutMs}`,
      ]),
      'vg create',
    );
    const created = (await vgsOf(a)).find((vg) => vg.name === 'vg0');
    assert.ok(created !== undefined, 'a lists the new vg0');
    await cluster.waitForJoined(hostNames, 'vg0', created.uuid);
    assert.deepEqual(pvsHolding(await validVgOnDisk(pvDirectory), lockspaceLvName), [pv(1)]);
    for (const name of hostNames) {
      const host = daemon(name);
      checkOk(
        await host.runCli(['lv', 'create', '-n', `lv-${name}`, '-L', '32M', 'vg0', pv(3)]),
        `lv create lv-${name}`,
      );
      checkOk(
        await host.runCli(['lv', 'activate', `vg0/lv-${name}`, '--exclusive']),
        `activate lv-${name} on ${name}`,
      );
    }
  }

  before(async () => {
    const storage = await makeSharedStorage(
      { prefix: 'tandem-lockspace-move-', pvCount: 3, pvSizeBytes },
      cleanup,
    );
    directory = storage.directory;
    pvDirectory = storage.pvDirectory;
    cluster = new TestCluster(storage);
    await Promise.all(hostNames.map((name) => cluster.startHost(name)));
  });

  after(async () => {
    await stopAllDaemons();
    await cleanup.runAll();
  });

  test('pv move of the lockspace PV under fio on every host; the leases work in the new place', async (t) => {
    await setUpVg();
    const a = daemon('a');
    const b = daemon('b');
    const offsets = logOffsets();
    // fio on every host's LV, through that host, for the whole move: writes rate-limited to
    // 2 MiB/s, so that 16 MiB take 8 s, then every block is read back and checked.
    const fios = hostNames.map((name) => {
      const fio = startBackground(
        'fio',
        fioArgs(daemon(name), `lv-${name}`, [`--size=${loadSizeBytes}`, '--rate=,2m']),
        { cwd: directory },
      );
      cleanup.defer(`stop fio on lv-${name}`, () => fio.stop());
      return fio;
    });
    await delay(1_000);
    const moveStartedMs = performance.now();
    const moved = checkOk(await a.runCli(['pv', 'move', pv(1)]), 'pv move');
    t.diagnostic(`pv move took ${Math.round(performance.now() - moveStartedMs)} ms`);
    assert.match(moved, /vg0\/\[lockspace\]/);
    // Still in their write phase: the move ran while every host wrote through its LV.
    for (const fio of fios) assert.equal(fio.exit(), undefined, 'fio still runs after the move');
    for (const [index, fio] of fios.entries())
      await checkFioPassed(fio, loadSizeBytes, `fio on lv-${hostNames[index]}`);

    // Each host followed the move: wrote its slot to both copies, then left on the new one.
    const announced = logEntries(
      a,
      offsets.get('a') ?? 0,
      'lockspace move: announcing it to every host',
    );
    assert.equal(announced.length, 1, 'a announced one move');
    const epoch = announced[0]?.epoch;
    for (const name of hostNames) {
      const offset = offsets.get(name) ?? 0;
      const entered = logEntries(
        daemon(name),
        offset,
        'lockspace move: writing host slots to both copies',
      );
      assert.ok(
        entered.some((entry) => entry.epoch === epoch),
        `${name} entered move ${epoch}`,
      );
      const left = logEntries(daemon(name), offset, 'lockspace move: left');
      assert.ok(
        left.some((entry) => entry.epoch === epoch && /committed/.test(String(entry.why))),
        `${name} left move ${epoch} for the new copy: ${JSON.stringify(left)}`,
      );
    }

    const metadata = await validVgOnDisk(pvDirectory);
    assert.equal(metadata.lockspaceMove, undefined, 'no lockspace move recorded');
    assert.equal(metadata.move, undefined, 'no pv move step recorded');
    const holders = pvsHolding(metadata, lockspaceLvName);
    assert.ok(
      holders.length > 0 && !holders.includes(pv(1)),
      `lockspace LV on ${holders.join(' ')}`,
    );

    checkOk(await a.runCli(['vg', 'reduce', 'vg0', pv(1)]), 'vg reduce');
    const reduced = await validVgOnDisk(pvDirectory);
    assert.ok(!reduced.pvs.some((candidate) => candidate.deviceHint === pv(1)), 'pv1 left vg0');

    // The leases work in the new place: every host sees every LV where it is, a conflicting
    // activation is refused naming its holder, and a hand-over from a to b goes through.
    await checkEachLvActiveOnItsHost(hostNames);
    checkFails(
      await b.runCli(['lv', 'activate', 'vg0/lv-a', '--exclusive']),
      /active on a .*LV_ACTIVE_ELSEWHERE/s,
      'activate lv-a on b',
    );
    checkOk(await a.runCli(['lv', 'deactivate', 'vg0/lv-a']), 'deactivate lv-a on a');
    checkOk(await b.runCli(['lv', 'activate', 'vg0/lv-a', '--exclusive']), 'activate lv-a on b');
    // What a wrote during the move reads back through b.
    checkFioResult(
      await runCommand(
        'fio',
        [...fioArgs(b, 'lv-a', [`--size=${loadSizeBytes}`]), '--verify_only'],
        {
          cwd: directory,
          timeoutMs: 60_000,
        },
      ),
      loadSizeBytes,
      'fio verify_only of lv-a on b',
    );
    checkOk(await b.runCli(['lv', 'deactivate', 'vg0/lv-a']), 'deactivate lv-a on b');

    // A restarted daemon joins the lockspace where it is now, gets its activation back (a clean
    // stop deactivates, the restart restores: activation-restore.ts) and takes a new lease.
    const c = daemon('c');
    assert.equal(await c.stop(), 0, 'c stops cleanly');
    const restarted = await cluster.startHost('c', c.dataDir);
    await cluster.waitForJoined(['c'], 'vg0');
    await waitFor(async () => (await activeOn(b))['lv-c']?.[0] === 'c', {
      timeoutMs: 10_000,
      intervalMs: 100,
      description: 'lv-c active on c again',
    });
    checkOk(
      await restarted.runCli(['lv', 'activate', 'vg0/lv-a', '--exclusive']),
      'activate lv-a on c',
    );
    assert.deepEqual((await activeOn(a))['lv-a'], ['c']);
  });

  /**
   * kill -9 of the mover (a) once its log says `killAfter`; then b and c go on serving their LVs
   * and changing the VG, a pv move on b ends the move a left (`outcome`: from what a wrote in the
   * old copy's header before it died) and moves the lockspace LV off pv1, and a restarted a joins
   * the lockspace where it is then.
   */
  async function killTheMover(
    t: TestContext,
    killAfter: string,
    outcome: 'abort' | 'finish',
  ): Promise<void> {
    await setUpVg();
    const a = daemon('a');
    const b = daemon('b');
    const c = daemon('c');
    const offsets = logOffsets();
    const move = startBackground(
      process.execPath,
      [cliBin, '--server', a.grpcAddress, 'pv', 'move', pv(1)],
      { cwd: directory },
    );
    cleanup.defer('stop pv move', () => move.stop());
    const offsetOfA = offsets.get('a') ?? 0;
    await waitFor(() => a.stderr().indexOf(killAfter, offsetOfA) >= 0, {
      timeoutMs: 30_000,
      intervalMs: 2,
      description: `'${killAfter}' in a's log`,
    });
    a.process.kill('SIGKILL');
    const killedMs = performance.now();
    cluster.daemons.delete('a');
    assert.notEqual((await move.waitForExit(30_000)).code, 0, 'the pv move on a failed');
    const lastLines = a.stderr().trimEnd().split('\n');
    t.diagnostic(`a's last log line: ${lastLines[lastLines.length - 1]?.slice(0, 200) ?? ''}`);
    const committed = logEntries(
      a,
      offsetOfA,
      'lockspace move: committed (the new place is the lockspace)',
    );
    assert.equal(
      committed.length > 0,
      outcome === 'finish',
      `a ${committed.length > 0 ? 'passed' : 'did not reach'} the commit point before the kill`,
    );
    // Killed before M2: the record stays, the lockspace LV still maps pv1.
    const interrupted = await validVgOnDisk(pvDirectory);
    const record = interrupted.lockspaceMove;
    assert.ok(record !== undefined, 'the kill came before the move ended: its record is on disk');
    assert.equal(record.moverHostName, 'a');
    assert.deepEqual(pvsHolding(interrupted, lockspaceLvName), [pv(1)]);

    // b and c go on: I/O through their exports, and a VG change once a's VG lock (if it held it)
    // and the move a left have timed out with a (hosts leave a move whose mover is dead).
    const created = b
      .runCli(['lv', 'create', '-n', 'after-kill', '-L', '8M', 'vg0'])
      .then((result) => ({ result, elapsedMs: performance.now() - killedMs }));
    const [fioOnB, fioOnC] = await Promise.all(
      (['b', 'c'] as const).map((name) =>
        runCommand('fio', fioArgs(daemon(name), `lv-${name}`, [`--size=${afterKillSizeBytes}`]), {
          cwd: directory,
          timeoutMs: 60_000,
        }),
      ),
    );
    checkFioResult(fioOnB ?? assert.fail('fio on b'), afterKillSizeBytes, 'fio on lv-b');
    checkFioResult(fioOnC ?? assert.fail('fio on c'), afterKillSizeBytes, 'fio on lv-c');
    const { result: createResult, elapsedMs } = await created;
    checkOk(createResult, 'lv create on b after the kill');
    t.diagnostic(`lv create on b went through ${Math.round(elapsedMs)} ms after the kill`);
    assert.ok(elapsedMs < hostDeadMs + 5_000, `lv create on b took ${Math.round(elapsedMs)} ms`);

    // pv move on b: refused while a may be alive, then it ends a's move and moves the LV.
    await waitFor(
      async () => {
        const moveOnB = await b.runCli(['pv', 'move', pv(1)]);
        if (moveOnB.code !== 0) {
          assert.match(moveOnB.stderr, /a is moving the lockspace of VG vg0 .*MOVE_IN_PROGRESS/s);
        }
        return moveOnB.code === 0;
      },
      { timeoutMs: 20_000, intervalMs: 250, description: 'pv move on b once a counts as dead' },
    );
    const offsetOfB = offsets.get('b') ?? 0;
    const resumed = logEntries(b, offsetOfB, 'ending an interrupted lockspace move');
    assert.deepEqual(
      resumed.map((entry) => entry.epoch),
      [record.epoch],
      'b ended the move a left',
    );
    const ended = logEntries(b, offsetOfB, 'lockspace move: ending it').filter(
      (entry) => entry.epoch === record.epoch,
    );
    assert.deepEqual(
      ended.map((entry) => entry.outcome),
      [outcome],
    );
    // c left a's move on the copy the header named: the new one after the commit point, the old
    // one otherwise (seeing a dead, or the `aborted` mark b wrote).
    const leftOnC = logEntries(c, offsets.get('c') ?? 0, 'lockspace move: left').find(
      (entry) => entry.epoch === record.epoch,
    );
    assert.match(
      String(leftOnC?.why),
      outcome === 'finish' ? /committed/ : /mover is dead|aborted/,
      'c left the move of a',
    );

    const moved = await validVgOnDisk(pvDirectory);
    assert.equal(moved.lockspaceMove, undefined, 'no lockspace move recorded');
    assert.equal(moved.move, undefined, 'no pv move step recorded');
    const holders = pvsHolding(moved, lockspaceLvName);
    assert.ok(
      holders.length > 0 && !holders.includes(pv(1)),
      `lockspace LV on ${holders.join(' ')}`,
    );
    assert.ok(
      moved.lvs.some((lv) => lv.name === 'after-kill'),
      'the LV created after the kill',
    );
    for (const viewer of [b, c]) {
      const view = await activeOn(viewer);
      assert.deepEqual([view['lv-b'], view['lv-c']], [['b'], ['c']], 'lv-b, lv-c where they were');
    }

    // a comes back with its data dir: it joins the moved lockspace, sees the last commit, and
    // takes its LV's lease again there once its killed instance counts as dead.
    const restarted = await cluster.startHost('a', a.dataDir);
    await cluster.waitForJoined(['a'], 'vg0');
    const seen = (await vgsOf(restarted)).find((vg) => vg.name === 'vg0');
    assert.equal(Number(seen?.seqno), moved.seqno, 'a sees the metadata on disk');
    await waitFor(async () => (await activeOn(b))['lv-a']?.[0] === 'a', {
      timeoutMs: hostDeadMs + 10_000,
      intervalMs: 100,
      description: 'lv-a active on a again',
    });
  }

  test('the mover killed while it copies: b aborts its move and moves the lockspace LV anew', async (t) => {
    // The copy of 72 MiB takes a few hundred ms; the commit point comes after it.
    await killTheMover(t, 'lockspace move: every live host is ready; copying', 'abort');
  });

  test('the mover killed right after its commit point: b finishes its move', async (t) => {
    // After `forwarded E`, the mover waits until every host says `done` (one renewal, T/2) before
    // M2: the kill lands in that wait.
    await killTheMover(t, 'lockspace move: committed (the new place is the lockspace)', 'finish');
  });

  test('pv move --to a PV without room for the lockspace LV: a clear error, nothing moves', async () => {
    await setUpVg();
    const a = daemon('a');
    const b = daemon('b');
    // Leave pv2 one extent short of the lockspace LV.
    const initial = await validVgOnDisk(pvDirectory);
    const needed = lvExtentCount(lockspaceLv(initial));
    const { pvs } = JSON.parse(checkOk(await a.runCli(['pv', 'list', '--json']), 'pv list')) as {
      pvs: Array<{ path: string; freeExtentCount: number }>;
    };
    const free = pvs.find((candidate) => candidate.path === pv(2))?.freeExtentCount ?? 0;
    const fillMebibytes = ((free - needed + 1) * initial.extentSizeBytes) / mebibyte;
    checkOk(
      await a.runCli(['lv', 'create', '-n', 'fill', '-L', `${fillMebibytes}M`, 'vg0', pv(2)]),
      'lv create fill',
    );
    const before = await validVgOnDisk(pvDirectory);
    const offsets = logOffsets();

    // The source as its own target: refused before anything is committed.
    checkFails(
      await a.runCli(['pv', 'move', pv(1), '--to', pv(1)]),
      /cannot be a target of its own move.*INVALID_ARGUMENT/s,
      'pv move --to the source',
    );
    assert.equal((await validVgOnDisk(pvDirectory)).seqno, before.seqno, 'nothing committed');

    checkFails(
      await a.runCli(['pv', 'move', pv(1), '--to', pv(2)]),
      new RegExp(
        `the lockspace LV of VG vg0 needs ${needed} free extents on the target PVs .*only ${needed - 1} are free.*VG_NO_SPACE`,
        's',
      ),
      'pv move --to a PV without room',
    );
    // No move began: no record, no host entered one, the lockspace LV and every LV as before.
    const after = await validVgOnDisk(pvDirectory);
    assert.equal(after.lockspaceMove, undefined, 'no lockspace move recorded');
    assert.equal(after.move, undefined, 'no pv move step recorded');
    assert.deepEqual(after.lvs, before.lvs);
    for (const name of hostNames) {
      const logged = daemon(name)
        .stderr()
        .slice(offsets.get(name) ?? 0);
      assert.doesNotMatch(logged, /lockspace move/, `${name} logged no lockspace move`);
    }
    // The refusal comes before pv move commits anything: the source is still allocatable too.
    assert.equal(after.seqno, before.seqno, 'nothing committed');
    assert.deepEqual(after.pvs, before.pvs);

    // Every host still takes and gives back leases (none is stuck refusing lease writes).
    await checkEachLvActiveOnItsHost(hostNames);
    checkOk(await b.runCli(['lv', 'deactivate', 'vg0/lv-b']), 'deactivate lv-b');
    checkOk(await b.runCli(['lv', 'activate', 'vg0/lv-b', '--exclusive']), 'activate lv-b');

    // Without the bad target the same move goes through (to pv3: pv2 is full).
    checkOk(await a.runCli(['pv', 'move', pv(1)]), 'pv move without --to');
    assert.deepEqual(pvsHolding(await validVgOnDisk(pvDirectory), lockspaceLvName), [pv(3)]);
  });
});
