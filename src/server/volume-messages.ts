/**
 * PVs, VGs and LVs as the volumes API sends them (proto/tandem/v1/volumes.proto), and the
 * checks of the request fields every volume call shares.
 */
import { TandemError } from '../errors.js';
import type { Lv } from '../generated/tandem/v1/Lv.js';
import type { LvSegment as LvSegmentMessage } from '../generated/tandem/v1/LvSegment.js';
import type { Pv } from '../generated/tandem/v1/Pv.js';
import type { Vg } from '../generated/tandem/v1/Vg.js';
import type { LvRecord, LvSegment, VgMetadata, AllocationPolicy } from '../clvm/types.js';
import { lvExtentCount, pvUsedExtents, vgExtentTotals } from '../clvm/vg-queries.js';
import type { LockInfo } from '../locking/types.js';
import { type LvActivations, lvLeaseName } from './lv-activations.js';
import type { VgEntry, VolumeHost } from './volume-host.js';

/** A uint64 request field (a decimal string on the wire) as a safe integer. */
export function uint64Field(value: string | number | undefined, what: string): number {
  const parsed = typeof value === 'number' ? value : Number(value ?? '0');
  if (!Number.isSafeInteger(parsed) || parsed < 0) {
    throw new TandemError(
      'INVALID_ARGUMENT',
      `${what} must be an integer in 0..2^53-1, not ${String(value)}`,
    );
  }
  return parsed;
}

export function requiredText(value: string | undefined, what: string): string {
  if (value === undefined || value === '')
    throw new TandemError('INVALID_ARGUMENT', `${what} is required`);
  return value;
}

export function allocationPolicyField(value: string | undefined): AllocationPolicy {
  if (value === undefined || value === '' || value === 'normal') return 'normal';
  if (value === 'contiguous' || value === 'anywhere') return value;
  throw new TandemError(
    'INVALID_ARGUMENT',
    `allocation policy must be normal, contiguous or anywhere, not '${value}'`,
  );
}

export function vgMessage(entry: VgEntry): Vg {
  const metadata = entry.vg.metadata;
  const totals = vgExtentTotals(metadata);
  const membership = entry.member?.info();
  return {
    name: metadata.name,
    uuid: metadata.uuid,
    seqno: String(metadata.seqno),
    extentSizeBytes: String(metadata.extentSizeBytes),
    pvCount: metadata.pvs.length,
    lvCount: metadata.lvs.filter((lv) => !lv.hidden).length,
    sizeBytes: String(totals.extentCount * metadata.extentSizeBytes),
    freeBytes: String(totals.freeExtentCount * metadata.extentSizeBytes),
    extentCount: totals.extentCount,
    freeExtentCount: totals.freeExtentCount,
    maxHosts: metadata.maxHosts,
    partial: entry.vg.missingPvUuids().length > 0,
    joined: membership !== undefined && membership.hostId > 0,
    hostId: membership?.hostId ?? 0,
    lastChange: metadata.lastChange,
    updatedBy: metadata.updatedBy,
    moving: metadata.move !== undefined,
    maxLvs: metadata.maxLvs ?? 0,
  };
}

export function pvMessages(host: VolumeHost): Pv[] {
  const pvs: Pv[] = [];
  for (const entry of host.list()) {
    const metadata = entry.vg.metadata;
    for (const pv of metadata.pvs) {
      const handle = entry.vg.handleFor(pv.uuid);
      pvs.push({
        path: handle?.path ?? pv.deviceHint,
        uuid: pv.uuid,
        sizeBytes: String(pv.sizeBytes),
        vgName: metadata.name,
        vgUuid: metadata.uuid,
        extentCount: pv.extentCount,
        freeExtentCount: pv.extentCount - pvUsedExtents(metadata, pv.uuid),
        missing: handle === undefined,
        allocatable: pv.allocatable,
      });
    }
  }
  for (const handle of host.free()) {
    pvs.push({
      path: handle.path,
      uuid: handle.label.pvUuid,
      sizeBytes: String(handle.label.deviceSizeBytes),
      vgName: '',
      vgUuid: '',
      extentCount: 0,
      freeExtentCount: 0,
      missing: false,
      // Nothing is allocated on a PV until it is in a VG (LVM's pv_attr shows no 'a' either).
      allocatable: false,
    });
  }
  return pvs.sort((a, b) => (a.path ?? '').localeCompare(b.path ?? ''));
}

function segmentMessage(
  host: VolumeHost,
  metadata: VgMetadata,
  segment: LvSegment,
): LvSegmentMessage {
  const perArea = segment.extentCount / segment.areas.length;
  return {
    lvExtentStart: segment.lvExtentStart,
    extentCount: segment.extentCount,
    type: segment.areas.length > 1 ? 'striped' : 'linear',
    stripeCount: segment.areas.length,
    stripeSizeBytes: String(segment.stripeSizeBytes),
    areas: segment.areas.map((area) => {
      const where =
        host.pathOf(area.pvUuid) ??
        metadata.pvs.find((pv) => pv.uuid === area.pvUuid)?.deviceHint ??
        area.pvUuid;
      return `${where}:${area.pvExtentStart}-${area.pvExtentStart + perArea - 1}`;
    }),
  };
}

/** One LV; `locks` is the VG lockspace's lock list (who has it active), when known. */
export function lvMessage(
  host: VolumeHost,
  activations: LvActivations,
  entry: VgEntry,
  lv: LvRecord,
  locks: ReadonlyMap<string, LockInfo>,
): Lv {
  const metadata = entry.vg.metadata;
  const lock = lv.leaseSlot === undefined ? undefined : locks.get(lvLeaseName(lv));
  const activeOn =
    lock === undefined || lock.mode === 'free'
      ? []
      : lock.mode === 'ex'
        ? [lock.owner?.hostName ?? '?']
        : lock.sharedOwners.map((owner) => owner.hostName || '?');
  const missing = new Set(entry.vg.missingPvUuids());
  const extentCount = lvExtentCount(lv);
  return {
    name: lv.name,
    vgName: metadata.name,
    uuid: lv.uuid,
    sizeBytes: String(extentCount * metadata.extentSizeBytes),
    extentCount,
    tags: [...lv.tags],
    segments: lv.segments.map((segment) => segmentMessage(host, metadata, segment)),
    activeOn,
    activeMode:
      lock === undefined || lock.mode === 'free' ? '' : lock.mode === 'ex' ? 'exclusive' : 'shared',
    exportName: activations.activeHere(lv.uuid)?.exportName ?? '',
    partial: lv.segments.some((segment) => segment.areas.some((area) => missing.has(area.pvUuid))),
  };
}
