/**
 * Typed errors shared by every layer.
 *
 * Each error carries a stable string `code` (API: clients and tests match on it) grouped by
 * subsystem prefix (`DISK_`, `NBD_`, `CONFIG_`, ...), a human message that may change, optional
 * structured `details`, and the standard `cause` chain.
 */

import { getSystemErrorName } from 'node:util';

export type ErrorCode =
  // Disk layer.
  | 'DISK_OUT_OF_RANGE'
  | 'DISK_MISALIGNED'
  | 'DISK_GONE'
  | 'DISK_READ_ONLY'
  | 'DISK_IO'
  | 'DISK_NO_SPACE'
  | 'DISK_NOT_SUPPORTED'
  | 'DISK_CLOSED'
  | 'DISK_INVALID_ARGUMENT'
  // NBD protocol (server and client).
  | 'NBD_PROTOCOL'
  | 'NBD_EXPORT_EXISTS'
  | 'NBD_EXPORT_NOT_FOUND'
  | 'NBD_SERVER_ERROR'
  | 'NBD_DISCONNECTED'
  // Lockspace, delta leases and host liveness (src/heartbeat-store).
  /** The lockspace header or a host slot is not a valid tandem record (magic, version, CRC). */
  | 'LOCKSPACE_CORRUPT'
  /** The device holds no lockspace, or one too small for its header. */
  | 'LOCKSPACE_NOT_FOUND'
  /** The host id asked for is held by a live host, or was taken by a racing host. */
  | 'HOST_ID_BUSY'
  /** Every host slot is held. */
  | 'LOCKSPACE_FULL'
  /** This host has not joined the lockspace (or has left it). */
  | 'LOCKSPACE_NOT_JOINED'
  /** Renewals failed past the fail time: the write gate is closed and every lease is lost. */
  | 'FENCED'
  /** The lockspace is being moved to other extents: lease writes wait until the move ends. */
  | 'LOCKSPACE_MOVING'
  /** The lockspace moved to other extents; this copy is stale and must be opened again. */
  | 'LOCKSPACE_MOVED'
  // Resource leases (src/locking).
  /** Another host holds the lease in a conflicting mode. */
  | 'LOCK_HELD'
  /** The wait for a lease passed its deadline. */
  | 'LOCK_TIMEOUT'
  /** The operation needs the lease held here (release, convert, set value). */
  | 'LOCK_NOT_HELD'
  /** A ballot lost to a concurrent one; retrying may succeed. */
  | 'LOCK_CONTENDED'
  /** A lease block could not be read or failed its CRC: never taken as free. */
  | 'LEASE_IO'
  /** Every resource area of the lockspace is in use. */
  | 'LOCKSPACE_NO_RESOURCES'
  // Clustered volume groups (src/clvm).
  /** The device holds no PV label. */
  | 'PV_NOT_FOUND'
  /** The device already holds a PV label (or other data tandem will not write over). */
  | 'PV_EXISTS'
  /** The PV label failed its magic, version or CRC check. */
  | 'PV_LABEL_CORRUPT'
  /** The PV belongs to a VG (or its extents are in use) and cannot be taken or removed. */
  | 'PV_IN_USE'
  /** Another host claimed a free PV at the same time, or the claim ran out (pv-claim.ts). */
  | 'PV_CLAIM_LOST'
  /** A metadata area or record is corrupt (bad CRC, truncated ring, wrong magic). */
  | 'MDA_CORRUPT'
  /** The new metadata does not fit in the metadata area. */
  | 'MDA_FULL'
  /** The metadata was written by a newer tandem (format version unknown here). */
  | 'MDA_VERSION'
  /** The VG metadata breaks an invariant (overlapping extents, a segment off its PV...). */
  | 'METADATA_INVALID'
  | 'VG_NOT_FOUND'
  | 'VG_EXISTS'
  /** Not enough free extents for the request. */
  | 'VG_NO_SPACE'
  /** A PV the request needs is missing on this host. */
  | 'VG_PARTIAL'
  /** The PVs given disagree (a PV of another VG, two VGs of one name). */
  | 'VG_INCONSISTENT'
  | 'LV_NOT_FOUND'
  | 'LV_EXISTS'
  /** The LV is active on another host (the message names it). */
  | 'LV_ACTIVE_ELSEWHERE'
  /** The LV is active here and the request needs it inactive (or --force). */
  | 'LV_ACTIVE'
  | 'LV_NOT_ACTIVE'
  /** A PV evacuation runs in the VG; this change waits until it ends. */
  | 'MOVE_IN_PROGRESS'
  // Configuration and process level.
  | 'CONFIG_INVALID'
  | 'LISTEN_FAILED'
  | 'STATE_CORRUPT'
  | 'INVALID_ARGUMENT'
  | 'NOT_FOUND'
  | 'ALREADY_EXISTS'
  | 'FAILED_PRECONDITION'
  | 'INTERNAL';

export class TandemError extends Error {
  readonly code: ErrorCode;
  readonly details: Readonly<Record<string, unknown>>;

  constructor(
    code: ErrorCode,
    message: string,
    options: { cause?: unknown; details?: Record<string, unknown> } = {},
  ) {
    super(message, options.cause === undefined ? undefined : { cause: options.cause });
    this.name = 'TandemError';
    this.code = code;
    this.details = options.details ?? {};
  }
}

export function isTandemError(error: unknown, code?: ErrorCode): error is TandemError {
  return error instanceof TandemError && (code === undefined || error.code === code);
}

/**
 * A programmer error: an invariant that must hold whatever the input. Stays on in production,
 * as TigerBeetle's assertions do; an operating error (bad input, I/O failure) is never an assert.
 */
export function assert(condition: unknown, message: string): asserts condition {
  if (!condition) {
    throw new Error(`assertion failed: ${message}`);
  }
}

/** The name of a positive errno as Node's system errors carry it ('EIO' for 5). */
export function systemErrnoName(systemErrno: number): string {
  try {
    return getSystemErrorName(-systemErrno);
  } catch {
    return `ERRNO${systemErrno}`;
  }
}

/** Node's system errors carry `code` (e.g. 'EIO') and `errno`; this reads them safely. */
export function systemErrorCode(error: unknown): string | undefined {
  if (typeof error === 'object' && error !== null && 'code' in error) {
    const code = (error as { code: unknown }).code;
    return typeof code === 'string' ? code : undefined;
  }
  return undefined;
}
