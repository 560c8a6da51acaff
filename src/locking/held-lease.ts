/**
 * The state of a lease held by this host, and of the lock manager itself, each changed by one
 * guarded transition function that logs every change (grpc-js `transitionToState`).
 *
 *   (new) ──acquired──▶ held ──▶ converting ──▶ held
 *                        │  ───▶ updating   ──▶ held          (value written)
 *                        │  ───▶ releasing  ──▶ released │ held (release I/O failed)
 *                        └──────────────────────▶ lost       (fenced, asked, taken over)
 *   converting / updating / releasing may also end in lost (fenced while the I/O ran).
 *
 *   manager: open ──▶ fencing (fence on request) ──▶ fenced;  open ──▶ fenced (liveness);
 *            any ──▶ closed (close())
 */
import { assert } from '../errors.js';
import type { Logger } from '../log.js';
import type { HostInstance } from '../heartbeat-store/types.js';
import type { LockMode } from './types.js';

export type HeldState = 'held' | 'converting' | 'updating' | 'releasing' | 'released' | 'lost';

const leaseTransitions: Readonly<Record<HeldState, readonly HeldState[]>> = {
  held: ['converting', 'updating', 'releasing', 'lost'],
  converting: ['held', 'lost'],
  updating: ['held', 'lost'],
  releasing: ['held', 'released', 'lost'],
  released: [],
  lost: [],
};

export interface HeldLease {
  readonly name: string;
  readonly areaIndex: number;
  /** The instance of this host that took it. */
  readonly holder: HostInstance;
  state: HeldState;
  mode: LockMode;
  /** The lease version we took (a fencing token). */
  version: number;
  value: Buffer;
  sinceWallMs: number;
}

export interface LeaseChange {
  readonly mode?: LockMode;
  readonly version?: number;
  readonly value?: Buffer;
  readonly reason?: string;
}

export function createHeldLease(
  logger: Logger,
  fields: Omit<HeldLease, 'state'>,
  reason: string,
): HeldLease {
  const lease: HeldLease = { ...fields, state: 'held' };
  logger.info('lease state', {
    name: lease.name,
    from: 'none',
    to: 'held',
    mode: lease.mode,
    version: lease.version,
    reason,
  });
  return lease;
}

export function transitionLease(
  logger: Logger,
  lease: HeldLease,
  to: HeldState,
  change: LeaseChange = {},
): void {
  const from = lease.state;
  assert(
    leaseTransitions[from].includes(to),
    `lease ${lease.name}: no transition from ${from} to ${to}`,
  );
  lease.state = to;
  if (change.mode !== undefined) lease.mode = change.mode;
  if (change.version !== undefined) lease.version = change.version;
  if (change.value !== undefined) lease.value = Buffer.from(change.value);
  const level = to === 'lost' ? 'warn' : 'info';
  logger[level]('lease state', {
    name: lease.name,
    from,
    to,
    mode: lease.mode,
    version: lease.version,
    reason: change.reason,
  });
}

export type ManagerState = 'open' | 'fencing' | 'fenced' | 'closed';

const managerTransitions: Readonly<Record<ManagerState, readonly ManagerState[]>> = {
  open: ['fencing', 'fenced', 'closed'],
  fencing: ['fenced', 'closed'],
  fenced: ['closed'],
  closed: [],
};

export function checkManagerTransition(from: ManagerState, to: ManagerState): void {
  assert(managerTransitions[from].includes(to), `lock manager: no transition ${from} → ${to}`);
}

/** Runs async work one at a time per key (one lease operation per resource on this host). */
export class KeyedMutex {
  private readonly tails = new Map<string, Promise<void>>();

  async run<T>(key: string, work: () => Promise<T>): Promise<T> {
    const previous = this.tails.get(key) ?? Promise.resolve();
    let done: () => void = () => undefined;
    const tail = new Promise<void>((resolve) => {
      done = resolve;
    });
    this.tails.set(key, tail);
    await previous;
    try {
      return await work();
    } finally {
      done();
      if (this.tails.get(key) === tail) this.tails.delete(key);
    }
  }
}
