/**
 * Wraps a unary handler: validate the request first, run the work, map any failure to a gRPC
 * status in the one place that does so (status.ts), and log the outcome.
 */
import * as grpc from '@grpc/grpc-js';
import type { Logger } from '../log.js';
import { toStatusError } from './status.js';

export function unaryHandler<Request, Valid, Response>(
  logger: Logger,
  method: string,
  validate: (request: Request) => Valid,
  run: (valid: Valid) => Promise<Response> | Response,
): grpc.handleUnaryCall<Request, Response> {
  return (call, callback) => {
    const startedMs = performance.now();
    const finish = (error: unknown, response?: Response): void => {
      const elapsedMs = Math.round((performance.now() - startedMs) * 1000) / 1000;
      if (error === undefined) {
        logger.debug('rpc done', { method, elapsedMs });
        callback(null, response);
        return;
      }
      const status = toStatusError(error);
      const fields = { method, elapsedMs, grpcCode: status.code, error };
      // Client mistakes are routine; only failures of the daemon itself are warnings.
      if (isClientMistake(status.code)) logger.info('rpc refused', fields);
      else logger.warn('rpc failed', fields);
      callback(status);
    };
    let valid: Valid;
    try {
      valid = validate(call.request);
    } catch (error) {
      finish(error);
      return;
    }
    Promise.resolve()
      .then(() => run(valid))
      .then(
        (response) => finish(undefined, response),
        (error: unknown) => finish(error ?? new Error('handler rejected without a reason')),
      );
  };
}

function isClientMistake(code: grpc.status): boolean {
  return (
    code === grpc.status.INVALID_ARGUMENT ||
    code === grpc.status.NOT_FOUND ||
    code === grpc.status.ALREADY_EXISTS ||
    code === grpc.status.FAILED_PRECONDITION
  );
}
