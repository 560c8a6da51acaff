import assert from 'node:assert/strict';
import path from 'node:path';
import { after, before, beforeEach, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { Command } from 'commander';
import { ApiConnection, CliError } from '../../src/cli/api.js';
import { registerPvCommands } from '../../src/cli/commands/pv.js';
import type { CliContext } from '../../src/cli/context.js';
import { ProgressReporter, progressBar } from '../../src/cli/progress.js';
import {
  FakeVolumeDaemon,
  cliRunners,
  gib,
  lv,
  progress,
  pv,
  vg,
} from './helpers/fake-volume-daemon.js';

const daemon = new FakeVolumeDaemon();
before(() => daemon.listen());
after(() => daemon.stop());
beforeEach(() => daemon.reset());
const { runCli, ok, usageError } = cliRunners(daemon);

describe('tandem pv', () => {
  test('create resolves a relative path, keeps nbd:// URIs, prints the PV', async () => {
    daemon.reply('CreatePv', { pv: pv({ vgName: '', path: path.resolve('disk.img') }) });
    const out = await ok(['pv', 'create', 'disk.img']);
    assert.match(out, /^physical volume .*\/disk\.img created \(10\.0 GiB, uuid pv-uuid-1\)$/m);
    await ok(['pv', 'create', 'nbd://10.0.0.5:10809/pv1', '--json']);
    assert.deepEqual(daemon.requests('CreatePv'), [
      { path: path.resolve('disk.img') },
      { path: 'nbd://10.0.0.5:10809/pv1' },
    ]);
  });

  test('list: table and JSON', async () => {
    daemon.reply('ListPvs', {
      pvs: [
        pv(),
        pv({ path: '/dev/sdc', allocatable: false }),
        pv({ path: '/dev/sdd', vgName: '', vgUuid: '', extentCount: 0, missing: true }),
      ],
    });
    assert.deepEqual((await ok(['pv', 'list'])).split('\n'), [
      'PV        VG       SIZE   FREE PE  ALLOC  STATUS   UUID',
      '/dev/sdb  vg0  10.0 GiB  100/2559  y      -        pv-uuid-1',
      '/dev/sdc  vg0  10.0 GiB  100/2559  n      -        pv-uuid-1',
      '/dev/sdd  -    10.0 GiB         -  -      missing  pv-uuid-1',
      '',
    ]);
    const json = JSON.parse(await ok(['pv', 'list', '--json'])) as { pvs: unknown[] };
    assert.deepEqual(json.pvs[0], {
      path: '/dev/sdb',
      uuid: 'pv-uuid-1',
      sizeBytes: 10 * gib,
      vgName: 'vg0',
      vgUuid: 'vg-uuid',
      extentCount: 2559,
      freeExtentCount: 100,
      missing: false,
      allocatable: true,
    });
    assert.equal((json.pvs[1] as Record<string, unknown>)['allocatable'], false);
    assert.equal((json.pvs[2] as Record<string, unknown>)['vgName'], null);
    daemon.reply('ListPvs', { pvs: [] });
    assert.equal(await ok(['pv', 'list']), 'No physical volumes.\n');
  });

  test('remove; a failure prints the status, the tandem code and exits 1', async () => {
    assert.equal(await ok(['pv', 'remove', '/dev/sdb']), 'physical volume /dev/sdb removed\n');
    daemon.fail('RemovePv', {
      code: grpc.status.FAILED_PRECONDITION,
      details: "PV /dev/sdb belongs to VG 'vg0'",
      tandemCode: 'PV_IN_USE',
    });
    const failed = await runCli(['pv', 'remove', '/dev/sdb']);
    assert.equal(failed.code, 1);
    assert.equal(failed.stderr, "tandem: PV /dev/sdb belongs to VG 'vg0' (PV_IN_USE)\n");
    assert.equal(daemon.requests('RemovePv').length, 2);
  });
});

describe('tandem pv change', () => {
  test('--allocatable takes y, n, yes, no; prints the PV or JSON', async () => {
    daemon.reply('ChangePv', { pv: pv({ allocatable: false }) });
    assert.equal(
      await ok(['pv', 'change', '/dev/sdb', '--allocatable', 'n']),
      'physical volume /dev/sdb changed: allocatable n\n',
    );
    await ok(['pv', 'change', 'disk.img', '--allocatable', 'No']);
    daemon.reply('ChangePv', { pv: pv() });
    const json = JSON.parse(
      await ok(['pv', 'change', '/dev/sdb', '--allocatable', 'yes', '--json']),
    ) as Record<string, unknown>;
    assert.equal(json['allocatable'], true);
    assert.equal(json['path'], '/dev/sdb');
    await ok(['pv', 'change', '/dev/sdb', '--allocatable', 'y']);
    assert.deepEqual(daemon.requests('ChangePv'), [
      { path: '/dev/sdb', allocatable: false, _allocatable: 'allocatable' },
      { path: path.resolve('disk.img'), allocatable: false, _allocatable: 'allocatable' },
      { path: '/dev/sdb', allocatable: true, _allocatable: 'allocatable' },
      { path: '/dev/sdb', allocatable: true, _allocatable: 'allocatable' },
    ]);
  });

  test('anything but y or n is a usage error, and the flag is required', async () => {
    await usageError(
      ['pv', 'change', '/dev/sdb', '--allocatable', 'maybe'],
      /expected y or n \(yes or no\), not 'maybe'/,
    );
    await usageError(
      ['pv', 'change', '/dev/sdb'],
      /required option '--allocatable <y\|n>' not specified/,
    );
    assert.equal(daemon.requests('ChangePv').length, 0);
  });
});

describe('tandem pv move', () => {
  const steps = [
    progress({}),
    progress({ movedExtentCount: 128, movedBytes: String(gib / 2) }),
    progress({ lvName: 'disk2', movedExtentCount: 256, movedBytes: String(gib) }),
    progress({ lvName: 'disk2', movedExtentCount: 512, movedBytes: String(2 * gib), done: true }),
  ];

  test('streams progress lines to a log (throttled), then a summary', async () => {
    daemon.onStream('MovePv', (call) => {
      for (const step of steps) call.write(step);
      call.end();
    });
    const result = await runCli([
      'pv',
      'move',
      '/dev/sdb',
      '--to',
      '/dev/sdc',
      'sdd',
      '--step-extents',
      '16',
    ]);
    assert.equal(result.code, 0, result.stderr);
    assert.deepEqual(daemon.requests('MovePv'), [
      { path: '/dev/sdb', toPaths: ['/dev/sdc', path.resolve('sdd')], stepExtents: 16 },
    ]);
    const refused = await runCli(['pv', 'move', '/dev/sdb', '--step-extents', '0']);
    assert.notEqual(refused.code, 0);
    assert.match(refused.stderr, /--step-extents.*expected an integer in 1\.\.4096/);
    const lines = result.stderr.trimEnd().split('\n');
    // Four updates within a second: the first and the last (done) are shown.
    assert.equal(lines[0], '  0% 0 B of 2.0 GiB (0/512 extents) vg0/disk1');
    assert.equal(lines.at(-1), '100% 2.0 GiB of 2.0 GiB (512/512 extents) vg0/disk2');
    assert.ok(lines.length <= 4);
    assert.equal(
      result.stdout,
      'moved 512 extents (2.0 GiB) of vg0/disk1, vg0/disk2 off /dev/sdb\n',
    );
  });

  test('draws a bar in place on a terminal', async () => {
    daemon.onStream('MovePv', (call) => {
      call.write(steps[0]);
      call.write(steps[3]);
      call.end();
    });
    const result = await runCli(['pv', 'move', '/dev/sdb'], { tty: true });
    assert.equal(result.code, 0, result.stderr);
    assert.equal(
      result.stderr,
      `\r${progressBar(0n, 1n)}  0 B of 2.0 GiB (0/512 extents) vg0/disk1\x1b[K` +
        `\r${progressBar(1n, 1n)}  2.0 GiB of 2.0 GiB (512/512 extents) vg0/disk2\x1b[K\n`,
    );
  });

  test('nothing to move; a stream that ends early or fails says so', async () => {
    daemon.onStream('MovePv', (call) => {
      call.write(progress({ lvName: '', totalExtentCount: 0, totalBytes: '0', done: true }));
      call.end();
    });
    assert.equal(
      await ok(['pv', 'move', '/dev/sdb']),
      'nothing to move: no extents in use on /dev/sdb\n',
    );
    daemon.onStream('MovePv', (call) => {
      call.write(steps[1]);
      call.end();
    });
    const early = await runCli(['pv', 'move', '/dev/sdb']);
    assert.equal(early.code, 1);
    assert.match(
      early.stderr,
      /ended before it was done; run the same command again .* \(ABORTED\)\n$/,
    );
    daemon.onStream('MovePv', (call) => {
      call.write(steps[1]);
      const failure = {
        code: grpc.status.RESOURCE_EXHAUSTED,
        details: 'no free extents',
        tandemCode: 'VG_NO_SPACE',
      };
      call.emit('error', daemon.statusOf(failure));
    });
    const failed = await runCli(['pv', 'move', '/dev/sdb']);
    assert.equal(failed.code, 1);
    assert.match(failed.stderr, /^tandem: no free extents \(VG_NO_SPACE\)$/m);
  });

  test('Ctrl-C cancels the call and says how to resume', async () => {
    let cancelled: () => void = () => assert.fail('set by the promise below');
    const serverSawCancel = new Promise<void>((resolve) => (cancelled = resolve));
    daemon.onStream('MovePv', (call) => {
      call.on('cancelled', () => cancelled());
      call.write(steps[1]);
    });
    const controller = new AbortController();
    const connection = new ApiConnection(daemon.address, 5000);
    let stderr = '';
    const context: CliContext = {
      connection: () => connection,
      stdout: { write: () => assert.fail('no summary after an interrupt') },
      // The first progress line stands for the user pressing Ctrl-C.
      stderr: { write: (text) => void ((stderr += text), controller.abort()) },
      interrupted: () => controller.signal,
    };
    const program = new Command('tandem').exitOverride();
    registerPvCommands(program, context);
    try {
      await assert.rejects(
        program.parseAsync(['node', 'tandem', 'pv', 'move', '/dev/sdb']),
        (error) => {
          assert.ok(error instanceof CliError);
          assert.equal(error.code, 'CANCELLED');
          assert.match(
            error.message,
            /stops after the current step .* run the same command again to resume/,
          );
          return true;
        },
      );
      await serverSawCancel;
      assert.match(stderr, /^ 25% 512\.0 MiB of 2\.0 GiB/);
    } finally {
      connection.close();
    }
  });
});

describe('progress reporter', () => {
  test('lines at most once a second off a terminal; the final one always', () => {
    let now = 0;
    let text = '';
    const reporter = new ProgressReporter({ write: (chunk) => void (text += chunk) }, () => now);
    const step = (done: bigint) => ({ done, total: 200n, text: `step ${done}` });
    reporter.update(step(0n));
    now = 500;
    reporter.update(step(50n));
    now = 1000;
    reporter.update(step(100n));
    now = 1200;
    reporter.update(step(200n), true);
    reporter.end();
    assert.equal(text, '  0% step 0\n 50% step 100\n100% step 200\n');
    assert.equal(progressBar(1n, 3n, 10), '[###-------]  33%');
    assert.equal(progressBar(0n, 0n, 4), '[####] 100%');
  });
});

describe('tandem vg', () => {
  test('create sends sizes as uint64 strings and the lockspace options', async () => {
    daemon.reply('CreateVg', { vg: vg({ lvCount: 0 }) });
    const out = await ok(['vg', 'create', 'vg0', '/dev/sdb', 'nbd://h:10809/pv2']);
    assert.equal(out, "volume group 'vg0' created: 2 PVs, 20.0 GiB (10.0 GiB free)\n");
    await ok([
      'vg',
      'create',
      'vg1',
      '/dev/sdb',
      '--extent-size',
      '8',
      '--max-hosts',
      '16',
      '--io-timeout',
      '500',
      '--max-lvs',
      '64',
    ]);
    assert.deepEqual(daemon.requests('CreateVg'), [
      {
        name: 'vg0',
        pvPaths: ['/dev/sdb', 'nbd://h:10809/pv2'],
        extentSizeBytes: '0',
        maxHosts: 0,
        ioTimeoutMs: 0,
        maxLvs: 0,
      },
      {
        name: 'vg1',
        pvPaths: ['/dev/sdb'],
        extentSizeBytes: String(8 * 1024 * 1024),
        maxHosts: 16,
        ioTimeoutMs: 500,
        maxLvs: 64,
      },
    ]);
  });

  test('create refuses a bad extent size or count before any call', async () => {
    await usageError(
      ['vg', 'create', 'v', '/dev/a', '--extent-size', '64K'],
      /expected a size from 1\.0 MiB to 1\.0 GiB/,
    );
    await usageError(
      ['vg', 'create', 'v', '/dev/a', '--extent-size', 'big'],
      /expected a size such as 20G/,
    );
    await usageError(
      ['vg', 'create', 'v', '/dev/a', '--max-hosts', '0'],
      /expected an integer in 1\.\.2000/,
    );
    await usageError(['vg', 'create', 'v'], /missing required argument 'pvs'/);
  });

  test('extend, reduce, rename, remove, restore', async () => {
    daemon.reply('ExtendVg', { vg: vg({ pvCount: 3 }) });
    assert.match(
      await ok(['vg', 'extend', 'vg0', '/dev/sdd', '/dev/sde']),
      /^volume group 'vg0' extended: 3 PVs/,
    );
    daemon.reply('ReduceVg', { vg: vg({ pvCount: 1 }) });
    assert.match(
      await ok(['vg', 'reduce', 'vg0', '/dev/sdd']),
      /^volume group 'vg0' reduced by \/dev\/sdd: 1 PV,/,
    );
    assert.equal(await ok(['vg', 'rename', 'vg0', 'vg9']), "volume group 'vg0' renamed to 'vg9'\n");
    assert.equal(await ok(['vg', 'remove', 'vg9']), "volume group 'vg9' removed\n");
    daemon.reply('RestoreVg', { vg: vg({ seqno: '15' }) });
    assert.match(
      await ok(['vg', 'restore', 'vg0', '--seqno', '9']),
      /restored from seqno 9 as seqno 15: /,
    );
    assert.deepEqual(
      daemon.calls.map((call) => [call.method, call.request]),
      [
        ['ExtendVg', { name: 'vg0', pvPaths: ['/dev/sdd', '/dev/sde'] }],
        ['ReduceVg', { name: 'vg0', pvPath: '/dev/sdd' }],
        ['RenameVg', { name: 'vg0', newName: 'vg9' }],
        ['RemoveVg', { name: 'vg9' }],
        ['RestoreVg', { name: 'vg0', seqno: '9' }],
      ],
    );
    daemon.reset();
    await usageError(['vg', 'restore', 'vg0', '--seqno', '0'], /expected a metadata seqno/);
    await usageError(['vg', 'restore', 'vg0'], /required option '--seqno <seqno>' not specified/);
  });

  test('list and history: tables and JSON', async () => {
    daemon.reply('ListVgs', {
      vgs: [vg(), vg({ name: 'vg1', joined: false, partial: true, moving: true })],
    });
    assert.deepEqual((await ok(['vg', 'list'])).split('\n'), [
      'VG   PVS  LVS      SIZE      FREE   EXTENT  SEQNO  STATUS',
      'vg0    2    1  20.0 GiB  10.0 GiB  4.0 MiB     12  joined as host 3',
      'vg1    2    1  20.0 GiB  10.0 GiB  4.0 MiB     12  not joined, partial, moving',
      '',
    ]);
    const vgs = (
      JSON.parse(await ok(['vg', 'list', '--json'])) as { vgs: Array<Record<string, unknown>> }
    ).vgs;
    assert.equal(vgs.length, 2);
    assert.deepEqual(
      [vgs[0]?.['sizeBytes'], vgs[0]?.['extentSizeBytes'], vgs[0]?.['hostId'], vgs[1]?.['hostId']],
      [20 * gib, 4 * 1024 * 1024, 3, null],
    );
    const version = {
      seqno: '12',
      updatedWallMs: '1700000000000',
      updatedBy: 'node-a',
      lastChange: 'lv create disk1',
      lvCount: 1,
    };
    daemon.reply('ListVgHistory', {
      versions: [version, { ...version, seqno: '11', lastChange: '', lvCount: 0 }],
    });
    assert.deepEqual((await ok(['vg', 'history', 'vg0'])).split('\n'), [
      'SEQNO  UPDATED               BY      LVS  CHANGE',
      '   12  2023-11-14T22:13:20Z  node-a    1  lv create disk1',
      '   11  2023-11-14T22:13:20Z  node-a    0  -',
      '',
    ]);
    const history = JSON.parse(await ok(['vg', 'history', 'vg0', '--json'])) as {
      versions: unknown[];
    };
    assert.deepEqual(history.versions[0], {
      seqno: 12,
      updatedAt: '2023-11-14T22:13:20.000Z',
      updatedBy: 'node-a',
      lastChange: 'lv create disk1',
      lvCount: 1,
    });
    assert.deepEqual(daemon.requests('ListVgHistory'), [{ name: 'vg0' }, { name: 'vg0' }]);
  });

  test('watch prints one line per event, or JSON lines', async () => {
    daemon.onStream('WatchVolumes', (call) => {
      call.write({ kind: 'VOLUME_EVENT_KIND_VG_CHANGED', vg: vg(), snapshot: true });
      call.write({ kind: 'VOLUME_EVENT_KIND_LV_RESIZED', lv: lv({ sizeBytes: String(25 * gib) }) });
      call.write({
        kind: 'VOLUME_EVENT_KIND_LV_DEACTIVATED',
        lv: lv(),
        reason: 'lease lost: fenced',
      });
      call.end();
    });
    const lines = (await ok(['vg', 'watch'])).trimEnd().split('\n');
    assert.deepEqual(
      lines.map((line) => line.replace(/^\S+ /, '')),
      [
        'vg-changed     vg0 seqno 12: lv create disk1 (now)',
        'lv-resized     vg0/disk1 25.0 GiB',
        'lv-deactivated vg0/disk1 (lease lost: fenced)',
      ],
    );
    const json = (await ok(['vg', 'watch', '--json']))
      .trimEnd()
      .split('\n')
      .map((line) => JSON.parse(line) as Record<string, unknown>);
    assert.equal(json.length, 3);
    assert.deepEqual(
      [json[0]?.['kind'], json[0]?.['snapshot'], json[0]?.['lv']],
      ['vg-changed', true, null],
    );
    assert.equal((json[1]?.['lv'] as Record<string, unknown>)['size_bytes'], 25 * gib);
  });
});
