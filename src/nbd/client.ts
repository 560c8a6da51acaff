/**
 * An NBD client over TCP: fixed newstyle handshake with NBD_OPT_GO, structured replies and
 * base:allocation, then many requests in flight on one connection.
 *
 * Used by the NBD-backed BlockDevice (src/disk/nbd-device.ts: a PV may live behind NBD the way a
 * LUN lives behind iSCSI) and by tests. It shares src/nbd/wire.ts with the server.
 */
import net from 'node:net';
import { TandemError } from '../errors.js';
import { ByteQueue } from './byte-queue.js';
import * as wire from './wire.js';

export interface NbdClientOptions {
  readonly host: string;
  readonly port: number;
  readonly exportName: string;
  /** Ask for structured replies and base:allocation (default true). */
  readonly structuredReplies?: boolean;
  readonly connectTimeoutMs?: number;
  /** Requests in flight at once; more wait in a queue. */
  readonly maximumRequestsInFlight?: number;
}

export interface NbdBlockSizes {
  readonly minimumBytes: number;
  readonly preferredBytes: number;
  readonly maximumBytes: number;
}

export interface NbdExtent {
  readonly lengthBytes: number;
  readonly flags: number;
}

interface Pending {
  readonly type: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
  readonly target: Buffer | undefined;
  extents: NbdExtent[];
  error: TandemError | undefined;
  readonly resolve: () => void;
  readonly reject: (error: Error) => void;
}

/** An error reply from the server; `errno` is the NBD error value. */
export function nbdServerError(errno: number, message: string): TandemError {
  const name = wire.NBD_ERROR_NAMES[errno] ?? `errno ${errno}`;
  return new TandemError(
    'NBD_SERVER_ERROR',
    `NBD server replied ${name}${message ? `: ${message}` : ''}`,
    {
      details: { errno, errnoName: name },
    },
  );
}

/** Reads exact byte counts from a socket during the handshake. */
class HandshakeReader {
  private readonly queue = new ByteQueue();
  private waiter:
    { count: number; resolve: (bytes: Buffer) => void; reject: (error: Error) => void } | undefined;
  private failure: Error | undefined;

  constructor(socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.wake();
    });
    socket.on('close', () =>
      this.fail(
        new TandemError('NBD_DISCONNECTED', 'server closed the connection during the handshake'),
      ),
    );
    socket.on('error', (error) =>
      this.fail(
        new TandemError('NBD_DISCONNECTED', `connection failed: ${error.message}`, {
          cause: error,
        }),
      ),
    );
  }

  read(count: number): Promise<Buffer> {
    if (this.failure !== undefined && this.queue.length < count)
      return Promise.reject(this.failure);
    return new Promise((resolve, reject) => {
      this.waiter = { count, resolve, reject };
      this.wake();
    });
  }

  /** Bytes received beyond the handshake, handed on to the transmission phase. */
  remaining(): ByteQueue {
    return this.queue;
  }

  private wake(): void {
    const waiter = this.waiter;
    if (waiter === undefined || this.queue.length < waiter.count) return;
    this.waiter = undefined;
    waiter.resolve(this.queue.take(waiter.count));
  }

  private fail(error: Error): void {
    this.failure ??= error;
    const waiter = this.waiter;
    this.waiter = undefined;
    waiter?.reject(error);
  }
}

export class NbdClient {
  sizeBytes = 0;
  transmissionFlags = 0;
  blockSizes: NbdBlockSizes = {
    minimumBytes: 1,
    preferredBytes: 4096,
    maximumBytes: 32 * 1024 * 1024,
  };
  structuredReplies = false;
  baseAllocationContextId: number | undefined;

  private queue = new ByteQueue();
  private readonly pending = new Map<number, Pending>();
  private nextHandle = 1;
  private readonly waiting: Array<() => void> = [];
  /** close() callers waiting for the requests in flight to finish. */
  private readonly idleWaiters: Array<() => void> = [];
  private readonly maximumRequestsInFlight: number;
  private closedError: TandemError | undefined;
  private readonly socket: net.Socket;

  private constructor(socket: net.Socket, maximumRequestsInFlight: number) {
    this.socket = socket;
    this.maximumRequestsInFlight = maximumRequestsInFlight;
  }

  static async connect(options: NbdClientOptions): Promise<NbdClient> {
    const socket = await openSocket(options.host, options.port, options.connectTimeoutMs ?? 10_000);
    const client = new NbdClient(socket, options.maximumRequestsInFlight ?? 64);
    const reader = new HandshakeReader(socket);
    try {
      await client.handshake(reader, options);
    } catch (error) {
      socket.destroy();
      throw error;
    }
    client.startTransmission(reader.remaining());
    return client;
  }

  /** NBD_OPT_LIST: the server's exports, then NBD_OPT_ABORT. */
  static async listExports(
    host: string,
    port: number,
    timeoutMs = 10_000,
  ): Promise<Array<{ name: string; description: string }>> {
    const socket = await openSocket(host, port, timeoutMs);
    const reader = new HandshakeReader(socket);
    try {
      await greet(reader, socket);
      socket.write(wire.encodeOption(wire.OPT_LIST));
      const exports: Array<{ name: string; description: string }> = [];
      for (;;) {
        const reply = await readOptionReply(reader, wire.OPT_LIST);
        if (reply.type === wire.REP_ACK) break;
        if (reply.type !== wire.REP_SERVER || reply.data.length < 4)
          throw optionError(wire.OPT_LIST, reply);
        const nameBytes = reply.data.readUInt32BE(0);
        exports.push({
          name: reply.data.toString('utf8', 4, 4 + nameBytes),
          description: reply.data.toString('utf8', 4 + nameBytes),
        });
      }
      socket.write(wire.encodeOption(wire.OPT_ABORT));
      return exports;
    } finally {
      socket.destroy();
    }
  }

  get connected(): boolean {
    return this.closedError === undefined;
  }

  read(target: Buffer, offsetBytes: number): Promise<void> {
    return this.submit(wire.CMD_READ, 0, offsetBytes, target.length, target, undefined);
  }

  write(data: Buffer, offsetBytes: number, options: { fua?: boolean } = {}): Promise<void> {
    return this.submit(
      wire.CMD_WRITE,
      options.fua ? wire.CMD_FLAG_FUA : 0,
      offsetBytes,
      data.length,
      undefined,
      data,
    );
  }

  flush(): Promise<void> {
    return this.submit(wire.CMD_FLUSH, 0, 0, 0, undefined, undefined);
  }

  trim(offsetBytes: number, lengthBytes: number, options: { fua?: boolean } = {}): Promise<void> {
    return this.submit(
      wire.CMD_TRIM,
      options.fua ? wire.CMD_FLAG_FUA : 0,
      offsetBytes,
      lengthBytes,
      undefined,
      undefined,
    );
  }

  writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options: { fua?: boolean; noHole?: boolean; fastZero?: boolean } = {},
  ): Promise<void> {
    const flags =
      (options.fua ? wire.CMD_FLAG_FUA : 0) |
      (options.noHole ? wire.CMD_FLAG_NO_HOLE : 0) |
      (options.fastZero ? wire.CMD_FLAG_FAST_ZERO : 0);
    return this.submit(
      wire.CMD_WRITE_ZEROES,
      flags,
      offsetBytes,
      lengthBytes,
      undefined,
      undefined,
    );
  }

  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.submit(wire.CMD_CACHE, 0, offsetBytes, lengthBytes, undefined, undefined);
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<NbdExtent[]> {
    if (this.baseAllocationContextId === undefined) {
      return [{ lengthBytes, flags: 0 }];
    }
    const extents: NbdExtent[] = [];
    await this.submit(
      wire.CMD_BLOCK_STATUS,
      0,
      offsetBytes,
      lengthBytes,
      undefined,
      undefined,
      extents,
    );
    return extents;
  }

  hasFlag(flag: number): boolean {
    return (this.transmissionFlags & flag) !== 0;
  }

  /** Waits for requests in flight, sends NBD_CMD_DISC and closes. Idempotent. */
  async close(): Promise<void> {
    if (this.closedError !== undefined) return;
    if (this.pending.size > 0) {
      await new Promise<void>((resolve) => this.idleWaiters.push(resolve));
    }
    if (this.closedError === undefined) {
      const header = Buffer.allocUnsafe(wire.REQUEST_HEADER_BYTES);
      wire.writeRequestHeader(header, 0, wire.CMD_DISC, 0, 0, 0, 0);
      this.socket.end(header);
      this.closedError = new TandemError('NBD_DISCONNECTED', 'client closed');
    }
    await new Promise<void>((resolve) => {
      if (this.socket.closed) resolve();
      else this.socket.once('close', () => resolve());
    });
  }

  private async handshake(reader: HandshakeReader, options: NbdClientOptions): Promise<void> {
    await greet(reader, this.socket);
    if (options.structuredReplies !== false) {
      this.socket.write(wire.encodeOption(wire.OPT_STRUCTURED_REPLY));
      const reply = await readOptionReply(reader, wire.OPT_STRUCTURED_REPLY);
      this.structuredReplies = reply.type === wire.REP_ACK;
      if (this.structuredReplies) await this.selectBaseAllocation(reader, options.exportName);
    }
    const name = wire.encodeLengthPrefixedString(options.exportName);
    const go = Buffer.allocUnsafe(name.length + 4);
    name.copy(go, 0);
    go.writeUInt16BE(1, name.length);
    go.writeUInt16BE(wire.INFO_BLOCK_SIZE, name.length + 2);
    this.socket.write(wire.encodeOption(wire.OPT_GO, go));
    for (;;) {
      const reply = await readOptionReply(reader, wire.OPT_GO);
      if (reply.type === wire.REP_ACK) break;
      if (reply.type !== wire.REP_INFO) throw optionError(wire.OPT_GO, reply, options.exportName);
      this.readInfo(reply.data);
    }
  }

  private async selectBaseAllocation(reader: HandshakeReader, exportName: string): Promise<void> {
    const name = wire.encodeLengthPrefixedString(exportName);
    const query = wire.encodeLengthPrefixedString(wire.BASE_ALLOCATION);
    const count = Buffer.allocUnsafe(4);
    count.writeUInt32BE(1, 0);
    this.socket.write(
      wire.encodeOption(wire.OPT_SET_META_CONTEXT, Buffer.concat([name, count, query])),
    );
    for (;;) {
      const reply = await readOptionReply(reader, wire.OPT_SET_META_CONTEXT);
      if (reply.type === wire.REP_META_CONTEXT && reply.data.length >= 4) {
        if (reply.data.toString('utf8', 4) === wire.BASE_ALLOCATION)
          this.baseAllocationContextId = reply.data.readUInt32BE(0);
        continue;
      }
      // An error here only means no block status; the export may still be usable.
      return;
    }
  }

  private readInfo(data: Buffer): void {
    if (data.length < 2) return;
    const infoType = data.readUInt16BE(0);
    if (infoType === wire.INFO_EXPORT && data.length >= 12) {
      const sizeBytes = wire.readUint64AsNumber(data, 2);
      if (sizeBytes < 0) throw new TandemError('NBD_PROTOCOL', 'export size is over 2^53 bytes');
      this.sizeBytes = sizeBytes;
      this.transmissionFlags = data.readUInt16BE(10);
    } else if (infoType === wire.INFO_BLOCK_SIZE && data.length >= 14) {
      this.blockSizes = {
        minimumBytes: data.readUInt32BE(2),
        preferredBytes: data.readUInt32BE(6),
        maximumBytes: data.readUInt32BE(10),
      };
    }
  }

  private startTransmission(leftover: ByteQueue): void {
    this.queue = leftover;
    this.socket.removeAllListeners('data');
    this.socket.removeAllListeners('close');
    this.socket.removeAllListeners('error');
    this.socket.setNoDelay(true);
    this.socket.on('data', (chunk: Buffer) => {
      this.queue.push(chunk);
      this.parseReplies();
    });
    this.socket.on('error', (error) =>
      this.failAll(
        new TandemError('NBD_DISCONNECTED', `connection failed: ${error.message}`, {
          cause: error,
        }),
      ),
    );
    this.socket.on('close', () =>
      this.failAll(new TandemError('NBD_DISCONNECTED', 'server closed the connection')),
    );
    this.parseReplies();
  }

  private async submit(
    type: number,
    flags: number,
    offsetBytes: number,
    lengthBytes: number,
    target: Buffer | undefined,
    payload: Buffer | undefined,
    extents: NbdExtent[] = [],
  ): Promise<void> {
    while (this.pending.size >= this.maximumRequestsInFlight && this.closedError === undefined) {
      await new Promise<void>((resolve) => this.waiting.push(resolve));
    }
    if (this.closedError !== undefined) throw this.closedError;
    const handle = this.nextHandle;
    this.nextHandle = this.nextHandle >= 0xffffffff ? 1 : this.nextHandle + 1;
    return new Promise<void>((resolve, reject) => {
      this.pending.set(handle, {
        type,
        offsetBytes,
        lengthBytes,
        target,
        extents,
        error: undefined,
        resolve,
        reject,
      });
      const header = Buffer.allocUnsafe(wire.REQUEST_HEADER_BYTES);
      wire.writeRequestHeader(header, flags, type, 0, handle, offsetBytes, lengthBytes);
      if (payload === undefined) {
        this.socket.write(header);
      } else {
        this.socket.cork();
        this.socket.write(header);
        this.socket.write(payload);
        this.socket.uncork();
      }
    });
  }

  private parseReplies(): void {
    for (;;) {
      if (this.queue.length < 4) return;
      const { buffer, offset } = this.queue.contiguous(4);
      const magic = buffer.readUInt32BE(offset);
      const consumed =
        magic === wire.SIMPLE_REPLY_MAGIC
          ? this.parseSimpleReply()
          : magic === wire.STRUCTURED_REPLY_MAGIC
            ? this.parseStructuredChunk()
            : this.protocolError(`bad reply magic 0x${magic.toString(16)}`);
      if (!consumed) return;
    }
  }

  private parseSimpleReply(): boolean {
    if (this.queue.length < wire.SIMPLE_REPLY_HEADER_BYTES) return false;
    const { buffer, offset } = this.queue.contiguous(wire.SIMPLE_REPLY_HEADER_BYTES);
    const errno = buffer.readUInt32BE(offset + 4);
    const handle = buffer.readUInt32BE(offset + 12);
    const entry = this.pending.get(handle);
    if (entry === undefined) return this.protocolError(`reply for unknown handle ${handle}`);
    const dataBytes = entry.type === wire.CMD_READ && errno === 0 ? entry.lengthBytes : 0;
    if (this.queue.length < wire.SIMPLE_REPLY_HEADER_BYTES + dataBytes) return false;
    this.queue.consume(wire.SIMPLE_REPLY_HEADER_BYTES);
    if (dataBytes > 0 && entry.target !== undefined)
      this.queue.copyInto(entry.target, 0, dataBytes);
    this.finish(handle, entry, errno === 0 ? undefined : nbdServerError(errno, ''));
    return true;
  }

  private parseStructuredChunk(): boolean {
    if (this.queue.length < wire.STRUCTURED_REPLY_HEADER_BYTES) return false;
    const { buffer, offset } = this.queue.contiguous(wire.STRUCTURED_REPLY_HEADER_BYTES);
    const flags = buffer.readUInt16BE(offset + 4);
    const type = buffer.readUInt16BE(offset + 6);
    const handle = buffer.readUInt32BE(offset + 12);
    const payloadBytes = buffer.readUInt32BE(offset + 16);
    if (this.queue.length < wire.STRUCTURED_REPLY_HEADER_BYTES + payloadBytes) return false;
    const entry = this.pending.get(handle);
    if (entry === undefined) return this.protocolError(`reply for unknown handle ${handle}`);
    this.queue.consume(wire.STRUCTURED_REPLY_HEADER_BYTES);
    const payload = this.queue.take(payloadBytes);
    this.applyChunk(entry, type, payload);
    if ((flags & wire.REPLY_FLAG_DONE) !== 0) this.finish(handle, entry, entry.error);
    return true;
  }

  private applyChunk(entry: Pending, type: number, payload: Buffer): void {
    if (type === wire.REPLY_TYPE_OFFSET_DATA && payload.length >= 8 && entry.target !== undefined) {
      const at = wire.readUint64AsNumber(payload, 0) - entry.offsetBytes;
      if (at >= 0 && at + payload.length - 8 <= entry.target.length)
        payload.copy(entry.target, at, 8);
      else
        entry.error ??= new TandemError(
          'NBD_PROTOCOL',
          `data chunk outside the request (at ${at}, ${payload.length - 8} bytes, request ${entry.offsetBytes}+${entry.lengthBytes})`,
        );
    } else if (
      type === wire.REPLY_TYPE_OFFSET_HOLE &&
      payload.length === 12 &&
      entry.target !== undefined
    ) {
      const at = wire.readUint64AsNumber(payload, 0) - entry.offsetBytes;
      const holeBytes = payload.readUInt32BE(8);
      if (at >= 0 && at + holeBytes <= entry.target.length)
        entry.target.fill(0, at, at + holeBytes);
      else entry.error ??= new TandemError('NBD_PROTOCOL', 'hole chunk outside the request');
    } else if (type === wire.REPLY_TYPE_BLOCK_STATUS && payload.length >= 12) {
      for (let cursor = 4; cursor + 8 <= payload.length; cursor += 8) {
        entry.extents.push({
          lengthBytes: payload.readUInt32BE(cursor),
          flags: payload.readUInt32BE(cursor + 4),
        });
      }
    } else if ((type & 0x8000) !== 0 && payload.length >= 6) {
      const messageBytes = Math.min(payload.readUInt16BE(4), payload.length - 6);
      entry.error ??= nbdServerError(
        payload.readUInt32BE(0),
        payload.toString('utf8', 6, 6 + messageBytes),
      );
    }
  }

  private finish(handle: number, entry: Pending, error: TandemError | undefined): void {
    this.pending.delete(handle);
    if (error === undefined) entry.resolve();
    else entry.reject(error);
    this.waiting.shift()?.();
    if (this.pending.size === 0) for (const wake of this.idleWaiters.splice(0)) wake();
  }

  private protocolError(message: string): boolean {
    this.socket.destroy();
    this.failAll(new TandemError('NBD_PROTOCOL', message));
    return false;
  }

  private failAll(error: TandemError): void {
    this.closedError ??= error;
    for (const [handle, entry] of this.pending) {
      this.pending.delete(handle);
      entry.reject(error);
    }
    for (const wake of this.waiting.splice(0)) wake();
    for (const wake of this.idleWaiters.splice(0)) wake();
  }
}

function openSocket(host: string, port: number, timeoutMs: number): Promise<net.Socket> {
  return new Promise((resolve, reject) => {
    const socket = net.connect({ host, port });
    const timer = setTimeout(() => {
      socket.destroy();
      reject(
        new TandemError(
          'NBD_DISCONNECTED',
          `connecting to ${host}:${port} timed out after ${timeoutMs} ms`,
        ),
      );
    }, timeoutMs);
    socket.once('connect', () => {
      clearTimeout(timer);
      socket.removeAllListeners('error');
      resolve(socket);
    });
    socket.once('error', (error) => {
      clearTimeout(timer);
      reject(
        new TandemError('NBD_DISCONNECTED', `cannot connect to ${host}:${port}: ${error.message}`, {
          cause: error,
        }),
      );
    });
  });
}

async function greet(reader: HandshakeReader, socket: net.Socket): Promise<void> {
  const greeting = await reader.read(wire.SERVER_GREETING_BYTES);
  if (
    !greeting.subarray(0, 8).equals(wire.NBD_MAGIC) ||
    !greeting.subarray(8, 16).equals(wire.IHAVEOPT)
  ) {
    throw new TandemError('NBD_PROTOCOL', 'not a fixed newstyle NBD server');
  }
  const serverFlags = greeting.readUInt16BE(16);
  if ((serverFlags & wire.FLAG_FIXED_NEWSTYLE) === 0) {
    throw new TandemError('NBD_PROTOCOL', 'server does not speak fixed newstyle');
  }
  const clientFlags = Buffer.allocUnsafe(4);
  clientFlags.writeUInt32BE(
    wire.CLIENT_FLAG_FIXED_NEWSTYLE |
      (serverFlags & wire.FLAG_NO_ZEROES ? wire.CLIENT_FLAG_NO_ZEROES : 0),
    0,
  );
  socket.write(clientFlags);
}

interface OptionReply {
  readonly type: number;
  readonly data: Buffer;
}

async function readOptionReply(reader: HandshakeReader, option: number): Promise<OptionReply> {
  const header = await reader.read(wire.OPTION_REPLY_HEADER_BYTES);
  if (
    header.readUInt32BE(0) !== wire.OPTION_REPLY_MAGIC_HIGH ||
    header.readUInt32BE(4) !== wire.OPTION_REPLY_MAGIC_LOW
  ) {
    throw new TandemError('NBD_PROTOCOL', 'bad option reply magic');
  }
  if (header.readUInt32BE(8) !== option)
    throw new TandemError('NBD_PROTOCOL', 'option reply for another option');
  const dataBytes = header.readUInt32BE(16);
  if (dataBytes > 16 * 1024 * 1024) throw new TandemError('NBD_PROTOCOL', 'option reply too large');
  const type = header.readUInt32BE(12);
  const data = dataBytes === 0 ? Buffer.alloc(0) : await reader.read(dataBytes);
  return { type, data };
}

function optionError(option: number, reply: OptionReply, exportName?: string): TandemError {
  const message = reply.data.toString('utf8');
  if (reply.type === wire.REP_ERR_UNKNOWN) {
    return new TandemError(
      'NBD_EXPORT_NOT_FOUND',
      `export '${exportName ?? ''}' not found: ${message}`,
    );
  }
  return new TandemError(
    'NBD_PROTOCOL',
    `option ${option} failed (reply 0x${reply.type.toString(16)}): ${message}`,
  );
}
