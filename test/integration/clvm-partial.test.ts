/**
 * A VG that is not whole, and metadata that is not what it should be, on a real daemon over
 * three PV files in its --vg-dir (the VG lockspace's ioTimeout is 500 ms):
 * - a PV gone while the daemon was down: the VG opens partial; LVs off that PV serve their data,
 *   LVs on it are refused, new LVs go to the PVs present; the PV put back is found by the next
 *   rescan (every 5 s) and its stale metadata copies are repaired by the next commit;
 * - `vg history` and `vg restore`;
 * - a damaged metadata copy: the VG opens from the other copies, the log names the damaged one,
 *   a commit repairs it; files of random bytes in --vg-dir are no PVs and harm nothing.
 * The lockspace LV lives on the first PV, so the PV that goes missing is the second one: a VG
 * whose lockspace PV is missing cannot be joined, and nothing can be changed in it.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { rescanIntervalMs } from '../../src/server/volume-host.js';
import { checkFails, checkOk, readVgOnDisk } from './helpers/clvm.js';
import {
  type DaemonHandle,
  makeTemporaryDirectory,
  startDaemon,
  stopAllDaemons,
} from './helpers/daemon.js';
import {
  CleanupStack,
  describeResult,
  makeSparseFile,
  missingTools,
  nbdUri,
  runCommand,
  waitFor,
} from './helpers/tools.js';

const mebibyte = 1024 * 1024;
const pvSizeBytes = 256 * mebibyte;
/** docs/clvm.md, "On-disk format": MDA 0 follows the 4 KiB label; its ring follows its header. */
const mda0OffsetBytes = 4096;
const ringStartBytes = mda0OffsetBytes + 4096;
const recordHeaderBytes = 4096;
const skip = missingTools(['qemu-io']).length > 0 ? 'needs qemu-io' : false;

interface VgRow {
  name: string;
  seqno: string | number;
  partial: boolean;
  joined: boolean;
}
interface PvRow {
  path: string;
  uuid: string;
  vgName: string | null;
  missing: boolean;
}
interface LvRow {
  name: string;
  partial: boolean;
  active_on: string[];
  segment_details: string[];
}
interface VersionRow {
  seqno: string | number;
  lastChange: string;
  lvCount: number;
}

/** Flips bytes in the body of the record MDA 0's header names as committed. */
function damageCommittedRecord(pvPath: string): void {
  const handle = fs.openSync(pvPath, 'r+');
  try {
    const header = Buffer.alloc(64);
    fs.readSync(handle, header, 0, header.length, mda0OffsetBytes);
    assert.equal(header.toString('latin1', 0, 8), 'TNDMMDAH', 'an MDA header');
    const recordStart = ringStartBytes + Number(header.readBigUInt64LE(40));
    const recordMagic = Buffer.alloc(8);
    fs.readSync(handle, recordMagic, 0, 8, recordStart);
    assert.equal(recordMagic.toString('latin1'), 'TNDMMDAR', 'the committed record');
    const bodyStart = recordStart + recordHeaderBytes;
    const body = Buffer.alloc(16);
    fs.readSync(handle, body, 0, body.length, bodyStart);
    for (let index = 0; index < body.length; index++) body[index] = (body[index] ?? 0) ^ 0xff;
    fs.writeSync(handle, body, 0, body.length, bodyStart);
  } finally {
    fs.closeSync(handle);
  }
}

describe('partial VGs, history and damaged metadata', { skip, timeout: 240_000 }, () => {
  const cleanup = new CleanupStack();
  let work = '';
  let pvDirectory = '';
  let dataDir = '';
  let daemon: DaemonHandle | undefined;
  const pv = (index: number): string => path.join(pvDirectory, `pv${index}.img`);

  function host(): DaemonHandle {
    assert.ok(daemon !== undefined, 'the daemon runs');
    return daemon;
  }
  async function cli(args: readonly string[], what: string): Promise<string> {
    return checkOk(await host().runCli(args), what);
  }
  async function vg(): Promise<VgRow> {
    const rows = (JSON.parse(await cli(['vg', 'list', '--json'], 'vg list')) as { vgs: VgRow[] })
      .vgs;
    const row = rows.find((candidate) => candidate.name === 'vg0');
    assert.ok(row !== undefined, `vg0 listed: ${JSON.stringify(rows)}`);
    return row;
  }
  async function pvs(): Promise<PvRow[]> {
    return (JSON.parse(await cli(['pv', 'list', '--json'], 'pv list')) as { pvs: PvRow[] }).pvs;
  }
  async function lvs(): Promise<Map<string, LvRow>> {
    const rows = (JSON.parse(await cli(['lv', 'list', '--json'], 'lv list')) as { lvs: LvRow[] })
      .lvs;
    return new Map(rows.map((row) => [row.name, row]));
  }
  async function lvNames(): Promise<string[]> {
    return [...(await lvs()).keys()].sort();
  }
  /** The PV files each LV's extents are on. */
  async function placement(name: string): Promise<string[]> {
    const row = (await lvs()).get(name);
    assert.ok(row !== undefined, `LV ${name} listed`);
    return [...new Set(row.segment_details.map((area) => area.replace(/:\d+-\d+$/, '')))];
  }
  async function start(): Promise<void> {
    daemon = await startDaemon({ dataDir, hostName: 'a', extraArgs: ['--vg-dir', pvDirectory] });
  }
  async function stop(): Promise<void> {
    const running = host();
    daemon = undefined;
    assert.equal(await running.stop(), 0, 'SIGTERM stops the daemon with exit code 0');
  }
  /** Activates an LV, runs qemu-io commands on it, deactivates it. */
  async function qemuIo(lv: string, commands: readonly string[]): Promise<void> {
    await cli(['lv', 'activate', `vg0/${lv}`, '--exclusive'], `activate ${lv}`);
    try {
      const uri = nbdUri(host().nbdHost, host().nbdPort, `vg0/${lv}`);
      const result = await runCommand('qemu-io', [
        '-f',
        'raw',
        ...commands.flatMap((command) => ['-c', command]),
        uri,
      ]);
      assert.ok(result.code === 0 && !result.timedOut, describeResult(result));
      assert.doesNotMatch(result.stdout + result.stderr, /fail|mismatch/i, describeResult(result));
    } finally {
      await cli(['lv', 'deactivate', `vg0/${lv}`], `deactivate ${lv}`);
    }
  }
  const pattern = ['read -P 0xab 0 1M', 'read -P 0xcd 15M 1M', 'read -P 0 1M 14M'];

  before(async () => {
    work = makeTemporaryDirectory('tandem-clvm-partial-');
    cleanup.defer('remove the work directory', () =>
      fs.rmSync(work, { recursive: true, force: true }),
    );
    pvDirectory = path.join(work, 'pvs');
    dataDir = path.join(work, 'data');
    fs.mkdirSync(pvDirectory);
    fs.mkdirSync(dataDir);
    for (const index of [1, 2, 3]) makeSparseFile(pv(index), pvSizeBytes);
    await start();
  });

  after(async () => {
    try {
      await stopAllDaemons();
    } finally {
      await cleanup.runAll();
    }
  });

  test('PV paths after the VG name restrict where an LV goes; y holds a pattern', async () => {
    const options = ['--io-timeout', '500', '--max-hosts', '8', '--max-lvs', '64'];
    await cli(['vg', 'create', 'vg0', pv(1), pv(2), pv(3), ...options], 'vg create');
    await cli(['lv', 'create', '-n', 'x', '-L', '16M', 'vg0', pv(2)], 'lv create x');
    await cli(['lv', 'create', '-n', 'y', '-L', '16M', 'vg0', pv(3)], 'lv create y');
    assert.deepEqual(await placement('x'), [pv(2)]);
    assert.deepEqual(await placement('y'), [pv(3)]);
    await qemuIo('y', ['write -P 0xab 0 1M', 'write -P 0xcd 15M 1M', 'flush']);
    await qemuIo('y', pattern);
  });

  test('a PV gone while the daemon was down: partial; y serves, x is refused', async () => {
    await stop();
    fs.renameSync(pv(2), path.join(work, 'pv2.img'));
    await start();
    const row = await vg();
    assert.equal(row.partial, true, 'vg list says partial');
    assert.equal(row.joined, true, 'the lockspace (on pv1) is joined');
    assert.match(host().stderr(), /"message":"VG found".*"missingPvCount":1/, 'the log says so');
    const missing = (await pvs()).filter((candidate) => candidate.missing);
    assert.deepEqual(
      missing.map((candidate) => [candidate.path, candidate.vgName]),
      [[pv(2), 'vg0']],
      'pv list shows pv2 missing, by the path it was last seen at',
    );
    const rows = await lvs();
    assert.equal(rows.get('x')?.partial, true);
    assert.equal(rows.get('y')?.partial, false);
    await qemuIo('y', pattern);
    checkFails(
      await host().runCli(['lv', 'activate', 'vg0/x', '--exclusive']),
      /VG_PARTIAL.*missing|missing.*VG_PARTIAL/s,
      'activate x',
    );
    // The lease the refused activation took for a moment is free again.
    assert.deepEqual((await lvs()).get('x')?.active_on, [], 'x is active nowhere');
    await cli(['lv', 'create', '-n', 'z', '-L', '8M', 'vg0'], 'lv create z on the PVs present');
    assert.ok(!(await placement('z')).includes(pv(2)), 'z avoids the missing PV');
    checkFails(
      await host().runCli(['lv', 'create', '-n', 'w', '-L', '8M', 'vg0', pv(2)]),
      /PV_NOT_FOUND/,
      'lv create on the missing PV',
    );
  });

  test('the PV put back is found by the next rescan; x activates; a commit repairs it', async () => {
    fs.renameSync(path.join(work, 'pv2.img'), pv(2));
    await waitFor(async () => !(await vg()).partial, {
      // One rescan interval, and as much again for a loaded 2-core machine.
      timeoutMs: 2 * rescanIntervalMs,
      intervalMs: 200,
      description: 'vg0 no longer partial',
    });
    assert.deepEqual(
      (await pvs()).filter((candidate) => candidate.missing),
      [],
      'no PV missing',
    );
    const pv2Uuid = (await pvs()).find((candidate) => candidate.path === pv(2))?.uuid;
    const stale = await readVgOnDisk(pvDirectory);
    assert.deepEqual(stale.stalePvUuids, [pv2Uuid], 'pv2 missed the commits made without it');
    await qemuIo('x', ['write -P 0x5a 0 1M', 'read -P 0x5a 0 1M']);
    await cli(['lv', 'create', '-n', 'after', '-L', '4M', 'vg0'], 'a commit');
    const repaired = await readVgOnDisk(pvDirectory);
    assert.deepEqual(repaired.stalePvUuids, [], 'every copy is current again');
    assert.equal(repaired.copies.length, 6, 'two MDAs on each of the three PVs');
    for (const copy of repaired.copies) assert.equal(copy.seqno, repaired.metadata.seqno);
    assert.equal(Number((await vg()).seqno), repaired.metadata.seqno);
  });

  test('vg history lists versions newest first; vg restore brings an older set of LVs back', async () => {
    const history = async (): Promise<VersionRow[]> =>
      (
        JSON.parse(await cli(['vg', 'history', 'vg0', '--json'], 'history')) as {
          versions: VersionRow[];
        }
      ).versions;
    const before = await history();
    const seqnos = before.map((version) => Number(version.seqno));
    const current = Number((await vg()).seqno);
    assert.equal(seqnos[0], current, 'the newest version first');
    for (let index = 1; index < seqnos.length; index++) {
      assert.ok((seqnos[index] ?? 0) < (seqnos[index - 1] ?? 0), `decreasing: ${seqnos}`);
    }
    const zCreated = before.find((version) => version.lastChange === 'lv create z');
    assert.ok(zCreated !== undefined, `a version made by lv create z: ${JSON.stringify(before)}`);
    const target = Number(zCreated.seqno) - 1;
    assert.ok(seqnos.includes(target), `the version before z is kept: ${seqnos}`);
    assert.deepEqual(await lvNames(), ['after', 'x', 'y', 'z']);

    const restored = await cli(['vg', 'restore', 'vg0', '--seqno', String(target)], 'restore');
    assert.match(restored, new RegExp(`restored from seqno ${target} as seqno ${current + 1}`));
    assert.deepEqual(await lvNames(), ['x', 'y'], 'the LVs of that version');
    assert.equal(Number((await vg()).seqno), current + 1, 'a new seqno, not the old one');
    const afterRestore = await history();
    assert.equal(Number(afterRestore[0]?.seqno), current + 1);
    assert.match(afterRestore[0]?.lastChange ?? '', new RegExp(`restore.*${target}`));
    assert.deepEqual(
      afterRestore.map((version) => Number(version.seqno)),
      [current + 1, ...seqnos],
      'the history grows by the restore (the 1 MiB rings hold every version so far)',
    );
    // The restored LVs are whole: y still holds its pattern, x what was written since.
    await qemuIo('y', pattern);
    await qemuIo('x', ['read -P 0x5a 0 1M']);

    checkFails(
      await host().runCli(['vg', 'restore', 'vg0', '--seqno', '9999']),
      /no version 9999; kept: \d+.*NOT_FOUND/s,
      'restore of an unknown seqno',
    );
    checkFails(
      await host().runCli(['vg', 'restore', 'vg0', '--seqno', '0']),
      /expected a metadata seqno/,
      'restore of seqno 0',
    );
    assert.equal(Number((await vg()).seqno), current + 1, 'failed restores commit nothing');
  });

  test('a damaged copy: the VG opens from the others, the log names it, a commit repairs it', async () => {
    const seqno = Number((await vg()).seqno);
    await stop();
    damageCommittedRecord(pv(1));
    const damaged = await readVgOnDisk(pvDirectory);
    assert.equal(damaged.metadata.seqno, seqno, 'the reader takes another copy');
    const pv1Uuid = damaged.metadata.pvs.find((candidate) => candidate.deviceHint === pv(1))?.uuid;
    const bad = damaged.copies.filter((copy) => copy.seqno === undefined);
    assert.deepEqual(
      bad.map((copy) => [copy.pvUuid, copy.mda]),
      [[pv1Uuid, 0]],
      'pv1 MDA 0 is corrupt',
    );
    await start();
    const row = await vg();
    assert.equal(Number(row.seqno), seqno);
    assert.equal(row.partial, false);
    const warnings = host()
      .stderr()
      .split('\n')
      .filter((line) => line.includes('"level":"warn"') && line.includes(pv(1)));
    assert.ok(
      warnings.some((line) => /MDA 0/.test(line) && /CRC|corrupt/i.test(line)),
      `the log names the damaged copy:\n${host().stderr().slice(-4000)}`,
    );
    await qemuIo('y', pattern);
    await cli(['lv', 'create', '-n', 'repair', '-L', '4M', 'vg0'], 'a commit');
    const repaired = await readVgOnDisk(pvDirectory);
    assert.deepEqual(repaired.stalePvUuids, [], 'the damaged copy was rewritten');
    for (const copy of repaired.copies) assert.equal(copy.seqno, seqno + 1);
  });

  test('files of random bytes in --vg-dir are no PVs and stop nothing', async () => {
    fs.writeFileSync(path.join(pvDirectory, 'junk.img'), crypto.randomBytes(8 * mebibyte));
    fs.writeFileSync(path.join(pvDirectory, 'tiny.img'), crypto.randomBytes(100));
    makeSparseFile(pv(4), pvSizeBytes);
    // pv create scans every device before it answers: a scan the junk broke would fail it.
    await cli(['pv', 'create', pv(4)], 'pv create beside the junk');
    const expected = [
      [pv(1), 'vg0'],
      [pv(2), 'vg0'],
      [pv(3), 'vg0'],
      [pv(4), null],
    ];
    const listed = async (): Promise<Array<[string, string | null]>> =>
      (await pvs()).map((candidate) => [candidate.path, candidate.vgName]);
    assert.deepEqual(await listed(), expected, 'the PVs, and no junk');
    // And the scan at a start.
    await stop();
    await start();
    assert.deepEqual(await listed(), expected, 'the PVs after a restart, and no junk');
    assert.equal((await vg()).partial, false);
    await cli(['lv', 'create', '-n', 'late', '-L', '4M', 'vg0'], 'lv create');
    await qemuIo('y', pattern);
    assert.doesNotMatch(host().stderr(), /junk\.img|tiny\.img/, 'junk is not worth a warning');
  });
});
