/**
 * The local host's lease lifecycle as an explicit state machine with one guarded transition
 * function that logs every change (STYLE.md, after grpc-js `transitionToState`).
 *
 *   idle ──join──▶ joining ──ok──▶ joined ◀──recovered── renewal-failing
 *     ▲              │  │            │  ╲──first failure──▶  │
 *     └───failed─────┘  │            │                       │
 *                       ▼            ▼                       ▼
 *                     fenced ◀── fail time passed / slot lost / fence() / close() ──
 *                       │            │
 *                       │          leave ──▶ left
 *                       └──join──▶ joining ◀──join── left
 *
 * `fenced` is final for the instance (generation) that was joined: this host never writes that
 * slot again; a new join writes a new generation.
 */
import { assert } from '../errors.js';
import type { Logger } from '../log.js';
import type { LocalEvent, LocalState } from './types.js';

const allowed: Readonly<Record<LocalState, readonly LocalState[]>> = {
  idle: ['joining'],
  joining: ['joined', 'idle', 'fenced'],
  joined: ['renewal-failing', 'fenced', 'left'],
  'renewal-failing': ['joined', 'fenced', 'left'],
  fenced: ['joining'],
  left: ['joining'],
};

export class LocalStateMachine {
  private current: LocalState = 'idle';
  private readonly listeners = new Set<(event: LocalEvent) => void>();

  constructor(private readonly logger: Logger) {}

  get state(): LocalState {
    return this.current;
  }

  /** Whether this host holds its host id and keeps renewing it. */
  get renewing(): boolean {
    return this.current === 'joined' || this.current === 'renewal-failing';
  }

  /** The one way the state changes; an illegal transition is a programmer error. */
  transition(to: LocalState, reason: string): void {
    const from = this.current;
    assert(allowed[from].includes(to), `local lease state ${from} -> ${to} (${reason})`);
    this.current = to;
    const fields = { from, to, reason };
    if (to === 'fenced' || to === 'renewal-failing') this.logger.warn('lease state', fields);
    else this.logger.info('lease state', fields);
    const event: LocalEvent = { state: to, reason };
    for (const listener of [...this.listeners]) {
      try {
        listener(event);
      } catch (error) {
        // A listener's bug must not stop the others from learning that we fenced.
        this.logger.error('local state listener threw', { error });
      }
    }
  }

  onChange(listener: (event: LocalEvent) => void): () => void {
    this.listeners.add(listener);
    return () => {
      this.listeners.delete(listener);
    };
  }
}
