/**
 * Metadata changes of a clustered VG: how long an LV create takes as the VG fills up, and how
 * long another host takes to see it.
 */
import { openFileDevice } from '../src/disk/file-device.js';
import { encodeVgMetadata } from '../src/clvm/metadata-codec.js';
import { readVgMetadata, scanDevices } from '../src/clvm/metadata-store.js';
import { waitFor } from '../test/integration/helpers/tools.js';
import type { VolumesApi } from './clvm-api.js';
import { type Row, latencySummary, ms, ratio } from './clvm-report.js';
import { median } from './stats.js';

const mebibyte = 1024 * 1024;
/** Every LV of these benchmarks is 4 MiB: one extent. */
const smallLvBytes = 4 * mebibyte;
/** The targets. */
const createMedianTargetMs = 50;
const createTargetLvCount = 1000;
const propagationMedianTargetMs = 100;
/** A change not seen on the other host within this is a failure, not a slow sample. */
const propagationTimeoutMs = 10_000;

export interface CreateLevel {
  /** LVs in the VG (besides the hidden lockspace LV) before the first measured create. */
  readonly lvCount: number;
  /** Size of the encoded metadata body at `lvCount` LVs. */
  readonly metadataBytes: number;
  readonly latenciesMs: readonly number[];
}

/** The encoded size of VG `vgName`'s current metadata, read from its PV files (read-only). */
export async function metadataBodyBytes(
  pvPaths: readonly string[],
  vgName: string,
): Promise<number> {
  const devices = await Promise.all(
    pvPaths.map(async (pvPath) => ({
      path: pvPath,
      device: await openFileDevice(pvPath, { readOnly: true }),
    })),
  );
  try {
    const scanned = await scanDevices(devices);
    for (const handles of scanned.byVg.values()) {
      const { metadata } = await readVgMetadata(handles);
      if (metadata.name === vgName) return encodeVgMetadata(metadata).length;
    }
    throw new Error(`no VG ${vgName} on ${pvPaths.join(', ')}`);
  } finally {
    await Promise.all(devices.map(({ device }) => device.close()));
  }
}

/**
 * Fills VG `vgName` (empty of LVs) with 4 MiB LVs up to each level in turn, and times
 * `samplesPerLevel` CreateLv calls (back to back) at each: the VG then holds from `level` to
 * `level + samplesPerLevel - 1` LVs during the measured creates.
 */
export async function measureCreateLatency(
  api: VolumesApi,
  vgName: string,
  pvPaths: readonly string[],
  levels: readonly number[],
  samplesPerLevel: number,
): Promise<CreateLevel[]> {
  let lvCount = 0;
  const create = async (): Promise<number> => {
    const name = `lv${String(lvCount).padStart(5, '0')}`;
    const startedMs = performance.now();
    await api.createLv({ vgName, name, sizeBytes: String(smallLvBytes) });
    lvCount += 1;
    return performance.now() - startedMs;
  };
  const results: CreateLevel[] = [];
  for (const level of levels) {
    const fillStartedMs = performance.now();
    const fillCount = Math.max(0, level - lvCount);
    for (let index = 0; index < fillCount; index += 1) await create();
    const metadataBytes = await metadataBodyBytes(pvPaths, vgName);
    const before = lvCount;
    const latenciesMs: number[] = [];
    for (let index = 0; index < samplesPerLevel; index += 1) latenciesMs.push(await create());
    results.push({ lvCount: before, metadataBytes, latenciesMs });
    console.error(
      `  ${before} LVs (metadata ${(metadataBytes / 1024).toFixed(1)} KiB; filled ${fillCount} ` +
        `in ${ms(performance.now() - fillStartedMs)}): create median ${ms(median(latenciesMs))}`,
    );
  }
  return results;
}

export function createRows(levels: readonly CreateLevel[], samplesPerLevel: number): Row[] {
  const rows: Row[] = levels.map((level) => {
    const atTarget = level.lvCount === createTargetLvCount;
    return {
      figure:
        `CreateLv with ${level.lvCount}..${level.lvCount + samplesPerLevel - 1} LVs ` +
        `(metadata ${(level.metadataBytes / 1024).toFixed(1)} KiB)`,
      measured: latencySummary(level.latenciesMs),
      target: atTarget ? `median ≤ ${createMedianTargetMs} ms` : '-',
      pass: atTarget ? median(level.latenciesMs) <= createMedianTargetMs : undefined,
    };
  });
  const first = levels[0];
  const last = levels[levels.length - 1];
  if (first !== undefined && last !== undefined && last !== first) {
    const latencyGrowth = median(last.latenciesMs) / median(first.latenciesMs);
    const metadataGrowth = last.metadataBytes / first.metadataBytes;
    rows.push({
      figure: `CreateLv growth, ${first.lvCount} → ${last.lvCount} LVs`,
      measured:
        `median latency ${ratio(latencyGrowth)}; metadata size ${ratio(metadataGrowth)}; ` +
        `LV count ${ratio(last.lvCount / Math.max(1, first.lvCount))}`,
      target: 'latency ratio ≤ metadata size ratio',
      pass: latencyGrowth <= metadataGrowth,
    });
  }
  if (!levels.some((level) => level.lvCount === createTargetLvCount)) {
    rows.push({
      figure: `CreateLv with ${createTargetLvCount} LVs`,
      measured: 'not measured (add 1000 to --levels)',
      target: `median ≤ ${createMedianTargetMs} ms`,
      pass: undefined,
    });
  }
  return rows;
}

interface SeenEvent {
  readonly vgName: string;
  readonly seqno: number;
  readonly atMs: number;
}

export interface Propagation {
  readonly vgName: string;
  readonly lvCount: number;
  /** From A's CreateLv request to B's event. */
  readonly fromRequestMs: readonly number[];
  /** From A's CreateLv reply to B's event (may be negative: A pushes before it replies). */
  readonly fromReplyMs: readonly number[];
}

/**
 * Creates LVs on `a` one at a time and takes, for each, the arrival time of the first event of
 * `b`'s WatchVolumes stream that shows the VG at the new seqno (or later); then checks that `b`'s
 * ListLvs shows the LV. A pause of 20-50 ms between samples lets each push settle.
 */
export async function measurePropagation(
  a: VolumesApi,
  b: VolumesApi,
  vgName: string,
  sampleCount: number,
  namePrefix: string,
): Promise<Propagation> {
  const events: SeenEvent[] = [];
  let snapshotSeen = false;
  let watchError: unknown;
  const controller = new AbortController();
  const watching = b
    .watch((event) => {
      if (event.vg === null || event.vg.name !== vgName) return;
      if (event.snapshot) snapshotSeen = true;
      else if (event.kind === 'VOLUME_EVENT_KIND_VG_CHANGED') {
        events.push({ vgName, seqno: Number(event.vg.seqno), atMs: performance.now() });
      }
    }, controller.signal)
    .catch((error: unknown) => {
      watchError = error;
    });
  const watchAlive = (): void => {
    if (watchError !== undefined) throw new Error('WatchVolumes failed', { cause: watchError });
  };
  const fromRequestMs: number[] = [];
  const fromReplyMs: number[] = [];
  try {
    await waitFor(
      () => {
        watchAlive();
        return snapshotSeen;
      },
      { timeoutMs: 10_000, intervalMs: 10, description: `B's snapshot of ${vgName}` },
    );
    for (let index = 0; index < sampleCount; index += 1) {
      const name = `${namePrefix}${index}`;
      events.length = 0;
      const startedMs = performance.now();
      await a.createLv({ vgName, name, sizeBytes: String(smallLvBytes) });
      const repliedMs = performance.now();
      const seqno = Number((await a.vg(vgName)).seqno);
      let seenMs: number | undefined;
      await waitFor(
        () => {
          watchAlive();
          seenMs = events.find((event) => event.seqno >= seqno)?.atMs;
          return seenMs !== undefined;
        },
        { timeoutMs: propagationTimeoutMs, intervalMs: 1, description: `B to see ${name}` },
      );
      if (seenMs === undefined) throw new Error('assertion: waitFor returned with the event');
      if (!(await b.listLvs(vgName)).some((lv) => lv.name === name)) {
        throw new Error(`B sent the event for seqno ${seqno} but does not list ${vgName}/${name}`);
      }
      fromRequestMs.push(seenMs - startedMs);
      fromReplyMs.push(seenMs - repliedMs);
      await new Promise((resolve) => setTimeout(resolve, 20 + Math.random() * 30));
    }
  } finally {
    controller.abort();
    await watching;
  }
  const lvCount = (await a.vg(vgName)).lvCount;
  return { vgName, lvCount, fromRequestMs, fromReplyMs };
}

export function propagationRows(propagation: Propagation): Row[] {
  const where = `VG ${propagation.vgName}, ${propagation.lvCount} LVs`;
  return [
    {
      figure: `LV seen on B after A's CreateLv reply (${where})`,
      measured: latencySummary(propagation.fromReplyMs),
      target: `median ≤ ${propagationMedianTargetMs} ms`,
      pass: median(propagation.fromReplyMs) <= propagationMedianTargetMs,
    },
    {
      figure: `LV seen on B after A's CreateLv request (${where})`,
      measured: latencySummary(propagation.fromRequestMs),
      target: '- (includes the create)',
      pass: undefined,
    },
  ];
}
