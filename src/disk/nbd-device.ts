/**
 * A BlockDevice on a remote NBD export: a PV may live behind NBD the way a LUN lives behind
 * iSCSI. Built on the project's own NBD client (src/nbd/client.ts), which shares its wire code
 * with the server; docs/adr/0001-nbd-wire-code-below-disk.md says why the disk layer may use it.
 *
 * Requests larger than the server's maximum block size are split; errors from the server come
 * back as the disk layer's typed errors, and a lost connection is DISK_GONE.
 */
import { TandemError, isTandemError } from '../errors.js';
import { NbdClient, type NbdClientOptions } from '../nbd/client.js';
import * as wire from '../nbd/wire.js';
import type {
  BlockDevice,
  BlockDeviceCapabilities,
  BlockStatusExtent,
  DiscardOptions,
  WriteOptions,
  WriteZeroesOptions,
} from './block-device.js';
import { checkDataRange, checkRange, checkStatusRange, closedError, goneError } from './checks.js';

export interface NbdDeviceOptions extends NbdClientOptions {
  readonly readOnly?: boolean;
}

/** Parses `nbd://host[:port]/export` (the URI form of the NBD project's URI spec). */
export function parseNbdUri(uri: string): { host: string; port: number; exportName: string } {
  let parsed: URL;
  try {
    parsed = new URL(uri);
  } catch (error) {
    throw new TandemError('DISK_INVALID_ARGUMENT', `not a valid NBD URI: '${uri}'`, {
      cause: error,
    });
  }
  if (parsed.protocol !== 'nbd:') {
    throw new TandemError('DISK_INVALID_ARGUMENT', `NBD URI must start with nbd://, got '${uri}'`);
  }
  const port = parsed.port === '' ? 10809 : Number(parsed.port);
  const host = parsed.hostname.replace(/^\[|\]$/g, '');
  if (host === '') throw new TandemError('DISK_INVALID_ARGUMENT', `NBD URI has no host: '${uri}'`);
  return { host, port, exportName: decodeURIComponent(parsed.pathname.replace(/^\//, '')) };
}

export async function openNbdDevice(options: NbdDeviceOptions): Promise<NbdDevice> {
  let client: NbdClient;
  try {
    client = await NbdClient.connect(options);
  } catch (error) {
    throw new TandemError(
      isTandemError(error, 'NBD_EXPORT_NOT_FOUND') ? 'DISK_INVALID_ARGUMENT' : 'DISK_GONE',
      `cannot open nbd://${options.host}:${options.port}/${options.exportName}: ${(error as Error).message}`,
      { cause: error },
    );
  }
  return new NbdDevice(client, options);
}

export class NbdDevice implements BlockDevice {
  readonly description: string;
  readonly sizeBytes: number;
  readonly alignmentBytes: number;
  readonly logicalSectorSizeBytes: number;
  readonly physicalSectorSizeBytes: number;
  readonly maximumIoBytes: number;
  readonly readOnly: boolean;
  readonly capabilities: BlockDeviceCapabilities;
  private closed = false;

  constructor(
    private readonly client: NbdClient,
    options: NbdDeviceOptions,
  ) {
    this.description = `nbd://${options.host}:${options.port}/${options.exportName}`;
    this.sizeBytes = client.sizeBytes;
    const sizes = client.blockSizes;
    this.alignmentBytes = Math.max(1, sizes.minimumBytes);
    this.logicalSectorSizeBytes = Math.max(512, sizes.minimumBytes);
    this.physicalSectorSizeBytes = Math.max(this.logicalSectorSizeBytes, sizes.preferredBytes);
    this.maximumIoBytes = sizes.maximumBytes;
    this.readOnly = options.readOnly === true || client.hasFlag(wire.TRANSMISSION_READ_ONLY);
    this.capabilities = {
      flush: client.hasFlag(wire.TRANSMISSION_SEND_FLUSH),
      fua:
        client.hasFlag(wire.TRANSMISSION_SEND_FUA) || client.hasFlag(wire.TRANSMISSION_SEND_FLUSH),
      discard: client.hasFlag(wire.TRANSMISSION_SEND_TRIM),
      fastZero: client.hasFlag(wire.TRANSMISSION_SEND_FAST_ZERO),
      blockStatus: client.baseAllocationContextId !== undefined,
      consistentAcrossConnections: client.hasFlag(wire.TRANSMISSION_CAN_MULTI_CONN),
    };
  }

  async read(buffer: Buffer, offsetBytes: number): Promise<void> {
    this.checkOpen();
    checkDataRange(this, offsetBytes, buffer.length, false);
    await this.split(offsetBytes, buffer.length, (at, length) =>
      this.client.read(buffer.subarray(at - offsetBytes, at - offsetBytes + length), at),
    );
  }

  async write(buffer: Buffer, offsetBytes: number, options: WriteOptions = {}): Promise<void> {
    this.checkOpen();
    checkDataRange(this, offsetBytes, buffer.length, true);
    const nativeFua = this.client.hasFlag(wire.TRANSMISSION_SEND_FUA);
    await this.split(offsetBytes, buffer.length, (at, length) =>
      this.client.write(buffer.subarray(at - offsetBytes, at - offsetBytes + length), at, {
        fua: options.fua === true && nativeFua,
      }),
    );
    if (options.fua === true && !nativeFua) await this.flush();
  }

  async flush(): Promise<void> {
    this.checkOpen();
    if (!this.capabilities.flush) return;
    await this.translate(this.client.flush());
  }

  async discard(
    offsetBytes: number,
    lengthBytes: number,
    options: DiscardOptions = {},
  ): Promise<void> {
    this.checkOpen();
    checkRange(this, offsetBytes, lengthBytes, true);
    if (!this.capabilities.discard || lengthBytes === 0) return;
    await this.splitLarge(offsetBytes, lengthBytes, (at, length) =>
      this.client.trim(at, length, { fua: options.fua === true }),
    );
  }

  async writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options: WriteZeroesOptions = {},
  ): Promise<void> {
    this.checkOpen();
    checkRange(this, offsetBytes, lengthBytes, true);
    if (lengthBytes === 0) return;
    if (!this.client.hasFlag(wire.TRANSMISSION_SEND_WRITE_ZEROES)) {
      if (options.fastOnly === true) {
        throw new TandemError('DISK_NOT_SUPPORTED', `${this.description} cannot zero quickly`);
      }
      const zeroes = Buffer.alloc(Math.min(lengthBytes, 1024 * 1024));
      for (let at = offsetBytes; at < offsetBytes + lengthBytes; at += zeroes.length) {
        const length = Math.min(zeroes.length, offsetBytes + lengthBytes - at);
        await this.write(zeroes.subarray(0, length), at, { fua: options.fua === true });
      }
      return;
    }
    await this.splitLarge(offsetBytes, lengthBytes, (at, length) =>
      this.client.writeZeroes(at, length, {
        fua: options.fua === true,
        noHole: options.noHole === true,
        fastZero: options.fastOnly === true && this.capabilities.fastZero,
      }),
    );
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<BlockStatusExtent[]> {
    this.checkOpen();
    checkStatusRange(this, offsetBytes, lengthBytes);
    const asked = Math.min(lengthBytes, 0xffffffff - (0xffffffff % this.alignmentBytes));
    const extents = await this.translate(this.client.blockStatus(offsetBytes, asked));
    return extents.map((extent) => ({
      lengthBytes: extent.lengthBytes,
      hole: (extent.flags & wire.STATE_HOLE) !== 0,
      zero: (extent.flags & wire.STATE_ZERO) !== 0,
    }));
  }

  async cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    this.checkOpen();
    checkRange(this, offsetBytes, lengthBytes, false);
    if (lengthBytes === 0 || !this.client.hasFlag(wire.TRANSMISSION_SEND_CACHE)) return;
    await this.splitLarge(offsetBytes, lengthBytes, (at, length) => this.client.cache(at, length));
  }

  async close(): Promise<void> {
    if (this.closed) return;
    this.closed = true;
    await this.client.close();
  }

  private checkOpen(): void {
    if (this.closed) throw closedError(this);
    if (!this.client.connected) throw goneError(this);
  }

  /** Runs one request per piece of at most maximumIoBytes, all in flight together. */
  private async split(
    offsetBytes: number,
    lengthBytes: number,
    run: (at: number, length: number) => Promise<void>,
  ): Promise<void> {
    const pieces: Array<Promise<void>> = [];
    for (let at = offsetBytes; at < offsetBytes + lengthBytes; at += this.maximumIoBytes) {
      pieces.push(
        this.translate(run(at, Math.min(this.maximumIoBytes, offsetBytes + lengthBytes - at))),
      );
    }
    await Promise.all(pieces);
  }

  /** Commands without payload may be large, but their length field is 32 bits. */
  private async splitLarge(
    offsetBytes: number,
    lengthBytes: number,
    run: (at: number, length: number) => Promise<void>,
  ): Promise<void> {
    const pieceBytes = 0x80000000;
    for (let at = offsetBytes; at < offsetBytes + lengthBytes; at += pieceBytes) {
      await this.translate(run(at, Math.min(pieceBytes, offsetBytes + lengthBytes - at)));
    }
  }

  private async translate<T>(operation: Promise<T>): Promise<T> {
    try {
      return await operation;
    } catch (error) {
      throw diskErrorFromNbd(this.description, error);
    }
  }
}

/** The one mapping from NBD client errors to the disk layer's codes. */
function diskErrorFromNbd(description: string, error: unknown): TandemError {
  if (!isTandemError(error))
    return new TandemError('DISK_IO', `${description}: ${String(error)}`, { cause: error });
  if (error.code !== 'NBD_SERVER_ERROR') {
    return new TandemError('DISK_GONE', `${description}: ${error.message}`, { cause: error });
  }
  const errno = error.details['errno'];
  const code =
    errno === wire.NBD_EPERM
      ? 'DISK_READ_ONLY'
      : errno === wire.NBD_ENOSPC
        ? 'DISK_NO_SPACE'
        : errno === wire.NBD_ENOTSUP
          ? 'DISK_NOT_SUPPORTED'
          : errno === wire.NBD_EINVAL || errno === wire.NBD_EOVERFLOW
            ? 'DISK_INVALID_ARGUMENT'
            : errno === wire.NBD_ESHUTDOWN
              ? 'DISK_GONE'
              : 'DISK_IO';
  return new TandemError(code, `${description}: ${error.message}`, {
    cause: error,
    details: error.details,
  });
}
