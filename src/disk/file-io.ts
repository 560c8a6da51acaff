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

/** What a read that met the end of the file fails with (code EEOF, an I/O error to callers). */
export function endOfFileError(positionBytes: number): NodeJS.ErrnoException {
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

/**
 * Writes `pieces` back to back from `positionBytes` with fs.writev, then calls `done` once; after
 * a short write it goes on from the first byte not written.
 */
export function writeGatheredFrom(
  fd: number,
  pieces: readonly Buffer[],
  positionBytes: number,
  done: TransferDone,
) {
  let remaining = pieces.filter((piece) => piece.length > 0);
  let doneBytes = 0;
  const onWrite = (error: NodeJS.ErrnoException | null, bytesWritten: number): void => {
    if (error !== null) return done(error);
    if (bytesWritten === 0) {
      return done(Object.assign(new Error('write made no progress'), { code: 'EIO' }));
    }
    doneBytes += bytesWritten;
    remaining = dropLeadingBytes(remaining, bytesWritten);
    if (remaining.length === 0) return done(null);
    fs.writev(fd, remaining, positionBytes + doneBytes, onWrite);
  };
  if (remaining.length === 0) return done(null);
  fs.writev(fd, remaining, positionBytes, onWrite);
}

/** The pieces without their first `count` bytes (views, no copy). */
function dropLeadingBytes(pieces: readonly Buffer[], count: number): Buffer[] {
  let left = count;
  let index = 0;
  while (index < pieces.length && left >= (pieces[index]?.length ?? 0)) {
    left -= pieces[index]?.length ?? 0;
    index++;
  }
  const rest = pieces.slice(index);
  const first = rest[0];
  if (first !== undefined && left > 0) rest[0] = first.subarray(left);
  return rest;
}

export function writeGatheredFully(
  fd: number,
  pieces: readonly Buffer[],
  positionBytes: number,
): Promise<void> {
  return new Promise((resolve, reject) =>
    writeGatheredFrom(fd, pieces, positionBytes, (error) =>
      error === null ? resolve() : reject(error),
    ),
  );
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
