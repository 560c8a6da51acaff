/**
 * The volume group as tandem keeps it: the in-memory shape of the VG metadata that every PV of
 * the VG carries in its metadata areas (encoded with proto/tandem/v1/vg_metadata.proto by
 * metadata-codec.ts), and the limits that bound it.
 *
 * Units: extents are counted in physical extents (PE) of the VG's extent size; byte fields end in
 * `Bytes`. An LV's logical extents (LE) map to PEs through its segments.
 */

/** The version of the VG metadata body; a reader refuses a newer one. */
export const vgMetadataVersion = 1;
/**
 * The body version written while a lockspace move is recorded. A tandem from before the record
 * existed would ignore it: allocate its reserved extents and drop it when it commits. Such a
 * reader refuses version 2 instead (MDA_VERSION), and only while the record exists.
 */
export const vgMetadataVersionLockspaceMove = 2;

/** Named limits (STYLE: everything has a limit). */
export const pvsPerVgMax = 256;
export const lvsPerVgMax = 4096;
export const segmentsPerLvMax = 1024;
export const stripesMax = 32;
export const tagsPerLvMax = 32;
export const tagBytesMax = 128;
export const nameBytesMax = 64;
/** VG, LV names: LVM's character set; no leading '-', not '.' or '..'. */
export const namePattern = /^[A-Za-z0-9+_.][A-Za-z0-9+_.-]{0,63}$/;
export const extentSizeBytesDefault = 4 * 1024 * 1024;
export const extentSizeBytesMin = 1024 * 1024;
export const extentSizeBytesMax = 1024 * 1024 * 1024;
/** Striped segments: the chunk written to one PV before moving to the next. */
export const stripeSizeBytesDefault = 64 * 1024;
/** The hidden LV that holds the VG's lockspace (as lvmlockd's `lvmlock`). */
export const lockspaceLvName = '[lockspace]';
/** A host name as the lockspace's host slots hold it (heartbeat-store's hostNameBytesMax). */
export const hostNameBytesMax = 64;

export type AllocationPolicy = 'normal' | 'contiguous' | 'anywhere';

export interface PvRecord {
  /** The PV's UUID, as written in its label. */
  readonly uuid: string;
  /** Where the PV was last seen (a path or an nbd:// URI): a hint, the label is the truth. */
  readonly deviceHint: string;
  readonly sizeBytes: number;
  /** The first byte of the data area (1 MiB aligned). */
  readonly dataStartBytes: number;
  /** Physical extents in the data area. */
  readonly extentCount: number;
  /**
   * Whether new extents may be allocated on the PV (LVM's pvchange -x y|n). pv move clears it
   * on its source PV; extents already on a PV that is not allocatable stay where they are.
   */
  readonly allocatable: boolean;
}

/** One PV run of a segment: `extentCount / stripes` PEs from `pvExtentStart` on `pvUuid`. */
export interface SegmentArea {
  readonly pvUuid: string;
  readonly pvExtentStart: number;
}

export interface LvSegment {
  /** The first logical extent this segment maps. */
  readonly lvExtentStart: number;
  /** Logical extents mapped; a multiple of `areas.length`. */
  readonly extentCount: number;
  /** 0 for linear (one area); else the stripe chunk in bytes (areas.length stripes). */
  readonly stripeSizeBytes: number;
  readonly areas: readonly SegmentArea[];
}

export interface LvRecord {
  readonly uuid: string;
  readonly name: string;
  /** Hidden LVs (the lockspace) are not listed, activated or changed by users. */
  readonly hidden: boolean;
  readonly tags: readonly string[];
  readonly createdWallMs: number;
  /** Ordered by lvExtentStart, contiguous from 0. */
  readonly segments: readonly LvSegment[];
  /**
   * The LV's lease is `lv:<leaseSlot>` in the VG's lockspace: a slot no other LV of the VG uses
   * (the lowest free one at create), so the lease areas of removed LVs are used again. Absent
   * for hidden LVs (they have no lease).
   */
  readonly leaseSlot?: number;
}

/**
 * A PV evacuation in progress (pv move): the step being copied now. The step's source run is
 * mirrored to the target until the copy ends, then a commit points the segment at the target.
 * A step interrupted by a crash is copied again from its start.
 */
export interface PvMoveRecord {
  readonly sourcePvUuid: string;
  /** The PVs the extents may go to; empty means any other PV of the VG. */
  readonly targetPvUuids: readonly string[];
  readonly lvUuid: string;
  /** The logical extents of the step (a run on the source PV within one linear segment). */
  readonly lvExtentStart: number;
  readonly extentCount: number;
  readonly targetPvUuid: string;
  readonly targetPvExtentStart: number;
  /** Extents moved off the source PV so far, for progress. */
  readonly movedExtentCount: number;
  readonly totalExtentCount: number;
}

/**
 * A move of the hidden lockspace LV in progress (pv move; see
 * docs/adr/0002-moving-the-lockspace-lv.md). lockspace-move-plan.ts begins, finishes and aborts it.
 */
export interface LockspaceMoveRecord {
  /** The move epoch: the seqno of the commit that began the move; the lockspace header names it. */
  readonly epoch: number;
  /** The PV being emptied. */
  readonly sourcePvUuid: string;
  /**
   * Where the lockspace LV goes: segments covering all of its logical extents (same count),
   * contiguous from LE 0, like an LV's.
   */
  readonly segments: readonly LvSegment[];
  /**
   * The host running the move: its host id and generation in the VG's lockspace, and its name
   * (for messages).
   */
  readonly moverHostId: number;
  readonly moverGeneration: number;
  readonly moverHostName: string;
}

export interface VgMetadata {
  readonly version: number;
  readonly uuid: string;
  readonly name: string;
  /** Increases by one with every commit. */
  readonly seqno: number;
  readonly extentSizeBytes: number;
  /** The lockspace geometry and timings (the lockspace header is the truth once formatted). */
  readonly maxHosts: number;
  readonly ioTimeoutMs: number;
  readonly createdWallMs: number;
  /** Who made the last change, and when (its wall clock): for people. */
  readonly updatedWallMs: number;
  readonly updatedBy: string;
  /** A short text of what the last change was ("lv create vm1-disk0"). */
  readonly lastChange: string;
  readonly pvs: readonly PvRecord[];
  readonly lvs: readonly LvRecord[];
  /** At most one evacuation at a time. */
  readonly move: PvMoveRecord | undefined;
  /**
   * Absent unless a lockspace move runs (or was interrupted); its segments are reserved extents.
   */
  readonly lockspaceMove?: LockspaceMoveRecord;
  /**
   * Set by `vg remove` before it wipes the PVs: every host leaves the VG's lockspace when it
   * sees it, and the wipe waits for that, so no host heartbeats into space that is free again.
   */
  readonly removing?: boolean;
  /**
   * The visible LVs the lockspace was formatted with lease room for (`vg create --max-lvs`);
   * undefined in metadata written before it was recorded (no limit but lvsPerVgMax then).
   */
  readonly maxLvs?: number;
}
