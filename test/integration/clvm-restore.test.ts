/**
 * LV activations survive a restart of tandemd (docs/clvm.md, "Activation"): real daemons on PV
 * files, an LV activated exclusive on A and written with qemu-io, then A stopped with SIGTERM,
 * killed with -9, and restarted while B had taken the LV; and a start after a (simulated)
 * reboot, which must restore nothing.
 *
 * The VG lockspace uses ioTimeout 500 ms, so the earlier instance of a killed daemon is seen
 * dead about 3 s after the new one joined.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkOk } from './helpers/clvm.js';
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
const pvSizeBytes = 64 * mebibyte;
const exportName = 'vg0/disk';
/** The earlier instance is dead 6T (3 s) after the join; restore gives up at 10T (5 s). */
const restoredWithinMs = 15_000;
const skip = missingTools(['nbdinfo', 'qemu-io']).length > 0 ? 'needs nbdinfo and qemu-io' : false;

interface LvRow {
  name: string;
  active_on: string[];
}
interface StoredActivations {
  bootId: string;
  activations: Array<{ lvName: string; mode: string }>;
}

describe('LV activations across restarts of tandemd', { skip, timeout: 120_000 }, () => {
  const cleanup = new CleanupStack();
  let work = '';
  let pvDirectory = '';
  const daemons = new Map<string, DaemonHandle>();

  function daemon(name: string): DaemonHandle {
    const found = daemons.get(name);
    assert.ok(found !== undefined, `daemon ${name} runs`);
    return found;
  }
  async function start(name: string): Promise<DaemonHandle> {
    const handle = await startDaemon({
      hostName: name,
      dataDir: path.join(work, `data-${name}`),
      extraArgs: ['--vg-dir', pvDirectory],
    });
    daemons.set(name, handle);
    return handle;
  }
  async function stop(name: string): Promise<void> {
    const code = await daemon(name).stop();
    daemons.delete(name);
    assert.equal(code, 0, `SIGTERM stops ${name} with exit code 0`);
  }
  async function activeOn(name: string): Promise<string[]> {
    const output = checkOk(await daemon(name).runCli(['lv', 'list', '--json']), 'lv list');
    const row = (JSON.parse(output) as { lvs: LvRow[] }).lvs.find((lv) => lv.name === 'disk');
    assert.ok(row !== undefined, 'vg0/disk listed');
    return row.active_on;
  }
  async function exportSize(name: string): Promise<string | undefined> {
    const host = daemon(name);
    const info = await runCommand('nbdinfo', [
      '--size',
      nbdUri(host.nbdHost, host.nbdPort, exportName),
    ]);
    return info.code === 0 ? info.stdout.trim() : undefined;
  }
  async function qemuIo(name: string, command: string): Promise<void> {
    const host = daemon(name);
    const result = await runCommand('qemu-io', [
      '-f',
      'raw',
      '-c',
      command,
      nbdUri(host.nbdHost, host.nbdPort, exportName),
    ]);
    assert.ok(result.code === 0 && !result.timedOut, describeResult(result));
    assert.doesNotMatch(result.stdout + result.stderr, /fail|mismatch/i, describeResult(result));
  }
  function stored(name: string): StoredActivations {
    const file = path.join(work, `data-${name}`, 'activations.json');
    return JSON.parse(fs.readFileSync(file, 'utf8')) as StoredActivations;
  }
  async function waitRestored(name: string): Promise<void> {
    await waitFor(async () => (await exportSize(name)) === String(16 * mebibyte), {
      timeoutMs: restoredWithinMs,
      intervalMs: 200,
      description: `${exportName} served by ${name} again`,
    });
    assert.deepEqual(await activeOn(name), [name]);
  }

  before(async () => {
    work = makeTemporaryDirectory('tandem-clvm-restore-');
    cleanup.defer('remove the work directory', () =>
      fs.rmSync(work, { recursive: true, force: true }),
    );
    pvDirectory = path.join(work, 'pvs');
    fs.mkdirSync(pvDirectory);
    for (const index of [1, 2])
      makeSparseFile(path.join(pvDirectory, `pv${index}.img`), pvSizeBytes);
    const a = await start('a');
    const pvs = [1, 2].map((index) => path.join(pvDirectory, `pv${index}.img`));
    const options = ['--io-timeout', '500', '--max-hosts', '8', '--max-lvs', '16'];
    checkOk(await a.runCli(['vg', 'create', 'vg0', ...pvs, ...options]), 'vg create');
    checkOk(await a.runCli(['lv', 'create', '-n', 'disk', '-L', '16M', 'vg0']), 'lv create');
  });

  after(async () => {
    try {
      await stopAllDaemons();
    } finally {
      await cleanup.runAll();
    }
  });

  test('SIGTERM, start again: the export is back on A with its data', async () => {
    checkOk(await daemon('a').runCli(['lv', 'activate', exportName, '--exclusive']), 'activate');
    await qemuIo('a', 'write -P 0x5a 0 1M');
    assert.deepEqual(
      stored('a').activations.map((entry) => [entry.lvName, entry.mode]),
      [['disk', 'exclusive']],
    );
    await stop('a');
    assert.equal(stored('a').activations.length, 1, 'a clean stop keeps the record');
    await start('a');
    await waitRestored('a');
    await qemuIo('a', 'read -P 0x5a 0 1M');
    assert.match(daemon('a').stderr(), /"message":"LV activation restored"/);
  });

  test('kill -9, start again: restored once the earlier instance is seen dead', async () => {
    await qemuIo('a', 'write -P 0xa5 1M 1M');
    const killed = daemon('a');
    killed.process.kill('SIGKILL');
    await new Promise((resolve) => killed.process.once('exit', resolve));
    daemons.delete('a');
    await start('a');
    await waitRestored('a');
    // The new instance joined a free host id; the lease was the killed one's until it was dead.
    assert.match(daemon('a').stderr(), /"message":"waiting to restore an LV activation"/);
    await qemuIo('a', 'read -P 0x5a 0 1M');
    await qemuIo('a', 'read -P 0xa5 1M 1M');
  });

  test('active on B meanwhile: A warns, keeps off it and forgets it; B keeps it', async () => {
    await stop('a');
    const b = await start('b');
    checkOk(await b.runCli(['lv', 'activate', exportName, '--exclusive']), 'activate on B');
    await start('a');
    await waitFor(() => /"message":"LV activation not restored"/.test(daemon('a').stderr()), {
      timeoutMs: restoredWithinMs,
      intervalMs: 100,
      description: 'A warns that it did not restore the LV',
    });
    const warning = daemon('a')
      .stderr()
      .split('\n')
      .find((line) => line.includes('LV activation not restored'));
    assert.match(warning ?? '', /"level":"warn"/);
    assert.match(warning ?? '', /"holder":"b \(host id \d+, exclusive\)"/);
    assert.equal(await exportSize('a'), undefined, 'A does not serve it');
    assert.equal(await exportSize('b'), String(16 * mebibyte), 'B still serves it');
    assert.deepEqual(await activeOn('a'), ['b']);
    assert.deepEqual(stored('a').activations, [], "A's file no longer lists it");
    await qemuIo('b', 'read -P 0x5a 0 1M');
  });

  test('after a reboot (another boot id): nothing restored, the record cleared', async () => {
    await stop('b');
    const file = path.join(work, 'data-b', 'activations.json');
    const before = stored('b');
    assert.equal(before.activations.length, 1);
    fs.writeFileSync(file, JSON.stringify({ ...before, bootId: 'a-boot-before-this-one' }));
    await start('b');
    assert.match(
      daemon('b').stderr(),
      /"level":"info","message":"not restoring an LV activation".*rebooted/,
    );
    assert.equal(await exportSize('b'), undefined);
    assert.deepEqual(await activeOn('b'), []);
    assert.deepEqual(stored('b').activations, []);
  });
});
