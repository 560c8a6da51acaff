import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { type ErrorCode, TandemError } from '../../src/errors.js';
import { errorCodeMetadataKey, toStatusError } from '../../src/server/status.js';

describe('toStatusError', () => {
  const expected: Array<[ErrorCode, grpc.status]> = [
    ['INVALID_ARGUMENT', grpc.status.INVALID_ARGUMENT],
    ['CONFIG_INVALID', grpc.status.INVALID_ARGUMENT],
    ['DISK_MISALIGNED', grpc.status.INVALID_ARGUMENT],
    ['NOT_FOUND', grpc.status.NOT_FOUND],
    ['NBD_EXPORT_NOT_FOUND', grpc.status.NOT_FOUND],
    ['ALREADY_EXISTS', grpc.status.ALREADY_EXISTS],
    ['NBD_EXPORT_EXISTS', grpc.status.ALREADY_EXISTS],
    ['FAILED_PRECONDITION', grpc.status.FAILED_PRECONDITION],
    ['DISK_READ_ONLY', grpc.status.FAILED_PRECONDITION],
    ['DISK_NO_SPACE', grpc.status.RESOURCE_EXHAUSTED],
    ['DISK_GONE', grpc.status.UNAVAILABLE],
    ['DISK_IO', grpc.status.UNAVAILABLE],
    ['LOCK_HELD', grpc.status.ABORTED],
    ['LOCK_CONTENDED', grpc.status.ABORTED],
    ['HOST_ID_BUSY', grpc.status.ABORTED],
    ['LOCK_TIMEOUT', grpc.status.DEADLINE_EXCEEDED],
    ['FENCED', grpc.status.FAILED_PRECONDITION],
    ['LOCK_NOT_HELD', grpc.status.FAILED_PRECONDITION],
    ['LOCKSPACE_NOT_JOINED', grpc.status.FAILED_PRECONDITION],
    ['LOCKSPACE_CORRUPT', grpc.status.FAILED_PRECONDITION],
    ['LOCKSPACE_NOT_FOUND', grpc.status.NOT_FOUND],
    ['LOCKSPACE_FULL', grpc.status.RESOURCE_EXHAUSTED],
    ['LOCKSPACE_NO_RESOURCES', grpc.status.RESOURCE_EXHAUSTED],
    ['LEASE_IO', grpc.status.UNAVAILABLE],
    ['INTERNAL', grpc.status.INTERNAL],
    ['NBD_PROTOCOL', grpc.status.INTERNAL],
  ];

  for (const [code, status] of expected) {
    test(`${code} -> ${grpc.status[status]}`, () => {
      const result = toStatusError(new TandemError(code, `message for ${code}`));
      assert.equal(result.code, status);
      assert.equal(result.details, `message for ${code}`);
      assert.deepEqual(result.metadata.get(errorCodeMetadataKey), [code]);
    });
  }

  test('anything else is INTERNAL and keeps its message', () => {
    const fromError = toStatusError(new RangeError('boom'));
    assert.equal(fromError.code, grpc.status.INTERNAL);
    assert.equal(fromError.details, 'internal error: boom');
    assert.deepEqual(fromError.metadata.get(errorCodeMetadataKey), ['INTERNAL']);
    assert.equal(toStatusError('a string').details, 'internal error: a string');
    assert.equal(toStatusError(undefined).code, grpc.status.INTERNAL);
  });
});
