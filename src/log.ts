/**
 * Structured logging: one JSON object per line on stderr.
 *
 * Kept dependency-free and cheap: a disabled level costs one comparison. The hot NBD path logs
 * only on connection events and errors, never per request.
 */

export type LogLevel = 'debug' | 'info' | 'warn' | 'error';

const levelRank: Record<LogLevel, number> = { debug: 10, info: 20, warn: 30, error: 40 };

export type LogFields = Record<string, unknown>;

export interface Logger {
  debug(message: string, fields?: LogFields): void;
  info(message: string, fields?: LogFields): void;
  warn(message: string, fields?: LogFields): void;
  error(message: string, fields?: LogFields): void;
  child(fields: LogFields): Logger;
}

export interface LogSink {
  write(line: string): void;
}

const stderrSink: LogSink = { write: (line) => process.stderr.write(line) };

export function parseLogLevel(text: string): LogLevel {
  if (text === 'debug' || text === 'info' || text === 'warn' || text === 'error') {
    return text;
  }
  throw new Error(`unknown log level '${text}' (expected debug, info, warn or error)`);
}

function errorToFields(value: unknown): unknown {
  if (value instanceof Error) {
    const out: Record<string, unknown> = { message: value.message, name: value.name };
    const code = (value as { code?: unknown }).code;
    if (code !== undefined) out['code'] = code;
    if (value.cause !== undefined) out['cause'] = errorToFields(value.cause);
    return out;
  }
  return value;
}

/** Keys every record has; a field of the same name is kept beside them, not over them. */
const recordKeys = new Set(['time', 'level', 'message']);

function fieldKey(key: string): string {
  return recordKeys.has(key) ? `field_${key}` : key;
}

export function createLogger(
  options: { level?: LogLevel; sink?: LogSink; fields?: LogFields } = {},
): Logger {
  const minimumRank = levelRank[options.level ?? 'info'];
  const sink = options.sink ?? stderrSink;
  const baseFields = options.fields ?? {};

  const emit = (level: LogLevel, message: string, fields?: LogFields): void => {
    if (levelRank[level] < minimumRank) return;
    const record: Record<string, unknown> = { time: new Date().toISOString(), level, message };
    for (const [key, value] of Object.entries(baseFields)) record[fieldKey(key)] = value;
    if (fields !== undefined) {
      for (const [key, value] of Object.entries(fields)) {
        record[fieldKey(key)] = errorToFields(value);
      }
    }
    sink.write(`${JSON.stringify(record)}\n`);
  };

  return {
    debug: (message, fields) => emit('debug', message, fields),
    info: (message, fields) => emit('info', message, fields),
    warn: (message, fields) => emit('warn', message, fields),
    error: (message, fields) => emit('error', message, fields),
    child: (fields) =>
      createLogger({ level: options.level ?? 'info', sink, fields: { ...baseFields, ...fields } }),
  };
}

/** A logger that drops everything; for unit tests that do not inspect logs. */
export const silentLogger: Logger = createLogger({ sink: { write: () => undefined } });
