/**
 * One client connection: the fixed newstyle handshake, then the transmission phase.
 *
 * State machine (each arrow is one call of transition(), which logs it):
 *
 *   client-flags ─▶ option-header ─▶ option-data ─▶ option-header … ─▶ request-header
 *   request-header ─▶ request-payload | request-skip ─▶ request-header …
 *   any ─▶ draining (export removed, server stopping, NBD_CMD_DISC) ─▶ closed
 *
 * Flow control: the connection stops reading from its socket while too many requests or bytes
 * are in flight, or while the socket's send buffer is full, so a fast client cannot make the
 * server buffer without bound. Replies that complete in the same event-loop turn leave in one
 * writev (cork until setImmediate).
 *
 * On a plain file export, once a client sends READs or WRITEs, a native thread takes the
 * socket over, both ways (transmission-thread.ts): it serves valid READs and WRITEs itself and
 * passes every other request here as a parsed header, until those dominate and it hands the
 * socket back. Their validation, execution, flush barriers and replies stay in this class; the
 * replies then leave through the thread (send), and flow control pauses the thread instead of
 * the socket. A write the thread served is done before it passes on any later request, so a
 * FLUSH here still covers every write that came before it.
 */
import type { Socket } from 'node:net';
import { type TandemError, assert, systemErrnoName } from '../errors.js';
import type { Logger } from '../log.js';
import { ByteQueue } from './byte-queue.js';
import type { NbdLimits } from './limits.js';
import {
  TransmissionThread,
  type ReceivedHeader,
  type StopReason,
  type ThreadEvents,
  type ThreadServes,
  type TransmissionThreadPolicy,
} from './transmission-thread.js';
import type { NbdExport } from './nbd-export.js';
import { Negotiation, type ExportLookup } from './negotiation.js';
import type { ReplyBufferPool } from './reply-buffers.js';
import {
  RequestExecutor,
  isWriteCommand,
  nbdErrorFromException,
  type NbdRequest,
} from './request-executor.js';
import * as wire from './wire.js';

type ConnectionState =
  | 'client-flags'
  | 'option-header'
  | 'option-data'
  | 'option-skip'
  | 'request-header'
  | 'request-payload'
  | 'request-skip'
  | 'draining'
  | 'closed';

export interface ConnectionHooks {
  /** The connection entered the transmission phase on an export. */
  attached(connection: NbdConnection, target: NbdExport): void;
  /** The socket is gone; called once. */
  closed(connection: NbdConnection): void;
}

interface FlushWaiter {
  readonly barrierSequence: number;
  readonly run: () => void;
}

/** 'EIO' for 5; '' for 0 (no error). */
function errnoName(systemErrno: number): string {
  return systemErrno <= 0 ? '' : systemErrnoName(systemErrno);
}

export class NbdConnection {
  private state: ConnectionState = 'client-flags';
  private readonly queue = new ByteQueue();
  private negotiation: Negotiation | undefined;
  private optionCount = 0;
  /** Current option (option-data / option-skip) or request (request-payload / request-skip). */
  private pendingOption = 0;
  private pendingBytes = 0;
  private pendingRequest: NbdRequest | undefined;
  private pendingRejection: { errno: number; message: string } | undefined;
  private payloadFilledBytes = 0;

  private target: NbdExport | undefined;
  private executor: RequestExecutor | undefined;
  /** The native thread serving the transmission phase, when one took over (see above). */
  private thread: TransmissionThread | undefined;
  /** While a thread may take over on this connection: its policy and what it would serve. */
  private takeOver:
    { readonly policy: TransmissionThreadPolicy; readonly serves: ThreadServes } | undefined;
  /** A thread stopped for the end: Node reads again only when the socket ends (endSocket). */
  private threadStoppedForEnd: TransmissionThread | undefined;
  private requestsInFlight = 0;
  private bytesInFlight = 0;
  private writeSequence = 0;
  private readonly writesInFlight = new Set<number>();
  private flushWaiters: FlushWaiter[] = [];

  private readPaused = false;
  private sendBlocked = false;
  private corked = false;
  private handshakeTimer: NodeJS.Timeout | undefined;
  private closeTimer: NodeJS.Timeout | undefined;
  private closeDeadline = 0;
  private endRequested = false;
  private closeReported = false;

  constructor(
    private readonly socket: Socket,
    private readonly exports: ExportLookup,
    private readonly limits: NbdLimits,
    private readonly hooks: ConnectionHooks,
    private readonly logger: Logger,
    private readonly replyBuffers: ReplyBufferPool,
    /** When a native thread takes over (transmission-thread.ts); undefined: never. */
    private readonly threadPolicy: TransmissionThreadPolicy | undefined,
  ) {
    socket.setNoDelay(true);
    socket.on('data', (chunk: Buffer) => this.onData(chunk));
    socket.on('drain', () => {
      this.sendBlocked = false;
      this.updateReading();
    });
    socket.on('error', (error) => this.logger.debug('socket error', { error }));
    socket.on('close', () => this.onClose());
    this.handshakeTimer = setTimeout(() => {
      this.logger.warn('handshake timed out', { timeoutMs: limits.handshakeTimeoutMs });
      this.hardDisconnect('handshake timeout');
    }, limits.handshakeTimeoutMs);
    this.handshakeTimer.unref();
    const greeting = Buffer.allocUnsafe(wire.SERVER_GREETING_BYTES);
    wire.NBD_MAGIC.copy(greeting, 0);
    wire.IHAVEOPT.copy(greeting, 8);
    greeting.writeUInt16BE(wire.FLAG_FIXED_NEWSTYLE | wire.FLAG_NO_ZEROES, 16);
    socket.write(greeting);
  }

  /**
   * Stops the connection cleanly: requests already running finish and are answered, later ones
   * get ESHUTDOWN, then the socket is closed; after drainTimeoutMs it is destroyed regardless.
   */
  shutdown(reason: string): void {
    if (this.socket.destroyed) return;
    if (this.state === 'closed' || this.target === undefined) {
      // Still haggling, or already ended and waiting for the peer's close: nothing to finish.
      this.hardDisconnect(reason);
      return;
    }
    this.logger.info('connection shutting down', { reason });
    this.endRequested = true;
    this.armCloseTimer(this.limits.drainTimeoutMs);
    this.maybeEnd();
  }

  /** Drops the TCP connection at once (protocol violation, abuse, forced stop). */
  hardDisconnect(reason: string): void {
    this.thread?.stop();
    if (this.socket.destroyed) return;
    this.logger.info('dropping connection', { reason });
    this.transition('closed');
    this.socket.destroy();
  }

  private transition(next: ConnectionState): void {
    if (this.state === next) return;
    this.logger.debug('connection state', { from: this.state, to: next });
    this.state = next;
  }

  private onData(chunk: Buffer): void {
    if (this.state === 'closed') return;
    this.queue.push(chunk);
    this.pump();
  }

  private onClose(): void {
    this.thread?.stop();
    this.transition('closed');
    if (this.handshakeTimer !== undefined) clearTimeout(this.handshakeTimer);
    if (this.closeTimer !== undefined) clearTimeout(this.closeTimer);
    this.queue.clear();
    if (this.closeReported) return;
    this.closeReported = true;
    this.hooks.closed(this);
  }

  /** Parses as much queued input as the state and flow control allow. */
  private pump(): void {
    for (;;) {
      if (this.state === 'closed' || this.readPaused) return;
      const progressed = this.step();
      if (!progressed) return;
    }
  }

  private step(): boolean {
    switch (this.state) {
      case 'client-flags':
        return this.readClientFlags();
      case 'option-header':
        return this.readOptionHeader();
      case 'option-data':
        return this.readOptionData();
      case 'option-skip':
        return this.skipOptionData();
      case 'request-header':
      case 'draining':
        return this.readRequestHeader();
      case 'request-payload':
        return this.readRequestPayload();
      case 'request-skip':
        return this.skipRequestPayload();
      case 'closed':
        return false;
    }
  }

  private readClientFlags(): boolean {
    if (this.queue.length < 4) return false;
    const { buffer, offset } = this.queue.contiguous(4);
    const flags = buffer.readUInt32BE(offset);
    this.queue.consume(4);
    if ((flags & ~wire.KNOWN_CLIENT_FLAGS) !== 0) {
      this.logger.warn('client sent unknown handshake flags', { flags });
      this.hardDisconnect('unknown client flags');
      return false;
    }
    this.negotiation = new Negotiation(this.exports, (flags & wire.CLIENT_FLAG_NO_ZEROES) !== 0);
    this.transition('option-header');
    return true;
  }

  private readOptionHeader(): boolean {
    if (this.queue.length < wire.OPTION_HEADER_BYTES) return false;
    const { buffer, offset } = this.queue.contiguous(wire.OPTION_HEADER_BYTES);
    if (buffer.compare(wire.IHAVEOPT, 0, 8, offset, offset + 8) !== 0) {
      this.logger.warn('bad option magic');
      this.hardDisconnect('bad option magic');
      return false;
    }
    this.pendingOption = buffer.readUInt32BE(offset + 8);
    this.pendingBytes = buffer.readUInt32BE(offset + 12);
    this.queue.consume(wire.OPTION_HEADER_BYTES);
    this.optionCount += 1;
    if (this.optionCount > this.limits.maximumOptionsPerConnection) {
      this.logger.warn('too many options', { count: this.optionCount });
      this.hardDisconnect('too many options');
      return false;
    }
    if (this.pendingBytes > this.limits.maximumSkippedOptionBytes) {
      this.logger.warn('option data far too large', {
        option: this.pendingOption,
        bytes: this.pendingBytes,
      });
      this.hardDisconnect('oversized option');
      return false;
    }
    if (this.pendingBytes > this.limits.maximumOptionBytes) {
      if (this.pendingOption === wire.OPT_EXPORT_NAME) {
        // EXPORT_NAME has no option reply to carry an error: the spec says end the session.
        this.logger.warn('export name too long', { bytes: this.pendingBytes });
        this.hardDisconnect('oversized export name');
        return false;
      }
      this.transition('option-skip');
      return true;
    }
    this.transition('option-data');
    return true;
  }

  private skipOptionData(): boolean {
    this.pendingBytes -= this.queue.skip(this.pendingBytes);
    if (this.pendingBytes > 0) return false;
    this.logger.warn('option data too large', { option: this.pendingOption });
    this.send(
      wire.encodeOptionReply(
        this.pendingOption,
        wire.REP_ERR_TOO_BIG,
        Buffer.from('option data too large'),
      ),
    );
    this.transition('option-header');
    return true;
  }

  private readOptionData(): boolean {
    if (this.queue.length < this.pendingBytes) return false;
    const data = this.queue.take(this.pendingBytes);
    const negotiation = this.negotiation;
    assert(negotiation !== undefined, 'option before client flags');
    const result = negotiation.handleOption(this.pendingOption, data);
    for (const reply of result.replies) this.send(reply);
    const outcome = result.outcome;
    if (outcome.kind === 'continue') {
      this.transition('option-header');
      return true;
    }
    if (outcome.kind === 'close') {
      this.logger.info('negotiation ended', { reason: outcome.reason });
      this.transition('closed');
      // A peer that never closes its side must not hold the connection (and server.close()).
      this.endSocket();
      return false;
    }
    this.enterTransmission(outcome.export, negotiation);
    return true;
  }

  private enterTransmission(target: NbdExport, negotiation: Negotiation): void {
    if (this.handshakeTimer !== undefined) clearTimeout(this.handshakeTimer);
    this.handshakeTimer = undefined;
    this.target = target;
    this.executor = new RequestExecutor(
      target,
      negotiation.structuredReplies,
      negotiation.baseAllocationActiveFor(target.name),
      target.blockSizes.maximumBytes,
      this.limits.maximumBlockStatusExtents,
      this.replyBuffers,
    );
    this.transition('request-header');
    this.hooks.attached(this, target);
    const serves = TransmissionThread.serves(target.device, target.readOnly);
    this.takeOver =
      serves !== undefined && this.threadPolicy !== undefined
        ? { policy: this.threadPolicy, serves }
        : undefined;
    this.logger.info('client attached', {
      export: target.name,
      structuredReplies: negotiation.structuredReplies,
    });
  }

  /** Whether a thread should take over at this request header (at the head of the queue). */
  private threadWouldServe(type: number, lengthBytes: number): boolean {
    const takeOver = this.takeOver;
    return (
      takeOver !== undefined &&
      this.state === 'request-header' &&
      ((type === wire.CMD_READ && takeOver.serves.reads) ||
        (type === wire.CMD_WRITE && takeOver.serves.writes)) &&
      lengthBytes >= takeOver.policy.takeOverBytes
    );
  }

  /**
   * Lets a native thread serve from here on (the queue, starting with the header of a READ or
   * WRITE it would serve, goes to it). False when it did not start: not now, while replies
   * still wait in Node's socket buffer (the thread must be the only writer), or not ever.
   */
  private startThread(target: NbdExport): boolean {
    const takeOver = this.takeOver;
    const executor = this.executor;
    assert(takeOver !== undefined && executor !== undefined, 'thread without transmission');
    if (this.corked) {
      this.corked = false;
      this.socket.uncork();
    }
    if (this.socket.writableLength > 0) return false;
    const pending = this.queue.take(this.queue.length);
    this.thread = TransmissionThread.start(
      this.socket,
      target.device,
      pending,
      {
        sizeBytes: target.sizeBytes,
        alignmentBytes: target.blockSizes.minimumBytes,
        maximumPayloadBytes: target.blockSizes.maximumBytes,
        maximumSkippedPayloadBytes: this.limits.maximumSkippedPayloadBytes,
        maximumQueuedEvents: this.limits.maximumRequestsInFlight,
        serves: takeOver.serves,
        structuredReplies: executor.structuredReplies,
        ...takeOver.policy,
      },
      this.threadEvents(),
    );
    if (this.thread !== undefined) {
      this.logger.debug('transmission thread took over');
      // Flow control carries over: a connection paused now starts with a paused thread.
      if (this.readPaused) this.thread.setPaused(true);
      return true;
    }
    // Not taken over: the bytes go back to be parsed here, and no thread is tried again.
    this.takeOver = undefined;
    this.queue.push(pending);
    return false;
  }

  private threadEvents(): ThreadEvents {
    const requestOf = (header: ReceivedHeader): NbdRequest => ({
      ...header,
      payload: undefined,
      writeSequence: 0,
    });
    return {
      request: (header) => {
        if (this.state !== 'closed') this.acceptRequest(requestOf(header));
      },
      writeFailed: (header, error) => this.answerThreadFailure(requestOf(header), 'write', error),
      readFailed: (header, error) => this.answerThreadFailure(requestOf(header), 'read', error),
      skipped: (header) => this.rejectSkippedWrite(requestOf(header)),
      badMagic: (magic) => {
        this.logger.warn('bad request magic', { magic });
        this.hardDisconnect('bad request magic');
      },
      oversized: (header) => {
        this.logger.warn('write payload far over the maximum', { lengthBytes: header.lengthBytes });
        this.hardDisconnect('oversized write payload');
      },
      stopped: (reason, systemErrno, leftover) =>
        this.onThreadStopped(reason, systemErrno, leftover),
    };
  }

  /** The thread's pread or pwrite failed: the reply carries the error, mapped as every device
   * error is (nbdErrorFromException). */
  private answerThreadFailure(
    request: NbdRequest,
    operation: 'read' | 'write',
    error: TandemError,
  ): void {
    const executor = this.executor;
    assert(executor !== undefined, 'request before transmission');
    this.logger.warn(`${operation} failed`, { error });
    this.send(executor.encodeError(request, nbdErrorFromException(error), error));
  }

  /** A WRITE the thread read past without writing: it failed a check, answered here. */
  private rejectSkippedWrite(request: NbdRequest): void {
    const executor = this.executor;
    assert(executor !== undefined, 'write before transmission');
    const rejection = (this.state === 'draining' || this.endRequested
      ? { errno: wire.NBD_ESHUTDOWN, message: 'export is being removed' }
      : executor.validate(
          request.type,
          request.flags,
          request.offsetBytes,
          request.lengthBytes,
        )) ?? { errno: wire.NBD_EIO, message: 'the write was not taken' };
    this.logger.debug('request rejected', { type: 'WRITE', ...rejection });
    this.send(executor.encodeError(request, rejection.errno, new Error(rejection.message)));
  }

  private onThreadStopped(reason: StopReason, systemErrno: number, leftover: Buffer): void {
    this.logger.debug('transmission thread stopped', { reason, errno: errnoName(systemErrno) });
    const thread = this.thread;
    this.thread = undefined;
    if (this.socket.destroyed || thread === undefined) return;
    if (reason === 'socket-error' || reason === 'no-memory') {
      this.hardDisconnect(`transmission thread: ${reason} ${errnoName(systemErrno)}`);
      return;
    }
    // Node writes again, starting with the replies the thread had not sent.
    const output = thread.takeOutput();
    if (output !== undefined) this.send(output);
    if (reason === 'asked') {
      // Stopped by maybeEnd: nothing more is parsed; what the client still sends is dropped.
      this.threadStoppedForEnd = thread;
      this.maybeEnd();
      return;
    }
    // Node reads again and parses what the thread had received first: the next requests
    // (after a hand-back), or the peer's FIN (end of stream, after DISC, once this side ended).
    this.queue.push(leftover);
    this.readPaused = false;
    thread.handBack();
    this.updateReading();
    this.pump();
    this.maybeEnd();
  }

  private readRequestHeader(): boolean {
    if (this.thread !== undefined) return false;
    if (this.queue.length < wire.REQUEST_HEADER_BYTES) return false;
    const { buffer, offset } = this.queue.contiguous(wire.REQUEST_HEADER_BYTES);
    if (buffer.readUInt32BE(offset) !== wire.REQUEST_MAGIC) {
      this.logger.warn('bad request magic', { magic: buffer.readUInt32BE(offset) });
      this.hardDisconnect('bad request magic');
      return false;
    }
    if (
      this.threadWouldServe(buffer.readUInt16BE(offset + 6), buffer.readUInt32BE(offset + 24)) &&
      this.target !== undefined &&
      this.startThread(this.target)
    ) {
      return false;
    }
    const request: NbdRequest = {
      flags: buffer.readUInt16BE(offset + 4),
      type: buffer.readUInt16BE(offset + 6),
      handleHigh: buffer.readUInt32BE(offset + 8),
      handleLow: buffer.readUInt32BE(offset + 12),
      offsetBytes: wire.readUint64AsNumber(buffer, offset + 16),
      lengthBytes: buffer.readUInt32BE(offset + 24),
      payload: undefined,
      writeSequence: 0,
    };
    this.queue.consume(wire.REQUEST_HEADER_BYTES);
    return this.acceptRequest(request);
  }

  /** Handles one parsed request header; false when parsing should stop for now. */
  private acceptRequest(request: NbdRequest): boolean {
    if (request.type === wire.CMD_DISC) {
      this.logger.info('client disconnecting');
      this.endRequested = true;
      this.maybeEnd();
      return false;
    }
    const executor = this.executor;
    assert(executor !== undefined, 'request before transmission');
    const rejection =
      this.state === 'draining'
        ? { errno: wire.NBD_ESHUTDOWN, message: 'export is being removed' }
        : executor.validate(request.type, request.flags, request.offsetBytes, request.lengthBytes);
    if (request.type === wire.CMD_WRITE) return this.beginPayload(request, rejection);
    if (rejection !== undefined) {
      this.logger.debug('request rejected', {
        type: wire.COMMAND_NAMES[request.type],
        ...rejection,
      });
      this.send(executor.encodeError(request, rejection.errno, new Error(rejection.message)));
      return true;
    }
    this.dispatch(request);
    return true;
  }

  private beginPayload(
    request: NbdRequest,
    rejection: { errno: number; message: string } | undefined,
  ): boolean {
    if (rejection !== undefined) {
      if (request.lengthBytes > this.limits.maximumSkippedPayloadBytes) {
        this.logger.warn('write payload far over the maximum', {
          lengthBytes: request.lengthBytes,
        });
        this.hardDisconnect('oversized write payload');
        return false;
      }
      this.pendingRequest = request;
      this.pendingRejection = rejection;
      this.pendingBytes = request.lengthBytes;
      this.transition('request-skip');
      return true;
    }
    if (this.queue.length >= request.lengthBytes) {
      request.payload = this.queue.takePieces(request.lengthBytes);
      this.dispatch(request);
      return true;
    }
    // The payload stays in the socket chunks it arrives in: the device writes those pieces
    // with one gather write instead of this process copying them into one buffer first.
    request.payload = [];
    this.payloadFilledBytes = 0;
    this.pendingRequest = request;
    this.transition('request-payload');
    return true;
  }

  private readRequestPayload(): boolean {
    const request = this.pendingRequest;
    assert(request !== undefined && request.payload !== undefined, 'payload without request');
    const stepBytes = Math.min(this.queue.length, request.lengthBytes - this.payloadFilledBytes);
    for (const piece of this.queue.takePieces(stepBytes)) request.payload.push(piece);
    this.payloadFilledBytes += stepBytes;
    if (this.payloadFilledBytes < request.lengthBytes) return false;
    this.pendingRequest = undefined;
    this.transition(this.endRequested ? 'draining' : 'request-header');
    this.dispatch(request);
    return true;
  }

  private skipRequestPayload(): boolean {
    this.pendingBytes -= this.queue.skip(this.pendingBytes);
    if (this.pendingBytes > 0) return false;
    const request = this.pendingRequest;
    const rejection = this.pendingRejection;
    const executor = this.executor;
    assert(
      request !== undefined && rejection !== undefined && executor !== undefined,
      'skip state',
    );
    this.pendingRequest = undefined;
    this.pendingRejection = undefined;
    this.send(executor.encodeError(request, rejection.errno, new Error(rejection.message)));
    this.transition(this.endRequested ? 'draining' : 'request-header');
    return true;
  }

  private dispatch(request: NbdRequest): void {
    const executor = this.executor;
    assert(executor !== undefined, 'dispatch before transmission');
    const payloadBytes =
      request.type === wire.CMD_READ || request.type === wire.CMD_WRITE ? request.lengthBytes : 0;
    this.requestsInFlight += 1;
    this.bytesInFlight += payloadBytes;
    if (isWriteCommand(request.type)) {
      this.writeSequence += 1;
      request.writeSequence = this.writeSequence;
      this.writesInFlight.add(request.writeSequence);
    }
    const reply = (bytes: Buffer, afterSent?: () => void): void =>
      this.complete(request, payloadBytes, bytes, afterSent);
    if (request.type === wire.CMD_FLUSH) {
      // A flush covers every write this connection started before it (stronger than the spec,
      // which only asks for writes already answered): wait for them, then flush the device.
      this.afterWritesBefore(this.writeSequence, () => executor.flush(request, reply));
    } else {
      executor.execute(request, reply);
    }
    this.updateReading();
  }

  private complete(
    request: NbdRequest,
    payloadBytes: number,
    bytes: Buffer,
    afterSent: (() => void) | undefined,
  ): void {
    this.requestsInFlight -= 1;
    this.bytesInFlight -= payloadBytes;
    if (request.writeSequence !== 0) {
      this.writesInFlight.delete(request.writeSequence);
      this.releaseFlushWaiters();
    }
    this.send(bytes, afterSent);
    this.updateReading();
    this.maybeEnd();
  }

  private afterWritesBefore(barrierSequence: number, run: () => void): void {
    this.flushWaiters.push({ barrierSequence, run });
    this.releaseFlushWaiters();
  }

  private releaseFlushWaiters(): void {
    if (this.flushWaiters.length === 0) return;
    let oldestInFlight = Number.POSITIVE_INFINITY;
    for (const sequence of this.writesInFlight) oldestInFlight = Math.min(oldestInFlight, sequence);
    const ready = this.flushWaiters.filter((waiter) => waiter.barrierSequence < oldestInFlight);
    if (ready.length === 0) return;
    this.flushWaiters = this.flushWaiters.filter(
      (waiter) => waiter.barrierSequence >= oldestInFlight,
    );
    for (const waiter of ready) waiter.run();
  }

  /**
   * Queues bytes on the socket. `afterSent` runs once the socket has taken every byte (not if
   * the write failed or the socket was destroyed), so the buffer may then be reused.
   */
  private send(bytes: Buffer, afterSent?: () => void): void {
    if (this.state === 'closed' || this.socket.destroyed) return;
    const thread = this.thread;
    if (thread !== undefined) {
      // The thread is the socket's writer now; it copied the bytes.
      if (!thread.send(bytes)) {
        this.hardDisconnect('no memory for a reply');
        return;
      }
      afterSent?.();
      return;
    }
    if (!this.corked) {
      this.corked = true;
      this.socket.cork();
      setImmediate(() => {
        // startThread may have uncorked already.
        if (!this.corked) return;
        this.corked = false;
        this.socket.uncork();
      });
    }
    const written =
      afterSent === undefined
        ? this.socket.write(bytes)
        : this.socket.write(bytes, (error) => {
            if (error === undefined || error === null) afterSent();
          });
    if (!written) this.sendBlocked = true;
  }

  /** Pauses or resumes reading from the socket according to the flow-control limits. */
  private updateReading(): void {
    if (this.state === 'closed') return;
    const overloaded =
      this.sendBlocked ||
      this.requestsInFlight >= this.limits.maximumRequestsInFlight ||
      this.bytesInFlight >= this.limits.maximumBytesInFlight;
    if (this.thread !== undefined) {
      if (overloaded !== this.readPaused) this.thread.setPaused(overloaded);
      this.readPaused = overloaded;
      return;
    }
    if (overloaded && !this.readPaused) {
      this.readPaused = true;
      this.socket.pause();
    } else if (!overloaded && this.readPaused) {
      this.readPaused = false;
      this.socket.resume();
      // Requests may already be queued; parse them now rather than on the next chunk.
      setImmediate(() => this.pump());
    }
  }

  private maybeEnd(): void {
    if (!this.endRequested || this.state === 'closed') return;
    if (this.state === 'request-header') this.transition('draining');
    if (this.thread !== undefined) {
      // Every request the thread served is answered before the end: its replies are in the
      // output onThreadStopped takes.
      this.thread.stop();
      return;
    }
    if (this.requestsInFlight > 0) return;
    this.transition('closed');
    this.endSocket();
  }

  /**
   * Ends our side once every reply is written, keeps reading so the peer's FIN (or RST) is seen
   * even if reading was paused for flow control, and drops the socket if the peer has not
   * closed within the grace time (an idle client may never do so on its own).
   */
  private endSocket(): void {
    this.socket.end();
    this.threadStoppedForEnd?.handBack();
    this.socket.resume();
    this.armCloseTimer(this.limits.closeGraceMs);
  }

  /** Destroys the socket after `delayMs`, unless an earlier deadline is already set. */
  private armCloseTimer(delayMs: number): void {
    const deadline = performance.now() + delayMs;
    if (this.closeTimer !== undefined && this.closeDeadline <= deadline) return;
    if (this.closeTimer !== undefined) clearTimeout(this.closeTimer);
    this.closeDeadline = deadline;
    this.closeTimer = setTimeout(() => this.socket.destroy(), delayMs);
    this.closeTimer.unref();
  }
}
