/**
 * The NBD server: a TCP listener, the export registry, and the live connections.
 *
 * Exports are added and removed at run time (the volume layer activates and deactivates LVs).
 * Removing an export stops new clients from selecting it, lets each of its connections finish
 * the requests it is running, answers later ones with ESHUTDOWN and closes them; it resolves
 * when all of them are gone, so the caller may then close the device.
 */
import net from 'node:net';
import { loadDiskNative } from '../disk/native.js';
import { TandemError } from '../errors.js';
import type { Logger } from '../log.js';
import { NbdConnection } from './connection.js';
import { resolveNbdLimits, type NbdLimits } from './limits.js';
import {
  defaultTransmissionThreadPolicy,
  type TransmissionThreadPolicy,
} from './transmission-thread.js';
import { NbdExport, type NbdExportInfo, type NbdExportOptions } from './nbd-export.js';
import type { ExportLookup } from './negotiation.js';
import { ReplyBufferPool } from './reply-buffers.js';

export type { NbdExportInfo, NbdExportOptions } from './nbd-export.js';
export type { NbdLimits } from './limits.js';

export interface NbdServerOptions {
  readonly logger: Logger;
  readonly limits?: Partial<NbdLimits>;
  /**
   * Let a native thread serve the READs and WRITEs of plain file exports and carry every reply
   * (transmission-thread.ts), taking over and handing back as the policy says. Default: true,
   * with defaultTransmissionThreadPolicy; false keeps every byte in JavaScript.
   */
  readonly transmissionThread?: boolean | TransmissionThreadPolicy;
}

export interface ListenAddress {
  readonly host: string;
  readonly port: number;
}

export class NbdServer {
  private readonly logger: Logger;
  private readonly limits: NbdLimits;
  private readonly exports = new Map<string, NbdExport>();
  private readonly connections = new Set<NbdConnection>();
  private readonly connectionsByExport = new Map<NbdExport, Set<NbdConnection>>();
  private readonly exportDrained = new Map<NbdExport, () => void>();
  private listener: net.Server | undefined;
  private nextConnectionId = 1;
  /** READ reply buffers, shared by all connections. */
  private readonly replyBuffers: ReplyBufferPool;
  private closing = false;
  private readonly transmissionThread: TransmissionThreadPolicy | undefined;

  private readonly lookup: ExportLookup = {
    find: (name) => {
      const found = this.exports.get(name);
      return found === undefined || found.removing || this.closing ? undefined : found;
    },
    all: () => [...this.exports.values()].filter((found) => !found.removing),
  };

  constructor(options: NbdServerOptions) {
    this.logger = options.logger;
    this.limits = resolveNbdLimits(options.limits);
    const transmissionThread = options.transmissionThread ?? true;
    this.transmissionThread =
      transmissionThread === true
        ? defaultTransmissionThreadPolicy
        : transmissionThread === false
          ? undefined
          : transmissionThread;
    this.replyBuffers = new ReplyBufferPool(this.limits.maximumPooledReplyBytes);
    // Write payloads arrive in fresh 64 KiB socket buffers freed soon after: keep their pages.
    loadDiskNative().retainFreedHeap(this.limits.retainedFreedHeapBytes);
  }

  get connectionCount(): number {
    return this.connections.size;
  }

  addExport(options: NbdExportOptions): void {
    if (this.exports.has(options.name)) {
      throw new TandemError('NBD_EXPORT_EXISTS', `export '${options.name}' already exists`, {
        details: { name: options.name },
      });
    }
    const created = new NbdExport(options, this.limits);
    this.exports.set(created.name, created);
    this.connectionsByExport.set(created, new Set());
    this.logger.info('export added', {
      export: created.name,
      sizeBytes: created.sizeBytes,
      readOnly: created.readOnly,
      device: created.device.description,
    });
  }

  /** Removes an export after its connections are closed; does not close its device. */
  async removeExport(name: string): Promise<void> {
    const found = this.exports.get(name);
    if (found === undefined || found.removing) {
      throw new TandemError('NBD_EXPORT_NOT_FOUND', `no export named '${name}'`, {
        details: { name },
      });
    }
    found.removing = true;
    const attached = this.connectionsByExport.get(found) ?? new Set<NbdConnection>();
    if (attached.size > 0) {
      const drained = new Promise<void>((resolve) => this.exportDrained.set(found, resolve));
      for (const connection of attached) connection.shutdown(`export '${name}' removed`);
      await drained;
    }
    this.exports.delete(name);
    this.connectionsByExport.delete(found);
    this.logger.info('export removed', { export: name });
  }

  getExport(name: string): NbdExportInfo | undefined {
    const found = this.exports.get(name);
    return found === undefined || found.removing ? undefined : found.info();
  }

  listExports(): NbdExportInfo[] {
    return this.lookup.all().map((found) => found.info());
  }

  listen(address: ListenAddress): Promise<ListenAddress> {
    if (this.listener !== undefined) {
      return Promise.reject(
        new TandemError('FAILED_PRECONDITION', 'NBD server is already listening'),
      );
    }
    const listener = net.createServer({ noDelay: true }, (socket) => this.accept(socket));
    listener.maxConnections = this.limits.maximumConnections;
    this.listener = listener;
    return new Promise((resolve, reject) => {
      const onError = (error: Error): void => {
        this.listener = undefined;
        reject(
          new TandemError(
            'NBD_SERVER_ERROR',
            `cannot listen for NBD on ${address.host}:${address.port}: ${error.message}`,
            {
              cause: error,
            },
          ),
        );
      };
      listener.once('error', onError);
      listener.listen(address.port, address.host, () => {
        listener.off('error', onError);
        listener.on('error', (error) => this.logger.error('NBD listener error', { error }));
        const bound = listener.address();
        if (bound === null || typeof bound === 'string') {
          reject(new TandemError('NBD_SERVER_ERROR', 'NBD listener has no TCP address'));
          return;
        }
        this.logger.info('NBD server listening', { host: bound.address, port: bound.port });
        resolve({ host: bound.address, port: bound.port });
      });
    });
  }

  /**
   * Stops listening and closes every connection (in-flight requests are answered first, within
   * the drain timeout). Devices stay open: their owner closes them.
   */
  async close(): Promise<void> {
    this.closing = true;
    const listener = this.listener;
    this.listener = undefined;
    const listenerClosed =
      listener === undefined
        ? Promise.resolve()
        : new Promise<void>((resolve) => listener.close(() => resolve()));
    const allClosed = [...this.connections].map(
      (connection) =>
        new Promise<void>((resolve) => {
          this.onConnectionClosed.set(connection, resolve);
          connection.shutdown('server stopping');
        }),
    );
    await Promise.all([listenerClosed, ...allClosed]);
  }

  private readonly onConnectionClosed = new Map<NbdConnection, () => void>();

  private accept(socket: net.Socket): void {
    if (this.closing) {
      socket.destroy();
      return;
    }
    const id = this.nextConnectionId++;
    const logger = this.logger.child({
      connection: id,
      peer: `${socket.remoteAddress}:${socket.remotePort}`,
    });
    logger.info('client connected');
    const connection = new NbdConnection(
      socket,
      this.lookup,
      this.limits,
      {
        attached: (attachedConnection, target) => {
          target.connectionCount += 1;
          this.connectionsByExport.get(target)?.add(attachedConnection);
        },
        closed: (closedConnection) => this.forget(closedConnection, logger),
      },
      logger,
      this.replyBuffers,
      this.transmissionThread,
    );
    this.connections.add(connection);
  }

  private forget(connection: NbdConnection, logger: Logger): void {
    this.connections.delete(connection);
    logger.info('client disconnected');
    for (const [target, attached] of this.connectionsByExport) {
      if (!attached.delete(connection)) continue;
      target.connectionCount -= 1;
      if (attached.size === 0) {
        const drained = this.exportDrained.get(target);
        this.exportDrained.delete(target);
        drained?.();
      }
    }
    const closed = this.onConnectionClosed.get(connection);
    this.onConnectionClosed.delete(connection);
    closed?.();
  }
}
