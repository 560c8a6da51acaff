/**
 * Progress of a long call (pv move), written to stderr so that stdout keeps only the result:
 * on a terminal a bar redrawn in place, elsewhere (a log file, a pipe) one line per update at
 * most once a second, so that the log stays readable. The last update is always shown.
 */
import type { CliTerminal } from './context.js';

export interface ProgressStep {
  /** Units done and to do, any unit (bytes, extents); total 0 counts as complete. */
  readonly done: bigint;
  readonly total: bigint;
  /** What is being done, after the bar or percentage. */
  readonly text: string;
}

/** Lines written when stderr is not a terminal: at most one per this interval. */
export const progressLineIntervalMs = 1000;
/** Redraws of the bar on a terminal: often enough to look alive, rarely enough to be cheap. */
export const progressRedrawIntervalMs = 100;
const barWidthCharacters = 30;

/** Whole percent done, rounded down: 100 only when complete. */
export function progressPercent(done: bigint, total: bigint): number {
  if (total <= 0n || done >= total) return 100;
  if (done <= 0n) return 0;
  return Number((done * 100n) / total);
}

/** "[#########---------------------]  30%" */
export function progressBar(done: bigint, total: bigint, width = barWidthCharacters): string {
  const percent = progressPercent(done, total);
  const filled = Math.floor((percent * width) / 100);
  return `[${'#'.repeat(filled)}${'-'.repeat(width - filled)}] ${String(percent).padStart(3)}%`;
}

export class ProgressReporter {
  private lastWriteMs: number | undefined;
  /** A bar is on the terminal's current line: end it before anything else is written. */
  private barShown = false;

  constructor(
    private readonly terminal: CliTerminal,
    private readonly nowMs: () => number,
  ) {}

  /** Shows `step`, unless the last one was shown too recently; `final` is always shown. */
  update(step: ProgressStep, final = false): void {
    const now = this.nowMs();
    const tty = this.terminal.isTTY === true;
    const intervalMs = tty ? progressRedrawIntervalMs : progressLineIntervalMs;
    if (!final && this.lastWriteMs !== undefined && now - this.lastWriteMs < intervalMs) return;
    this.lastWriteMs = now;
    if (tty) {
      const line = `${progressBar(step.done, step.total)}  ${step.text}`;
      const width = this.terminal.columns;
      // Never wider than the terminal: a wrapped line cannot be redrawn with '\r'.
      const fitted = width !== undefined && width > 1 ? line.slice(0, width - 1) : line;
      this.terminal.write(`\r${fitted}\x1b[K`);
      this.barShown = true;
    } else {
      const percent = `${progressPercent(step.done, step.total)}%`;
      this.terminal.write(`${percent.padStart(4)} ${step.text}\n`);
    }
  }

  /** Ends the bar's line, so that what follows starts on a fresh one. */
  end(): void {
    if (!this.barShown) return;
    this.terminal.write('\n');
    this.barShown = false;
  }
}
