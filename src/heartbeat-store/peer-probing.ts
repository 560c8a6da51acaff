/**
 * Network probes of the peers a host sees live on storage (docs/leases.md: `isolated`). A probe
 * that does not answer within ioTimeoutMs counts as unanswered; its results feed the monitor.
 */
import type { Clock } from '../clock.js';
import { bounded } from './bounded-io.js';
import type { HostMonitor } from './host-monitor.js';
import type { HostView, PeerProber } from './types.js';

/** Probes in flight at once, whatever the number of peers (a named limit). */
export const probeConcurrencyMax = 16;

export class PeerProbing {
  constructor(
    private readonly prober: PeerProber,
    private readonly monitor: HostMonitor,
    private readonly clock: Clock,
    private readonly timeoutMs: number,
  ) {}

  /** Probes every peer once, at most probeConcurrencyMax at a time. */
  async probeAll(peers: readonly HostView[], stop: AbortSignal): Promise<void> {
    let next = 0;
    const worker = async (): Promise<void> => {
      while (!stop.aborted) {
        const peer = peers[next++];
        if (peer === undefined) return;
        await this.probeOne(peer, stop);
      }
    };
    const workerCount = Math.min(probeConcurrencyMax, peers.length);
    await Promise.all(Array.from({ length: workerCount }, worker));
  }

  private async probeOne(peer: HostView, stop: AbortSignal): Promise<void> {
    const controller = new AbortController();
    const onStop = (): void => controller.abort(stop.reason);
    stop.addEventListener('abort', onStop, { once: true });
    const startedMs = this.clock.nowMs();
    let probe: Promise<boolean>;
    try {
      probe = this.prober.probe(peer.address, controller.signal);
    } catch (error) {
      probe = Promise.reject(error);
    }
    const outcome = await bounded(
      this.clock,
      this.timeoutMs,
      `probe of ${peer.address}`,
      probe,
      startedMs,
    );
    // The prober may still be waiting (a timed-out probe): tell it to give up.
    controller.abort();
    stop.removeEventListener('abort', onStop);
    if (stop.aborted) return;
    const answered = outcome.ok && outcome.value === true;
    this.monitor.recordProbe(peer, startedMs, outcome.completedMs, answered);
  }
}
