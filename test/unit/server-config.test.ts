import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { describe, test } from 'node:test';
import { isTandemError } from '../../src/errors.js';
import {
  formatListenAddress,
  loadConfig,
  parseConfigText,
  parseListenAddress,
  resolveConfig,
} from '../../src/server/config.js';

function assertConfigInvalid(run: () => unknown, pattern: RegExp): void {
  assert.throws(run, (error: unknown) => {
    assert.ok(isTandemError(error, 'CONFIG_INVALID'), String(error));
    assert.match(error.message, pattern);
    return true;
  });
}

describe('parseListenAddress', () => {
  test('accepts host:port, [v6]:port and :port', () => {
    assert.deepEqual(parseListenAddress('127.0.0.1:7600', 'grpc'), {
      host: '127.0.0.1',
      port: 7600,
    });
    assert.deepEqual(parseListenAddress('0.0.0.0:0', 'grpc'), { host: '0.0.0.0', port: 0 });
    assert.deepEqual(parseListenAddress('[::1]:10809', 'nbd'), { host: '::1', port: 10809 });
    assert.deepEqual(parseListenAddress('node-1.example:80', 'nbd'), {
      host: 'node-1.example',
      port: 80,
    });
    assert.deepEqual(parseListenAddress(':9000', 'nbd'), { host: '127.0.0.1', port: 9000 });
  });

  test('refuses what is not an address, naming the setting', () => {
    assertConfigInvalid(() => parseListenAddress('7600', 'grpc'), /^grpc: '7600' is not HOST:PORT/);
    assertConfigInvalid(() => parseListenAddress('host:', 'nbd'), /^nbd: /);
    assertConfigInvalid(() => parseListenAddress('::1:80', 'nbd'), /is not HOST:PORT/);
    assertConfigInvalid(
      () => parseListenAddress('host:65536', 'grpc'),
      /port 65536 is out of range/,
    );
    assertConfigInvalid(() => parseListenAddress('host:-1', 'grpc'), /is not HOST:PORT/);
  });

  test('formats IPv6 hosts in brackets', () => {
    assert.equal(formatListenAddress({ host: '::1', port: 1 }), '[::1]:1');
    assert.equal(formatListenAddress({ host: '10.0.0.1', port: 2 }), '10.0.0.1:2');
  });
});

describe('resolveConfig', () => {
  test('defaults', () => {
    const config = resolveConfig([], { hostName: 'h1', cwd: '/srv' });
    assert.deepEqual(config, {
      dataDir: '/srv/data',
      grpc: { host: '127.0.0.1', port: 7600 },
      nbd: { host: '127.0.0.1', port: 10809 },
      hostName: 'h1',
      logLevel: 'info',
      lockspace: undefined,
      hostId: undefined,
      advertise: undefined,
      vgDir: undefined,
      pvs: [],
      restoreActivations: true,
    });
  });

  test('later layers win; relative data dirs resolve against their layer', () => {
    const config = resolveConfig(
      [
        {
          input: { dataDir: 'state', grpc: '0.0.0.0:1', logLevel: 'debug' },
          baseDirectory: '/etc/tandem',
        },
        { input: { grpc: '127.0.0.1:2', hostName: 'flag-host' }, baseDirectory: '/home/me' },
      ],
      { hostName: 'h1', cwd: '/srv' },
    );
    assert.equal(config.dataDir, '/etc/tandem/state');
    assert.deepEqual(config.grpc, { host: '127.0.0.1', port: 2 });
    assert.equal(config.hostName, 'flag-host');
    assert.equal(config.logLevel, 'debug');
  });

  test('refuses bad values with clear messages', () => {
    const layer = (input: Record<string, unknown>) => [{ input, baseDirectory: '/' }];
    assertConfigInvalid(
      () => resolveConfig(layer({ logLevel: 'loud' })),
      /^logLevel: unknown log level 'loud'/,
    );
    assertConfigInvalid(
      () => resolveConfig(layer({ dataDir: 42 })),
      /^dataDir must be a non-empty string/,
    );
    assertConfigInvalid(
      () => resolveConfig(layer({ hostName: 'two words' })),
      /^hostName 'two words'/,
    );
    assertConfigInvalid(
      () => resolveConfig(layer({ grpc: ['a'] })),
      /^grpc must be a non-empty string/,
    );
    assertConfigInvalid(
      () => resolveConfig(layer({ grpc: '127.0.0.1:5000', nbd: '127.0.0.1:5000' })),
      /cannot both listen on 127\.0\.0\.1:5000/,
    );
  });
});

describe('lockspace settings', () => {
  const layer = (input: Record<string, unknown>, baseDirectory = '/etc/tandem') => [
    { input, baseDirectory },
  ];

  test('a lockspace path resolves against its layer; nbd:// URIs stay as they are', () => {
    const fromFile = resolveConfig(layer({ lockspace: 'leases.img', hostId: 3 }), {
      hostName: 'h1',
    });
    assert.equal(fromFile.lockspace, '/etc/tandem/leases.img');
    assert.equal(fromFile.hostId, 3);
    const fromUri = resolveConfig(
      layer({ lockspace: 'nbd://10.0.0.5:10809/leases', hostId: '7', advertise: 'node-1:7600' }),
      { hostName: 'h1' },
    );
    assert.equal(fromUri.lockspace, 'nbd://10.0.0.5:10809/leases');
    assert.equal(fromUri.hostId, 7, 'a flag gives the host id as text');
    assert.equal(fromUri.advertise, 'node-1:7600');
  });

  test('refuses bad host ids, advertise addresses and settings without a lockspace', () => {
    const withLockspace = (input: Record<string, unknown>) =>
      resolveConfig(layer({ lockspace: '/l.img', ...input }), { hostName: 'h1' });
    assertConfigInvalid(
      () => withLockspace({ hostId: 0 }),
      /^hostId must be an integer in 1\.\.2000/,
    );
    assertConfigInvalid(() => withLockspace({ hostId: 'two' }), /^hostId must be an integer/);
    assertConfigInvalid(() => withLockspace({ hostId: 2001 }), /^hostId 2001 is out of range/);
    assertConfigInvalid(
      () => withLockspace({ advertise: 'node-1' }),
      /^advertise: 'node-1' is not HOST:PORT/,
    );
    assertConfigInvalid(
      () => withLockspace({ advertise: '0.0.0.0:7600' }),
      /must name a host and port that peers can reach/,
    );
    assertConfigInvalid(() => withLockspace({ advertise: 'node-1:0' }), /peers can reach/);
    assertConfigInvalid(() => withLockspace({ lockspace: 'nbd://' }), /^lockspace: /);
    assertConfigInvalid(
      () => resolveConfig(layer({ hostId: 1 }), { hostName: 'h1' }),
      /needs a lockspace \(--lockspace PATH\)/,
    );
    assertConfigInvalid(
      () => resolveConfig(layer({ hostName: 'h'.repeat(65) })),
      /longer than the 64 bytes a lockspace keeps/,
    );
  });
});

describe('config files', () => {
  test('refuses invalid JSON, non-objects and unknown keys', () => {
    assertConfigInvalid(
      () => parseConfigText('{', '/c.json'),
      /^config file \/c\.json is not valid JSON/,
    );
    assertConfigInvalid(() => parseConfigText('[]', '/c.json'), /must hold a JSON object/);
    assertConfigInvalid(
      () => parseConfigText('{"dataDir":"x","grcp":"y"}', '/c.json'),
      /unknown setting\(s\) grcp \(known: dataDir, grpc, nbd, hostName, logLevel, lockspace, hostId, advertise, vgDir, pvs, restoreActivations\)/,
    );
  });

  test('flags override the file; the file path resolves relative to cwd', async () => {
    const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-config-'));
    try {
      fs.writeFileSync(
        path.join(directory, 'tandemd.json'),
        JSON.stringify({ dataDir: 'from-file', nbd: '127.0.0.1:1', hostName: 'file-host' }),
      );
      const config = await loadConfig({ config: 'tandemd.json', hostName: 'flag-host' }, directory);
      assert.equal(config.dataDir, path.join(directory, 'from-file'));
      assert.deepEqual(config.nbd, { host: '127.0.0.1', port: 1 });
      assert.equal(config.hostName, 'flag-host');
      await assert.rejects(loadConfig({ config: 'missing.json' }, directory), (error: unknown) => {
        assert.ok(isTandemError(error, 'CONFIG_INVALID'));
        assert.match(error.message, /^cannot read config file \S+missing\.json/);
        return true;
      });
    } finally {
      fs.rmSync(directory, { recursive: true, force: true });
    }
  });

  test('vgDir resolves against its layer; pvs come from the config file', () => {
    const config = resolveConfig(
      [
        {
          input: { vgDir: 'pvs', pvs: ['a.img', 'nbd://10.0.0.5:10809/pv'] },
          baseDirectory: '/etc/t',
        },
      ],
      { hostName: 'h1' },
    );
    assert.equal(config.vgDir, '/etc/t/pvs');
    assert.deepEqual(config.pvs, ['/etc/t/a.img', 'nbd://10.0.0.5:10809/pv']);
    assertConfigInvalid(
      () => resolveConfig([{ input: { pvs: 'a.img' }, baseDirectory: '/' }]),
      /pvs must be a list/,
    );
  });
});
