/**
 * A FIFO of received socket chunks, read without copying where possible.
 *
 * The NBD hot path parses a 28-byte request header and then, for writes, a payload. Socket
 * chunks are fresh allocations that Node never reuses, so a payload can be handed to the device
 * as views of the chunks it arrived in (takePieces, no copy); take() copies only data that spans
 * chunks, once.
 */
import { assert } from '../errors.js';

export class ByteQueue {
  private chunks: Buffer[] = [];
  /** Read position inside chunks[0]. */
  private headOffset = 0;
  private queuedBytes = 0;

  get length(): number {
    return this.queuedBytes;
  }

  push(chunk: Buffer): void {
    if (chunk.length === 0) return;
    this.chunks.push(chunk);
    this.queuedBytes += chunk.length;
  }

  /**
   * Makes the first `count` queued bytes contiguous and returns the chunk holding them and the
   * offset where they start. The caller must have checked `length >= count`.
   */
  contiguous(count: number): { buffer: Buffer; offset: number } {
    assert(count <= this.queuedBytes, 'contiguous() past the queued bytes');
    const first = this.chunks[0];
    assert(first !== undefined, 'queue has bytes but no chunk');
    if (first.length - this.headOffset >= count) {
      return { buffer: first, offset: this.headOffset };
    }
    const merged = this.take(count);
    // Put the merged bytes back at the front so that consume() sees them. The chunk now at the
    // front may be partly read: cut it at the read position, since headOffset will then refer
    // to the merged chunk.
    const partlyRead = this.chunks[0];
    if (partlyRead !== undefined && this.headOffset > 0) {
      this.chunks[0] = partlyRead.subarray(this.headOffset);
    }
    this.chunks.unshift(merged);
    this.headOffset = 0;
    this.queuedBytes += count;
    return { buffer: merged, offset: 0 };
  }

  /** Drops `count` bytes from the front. */
  consume(count: number): void {
    assert(count <= this.queuedBytes, 'consume() past the queued bytes');
    this.queuedBytes -= count;
    let remaining = count;
    while (remaining > 0) {
      const first = this.chunks[0];
      assert(first !== undefined, 'queue has bytes but no chunk');
      const available = first.length - this.headOffset;
      if (available > remaining) {
        this.headOffset += remaining;
        return;
      }
      remaining -= available;
      this.chunks.shift();
      this.headOffset = 0;
    }
  }

  /** Removes and returns `count` bytes: a view when they lie in one chunk, else one copy. */
  take(count: number): Buffer {
    assert(count <= this.queuedBytes, 'take() past the queued bytes');
    const first = this.chunks[0];
    assert(first !== undefined || count === 0, 'queue has bytes but no chunk');
    if (count === 0) return Buffer.alloc(0);
    if (first !== undefined && first.length - this.headOffset >= count) {
      const view = first.subarray(this.headOffset, this.headOffset + count);
      this.consume(count);
      return view;
    }
    const out = Buffer.allocUnsafe(count);
    this.copyInto(out, 0, count);
    return out;
  }

  /**
   * Removes the first `count` bytes and returns them as views of the chunks they lie in, in
   * order (no copy): a write payload goes to the device as these pieces.
   */
  takePieces(count: number): Buffer[] {
    assert(count <= this.queuedBytes, 'takePieces() past the queued bytes');
    const pieces: Buffer[] = [];
    let remaining = count;
    while (remaining > 0) {
      const first = this.chunks[0];
      assert(first !== undefined, 'queue has bytes but no chunk');
      const step = Math.min(first.length - this.headOffset, remaining);
      pieces.push(first.subarray(this.headOffset, this.headOffset + step));
      this.consume(step);
      remaining -= step;
    }
    return pieces;
  }

  /** Moves up to `count` bytes into `target` at `targetOffset`; returns how many it moved. */
  copyInto(target: Buffer, targetOffset: number, count: number): number {
    let copied = 0;
    while (copied < count && this.queuedBytes > 0) {
      const first = this.chunks[0];
      assert(first !== undefined, 'queue has bytes but no chunk');
      const available = first.length - this.headOffset;
      const step = Math.min(available, count - copied);
      first.copy(target, targetOffset + copied, this.headOffset, this.headOffset + step);
      copied += step;
      this.consume(step);
    }
    return copied;
  }

  /** Drops up to `count` bytes; returns how many it dropped. */
  skip(count: number): number {
    const step = Math.min(count, this.queuedBytes);
    this.consume(step);
    return step;
  }

  clear(): void {
    this.chunks = [];
    this.headOffset = 0;
    this.queuedBytes = 0;
  }
}
