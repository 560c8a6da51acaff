import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { InvalidArgumentError } from 'commander';
import type { Host__Output } from '../../src/generated/tandem/v1/Host.js';
import type { Lock__Output } from '../../src/generated/tandem/v1/Lock.js';
import {
  formatAge,
  hostEventLine,
  hostJson,
  hostTable,
  readPayloadFile,
} from '../../src/cli/commands/host.js';
import {
  lockEventLine,
  lockJson,
  lockTable,
  parseHexValue,
  parseModeOption,
  waitingCallTimeoutMs,
} from '../../src/cli/commands/lock.js';
import { resolveIoTimeoutMs } from '../../src/cli/commands/lockspace.js';
import { main } from '../../src/cli/main.js';

const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-cli-lease-'));
after(() => fs.rmSync(directory, { recursive: true, force: true }));

async function runCli(
  args: readonly string[],
): Promise<{ code: number; stdout: string; stderr: string }> {
  let stdout = '';
  let stderr = '';
  const code = await main(['node', 'tandem', ...args], {
    stdout: { write: (text) => void (stdout += text) },
    stderr: { write: (text) => void (stderr += text) },
  });
  return { code, stdout, stderr };
}

const host = (overrides: Partial<Host__Output>): Host__Output => ({
  hostId: 1,
  hostName: 'node-a',
  generation: '3',
  state: 'HOST_STATE_LIVE',
  heartbeatAgeMs: '312',
  address: '127.0.0.1:7600',
  payloadSizeBytes: 0,
  payload: Buffer.alloc(0),
  payloadUnreadable: false,
  self: true,
  renewedTime: { seconds: '1700000000', nanos: 0 },
  ...overrides,
});

const lock = (overrides: Partial<Lock__Output>): Lock__Output => ({
  name: 'vm-1',
  mode: 'LOCK_MODE_EX',
  owner: { hostId: 2, generation: '4', hostName: 'node-b' },
  sharedOwners: [],
  version: '7',
  value: Buffer.from('00ff', 'hex'),
  since: { seconds: '1700000000', nanos: 250_000_000 },
  heldHere: 'LOCK_MODE_FREE',
  ...overrides,
});

describe('lock option parsing', () => {
  test('hex values: even length, hex digits, at most 64 bytes', () => {
    assert.deepEqual(parseHexValue('00Ff10'), Buffer.from([0, 255, 16]));
    assert.deepEqual(parseHexValue(''), Buffer.alloc(0));
    assert.equal(parseHexValue('ab'.repeat(64)).length, 64);
    assert.throws(() => parseHexValue('xyz1'), InvalidArgumentError);
    assert.throws(() => parseHexValue('abc'), /even number of hex digits, got 3/);
    assert.throws(
      () => parseHexValue('ab'.repeat(65)),
      /at most 64 bytes \(128 hex digits\), got 65/,
    );
  });

  test('modes and deadlines', () => {
    assert.equal(parseModeOption('EX'), 'ex');
    assert.equal(parseModeOption('sh'), 'sh');
    assert.throws(() => parseModeOption('exclusive'), /'ex' \(exclusive\) or 'sh'/);
    assert.equal(waitingCallTimeoutMs(0, 10_000), 10_000);
    assert.equal(waitingCallTimeoutMs(60_000, 10_000), 70_000);
  });

  test('the CLI refuses bad values before calling anybody', async () => {
    const badHex = await runCli([
      '--server',
      '127.0.0.1:1',
      'lock',
      'acquire',
      'a',
      '--mode',
      'ex',
      '--value',
      'abc',
    ]);
    assert.equal(badHex.code, 1);
    assert.match(
      badHex.stderr,
      /option '--value <hex>' argument 'abc' is invalid\. expected an even number/,
    );
    const badMode = await runCli(['lock', 'acquire', 'a', '--mode', 'up']);
    assert.equal(badMode.code, 1);
    assert.match(badMode.stderr, /expected 'ex' \(exclusive\) or 'sh' \(shared\)/);
    const badWait = await runCli(['lock', 'convert', 'a', '--mode', 'ex', '--wait-ms', '-5']);
    assert.equal(badWait.code, 1);
    assert.match(badWait.stderr, /expected an integer in 0\.\.3600000/);
  });

  test('payload files are checked before they are sent', async () => {
    const big = path.join(directory, 'big.bin');
    fs.writeFileSync(big, Buffer.alloc(1025));
    await assert.rejects(readPayloadFile(big), /has 1025 bytes; a host publishes at most 1024/);
    await assert.rejects(readPayloadFile(path.join(directory, 'nope')), /cannot read payload file/);
    const result = await runCli(['host', 'publish', '--payload-file', big]);
    assert.equal(result.code, 1);
    assert.match(result.stderr, /^tandem: payload file .* \(INVALID_ARGUMENT\)$/m);
  });
});

describe('host and lock printing', () => {
  test('host list table and JSON', () => {
    const table = hostTable([
      host({}),
      host({
        hostId: 2,
        hostName: 'node-b',
        self: false,
        state: 'HOST_STATE_FAILED',
        heartbeatAgeMs: '61000',
        payloadSizeBytes: 12,
      }),
    ]);
    assert.deepEqual(table.split('\n'), [
      'HOST ID  NAME    GENERATION  STATE   HEARTBEAT  PAYLOAD  ADDRESS         SELF',
      '      1  node-a           3  live         0.3s      0 B  127.0.0.1:7600  *',
      '      2  node-b           3  failed      1m 1s     12 B  127.0.0.1:7600',
    ]);
    assert.equal(hostTable([]), 'No hosts.');
    assert.deepEqual(hostJson(host({ payload: Buffer.from('hi'), payloadSizeBytes: 2 })), {
      hostId: 1,
      hostName: 'node-a',
      generation: 3,
      state: 'live',
      heartbeatAgeMs: 312,
      address: '127.0.0.1:7600',
      payloadSizeBytes: 2,
      payloadHex: '6869',
      self: true,
      renewedAt: '2023-11-14T22:13:20.000Z',
    });
    assert.equal(formatAge(0n), '0.0s');
    assert.equal(formatAge(59_949n), '59.9s');
  });

  test('host watch lines', () => {
    const now = '2024-01-01T00:00:00.000Z';
    assert.equal(
      hostEventLine({ kind: 'HOST_EVENT_KIND_JOINED', host: host({}), snapshot: true }, now),
      `${now} joined  node-a#1 generation 3 live 127.0.0.1:7600 (self) (now)`,
    );
    assert.equal(
      hostEventLine(
        {
          kind: 'HOST_EVENT_KIND_PAYLOAD',
          host: host({ self: false, address: '', payloadSizeBytes: 5 }),
          snapshot: false,
        },
        now,
      ),
      `${now} payload node-a#1 generation 3 live payload 5 B`,
    );
  });

  test('lock list table and JSON', () => {
    const shared = lock({
      name: 'vg0',
      mode: 'LOCK_MODE_SH',
      owner: null,
      sharedOwners: [
        { hostId: 1, generation: '3', hostName: 'node-a' },
        { hostId: 2, generation: '4', hostName: '' },
      ],
      value: Buffer.alloc(0),
      heldHere: 'LOCK_MODE_SH',
    });
    const free = lock({
      name: 'z',
      mode: 'LOCK_MODE_FREE',
      owner: null,
      since: null,
      value: Buffer.alloc(0),
    });
    assert.deepEqual(lockTable([lock({}), shared, free]).split('\n'), [
      'NAME  MODE  OWNER         GENERATION  VERSION  VALUE  SINCE',
      'vm-1  ex    node-b#2               4        7  00ff   2023-11-14T22:13:20Z',
      'vg0   sh    node-a#1,?#2         3,4        7  -      2023-11-14T22:13:20Z',
      'z     free  -                      -        7  -      -',
    ]);
    assert.equal(lockTable([]), 'No locks.');
    assert.deepEqual(lockJson(shared), {
      name: 'vg0',
      mode: 'sh',
      owner: null,
      sharedOwners: [
        { hostId: 1, hostName: 'node-a', generation: 3 },
        { hostId: 2, hostName: '', generation: 4 },
      ],
      version: 7,
      valueHex: '',
      since: '2023-11-14T22:13:20.250Z',
      heldHere: 'sh',
    });
    assert.equal(lockJson(lock({})).heldHere, null);
  });

  test('lock watch lines', () => {
    const now = '2024-01-01T00:00:00.000Z';
    assert.equal(
      lockEventLine(
        {
          kind: 'LOCK_EVENT_KIND_LOST',
          name: 'vm-1',
          mode: 'LOCK_MODE_FREE',
          version: '9',
          reason: 'fenced',
        },
        now,
      ),
      `${now} lost      vm-1 free version 9 (fenced)`,
    );
  });
});

describe('tandem lockspace (local)', () => {
  test('--profile and --io-timeout-ms', () => {
    assert.equal(resolveIoTimeoutMs({}), 2_000);
    assert.equal(resolveIoTimeoutMs({ profile: 'fast' }), 250);
    assert.equal(resolveIoTimeoutMs({ ioTimeoutMs: 500 }), 500);
    assert.throws(() => resolveIoTimeoutMs({ profile: 'fast', ioTimeoutMs: 500 }), /not both/);
  });

  test('init creates the file, prints the geometry; show reads it back', async () => {
    const file = path.join(directory, 'new.lockspace');
    const init = await runCli([
      'lockspace',
      'init',
      file,
      '--profile',
      'fast',
      '--max-hosts',
      '4',
      '--max-resources',
      '8',
      '--name',
      'test-ls',
    ]);
    assert.equal(init.code, 0, init.stderr);
    assert.match(init.stdout, /^lockspace created$/m);
    assert.match(init.stdout, /^UUID\s+[0-9a-f-]{36}$/m);
    assert.match(init.stdout, /^Hosts\s+4$/m);
    assert.match(init.stdout, /^Resources\s+8$/m);
    assert.match(init.stdout, /^I\/O timeout\s+250 ms$/m);
    assert.match(init.stdout, /^renewal every\s+0\.125s\s+125$/m);
    assert.match(init.stdout, /^fail \(self-fence\) after\s+1\.0s\s+1000$/m);
    assert.match(init.stdout, /^dead \(taken over\) after\s+1\.5s\s+1500$/m);
    const show = await runCli(['lockspace', 'show', file, '--json']);
    assert.equal(show.code, 0, show.stderr);
    const shown = JSON.parse(show.stdout) as Record<string, unknown>;
    assert.equal(shown['name'], 'test-ls');
    assert.equal(shown['maxHosts'], 4);
    assert.equal(shown['ioTimeoutMs'], 250);
    assert.equal(fs.statSync(file).size, shown['sizeBytes']);
  });

  test('init extends a small file, refuses to format over a lockspace without --force', async () => {
    const file = path.join(directory, 'small.img');
    fs.writeFileSync(file, Buffer.alloc(4096));
    const init = await runCli([
      'lockspace',
      'init',
      file,
      '--max-hosts',
      '2',
      '--max-resources',
      '2',
      '--json',
    ]);
    assert.equal(init.code, 0, init.stderr);
    const made = JSON.parse(init.stdout) as Record<string, unknown>;
    assert.equal(made['created'], false);
    assert.equal(made['extendedFromBytes'], 4096);
    assert.equal(made['ioTimeoutMs'], 2000);
    const again = await runCli(['lockspace', 'init', file]);
    assert.equal(again.code, 1);
    assert.match(again.stderr, /already holds lockspace .* use --force .* \(ALREADY_EXISTS\)$/m);
    const forced = await runCli(['lockspace', 'init', file, '--force', '--json']);
    assert.equal(forced.code, 0, forced.stderr);
    assert.notEqual((JSON.parse(forced.stdout) as Record<string, unknown>)['uuid'], made['uuid']);
  });

  test('clear errors for what a user can get wrong', async () => {
    const both = await runCli([
      'lockspace',
      'init',
      path.join(directory, 'x'),
      '--profile',
      'fast',
      '--io-timeout-ms',
      '300',
    ]);
    assert.equal(both.code, 1);
    assert.match(both.stderr, /give --profile or --io-timeout-ms, not both \(INVALID_ARGUMENT\)/);
    assert.equal(fs.existsSync(path.join(directory, 'x')), false, 'nothing created on a refusal');
    const noDirectory = await runCli([
      'lockspace',
      'init',
      path.join(directory, 'no', 'such', 'file'),
    ]);
    assert.equal(noDirectory.code, 1);
    assert.match(noDirectory.stderr, /cannot create .*no\/such\/file/);
    const notLockspace = path.join(directory, 'zeros.img');
    fs.writeFileSync(notLockspace, Buffer.alloc(8192));
    const show = await runCli(['lockspace', 'show', notLockspace]);
    assert.equal(show.code, 1);
    assert.match(show.stderr, /no lockspace here .* \(LOCKSPACE_NOT_FOUND\)$/m);
    const hosts = await runCli([
      'lockspace',
      'init',
      path.join(directory, 'y'),
      '--max-hosts',
      '0',
    ]);
    assert.equal(hosts.code, 1);
    assert.match(hosts.stderr, /expected an integer in 1\.\.2000/);
  });
});
