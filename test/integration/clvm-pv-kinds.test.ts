/**
 * PVs of every kind in one VG: a regular file, a loop block device (/dev/loopN over a file),
 * and a remote device behind NBD (nbdkit serving a file, as a LUN behind iSCSI would be). A
 * striped LV across the three is written and read back through the LV's NBD export, and each
 * PV is checked to hold its share of the data.
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
  runCommand,
  startBackground,
  waitFor,
} from './helpers/tools.js';

const mebibyte = 1024 * 1024;
const missing = missingTools(['nbdkit', 'losetup', 'qemu-io', 'nbdinfo']);
const skip =
  missing.length > 0
    ? `missing ${missing.join(', ')}`
    : process.getuid?.() !== 0
      ? 'needs root (losetup)'
      : false;

describe('a VG of a file, a loop device and an NBD-backed PV', { skip, timeout: 120_000 }, () => {
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
