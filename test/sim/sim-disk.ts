/**
 * A simulated SHARED disk for the lease simulation: one backing MemoryDevice (the platters) that
 * every host reaches through its own view (`viewFor(host)`), like a LUN every host of a SAN sees.
 *
 * Each request of a view completes after a latency drawn from the seeded Random, in virtual time.
 * A write lands on the platters at a random moment between its issue and its completion (a real
 * disk may have it on the media before or just as it acknowledges); a read copies the platters at
 * its completion. A completed write is durable: there is no volatile cache (FaultInjectingDevice
 * models that for the layers that flush). MemoryDevice does its work synchronously inside the
 * call, so a landing happens exactly at its virtual moment.
 *
 * Per-host faults a scenario switches on and off:
 * - stall: nothing completes until `unstall()`, then everything held completes; a write due to
 *   land meanwhile lands either on time or only at the release (as a request stuck in a queue);
 * - fail: requests fail with DISK_IO and writes do not land;
 * - lost writes: the write fails with DISK_IO but may or may not have landed;
 * - torn writes: a multi-sector write lands only a prefix of its 512-byte sectors, then the host
 *   crashes (its view dies: `onTornCrash` lets the cluster crash the rest of the host);
 * - crash: every write in flight lands whole, not at all or torn, then the view is dead and every
 *   request fails with DISK_GONE.
 * Every landed write is recorded (host, incarnation, issued, landed, range, data) for checkers.
 */
import type { Random } from '../../src/clock.js';
import type {
  BlockDevice,
  BlockDeviceCapabilities,
  BlockStatusExtent,
  WriteOptions,
} from '../../src/disk/block-device.js';
import { checkDataRange, checkRange, closedError, goneError } from '../../src/disk/checks.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { TandemError, assert } from '../../src/errors.js';
import type { VirtualScheduler } from './virtual-time.js';

/** Torn writes tear at this unit, whatever the logical sector size (a 4 KiB-sector disk's
 * sectors are atomic: a tear then never splits one). */
export const tearUnitBytes = 512;

export interface LatencyModel {
  readonly minMs: number;
  readonly maxMs: number;
  /** Chance that one request is slow: its latency is then drawn up to `slowMaxMs`. */
  readonly slowChance: number;
  readonly slowMaxMs: number;
}

export interface SimDiskOptions {
  readonly name: string;
  readonly sizeBytes: number;
  readonly logicalSectorSizeBytes: 512 | 4096;
  readonly scheduler: VirtualScheduler;
  readonly random: Random;
  readonly latency: LatencyModel;
}

export type LandHow = 'ok' | 'lost' | 'torn' | 'crash' | 'released';

/** A write (or zeroing) as it reached the platters. */
export interface LandedWrite {
  readonly disk: string;
  readonly host: number;
  readonly incarnation: number;
  readonly issuedMs: number;
  readonly landedMs: number;
  readonly offsetBytes: number;
  /** The bytes that landed (a torn write: a prefix of the request). */
  readonly lengthBytes: number;
  readonly requestedBytes: number;
  readonly how: LandHow;
  readonly data: Buffer;
}

/** A write as its host issued it (before it lands, if it ever does). */
export interface IssuedWrite {
  readonly disk: string;
  readonly host: number;
  readonly incarnation: number;
  readonly issuedMs: number;
  readonly offsetBytes: number;
  readonly data: Buffer;
}

export interface ViewFaults {
  stalled: boolean;
  failChance: number;
  lostWriteChance: number;
  tornWriteChance: number;
  /** Added to every latency (a slow path). */
  extraLatencyMs: number;
  /** Limits lost and torn writes to the writes it accepts (all writes when undefined). */
  writeMatch: ((offsetBytes: number, lengthBytes: number) => boolean) | undefined;
  /** Chance that a lost write still lands (0.5 by default). */
  lostWriteLandChance: number;
}

type OperationKind = 'read' | 'write' | 'flush' | 'other';
type Outcome = 'ok' | 'fail' | 'lost' | 'torn';

interface Operation {
  readonly kind: OperationKind;
  readonly issuedMs: number;
  readonly offsetBytes: number;
  readonly data: Buffer | undefined;
  readonly readBuffer: Buffer | undefined;
  readonly outcome: Outcome;
  /** A write that will not land (failed, or a lost write that missed) starts out landed. */
  landed: boolean;
  cancels: (() => void)[];
  readonly finish: (error: Error | undefined) => void;
}

export class SimDisk {
  readonly platters: MemoryDevice;
  /** Every landed write, when `recordLanded` is set (tests that inspect them); counted always. */
  readonly landed: LandedWrite[] = [];
  recordLanded = false;
  landedCount = 0;
  /** Called for every write a view accepts, at its issue (before any fault decides its fate). */
  readonly issueListeners: ((write: IssuedWrite) => void)[] = [];
  /** Called for every landed write (checkers, and the write trace of a replay). */
  readonly landListeners: ((write: LandedWrite) => void)[] = [];

  constructor(readonly options: SimDiskOptions) {
    this.platters = new MemoryDevice({
      sizeBytes: options.sizeBytes,
      logicalSectorSizeBytes: options.logicalSectorSizeBytes,
      alignmentBytes: options.logicalSectorSizeBytes,
      description: `sim:${options.name}`,
    });
  }

  get name(): string {
    return this.options.name;
  }

  /** A new view for one incarnation of `host` (a restarted host gets a fresh one). */
  viewFor(host: number, incarnation: number): SimDiskView {
    return new SimDiskView(this, host, incarnation);
  }

  /** Draws a latency from the disk's model. */
  drawLatencyMs(extraMs: number): number {
    const { minMs, maxMs, slowChance, slowMaxMs } = this.options.latency;
    const random = this.options.random;
    const slow = random.next() < slowChance;
    const top = slow ? slowMaxMs : maxMs;
    return minMs + random.next() * (top - minMs) + extraMs;
  }

  chance(probability: number): boolean {
    return probability > 0 && this.options.random.next() < probability;
  }

  uniform(): number {
    return this.options.random.next();
  }

  /** Puts bytes on the platters now and records them. */
  land(
    view: SimDiskView,
    issuedMs: number,
    offsetBytes: number,
    data: Buffer,
    how: LandHow,
    requestedBytes: number,
  ): void {
    if (data.length === 0) return;
    void this.platters.write(data, offsetBytes).catch((error: unknown) => {
      throw new Error(`sim disk: platter write failed: ${String(error)}`);
    });
    const record: LandedWrite = {
      disk: this.name,
      host: view.host,
      incarnation: view.incarnation,
      issuedMs,
      landedMs: this.options.scheduler.nowMs,
      offsetBytes,
      lengthBytes: data.length,
      requestedBytes,
      how,
      data,
    };
    this.landedCount += 1;
    if (this.recordLanded) this.landed.push(record);
    for (const listener of this.landListeners) listener(record);
  }
}

const capabilities: BlockDeviceCapabilities = {
  flush: true,
  fua: true,
  discard: true,
  fastZero: true,
  blockStatus: false,
  consistentAcrossConnections: true,
};

export class SimDiskView implements BlockDevice {
  readonly description: string;
  readonly sizeBytes: number;
  readonly alignmentBytes: number;
  readonly logicalSectorSizeBytes: number;
  readonly physicalSectorSizeBytes: number;
  readonly maximumIoBytes = 1024 * 1024;
  readonly readOnly = false;
  readonly capabilities = capabilities;
  readonly faults: ViewFaults = {
    stalled: false,
    failChance: 0,
    lostWriteChance: 0,
    tornWriteChance: 0,
    extraLatencyMs: 0,
    writeMatch: undefined,
    lostWriteLandChance: 0.5,
  };
  /** Called once when a torn write crashed this view (the host must crash as a whole). */
  onTornCrash: (() => void) | undefined;
  private readonly inFlight = new Set<Operation>();
  /** Requests whose completion (or landing) came due while stalled. */
  private held: Operation[] = [];
  private dead = false;
  private closed = false;

  constructor(
    readonly disk: SimDisk,
    readonly host: number,
    readonly incarnation: number,
  ) {
    const sector = disk.options.logicalSectorSizeBytes;
    this.description = `sim:${disk.name}#h${host}.${incarnation}`;
    this.sizeBytes = disk.options.sizeBytes;
    this.alignmentBytes = sector;
    this.logicalSectorSizeBytes = sector;
    this.physicalSectorSizeBytes = sector;
  }

  get isDead(): boolean {
    return this.dead;
  }

  get inFlightCount(): number {
    return this.inFlight.size;
  }

  read(buffer: Buffer, offsetBytes: number): Promise<void> {
    return this.submit(
      'read',
      offsetBytes,
      () => checkDataRange(this, offsetBytes, buffer.length, false),
      {
        readBuffer: buffer,
      },
    );
  }

  write(buffer: Buffer, offsetBytes: number, _options?: WriteOptions): Promise<void> {
    return this.submit(
      'write',
      offsetBytes,
      () => checkDataRange(this, offsetBytes, buffer.length, true),
      {
        data: Buffer.from(buffer),
      },
    );
  }

  writeZeroes(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.submit(
      'write',
      offsetBytes,
      () => checkRange(this, offsetBytes, lengthBytes, true),
      {
        data: Buffer.alloc(lengthBytes),
      },
    );
  }

  discard(offsetBytes: number, lengthBytes: number): Promise<void> {
    // Reads of a discarded range may return anything; zeroes are one such answer.
    return this.writeZeroes(offsetBytes, lengthBytes);
  }

  flush(): Promise<void> {
    return this.submit('flush', 0, () => undefined, {});
  }

  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.submit(
      'other',
      offsetBytes,
      () => checkRange(this, offsetBytes, lengthBytes, false),
      {},
    );
  }

  async blockStatus(offsetBytes: number, lengthBytes: number): Promise<BlockStatusExtent[]> {
    await this.submit(
      'other',
      offsetBytes,
      () => checkRange(this, offsetBytes, lengthBytes, false),
      {},
    );
    return [{ lengthBytes, hole: false, zero: false }];
  }

  async close(): Promise<void> {
    this.closed = true;
  }

  /** Holds every completion until `unstall`. */
  stall(): void {
    this.faults.stalled = true;
  }

  /** Lets everything held complete, each after a fresh latency. */
  unstall(): void {
    this.faults.stalled = false;
    const held = this.held;
    this.held = [];
    for (const operation of held) {
      if (!this.inFlight.has(operation)) continue;
      this.schedule(operation, this.disk.drawLatencyMs(0), 'released');
    }
  }

  /**
   * Power loss of this host: each write in flight lands whole, not at all, or torn (a random
   * prefix of sectors); then every request fails with DISK_GONE, now and later.
   */
  crash(): void {
    if (this.dead) return;
    this.dead = true;
    const operations = [...this.inFlight];
    this.inFlight.clear();
    this.held = [];
    for (const operation of operations) {
      for (const cancel of operation.cancels) cancel();
      if (!operation.landed && operation.data !== undefined) {
        const choice = this.disk.uniform();
        if (choice < 1 / 3) this.landNow(operation, operation.data, 'crash');
        else if (choice < 2 / 3) this.landNow(operation, this.tornPrefix(operation.data), 'crash');
      }
      operation.finish(goneError(this));
    }
  }

  private submit(
    kind: OperationKind,
    offsetBytes: number,
    validate: () => void,
    io: { data?: Buffer; readBuffer?: Buffer },
  ): Promise<void> {
    return new Promise<void>((resolve, reject) => {
      if (this.closed) throw closedError(this);
      if (this.dead) throw goneError(this);
      validate();
      const operation = this.createOperation(kind, offsetBytes, io, (error) => {
        if (error === undefined) resolve();
        else reject(error);
      });
      this.inFlight.add(operation);
      if (operation.data !== undefined) {
        const issued: IssuedWrite = {
          disk: this.disk.name,
          host: this.host,
          incarnation: this.incarnation,
          issuedMs: operation.issuedMs,
          offsetBytes,
          data: operation.data,
        };
        for (const listener of this.disk.issueListeners) listener(issued);
      }
      this.schedule(operation, this.disk.drawLatencyMs(this.faults.extraLatencyMs), 'ok');
    });
  }

  private createOperation(
    kind: OperationKind,
    offsetBytes: number,
    io: { data?: Buffer; readBuffer?: Buffer },
    finish: (error: Error | undefined) => void,
  ): Operation {
    let outcome: Outcome = 'ok';
    const data = io.data;
    const matched =
      data !== undefined && (this.faults.writeMatch?.(offsetBytes, data.length) ?? true);
    const tearUnit = Math.max(tearUnitBytes, this.logicalSectorSizeBytes);
    if (this.disk.chance(this.faults.failChance)) outcome = 'fail';
    else if (matched && this.disk.chance(this.faults.lostWriteChance)) outcome = 'lost';
    else if (
      matched &&
      data !== undefined &&
      data.length > tearUnit &&
      this.disk.chance(this.faults.tornWriteChance)
    )
      outcome = 'torn';
    // A failed write never lands; a lost one lands or not, by a coin decided now. Either starts
    // out as "landed" (nothing left to land).
    const landed =
      data === undefined ||
      outcome === 'fail' ||
      (outcome === 'lost' && !this.disk.chance(this.faults.lostWriteLandChance));
    return {
      kind,
      issuedMs: this.disk.options.scheduler.nowMs,
      offsetBytes,
      data: io.data,
      readBuffer: io.readBuffer,
      outcome,
      landed,
      cancels: [],
      finish,
    };
  }

  /** Schedules the landing (a random moment within the latency) and the completion. */
  private schedule(operation: Operation, latencyMs: number, how: LandHow): void {
    const scheduler = this.disk.options.scheduler;
    operation.cancels = [];
    if (!operation.landed) {
      const landInMs = this.disk.uniform() * latencyMs;
      operation.cancels.push(scheduler.after(landInMs, () => this.onLandDue(operation, how)));
    }
    operation.cancels.push(scheduler.after(latencyMs, () => this.onCompletionDue(operation)));
  }

  private onLandDue(operation: Operation, how: LandHow): void {
    if (operation.landed || !this.inFlight.has(operation)) return;
    // A stalled path may still have put this write on the media, or may hold it until release.
    if (this.faults.stalled && how !== 'released' && this.disk.chance(0.5)) return;
    const data = operation.data;
    assert(data !== undefined, 'only writes land');
    if (operation.outcome === 'torn') {
      this.landNow(operation, this.tornPrefix(data), 'torn');
      this.crash();
      this.onTornCrash?.();
      return;
    }
    this.landNow(operation, data, operation.outcome === 'lost' ? 'lost' : how);
  }

  private onCompletionDue(operation: Operation): void {
    if (!this.inFlight.has(operation)) return;
    if (this.faults.stalled) {
      this.held.push(operation);
      return;
    }
    if (!operation.landed) {
      // Its landing was held by a stall that has ended: it lands now, at the latest.
      this.onLandDue(operation, 'released');
      if (!this.inFlight.has(operation)) return;
    }
    this.inFlight.delete(operation);
    if (operation.outcome === 'fail' || operation.outcome === 'lost') {
      operation.finish(
        new TandemError('DISK_IO', `simulated ${operation.kind} failure on ${this.description}`, {
          details: { errno: 'EIO', offsetBytes: operation.offsetBytes, injected: true },
        }),
      );
      return;
    }
    if (operation.readBuffer !== undefined) {
      void this.disk.platters.read(operation.readBuffer, operation.offsetBytes);
    }
    operation.finish(undefined);
  }

  private landNow(operation: Operation, data: Buffer, how: LandHow): void {
    operation.landed = true;
    const requestedBytes = operation.data?.length ?? data.length;
    this.disk.land(this, operation.issuedMs, operation.offsetBytes, data, how, requestedBytes);
  }

  /** A random prefix of whole tear units, shorter than the write (possibly empty). */
  private tornPrefix(data: Buffer): Buffer {
    const unitCount = Math.ceil(data.length / Math.max(tearUnitBytes, this.logicalSectorSizeBytes));
    const keepUnits = Math.floor(this.disk.uniform() * unitCount);
    return data.subarray(0, keepUnits * Math.max(tearUnitBytes, this.logicalSectorSizeBytes));
  }
}
