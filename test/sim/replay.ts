/**
 * Replays one seed of the lease simulation verbosely:
 *
 *   node dist/test/sim/replay.js SEED [--shape short|long] [--quiet] [--debug] [--writes] [--duration-t N]
 *
 * prints the scenario, every trace event as it happens (with --debug, the protocol's debug logs
 * too), then the verdict. The run is the same as in the test and the soak: a pure function of the
 * seed (and of --duration-t when the soak used a longer one).
 */
import { type ShapeName, generateScenario, parseShapeName, shapes } from './scenario.js';
import { runScenario } from './simulation.js';

function parseArguments(argv: readonly string[]): {
  seed: number;
  quiet: boolean;
  debug: boolean;
  writes: boolean;
  shape: ShapeName;
  durationT: number | undefined;
} {
  let seed: number | undefined;
  let quiet = false;
  let debug = false;
  let writes = false;
  let durationT: number | undefined;
  let shape: ShapeName = 'long';
  for (let index = 0; index < argv.length; index++) {
    const argument = argv[index];
    if (argument === '--quiet') quiet = true;
    else if (argument === '--debug') debug = true;
    else if (argument === '--writes') writes = true;
    else if (argument === '--duration-t') durationT = Number(argv[++index]);
    else if (argument === '--shape') shape = parseShapeName(argv[++index] ?? '');
    else if (argument !== undefined && /^\d+$/.test(argument)) seed = Number(argument);
    else throw new Error(`unknown argument '${String(argument)}'`);
  }
  if (seed === undefined) {
    throw new Error(
      'usage: replay.js SEED [--shape short|long] [--quiet] [--debug] [--writes] [--duration-t N]',
    );
  }
  if (durationT !== undefined && (!Number.isInteger(durationT) || durationT < 10)) {
    throw new Error('--duration-t must be an integer >= 10');
  }
  return { seed, quiet, debug, writes, shape, durationT };
}

async function main(): Promise<void> {
  const { seed, quiet, debug, writes, shape, durationT } = parseArguments(process.argv.slice(2));
  const base = shapes[shape];
  const scenario = generateScenario(seed, { ...base, durationT: durationT ?? base.durationT });
  const write = (line: string): void => {
    process.stdout.write(`${line}\n`);
  };
  const result = await runScenario(scenario, {
    live: quiet ? undefined : write,
    debug,
    traceWrites: writes,
  });
  write(result.description);
  write(`stats: ${JSON.stringify(result.stats)}`);
  if (result.ok) {
    write(`seed ${seed}: ok (${result.virtualMs.toFixed(0)} ms virtual)`);
    return;
  }
  for (const violation of result.violations) {
    write(
      `VIOLATION ${violation.invariant} at ${violation.timeMs.toFixed(3)}: ${violation.message}`,
    );
  }
  if (quiet) for (const line of result.traceTail) write(line);
  process.exitCode = 1;
}

main().catch((error: unknown) => {
  process.stderr.write(
    `${error instanceof Error ? (error.stack ?? error.message) : String(error)}\n`,
  );
  process.exitCode = 2;
});
