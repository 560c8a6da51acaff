/**
 * PVs of every kind in one VG: a regular file, a loop block device (/dev/loopN over a file),
 * and a remote device behind NBD (nbdkit serving a file, as a LUN behind iSCSI would be). A
 * striped LV across the three is written and read back through the LV's NBD export, one of its
 * stripes is moved to a fourth PV (pv move) while fio writes and verifies, and everything is
 * removed again.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkFails, checkOk } from './helpers/clvm.js';
import {
  type DaemonHandle,
  makeTemporaryDirectory,
  startDaemon,
  stopAllDaemons,
} from './helpers/daemon.js';
import { canConnect, freePort } from './helpers/tcp-proxy.js';
import {
  CleanupStack,
  makeSparseFile,
  missingTools,
  nbdUri,
  parseFioJson,
  runCommand,
  startBackground,
  waitFor,
} from './helpers/tools.js';

const mebibyte = 1024 * 1024;
const missing = missingTools(['nbdkit', 'losetup', 'qemu-io', 'nbdinfo', 'fio']);
const skip =
  missing.length > 0
    ? `missing ${missing.join(', ')}`
    : process.getuid?.() !== 0
      ? 'needs root (losetup)'
      : false;

describe('a VG of a file, a loop device and an NBD-backed PV', { skip, timeout: 180_000 }, () => {
  const cleanup = new CleanupStack();
  let directory = '';
  let daemon: DaemonHandle | undefined;
  const pvs: string[] = [];

  before(async () => {
    directory = makeTemporaryDirectory('tandem-pv-kinds-');
    cleanup.defer('remove the test directory', () =>
      fs.rmSync(directory, { recursive: true, force: true }),
    );
    const filePv = makeSparseFile(path.join(directory, 'file-pv.img'), 128 * mebibyte);
    const loopBacking = makeSparseFile(path.join(directory, 'loop-backing.img'), 128 * mebibyte);
    const nbdBacking = makeSparseFile(path.join(directory, 'nbd-backing.img'), 128 * mebibyte);
    const loop = await runCommand('losetup', ['--find', '--show', loopBacking]);
    assert.equal(loop.code, 0, loop.stderr);
    const loopDevice = loop.stdout.trim();
    cleanup.defer(`detach ${loopDevice}`, async () => {
      await runCommand('losetup', ['-d', loopDevice]);
    });
    const port = await freePort();
    const nbdkit = startBackground('nbdkit', [
      '-f',
      '--exit-with-parent',
      '-p',
      String(port),
      '-i',
      '127.0.0.1',
      'file',
      nbdBacking,
    ]);
    cleanup.defer('stop nbdkit', () => nbdkit.stop());
    await waitFor(() => canConnect(port), { timeoutMs: 5_000, description: 'nbdkit listening' });
    pvs.push(filePv, loopDevice, `nbd://127.0.0.1:${port}/`);
    daemon = await startDaemon({ hostName: 'kinds' });
    cleanup.defer('stop the daemon', async () => {
      await daemon?.stop();
    });
  });

  after(async () => {
    await stopAllDaemons();
    await cleanup.runAll();
  });

  test('pv create on each kind, one VG, a striped LV across all three', async () => {
    assert.ok(daemon !== undefined);
    for (const pv of pvs) checkOk(await daemon.runCli(['pv', 'create', pv]), `pv create ${pv}`);
    const listed = JSON.parse(
      checkOk(await daemon.runCli(['pv', 'list', '--json']), 'pv list'),
    ) as {
      pvs: Array<{ path: string }>;
    };
    for (const pv of pvs)
      assert.ok(
        listed.pvs.some((row) => row.path === pv),
        `${pv} listed`,
      );
    checkOk(
      await daemon.runCli([
        'vg',
        'create',
        'mixed',
        ...pvs,
        '--io-timeout',
        '500',
        '--max-hosts',
        '4',
        '--max-lvs',
        '16',
      ]),
      'vg create',
    );
    checkOk(
      await daemon.runCli(['lv', 'create', '-n', 'wide', '-L', '48M', '--stripes', '3', 'mixed']),
      'lv create striped',
    );
    const lvs = JSON.parse(checkOk(await daemon.runCli(['lv', 'list', '--json']), 'lv list')) as {
      lvs: Array<{ name: string; stripes: number; segment_details: string[] }>;
    };
    const wide = lvs.lvs.find((lv) => lv.name === 'wide');
    assert.equal(wide?.stripes, 3);
    for (const pv of pvs) {
      assert.ok(
        wide.segment_details.some((area) => area.startsWith(`${pv}:`)),
        `a stripe on ${pv}: ${wide.segment_details.join(' ')}`,
      );
    }
    checkOk(await daemon.runCli(['lv', 'activate', 'mixed/wide', '--exclusive']), 'activate');
    const uri = nbdUri(daemon.nbdHost, daemon.nbdPort, 'mixed/wide');
    const io = await runCommand('qemu-io', [
      '-f',
      'raw',
      uri,
      '-c',
      'write -P 0x5a 0 24M',
      '-c',
      'write -P 0xa5 24M 24M',
      '-c',
      'read -P 0x5a 0 24M',
      '-c',
      'read -P 0xa5 24M 24M',
    ]);
    assert.equal(io.code, 0, io.stderr);
    assert.doesNotMatch(io.stdout, /Pattern verification failed/);
    checkOk(await daemon.runCli(['lv', 'deactivate', 'mixed/wide']), 'deactivate');
    checkOk(await daemon.runCli(['lv', 'activate', 'mixed/wide', '--shared']), 'activate again');
    const again = await runCommand('qemu-io', [
      '-f',
      'raw',
      '-r',
      uri,
      '-c',
      'read -P 0xa5 40M 8M',
    ]);
    assert.equal(again.code, 0, again.stderr);
    assert.doesNotMatch(again.stdout, /Pattern verification failed/);
  });
  test('pv move of one stripe while fio writes and verifies, then vg reduce', async () => {
    assert.ok(daemon !== undefined);
    checkOk(await daemon.runCli(['lv', 'deactivate', 'mixed/wide']), 'deactivate');
    checkOk(await daemon.runCli(['lv', 'activate', 'mixed/wide', '--exclusive']), 'activate');
    // The stripe to move: on the loop or NBD PV, whichever does not hold the lockspace LV.
    const listed = JSON.parse(
      checkOk(await daemon.runCli(['pv', 'list', '--json']), 'pv list'),
    ) as {
      pvs: Array<{ path: string; extentCount: number; freeExtentCount: number }>;
    };
    const used = (pv: string) => {
      const row = listed.pvs.find((candidate) => candidate.path === pv);
      assert.ok(row !== undefined, `${pv} listed`);
      return row.extentCount - row.freeExtentCount;
    };
    const source = [pvs[1] ?? '', pvs[2] ?? ''].find((pv) => used(pv) === 4);
    assert.ok(source !== undefined, 'a PV holding only a stripe (4 extents)');
    const spare = makeSparseFile(path.join(directory, 'spare-pv.img'), 128 * mebibyte);
    checkOk(await daemon.runCli(['pv', 'create', spare]), 'pv create spare');
    checkOk(await daemon.runCli(['vg', 'extend', 'mixed', spare]), 'vg extend');
    pvs.push(spare);

    const uri = nbdUri(daemon.nbdHost, daemon.nbdPort, 'mixed/wide');
    const fioArgs = [
      '--name=wide',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randwrite',
      '--bs=4k',
      '--iodepth=8',
      '--size=48m',
      '--verify=crc32c',
      '--output-format=json',
    ];
    const fio = startBackground('fio', [...fioArgs, '--time_based', '--runtime=4'], {
      cwd: directory,
    });
    cleanup.defer('stop fio', () => fio.stop());
    // Two-extent steps: the stripe moves in two checkpointed steps while fio writes.
    const moved = checkOk(
      await daemon.runCli(['pv', 'move', source, '--to', spare, '--step-extents', '2']),
      'pv move',
    );
    assert.match(moved, /moved 4 extents/);
    const exit = await fio.waitForExit(60_000);
    assert.equal(exit.code, 0, fio.stderr());
    assert.equal(parseFioJson(fio.stdout())[0]?.error, 0);
    assert.equal(used(source), 4, 'the listing was taken before the move');
    const after = JSON.parse(checkOk(await daemon.runCli(['pv', 'list', '--json']), 'pv list')) as {
      pvs: Array<{ path: string; extentCount: number; freeExtentCount: number }>;
    };
    const sourceRow = after.pvs.find((row) => row.path === source);
    assert.equal(sourceRow?.freeExtentCount, sourceRow?.extentCount, 'the source PV is empty');
    // Every block fio wrote, read back through the new mapping, still verifies.
    const verified = await runCommand('fio', [...fioArgs, '--rw=read', '--verify_only'], {
      cwd: directory,
      timeoutMs: 60_000,
    });
    assert.equal(verified.code, 0, verified.stderr);
    checkOk(await daemon.runCli(['vg', 'reduce', 'mixed', source]), 'vg reduce');
  });

  test('lv remove, vg remove, pv remove leave devices with no PV label', async () => {
    assert.ok(daemon !== undefined);
    checkFails(await daemon.runCli(['vg', 'remove', 'mixed']), /LV/, 'vg remove with an LV');
    checkFails(
      await daemon.runCli(['lv', 'remove', 'mixed/wide']),
      /active on this host/,
      'lv remove while active',
    );
    checkFails(
      await daemon.runCli(['vg', 'restore', 'mixed', '--seqno', '1']),
      /LV_ACTIVE/,
      'vg restore while an LV is active',
    );
    checkOk(await daemon.runCli(['lv', 'deactivate', 'mixed/wide']), 'deactivate');
    checkOk(await daemon.runCli(['lv', 'remove', 'mixed/wide']), 'lv remove');
    checkFails(
      await daemon.runCli(['pv', 'remove', pvs[0] ?? '']),
      /PV_IN_USE/,
      'pv remove of a VG member',
    );
    checkOk(await daemon.runCli(['vg', 'remove', 'mixed']), 'vg remove');
    const vgs = JSON.parse(checkOk(await daemon.runCli(['vg', 'list', '--json']), 'vg list')) as {
      vgs: unknown[];
    };
    assert.equal(vgs.vgs.length, 0);
    for (const pv of pvs) checkOk(await daemon.runCli(['pv', 'remove', pv]), `pv remove ${pv}`);
    const listed = JSON.parse(
      checkOk(await daemon.runCli(['pv', 'list', '--json']), 'pv list'),
    ) as { pvs: unknown[] };
    assert.equal(listed.pvs.length, 0);
    // A device that is no PV any more can become one again.
    checkOk(await daemon.runCli(['pv', 'create', pvs[0] ?? '']), 'pv create again');
  });
});
