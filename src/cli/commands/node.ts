/** `tandem node …`: the daemon this CLI talks to. */
import type { Command } from 'commander';
import type { GetInfoResponse__Output } from '../../generated/tandem/v1/GetInfoResponse.js';
import type { NodeClient } from '../../generated/tandem/v1/Node.js';
import { type CliContext, printJson } from '../context.js';
import { formatDuration, formatFields, jsonUint64, parseUint64 } from '../output.js';

function startTimeIso(info: GetInfoResponse__Output): string | null {
  if (info.startTime === null) return null;
  const milliseconds =
    Number(parseUint64(info.startTime.seconds, 'start time')) * 1000 + info.startTime.nanos / 1e6;
  return new Date(milliseconds).toISOString();
}

export function nodeInfoJson(info: GetInfoResponse__Output): Record<string, unknown> {
  return {
    version: info.version,
    hostName: info.hostName,
    runtimeVersion: info.runtimeVersion,
    processId: info.processId,
    startTime: startTimeIso(info),
    uptimeSeconds: jsonUint64(info.uptimeSeconds),
    grpcAddress: info.grpcAddress,
    nbdAddress: info.nbdAddress,
    exportCount: info.exportCount,
    connectionCount: info.connectionCount,
    lockspace:
      info.lockspaceState === 'LOCKSPACE_STATE_NONE'
        ? null
        : {
            path: info.lockspacePath,
            uuid: info.lockspaceUuid,
            state: lockspaceStateWord(info.lockspaceState),
            hostId: info.hostId,
            generation: jsonUint64(info.generation),
          },
  };
}

/** "LOCKSPACE_STATE_RENEWAL_FAILING" -> "renewal-failing". */
function lockspaceStateWord(state: string): string {
  return state
    .replace(/^LOCKSPACE_STATE_/, '')
    .toLowerCase()
    .replaceAll('_', '-');
}

function lockspaceFields(info: GetInfoResponse__Output): Array<[string, string]> {
  if (info.lockspaceState === 'LOCKSPACE_STATE_NONE') return [['Lockspace', 'none']];
  return [
    ['Lockspace', `${info.lockspacePath} (${info.lockspaceUuid})`],
    ['Lockspace state', lockspaceStateWord(info.lockspaceState)],
    ['Host id', info.hostId === 0 ? '-' : String(info.hostId)],
    ['Generation', info.generation === '0' ? '-' : info.generation],
  ];
}

export function nodeInfoText(info: GetInfoResponse__Output): string {
  return formatFields([
    ['Host name', info.hostName],
    ['Version', info.version],
    ['Runtime', `Node.js ${info.runtimeVersion}`],
    ['Process id', String(info.processId)],
    ['Started', startTimeIso(info) ?? 'unknown'],
    ['Uptime', formatDuration(parseUint64(info.uptimeSeconds, 'uptime'))],
    ['gRPC address', info.grpcAddress],
    ['NBD address', info.nbdAddress],
    ['Exports', String(info.exportCount)],
    ['NBD connections', String(info.connectionCount)],
    ...lockspaceFields(info),
  ]);
}

export function registerNodeCommands(program: Command, context: CliContext): void {
  const node = program.command('node').description('the tandemd this CLI talks to');
  node
    .command('info')
    .description('show version, host name, uptime and listen addresses')
    .option('--json', 'print JSON for scripts')
    .action(async (options: { json?: boolean }) => {
      const connection = context.connection();
      const client = connection.client<NodeClient>(connection.services.tandem.v1.Node);
      const info = await connection.call<GetInfoResponse__Output>(
        (metadata, callOptions, callback) => client.GetInfo({}, metadata, callOptions, callback),
      );
      if (options.json === true) printJson(context.stdout, nodeInfoJson(info));
      else context.stdout.write(`${nodeInfoText(info)}\n`);
    });
}
