/**
 * The LVs active on this host: each holds its lease (`lv:<slot>`, exclusive or shared) in the
 * VG's lockspace and is served over NBD as export "vg/lv" through the lockspace's write gate.
 *
 * Lifecycle of one activation (every step logged):
 *   activate:   lease taken (try, no wait: a conflict names the holder) -> metadata re-read ->
 *               LV device built -> export added
 *   resized:    a VG change (here or pushed/polled) moves the LV's mapping: the device takes the
 *               new segments; connections made later see the new size; an event tells watchers
 *   deactivate: export removed (its connections closed) -> device flushed and closed -> lease
 *               released
 *   lost:       the lease was lost (fenced, or released on request): the gate already refuses
 *               writes; the export is removed at once
 *
 * Each activation is recorded (activation-intent.ts) when it starts and forgotten when it ends,
 * except at a daemon stop: a restart of tandemd restores what was active (activation-restore.ts).
 */
import { TandemError, isTandemError } from '../errors.js';
import type { LogicalVolumeDevice } from '../clvm/lv-device.js';
import type { LvRecord, VgMetadata } from '../clvm/types.js';
import { lvLockName } from '../clvm/volume-group.js';
import { gateDevice } from '../locking/index.js';
import type { LockEvent, LockInfo, LockMode } from '../locking/types.js';
import type { Logger } from '../log.js';
import type { ActivationIntent } from './activation-intent.js';
import type { LockspaceMember } from './lockspace-member.js';
import type { VgEntry, VolumeHost } from './volume-host.js';

export interface ExportTarget {
  addExport(options: { name: string; device: LogicalVolumeDeviceLike; description?: string }): void;
  removeExport(name: string): Promise<void>;
}
type LogicalVolumeDeviceLike = Parameters<typeof gateDevice>[0];

/** Where activations are recorded so that a restart of tandemd can restore them. */
export interface ActivationRecorder {
  activated(intent: ActivationIntent): Promise<void>;
  /** True when an entry was removed. */
  ended(lvUuid: string): Promise<boolean>;
}

export interface Activation {
  readonly vgUuid: string;
  readonly lvUuid: string;
  readonly lockName: string;
  readonly exportName: string;
  readonly mode: LockMode;
  readonly device: LogicalVolumeDevice;
}

export function exportNameOf(vgName: string, lvName: string): string {
  return `${vgName}/${lvName}`;
}

/** The lease name of an LV (hidden LVs have none). */
export function lvLeaseName(lv: LvRecord): string {
  if (lv.leaseSlot === undefined) {
    throw new TandemError('INVALID_ARGUMENT', `LV ${lv.name} has no lease: it cannot be active`);
  }
  return lvLockName(String(lv.leaseSlot));
}

/** Who holds a lease, for messages: "host-b (host id 2)" or "host-b, host-c (shared)". */
export function describeHolders(lock: LockInfo): string {
  if (lock.mode === 'ex' && lock.owner !== undefined) {
    return `${lock.owner.hostName || '?'} (host id ${lock.owner.hostId}, exclusive)`;
  }
  const names = lock.sharedOwners.map(
    (owner) => `${owner.hostName || '?'} (host id ${owner.hostId})`,
  );
  return names.length === 0 ? 'another host' : `${names.join(', ')} (shared)`;
}

export function findUserLv(metadata: VgMetadata, name: string): LvRecord {
  const lv = metadata.lvs.find((candidate) => !candidate.hidden && candidate.name === name);
  if (lv === undefined) throw new TandemError('LV_NOT_FOUND', `no LV ${metadata.name}/${name}`);
  return lv;
}

export class LvActivations {
  private readonly active = new Map<string, Activation>();
  private readonly watched = new Map<LockspaceMember, () => void>();
  /** Per LV uuid: the activation or deactivation running now (see activate). */
  private readonly changing = new Map<string, Promise<void>>();

  constructor(
    private readonly parts: {
      host: () => VolumeHost;
      target: ExportTarget;
      logger: Logger;
      intents?: ActivationRecorder;
    },
  ) {}

  list(): Activation[] {
    return [...this.active.values()];
  }

  activeHere(lvUuid: string): Activation | undefined {
    return this.active.get(lvUuid);
  }

  /**
   * Activates the LV here. Activations and deactivations of one LV run one after the other, so
   * a deactivation that arrives while an activation (a restore, say) runs ends what it started.
   */
  activate(entry: VgEntry, lvName: string, mode: LockMode): Promise<Activation> {
    const lv = findUserLv(entry.vg.metadata, lvName);
    return this.serially(lv.uuid, () => this.activateNow(entry, lvName, mode));
  }

  deactivate(entry: VgEntry, lvName: string): Promise<void> {
    const lv = findUserLv(entry.vg.metadata, lvName);
    return this.serially(lv.uuid, () => this.deactivateNow(entry, lvName));
  }

  private async serially<T>(lvUuid: string, work: () => Promise<T>): Promise<T> {
    const previous = this.changing.get(lvUuid) ?? Promise.resolve();
    const run = previous.then(work);
    const settled = run.then(
      () => undefined,
      () => undefined,
    );
    this.changing.set(lvUuid, settled);
    try {
      return await run;
    } finally {
      if (this.changing.get(lvUuid) === settled) this.changing.delete(lvUuid);
    }
  }

  private async activateNow(entry: VgEntry, lvName: string, mode: LockMode): Promise<Activation> {
    const host = this.parts.host();
    const locks = host.locksOf(entry);
    let lv = findUserLv(entry.vg.metadata, lvName);
    const existing = this.active.get(lv.uuid);
    if (existing !== undefined) {
      if (existing.mode === mode) return existing;
      throw new TandemError(
        'LV_ACTIVE',
        `${existing.exportName} is already active here (${existing.mode === 'ex' ? 'exclusive' : 'shared'}); deactivate it first`,
      );
    }
    const lockName = lvLeaseName(lv);
    await host.whenLockspaceSettled(entry);
    try {
      await locks.acquire(lockName, { mode, waitMs: 0 });
    } catch (error) {
      if (isTandemError(error) && error.code === 'LOCK_HELD') {
        const holder = await locks.inspect(lockName).catch(() => undefined);
        throw new TandemError(
          'LV_ACTIVE_ELSEWHERE',
          `${exportNameOf(entry.vg.name, lv.name)} is active on ${holder === undefined ? 'another host' : describeHolders(holder)}`,
          { cause: error },
        );
      }
      throw error;
    }
    let activation: Activation;
    try {
      // The lease is ours: the mapping read now cannot be shrunk or removed under us.
      await entry.vg.refresh();
      lv = findUserLv(entry.vg.metadata, lvName);
      activation = this.start(entry, lv, lockName, mode);
      this.watchMember(entry);
    } catch (error) {
      await locks.release(lockName).catch(() => undefined);
      throw error;
    }
    await this.parts.intents?.activated({
      vgUuid: entry.vg.uuid,
      vgName: entry.vg.name,
      lvUuid: lv.uuid,
      lvName: lv.name,
      mode,
    });
    return activation;
  }

  private start(entry: VgEntry, lv: LvRecord, lockName: string, mode: LockMode): Activation {
    const vg = entry.vg;
    const missing = new Set(vg.missingPvUuids());
    const onMissing = lv.segments.some((segment) =>
      segment.areas.some((area) => missing.has(area.pvUuid)),
    );
    if (onMissing) {
      throw new TandemError(
        'VG_PARTIAL',
        `${exportNameOf(vg.name, lv.name)} has extents on a PV missing on this host`,
      );
    }
    const exportName = exportNameOf(vg.name, lv.name);
    const device = vg.lvDevice(lv, exportName);
    const gate = this.parts.host().locksOf(entry).gate;
    this.parts.target.addExport({
      name: exportName,
      device: gateDevice(device, gate),
      description: `LV ${exportName} (${mode === 'ex' ? 'exclusive' : 'shared'})`,
    });
    const activation: Activation = {
      vgUuid: vg.uuid,
      lvUuid: lv.uuid,
      lockName,
      exportName,
      mode,
      device,
    };
    this.active.set(lv.uuid, activation);
    this.parts.logger.info('LV activated', {
      export: exportName,
      mode,
      sizeBytes: device.sizeBytes,
    });
    this.parts.host().emit({ kind: 'lv-activated', vgUuid: vg.uuid, lvUuid: lv.uuid });
    return activation;
  }

  private async deactivateNow(entry: VgEntry, lvName: string): Promise<void> {
    const lv = findUserLv(entry.vg.metadata, lvName);
    const activation = this.active.get(lv.uuid);
    if (activation === undefined) {
      // Not active yet, but recorded: a restore waits for the lease. Deactivating cancels it.
      if ((await this.parts.intents?.ended(lv.uuid)) === true) {
        this.parts.logger.info('LV activation no longer to be restored', {
          export: exportNameOf(entry.vg.name, lv.name),
        });
        return;
      }
      throw new TandemError(
        'LV_NOT_ACTIVE',
        `${exportNameOf(entry.vg.name, lv.name)} is not active on this host`,
      );
    }
    await this.parts.host().whenLockspaceSettled(entry);
    await this.stop(activation, 'deactivated');
    await this.parts.host().locksOf(entry).release(activation.lockName);
  }

  /**
   * Ends an activation: export removed, device flushed and closed. The lease is the caller's.
   * Unless tandemd stops, the record is dropped too: at once in memory, on disk while the export
   * goes (a lost lease must not wait for an fsync to drop its export); done when this resolves.
   */
  private async stop(activation: Activation, reason: string, keepRecord = false): Promise<void> {
    if (this.active.get(activation.lvUuid) !== activation) return;
    this.active.delete(activation.lvUuid);
    const forgotten = keepRecord ? undefined : this.parts.intents?.ended(activation.lvUuid);
    await this.parts.target.removeExport(activation.exportName).catch((error: unknown) => {
      this.parts.logger.warn('removing an LV export failed', {
        export: activation.exportName,
        error,
      });
    });
    await activation.device.flush().catch((error: unknown) => {
      this.parts.logger.warn('flushing an LV failed', { export: activation.exportName, error });
    });
    await activation.device.close();
    await forgotten;
    this.parts.logger.info('LV deactivated', { export: activation.exportName, reason });
    this.parts.host().emit({
      kind: 'lv-deactivated',
      vgUuid: activation.vgUuid,
      lvUuid: activation.lvUuid,
      reason,
    });
  }

  /** A VG change: active LVs here take their new mapping (online resize). */
  async metadataChanged(entry: VgEntry): Promise<void> {
    for (const activation of this.active.values()) {
      if (activation.vgUuid !== entry.vg.uuid) continue;
      const lv = entry.vg.metadata.lvs.find((candidate) => candidate.uuid === activation.lvUuid);
      if (lv === undefined) {
        this.parts.logger.error('an active LV left the metadata: deactivating it', {
          export: activation.exportName,
        });
        await this.stop(activation, 'removed from the metadata');
        continue;
      }
      const sizeBefore = activation.device.sizeBytes;
      activation.device.setSegments(lv.segments);
      if (activation.device.sizeBytes !== sizeBefore) {
        this.parts.logger.info('active LV resized', {
          export: activation.exportName,
          fromBytes: sizeBefore,
          toBytes: activation.device.sizeBytes,
        });
        this.parts.host().emit({ kind: 'lv-resized', vgUuid: entry.vg.uuid, lvUuid: lv.uuid });
      }
    }
  }

  /** Lease lost (fenced, released on request): drop the exports it protected. */
  private watchMember(entry: VgEntry): void {
    const member = entry.member;
    if (member === undefined || this.watched.has(member)) return;
    const unwatch = member.watchLocks((event: LockEvent) => {
      if (event.kind !== 'lost') return;
      for (const activation of this.active.values()) {
        if (activation.vgUuid !== entry.vg.uuid || activation.lockName !== event.name) continue;
        this.parts.logger.error('LV lease lost: dropping its export', {
          export: activation.exportName,
          reason: event.reason,
        });
        void this.stop(activation, `lease lost: ${event.reason ?? 'unknown'}`);
      }
    });
    this.watched.set(member, unwatch);
  }

  /** Daemon stop: every export removed and every lease released; the records stay. */
  async deactivateAll(): Promise<void> {
    for (const activation of [...this.active.values()]) {
      await this.stop(activation, 'tandemd stopping', true);
      const entry = this.parts.host().byUuid(activation.vgUuid);
      if (entry?.member !== undefined)
        await entry.member
          .locks()
          .release(activation.lockName)
          .catch(() => undefined);
    }
    for (const unwatch of this.watched.values()) unwatch();
    this.watched.clear();
  }
}
