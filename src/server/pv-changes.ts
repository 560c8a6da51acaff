/**
 * What the calls that change one PV of a VG share (`pv change`, and `pv move` on its source):
 * which VG holds a PV named by path, and the VG change that sets its allocatable flag.
 *
 * A PV is named by the path this host opened it by, or, for a PV the VG lists but this host
 * cannot open, by the path the metadata last recorded for it.
 */
import { TandemError } from '../errors.js';
import type { VgChange } from '../clvm/volume-group.js';
import { type ChangeContext, setPvAllocatable } from '../clvm/vg-operations.js';
import type { VgEntry, VolumeHost } from './volume-host.js';

export interface VgPv {
  readonly entry: VgEntry;
  readonly pvUuid: string;
}

/** The VG and PV uuid of `pvPath`; PV_NOT_FOUND, or FAILED_PRECONDITION for a PV in no VG. */
export function findVgPv(host: VolumeHost, pvPath: string): VgPv {
  const entries = host.list();
  for (const entry of entries) {
    const handle = entry.vg.pvHandles().find((candidate) => candidate.path === pvPath);
    if (handle !== undefined) return { entry, pvUuid: handle.label.pvUuid };
  }
  for (const entry of entries) {
    const missing = entry.vg.metadata.pvs.find(
      (pv) => pv.deviceHint === pvPath && entry.vg.handleFor(pv.uuid) === undefined,
    );
    if (missing !== undefined) return { entry, pvUuid: missing.uuid };
  }
  if (host.free().some((handle) => handle.path === pvPath)) {
    throw new TandemError(
      'FAILED_PRECONDITION',
      `${pvPath} is a PV in no VG; add it to a VG (vg create, vg extend) first`,
    );
  }
  throw new TandemError('PV_NOT_FOUND', `${pvPath} is not a PV known to this host`);
}

/**
 * The change that sets whether new extents may go to the PV (pvchange -x y|n); it commits
 * nothing when the PV already has that value. `pvName` is for the log.
 */
export function pvAllocatableChange(
  pvName: string,
  pvUuid: string,
  allocatable: boolean,
  context: () => ChangeContext,
): VgChange {
  return {
    description: `pv change ${pvName} allocatable ${allocatable ? 'y' : 'n'}`,
    apply: (current) => setPvAllocatable(current, pvUuid, allocatable, context()),
  };
}
