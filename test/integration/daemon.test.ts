import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { once } from 'node:events';
import fs from 'node:fs';
import net from 'node:net';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  type DaemonHandle,
  makeTemporaryDirectory,
  runCli,
  runDaemonToExit,
  startDaemon,
  stopAllDaemons,
} from './helpers/daemon.js';
import { checkHealth, listServicesByReflection } from './helpers/grpc.js';

const sizeBytes = 64 * 1024 * 1024;
const temporaryDirectories: string[] = [];

function temporaryDirectory(): string {
  const directory = makeTemporaryDirectory();
  temporaryDirectories.push(directory);
  return directory;
}

/** A sparse file: no disk space used, any size. */
function makeDiskFile(directory: string, name: string, lengthBytes = sizeBytes): string {
  const filePath = path.join(directory, name);
  fs.writeFileSync(filePath, '');
  fs.truncateSync(filePath, lengthBytes);
  return filePath;
}

function parseJson(text: string): Record<string, unknown> {
  const value: unknown = JSON.parse(text);
  assert.ok(typeof value === 'object' && value !== null);
  return value as Record<string, unknown>;
}

async function exportNames(daemon: DaemonHandle): Promise<string[]> {
  const result = await daemon.runCli(['export', 'list', '--json']);
  assert.equal(result.code, 0, result.stderr);
  const exports = parseJson(result.stdout)['exports'];
  assert.ok(Array.isArray(exports));
  return exports.map((item: { name: string }) => item.name);
}

after(async () => {
  await stopAllDaemons();
  for (const directory of temporaryDirectories)
    fs.rmSync(directory, { recursive: true, force: true });
});

describe('tandemd with one running daemon', () => {
  let daemon: DaemonHandle;
  let files: string;

  before(async () => {
    files = temporaryDirectory();
    daemon = await startDaemon({ dataDir: temporaryDirectory(), hostName: 'test-node-1' });
  });

  after(async () => {
    assert.equal(await daemon.stop(), 0, 'SIGTERM stops the daemon with exit code 0');
  });

  test('prints a ready line with the ports it really bound', async () => {
    assert.match(daemon.grpcAddress, /^127\.0\.0\.1:\d+$/);
    assert.notEqual(daemon.grpcAddress, '127.0.0.1:0');
    assert.ok(daemon.nbdPort > 0);
    assert.equal(daemon.nbdHost, '127.0.0.1');
    // stdout and stderr are separate pipes: the log line may arrive a moment later.
    await waitFor(() => daemon.stderr().includes('"message":"tandemd ready grpc='));
  });

  test('node info prints a table for people', async () => {
    const result = await daemon.runCli(['node', 'info']);
    assert.equal(result.code, 0, result.stderr);
    assert.match(result.stdout, /^Host name\s+test-node-1$/m);
    assert.match(result.stdout, /^Version\s+\d+\.\d+\.\d+/m);
    assert.match(result.stdout, new RegExp(`^gRPC address\\s+${daemon.grpcAddress}$`, 'm'));
    assert.match(
      result.stdout,
      new RegExp(`^NBD address\\s+127\\.0\\.0\\.1:${daemon.nbdPort}$`, 'm'),
    );
  });

  test('node info --json prints the facts for scripts', async () => {
    const result = await daemon.runCli(['node', 'info', '--json']);
    assert.equal(result.code, 0, result.stderr);
    const info = parseJson(result.stdout);
    assert.equal(info['hostName'], 'test-node-1');
    assert.equal(info['grpcAddress'], daemon.grpcAddress);
    assert.equal(info['nbdAddress'], `127.0.0.1:${daemon.nbdPort}`);
    assert.equal(info['processId'], daemon.process.pid);
    assert.equal(typeof info['uptimeSeconds'], 'number');
    assert.ok(Date.parse(String(info['startTime'])) <= Date.now());
    assert.equal(info['exportCount'], 0);
  });

  test('health reports SERVING for the server and each tandem service', async () => {
    assert.equal(await checkHealth(daemon.grpcAddress), 'SERVING');
    assert.equal(await checkHealth(daemon.grpcAddress, 'tandem.v1.Exports'), 'SERVING');
    assert.equal(await checkHealth(daemon.grpcAddress, 'tandem.v1.Node'), 'SERVING');
  });

  test('reflection lists the services', async () => {
    const services = await listServicesByReflection(daemon.grpcAddress);
    for (const name of ['grpc.health.v1.Health', 'tandem.v1.Exports', 'tandem.v1.Node']) {
      assert.ok(services.includes(name), `${name} in ${services.join(', ')}`);
    }
  });

  test('export add, list and remove', async () => {
    const filePath = makeDiskFile(files, 'disk-a.img');
    const added = await daemon.runCli(['export', 'add', '--name', 'disk-a', '--file', filePath]);
    assert.equal(added.code, 0, added.stderr);
    assert.match(
      added.stdout,
      /export 'disk-a' added: nbd:\/\/127\.0\.0\.1:\d+\/disk-a \(64\.0 MiB, read-write\)/,
    );

    const table = await daemon.runCli(['export', 'list']);
    assert.equal(table.code, 0, table.stderr);
    const [header, row] = table.stdout.split('\n');
    assert.match(header ?? '', /^NAME\s+SIZE\s+ACCESS\s+CONNECTIONS\s+FILE\s+URI$/);
    assert.match(row ?? '', /^disk-a\s+64\.0 MiB\s+rw\s+0\s+\S+disk-a\.img\s+nbd:/);
    assert.equal(header?.indexOf('ACCESS'), row?.indexOf('rw'), 'columns are aligned');

    const listed = await daemon.runCli(['export', 'list', '--json']);
    const exports = parseJson(listed.stdout)['exports'];
    assert.deepEqual(exports, [
      {
        name: 'disk-a',
        filePath,
        sizeBytes,
        readOnly: false,
        connectionCount: 0,
        deviceDescription: (exports as Array<{ deviceDescription: string }>)[0]?.deviceDescription,
        uri: `nbd://127.0.0.1:${daemon.nbdPort}/disk-a`,
      },
    ]);

    const removed = await daemon.runCli(['export', 'remove', 'disk-a']);
    assert.equal(removed.code, 0, removed.stderr);
    assert.equal(removed.stdout, "export 'disk-a' removed\n");
    assert.deepEqual(await exportNames(daemon), []);
    const empty = await daemon.runCli(['export', 'list']);
    assert.equal(empty.stdout, 'No exports.\n');
  });

  test('a relative --file is resolved against the CLI working directory', async () => {
    makeDiskFile(files, 'relative.img');
    const result = await runCli(
      [
        '--server',
        daemon.grpcAddress,
        'export',
        'add',
        '--name',
        'relative',
        '--file',
        'relative.img',
        '--json',
      ],
      { cwd: files },
    );
    assert.equal(result.code, 0, result.stderr);
    assert.equal(parseJson(result.stdout)['filePath'], path.join(files, 'relative.img'));
    assert.equal((await daemon.runCli(['export', 'remove', 'relative'])).code, 0);
  });

  test(
    'an export is served over NBD',
    { skip: !hasNbdinfo() && 'nbdinfo not installed' },
    async () => {
      const filePath = makeDiskFile(files, 'served.img');
      const added = await daemon.runCli([
        'export',
        'add',
        '--name',
        'served',
        '--file',
        filePath,
        '--read-only',
      ]);
      assert.equal(added.code, 0, added.stderr);
      const uri = `nbd://127.0.0.1:${daemon.nbdPort}/served`;
      const info = spawnSync('nbdinfo', ['--json', uri], { encoding: 'utf8', timeout: 20_000 });
      assert.equal(info.status, 0, info.stderr);
      const exportInfo = (parseJson(info.stdout)['exports'] as Array<Record<string, unknown>>)[0];
      assert.equal(exportInfo?.['export-size'], sizeBytes);
      assert.equal(exportInfo?.['is_read_only'], true);
      assert.equal((await daemon.runCli(['export', 'remove', 'served'])).code, 0);
    },
  );

  test('bad requests fail with a clear message, the code, and exit code 1', async () => {
    const filePath = makeDiskFile(files, 'dup.img');
    const cases: Array<{ args: string[]; pattern: RegExp }> = [
      {
        args: ['export', 'add', '--name', 'bad name!', '--file', filePath],
        pattern: /^tandem: invalid export name 'bad name!'.* \(INVALID_ARGUMENT\)\n$/,
      },
      {
        args: ['export', 'add', '--name', 'missing', '--file', path.join(files, 'nope.img')],
        pattern: /^tandem: file not found: \S+nope\.img \(NOT_FOUND\)\n$/,
      },
      {
        args: ['export', 'add', '--name', 'a-directory', '--file', files],
        pattern: /^tandem: \S+ is not a regular file or block device \(INVALID_ARGUMENT\)\n$/,
      },
      {
        args: ['export', 'remove', 'unknown'],
        pattern: /^tandem: export 'unknown' does not exist \(NOT_FOUND\)\n$/,
      },
    ];
    for (const { args, pattern } of cases) {
      const result = await daemon.runCli(args);
      assert.equal(result.code, 1, args.join(' '));
      assert.match(result.stderr, pattern);
      assert.equal(result.stdout, '');
    }

    assert.equal(
      (await daemon.runCli(['export', 'add', '--name', 'dup', '--file', filePath])).code,
      0,
    );
    const duplicate = await daemon.runCli(['export', 'add', '--name', 'dup', '--file', filePath]);
    assert.equal(duplicate.code, 1);
    assert.match(duplicate.stderr, /^tandem: export 'dup' already exists \(ALREADY_EXISTS\)\n$/);
    assert.equal((await daemon.runCli(['export', 'remove', 'dup'])).code, 0);
  });
});

describe('tandemd across restarts', () => {
  test('exports persist; one whose file vanished is skipped, not fatal', async () => {
    const dataDir = temporaryDirectory();
    const files = temporaryDirectory();
    const keptPath = makeDiskFile(files, 'kept.img');
    const vanishingPath = makeDiskFile(files, 'vanishing.img');

    let daemon = await startDaemon({ dataDir });
    for (const [name, filePath] of [
      ['kept', keptPath],
      ['vanishing', vanishingPath],
    ] as const) {
      const result = await daemon.runCli([
        'export',
        'add',
        '--name',
        name,
        '--file',
        filePath,
        '--read-only',
      ]);
      assert.equal(result.code, 0, result.stderr);
    }
    assert.equal(await daemon.stop(), 0);

    daemon = await startDaemon({ dataDir });
    assert.deepEqual(await exportNames(daemon), ['kept', 'vanishing']);
    const listed = parseJson((await daemon.runCli(['export', 'list', '--json'])).stdout);
    const kept = (listed['exports'] as Array<Record<string, unknown>>)[0];
    assert.equal(kept?.['readOnly'], true, 'the read-only flag persists');
    assert.equal(await daemon.stop(), 0);

    fs.rmSync(vanishingPath);
    daemon = await startDaemon({ dataDir });
    assert.deepEqual(await exportNames(daemon), ['kept']);
    await waitFor(() => daemon.stderr().includes('export skipped'));
    // The skipped entry stays configured until removed by name.
    assert.equal((await daemon.runCli(['export', 'remove', 'vanishing'])).code, 0);
    assert.equal((await daemon.runCli(['export', 'remove', 'kept'])).code, 0);
    assert.equal(await daemon.stop(), 0);

    daemon = await startDaemon({ dataDir });
    assert.deepEqual(await exportNames(daemon), []);
    assert.equal(await daemon.stop(), 0);
  });
});

describe('tandemd stopping', () => {
  test('SIGTERM with an open NBD connection still exits 0', async () => {
    const files = temporaryDirectory();
    const daemon = await startDaemon();
    const filePath = makeDiskFile(files, 'busy.img');
    assert.equal(
      (await daemon.runCli(['export', 'add', '--name', 'busy', '--file', filePath])).code,
      0,
    );
    // A client that connects and then sits idle must not hold the daemon up.
    const socket = net.connect(daemon.nbdPort, daemon.nbdHost);
    await once(socket, 'connect');
    const closed = once(socket, 'close');
    socket.on('error', () => undefined);
    // Flowing, so the server's close is seen as 'end' and then 'close'.
    socket.resume();
    assert.equal(await daemon.stop(), 0);
    await closed;
  });
});

describe('tandemd start failures and unreachable daemons', () => {
  test('a bad config file: exit 1 with a one-line message', async () => {
    const directory = temporaryDirectory();
    const configPath = path.join(directory, 'tandemd.json');
    fs.writeFileSync(configPath, JSON.stringify({ grpc: '127.0.0.1:0', nbdd: '127.0.0.1:0' }));
    const result = await runDaemonToExit(['--config', configPath]);
    assert.equal(result.code, 1);
    assert.equal(result.stdout, '');
    assert.match(
      result.stderr,
      /^tandemd: config file \S+ unknown setting\(s\) nbdd .*\(CONFIG_INVALID\)$/m,
    );
  });

  test('a bad listen address flag: exit 1', async () => {
    const result = await runDaemonToExit([
      '--grpc',
      'no-port-here',
      '--data-dir',
      temporaryDirectory(),
    ]);
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      /^tandemd: grpc: 'no-port-here' is not HOST:PORT.*\(CONFIG_INVALID\)$/m,
    );
  });

  test('a port in use: exit 1 naming the address', async () => {
    const daemon = await startDaemon();
    const result = await runDaemonToExit([
      '--grpc',
      daemon.grpcAddress,
      '--nbd',
      '127.0.0.1:0',
      '--data-dir',
      temporaryDirectory(),
    ]);
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      new RegExp(
        `^tandemd: cannot listen for gRPC on ${daemon.grpcAddress}: .*\\(LISTEN_FAILED\\)$`,
        'm',
      ),
    );
    assert.equal(await daemon.stop(), 0);
  });

  test('the CLI names the address it cannot reach', async () => {
    const result = await runCli(['--server', '127.0.0.1:1', '--timeout', '5', 'node', 'info']);
    assert.equal(result.code, 1);
    assert.match(
      result.stderr,
      /^tandem: cannot reach tandemd at 127\.0\.0\.1:1: .*\(UNAVAILABLE\)\n$/,
    );
  });

  test('TANDEM_SERVER picks the daemon', async () => {
    const daemon = await startDaemon({ hostName: 'from-env' });
    const result = await runCli(['node', 'info', '--json'], {
      env: { TANDEM_SERVER: daemon.grpcAddress },
    });
    assert.equal(result.code, 0, result.stderr);
    assert.equal(parseJson(result.stdout)['hostName'], 'from-env');
    assert.equal(await daemon.stop(), 0);
  });
});

async function waitFor(condition: () => boolean, timeoutMs = 5_000): Promise<void> {
  const deadlineMs = Date.now() + timeoutMs;
  while (!condition()) {
    assert.ok(Date.now() < deadlineMs, `condition not met within ${timeoutMs} ms`);
    await new Promise((resolve) => setTimeout(resolve, 20));
  }
}

function hasNbdinfo(): boolean {
  return spawnSync('nbdinfo', ['--version'], { stdio: 'ignore' }).status === 0;
}
