/**
 * Option haggling of the fixed newstyle handshake (proto.md "Option haggling").
 *
 * Pure with respect to I/O: the connection reads an option header and its data, calls
 * handleOption(), writes the replies it returns and follows the outcome. Every malformed option
 * is answered with an error reply and the byte stream stays in step; only what the spec says
 * cannot be answered (an unknown export in NBD_OPT_EXPORT_NAME) ends the connection.
 */
import type { NbdExport } from './nbd-export.js';
import * as wire from './wire.js';

/** Context id of base:allocation on every connection (the only context tandem serves). */
export const BASE_ALLOCATION_CONTEXT_ID = 1;

export interface ExportLookup {
  find(name: string): NbdExport | undefined;
  all(): readonly NbdExport[];
}

export type OptionOutcome =
  | { readonly kind: 'continue' }
  | { readonly kind: 'close'; readonly reason: string }
  | { readonly kind: 'transmission'; readonly export: NbdExport };

export interface OptionResult {
  readonly replies: Buffer[];
  readonly outcome: OptionOutcome;
}

const continueOutcome: OptionOutcome = { kind: 'continue' };

export class Negotiation {
  structuredReplies = false;
  /** base:allocation selected by SET_META_CONTEXT, and for which export name. */
  private metaContextExportName: string | undefined;
  private baseAllocationSelected = false;

  constructor(
    private readonly exports: ExportLookup,
    private readonly clientNoZeroes: boolean,
  ) {}

  /** True when BLOCK_STATUS may be used on `exportName` in the transmission phase. */
  baseAllocationActiveFor(exportName: string): boolean {
    return this.baseAllocationSelected && this.metaContextExportName === exportName;
  }

  handleOption(option: number, data: Buffer): OptionResult {
    switch (option) {
      case wire.OPT_EXPORT_NAME:
        return this.exportName(data);
      case wire.OPT_ABORT:
        return {
          replies: [wire.encodeOptionReply(option, wire.REP_ACK)],
          outcome: { kind: 'close', reason: 'client sent NBD_OPT_ABORT' },
        };
      case wire.OPT_LIST:
        return this.list(data);
      case wire.OPT_INFO:
      case wire.OPT_GO:
        return this.infoOrGo(option, data);
      case wire.OPT_STRUCTURED_REPLY:
        if (data.length !== 0) return errorReply(option, wire.REP_ERR_INVALID, 'unexpected data');
        this.structuredReplies = true;
        return {
          replies: [wire.encodeOptionReply(option, wire.REP_ACK)],
          outcome: continueOutcome,
        };
      case wire.OPT_LIST_META_CONTEXT:
      case wire.OPT_SET_META_CONTEXT:
        return this.metaContext(option, data);
      case wire.OPT_STARTTLS:
        return errorReply(option, wire.REP_ERR_UNSUP, 'TLS is not supported by this server');
      default:
        return errorReply(option, wire.REP_ERR_UNSUP, `option ${option} is not supported`);
    }
  }

  private exportName(data: Buffer): OptionResult {
    const name = data.toString('utf8');
    const found = data.length <= wire.MAXIMUM_STRING_BYTES ? this.exports.find(name) : undefined;
    if (found === undefined) {
      // The reply to EXPORT_NAME cannot carry an error: the spec says to end the session.
      return { replies: [], outcome: { kind: 'close', reason: `unknown export '${name}'` } };
    }
    const reply = Buffer.alloc(
      wire.EXPORT_NAME_REPLY_BYTES + (this.clientNoZeroes ? 0 : wire.EXPORT_NAME_ZERO_PAD_BYTES),
    );
    wire.writeUint64FromNumber(reply, found.sizeBytes, 0);
    reply.writeUInt16BE(found.transmissionFlags(this.structuredReplies), 8);
    this.keepMetaContextOnlyFor(found.name);
    return { replies: [reply], outcome: { kind: 'transmission', export: found } };
  }

  private list(data: Buffer): OptionResult {
    if (data.length !== 0) {
      return errorReply(wire.OPT_LIST, wire.REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
    }
    const replies: Buffer[] = [];
    for (const found of this.exports.all()) {
      const name = Buffer.from(found.name, 'utf8');
      const description = Buffer.from(found.description, 'utf8');
      const payload = Buffer.allocUnsafe(4 + name.length + description.length);
      payload.writeUInt32BE(name.length, 0);
      name.copy(payload, 4);
      description.copy(payload, 4 + name.length);
      replies.push(wire.encodeOptionReply(wire.OPT_LIST, wire.REP_SERVER, payload));
    }
    replies.push(wire.encodeOptionReply(wire.OPT_LIST, wire.REP_ACK));
    return { replies, outcome: continueOutcome };
  }

  private infoOrGo(option: number, data: Buffer): OptionResult {
    const parsed = parseInfoRequest(data);
    if (typeof parsed === 'string') return errorReply(option, wire.REP_ERR_INVALID, parsed);
    const found = this.exports.find(parsed.name);
    if (found === undefined) {
      const known = this.exports
        .all()
        .map((candidate) => candidate.name)
        .slice(0, 16)
        .join(', ');
      const message =
        parsed.name === ''
          ? `no default export: name one of: ${known || '(none)'}`
          : `unknown export '${parsed.name}'`;
      return errorReply(option, wire.REP_ERR_UNKNOWN, message);
    }
    const replies: Buffer[] = [];
    const exportInfo = Buffer.allocUnsafe(12);
    exportInfo.writeUInt16BE(wire.INFO_EXPORT, 0);
    wire.writeUint64FromNumber(exportInfo, found.sizeBytes, 2);
    exportInfo.writeUInt16BE(found.transmissionFlags(this.structuredReplies), 10);
    replies.push(wire.encodeOptionReply(option, wire.REP_INFO, exportInfo));
    if (parsed.requests.includes(wire.INFO_NAME)) {
      replies.push(infoString(option, wire.INFO_NAME, found.name));
    }
    if (parsed.requests.includes(wire.INFO_DESCRIPTION) && found.description !== '') {
      replies.push(infoString(option, wire.INFO_DESCRIPTION, found.description));
    }
    // Sent even when not asked for: the spec lets a server volunteer its block sizes, and
    // clients ignore information types they did not request.
    const blockSize = Buffer.allocUnsafe(14);
    blockSize.writeUInt16BE(wire.INFO_BLOCK_SIZE, 0);
    blockSize.writeUInt32BE(found.blockSizes.minimumBytes, 2);
    blockSize.writeUInt32BE(found.blockSizes.preferredBytes, 6);
    blockSize.writeUInt32BE(found.blockSizes.maximumBytes, 10);
    replies.push(wire.encodeOptionReply(option, wire.REP_INFO, blockSize));
    replies.push(wire.encodeOptionReply(option, wire.REP_ACK));
    if (option === wire.OPT_INFO) return { replies, outcome: continueOutcome };
    this.keepMetaContextOnlyFor(found.name);
    return { replies, outcome: { kind: 'transmission', export: found } };
  }

  private metaContext(option: number, data: Buffer): OptionResult {
    if (!this.structuredReplies) {
      return errorReply(option, wire.REP_ERR_INVALID, 'negotiate structured replies first');
    }
    const parsed = parseMetaContextRequest(data);
    if (typeof parsed === 'string') return errorReply(option, wire.REP_ERR_INVALID, parsed);
    if (this.exports.find(parsed.exportName) === undefined) {
      return errorReply(option, wire.REP_ERR_UNKNOWN, `unknown export '${parsed.exportName}'`);
    }
    const listing = option === wire.OPT_LIST_META_CONTEXT;
    const matches = parsed.queries.some((query) =>
      listing
        ? query === 'base:' || query === wire.BASE_ALLOCATION
        : query === wire.BASE_ALLOCATION,
    );
    const selected = matches || (listing && parsed.queries.length === 0);
    if (!listing) {
      this.metaContextExportName = parsed.exportName;
      this.baseAllocationSelected = selected;
    }
    const replies: Buffer[] = [];
    if (selected) {
      const name = Buffer.from(wire.BASE_ALLOCATION, 'utf8');
      const payload = Buffer.allocUnsafe(4 + name.length);
      // Ids in a LIST reply are reserved and should be zero (proto.md).
      payload.writeUInt32BE(listing ? 0 : BASE_ALLOCATION_CONTEXT_ID, 0);
      name.copy(payload, 4);
      replies.push(wire.encodeOptionReply(option, wire.REP_META_CONTEXT, payload));
    }
    replies.push(wire.encodeOptionReply(option, wire.REP_ACK));
    return { replies, outcome: continueOutcome };
  }

  private keepMetaContextOnlyFor(exportName: string): void {
    if (this.metaContextExportName !== exportName) this.baseAllocationSelected = false;
  }
}

function errorReply(option: number, replyType: number, message: string): OptionResult {
  return {
    replies: [wire.encodeOptionReply(option, replyType, Buffer.from(message, 'utf8'))],
    outcome: continueOutcome,
  };
}

function infoString(option: number, infoType: number, text: string): Buffer {
  const bytes = Buffer.from(text, 'utf8');
  const payload = Buffer.allocUnsafe(2 + bytes.length);
  payload.writeUInt16BE(infoType, 0);
  bytes.copy(payload, 2);
  return wire.encodeOptionReply(option, wire.REP_INFO, payload);
}

interface InfoRequest {
  readonly name: string;
  readonly requests: number[];
}

/** NBD_OPT_INFO / NBD_OPT_GO data: name length, name, request count, 16-bit requests. */
export function parseInfoRequest(data: Buffer): InfoRequest | string {
  if (data.length < 6) return 'option data too short';
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > wire.MAXIMUM_STRING_BYTES || 4 + nameBytes + 2 > data.length) {
    return 'export name length does not fit the option';
  }
  const name = data.toString('utf8', 4, 4 + nameBytes);
  const requestCount = data.readUInt16BE(4 + nameBytes);
  if (data.length !== 4 + nameBytes + 2 + requestCount * 2) {
    return 'information request count does not match the option length';
  }
  const requests: number[] = [];
  for (let index = 0; index < requestCount; index++) {
    requests.push(data.readUInt16BE(4 + nameBytes + 2 + index * 2));
  }
  return { name, requests };
}

interface MetaContextRequest {
  readonly exportName: string;
  readonly queries: string[];
}

/** LIST/SET_META_CONTEXT data: name length, name, query count, (query length, query)... */
export function parseMetaContextRequest(data: Buffer): MetaContextRequest | string {
  if (data.length < 8) return 'option data too short';
  const nameBytes = data.readUInt32BE(0);
  if (nameBytes > wire.MAXIMUM_STRING_BYTES || 4 + nameBytes + 4 > data.length) {
    return 'export name length does not fit the option';
  }
  const exportName = data.toString('utf8', 4, 4 + nameBytes);
  const queryCount = data.readUInt32BE(4 + nameBytes);
  let cursor = 4 + nameBytes + 4;
  const queries: string[] = [];
  for (let index = 0; index < queryCount; index++) {
    if (cursor + 4 > data.length) return 'query count does not match the option length';
    const queryBytes = data.readUInt32BE(cursor);
    cursor += 4;
    if (queryBytes > wire.MAXIMUM_STRING_BYTES || cursor + queryBytes > data.length) {
      return 'query length does not fit the option';
    }
    queries.push(data.toString('utf8', cursor, cursor + queryBytes));
    cursor += queryBytes;
  }
  if (cursor !== data.length) return 'trailing bytes after the last query';
  return { exportName, queries };
}
