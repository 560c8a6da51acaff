/**
 * Positional read/write loops on a file descriptor: the NBD hot path.
 *
 * Callback `fs.read`/`fs.write` with a single continuation closure per request, completed by a
 * plain callback so that the device can wrap the whole request in exactly one Promise: measurably
 * cheaper than fs/promises FileHandle or nested async functions. Both loop on short transfers
 * (a signal, a block device boundary, a file being truncated).
 */
import fs from 'node:fs';

export type TransferDone = (error: NodeJS.ErrnoException | null) => void;

function endOfFileError(positionBytes: number): NodeJS.ErrnoException {
  return Object.assign(new Error(`unexpected end of file at ${positionBytes}`), { code: 'EEOF' });
}

/** Fills all of `buffer` from `positionBytes`, then calls `done` once. */
export function readInto(fd: number, buffer: Buffer, positionBytes: number, done: TransferDone) {
  const totalBytes = buffer.length;
  let doneBytes = 0;
  const onRead = (error: NodeJS.ErrnoException | null, bytesRead: number): void => {
    if (error !== null) return done(error);
    if (bytesRead === 0) return done(endOfFileError(positionBytes + doneBytes));
    doneBytes += bytesRead;
    if (doneBytes === totalBytes) return done(null);
    fs.read(fd, buffer, doneBytes, totalBytes - doneBytes, positionBytes + doneBytes, onRead);
  };
  fs.read(fd, buffer, 0, totalBytes, positionBytes, onRead);
}

/** Writes all of `buffer` at `positionBytes`, then calls `done` once. */
export function writeFrom(fd: number, buffer: Buffer, positionBytes: number, done: TransferDone) {
  const totalBytes = buffer.length;
  let doneBytes = 0;
  const onWrite = (error: NodeJS.ErrnoException | null, bytesWritten: number): void => {
    if (error !== null) return done(error);
    if (bytesWritten === 0) {
      // A zero-byte write for a non-empty request would loop forever; call it an I/O error.
      return done(Object.assign(new Error('write made no progress'), { code: 'EIO' }));
    }
    doneBytes += bytesWritten;
    if (doneBytes === totalBytes) return done(null);
    fs.write(fd, buffer, doneBytes, totalBytes - doneBytes, positionBytes + doneBytes, onWrite);
  };
  fs.write(fd, buffer, 0, totalBytes, positionBytes, onWrite);
}

export function readFully(fd: number, buffer: Buffer, positionBytes: number): Promise<void> {
  return new Promise((resolve, reject) =>
    readInto(fd, buffer, positionBytes, (error) => (error === null ? resolve() : reject(error))),
  );
}

export function writeFully(fd: number, buffer: Buffer, positionBytes: number): Promise<void> {
  return new Promise((resolve, reject) =>
    writeFrom(fd, buffer, positionBytes, (error) => (error === null ? resolve() : reject(error))),
  );
}

export function fdatasync(fd: number): Promise<void> {
  return new Promise((resolve, reject) => {
    fs.fdatasync(fd, (error) => (error === null ? resolve() : reject(error)));
  });
}
