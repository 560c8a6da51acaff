/**
 * Lease benchmark: what the targets name, beside sanlock's documented defaults.
 *
 * 1. Library, in this process, on a file lockspace with 128 host slots: uncontended exclusive
 *    acquire + release latency, and hand-over latency (release on host A until the waiting
 *    host B holds the lease). Two HeartbeatStore + LockManager pairs, each with its own open of
 *    the file, as two hosts sharing a LUN.
 * 2. Daemons, as separate processes on the same lockspace: the same through gRPC; fencing by
 *    RPC (Locks.RequestRelease and Hosts.Fence, reply when done); time from kill -9 of a host to
 *    `failed` on another, against the configured dead time; and false `failed` verdicts while
 *    fio saturates the disk under the lockspace.
 *
 * Run on demand, never in CI: `npx tsc -p tsconfig.json && node dist/bench/locks.js [--quick]`.
 */
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { parseArgs } from 'node:util';
import { systemClock, systemRandom } from '../src/clock.js';
import { ApiConnection } from '../src/cli/api.js';
import { openFileDevice } from '../src/disk/file-device.js';
import { HeartbeatStore } from '../src/heartbeat-store/index.js';
import { computeLayout, formatLockspace } from '../src/heartbeat-store/layout.js';
import {
  type LeaseTimings,
  type TimingProfile,
  ioTimeoutMsByProfile,
  deriveTimings,
  parseTimingProfile,
} from '../src/heartbeat-store/timings.js';
import { silentLogger } from '../src/log.js';
import { LockManager } from '../src/locking/index.js';
import {
  type DaemonHandle,
  makeTemporaryDirectory,
  startDaemon,
  stopAllDaemons,
} from '../test/integration/helpers/daemon.js';
import { missingTools, startBackground, waitFor } from '../test/integration/helpers/tools.js';
import { median, percentile } from './stats.js';

interface Settings {
  readonly iterations: number;
  readonly handovers: number;
  readonly killRepeats: number;
  readonly fenceRepeats: number;
  readonly saturateSeconds: number;
  readonly profile: TimingProfile;
}

interface Row {
  readonly figure: string;
  readonly tandem: string;
  readonly target: string;
  readonly sanlock: string;
}

const maxHosts = 128;
const killPollIntervalMs = 5;

function parseSettings(argv: readonly string[]): Settings | undefined {
  const { values } = parseArgs({
    args: [...argv],
    options: {
      iterations: { type: 'string' },
      handovers: { type: 'string' },
      'kill-repeats': { type: 'string' },
      'fence-repeats': { type: 'string' },
      'saturate-seconds': { type: 'string' },
      profile: { type: 'string' },
      quick: { type: 'boolean', default: false },
      help: { type: 'boolean', short: 'h', default: false },
    },
    strict: true,
  });
  if (values.help === true) {
    console.log(
      'usage: node dist/bench/locks.js [--quick] [--iterations N] [--handovers N]\n' +
        '         [--kill-repeats N] [--fence-repeats N] [--saturate-seconds S] [--profile fast|production]\n' +
        '  --iterations N        uncontended acquire+release pairs (default 500; --quick: 100)\n' +
        '  --handovers N         hand-overs measured (default 50; --quick: 10)\n' +
        '  --kill-repeats N      kill -9 → failed measurements (default 5; --quick: 2)\n' +
        '  --fence-repeats N     Hosts.Fence calls (default 5; --quick: 2)\n' +
        '  --saturate-seconds S  fio saturation window (default 30; --quick: 8)\n' +
        "  --profile P           timing profile of the daemons' lockspace (default fast)",
    );
    return undefined;
  }
  const quick = values.quick === true;
  return {
    iterations: positiveInteger(values.iterations, quick ? 100 : 500, '--iterations'),
    handovers: positiveInteger(values.handovers, quick ? 10 : 50, '--handovers'),
    killRepeats: positiveInteger(values['kill-repeats'], quick ? 2 : 5, '--kill-repeats'),
    fenceRepeats: positiveInteger(values['fence-repeats'], quick ? 2 : 5, '--fence-repeats'),
    saturateSeconds: positiveInteger(
      values['saturate-seconds'],
      quick ? 8 : 30,
      '--saturate-seconds',
    ),
    profile: parseTimingProfile(values.profile ?? 'fast'),
  };
}

function positiveInteger(text: string | undefined, fallback: number, flag: string): number {
  if (text === undefined) return fallback;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value <= 0)
    throw new Error(`${flag} takes a positive integer, got '${text}'`);
  return value;
}

function ms(value: number): string {
  if (!Number.isFinite(value)) return '-';
  return value >= 100 ? `${Math.round(value)} ms` : `${value.toFixed(2)} ms`;
}

function latencyCell(samples: readonly number[]): string {
  return `median ${ms(median(samples))}, p99 ${ms(percentile(samples, 99))} (n=${samples.length})`;
}

async function makeLockspace(directory: string, profile: TimingProfile): Promise<string> {
  const filePath = path.join(directory, 'lockspace.img');
  const ioTimeoutMs = ioTimeoutMsByProfile[profile];
  const { sizeBytes } = computeLayout(
    { maxHosts, ioTimeoutMs, logicalSectorSizeBytes: 512 },
    { uuid: '00000000-0000-0000-0000-000000000000', wallMs: 0 },
  );
  fs.writeFileSync(filePath, '');
  fs.truncateSync(filePath, sizeBytes);
  const device = await openFileDevice(filePath);
  try {
    await formatLockspace(device, { maxHosts, ioTimeoutMs, wallMs: Date.now() });
  } finally {
    await device.close();
  }
  return filePath;
}

interface LibraryHost {
  readonly store: HeartbeatStore;
  readonly locks: LockManager;
}

async function openLibraryHost(filePath: string, hostName: string): Promise<LibraryHost> {
  const device = await openFileDevice(filePath);
  const store = await HeartbeatStore.open(
    device,
    { hostName },
    { clock: systemClock, random: systemRandom, logger: silentLogger },
  );
  await store.join();
  const locks = new LockManager({
    device,
    liveness: store,
    clock: systemClock,
    random: systemRandom,
    logger: silentLogger,
  });
  return { store, locks };
}

async function benchLibrary(directory: string, settings: Settings): Promise<Row[]> {
  const filePath = await makeLockspace(directory, 'fast');
  const [a, b] = await Promise.all([
    openLibraryHost(filePath, 'bench-a'),
    openLibraryHost(filePath, 'bench-b'),
  ]);
  const acquireMs: number[] = [];
  const pairMs: number[] = [];
  // The first acquire adds the name to the directory; measure steady state.
  await a.locks.acquire('uncontended', { mode: 'ex' });
  await a.locks.release('uncontended');
  for (let index = 0; index < settings.iterations; index += 1) {
    const started = performance.now();
    await a.locks.acquire('uncontended', { mode: 'ex' });
    const acquired = performance.now();
    await a.locks.release('uncontended');
    acquireMs.push(acquired - started);
    pairMs.push(performance.now() - started);
  }
  const handoverMs: number[] = [];
  for (let index = 0; index < settings.handovers; index += 1) {
    await a.locks.acquire('handover', { mode: 'ex' });
    let grantedAt = 0;
    const waiting = b.locks.acquire('handover', { mode: 'ex', waitMs: 10_000 }).then((info) => {
      grantedAt = performance.now();
      return info;
    });
    // Let B find the lease held and start polling, as a real waiter would be.
    await new Promise((resolve) => setTimeout(resolve, 30 + Math.random() * 20));
    const releasedAt = performance.now();
    await a.locks.release('handover');
    await waiting;
    handoverMs.push(grantedAt - releasedAt);
    await b.locks.release('handover');
  }
  for (const host of [a, b]) {
    await host.locks.close();
    await host.store.leave();
  }
  return [
    {
      figure: 'library: uncontended ex acquire',
      tandem: latencyCell(acquireMs),
      target: 'median ≤ 5 ms',
      sanlock: '6 I/Os for a free lease',
    },
    {
      figure: 'library: uncontended acquire+release',
      tandem: latencyCell(pairMs),
      target: '-',
      sanlock: '-',
    },
    {
      figure: 'library: hand-over after release',
      tandem: latencyCell(handoverMs),
      target: '≤ 50 ms',
      sanlock: 'no queue: the client retries',
    },
  ];
}

/** One Locks client per connection: a new client per call would open a new channel each time. */
const locksClients = new WeakMap<
  ApiConnection,
  InstanceType<ApiConnection['services']['tandem']['v1']['Locks']>
>();

function locksClient(
  connection: ApiConnection,
): InstanceType<ApiConnection['services']['tandem']['v1']['Locks']> {
  let client = locksClients.get(connection);
  if (client === undefined) {
    client = connection.client(connection.services.tandem.v1.Locks);
    locksClients.set(connection, client);
  }
  return client;
}

function lockCall(
  connection: ApiConnection,
  method: 'Acquire' | 'Release' | 'RequestRelease',
  name: string,
): Promise<unknown> {
  const client = locksClient(connection);
  return connection.call((metadata, options, callback) => {
    if (method === 'Acquire')
      client.Acquire({ name, mode: 'LOCK_MODE_EX' }, metadata, options, callback);
    else if (method === 'Release') client.Release({ name }, metadata, options, callback);
    else client.RequestRelease({ name }, metadata, options, callback);
  });
}

const hostsClients = new WeakMap<
  ApiConnection,
  InstanceType<ApiConnection['services']['tandem']['v1']['Hosts']>
>();

async function hostStates(connection: ApiConnection): Promise<Map<string, string>> {
  let client = hostsClients.get(connection);
  if (client === undefined) {
    client = connection.client(connection.services.tandem.v1.Hosts);
    hostsClients.set(connection, client);
  }
  const response = await connection.call<{ hosts: { hostName: string; state: string }[] }>(
    (metadata, options, callback) => client.ListHosts({}, metadata, options, callback as never),
  );
  return new Map(response.hosts.map((host) => [host.hostName, host.state]));
}

async function startHost(lockspacePath: string, name: string): Promise<DaemonHandle> {
  return startDaemon({
    hostName: name,
    extraArgs: ['--lockspace', lockspacePath, '--log-level', 'warn'],
  });
}

async function benchDaemonLatency(a: DaemonHandle, settings: Settings): Promise<Row[]> {
  const connection = new ApiConnection(a.grpcAddress, 10_000);
  const pairMs: number[] = [];
  const requestReleaseMs: number[] = [];
  try {
    await lockCall(connection, 'Acquire', 'rpc');
    await lockCall(connection, 'Release', 'rpc');
    for (let index = 0; index < settings.iterations; index += 1) {
      const started = performance.now();
      await lockCall(connection, 'Acquire', 'rpc');
      await lockCall(connection, 'Release', 'rpc');
      pairMs.push(performance.now() - started);
    }
    for (let index = 0; index < settings.iterations; index += 1) {
      await lockCall(connection, 'Acquire', 'fence-me');
      const started = performance.now();
      await lockCall(connection, 'RequestRelease', 'fence-me');
      requestReleaseMs.push(performance.now() - started);
    }
  } finally {
    connection.close();
  }
  return [
    {
      figure: 'gRPC: acquire+release round trip',
      tandem: latencyCell(pairMs),
      target: '-',
      sanlock: '-',
    },
    {
      figure: 'gRPC: Locks.RequestRelease (reply when released)',
      tandem: latencyCell(requestReleaseMs),
      target: 'p99 ≤ 40 ms',
      sanlock: 'RPC fence 40 ms; power-off 3.5 s',
    },
  ];
}

async function benchFence(
  lockspacePath: string,
  settings: Settings,
  timings: LeaseTimings,
): Promise<Row> {
  const fenceMs: number[] = [];
  for (let index = 0; index < settings.fenceRepeats; index += 1) {
    const victim = await startHost(lockspacePath, `fence-${index}`);
    const connection = new ApiConnection(victim.grpcAddress, 10_000 + timings.hostDeadMs);
    try {
      await lockCall(connection, 'Acquire', `fenced-${index}`);
      const client = connection.client(connection.services.tandem.v1.Hosts);
      const started = performance.now();
      await connection.call((metadata, options, callback) =>
        client.Fence({ reason: 'bench' }, metadata, options, callback as never),
      );
      fenceMs.push(performance.now() - started);
    } finally {
      connection.close();
      await victim.stop();
    }
  }
  return {
    figure: 'gRPC: Hosts.Fence (gate closed, leases released)',
    tandem: latencyCell(fenceMs),
    target: 'p99 ≤ 40 ms',
    sanlock: 'RPC fence 40 ms; power-off 3.5 s',
  };
}

async function benchKill(
  observer: DaemonHandle,
  lockspacePath: string,
  settings: Settings,
  timings: LeaseTimings,
): Promise<Row> {
  const connection = new ApiConnection(observer.grpcAddress, 10_000);
  const detectionMs: number[] = [];
  try {
    for (let index = 0; index < settings.killRepeats; index += 1) {
      const name = `victim-${index}`;
      const victim = await startHost(lockspacePath, name);
      await waitFor(async () => (await hostStates(connection)).get(name) === 'HOST_STATE_LIVE', {
        timeoutMs: 20_000,
        description: `${name} live`,
      });
      // Let the observer watch the victim for longer than the dead time, as in a steady cluster.
      await new Promise((resolve) =>
        setTimeout(resolve, timings.hostDeadMs + Math.random() * timings.renewalIntervalMs),
      );
      const killedAt = performance.now();
      victim.process.kill('SIGKILL');
      for (;;) {
        if ((await hostStates(connection)).get(name) === 'HOST_STATE_FAILED') break;
        if (performance.now() - killedAt > timings.hostDeadMs * 3 + 10_000)
          throw new Error(`${name} never seen failed`);
        await new Promise((resolve) => setTimeout(resolve, killPollIntervalMs));
      }
      detectionMs.push(performance.now() - killedAt);
    }
  } finally {
    connection.close();
  }
  const ratio = median(detectionMs) / timings.hostDeadMs;
  const worst = Math.max(...detectionMs.map((value) => Math.abs(value / timings.hostDeadMs - 1)));
  return {
    figure: `kill -9 → failed (dead time ${ms(timings.hostDeadMs)})`,
    tandem: `median ${ms(median(detectionMs))} = ${ratio.toFixed(3)}× dead time; worst deviation ${(worst * 100).toFixed(1)}% (n=${detectionMs.length})`,
    target: 'within 10% of the dead time',
    sanlock: 'dead at 140 s (8 × io_timeout + 60 s)',
  };
}

async function benchSaturation(
  observer: DaemonHandle,
  directory: string,
  settings: Settings,
): Promise<Row> {
  if (missingTools(['fio']).length > 0) {
    return {
      figure: 'false failed under fio saturation',
      tandem: 'skipped: no fio',
      target: '0',
      sanlock: '-',
    };
  }
  const connection = new ApiConnection(observer.grpcAddress, 10_000);
  const falseFailures = new Set<string>();
  let polls = 0;
  const fio = startBackground('fio', [
    '--name=saturate',
    `--filename=${path.join(directory, 'fio.data')}`,
    '--size=1G',
    '--rw=randwrite',
    '--bs=64k',
    '--ioengine=libaio',
    '--direct=1',
    '--iodepth=64',
    '--numjobs=2',
    '--time_based',
    `--runtime=${settings.saturateSeconds}`,
    '--group_reporting',
  ]);
  try {
    const endAt = performance.now() + settings.saturateSeconds * 1000;
    while (performance.now() < endAt && fio.exit() === undefined) {
      for (const [name, state] of await hostStates(connection)) {
        if (
          state === 'HOST_STATE_FAILED' &&
          !name.startsWith('victim-') &&
          !name.startsWith('fence-')
        )
          falseFailures.add(name);
      }
      polls += 1;
      await new Promise((resolve) => setTimeout(resolve, 50));
    }
  } finally {
    connection.close();
    await fio.stop();
  }
  return {
    figure: `false failed verdicts, ${settings.saturateSeconds} s of fio randwrite qd64×2`,
    tandem: `${falseFailures.size} (${[...falseFailures].join(', ') || 'none'}; ${polls} polls)`,
    target: '0',
    sanlock: '-',
  };
}

function printTable(rows: readonly Row[], settings: Settings, timings: LeaseTimings): void {
  const headers: Row = {
    figure: 'figure',
    tandem: 'tandem',
    target: 'target',
    sanlock: 'sanlock default / reference',
  };
  const keys = ['figure', 'tandem', 'target', 'sanlock'] as const;
  const widths = keys.map((key) =>
    Math.max(headers[key].length, ...rows.map((row) => row[key].length)),
  );
  const line = (row: Row): string =>
    keys.map((key, index) => row[key].padEnd(widths[index] ?? 0)).join(' | ');
  console.log(
    `\nleases, ${os.cpus().length} CPUs, node ${process.version}, daemons' profile ${settings.profile}: ` +
      `ioTimeout ${timings.ioTimeoutMs} ms, renewal ${timings.renewalIntervalMs} ms, fence ${timings.renewalFailMs} ms, dead ${timings.hostDeadMs} ms`,
  );
  console.log(line(headers));
  console.log(widths.map((width) => '-'.repeat(width)).join('-|-'));
  for (const row of rows) console.log(line(row));
}

async function main(): Promise<number> {
  const settings = parseSettings(process.argv.slice(2));
  if (settings === undefined) return 0;
  const timings = deriveTimings(ioTimeoutMsByProfile[settings.profile]);
  const directory = makeTemporaryDirectory('tandem-bench-locks-');
  const rows: Row[] = [];
  try {
    console.error('library: uncontended acquire and hand-over…');
    rows.push(...(await benchLibrary(directory, settings)));
    const lockspacePath = await makeLockspace(
      fs.mkdtempSync(path.join(directory, 'daemons-')),
      settings.profile,
    );
    console.error('daemons: starting 3 hosts…');
    const [a] = await Promise.all(['a', 'b', 'c'].map((name) => startHost(lockspacePath, name)));
    if (a === undefined) throw new Error('no daemon');
    console.error('daemons: gRPC latency and RequestRelease…');
    rows.push(...(await benchDaemonLatency(a, settings)));
    console.error('daemons: Hosts.Fence…');
    rows.push(await benchFence(lockspacePath, settings, timings));
    console.error('daemons: kill -9 → failed…');
    rows.push(await benchKill(a, lockspacePath, settings, timings));
    console.error('daemons: fio saturation…');
    rows.push(await benchSaturation(a, directory, settings));
  } finally {
    await stopAllDaemons();
    fs.rmSync(directory, { recursive: true, force: true });
  }
  printTable(rows, settings, timings);
  return 0;
}

process.exitCode = await main();
