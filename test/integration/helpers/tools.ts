/**
 * Helpers for tests (and the benchmark) that drive real NBD clients: run a command with a
 * timeout and keep its output, keep a long-running process (nbdfuse, an interactive qemu-io)
 * on a leash, hash and fill files, parse fio's JSON, and undo everything in reverse order.
 *
 * Every process started here is SIGKILLed when the test process exits, whatever happened, and
 * every wait is bounded: a broken client or server makes a test fail, never hang.
 */
import { type ChildProcess, spawn, spawnSync } from 'node:child_process';
import crypto from 'node:crypto';
import fs from 'node:fs';
import fsPromises from 'node:fs/promises';

/** Bound of a single client command (nbdinfo, qemu-img, mkfs, a short fio run…). */
export const commandTimeoutMs = 60_000;
/** How long a stopped process gets between SIGTERM and SIGKILL. */
export const stopGraceMs = 5_000;
/** Output kept per stream, so a chatty tool cannot eat the test's memory. */
const outputCharactersMax = 4 * 1024 * 1024;
/** Chunk of the random-file writer. */
const randomChunkBytes = 1024 * 1024;

const running = new Set<ChildProcess>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
});

export interface CommandResult {
  readonly command: string;
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
  readonly stdout: string;
  readonly stderr: string;
  readonly timedOut: boolean;
  readonly durationMs: number;
}

export interface CommandOptions {
  readonly timeoutMs?: number;
  readonly cwd?: string;
  readonly env?: NodeJS.ProcessEnv;
  readonly input?: string;
}

/** Keeps the last `outputCharactersMax` characters of a stream. */
function collect(stream: NodeJS.ReadableStream | null): () => string {
  let text = '';
  stream?.setEncoding('utf8');
  stream?.on('data', (chunk: string) => {
    text += chunk;
    if (text.length > outputCharactersMax) text = text.slice(-outputCharactersMax);
  });
  return () => text;
}

function quote(command: string, args: readonly string[]): string {
  return [command, ...args]
    .map((word) => (/^[\w./:=,@+-]+$/.test(word) ? word : `'${word}'`))
    .join(' ');
}

/** Runs a command to its end (SIGKILL after the timeout); never rejects for a non-zero exit. */
export function runCommand(
  command: string,
  args: readonly string[],
  options: CommandOptions = {},
): Promise<CommandResult> {
  const started = performance.now();
  const child = spawn(command, args, {
    cwd: options.cwd,
    env: { ...process.env, ...options.env },
    stdio: [options.input === undefined ? 'ignore' : 'pipe', 'pipe', 'pipe'],
  });
  running.add(child);
  const stdout = collect(child.stdout);
  const stderr = collect(child.stderr);
  if (options.input !== undefined) child.stdin?.end(options.input);
  let timedOut = false;
  const timer = setTimeout(() => {
    timedOut = true;
    child.kill('SIGKILL');
  }, options.timeoutMs ?? commandTimeoutMs);
  return new Promise((resolve, reject) => {
    child.once('error', (error) => {
      clearTimeout(timer);
      running.delete(child);
      reject(new Error(`cannot run ${command}: ${error.message}`, { cause: error }));
    });
    child.once('close', (code, signal) => {
      clearTimeout(timer);
      running.delete(child);
      resolve({
        command: quote(command, args),
        code,
        signal,
        stdout: stdout(),
        stderr: stderr(),
        timedOut,
        durationMs: performance.now() - started,
      });
    });
  });
}

/** A one-paragraph account of a run, for assertion messages. */
export function describeResult(result: CommandResult): string {
  const ending = result.timedOut
    ? 'timed out'
    : `exit ${result.code ?? 'none'}${result.signal === null ? '' : ` (${result.signal})`}`;
  return (
    `$ ${result.command}\n${ending} after ${Math.round(result.durationMs)} ms\n` +
    `stdout:\n${result.stdout.slice(-4000)}\nstderr:\n${result.stderr.slice(-4000)}`
  );
}

/** Runs a command and throws, with its output, unless it exits 0. */
export async function runChecked(
  command: string,
  args: readonly string[],
  options: CommandOptions = {},
): Promise<CommandResult> {
  const result = await runCommand(command, args, options);
  if (result.code !== 0 || result.timedOut) throw new Error(describeResult(result));
  return result;
}

export interface ProcessExit {
  readonly code: number | null;
  readonly signal: NodeJS.Signals | null;
}

/** A process that runs beside the test (nbdfuse, an interactive qemu-io, nbdkit). */
export interface BackgroundProcess {
  readonly command: string;
  readonly pid: number;
  stdout(): string;
  stderr(): string;
  /** The exit, once it happened; undefined while it runs. */
  exit(): ProcessExit | undefined;
  /** Resolves on exit; rejects after `timeoutMs` (the process keeps running). */
  waitForExit(timeoutMs: number): Promise<ProcessExit>;
  /** Resolves once stdout+stderr match `pattern`; rejects on timeout or exit. */
  waitForOutput(pattern: RegExp, timeoutMs: number): Promise<void>;
  /** Writes to its stdin (started with `stdin: true`). */
  write(text: string): void;
  /** SIGTERM, SIGKILL after `graceMs`; resolves on exit. Harmless when already exited. */
  stop(graceMs?: number): Promise<ProcessExit>;
}

export function startBackground(
  command: string,
  args: readonly string[],
  options: { cwd?: string; env?: NodeJS.ProcessEnv; stdin?: boolean } = {},
): BackgroundProcess {
  const child = spawn(command, args, {
    cwd: options.cwd,
    env: { ...process.env, ...options.env },
    stdio: [options.stdin === true ? 'pipe' : 'ignore', 'pipe', 'pipe'],
  });
  const pid = child.pid;
  if (pid === undefined) throw new Error(`cannot start ${command}`);
  running.add(child);
  const stdout = collect(child.stdout);
  const stderr = collect(child.stderr);
  let exit: ProcessExit | undefined;
  const exited = new Promise<ProcessExit>((resolve) => {
    child.once('close', (code, signal) => {
      running.delete(child);
      exit = { code, signal };
      resolve(exit);
    });
  });
  const description = quote(command, args);
  const waitForExit = (timeoutMs: number): Promise<ProcessExit> =>
    withTimeout(exited, timeoutMs, `${description} still running after ${timeoutMs} ms`);
  return {
    command: description,
    pid,
    stdout,
    stderr,
    exit: () => exit,
    waitForExit,
    waitForOutput: (pattern, timeoutMs) =>
      waitFor(
        () => {
          if (pattern.test(stdout() + stderr())) return true;
          if (exit !== undefined) {
            throw new Error(
              `${description} exited (${exit.code ?? exit.signal}) before printing ${pattern}:\n` +
                `${stdout()}\n${stderr()}`,
            );
          }
          return false;
        },
        { timeoutMs, description: `${pattern} from ${description}` },
      ),
    write: (text) => {
      if (child.stdin === null) throw new Error(`${description} has no stdin`);
      child.stdin.write(text);
    },
    stop: async (graceMs = stopGraceMs) => {
      if (exit !== undefined) return exit;
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), graceMs);
      const result = await exited;
      clearTimeout(timer);
      return result;
    },
  };
}

/** Rejects with `message` if `promise` has not settled within `timeoutMs`. */
export function withTimeout<T>(
  promise: Promise<T>,
  timeoutMs: number,
  message: string,
): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  const timeout = new Promise<never>((_resolve, reject) => {
    timer = setTimeout(() => reject(new Error(message)), timeoutMs);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

/** Polls `condition` (which may throw to give up) until it holds; rejects after `timeoutMs`. */
export async function waitFor(
  condition: () => boolean | Promise<boolean>,
  options: { timeoutMs: number; intervalMs?: number; description: string },
): Promise<void> {
  const deadline = performance.now() + options.timeoutMs;
  for (;;) {
    if (await condition()) return;
    if (performance.now() > deadline) {
      throw new Error(`timed out after ${options.timeoutMs} ms waiting for ${options.description}`);
    }
    await new Promise((resolve) => setTimeout(resolve, options.intervalMs ?? 50));
  }
}

/** The tools in `names` that are not on PATH. */
export function missingTools(names: readonly string[]): string[] {
  return names.filter((name) => spawnSync('which', [name], { stdio: 'ignore' }).status !== 0);
}

export async function sha256File(filePath: string): Promise<string> {
  const hash = crypto.createHash('sha256');
  for await (const chunk of fs.createReadStream(filePath, { highWaterMark: randomChunkBytes })) {
    hash.update(chunk as Buffer);
  }
  return hash.digest('hex');
}

export function sha256(data: Buffer): string {
  return crypto.createHash('sha256').update(data).digest('hex');
}

/** Writes `sizeBytes` of random data (every block distinct); resolves with its SHA-256. */
export async function writeRandomFile(filePath: string, sizeBytes: number): Promise<string> {
  const hash = crypto.createHash('sha256');
  const handle = await fsPromises.open(filePath, 'w');
  try {
    const chunk = Buffer.allocUnsafe(randomChunkBytes);
    for (let offsetBytes = 0; offsetBytes < sizeBytes; offsetBytes += chunk.length) {
      const part = chunk.subarray(0, Math.min(chunk.length, sizeBytes - offsetBytes));
      crypto.randomFillSync(part);
      hash.update(part);
      await handle.write(part, 0, part.length, offsetBytes);
    }
  } finally {
    await handle.close();
  }
  return hash.digest('hex');
}

/** A sparse file of `sizeBytes` (reads as zeros, uses no space). */
export function makeSparseFile(filePath: string, sizeBytes: number): string {
  fs.writeFileSync(filePath, '');
  fs.truncateSync(filePath, sizeBytes);
  return filePath;
}

export function nbdUri(host: string, port: number, exportName: string): string {
  return `nbd://${host}:${port}/${encodeURIComponent(exportName)}`;
}

/**
 * Undo steps run in reverse order of registration (last set up, first torn down). A failed
 * step does not stop the others; runAll() reports every failure at the end.
 */
export class CleanupStack {
  private readonly steps: CleanupStep[] = [];

  /** Registers `run`; the returned step can also be run early (it then runs only once). */
  defer(description: string, run: () => unknown): CleanupStep {
    const step = new CleanupStep(description, run);
    this.steps.push(step);
    return step;
  }

  async runAll(): Promise<void> {
    const failures: Error[] = [];
    while (this.steps.length > 0) {
      const step = this.steps.pop();
      if (step === undefined) break;
      try {
        await step.run();
      } catch (error) {
        failures.push(new Error(`clean-up '${step.description}' failed`, { cause: error }));
      }
    }
    if (failures.length > 0) throw new AggregateError(failures, 'clean-up failed');
  }
}

export class CleanupStep {
  private done: Promise<void> | undefined;

  constructor(
    readonly description: string,
    private readonly work: () => unknown,
  ) {}

  run(): Promise<void> {
    this.done ??= Promise.resolve().then(async () => {
      await this.work();
    });
    return this.done;
  }
}

/** One job of fio's `--output-format=json`, the figures the tests and the benchmark use. */
export interface FioJob {
  readonly name: string;
  readonly error: number;
  readonly read: FioDirection;
  readonly write: FioDirection;
}

export interface FioDirection {
  readonly ioBytes: number;
  readonly iops: number;
  readonly bandwidthBytesPerSecond: number;
  /** Mean completion latency. */
  readonly meanLatencyNs: number;
}

function field(value: unknown, key: string, where: string): unknown {
  if (typeof value !== 'object' || value === null || !(key in value)) {
    throw new Error(`fio JSON: no '${key}' in ${where}`);
  }
  return (value as Record<string, unknown>)[key];
}

function numberField(value: unknown, key: string, where: string): number {
  const found = field(value, key, where);
  if (typeof found !== 'number') throw new Error(`fio JSON: '${key}' in ${where} is not a number`);
  return found;
}

function parseDirection(job: unknown, key: 'read' | 'write', where: string): FioDirection {
  const direction = field(job, key, where);
  const clat = field(direction, 'clat_ns', `${where}.${key}`);
  return {
    ioBytes: numberField(direction, 'io_bytes', `${where}.${key}`),
    iops: numberField(direction, 'iops', `${where}.${key}`),
    bandwidthBytesPerSecond: numberField(direction, 'bw_bytes', `${where}.${key}`),
    meanLatencyNs: numberField(clat, 'mean', `${where}.${key}.clat_ns`),
  };
}

/**
 * Parses fio's JSON output. fio may print notices ("fio: connected to NBD server") on stdout
 * before the JSON document, so parsing starts at the first '{'.
 */
export function parseFioJson(stdout: string): FioJob[] {
  const start = stdout.indexOf('{');
  if (start < 0) throw new Error(`fio printed no JSON:\n${stdout.slice(0, 2000)}`);
  const document: unknown = JSON.parse(stdout.slice(start));
  const jobs = field(document, 'jobs', 'the document');
  if (!Array.isArray(jobs) || jobs.length === 0) throw new Error('fio JSON: no jobs');
  return jobs.map((job: unknown, index) => {
    const where = `jobs[${index}]`;
    const name = field(job, 'jobname', where);
    return {
      name: typeof name === 'string' ? name : String(name),
      error: numberField(job, 'error', where),
      read: parseDirection(job, 'read', where),
      write: parseDirection(job, 'write', where),
    };
  });
}

/** Lines of /proc/mounts whose mount point is under `directory`. */
export function mountsUnder(directory: string): string[] {
  return fs
    .readFileSync('/proc/mounts', 'utf8')
    .split('\n')
    .filter((line) => {
      const mountPoint = line.split(' ')[1]?.replace(/\\040/g, ' ');
      return mountPoint !== undefined && mountPoint.startsWith(directory);
    });
}

/** Lines of `losetup -a` that mention `directory` (loop devices backed by files under it). */
export async function loopDevicesUnder(directory: string): Promise<string[]> {
  const result = await runChecked('losetup', ['-a'], { timeoutMs: 10_000 });
  return result.stdout.split('\n').filter((line) => line.includes(directory));
}
