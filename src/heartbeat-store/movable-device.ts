/**
 * The device a lockspace lives on when it can move to other extents while every host uses it
 * (a VG's hidden lockspace LV under `pv move`; docs/adr/0002-moving-the-lockspace-lv.md).
 *
 * The copy being left (OLD) decides everything: its header's move mark is written only by the
 * host running the move, and every host reads it right before each of its slot writes (join,
 * renewal, leave: `beforeSlotWrite`, called by the delta lease) and follows it:
 *
 *   single(OLD) --mark moving E--> moving(E): slot writes go to OLD, then to NEW;
 *                                  every other write is refused (LOCKSPACE_MOVING);
 *                                  reads stay on OLD
 *   moving(E) --mark forwarded E--> single(NEW)         (the move's commit point)
 *   moving(E) --mark aborted E, or the mover is dead and OLD is not forwarded--> single(OLD)
 *   single(OLD) --mark forwarded E, never having been moving--> stale: this host missed the move
 *                                  (it opened the VG before the move and joins only now); every
 *                                  write is refused (LOCKSPACE_MOVED): open the lockspace again
 *
 * A join neither begins nor ends during a move: the check before its claim and the one after
 * the claim settled refuse it (LOCKSPACE_MOVING), so every live host either was live when the
 * mover looked at the slots (and said `ready`) or saw the mark itself.
 *
 * The slot write says where this host stands (`moveAck`): `ready` for E once it is moving and
 * every other write it had in flight has completed, `done` once it left E. The mover copies
 * only after every live host said `ready`, and gives the copy that was left to other data only
 * after every host said `done` (lockspace-move.ts).
 *
 * Why slot writes go to OLD first: the mover copies a slot by reading OLD, writing NEW and
 * reading OLD again, and copies again if it changed. A host's write that lands in NEW after
 * the mover's copy of that slot has landed in OLD before the re-read, so the re-read sees it.
 */
import type { Clock } from '../clock.js';
import type {
  BlockDevice,
  BlockDeviceCapabilities,
  BlockStatusExtent,
  DiscardOptions,
  WriteOptions,
  WriteZeroesOptions,
} from '../disk/block-device.js';
import { TandemError, assert } from '../errors.js';
import type { Logger } from '../log.js';
import { bounded } from './bounded-io.js';
import {
  type LockspaceLayout,
  type LockspaceMoveMark,
  decodeHeaderRecord,
  alignmentBytes,
  writeLockspaceMoveMark,
} from './layout.js';
import type { SlotWritePurpose } from './delta-lease.js';
import { type SlotMoveAck, noMoveAck } from './slot-format.js';
import type { HostInstance } from './types.js';

export interface MovableDeviceOptions {
  /** The copy the lockspace is on now. */
  readonly device: BlockDevice;
  /**
   * Opens the copy that the move of `epoch` goes to (the VG's metadata records where it is).
   * Called in the background; the host enters the move at a later slot write once it resolved.
   */
  readonly locate: (epoch: number) => Promise<BlockDevice>;
  /** A move this device already left (opened on its new copy after the commit point). */
  readonly resolvedEpoch?: number;
  /** The lockspace's T: the bound of the header read before each slot write. */
  readonly ioTimeoutMs: number;
  readonly clock: Clock;
  readonly logger: Logger;
}

type MoveState =
  | { readonly kind: 'single'; readonly device: BlockDevice }
  | {
      readonly kind: 'moving';
      readonly epoch: number;
      readonly mover: HostInstance;
      readonly old: BlockDevice;
      readonly next: BlockDevice;
      readonly layout: LockspaceLayout;
    };

/** What a mover needs of the moving device: both copies and the geometry. */
export interface MovingCopies {
  readonly epoch: number;
  readonly old: BlockDevice;
  readonly next: BlockDevice;
  readonly layout: LockspaceLayout;
}

export class MovableLockspaceDevice implements BlockDevice {
  private state: MoveState;
  private layout: LockspaceLayout | undefined;
  /** The last move this host left: acknowledged `done` in its slot. */
  private resolvedEpoch: number;
  /** Writes outside the host slots in flight; a host is `ready` only once they completed. */
  private otherWritesInFlight = 0;
  private drained = true;
  private locating: { epoch: number; result: BlockDevice | undefined; failed: boolean } | undefined;
  private liveness: ((owner: HostInstance) => 'alive' | 'dead') | undefined;
  /** Set when this host finds the copy it uses forwarded by a move it missed: no more writes. */
  private staleReason: string | undefined;
  private locateFailedEpoch = 0;

  constructor(private readonly options: MovableDeviceOptions) {
    this.state = { kind: 'single', device: options.device };
    this.resolvedEpoch = options.resolvedEpoch ?? 0;
  }

  /** How this host judges the mover dead (the heartbeat store's view), set once it exists. */
  setLiveness(liveness: (owner: HostInstance) => 'alive' | 'dead'): void {
    this.liveness = liveness;
  }

  /** The copy in use now (the old one while moving). */
  get current(): BlockDevice {
    return this.state.kind === 'single' ? this.state.device : this.state.old;
  }

  /** Both copies while a move runs on this host, else undefined. */
  moving(): MovingCopies | undefined {
    const state = this.state;
    if (state.kind !== 'moving') return undefined;
    return { epoch: state.epoch, old: state.old, next: state.next, layout: state.layout };
  }

  /** The move this host left last (0: none). */
  get leftEpoch(): number {
    return this.resolvedEpoch;
  }

  /** What the next slot write says about a move (see the top of this file). */
  moveAck(): SlotMoveAck {
    const state = this.state;
    if (state.kind === 'moving') {
      return { epoch: state.epoch, phase: this.drained ? 'ready' : 'none' };
    }
    return this.resolvedEpoch === 0 ? noMoveAck : { epoch: this.resolvedEpoch, phase: 'done' };
  }

  /**
   * Reads the header of the copy in use (bounded by the lockspace's T) and follows its move mark;
   * returns what the slot write about to be prepared must say. Rejects when this host must not
   * write its slot: the header cannot be read, or the lockspace moved without this host.
   */
  async beforeSlotWrite(purpose: SlotWritePurpose): Promise<SlotMoveAck> {
    if (this.staleReason !== undefined) throw this.staleError();
    const copy = this.current;
    const block = Buffer.alloc(alignmentBytes);
    const outcome = await bounded(
      this.options.clock,
      this.options.ioTimeoutMs,
      'read of the lockspace header',
      copy.read(block, 0),
    );
    if (!outcome.ok) throw outcome.error;
    const { layout, mark } = decodeHeaderRecord(block, copy.description);
    this.layout ??= layout;
    if (purpose === 'join') this.checkJoin(mark);
    // The delta lease never runs two slot writes (nor two of these) at once.
    await this.follow(mark, layout);
    return this.moveAck();
  }

  /**
   * A join neither begins nor ends during a move (it is checked before the claim and again after
   * it settled): a joiner that becomes live while the mover is not waiting for it could take
   * leases on a copy that is being left.
   */
  private checkJoin(mark: LockspaceMoveMark): void {
    const moving =
      this.state.kind === 'moving' ||
      (mark.state === 'moving' && mark.epoch !== this.resolvedEpoch && !this.moverDead(mark));
    if (!moving) return;
    throw new TandemError(
      'LOCKSPACE_MOVING',
      `the lockspace is being moved to other extents (move ${mark.epoch}); joining waits until the move ends`,
    );
  }

  private staleError(): TandemError {
    return new TandemError(
      'LOCKSPACE_MOVED',
      `${this.current.description}: ${this.staleReason ?? ''}; open the lockspace again from the VG's metadata`,
    );
  }

  /**
   * The mover's own write of the move mark into the header of the copy in use (OLD): one block,
   * FUA. Passes the refusal of non-slot writes: this is the one other write a move needs.
   */
  async writeMoveMark(mark: LockspaceMoveMark): Promise<void> {
    const layout = this.layout;
    if (layout === undefined) {
      throw new TandemError('LOCKSPACE_NOT_JOINED', 'the lockspace header was not read yet');
    }
    await writeLockspaceMoveMark(this.current, layout, mark);
  }

  private async follow(mark: LockspaceMoveMark, layout: LockspaceLayout): Promise<void> {
    const state = this.state;
    if (state.kind === 'moving') {
      if (mark.epoch === state.epoch && mark.state === 'moving') {
        if (this.moverDead(mark)) {
          await this.leaveMove(state.old, 'the mover is dead and the old copy is not forwarded');
        }
        return;
      }
      if (mark.epoch === state.epoch && mark.state === 'forwarded') {
        await this.leaveMove(state.next, 'the move committed: the new copy is the lockspace');
        return;
      }
      // Aborted, or a mark of another move (this one was aborted and another began meanwhile).
      await this.leaveMove(state.old, `the move was aborted (mark ${mark.state} ${mark.epoch})`);
      if (mark.state === 'moving') await this.follow(mark, layout);
      return;
    }
    if (mark.state === 'none' || mark.epoch === this.resolvedEpoch) return;
    if (mark.state === 'aborted') {
      this.resolvedEpoch = mark.epoch;
      return;
    }
    if (mark.state === 'forwarded') {
      // This host missed the move: from now on it writes nothing here, not even a lease.
      this.staleReason = `the lockspace moved to other extents (move ${mark.epoch}) while this host was not using it`;
      this.options.logger.error('the lockspace moved without this host: no more writes to it', {
        epoch: mark.epoch,
      });
      throw this.staleError();
    }
    if (this.moverDead(mark)) {
      this.options.logger.warn('a lockspace move whose mover is dead stays on the old copy', {
        epoch: mark.epoch,
        moverHostId: mark.moverHostId,
      });
      this.resolvedEpoch = mark.epoch;
      return;
    }
    this.enterMove(mark, layout, state.device);
  }

  private moverDead(mark: LockspaceMoveMark): boolean {
    const owner = { hostId: mark.moverHostId, generation: mark.moverGeneration };
    return this.liveness?.(owner) === 'dead';
  }

  /** Enters the move once its new copy is open (opening runs in the background). */
  private enterMove(mark: LockspaceMoveMark, layout: LockspaceLayout, old: BlockDevice): void {
    const locating = this.locating;
    if (locating === undefined || locating.epoch !== mark.epoch || locating.failed) {
      const started = {
        epoch: mark.epoch,
        result: undefined as BlockDevice | undefined,
        failed: false,
      };
      this.locating = started;
      this.options.locate(mark.epoch).then(
        (device) => {
          started.result = device;
        },
        (error: unknown) => {
          started.failed = true;
          // Tried again at every slot write: said once per move, then only in debug logs.
          const firstTime = this.locateFailedEpoch !== mark.epoch;
          this.locateFailedEpoch = mark.epoch;
          const message = 'cannot open the new copy of a moving lockspace';
          const fields = { epoch: mark.epoch, error };
          if (firstTime) this.options.logger.warn(message, fields);
          else this.options.logger.debug(message, fields);
        },
      );
      return;
    }
    const next = locating.result;
    if (next === undefined) return;
    this.locating = undefined;
    if (next.sizeBytes < layout.sizeBytes) {
      this.options.logger.error('the new copy of a moving lockspace is too small', {
        epoch: mark.epoch,
        sizeBytes: next.sizeBytes,
        neededBytes: layout.sizeBytes,
      });
      return;
    }
    this.state = {
      kind: 'moving',
      epoch: mark.epoch,
      mover: { hostId: mark.moverHostId, generation: mark.moverGeneration },
      old,
      next,
      layout,
    };
    this.drained = this.otherWritesInFlight === 0;
    this.options.logger.info('lockspace move: writing host slots to both copies', {
      epoch: mark.epoch,
      next: next.description,
      otherWritesInFlight: this.otherWritesInFlight,
    });
  }

  private async leaveMove(to: BlockDevice, why: string): Promise<void> {
    const state = this.state;
    assert(state.kind === 'moving', 'leaving a move that runs');
    this.state = { kind: 'single', device: to };
    this.resolvedEpoch = state.epoch;
    this.options.logger.info('lockspace move: left', {
      epoch: state.epoch,
      using: to.description,
      why,
    });
    // Closing an LV view ends only new requests through it: one in flight completes, and the
    // delta lease starts no slot write (the one saying `done`) before the last one settled.
    await (to === state.next ? state.old : state.next).close().catch(() => undefined);
  }

  private isSlotRange(offsetBytes: number, lengthBytes: number): boolean {
    const layout = this.layout;
    if (layout === undefined) return false;
    const slotsEnd = layout.directoryOffset;
    return offsetBytes >= layout.hostSlotsOffset && offsetBytes + lengthBytes <= slotsEnd;
  }

  private refuse(what: string): Promise<never> {
    const state = this.state;
    const epoch = state.kind === 'moving' ? state.epoch : 0;
    return Promise.reject(
      new TandemError(
        'LOCKSPACE_MOVING',
        `the lockspace is being moved to other extents (move ${epoch}); ${what} waits until the move ends: retry in a few seconds`,
      ),
    );
  }

  /** A write outside the slots: counted, so that entering a move can wait for it. */
  private async otherWrite(run: (device: BlockDevice) => Promise<void>): Promise<void> {
    const state = this.state;
    if (this.staleReason !== undefined) throw this.staleError();
    if (state.kind === 'moving') return this.refuse('a lease write');
    this.otherWritesInFlight++;
    try {
      await run(state.device);
    } finally {
      this.otherWritesInFlight--;
      if (this.otherWritesInFlight === 0) this.drained = true;
    }
  }

  // ---- BlockDevice -------------------------------------------------------------------------

  get description(): string {
    return this.current.description;
  }
  get sizeBytes(): number {
    return this.current.sizeBytes;
  }
  get alignmentBytes(): number {
    return this.current.alignmentBytes;
  }
  get logicalSectorSizeBytes(): number {
    return this.current.logicalSectorSizeBytes;
  }
  get physicalSectorSizeBytes(): number {
    return this.current.physicalSectorSizeBytes;
  }
  get maximumIoBytes(): number {
    return this.current.maximumIoBytes;
  }
  get readOnly(): boolean {
    return this.current.readOnly;
  }
  get capabilities(): BlockDeviceCapabilities {
    return this.current.capabilities;
  }

  read(buffer: Buffer, offsetBytes: number): Promise<void> {
    return this.current.read(buffer, offsetBytes);
  }

  async write(buffer: Buffer, offsetBytes: number, options?: WriteOptions): Promise<void> {
    const state = this.state;
    if (!this.isSlotRange(offsetBytes, buffer.length)) {
      return this.otherWrite((device) => device.write(buffer, offsetBytes, options));
    }
    if (this.staleReason !== undefined) throw this.staleError();
    if (state.kind === 'single') return state.device.write(buffer, offsetBytes, options);
    // Old first, then new: the copy rule at the top of this file depends on this order.
    await state.old.write(buffer, offsetBytes, options);
    await state.next.write(buffer, offsetBytes, options);
  }

  async flush(): Promise<void> {
    const state = this.state;
    if (state.kind === 'single') return state.device.flush();
    await state.old.flush();
    await state.next.flush();
  }

  discard(offsetBytes: number, lengthBytes: number, options?: DiscardOptions): Promise<void> {
    return this.otherWrite((device) => device.discard(offsetBytes, lengthBytes, options));
  }

  writeZeroes(
    offsetBytes: number,
    lengthBytes: number,
    options?: WriteZeroesOptions,
  ): Promise<void> {
    return this.otherWrite((device) => device.writeZeroes(offsetBytes, lengthBytes, options));
  }

  blockStatus(offsetBytes: number, lengthBytes: number): Promise<BlockStatusExtent[]> {
    return this.current.blockStatus(offsetBytes, lengthBytes);
  }

  cache(offsetBytes: number, lengthBytes: number): Promise<void> {
    return this.current.cache(offsetBytes, lengthBytes);
  }

  async close(): Promise<void> {
    const state = this.state;
    if (state.kind === 'moving') await state.next.close().catch(() => undefined);
    await this.current.close();
  }
}
