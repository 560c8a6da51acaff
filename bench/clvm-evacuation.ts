/**
 * PV evacuation (`pv move`): its throughput against a plain sequential copy of as many bytes
 * between two files of the same filesystem (`dd bs=1M conv=notrunc,fsync`; and, to tell the
 * mover's own cost from Node's I/O path, the same copy in Node: 1 MiB read then write, fsync at
 * the end), and the latency a client of the LV being moved sees meanwhile (fio 4 KiB random
 * read/write, queue depth 1).
 *
 * One VG `evac` of three PVs: the first holds the VG's lockspace LV (which cannot be moved
 * online), the LV `data` starts on the second and moves between the second and the third.
 */
import fs from 'node:fs';
import fsPromises from 'node:fs/promises';
import path from 'node:path';
import {
  describeResult,
  makeSparseFile,
  nbdUri,
  runChecked,
  runCommand,
  writeRandomFile,
} from '../test/integration/helpers/tools.js';
import { splitAddress } from '../test/integration/helpers/daemon.js';
import { mirrorChunkBytesDefault } from '../src/clvm/lv-mirror.js';
import type { VolumesApi } from './clvm-api.js';
import { type Row, microseconds, ratio, spread } from './clvm-report.js';
import { median } from './stats.js';

const mebibyte = 1024 * 1024;
const extentBytes = 4 * mebibyte;
/** Room on each PV besides the LV: the lockspace LV and the PV's metadata areas. */
const pvSlackBytes = 512 * mebibyte;
const throughputTargetRatio = 0.8;
/** USER_HZ of /proc/PID/stat: 100 on every Linux architecture tandem runs on. */
const clockTicksPerSecond = 100;
/** Bounds of one move or copy: a generous floor plus 5 MiB/s. */
const transferTimeoutFloorMs = 120_000;
const transferTimeoutMsPerMebibyte = 200;
/** Moves started during one fio run at most (the loop normally stops when fio does). */
const movesPerRunMax = 1_000;

export interface EvacuationSettings {
  readonly lvBytes: number;
  readonly repeatCount: number;
  readonly runtimeSeconds: number;
}

export class EvacuationLv {
  /** tandemd's CPU time during each move, as a share of the move's wall time (1 = one core). */
  readonly moveCpuShares: number[] = [];

  private constructor(
    readonly api: VolumesApi,
    readonly uri: string,
    readonly lvBytes: number,
    /** The PV the LV is on now, and the one it moves to next. */
    private pvs: { current: string; spare: string },
    readonly referenceSource: string,
    readonly referenceCopies: { readonly dd: string; readonly node: string },
  ) {}

  /** VG `evac`, its LV active (exclusive) on `api`'s host and written full of random data. */
  static async create(
    api: VolumesApi,
    pvDirectory: string,
    workDirectory: string,
    lvBytes: number,
  ): Promise<EvacuationLv> {
    const pvPaths = [1, 2, 3].map((index) =>
      makeSparseFile(path.join(pvDirectory, `evac${index}.img`), lvBytes + pvSlackBytes),
    );
    await api.createVg({
      name: 'evac',
      pvPaths,
      extentSizeBytes: String(extentBytes),
      maxHosts: 8,
      ioTimeoutMs: 2_000,
      maxLvs: 16,
    });
    // The PVs not holding the lockspace LV are the two entirely free ones.
    const free = (await api.listPvs())
      .filter((pv) => pv.vgName === 'evac' && pv.freeExtentCount === pv.extentCount)
      .map((pv) => pv.path);
    const [current, spare] = free;
    if (current === undefined || spare === undefined) {
      throw new Error(`VG evac has ${free.length} empty PVs; the move needs two`);
    }
    await api.createLv({
      vgName: 'evac',
      name: 'data',
      sizeBytes: String(lvBytes),
      pvPaths: [current],
      allocationPolicy: 'contiguous',
    });
    const active = await api.activateExclusive('evac', 'data');
    const nbd = splitAddress(active.nbdAddress);
    const uri = nbdUri(nbd.host, nbd.port, active.exportName);
    const referenceSource = path.join(workDirectory, 'reference-source.img');
    const referenceCopies = {
      dd: path.join(workDirectory, 'reference-copy-dd.img'),
      node: path.join(workDirectory, 'reference-copy-node.img'),
    };
    console.error(`  writing ${lvBytes / mebibyte} MiB of random data to the LV and a file…`);
    await writeRandomFile(referenceSource, lvBytes);
    await runChecked('nbdcopy', [referenceSource, uri], { timeoutMs: transferTimeoutMs(lvBytes) });
    return new EvacuationLv(
      api,
      uri,
      lvBytes,
      { current, spare },
      referenceSource,
      referenceCopies,
    );
  }

  /** Moves the LV to the other PV; resolves with the duration. */
  async move(): Promise<number> {
    const { current, spare } = this.pvs;
    const pid = this.api.daemon.process.pid ?? 0;
    const cpuBeforeMs = processCpuMs(pid);
    const startedMs = performance.now();
    const last = await this.api.movePv(current, [spare], transferTimeoutMs(this.lvBytes));
    const durationMs = performance.now() - startedMs;
    this.moveCpuShares.push((processCpuMs(pid) - cpuBeforeMs) / durationMs);
    if (Number(last.movedBytes) !== this.lvBytes) {
      throw new Error(`pv move moved ${last.movedBytes} bytes, not the LV's ${this.lvBytes}`);
    }
    this.pvs = { current: spare, spare: current };
    return durationMs;
  }

  /** One move, dd copy or Node copy of the LV's size; resolves with the duration. */
  transfer(what: 'move' | 'dd' | 'node'): Promise<number> {
    if (what === 'move') return this.move();
    if (what === 'dd') return this.copyWithDd();
    return this.copyWithNode();
  }

  /** Reference: dd, the same number of bytes, file to file, synced at the end. */
  private async copyWithDd(): Promise<number> {
    const result = await runChecked(
      'dd',
      [
        `if=${this.referenceSource}`,
        `of=${this.referenceCopies.dd}`,
        'bs=1M',
        'conv=notrunc,fsync',
        'status=none',
      ],
      { timeoutMs: transferTimeoutMs(this.lvBytes) },
    );
    return result.durationMs;
  }

  /**
   * Reference in this runtime: what the mover's copy does without the VG (1 MiB read, then
   * write, one at a time, through libuv's thread pool; fsync at the end).
   */
  private async copyWithNode(): Promise<number> {
    const startedMs = performance.now();
    const source = await fsPromises.open(this.referenceSource, 'r');
    try {
      const target = await fsPromises.open(
        this.referenceCopies.node,
        fs.constants.O_RDWR | fs.constants.O_CREAT,
      );
      try {
        const chunkBytes = mirrorChunkBytesDefault;
        const buffer = Buffer.allocUnsafe(chunkBytes);
        for (let offsetBytes = 0; offsetBytes < this.lvBytes; offsetBytes += chunkBytes) {
          const length = Math.min(chunkBytes, this.lvBytes - offsetBytes);
          const { bytesRead } = await source.read(buffer, 0, length, offsetBytes);
          if (bytesRead !== length) throw new Error(`short read at ${offsetBytes}`);
          await target.write(buffer, 0, length, offsetBytes);
        }
        await target.sync();
      } finally {
        await target.close();
      }
    } finally {
      await source.close();
    }
    return performance.now() - startedMs;
  }

  /** Writes back every dirty page of the files involved, so that no step pays for another. */
  syncFiles(): void {
    const paths = [
      this.pvs.current,
      this.pvs.spare,
      this.referenceSource,
      this.referenceCopies.dd,
      this.referenceCopies.node,
    ];
    for (const filePath of paths) {
      if (!fs.existsSync(filePath)) continue;
      const descriptor = fs.openSync(filePath, 'r');
      try {
        fs.fsyncSync(descriptor);
      } finally {
        fs.closeSync(descriptor);
      }
    }
  }
}

/** User + system CPU time of a process so far (/proc/PID/stat), in ms. */
function processCpuMs(pid: number): number {
  const stat = fs.readFileSync(`/proc/${pid}/stat`, 'utf8');
  // Fields after the command name, which is in parentheses and may hold spaces.
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const ticks = Number(fields[11]) + Number(fields[12]);
  return (ticks * 1000) / clockTicksPerSecond;
}

function transferTimeoutMs(bytes: number): number {
  return transferTimeoutFloorMs + (bytes / mebibyte) * transferTimeoutMsPerMebibyte;
}

function mebibytesPerSecond(bytes: number, durationMs: number): number {
  return bytes / mebibyte / (durationMs / 1000);
}

/** Ratios against the target with three decimals, so that 0.795 does not read as 0.80. */
function preciseRatio(value: number): string {
  return Number.isFinite(value) ? `${value.toFixed(3)}×` : '-';
}

function throughput(value: number): string {
  return `${value.toFixed(0)} MiB/s`;
}

type Transfer = 'move' | 'dd' | 'node';
const transfers: readonly Transfer[] = ['move', 'dd', 'node'];
type Rates = Record<Transfer, number[]>;

/** Runs each transfer once in `order`, after writing back every dirty page; MiB/s each. */
async function runTransfers(
  lv: EvacuationLv,
  order: readonly Transfer[],
  rates: Rates,
): Promise<string> {
  for (const what of order) {
    lv.syncFiles();
    const durationMs = await lv.transfer(what);
    rates[what].push(mebibytesPerSecond(lv.lvBytes, durationMs));
  }
  const line = transfers.map((what) => `${what} ${throughput(rates[what].at(-1) ?? NaN)}`);
  return line.join(', ');
}

/**
 * Two regimes, because the PVs are sparse files: the first pass writes into blocks the
 * filesystem has not allocated yet (the move's target PV, dd's and the Node copy's new files);
 * then `--repeat` passes overwrite allocated blocks (as a move to a real disk would), in an order
 * that rotates between passes so that none always runs first.
 */
export async function measureEvacuation(
  lv: EvacuationLv,
  settings: EvacuationSettings,
): Promise<Row[]> {
  const first: Rates = { move: [], dd: [], node: [] };
  const overwrite: Rates = { move: [], dd: [], node: [] };
  console.error(`  first write: ${await runTransfers(lv, transfers, first)}`);
  const overwriteCpuStart = lv.moveCpuShares.length;
  for (let repeat = 0; repeat < settings.repeatCount; repeat += 1) {
    const shift = repeat % transfers.length;
    const order = [...transfers.slice(shift), ...transfers.slice(0, shift)];
    const line = await runTransfers(lv, order, overwrite);
    console.error(`  [${repeat + 1}/${settings.repeatCount}] overwrite: ${line}`);
  }
  const size = `${lv.lvBytes / mebibyte} MiB`;
  const whole = (value: number): string => value.toFixed(0);
  const cell = (rates: Rates): string =>
    transfers
      .map((what) => `${what} ${whole(median(rates[what]))}${spread(rates[what], whole)}`)
      .join(', ') + ' MiB/s';
  const versus = (rates: Rates, reference: Transfer): number =>
    median(rates.move) / median(rates[reference]);
  return [
    {
      figure: `${size} into unallocated blocks (n=1): pv move, dd, Node copy`,
      measured: cell(first),
      target: '-',
      pass: undefined,
    },
    {
      figure: 'pv move / dd, into unallocated blocks',
      measured: preciseRatio(versus(first, 'dd')),
      target: `≥ ${throughputTargetRatio}×`,
      pass: versus(first, 'dd') >= throughputTargetRatio,
    },
    {
      figure: `${size} overwrite (n=${settings.repeatCount}): pv move, dd, Node copy`,
      measured: cell(overwrite),
      target: '-',
      pass: undefined,
    },
    {
      figure: 'pv move / dd, overwrite',
      measured: preciseRatio(versus(overwrite, 'dd')),
      target: `≥ ${throughputTargetRatio}×`,
      pass: versus(overwrite, 'dd') >= throughputTargetRatio,
    },
    {
      figure: 'pv move / Node copy, overwrite',
      measured: ratio(versus(overwrite, 'node')),
      target: '- (same I/O pattern)',
      pass: undefined,
    },
    {
      figure: 'tandemd CPU during the overwrite moves',
      measured: `${(median(lv.moveCpuShares.slice(overwriteCpuStart)) * 100).toFixed(0)}% of one core`,
      target: '-',
      pass: undefined,
    },
  ];
}

interface CompletionLatency {
  readonly readP50Ns: number;
  readonly readP99Ns: number;
  readonly writeP50Ns: number;
  readonly writeP99Ns: number;
}

function member(value: unknown, key: string): unknown {
  if (typeof value !== 'object' || value === null || !(key in value)) {
    throw new Error(`fio JSON: no '${key}'`);
  }
  return (value as Record<string, unknown>)[key];
}

function percentileNs(job: unknown, direction: 'read' | 'write', key: string): number {
  const value = member(member(member(member(job, direction), 'clat_ns'), 'percentile'), key);
  if (typeof value !== 'number') throw new Error(`fio JSON: ${direction} p${key} not a number`);
  return value;
}

/** fio's completion latency percentiles; fio may print notices before the JSON document. */
function parseCompletionLatency(stdout: string): CompletionLatency {
  const document: unknown = JSON.parse(stdout.slice(Math.max(0, stdout.indexOf('{'))));
  const jobs = member(document, 'jobs');
  const job: unknown = Array.isArray(jobs) ? jobs[0] : undefined;
  if (member(job, 'error') !== 0) throw new Error('fio reported a job error');
  return {
    readP50Ns: percentileNs(job, 'read', '50.000000'),
    readP99Ns: percentileNs(job, 'read', '99.000000'),
    writeP50Ns: percentileNs(job, 'write', '50.000000'),
    writeP99Ns: percentileNs(job, 'write', '99.000000'),
  };
}

async function runLatencyFio(uri: string, runtimeSeconds: number): Promise<CompletionLatency> {
  const rampSeconds = 1;
  const result = await runCommand(
    'fio',
    [
      '--name=latency',
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--rw=randrw',
      '--rwmixread=50',
      '--bs=4k',
      '--iodepth=1',
      '--time_based',
      `--runtime=${runtimeSeconds}`,
      `--ramp_time=${rampSeconds}`,
      '--output-format=json',
    ],
    { timeoutMs: (runtimeSeconds + rampSeconds + 60) * 1000 },
  );
  if (result.code !== 0 || result.timedOut) throw new Error(describeResult(result));
  return parseCompletionLatency(result.stdout);
}

/** One fio run while the LV moves back and forth between its two PVs without a pause. */
async function latencyDuringMoves(
  lv: EvacuationLv,
  runtimeSeconds: number,
): Promise<{ latency: CompletionLatency; moveRates: number[] }> {
  let stop = false;
  const moveRates: number[] = [];
  const mover = (async () => {
    for (let index = 0; index < movesPerRunMax && !stop; index += 1) {
      moveRates.push(mebibytesPerSecond(lv.lvBytes, await lv.move()));
    }
  })();
  // Handled here so that a failed move is no unhandled rejection while fio runs; rethrown below.
  mover.catch(() => undefined);
  try {
    return { latency: await runLatencyFio(lv.uri, runtimeSeconds), moveRates };
  } finally {
    // The move running when fio ends is let finish: a cancelled step would be moved again.
    stop = true;
    await mover;
  }
}

/** fio latency on the LV without a move (baseline) and during moves, `--repeat` times each. */
export async function measureLatencyUnderMove(
  lv: EvacuationLv,
  settings: EvacuationSettings,
): Promise<Row[]> {
  const baseline: CompletionLatency[] = [];
  const during: CompletionLatency[] = [];
  const moveRates: number[] = [];
  for (let repeat = 0; repeat < settings.repeatCount; repeat += 1) {
    const order = repeat % 2 === 0 ? ['baseline', 'during'] : ['during', 'baseline'];
    for (const what of order) {
      lv.syncFiles();
      if (what === 'baseline') {
        baseline.push(await runLatencyFio(lv.uri, settings.runtimeSeconds));
      } else {
        const run = await latencyDuringMoves(lv, settings.runtimeSeconds);
        during.push(run.latency);
        moveRates.push(...run.moveRates);
      }
      const last = (what === 'baseline' ? baseline : during).at(-1);
      console.error(
        `  [${repeat + 1}/${settings.repeatCount}] fio ${what}: read p50 ` +
          `${microseconds(last?.readP50Ns ?? Number.NaN)} p99 ${microseconds(last?.readP99Ns ?? Number.NaN)}`,
      );
    }
  }
  const figures: ReadonlyArray<[string, (latency: CompletionLatency) => number]> = [
    ['read p50', (latency) => latency.readP50Ns],
    ['read p99', (latency) => latency.readP99Ns],
    ['write p50', (latency) => latency.writeP50Ns],
    ['write p99', (latency) => latency.writeP99Ns],
  ];
  const rows: Row[] = figures.map(([label, value]) => {
    const before = median(baseline.map(value));
    const meanwhile = median(during.map(value));
    return {
      figure: `fio 4k randrw qd1 on the moving LV: ${label}`,
      measured: `${microseconds(before)} idle → ${microseconds(meanwhile)} during move (${ratio(meanwhile / before)})`,
      target: '-',
      pass: undefined,
    };
  });
  rows.push({
    figure: 'pv move under that fio load',
    measured: `${throughput(median(moveRates))}${spread(moveRates, throughput)} (${moveRates.length} moves)`,
    target: '-',
    pass: undefined,
  });
  return rows;
}
