/**
 * Moves a VG's hidden lockspace LV off a PV while every host uses it: the mover's side of
 * docs/adr/0002-moving-the-lockspace-lv.md (each host's side is heartbeat-store/movable-device.ts).
 *
 *   1. M1: commit the move record (epoch E = its seqno; the new place's extents reserved).
 *   2. Write `moving E` into the old copy's header. Each host sees it at its next slot write,
 *      opens the new place, writes its slot to both copies from then on, makes no other lease
 *      write, and says `ready` in its slot once its other writes in flight completed.
 *   3. Wait until every live host says `ready` (a dead one need not).
 *   4. Copy the old copy to the new one (heartbeat-store/lockspace-move.ts) and flush it.
 *   5. Commit point: `forwarded E` into the old copy's header, one FUA write, issued only while
 *      this host's own lease is certainly held. Hosts switch to the new copy at their next
 *      slot write and say `done`.
 *   6. Wait until every live host says `done` in the new copy, then M2: the LV maps the new
 *      place and its old extents are free (nobody writes them any more).
 *   A failure before 5 aborts: `aborted E` into the old header, wait for `done` there, then M1'
 *   (the record cleared, the new place free). A failure after 5 leaves the record: the next
 *   pv move finishes the move (resolveInterrupted), as it does after a crash of the mover.
 *
 * Lease writes (activations, VG changes) are refused for the seconds of steps 2-5;
 * lease-taking commands wait for that (VolumeHost.whenLockspaceSettled).
 */
import type { BlockDevice } from '../disk/block-device.js';
import { TandemError } from '../errors.js';
import {
  abortLockspaceMove,
  beginLockspaceMove,
  finishLockspaceMove,
  lockspaceOnPv,
} from '../clvm/lockspace-move-plan.js';
import type { LockspaceMoveRecord, VgMetadata } from '../clvm/types.js';
import { systemClock } from '../clock.js';
import type { HeartbeatStore } from '../heartbeat-store/index.js';
import { type LockspaceMoveMark, readLockspaceHeaderRecord } from '../heartbeat-store/layout.js';
import {
  type MoveProgress,
  type MoverContext,
  MoveNotCommitted,
  ackWaitOptions,
  moveToCommit,
  waitForMoveAcks,
  writeEndMark,
} from '../heartbeat-store/lockspace-move.js';
import type { MovableLockspaceDevice } from '../heartbeat-store/movable-device.js';
import type { Logger } from '../log.js';
import { type VgEntry, type VolumeHost, lockspaceDevice } from './volume-host.js';
import type { VolumeOperations } from './volume-operations.js';

export type LockspaceMoveProgress = MoveProgress;

export interface LockspaceMoveRequest {
  readonly sourcePvUuid: string;
  readonly targetPvUuids: readonly string[];
}

/** What the mover needs of this host's membership of the VG's lockspace. */
interface Membership {
  readonly store: HeartbeatStore;
  readonly device: MovableLockspaceDevice;
}

/** The mark that ends a move, as its mover would write it. */
function endMark(state: 'aborted' | 'forwarded', record: LockspaceMoveRecord): LockspaceMoveMark {
  return {
    state,
    epoch: record.epoch,
    moverHostId: record.moverHostId,
    moverGeneration: record.moverGeneration,
  };
}

export class LockspaceMover {
  constructor(
    private readonly parts: {
      host: () => VolumeHost;
      operations: VolumeOperations;
      hostName: string;
      logger: Logger;
    },
  ) {}

  /**
   * Finishes or aborts a lockspace move left by a crash or a failure, then moves the lockspace
   * LV off the source PV if it is there. The caller runs one pv move per VG on this host.
   */
  async run(
    entry: VgEntry,
    request: LockspaceMoveRequest,
    onProgress: (progress: LockspaceMoveProgress) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const interrupted = entry.vg.metadata.lockspaceMove;
    if (interrupted !== undefined) await this.resolveInterrupted(entry, interrupted);
    if (!lockspaceOnPv(entry.vg.metadata, request.sourcePvUuid)) return;
    await this.move(entry, request, onProgress, signal);
  }

  /**
   * Refuses, before pv move commits anything, a lockspace move that could not begin (no room on
   * the targets, say): the same pure step as the real begin, on the metadata as it is now.
   */
  checkCanBegin(entry: VgEntry, request: LockspaceMoveRequest): void {
    const metadata = entry.vg.metadata;
    if (metadata.lockspaceMove !== undefined) return;
    if (!lockspaceOnPv(metadata, request.sourcePvUuid)) return;
    this.beginOn(entry, metadata, request);
  }

  private beginOn(entry: VgEntry, current: VgMetadata, request: LockspaceMoveRequest): VgMetadata {
    const { store } = this.membership(entry);
    return beginLockspaceMove(
      current,
      {
        ...request,
        missingPvUuids: entry.vg.missingPvUuids(),
        mover: { ...store.localInstance(), hostName: this.parts.hostName },
      },
      this.parts.operations.context(),
    );
  }

  private membership(entry: VgEntry): Membership {
    const member = entry.member;
    const device = entry.lockspace;
    if (member === undefined || device === undefined) {
      throw new TandemError(
        'LOCKSPACE_NOT_JOINED',
        `this host has not joined the lockspace of VG ${entry.vg.name}`,
      );
    }
    return { store: member.hosts(), device };
  }

  private async move(
    entry: VgEntry,
    request: LockspaceMoveRequest,
    onProgress: (progress: LockspaceMoveProgress) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const { store, device } = this.membership(entry);
    const begun = await this.parts.operations.change(entry, {
      description: 'lockspace move begins',
      apply: (current) => this.beginOn(entry, current, request),
    });
    const record = begun.lockspaceMove;
    if (record === undefined) throw new Error('assertion: a begun lockspace move is recorded');
    const epoch = record.epoch;
    const context = this.moverContext(store, device);
    const logger = this.parts.logger.child({ vg: entry.vg.name, epoch });
    try {
      const next = lockspaceDevice(entry.vg, record);
      await next.close();
      if (next.logicalSectorSizeBytes > store.layout.blockSize) {
        throw new TandemError(
          'INVALID_ARGUMENT',
          `the lockspace of VG ${entry.vg.name} was made for ${store.layout.blockSize}-byte sectors; the PV chosen for it has ${next.logicalSectorSizeBytes}-byte sectors (name other --to PVs)`,
        );
      }
      logger.info('lockspace move: announcing it to every host');
      await moveToCommit(context, epoch, onProgress, signal);
    } catch (error) {
      const markWritten = error instanceof MoveNotCommitted && error.markWritten;
      const cause = error instanceof MoveNotCommitted ? error.reason : error;
      logger.warn('lockspace move failed before its commit point; aborting it', { error: cause });
      if (markWritten) {
        // This host is the only writer of the mark while it lives (it runs the move), so the
        // abort needs no lock; the VG lock could not even be taken while this host is moving.
        const old = lockspaceDevice(entry.vg);
        await writeEndMark(context, old, endMark('aborted', record))
          .catch(() => undefined)
          .finally(() => old.close());
      }
      await this.resolve(entry, epoch).catch((abortError: unknown) => {
        logger.error('clearing the aborted lockspace move failed (the next pv move does it)', {
          error: abortError,
        });
      });
      throw cause;
    }
    logger.info('lockspace move: committed (the new place is the lockspace)');
    await this.resolve(entry, epoch);
  }

  /**
   * Ends move `epoch` under the VG lock, so that no other host resolves it or begins another
   * move meanwhile; the old copy's header decides:
   * - `forwarded E`: wait until every live host says `done` in the new copy, then M2 (the LV
   *   maps the new place; the old one is free, since nobody writes it any more);
   * - anything else (the mover aborted, failed or died before its commit point): write
   *   `aborted E`, wait for `done` in the old copy, then M1' (the new place is free again).
   * A host that does not confirm within the wait leaves the record (and both places) as they
   * are, for the next pv move.
   */
  private async resolve(entry: VgEntry, epoch: number): Promise<void> {
    const { store, device } = this.membership(entry);
    const context = this.moverContext(store, device);
    const committed = await this.parts.operations.change(entry, {
      description: `lockspace move ${epoch} ends`,
      apply: async (current) => {
        const record = current.lockspaceMove;
        if (record?.epoch !== epoch) return current;
        const old = lockspaceDevice(entry.vg);
        try {
          const { mark } = await readLockspaceHeaderRecord(old);
          const forwarded = mark.state === 'forwarded' && mark.epoch === epoch;
          this.parts.logger.info('lockspace move: ending it', {
            vg: entry.vg.name,
            epoch,
            outcome: forwarded ? 'finish' : 'abort',
          });
          if (forwarded) {
            const next = lockspaceDevice(entry.vg, record);
            await this.waitForDone(entry, next, context, epoch).finally(() => next.close());
            return finishLockspaceMove(current, this.parts.operations.context(), epoch);
          }
          await writeEndMark(context, old, endMark('aborted', record));
          await this.waitForDone(entry, old, context, epoch);
          return abortLockspaceMove(current, this.parts.operations.context(), epoch);
        } finally {
          await old.close();
        }
      },
    });
    if (committed.lockspaceMove?.epoch === epoch) throw new Error('assertion: the move ended');
    this.parts.logger.info('lockspace move ended', { vg: entry.vg.name, epoch });
  }

  private async waitForDone(
    entry: VgEntry,
    copy: BlockDevice,
    context: MoverContext,
    epoch: number,
  ): Promise<void> {
    context.store.renewSoon();
    try {
      await waitForMoveAcks(copy, context.store.layout, ackWaitOptions(context, epoch, 'done'));
    } catch (error) {
      throw new TandemError(
        'MOVE_IN_PROGRESS',
        `the lockspace move ${epoch} of VG ${entry.vg.name} cannot end yet: not every host confirmed it, so both of its places stay reserved; run pv move again`,
        { cause: error },
      );
    }
  }

  /**
   * A move left behind by a mover that crashed, fenced or failed: ended as `resolve` says, once
   * its mover is dead, or is this very host (which runs one pv move per VG, so not this one).
   */
  private async resolveInterrupted(entry: VgEntry, record: LockspaceMoveRecord): Promise<void> {
    const { store } = this.membership(entry);
    const self = store.localInstance();
    const mover = { hostId: record.moverHostId, generation: record.moverGeneration };
    const moverIsSelf = mover.hostId === self.hostId && mover.generation === self.generation;
    if (!moverIsSelf && store.ownerLiveness(mover) === 'alive') {
      throw new TandemError(
        'MOVE_IN_PROGRESS',
        `${record.moverHostName} is moving the lockspace of VG ${entry.vg.name} (move ${record.epoch}); if that host died, pv move can finish it once the host counts as dead (${store.timings.hostDeadMs} ms after its last heartbeat)`,
      );
    }
    this.parts.logger.info('ending an interrupted lockspace move', {
      vg: entry.vg.name,
      epoch: record.epoch,
      mover: record.moverHostName,
    });
    await this.resolve(entry, record.epoch);
  }

  private moverContext(store: HeartbeatStore, device: MovableLockspaceDevice): MoverContext {
    return { store, device, clock: systemClock, logger: this.parts.logger };
  }
}
