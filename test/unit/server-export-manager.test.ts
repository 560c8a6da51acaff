import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { afterEach, beforeEach, describe, test } from 'node:test';
import type { BlockDevice } from '../../src/disk/block-device.js';
import { TandemError, isTandemError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import type { NbdExportInfo, NbdExportOptions } from '../../src/nbd/server.js';
import { type ExportRegistry, ExportManager } from '../../src/server/export-manager.js';
import { exportsFilePath } from '../../src/server/export-store.js';

/** Only the fields the manager reads; every I/O method would be a test bug. */
function fakeDevice(filePath: string, readOnly: boolean, closed: string[]): BlockDevice {
  const unused = (): Promise<never> => Promise.reject(new Error('no I/O in this test'));
  return {
    description: `file ${filePath}`,
    sizeBytes: 4096,
    alignmentBytes: 1,
    logicalSectorSizeBytes: 512,
    physicalSectorSizeBytes: 4096,
    maximumIoBytes: 1 << 20,
    readOnly,
    capabilities: {
      flush: true,
      fua: true,
      discard: false,
      fastZero: false,
      blockStatus: false,
      consistentAcrossConnections: true,
    },
    read: unused,
    write: unused,
    flush: unused,
    discard: unused,
    writeZeroes: unused,
    blockStatus: unused,
    cache: unused,
    close: async () => {
      closed.push(filePath);
    },
  };
}

class FakeRegistry implements ExportRegistry {
  readonly exports = new Map<string, NbdExportOptions>();
  addExport(options: NbdExportOptions): void {
    if (this.exports.has(options.name)) throw new TandemError('NBD_EXPORT_EXISTS', options.name);
    this.exports.set(options.name, options);
  }
  async removeExport(name: string): Promise<void> {
    if (!this.exports.delete(name)) throw new TandemError('NBD_EXPORT_NOT_FOUND', name);
  }
  listExports(): NbdExportInfo[] {
    return [...this.exports.values()].map((item) => ({
      name: item.name,
      description: item.description ?? '',
      sizeBytes: item.device.sizeBytes,
      readOnly: item.readOnly ?? false,
      connectionCount: 0,
      deviceDescription: item.device.description,
    }));
  }
}

describe('ExportManager', () => {
  let dataDir: string;
  let closed: string[];
  let registry: FakeRegistry;

  const manager = (): ExportManager =>
    new ExportManager({
      dataDir,
      registry,
      logger: silentLogger,
      openDevice: async (filePath, options) => fakeDevice(filePath, options.readOnly, closed),
    });
  const makeFile = (name: string): string => {
    const filePath = path.join(dataDir, name);
    fs.writeFileSync(filePath, Buffer.alloc(4096));
    return filePath;
  };

  beforeEach(() => {
    dataDir = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-exports-'));
    closed = [];
    registry = new FakeRegistry();
  });
  afterEach(() => fs.rmSync(dataDir, { recursive: true, force: true }));

  test('add persists, remove closes the device after unregistering', async () => {
    const exports = manager();
    const filePath = makeFile('a.img');
    const summary = await exports.add({ name: 'a', filePath, readOnly: true });
    assert.equal(summary.sizeBytes, 4096);
    assert.equal(registry.exports.get('a')?.readOnly, true);
    const stored = JSON.parse(fs.readFileSync(exportsFilePath(dataDir), 'utf8'));
    assert.deepEqual(stored, {
      format: 'tandem-exports',
      version: 1,
      exports: [{ name: 'a', filePath, readOnly: true }],
    });
    await exports.remove('a');
    assert.equal(registry.exports.size, 0);
    assert.deepEqual(closed, [filePath]);
    assert.equal(JSON.parse(fs.readFileSync(exportsFilePath(dataDir), 'utf8')).exports.length, 0);
  });

  test('concurrent adds of one name: exactly one wins', async () => {
    const exports = manager();
    const filePath = makeFile('a.img');
    const results = await Promise.allSettled([
      exports.add({ name: 'same', filePath, readOnly: false }),
      exports.add({ name: 'same', filePath, readOnly: false }),
    ]);
    assert.deepEqual(results.map((result) => result.status).sort(), ['fulfilled', 'rejected']);
    const failure = results.find((result) => result.status === 'rejected');
    assert.ok(failure?.status === 'rejected' && isTandemError(failure.reason, 'ALREADY_EXISTS'));
  });

  test('restore skips a vanished file but keeps it configured until removed', async () => {
    const first = manager();
    const keptPath = makeFile('kept.img');
    const gonePath = makeFile('gone.img');
    await first.add({ name: 'kept', filePath: keptPath, readOnly: false });
    await first.add({ name: 'gone', filePath: gonePath, readOnly: false });
    await first.closeDevices();
    fs.rmSync(gonePath);

    registry = new FakeRegistry();
    const second = manager();
    assert.deepEqual(await second.restore(), { restoredCount: 1, skippedCount: 1 });
    assert.deepEqual(
      second.list().map((item) => item.name),
      ['kept'],
    );
    const names = () =>
      JSON.parse(fs.readFileSync(exportsFilePath(dataDir), 'utf8')).exports.map(
        (item: { name: string }) => item.name,
      );
    await second.add({ name: 'other', filePath: keptPath, readOnly: true });
    assert.deepEqual(names(), ['gone', 'kept', 'other']);
    await second.remove('gone');
    assert.deepEqual(names(), ['kept', 'other']);
  });

  test('a corrupt exports.json stops the start with STATE_CORRUPT', async () => {
    fs.writeFileSync(
      exportsFilePath(dataDir),
      '{"format":"tandem-exports","version":1,"exports":[{}]}',
    );
    await assert.rejects(manager().restore(), (error: unknown) =>
      isTandemError(error, 'STATE_CORRUPT'),
    );
  });

  test('validation runs before any work', async () => {
    const exports = manager();
    await assert.rejects(
      exports.add({ name: '../x', filePath: '/tmp/x', readOnly: false }),
      (error: unknown) => isTandemError(error, 'INVALID_ARGUMENT'),
    );
    await assert.rejects(
      exports.add({ name: 'x', filePath: 'relative', readOnly: false }),
      /is not absolute/,
    );
    await assert.rejects(
      exports.add({ name: 'x', filePath: path.join(dataDir, 'none'), readOnly: false }),
      (error: unknown) => isTandemError(error, 'NOT_FOUND'),
    );
    assert.equal(registry.exports.size, 0);
  });
});
