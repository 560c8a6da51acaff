/**
 * This host's view of the others: the monitor loop (every slot in one read every T/4), the probe
 * loop (each live peer over the network every T/2) and the HostEvents of `watch`. It never
 * writes; the heartbeat store owns it and stops it on leave and close.
 */
import type { Clock } from '../clock.js';
import type { Logger } from '../log.js';
import { HostMonitor } from './host-monitor.js';
import { diffHostViews, toHostView } from './host-views.js';
import { PeerProbing } from './peer-probing.js';
import type { SlotIo } from './slot-io.js';
import type { LeaseTimings } from './timings.js';
import type { HostEvent, HostInstance, HostView, PeerProber } from './types.js';

export interface ObserverHooks {
  /** Runs on every loop tick (the store checks its renewal deadline there). */
  readonly tick: () => void;
  /** Our own instance while we hold it (shown as live and never probed). */
  readonly self: () => HostInstance | undefined;
  /** Our host name: slots carrying it are us or our previous instance, never probed. */
  readonly hostName: string;
}

function ignoreAbort(error: unknown, signal: AbortSignal): void {
  if (!signal.aborted) throw error;
}

export class LockspaceObserver {
  readonly monitor: HostMonitor;
  private readonly probing: PeerProbing | undefined;
  private readonly watchers = new Set<(event: HostEvent) => void>();
  private views = new Map<number, HostView>();
  private running: AbortController | undefined;
  private loops: Promise<void>[] = [];

  constructor(
    private readonly io: SlotIo,
    private readonly timings: LeaseTimings,
    private readonly clock: Clock,
    private readonly logger: Logger,
    prober: PeerProber | undefined,
    private readonly hooks: ObserverHooks,
  ) {
    this.monitor = new HostMonitor(timings);
    this.probing =
      prober === undefined
        ? undefined
        : new PeerProbing(prober, this.monitor, clock, timings.ioTimeoutMs);
  }

  start(): void {
    if (this.running !== undefined) return;
    const controller = new AbortController();
    this.running = controller;
    const loops = [this.runMonitor(controller.signal)];
    if (this.probing !== undefined) loops.push(this.runProbes(this.probing, controller.signal));
    this.loops = loops.map((loop) =>
      loop.catch((error: unknown) =>
        this.logger.error('lockspace observer loop failed', { error }),
      ),
    );
  }

  /** Stops both loops; resolves when they have (each waits at most one bounded I/O). */
  async stop(): Promise<void> {
    this.running?.abort();
    await Promise.all(this.loops);
    this.running = undefined;
    this.loops = [];
  }

  hosts(): HostView[] {
    return [...this.currentViews().values()];
  }

  watch(listener: (event: HostEvent) => void): () => void {
    this.watchers.add(listener);
    return () => {
      this.watchers.delete(listener);
    };
  }

  /** Recomputes the views and tells watchers what changed. */
  refresh(): void {
    const next = this.currentViews();
    const events = diffHostViews(this.views, next);
    this.views = next;
    for (const event of events) {
      for (const watcher of [...this.watchers]) {
        try {
          watcher(event);
        } catch (error) {
          this.logger.error('host watcher threw', { error });
        }
      }
    }
  }

  private currentViews(): Map<number, HostView> {
    const nowMs = this.clock.nowMs();
    const self = this.hooks.self();
    const views = new Map<number, HostView>();
    for (const host of this.monitor.hosts(nowMs)) {
      views.set(host.hostId, toHostView(host, nowMs, self));
    }
    return views;
  }

  private async runMonitor(stop: AbortSignal): Promise<void> {
    const layout = this.io.layout;
    while (!stop.aborted) {
      const startedMs = this.clock.nowMs();
      this.hooks.tick();
      const read = await this.io.readRange(1, layout.maxHosts);
      if (stop.aborted) return;
      for (const failure of read.failures) {
        this.logger.warn('host slots could not be read', { error: failure.error });
        this.monitor.recordReadFailure(failure);
      }
      for (const observation of read.observations) this.monitor.recordObservation(observation);
      this.refresh();
      this.hooks.tick();
      const delayMs = Math.max(0, startedMs + this.timings.monitorIntervalMs - this.clock.nowMs());
      await this.clock.sleep(delayMs, stop).catch((error: unknown) => ignoreAbort(error, stop));
    }
  }

  private async runProbes(probing: PeerProbing, stop: AbortSignal): Promise<void> {
    while (!stop.aborted) {
      const startedMs = this.clock.nowMs();
      this.hooks.tick();
      const peers = this.hosts().filter(
        (host) =>
          !host.self &&
          host.hostName !== this.hooks.hostName &&
          host.address !== '' &&
          (host.state === 'live' || host.state === 'isolated'),
      );
      await probing.probeAll(peers, stop);
      if (stop.aborted) return;
      this.refresh();
      const delayMs = Math.max(0, startedMs + this.timings.probeIntervalMs - this.clock.nowMs());
      await this.clock.sleep(delayMs, stop).catch((error: unknown) => ignoreAbort(error, stop));
    }
  }
}
