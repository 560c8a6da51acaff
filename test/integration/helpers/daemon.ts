/**
 * A harness for integration tests: runs tandemd as a separate process (as in production),
 * waits for its ready line, and runs the tandem CLI against it.
 *
 * Every daemon started here is killed when the test process exits, whatever happened, so a
 * failed test never leaves a daemon behind. Tests should still call stop() (to check the exit
 * code) or stopAllDaemons() in an `after` hook.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

/** The repository root (holds package.json and bin/), found from this compiled file. */
export const repositoryRoot = findRepositoryRoot();
export const daemonBin = path.join(repositoryRoot, 'bin', 'tandemd.js');
export const cliBin = path.join(repositoryRoot, 'bin', 'tandem.js');

export const readyTimeoutMs = 20_000;
export const stopTimeoutMs = 10_000;
export const cliTimeoutMs = 30_000;
/** How much of a daemon's stderr an error message quotes. */
const stderrTailBytes = 4_000;
/** Bounds the output kept per process, so a chatty daemon cannot eat the test's memory. */
const outputBytesMax = 4 * 1024 * 1024;

export interface StartDaemonOptions {
  dataDir?: string;
  hostName?: string;
  extraArgs?: readonly string[];
  /** Replaces the default `--grpc 127.0.0.1:0 --nbd 127.0.0.1:0`. */
  listenArgs?: readonly string[];
  env?: NodeJS.ProcessEnv;
}

export interface CliResult {
  code: number | null;
  stdout: string;
  stderr: string;
}

export interface DaemonHandle {
  readonly grpcAddress: string;
  readonly nbdHost: string;
  readonly nbdPort: number;
  readonly dataDir: string;
  readonly process: ChildProcess;
  /** Everything the daemon wrote to stderr so far (its JSON log). */
  stderr(): string;
  /** SIGTERM, then SIGKILL after stopTimeoutMs; resolves with the exit code (null if killed). */
  stop(): Promise<number | null>;
  runCli(args: readonly string[]): Promise<CliResult>;
}

const running = new Set<ChildProcess>();
/** Data dirs this harness made itself (not those a test passed in); removed at the end. */
const createdDirectories = new Set<string>();
process.on('exit', () => {
  for (const child of running) child.kill('SIGKILL');
  removeCreatedDirectories();
});

function removeCreatedDirectories(): void {
  for (const directory of createdDirectories)
    fs.rmSync(directory, { recursive: true, force: true });
  createdDirectories.clear();
}

function findRepositoryRoot(): string {
  let directory = path.dirname(fileURLToPath(import.meta.url));
  while (!fs.existsSync(path.join(directory, 'bin', 'tandemd.js'))) {
    const parent = path.dirname(directory);
    if (parent === directory) throw new Error('cannot find the tandem repository root');
    directory = parent;
  }
  return directory;
}

export function makeTemporaryDirectory(prefix = 'tandem-test-'): string {
  return fs.mkdtempSync(path.join(os.tmpdir(), prefix));
}

/** Keeps the last `outputBytesMax` characters of a stream. */
function collect(stream: NodeJS.ReadableStream | null): () => string {
  let text = '';
  stream?.setEncoding('utf8');
  stream?.on('data', (chunk: string) => {
    text += chunk;
    if (text.length > outputBytesMax) text = text.slice(-outputBytesMax);
  });
  return () => text;
}

function exitOf(child: ChildProcess): Promise<number | null> {
  if (child.exitCode !== null || child.signalCode !== null) return Promise.resolve(child.exitCode);
  return new Promise((resolve) => child.once('exit', (code) => resolve(code)));
}

/** Splits `host:port` or `[v6]:port`. */
export function splitAddress(text: string): { host: string; port: number } {
  const colon = text.lastIndexOf(':');
  const host = text.slice(0, colon).replace(/^\[(.*)\]$/, '$1');
  return { host, port: Number(text.slice(colon + 1)) };
}

export function runCli(
  args: readonly string[],
  options: { env?: NodeJS.ProcessEnv; cwd?: string } = {},
): Promise<CliResult> {
  return runNodeScript(cliBin, args, {
    cwd: options.cwd ?? repositoryRoot,
    env: { ...process.env, ...options.env },
    timeoutMs: cliTimeoutMs,
  });
}

/** Waits for `tandemd ready grpc=… nbd=…` on stdout; rejects with the stderr tail otherwise. */
function waitForReady(
  child: ChildProcess,
  stdout: () => string,
  stderr: () => string,
): Promise<{ grpc: string; nbd: string }> {
  return new Promise((resolve, reject) => {
    const fail = (reason: string): void => {
      cleanup();
      child.kill('SIGKILL');
      reject(new Error(`tandemd ${reason}; stderr tail:\n${stderr().slice(-stderrTailBytes)}`));
    };
    const onData = (): void => {
      const match = /^tandemd ready grpc=(\S+) nbd=(\S+)(?: \S+)*$/m.exec(stdout());
      if (match === null) return;
      cleanup();
      resolve({ grpc: match[1] ?? '', nbd: match[2] ?? '' });
    };
    const onExit = (code: number | null, signal: string | null): void =>
      fail(`exited before it was ready (code ${code}, signal ${signal})`);
    const timer = setTimeout(() => fail(`not ready within ${readyTimeoutMs} ms`), readyTimeoutMs);
    const cleanup = (): void => {
      clearTimeout(timer);
      child.stdout?.off('data', onData);
      child.off('exit', onExit);
    };
    child.stdout?.on('data', onData);
    child.once('exit', onExit);
  });
}

export async function startDaemon(options: StartDaemonOptions = {}): Promise<DaemonHandle> {
  let dataDir = options.dataDir;
  if (dataDir === undefined) {
    dataDir = makeTemporaryDirectory();
    createdDirectories.add(dataDir);
  }
  const args = [
    daemonBin,
    ...(options.listenArgs ?? ['--grpc', '127.0.0.1:0', '--nbd', '127.0.0.1:0']),
    '--data-dir',
    dataDir,
    ...(options.hostName === undefined ? [] : ['--host-name', options.hostName]),
    ...(options.extraArgs ?? []),
  ];
  const child = spawn(process.execPath, args, {
    cwd: repositoryRoot,
    env: { ...process.env, ...options.env },
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  child.once('exit', () => running.delete(child));
  const stdout = collect(child.stdout);
  const stderr = collect(child.stderr);
  const ready = await waitForReady(child, stdout, stderr);
  const nbd = splitAddress(ready.nbd);
  return {
    grpcAddress: ready.grpc,
    nbdHost: nbd.host,
    nbdPort: nbd.port,
    dataDir,
    process: child,
    stderr,
    stop: async () => {
      const exited = exitOf(child);
      child.kill('SIGTERM');
      const timer = setTimeout(() => child.kill('SIGKILL'), stopTimeoutMs);
      const code = await exited;
      clearTimeout(timer);
      return code;
    },
    runCli: (cliArgs) => runCli(['--server', ready.grpc, ...cliArgs]),
  };
}

/**
 * Runs tandemd expecting it to stop on its own (a failed start); kills it after `timeoutMs`.
 * `args` are passed as they are (no default listen addresses or data dir).
 */
export function runDaemonToExit(
  args: readonly string[],
  timeoutMs = readyTimeoutMs,
): Promise<CliResult> {
  return runNodeScript(daemonBin, args, { cwd: repositoryRoot, env: process.env, timeoutMs });
}

/** Kills whatever is still running and removes the data dirs made here; for `after` hooks. */
export async function stopAllDaemons(): Promise<void> {
  const children = [...running];
  for (const child of children) child.kill('SIGKILL');
  await Promise.all(children.map(exitOf));
  removeCreatedDirectories();
}

/** Runs a Node script of the repo to its exit (killed after `timeoutMs`), capturing its output. */
function runNodeScript(
  script: string,
  args: readonly string[],
  options: { cwd: string; env: NodeJS.ProcessEnv; timeoutMs: number },
): Promise<CliResult> {
  const child = spawn(process.execPath, [script, ...args], {
    cwd: options.cwd,
    env: options.env,
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  running.add(child);
  const stdout = collect(child.stdout);
  const stderr = collect(child.stderr);
  const timer = setTimeout(() => child.kill('SIGKILL'), options.timeoutMs);
  return new Promise((resolve, reject) => {
    child.once('error', reject);
    child.once('close', (code) => {
      clearTimeout(timer);
      running.delete(child);
      resolve({ code, stdout: stdout(), stderr: stderr() });
    });
  });
}
