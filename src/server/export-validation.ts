/**
 * Checks for export requests, run at the gRPC edge before anything else and again on every
 * entry read back from exports.json (a hand-edited file is input too).
 */
import path from 'node:path';
import { TandemError } from '../errors.js';

/** NBD allows 4096-byte names; ours stay short enough for tables, URIs and logs. */
export const exportNameLengthMax = 128;
/** Linux PATH_MAX. */
export const filePathLengthMax = 4096;
const exportNamePattern = /^[A-Za-z0-9][A-Za-z0-9._+-]*$/;

export function validateExportName(name: string): string {
  if (name === '') {
    throw new TandemError('INVALID_ARGUMENT', 'export name is empty');
  }
  if (name.length > exportNameLengthMax || !exportNamePattern.test(name)) {
    throw new TandemError(
      'INVALID_ARGUMENT',
      `invalid export name '${name}': use 1..${exportNameLengthMax} letters, digits, '.', '_', ` +
        `'-' or '+', starting with a letter or digit`,
      { details: { name } },
    );
  }
  return name;
}

export function validateFilePath(filePath: string): string {
  if (filePath === '') {
    throw new TandemError('INVALID_ARGUMENT', 'file path is empty');
  }
  if (filePath.length > filePathLengthMax || filePath.includes('\0')) {
    throw new TandemError('INVALID_ARGUMENT', `invalid file path '${filePath}'`);
  }
  // The daemon's working directory is not the client's: only an absolute path means one file.
  if (!path.isAbsolute(filePath)) {
    throw new TandemError('INVALID_ARGUMENT', `file path '${filePath}' is not absolute`);
  }
  return path.normalize(filePath);
}
