/**
 * NBD benchmark: tandemd against nbdkit's file plugin, on the same file, in the same run.
 *
 * Both servers run as separate processes on 127.0.0.1 and serve one file of random data; fio's
 * nbd engine (libnbd, one connection per job) drives them in turn, alternating which goes first
 * in each repeat so that a warming page cache or a noisy neighbour does not favour one side.
 * The table shows the median of the repeats for each server, the spread (min–max), and the
 * ratio tandem/nbdkit. tandemd's resident memory is sampled during the whole run.
 *
 * Run on demand, never in CI: `npx tsc -p tsconfig.json && node dist/bench/nbd.js [--quick]`.
 * See bench/README.md.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { makeTemporaryDirectory, startDaemon } from '../test/integration/helpers/daemon.js';
import {
  type BackgroundProcess,
  type FioJob,
  describeResult,
  missingTools,
  nbdUri,
  parseFioJson,
  runChecked,
  runCommand,
  startBackground,
  waitFor,
  writeRandomFile,
} from '../test/integration/helpers/tools.js';
import { freePort } from '../test/integration/helpers/tcp-proxy.js';
import { median } from './stats.js';

const mebibyte = 1024 * 1024;
const rssSampleIntervalMs = 100;
const serverReadyTimeoutMs = 15_000;

interface Settings {
  readonly repeatCount: number;
  readonly runtimeSeconds: number;
  readonly fileSizeMebibytes: number;
}

interface Workload {
  readonly name: string;
  readonly description: string;
  readonly fioArgs: readonly string[];
}

const workloads: readonly Workload[] = [
  {
    name: 'randrw-4k',
    description: '4 KiB random read/write 50/50, iodepth 32, 1 job',
    fioArgs: ['--rw=randrw', '--rwmixread=50', '--bs=4k', '--iodepth=32', '--numjobs=1'],
  },
  {
    name: 'seqread-1m',
    description: '1 MiB sequential read, iodepth 8, 1 job',
    fioArgs: ['--rw=read', '--bs=1M', '--iodepth=8', '--numjobs=1'],
  },
  {
    name: 'seqwrite-1m',
    description: '1 MiB sequential write, iodepth 8, 1 job',
    fioArgs: ['--rw=write', '--bs=1M', '--iodepth=8', '--numjobs=1'],
  },
];

/** One figure of the table, computed from one fio job. */
interface Figure {
  readonly workload: string;
  readonly label: string;
  readonly unit: string;
  /** For latency, lower is better; the ratio is still tandem/nbdkit. */
  readonly lowerIsBetter: boolean;
  readonly value: (job: FioJob) => number;
}

const figures: readonly Figure[] = [
  {
    workload: 'randrw-4k',
    label: '4k randrw 50/50 qd32: total',
    unit: 'IOPS',
    lowerIsBetter: false,
    value: (job) => job.read.iops + job.write.iops,
  },
  {
    workload: 'randrw-4k',
    label: '4k randrw 50/50 qd32: read',
    unit: 'IOPS',
    lowerIsBetter: false,
    value: (job) => job.read.iops,
  },
  {
    workload: 'randrw-4k',
    label: '4k randrw 50/50 qd32: write',
    unit: 'IOPS',
    lowerIsBetter: false,
    value: (job) => job.write.iops,
  },
  {
    workload: 'randrw-4k',
    label: '4k randrw 50/50 qd32: mean read latency',
    unit: 'µs',
    lowerIsBetter: true,
    value: (job) => job.read.meanLatencyNs / 1000,
  },
  {
    workload: 'seqread-1m',
    label: '1M seq read qd8',
    unit: 'MiB/s',
    lowerIsBetter: false,
    value: (job) => job.read.bandwidthBytesPerSecond / mebibyte,
  },
  {
    workload: 'seqwrite-1m',
    label: '1M seq write qd8',
    unit: 'MiB/s',
    lowerIsBetter: false,
    value: (job) => job.write.bandwidthBytesPerSecond / mebibyte,
  },
];

type ServerName = 'tandem' | 'nbdkit';

function parseSettings(argv: readonly string[]): Settings | undefined {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      repeat: { type: 'string' },
      runtime: { type: 'string' },
      quick: { type: 'boolean', default: false },
      'size-mib': { type: 'string' },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help === true) {
    console.log(
      'usage: node dist/bench/nbd.js [--repeat N] [--runtime SECONDS] [--size-mib MIB] [--quick]\n' +
        '  --repeat N        runs of each workload on each server (default 5; --quick: 1)\n' +
        '  --runtime S       seconds per fio run (default 10; --quick: 3)\n' +
        '  --size-mib MIB    size of the served file (default 1024)\n' +
        '  --quick           smoke run: 1 repeat of 3 s',
    );
    return undefined;
  }
  const quick = values.quick === true;
  return {
    repeatCount: positiveInteger(values.repeat, quick ? 1 : 5, '--repeat'),
    runtimeSeconds: positiveInteger(values.runtime, quick ? 3 : 10, '--runtime'),
    fileSizeMebibytes: positiveInteger(values['size-mib'], 1024, '--size-mib'),
  };
}

function positiveInteger(text: string | undefined, fallback: number, flag: string): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value <= 0) {
    throw new Error(`${flag} takes a positive integer, got '${text}'`);
  }
  return value;
}

/** A field of /proc/PID/status in bytes (VmRSS, VmHWM), or undefined once the process is gone. */
function processMemoryBytes(pid: number, field: 'VmRSS' | 'VmHWM'): number | undefined {
  let status: string;
  try {
    status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
  } catch {
    return undefined;
  }
  const match = new RegExp(`^${field}:\\s+(\\d+) kB$`, 'm').exec(status);
  return match?.[1] === undefined ? undefined : Number(match[1]) * 1024;
}

class RssSampler {
  peakBytes = 0;
  private readonly timer: NodeJS.Timeout;

  constructor(private readonly pid: number) {
    this.timer = setInterval(() => this.sample(), rssSampleIntervalMs);
    this.sample();
  }

  sample(): void {
    const rss = processMemoryBytes(this.pid, 'VmRSS');
    if (rss !== undefined) this.peakBytes = Math.max(this.peakBytes, rss);
  }

  stop(): void {
    clearInterval(this.timer);
  }
}

function formatNumber(value: number): string {
  if (!Number.isFinite(value)) return '-';
  if (value >= 100) return Math.round(value).toLocaleString('en-US');
  return value.toFixed(1);
}

function formatMebibytes(bytes: number): string {
  return `${(bytes / mebibyte).toFixed(1)} MiB`;
}

async function runFio(uri: string, workload: Workload, settings: Settings): Promise<FioJob> {
  const rampSeconds = settings.runtimeSeconds >= 5 ? 1 : 0;
  const result = await runCommand(
    'fio',
    [
      `--name=${workload.name}`,
      '--ioengine=nbd',
      `--uri=${uri}`,
      '--time_based',
      `--runtime=${settings.runtimeSeconds}`,
      `--ramp_time=${rampSeconds}`,
      '--output-format=json',
      ...workload.fioArgs,
    ],
    { timeoutMs: (settings.runtimeSeconds + rampSeconds + 60) * 1000 },
  );
  if (result.code !== 0 || result.timedOut) throw new Error(describeResult(result));
  const [job] = parseFioJson(result.stdout);
  if (job === undefined || job.error !== 0) {
    throw new Error(`fio reported an error:\n${describeResult(result)}`);
  }
  return job;
}

async function startNbdkit(filePath: string): Promise<{ process: BackgroundProcess; uri: string }> {
  const port = await freePort();
  const nbdkit = startBackground('nbdkit', [
    '--exit-with-parent',
    '-f',
    '-p',
    String(port),
    '-i',
    '127.0.0.1',
    'file',
    filePath,
  ]);
  const uri = nbdUri('127.0.0.1', port, '');
  await waitFor(
    async () => {
      const exit = nbdkit.exit();
      if (exit !== undefined) throw new Error(`nbdkit exited: ${nbdkit.stderr()}`);
      return (await runCommand('nbdinfo', ['--size', uri], { timeoutMs: 5_000 })).code === 0;
    },
    { timeoutMs: serverReadyTimeoutMs, intervalMs: 100, description: 'nbdkit to serve' },
  );
  return { process: nbdkit, uri };
}

async function versionOf(command: string): Promise<string> {
  const result = await runCommand(command, ['--version'], { timeoutMs: 10_000 });
  return result.stdout.split('\n')[0]?.trim() ?? '?';
}

function printTable(
  samples: ReadonlyMap<string, Record<ServerName, FioJob[]>>,
  settings: Settings,
): void {
  const header = [
    'figure',
    'unit',
    'tandem',
    'nbdkit',
    'tandem/nbdkit',
    'tandem min–max',
    'nbdkit min–max',
  ];
  const rows: string[][] = [header];
  for (const figure of figures) {
    const jobs = samples.get(figure.workload);
    if (jobs === undefined) continue;
    const tandemValues = jobs.tandem.map(figure.value);
    const nbdkitValues = jobs.nbdkit.map(figure.value);
    const tandemMedian = median(tandemValues);
    const nbdkitMedian = median(nbdkitValues);
    const spread = (values: number[]): string =>
      `${formatNumber(Math.min(...values))}–${formatNumber(Math.max(...values))}`;
    rows.push([
      figure.label,
      figure.unit,
      formatNumber(tandemMedian),
      formatNumber(nbdkitMedian),
      `${(tandemMedian / nbdkitMedian).toFixed(2)}${figure.lowerIsBetter ? ' (lower=better)' : ''}`,
      spread(tandemValues),
      spread(nbdkitValues),
    ]);
  }
  const widths = header.map((_, column) =>
    Math.max(...rows.map((row) => (row[column] ?? '').length)),
  );
  console.log(
    `\nMedians of ${settings.repeatCount} run(s) of ${settings.runtimeSeconds} s per workload and server:\n`,
  );
  for (const [index, row] of rows.entries()) {
    const line = row
      .map((cell, column) =>
        column < 2 ? cell.padEnd(widths[column] ?? 0) : cell.padStart(widths[column] ?? 0),
      )
      .join('  ');
    console.log(line);
    if (index === 0) console.log(widths.map((width) => '-'.repeat(width)).join('  '));
  }
}

async function main(): Promise<number> {
  const settings = parseSettings(process.argv.slice(2));
  if (settings === undefined) return 0;
  const missing = missingTools(['fio', 'nbdkit', 'nbdinfo']);
  if (missing.length > 0) {
    console.error(`bench: missing tools: ${missing.join(', ')}`);
    return 1;
  }
  const work = makeTemporaryDirectory('tandem-bench-');
  // Ctrl-C: the 'exit' handlers (here and in the harness) kill tandemd and remove the file.
  process.on('exit', () => fs.rmSync(work, { recursive: true, force: true }));
  process.on('SIGINT', () => process.exit(130));
  process.on('SIGTERM', () => process.exit(143));

  const filePath = path.join(work, 'bench.img');
  const sizeBytes = settings.fileSizeMebibytes * mebibyte;
  console.log(`bench: writing ${formatMebibytes(sizeBytes)} of random data to ${filePath}`);
  await writeRandomFile(filePath, sizeBytes);

  const daemon = await startDaemon({ dataDir: path.join(work, 'data') });
  const daemonPid = daemon.process.pid;
  if (daemonPid === undefined) throw new Error('tandemd has no pid');
  const added = await daemon.runCli(['export', 'add', '--name', 'bench', '--file', filePath]);
  if (added.code !== 0) throw new Error(`export add failed: ${added.stderr}`);
  const nbdkit = await startNbdkit(filePath);
  const uris: Record<ServerName, string> = {
    tandem: nbdUri(daemon.nbdHost, daemon.nbdPort, 'bench'),
    nbdkit: nbdkit.uri,
  };
  const idleRssBytes = processMemoryBytes(daemonPid, 'VmRSS') ?? 0;
  // A first touch of the whole file through each server, so neither pays for a cold cache.
  for (const uri of Object.values(uris)) await runChecked('nbdcopy', [uri, 'null:']);

  const sampler = new RssSampler(daemonPid);
  const samples = new Map<string, Record<ServerName, FioJob[]>>(
    workloads.map((workload) => [workload.name, { tandem: [], nbdkit: [] }]),
  );
  console.log(
    `bench: ${settings.repeatCount} repeat(s) × ${workloads.length} workloads × 2 servers × ` +
      `${settings.runtimeSeconds} s on ${os.cpus().length} CPUs; ` +
      `${await versionOf('fio')}, ${await versionOf('nbdkit')}, node ${process.version}`,
  );
  try {
    for (let repeat = 0; repeat < settings.repeatCount; repeat++) {
      const order: ServerName[] = repeat % 2 === 0 ? ['tandem', 'nbdkit'] : ['nbdkit', 'tandem'];
      for (const workload of workloads) {
        for (const server of order) {
          const job = await runFio(uris[server], workload, settings);
          samples.get(workload.name)?.[server].push(job);
          const summary =
            workload.name === 'randrw-4k'
              ? `${formatNumber(job.read.iops + job.write.iops)} IOPS`
              : `${formatNumber(
                  (job.read.bandwidthBytesPerSecond + job.write.bandwidthBytesPerSecond) / mebibyte,
                )} MiB/s`;
          console.log(
            `  [${repeat + 1}/${settings.repeatCount}] ${workload.name} ${server}: ${summary}`,
          );
        }
      }
    }
  } finally {
    sampler.stop();
  }
  sampler.sample();
  const highWaterBytes = processMemoryBytes(daemonPid, 'VmHWM');

  printTable(samples, settings);
  console.log(
    `\ntandemd RSS: idle (export added, no client yet) ${formatMebibytes(idleRssBytes)}, ` +
      `peak sampled under load ` +
      `${formatMebibytes(sampler.peakBytes)} (every ${rssSampleIntervalMs} ms), ` +
      `VmHWM ${highWaterBytes === undefined ? '?' : formatMebibytes(highWaterBytes)}`,
  );
  for (const workload of workloads) console.log(`  ${workload.name}: ${workload.description}`);

  await nbdkit.process.stop();
  const daemonExit = await daemon.stop();
  if (daemonExit !== 0) console.error(`bench: tandemd exited with ${daemonExit}`);
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
