/**
 * The VG name lock: one cluster-wide lease that serialises VG names, so that two hosts never make
 * (`vg create`) or rename to (`vg rename`) the same name at the same moment. lvmlockd keeps its
 * global lock (GL) for this; the PV claims (src/clvm/pv-claim.ts) serialise only claims of the
 * same PVs, so two creates on different PVs would both succeed and leave two VGs of one name.
 *
 * Where the lease (resource `vg-names`) lives, in this order:
 *   - the global lockspace, when tandemd joined one (`--lockspace PATH`);
 *   - the lockspace of the VG this host knows with the smallest (createdWallMs, uuid), not being
 *     removed. Hosts that see the same VGs pick the same one; hosts that see different sets may
 *     pick different ones and then race as before (docs/clvm.md): the global lockspace avoids it;
 *   - nowhere, when this host knows no VG: the first VG of a cluster is made without it, as
 *     with lvmlockd, whose global lock needs a lockspace too.
 *
 * Holding it (`hold`): rescan and re-read the known VGs (only without a global lockspace: the
 * choice is made on a fresh view), take the lease exclusive (waiting up to the VG lock's wait),
 * rescan and re-read again (a VG made or renamed by the previous holder is committed to its PVs
 * before that holder released the lease, so it is seen now), run the work (its name check), and
 * release the lease, also when the work fails.
 */
import { TandemError, isTandemError } from '../errors.js';
import type { VgMetadata } from '../clvm/types.js';
import { vgLockWaitMsDefault } from '../clvm/volume-group.js';
import type { LockService } from '../locking/types.js';
import type { Logger } from '../log.js';
import { describeHolders } from './lv-activations.js';
import type { VgEntry } from './volume-host.js';

/** The lease's resource name, in the global lockspace or in the chosen VG's lockspace. */
export const vgNamesLockName = 'vg-names';

/** What the name lock needs of the VolumeHost (a narrow view, so that tests can fake it). */
export interface NameLockHost {
  rescan(): Promise<void>;
  list(): VgEntry[];
  refresh(entry: VgEntry, why: string): Promise<void>;
  locksOf(entry: VgEntry): LockService;
  whenLockspaceSettled(entry: VgEntry): Promise<void>;
}

export type NameLockCandidate = Pick<VgMetadata, 'uuid' | 'createdWallMs' | 'removing'>;

/**
 * The VG whose lockspace holds the name lock without a global lockspace: the smallest
 * (createdWallMs, uuid) of those not being removed (their hosts leave the lockspace).
 */
export function nameLockVgOf<T extends NameLockCandidate>(vgs: readonly T[]): T | undefined {
  let chosen: T | undefined;
  for (const vg of vgs) {
    if (vg.removing === true) continue;
    const earlier =
      chosen === undefined ||
      vg.createdWallMs < chosen.createdWallMs ||
      (vg.createdWallMs === chosen.createdWallMs && vg.uuid < chosen.uuid);
    if (earlier) chosen = vg;
  }
  return chosen;
}

/** Refuses a name that a VG this host knows already has. */
export function checkVgNameFree(entries: readonly VgEntry[], name: string): void {
  const taken = entries.find((entry) => entry.vg.name === name);
  if (taken === undefined) return;
  const metadata = taken.vg.metadata;
  throw new TandemError(
    'VG_EXISTS',
    `a VG named ${name} exists (uuid ${metadata.uuid}, last change on ${metadata.updatedBy || '?'}: ${metadata.lastChange || '?'})`,
  );
}

interface NameLockPlace {
  readonly locks: LockService;
  /** For messages: "the global lockspace", "the lockspace of VG vg0". */
  readonly where: string;
}

export class VgNameLock {
  constructor(
    private readonly parts: {
      host: () => NameLockHost;
      /** The global lockspace's lock service; undefined without --lockspace. */
      globalLocks: () => LockService | undefined;
      logger: Logger;
      waitMs?: number;
    },
  ) {}

  /** Runs `work` under the name lock (the top of this file); `what` names it in messages. */
  async hold<T>(what: string, work: () => Promise<T>): Promise<T> {
    const global = this.parts.globalLocks();
    if (global === undefined) await this.reread();
    const place =
      global === undefined
        ? await this.vgPlace(what)
        : { locks: global, where: 'the global lockspace' };
    if (place === undefined) {
      this.parts.logger.info('no lockspace for the VG name lock: going on without it', { what });
      return work();
    }
    await this.acquire(place, what);
    try {
      await this.reread();
      return await work();
    } finally {
      await place.locks.release(vgNamesLockName).catch((error: unknown) => {
        this.parts.logger.warn('releasing the VG name lock failed', {
          what,
          where: place.where,
          error,
        });
      });
    }
  }

  /** The chosen VG's lockspace, once this host joined it; undefined when it knows no VG. */
  private async vgPlace(what: string): Promise<NameLockPlace | undefined> {
    const host = this.parts.host();
    const entries = host.list();
    const chosen = nameLockVgOf(entries.map((entry) => entry.vg.metadata));
    const entry = entries.find((candidate) => candidate.vg.uuid === chosen?.uuid);
    if (entry === undefined) return undefined;
    await entry.joining;
    const where = `the lockspace of VG ${entry.vg.name}`;
    try {
      const locks = host.locksOf(entry);
      await host.whenLockspaceSettled(entry);
      return { locks, where };
    } catch (error) {
      if (!isTandemError(error)) throw error;
      throw new TandemError(
        error.code,
        `${what}: the VG name lock lives in ${where} (the oldest VG this host knows; no --lockspace): ${error.message}`,
        { cause: error },
      );
    }
  }

  private async acquire(place: NameLockPlace, what: string): Promise<void> {
    const waitMs = this.parts.waitMs ?? vgLockWaitMsDefault;
    const startedMs = performance.now();
    try {
      await place.locks.acquire(vgNamesLockName, { mode: 'ex', waitMs });
    } catch (error) {
      if (!isTandemError(error) || (error.code !== 'LOCK_TIMEOUT' && error.code !== 'LOCK_HELD'))
        throw error;
      const holder = await place.locks.inspect(vgNamesLockName).catch(() => undefined);
      throw new TandemError(
        'LOCK_TIMEOUT',
        `${what}: the VG name lock (${vgNamesLockName} in ${place.where}) is held by ${holder === undefined ? 'another host' : describeHolders(holder)}; not granted within ${waitMs} ms`,
        { cause: error },
      );
    }
    this.parts.logger.info('VG name lock taken', {
      what,
      where: place.where,
      waitedMs: Math.round(performance.now() - startedMs),
    });
  }

  /** Finds VGs made elsewhere (rescan) and names changed elsewhere (re-read of each VG). */
  private async reread(): Promise<void> {
    const host = this.parts.host();
    await host.rescan();
    for (const entry of host.list()) {
      await host.refresh(entry, 'VG name check').catch((error: unknown) => {
        this.parts.logger.warn(
          'cannot re-read a VG for the VG name check: its last name read is used',
          {
            vg: entry.vg.name,
            error,
          },
        );
      });
    }
  }
}
