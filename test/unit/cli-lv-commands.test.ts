import assert from 'node:assert/strict';
import { after, before, beforeEach, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { FakeVolumeDaemon, cliRunners, gib, lv } from './helpers/fake-volume-daemon.js';

const daemon = new FakeVolumeDaemon();
before(() => daemon.listen());
after(() => daemon.stop());
beforeEach(() => daemon.reset());
const { runCli, ok, usageError } = cliRunners(daemon);

describe('tandem lv: changes', () => {
  test('create: size in MiB by default, tags, stripes, allocation, PVs', async () => {
    daemon.reply('CreateLv', { lv: lv() });
    assert.equal(
      await ok(['lv', 'create', '-n', 'disk1', '-L', '20G', 'vg0']),
      'logical volume vg0/disk1 created (20.0 GiB)\n',
    );
    await ok([
      'lv',
      'create',
      '-n',
      'disk2',
      '-L',
      '4096',
      '--tag',
      'a',
      '--tag',
      'b',
      '--stripes',
      '2',
      '--stripe-size',
      '128',
      '--alloc',
      'contiguous',
      'vg0',
      '/dev/sdb',
      '/dev/sdc',
    ]);
    assert.deepEqual(daemon.requests('CreateLv'), [
      {
        vgName: 'vg0',
        name: 'disk1',
        sizeBytes: String(20 * gib),
        tags: [],
        stripes: 0,
        stripeSizeBytes: '0',
        allocationPolicy: '',
        pvPaths: [],
      },
      {
        vgName: 'vg0',
        name: 'disk2',
        sizeBytes: String(4 * gib),
        tags: ['a', 'b'],
        stripes: 2,
        stripeSizeBytes: String(128 * 1024),
        allocationPolicy: 'contiguous',
        pvPaths: ['/dev/sdb', '/dev/sdc'],
      },
    ]);
    const json = JSON.parse(
      await ok(['lv', 'create', '-n', 'disk1', '-L', '1.5T', 'vg0', '--json']),
    ) as Record<string, unknown>;
    assert.equal(json['size_bytes'], 20 * gib);
    assert.equal(
      (daemon.requests('CreateLv')[2] as Record<string, unknown>)['sizeBytes'],
      String(1.5 * 1024 * gib),
    );
  });

  test('create refuses bad sizes and options before any call', async () => {
    await usageError(['lv', 'create', '-n', 'x', '-L', '0', 'vg0'], /more than 0 bytes/);
    await usageError(['lv', 'create', '-n', 'x', '-L', '+5G', 'vg0'], /without a sign/);
    await usageError(
      ['lv', 'create', '-n', 'x', '-L', '9E', 'vg0'],
      /at most 9007199254740991 bytes/,
    );
    await usageError(
      ['lv', 'create', '-n', 'x', '-L', 'NaN', 'vg0'],
      /expected a size such as 20G/,
    );
    await usageError(['lv', 'create', '-n', 'x', '-L', '1G', '--stripes', '33', 'vg0'], /1\.\.32/);
    await usageError(
      ['lv', 'create', '-n', 'x', '-L', '1G', '--alloc', 'cling', 'vg0'],
      /Allowed choices are normal, contiguous, anywhere/,
    );
    await usageError(['lv', 'create', '-L', '1G', 'vg0'], /required option '-n, --name <name>'/);
  });

  test('extend and reduce: absolute or relative sizes, --force', async () => {
    daemon.reply('ExtendLv', { lv: lv({ sizeBytes: String(25 * gib) }) });
    daemon.reply('ReduceLv', { lv: lv({ sizeBytes: String(19 * gib) }) });
    assert.equal(
      await ok(['lv', 'extend', '-L', '+5G', 'vg0/disk1']),
      'logical volume vg0/disk1 extended (25.0 GiB)\n',
    );
    await ok(['lv', 'extend', 'vg0/disk1', '-L', '30g', '--alloc', 'anywhere']);
    assert.equal(
      await ok(['lv', 'reduce', '-L', '-1G', 'vg0/disk1', '--force']),
      'logical volume vg0/disk1 reduced (19.0 GiB)\n',
    );
    await ok(['lv', 'reduce', '-L', '19GiB', 'vg0/disk1']);
    assert.deepEqual(daemon.requests('ExtendLv'), [
      {
        vgName: 'vg0',
        name: 'disk1',
        sizeBytes: String(5 * gib),
        relative: true,
        allocationPolicy: '',
      },
      {
        vgName: 'vg0',
        name: 'disk1',
        sizeBytes: String(30 * gib),
        relative: false,
        allocationPolicy: 'anywhere',
      },
    ]);
    assert.deepEqual(daemon.requests('ReduceLv'), [
      { vgName: 'vg0', name: 'disk1', sizeBytes: String(gib), relative: true, force: true },
      { vgName: 'vg0', name: 'disk1', sizeBytes: String(19 * gib), relative: false, force: false },
    ]);
    daemon.reset();
    await usageError(
      ['lv', 'extend', '-L', '-1G', 'vg0/disk1'],
      /such as 20G or \+5G; '-' is not allowed here/,
    );
    await usageError(
      ['lv', 'reduce', '-L', '+1G', 'vg0/disk1'],
      /such as 20G or -5G; '\+' is not allowed here/,
    );
  });

  test('VG/LV arguments: exactly one slash, two names', async () => {
    for (const bad of ['disk1', 'vg0/', '/disk1', 'vg0/a/b', '/']) {
      await usageError(['lv', 'remove', bad], /expected VG\/LV, such as vg0\/disk1/);
    }
  });

  test('rename, remove, tag', async () => {
    assert.equal(
      await ok(['lv', 'rename', 'vg0/disk1', 'disk9']),
      'logical volume vg0/disk1 renamed to vg0/disk9\n',
    );
    assert.equal(await ok(['lv', 'remove', 'vg0/disk9']), 'logical volume vg0/disk9 removed\n');
    daemon.reply('SetLvTags', { lv: lv({ tags: ['b', 'c'] }) });
    assert.equal(
      await ok(['lv', 'tag', 'vg0/disk1', '--add', 'b', 'c', '--remove', 'vm-7']),
      'logical volume vg0/disk1 tags: b, c\n',
    );
    assert.deepEqual(
      daemon.calls.map((call) => [call.method, call.request]),
      [
        ['RenameLv', { vgName: 'vg0', name: 'disk1', newName: 'disk9' }],
        ['RemoveLv', { vgName: 'vg0', name: 'disk9' }],
        ['SetLvTags', { vgName: 'vg0', name: 'disk1', addTags: ['b', 'c'], removeTags: ['vm-7'] }],
      ],
    );
    daemon.reset();
    await usageError(['lv', 'tag', 'vg0/disk1'], /give --add or --remove/);
  });

  test('activate: exactly one mode; prints the export and its URI; deactivate', async () => {
    daemon.reply('ActivateLv', { lv: lv(), exportName: 'vg0/disk1', nbdAddress: '10.0.0.5:10809' });
    assert.equal(
      await ok(['lv', 'activate', 'vg0/disk1', '--exclusive']),
      "logical volume vg0/disk1 active (exclusive) as NBD export 'vg0/disk1'\nnbd://10.0.0.5:10809/vg0/disk1\n",
    );
    const json = JSON.parse(
      await ok(['lv', 'activate', 'vg0/disk1', '--shared', '--json']),
    ) as Record<string, unknown>;
    assert.equal(json['uri'], 'nbd://10.0.0.5:10809/vg0/disk1');
    assert.equal((json['lv'] as Record<string, unknown>)['active_mode'], 'exclusive');
    assert.equal(
      await ok(['lv', 'deactivate', 'vg0/disk1']),
      'logical volume vg0/disk1 deactivated\n',
    );
    assert.deepEqual(
      daemon.calls.map((call) => call.request),
      [
        { vgName: 'vg0', name: 'disk1', mode: 'ACTIVATION_MODE_EXCLUSIVE' },
        { vgName: 'vg0', name: 'disk1', mode: 'ACTIVATION_MODE_SHARED' },
        { vgName: 'vg0', name: 'disk1' },
      ],
    );
    daemon.reset();
    await usageError(
      ['lv', 'activate', 'vg0/disk1', '--exclusive', '--shared'],
      /exactly one of --exclusive and --shared/,
    );
    await usageError(['lv', 'activate', 'vg0/disk1'], /exactly one of --exclusive and --shared/);
    daemon.fail('ActivateLv', {
      code: grpc.status.FAILED_PRECONDITION,
      details: 'vg0/disk1 is active exclusive on node-b',
      tandemCode: 'LV_ACTIVE_ELSEWHERE',
    });
    const failed = await runCli(['lv', 'activate', 'vg0/disk1', '--exclusive']);
    assert.equal(failed.code, 1);
    assert.equal(
      failed.stderr,
      'tandem: vg0/disk1 is active exclusive on node-b (LV_ACTIVE_ELSEWHERE)\n',
    );
  });
});

describe('tandem lv list', () => {
  const striped = lv({
    name: 'db',
    tags: [],
    activeOn: [],
    activeMode: '',
    exportName: '',
    partial: true,
    segments: [
      {
        lvExtentStart: 0,
        extentCount: 8,
        type: 'striped',
        stripeCount: 2,
        stripeSizeBytes: '65536',
        areas: ['/dev/sdb:0-3', '/dev/sdc:0-3'],
      },
      {
        lvExtentStart: 8,
        extentCount: 4,
        type: 'linear',
        stripeCount: 1,
        stripeSizeBytes: '0',
        areas: ['/dev/sdd:10-13'],
      },
    ],
  });

  test('default fields; one VG or all', async () => {
    daemon.reply('ListLvs', { lvs: [lv(), striped] });
    assert.deepEqual((await ok(['lv', 'list'])).split('\n'), [
      'LV     VG       SIZE  ACTIVE ON  TAGS',
      'disk1  vg0  20.0 GiB  node-a     vm-7',
      'db     vg0  20.0 GiB  -          -',
      '',
    ]);
    await ok(['lv', 'list', 'vg0']);
    assert.deepEqual(daemon.requests('ListLvs'), [{ vgName: '' }, { vgName: 'vg0' }]);
    daemon.reply('ListLvs', { lvs: [] });
    assert.equal(await ok(['lv', 'list']), 'No logical volumes.\n');
  });

  test('-o picks fields (LVM names too), +f adds to the defaults', async () => {
    daemon.reply('ListLvs', { lvs: [lv(), striped] });
    assert.deepEqual(
      (
        await ok(['lv', 'list', '-o', 'name,segments,stripes,seg_pe_ranges,partial,active_mode'])
      ).split('\n'),
      [
        'LV     SEGMENTS  STRIPES  SEGMENT DETAILS                           PARTIAL  MODE',
        'disk1         1        1  /dev/sdb:0-2558 /dev/sdc:0-2560           no       exclusive',
        'db            2        2  /dev/sdb:0-3 /dev/sdc:0-3 /dev/sdd:10-13  yes      -',
        '',
      ],
    );
    const added = (await ok(['lv', 'list', '-o', '+uuid,export'])).split('\n')[0];
    assert.equal(added, 'LV     VG       SIZE  ACTIVE ON  TAGS  UUID     EXPORT');
  });

  test('--json: the -o fields exactly, else all; sizes in bytes for *_bytes', async () => {
    daemon.reply('ListLvs', { lvs: [lv(), striped] });
    const picked = JSON.parse(
      await ok(['lv', 'list', '-o', 'name,size_bytes,size,tags', '--json']),
    ) as { lvs: unknown[] };
    assert.deepEqual(picked.lvs, [
      { name: 'disk1', size_bytes: 20 * gib, size: '20.0 GiB', tags: ['vm-7'] },
      { name: 'db', size_bytes: 20 * gib, size: '20.0 GiB', tags: [] },
    ]);
    const all = JSON.parse(await ok(['lv', 'list', '--json'])) as {
      lvs: Array<Record<string, unknown>>;
    };
    assert.deepEqual(all.lvs[1], {
      name: 'db',
      vg: 'vg0',
      size: '20.0 GiB',
      size_bytes: 20 * gib,
      extents: 5120,
      uuid: 'lv-uuid',
      tags: [],
      active_on: [],
      active_mode: null,
      segments: 2,
      segment_details: ['/dev/sdb:0-3', '/dev/sdc:0-3', '/dev/sdd:10-13'],
      stripes: 2,
      export: null,
      partial: true,
    });
  });

  test('unknown or empty fields are refused with the valid ones', async () => {
    await usageError(
      ['lv', 'list', '-o', 'name,colour'],
      /unknown field 'colour'; valid fields: name, vg, size, size_bytes, extents, uuid, tags, active_on, active_mode, segments, segment_details, stripes, export, partial/,
    );
    await usageError(['lv', 'list', '-o', 'name,,vg'], /expected field names, comma-separated/);
  });
});
