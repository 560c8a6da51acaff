/**
 * The event trace of one simulation run: what the scenario did, what the hosts logged, in virtual
 * time. Kept as a ring of the newest events (printed when an invariant fails) and, when replaying
 * a seed verbosely, printed live. Formatting is deferred until a line is printed: a passing run
 * pays only for pushing small objects.
 */
import type { LogFields, Logger } from '../../src/log.js';

export interface TraceEvent {
  readonly timeMs: number;
  /** The host index, or undefined for the scenario and the checkers. */
  readonly host: number | undefined;
  readonly text: string;
  readonly fields: LogFields | undefined;
}

export interface TraceOptions {
  /** How many events the ring keeps. */
  readonly capacity: number;
  readonly nowMs: () => number;
  /** Prints every event as it happens (replay). */
  readonly live?: (line: string) => void;
  /** Records protocol debug logs too (replay); info and above otherwise. */
  readonly debug?: boolean;
}

function fieldValue(value: unknown): unknown {
  if (value instanceof Error) {
    const code = (value as { code?: unknown }).code;
    return code === undefined ? value.message : `${String(code)}: ${value.message}`;
  }
  if (typeof value === 'bigint') return value.toString();
  return value;
}

export function formatTraceEvent(event: TraceEvent): string {
  const time = event.timeMs.toFixed(3).padStart(10);
  const who = event.host === undefined ? 'sim' : `h${event.host}`;
  let fields = '';
  if (event.fields !== undefined) {
    const parts: string[] = [];
    for (const [key, value] of Object.entries(event.fields)) {
      let text: string;
      try {
        text = JSON.stringify(fieldValue(value)) ?? String(value);
      } catch {
        text = String(value);
      }
      parts.push(`${key}=${text}`);
    }
    if (parts.length > 0) fields = ` ${parts.join(' ')}`;
  }
  return `${time} ${who.padEnd(4)} ${event.text}${fields}`;
}

export class Trace {
  private readonly ring: TraceEvent[] = [];
  private nextIndex = 0;
  count = 0;

  constructor(readonly options: TraceOptions) {}

  get debug(): boolean {
    return this.options.debug === true;
  }

  add(host: number | undefined, text: string, fields?: LogFields): void {
    const event: TraceEvent = { timeMs: this.options.nowMs(), host, text, fields };
    this.count += 1;
    if (this.ring.length < this.options.capacity) {
      this.ring.push(event);
    } else {
      this.ring[this.nextIndex] = event;
      this.nextIndex = (this.nextIndex + 1) % this.options.capacity;
    }
    this.options.live?.(formatTraceEvent(event));
  }

  /** The newest `count` events, oldest first, formatted. */
  tail(count: number): string[] {
    const ordered = [...this.ring.slice(this.nextIndex), ...this.ring.slice(0, this.nextIndex)];
    return ordered.slice(-count).map(formatTraceEvent);
  }

  /** A Logger whose records go into this trace, tagged with the host. */
  loggerFor(host: number, fields: LogFields = {}): Logger {
    const emit =
      (level: string) =>
      (message: string, extra?: LogFields): void => {
        const merged = extra === undefined ? fields : { ...fields, ...extra };
        this.add(
          host,
          `${level} ${message}`,
          Object.keys(merged).length === 0 ? undefined : merged,
        );
      };
    const skip = (): void => undefined;
    return {
      debug: this.debug ? emit('debug') : skip,
      info: emit('info'),
      warn: emit('warn'),
      error: emit('error'),
      child: (more) => this.loggerFor(host, { ...fields, ...more }),
    };
  }
}
