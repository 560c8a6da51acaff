/**
 * The persisted list of file exports: `<data-dir>/exports.json`.
 *
 * Written as temp file + fsync + rename + fsync of the directory (atomic-file.ts), so after a
 * crash the file holds either the old list or the new one, never a torn mix.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { TandemError, systemErrorCode } from '../errors.js';
import { writeFileAtomic } from './atomic-file.js';
import { validateExportName, validateFilePath } from './export-validation.js';

export interface StoredExport {
  readonly name: string;
  readonly filePath: string;
  readonly readOnly: boolean;
}

const fileFormat = 'tandem-exports';
const fileVersion = 1;
/** Bounds what a corrupt or hostile file can make the daemon allocate at start. */
export const storedExportCountMax = 4096;

export function exportsFilePath(dataDir: string): string {
  return path.join(dataDir, 'exports.json');
}

function corrupt(filePath: string, reason: string, cause?: unknown): TandemError {
  return new TandemError('STATE_CORRUPT', `${filePath} is unreadable: ${reason}`, { cause });
}

function parseEntry(value: unknown, filePath: string, index: number): StoredExport {
  if (typeof value !== 'object' || value === null) {
    throw corrupt(filePath, `entry ${index} is not an object`);
  }
  const { name, filePath: exportPath, readOnly } = value as Record<string, unknown>;
  if (typeof name !== 'string' || typeof exportPath !== 'string' || typeof readOnly !== 'boolean') {
    throw corrupt(filePath, `entry ${index} needs name, filePath (strings) and readOnly (boolean)`);
  }
  try {
    return { name: validateExportName(name), filePath: validateFilePath(exportPath), readOnly };
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw corrupt(filePath, `entry ${index}: ${reason}`, error);
  }
}

/** Reads the list; a missing file is an empty list (a fresh data dir). */
export async function readStoredExports(dataDir: string): Promise<StoredExport[]> {
  const filePath = exportsFilePath(dataDir);
  let text: string;
  try {
    text = await fs.readFile(filePath, 'utf8');
  } catch (error) {
    if (systemErrorCode(error) === 'ENOENT') return [];
    throw corrupt(filePath, error instanceof Error ? error.message : String(error), error);
  }
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw corrupt(filePath, 'not valid JSON', error);
  }
  const record = (typeof parsed === 'object' && parsed !== null ? parsed : {}) as Record<
    string,
    unknown
  >;
  if (record['format'] !== fileFormat || record['version'] !== fileVersion) {
    throw corrupt(filePath, `expected format '${fileFormat}' version ${fileVersion}`);
  }
  const entries = record['exports'];
  if (!Array.isArray(entries) || entries.length > storedExportCountMax) {
    throw corrupt(filePath, `'exports' must be an array of at most ${storedExportCountMax}`);
  }
  const exports = entries.map((entry: unknown, index) => parseEntry(entry, filePath, index));
  const names = new Set(exports.map((entry) => entry.name));
  if (names.size !== exports.length) throw corrupt(filePath, 'an export name appears twice');
  return exports;
}

export async function writeStoredExports(
  dataDir: string,
  exports: readonly StoredExport[],
): Promise<void> {
  const sorted = [...exports].sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
  const text = `${JSON.stringify({ format: fileFormat, version: fileVersion, exports: sorted }, null, 2)}\n`;
  await writeFileAtomic(exportsFilePath(dataDir), text);
}
