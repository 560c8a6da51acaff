/**
 * The one place where internal errors become gRPC statuses (as grpc-js's serverErrorToStatus).
 *
 * The gRPC code tells a client what kind of failure it met; the stable tandem error code
 * travels beside it in the trailing metadata key `tandem-error-code`, so the CLI can print it
 * and scripts can match on it.
 */
import * as grpc from '@grpc/grpc-js';
import { type ErrorCode, isTandemError } from '../errors.js';

export const errorCodeMetadataKey = 'tandem-error-code';

/** What a handler passes to its callback when it fails. */
export interface StatusError {
  code: grpc.status;
  details: string;
  metadata: grpc.Metadata;
}

function statusForCode(code: ErrorCode): grpc.status {
  switch (code) {
    case 'INVALID_ARGUMENT':
    case 'CONFIG_INVALID':
    case 'DISK_INVALID_ARGUMENT':
    case 'DISK_OUT_OF_RANGE':
    case 'DISK_MISALIGNED':
      return grpc.status.INVALID_ARGUMENT;
    case 'NOT_FOUND':
    case 'PV_NOT_FOUND':
    case 'VG_NOT_FOUND':
    case 'LV_NOT_FOUND':
    case 'NBD_EXPORT_NOT_FOUND':
    case 'LOCKSPACE_NOT_FOUND':
      return grpc.status.NOT_FOUND;
    case 'ALREADY_EXISTS':
    case 'PV_EXISTS':
    case 'VG_EXISTS':
    case 'LV_EXISTS':
    case 'NBD_EXPORT_EXISTS':
      return grpc.status.ALREADY_EXISTS;
    case 'FAILED_PRECONDITION':
    case 'DISK_READ_ONLY':
    case 'DISK_NOT_SUPPORTED':
    case 'DISK_CLOSED':
    case 'FENCED':
    case 'LOCK_NOT_HELD':
    case 'LOCKSPACE_NOT_JOINED':
    case 'LOCKSPACE_CORRUPT':
    case 'PV_LABEL_CORRUPT':
    case 'PV_IN_USE':
    case 'MDA_CORRUPT':
    case 'MDA_VERSION':
    case 'METADATA_INVALID':
    case 'VG_PARTIAL':
    case 'VG_INCONSISTENT':
    case 'LV_ACTIVE_ELSEWHERE':
    case 'LV_ACTIVE':
    case 'LV_NOT_ACTIVE':
    case 'MOVE_IN_PROGRESS':
      return grpc.status.FAILED_PRECONDITION;
    // A lock conflict: another holder, a lost ballot or a busy host id.
    case 'LOCK_HELD':
    case 'LOCK_CONTENDED':
    case 'HOST_ID_BUSY':
    case 'PV_CLAIM_LOST':
      return grpc.status.ABORTED;
    case 'LOCK_TIMEOUT':
      return grpc.status.DEADLINE_EXCEEDED;
    case 'LOCKSPACE_FULL':
    case 'LOCKSPACE_NO_RESOURCES':
      return grpc.status.RESOURCE_EXHAUSTED;
    case 'DISK_NO_SPACE':
    case 'VG_NO_SPACE':
    case 'MDA_FULL':
      return grpc.status.RESOURCE_EXHAUSTED;
    // The device or a peer went away: retrying later, or elsewhere, may succeed.
    case 'DISK_GONE':
    case 'DISK_IO':
    case 'NBD_DISCONNECTED':
    case 'NBD_SERVER_ERROR':
    case 'LEASE_IO':
    case 'LOCKSPACE_MOVING':
    case 'LOCKSPACE_MOVED':
      return grpc.status.UNAVAILABLE;
    default:
      // INTERNAL, NBD_PROTOCOL, and any code added after this switch was last reviewed.
      return grpc.status.INTERNAL;
  }
}

/** Maps any thrown value to the status a handler reports. Never throws. */
export function toStatusError(error: unknown): StatusError {
  const metadata = new grpc.Metadata();
  if (isTandemError(error)) {
    metadata.set(errorCodeMetadataKey, error.code);
    return { code: statusForCode(error.code), details: error.message, metadata };
  }
  // A plain Error here is a bug or an unexpected system error; its message still helps.
  metadata.set(errorCodeMetadataKey, 'INTERNAL');
  const message = error instanceof Error ? error.message : String(error);
  return { code: grpc.status.INTERNAL, details: `internal error: ${message}`, metadata };
}
