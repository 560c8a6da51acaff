/**
 * The transmission phase's work: validate one request at the edge (before the device sees it),
 * run it on the export's BlockDevice, and encode the reply.
 *
 * Validation follows proto.md: unknown commands and flags are EINVAL, writes to a read-only
 * export EPERM, a write past the end ENOSPC (a read past the end EINVAL), a payload over the
 * advertised maximum EOVERFLOW. Internal errors become NBD errno values in exactly one place,
 * nbdErrorFromException().
 */
import type { BlockDevice, BlockStatusExtent, WriteOptions } from '../disk/block-device.js';
import { isTandemError } from '../errors.js';
import type { NbdExport } from './nbd-export.js';
import { BASE_ALLOCATION_CONTEXT_ID } from './negotiation.js';
import type { ReplyBufferPool } from './reply-buffers.js';
import * as wire from './wire.js';

/** A request header as parsed from the wire. Offsets from 2^53 on are -1 (then rejected). */
export interface NbdRequestHeader {
  readonly flags: number;
  readonly type: number;
  readonly handleHigh: number;
  readonly handleLow: number;
  readonly offsetBytes: number;
  readonly lengthBytes: number;
}

/** One request as the connection runs it. */
export interface NbdRequest extends NbdRequestHeader {
  /**
   * WRITE data as the pieces (views of socket chunks) it arrived in, back to back; complete
   * once the request is dispatched.
   */
  payload: Buffer[] | undefined;
  /** Order among the connection's writes, for flush barriers; 0 for other commands. */
  writeSequence: number;
}

export interface RequestRejection {
  readonly errno: number;
  readonly message: string;
}

/** Delivers a request's reply; `afterSent` (for a pooled buffer) runs once it left. */
export type Reply = (bytes: Buffer, afterSent?: () => void) => void;

const flagsAllowedByCommand: Readonly<Record<number, number>> = {
  [wire.CMD_READ]: wire.CMD_FLAG_FUA | wire.CMD_FLAG_DF,
  [wire.CMD_WRITE]: wire.CMD_FLAG_FUA,
  [wire.CMD_DISC]: wire.CMD_FLAG_FUA,
  [wire.CMD_FLUSH]: wire.CMD_FLAG_FUA,
  [wire.CMD_TRIM]: wire.CMD_FLAG_FUA,
  [wire.CMD_CACHE]: wire.CMD_FLAG_FUA,
  [wire.CMD_WRITE_ZEROES]: wire.CMD_FLAG_FUA | wire.CMD_FLAG_NO_HOLE | wire.CMD_FLAG_FAST_ZERO,
  [wire.CMD_BLOCK_STATUS]: wire.CMD_FLAG_FUA | wire.CMD_FLAG_REQ_ONE,
};

export function isWriteCommand(type: number): boolean {
  return type === wire.CMD_WRITE || type === wire.CMD_TRIM || type === wire.CMD_WRITE_ZEROES;
}

/** Maps an exception from the device layers to the NBD error value the client sees. */
export function nbdErrorFromException(error: unknown): number {
  if (isTandemError(error)) {
    switch (error.code) {
      case 'DISK_READ_ONLY':
        return wire.NBD_EPERM;
      case 'DISK_NO_SPACE':
        return wire.NBD_ENOSPC;
      case 'DISK_NOT_SUPPORTED':
        return wire.NBD_ENOTSUP;
      case 'DISK_OUT_OF_RANGE':
      case 'DISK_MISALIGNED':
      case 'DISK_INVALID_ARGUMENT':
        return wire.NBD_EINVAL;
      case 'NBD_DISCONNECTED':
        return wire.NBD_ESHUTDOWN;
      default:
        return wire.NBD_EIO;
    }
  }
  return wire.NBD_EIO;
}

export class RequestExecutor {
  constructor(
    private readonly target: NbdExport,
    readonly structuredReplies: boolean,
    private readonly blockStatusActive: boolean,
    private readonly maximumPayloadBytes: number,
    private readonly maximumBlockStatusExtents: number,
    private readonly replyBuffers: ReplyBufferPool,
  ) {}

  /** Checks a request header; returns undefined when it may run. */
  validate(
    type: number,
    flags: number,
    offsetBytes: number,
    lengthBytes: number,
  ): RequestRejection | undefined {
    const allowed = flagsAllowedByCommand[type];
    if (allowed === undefined)
      return { errno: wire.NBD_EINVAL, message: `unknown command ${type}` };
    if ((flags & ~allowed) !== 0) {
      return { errno: wire.NBD_EINVAL, message: `flags 0x${flags.toString(16)} not valid here` };
    }
    if (type === wire.CMD_READ && (flags & wire.CMD_FLAG_DF) !== 0 && !this.structuredReplies) {
      return { errno: wire.NBD_EINVAL, message: 'DF needs structured replies' };
    }
    if (type === wire.CMD_FLUSH || type === wire.CMD_DISC) {
      return offsetBytes === 0 && lengthBytes === 0
        ? undefined
        : { errno: wire.NBD_EINVAL, message: 'offset and length must be zero' };
    }
    if (this.target.readOnly && isWriteCommand(type)) {
      return { errno: wire.NBD_EPERM, message: 'export is read-only' };
    }
    if (lengthBytes === 0) return { errno: wire.NBD_EINVAL, message: 'length is zero' };
    if (
      (type === wire.CMD_READ || type === wire.CMD_WRITE) &&
      lengthBytes > this.maximumPayloadBytes
    ) {
      return {
        errno: wire.NBD_EOVERFLOW,
        message: `length ${lengthBytes} is over the maximum ${this.maximumPayloadBytes}`,
      };
    }
    const alignment = this.target.blockSizes.minimumBytes;
    if (alignment > 1 && (offsetBytes % alignment !== 0 || lengthBytes % alignment !== 0)) {
      return { errno: wire.NBD_EINVAL, message: `request not aligned to ${alignment} bytes` };
    }
    if (offsetBytes < 0 || offsetBytes + lengthBytes > this.target.sizeBytes) {
      return {
        errno: isWriteCommand(type) ? wire.NBD_ENOSPC : wire.NBD_EINVAL,
        message: `range ends past the export size ${this.target.sizeBytes}`,
      };
    }
    if (
      type === wire.CMD_WRITE_ZEROES &&
      this.isFastZero(flags) &&
      !this.target.device.capabilities.fastZero
    ) {
      return { errno: wire.NBD_ENOTSUP, message: 'fast zeroing is not available' };
    }
    if (type === wire.CMD_BLOCK_STATUS && !this.blockStatusActive) {
      return { errno: wire.NBD_EINVAL, message: 'no metadata context was negotiated' };
    }
    return undefined;
  }

  /**
   * Runs a validated request. `reply` receives the complete reply bytes exactly once, and for a
   * pooled buffer what to call once the socket has taken them; FLUSH and DISC are handled by
   * the connection, which owns ordering.
   */
  execute(request: NbdRequest, reply: Reply): void {
    switch (request.type) {
      case wire.CMD_READ:
        this.read(request, reply);
        return;
      case wire.CMD_BLOCK_STATUS:
        this.blockStatus(request, reply);
        return;
      default:
        this.runWithoutPayload(request, reply);
    }
  }

  /** FLUSH after the connection's barrier was met. */
  flush(request: NbdRequest, reply: Reply): void {
    this.replyWhenDone(this.target.device.flush(), request, reply);
  }

  encodeError(request: NbdRequest, errno: number, cause?: unknown): Buffer {
    if (!this.structuredReplies) return encodeSimpleReply(request, errno);
    const message = Buffer.from(describeCause(cause), 'utf8').subarray(0, 1024);
    const buffer = Buffer.allocUnsafe(wire.STRUCTURED_REPLY_HEADER_BYTES + 6 + message.length);
    writeStructuredHeader(buffer, request, wire.REPLY_TYPE_ERROR, 6 + message.length);
    buffer.writeUInt32BE(errno, 20);
    buffer.writeUInt16BE(message.length, 24);
    message.copy(buffer, 26);
    return buffer;
  }

  encodeSuccess(request: NbdRequest): Buffer {
    return encodeSimpleReply(request, 0);
  }

  private read(request: NbdRequest, reply: Reply): void {
    // Header and data share one allocation so the reply leaves in one socket write, and the
    // device reads straight into it (no copy on the way out).
    const headerBytes = this.structuredReplies
      ? wire.STRUCTURED_REPLY_HEADER_BYTES + 8
      : wire.SIMPLE_REPLY_HEADER_BYTES;
    const buffer = this.replyBuffers.take(headerBytes + request.lengthBytes);
    this.target.device.read(buffer.subarray(headerBytes), request.offsetBytes).then(
      () => {
        if (this.structuredReplies) {
          writeStructuredHeader(
            buffer,
            request,
            wire.REPLY_TYPE_OFFSET_DATA,
            8 + request.lengthBytes,
          );
          wire.writeUint64FromNumber(buffer, request.offsetBytes, 20);
        } else {
          writeSimpleHeader(buffer, request, 0);
        }
        reply(buffer, () => this.replyBuffers.give(buffer));
      },
      // The buffer is not pooled again: a failed device might still refer to it.
      (error: unknown) => reply(this.encodeError(request, nbdErrorFromException(error), error)),
    );
  }

  private runWithoutPayload(request: NbdRequest, reply: Reply): void {
    const device = this.target.device;
    const fua = (request.flags & wire.CMD_FLAG_FUA) !== 0;
    let operation: Promise<void>;
    switch (request.type) {
      case wire.CMD_WRITE:
        operation = writePieces(device, request.payload ?? [], request.offsetBytes, { fua });
        break;
      case wire.CMD_TRIM:
        operation = device.discard(request.offsetBytes, request.lengthBytes, { fua });
        break;
      case wire.CMD_WRITE_ZEROES:
        operation = device.writeZeroes(request.offsetBytes, request.lengthBytes, {
          fua,
          noHole: (request.flags & wire.CMD_FLAG_NO_HOLE) !== 0,
          fastOnly: this.isFastZero(request.flags),
        });
        break;
      case wire.CMD_CACHE:
        operation = device.cache(request.offsetBytes, request.lengthBytes);
        break;
      default:
        reply(this.encodeError(request, wire.NBD_EINVAL, new Error('unexpected command')));
        return;
    }
    this.replyWhenDone(operation, request, reply);
  }

  /** Answers a request that returns no data: success, or the mapped error with its message. */
  private replyWhenDone(operation: Promise<void>, request: NbdRequest, reply: Reply): void {
    operation.then(
      () => reply(this.encodeSuccess(request)),
      (error: unknown) => reply(this.encodeError(request, nbdErrorFromException(error), error)),
    );
  }

  private blockStatus(request: NbdRequest, reply: Reply): void {
    this.target.device.blockStatus(request.offsetBytes, request.lengthBytes).then(
      (extents) => reply(this.encodeBlockStatus(request, extents)),
      (error: unknown) => reply(this.encodeError(request, nbdErrorFromException(error), error)),
    );
  }

  private encodeBlockStatus(request: NbdRequest, extents: readonly BlockStatusExtent[]): Buffer {
    const onlyOne = (request.flags & wire.CMD_FLAG_REQ_ONE) !== 0;
    const limit = onlyOne ? 1 : this.maximumBlockStatusExtents;
    const descriptors: Array<{ lengthBytes: number; status: number }> = [];
    let coveredBytes = 0;
    for (const extent of extents) {
      if (descriptors.length >= limit || coveredBytes >= request.lengthBytes) break;
      // Clamp to the request and to the 32-bit length field; never emit a zero length.
      const lengthBytes = Math.min(
        extent.lengthBytes,
        request.lengthBytes - coveredBytes,
        0xffffffff,
      );
      if (lengthBytes <= 0) continue;
      const status = (extent.hole ? wire.STATE_HOLE : 0) | (extent.zero ? wire.STATE_ZERO : 0);
      const previous = descriptors[descriptors.length - 1];
      if (
        previous !== undefined &&
        previous.status === status &&
        previous.lengthBytes + lengthBytes <= 0xffffffff
      ) {
        previous.lengthBytes += lengthBytes;
      } else {
        descriptors.push({ lengthBytes, status });
      }
      coveredBytes += lengthBytes;
    }
    if (descriptors.length === 0) descriptors.push({ lengthBytes: request.lengthBytes, status: 0 });
    const payloadBytes = 4 + descriptors.length * 8;
    const buffer = Buffer.allocUnsafe(wire.STRUCTURED_REPLY_HEADER_BYTES + payloadBytes);
    writeStructuredHeader(buffer, request, wire.REPLY_TYPE_BLOCK_STATUS, payloadBytes);
    buffer.writeUInt32BE(BASE_ALLOCATION_CONTEXT_ID, 20);
    let cursor = 24;
    for (const descriptor of descriptors) {
      buffer.writeUInt32BE(descriptor.lengthBytes, cursor);
      buffer.writeUInt32BE(descriptor.status, cursor + 4);
      cursor += 8;
    }
    return buffer;
  }

  private isFastZero(flags: number): boolean {
    return (flags & wire.CMD_FLAG_FAST_ZERO) !== 0;
  }
}

/** A payload in one piece is an ordinary write; more pieces are gathered, or joined first. */
function writePieces(
  device: BlockDevice,
  pieces: readonly Buffer[],
  offsetBytes: number,
  options: WriteOptions,
): Promise<void> {
  const only = pieces.length === 1 ? pieces[0] : undefined;
  if (only !== undefined) return device.write(only, offsetBytes, options);
  if (device.writeGathered !== undefined) {
    return device.writeGathered(pieces, offsetBytes, options);
  }
  return device.write(Buffer.concat(pieces), offsetBytes, options);
}

function describeCause(cause: unknown): string {
  if (cause instanceof Error) return cause.message;
  return cause === undefined ? 'request failed' : String(cause);
}

function writeSimpleHeader(buffer: Buffer, request: NbdRequest, errno: number): void {
  buffer.writeUInt32BE(wire.SIMPLE_REPLY_MAGIC, 0);
  buffer.writeUInt32BE(errno, 4);
  buffer.writeUInt32BE(request.handleHigh, 8);
  buffer.writeUInt32BE(request.handleLow, 12);
}

export function encodeSimpleReply(request: NbdRequest, errno: number): Buffer {
  const buffer = Buffer.allocUnsafe(wire.SIMPLE_REPLY_HEADER_BYTES);
  writeSimpleHeader(buffer, request, errno);
  return buffer;
}

/** Structured chunk header; every chunk tandem sends is the only (final) one of its reply. */
function writeStructuredHeader(
  buffer: Buffer,
  request: NbdRequest,
  type: number,
  payloadBytes: number,
): void {
  buffer.writeUInt32BE(wire.STRUCTURED_REPLY_MAGIC, 0);
  buffer.writeUInt16BE(wire.REPLY_FLAG_DONE, 4);
  buffer.writeUInt16BE(type, 6);
  buffer.writeUInt32BE(request.handleHigh, 8);
  buffer.writeUInt32BE(request.handleLow, 12);
  buffer.writeUInt32BE(payloadBytes, 16);
}
