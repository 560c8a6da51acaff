/** `tandem export …`: files and block devices served over NBD. */
import path from 'node:path';
import type { Command } from 'commander';
import type { Export__Output } from '../../generated/tandem/v1/Export.js';
import type { ExportsClient } from '../../generated/tandem/v1/Exports.js';
import type { AddExportResponse__Output } from '../../generated/tandem/v1/AddExportResponse.js';
import type { ListExportsResponse__Output } from '../../generated/tandem/v1/ListExportsResponse.js';
import type { RemoveExportResponse__Output } from '../../generated/tandem/v1/RemoveExportResponse.js';
import type { ApiConnection } from '../api.js';
import { type CliContext, printJson } from '../context.js';
import { type Column, formatBytes, formatTable, jsonUint64, parseUint64 } from '../output.js';

export function exportJson(item: Export__Output): Record<string, unknown> {
  return {
    name: item.name,
    filePath: item.filePath,
    sizeBytes: jsonUint64(item.sizeBytes),
    readOnly: item.readOnly,
    connectionCount: item.connectionCount,
    deviceDescription: item.deviceDescription,
    uri: item.uri,
  };
}

const exportColumns: ReadonlyArray<Column<Export__Output>> = [
  { header: 'NAME', value: (item) => item.name },
  {
    header: 'SIZE',
    value: (item) => formatBytes(parseUint64(item.sizeBytes, 'size')),
    align: 'right',
  },
  { header: 'ACCESS', value: (item) => (item.readOnly ? 'ro' : 'rw') },
  { header: 'CONNECTIONS', value: (item) => String(item.connectionCount), align: 'right' },
  { header: 'FILE', value: (item) => item.filePath },
  { header: 'URI', value: (item) => item.uri },
];

export function exportTable(exports: readonly Export__Output[]): string {
  return exports.length === 0 ? 'No exports.' : formatTable(exportColumns, exports);
}

function exportsClient(connection: ApiConnection): ExportsClient {
  return connection.client<ExportsClient>(connection.services.tandem.v1.Exports);
}

export function registerExportCommands(program: Command, context: CliContext): void {
  const group = program.command('export').description('files served over NBD');

  group
    .command('add')
    .description('serve a file or block device over NBD (kept across daemon restarts)')
    .requiredOption('--name <name>', 'NBD export name')
    .requiredOption('--file <path>', 'file or block device, as the daemon sees it')
    .option('--read-only', 'refuse writes')
    .option('--json', 'print JSON for scripts')
    .action(async (options: { name: string; file: string; readOnly?: boolean; json?: boolean }) => {
      const connection = context.connection();
      const client = exportsClient(connection);
      const request = {
        name: options.name,
        // The daemon's working directory is not ours: send the path we mean.
        filePath: path.resolve(options.file),
        readOnly: options.readOnly === true,
      };
      const response = await connection.call<AddExportResponse__Output>(
        (metadata, callOptions, callback) =>
          client.AddExport(request, metadata, callOptions, callback),
      );
      const added = response.export;
      if (added === null) throw new Error('server answered without the export');
      if (options.json === true) {
        printJson(context.stdout, exportJson(added));
        return;
      }
      const size = formatBytes(parseUint64(added.sizeBytes, 'size'));
      const access = added.readOnly ? 'read-only' : 'read-write';
      context.stdout.write(`export '${added.name}' added: ${added.uri} (${size}, ${access})\n`);
    });

  group
    .command('list')
    .description('list the exports')
    .option('--json', 'print JSON for scripts')
    .action(async (options: { json?: boolean }) => {
      const connection = context.connection();
      const client = exportsClient(connection);
      const response = await connection.call<ListExportsResponse__Output>(
        (metadata, callOptions, callback) =>
          client.ListExports({}, metadata, callOptions, callback),
      );
      if (options.json === true)
        printJson(context.stdout, { exports: response.exports.map(exportJson) });
      else context.stdout.write(`${exportTable(response.exports)}\n`);
    });

  group
    .command('remove')
    .description('stop serving an export: drops its NBD connections, then closes the file')
    .argument('<name>', 'export name')
    .action(async (name: string) => {
      const connection = context.connection();
      const client = exportsClient(connection);
      await connection.call<RemoveExportResponse__Output>((metadata, callOptions, callback) =>
        client.RemoveExport({ name }, metadata, callOptions, callback),
      );
      context.stdout.write(`export '${name}' removed\n`);
    });
}
