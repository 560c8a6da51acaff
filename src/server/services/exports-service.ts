/** tandem.v1.Exports: file exports served over NBD. Requests are checked before any work. */
import type { Export } from '../../generated/tandem/v1/Export.js';
import type { ExportsHandlers } from '../../generated/tandem/v1/Exports.js';
import type { Logger } from '../../log.js';
import type { ExportManager, ExportSummary } from '../export-manager.js';
import { validateExportName, validateFilePath } from '../export-validation.js';
import { unaryHandler } from '../unary.js';

export interface ExportsServiceDependencies {
  readonly logger: Logger;
  readonly exportManager: ExportManager;
  /** nbd://host:port/ of this daemon, for the `uri` field. */
  readonly nbdBaseUri: () => string;
}

export function toExportMessage(summary: ExportSummary, nbdBaseUri: string): Export {
  return {
    name: summary.name,
    filePath: summary.filePath,
    sizeBytes: String(summary.sizeBytes),
    readOnly: summary.readOnly,
    connectionCount: summary.connectionCount,
    deviceDescription: summary.deviceDescription,
    uri: `${nbdBaseUri}${encodeURIComponent(summary.name)}`,
  };
}

export function exportsHandlers(dependencies: ExportsServiceDependencies): ExportsHandlers {
  const { logger, exportManager } = dependencies;
  return {
    AddExport: unaryHandler(
      logger,
      'Exports.AddExport',
      (request) => ({
        name: validateExportName(request.name),
        filePath: validateFilePath(request.filePath),
        readOnly: request.readOnly,
      }),
      async (valid) => ({
        export: toExportMessage(await exportManager.add(valid), dependencies.nbdBaseUri()),
      }),
    ),
    ListExports: unaryHandler(
      logger,
      'Exports.ListExports',
      () => undefined,
      () => ({
        exports: exportManager
          .list()
          .map((summary) => toExportMessage(summary, dependencies.nbdBaseUri())),
      }),
    ),
    RemoveExport: unaryHandler(
      logger,
      'Exports.RemoveExport',
      (request) => validateExportName(request.name),
      async (name) => {
        await exportManager.remove(name);
        return {};
      },
    ),
  };
}
