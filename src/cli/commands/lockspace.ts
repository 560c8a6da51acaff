/**
 * `tandem lockspace …`: format and show a lockspace. Both run here, on the device itself, and
 * need no daemon: a lockspace is made before any tandemd joins it.
 */
import { randomUUID } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import { type Command, InvalidArgumentError, Option } from 'commander';
import type { BlockDevice } from '../../disk/block-device.js';
import { openFileDevice } from '../../disk/file-device.js';
import { openNbdDevice, parseNbdUri } from '../../disk/nbd-device.js';
import { TandemError, systemErrorCode } from '../../errors.js';
import {
  type LockspaceLayout,
  computeLayout,
  formatLockspace,
  maxHostsLimit,
  maxResourcesLimit,
  readLockspaceHeader,
} from '../../heartbeat-store/layout.js';
import {
  type LeaseTimings,
  deriveTimings,
  ioTimeoutMsByProfile,
  ioTimeoutMsMax,
  ioTimeoutMsMin,
  parseTimingProfile,
} from '../../heartbeat-store/timings.js';
import { type CliContext, printJson } from '../context.js';
import { type Column, formatBytes, formatFields, formatTable } from '../output.js';

export interface LockspaceInitOptions {
  maxHosts?: number;
  maxResources?: number;
  profile?: string;
  ioTimeoutMs?: number;
  name?: string;
  force?: boolean;
  json?: boolean;
}

/** An integer option in min..max, for commander's argParser. */
export function integerOption(min: number, max: number): (text: string) => number {
  return (text) => {
    const value = Number(text);
    if (!/^\d+$/.test(text.trim()) || !Number.isSafeInteger(value) || value < min || value > max) {
      throw new InvalidArgumentError(`expected an integer in ${min}..${max}`);
    }
    return value;
  };
}

/** --io-timeout-ms wins over --profile; giving both is a mistake worth saying. */
export function resolveIoTimeoutMs(options: { profile?: string; ioTimeoutMs?: number }): number {
  if (options.profile !== undefined && options.ioTimeoutMs !== undefined) {
    throw new TandemError('INVALID_ARGUMENT', 'give --profile or --io-timeout-ms, not both');
  }
  if (options.ioTimeoutMs !== undefined) return options.ioTimeoutMs;
  return ioTimeoutMsByProfile[parseTimingProfile(options.profile ?? 'production')];
}

function isNbdUri(target: string): boolean {
  return /^nbd:/i.test(target);
}

/**
 * Opens the device to format: an nbd:// URI, a block device, or a regular file, which is
 * created when missing and extended when smaller than the lockspace needs.
 */
async function openForFormat(
  target: string,
  neededBytes: (logicalSectorSizeBytes: number) => number,
): Promise<{ device: BlockDevice; created: boolean; extendedFromBytes: number | undefined }> {
  if (isNbdUri(target)) {
    return {
      device: await openNbdDevice(parseNbdUri(target)),
      created: false,
      extendedFromBytes: undefined,
    };
  }
  let created = false;
  try {
    await fs.writeFile(target, '', { flag: 'wx' });
    created = true;
  } catch (error) {
    if (systemErrorCode(error) !== 'EEXIST') {
      const reason = error instanceof Error ? error.message : String(error);
      throw new TandemError('DISK_INVALID_ARGUMENT', `cannot create ${target}: ${reason}`, {
        cause: error,
      });
    }
  }
  try {
    let device = await openFileDevice(target);
    const needed = neededBytes(device.logicalSectorSizeBytes);
    if (device.kind !== 'file' || device.sizeBytes >= needed) {
      return { device, created, extendedFromBytes: undefined };
    }
    const extendedFromBytes = device.sizeBytes;
    await device.close();
    await fs.truncate(target, needed);
    device = await openFileDevice(target);
    return { device, created, extendedFromBytes: created ? undefined : extendedFromBytes };
  } catch (error) {
    if (created) await fs.rm(target, { force: true });
    throw error;
  }
}

export async function initLockspace(
  target: string,
  options: LockspaceInitOptions,
): Promise<{ layout: LockspaceLayout; created: boolean; extendedFromBytes: number | undefined }> {
  const ioTimeoutMs = resolveIoTimeoutMs(options);
  const parameters = {
    maxHosts: options.maxHosts,
    maxResources: options.maxResources,
    ioTimeoutMs,
    name: options.name,
  };
  // Checks every parameter before anything is created on disk.
  const sizeFor = (logicalSectorSizeBytes: number): number =>
    computeLayout({ ...parameters, logicalSectorSizeBytes }, { uuid: randomUUID(), wallMs: 0 })
      .sizeBytes;
  sizeFor(512);
  const opened = await openForFormat(target, sizeFor);
  let layout: LockspaceLayout;
  try {
    layout = await formatLockspace(opened.device, {
      ...parameters,
      force: options.force === true,
      wallMs: Date.now(),
    });
  } catch (error) {
    await opened.device.close().catch(() => undefined);
    // A file made only for this lockspace goes again; an existing one is left as it was found.
    if (opened.created) await fs.rm(target, { force: true });
    throw error;
  }
  await opened.device.close();
  return { layout, created: opened.created, extendedFromBytes: opened.extendedFromBytes };
}

export async function showLockspace(target: string): Promise<LockspaceLayout> {
  const device = isNbdUri(target)
    ? await openNbdDevice({ ...parseNbdUri(target), readOnly: true })
    : await openFileDevice(target, { readOnly: true });
  try {
    return await readLockspaceHeader(device);
  } finally {
    await device.close().catch(() => undefined);
  }
}

function seconds(milliseconds: number): string {
  return `${(milliseconds / 1000).toFixed(milliseconds < 1000 ? 3 : 1)}s`;
}

const timingRows: ReadonlyArray<readonly [string, keyof LeaseTimings]> = [
  ['renewal every', 'renewalIntervalMs'],
  ['fail (self-fence) after', 'renewalFailMs'],
  ['dead (taken over) after', 'hostDeadMs'],
];

export function lockspaceText(layout: LockspaceLayout, where: string): string {
  const timings = deriveTimings(layout.ioTimeoutMs);
  const fields = formatFields([
    ['Lockspace', where],
    ['UUID', layout.uuid],
    ['Name', layout.name === '' ? '-' : layout.name],
    ['Hosts', String(layout.maxHosts)],
    ['Resources', String(layout.maxResources)],
    ['Block size', `${layout.blockSize} B`],
    ['Size', `${formatBytes(BigInt(layout.sizeBytes))} (${layout.sizeBytes} bytes)`],
    ['I/O timeout', `${layout.ioTimeoutMs} ms`],
    ['Created', new Date(layout.createdWallMs).toISOString()],
  ]);
  const columns: ReadonlyArray<Column<readonly [string, keyof LeaseTimings]>> = [
    { header: 'TIMING', value: ([label]) => label },
    { header: 'SECONDS', value: ([, key]) => seconds(timings[key]), align: 'right' },
    { header: 'MS', value: ([, key]) => String(timings[key]), align: 'right' },
  ];
  return `${fields}\n\n${formatTable(columns, timingRows)}`;
}

export function lockspaceJson(layout: LockspaceLayout, where: string): Record<string, unknown> {
  return {
    path: where,
    uuid: layout.uuid,
    name: layout.name,
    maxHosts: layout.maxHosts,
    maxResources: layout.maxResources,
    blockSize: layout.blockSize,
    sizeBytes: layout.sizeBytes,
    ioTimeoutMs: layout.ioTimeoutMs,
    createdAt: new Date(layout.createdWallMs).toISOString(),
    timings: deriveTimings(layout.ioTimeoutMs),
  };
}

/** A path is taken from our working directory; an nbd:// URI as it is. */
function resolveTarget(target: string): string {
  return isNbdUri(target) ? target : path.resolve(target);
}

export function registerLockspaceCommands(program: Command, context: CliContext): void {
  const group = program
    .command('lockspace')
    .description('lockspaces on shared storage (local: no daemon needed)');

  group
    .command('init')
    .description('format a lockspace on a file (created or extended to size), device or nbd:// URI')
    .argument('<path>', 'file, block device or nbd://host:port/export')
    .option('--max-hosts <n>', `host slots (default 128)`, integerOption(1, maxHostsLimit))
    .option('--max-resources <n>', 'lock slots (default 256)', integerOption(1, maxResourcesLimit))
    .addOption(
      new Option(
        '--profile <profile>',
        'timings: production (T = 2 s) or fast (tests, 250 ms)',
      ).choices(['production', 'fast']),
    )
    .option(
      '--io-timeout-ms <ms>',
      'the I/O timeout T every timing derives from',
      integerOption(ioTimeoutMsMin, ioTimeoutMsMax),
    )
    .option('--name <name>', 'a name for people (at most 64 bytes)')
    .option('--force', 'format over an existing lockspace (every host must have left it)')
    .option('--json', 'print JSON for scripts')
    .action(async (target: string, options: LockspaceInitOptions) => {
      const where = resolveTarget(target);
      const result = await initLockspace(where, options);
      if (options.json === true) {
        printJson(context.stdout, {
          ...lockspaceJson(result.layout, where),
          created: result.created,
          extendedFromBytes: result.extendedFromBytes ?? null,
        });
        return;
      }
      const how = result.created
        ? 'created'
        : result.extendedFromBytes === undefined
          ? 'formatted'
          : `extended from ${result.extendedFromBytes} bytes and formatted`;
      context.stdout.write(`lockspace ${how}\n\n${lockspaceText(result.layout, where)}\n`);
    });

  group
    .command('show')
    .description("read a lockspace's header")
    .argument('<path>', 'file, block device or nbd://host:port/export')
    .option('--json', 'print JSON for scripts')
    .action(async (target: string, options: { json?: boolean }) => {
      const where = resolveTarget(target);
      const layout = await showLockspace(where);
      if (options.json === true) printJson(context.stdout, lockspaceJson(layout, where));
      else context.stdout.write(`${lockspaceText(layout, where)}\n`);
    });
}
