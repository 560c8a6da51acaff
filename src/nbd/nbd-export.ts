/**
 * One export of the NBD server: a name, a BlockDevice, and what the server advertises for it.
 */
import type { BlockDevice } from '../disk/block-device.js';
import { TandemError } from '../errors.js';
import type { NbdLimits } from './limits.js';
import * as wire from './wire.js';

export interface NbdExportOptions {
  readonly name: string;
  readonly device: BlockDevice;
  readonly readOnly?: boolean;
  readonly description?: string;
}

export interface NbdExportInfo {
  readonly name: string;
  readonly description: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  readonly connectionCount: number;
  readonly deviceDescription: string;
}

export interface BlockSizes {
  readonly minimumBytes: number;
  readonly preferredBytes: number;
  readonly maximumBytes: number;
}

/** Export names are printable UTF-8, 1..4096 bytes, no NUL (proto.md "Conventions"). */
export function validateExportName(name: string): void {
  const bytes = Buffer.byteLength(name, 'utf8');
  if (bytes === 0 || bytes > wire.MAXIMUM_STRING_BYTES) {
    throw new TandemError(
      'INVALID_ARGUMENT',
      `export name must be 1 to ${wire.MAXIMUM_STRING_BYTES} bytes, got ${bytes}`,
    );
  }
  // eslint-disable-next-line no-control-regex
  if (/[\u0000-\u001f\u007f]/.test(name)) {
    throw new TandemError('INVALID_ARGUMENT', 'export name must not contain control characters');
  }
}

export class NbdExport {
  readonly name: string;
  readonly device: BlockDevice;
  readonly readOnly: boolean;
  readonly description: string;
  readonly blockSizes: BlockSizes;
  /** Connections in the transmission phase on this export. */
  connectionCount = 0;
  /** Set once removal starts: no new connection may select the export. */
  removing = false;

  constructor(options: NbdExportOptions, limits: NbdLimits) {
    validateExportName(options.name);
    this.name = options.name;
    this.device = options.device;
    this.readOnly = options.readOnly === true || options.device.readOnly;
    this.description = options.description ?? '';
    const minimumBytes = Math.max(1, options.device.alignmentBytes);
    const maximumBytes = Math.min(limits.maximumPayloadBytes, options.device.maximumIoBytes);
    this.blockSizes = {
      minimumBytes,
      preferredBytes: Math.max(minimumBytes, options.device.physicalSectorSizeBytes, 4096),
      maximumBytes: maximumBytes - (maximumBytes % minimumBytes),
    };
  }

  get sizeBytes(): number {
    return this.device.sizeBytes;
  }

  /** The transmission flags for a connection, which depend on what it negotiated. */
  transmissionFlags(structuredReplies: boolean): number {
    const capabilities = this.device.capabilities;
    let flags =
      wire.TRANSMISSION_HAS_FLAGS |
      wire.TRANSMISSION_SEND_FLUSH |
      wire.TRANSMISSION_SEND_FUA |
      wire.TRANSMISSION_SEND_CACHE;
    if (this.readOnly) {
      flags |= wire.TRANSMISSION_READ_ONLY;
    } else {
      flags |=
        wire.TRANSMISSION_SEND_TRIM |
        wire.TRANSMISSION_SEND_WRITE_ZEROES |
        wire.TRANSMISSION_SEND_FAST_ZERO;
    }
    // Every read is answered in one chunk, so "don't fragment" always holds.
    if (structuredReplies) flags |= wire.TRANSMISSION_SEND_DF;
    if (capabilities.consistentAcrossConnections) flags |= wire.TRANSMISSION_CAN_MULTI_CONN;
    return flags;
  }

  info(): NbdExportInfo {
    return {
      name: this.name,
      description: this.description,
      sizeBytes: this.sizeBytes,
      readOnly: this.readOnly,
      connectionCount: this.connectionCount,
      deviceDescription: this.device.description,
    };
  }
}
