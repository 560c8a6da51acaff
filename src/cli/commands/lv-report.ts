/**
 * The fields of `tandem lv list`, in the style of LVM's `lvs -o`: each field has a name (and
 * LVM's names for it as aliases), a table header, the text a table shows and the value --json
 * prints. Sizes show as binary units in tables; `*_bytes` fields are numbers of bytes.
 */
import { InvalidArgumentError } from 'commander';
import type { Lv__Output } from '../../generated/tandem/v1/Lv.js';
import {
  type Alignment,
  type Column,
  formatBytes,
  formatTable,
  jsonUint64,
  parseUint64,
} from '../output.js';

export interface LvField {
  readonly name: string;
  readonly aliases: readonly string[];
  readonly header: string;
  readonly align?: Alignment;
  text(lv: Lv__Output): string;
  json(lv: Lv__Output): unknown;
}

function sizeText(lv: Lv__Output): string {
  return formatBytes(parseUint64(lv.sizeBytes, 'LV size'));
}

/** Every "PATH:first-last" area of every segment, in LV order. */
function segmentAreas(lv: Lv__Output): string[] {
  return lv.segments.flatMap((segment) => segment.areas);
}

/** The most stripes of any segment; a linear segment counts as one. */
function stripeCount(lv: Lv__Output): number {
  return Math.max(0, ...lv.segments.map((segment) => Math.max(1, segment.stripeCount)));
}

function listText(values: readonly string[]): string {
  return values.length === 0 ? '-' : values.join(',');
}

export const lvFields: readonly LvField[] = [
  {
    name: 'name',
    aliases: ['lv_name'],
    header: 'LV',
    text: (lv) => lv.name,
    json: (lv) => lv.name,
  },
  {
    name: 'vg',
    aliases: ['vg_name'],
    header: 'VG',
    text: (lv) => lv.vgName,
    json: (lv) => lv.vgName,
  },
  {
    name: 'size',
    aliases: ['lv_size'],
    header: 'SIZE',
    align: 'right',
    text: sizeText,
    json: sizeText,
  },
  {
    name: 'size_bytes',
    aliases: [],
    header: 'SIZE BYTES',
    align: 'right',
    text: (lv) => lv.sizeBytes,
    json: (lv) => jsonUint64(lv.sizeBytes),
  },
  {
    name: 'extents',
    aliases: ['lv_extent_count'],
    header: 'EXTENTS',
    align: 'right',
    text: (lv) => String(lv.extentCount),
    json: (lv) => lv.extentCount,
  },
  {
    name: 'uuid',
    aliases: ['lv_uuid'],
    header: 'UUID',
    text: (lv) => lv.uuid,
    json: (lv) => lv.uuid,
  },
  {
    name: 'tags',
    aliases: ['lv_tags'],
    header: 'TAGS',
    text: (lv) => listText(lv.tags),
    json: (lv) => [...lv.tags],
  },
  {
    name: 'active_on',
    aliases: [],
    header: 'ACTIVE ON',
    text: (lv) => listText(lv.activeOn),
    json: (lv) => [...lv.activeOn],
  },
  {
    name: 'active_mode',
    aliases: [],
    header: 'MODE',
    text: (lv) => (lv.activeMode === '' ? '-' : lv.activeMode),
    json: (lv) => (lv.activeMode === '' ? null : lv.activeMode),
  },
  {
    name: 'segments',
    aliases: ['seg_count'],
    header: 'SEGMENTS',
    align: 'right',
    text: (lv) => String(lv.segments.length),
    json: (lv) => lv.segments.length,
  },
  {
    name: 'segment_details',
    aliases: ['seg_pe_ranges'],
    header: 'SEGMENT DETAILS',
    text: (lv) => segmentAreas(lv).join(' ') || '-',
    json: segmentAreas,
  },
  {
    name: 'stripes',
    aliases: [],
    header: 'STRIPES',
    align: 'right',
    text: (lv) => String(stripeCount(lv)),
    json: stripeCount,
  },
  {
    name: 'export',
    aliases: [],
    header: 'EXPORT',
    text: (lv) => (lv.exportName === '' ? '-' : lv.exportName),
    json: (lv) => (lv.exportName === '' ? null : lv.exportName),
  },
  {
    name: 'partial',
    aliases: [],
    header: 'PARTIAL',
    text: (lv) => (lv.partial ? 'yes' : 'no'),
    json: (lv) => lv.partial,
  },
];

export const defaultLvFieldNames: readonly string[] = ['name', 'vg', 'size', 'active_on', 'tags'];

function findField(name: string): LvField | undefined {
  return lvFields.find((field) => field.name === name || field.aliases.includes(name));
}

export const defaultLvFields: readonly LvField[] = defaultLvFieldNames.map((name) => {
  const field = findField(name);
  if (field === undefined) throw new Error(`default LV field '${name}' is not defined`);
  return field;
});

/**
 * `-o name,size,tags`: the fields in that order (LVM's names work too); `-o +uuid` adds to the
 * default fields. Unknown or empty names are refused with the list of valid ones.
 */
export function parseLvFieldList(text: string): readonly LvField[] {
  const trimmed = text.trim();
  const adding = trimmed.startsWith('+');
  const names = (adding ? trimmed.slice(1) : trimmed).split(',').map((name) => name.trim());
  const valid = `valid fields: ${lvFields.map((field) => field.name).join(', ')}`;
  const selected: LvField[] = adding ? [...defaultLvFields] : [];
  for (const name of names) {
    if (name === '')
      throw new InvalidArgumentError(`expected field names, comma-separated; ${valid}`);
    const field = findField(name.toLowerCase());
    if (field === undefined) throw new InvalidArgumentError(`unknown field '${name}'; ${valid}`);
    if (!selected.includes(field)) selected.push(field);
  }
  return selected;
}

export function lvTable(
  lvs: readonly Lv__Output[],
  fields: readonly LvField[] = defaultLvFields,
): string {
  if (lvs.length === 0) return 'No logical volumes.';
  const columns: ReadonlyArray<Column<Lv__Output>> = fields.map((field) => ({
    header: field.header,
    value: (lv: Lv__Output) => field.text(lv),
    align: field.align ?? 'left',
  }));
  return formatTable(columns, lvs);
}

/** One LV as JSON: the given fields, by default all of them. */
export function lvJson(
  lv: Lv__Output,
  fields: readonly LvField[] = lvFields,
): Record<string, unknown> {
  return Object.fromEntries(fields.map((field) => [field.name, field.json(lv)]));
}

/** "vg0/lv0", how people and the other commands name an LV. */
export function lvDisplayName(lv: Lv__Output): string {
  return `${lv.vgName}/${lv.name}`;
}
