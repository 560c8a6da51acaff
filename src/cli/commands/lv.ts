/**
 * `tandem lv …`: logical volumes. An LV is named VG/LV; activating it takes its lease on the
 * --server host and serves it there as the NBD export "vg/lv".
 */
import { type Command, InvalidArgumentError, Option } from 'commander';
import type { ActivateLvResponse__Output } from '../../generated/tandem/v1/ActivateLvResponse.js';
import type { CreateLvResponse__Output } from '../../generated/tandem/v1/CreateLvResponse.js';
import type { DeactivateLvResponse__Output } from '../../generated/tandem/v1/DeactivateLvResponse.js';
import type { ExtendLvResponse__Output } from '../../generated/tandem/v1/ExtendLvResponse.js';
import type { ListLvsResponse__Output } from '../../generated/tandem/v1/ListLvsResponse.js';
import type { LogicalVolumesClient } from '../../generated/tandem/v1/LogicalVolumes.js';
import type { Lv__Output } from '../../generated/tandem/v1/Lv.js';
import type { ReduceLvResponse__Output } from '../../generated/tandem/v1/ReduceLvResponse.js';
import type { RemoveLvResponse__Output } from '../../generated/tandem/v1/RemoveLvResponse.js';
import type { RenameLvResponse__Output } from '../../generated/tandem/v1/RenameLvResponse.js';
import type { SetLvTagsResponse__Output } from '../../generated/tandem/v1/SetLvTagsResponse.js';
import { stripesMax } from '../../clvm/types.js';
import type { ApiConnection } from '../api.js';
import { type CliContext, printJson } from '../context.js';
import { formatBytes, parseUint64 } from '../output.js';
import { type SizeArgument, relativeSizeOption, sizeOption } from '../size.js';
import { integerOption } from './lockspace.js';
import {
  type LvField,
  defaultLvFields,
  lvDisplayName,
  lvFields,
  lvJson,
  lvTable,
  parseLvFieldList,
} from './lv-report.js';
import { pvPath } from './pv.js';

export interface LvPath {
  readonly vgName: string;
  readonly name: string;
}

/** "VG/LV": exactly one '/', both names non-empty. */
export function parseLvPath(text: string): LvPath {
  const parts = text.split('/');
  const [vgName = '', name = ''] = parts;
  if (parts.length !== 2 || vgName === '' || name === '') {
    throw new InvalidArgumentError(`expected VG/LV, such as vg0/disk1 (one '/', two names)`);
  }
  return { vgName, name };
}

/** Commander collector for a repeatable option (`--tag a --tag b`). */
function collect(text: string, previous: readonly string[] | undefined): string[] {
  return [...(previous ?? []), text];
}

const allocationPolicies = ['normal', 'contiguous', 'anywhere'] as const;

function allocOption(): Option {
  return new Option('--alloc <policy>', 'allocation policy').choices(allocationPolicies);
}

/** The NBD URI of an export, as nbdinfo and qemu take it. */
export function nbdUri(nbdAddress: string, exportName: string): string {
  return `nbd://${nbdAddress}/${exportName}`;
}

function lvClient(connection: ApiConnection): LogicalVolumesClient {
  return connection.client<LogicalVolumesClient>(connection.services.tandem.v1.LogicalVolumes);
}

/** Prints the LV a change answered with: one sentence, or the LV as JSON. */
function printLv(context: CliContext, lv: Lv__Output | null, json: boolean, what: string): void {
  if (lv === null) throw new Error('server answered without the LV');
  if (json) printJson(context.stdout, lvJson(lv));
  else {
    const size = formatBytes(parseUint64(lv.sizeBytes, 'LV size'));
    context.stdout.write(`logical volume ${lvDisplayName(lv)} ${what} (${size})\n`);
  }
}

interface CreateOptions {
  name: string;
  size: bigint;
  tag?: string[];
  stripes?: number;
  stripeSize?: bigint;
  alloc?: string;
  json?: boolean;
}

export function registerLvCommands(program: Command, context: CliContext): void {
  const group = program
    .command('lv')
    .description('logical volumes: block devices carved from a VG');

  group
    .command('create')
    .description('create an LV in a VG, on any of its PVs or only on the PVs given')
    .requiredOption('-n, --name <name>', 'LV name')
    .requiredOption(
      '-L, --size <size>',
      'size, e.g. 20G (no unit: MiB, as in LVM)',
      sizeOption('m'),
    )
    .option('--tag <tag>', 'tag the LV (repeatable)', collect)
    .option(
      '--stripes <count>',
      `stripe over this many PVs (1..${stripesMax})`,
      integerOption(1, stripesMax),
    )
    .option(
      '--stripe-size <size>',
      'stripe chunk, e.g. 64K (no unit: KiB, as in LVM)',
      sizeOption('k'),
    )
    .addOption(allocOption())
    .option('--json', 'print JSON for scripts')
    .argument('<vg>', 'the volume group')
    .argument('[pvs...]', 'allocate only on these PVs')
    .action(async (vgName: string, pvs: string[], options: CreateOptions) => {
      const connection = context.connection();
      const client = lvClient(connection);
      const request = {
        vgName,
        name: options.name,
        sizeBytes: options.size.toString(),
        tags: options.tag ?? [],
        stripes: options.stripes ?? 0,
        stripeSizeBytes: (options.stripeSize ?? 0n).toString(),
        allocationPolicy: options.alloc ?? '',
        pvPaths: pvs.map(pvPath),
      };
      const response = await connection.call<CreateLvResponse__Output>(
        (metadata, callOptions, callback) =>
          client.CreateLv(request, metadata, callOptions, callback),
      );
      printLv(context, response.lv, options.json === true, 'created');
    });

  registerLvResizeCommands(group, context);
  registerLvChangeCommands(group, context);
  registerLvActivationCommands(group, context);
  registerLvListCommand(group, context);
}

/** `lv list`: LVs as a table of -o fields, or JSON. */
function registerLvListCommand(group: Command, context: CliContext): void {
  group
    .command('list')
    .description(
      `list LVs, of one VG or all; fields: ${lvFields.map((field) => field.name).join(', ')}`,
    )
    .argument('[vg]', 'only the LVs of this VG')
    .option(
      '-o, --options <fields>',
      'comma-separated fields (+f,…: add to the defaults)',
      parseLvFieldList,
    )
    .option('--json', 'print JSON for scripts (all fields unless -o is given)')
    .action(
      async (
        vgName: string | undefined,
        options: { options?: readonly LvField[]; json?: boolean },
      ) => {
        const connection = context.connection();
        const client = lvClient(connection);
        const response = await connection.call<ListLvsResponse__Output>(
          (metadata, callOptions, callback) =>
            client.ListLvs({ vgName: vgName ?? '' }, metadata, callOptions, callback),
        );
        if (options.json === true) {
          const fields = options.options ?? lvFields;
          printJson(context.stdout, { lvs: response.lvs.map((lv) => lvJson(lv, fields)) });
        } else
          context.stdout.write(`${lvTable(response.lvs, options.options ?? defaultLvFields)}\n`);
      },
    );
}

function registerLvResizeCommands(group: Command, context: CliContext): void {
  group
    .command('extend')
    .description('grow an LV, also while it is active and in use')
    .argument('<vg/lv>', 'the LV', parseLvPath)
    .requiredOption(
      '-L, --size <[+]size>',
      'the new size, or +size to add (no unit: MiB)',
      relativeSizeOption('m', '+'),
    )
    .addOption(allocOption())
    .option('--json', 'print JSON for scripts')
    .action(
      async (target: LvPath, options: { size: SizeArgument; alloc?: string; json?: boolean }) => {
        const connection = context.connection();
        const client = lvClient(connection);
        const request = {
          ...target,
          sizeBytes: options.size.bytes.toString(),
          relative: options.size.relative,
          allocationPolicy: options.alloc ?? '',
        };
        const response = await connection.call<ExtendLvResponse__Output>(
          (metadata, callOptions, callback) =>
            client.ExtendLv(request, metadata, callOptions, callback),
        );
        printLv(context, response.lv, options.json === true, 'extended');
      },
    );

  group
    .command('reduce')
    .description('shrink an LV; the data past the new end is lost')
    .argument('<vg/lv>', 'the LV', parseLvPath)
    .requiredOption(
      '-L, --size <[-]size>',
      'the new size, or -size to take away (no unit: MiB)',
      relativeSizeOption('m', '-'),
    )
    .option('--force', 'also while the LV is active on the --server host')
    .option('--json', 'print JSON for scripts')
    .action(
      async (target: LvPath, options: { size: SizeArgument; force?: boolean; json?: boolean }) => {
        const connection = context.connection();
        const client = lvClient(connection);
        const request = {
          ...target,
          sizeBytes: options.size.bytes.toString(),
          relative: options.size.relative,
          force: options.force === true,
        };
        const response = await connection.call<ReduceLvResponse__Output>(
          (metadata, callOptions, callback) =>
            client.ReduceLv(request, metadata, callOptions, callback),
        );
        printLv(context, response.lv, options.json === true, 'reduced');
      },
    );
}

function registerLvChangeCommands(group: Command, context: CliContext): void {
  group
    .command('rename')
    .description('rename an LV within its VG')
    .argument('<vg/lv>', 'the LV', parseLvPath)
    .argument('<new-name>', 'the new LV name')
    .action(async (target: LvPath, newName: string) => {
      const connection = context.connection();
      const client = lvClient(connection);
      await connection.call<RenameLvResponse__Output>((metadata, callOptions, callback) =>
        client.RenameLv({ ...target, newName }, metadata, callOptions, callback),
      );
      context.stdout.write(
        `logical volume ${target.vgName}/${target.name} renamed to ${target.vgName}/${newName}\n`,
      );
    });

  group
    .command('remove')
    .description('remove an LV that is active nowhere; its extents become free')
    .argument('<vg/lv>', 'the LV', parseLvPath)
    .action(async (target: LvPath) => {
      const connection = context.connection();
      const client = lvClient(connection);
      await connection.call<RemoveLvResponse__Output>((metadata, callOptions, callback) =>
        client.RemoveLv(target, metadata, callOptions, callback),
      );
      context.stdout.write(`logical volume ${target.vgName}/${target.name} removed\n`);
    });

  group
    .command('tag')
    .description('add and remove tags of an LV')
    .argument('<vg/lv>', 'the LV', parseLvPath)
    .option('--add <tags...>', 'tags to add')
    .option('--remove <tags...>', 'tags to remove')
    .option('--json', 'print JSON for scripts')
    .action(
      async (
        target: LvPath,
        options: { add?: string[]; remove?: string[]; json?: boolean },
        command: Command,
      ) => {
        const addTags = options.add ?? [];
        const removeTags = options.remove ?? [];
        if (addTags.length === 0 && removeTags.length === 0) {
          command.error('error: give --add or --remove (or both)');
        }
        const connection = context.connection();
        const client = lvClient(connection);
        const response = await connection.call<SetLvTagsResponse__Output>(
          (metadata, callOptions, callback) =>
            client.SetLvTags({ ...target, addTags, removeTags }, metadata, callOptions, callback),
        );
        const lv = response.lv;
        if (lv === null) throw new Error('server answered without the LV');
        if (options.json === true) printJson(context.stdout, lvJson(lv));
        else {
          const tags = lv.tags.length === 0 ? 'none' : lv.tags.join(', ');
          context.stdout.write(`logical volume ${lvDisplayName(lv)} tags: ${tags}\n`);
        }
      },
    );
}

interface ActivateOptions {
  exclusive?: boolean;
  shared?: boolean;
  json?: boolean;
}

function registerLvActivationCommands(group: Command, context: CliContext): void {
  group
    .command('activate')
    .description('take the LV lease on the --server host and serve the LV there over NBD')
    .argument('<vg/lv>', 'the LV', parseLvPath)
    .option('--exclusive', 'only this host may activate it (for a VM disk in use)')
    .option('--shared', 'other hosts may activate it shared too (for live migration)')
    .option('--json', 'print JSON for scripts')
    .action(async (target: LvPath, options: ActivateOptions, command: Command) => {
      if ((options.exclusive === true) === (options.shared === true)) {
        command.error('error: give exactly one of --exclusive and --shared');
      }
      const mode =
        options.exclusive === true ? 'ACTIVATION_MODE_EXCLUSIVE' : 'ACTIVATION_MODE_SHARED';
      const connection = context.connection();
      const client = lvClient(connection);
      const response = await connection.call<ActivateLvResponse__Output>(
        (metadata, callOptions, callback) =>
          client.ActivateLv({ ...target, mode }, metadata, callOptions, callback),
      );
      const uri = nbdUri(response.nbdAddress, response.exportName);
      if (options.json === true) {
        const lv = response.lv === null ? null : lvJson(response.lv);
        printJson(context.stdout, {
          lv,
          exportName: response.exportName,
          nbdAddress: response.nbdAddress,
          uri,
        });
        return;
      }
      const modeWord = options.exclusive === true ? 'exclusive' : 'shared';
      context.stdout.write(
        `logical volume ${target.vgName}/${target.name} active (${modeWord}) as NBD export '${response.exportName}'\n${uri}\n`,
      );
    });

  group
    .command('deactivate')
    .description('stop serving the LV here (its NBD connections close) and release its lease')
    .argument('<vg/lv>', 'the LV', parseLvPath)
    .action(async (target: LvPath) => {
      const connection = context.connection();
      const client = lvClient(connection);
      await connection.call<DeactivateLvResponse__Output>((metadata, callOptions, callback) =>
        client.DeactivateLv(target, metadata, callOptions, callback),
      );
      context.stdout.write(`logical volume ${target.vgName}/${target.name} deactivated\n`);
    });
}
