/**
 * NBD wire constants and small codecs, as the NetworkBlockDevice project's proto.md defines
 * them (fixed newstyle negotiation, structured replies, block status, block size info).
 *
 * Everything is big-endian on the wire. This module imports nothing else of tandem so that the
 * server (src/nbd/server.ts), the client (src/nbd/client.ts) and the NBD-backed BlockDevice in
 * src/disk can all share it without a dependency cycle.
 */

export const NBD_MAGIC = Buffer.from('NBDMAGIC', 'latin1');
export const IHAVEOPT = Buffer.from('IHAVEOPT', 'latin1');
/** Option reply magic 0x0003e889045565a9, as two 32-bit halves. */
export const OPTION_REPLY_MAGIC_HIGH = 0x0003e889;
export const OPTION_REPLY_MAGIC_LOW = 0x045565a9;
export const REQUEST_MAGIC = 0x25609513;
export const SIMPLE_REPLY_MAGIC = 0x67446698;
export const STRUCTURED_REPLY_MAGIC = 0x668e33ef;

// Handshake flags (server) and client flags.
export const FLAG_FIXED_NEWSTYLE = 1 << 0;
export const FLAG_NO_ZEROES = 1 << 1;
export const CLIENT_FLAG_FIXED_NEWSTYLE = 1 << 0;
export const CLIENT_FLAG_NO_ZEROES = 1 << 1;
export const KNOWN_CLIENT_FLAGS = CLIENT_FLAG_FIXED_NEWSTYLE | CLIENT_FLAG_NO_ZEROES;

// Transmission flags.
export const TRANSMISSION_HAS_FLAGS = 1 << 0;
export const TRANSMISSION_READ_ONLY = 1 << 1;
export const TRANSMISSION_SEND_FLUSH = 1 << 2;
export const TRANSMISSION_SEND_FUA = 1 << 3;
export const TRANSMISSION_ROTATIONAL = 1 << 4;
export const TRANSMISSION_SEND_TRIM = 1 << 5;
export const TRANSMISSION_SEND_WRITE_ZEROES = 1 << 6;
export const TRANSMISSION_SEND_DF = 1 << 7;
export const TRANSMISSION_CAN_MULTI_CONN = 1 << 8;
export const TRANSMISSION_SEND_RESIZE = 1 << 9;
export const TRANSMISSION_SEND_CACHE = 1 << 10;
export const TRANSMISSION_SEND_FAST_ZERO = 1 << 11;

// Options.
export const OPT_EXPORT_NAME = 1;
export const OPT_ABORT = 2;
export const OPT_LIST = 3;
export const OPT_PEEK_EXPORT = 4;
export const OPT_STARTTLS = 5;
export const OPT_INFO = 6;
export const OPT_GO = 7;
export const OPT_STRUCTURED_REPLY = 8;
export const OPT_LIST_META_CONTEXT = 9;
export const OPT_SET_META_CONTEXT = 10;
export const OPT_EXTENDED_HEADERS = 11;

// Option replies.
export const REP_ACK = 1;
export const REP_SERVER = 2;
export const REP_INFO = 3;
export const REP_META_CONTEXT = 4;
const REP_ERROR_BIT = 0x80000000;
export const REP_ERR_UNSUP = REP_ERROR_BIT + 1;
export const REP_ERR_POLICY = REP_ERROR_BIT + 2;
export const REP_ERR_INVALID = REP_ERROR_BIT + 3;
export const REP_ERR_PLATFORM = REP_ERROR_BIT + 4;
export const REP_ERR_TLS_REQD = REP_ERROR_BIT + 5;
export const REP_ERR_UNKNOWN = REP_ERROR_BIT + 6;
export const REP_ERR_SHUTDOWN = REP_ERROR_BIT + 7;
export const REP_ERR_BLOCK_SIZE_REQD = REP_ERROR_BIT + 8;
export const REP_ERR_TOO_BIG = REP_ERROR_BIT + 9;

export function isOptionReplyError(replyType: number): boolean {
  return replyType >= REP_ERROR_BIT;
}

// NBD_INFO types inside NBD_REP_INFO.
export const INFO_EXPORT = 0;
export const INFO_NAME = 1;
export const INFO_DESCRIPTION = 2;
export const INFO_BLOCK_SIZE = 3;

// Commands.
export const CMD_READ = 0;
export const CMD_WRITE = 1;
export const CMD_DISC = 2;
export const CMD_FLUSH = 3;
export const CMD_TRIM = 4;
export const CMD_CACHE = 5;
export const CMD_WRITE_ZEROES = 6;
export const CMD_BLOCK_STATUS = 7;

export const COMMAND_NAMES: Readonly<Record<number, string>> = {
  [CMD_READ]: 'READ',
  [CMD_WRITE]: 'WRITE',
  [CMD_DISC]: 'DISC',
  [CMD_FLUSH]: 'FLUSH',
  [CMD_TRIM]: 'TRIM',
  [CMD_CACHE]: 'CACHE',
  [CMD_WRITE_ZEROES]: 'WRITE_ZEROES',
  [CMD_BLOCK_STATUS]: 'BLOCK_STATUS',
};

// Command flags.
export const CMD_FLAG_FUA = 1 << 0;
export const CMD_FLAG_NO_HOLE = 1 << 1;
export const CMD_FLAG_DF = 1 << 2;
export const CMD_FLAG_REQ_ONE = 1 << 3;
export const CMD_FLAG_FAST_ZERO = 1 << 4;

// Structured reply flags and types.
export const REPLY_FLAG_DONE = 1 << 0;
export const REPLY_TYPE_NONE = 0;
export const REPLY_TYPE_OFFSET_DATA = 1;
export const REPLY_TYPE_OFFSET_HOLE = 2;
export const REPLY_TYPE_BLOCK_STATUS = 5;
export const REPLY_TYPE_ERROR = (1 << 15) + 1;
export const REPLY_TYPE_ERROR_OFFSET = (1 << 15) + 2;

// base:allocation status flags.
export const STATE_HOLE = 1 << 0;
export const STATE_ZERO = 1 << 1;

export const BASE_ALLOCATION = 'base:allocation';

/** Error values allowed on the wire (proto.md "Error values"). */
export const NBD_EPERM = 1;
export const NBD_EIO = 5;
export const NBD_ENOMEM = 12;
export const NBD_EINVAL = 22;
export const NBD_ENOSPC = 28;
export const NBD_EOVERFLOW = 75;
export const NBD_ENOTSUP = 95;
export const NBD_ESHUTDOWN = 108;

export const NBD_ERROR_NAMES: Readonly<Record<number, string>> = {
  [NBD_EPERM]: 'EPERM',
  [NBD_EIO]: 'EIO',
  [NBD_ENOMEM]: 'ENOMEM',
  [NBD_EINVAL]: 'EINVAL',
  [NBD_ENOSPC]: 'ENOSPC',
  [NBD_EOVERFLOW]: 'EOVERFLOW',
  [NBD_ENOTSUP]: 'ENOTSUP',
  [NBD_ESHUTDOWN]: 'ESHUTDOWN',
};

export const REQUEST_HEADER_BYTES = 28;
export const SIMPLE_REPLY_HEADER_BYTES = 16;
export const STRUCTURED_REPLY_HEADER_BYTES = 20;
export const OPTION_HEADER_BYTES = 16;
export const OPTION_REPLY_HEADER_BYTES = 20;
/** Handshake sent by a fixed-newstyle server: NBDMAGIC, IHAVEOPT, 16-bit flags. */
export const SERVER_GREETING_BYTES = 18;
/** Reply to NBD_OPT_EXPORT_NAME: size, transmission flags, then 124 zero bytes unless NO_ZEROES. */
export const EXPORT_NAME_REPLY_BYTES = 10;
export const EXPORT_NAME_ZERO_PAD_BYTES = 124;

/** Strings (export names, queries, messages) may be at most 4096 bytes (proto.md Conventions). */
export const MAXIMUM_STRING_BYTES = 4096;

/**
 * 64-bit wire fields are read as two 32-bit halves; offsets and sizes must stay below 2^53 to be
 * exact JavaScript numbers. Returns -1 when the value is not a safe integer.
 */
export function readUint64AsNumber(buffer: Buffer, offset: number): number {
  const high = buffer.readUInt32BE(offset);
  const low = buffer.readUInt32BE(offset + 4);
  if (high >= 0x200000) return -1;
  return high * 0x100000000 + low;
}

export function writeUint64FromNumber(buffer: Buffer, value: number, offset: number): void {
  buffer.writeUInt32BE(Math.floor(value / 0x100000000), offset);
  buffer.writeUInt32BE(value >>> 0, offset + 4);
}

export function encodeOptionReply(option: number, replyType: number, payload?: Buffer): Buffer {
  const payloadBytes = payload?.length ?? 0;
  const buffer = Buffer.allocUnsafe(OPTION_REPLY_HEADER_BYTES + payloadBytes);
  buffer.writeUInt32BE(OPTION_REPLY_MAGIC_HIGH, 0);
  buffer.writeUInt32BE(OPTION_REPLY_MAGIC_LOW, 4);
  buffer.writeUInt32BE(option, 8);
  buffer.writeUInt32BE(replyType, 12);
  buffer.writeUInt32BE(payloadBytes, 16);
  if (payload !== undefined) payload.copy(buffer, OPTION_REPLY_HEADER_BYTES);
  return buffer;
}

export function encodeOption(option: number, payload?: Buffer): Buffer {
  const payloadBytes = payload?.length ?? 0;
  const buffer = Buffer.allocUnsafe(OPTION_HEADER_BYTES + payloadBytes);
  IHAVEOPT.copy(buffer, 0);
  buffer.writeUInt32BE(option, 8);
  buffer.writeUInt32BE(payloadBytes, 12);
  if (payload !== undefined) payload.copy(buffer, OPTION_HEADER_BYTES);
  return buffer;
}

/** A 32-bit length followed by the UTF-8 bytes, the layout of names and queries in options. */
export function encodeLengthPrefixedString(text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const buffer = Buffer.allocUnsafe(4 + bytes.length);
  buffer.writeUInt32BE(bytes.length, 0);
  bytes.copy(buffer, 4);
  return buffer;
}

export function writeRequestHeader(
  buffer: Buffer,
  flags: number,
  type: number,
  handleHigh: number,
  handleLow: number,
  offsetBytes: number,
  lengthBytes: number,
): void {
  buffer.writeUInt32BE(REQUEST_MAGIC, 0);
  buffer.writeUInt16BE(flags, 4);
  buffer.writeUInt16BE(type, 6);
  buffer.writeUInt32BE(handleHigh, 8);
  buffer.writeUInt32BE(handleLow, 12);
  writeUint64FromNumber(buffer, offsetBytes, 16);
  buffer.writeUInt32BE(lengthBytes, 24);
}
