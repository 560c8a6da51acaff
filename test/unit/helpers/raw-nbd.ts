/**
 * A raw-socket NBD client for protocol tests: every byte is sent and checked by hand, so tests
 * can send malformed input and see exactly what the server answers (or that it hangs up).
 *
 * Every wait is bounded: reads take a timeout and fail with ConnectionClosedError when the
 * server closes the connection before the bytes arrive.
 */
import assert from 'node:assert/strict';
import net from 'node:net';
import { silentLogger } from '../../../src/log.js';
import type { NbdLimits } from '../../../src/nbd/limits.js';
import {
  NbdServer,
  type NbdExportOptions,
  type NbdServerOptions,
} from '../../../src/nbd/server.js';
import * as wire from '../../../src/nbd/wire.js';

export const defaultTimeoutMs = 3000;

export class ConnectionClosedError extends Error {
  constructor(
    readonly wantedBytes: number,
    readonly receivedBytes: number,
  ) {
    super(`server closed the connection (wanted ${wantedBytes} bytes, had ${receivedBytes})`);
    this.name = 'ConnectionClosedError';
  }
}

export class ReadTimeoutError extends Error {
  constructor(wantedBytes: number, receivedBytes: number, timeoutMs: number) {
    super(
      `timed out after ${timeoutMs} ms waiting for ${wantedBytes} bytes (had ${receivedBytes})`,
    );
    this.name = 'ReadTimeoutError';
  }
}

/** Rejects when `promise` does not settle within `timeoutMs`. */
export async function withTimeout<T>(
  promise: Promise<T>,
  timeoutMs: number,
  what: string,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(
      () => reject(new Error(`${what}: timed out after ${timeoutMs} ms`)),
      timeoutMs,
    );
  });
  try {
    return await Promise.race([promise, timeout]);
  } finally {
    clearTimeout(timer);
  }
}

export function delay(ms: number): Promise<void> {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** Polls `predicate` every 10 ms; fails after `timeoutMs` (and stops polling). */
export async function waitUntil(
  predicate: () => boolean,
  timeoutMs: number,
  what: string,
): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() >= deadline) throw new Error(`${what}: not true after ${timeoutMs} ms`);
    await delay(10);
  }
}

export interface OptionReply {
  readonly option: number;
  readonly type: number;
  readonly data: Buffer;
}

export interface RequestSpec {
  readonly type: number;
  readonly flags?: number;
  readonly handle: bigint;
  readonly offset: number;
  readonly length: number;
  /** WRITE data; its length may differ from `length` to build malformed requests. */
  readonly payload?: Buffer;
}

export interface BlockStatusDescriptor {
  readonly length: number;
  readonly flags: number;
}

export type StructuredChunk =
  | { readonly kind: 'none' }
  | { readonly kind: 'offset-data'; readonly offset: number; readonly data: Buffer }
  | { readonly kind: 'offset-hole'; readonly offset: number; readonly length: number }
  | {
      readonly kind: 'block-status';
      readonly contextId: number;
      readonly descriptors: BlockStatusDescriptor[];
    }
  | { readonly kind: 'error'; readonly errno: number; readonly message: string }
  | { readonly kind: 'other'; readonly payload: Buffer };

export type Reply =
  | {
      readonly structured: false;
      readonly handle: bigint;
      readonly errno: number;
      /** READ data of a successful simple reply. */
      readonly data: Buffer | undefined;
    }
  | {
      readonly structured: true;
      readonly handle: bigint;
      readonly flags: number;
      readonly type: number;
      readonly chunk: StructuredChunk;
    };

export interface GoResult {
  readonly sizeBytes: number;
  readonly transmissionFlags: number;
  readonly replies: OptionReply[];
}

export function encodeRequest(spec: RequestSpec): Buffer {
  const payload = spec.payload ?? Buffer.alloc(0);
  const buffer = Buffer.alloc(wire.REQUEST_HEADER_BYTES + payload.length);
  buffer.writeUInt32BE(wire.REQUEST_MAGIC, 0);
  buffer.writeUInt16BE(spec.flags ?? 0, 4);
  buffer.writeUInt16BE(spec.type, 6);
  buffer.writeBigUInt64BE(spec.handle, 8);
  buffer.writeBigUInt64BE(BigInt(spec.offset), 16);
  buffer.writeUInt32BE(spec.length, 24);
  payload.copy(buffer, wire.REQUEST_HEADER_BYTES);
  return buffer;
}

/** NBD_OPT_INFO / NBD_OPT_GO data. */
export function encodeInfoRequest(name: string, requests: readonly number[] = []): Buffer {
  const nameBytes = Buffer.from(name, 'utf8');
  const buffer = Buffer.alloc(4 + nameBytes.length + 2 + requests.length * 2);
  buffer.writeUInt32BE(nameBytes.length, 0);
  nameBytes.copy(buffer, 4);
  buffer.writeUInt16BE(requests.length, 4 + nameBytes.length);
  requests.forEach((request, index) =>
    buffer.writeUInt16BE(request, 4 + nameBytes.length + 2 + index * 2),
  );
  return buffer;
}

/** NBD_OPT_LIST_META_CONTEXT / NBD_OPT_SET_META_CONTEXT data. */
export function encodeMetaContextRequest(name: string, queries: readonly string[]): Buffer {
  const parts = [wire.encodeLengthPrefixedString(name)];
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length, 0);
  parts.push(count);
  for (const query of queries) parts.push(wire.encodeLengthPrefixedString(query));
  return Buffer.concat(parts);
}

export class RawNbdClient {
  private received: Buffer = Buffer.alloc(0);
  private ended = false;
  private wake: (() => void) | undefined;
  /** Handle → the request, to know how much READ data follows a simple reply. */
  private readonly pending = new Map<bigint, RequestSpec>();
  /** Structured replies were acknowledged: replies are checked against what that allows. */
  private structured = false;

  private constructor(readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.received = this.received.length === 0 ? chunk : Buffer.concat([this.received, chunk]);
      this.notify();
    });
    const onGone = (): void => {
      this.ended = true;
      this.notify();
    };
    socket.on('end', onGone);
    socket.on('close', onGone);
    // ECONNRESET and the like: the server is gone, which tests observe through `closed`.
    socket.on('error', onGone);
  }

  static connect(
    port: number,
    options: { host?: string; allowHalfOpen?: boolean; timeoutMs?: number } = {},
  ): Promise<RawNbdClient> {
    const socket = net.connect({
      port,
      host: options.host ?? '127.0.0.1',
      allowHalfOpen: options.allowHalfOpen ?? false,
    });
    const connected = new Promise<RawNbdClient>((resolve, reject) => {
      socket.once('connect', () => {
        socket.off('error', reject);
        resolve(new RawNbdClient(socket));
      });
      socket.once('error', reject);
    });
    return withTimeout(connected, options.timeoutMs ?? defaultTimeoutMs, 'connect').catch(
      (error: unknown) => {
        socket.destroy();
        throw error;
      },
    );
  }

  private notify(): void {
    const wake = this.wake;
    this.wake = undefined;
    wake?.();
  }

  /** Resolves on the next data or end event, or after `timeoutMs`. */
  private waitForEvent(timeoutMs: number): Promise<void> {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        this.wake = undefined;
        resolve();
      }, timeoutMs);
      this.wake = () => {
        clearTimeout(timer);
        resolve();
      };
    });
  }

  /** The server ended or reset the connection. */
  get closed(): boolean {
    return this.ended;
  }

  /** Bytes received but not read yet. */
  get bufferedBytes(): number {
    return this.received.length;
  }

  send(bytes: Buffer): void {
    this.socket.write(bytes);
  }

  destroy(): void {
    this.socket.destroy();
  }

  /** Reads exactly `count` bytes. */
  async read(count: number, timeoutMs = defaultTimeoutMs): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (this.received.length < count) {
      if (this.ended) throw new ConnectionClosedError(count, this.received.length);
      const remainingMs = deadline - Date.now();
      if (remainingMs <= 0) throw new ReadTimeoutError(count, this.received.length, timeoutMs);
      await this.waitForEvent(remainingMs);
    }
    const out = this.received.subarray(0, count);
    this.received = this.received.subarray(count);
    return out;
  }

  /**
   * Waits until the server closes the connection; returns the bytes it sent meanwhile that were
   * not read. Fails on timeout.
   */
  async waitForClose(timeoutMs = defaultTimeoutMs): Promise<Buffer> {
    const deadline = Date.now() + timeoutMs;
    while (!this.ended) {
      const remainingMs = deadline - Date.now();
      if (remainingMs <= 0) {
        throw new Error(`server did not close the connection within ${timeoutMs} ms`);
      }
      await this.waitForEvent(remainingMs);
    }
    const rest = this.received;
    this.received = Buffer.alloc(0);
    return rest;
  }

  /** Asserts the connection stays open and silent for `ms`. */
  async expectQuiet(ms: number): Promise<void> {
    await delay(ms);
    assert.equal(this.ended, false, 'server closed the connection');
    assert.equal(this.received.length, 0, 'server sent unexpected bytes');
  }

  // Handshake.

  async readGreeting(): Promise<number> {
    const greeting = await this.read(wire.SERVER_GREETING_BYTES);
    assert.deepEqual(greeting.subarray(0, 8), wire.NBD_MAGIC, 'NBDMAGIC');
    assert.deepEqual(greeting.subarray(8, 16), wire.IHAVEOPT, 'IHAVEOPT');
    return greeting.readUInt16BE(16);
  }

  sendClientFlags(flags: number): void {
    const buffer = Buffer.alloc(4);
    buffer.writeUInt32BE(flags >>> 0, 0);
    this.send(buffer);
  }

  /** Greeting, then client flags (FIXED_NEWSTYLE | NO_ZEROES by default). */
  async handshake(
    clientFlags = wire.CLIENT_FLAG_FIXED_NEWSTYLE | wire.CLIENT_FLAG_NO_ZEROES,
  ): Promise<void> {
    await this.readGreeting();
    this.sendClientFlags(clientFlags);
  }

  sendOption(option: number, data?: Buffer): void {
    this.send(wire.encodeOption(option, data));
  }

  async readOptionReply(timeoutMs = defaultTimeoutMs): Promise<OptionReply> {
    const header = await this.read(wire.OPTION_REPLY_HEADER_BYTES, timeoutMs);
    assert.equal(header.readUInt32BE(0), wire.OPTION_REPLY_MAGIC_HIGH, 'option reply magic');
    assert.equal(header.readUInt32BE(4), wire.OPTION_REPLY_MAGIC_LOW, 'option reply magic');
    const length = header.readUInt32BE(16);
    const data = await this.read(length, timeoutMs);
    return { option: header.readUInt32BE(8), type: header.readUInt32BE(12), data };
  }

  /** Replies up to and including the ACK or the first error. */
  async readOptionReplies(expectedOption: number): Promise<OptionReply[]> {
    const replies: OptionReply[] = [];
    for (;;) {
      const reply = await this.readOptionReply();
      assert.equal(reply.option, expectedOption, 'option echoed in the reply');
      replies.push(reply);
      if (reply.type === wire.REP_ACK || wire.isOptionReplyError(reply.type)) return replies;
      assert.ok(replies.length < 1000, 'endless option replies');
    }
  }

  /** Sends one option and returns its replies (up to ACK or error). */
  async option(option: number, data?: Buffer): Promise<OptionReply[]> {
    this.sendOption(option, data);
    return this.readOptionReplies(option);
  }

  /** Sends one option and asserts it is answered by the single error reply `errorType`. */
  async expectOptionError(
    option: number,
    data: Buffer | undefined,
    errorType: number,
  ): Promise<string> {
    const replies = await this.option(option, data);
    assert.equal(replies.length, 1, 'exactly one reply');
    const reply = replies[0];
    assert.ok(reply !== undefined);
    assert.equal(reply.type, errorType, `reply type 0x${reply.type.toString(16)}`);
    return reply.data.toString('utf8');
  }

  async structuredReplies(): Promise<void> {
    const replies = await this.option(wire.OPT_STRUCTURED_REPLY);
    assert.deepEqual(
      replies.map((reply) => reply.type),
      [wire.REP_ACK],
    );
    this.structured = true;
  }

  /** SET_META_CONTEXT base:allocation; returns the context id. */
  async setBaseAllocation(name: string): Promise<number> {
    const replies = await this.option(
      wire.OPT_SET_META_CONTEXT,
      encodeMetaContextRequest(name, [wire.BASE_ALLOCATION]),
    );
    assert.deepEqual(
      replies.map((reply) => reply.type),
      [wire.REP_META_CONTEXT, wire.REP_ACK],
    );
    const context = replies[0];
    assert.ok(context !== undefined);
    assert.equal(context.data.subarray(4).toString('utf8'), wire.BASE_ALLOCATION);
    return context.data.readUInt32BE(0);
  }

  /** NBD_OPT_GO; asserts success and returns the export's size and flags. */
  async go(name: string, requests: readonly number[] = []): Promise<GoResult> {
    const replies = await this.option(wire.OPT_GO, encodeInfoRequest(name, requests));
    const last = replies[replies.length - 1];
    assert.ok(last !== undefined);
    assert.equal(last.type, wire.REP_ACK, `GO failed: ${last.data.toString('utf8')}`);
    const exportInfo = replies.find(
      (reply) => reply.type === wire.REP_INFO && reply.data.readUInt16BE(0) === wire.INFO_EXPORT,
    );
    assert.ok(exportInfo !== undefined, 'GO sent NBD_INFO_EXPORT');
    assert.equal(exportInfo.data.length, 12);
    return {
      sizeBytes: Number(exportInfo.data.readBigUInt64BE(2)),
      transmissionFlags: exportInfo.data.readUInt16BE(10),
      replies,
    };
  }

  /**
   * Handshake + optional structured replies and base:allocation + GO: a client ready for the
   * transmission phase.
   */
  async attach(
    name: string,
    options: { structured?: boolean; baseAllocation?: boolean } = {},
  ): Promise<GoResult> {
    await this.handshake();
    if (options.structured === true || options.baseAllocation === true)
      await this.structuredReplies();
    if (options.baseAllocation === true) {
      const contextId = await this.setBaseAllocation(name);
      assert.notEqual(contextId, 0);
    }
    return this.go(name);
  }

  // Transmission.

  /** Sends a request; `track: false` for requests that get no reply (DISC) or malformed ones. */
  sendRequest(spec: RequestSpec, track = true): void {
    if (track) this.pending.set(spec.handle, spec);
    this.send(encodeRequest(spec));
  }

  /** Encodes and remembers a request without sending it, to batch several in one write. */
  prepareRequest(spec: RequestSpec): Buffer {
    this.pending.set(spec.handle, spec);
    return encodeRequest(spec);
  }

  /** Reads one reply (a simple reply or one structured chunk). */
  async readReply(timeoutMs = defaultTimeoutMs): Promise<Reply> {
    const magicBytes = await this.read(4, timeoutMs);
    const magic = magicBytes.readUInt32BE(0);
    if (magic === wire.SIMPLE_REPLY_MAGIC) {
      const rest = await this.read(wire.SIMPLE_REPLY_HEADER_BYTES - 4, timeoutMs);
      const errno = rest.readUInt32BE(0);
      const handle = rest.readBigUInt64BE(4);
      const request = this.pending.get(handle);
      assert.ok(request !== undefined, `reply to unknown handle ${handle}`);
      // proto.md: with structured replies, a READ MUST NOT get a simple reply (not even EINVAL).
      assert.ok(
        !(this.structured && request.type === wire.CMD_READ),
        `simple reply (errno ${errno}) to a READ after structured replies were negotiated`,
      );
      let data: Buffer | undefined;
      if (errno === 0 && request.type === wire.CMD_READ)
        data = await this.read(request.length, timeoutMs);
      this.pending.delete(handle);
      return { structured: false, handle, errno, data };
    }
    assert.equal(magic, wire.STRUCTURED_REPLY_MAGIC, `reply magic 0x${magic.toString(16)}`);
    assert.ok(this.structured, 'structured reply without structured replies negotiated');
    const rest = await this.read(wire.STRUCTURED_REPLY_HEADER_BYTES - 4, timeoutMs);
    const flags = rest.readUInt16BE(0);
    const type = rest.readUInt16BE(2);
    const handle = rest.readBigUInt64BE(4);
    const length = rest.readUInt32BE(12);
    assert.ok(this.pending.has(handle), `chunk for unknown handle ${handle}`);
    const payload = await this.read(length, timeoutMs);
    if ((flags & wire.REPLY_FLAG_DONE) !== 0) this.pending.delete(handle);
    return { structured: true, handle, flags, type, chunk: parseChunk(type, payload) };
  }

  /** Sends one request and reads its reply, which must be the only one and carry its handle. */
  async request(spec: RequestSpec): Promise<Reply> {
    this.sendRequest(spec);
    const reply = await this.readReply();
    assert.equal(reply.handle, spec.handle, 'reply handle');
    return reply;
  }

  /** Number of requests sent whose (final) reply has not been read. */
  get outstanding(): number {
    return this.pending.size;
  }
}

function parseChunk(type: number, payload: Buffer): StructuredChunk {
  switch (type) {
    case wire.REPLY_TYPE_NONE:
      assert.equal(payload.length, 0);
      return { kind: 'none' };
    case wire.REPLY_TYPE_OFFSET_DATA:
      assert.ok(payload.length > 8, 'OFFSET_DATA carries data');
      return {
        kind: 'offset-data',
        offset: Number(payload.readBigUInt64BE(0)),
        data: payload.subarray(8),
      };
    case wire.REPLY_TYPE_OFFSET_HOLE:
      assert.equal(payload.length, 12);
      return {
        kind: 'offset-hole',
        offset: Number(payload.readBigUInt64BE(0)),
        length: payload.readUInt32BE(8),
      };
    case wire.REPLY_TYPE_BLOCK_STATUS: {
      assert.ok(
        payload.length >= 12 && (payload.length - 4) % 8 === 0,
        'block status payload size',
      );
      const descriptors: BlockStatusDescriptor[] = [];
      for (let cursor = 4; cursor < payload.length; cursor += 8) {
        descriptors.push({
          length: payload.readUInt32BE(cursor),
          flags: payload.readUInt32BE(cursor + 4),
        });
      }
      return { kind: 'block-status', contextId: payload.readUInt32BE(0), descriptors };
    }
    case wire.REPLY_TYPE_ERROR:
    case wire.REPLY_TYPE_ERROR_OFFSET: {
      assert.ok(payload.length >= 6, 'error chunk payload');
      const messageLength = payload.readUInt16BE(4);
      assert.ok(6 + messageLength <= payload.length, 'error message fits the chunk');
      return {
        kind: 'error',
        errno: payload.readUInt32BE(0),
        message: payload.toString('utf8', 6, 6 + messageLength),
      };
    }
    default:
      return { kind: 'other', payload };
  }
}

/** The errno of a reply: a simple reply's error field or an error chunk's; 0 for success. */
export function replyErrno(reply: Reply): number {
  if (!reply.structured) return reply.errno;
  return reply.chunk.kind === 'error' ? reply.chunk.errno : 0;
}

/** The data of a successful READ reply (simple, or one OFFSET_DATA chunk with DONE). */
export function replyData(reply: Reply): Buffer {
  if (!reply.structured) {
    assert.equal(reply.errno, 0, `read failed with errno ${reply.errno}`);
    assert.ok(reply.data !== undefined);
    return reply.data;
  }
  assert.equal(reply.chunk.kind, 'offset-data', `chunk kind ${reply.chunk.kind}`);
  assert.ok(reply.chunk.kind === 'offset-data');
  assert.equal(reply.flags & wire.REPLY_FLAG_DONE, wire.REPLY_FLAG_DONE, 'one chunk, DONE');
  return reply.chunk.data;
}

export interface TestServer {
  readonly server: NbdServer;
  readonly port: number;
  /** Closes the server, bounded by a timeout. */
  close(): Promise<void>;
}

export async function startServer(
  exports: readonly NbdExportOptions[],
  limits: Partial<NbdLimits> = {},
  options: Pick<NbdServerOptions, 'transmissionThread'> = {},
): Promise<TestServer> {
  const server = new NbdServer({
    logger: silentLogger,
    limits: { drainTimeoutMs: 1000, handshakeTimeoutMs: 10_000, ...limits },
    ...options,
  });
  for (const options of exports) server.addExport(options);
  const address = await server.listen({ host: '127.0.0.1', port: 0 });
  return {
    server,
    port: address.port,
    close: () => withTimeout(server.close(), 5000, 'server.close()'),
  };
}

/** Connects, and registers the client so that `closeAll` destroys it. */
export class ClientPool {
  private readonly clients: RawNbdClient[] = [];
  constructor(private readonly port: () => number) {}

  async connect(options: { allowHalfOpen?: boolean } = {}): Promise<RawNbdClient> {
    const client = await RawNbdClient.connect(this.port(), options);
    this.clients.push(client);
    return client;
  }

  closeAll(): void {
    for (const client of this.clients.splice(0)) client.destroy();
  }
}

export function patternBuffer(length: number, seed: number): Buffer {
  const buffer = Buffer.alloc(length);
  for (let index = 0; index < length; index++) buffer[index] = (index * 31 + seed * 17 + 7) & 0xff;
  return buffer;
}
