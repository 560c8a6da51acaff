/**
 * Clustered-VG benchmark: the targets for src/clvm, measured on real daemons.
 *
 * 1. LV create latency (gRPC CreateLv) with 10, 100 and 1000 LVs already in the VG, one daemon,
 *    a VG of three sparse 64 GiB PV files; and how it grows against the metadata size.
 * 2. Propagation: a second daemon on the same --vg-dir; time from an LV create on A until B's
 *    WatchVolumes stream shows the VG at the new seqno (then B's ListLvs is checked to list it).
 * 3. Evacuation: `pv move` of an active 1 GiB LV against `dd` of as many bytes file to file.
 * 4. fio 4 KiB random read/write latency on that LV, idle and while it moves.
 *
 * Run on demand, never in CI: `npx tsc -p tsconfig.json && node dist/bench/clvm.js [--quick]`.
 * See bench/README.md.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import {
  makeTemporaryDirectory,
  runCli,
  stopAllDaemons,
} from '../test/integration/helpers/daemon.js';
import { makeSparseFile, missingTools } from '../test/integration/helpers/tools.js';
import { type ClusterPaths, type VolumesApi, startHost } from './clvm-api.js';
import {
  createRows,
  measureCreateLatency,
  measurePropagation,
  propagationRows,
} from './clvm-changes.js';
import { EvacuationLv, measureEvacuation, measureLatencyUnderMove } from './clvm-evacuation.js';
import { type Row, printRows } from './clvm-report.js';

const mebibyte = 1024 * 1024;
const gibibyte = 1024 * mebibyte;
const benchPvBytes = 64 * gibibyte;
const smallPvBytes = gibibyte;
const extentBytes = 4 * mebibyte;
const vgIoTimeoutMs = 2_000;
const vgMaxHosts = 8;
/** Propagation samples thrown away first: A may not know B's address yet. */
const propagationWarmUpCount = 3;

interface Settings {
  readonly levels: readonly number[];
  readonly samples: number;
  readonly repeatCount: number;
  readonly runtimeSeconds: number;
  readonly lvBytes: number;
  readonly skipCreate: boolean;
  readonly skipPropagation: boolean;
  readonly skipEvacuation: boolean;
  readonly skipLatency: boolean;
}

const usage =
  'usage: node dist/bench/clvm.js [--quick] [--levels 10,100,1000] [--samples N] [--repeat N]\n' +
  '         [--runtime S] [--lv-size-mib MIB] [--skip-create] [--skip-propagation]\n' +
  '         [--skip-evacuation] [--skip-latency]\n' +
  '  --levels L,…       LV counts to time creates at (default 10,100,1000; --quick: 10,100)\n' +
  '  --samples N        creates timed per level, propagations per VG (default 30; --quick: 10)\n' +
  '  --repeat N         moves and reference copies, fio runs each (default 3; --quick: 1)\n' +
  '  --runtime S        seconds per fio latency run (default 10; --quick: 3)\n' +
  '  --lv-size-mib MIB  size of the LV moved (default 1024; --quick: 256)\n' +
  '  --skip-…           leave out a part (--skip-evacuation also skips the fio latency)';

function parseSettings(argv: readonly string[]): Settings | undefined {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      levels: { type: 'string' },
      samples: { type: 'string' },
      repeat: { type: 'string' },
      runtime: { type: 'string' },
      'lv-size-mib': { type: 'string' },
      'skip-create': { type: 'boolean', default: false },
      'skip-propagation': { type: 'boolean', default: false },
      'skip-evacuation': { type: 'boolean', default: false },
      'skip-latency': { type: 'boolean', default: false },
      quick: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help === true) {
    console.log(usage);
    return undefined;
  }
  const quick = values.quick === true;
  const levels = (values.levels ?? (quick ? '10,100' : '10,100,1000'))
    .split(',')
    .map((text) => positiveInteger(text, 0, '--levels'));
  if (levels.some((level, index) => index > 0 && level <= (levels[index - 1] ?? 0))) {
    throw new Error('--levels must be increasing');
  }
  return {
    levels,
    samples: positiveInteger(values.samples, quick ? 10 : 30, '--samples'),
    repeatCount: positiveInteger(values.repeat, quick ? 1 : 3, '--repeat'),
    runtimeSeconds: positiveInteger(values.runtime, quick ? 3 : 10, '--runtime'),
    lvBytes: positiveInteger(values['lv-size-mib'], quick ? 256 : 1024, '--lv-size-mib') * mebibyte,
    skipCreate: values['skip-create'] === true,
    skipPropagation: values['skip-propagation'] === true,
    skipEvacuation: values['skip-evacuation'] === true,
    skipLatency: values['skip-latency'] === true || values['skip-evacuation'] === true,
  };
}

function positiveInteger(text: string | undefined, fallback: number, flag: string): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new Error(`${flag} takes positive integers, got '${text}'`);
  }
  return value;
}

async function initGlobalLockspace(filePath: string): Promise<void> {
  const args = ['lockspace', 'init', filePath, '--max-hosts', '8', '--profile', 'fast'];
  const result = await runCli(args);
  if (result.code !== 0) throw new Error(`tandem lockspace init failed:\n${result.stderr}`);
}

async function createVg(
  api: VolumesApi,
  paths: ClusterPaths,
  name: string,
  pvBytes: number,
  maxLvs: number,
): Promise<string[]> {
  const pvPaths = [1, 2, 3].map((index) =>
    makeSparseFile(path.join(paths.pvDirectory, `${name}${index}.img`), pvBytes),
  );
  await api.createVg({
    name,
    pvPaths,
    extentSizeBytes: String(extentBytes),
    maxHosts: vgMaxHosts,
    ioTimeoutMs: vgIoTimeoutMs,
    maxLvs,
  });
  return pvPaths;
}

/** Parts 1 and 2: creates on one daemon, then what a second daemon sees of them. */
async function benchChanges(
  a: VolumesApi,
  paths: ClusterPaths,
  settings: Settings,
  hosts: VolumesApi[],
): Promise<Row[]> {
  const rows: Row[] = [];
  const lastLevel = settings.levels[settings.levels.length - 1] ?? 0;
  const benchMaxLvs = Math.max(1100, lastLevel + 2 * settings.samples + 16);
  if (!settings.skipCreate) {
    console.error(`create latency: VG bench, 3 × 64 GiB sparse PVs, --max-lvs ${benchMaxLvs}…`);
    const benchPvs = await createVg(a, paths, 'bench', benchPvBytes, benchMaxLvs);
    const levels = await measureCreateLatency(
      a,
      'bench',
      benchPvs,
      settings.levels,
      settings.samples,
    );
    rows.push(...createRows(levels, settings.samples));
  }
  if (settings.skipPropagation) return rows;
  console.error('propagation: VG small, second daemon b on the same --vg-dir…');
  const smallMaxLvs = settings.samples + propagationWarmUpCount + 16;
  await createVg(a, paths, 'small', smallPvBytes, smallMaxLvs);
  const b = await startHost(paths, 'b');
  hosts.push(b);
  const vgNames = settings.skipCreate ? ['small'] : ['small', 'bench'];
  for (const vgName of vgNames) await b.waitJoined(vgName);
  await measurePropagation(a, b, 'small', propagationWarmUpCount, 'warm');
  for (const vgName of vgNames) {
    const propagation = await measurePropagation(a, b, vgName, settings.samples, 'seen');
    rows.push(...propagationRows(propagation));
  }
  await b.stop();
  hosts.splice(hosts.indexOf(b), 1);
  return rows;
}

/** Parts 3 and 4, on daemon a alone. */
async function benchEvacuation(
  a: VolumesApi,
  paths: ClusterPaths,
  settings: Settings,
): Promise<Row[]> {
  const missing = missingTools(['fio', 'nbdcopy', 'dd']);
  if (missing.length > 0) {
    return [
      {
        figure: 'pv move / reference copy',
        measured: `skipped: missing ${missing.join(', ')}`,
        target: '≥ 0.8×',
        pass: undefined,
      },
    ];
  }
  console.error(`evacuation: VG evac, LV of ${settings.lvBytes / mebibyte} MiB…`);
  const lv = await EvacuationLv.create(a, paths.pvDirectory, paths.workDirectory, settings.lvBytes);
  const rows = await measureEvacuation(lv, settings);
  if (!settings.skipLatency) {
    console.error(`latency: fio ${settings.runtimeSeconds} s idle and during moves…`);
    rows.push(...(await measureLatencyUnderMove(lv, settings)));
  }
  return rows;
}

async function main(): Promise<number> {
  const settings = parseSettings(process.argv.slice(2));
  if (settings === undefined) return 0;
  const work = makeTemporaryDirectory('tandem-bench-clvm-');
  // Ctrl-C: the 'exit' handlers (here and in the harnesses) kill daemons and fio, remove files.
  process.on('exit', () => fs.rmSync(work, { recursive: true, force: true }));
  process.on('SIGINT', () => process.exit(130));
  process.on('SIGTERM', () => process.exit(143));
  const paths: ClusterPaths = {
    pvDirectory: path.join(work, 'pvs'),
    globalLockspacePath: path.join(work, 'global-lockspace.img'),
    workDirectory: work,
  };
  fs.mkdirSync(paths.pvDirectory);
  const loadBefore = os.loadavg()[0] ?? 0;
  const rows: Row[] = [];
  const hosts: VolumesApi[] = [];
  try {
    await initGlobalLockspace(paths.globalLockspacePath);
    const a = await startHost(paths, 'a');
    hosts.push(a);
    rows.push(...(await benchChanges(a, paths, settings, hosts)));
    if (!settings.skipEvacuation) rows.push(...(await benchEvacuation(a, paths, settings)));
  } finally {
    for (const host of hosts.splice(0)) {
      await host.stop().catch((error: unknown) => console.error('bench: stop failed', error));
    }
    await stopAllDaemons();
    fs.rmSync(work, { recursive: true, force: true });
  }
  const loadAfter = os.loadavg()[0] ?? 0;
  printRows(
    `clustered VGs, ${os.cpus().length} CPUs, node ${process.version}, load average ` +
      `${loadBefore.toFixed(2)} at start, ${loadAfter.toFixed(2)} at end; VG ioTimeout ` +
      `${vgIoTimeoutMs} ms, extent ${extentBytes / mebibyte} MiB`,
    rows,
  );
  return 0;
}

main().then(
  (code) => {
    process.exitCode = code;
  },
  (error: unknown) => {
    console.error(
      `bench: ${error instanceof Error ? (error.stack ?? error.message) : String(error)}`,
    );
    process.exitCode = 1;
  },
);
