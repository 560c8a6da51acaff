/**
 * The recorded LV activations (`<data-dir>/activations.json`): the round trip through the file,
 * the boot-id rule (restore only after a restart of tandemd, never after a reboot), and bad
 * files, which are logged and taken as empty without ever stopping the daemon.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, describe, test } from 'node:test';
import { isTandemError } from '../../src/errors.js';
import { createLogger } from '../../src/log.js';
import {
  type ActivationIntent,
  ActivationIntents,
  activationIntentsMax,
  activationsFilePath,
  decodeActivationIntents,
  encodeActivationIntents,
  readBootId,
  restorableAfterStart,
} from '../../src/server/activation-intent.js';
import { buildDaemonProgram, toFlags } from '../../src/server/daemon.js';
import { loadConfig } from '../../src/server/config.js';

const root = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-activation-intent-'));
after(() => fs.rmSync(root, { recursive: true, force: true }));
let directoryCount = 0;

const bootA = '0b2c4e1a-6f51-4c0e-9d1e-5f7a2b3c4d5e';
const bootB = '9f8e7d6c-5b4a-4392-8170-6f5e4d3c2b1a';
const first: ActivationIntent = {
  vgUuid: '11111111-2222-4333-8444-555555555555',
  vgName: 'vg0',
  lvUuid: 'aaaaaaaa-bbbb-4ccc-8ddd-eeeeeeeeeeee',
  lvName: 'vm1-disk0',
  mode: 'ex',
};
const second: ActivationIntent = {
  ...first,
  lvUuid: 'aaaaaaaa-bbbb-4ccc-8ddd-ffffffffffff',
  lvName: 'shared-iso',
  mode: 'sh',
};

interface LogLine {
  level: string;
  message: string;
  [key: string]: unknown;
}

/** A data dir and a boot id file of its own, and a logger that keeps its lines. */
function fixture(bootId: string): {
  dataDir: string;
  bootIdPath: string;
  lines: LogLine[];
  load: (restore?: boolean) => Promise<ActivationIntents>;
} {
  directoryCount += 1;
  const dataDir = path.join(root, `data-${directoryCount}`);
  fs.mkdirSync(dataDir);
  const bootIdPath = path.join(dataDir, 'boot_id');
  fs.writeFileSync(bootIdPath, `${bootId}\n`);
  const lines: LogLine[] = [];
  const logger = createLogger({
    level: 'debug',
    sink: { write: (line) => void lines.push(JSON.parse(line) as LogLine) },
  });
  return {
    dataDir,
    bootIdPath,
    lines,
    load: (restore = true) => ActivationIntents.load({ dataDir, restore, logger, bootIdPath }),
  };
}

function storedFile(dataDir: string): { bootId: string; activations: Array<{ lvName: string }> } {
  return JSON.parse(fs.readFileSync(activationsFilePath(dataDir), 'utf8')) as {
    bootId: string;
    activations: Array<{ lvName: string }>;
  };
}

describe('the activations file', () => {
  test('encode and decode round trip; modes are written as words', () => {
    const text = encodeActivationIntents({ bootId: bootA, activations: [second, first] });
    assert.match(text, /"mode": "exclusive"/);
    assert.match(text, /"mode": "shared"/);
    const decoded = decodeActivationIntents(text);
    assert.equal(decoded.bootId, bootA);
    assert.deepEqual(decoded.activations, [second, first], 'sorted by VG, then LV name');
  });

  test('recorded on activate, removed when an activation ends, kept across loads', async () => {
    const host = fixture(bootA);
    const intents = await host.load();
    assert.equal(fs.existsSync(activationsFilePath(host.dataDir)), false, 'nothing written yet');
    await intents.activated(first);
    await intents.activated(second);
    assert.deepEqual(storedFile(host.dataDir).bootId, bootA, 'the boot id is stored');
    assert.deepEqual(
      storedFile(host.dataDir).activations.map((entry) => entry.lvName),
      ['shared-iso', 'vm1-disk0'],
    );
    const again = await host.load();
    assert.deepEqual(
      [...again.toRestore].sort((a, b) => a.lvName.localeCompare(b.lvName)),
      [second, first],
    );
    assert.equal(await again.ended(second.lvUuid), true);
    assert.equal(await again.ended(second.lvUuid), false, 'ending twice removes nothing');
    assert.deepEqual((await host.load()).toRestore, [first]);
    assert.equal(fs.existsSync(`${activationsFilePath(host.dataDir)}.tmp`), false);
  });

  test('a rename is recorded; ended(uuid, only) spares an entry replaced since', async () => {
    const host = fixture(bootA);
    const intents = await host.load();
    await intents.activated(first);
    const loaded = await host.load();
    const recorded = loaded.get(first.lvUuid);
    assert.ok(recorded !== undefined);
    await loaded.activated({ ...first, lvName: 'renamed' });
    assert.equal(await loaded.ended(first.lvUuid, recorded), false, 'a newer entry stays');
    assert.equal(loaded.get(first.lvUuid)?.lvName, 'renamed');
    assert.deepEqual(storedFile(host.dataDir).activations, [
      { ...first, lvName: 'renamed', mode: 'exclusive' },
    ]);
  });
});

describe('the boot-id rule', () => {
  test('restorable only when the recorded boot id is this one, and known', () => {
    const file = { bootId: bootA, activations: [first] };
    assert.equal(restorableAfterStart(file, bootA).restorable, true);
    assert.equal(restorableAfterStart(file, bootB).restorable, false);
    assert.match(restorableAfterStart(file, bootB).reason, /rebooted/);
    assert.equal(restorableAfterStart(file, '').restorable, false, 'an unreadable boot id');
    assert.equal(restorableAfterStart({ ...file, bootId: '' }, '').restorable, false);
  });

  test('after a reboot: one info line per activation, nothing to restore, file cleared', async () => {
    const host = fixture(bootA);
    const intents = await host.load();
    await intents.activated(first);
    await intents.activated(second);
    fs.writeFileSync(host.bootIdPath, `${bootB}\n`);
    const rebooted = await host.load();
    assert.deepEqual(rebooted.toRestore, []);
    assert.deepEqual(rebooted.list(), []);
    const skipped = host.lines.filter((line) => line.message === 'not restoring an LV activation');
    assert.equal(skipped.length, 2);
    for (const line of skipped) {
      assert.equal(line.level, 'info');
      assert.match(String(line['reason']), /rebooted/);
    }
    assert.deepEqual(storedFile(host.dataDir), {
      format: 'tandem-activations',
      version: 1,
      bootId: bootB,
      activations: [],
    });
  });

  test('--no-restore-activations: nothing restored, the old entries cleared', async () => {
    const host = fixture(bootA);
    await (await host.load()).activated(first);
    const intents = await host.load(false);
    assert.deepEqual(intents.toRestore, []);
    assert.match(
      String(
        host.lines.find((line) => line.message === 'not restoring an LV activation')?.['reason'],
      ),
      /turned off/,
    );
    assert.deepEqual(storedFile(host.dataDir).activations, []);
  });

  test('the boot id of this host is read, or empty where there is none', async () => {
    const host = fixture(bootA);
    assert.equal(await readBootId(host.bootIdPath), bootA);
    assert.equal(await readBootId(path.join(host.dataDir, 'missing')), '');
    if (fs.existsSync('/proc/sys/kernel/random/boot_id')) {
      assert.match(await readBootId(), /^[0-9a-f-]{36}$/);
    }
  });
});

describe('bad files never stop the daemon', () => {
  const valid = JSON.parse(encodeActivationIntents({ bootId: bootA, activations: [first] })) as {
    activations: Array<Record<string, unknown>>;
  };
  const bad: Array<[string, string]> = [
    ['not JSON', '{"format": "tandem-activations",'],
    ['truncated to nothing', ''],
    ['an array', '[]'],
    ['another format', JSON.stringify({ ...valid, format: 'tandem-exports' })],
    ['a newer version', JSON.stringify({ ...valid, version: 2 })],
    ['no boot id', JSON.stringify({ ...valid, bootId: 7 })],
    ['a bad mode', JSON.stringify({ ...valid, activations: [{ ...first, mode: 'ex' }] })],
    ['a bad uuid', JSON.stringify({ ...valid, activations: [{ ...first, lvUuid: 'x' }] })],
    ['a bad name', JSON.stringify({ ...valid, activations: [{ ...first, lvName: '../x' }] })],
    [
      'an entry twice',
      JSON.stringify({ ...valid, activations: [valid.activations[0], valid.activations[0]] }),
    ],
    [
      'too many entries',
      JSON.stringify({
        ...valid,
        activations: new Array(activationIntentsMax + 1).fill(valid.activations[0]),
      }),
    ],
  ];
  for (const [what, text] of bad) {
    test(`${what}: STATE_CORRUPT when decoded; a warning and no restore when loaded`, async () => {
      assert.throws(
        () => decodeActivationIntents(text),
        (error: unknown) => isTandemError(error, 'STATE_CORRUPT'),
      );
      const host = fixture(bootA);
      fs.writeFileSync(activationsFilePath(host.dataDir), text);
      const intents = await host.load();
      assert.deepEqual(intents.toRestore, []);
      const warnings = host.lines.filter((line) => line.level === 'warn');
      assert.equal(warnings.length, 1, JSON.stringify(host.lines));
      assert.match(warnings[0]?.message ?? '', /unreadable/);
      // The next activation replaces the bad file with a good one.
      await intents.activated(second);
      assert.deepEqual((await host.load()).toRestore, [second]);
    });
  }

  test('a file that cannot be read (a directory in its place): a warning, no restore', async () => {
    const host = fixture(bootA);
    fs.mkdirSync(activationsFilePath(host.dataDir));
    const intents = await host.load();
    assert.deepEqual(intents.toRestore, []);
    assert.ok(host.lines.some((line) => line.level === 'warn' && /cannot read/.test(line.message)));
    // Recording fails too (rename onto a directory): logged, never thrown.
    await intents.activated(first);
    assert.ok(
      host.lines.some((line) => line.level === 'warn' && /cannot record/.test(line.message)),
    );
  });
});

describe('restoreActivations setting', () => {
  const flagsOf = (args: readonly string[]) =>
    toFlags(
      buildDaemonProgram()
        .parse(['node', 'tandemd', ...args])
        .opts(),
    );

  test('on by default; --no-restore-activations turns it off, --restore-activations on', async () => {
    assert.equal(flagsOf([]).restoreActivations, undefined, 'unset: the config file decides');
    assert.equal((await loadConfig(flagsOf([]), root)).restoreActivations, true);
    assert.equal(
      (await loadConfig(flagsOf(['--no-restore-activations']), root)).restoreActivations,
      false,
    );
    assert.equal(
      (await loadConfig(flagsOf(['--restore-activations']), root)).restoreActivations,
      true,
    );
  });

  test('the config file key; a flag wins over it; a non-boolean is refused', async () => {
    const configPath = path.join(root, 'tandemd.json');
    fs.writeFileSync(configPath, JSON.stringify({ restoreActivations: false }));
    const fromFile = await loadConfig({ ...flagsOf([]), config: configPath }, root);
    assert.equal(fromFile.restoreActivations, false);
    const flagWins = await loadConfig(
      { ...flagsOf(['--restore-activations']), config: configPath },
      root,
    );
    assert.equal(flagWins.restoreActivations, true);
    fs.writeFileSync(configPath, JSON.stringify({ restoreActivations: 'no' }));
    await assert.rejects(
      loadConfig({ config: configPath }, root),
      (error: unknown) =>
        isTandemError(error, 'CONFIG_INVALID') &&
        /restoreActivations must be true or false/.test(error.message),
    );
  });
});
