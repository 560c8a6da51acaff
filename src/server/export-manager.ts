/**
 * Owns the file exports of this daemon: opens each file through the disk layer, registers it
 * with the NBD server, and keeps `<data-dir>/exports.json` in step so a restarted daemon
 * serves the same exports again.
 *
 * Changes run one at a time (a promise chain), so the file on disk always matches some
 * sequence of completed requests. An export whose file cannot be opened at start is logged,
 * skipped and kept in exports.json as "unavailable" (a storage path that is briefly missing
 * must not lose its configuration); removing it by name drops it from the file.
 */
import fs from 'node:fs/promises';
import type { BlockDevice } from '../disk/block-device.js';
import { TandemError, systemErrorCode } from '../errors.js';
import type { Logger } from '../log.js';
import type { NbdExportInfo, NbdExportOptions } from '../nbd/server.js';
import { type StoredExport, readStoredExports, writeStoredExports } from './export-store.js';
import { validateExportName, validateFilePath } from './export-validation.js';

/** The part of NbdServer this manager drives; a narrow interface keeps it testable. */
export interface ExportRegistry {
  addExport(options: NbdExportOptions): void;
  removeExport(name: string): Promise<void>;
  listExports(): NbdExportInfo[];
}

export type OpenDevice = (filePath: string, options: { readOnly: boolean }) => Promise<BlockDevice>;

export interface ExportSummary {
  readonly name: string;
  readonly filePath: string;
  readonly sizeBytes: number;
  readonly readOnly: boolean;
  readonly connectionCount: number;
  readonly deviceDescription: string;
}

interface LiveExport {
  readonly stored: StoredExport;
  readonly device: BlockDevice;
}

export class ExportManager {
  private readonly live = new Map<string, LiveExport>();
  /** Persisted entries whose file could not be opened at start. */
  private readonly unavailable = new Map<string, StoredExport>();
  private queue: Promise<unknown> = Promise.resolve();

  constructor(
    private readonly options: {
      dataDir: string;
      registry: ExportRegistry;
      openDevice: OpenDevice;
      logger: Logger;
    },
  ) {}

  /** Serves every persisted export it can open; the rest are logged and skipped. */
  restore(): Promise<{ restoredCount: number; skippedCount: number }> {
    return this.serialize(async () => {
      const stored = await readStoredExports(this.options.dataDir);
      for (const entry of stored) {
        try {
          await this.open(entry);
          this.options.logger.info('export restored', { ...entry });
        } catch (error) {
          this.unavailable.set(entry.name, entry);
          this.options.logger.warn('export skipped: cannot serve it', { ...entry, error });
        }
      }
      return { restoredCount: this.live.size, skippedCount: this.unavailable.size };
    });
  }

  async add(request: StoredExport): Promise<ExportSummary> {
    const entry: StoredExport = {
      name: validateExportName(request.name),
      filePath: validateFilePath(request.filePath),
      readOnly: request.readOnly,
    };
    return this.serialize(async () => {
      if (this.live.has(entry.name)) {
        throw new TandemError('ALREADY_EXISTS', `export '${entry.name}' already exists`, {
          details: { name: entry.name },
        });
      }
      await this.open(entry);
      try {
        await this.persist();
      } catch (error) {
        await this.close(entry.name);
        throw error;
      }
      // A new export under the name of an unavailable one replaces it.
      this.unavailable.delete(entry.name);
      this.options.logger.info('export added', { ...entry });
      return this.summaryOf(entry.name);
    });
  }

  async remove(name: string): Promise<void> {
    validateExportName(name);
    return this.serialize(async () => {
      if (this.live.has(name)) {
        await this.close(name);
      } else if (!this.unavailable.delete(name)) {
        throw new TandemError('NOT_FOUND', `export '${name}' does not exist`, {
          details: { name },
        });
      }
      await this.persist();
      this.options.logger.info('export removed', { name });
    });
  }

  list(): ExportSummary[] {
    return [...this.live.keys()].sort().map((name) => this.summaryOf(name));
  }

  /**
   * Closes every device. Call after the NBD server closed its connections; the exports stay
   * in exports.json for the next start.
   */
  closeDevices(): Promise<void> {
    return this.serialize(async () => {
      const exports = [...this.live.values()];
      this.live.clear();
      for (const { stored, device } of exports) {
        try {
          await device.close();
        } catch (error) {
          this.options.logger.warn('closing a device failed', { name: stored.name, error });
        }
      }
    });
  }

  private async open(entry: StoredExport): Promise<void> {
    await checkFile(entry.filePath);
    const device = await this.options.openDevice(entry.filePath, { readOnly: entry.readOnly });
    try {
      this.options.registry.addExport({
        name: entry.name,
        device,
        readOnly: entry.readOnly,
        description: entry.filePath,
      });
    } catch (error) {
      await device.close();
      throw error;
    }
    this.live.set(entry.name, { stored: entry, device });
  }

  private async close(name: string): Promise<void> {
    const entry = this.live.get(name);
    if (entry === undefined) return;
    this.live.delete(name);
    // The NBD server drops the connections first, so no request races the close.
    await this.options.registry.removeExport(name);
    await entry.device.close();
  }

  private persist(): Promise<void> {
    const entries = [...this.live.values()].map(({ stored }) => stored);
    return writeStoredExports(this.options.dataDir, [...entries, ...this.unavailable.values()]);
  }

  private summaryOf(name: string): ExportSummary {
    const entry = this.live.get(name);
    if (entry === undefined) {
      throw new TandemError('NOT_FOUND', `export '${name}' does not exist`);
    }
    const info = this.options.registry.listExports().find((item) => item.name === name);
    return {
      name,
      filePath: entry.stored.filePath,
      sizeBytes: info?.sizeBytes ?? entry.device.sizeBytes,
      readOnly: info?.readOnly ?? entry.stored.readOnly,
      connectionCount: info?.connectionCount ?? 0,
      deviceDescription: info?.deviceDescription ?? entry.device.description,
    };
  }

  private serialize<T>(work: () => Promise<T>): Promise<T> {
    const result = this.queue.then(work);
    // The chain must survive a failed step; the caller still sees the failure.
    this.queue = result.catch(() => undefined);
    return result;
  }
}

/** Turns the common ways a path can be wrong into clear, typed errors before the disk layer. */
async function checkFile(filePath: string): Promise<void> {
  let stats;
  try {
    stats = await fs.stat(filePath);
  } catch (error) {
    const code = systemErrorCode(error);
    if (code === 'ENOENT' || code === 'ENOTDIR') {
      throw new TandemError('NOT_FOUND', `file not found: ${filePath}`, { cause: error });
    }
    if (code === 'EACCES' || code === 'EPERM') {
      throw new TandemError('FAILED_PRECONDITION', `permission denied: ${filePath}`, {
        cause: error,
      });
    }
    throw new TandemError('DISK_IO', `cannot stat ${filePath}: ${String(error)}`, { cause: error });
  }
  if (!stats.isFile() && !stats.isBlockDevice()) {
    throw new TandemError('INVALID_ARGUMENT', `${filePath} is not a regular file or block device`);
  }
}
