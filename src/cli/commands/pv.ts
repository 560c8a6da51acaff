/**
 * `tandem pv …`: physical volumes, the devices (paths or nbd:// URIs) volume groups are made
 * of. PVs are named by the path the --server daemon opens them by.
 */
import path from 'node:path';
import { type Command, InvalidArgumentError } from 'commander';
import type { ChangePvResponse__Output } from '../../generated/tandem/v1/ChangePvResponse.js';
import type { CreatePvResponse__Output } from '../../generated/tandem/v1/CreatePvResponse.js';
import type { ListPvsResponse__Output } from '../../generated/tandem/v1/ListPvsResponse.js';
import type { MoveProgress__Output } from '../../generated/tandem/v1/MoveProgress.js';
import type { PhysicalVolumesClient } from '../../generated/tandem/v1/PhysicalVolumes.js';
import type { Pv__Output } from '../../generated/tandem/v1/Pv.js';
import type { RemovePvResponse__Output } from '../../generated/tandem/v1/RemovePvResponse.js';
import { moveStepExtentsDefault, moveStepExtentsMax } from '../../clvm/move-planner.js';
import { type ApiConnection, CliError } from '../api.js';
import { type CliContext, printJson } from '../context.js';
import { type Column, formatBytes, formatTable, jsonUint64, parseUint64 } from '../output.js';
import { ProgressReporter, type ProgressStep } from '../progress.js';
import { integerOption } from './lockspace.js';

/**
 * A PV argument as the daemon should open it: a URI (nbd://…) as given, a relative path
 * resolved here (the daemon's working directory is not ours), as `export add` does.
 */
export function pvPath(text: string): string {
  return /^[a-z][a-z0-9+.-]*:\/\//i.test(text) ? text : path.resolve(text);
}

export function pvJson(pv: Pv__Output): Record<string, unknown> {
  return {
    path: pv.path,
    uuid: pv.uuid,
    sizeBytes: jsonUint64(pv.sizeBytes),
    vgName: pv.vgName === '' ? null : pv.vgName,
    vgUuid: pv.vgUuid === '' ? null : pv.vgUuid,
    extentCount: pv.extentCount,
    freeExtentCount: pv.freeExtentCount,
    missing: pv.missing,
    allocatable: pv.allocatable,
  };
}

/** `--allocatable y|n`: y, yes, n or no, as pvchange -x takes y|n. */
export function yesNoOption(text: string): boolean {
  const answer = text.trim().toLowerCase();
  if (answer === 'y' || answer === 'yes') return true;
  if (answer === 'n' || answer === 'no') return false;
  throw new InvalidArgumentError(`expected y or n (yes or no), not '${text}'`);
}

const pvColumns: ReadonlyArray<Column<Pv__Output>> = [
  { header: 'PV', value: (pv) => pv.path },
  { header: 'VG', value: (pv) => (pv.vgName === '' ? '-' : pv.vgName) },
  {
    header: 'SIZE',
    value: (pv) => formatBytes(parseUint64(pv.sizeBytes, 'PV size')),
    align: 'right',
  },
  {
    header: 'FREE PE',
    value: (pv) => (pv.vgName === '' ? '-' : `${pv.freeExtentCount}/${pv.extentCount}`),
    align: 'right',
  },
  // LVM's 'a' of pv_attr: whether new extents may go to the PV (pv change --allocatable).
  { header: 'ALLOC', value: (pv) => (pv.vgName === '' ? '-' : pv.allocatable ? 'y' : 'n') },
  { header: 'STATUS', value: (pv) => (pv.missing ? 'missing' : '-') },
  { header: 'UUID', value: (pv) => pv.uuid },
];

export function pvTable(pvs: readonly Pv__Output[]): string {
  return pvs.length === 0 ? 'No physical volumes.' : formatTable(pvColumns, pvs);
}

/** What the bar shows of one progress message of a move. */
export function moveStep(progress: MoveProgress__Output): ProgressStep {
  const movedBytes = parseUint64(progress.movedBytes, 'moved bytes');
  const totalBytes = parseUint64(progress.totalBytes, 'total bytes');
  const lv = progress.lvName === '' ? progress.vgName : `${progress.vgName}/${progress.lvName}`;
  const text = [
    `${formatBytes(movedBytes)} of ${formatBytes(totalBytes)}`,
    `(${progress.movedExtentCount}/${progress.totalExtentCount} extents)`,
    lv,
  ];
  return { done: movedBytes, total: totalBytes, text: text.join(' ').trimEnd() };
}

/** The line `pv move` ends with. */
export function moveSummary(
  pvPathText: string,
  last: MoveProgress__Output,
  lvNames: ReadonlySet<string>,
): string {
  if (last.totalExtentCount === 0) return `nothing to move: no extents in use on ${pvPathText}`;
  const bytes = formatBytes(parseUint64(last.movedBytes, 'moved bytes'));
  const lvs = lvNames.size === 0 ? '' : ` of ${[...lvNames].join(', ')}`;
  return `moved ${last.movedExtentCount} extents (${bytes})${lvs} off ${pvPathText}`;
}

export function pvClient(connection: ApiConnection): PhysicalVolumesClient {
  return connection.client<PhysicalVolumesClient>(connection.services.tandem.v1.PhysicalVolumes);
}

export function registerPvCommands(program: Command, context: CliContext): void {
  const group = program.command('pv').description('physical volumes: the devices VGs are made of');

  group
    .command('create')
    .description('write a PV label and empty metadata areas on a device that holds no PV')
    .argument('<path>', 'file, block device or nbd:// URI, as the daemon opens it')
    .option('--json', 'print JSON for scripts')
    .action(async (pathText: string, options: { json?: boolean }) => {
      const connection = context.connection();
      const client = pvClient(connection);
      const response = await connection.call<CreatePvResponse__Output>(
        (metadata, callOptions, callback) =>
          client.CreatePv({ path: pvPath(pathText) }, metadata, callOptions, callback),
      );
      const pv = response.pv;
      if (pv === null) throw new Error('server answered without the PV');
      if (options.json === true) printJson(context.stdout, pvJson(pv));
      else {
        const size = formatBytes(parseUint64(pv.sizeBytes, 'PV size'));
        context.stdout.write(`physical volume ${pv.path} created (${size}, uuid ${pv.uuid})\n`);
      }
    });

  group
    .command('list')
    .description('every PV the --server daemon knows of')
    .option('--json', 'print JSON for scripts')
    .action(async (options: { json?: boolean }) => {
      const connection = context.connection();
      const client = pvClient(connection);
      const response = await connection.call<ListPvsResponse__Output>(
        (metadata, callOptions, callback) => client.ListPvs({}, metadata, callOptions, callback),
      );
      if (options.json === true) printJson(context.stdout, { pvs: response.pvs.map(pvJson) });
      else context.stdout.write(`${pvTable(response.pvs)}\n`);
    });

  group
    .command('remove')
    .description('wipe the label of a PV that belongs to no VG')
    .argument('<path>', 'the PV')
    .action(async (pathText: string) => {
      const connection = context.connection();
      const client = pvClient(connection);
      const request = { path: pvPath(pathText) };
      await connection.call<RemovePvResponse__Output>((metadata, callOptions, callback) =>
        client.RemovePv(request, metadata, callOptions, callback),
      );
      context.stdout.write(`physical volume ${request.path} removed\n`);
    });

  registerPvChangeCommand(group, context);
  registerPvMoveCommand(group, context);
}

function registerPvChangeCommand(group: Command, context: CliContext): void {
  group
    .command('change')
    .description('change a PV of a VG (like pvchange): whether new extents may be allocated on it')
    .argument('<path>', 'the PV')
    .requiredOption(
      '--allocatable <y|n>',
      'y: new LVs and extensions may use the PV; n: not (its extents stay; pv move sets n)',
      yesNoOption,
    )
    .option('--json', 'print JSON for scripts')
    .action(async (pathText: string, options: { allocatable: boolean; json?: boolean }) => {
      const connection = context.connection();
      const client = pvClient(connection);
      const request = { path: pvPath(pathText), allocatable: options.allocatable };
      const response = await connection.call<ChangePvResponse__Output>(
        (metadata, callOptions, callback) =>
          client.ChangePv(request, metadata, callOptions, callback),
      );
      const pv = response.pv;
      if (pv === null) throw new Error('server answered without the PV');
      if (options.json === true) printJson(context.stdout, pvJson(pv));
      else {
        const allocatable = pv.allocatable ? 'y' : 'n';
        context.stdout.write(`physical volume ${pv.path} changed: allocatable ${allocatable}\n`);
      }
    });
}

function registerPvMoveCommand(group: Command, context: CliContext): void {
  group
    .command('move')
    .description('move every extent off a PV, online; Ctrl-C stops after the current step')
    .argument('<path>', 'the PV to empty')
    .option('--to <paths...>', 'PVs of the same VG to move to (default: any with free extents)')
    .option(
      '--step-extents <count>',
      `extents copied between checkpoints: the most a crash makes the move copy again (default ${moveStepExtentsDefault})`,
      integerOption(1, moveStepExtentsMax),
    )
    .action(async (pathText: string, options: { to?: string[]; stepExtents?: number }) => {
      const connection = context.connection();
      const client = pvClient(connection);
      const request = {
        path: pvPath(pathText),
        toPaths: (options.to ?? []).map(pvPath),
        stepExtents: options.stepExtents ?? 0,
      };
      const interrupted = context.interrupted();
      const reporter = new ProgressReporter(context.stderr, () => Date.now());
      const lvNames = new Set<string>();
      let last: MoveProgress__Output | undefined;
      try {
        await connection.stream<MoveProgress__Output>(
          (metadata, callOptions) => client.MovePv(request, metadata, callOptions),
          (progress) => {
            last = progress;
            if (progress.lvName !== '') lvNames.add(`${progress.vgName}/${progress.lvName}`);
            reporter.update(moveStep(progress), progress.done);
          },
          interrupted,
        );
      } finally {
        reporter.end();
      }
      if (interrupted.aborted) {
        throw new CliError(
          `pv move of ${request.path} interrupted: the move stops after the current step and ` +
            'what moved stays moved; run the same command again to resume',
          'CANCELLED',
        );
      }
      if (last?.done !== true) {
        throw new CliError(
          `pv move of ${request.path} ended before it was done; run the same command again to resume`,
          'ABORTED',
        );
      }
      context.stdout.write(`${moveSummary(request.path, last, lvNames)}\n`);
    });
}
