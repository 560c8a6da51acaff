/**
 * What the clustered-VG integration tests share: CLI result checks, and reading a VG straight
 * from its PV files (not through any daemon) to check what is really on disk.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { type VgRead, readVgMetadata, scanDevices } from '../../../src/clvm/metadata-store.js';
import { openFileDevice } from '../../../src/disk/file-device.js';
import type { CliResult } from './daemon.js';

/** Asserts the CLI succeeded; returns its stdout. */
export function checkOk(result: CliResult, what: string): string {
  assert.equal(result.code, 0, `${what} failed:\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

/** Asserts the CLI failed with stderr matching `pattern`. */
export function checkFails(result: CliResult, pattern: RegExp, what: string): void {
  assert.notEqual(result.code, 0, `${what} should fail:\n${result.stdout}`);
  assert.match(result.stderr, pattern, `${what}:\n${result.stderr}`);
}

/** Reads the one VG on the PV files in `directory`, opened read-only. */
export async function readVgOnDisk(directory: string): Promise<VgRead> {
  const paths = fs.readdirSync(directory).map((name) => path.join(directory, name));
  const devices = await Promise.all(
    paths.map(async (pvPath) => ({
      path: pvPath,
      device: await openFileDevice(pvPath, { readOnly: true }),
    })),
  );
  try {
    const scanned = await scanDevices(devices);
    assert.equal(scanned.byVg.size, 1, 'one VG on the PVs');
    return await readVgMetadata([...scanned.byVg.values()][0] ?? []);
  } finally {
    await Promise.all(devices.map(({ device }) => device.close()));
  }
}
