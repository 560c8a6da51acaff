/** `tandem host …`: the hosts of the lockspace, as the --server host sees them. */
import fs from 'node:fs/promises';
import os from 'node:os';
import type { Command } from 'commander';
import type { FenceResponse__Output } from '../../generated/tandem/v1/FenceResponse.js';
import type { Host__Output } from '../../generated/tandem/v1/Host.js';
import type { HostEvent__Output } from '../../generated/tandem/v1/HostEvent.js';
import type { HostsClient } from '../../generated/tandem/v1/Hosts.js';
import type { ListHostsResponse__Output } from '../../generated/tandem/v1/ListHostsResponse.js';
import type { PublishPayloadResponse__Output } from '../../generated/tandem/v1/PublishPayloadResponse.js';
import type { Timestamp__Output } from '../../generated/google/protobuf/Timestamp.js';
import { type ApiConnection, CliError } from '../api.js';
import { type CliContext, printJson } from '../context.js';
import { type Column, formatDuration, formatTable, jsonUint64, parseUint64 } from '../output.js';

/** As the daemon checks it (a host slot keeps 1 KiB of payload). */
export const payloadBytesMax = 1024;

/** "HOST_STATE_LIVE" -> "live", "HOST_EVENT_KIND_JOINED" -> "joined". */
export function enumWord(value: string, prefix: string): string {
  return value.startsWith(prefix) ? value.slice(prefix.length).toLowerCase() : value.toLowerCase();
}

/** A heartbeat age for people: "0.3s", "12.5s", "3m 5s". */
export function formatAge(milliseconds: bigint): string {
  if (milliseconds < 60_000n) return `${(Number(milliseconds) / 1000).toFixed(1)}s`;
  return formatDuration(milliseconds / 1000n);
}

export function timestampIso(timestamp: Timestamp__Output | null): string | null {
  if (timestamp === null) return null;
  const milliseconds =
    Number(parseUint64(timestamp.seconds, 'timestamp')) * 1000 + timestamp.nanos / 1e6;
  return new Date(milliseconds).toISOString();
}

export function hostJson(host: Host__Output): Record<string, unknown> {
  return {
    hostId: host.hostId,
    hostName: host.hostName,
    generation: jsonUint64(host.generation),
    state: enumWord(host.state, 'HOST_STATE_'),
    heartbeatAgeMs: jsonUint64(host.heartbeatAgeMs),
    address: host.address,
    payloadSizeBytes: host.payloadSizeBytes,
    payloadHex: host.payloadUnreadable ? null : host.payload.toString('hex'),
    self: host.self,
    renewedAt: timestampIso(host.renewedTime),
  };
}

const hostColumns: ReadonlyArray<Column<Host__Output>> = [
  { header: 'HOST ID', value: (host) => String(host.hostId), align: 'right' },
  { header: 'NAME', value: (host) => host.hostName },
  { header: 'GENERATION', value: (host) => host.generation, align: 'right' },
  { header: 'STATE', value: (host) => enumWord(host.state, 'HOST_STATE_') },
  {
    header: 'HEARTBEAT',
    value: (host) => formatAge(parseUint64(host.heartbeatAgeMs, 'heartbeat age')),
    align: 'right',
  },
  {
    header: 'PAYLOAD',
    value: (host) => (host.payloadUnreadable ? 'unreadable' : `${host.payloadSizeBytes} B`),
    align: 'right',
  },
  { header: 'ADDRESS', value: (host) => (host.address === '' ? '-' : host.address) },
  { header: 'SELF', value: (host) => (host.self ? '*' : '') },
];

export function hostTable(hosts: readonly Host__Output[]): string {
  return hosts.length === 0 ? 'No hosts.' : formatTable(hostColumns, hosts);
}

/** One line per event of `tandem host watch`. */
export function hostEventLine(event: HostEvent__Output, nowIso: string): string {
  const kind = enumWord(event.kind, 'HOST_EVENT_KIND_');
  const host = event.host;
  if (host === null) return `${nowIso} ${kind}`;
  const parts = [
    nowIso,
    kind.padEnd(7),
    `${host.hostName}#${host.hostId}`,
    `generation ${host.generation}`,
    enumWord(host.state, 'HOST_STATE_'),
  ];
  if (host.address !== '') parts.push(host.address);
  if (event.kind === 'HOST_EVENT_KIND_PAYLOAD') parts.push(`payload ${host.payloadSizeBytes} B`);
  if (host.self) parts.push('(self)');
  if (event.snapshot) parts.push('(now)');
  return parts.join(' ');
}

export function hostEventJson(event: HostEvent__Output): Record<string, unknown> {
  return {
    kind: enumWord(event.kind, 'HOST_EVENT_KIND_'),
    snapshot: event.snapshot,
    host: event.host === null ? null : hostJson(event.host),
  };
}

export async function readPayloadFile(filePath: string): Promise<Buffer> {
  let payload: Buffer;
  try {
    payload = await fs.readFile(filePath);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new CliError(`cannot read payload file ${filePath}: ${reason}`, 'INVALID_ARGUMENT');
  }
  if (payload.length > payloadBytesMax) {
    throw new CliError(
      `payload file ${filePath} has ${payload.length} bytes; a host publishes at most ${payloadBytesMax}`,
      'INVALID_ARGUMENT',
    );
  }
  return payload;
}

/** user@host for a log line; userInfo throws for a user without a passwd entry. */
function whoAmI(): string {
  let user = 'unknown';
  try {
    user = os.userInfo().username;
  } catch {
    // Containers may run as a uid without a name: 'unknown' says as much.
  }
  return `${user}@${os.hostname()}`;
}

function hostsClient(connection: ApiConnection): HostsClient {
  return connection.client<HostsClient>(connection.services.tandem.v1.Hosts);
}

export function registerHostCommands(program: Command, context: CliContext): void {
  const group = program.command('host').description('the hosts of the lockspace');

  group
    .command('list')
    .description('every host slot in use, as the --server host sees it')
    .option('--json', 'print JSON for scripts')
    .action(async (options: { json?: boolean }) => {
      const connection = context.connection();
      const client = hostsClient(connection);
      const response = await connection.call<ListHostsResponse__Output>(
        (metadata, callOptions, callback) => client.ListHosts({}, metadata, callOptions, callback),
      );
      if (options.json === true) printJson(context.stdout, { hosts: response.hosts.map(hostJson) });
      else context.stdout.write(`${hostTable(response.hosts)}\n`);
    });

  group
    .command('watch')
    .description('print the hosts, then every change, until Ctrl-C (--json: one object a line)')
    .option('--json', 'print JSON lines for scripts')
    .action(async (options: { json?: boolean }) => {
      const connection = context.connection();
      const client = hostsClient(connection);
      await connection.stream<HostEvent__Output>(
        (metadata, callOptions) => client.WatchHosts({}, metadata, callOptions),
        (event) => {
          const line =
            options.json === true
              ? JSON.stringify(hostEventJson(event))
              : hostEventLine(event, new Date().toISOString());
          context.stdout.write(`${line}\n`);
        },
        context.interrupted(),
      );
    });

  group
    .command('publish')
    .description("replace the payload in the --server host's slot (at most 1024 bytes)")
    .requiredOption('--payload-file <file>', 'the payload; an empty file clears it')
    .action(async (options: { payloadFile: string }) => {
      const payload = await readPayloadFile(options.payloadFile);
      const connection = context.connection();
      const client = hostsClient(connection);
      await connection.call<PublishPayloadResponse__Output>((metadata, callOptions, callback) =>
        client.PublishPayload({ payload }, metadata, callOptions, callback),
      );
      context.stdout.write(`payload published (${payload.length} bytes)\n`);
    });

  group
    .command('fence')
    .description('fence the --server host at once: close its write gate, release every lock, leave')
    .option('--reason <text>', 'why, for the logs of the fenced host')
    .action(async (options: { reason?: string }) => {
      const connection = context.connection();
      const client = hostsClient(connection);
      const reason = options.reason ?? `tandem host fence by ${whoAmI()}`;
      await connection.call<FenceResponse__Output>((metadata, callOptions, callback) =>
        client.Fence({ reason }, metadata, callOptions, callback),
      );
      context.stdout.write(
        `host at ${connection.serverAddress} fenced: every lock released, lockspace left\n`,
      );
    });
}
