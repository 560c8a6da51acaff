/**
 * The clustered VGs of this host: which devices are PVs, which VGs they form, this host's
 * membership of each VG's lockspace (the hidden lockspace LV), and how a change made anywhere
 * reaches this host.
 *
 * How a host learns of a change (docs/clvm.md, "Cluster behaviour"):
 * - push: the host that committed sends NotifyVgChanged to every peer it knows (the live hosts
 *   of the VG's lockspace, and of every other lockspace it joined); the receiver re-reads the VG;
 * - poll: every T (the VG lockspace's ioTimeout) each joined VG's lock value block is read; a
 *   seqno above the cached one makes the host re-read the VG, so a change is seen within about
 *   T + one read even when the network is down;
 * - rescan: every rescanIntervalMs the known devices (--vg-dir, created PVs, paths peers sent)
 *   are scanned again, which finds new VGs, PVs that came back and VGs removed elsewhere.
 *
 * Lifecycle of one VG here: found (scan) -> joining (its lockspace, async) -> joined; a join that
 * fails is retried by the next rescan. A VG removed elsewhere (its PVs lost their labels) is left
 * and forgotten.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import type { BlockDevice } from '../disk/block-device.js';
import { openFileDevice } from '../disk/file-device.js';
import { openNbdDevice, parseNbdUri } from '../disk/nbd-device.js';
import { systemClock } from '../clock.js';
import { TandemError, isTandemError } from '../errors.js';
import type { LogicalVolumeDevice } from '../clvm/lv-device.js';
import { readLockspaceHeaderRecord } from '../heartbeat-store/layout.js';
import { MovableLockspaceDevice } from '../heartbeat-store/movable-device.js';
import { type PvHandle, readVgMetadata, scanDevices } from '../clvm/metadata-store.js';
import { type LvSegment, lockspaceLvName } from '../clvm/types.js';
import { ClusteredVg, decodeSeqnoValue, vgLockName } from '../clvm/volume-group.js';
import type { Logger } from '../log.js';
import { LockspaceMember } from './lockspace-member.js';
import { VgNotifier } from './vg-notifier.js';

/** How often the known devices are scanned again. */
export const rescanIntervalMs = 5_000;
/** Devices a host keeps open as PVs (each VG's PVs, free PVs). */
export const knownDevicesMax = 4096;
const knownPathsFile = 'pv-paths.json';

export type VolumeEventKind =
  'vg-changed' | 'vg-removed' | 'lv-resized' | 'lv-activated' | 'lv-deactivated';

export interface VolumeEvent {
  readonly kind: VolumeEventKind;
  readonly vgUuid: string;
  readonly lvUuid?: string;
  readonly reason?: string;
}

export interface VgEntry {
  readonly vg: ClusteredVg;
  member: LockspaceMember | undefined;
  joining: Promise<void> | undefined;
  joinError: string | undefined;
  /** The device of the lockspace this host joined (or is joining); it follows lockspace moves. */
  lockspace: MovableLockspaceDevice | undefined;
}

export interface VolumeHostOptions {
  readonly hostName: string;
  readonly dataDir: string;
  /** Every file or block device in it is scanned for PVs. */
  readonly vgDir: string | undefined;
  /** More PV paths (config). */
  readonly pvPaths: readonly string[];
  /** The gRPC address this host publishes in its lockspace slots. */
  readonly address: string;
  readonly logger: Logger;
  readonly onWritesStuck: (stuckWrites: number) => void;
  /** Peers known other than through the VGs (e.g. the hosts of the --lockspace). */
  readonly extraPeers: () => string[];
  /** Called after the metadata of a VG changed here (before listeners hear of it). */
  readonly onMetadataChanged?: (entry: VgEntry) => Promise<void>;
}

/** Opens a PV by path or nbd:// URI. */
export async function openPvDevice(pvPath: string): Promise<BlockDevice> {
  if (/^nbd:/i.test(pvPath)) return openNbdDevice(parseNbdUri(pvPath));
  return openFileDevice(pvPath);
}

/**
 * A BlockDevice over the VG's hidden lockspace LV: where its metadata puts it, or, with
 * `segments`, where a lockspace move puts it.
 */
export function lockspaceDevice(
  vg: ClusteredVg,
  moved?: { readonly segments: readonly LvSegment[]; readonly epoch: number },
): LogicalVolumeDevice {
  const metadata = vg.metadata;
  const lv = metadata.lvs.find(
    (candidate) => candidate.hidden && candidate.name === lockspaceLvName,
  );
  if (lv === undefined) {
    throw new TandemError('METADATA_INVALID', `VG ${metadata.name} has no lockspace LV`);
  }
  const description = `${metadata.name}/${lockspaceLvName}`;
  if (moved === undefined) return vg.lvDevice(lv, description);
  return vg.lvDevice(
    { ...lv, segments: moved.segments },
    `${description} (new place, move ${moved.epoch})`,
  );
}

export class VolumeHost {
  private readonly entries = new Map<string, VgEntry>();
  /** Open devices by path: every PV this host knows, in a VG or free. */
  private readonly devices = new Map<string, BlockDevice>();
  private freePvs: PvHandle[] = [];
  private readonly knownPaths = new Set<string>();
  private readonly listeners = new Set<(event: VolumeEvent) => void>();
  private scanning: Promise<void> | undefined;
  private rescanTimer: NodeJS.Timeout | undefined;
  private pollTimer: NodeJS.Timeout | undefined;
  private polling = false;
  private stopped = false;
  readonly notifier: VgNotifier;

  private constructor(readonly options: VolumeHostOptions) {
    this.notifier = new VgNotifier({ logger: options.logger.child({ part: 'notify' }) });
    for (const pvPath of options.pvPaths) this.knownPaths.add(pvPath);
  }

  /** Scans, opens every VG found and joins their lockspaces; resolves when all joins ended. */
  static async start(options: VolumeHostOptions): Promise<VolumeHost> {
    const host = new VolumeHost(options);
    await host.loadKnownPaths();
    await host.rescan();
    await Promise.all([...host.entries.values()].map((entry) => entry.joining));
    host.rescanTimer = setInterval(
      () => void host.rescan().catch(() => undefined),
      rescanIntervalMs,
    );
    host.schedulePoll();
    return host;
  }

  get hostName(): string {
    return this.options.hostName;
  }

  get logger(): Logger {
    return this.options.logger;
  }

  list(): VgEntry[] {
    return [...this.entries.values()].sort((a, b) => a.vg.name.localeCompare(b.vg.name));
  }

  free(): PvHandle[] {
    return [...this.freePvs];
  }

  byName(name: string): VgEntry {
    const found = this.list().filter((entry) => entry.vg.name === name);
    if (found.length > 1) {
      throw new TandemError(
        'VG_INCONSISTENT',
        `two VGs are named ${name} (${found.map((entry) => entry.vg.uuid).join(', ')}); rename one`,
      );
    }
    const entry = found[0];
    if (entry === undefined) throw new TandemError('VG_NOT_FOUND', `no VG named ${name}`);
    return entry;
  }

  byUuid(uuid: string): VgEntry | undefined {
    return this.entries.get(uuid);
  }

  /** The VG's lock manager; fails if this host has not (yet) joined its lockspace. */
  locksOf(entry: VgEntry): ReturnType<LockspaceMember['locks']> {
    if (entry.member === undefined) {
      const why = entry.joinError ?? (entry.joining !== undefined ? 'still joining' : 'not joined');
      throw new TandemError(
        'LOCKSPACE_NOT_JOINED',
        `this host has not joined the lockspace of VG ${entry.vg.name} (${why})`,
      );
    }
    return entry.member.locks();
  }

  /** The path this host opened a PV by. */
  pathOf(pvUuid: string): string | undefined {
    for (const entry of this.entries.values()) {
      const handle = entry.vg.handleFor(pvUuid);
      if (handle !== undefined) return handle.path;
    }
    return this.freePvs.find((handle) => handle.label.pvUuid === pvUuid)?.path;
  }

  watch(listener: (event: VolumeEvent) => void): () => void {
    this.listeners.add(listener);
    return () => this.listeners.delete(listener);
  }

  emit(event: VolumeEvent): void {
    for (const listener of this.listeners) listener(event);
  }

  /** Opens a device (or returns the one already open) and remembers its path for rescans. */
  async openDevice(pvPath: string): Promise<BlockDevice> {
    const open = this.devices.get(pvPath);
    if (open !== undefined) return open;
    if (this.devices.size >= knownDevicesMax) {
      throw new TandemError('INVALID_ARGUMENT', `this host already knows ${knownDevicesMax} PVs`);
    }
    const device = await openPvDevice(pvPath);
    this.devices.set(pvPath, device);
    if (!this.knownPaths.has(pvPath)) {
      this.knownPaths.add(pvPath);
      await this.saveKnownPaths();
    }
    return device;
  }

  /** Forgets a device that is no PV any more (pv remove). */
  async forgetDevice(pvPath: string): Promise<void> {
    const device = this.devices.get(pvPath);
    this.devices.delete(pvPath);
    this.freePvs = this.freePvs.filter((handle) => handle.path !== pvPath);
    if (this.knownPaths.delete(pvPath)) await this.saveKnownPaths();
    await device?.close().catch(() => undefined);
  }

  /** Scans every known device again and reconciles the VGs (one scan at a time). */
  rescan(extraPaths: readonly string[] = []): Promise<void> {
    for (const extra of extraPaths) this.knownPaths.add(extra);
    const run = (this.scanning ?? Promise.resolve()).then(() => this.scanOnce());
    this.scanning = run.finally(() => {
      if (this.scanning === run) this.scanning = undefined;
    });
    return run;
  }

  private async scanOnce(): Promise<void> {
    if (this.stopped) return;
    for (const candidate of await this.candidatePaths()) {
      if (this.devices.has(candidate)) continue;
      try {
        await this.openDevice(candidate);
      } catch (error) {
        this.logger.debug('cannot open a candidate PV', { path: candidate, error });
      }
    }
    const scanned = await scanDevices(
      [...this.devices.entries()].map(([pvPath, device]) => ({ path: pvPath, device })),
    );
    for (const problem of scanned.problems) {
      this.logger.warn('a device holds a damaged PV', {
        path: problem.path,
        problem: problem.message,
      });
    }
    this.freePvs = scanned.unassigned;
    for (const [vgUuid, handles] of scanned.byVg) {
      const entry = this.entries.get(vgUuid);
      if (entry === undefined) {
        await this.openVg(handles).catch((error: unknown) => {
          this.logger.warn('cannot open a VG found by the scan', { vgUuid, error });
        });
        continue;
      }
      for (const handle of handles) {
        if (entry.vg.handleFor(handle.label.pvUuid) !== undefined) continue;
        entry.vg.addHandle(handle);
        this.logger.info('PV of the VG found', { vg: entry.vg.name, path: handle.path });
      }
      if (entry.member === undefined && entry.vg.metadata.removing !== true) this.join(entry);
    }
    for (const entry of [...this.entries.values()]) {
      if (!scanned.byVg.has(entry.vg.uuid)) await this.forgetVg(entry, 'its PVs hold it no more');
    }
  }

  /** Opens a VG from its PVs and starts joining its lockspace. */
  async openVg(handles: PvHandle[]): Promise<VgEntry> {
    const read = await readVgMetadata(handles);
    const existing = this.entries.get(read.metadata.uuid);
    if (existing !== undefined) return existing;
    const vg = new ClusteredVg(
      read.metadata,
      handles,
      this.logger.child({ vg: read.metadata.name }),
    );
    const entry: VgEntry = {
      vg,
      member: undefined,
      joining: undefined,
      joinError: undefined,
      lockspace: undefined,
    };
    this.entries.set(vg.uuid, entry);
    this.logger.info('VG found', {
      vg: vg.name,
      uuid: vg.uuid,
      seqno: vg.metadata.seqno,
      pvCount: handles.length,
      missingPvCount: vg.missingPvUuids().length,
    });
    if (vg.metadata.removing !== true) this.join(entry);
    this.emit({ kind: 'vg-changed', vgUuid: vg.uuid });
    return entry;
  }

  /** Starts joining the VG's lockspace (once); a failure is kept and retried by the rescan. */
  join(entry: VgEntry): void {
    if (entry.member !== undefined || entry.joining !== undefined || this.stopped) return;
    const vg = entry.vg;
    entry.joining = LockspaceMember.start({
      lockspace: `vg ${vg.name}`,
      openDevice: () => this.openLockspace(entry),
      hostName: this.options.hostName,
      address: this.options.address,
      logger: this.logger.child({ component: 'lockspace', vg: vg.name }),
      onWritesStuck: this.options.onWritesStuck,
    })
      .then(async (member) => {
        if (this.stopped || !this.entries.has(vg.uuid)) {
          await member.stop();
          return;
        }
        entry.member = member;
        entry.joinError = undefined;
        this.emit({ kind: 'vg-changed', vgUuid: vg.uuid });
      })
      .catch((error: unknown) => {
        entry.joinError = error instanceof Error ? error.message : String(error);
        this.logger.warn('joining the lockspace of a VG failed (retried by the next rescan)', {
          vg: vg.name,
          error,
        });
      })
      .finally(() => {
        entry.joining = undefined;
      });
  }

  /**
   * The device of the VG's lockspace for a join. The metadata is read again first: the lockspace
   * may have moved since this host read it. While a move is recorded, the old place's header
   * says whether it committed (docs/adr/0002-moving-the-lockspace-lv.md, step 8).
   */
  private async openLockspace(entry: VgEntry): Promise<MovableLockspaceDevice> {
    await this.refresh(entry, 'joining its lockspace');
    const vg = entry.vg;
    const record = vg.metadata.lockspaceMove;
    let device: BlockDevice = lockspaceDevice(vg);
    let resolvedEpoch = 0;
    if (record !== undefined) {
      const { mark } = await readLockspaceHeaderRecord(device);
      if (mark.state === 'forwarded' && mark.epoch === record.epoch) {
        await device.close();
        device = lockspaceDevice(vg, record);
        resolvedEpoch = record.epoch;
      }
    }
    const movable = new MovableLockspaceDevice({
      device,
      resolvedEpoch,
      locate: (epoch) => this.locateMovedLockspace(entry, epoch),
      ioTimeoutMs: vg.metadata.ioTimeoutMs,
      clock: systemClock,
      logger: this.logger.child({ component: 'lockspace', vg: vg.name }),
    });
    entry.lockspace = movable;
    return movable;
  }

  /** Where a lockspace move of `epoch` goes, from the VG's metadata (read again for it). */
  private async locateMovedLockspace(entry: VgEntry, epoch: number): Promise<BlockDevice> {
    await this.refresh(entry, 'a lockspace move began');
    const record = entry.vg.metadata.lockspaceMove;
    if (record?.epoch !== epoch) {
      throw new TandemError(
        'LOCKSPACE_MOVED',
        `VG ${entry.vg.name} records no lockspace move ${epoch} (${record === undefined ? 'none' : `move ${record.epoch}`})`,
      );
    }
    const missing = new Set(entry.vg.missingPvUuids());
    const unreachable = record.segments.flatMap((segment) =>
      segment.areas.filter((area) => missing.has(area.pvUuid)).map((area) => area.pvUuid),
    );
    if (unreachable.length > 0) {
      // Entering the move would make every renewal fail here: stay out, and the mover aborts.
      throw new TandemError(
        'VG_PARTIAL',
        `the new place of VG ${entry.vg.name}'s lockspace is on PVs this host cannot reach: ${[...new Set(unreachable)].join(', ')}`,
      );
    }
    return lockspaceDevice(entry.vg, record);
  }

  /**
   * Waits (bounded) while this host takes part in a lockspace move of the VG, in which lease
   * writes are refused; lease-taking commands call it first, so that they wait a move's few
   * seconds out instead of failing with LOCKSPACE_MOVING.
   */
  async whenLockspaceSettled(entry: VgEntry, signal?: AbortSignal): Promise<void> {
    const boundMs = 16 * entry.vg.metadata.ioTimeoutMs;
    const startedMs = performance.now();
    while (entry.lockspace?.moving() !== undefined && performance.now() - startedMs < boundMs) {
      await systemClock.sleep(entry.vg.metadata.ioTimeoutMs / 4, signal);
    }
  }

  /** Leaves a VG's lockspace and forgets the VG (removed, here or elsewhere). */
  async forgetVg(entry: VgEntry, reason: string): Promise<void> {
    if (!this.entries.delete(entry.vg.uuid)) return;
    this.logger.info('VG forgotten', { vg: entry.vg.name, reason });
    await entry.joining?.catch(() => undefined);
    await entry.member?.stop().catch(() => undefined);
    entry.member = undefined;
    this.emit({ kind: 'vg-removed', vgUuid: entry.vg.uuid, reason });
  }

  /** After this host committed a change: effects here, then tell every peer. */
  async committed(entry: VgEntry): Promise<void> {
    await this.metadataChanged(entry, 'here');
    this.notifier.notify(this.peerAddresses(), {
      vgUuid: entry.vg.uuid,
      seqno: entry.vg.metadata.seqno,
      pvPaths: entry.vg.pvHandles().map((handle) => handle.path),
    });
  }

  /** NotifyVgChanged from a peer: re-read a known VG, or scan for a new one. */
  async notified(vgUuid: string, seqno: number, pvPaths: readonly string[]): Promise<void> {
    const entry = this.entries.get(vgUuid);
    if (entry === undefined) {
      await this.rescan(pvPaths.filter((pvPath) => pvPath !== ''));
      return;
    }
    if (seqno <= entry.vg.metadata.seqno) return;
    await this.refresh(entry, 'push');
  }

  /** Re-reads a VG's metadata; applies the effects if it changed. */
  async refresh(entry: VgEntry, why: string): Promise<void> {
    const before = entry.vg.metadata.seqno;
    if (!(await entry.vg.refresh())) return;
    this.logger.debug('VG re-read', {
      vg: entry.vg.name,
      why,
      from: before,
      to: entry.vg.metadata.seqno,
    });
    await this.metadataChanged(entry, 'elsewhere');
  }

  private async metadataChanged(entry: VgEntry, where: 'here' | 'elsewhere'): Promise<void> {
    if (entry.vg.metadata.removing === true && where === 'elsewhere') {
      // vg remove on some host waits for every host to leave before it wipes the PVs.
      await this.forgetVg(entry, 'vg remove runs');
      return;
    }
    if (entry.vg.metadata.pvs.length > 0) {
      for (const dropped of entry.vg.dropUnlistedHandles()) {
        this.logger.info('PV left the VG', { vg: entry.vg.name, path: dropped.path });
      }
    }
    await this.options.onMetadataChanged?.(entry).catch((error: unknown) => {
      this.logger.error('applying a VG change on this host failed', { vg: entry.vg.name, error });
    });
    this.emit({ kind: 'vg-changed', vgUuid: entry.vg.uuid });
  }

  /** Every peer address known from the joined lockspaces, and the extra peers. */
  peerAddresses(): string[] {
    const addresses = new Set(this.options.extraPeers());
    for (const entry of this.entries.values()) {
      if (entry.member === undefined) continue;
      try {
        for (const host of entry.member.hosts().hosts()) {
          if (!host.self && host.address !== '' && host.state !== 'left')
            addresses.add(host.address);
        }
      } catch {
        // Not joined any more: its peers are unknown here.
      }
    }
    addresses.delete(this.options.address);
    return [...addresses];
  }

  private schedulePoll(): void {
    if (this.stopped) return;
    const intervals = this.list().map((entry) => entry.vg.metadata.ioTimeoutMs);
    const delayMs = Math.max(50, Math.min(2_000, ...intervals));
    this.pollTimer = setTimeout(() => {
      void this.pollOnce().finally(() => this.schedulePoll());
    }, delayMs);
  }

  /** Reads each joined VG's lock value block; a newer seqno makes the VG be re-read. */
  private async pollOnce(): Promise<void> {
    if (this.polling) return;
    this.polling = true;
    try {
      for (const entry of this.list()) {
        if (entry.member === undefined) continue;
        try {
          const lock = await entry.member.locks().inspect(vgLockName);
          const seqno = decodeSeqnoValue(lock.value);
          if (seqno !== undefined && seqno > entry.vg.metadata.seqno)
            await this.refresh(entry, 'poll');
        } catch (error) {
          if (!isTandemError(error) || error.code !== 'NOT_FOUND') {
            this.logger.debug('polling the VG lock failed', { vg: entry.vg.name, error });
          }
        }
      }
    } finally {
      this.polling = false;
    }
  }

  private async candidatePaths(): Promise<string[]> {
    const found = new Set(this.knownPaths);
    const vgDir = this.options.vgDir;
    if (vgDir !== undefined) {
      const names = await fs.readdir(vgDir).catch((error: unknown) => {
        this.logger.warn('cannot read the VG directory', { vgDir, error });
        return [] as string[];
      });
      for (const name of names.sort()) {
        if (name.startsWith('.')) continue;
        const full = path.resolve(vgDir, name);
        const stats = await fs.stat(full).catch(() => undefined);
        if (stats !== undefined && (stats.isFile() || stats.isBlockDevice())) found.add(full);
      }
    }
    return [...found];
  }

  private async loadKnownPaths(): Promise<void> {
    const file = path.join(this.options.dataDir, knownPathsFile);
    const text = await fs.readFile(file, 'utf8').catch(() => undefined);
    if (text === undefined) return;
    try {
      const parsed: unknown = JSON.parse(text);
      if (!Array.isArray(parsed)) throw new Error('not a list');
      for (const item of parsed) if (typeof item === 'string') this.knownPaths.add(item);
    } catch (error) {
      this.logger.warn('ignoring an unreadable list of known PV paths', { file, error });
    }
  }

  private async saveKnownPaths(): Promise<void> {
    const file = path.join(this.options.dataDir, knownPathsFile);
    const temporary = `${file}.tmp`;
    await fs.writeFile(temporary, JSON.stringify([...this.knownPaths].sort(), null, 2));
    await fs.rename(temporary, file);
  }

  /** Leaves every lockspace (releasing every lease) and closes every device. */
  async stop(): Promise<void> {
    this.stopped = true;
    clearInterval(this.rescanTimer);
    clearTimeout(this.pollTimer);
    await this.scanning?.catch(() => undefined);
    for (const entry of this.entries.values()) {
      await entry.joining?.catch(() => undefined);
      await entry.member?.stop().catch((error: unknown) => {
        this.logger.warn('leaving a VG lockspace failed', { vg: entry.vg.name, error });
      });
    }
    this.entries.clear();
    this.notifier.close();
    for (const device of this.devices.values()) await device.close().catch(() => undefined);
    this.devices.clear();
  }
}
