/**
 * What every command group gets: the API connection (made on first use, from the global
 * --server and --timeout options) and the output stream. A group lives in its own file under
 * commands/ and exports one `register…Commands(program, context)` function.
 */
import type { Command } from 'commander';
import { ApiConnection } from './api.js';

export interface CliOutput {
  write(text: string): void;
}

/** An output that may be a terminal (process.stderr): progress bars are drawn only on one. */
export interface CliTerminal extends CliOutput {
  readonly isTTY?: boolean;
  readonly columns?: number;
}

export interface CliContext {
  connection(): ApiConnection;
  readonly stdout: CliOutput;
  /** Progress and notices that are not the command's result (pv move draws its bar here). */
  readonly stderr: CliTerminal;
  /** Aborts on Ctrl-C (SIGINT) or SIGTERM: long-running commands (watch) stop cleanly. */
  interrupted(): AbortSignal;
}

export type CommandGroup = (program: Command, context: CliContext) => void;

/** Prints a value as pretty JSON with a trailing newline; the --json contract for scripts. */
export function printJson(output: CliOutput, value: unknown): void {
  output.write(`${JSON.stringify(value, null, 2)}\n`);
}
