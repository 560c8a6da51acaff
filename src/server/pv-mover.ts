/**
 * Online PV evacuation (`pv move`, like pvmove): moves every used extent off a PV, one step at a
 * time, while the LVs stay in use.
 *
 * One step (docs/clvm.md, "PV evacuation"):
 *   1. plan the next run of the source PV and a free target run; commit it as the VG's `move`
 *      record (the target run is then allocated: nobody else takes it);
 *   2. mirror: the parts of writes that land on the step's source run (a linear run, or one
 *      stripe of a striped segment) go to the source and the target from now on;
 *   3. copy the run source -> target (a range lock keeps concurrent writes and the copy apart);
 *   4. commit the LV's new mapping (the step's extents now live on the target) and clear the
 *      step; the LV device takes the new mapping; stop mirroring.
 * The commit of step 4 is the checkpoint. A daemon killed during 2-3 leaves the step recorded:
 * the next `pv move` of that PV copies that step again from its start (the source still holds
 * every acknowledged write, because reads and writes used it until step 4), then goes on.
 *
 * Before the first step the source PV is marked not allocatable, as pvchange -x n, so no new LV
 * or extension lands on the PV being emptied; it stays so after the move (the PV is emptied to
 * be removed), and `pv change PATH --allocatable y` undoes it. A resumed move finds it already
 * marked and commits nothing for it.
 *
 * The hidden lockspace LV moves first, if it is on the source, by its own protocol
 * (lockspace-mover.ts): every host writes it, so no single host can mirror it. A lockspace move
 * left unfinished by a crash is finished or aborted first, whatever PV it was moving off.
 *
 * The copy runs on the host where the LV is active (its writes pass through this host's LV
 * device, so only this host can mirror them). An LV active on another host stops the move with
 * a message naming that host; an inactive LV is copied under its lease held exclusive here, so
 * it cannot be activated anywhere during its step.
 */
import { TandemError, isTandemError } from '../errors.js';
import type { LogicalVolumeDevice } from '../clvm/lv-device.js';
import {
  planMoveStep,
  beginMoveStep,
  finishMoveStep,
  abortMoveStep,
  checkMovePvs,
  moveStepExtentsDefault,
  moveStepExtentsMax,
} from '../clvm/move-planner.js';
import { type PvMoveRecord, type VgMetadata, lockspaceLvName } from '../clvm/types.js';
import { findLvByUuid, pvUsedExtents } from '../clvm/vg-queries.js';
import type { Logger } from '../log.js';
import { LockspaceMover } from './lockspace-mover.js';
import { type LvActivations, describeHolders, lvLeaseName } from './lv-activations.js';
import { pvAllocatableChange } from './pv-changes.js';
import type { VgEntry, VolumeHost } from './volume-host.js';
import type { VolumeOperations } from './volume-operations.js';

/**
 * The copy's chunk: writes to the chunk being copied wait for it, so this bounds the extra
 * latency a VM sees; larger chunks copy faster (fewer round trips through the thread pool).
 */
export const moveChunkBytes = 4 * 1024 * 1024;
/** Chunks copied at once, so that reading the source and writing the target overlap. */
export const moveCopyDepth = 4;
/** Progress is reported at most this often during a step. */
const progressIntervalMs = 250;

export interface MoveProgressReport {
  vgName: string;
  lvName: string;
  movedExtentCount: number;
  totalExtentCount: number;
  movedBytes: string;
  totalBytes: string;
  done: boolean;
}

export class PvMover {
  private readonly running = new Set<string>();
  private readonly lockspaceMover: LockspaceMover;

  constructor(
    private readonly parts: {
      host: () => VolumeHost;
      operations: VolumeOperations;
      activations: LvActivations;
      hostName: string;
      logger: Logger;
    },
  ) {
    this.lockspaceMover = new LockspaceMover(parts);
  }

  async move(
    pvPath: string,
    options: { readonly toPaths: readonly string[]; readonly stepExtents?: number },
    onProgress: (progress: MoveProgressReport) => void,
    signal: AbortSignal,
  ): Promise<MoveProgressReport> {
    const { toPaths } = options;
    const stepExtents = options.stepExtents ?? moveStepExtentsDefault;
    if (!Number.isSafeInteger(stepExtents) || stepExtents < 1 || stepExtents > moveStepExtentsMax) {
      throw new TandemError(
        'INVALID_ARGUMENT',
        `step extents must be 1 to ${moveStepExtentsMax}, not ${stepExtents}`,
      );
    }
    const host = this.parts.host();
    const entry = host
      .list()
      .find((candidate) => candidate.vg.pvHandles().some((pv) => pv.path === pvPath));
    if (entry === undefined)
      throw new TandemError('PV_NOT_FOUND', `${pvPath} is not a PV of a VG on this host`);
    const sourcePvUuid = this.uuidOf(entry, pvPath);
    const targetPvUuids = toPaths.map((toPath) => this.uuidOf(entry, toPath));
    if (targetPvUuids.includes(sourcePvUuid)) {
      throw new TandemError('INVALID_ARGUMENT', `${pvPath} cannot be a target of its own move`);
    }
    if (this.running.has(entry.vg.uuid)) {
      throw new TandemError(
        'MOVE_IN_PROGRESS',
        `a PV move runs in VG ${entry.vg.name} on this host`,
      );
    }
    this.running.add(entry.vg.uuid);
    try {
      return await this.moveAll(
        entry,
        { sourcePvUuid, targetPvUuids, stepExtents },
        onProgress,
        signal,
      );
    } finally {
      this.running.delete(entry.vg.uuid);
    }
  }

  private uuidOf(entry: VgEntry, pvPath: string): string {
    const handle = entry.vg.pvHandles().find((pv) => pv.path === pvPath);
    if (handle === undefined)
      throw new TandemError('PV_NOT_FOUND', `${pvPath} is not a PV of VG ${entry.vg.name} here`);
    return handle.label.pvUuid;
  }

  private async moveAll(
    entry: VgEntry,
    plan: {
      readonly sourcePvUuid: string;
      readonly targetPvUuids: readonly string[];
      readonly stepExtents: number;
    },
    onProgress: (progress: MoveProgressReport) => void,
    signal: AbortSignal,
  ): Promise<MoveProgressReport> {
    const { sourcePvUuid, targetPvUuids } = plan;
    const pending = await this.prepare(entry, sourcePvUuid, targetPvUuids);
    let total = pending?.totalExtentCount ?? pvUsedExtents(entry.vg.metadata, sourcePvUuid);
    let last = this.report(
      entry.vg.metadata,
      '',
      total - pvUsedExtents(entry.vg.metadata, sourcePvUuid),
      total,
    );
    if (pending !== undefined)
      this.parts.logger.info('resuming an interrupted PV move step', {
        vg: entry.vg.name,
        step: pending,
      });
    const usedBeforeLockspace = pvUsedExtents(entry.vg.metadata, sourcePvUuid);
    await this.lockspaceMover.run(
      entry,
      { sourcePvUuid, targetPvUuids },
      (progress) => {
        const movedBytes = BigInt(last.movedBytes) + BigInt(progress.copiedBytes);
        onProgress({ ...last, lvName: lockspaceLvName, movedBytes: String(movedBytes) });
      },
      signal,
    );
    const usedAfterLockspace = pvUsedExtents(entry.vg.metadata, sourcePvUuid);
    if (usedAfterLockspace !== usedBeforeLockspace) {
      last = this.report(entry.vg.metadata, lockspaceLvName, total - usedAfterLockspace, total);
      onProgress(last);
    }
    for (;;) {
      if (signal.aborted)
        throw new TandemError('FAILED_PRECONDITION', 'pv move cancelled; run it again to go on');
      let step = entry.vg.metadata.move;
      if (step === undefined) {
        const planned = planMoveStep(entry.vg.metadata, {
          sourcePvUuid,
          targetPvUuids,
          maxStepExtents: plan.stepExtents,
          totalExtentCount: total,
          missingPvUuids: entry.vg.missingPvUuids(),
        });
        if (planned === undefined) break;
        const next = await this.parts.operations.change(entry, {
          description: `pv move step ${planned.lvExtentStart}+${planned.extentCount}`,
          apply: (current) => beginMoveStep(current, planned, this.parts.operations.context()),
        });
        step = next.move;
        if (step === undefined) throw new Error('assertion: a begun move step is recorded');
      }
      total = step.totalExtentCount;
      await this.runStep(
        entry,
        step,
        (copiedBytes) => {
          const lvName = findLvByUuid(entry.vg.metadata, step.lvUuid)?.name ?? '';
          last = this.report(entry.vg.metadata, lvName, step.movedExtentCount, total, copiedBytes);
          onProgress(last);
        },
        signal,
      );
      const done = entry.vg.metadata;
      last = this.report(
        done,
        findLvByUuid(done, step.lvUuid)?.name ?? '',
        total - pvUsedExtents(done, sourcePvUuid),
        total,
      );
      onProgress(last);
    }
    this.parts.logger.info('PV move finished', { vg: entry.vg.name, extents: total });
    return last;
  }

  /**
   * Before the first step: refuses what cannot be moved or where it cannot go, then marks the
   * source PV not allocatable (a resumed move finds it so and commits nothing). Returns the
   * interrupted step, if any.
   */
  private async prepare(
    entry: VgEntry,
    sourcePvUuid: string,
    targetPvUuids: readonly string[],
  ): Promise<PvMoveRecord | undefined> {
    await entry.vg.refresh();
    const sourceName = this.parts.host().pathOf(sourcePvUuid) ?? sourcePvUuid;
    const pending = entry.vg.metadata.move;
    if (pending !== undefined && pending.sourcePvUuid !== sourcePvUuid) {
      throw new TandemError(
        'MOVE_IN_PROGRESS',
        `VG ${entry.vg.name} has an unfinished move of another PV (${this.parts.host().pathOf(pending.sourcePvUuid) ?? pending.sourcePvUuid}); run pv move on it first`,
      );
    }
    // A move refused for its targets (not allocatable, or no room for the lockspace LV) leaves
    // the source as it was.
    checkMovePvs(entry.vg.metadata, { sourcePvUuid, targetPvUuids });
    this.lockspaceMover.checkCanBegin(entry, { sourcePvUuid, targetPvUuids });
    const source = entry.vg.metadata.pvs.find((pv) => pv.uuid === sourcePvUuid);
    if (source?.allocatable === true) {
      await this.parts.operations.change(
        entry,
        pvAllocatableChange(sourceName, sourcePvUuid, false, () => this.parts.operations.context()),
      );
      this.parts.logger.info('PV marked not allocatable for its move (as pvchange -x n)', {
        vg: entry.vg.name,
        pv: sourceName,
      });
    }
    return pending;
  }

  /** Steps 2-4 of one move step (see the top of this file). */
  private async runStep(
    entry: VgEntry,
    step: PvMoveRecord,
    onCopied: (copiedBytes: number) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const metadata = entry.vg.metadata;
    const lv = findLvByUuid(metadata, step.lvUuid);
    if (lv === undefined) throw new Error('assertion: the move step names an LV of the VG');
    const activation = this.parts.activations.activeHere(lv.uuid);
    const locks = this.parts.host().locksOf(entry);
    let lease: string | undefined;
    let device: LogicalVolumeDevice;
    if (activation !== undefined) {
      if (activation.mode !== 'ex') {
        throw new TandemError(
          'LV_ACTIVE',
          `${activation.exportName} is active shared: deactivate it on every host (or activate it exclusive) to move it`,
        );
      }
      device = activation.device;
    } else {
      lease = lvLeaseName(lv);
      try {
        await locks.acquire(lease, { mode: 'ex', waitMs: 0 });
      } catch (error) {
        if (!isTandemError(error) || error.code !== 'LOCK_HELD') throw error;
        const holder = await locks.inspect(lease).catch(() => undefined);
        throw new TandemError(
          'LV_ACTIVE_ELSEWHERE',
          `${metadata.name}/${lv.name} is active on ${holder === undefined ? 'another host' : describeHolders(holder)}: run pv move on that host`,
          { cause: error },
        );
      }
      device = entry.vg.lvDevice(lv, `${metadata.name}/${lv.name} (pv move)`);
    }
    try {
      await this.copyStep(entry, device, step, onCopied, signal);
    } finally {
      if (activation === undefined) await device.close().catch(() => undefined);
      if (lease !== undefined) await locks.release(lease).catch(() => undefined);
    }
  }

  private async copyStep(
    entry: VgEntry,
    device: LogicalVolumeDevice,
    step: PvMoveRecord,
    onCopied: (copiedBytes: number) => void,
    signal: AbortSignal,
  ): Promise<void> {
    const extentSizeBytes = entry.vg.metadata.extentSizeBytes;
    const target = entry.vg.handleFor(step.targetPvUuid);
    if (target === undefined)
      throw new TandemError('VG_PARTIAL', 'the target PV of the move step is missing on this host');
    device.startMirror({
      lvExtentStart: step.lvExtentStart,
      extentCount: step.extentCount,
      pvUuid: step.sourcePvUuid,
      target: {
        device: target.device,
        offsetBytes: target.label.dataStartBytes + step.targetPvExtentStart * extentSizeBytes,
      },
    });
    let lastReportMs = 0;
    try {
      await device.copyMirror({
        chunkBytes: Math.min(moveChunkBytes, step.extentCount * extentSizeBytes),
        depth: moveCopyDepth,
        signal,
        onProgress: (copiedBytes) => {
          const nowMs = performance.now();
          if (nowMs - lastReportMs < progressIntervalMs) return;
          lastReportMs = nowMs;
          onCopied(copiedBytes);
        },
      });
      await this.parts.operations.change(entry, {
        description: `pv move step done ${step.lvExtentStart}+${step.extentCount}`,
        apply: (current) => finishMoveStep(current, this.parts.operations.context()),
        // Still under the VG lock: the source extents are free in the metadata now, and no
        // host may allocate them before the LV stopped writing there.
        afterCommit: async (committed) => {
          const moved = findLvByUuid(committed, step.lvUuid);
          if (moved !== undefined) device.setSegments(moved.segments);
          await device.stopMirror();
        },
      });
    } catch (error) {
      if (signal.aborted) {
        await this.parts.operations
          .change(entry, {
            description: 'pv move step cancelled',
            apply: (current) => abortMoveStep(current, this.parts.operations.context()),
          })
          .catch((abortError: unknown) => {
            this.parts.logger.warn(
              'clearing a cancelled move step failed (the next pv move redoes it)',
              { error: abortError },
            );
          });
      }
      throw error;
    } finally {
      // After a failed or cancelled step (a second call after afterCommit does nothing).
      await device.stopMirror();
    }
  }

  private report(
    metadata: VgMetadata,
    lvName: string,
    movedExtentCount: number,
    totalExtentCount: number,
    extraBytes = 0,
  ): MoveProgressReport {
    return {
      vgName: metadata.name,
      lvName,
      movedExtentCount,
      totalExtentCount,
      movedBytes: String(movedExtentCount * metadata.extentSizeBytes + extraBytes),
      totalBytes: String(totalExtentCount * metadata.extentSizeBytes),
      done: false,
    };
  }
}
