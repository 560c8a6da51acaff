/**
 * The VG the format and crash tests commit: built from PV labels, so that it fits the devices
 * the test made.
 */
import type { PvLabel } from '../../src/clvm/pv-label.js';
import type { VgMetadata } from '../../src/clvm/types.js';

const mebibyte = 1024 * 1024;
export const vgUuid = '0b7e4c52-8f6a-4d1e-9a3b-5c2d1e0f4a6b';

/** A VG of the given PVs with two LVs: one linear on the first, one striped on the others. */
export function fixture(labels: readonly PvLabel[], seqno: number, extra = ''): VgMetadata {
  const extentSizeBytes = mebibyte;
  const pvUuids = labels.map((label) => label.pvUuid);
  return {
    version: 1,
    uuid: vgUuid,
    name: 'vg0',
    seqno,
    extentSizeBytes,
    maxHosts: 16,
    ioTimeoutMs: 10_000,
    createdWallMs: 1_767_225_600_000,
    updatedWallMs: 1_767_225_600_000 + seqno,
    updatedBy: 'hv-01',
    lastChange: `change ${seqno}${extra}`,
    pvs: labels.map((label, index) => ({
      uuid: label.pvUuid,
      deviceHint: `/dev/test${index}`,
      sizeBytes: label.deviceSizeBytes,
      dataStartBytes: label.dataStartBytes,
      extentCount: Math.floor((label.dataEndBytes - label.dataStartBytes) / extentSizeBytes),
      allocatable: true,
    })),
    lvs: [
      {
        uuid: '11111111-1111-4111-8111-111111111111',
        name: 'root',
        hidden: false,
        tags: ['vm:a'],
        createdWallMs: 1_767_225_600_001,
        segments: [
          {
            lvExtentStart: 0,
            extentCount: 2,
            stripeSizeBytes: 0,
            areas: [{ pvUuid: pvUuids[0] ?? '', pvExtentStart: 0 }],
          },
        ],
      },
      {
        uuid: '22222222-2222-4222-8222-222222222222',
        name: 'data',
        hidden: false,
        tags: [],
        createdWallMs: 1_767_225_600_002,
        segments: [
          {
            lvExtentStart: 0,
            extentCount: 2 * Math.max(1, pvUuids.length - 1),
            stripeSizeBytes: 65_536,
            areas: pvUuids.slice(1).map((pvUuid) => ({ pvUuid, pvExtentStart: 2 })),
          },
        ],
      },
    ],
    move: undefined,
  };
}
