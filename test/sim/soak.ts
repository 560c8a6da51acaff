/**
 * The long soak of the lease simulation (not in CI):
 *
 *   node dist/test/sim/soak.js [--seeds N] [--start S] [--minutes M] [--shape short|long]
 *                              [--duration-t N] [--workers W] [--stop]
 *
 * runs seeds S, S+1, ... on worker threads until N seeds ran or M minutes passed (default: 10
 * minutes, no seed limit, the long shape), prints progress after every chunk and a summary, and
 * lists every failing seed with the command that replays it. Exits 1 when any seed failed.
 * --stop ends after the chunk with the first failure.
 */
import { availableParallelism } from 'node:os';
import { runSeeds } from './run-seeds.js';
import { type ShapeName, parseShapeName, shapes } from './scenario.js';
import type { RunResult } from './simulation.js';

interface SoakOptions {
  readonly seeds: number;
  readonly start: number;
  readonly minutes: number;
  readonly shape: ShapeName;
  readonly durationT: number | undefined;
  readonly workers: number;
  readonly stopAtFirst: boolean;
}

const numberOptions = ['--seeds', '--start', '--minutes', '--duration-t', '--workers'];

function parseSoakArguments(argv: readonly string[]): SoakOptions {
  const values = new Map<string, number>();
  let stopAtFirst = false;
  let shape: ShapeName = 'long';
  for (let index = 0; index < argv.length; index++) {
    const argument = argv[index] ?? '';
    if (argument === '--stop') {
      stopAtFirst = true;
    } else if (argument === '--shape') {
      shape = parseShapeName(argv[++index] ?? '');
    } else if (numberOptions.includes(argument)) {
      const value = Number(argv[++index]);
      if (!Number.isFinite(value) || value < 0) throw new Error(`${argument} needs a number`);
      values.set(argument, value);
    } else {
      throw new Error(`unknown argument '${argument}'`);
    }
  }
  return {
    seeds: values.get('--seeds') ?? Number.POSITIVE_INFINITY,
    start: values.get('--start') ?? 1,
    minutes: values.get('--minutes') ?? 10,
    shape,
    durationT: values.get('--duration-t'),
    workers: values.get('--workers') ?? availableParallelism(),
    stopAtFirst,
  };
}

function sumInto(total: Record<string, number>, stats: object): void {
  for (const [key, value] of Object.entries(stats)) {
    if (typeof value === 'number') total[key] = (total[key] ?? 0) + value;
  }
}

function reportFailure(result: RunResult, options: SoakOptions): void {
  const lines = [
    `FAIL seed ${result.seed}`,
    ...result.violations.map((v) => `  ${v.invariant} at ${v.timeMs.toFixed(3)}: ${v.message}`),
    result.description,
    '  trace tail:',
    ...result.traceTail.slice(-30).map((line) => `    ${line}`),
    `  replay: node dist/test/sim/replay.js ${result.seed} --shape ${options.shape}` +
      (options.durationT === undefined ? '' : ` --duration-t ${options.durationT}`),
  ];
  process.stdout.write(`${lines.join('\n')}\n`);
}

async function main(): Promise<void> {
  const options = parseSoakArguments(process.argv.slice(2));
  const base = shapes[options.shape];
  const shape = { ...base, durationT: options.durationT ?? base.durationT };
  const startedMs = performance.now();
  const endMs = startedMs + options.minutes * 60_000;
  const chunkSize = options.workers * (options.shape === 'short' ? 40 : 8);
  const totals: Record<string, number> = {};
  const failures: number[] = [];
  let virtualMs = 0;
  let runs = 0;
  let next = options.start;
  while (runs < options.seeds && performance.now() < endMs) {
    const count = Math.min(chunkSize, options.seeds - runs);
    const seeds = Array.from({ length: count }, (_, index) => next + index);
    next += count;
    const results = await runSeeds({ seeds, shape, workers: options.workers });
    results.sort((left, right) => left.seed - right.seed);
    for (const result of results) {
      runs += 1;
      virtualMs += result.virtualMs;
      sumInto(totals, result.stats);
      if (result.ok) continue;
      failures.push(result.seed);
      reportFailure(result, options);
    }
    const elapsedS = (performance.now() - startedMs) / 1000;
    process.stdout.write(
      `soak: ${runs} seeds (up to ${next - 1}), ${failures.length} failed, ` +
        `${elapsedS.toFixed(0)} s, ${(runs / elapsedS).toFixed(1)} seeds/s\n`,
    );
    if (options.stopAtFirst && failures.length > 0) break;
  }
  const elapsedS = (performance.now() - startedMs) / 1000;
  process.stdout.write(
    [
      `soak done: ${runs} ${options.shape} seeds from ${options.start}, ${failures.length} failed, ` +
        `${elapsedS.toFixed(1)} s wall, ${(virtualMs / 1000).toFixed(0)} s virtual`,
      `totals: ${JSON.stringify(totals)}`,
      failures.length === 0 ? 'no failures' : `failing seeds: ${failures.join(' ')}`,
    ].join('\n') + '\n',
  );
  if (failures.length > 0) process.exitCode = 1;
}

main().catch((error: unknown) => {
  process.stderr.write(
    `${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exitCode = 2;
});
