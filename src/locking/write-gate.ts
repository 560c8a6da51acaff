/**
 * The write gate of a lockspace (docs/leases.md, "Self-fencing and the write gate").
 *
 * Everything a lockspace protects is written through it. While open it counts in-flight mutating
 * requests; `close` makes every later write, discard, write-zeroes and flush fail with FENCED at
 * once (before the request reaches the device), then waits up to `fenceDrainMs` for in-flight
 * ones. The gate never reopens: a fenced host must join again, with a new gate, to write again.
 * Reads pass untouched: reading stale data harms nobody else.
 */
import type {
  BlockDevice,
  BlockDeviceCapabilities,
  BlockStatusExtent,
  DiscardOptions,
  WriteOptions,
  WriteZeroesOptions,
} from '../disk/block-device.js';
import type { Clock } from '../clock.js';
import { TandemError, assert } from '../errors.js';
import type { Logger } from '../log.js';

export interface GateCloseResult {
  /** Every in-flight write completed within the drain time. */
  readonly drained: boolean;
  /** Writes still in flight when the drain time ran out. */
  readonly stuckWrites: number;
}

export interface WriteGateDeps {
  readonly clock: Clock;
  readonly fenceDrainMs: number;
  readonly logger: Logger;
  /**
   * Asked synchronously before every write: is this host's lease certainly still held now?
   * A process that was stopped (SIGSTOP, a long pause) may find writes queued in its sockets
   * when it wakes and handle them before its fence timer runs; this check refuses them.
   */
  readonly writesAllowed?: () => boolean;
}

export class WriteGate {
  private closedReason: string | undefined;
  private inFlightCount = 0;
  private closing: Promise<GateCloseResult> | undefined;
  private drainedWaiters: (() => void)[] = [];
  private readonly listeners = new Set<(reason: string) => void>();

  constructor(private readonly deps: WriteGateDeps) {
    assert(deps.fenceDrainMs >= 0, 'fenceDrainMs must not be negative');
  }

  get isOpen(): boolean {
    return this.closedReason === undefined;
  }

  /** Mutating requests issued through the gate and not completed yet. */
  get inFlight(): number {
    return this.inFlightCount;
  }

  /**
   * Runs one mutating request. The check and the call happen synchronously, so no request can
   * start after `close` has returned control to its caller.
   */
  async run<T>(operation: () => Promise<T>): Promise<T> {
    if (this.closedReason === undefined && this.deps.writesAllowed?.() === false) {
      void this.close('the lease was no longer certainly held when a write came');
    }
    if (this.closedReason !== undefined) {
      throw new TandemError(
        'FENCED',
        `write refused: the write gate is closed (${this.closedReason})`,
      );
    }
    this.inFlightCount += 1;
    try {
      return await operation();
    } finally {
      this.inFlightCount -= 1;
      assert(this.inFlightCount >= 0, 'write gate in-flight count below zero');
      if (this.inFlightCount === 0) this.wakeDrainedWaiters();
    }
  }

  /** Calls `listener` once, with the reason, when the gate closes; returns an unsubscribe. */
  onClose(listener: (reason: string) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }

  /** Closes the gate (idempotent: later calls return the first call's result). */
  close(reason: string): Promise<GateCloseResult> {
    if (this.closing !== undefined) return this.closing;
    this.closedReason = reason;
    this.deps.logger.warn('write gate closed', { reason, inFlight: this.inFlightCount });
    for (const listener of [...this.listeners]) {
      try {
        listener(reason);
      } catch (error) {
        // A listener's bug must not keep the gate from draining.
        this.deps.logger.error('write gate close listener failed', { error });
      }
    }
    this.closing = this.drain();
    return this.closing;
  }

  private async drain(): Promise<GateCloseResult> {
    if (this.inFlightCount > 0) {
      const timer = new AbortController();
      const drained = new Promise<void>((resolve) => this.drainedWaiters.push(resolve));
      const timeout = this.deps.clock
        .sleep(this.deps.fenceDrainMs, timer.signal)
        .catch(() => undefined);
      await Promise.race([drained, timeout]);
      timer.abort();
    }
    const stuckWrites = this.inFlightCount;
    if (stuckWrites > 0) {
      // Nothing in user space can cancel a write stuck in the kernel: the owner of the gate must
      // log it and exit (the watchdog's role in sanlock), see docs/leases.md.
      this.deps.logger.error('write gate: writes still in flight after the drain time', {
        stuckWrites,
        fenceDrainMs: this.deps.fenceDrainMs,
      });
    }
    return { drained: stuckWrites === 0, stuckWrites };
  }

  private wakeDrainedWaiters(): void {
    const waiters = this.drainedWaiters;
    this.drainedWaiters = [];
    for (const wake of waiters) wake();
  }
}

/** A BlockDevice layer whose mutating requests pass through `gate`. */
class GatedDevice implements BlockDevice {
  constructor(
    private readonly device: BlockDevice,
    private readonly gate: WriteGate,
  ) {}

  get description(): string {
    return this.device.description;
  }
  get sizeBytes(): number {
    return this.device.sizeBytes;
  }
  get alignmentBytes(): number {
    return this.device.alignmentBytes;
  }
  get logicalSectorSizeBytes(): number {
    return this.device.logicalSectorSizeBytes;
  }
  get physicalSectorSizeBytes(): number {
    return this.device.physicalSectorSizeBytes;
  }
  get maximumIoBytes(): number {
    return this.device.maximumIoBytes;
  }
  get readOnly(): boolean {
    return this.device.readOnly;
  }
  get capabilities(): BlockDeviceCapabilities {
    return this.device.capabilities;
  }

  read(buffer: Buffer, offsetBytes: number): Promise<void> {
    return this.device.read(buffer, offsetBytes);
  }
  write(buffer: Buffer, offsetBytes: number, options?: WriteOptions): Promise<void> {
    return this.gate.run(() => this.device.write(buffer, offsetBytes, options));
  }
  flush(): Promise<void> {
    return this.gate.run(() => this.device.flush());
  }
  discard(offsetBytes: number, lengthBytes: number, options?: DiscardOptions): Promise<void> {
    return this.gate.run(() => this.device.discard(offsetBytes, lengthBytes, options));
  }
  writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options?: WriteZeroesOptions,
  ): Promise<void> {
    return this.gate.run(() => this.device.writeZeroes(offsetBytes, lengthBytes, options));
  }
  blockStatus(offsetBytes: number, lengthBytes: number): Promise<BlockStatusExtent[]> {
    return this.device.blockStatus(offsetBytes, lengthBytes);
  }
  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.device.cache(offsetBytes, lengthBytes);
  }
  close(): Promise<void> {
    return this.device.close();
  }
}

export function gateDevice(device: BlockDevice, gate: WriteGate): BlockDevice {
  return new GatedDevice(device, gate);
}
