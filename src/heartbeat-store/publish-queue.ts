/**
 * The payload this host publishes in its slot, and the callers of `publish` waiting for a slot
 * write that carries their version of it.
 */
import { TandemError } from '../errors.js';

/** Publishes waiting for their write at once (a named limit: a stuck disk must not grow it). */
export const pendingPublishesMax = 256;

interface Waiter {
  readonly version: number;
  readonly resolve: () => void;
  readonly reject: (error: unknown) => void;
}

export class PublishQueue {
  private current: Buffer = Buffer.alloc(0);
  private currentVersion = 0;
  private waiters: Waiter[] = [];

  get payload(): Buffer {
    return this.current;
  }

  /** Increases with every publish; a slot write carries the version it was built from. */
  get version(): number {
    return this.currentVersion;
  }

  /** Makes `payload` the one to write; resolves once a write with it (or a newer one) succeeds. */
  publish(payload: Buffer): Promise<void> {
    if (this.waiters.length >= pendingPublishesMax) {
      return Promise.reject(
        new TandemError(
          'FAILED_PRECONDITION',
          `${pendingPublishesMax} publishes are already waiting`,
        ),
      );
    }
    this.current = Buffer.from(payload);
    this.currentVersion += 1;
    const version = this.currentVersion;
    return new Promise<void>((resolve, reject) => {
      this.waiters.push({ version, resolve, reject });
    });
  }

  /** A slot write carrying payload version `version` succeeded. */
  written(version: number): void {
    const done = this.waiters.filter((waiter) => waiter.version <= version);
    this.waiters = this.waiters.filter((waiter) => waiter.version > version);
    for (const waiter of done) waiter.resolve();
  }

  rejectAll(error: unknown): void {
    const waiters = this.waiters;
    this.waiters = [];
    for (const waiter of waiters) waiter.reject(error);
  }
}
