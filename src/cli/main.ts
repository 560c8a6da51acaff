/**
 * `tandem`, the admin CLI. Every subcommand is one or more gRPC calls to a tandemd; tables for
 * people, `--json` for scripts, and failures as `tandem: <message> (<CODE>)` with exit code 1.
 */
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander';
import { isTandemError } from '../errors.js';
import { tandemVersion } from '../generated/version.js';
import { ApiConnection, CliError } from './api.js';
import { registerExportCommands } from './commands/export.js';
import { registerHostCommands } from './commands/host.js';
import { registerLockCommands } from './commands/lock.js';
import { registerLockspaceCommands } from './commands/lockspace.js';
import { registerLvCommands } from './commands/lv.js';
import { registerNodeCommands } from './commands/node.js';
import { registerPvCommands } from './commands/pv.js';
import { registerVgCommands } from './commands/vg.js';
import type { CliContext, CliOutput, CliTerminal, CommandGroup } from './context.js';

export const defaultServerAddress = '127.0.0.1:7600';
export const defaultTimeoutSeconds = 10;
/** A deadline is never unbounded: an hour is already far past any unary call. */
const timeoutSecondsMax = 3600;

/** One file each under commands/, in the order `tandem --help` lists them. */
const commandGroups: readonly CommandGroup[] = [
  registerNodeCommands,
  registerExportCommands,
  registerLockspaceCommands,
  registerHostCommands,
  registerLockCommands,
  registerPvCommands,
  registerVgCommands,
  registerLvCommands,
];

/** A signal that aborts on SIGINT or SIGTERM; `release` removes the signal handlers. */
function interruptSignal(): { signal: AbortSignal; release: () => void } {
  const controller = new AbortController();
  const onSignal = (): void => controller.abort();
  process.once('SIGINT', onSignal);
  process.once('SIGTERM', onSignal);
  return {
    signal: controller.signal,
    release: () => {
      process.off('SIGINT', onSignal);
      process.off('SIGTERM', onSignal);
    },
  };
}

function parseTimeoutSeconds(text: string): number {
  const seconds = Number(text);
  if (!Number.isFinite(seconds) || seconds <= 0 || seconds > timeoutSecondsMax) {
    throw new InvalidArgumentError(`expected seconds in (0, ${timeoutSecondsMax}]`);
  }
  return seconds;
}

export function buildCliProgram(output: { stdout: CliOutput; stderr: CliTerminal }): {
  program: Command;
  close: () => void;
} {
  const program = new Command('tandem')
    .description('Admin CLI of tandem, the clustered block-storage manager.')
    .version(tandemVersion)
    .addOption(
      new Option('--server <host:port>', 'tandemd gRPC address')
        .env('TANDEM_SERVER')
        .default(defaultServerAddress),
    )
    .addOption(
      new Option('--timeout <seconds>', 'deadline of each call')
        .argParser(parseTimeoutSeconds)
        .default(defaultTimeoutSeconds),
    )
    .configureOutput({
      writeOut: (text) => output.stdout.write(text),
      writeErr: (text) => output.stderr.write(text),
    })
    .showHelpAfterError()
    .exitOverride();
  let connection: ApiConnection | undefined;
  let interrupt: { signal: AbortSignal; release: () => void } | undefined;
  const context: CliContext = {
    stdout: output.stdout,
    stderr: output.stderr,
    connection: () => {
      const options = program.opts<{ server: string; timeout: number }>();
      connection ??= new ApiConnection(options.server, options.timeout * 1000);
      return connection;
    },
    interrupted: () => {
      interrupt ??= interruptSignal();
      return interrupt.signal;
    },
  };
  for (const register of commandGroups) register(program, context);
  // Subcommands inherit the output routing and the exit override for their own usage errors.
  for (const command of program.commands) {
    command.copyInheritedSettings(program);
    for (const subcommand of command.commands) subcommand.copyInheritedSettings(command);
  }
  return {
    program,
    close: () => {
      connection?.close();
      interrupt?.release();
    },
  };
}

/** Runs the CLI; resolves with the process exit code. */
export async function main(
  argv: readonly string[] = process.argv,
  output: { stdout: CliOutput; stderr: CliTerminal } = {
    stdout: process.stdout,
    stderr: process.stderr,
  },
): Promise<number> {
  const { program, close } = buildCliProgram(output);
  try {
    await program.parseAsync([...argv]);
    return 0;
  } catch (error) {
    if (error instanceof CommanderError) {
      // Commander already printed usage or help; help and --version are not failures.
      return error.exitCode;
    }
    if (error instanceof CliError || isTandemError(error)) {
      // CliError: a failed call; TandemError: a local operation (lockspace init, show).
      output.stderr.write(`tandem: ${error.message} (${error.code})\n`);
    } else {
      const message = error instanceof Error ? error.message : String(error);
      output.stderr.write(`tandem: ${message} (INTERNAL)\n`);
    }
    return 1;
  } finally {
    close();
  }
}
