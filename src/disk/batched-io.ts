/**
 * Groups the positional reads and writes of one event-loop turn into batches for the native
 * addon's submitBatch(): one thread-pool hand-off and one completion per batch instead of per
 * request. The NBD server parses every request of a socket read in one go, so at queue depth 32
 * a batch typically holds many requests.
 *
 * Requests are queued and flushed at setImmediate, i.e. after the poll phase has delivered all
 * socket data of this turn. Batches are capped so that several pool threads share a large burst
 * (and one slow request delays at most its own batch).
 */
import { endOfFileError } from './file-io.js';
import type { SubmitBatch } from './native.js';

/** Completion of one request: null, or an errno-style error like Node's fs errors. */
export type BatchDone = (error: NodeJS.ErrnoException | null) => void;

const errnoNames: Readonly<Record<number, string>> = {
  1: 'EPERM',
  5: 'EIO',
  6: 'ENXIO',
  9: 'EBADF',
  12: 'ENOMEM',
  19: 'ENODEV',
  22: 'EINVAL',
  27: 'EFBIG',
  28: 'ENOSPC',
  30: 'EROFS',
  122: 'EDQUOT',
  123: 'ENOMEDIUM',
  125: 'ECANCELED',
};

function batchError(result: number, write: boolean, offsetBytes: number): NodeJS.ErrnoException {
  if (result === -1) {
    return endOfFileError(offsetBytes);
  }
  const code = errnoNames[result] ?? `ERRNO${result}`;
  return Object.assign(new Error(`${write ? 'pwrite' : 'pread'} failed: ${code}`), {
    code,
    errno: -result,
    syscall: write ? 'pwrite' : 'pread',
  });
}

const errnoOperationNotSupported = 95;
/**
 * Larger reads go to the pool even when cached: their copy then runs on a pool thread, beside
 * the event loop's copy into the socket, instead of after it.
 */
const maximumCachedReadBytes = 64 * 1024;
/** Bytes per batch: small requests share a batch, a large one gets one of its own. */
const maximumBatchBytes = 128 * 1024;

export class BatchedIo {
  private buffers: Array<Buffer | readonly Buffer[]> = [];
  private lengths: number[] = [];
  private offsets: number[] = [];
  private writes: number[] = [];
  private callbacks: BatchDone[] = [];
  private flushScheduled = false;

  /** Cleared on the first answer that says RWF_NOWAIT is not supported here. */
  private tryCacheFirst: boolean;

  constructor(
    private readonly fd: number,
    private readonly submit: SubmitBatch,
    private readonly maximumOperationsPerBatch: number,
    private readonly readCached:
      ((fd: number, buffer: Buffer, offsetBytes: number) => number) | undefined,
  ) {
    this.tryCacheFirst = readCached !== undefined;
  }

  /**
   * A read the page cache can answer completes at once on the event loop (a few microseconds,
   * never a wait on the device); anything else goes to the pool with the next batch.
   */
  read(buffer: Buffer, offsetBytes: number, done: BatchDone): void {
    if (
      this.tryCacheFirst &&
      this.readCached !== undefined &&
      buffer.length <= maximumCachedReadBytes
    ) {
      const result = this.readCached(this.fd, buffer, offsetBytes);
      if (result === buffer.length) {
        done(null);
        return;
      }
      if (result === -errnoOperationNotSupported) this.tryCacheFirst = false;
    }
    this.enqueue(buffer, buffer.length, offsetBytes, 0, done);
  }

  write(buffer: Buffer, offsetBytes: number, done: BatchDone): void {
    this.enqueue(buffer, buffer.length, offsetBytes, 1, done);
  }

  /**
   * Writes `pieces` back to back from `offsetBytes` with one pwritev: the pieces stay where they
   * are (no joining copy). They must not change until `done` runs.
   */
  writeGathered(pieces: readonly Buffer[], offsetBytes: number, done: BatchDone): void {
    let lengthBytes = 0;
    for (const piece of pieces) lengthBytes += piece.length;
    this.enqueue(pieces, lengthBytes, offsetBytes, 1, done);
  }

  private enqueue(
    buffer: Buffer | readonly Buffer[],
    lengthBytes: number,
    offsetBytes: number,
    write: number,
    done: BatchDone,
  ): void {
    this.buffers.push(buffer);
    this.lengths.push(lengthBytes);
    this.offsets.push(offsetBytes);
    this.writes.push(write);
    this.callbacks.push(done);
    if (!this.flushScheduled) {
      this.flushScheduled = true;
      setImmediate(() => this.flush());
    }
  }

  private flush(): void {
    this.flushScheduled = false;
    const total = this.buffers.length;
    let start = 0;
    let batchBytes = 0;
    for (let index = 0; index < total; index++) {
      const lengthBytes = this.lengths[index] ?? 0;
      // Close the batch before it would pass either bound; large requests then run side by
      // side on several pool threads instead of one after another on one.
      if (
        index > start &&
        (index - start >= this.maximumOperationsPerBatch ||
          batchBytes + lengthBytes > maximumBatchBytes)
      ) {
        this.submitRange(start, index);
        start = index;
        batchBytes = 0;
      }
      batchBytes += lengthBytes;
    }
    if (total > start) this.submitRange(start, total);
    this.buffers = [];
    this.lengths = [];
    this.offsets = [];
    this.writes = [];
    this.callbacks = [];
  }

  private submitRange(start: number, end: number): void {
    const buffers = this.buffers.slice(start, end);
    const offsets = Float64Array.from(this.offsets.slice(start, end));
    const writes = Uint8Array.from(this.writes.slice(start, end));
    const callbacks = this.callbacks.slice(start, end);
    this.submit(this.fd, buffers, offsets, writes, (results) => {
      for (let index = 0; index < callbacks.length; index++) {
        const result = results[index] ?? 5;
        const done = callbacks[index];
        if (done === undefined) continue;
        // A callback that throws must not stop the others, nor escape into native code.
        try {
          done(result === 0 ? null : batchError(result, writes[index] === 1, offsets[index] ?? 0));
        } catch (error) {
          queueMicrotask(() => {
            throw error;
          });
        }
      }
    });
  }
}
