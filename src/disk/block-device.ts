/**
 * The one interface through which tandem touches storage.
 *
 * Every device (a regular file, a block device such as /dev/loop3, a remote NBD export, a
 * fault-injecting wrapper, later a simulated disk) implements it, and the same conformance
 * tests run against each (test/unit/disk-conformance.test.ts).
 *
 * Offsets and lengths are bytes as JavaScript numbers; implementations assert they are safe
 * integers. A device checks every request against its size and its alignment before any I/O and
 * fails with a typed TandemError (`DISK_OUT_OF_RANGE`, `DISK_MISALIGNED`, `DISK_READ_ONLY`,
 * `DISK_GONE`, `DISK_IO`, `DISK_NOT_SUPPORTED`, `DISK_CLOSED`).
 */

export interface WriteOptions {
  /** Force Unit Access: the write is durable when the promise resolves. */
  readonly fua?: boolean;
}

export interface WriteZeroesOptions extends WriteOptions {
  /** The range must read back as zeroes but stay allocated (NBD_CMD_FLAG_NO_HOLE). */
  readonly noHole?: boolean;
  /**
   * Fail with DISK_NOT_SUPPORTED instead of falling back to writing zero buffers
   * (NBD_CMD_FLAG_FAST_ZERO): the caller wants zeroing only when it is cheap.
   */
  readonly fastOnly?: boolean;
}

/** Discard takes only the write options (FUA). */
export type DiscardOptions = WriteOptions;

/** One run of the answer to blockStatus: `lengthBytes` bytes with the same state. */
export interface BlockStatusExtent {
  readonly lengthBytes: number;
  /** Not allocated on the device (a hole): reads return zeroes, writes may allocate. */
  readonly hole: boolean;
  /** Known to read as zeroes. */
  readonly zero: boolean;
}

export interface BlockDeviceCapabilities {
  /** flush() does real work (a volatile cache exists). */
  readonly flush: boolean;
  /** write(..., { fua }) is honoured natively or by a flush after the write. */
  readonly fua: boolean;
  /** discard() may release space (otherwise it is a successful no-op). */
  readonly discard: boolean;
  /** writeZeroes() can zero without writing zero buffers (punch hole / zero range). */
  readonly fastZero: boolean;
  /** blockStatus() reports holes, not only "all data". */
  readonly blockStatus: boolean;
  /**
   * Several independent openers see each other's completed writes and a flush from one covers
   * the writes completed by all (the condition for NBD's CAN_MULTI_CONN).
   */
  readonly consistentAcrossConnections: boolean;
}

export interface BlockDevice {
  /** A short text for logs and errors, e.g. the path or the NBD URI. */
  readonly description: string;
  readonly sizeBytes: number;
  /** Requests must be aligned to this (1 for buffered files; 512 or 4096 with O_DIRECT). */
  readonly alignmentBytes: number;
  readonly logicalSectorSizeBytes: number;
  readonly physicalSectorSizeBytes: number;
  /** The largest single request the device accepts. */
  readonly maximumIoBytes: number;
  readonly readOnly: boolean;
  readonly capabilities: BlockDeviceCapabilities;

  /** Fills `buffer` entirely from `offsetBytes`. */
  read(buffer: Buffer, offsetBytes: number): Promise<void>;
  /** Writes all of `buffer` at `offsetBytes`. */
  write(buffer: Buffer, offsetBytes: number, options?: WriteOptions): Promise<void>;
  /**
   * Optional: writes `pieces` back to back from `offsetBytes`, exactly like one write() of their
   * concatenation, without joining them first (the NBD server passes a payload as the socket
   * chunks it arrived in). Callers without it join the pieces and call write().
   */
  writeGathered?(
    pieces: readonly Buffer[],
    offsetBytes: number,
    options?: WriteOptions,
  ): Promise<void>;
  /** Makes every write completed before the call durable. */
  flush(): Promise<void>;
  /** Hints that a range is unused; reads of it may then return anything (NBD TRIM). */
  discard(offsetBytes: number, lengthBytes: number, options?: DiscardOptions): Promise<void>;
  /** The range reads back as zeroes afterwards. */
  writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options?: WriteZeroesOptions,
  ): Promise<void>;
  /** Allocation of a range; extents cover at least one byte and at most `lengthBytes`. */
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<BlockStatusExtent[]>;
  /** Hints to read a range into a cache (NBD CACHE); may do nothing. */
  cache(offsetBytes: number, lengthBytes: number): Promise<void>;
  /** Releases the device; later calls fail with DISK_CLOSED. Idempotent. */
  close(): Promise<void>;
}
