/**
 * Real NBD clients against a real tandemd: nbdinfo, qemu-img, qemu-io, nbdcopy and fio talk to
 * exports made with `tandem export add`, and every check is on data (checksums of the file
 * behind the export, fio's verify, qemu-io's patterns), so a server that answers but stores the
 * wrong bytes fails here.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  type DaemonHandle,
  makeTemporaryDirectory,
  startDaemon,
  stopAllDaemons,
} from './helpers/daemon.js';
import {
  type CommandResult,
  type FioJob,
  CleanupStack,
  describeResult,
  makeSparseFile,
  missingTools,
  nbdUri,
  parseFioJson,
  runCommand,
  sha256File,
  startBackground,
  waitFor,
  writeRandomFile,
} from './helpers/tools.js';

const mebibyte = 1024 * 1024;
const exportSizeBytes = 64 * mebibyte;
/** How long `tandem export remove` may take with a client attached: the CLI's own deadline. */
const removeTimeoutSeconds = 10;
/**
 * With nothing stuck, removal takes well under a second; this leaves room for a slow machine
 * and stays under the CLI deadline.
 */
const removeDurationMsMax = 5_000;
const busyRounds = 3;
/** A client whose export was removed must give up within this. */
const clientGivesUpTimeoutMs = 20_000;
/** Last line of defence: no suite may run longer, whatever hangs. */
const suiteTimeoutMs = 150_000;

const requiredTools = ['nbdinfo', 'nbdcopy', 'qemu-img', 'qemu-io', 'fio'];
const missing = missingTools(requiredTools);
const skip = missing.length === 0 ? false : `missing tools: ${missing.join(', ')}`;

const cleanup = new CleanupStack();
let daemon: DaemonHandle;
let files: string;

function uri(exportName: string): string {
  return nbdUri(daemon.nbdHost, daemon.nbdPort, exportName);
}

function expectSuccess(result: CommandResult): CommandResult {
  assert.ok(result.code === 0 && !result.timedOut, describeResult(result));
  return result;
}

function jsonObject(text: string, what: string): Record<string, unknown> {
  const value: unknown = JSON.parse(text);
  assert.ok(typeof value === 'object' && value !== null && !Array.isArray(value), what);
  return value as Record<string, unknown>;
}

function jsonArray(value: unknown, what: string): Record<string, unknown>[] {
  assert.ok(Array.isArray(value), `${what} is an array`);
  return value.map((item: unknown) => {
    assert.ok(typeof item === 'object' && item !== null, `${what} holds objects`);
    return item as Record<string, unknown>;
  });
}

async function addExport(
  name: string,
  filePath: string,
  options: { readOnly?: boolean } = {},
): Promise<void> {
  const args = ['export', 'add', '--name', name, '--file', filePath];
  if (options.readOnly === true) args.push('--read-only');
  const result = await daemon.runCli(args);
  assert.equal(result.code, 0, `export add ${name}: ${result.stderr}`);
}

async function exportConnectionCount(name: string): Promise<number | undefined> {
  const result = await daemon.runCli(['export', 'list', '--json']);
  assert.equal(result.code, 0, result.stderr);
  const exports = jsonArray(jsonObject(result.stdout, 'export list')['exports'], 'exports');
  const found = exports.find((item) => item['name'] === name);
  return found === undefined ? undefined : Number(found['connectionCount']);
}

/** The one export nbdinfo --json describes. */
async function nbdinfoJson(exportName: string): Promise<Record<string, unknown>> {
  const result = expectSuccess(await runCommand('nbdinfo', ['--json', uri(exportName)]));
  const exports = jsonArray(jsonObject(result.stdout, 'nbdinfo')['exports'], 'exports');
  assert.equal(exports.length, 1);
  const [described] = exports;
  assert.ok(described !== undefined);
  return described;
}

before(async () => {
  if (skip !== false) return;
  files = makeTemporaryDirectory('tandem-nbd-clients-');
  cleanup.defer('remove the test files', () => fs.rmSync(files, { recursive: true, force: true }));
  daemon = await startDaemon();
  cleanup.defer('stop the daemon', async () => {
    assert.equal(await daemon.stop(), 0, 'SIGTERM stops the daemon with exit code 0');
  });
});

after(async () => {
  try {
    await cleanup.runAll();
  } finally {
    await stopAllDaemons();
  }
});

describe('nbdinfo', { skip, timeout: suiteTimeoutMs }, () => {
  const dataStartBytes = 8 * mebibyte;
  const dataLengthBytes = 2 * mebibyte;

  before(async () => {
    // A sparse file with one 2 MiB run of data: the map must show hole, data, hole.
    const sparse = makeSparseFile(path.join(files, 'sparse.img'), exportSizeBytes);
    const handle = fs.openSync(sparse, 'r+');
    try {
      const data = Buffer.alloc(dataLengthBytes, 0x5a);
      fs.writeSync(handle, data, 0, data.length, dataStartBytes);
    } finally {
      fs.closeSync(handle);
    }
    await addExport('info-rw', sparse);
    await addExport('info-ro', makeSparseFile(path.join(files, 'info-ro.img'), 4 * mebibyte), {
      readOnly: true,
    });
  });

  test('reports the size and the capabilities of a read-write export', async () => {
    const size = expectSuccess(await runCommand('nbdinfo', ['--size', uri('info-rw')]));
    assert.equal(size.stdout.trim(), String(exportSizeBytes));
    const described = await nbdinfoJson('info-rw');
    assert.equal(described['export-name'], 'info-rw');
    assert.equal(described['export-size'], exportSizeBytes);
    assert.equal(described['is_read_only'], false);
    for (const flag of ['can_flush', 'can_fua', 'can_trim', 'can_zero', 'can_multi_conn']) {
      assert.equal(described[flag], true, flag);
    }
    assert.deepEqual(described['contexts'], ['base:allocation']);
    // The exit code form: 0 when true, 2 when false (so this cannot pass by accident).
    expectSuccess(await runCommand('nbdinfo', ['--can', 'trim', uri('info-rw')]));
    const readOnly = await runCommand('nbdinfo', ['--is', 'read-only', uri('info-rw')]);
    assert.equal(readOnly.code, 2, describeResult(readOnly));
  });

  test('reports a read-only export as read-only, without trim or zero', async () => {
    const described = await nbdinfoJson('info-ro');
    assert.equal(described['export-size'], 4 * mebibyte);
    assert.equal(described['is_read_only'], true);
    assert.equal(described['can_trim'], false);
    assert.equal(described['can_zero'], false);
    assert.equal(described['can_flush'], true);
    expectSuccess(await runCommand('nbdinfo', ['--is', 'read-only', uri('info-ro')]));
  });

  test('--list names every export, with the file as description', async () => {
    const serverUri = `nbd://${daemon.nbdHost}:${daemon.nbdPort}`;
    const result = expectSuccess(await runCommand('nbdinfo', ['--list', '--json', serverUri]));
    const exports = jsonArray(jsonObject(result.stdout, 'nbdinfo --list')['exports'], 'exports');
    const byName = new Map(exports.map((item) => [item['export-name'], item]));
    assert.ok(byName.has('info-rw') && byName.has('info-ro'), result.stdout);
    assert.equal(byName.get('info-rw')?.['description'], path.join(files, 'sparse.img'));
    assert.equal(byName.get('info-ro')?.['is_read_only'], true);
    const text = expectSuccess(await runCommand('nbdinfo', ['--list', serverUri]));
    assert.match(text.stdout, /^export="info-rw":$/m);
    assert.match(text.stdout, /^export="info-ro":$/m);
  });

  test('--map shows the holes of a sparse file (base:allocation)', async () => {
    const result = expectSuccess(await runCommand('nbdinfo', ['--map', '--json', uri('info-rw')]));
    const extents = jsonArray(JSON.parse(result.stdout), 'map').map((item) => ({
      offset: Number(item['offset']),
      length: Number(item['length']),
      type: Number(item['type']),
    }));
    // The extents tile the export without gaps.
    let expectedOffset = 0;
    for (const extent of extents) {
      assert.equal(extent.offset, expectedOffset, result.stdout);
      expectedOffset += extent.length;
    }
    assert.equal(expectedOffset, exportSizeBytes);
    const at = (offsetBytes: number): number => {
      const found = extents.find(
        (extent) => extent.offset <= offsetBytes && offsetBytes < extent.offset + extent.length,
      );
      assert.ok(found !== undefined, `an extent covers ${offsetBytes}`);
      return found.type;
    };
    const holeBit = 1;
    assert.equal(at(0) & holeBit, holeBit, `hole before the data: ${result.stdout}`);
    assert.equal(at(dataStartBytes + mebibyte), 0, `data in the middle: ${result.stdout}`);
    assert.equal(at(exportSizeBytes - 1) & holeBit, holeBit, `hole at the end: ${result.stdout}`);
    const text = expectSuccess(await runCommand('nbdinfo', ['--map', uri('info-rw')]));
    assert.match(text.stdout, /hole,zero/);
    assert.match(text.stdout, /\bdata\b/);
  });
});

describe('qemu-img and qemu-io', { skip, timeout: suiteTimeoutMs }, () => {
  let backing: string;

  before(async () => {
    backing = makeSparseFile(path.join(files, 'qemu.img'), exportSizeBytes);
    await addExport('qemu', backing);
  });

  test('qemu-img info sees a raw image of the export size', async () => {
    const result = expectSuccess(
      await runCommand('qemu-img', ['info', '--output=json', uri('qemu')]),
    );
    const info = jsonObject(result.stdout, 'qemu-img info');
    assert.equal(info['virtual-size'], exportSizeBytes);
    assert.equal(info['format'], 'raw');
  });

  test('qemu-img convert in and out keeps every byte; compare finds a one-byte change', async () => {
    const source = path.join(files, 'qemu-source.img');
    const sourceSha = await writeRandomFile(source, exportSizeBytes);
    expectSuccess(
      await runCommand('qemu-img', [
        'convert',
        '-n',
        '-f',
        'raw',
        '-O',
        'raw',
        source,
        uri('qemu'),
      ]),
    );
    assert.equal(await sha256File(backing), sourceSha, 'the file behind the export');
    const copy = path.join(files, 'qemu-copy.img');
    expectSuccess(
      await runCommand('qemu-img', ['convert', '-f', 'raw', '-O', 'raw', uri('qemu'), copy]),
    );
    assert.equal(await sha256File(copy), sourceSha, 'the copy read back through the export');
    const same = expectSuccess(
      await runCommand('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', source, uri('qemu')]),
    );
    assert.match(same.stdout, /Images are identical/);

    const changedOffsetBytes = 33 * mebibyte + 5;
    const handle = fs.openSync(copy, 'r+');
    try {
      const byte = Buffer.alloc(1);
      fs.readSync(handle, byte, 0, 1, changedOffsetBytes);
      byte[0] = (byte[0] ?? 0) ^ 0xff;
      fs.writeSync(handle, byte, 0, 1, changedOffsetBytes);
    } finally {
      fs.closeSync(handle);
    }
    const differs = await runCommand('qemu-img', [
      'compare',
      '-f',
      'raw',
      '-F',
      'raw',
      copy,
      uri('qemu'),
    ]);
    assert.equal(differs.code, 1, describeResult(differs));
    assert.match(differs.stdout, new RegExp(`Content mismatch at offset ${33 * mebibyte}!`));
  });

  test('qemu-io writes a pattern and reads it back; a wrong pattern fails', async () => {
    const written = expectSuccess(
      await runCommand('qemu-io', [
        '-f',
        'raw',
        '-c',
        'write -P 0xab 0 1M',
        '-c',
        'read -P 0xab 0 1M',
        uri('qemu'),
      ]),
    );
    assert.doesNotMatch(written.stdout + written.stderr, /failed/i);
    assert.match(written.stdout, /wrote 1048576\/1048576 bytes at offset 0/);
    assert.match(written.stdout, /read 1048576\/1048576 bytes at offset 0/);
    const onDisk = Buffer.alloc(mebibyte);
    const handle = fs.openSync(backing, 'r');
    try {
      fs.readSync(handle, onDisk, 0, onDisk.length, 0);
    } finally {
      fs.closeSync(handle);
    }
    assert.ok(onDisk.equals(Buffer.alloc(mebibyte, 0xab)), 'the file holds the pattern');

    const wrong = await runCommand('qemu-io', [
      '-f',
      'raw',
      '-c',
      'read -P 0xcd 0 1M',
      uri('qemu'),
    ]);
    assert.notEqual(wrong.code, 0, describeResult(wrong));
    assert.match(wrong.stdout + wrong.stderr, /Pattern verification failed/);
  });
});

describe('nbdcopy', { skip, timeout: suiteTimeoutMs }, () => {
  let backing: string;

  before(async () => {
    backing = makeSparseFile(path.join(files, 'nbdcopy.img'), exportSizeBytes);
    await addExport('copy', backing);
  });

  for (const connections of [1, 4]) {
    test(`round trip with ${connections} connection(s): three equal checksums`, async () => {
      const source = path.join(files, `nbdcopy-source-${connections}.img`);
      const target = path.join(files, `nbdcopy-target-${connections}.img`);
      const sourceSha = await writeRandomFile(source, exportSizeBytes);
      const connectionsFlag = `--connections=${connections}`;
      expectSuccess(await runCommand('nbdcopy', [connectionsFlag, '--flush', source, uri('copy')]));
      expectSuccess(await runCommand('nbdcopy', [connectionsFlag, uri('copy'), target]));
      assert.equal(await sha256File(backing), sourceSha, 'the file behind the export');
      assert.equal(await sha256File(target), sourceSha, 'the copy read back');
    });
  }
});

describe('fio --ioengine=nbd with verify', { skip, timeout: suiteTimeoutMs }, () => {
  const jobSizeBytes = 16 * mebibyte;

  before(async () => {
    await addExport('fio', makeSparseFile(path.join(files, 'fio.img'), exportSizeBytes));
  });

  async function runFio(args: readonly string[]): Promise<{
    result: CommandResult;
    jobs: FioJob[];
  }> {
    const result = await runCommand(
      'fio',
      [
        '--ioengine=nbd',
        `--uri=${uri('fio')}`,
        '--bs=4k',
        '--numjobs=2',
        `--size=${jobSizeBytes}`,
        '--verify=crc32c',
        '--output-format=json',
        ...args,
      ],
      // fio writes its verify state files into the working directory: keep them out of the repo.
      { timeoutMs: 90_000, cwd: files },
    );
    return { result, jobs: parseFioJson(result.stdout) };
  }

  test('random writes, iodepth 32, two jobs on their own ranges, then verify', async () => {
    const { result, jobs } = await runFio([
      '--name=randwrite',
      '--rw=randwrite',
      '--iodepth=32',
      // Each job writes (and verifies) its own 16 MiB: jobs sharing blocks would overwrite each
      // other's verify headers (see the control test below).
      `--offset_increment=${2 * jobSizeBytes}`,
    ]);
    expectSuccess(result);
    assert.equal(jobs.length, 2);
    for (const job of jobs) {
      assert.equal(job.error, 0, describeResult(result));
      assert.equal(job.write.ioBytes, jobSizeBytes, 'every block written');
      assert.equal(job.read.ioBytes, jobSizeBytes, 'every block read back in the verify phase');
    }
  });

  test('a 50/50 random read/write mix with verify', async () => {
    const { result, jobs } = await runFio([
      '--name=randrw',
      '--rw=randrw',
      '--rwmixread=50',
      '--iodepth=16',
      '--verify_backlog=256',
      `--offset_increment=${2 * jobSizeBytes}`,
    ]);
    expectSuccess(result);
    assert.equal(jobs.length, 2);
    for (const job of jobs) {
      assert.equal(job.error, 0, describeResult(result));
      assert.ok(job.write.ioBytes > 0 && job.read.ioBytes > 0, 'both directions ran');
    }
  });

  test('control: verify does report corruption (two jobs writing the same blocks)', async () => {
    const { result, jobs } = await runFio(['--name=overlap', '--rw=randwrite', '--iodepth=32']);
    assert.notEqual(result.code, 0, describeResult(result));
    assert.ok(
      jobs.some((job) => job.error !== 0),
      'fio reports the overwritten verify headers as job errors',
    );
    assert.match(result.stderr, /verify: bad header/);
  });
});

describe('a read-only export', { skip, timeout: suiteTimeoutMs }, () => {
  const patternBytes = mebibyte;
  let backing: string;
  let backingSha: string;

  before(async () => {
    backing = path.join(files, 'read-only.img');
    await writeRandomFile(backing, 16 * mebibyte);
    // A known first MiB, so qemu-io can check what it reads.
    const handle = fs.openSync(backing, 'r+');
    try {
      fs.writeSync(handle, Buffer.alloc(patternBytes, 0x5a), 0, patternBytes, 0);
    } finally {
      fs.closeSync(handle);
    }
    backingSha = await sha256File(backing);
    await addExport('read-only', backing, { readOnly: true });
  });

  test('refuses qemu-io and nbdcopy writes, serves reads, leaves the file unchanged', async () => {
    const write = await runCommand('qemu-io', [
      '-f',
      'raw',
      '-c',
      'write -P 0x11 0 64k',
      uri('read-only'),
    ]);
    assert.notEqual(write.code, 0, describeResult(write));
    assert.match(write.stdout + write.stderr, /Permission denied|read-only|not permitted/i);

    const overwrite = path.join(files, 'read-only-overwrite.img');
    await writeRandomFile(overwrite, 16 * mebibyte);
    const copyIn = await runCommand('nbdcopy', [overwrite, uri('read-only')]);
    assert.notEqual(copyIn.code, 0, describeResult(copyIn));

    const read = expectSuccess(
      await runCommand('qemu-io', ['-r', '-f', 'raw', '-c', 'read -P 0x5a 0 1M', uri('read-only')]),
    );
    assert.doesNotMatch(read.stdout + read.stderr, /failed/i);
    const copyOut = path.join(files, 'read-only-copy.img');
    expectSuccess(await runCommand('nbdcopy', [uri('read-only'), copyOut]));
    assert.equal(await sha256File(copyOut), backingSha, 'reads return the file');
    assert.equal(await sha256File(backing), backingSha, 'the file is unchanged');
  });
});

describe(
  'removing an export while a client is connected',
  { skip, timeout: suiteTimeoutMs },
  () => {
    let keepSha: string;

    before(async () => {
      const keep = path.join(files, 'keep.img');
      keepSha = await writeRandomFile(keep, 16 * mebibyte);
      await addExport('keep', keep);
    });

    /** Removes with the CLI's default deadline; the answer must come well within it. */
    async function removeExport(name: string): Promise<void> {
      const started = performance.now();
      const removed = await daemon.runCli([
        '--timeout',
        String(removeTimeoutSeconds),
        'export',
        'remove',
        name,
      ]);
      const elapsedMs = Math.round(performance.now() - started);
      assert.equal(
        removed.code,
        0,
        `export remove ${name} (${elapsedMs} ms): ${removed.stdout}${removed.stderr}`,
      );
      assert.match(removed.stdout, new RegExp(`export '${name}' removed`));
      assert.ok(elapsedMs < removeDurationMsMax, `export remove ${name} took ${elapsedMs} ms`);
    }

    async function assertOtherExportsServe(removedName: string): Promise<void> {
      const copy = path.join(files, `keep-copy-${removedName}.img`);
      expectSuccess(await runCommand('nbdcopy', [uri('keep'), copy]));
      assert.equal(await sha256File(copy), keepSha, 'another export still serves its data');
      const gone = await runCommand('nbdinfo', ['--size', uri(removedName)]);
      assert.notEqual(gone.code, 0, `the removed export is gone: ${describeResult(gone)}`);
      const list = expectSuccess(
        await runCommand('nbdinfo', ['--list', `nbd://${daemon.nbdHost}:${daemon.nbdPort}`]),
      );
      assert.doesNotMatch(list.stdout, new RegExp(`^export="${removedName}":$`, 'm'));
      assert.match(list.stdout, /^export="keep":$/m);
    }

    async function waitForConnection(name: string): Promise<void> {
      await waitFor(async () => ((await exportConnectionCount(name)) ?? 0) > 0, {
        timeoutMs: 15_000,
        intervalMs: 200,
        description: `a client attached to ${name}`,
      });
    }

    // The server stops reading from a socket while its send buffer is full; big reads make that
    // the usual state, so removal must also notice a client that left while reads were paused.
    // Three rounds, because whether the socket is paused at that moment is a race.
    test('a running fio fails cleanly and the daemon keeps serving (3 rounds)', async () => {
      const backing = path.join(files, 'busy.img');
      await writeRandomFile(backing, 16 * mebibyte);
      for (let round = 1; round <= busyRounds; round++) {
        await addExport('busy', backing);
        const fio = startBackground('fio', [
          `--name=busy-${round}`,
          '--ioengine=nbd',
          `--uri=${uri('busy')}`,
          '--rw=randrw',
          '--rwmixread=90',
          '--bs=1M',
          '--iodepth=16',
          '--time_based',
          '--runtime=60',
          '--output-format=json',
        ]);
        const stopFio = cleanup.defer(`stop fio round ${round}`, () => fio.stop());
        await waitForConnection('busy');
        await removeExport('busy');
        const exit = await fio.waitForExit(clientGivesUpTimeoutMs);
        assert.notEqual(exit.code, 0, `fio saw its export go: ${fio.stderr().slice(-2000)}`);
        // libnbd words it by the state it saw (ENOTCONN, "state DEAD"…): just not silent.
        assert.match(fio.stderr(), /^fio: .+/m);
        await stopFio.run();
        await assertOtherExportsServe('busy');
      }
    });

    test('an idle qemu-io session fails its next read and the daemon keeps serving', async () => {
      await addExport('idle', makeSparseFile(path.join(files, 'idle.img'), 16 * mebibyte));
      const session = startBackground('qemu-io', ['-f', 'raw', uri('idle')], { stdin: true });
      const stopSession = cleanup.defer('stop qemu-io', () => session.stop());
      const command = async (line: string, expected: RegExp): Promise<void> => {
        const before = (session.stdout() + session.stderr()).length;
        session.write(`${line}\n`);
        await waitFor(() => expected.test((session.stdout() + session.stderr()).slice(before)), {
          timeoutMs: clientGivesUpTimeoutMs,
          description: `qemu-io '${line}' → ${expected}`,
        });
      };
      await command('read -P 0 0 4k', /read 4096\/4096 bytes at offset 0/);
      await waitForConnection('idle');
      await removeExport('idle');
      await command('read 0 4k', /read failed/);
      session.write('quit\n');
      await session.waitForExit(clientGivesUpTimeoutMs);
      await stopSession.run();
      await assertOtherExportsServe('idle');
    });
  },
);
