/**
 * `tandem vg …`: volume groups. A VG pools PVs into extents and carries its own lockspace;
 * every change runs on the --server daemon under the VG lock, and the other hosts follow.
 */
import { type Command, InvalidArgumentError } from 'commander';
import type { CreateVgResponse__Output } from '../../generated/tandem/v1/CreateVgResponse.js';
import type { ExtendVgResponse__Output } from '../../generated/tandem/v1/ExtendVgResponse.js';
import type { ListVgHistoryResponse__Output } from '../../generated/tandem/v1/ListVgHistoryResponse.js';
import type { ListVgsResponse__Output } from '../../generated/tandem/v1/ListVgsResponse.js';
import type { ReduceVgResponse__Output } from '../../generated/tandem/v1/ReduceVgResponse.js';
import type { RemoveVgResponse__Output } from '../../generated/tandem/v1/RemoveVgResponse.js';
import type { RenameVgResponse__Output } from '../../generated/tandem/v1/RenameVgResponse.js';
import type { RestoreVgResponse__Output } from '../../generated/tandem/v1/RestoreVgResponse.js';
import type { Vg__Output } from '../../generated/tandem/v1/Vg.js';
import type { VgVersion__Output } from '../../generated/tandem/v1/VgVersion.js';
import type { VolumeEvent__Output } from '../../generated/tandem/v1/VolumeEvent.js';
import type { VolumeGroupsClient } from '../../generated/tandem/v1/VolumeGroups.js';
import { extentSizeBytesMax, extentSizeBytesMin, lvsPerVgMax } from '../../clvm/types.js';
import { maxHostsLimit } from '../../heartbeat-store/layout.js';
import { ioTimeoutMsMax, ioTimeoutMsMin } from '../../heartbeat-store/timings.js';
import type { ApiConnection } from '../api.js';
import { type CliContext, printJson } from '../context.js';
import { type Column, formatBytes, formatTable, jsonUint64, parseUint64 } from '../output.js';
import { boundedSizeOption } from '../size.js';
import { enumWord } from './host.js';
import { integerOption } from './lockspace.js';
import { lvDisplayName, lvJson } from './lv-report.js';
import { pvPath } from './pv.js';

function bytesText(text: string, what: string): string {
  return formatBytes(parseUint64(text, what));
}

export function vgJson(vg: Vg__Output): Record<string, unknown> {
  return {
    name: vg.name,
    uuid: vg.uuid,
    seqno: jsonUint64(vg.seqno),
    extentSizeBytes: jsonUint64(vg.extentSizeBytes),
    pvCount: vg.pvCount,
    lvCount: vg.lvCount,
    sizeBytes: jsonUint64(vg.sizeBytes),
    freeBytes: jsonUint64(vg.freeBytes),
    extentCount: vg.extentCount,
    freeExtentCount: vg.freeExtentCount,
    maxHosts: vg.maxHosts,
    maxLvs: vg.maxLvs === 0 ? null : vg.maxLvs,
    partial: vg.partial,
    joined: vg.joined,
    hostId: vg.joined ? vg.hostId : null,
    lastChange: vg.lastChange,
    updatedBy: vg.updatedBy,
    moving: vg.moving,
  };
}

/** "joined as host 3, partial, moving": what needs attention, in a few words. */
export function vgStatus(vg: Vg__Output): string {
  const words = [vg.joined ? `joined as host ${vg.hostId}` : 'not joined'];
  if (vg.partial) words.push('partial');
  if (vg.moving) words.push('moving');
  return words.join(', ');
}

const vgColumns: ReadonlyArray<Column<Vg__Output>> = [
  { header: 'VG', value: (vg) => vg.name },
  { header: 'PVS', value: (vg) => String(vg.pvCount), align: 'right' },
  { header: 'LVS', value: (vg) => String(vg.lvCount), align: 'right' },
  { header: 'SIZE', value: (vg) => bytesText(vg.sizeBytes, 'VG size'), align: 'right' },
  { header: 'FREE', value: (vg) => bytesText(vg.freeBytes, 'VG free size'), align: 'right' },
  { header: 'EXTENT', value: (vg) => bytesText(vg.extentSizeBytes, 'extent size'), align: 'right' },
  { header: 'SEQNO', value: (vg) => vg.seqno, align: 'right' },
  { header: 'STATUS', value: vgStatus },
];

export function vgTable(vgs: readonly Vg__Output[]): string {
  return vgs.length === 0 ? 'No volume groups.' : formatTable(vgColumns, vgs);
}

function wallIso(wallMs: string): string {
  return new Date(Number(parseUint64(wallMs, 'update time'))).toISOString();
}

export function vgVersionJson(version: VgVersion__Output): Record<string, unknown> {
  return {
    seqno: jsonUint64(version.seqno),
    updatedAt: wallIso(version.updatedWallMs),
    updatedBy: version.updatedBy,
    lastChange: version.lastChange,
    lvCount: version.lvCount,
  };
}

const versionColumns: ReadonlyArray<Column<VgVersion__Output>> = [
  { header: 'SEQNO', value: (version) => version.seqno, align: 'right' },
  {
    header: 'UPDATED',
    value: (version) => wallIso(version.updatedWallMs).replace(/\.\d{3}Z$/, 'Z'),
  },
  { header: 'BY', value: (version) => (version.updatedBy === '' ? '-' : version.updatedBy) },
  { header: 'LVS', value: (version) => String(version.lvCount), align: 'right' },
  { header: 'CHANGE', value: (version) => (version.lastChange === '' ? '-' : version.lastChange) },
];

export function vgHistoryTable(versions: readonly VgVersion__Output[]): string {
  return versions.length === 0 ? 'No metadata versions.' : formatTable(versionColumns, versions);
}

/** "VOLUME_EVENT_KIND_LV_RESIZED" -> "lv-resized". */
function eventKindWord(kind: string): string {
  return enumWord(kind, 'VOLUME_EVENT_KIND_').replaceAll('_', '-');
}

function eventSubject(event: VolumeEvent__Output): string {
  const { vg, lv } = event;
  switch (event.kind) {
    case 'VOLUME_EVENT_KIND_VG_CHANGED':
      if (vg === null) return '';
      return `${vg.name} seqno ${vg.seqno}${vg.lastChange === '' ? '' : `: ${vg.lastChange}`}`;
    case 'VOLUME_EVENT_KIND_LV_RESIZED':
      return lv === null ? '' : `${lvDisplayName(lv)} ${bytesText(lv.sizeBytes, 'LV size')}`;
    case 'VOLUME_EVENT_KIND_LV_ACTIVATED':
      if (lv === null) return '';
      return `${lvDisplayName(lv)} ${lv.activeMode || 'active'} on ${lv.activeOn.join(',') || '?'}`;
    default:
      if (lv !== null) return lvDisplayName(lv);
      return vg === null ? '' : vg.name;
  }
}

/** One line per event of `tandem vg watch`. */
export function volumeEventLine(event: VolumeEvent__Output, nowIso: string): string {
  const parts = [nowIso, eventKindWord(event.kind).padEnd(14), eventSubject(event)];
  if (event.reason !== '') parts.push(`(${event.reason})`);
  if (event.snapshot) parts.push('(now)');
  return parts.filter((part) => part !== '').join(' ');
}

export function volumeEventJson(event: VolumeEvent__Output): Record<string, unknown> {
  return {
    kind: eventKindWord(event.kind),
    snapshot: event.snapshot,
    reason: event.reason,
    vg: event.vg === null ? null : vgJson(event.vg),
    lv: event.lv === null ? null : lvJson(event.lv),
  };
}

/** --seqno: a positive integer, sent as a uint64 string. */
export function parseSeqno(text: string): string {
  const digits = text.trim();
  const seqno = /^\d{1,20}$/.test(digits) ? BigInt(digits) : 0n;
  if (seqno === 0n || seqno >= 2n ** 64n) {
    throw new InvalidArgumentError(
      'expected a metadata seqno, a positive integer (see vg history)',
    );
  }
  return seqno.toString();
}

function vgClient(connection: ApiConnection): VolumeGroupsClient {
  return connection.client<VolumeGroupsClient>(connection.services.tandem.v1.VolumeGroups);
}

/** Prints the VG a change answered with: one sentence, or the VG as JSON. */
function printVg(
  context: CliContext,
  vg: Vg__Output | null,
  json: boolean | undefined,
  what: string,
): void {
  if (vg === null) throw new Error('server answered without the VG');
  if (json === true) {
    printJson(context.stdout, vgJson(vg));
    return;
  }
  const size = bytesText(vg.sizeBytes, 'VG size');
  const free = bytesText(vg.freeBytes, 'VG free size');
  const pvs = `${vg.pvCount} PV${vg.pvCount === 1 ? '' : 's'}`;
  context.stdout.write(`volume group '${vg.name}' ${what}: ${pvs}, ${size} (${free} free)\n`);
}

interface CreateOptions {
  extentSize?: bigint;
  maxHosts?: number;
  ioTimeout?: number;
  maxLvs?: number;
  json?: boolean;
}

export function registerVgCommands(program: Command, context: CliContext): void {
  const group = program.command('vg').description('volume groups: PVs pooled into extents');
  registerVgCreateCommand(group, context);

  group
    .command('extend')
    .description('add PVs that belong to no VG')
    .argument('<name>', 'VG name')
    .argument('<pvs...>', 'the PVs to add')
    .option('--json', 'print JSON for scripts')
    .action(async (name: string, pvs: string[], options: { json?: boolean }) => {
      const connection = context.connection();
      const client = vgClient(connection);
      const request = { name, pvPaths: pvs.map(pvPath) };
      const response = await connection.call<ExtendVgResponse__Output>(
        (metadata, callOptions, callback) =>
          client.ExtendVg(request, metadata, callOptions, callback),
      );
      printVg(context, response.vg, options.json, 'extended');
    });

  group
    .command('reduce')
    .description('take a PV that no LV uses out of the VG (pv move empties one)')
    .argument('<name>', 'VG name')
    .argument('<pv>', 'the PV to take out')
    .option('--json', 'print JSON for scripts')
    .action(async (name: string, pv: string, options: { json?: boolean }) => {
      const connection = context.connection();
      const client = vgClient(connection);
      const request = { name, pvPath: pvPath(pv) };
      const response = await connection.call<ReduceVgResponse__Output>(
        (metadata, callOptions, callback) =>
          client.ReduceVg(request, metadata, callOptions, callback),
      );
      printVg(context, response.vg, options.json, `reduced by ${request.pvPath}`);
    });

  registerVgManageCommands(group, context);
  registerVgReadCommands(group, context);
}

function registerVgCreateCommand(group: Command, context: CliContext): void {
  group
    .command('create')
    .description('create a VG (and its lockspace) on PVs that belong to no VG')
    .argument('<name>', 'VG name')
    .argument('<pvs...>', 'the PVs')
    .option(
      '--extent-size <size>',
      'extent size, e.g. 4M (no unit: MiB; default 4M)',
      boundedSizeOption('m', BigInt(extentSizeBytesMin), BigInt(extentSizeBytesMax)),
    )
    .option(
      '--max-hosts <count>',
      'hosts the lockspace has room for (default 128)',
      integerOption(1, maxHostsLimit),
    )
    .option(
      '--io-timeout <ms>',
      'the lockspace I/O timeout every lease timing derives from (default 2000)',
      integerOption(ioTimeoutMsMin, ioTimeoutMsMax),
    )
    .option(
      '--max-lvs <count>',
      'LVs the lockspace has lease areas for (default 1024)',
      integerOption(1, lvsPerVgMax),
    )
    .option('--json', 'print JSON for scripts')
    .action(async (name: string, pvs: string[], options: CreateOptions) => {
      const connection = context.connection();
      const client = vgClient(connection);
      const request = {
        name,
        pvPaths: pvs.map(pvPath),
        extentSizeBytes: (options.extentSize ?? 0n).toString(),
        maxHosts: options.maxHosts ?? 0,
        ioTimeoutMs: options.ioTimeout ?? 0,
        maxLvs: options.maxLvs ?? 0,
      };
      const response = await connection.call<CreateVgResponse__Output>(
        (metadata, callOptions, callback) =>
          client.CreateVg(request, metadata, callOptions, callback),
      );
      printVg(context, response.vg, options.json, 'created');
    });
}

/** Rename, remove and restore. */
function registerVgManageCommands(group: Command, context: CliContext): void {
  group
    .command('rename')
    .description('rename a VG')
    .argument('<name>', 'VG name')
    .argument('<new-name>', 'the new name')
    .action(async (name: string, newName: string) => {
      const connection = context.connection();
      const client = vgClient(connection);
      await connection.call<RenameVgResponse__Output>((metadata, callOptions, callback) =>
        client.RenameVg({ name, newName }, metadata, callOptions, callback),
      );
      context.stdout.write(`volume group '${name}' renamed to '${newName}'\n`);
    });

  group
    .command('remove')
    .description('remove a VG with no LVs: wipes the label and metadata of every PV')
    .argument('<name>', 'VG name')
    .action(async (name: string) => {
      const connection = context.connection();
      const client = vgClient(connection);
      await connection.call<RemoveVgResponse__Output>((metadata, callOptions, callback) =>
        client.RemoveVg({ name }, metadata, callOptions, callback),
      );
      context.stdout.write(`volume group '${name}' removed\n`);
    });

  group
    .command('restore')
    .description('commit an older metadata version again, under a new seqno (see vg history)')
    .argument('<name>', 'VG name')
    .requiredOption('--seqno <seqno>', 'the version to restore', parseSeqno)
    .option('--json', 'print JSON for scripts')
    .action(async (name: string, options: { seqno: string; json?: boolean }) => {
      const connection = context.connection();
      const client = vgClient(connection);
      const response = await connection.call<RestoreVgResponse__Output>(
        (metadata, callOptions, callback) =>
          client.RestoreVg({ name, seqno: options.seqno }, metadata, callOptions, callback),
      );
      const seqno = response.vg?.seqno ?? '?';
      printVg(
        context,
        response.vg,
        options.json,
        `restored from seqno ${options.seqno} as seqno ${seqno}`,
      );
    });
}

/** List, history and watch. */
function registerVgReadCommands(group: Command, context: CliContext): void {
  group
    .command('list')
    .description('every VG the --server daemon knows of')
    .option('--json', 'print JSON for scripts')
    .action(async (options: { json?: boolean }) => {
      const connection = context.connection();
      const client = vgClient(connection);
      const response = await connection.call<ListVgsResponse__Output>(
        (metadata, callOptions, callback) => client.ListVgs({}, metadata, callOptions, callback),
      );
      if (options.json === true) printJson(context.stdout, { vgs: response.vgs.map(vgJson) });
      else context.stdout.write(`${vgTable(response.vgs)}\n`);
    });

  group
    .command('history')
    .description('the metadata versions still in the metadata areas, newest first')
    .argument('<name>', 'VG name')
    .option('--json', 'print JSON for scripts')
    .action(async (name: string, options: { json?: boolean }) => {
      const connection = context.connection();
      const client = vgClient(connection);
      const response = await connection.call<ListVgHistoryResponse__Output>(
        (metadata, callOptions, callback) =>
          client.ListVgHistory({ name }, metadata, callOptions, callback),
      );
      if (options.json === true)
        printJson(context.stdout, { versions: response.versions.map(vgVersionJson) });
      else context.stdout.write(`${vgHistoryTable(response.versions)}\n`);
    });

  group
    .command('watch')
    .description('print the VGs, then every VG and LV change, until Ctrl-C')
    .option('--json', 'print JSON lines for scripts')
    .action(async (options: { json?: boolean }) => {
      const connection = context.connection();
      const client = vgClient(connection);
      await connection.stream<VolumeEvent__Output>(
        (metadata, callOptions) => client.WatchVolumes({}, metadata, callOptions),
        (event) => {
          const line =
            options.json === true
              ? JSON.stringify(volumeEventJson(event))
              : volumeEventLine(event, new Date().toISOString());
          context.stdout.write(`${line}\n`);
        },
        context.interrupted(),
      );
    });
}
