/**
 * The checks every BlockDevice runs before any I/O, so that all devices fail the same bad request
 * with the same typed error (and the conformance suite can hold them to it).
 */
import { TandemError, systemErrorCode } from '../errors.js';
import type { BlockDevice } from './block-device.js';

/**
 * Validates a request against the device: read-only first (like nbdkit, a write to a read-only
 * export is EPERM whatever its range), then integer-ness, range and alignment.
 */
export function checkRange(
  device: BlockDevice,
  offsetBytes: number,
  lengthBytes: number,
  forWrite: boolean,
): void {
  if (forWrite && device.readOnly) {
    throw new TandemError('DISK_READ_ONLY', `${device.description} is read-only`, {
      details: { offsetBytes, lengthBytes },
    });
  }
  if (
    !Number.isSafeInteger(offsetBytes) ||
    !Number.isSafeInteger(lengthBytes) ||
    offsetBytes < 0 ||
    lengthBytes < 0
  ) {
    throw new TandemError(
      'DISK_INVALID_ARGUMENT',
      `offset ${offsetBytes} and length ${lengthBytes} must be non-negative safe integers`,
      { details: { offsetBytes, lengthBytes } },
    );
  }
  if (offsetBytes + lengthBytes > device.sizeBytes) {
    throw new TandemError(
      'DISK_OUT_OF_RANGE',
      `${lengthBytes} bytes at ${offsetBytes} go beyond the end of ${device.description} ` +
        `(${device.sizeBytes} bytes)`,
      { details: { offsetBytes, lengthBytes, sizeBytes: device.sizeBytes } },
    );
  }
  const alignmentBytes = device.alignmentBytes;
  if (alignmentBytes > 1 && (offsetBytes % alignmentBytes !== 0 || lengthBytes % alignmentBytes)) {
    throw new TandemError(
      'DISK_MISALIGNED',
      `${lengthBytes} bytes at ${offsetBytes} are not aligned to ${alignmentBytes} bytes on ` +
        device.description,
      { details: { offsetBytes, lengthBytes, alignmentBytes } },
    );
  }
}

/** Read and write carry their data: their length is also bounded by `maximumIoBytes`. */
export function checkDataRange(
  device: BlockDevice,
  offsetBytes: number,
  lengthBytes: number,
  forWrite: boolean,
): void {
  checkRange(device, offsetBytes, lengthBytes, forWrite);
  if (lengthBytes > device.maximumIoBytes) {
    throw new TandemError(
      'DISK_INVALID_ARGUMENT',
      `${lengthBytes} bytes exceed the largest request of ${device.description} ` +
        `(${device.maximumIoBytes} bytes)`,
      { details: { offsetBytes, lengthBytes, maximumIoBytes: device.maximumIoBytes } },
    );
  }
}

/** blockStatus must describe at least one byte. */
export function checkStatusRange(device: BlockDevice, offsetBytes: number, lengthBytes: number) {
  checkRange(device, offsetBytes, lengthBytes, false);
  if (lengthBytes === 0) {
    throw new TandemError('DISK_INVALID_ARGUMENT', 'blockStatus needs a length of at least 1', {
      details: { offsetBytes, lengthBytes },
    });
  }
}

export function closedError(device: BlockDevice): TandemError {
  return new TandemError('DISK_CLOSED', `${device.description} is closed`);
}

export function goneError(device: BlockDevice, cause?: unknown): TandemError {
  return new TandemError('DISK_GONE', `${device.description} is gone`, { cause });
}

/** errno codes that mean the device itself went away (unplugged, detached, lost its path). */
const goneErrnoCodes = new Set(['ENXIO', 'ENODEV', 'ENOMEDIUM']);

/**
 * Maps a system error from an I/O call to the disk layer's typed errors. EIO is a media error
 * on a file but a vanished device when `isGone` says so (the caller checks sysfs).
 */
export function systemErrorToDiskError(
  error: unknown,
  device: BlockDevice,
  operation: string,
  offsetBytes: number,
  lengthBytes: number,
  isGone: () => boolean = () => false,
): TandemError {
  if (error instanceof TandemError) return error;
  const errno = systemErrorCode(error) ?? 'EUNKNOWN';
  const details = { errno, operation, offsetBytes, lengthBytes };
  const where = `${operation} of ${lengthBytes} bytes at ${offsetBytes} on ${device.description}`;
  if (errno === 'ENOSPC' || errno === 'EDQUOT') {
    return new TandemError('DISK_NO_SPACE', `${where}: no space left`, { cause: error, details });
  }
  if (goneErrnoCodes.has(errno) || (errno === 'EIO' && isGone())) {
    return new TandemError('DISK_GONE', `${where}: device is gone (${errno})`, {
      cause: error,
      details,
    });
  }
  if (errno === 'EROFS') {
    return new TandemError('DISK_READ_ONLY', `${where}: read-only`, { cause: error, details });
  }
  if (errno === 'EOPNOTSUPP' || errno === 'ENOTSUP' || errno === 'ENOTTY' || errno === 'ENOSYS') {
    return new TandemError('DISK_NOT_SUPPORTED', `${where}: not supported (${errno})`, {
      cause: error,
      details,
    });
  }
  return new TandemError('DISK_IO', `${where} failed (${errno})`, { cause: error, details });
}

/** Whether a system error says the operation is not supported here (so a fallback applies). */
export function isNotSupportedError(error: unknown): boolean {
  const errno = systemErrorCode(error);
  return (
    errno === 'EOPNOTSUPP' ||
    errno === 'ENOTSUP' ||
    errno === 'ENOTTY' ||
    errno === 'ENOSYS' ||
    // fallocate on some filesystems, and BLKDISCARD on devices without discard, say EINVAL.
    errno === 'EINVAL'
  );
}
