/**
 * The CLI's connection to tandemd: typed clients, a deadline on every call, and the one
 * function that turns a failed call into the message a user reads.
 */
import * as grpc from '@grpc/grpc-js';
import { type TandemProtoGrpcType, loadTandemProto } from '../generated/tandem-proto.js';

/** Metadata key the server puts the stable tandem error code in (see src/server/status.ts). */
const errorCodeMetadataKey = 'tandem-error-code';

/** A failure to show as `tandem: <message> (<CODE>)`, exit code 1. */
export class CliError extends Error {
  constructor(
    message: string,
    readonly code: string,
  ) {
    super(message);
    this.name = 'CliError';
  }
}

type Callback<Response> = (error: grpc.ServiceError | null, response?: Response) => void;

export class ApiConnection {
  private proto: TandemProtoGrpcType | undefined;
  private readonly clients: grpc.Client[] = [];

  constructor(
    readonly serverAddress: string,
    readonly timeoutMs: number,
  ) {}

  /** Service constructors of tandem.v1 etc., loaded on first use. */
  get services(): TandemProtoGrpcType {
    this.proto ??= loadTandemProto();
    return this.proto;
  }

  client<Client extends grpc.Client>(
    constructor: new (address: string, credentials: grpc.ChannelCredentials) => Client,
  ): Client {
    const client = new constructor(this.serverAddress, grpc.credentials.createInsecure());
    this.clients.push(client);
    return client;
  }

  /**
   * Runs one unary call under the connection's deadline (or `options.timeoutMs`, for calls that
   * may wait on purpose, such as a lock acquire with --wait-ms).
   */
  call<Response>(
    invoke: (
      metadata: grpc.Metadata,
      options: grpc.CallOptions,
      callback: Callback<Response>,
    ) => void,
    options: { timeoutMs?: number } = {},
  ): Promise<Response> {
    const timeoutMs = options.timeoutMs ?? this.timeoutMs;
    const deadline = new Date(Date.now() + timeoutMs);
    return new Promise((resolve, reject) => {
      invoke(new grpc.Metadata(), { deadline }, (error, response) => {
        if (error !== null) reject(this.describe(error, timeoutMs));
        else if (response === undefined) reject(new CliError('empty response', 'INTERNAL'));
        else resolve(response);
      });
    });
  }

  /**
   * Runs one server-streaming call (no deadline: a watch runs until stopped) and hands every
   * message to `onMessage`. Resolves when the server ends the stream or `signal` aborts (the
   * call is cancelled then); rejects with the described error otherwise.
   */
  stream<Message>(
    start: (
      metadata: grpc.Metadata,
      options: grpc.CallOptions,
    ) => grpc.ClientReadableStream<Message>,
    onMessage: (message: Message) => void,
    signal?: AbortSignal,
  ): Promise<void> {
    return new Promise((resolve, reject) => {
      if (signal?.aborted === true) {
        resolve();
        return;
      }
      const call = start(new grpc.Metadata(), {});
      const onAbort = (): void => call.cancel();
      signal?.addEventListener('abort', onAbort, { once: true });
      const settle = (error?: CliError): void => {
        signal?.removeEventListener('abort', onAbort);
        if (error === undefined) resolve();
        else reject(error);
      };
      call.on('data', (message: Message) => {
        try {
          onMessage(message);
        } catch (error) {
          call.cancel();
          const text = error instanceof Error ? error.message : String(error);
          settle(new CliError(text, 'INTERNAL'));
        }
      });
      call.on('error', (error: grpc.ServiceError) => {
        if (signal?.aborted === true && error.code === grpc.status.CANCELLED) settle();
        else settle(this.describe(error, this.timeoutMs));
      });
      call.on('end', () => settle());
    });
  }

  close(): void {
    for (const client of this.clients) client.close();
    this.clients.length = 0;
  }

  private describe(error: grpc.ServiceError, timeoutMs: number): CliError {
    const statusName = grpc.status[error.code] ?? `STATUS_${error.code}`;
    const [tandemCode] = error.metadata?.get(errorCodeMetadataKey) ?? [];
    if (typeof tandemCode === 'string') return new CliError(error.details, tandemCode);
    // No tandem code: the call never reached a tandem handler.
    if (error.code === grpc.status.UNAVAILABLE) {
      return new CliError(
        `cannot reach tandemd at ${this.serverAddress}: ${error.details}`,
        statusName,
      );
    }
    if (error.code === grpc.status.DEADLINE_EXCEEDED) {
      return new CliError(
        `tandemd at ${this.serverAddress} did not answer within ${timeoutMs / 1000} s`,
        statusName,
      );
    }
    return new CliError(error.details, statusName);
  }
}
