/**
 * `tandem lock …`: resource locks. A lock belongs to the --server host, not to this CLI: it
 * stays held after the command exits, until released (or the host leaves, fails or is fenced).
 */
import { type Command, InvalidArgumentError } from 'commander';
import type { AcquireResponse__Output } from '../../generated/tandem/v1/AcquireResponse.js';
import type { ConvertResponse__Output } from '../../generated/tandem/v1/ConvertResponse.js';
import type { InspectResponse__Output } from '../../generated/tandem/v1/InspectResponse.js';
import type { ListLocksResponse__Output } from '../../generated/tandem/v1/ListLocksResponse.js';
import type { Lock__Output } from '../../generated/tandem/v1/Lock.js';
import type { LockEvent__Output } from '../../generated/tandem/v1/LockEvent.js';
import type { LockMode } from '../../generated/tandem/v1/LockMode.js';
import type { LockOwner__Output } from '../../generated/tandem/v1/LockOwner.js';
import type { LocksClient } from '../../generated/tandem/v1/Locks.js';
import type { ReleaseResponse__Output } from '../../generated/tandem/v1/ReleaseResponse.js';
import type { RequestReleaseResponse__Output } from '../../generated/tandem/v1/RequestReleaseResponse.js';
import type { SetValueResponse__Output } from '../../generated/tandem/v1/SetValueResponse.js';
import type { ApiConnection } from '../api.js';
import { type CliContext, printJson } from '../context.js';
import { type Column, formatFields, formatTable, jsonUint64 } from '../output.js';
import { enumWord, timestampIso } from './host.js';
import { integerOption } from './lockspace.js';

/** As the daemon checks them (src/locking/types.ts). */
export const lockValueBytesMax = 64;
export const lockWaitMsMax = 3_600_000;

/** --value: an even number of hex digits, at most 64 bytes ('' is an empty value). */
export function parseHexValue(text: string): Buffer {
  if (!/^[0-9a-fA-F]*$/.test(text)) {
    throw new InvalidArgumentError('expected hex digits (0-9, a-f), e.g. 00ff10');
  }
  if (text.length % 2 !== 0) {
    throw new InvalidArgumentError(`expected an even number of hex digits, got ${text.length}`);
  }
  if (text.length / 2 > lockValueBytesMax) {
    throw new InvalidArgumentError(
      `a lock value holds at most ${lockValueBytesMax} bytes (${lockValueBytesMax * 2} hex digits), got ${text.length / 2}`,
    );
  }
  return Buffer.from(text, 'hex');
}

export function parseModeOption(text: string): 'ex' | 'sh' {
  const mode = text.toLowerCase();
  if (mode === 'ex' || mode === 'sh') return mode;
  throw new InvalidArgumentError("expected 'ex' (exclusive) or 'sh' (shared)");
}

export function modeMessage(mode: 'ex' | 'sh'): LockMode {
  return mode === 'ex' ? 'LOCK_MODE_EX' : 'LOCK_MODE_SH';
}

/** The deadline of a call that may wait `waitMs` on purpose: the wait plus the usual timeout. */
export function waitingCallTimeoutMs(waitMs: number, timeoutMs: number): number {
  return waitMs + timeoutMs;
}

function modeWord(mode: string): string {
  return enumWord(mode, 'LOCK_MODE_');
}

/** name#id, the owner column; shared holders comma-separated. */
export function ownerText(lock: Lock__Output): string {
  const owners = lock.owner === null ? lock.sharedOwners : [lock.owner];
  if (owners.length === 0) return '-';
  return owners
    .map((owner) => `${owner.hostName === '' ? '?' : owner.hostName}#${owner.hostId}`)
    .join(',');
}

function generationText(lock: Lock__Output): string {
  const owners = lock.owner === null ? lock.sharedOwners : [lock.owner];
  return owners.length === 0 ? '-' : owners.map((owner) => owner.generation).join(',');
}

function ownerJson(owner: LockOwner__Output): Record<string, unknown> {
  return {
    hostId: owner.hostId,
    hostName: owner.hostName,
    generation: jsonUint64(owner.generation),
  };
}

export function lockJson(lock: Lock__Output): Record<string, unknown> {
  return {
    name: lock.name,
    mode: modeWord(lock.mode),
    owner: lock.owner === null ? null : ownerJson(lock.owner),
    sharedOwners: lock.sharedOwners.map(ownerJson),
    version: jsonUint64(lock.version),
    valueHex: lock.value.toString('hex'),
    since: timestampIso(lock.since),
    heldHere: lock.heldHere === 'LOCK_MODE_FREE' ? null : modeWord(lock.heldHere),
  };
}

const lockColumns: ReadonlyArray<Column<Lock__Output>> = [
  { header: 'NAME', value: (lock) => lock.name },
  { header: 'MODE', value: (lock) => modeWord(lock.mode) },
  { header: 'OWNER', value: ownerText },
  { header: 'GENERATION', value: generationText, align: 'right' },
  { header: 'VERSION', value: (lock) => lock.version, align: 'right' },
  {
    header: 'VALUE',
    value: (lock) => (lock.value.length === 0 ? '-' : lock.value.toString('hex')),
  },
  {
    header: 'SINCE',
    value: (lock) => timestampIso(lock.since)?.replace(/\.\d{3}Z$/, 'Z') ?? '-',
  },
];

export function lockTable(locks: readonly Lock__Output[]): string {
  return locks.length === 0 ? 'No locks.' : formatTable(lockColumns, locks);
}

export function lockText(lock: Lock__Output): string {
  return formatFields([
    ['Name', lock.name],
    ['Mode', modeWord(lock.mode)],
    ['Owner', ownerText(lock)],
    ['Generation', generationText(lock)],
    ['Version', lock.version],
    ['Value', lock.value.length === 0 ? '-' : lock.value.toString('hex')],
    ['Since', timestampIso(lock.since) ?? '-'],
    ['Held here', lock.heldHere === 'LOCK_MODE_FREE' ? 'no' : modeWord(lock.heldHere)],
  ]);
}

export function lockEventLine(event: LockEvent__Output, nowIso: string): string {
  const parts = [
    nowIso,
    enumWord(event.kind, 'LOCK_EVENT_KIND_').padEnd(9),
    event.name,
    modeWord(event.mode),
    `version ${event.version}`,
  ];
  if (event.reason !== '') parts.push(`(${event.reason})`);
  return parts.join(' ');
}

export function lockEventJson(event: LockEvent__Output): Record<string, unknown> {
  return {
    kind: enumWord(event.kind, 'LOCK_EVENT_KIND_'),
    name: event.name,
    mode: modeWord(event.mode),
    version: jsonUint64(event.version),
    reason: event.reason,
  };
}

function locksClient(connection: ApiConnection): LocksClient {
  return connection.client<LocksClient>(connection.services.tandem.v1.Locks);
}

function printLock(
  context: CliContext,
  lock: Lock__Output | null,
  json: boolean | undefined,
  what: string,
): void {
  if (lock === null) throw new Error('server answered without the lock');
  if (json === true) printJson(context.stdout, lockJson(lock));
  else
    context.stdout.write(
      `lock '${lock.name}' ${what} ${modeWord(lock.mode)} (version ${lock.version})\n`,
    );
}

interface WaitOptions {
  mode: 'ex' | 'sh';
  waitMs?: number;
  json?: boolean;
}

export function registerLockCommands(program: Command, context: CliContext): void {
  const group = program.command('lock').description('resource locks of the lockspace');
  const waitOption = integerOption(0, lockWaitMsMax);

  group
    .command('acquire')
    .description('take a lock for the --server host; returns once it is held')
    .argument('<name>', 'lock name: 1..48 characters of [A-Za-z0-9._:/@+-]')
    .requiredOption('--mode <mode>', 'ex (exclusive) or sh (shared)', parseModeOption)
    .option(
      '--wait-ms <ms>',
      'wait this long for a holder to release (default 0: fail at once)',
      waitOption,
    )
    .option(
      '--value <hex>',
      'write this value with the lock (ex only; at most 64 bytes)',
      parseHexValue,
    )
    .option('--json', 'print JSON for scripts')
    .action(async (name: string, options: WaitOptions & { value?: Buffer }) => {
      const connection = context.connection();
      const client = locksClient(connection);
      const waitMs = options.waitMs ?? 0;
      const request = { name, mode: modeMessage(options.mode), waitMs, value: options.value };
      const response = await connection.call<AcquireResponse__Output>(
        (metadata, callOptions, callback) =>
          client.Acquire(request, metadata, callOptions, callback),
        { timeoutMs: waitingCallTimeoutMs(waitMs, connection.timeoutMs) },
      );
      printLock(context, response.lock, options.json, 'held');
    });

  group
    .command('release')
    .description('release a lock the --server host holds')
    .argument('<name>', 'lock name')
    .option('--value <hex>', 'write this value with the release (ex only)', parseHexValue)
    .action(async (name: string, options: { value?: Buffer }) => {
      const connection = context.connection();
      const client = locksClient(connection);
      await connection.call<ReleaseResponse__Output>((metadata, callOptions, callback) =>
        client.Release({ name, value: options.value }, metadata, callOptions, callback),
      );
      context.stdout.write(`lock '${name}' released\n`);
    });

  group
    .command('convert')
    .description('change the mode of a lock the --server host holds')
    .argument('<name>', 'lock name')
    .requiredOption('--mode <mode>', 'ex or sh', parseModeOption)
    .option('--wait-ms <ms>', 'for sh -> ex: wait this long for other holders', waitOption)
    .option('--json', 'print JSON for scripts')
    .action(async (name: string, options: WaitOptions) => {
      const connection = context.connection();
      const client = locksClient(connection);
      const waitMs = options.waitMs ?? 0;
      const request = { name, mode: modeMessage(options.mode), waitMs };
      const response = await connection.call<ConvertResponse__Output>(
        (metadata, callOptions, callback) =>
          client.Convert(request, metadata, callOptions, callback),
        { timeoutMs: waitingCallTimeoutMs(waitMs, connection.timeoutMs) },
      );
      printLock(context, response.lock, options.json, 'now');
    });

  registerLockHolderCommands(group, context);
  registerLockReadCommands(group, context);
}

/** The commands that change a held lock's value, or ask its holder to let go. */
function registerLockHolderCommands(group: Command, context: CliContext): void {
  group
    .command('set-value')
    .description('write the value of a lock the --server host holds exclusive')
    .argument('<name>', 'lock name')
    .requiredOption('--value <hex>', 'at most 64 bytes', parseHexValue)
    .action(async (name: string, options: { value: Buffer }) => {
      const connection = context.connection();
      const client = locksClient(connection);
      await connection.call<SetValueResponse__Output>((metadata, callOptions, callback) =>
        client.SetValue({ name, value: options.value }, metadata, callOptions, callback),
      );
      context.stdout.write(`lock '${name}' value set (${options.value.length} bytes)\n`);
    });

  group
    .command('request-release')
    .description('ask the holder to release a lock (--server must be the holder)')
    .argument('<name>', 'lock name')
    .action(async (name: string) => {
      const connection = context.connection();
      const client = locksClient(connection);
      await connection.call<RequestReleaseResponse__Output>((metadata, callOptions, callback) =>
        client.RequestRelease({ name }, metadata, callOptions, callback),
      );
      context.stdout.write(
        `lock '${name}' released by its holder at ${connection.serverAddress}\n`,
      );
    });
}

/** The commands that read or watch locks. */
function registerLockReadCommands(group: Command, context: CliContext): void {
  group
    .command('show')
    .description('one lock, read from the lockspace')
    .argument('<name>', 'lock name')
    .option('--json', 'print JSON for scripts')
    .action(async (name: string, options: { json?: boolean }) => {
      const connection = context.connection();
      const client = locksClient(connection);
      const response = await connection.call<InspectResponse__Output>(
        (metadata, callOptions, callback) =>
          client.Inspect({ name }, metadata, callOptions, callback),
      );
      if (response.lock === null) throw new Error('server answered without the lock');
      if (options.json === true) printJson(context.stdout, lockJson(response.lock));
      else context.stdout.write(`${lockText(response.lock)}\n`);
    });

  group
    .command('list')
    .description('every named lock of the lockspace, read from disk')
    .option('--json', 'print JSON for scripts')
    .action(async (options: { json?: boolean }) => {
      const connection = context.connection();
      const client = locksClient(connection);
      const response = await connection.call<ListLocksResponse__Output>(
        (metadata, callOptions, callback) => client.ListLocks({}, metadata, callOptions, callback),
      );
      if (options.json === true) printJson(context.stdout, { locks: response.locks.map(lockJson) });
      else context.stdout.write(`${lockTable(response.locks)}\n`);
    });

  group
    .command('watch')
    .description('print locks taken, changed or lost on the --server host until Ctrl-C')
    .option('--json', 'print JSON lines for scripts')
    .action(async (options: { json?: boolean }) => {
      const connection = context.connection();
      const client = locksClient(connection);
      await connection.stream<LockEvent__Output>(
        (metadata, callOptions) => client.WatchLocks({}, metadata, callOptions),
        (event) => {
          const line =
            options.json === true
              ? JSON.stringify(lockEventJson(event))
              : lockEventLine(event, new Date().toISOString());
          context.stdout.write(`${line}\n`);
        },
        context.interrupted(),
      );
    });
}
