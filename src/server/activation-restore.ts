/**
 * Restores, at a start of tandemd, the LV activations recorded by the instance before it
 * (activation-intent.ts decides which may be restored: only those of this very boot).
 *
 * Once this host has joined a VG's lockspace, each recorded LV of that VG is activated again
 * with its mode, exactly as `lv activate` does (the lease is taken with a try, never stolen):
 *
 *   recorded --LV found by uuid (current name), lease taken, export added--> restored
 *   recorded --LV gone, VG gone, LV active on another host, VG partial--> dropped (warning)
 *   recorded --lease held by an earlier instance of this host (kill -9)--> waiting, retried
 *   waiting --the earlier instance is seen dead, lease taken--> restored
 *   waiting --hostDeadMs + 4T since the join, still held--> dropped (warning)
 *
 * Why a wait: a daemon killed with -9 leaves its host slot held and its leases owned by that
 * instance (host id, generation); nothing releases them, and no rule treats them as ours. The
 * new instance joins a free slot if there is one (a new host id; delta-lease.ts `joinAny` prefers
 * free slots to held ones, even one held under our own name), else it watches its old slot for
 * the host dead time and takes it with a newer generation. In the second case the old instance
 * is dead at once (a newer generation in its slot, or its slot already seen failed by the
 * monitor during the join) and the first try succeeds. In the first case the old instance is
 * `failed` only once this instance's monitor has seen its slot unchanged for hostDeadMs (6T).
 * The monitor starts with the join, which takes 2T, so the lease is free about 4T + T/4 after
 * the join completed (measured: 2.3 s with T = 500 ms). docs/leases.md bounds a waiter's
 * takeover of a crashed holder's lease by hostDeadMs + 4T; that is the bound here, counted from
 * the join, with margin for slow lockspace I/O. The lease rules themselves are not touched: a
 * restore is an ordinary try-acquire, repeated every T/2.
 *
 * A lease held by another host (by name) is a conflict: the LV was activated there meanwhile,
 * and this host must not take it back. The daemon's start never fails because of a restore.
 */
import { type Clock, systemClock } from '../clock.js';
import { isTandemError } from '../errors.js';
import type { LockInfo, LockOwner } from '../locking/types.js';
import type { Logger } from '../log.js';
import {
  type ActivationIntent,
  type ActivationIntents,
  describeIntent,
} from './activation-intent.js';
import { type LvActivations, describeHolders, lvLeaseName } from './lv-activations.js';
import type { VgEntry, VolumeEvent, VolumeHost } from './volume-host.js';

/** The bound of the wait for a lease an earlier instance holds: hostDeadMs + this many T. */
export const restoreMarginIoTimeouts = 4;
/** While waiting, a progress line at most this often. */
export const restoreProgressLogMs = 5_000;
/** Errors that no retry can change: the entry is dropped at once. */
const permanentCodes: ReadonlySet<string> = new Set([
  'LV_NOT_FOUND',
  'VG_PARTIAL',
  'LV_ACTIVE',
  'INVALID_ARGUMENT',
]);

type Outcome = { readonly kind: 'done' } | { readonly kind: 'retry'; readonly reason: string };

export interface RestorerParts {
  readonly activations: LvActivations;
  readonly intents: ActivationIntents;
  readonly hostName: string;
  readonly logger: Logger;
  readonly clock?: Clock;
}

/** Holders of a lease that are not this host (by name); '' names count as unknown, not other. */
export function otherHolders(lock: LockInfo, hostName: string): LockOwner[] {
  const holders = lock.owner !== undefined ? [lock.owner] : [...lock.sharedOwners];
  return holders.filter((holder) => holder.hostName !== '' && holder.hostName !== hostName);
}

async function inspectLease(entry: VgEntry, lockName: string): Promise<LockInfo | undefined> {
  try {
    return await entry.member?.locks().inspect(lockName);
  } catch {
    return undefined;
  }
}

export class ActivationRestorer {
  /** Recorded activations not restored yet, by VG uuid. */
  private readonly waiting = new Map<string, ActivationIntent[]>();
  private readonly running = new Map<string, Promise<void>>();
  private readonly stopController = new AbortController();
  private unwatch: () => void = () => undefined;
  private host: VolumeHost | undefined;

  constructor(private readonly parts: RestorerParts) {
    for (const intent of parts.intents.toRestore) {
      const list = this.waiting.get(intent.vgUuid) ?? [];
      list.push(intent);
      this.waiting.set(intent.vgUuid, list);
    }
  }

  private get clock(): Clock {
    return this.parts.clock ?? systemClock;
  }

  /**
   * Starts restoring in every VG this host joined; VGs joined later follow when they join.
   * Resolves once each of those VGs had its first attempt (retries go on in the background).
   */
  async start(host: VolumeHost): Promise<void> {
    if (this.waiting.size === 0) return;
    this.host = host;
    this.unwatch = host.watch((event) => this.onVolumeEvent(event));
    const firstPasses: Array<Promise<void>> = [];
    for (const vgUuid of [...this.waiting.keys()]) {
      const entry = host.byUuid(vgUuid);
      if (entry === undefined) {
        await this.dropVg(vgUuid, 'its VG was not found on this host');
      } else if (entry.member !== undefined) {
        firstPasses.push(new Promise((resolve) => this.launch(entry, resolve)));
      }
    }
    await Promise.all(firstPasses);
  }

  /** Ends every wait; resolves once no attempt runs (before the daemon deactivates all). */
  async stop(): Promise<void> {
    this.stopController.abort();
    this.unwatch();
    await Promise.all(this.running.values());
  }

  private onVolumeEvent(event: VolumeEvent): void {
    if (!this.waiting.has(event.vgUuid) || this.stopController.signal.aborted) return;
    if (event.kind === 'vg-removed') {
      void this.dropVg(event.vgUuid, `its VG was forgotten: ${event.reason ?? 'removed'}`);
      return;
    }
    const entry = this.host?.byUuid(event.vgUuid);
    if (entry?.member !== undefined) this.launch(entry, () => undefined);
  }

  private launch(entry: VgEntry, firstPassDone: () => void): void {
    const vgUuid = entry.vg.uuid;
    const intents = this.waiting.get(vgUuid);
    if (intents === undefined || this.running.has(vgUuid)) {
      firstPassDone();
      return;
    }
    this.waiting.delete(vgUuid);
    const run = this.restoreVg(entry, intents, firstPassDone)
      .catch((error: unknown) => {
        this.parts.logger.error('restoring LV activations failed', { vg: entry.vg.name, error });
      })
      .finally(() => {
        firstPassDone();
        this.running.delete(vgUuid);
      });
    this.running.set(vgUuid, run);
  }

  private async dropVg(vgUuid: string, reason: string): Promise<void> {
    const intents = this.waiting.get(vgUuid) ?? [];
    this.waiting.delete(vgUuid);
    for (const intent of intents) await this.drop(intent, reason);
  }

  private async drop(intent: ActivationIntent, reason: string, holder?: string): Promise<void> {
    this.parts.logger.warn('LV activation not restored', {
      export: `${intent.vgName}/${intent.lvName}`,
      lvUuid: intent.lvUuid,
      reason,
      ...(holder === undefined ? {} : { holder }),
    });
    await this.parts.intents.ended(intent.lvUuid, intent);
  }

  /** Tries every recorded LV of the VG; those held by an earlier instance again, bounded. */
  private async restoreVg(
    entry: VgEntry,
    intents: readonly ActivationIntent[],
    firstPassDone: () => void,
  ): Promise<void> {
    const signal = this.stopController.signal;
    const timings = entry.member?.store.timings;
    const ioTimeoutMs = timings?.ioTimeoutMs ?? entry.vg.metadata.ioTimeoutMs;
    const waitLimitMs =
      (timings?.hostDeadMs ?? 6 * ioTimeoutMs) + restoreMarginIoTimeouts * ioTimeoutMs;
    const startedMs = this.clock.nowMs();
    let nextProgressMs = startedMs;
    let left = intents;
    for (;;) {
      const retry: Array<{ intent: ActivationIntent; reason: string }> = [];
      for (const intent of left) {
        if (signal.aborted) return;
        const outcome = await this.attempt(entry, intent);
        if (outcome.kind === 'retry') retry.push({ intent, reason: outcome.reason });
      }
      firstPassDone();
      if (retry.length === 0 || signal.aborted) return;
      const elapsedMs = this.clock.nowMs() - startedMs;
      if (elapsedMs >= waitLimitMs) {
        for (const { intent, reason } of retry) {
          await this.drop(intent, `gave up after ${Math.round(elapsedMs)} ms: ${reason}`);
        }
        return;
      }
      if (this.clock.nowMs() >= nextProgressMs) {
        nextProgressMs = this.clock.nowMs() + restoreProgressLogMs;
        for (const { intent, reason } of retry) {
          this.parts.logger.info('waiting to restore an LV activation', {
            export: describeIntent(intent),
            reason,
            waitedMs: Math.round(elapsedMs),
            waitLimitMs,
          });
        }
      }
      const ok = await this.clock.sleep(ioTimeoutMs / 2, signal).then(
        () => true,
        () => false,
      );
      if (!ok) return;
      left = retry.map((item) => item.intent);
    }
  }

  /** One try at one recorded LV. */
  private async attempt(entry: VgEntry, intent: ActivationIntent): Promise<Outcome> {
    const { activations, intents, logger } = this.parts;
    // lv deactivate while we waited cancels the restore; lv activate did the work for us.
    if (intents.get(intent.lvUuid) !== intent) return { kind: 'done' };
    if (activations.activeHere(intent.lvUuid) !== undefined) return { kind: 'done' };
    const lv = entry.vg.metadata.lvs.find((candidate) => candidate.uuid === intent.lvUuid);
    if (lv === undefined || lv.hidden) {
      await this.drop(intent, 'the LV is gone from its VG');
      return { kind: 'done' };
    }
    try {
      const activation = await activations.activate(entry, lv.name, intent.mode);
      logger.info('LV activation restored', {
        export: activation.exportName,
        mode: intent.mode,
        ...(lv.name === intent.lvName && entry.vg.name === intent.vgName
          ? {}
          : { recordedAs: `${intent.vgName}/${intent.lvName}` }),
      });
      return { kind: 'done' };
    } catch (error) {
      return this.judgeFailure(entry, intent, lvLeaseName(lv), error);
    }
  }

  private async judgeFailure(
    entry: VgEntry,
    intent: ActivationIntent,
    lockName: string,
    error: unknown,
  ): Promise<Outcome> {
    const reason = error instanceof Error ? error.message : String(error);
    if (isTandemError(error, 'LV_ACTIVE_ELSEWHERE')) {
      const lock = await inspectLease(entry, lockName);
      if (lock !== undefined && otherHolders(lock, this.parts.hostName).length > 0) {
        await this.drop(intent, 'the LV is active on another host', describeHolders(lock));
        return { kind: 'done' };
      }
      const holder = lock === undefined ? 'a holder not known yet' : describeHolders(lock);
      return {
        kind: 'retry',
        reason: `its lease is held by ${holder}: by this host's name, so an earlier instance (free once seen dead) or a change running here`,
      };
    }
    if (isTandemError(error) && permanentCodes.has(error.code)) {
      await this.drop(intent, reason);
      return { kind: 'done' };
    }
    return { kind: 'retry', reason };
  }
}
