/**
 * Wraps a unary handler: validate the request first, run the work, map any failure to a gRPC
 * status in the one place that does so (status.ts), and log the outcome.
 *
 * The work gets the call's context: a signal that aborts when the client cancels or the call's
 * deadline passes (so a long wait, such as a lock acquire, stops when nobody waits for it any
 * more), and the deadline itself.
 */
import type { EventEmitter } from 'node:events';
import * as grpc from '@grpc/grpc-js';
import { TandemError } from '../errors.js';
import type { Logger } from '../log.js';
import { toStatusError } from './status.js';

/** What unary and streaming server calls share (grpc-js does not export its name for it). */
export type ServerCallLike = EventEmitter & { getDeadline(): grpc.Deadline };

export interface CallContext {
  /** Aborts when the client cancels or the deadline passes. */
  readonly signal: AbortSignal;
  /** Milliseconds (Date.now() scale) at which the client stops waiting; Infinity if never. */
  readonly deadlineMs: number;
}

/** The deadline of a call in Date.now() milliseconds; Infinity when the client set none. */
export function callDeadlineMs(call: { getDeadline(): grpc.Deadline }): number {
  const deadline = call.getDeadline();
  const milliseconds = deadline instanceof Date ? deadline.getTime() : deadline;
  return Number.isFinite(milliseconds) ? milliseconds : Infinity;
}

/**
 * An AbortController tied to the call: aborted on cancellation or at the deadline. `dispose`
 * clears the deadline timer once the call is over.
 */
export function callAbortController(
  call: ServerCallLike,
  deadlineMs: number,
): { signal: AbortSignal; dispose: () => void } {
  const controller = new AbortController();
  const onCancelled = (): void => {
    controller.abort(new TandemError('FAILED_PRECONDITION', 'the client cancelled the call'));
  };
  call.on('cancelled', onCancelled);
  let timer: NodeJS.Timeout | undefined;
  if (Number.isFinite(deadlineMs)) {
    // setTimeout takes at most 2^31-1 ms; a deadline further away is as good as none.
    const delayMs = Math.max(0, deadlineMs - Date.now());
    if (delayMs < 2 ** 31 - 1) {
      timer = setTimeout(() => {
        controller.abort(new TandemError('LOCK_TIMEOUT', 'the call passed its deadline'));
      }, delayMs);
    }
  }
  return {
    signal: controller.signal,
    dispose: () => {
      clearTimeout(timer);
      call.off('cancelled', onCancelled);
    },
  };
}

export function unaryHandler<Request, Valid, Response>(
  logger: Logger,
  method: string,
  validate: (request: Request) => Valid,
  run: (valid: Valid, context: CallContext) => Promise<Response> | Response,
): grpc.handleUnaryCall<Request, Response> {
  return (call, callback) => {
    const startedMs = performance.now();
    const deadlineMs = callDeadlineMs(call);
    const abort = callAbortController(call, deadlineMs);
    const finish = (error: unknown, response?: Response): void => {
      abort.dispose();
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
      .then(() => run(valid, { signal: abort.signal, deadlineMs }))
      .then(
        (response) => finish(undefined, response),
        (error: unknown) => finish(error ?? new Error('handler rejected without a reason')),
      );
  };
}

export function isClientMistake(code: grpc.status): boolean {
  return (
    code === grpc.status.INVALID_ARGUMENT ||
    code === grpc.status.NOT_FOUND ||
    code === grpc.status.ALREADY_EXISTS ||
    code === grpc.status.FAILED_PRECONDITION ||
    code === grpc.status.ABORTED ||
    code === grpc.status.DEADLINE_EXCEEDED
  );
}
