/** How the CLI shows things to people: aligned tables and binary sizes. Scripts use --json. */

const sizeUnits = ['KiB', 'MiB', 'GiB', 'TiB', 'PiB', 'EiB'] as const;

/** 1536 -> "1.5 KiB", 1073741824 -> "1.0 GiB", 512 -> "512 B". Exact for every uint64. */
export function formatBytes(bytes: bigint): string {
  if (bytes < 1024n) return `${bytes} B`;
  let unitBytes = 1024n;
  let unitIndex = 0;
  while (unitIndex < sizeUnits.length - 1 && bytes >= unitBytes * 1024n) {
    unitBytes *= 1024n;
    unitIndex += 1;
  }
  // Tenths, rounded half up, computed in bigint so huge sizes stay exact.
  const tenths = (bytes * 10n + unitBytes / 2n) / unitBytes;
  return `${tenths / 10n}.${tenths % 10n} ${sizeUnits[unitIndex] ?? 'EiB'}`;
}

export type Alignment = 'left' | 'right';

export interface Column<Row> {
  readonly header: string;
  readonly value: (row: Row) => string;
  readonly align?: Alignment;
}

/** Columns padded to their widest cell, two spaces apart, no trailing blanks. */
export function formatTable<Row>(
  columns: ReadonlyArray<Column<Row>>,
  rows: readonly Row[],
): string {
  const cells = [
    columns.map((column) => column.header),
    ...rows.map((row) => columns.map((column) => column.value(row))),
  ];
  const widths = columns.map((_, index) =>
    Math.max(...cells.map((line) => (line[index] ?? '').length)),
  );
  return cells
    .map((line) =>
      line
        .map((cell, index) => {
          const width = widths[index] ?? cell.length;
          return columns[index]?.align === 'right' ? cell.padStart(width) : cell.padEnd(width);
        })
        .join('  ')
        .trimEnd(),
    )
    .join('\n');
}

/** "Label   value" lines for one record, labels padded to the longest. */
export function formatFields(fields: ReadonlyArray<readonly [string, string]>): string {
  const width = Math.max(...fields.map(([label]) => label.length));
  return fields.map(([label, value]) => `${label.padEnd(width)}  ${value}`).join('\n');
}

/** uint64 strings from the wire: a JSON number when exact, else the string (never rounded). */
export function jsonUint64(text: string): number | string {
  const value = Number(text);
  return Number.isSafeInteger(value) ? value : text;
}

export function formatDuration(totalSeconds: bigint): string {
  const days = totalSeconds / 86_400n;
  const hours = (totalSeconds % 86_400n) / 3_600n;
  const minutes = (totalSeconds % 3_600n) / 60n;
  const seconds = totalSeconds % 60n;
  if (days > 0n) return `${days}d ${hours}h ${minutes}m`;
  if (hours > 0n) return `${hours}h ${minutes}m ${seconds}s`;
  if (minutes > 0n) return `${minutes}m ${seconds}s`;
  return `${seconds}s`;
}

/** Parses a uint64 wire string; anything else is a server bug worth a clear error. */
export function parseUint64(text: string, what: string): bigint {
  if (!/^\d+$/.test(text)) throw new Error(`server sent an invalid ${what}: '${text}'`);
  return BigInt(text);
}
