/**
 * Reusable buffers for READ replies (header and data in one allocation).
 *
 * A fresh 1 MiB buffer per request costs more than the allocation: the kernel maps and zeroes
 * new pages while the device reads into them (page faults on the I/O thread), and unmaps them
 * when the garbage collector frees them. A buffer goes back to the pool only once the socket
 * has taken all its bytes (the write callback without an error), so no I/O still refers to it;
 * a reply that failed, or whose socket was destroyed, leaves its buffer to the collector.
 *
 * The pool is bounded (`maximumPooledReplyBytes` in limits.ts) and keyed by exact size: clients
 * use one or a few request sizes. When a size is missing and the pool is full, buffers of other
 * sizes are dropped to make room, so a change of workload does not leave the pool stale.
 */
import { assert } from '../errors.js';

/** Smaller replies come from Node's shared slab or small fresh allocations, cheap enough. */
const minimumPooledBytes = 4096;

export class ReplyBufferPool {
  private readonly free = new Map<number, Buffer[]>();
  private pooledBytes = 0;

  constructor(private readonly maximumPooledBytes: number) {}

  /** A buffer of exactly `sizeBytes`, contents uninitialised. */
  take(sizeBytes: number): Buffer {
    const reused = this.free.get(sizeBytes)?.pop();
    if (reused !== undefined) {
      this.pooledBytes -= sizeBytes;
      return reused;
    }
    if (sizeBytes >= minimumPooledBytes && this.pooledBytes + sizeBytes > this.maximumPooledBytes) {
      this.dropOtherSizes(sizeBytes);
    }
    return Buffer.allocUnsafeSlow(sizeBytes);
  }

  /** Returns a buffer from take() that nothing refers to any more. */
  give(buffer: Buffer): void {
    assert(buffer.byteOffset === 0, 'a pooled reply buffer must be a whole allocation');
    const sizeBytes = buffer.length;
    if (sizeBytes < minimumPooledBytes) return;
    if (this.pooledBytes + sizeBytes > this.maximumPooledBytes) return;
    const list = this.free.get(sizeBytes);
    if (list === undefined) this.free.set(sizeBytes, [buffer]);
    else list.push(buffer);
    this.pooledBytes += sizeBytes;
  }

  get pooledSizeBytes(): number {
    return this.pooledBytes;
  }

  private dropOtherSizes(keepSizeBytes: number): void {
    for (const [sizeBytes, list] of this.free) {
      if (sizeBytes === keepSizeBytes) continue;
      this.pooledBytes -= sizeBytes * list.length;
      this.free.delete(sizeBytes);
    }
  }
}
