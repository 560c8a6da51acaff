/**
 * The mapping table of a logical volume: its segments resolved to PV devices and byte offsets,
 * sorted by LV byte so that a request finds its segment by binary search.
 *
 * A table is immutable. An LV device swaps whole tables (online resize, the switch at the end of
 * a PV evacuation), so a request keeps the table it started with and never sees half a change.
 *
 * Striped segments: LV byte `b` of a segment of N areas and stripe size S lies in stripe chunk
 * c = floor(b / S), on area c mod N, at row floor(c / N) of that area. Consecutive chunks of one
 * area are consecutive rows, so any LV range covers one contiguous run on each area: requests
 * without data (discard, write zeroes, cache) cost at most N calls whatever their length.
 */
import type { BlockDevice, BlockDeviceCapabilities } from '../disk/block-device.js';
import { TandemError } from '../errors.js';
import { type LvSegment, segmentsPerLvMax, stripesMax } from './types.js';

/** Where a PV lives on this host, or undefined when it is missing (VG partial mode). */
export type PvResolver = (
  pvUuid: string,
) => { readonly device: BlockDevice; readonly dataStartBytes: number } | undefined;

interface MappedArea {
  readonly pvUuid: string;
  readonly device: BlockDevice | undefined;
  /** The byte of the PV device where the area's first extent starts. */
  readonly pvStartBytes: number;
}

interface MappedSegment {
  readonly lvStartBytes: number;
  readonly lvEndBytes: number;
  /** 0 for a linear segment (one area). */
  readonly stripeSizeBytes: number;
  readonly areas: readonly MappedArea[];
}

/** A run of bytes on one PV device. */
export interface PvRange {
  readonly device: BlockDevice;
  readonly pvOffsetBytes: number;
  readonly lengthBytes: number;
}

/** A piece of a data request: `lengthBytes` from `requestOffsetBytes` of the request. */
export interface MappedPiece extends PvRange {
  readonly requestOffsetBytes: number;
}

/**
 * Where one LV byte lands, filled in by `locate`. The LV device reuses one instance on its hot
 * path, so that a request within one piece allocates nothing for its translation.
 */
export class MappedRun {
  pvUuid = '';
  device: BlockDevice | undefined = undefined;
  pvOffsetBytes = 0;
  /** Bytes from the located byte to the end of its run (segment or stripe chunk end). */
  runBytes = 0;

  /** Whether a request of `lengthBytes` from the located byte is one call to `device`. */
  holds(lengthBytes: number, device: BlockDevice): boolean {
    return lengthBytes <= this.runBytes && lengthBytes <= device.maximumIoBytes;
  }
}

/** The geometry of an LV none of whose PVs is present: any request fails DISK_GONE anyway. */
const unknownGeometry = {
  alignmentBytes: 1,
  logicalSectorSizeBytes: 512,
  physicalSectorSizeBytes: 512,
};

function invalid(description: string, message: string, details: Record<string, unknown>) {
  return new TandemError('DISK_INVALID_ARGUMENT', `${description}: ${message}`, { details });
}

/** A byte the table does not map: the caller checked the range, so this is a bug. */
function unmappedError(offsetBytes: number): Error {
  return new Error(`assertion failed: LV byte ${offsetBytes} is not mapped`);
}

export function missingPvError(
  description: string,
  pvUuid: string,
  offsetBytes: number,
  lengthBytes: number,
): TandemError {
  return new TandemError(
    'DISK_GONE',
    `${lengthBytes} bytes at ${offsetBytes} of ${description} map to PV ${pvUuid}, which is missing`,
    { details: { pvUuid, offsetBytes, lengthBytes } },
  );
}

export class LvMappingTable {
  readonly sizeBytes: number;
  /** The distinct PV devices present, in order of first use. */
  readonly devices: readonly BlockDevice[];
  readonly alignmentBytes: number;
  readonly logicalSectorSizeBytes: number;
  readonly physicalSectorSizeBytes: number;
  readonly capabilities: BlockDeviceCapabilities;
  private readonly segments: MappedSegment[] = [];
  /** `segments[index].lvStartBytes`, packed for the binary search. */
  private readonly startBytes: Float64Array;

  constructor(
    private readonly description: string,
    readonly extentSizeBytes: number,
    segments: readonly LvSegment[],
    resolvePv: PvResolver,
  ) {
    if (!Number.isSafeInteger(extentSizeBytes) || extentSizeBytes <= 0) {
      throw invalid(description, `bad extent size ${extentSizeBytes}`, { extentSizeBytes });
    }
    if (segments.length > segmentsPerLvMax) {
      throw invalid(description, `${segments.length} segments exceed ${segmentsPerLvMax}`, {});
    }
    const devices = new Set<BlockDevice>();
    let nextExtent = 0;
    for (const segment of segments) {
      this.segments.push(this.mapSegment(segment, nextExtent, resolvePv, devices));
      nextExtent += segment.extentCount;
    }
    this.sizeBytes = nextExtent * extentSizeBytes;
    this.startBytes = Float64Array.from(this.segments, (segment) => segment.lvStartBytes);
    this.devices = [...devices];
    const geometry = this.devices.length === 0 ? [unknownGeometry] : this.devices;
    this.alignmentBytes = Math.max(...geometry.map((device) => device.alignmentBytes));
    this.logicalSectorSizeBytes = Math.max(...geometry.map((d) => d.logicalSectorSizeBytes));
    this.physicalSectorSizeBytes = Math.max(...geometry.map((d) => d.physicalSectorSizeBytes));
    this.capabilities = combinedCapabilities(this.devices);
    this.checkAlignment();
  }

  private mapSegment(
    segment: LvSegment,
    expectedExtent: number,
    resolvePv: PvResolver,
    devices: Set<BlockDevice>,
  ): MappedSegment {
    const stripeCount = segment.areas.length;
    const details = { lvExtentStart: segment.lvExtentStart, extentCount: segment.extentCount };
    if (segment.lvExtentStart !== expectedExtent) {
      throw invalid(this.description, `segments must be contiguous from extent 0`, details);
    }
    if (
      !Number.isSafeInteger(segment.extentCount) ||
      segment.extentCount <= 0 ||
      stripeCount < 1 ||
      stripeCount > stripesMax ||
      segment.extentCount % stripeCount !== 0
    ) {
      throw invalid(this.description, 'bad segment extent or stripe count', details);
    }
    const areaBytes = (segment.extentCount / stripeCount) * this.extentSizeBytes;
    const stripeSizeBytes = stripeCount === 1 ? 0 : segment.stripeSizeBytes;
    if (stripeCount > 1 && (stripeSizeBytes <= 0 || areaBytes % stripeSizeBytes !== 0)) {
      throw invalid(this.description, `bad stripe size ${stripeSizeBytes}`, details);
    }
    const areas = segment.areas.map((area): MappedArea => {
      const resolved = resolvePv(area.pvUuid);
      const pvStartBytes =
        (resolved?.dataStartBytes ?? 0) + area.pvExtentStart * this.extentSizeBytes;
      if (resolved !== undefined) {
        if (pvStartBytes + areaBytes > resolved.device.sizeBytes) {
          throw invalid(this.description, `an area runs past the end of PV ${area.pvUuid}`, {
            ...details,
            pvUuid: area.pvUuid,
          });
        }
        devices.add(resolved.device);
      }
      return { pvUuid: area.pvUuid, device: resolved?.device, pvStartBytes };
    });
    const lvStartBytes = segment.lvExtentStart * this.extentSizeBytes;
    const lvEndBytes = lvStartBytes + segment.extentCount * this.extentSizeBytes;
    return { lvStartBytes, lvEndBytes, stripeSizeBytes, areas };
  }

  /** Every piece boundary must fall on the LV's alignment, or aligned requests would split badly. */
  private checkAlignment(): void {
    const alignment = this.alignmentBytes;
    const misaligned = (bytes: number) => bytes % alignment !== 0;
    const bad = this.segments.some(
      (segment) =>
        misaligned(segment.stripeSizeBytes) ||
        segment.areas.some((area) => misaligned(area.pvStartBytes)),
    );
    if (misaligned(this.extentSizeBytes) || bad) {
      throw invalid(this.description, `extents and stripes must align to ${alignment} bytes`, {
        alignmentBytes: alignment,
      });
    }
  }

  /** The index of the segment holding LV byte `offsetBytes` (which must be below sizeBytes). */
  private segmentIndexAt(offsetBytes: number): number {
    const startBytes = this.startBytes;
    let low = 0;
    let high = startBytes.length - 1;
    while (low < high) {
      const middle = (low + high + 1) >>> 1;
      if ((startBytes[middle] ?? 0) <= offsetBytes) low = middle;
      else high = middle - 1;
    }
    return low;
  }

  /** Fills `run` with where LV byte `offsetBytes` (below sizeBytes) lands. */
  locate(offsetBytes: number, run: MappedRun): void {
    const segment = this.segments[this.segmentIndexAt(offsetBytes)];
    if (segment === undefined) throw unmappedError(offsetBytes);
    const relativeBytes = offsetBytes - segment.lvStartBytes;
    const stripeSizeBytes = segment.stripeSizeBytes;
    let areaIndex = 0;
    let withinAreaBytes = relativeBytes;
    if (stripeSizeBytes === 0) {
      run.runBytes = segment.lvEndBytes - offsetBytes;
    } else {
      const stripeCount = segment.areas.length;
      const chunkIndex = Math.floor(relativeBytes / stripeSizeBytes);
      const withinChunkBytes = relativeBytes - chunkIndex * stripeSizeBytes;
      areaIndex = chunkIndex % stripeCount;
      withinAreaBytes = Math.floor(chunkIndex / stripeCount) * stripeSizeBytes + withinChunkBytes;
      run.runBytes = stripeSizeBytes - withinChunkBytes;
    }
    const area = segment.areas[areaIndex];
    if (area === undefined) throw unmappedError(offsetBytes);
    run.pvUuid = area.pvUuid;
    run.device = area.device;
    run.pvOffsetBytes = area.pvStartBytes + withinAreaBytes;
  }

  /**
   * The pieces of a request in LV order, split at segment and stripe chunk ends and, when
   * `splitAtDeviceMaximum`, at each PV device's maximumIoBytes. Stops after `piecesMax` pieces
   * (blockStatus may answer for less than asked). Throws DISK_GONE if a piece lies on a missing
   * PV, before the caller issues any I/O.
   */
  pieces(
    offsetBytes: number,
    lengthBytes: number,
    splitAtDeviceMaximum: boolean,
    piecesMax = Number.MAX_SAFE_INTEGER,
  ): MappedPiece[] {
    const pieces: MappedPiece[] = [];
    const run = new MappedRun();
    let doneBytes = 0;
    while (doneBytes < lengthBytes && pieces.length < piecesMax) {
      this.locate(offsetBytes + doneBytes, run);
      const device = run.device;
      if (device === undefined) {
        throw missingPvError(this.description, run.pvUuid, offsetBytes, lengthBytes);
      }
      let stepBytes = Math.min(run.runBytes, lengthBytes - doneBytes);
      if (splitAtDeviceMaximum) stepBytes = Math.min(stepBytes, device.maximumIoBytes);
      pieces.push({
        device,
        pvOffsetBytes: run.pvOffsetBytes,
        lengthBytes: stepBytes,
        requestOffsetBytes: doneBytes,
      });
      doneBytes += stepBytes;
    }
    return pieces;
  }

  /**
   * The PV runs a range covers, in no particular order, for requests without data: one per
   * segment area touched, adjacent runs on one device merged. Throws DISK_GONE as `pieces` does.
   */
  ranges(offsetBytes: number, lengthBytes: number): PvRange[] {
    const ranges: PvRange[] = [];
    const endBytes = offsetBytes + lengthBytes;
    let index = lengthBytes === 0 ? this.segments.length : this.segmentIndexAt(offsetBytes);
    for (; index < this.segments.length; index++) {
      const segment = this.segments[index];
      if (segment === undefined || segment.lvStartBytes >= endBytes) break;
      const startBytes = Math.max(offsetBytes, segment.lvStartBytes);
      const stopBytes = Math.min(endBytes, segment.lvEndBytes);
      for (const range of this.segmentRanges(segment, startBytes, stopBytes)) {
        const last = ranges[ranges.length - 1];
        if (
          last !== undefined &&
          last.device === range.device &&
          last.pvOffsetBytes + last.lengthBytes === range.pvOffsetBytes
        ) {
          ranges[ranges.length - 1] = {
            ...last,
            lengthBytes: last.lengthBytes + range.lengthBytes,
          };
        } else {
          ranges.push(range);
        }
      }
    }
    return ranges;
  }

  /** One run per area of `segment` for LV bytes [startBytes, stopBytes) within it. */
  private segmentRanges(segment: MappedSegment, startBytes: number, stopBytes: number) {
    const first = new MappedRun();
    const last = new MappedRun();
    this.locate(startBytes, first);
    this.locate(stopBytes - 1, last);
    const lengthBytes = stopBytes - startBytes;
    const stripeSizeBytes = segment.stripeSizeBytes;
    if (stripeSizeBytes === 0) {
      if (first.device === undefined) {
        throw missingPvError(this.description, first.pvUuid, startBytes, lengthBytes);
      }
      return [{ device: first.device, pvOffsetBytes: first.pvOffsetBytes, lengthBytes }];
    }
    const stripeCount = segment.areas.length;
    const firstChunk = Math.floor((startBytes - segment.lvStartBytes) / stripeSizeBytes);
    const lastChunk = Math.floor((stopBytes - 1 - segment.lvStartBytes) / stripeSizeBytes);
    const ranges: PvRange[] = [];
    for (const [areaIndex, area] of segment.areas.entries()) {
      // The first and the last chunk of the range that lie on this area.
      const from =
        firstChunk + ((areaIndex - (firstChunk % stripeCount) + stripeCount) % stripeCount);
      const to = lastChunk - (((lastChunk % stripeCount) - areaIndex + stripeCount) % stripeCount);
      if (from > to) continue;
      if (area.device === undefined) {
        throw missingPvError(this.description, area.pvUuid, startBytes, lengthBytes);
      }
      const rowStartBytes = (chunk: number) =>
        area.pvStartBytes + Math.floor(chunk / stripeCount) * stripeSizeBytes;
      const pvStartBytes = from === firstChunk ? first.pvOffsetBytes : rowStartBytes(from);
      const pvEndBytes =
        to === lastChunk ? last.pvOffsetBytes + 1 : rowStartBytes(to) + stripeSizeBytes;
      ranges.push({
        device: area.device,
        pvOffsetBytes: pvStartBytes,
        lengthBytes: pvEndBytes - pvStartBytes,
      });
    }
    return ranges;
  }
}

/**
 * What an LV can promise is what all its PVs can (discard, fast zero, block status, coherence
 * across connections); it needs a flush as soon as one PV has a cache, and honours FUA when
 * every PV with a cache does.
 */
function combinedCapabilities(devices: readonly BlockDevice[]): BlockDeviceCapabilities {
  const all = (pick: (capabilities: BlockDeviceCapabilities) => boolean) =>
    devices.length > 0 && devices.every((device) => pick(device.capabilities));
  const cached = devices.filter((device) => device.capabilities.flush);
  return {
    flush: cached.length > 0,
    fua: cached.length > 0 && cached.every((device) => device.capabilities.fua),
    discard: all((capabilities) => capabilities.discard),
    fastZero: all((capabilities) => capabilities.fastZero),
    blockStatus: all((capabilities) => capabilities.blockStatus),
    consistentAcrossConnections: all((capabilities) => capabilities.consistentAcrossConnections),
  };
}
