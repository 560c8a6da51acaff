/** The clustered-VG benchmark's rows: one figure, what was measured, the target, the verdict. */
import { median, percentile } from './stats.js';

export interface Row {
  readonly figure: string;
  readonly measured: string;
  readonly target: string;
  /** undefined: informative only, no target. */
  readonly pass: boolean | undefined;
}

export function ms(value: number): string {
  if (!Number.isFinite(value)) return '-';
  return Math.abs(value) >= 100 ? `${Math.round(value)} ms` : `${value.toFixed(1)} ms`;
}

export function microseconds(nanoseconds: number): string {
  if (!Number.isFinite(nanoseconds)) return '-';
  return `${Math.round(nanoseconds / 1000)} µs`;
}

export function ratio(value: number): string {
  return Number.isFinite(value) ? `${value.toFixed(2)}×` : '-';
}

/** `median X ms, p90 Y ms (n=N)`. */
export function latencySummary(samplesMs: readonly number[]): string {
  return (
    `median ${ms(median(samplesMs))}, p90 ${ms(percentile(samplesMs, 90))}, ` +
    `max ${ms(Math.max(...samplesMs))} (n=${samplesMs.length})`
  );
}

export function spread(values: readonly number[], format: (value: number) => string): string {
  if (values.length < 2) return '';
  return ` (${format(Math.min(...values))}–${format(Math.max(...values))})`;
}

export function printRows(title: string, rows: readonly Row[]): void {
  const cells = rows.map((row) => [
    row.figure,
    row.measured,
    row.target,
    row.pass === undefined ? '' : row.pass ? 'pass' : 'FAIL',
  ]);
  const header = ['figure', 'measured', 'target', 'verdict'];
  const widths = header.map((text, column) =>
    Math.max(text.length, ...cells.map((row) => (row[column] ?? '').length)),
  );
  const line = (row: readonly string[]): string =>
    row.map((cell, column) => cell.padEnd(widths[column] ?? 0)).join(' | ');
  console.log(`\n${title}`);
  console.log(line(header));
  console.log(widths.map((width) => '-'.repeat(width)).join('-|-'));
  for (const row of cells) console.log(line(row));
}
