/**
 * What the PV, VG and LV calls do on this host: each change is one VG change under the VG lock
 * (src/clvm/volume-group.ts), followed by its effects here and a push to the peers.
 *
 * A change that must not race an activation elsewhere (LV reduce, rename, remove) takes the LV's
 * lease exclusive (try, no wait) inside the change and gives it back after the commit, as
 * lvmlockd does: so "is it active somewhere?" is answered by the lease itself, not by a read
 * that could be stale a moment later.
 */
import { randomUUID } from 'node:crypto';
import { TandemError, isTandemError } from '../errors.js';
import { systemClock } from '../clock.js';
import { type PvClaim, claimFreePvs, releaseClaims } from '../clvm/pv-claim.js';
import { createPv, readPvLabel } from '../clvm/pv-label.js';
import { type PvHandle, commitVgMetadata, removeVgMetadata } from '../clvm/metadata-store.js';
import {
  type AllocationPolicy,
  type LvRecord,
  type PvRecord,
  type VgMetadata,
  extentSizeBytesDefault,
  namePattern,
} from '../clvm/types.js';
import { ClusteredVg, type VgChange } from '../clvm/volume-group.js';
import * as operations from '../clvm/vg-operations.js';
import { computeLayout, formatLockspace, maxHostsDefault } from '../heartbeat-store/index.js';
import type { LockService } from '../locking/types.js';
import type { Logger } from '../log.js';
import { type LvActivations, describeHolders, findUserLv, lvLeaseName } from './lv-activations.js';
import { findVgPv, pvAllocatableChange } from './pv-changes.js';
import { VgNameLock, checkVgNameFree } from './vg-name-lock.js';
import { type VgEntry, type VolumeHost, lockspaceDevice } from './volume-host.js';

export const ioTimeoutMsDefault = 2_000;
export const maxLvsDefault = 1024;
/** Lease areas beside the LVs': the VG lock and a few named locks. */
const lockspaceSpareResources = 8;

export interface CreateVgInput {
  readonly name: string;
  readonly pvPaths: readonly string[];
  readonly extentSizeBytes?: number;
  readonly maxHosts?: number;
  readonly ioTimeoutMs?: number;
  readonly maxLvs?: number;
}

export interface CreateLvInput {
  readonly vgName: string;
  readonly name: string;
  readonly sizeBytes: number;
  readonly tags: readonly string[];
  readonly stripes: number;
  readonly stripeSizeBytes: number;
  readonly policy: AllocationPolicy;
  readonly pvPaths: readonly string[];
}

export class VolumeOperations {
  /** Serialises VG names across hosts (vg create, vg rename): src/server/vg-name-lock.ts. */
  private readonly nameLock: VgNameLock;

  constructor(
    private readonly parts: {
      host: () => VolumeHost;
      activations: LvActivations;
      hostName: string;
      logger: Logger;
      /** The global lockspace's locks (--lockspace); undefined without one. */
      globalLocks: () => LockService | undefined;
    },
  ) {
    this.nameLock = new VgNameLock(parts);
  }

  private get host(): VolumeHost {
    return this.parts.host();
  }

  /** Claims free PVs against other hosts doing the same (src/clvm/pv-claim.ts). */
  private claim(handles: PvHandle[], ioTimeoutMs: number, purpose: string): Promise<PvClaim> {
    return claimFreePvs(handles, {
      hostName: this.parts.hostName,
      ioTimeoutMs,
      clock: systemClock,
      logger: this.parts.logger,
      purpose,
    });
  }

  /** Who makes a change and when: this host, now (pv-mover.ts and lockspace-mover.ts too). */
  context(): operations.ChangeContext {
    return { wallMs: Date.now(), updatedBy: this.parts.hostName };
  }

  /** Runs a change of the VG under its lock, then its effects here and the push. */
  async change(entry: VgEntry, change: VgChange, signal?: AbortSignal): Promise<VgMetadata> {
    const locks = this.host.locksOf(entry);
    if (entry.vg.metadata.removing === true) {
      throw new TandemError('VG_NOT_FOUND', `VG ${entry.vg.name} is being removed`);
    }
    await this.host.whenLockspaceSettled(entry, signal);
    const seqnoBefore = entry.vg.metadata.seqno;
    const next = await entry.vg.change(locks, change, { signal });
    // A change with nothing to commit (pv change to the value the PV has) pushes nothing, unless
    // the VG was re-read at a newer seqno meanwhile: its effects must still be applied here.
    if (next.seqno !== seqnoBefore) await this.host.committed(entry);
    return next;
  }

  // ---- PVs ----

  async createPv(pvPath: string): Promise<PvHandle> {
    const device = await this.host.openDevice(pvPath);
    const label = await createPv(device, { wallMs: Date.now() });
    this.parts.logger.info('PV created', { path: pvPath, uuid: label.pvUuid });
    await this.host.rescan();
    return { path: pvPath, device, label };
  }

  async removePv(pvPath: string): Promise<void> {
    await this.host.rescan();
    const handle = this.host.free().find((candidate) => candidate.path === pvPath);
    if (handle === undefined) {
      const inVg = this.host
        .list()
        .find((entry) => entry.vg.pvHandles().some((pv) => pv.path === pvPath));
      if (inVg !== undefined) {
        throw new TandemError(
          'PV_IN_USE',
          `${pvPath} is a PV of VG ${inVg.vg.name}; vg reduce it first`,
        );
      }
      throw new TandemError('PV_NOT_FOUND', `${pvPath} is not a PV known to this host`);
    }
    await removeVgMetadata([handle], { wipeLabel: true });
    await this.host.forgetDevice(pvPath);
    this.parts.logger.info('PV removed', { path: pvPath, uuid: handle.label.pvUuid });
  }

  /** pv change PATH --allocatable y|n (pvchange -x y|n); no commit when the PV already is so. */
  async changePv(pvPath: string, allocatable: boolean): Promise<VgEntry> {
    const { entry, pvUuid } = findVgPv(this.host, pvPath);
    await this.change(
      entry,
      pvAllocatableChange(pvPath, pvUuid, allocatable, () => this.context()),
    );
    return entry;
  }

  /** The PVs to add to a VG: labelled here if blank, and in no VG. */
  private async freePvHandles(pvPaths: readonly string[]): Promise<PvHandle[]> {
    if (pvPaths.length === 0) throw new TandemError('INVALID_ARGUMENT', 'name at least one PV');
    if (new Set(pvPaths).size !== pvPaths.length) {
      throw new TandemError('INVALID_ARGUMENT', 'a PV is named twice');
    }
    for (const pvPath of pvPaths) {
      const device = await this.host.openDevice(pvPath);
      const label = await readPvLabel(device).catch((error: unknown) => {
        if (isTandemError(error) && error.code === 'PV_NOT_FOUND') return undefined;
        throw error;
      });
      // Like vgcreate: a blank device becomes a PV (createPv refuses one holding data).
      if (label === undefined) await createPv(device, { wallMs: Date.now() });
    }
    await this.host.rescan();
    return pvPaths.map((pvPath) => {
      const handle = this.host.free().find((candidate) => candidate.path === pvPath);
      if (handle !== undefined) return handle;
      const inVg = this.host
        .list()
        .find((entry) => entry.vg.pvHandles().some((pv) => pv.path === pvPath));
      throw new TandemError(
        'PV_IN_USE',
        inVg === undefined
          ? `${pvPath} cannot be used as a PV`
          : `${pvPath} is already a PV of VG ${inVg.vg.name}`,
      );
    });
  }

  // ---- VGs ----

  async createVg(input: CreateVgInput): Promise<VgEntry> {
    checkName(input.name, 'VG');
    checkVgNameFree(this.host.list(), input.name);
    // The name lock is released once the VG is on its PVs, before the join (2 T or more).
    const handles = await this.nameLock.hold(`vg create ${input.name}`, async () => {
      checkVgNameFree(this.host.list(), input.name);
      const free = await this.freePvHandles(input.pvPaths);
      const extentSizeBytes = input.extentSizeBytes ?? extentSizeBytesDefault;
      const maxHosts = input.maxHosts ?? maxHostsDefault;
      const ioTimeoutMs = input.ioTimeoutMs ?? ioTimeoutMsDefault;
      const claim = await this.claim(free, ioTimeoutMs, `vg create ${input.name}`);
      try {
        await this.createClaimedVg(input, free, claim, { extentSizeBytes, maxHosts, ioTimeoutMs });
      } catch (error) {
        await releaseClaims(free, claim.nonce, this.parts.logger);
        throw error;
      }
      return free;
    });
    const entry = await this.host.openVg(handles);
    await entry.joining;
    await this.host.committed(entry);
    return entry;
  }

  /** Formats the lockspace and commits the new VG's metadata on the claimed PVs. */
  private async createClaimedVg(
    input: CreateVgInput,
    handles: PvHandle[],
    claim: PvClaim,
    settings: { extentSizeBytes: number; maxHosts: number; ioTimeoutMs: number },
  ): Promise<void> {
    const { extentSizeBytes, maxHosts, ioTimeoutMs } = settings;
    const maxLvs = input.maxLvs ?? maxLvsDefault;
    const sectorBytes = Math.max(...handles.map((handle) => handle.device.logicalSectorSizeBytes));
    const lockspaceOptions = {
      maxHosts,
      maxResources: maxLvs + lockspaceSpareResources,
      ioTimeoutMs,
      name: input.name,
    };
    const layout = computeLayout(
      { ...lockspaceOptions, logicalSectorSizeBytes: sectorBytes },
      { uuid: randomUUID(), wallMs: Date.now() },
    );
    const metadata = operations.createVgMetadata({
      uuid: randomUUID(),
      name: input.name,
      extentSizeBytes,
      maxHosts,
      ioTimeoutMs,
      maxLvs,
      pvs: handles.map((handle) => pvRecordOf(handle, extentSizeBytes)),
      lockspaceBytes: layout.sizeBytes,
      lockspaceLvUuid: randomUUID(),
      context: this.context(),
    });
    // The lockspace is formatted before the metadata that makes it part of a VG: a crash in
    // between leaves blank PVs, never a VG whose lockspace nobody can join.
    const vg = new ClusteredVg(metadata, handles, this.parts.logger);
    const device = lockspaceDevice(vg);
    claim.check();
    await formatLockspace(device, { ...lockspaceOptions, force: true, wallMs: Date.now() });
    await device.close();
    claim.check();
    await commitVgMetadata(handles, metadata);
    this.parts.logger.info('VG created', {
      vg: input.name,
      uuid: metadata.uuid,
      pvCount: handles.length,
    });
  }

  async extendVg(name: string, pvPaths: readonly string[]): Promise<VgEntry> {
    const entry = this.host.byName(name);
    const handles = await this.freePvHandles(pvPaths);
    const description = `vg extend ${name} ${pvPaths.join(' ')}`;
    const claim = await this.claim(handles, entry.vg.metadata.ioTimeoutMs, description);
    try {
      for (const handle of handles) entry.vg.addHandle(handle);
      await this.change(entry, {
        description,
        apply: (current) => {
          claim.check();
          return operations.extendVg(
            current,
            handles.map((handle) => pvRecordOf(handle, current.extentSizeBytes)),
            this.context(),
          );
        },
      });
    } catch (error) {
      await releaseClaims(handles, claim.nonce, this.parts.logger);
      throw error;
    }
    return entry;
  }

  async reduceVg(name: string, pvPath: string): Promise<VgEntry> {
    const entry = this.host.byName(name);
    const handle = entry.vg.pvHandles().find((candidate) => candidate.path === pvPath);
    const pvUuid =
      handle?.label.pvUuid ?? entry.vg.metadata.pvs.find((pv) => pv.deviceHint === pvPath)?.uuid;
    if (pvUuid === undefined)
      throw new TandemError('PV_NOT_FOUND', `${pvPath} is not a PV of VG ${name}`);
    await this.change(entry, {
      description: `vg reduce ${name} ${pvPath}`,
      apply: (current) => operations.reduceVg(current, pvUuid, this.context()),
    });
    if (handle !== undefined) await removeVgMetadata([handle], { wipeLabel: false });
    await this.host.rescan();
    return entry;
  }

  async renameVg(name: string, newName: string): Promise<VgEntry> {
    checkName(newName, 'VG');
    this.host.byName(name);
    checkVgNameFree(this.host.list(), newName);
    return this.nameLock.hold(`vg rename ${name} ${newName}`, async () => {
      const entry = this.host.byName(name);
      checkVgNameFree(this.host.list(), newName);
      const locks = this.host.locksOf(entry);
      await this.change(entry, {
        description: `vg rename ${name} ${newName}`,
        apply: async (current) => {
          // Export names carry the VG name: an active LV would keep serving under the old one.
          await refuseActiveLvs(locks, name, 'renaming it');
          return operations.renameVg(current, newName, this.context());
        },
      });
      return entry;
    });
  }

  /**
   * Removes a VG with no LVs. Two steps, because the lockspace lives on the VG's own PVs: first
   * a commit marks the VG `removing` (every host that sees it leaves the lockspace), then, once
   * every other host has left or is dead, this host leaves too and wipes the PVs. A crash
   * between the steps leaves a VG marked removing; running vg remove again finishes it.
   */
  async removeVg(name: string, signal?: AbortSignal): Promise<void> {
    const entry = this.host.byName(name);
    const userLvs = entry.vg.metadata.lvs.filter((lv) => !lv.hidden);
    if (userLvs.length > 0) {
      throw new TandemError(
        'FAILED_PRECONDITION',
        `VG ${name} still has ${userLvs.length} LV(s) (${userLvs
          .map((lv) => lv.name)
          .slice(0, 5)
          .join(', ')}); remove them first`,
      );
    }
    if (entry.vg.metadata.removing !== true) {
      await this.change(entry, {
        description: `vg remove ${name}`,
        apply: (current) => operations.markRemoving(current, this.context()),
      });
    }
    await this.waitForOthersToLeave(entry, signal);
    const handles = entry.vg.pvHandles();
    await this.host.forgetVg(entry, 'removed here');
    // Like vgremove: the PVs stay PVs (free ones), for another VG or pv remove.
    await removeVgMetadata(handles, { wipeLabel: false });
    this.parts.logger.info('VG removed', { vg: name, pvCount: handles.length });
    await this.host.rescan();
  }

  private async waitForOthersToLeave(entry: VgEntry, signal?: AbortSignal): Promise<void> {
    const member = entry.member;
    if (member === undefined) return;
    const store = member.hosts();
    const deadlineMs = performance.now() + store.timings.hostDeadMs * 2;
    for (;;) {
      const others = store
        .hosts()
        .filter((host) => !host.self && (host.state === 'live' || host.state === 'isolated'));
      if (others.length === 0) return;
      if (performance.now() > deadlineMs || signal?.aborted === true) {
        throw new TandemError(
          'FAILED_PRECONDITION',
          `hosts ${others.map((host) => host.hostName).join(', ')} have not left the lockspace of VG ${entry.vg.name}; run vg remove again once they have (the VG is marked for removal)`,
        );
      }
      await new Promise((resolve) => setTimeout(resolve, store.timings.ioTimeoutMs / 2));
    }
  }

  async history(name: string): Promise<VgMetadata[]> {
    return this.host.byName(name).vg.history();
  }

  async restoreVg(name: string, seqno: number): Promise<VgEntry> {
    const entry = this.host.byName(name);
    const versions = await entry.vg.history();
    const old = versions.find((version) => version.seqno === seqno);
    if (old === undefined) {
      throw new TandemError(
        'NOT_FOUND',
        `VG ${name} keeps no version ${seqno}; kept: ${versions.map((version) => version.seqno).join(', ')}`,
      );
    }
    const locks = this.host.locksOf(entry);
    await this.change(entry, {
      description: `vg restore ${name} --seqno ${seqno}`,
      apply: async (current) => {
        // Like vgcfgrestore: an old version may drop or shrink an LV that a VM is using.
        await refuseActiveLvs(locks, name, 'restoring its metadata');
        return operations.restoreVersion(current, old, this.context());
      },
    });
    return entry;
  }

  // ---- LVs ----

  async createLv(input: CreateLvInput): Promise<LvRecord> {
    const entry = this.host.byName(input.vgName);
    const pvUuids = input.pvPaths.map((pvPath) => this.pvUuidOf(entry, pvPath));
    const next = await this.change(entry, {
      description: `lv create ${input.vgName}/${input.name}`,
      apply: (current) => {
        const extentCount = Math.ceil(input.sizeBytes / current.extentSizeBytes);
        return operations.createLv(
          current,
          {
            uuid: randomUUID(),
            name: input.name,
            extentCount,
            tags: input.tags,
            stripes: input.stripes,
            stripeSizeBytes: input.stripeSizeBytes,
            policy: input.policy,
            pvUuids: pvUuids.length === 0 ? undefined : pvUuids,
            missingPvUuids: entry.vg.missingPvUuids(),
          },
          this.context(),
        );
      },
    });
    return findUserLv(next, input.name);
  }

  async resizeLv(
    vgName: string,
    name: string,
    target: {
      sizeBytes: number;
      relative: boolean;
      grow: boolean;
      force: boolean;
      policy: AllocationPolicy;
    },
  ): Promise<LvRecord> {
    const entry = this.host.byName(vgName);
    const locks = this.host.locksOf(entry);
    let lease: string | undefined;
    try {
      const next = await this.change(entry, {
        description: `lv ${target.grow ? 'extend' : 'reduce'} ${vgName}/${name}`,
        apply: async (current) => {
          const lv = findUserLv(current, name);
          const extentCount = lv.segments.reduce((sum, segment) => sum + segment.extentCount, 0);
          const delta = Math.ceil(target.sizeBytes / current.extentSizeBytes);
          if (target.grow) {
            const wanted = target.relative ? extentCount + delta : delta;
            if (wanted <= extentCount) throw tooSmall(vgName, name, 'extend', extentCount, current);
            return operations.extendLv(
              current,
              name,
              wanted,
              { policy: target.policy, missingPvUuids: entry.vg.missingPvUuids() },
              this.context(),
            );
          }
          const wanted = target.relative ? extentCount - delta : delta;
          if (wanted >= extentCount || wanted <= 0)
            throw tooSmall(vgName, name, 'reduce', extentCount, current);
          lease = await this.takeLvLease(
            locks,
            current,
            lv,
            target.force ? 'reduce-force' : 'reduce',
          );
          return operations.reduceLv(current, name, wanted, this.context());
        },
        // Active here (--force): stop writing the freed extents before the VG lock goes.
        afterCommit: async (committed) => {
          const lv = findUserLv(committed, name);
          const activation = this.parts.activations.activeHere(lv.uuid);
          if (activation === undefined || target.grow) return;
          activation.device.setSegments(lv.segments);
          await activation.device.drainRetiredMappings();
        },
      });
      return findUserLv(next, name);
    } finally {
      if (lease !== undefined) await locks.release(lease).catch(() => undefined);
    }
  }

  async renameLv(vgName: string, name: string, newName: string): Promise<LvRecord> {
    checkName(newName, 'LV');
    const next = await this.withLvLease(vgName, name, 'rename', (current) =>
      operations.renameLv(current, name, newName, this.context()),
    );
    return findUserLv(next, newName);
  }

  async removeLv(vgName: string, name: string): Promise<void> {
    await this.withLvLease(vgName, name, 'remove', (current) =>
      operations.removeLv(current, name, this.context()),
    );
  }

  async setLvTags(
    vgName: string,
    name: string,
    add: readonly string[],
    remove: readonly string[],
  ): Promise<LvRecord> {
    const entry = this.host.byName(vgName);
    const next = await this.change(entry, {
      description: `lv tag ${vgName}/${name}`,
      apply: (current) => operations.setLvTags(current, name, add, remove, this.context()),
    });
    return findUserLv(next, name);
  }

  /** A change that needs the LV inactive everywhere: it holds the LV's lease while it commits. */
  private async withLvLease(
    vgName: string,
    name: string,
    what: 'rename' | 'remove',
    apply: (current: VgMetadata) => VgMetadata,
  ): Promise<VgMetadata> {
    const entry = this.host.byName(vgName);
    const locks = this.host.locksOf(entry);
    let lease: string | undefined;
    try {
      return await this.change(entry, {
        description: `lv ${what} ${vgName}/${name}`,
        apply: async (current) => {
          lease = await this.takeLvLease(locks, current, findUserLv(current, name), what);
          return apply(current);
        },
      });
    } finally {
      if (lease !== undefined) await locks.release(lease).catch(() => undefined);
    }
  }

  /**
   * Takes the LV's lease exclusive for a change, or says who has the LV active. Returns the
   * lease name to release after the commit, or undefined when the LV is active here and the
   * change may go on (reduce --force).
   */
  private async takeLvLease(
    locks: LockService,
    current: VgMetadata,
    lv: LvRecord,
    what: 'rename' | 'remove' | 'reduce' | 'reduce-force',
  ): Promise<string | undefined> {
    const lease = lvLeaseName(lv);
    const label = `${current.name}/${lv.name}`;
    if (this.parts.activations.activeHere(lv.uuid) !== undefined) {
      if (what === 'reduce-force') return undefined;
      throw new TandemError(
        'LV_ACTIVE',
        what === 'reduce'
          ? `${label} is active on this host; reducing it may destroy data in use: add --force`
          : `${label} is active on this host; deactivate it first`,
      );
    }
    try {
      await locks.acquire(lease, { mode: 'ex', waitMs: 0 });
      return lease;
    } catch (error) {
      if (!isTandemError(error) || error.code !== 'LOCK_HELD') throw error;
      const holder = await locks.inspect(lease).catch(() => undefined);
      throw new TandemError(
        'LV_ACTIVE_ELSEWHERE',
        `${label} is active on ${holder === undefined ? 'another host' : describeHolders(holder)}; deactivate it there first`,
        { cause: error },
      );
    }
  }

  private pvUuidOf(entry: VgEntry, pvPath: string): string {
    const handle = entry.vg.pvHandles().find((candidate) => candidate.path === pvPath);
    if (handle === undefined)
      throw new TandemError(
        'PV_NOT_FOUND',
        `${pvPath} is not a PV of VG ${entry.vg.name} on this host`,
      );
    return handle.label.pvUuid;
  }
}

/** Fails with LV_ACTIVE when any LV of the VG is active on any host (its lease is held). */
async function refuseActiveLvs(locks: LockService, vgName: string, doing: string): Promise<void> {
  const active = (await locks.list()).filter(
    (lock) => lock.name.startsWith('lv:') && lock.mode !== 'free',
  );
  if (active.length > 0) {
    const hosts = new Set(
      active.flatMap((lock) =>
        lock.mode === 'ex'
          ? [lock.owner?.hostName ?? '?']
          : lock.sharedOwners.map((owner) => owner.hostName),
      ),
    );
    throw new TandemError(
      'LV_ACTIVE',
      `VG ${vgName} has ${active.length} active LV(s) (on ${[...hosts].join(', ')}); deactivate them before ${doing}`,
    );
  }
}

function checkName(name: string, what: 'VG' | 'LV'): void {
  if (!namePattern.test(name) || name === '.' || name === '..') {
    throw new TandemError(
      'INVALID_ARGUMENT',
      `${what} name '${name}' is not valid: 1-64 of A-Z a-z 0-9 + _ . -, not starting with '-'`,
    );
  }
}

function tooSmall(
  vgName: string,
  name: string,
  what: string,
  extentCount: number,
  md: VgMetadata,
): TandemError {
  const sizeMiB = (extentCount * md.extentSizeBytes) / 2 ** 20;
  return new TandemError(
    'INVALID_ARGUMENT',
    `lv ${what} ${vgName}/${name}: the new size must be ${what === 'extend' ? 'larger' : 'smaller (and above 0)'} than the current ${sizeMiB} MiB`,
  );
}

export function pvRecordOf(handle: PvHandle, extentSizeBytes: number): PvRecord {
  const label = handle.label;
  return {
    uuid: label.pvUuid,
    deviceHint: handle.path,
    sizeBytes: label.deviceSizeBytes,
    dataStartBytes: label.dataStartBytes,
    extentCount: Math.floor((label.dataEndBytes - label.dataStartBytes) / extentSizeBytes),
    // A new PV of a VG is allocatable, as with vgcreate and vgextend.
    allocatable: true,
  };
}
