/**
 * Server-streaming handlers (the Watch calls): validate the request, subscribe, forward events
 * until the client cancels or the daemon stops, and unsubscribe exactly once.
 *
 * A stream is bounded: when a client reads so slowly that `streamQueueMessagesMax` messages wait
 * to be sent, the stream ends with an error (the client may watch again), so that one slow
 * watcher cannot make the daemon buffer without end. A stopping daemon ends every open stream
 * (OK), so that the gRPC shutdown does not wait for watchers that never hang up.
 */
import * as grpc from '@grpc/grpc-js';
import { TandemError } from '../errors.js';
import type { Logger } from '../log.js';
import { toStatusError } from './status.js';
import { isClientMistake } from './unary.js';

/** Messages a stream may have waiting for a slow client before it is cut. */
export const streamQueueMessagesMax = 1024;

/** What a subscription writes to. */
export interface StreamSink<Message> {
  send(message: Message): void;
  /** Ends the stream with the status `toStatusError(error)` gives. */
  fail(error: unknown): void;
}

/** The open streams of one daemon, so that a stop can end them. */
export class OpenStreams {
  private readonly enders = new Set<() => void>();
  private closed = false;

  add(end: () => void): () => void {
    if (this.closed) {
      end();
      return () => undefined;
    }
    this.enders.add(end);
    return () => this.enders.delete(end);
  }

  /** Ends every open stream (status OK) and every later one at once. */
  endAll(): void {
    this.closed = true;
    for (const end of [...this.enders]) end();
    this.enders.clear();
  }
}

export function serverStreamHandler<Request, Valid, Message>(
  parts: { logger: Logger; method: string; streams: OpenStreams },
  validate: (request: Request) => Valid,
  subscribe: (valid: Valid, sink: StreamSink<Message>) => () => void,
): grpc.handleServerStreamingCall<Request, Message> {
  const { logger, method, streams } = parts;
  return (call) => {
    let finished = false;
    let unsubscribe: () => void = () => undefined;
    let forget: () => void = () => undefined;
    const finish = (error?: unknown): void => {
      if (finished) return;
      finished = true;
      unsubscribe();
      forget();
      if (error === undefined) {
        logger.debug('stream ended', { method });
        if (!call.cancelled) call.end();
        return;
      }
      const status = toStatusError(error);
      const fields = { method, grpcCode: status.code, error };
      if (isClientMistake(status.code)) logger.info('stream refused', fields);
      else logger.warn('stream failed', fields);
      if (!call.cancelled) call.emit('error', status);
    };
    const sink: StreamSink<Message> = {
      send: (message) => {
        if (finished) return;
        if (call.writableLength >= streamQueueMessagesMax) {
          finish(
            new TandemError(
              'FAILED_PRECONDITION',
              `the client read too slowly (${streamQueueMessagesMax} messages waiting); watch again`,
            ),
          );
          return;
        }
        call.write(message);
      },
      fail: (error) => finish(error),
    };
    call.on('cancelled', () => finish());
    try {
      const valid = validate(call.request);
      forget = streams.add(() => finish());
      const stop = subscribe(valid, sink);
      // The subscription may have ended the stream already (a snapshot that failed).
      if (finished) stop();
      else unsubscribe = stop;
      logger.debug('stream started', { method });
    } catch (error) {
      finish(error);
    }
  };
}
