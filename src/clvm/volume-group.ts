/**
 * One clustered VG as this host sees it: the PVs of it that this host opened, the newest
 * metadata it read from them, and the commit of a change under the VG lock.
 *
 * A change (docs/clvm.md, "Cluster behaviour"):
 *   1. take the VG lock exclusive in the VG's lockspace (so no other host commits meanwhile);
 *   2. read the metadata from the PVs again: the cached copy may be older than the disk;
 *   3. apply the change (a pure function of src/clvm/vg-operations.ts) and check the result;
 *   4. commit it on every PV this host has (metadata-store.ts: old or new, never a mix);
 *   5. release the VG lock, writing the new seqno into its value block, so that a host that
 *      missed the push sees the change by polling that block.
 * A crash anywhere in 1-5 leaves the old or the new VG: the lock is then freed by the lease
 * protocol when this host is declared dead, and the next change reads whatever is on disk.
 */
import { TandemError } from '../errors.js';
import { LogicalVolumeDevice } from './lv-device.js';
import type { LockService } from '../locking/types.js';
import type { Logger } from '../log.js';
import {
  type PvHandle,
  commitVgMetadata,
  listVgHistory,
  readVgMetadata,
} from './metadata-store.js';
import type { LvRecord, VgMetadata } from './types.js';
import { validateVgMetadata } from './vg-operations.js';

/** The VG lock's resource name in the VG's lockspace. */
export const vgLockName = 'vg';
/** How long a change waits for the VG lock before it fails (LOCK_TIMEOUT). */
export const vgLockWaitMsDefault = 30_000;
const seqnoValueMagic = 0x51455356; // 'VSEQ'
const seqnoValueBytes = 16;

/** The LV's lease: held exclusive or shared while the LV is active on a host. */
export function lvLockName(lvUuid: string): string {
  return `lv:${lvUuid}`;
}

/** The VG lock's value block: magic, seqno (u64 LE). */
export function encodeSeqnoValue(seqno: number): Buffer {
  const value = Buffer.alloc(seqnoValueBytes);
  value.writeUInt32LE(seqnoValueMagic, 0);
  value.writeBigUInt64LE(BigInt(seqno), 8);
  return value;
}

/** The seqno in a VG lock value block, or undefined if the block holds none (never written). */
export function decodeSeqnoValue(value: Buffer): number | undefined {
  if (value.length < seqnoValueBytes || value.readUInt32LE(0) !== seqnoValueMagic) return undefined;
  const seqno = value.readBigUInt64LE(8);
  return seqno <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(seqno) : undefined;
}

export interface VgChange {
  /** For logs and the metadata's lastChange: "lv create vm1-disk0". */
  readonly description: string;
  /**
   * Returns the next metadata (seqno + 1), `current` itself when there is nothing to change
   * (nothing is committed then, and afterCommit does not run), or throws a TandemError to refuse
   * the change.
   */
  apply(current: VgMetadata): VgMetadata | Promise<VgMetadata>;
  /**
   * Runs after the commit, while the VG lock is still held: the place to stop using extents
   * the change freed (no other host can allocate them before the lock is released).
   */
  afterCommit?(committed: VgMetadata): Promise<void>;
}

export interface ChangeOptions {
  readonly waitMs?: number;
  readonly signal?: AbortSignal;
}

export class ClusteredVg {
  private current: VgMetadata;
  private readonly handles = new Map<string, PvHandle>();
  /** One change at a time from this host: the VG lock belongs to the host, not to a call. */
  private changing: Promise<unknown> = Promise.resolve();

  constructor(
    metadata: VgMetadata,
    handles: readonly PvHandle[],
    private readonly logger: Logger,
  ) {
    this.current = metadata;
    for (const handle of handles) this.handles.set(handle.label.pvUuid, handle);
  }

  get metadata(): VgMetadata {
    return this.current;
  }

  get uuid(): string {
    return this.current.uuid;
  }

  get name(): string {
    return this.current.name;
  }

  /** The PVs of the VG this host opened (a PV the metadata lists may be missing). */
  pvHandles(): PvHandle[] {
    return this.current.pvs.flatMap((pv) => {
      const handle = this.handles.get(pv.uuid);
      return handle === undefined ? [] : [handle];
    });
  }

  handleFor(pvUuid: string): PvHandle | undefined {
    return this.handles.get(pvUuid);
  }

  /** A block device over an LV's current segments, on the PVs this host opened. */
  lvDevice(lv: LvRecord, description: string): LogicalVolumeDevice {
    return new LogicalVolumeDevice({
      description,
      extentSizeBytes: this.current.extentSizeBytes,
      segments: lv.segments,
      resolvePv: (pvUuid) => {
        const handle = this.handles.get(pvUuid);
        return handle === undefined
          ? undefined
          : { device: handle.device, dataStartBytes: handle.label.dataStartBytes };
      },
    });
  }

  /** PVs the metadata lists that this host could not open: the VG is partial. */
  missingPvUuids(): string[] {
    return this.current.pvs.filter((pv) => !this.handles.has(pv.uuid)).map((pv) => pv.uuid);
  }

  /** A PV found again (or newly added): later reads and commits include it. */
  addHandle(handle: PvHandle): void {
    this.handles.set(handle.label.pvUuid, handle);
  }

  /** Handles of PVs no longer in the VG (after vg reduce), for the caller to close. */
  dropUnlistedHandles(): PvHandle[] {
    const listed = new Set(this.current.pvs.map((pv) => pv.uuid));
    const dropped = [...this.handles.values()].filter((handle) => !listed.has(handle.label.pvUuid));
    for (const handle of dropped) this.handles.delete(handle.label.pvUuid);
    return dropped;
  }

  /** Reads the metadata from the PVs; adopts it if newer. Returns whether it changed. */
  async refresh(): Promise<boolean> {
    const read = await readVgMetadata(this.pvHandles());
    if (read.stalePvUuids.length > 0) {
      this.logger.debug('stale metadata copies (repaired by the next change)', {
        vg: read.metadata.name,
        stalePvUuids: read.stalePvUuids,
      });
    }
    return this.adopt(read.metadata);
  }

  /** Takes metadata read elsewhere (or just committed) if it is newer than the cached one. */
  adopt(metadata: VgMetadata): boolean {
    if (metadata.uuid !== this.current.uuid) {
      throw new TandemError(
        'VG_INCONSISTENT',
        `metadata of VG ${metadata.uuid} offered to VG ${this.current.uuid}`,
      );
    }
    if (metadata.seqno <= this.current.seqno) return false;
    this.current = metadata;
    return true;
  }

  /** The metadata versions still in the metadata areas, newest first. */
  history(): Promise<VgMetadata[]> {
    return listVgHistory(this.pvHandles());
  }

  /** Commits a change under the VG lock (the numbered steps at the top of this file). */
  change(locks: LockService, change: VgChange, options: ChangeOptions = {}): Promise<VgMetadata> {
    const run = this.changing.then(() => this.changeLocked(locks, change, options));
    this.changing = run.catch(() => undefined);
    return run;
  }

  private async changeLocked(
    locks: LockService,
    change: VgChange,
    options: ChangeOptions,
  ): Promise<VgMetadata> {
    const startedMs = performance.now();
    await locks.acquire(vgLockName, {
      mode: 'ex',
      waitMs: options.waitMs ?? vgLockWaitMsDefault,
      signal: options.signal,
    });
    let releaseValue = encodeSeqnoValue(this.current.seqno);
    try {
      await this.refresh();
      const before = this.current;
      const next = await change.apply(before);
      if (next === before) {
        this.logger.debug('VG change: nothing to commit', {
          vg: before.name,
          change: change.description,
          seqno: before.seqno,
        });
        return before;
      }
      if (next.seqno !== before.seqno + 1 || next.uuid !== before.uuid) {
        throw new Error(
          `assertion: a change must bump the seqno by one (got ${before.seqno} -> ${next.seqno})`,
        );
      }
      validateVgMetadata(next);
      const handles = this.pvHandles();
      // A PV added by this change is not in `handles` until now.
      await commitVgMetadata(
        next.pvs.flatMap((pv) => {
          const handle = this.handles.get(pv.uuid);
          return handle === undefined ? [] : [handle];
        }),
        next,
      );
      releaseValue = encodeSeqnoValue(next.seqno);
      this.current = next;
      await change.afterCommit?.(next);
      this.logger.info('VG changed', {
        vg: next.name,
        change: change.description,
        seqno: next.seqno,
        pvCount: handles.length,
        elapsedMs: Math.round(performance.now() - startedMs),
      });
      return next;
    } finally {
      await locks.release(vgLockName, { value: releaseValue }).catch((error: unknown) => {
        this.logger.warn('releasing the VG lock failed', { vg: this.current.name, error });
      });
    }
  }
}
