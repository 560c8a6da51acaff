/**
 * Named limits of the NBD server. Every queue and every loop driven by a client is bounded by
 * one of these, so a misbehaving client costs a bounded amount of memory and time.
 */
export interface NbdLimits {
  /** Largest READ/WRITE payload accepted; advertised as the maximum block size. */
  readonly maximumPayloadBytes: number;
  /**
   * A WRITE over the maximum is answered EOVERFLOW after its payload is skipped, as long as the
   * payload is at most this; a larger one cannot be worth reading and ends the connection.
   */
  readonly maximumSkippedPayloadBytes: number;
  /** Option data over this is skipped and answered NBD_REP_ERR_TOO_BIG. */
  readonly maximumOptionBytes: number;
  /** Option data over this is not even skipped: the connection is dropped. */
  readonly maximumSkippedOptionBytes: number;
  /** Options one connection may send before it is considered abusive. */
  readonly maximumOptionsPerConnection: number;
  /** Requests in flight per connection before the server stops reading from it. */
  readonly maximumRequestsInFlight: number;
  /** Payload bytes (read and write) in flight per connection before it stops reading. */
  readonly maximumBytesInFlight: number;
  /** Connections open at once; more are refused. */
  readonly maximumConnections: number;
  /** Time a client has to finish option haggling. */
  readonly handshakeTimeoutMs: number;
  /** Time in-flight requests get to finish when an export is removed or the server stops. */
  readonly drainTimeoutMs: number;
  /** Time a peer gets to close after the server ended its side; then the socket is dropped. */
  readonly closeGraceMs: number;
  /** Block status descriptors per reply. */
  readonly maximumBlockStatusExtents: number;
  /** Idle READ reply buffers kept for reuse, over all connections (reply-buffers.ts). */
  readonly maximumPooledReplyBytes: number;
  /**
   * Freed C heap the process keeps instead of returning it to the kernel (native.ts
   * retainFreedHeap): socket buffers then reuse pages instead of faulting in new ones.
   */
  readonly retainedFreedHeapBytes: number;
}

export const defaultNbdLimits: NbdLimits = {
  maximumPayloadBytes: 32 * 1024 * 1024,
  maximumSkippedPayloadBytes: 64 * 1024 * 1024,
  maximumOptionBytes: 64 * 1024,
  maximumSkippedOptionBytes: 1024 * 1024,
  maximumOptionsPerConnection: 1024,
  maximumRequestsInFlight: 256,
  maximumBytesInFlight: 128 * 1024 * 1024,
  maximumConnections: 1024,
  handshakeTimeoutMs: 30_000,
  // Drain plus grace stays well under the CLI's 10 s deadline for `tandem export remove`.
  drainTimeoutMs: 5_000,
  closeGraceMs: 1_000,
  maximumBlockStatusExtents: 1024,
  // Enough for a few connections at queue depth 8 with 1 MiB reads; bounded for tandemd's RSS.
  maximumPooledReplyBytes: 16 * 1024 * 1024,
  // Measured: 26,000 page faults per GiB of 1 MiB writes with glibc's 128 KiB default, 600 here.
  retainedFreedHeapBytes: 16 * 1024 * 1024,
};

export function resolveNbdLimits(overrides: Partial<NbdLimits> = {}): NbdLimits {
  return { ...defaultNbdLimits, ...overrides };
}
