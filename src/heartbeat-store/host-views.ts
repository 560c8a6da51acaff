/**
 * What `HeartbeatStore.hosts()` and `watch()` show: the monitor's knowledge turned into
 * HostViews, and the events between two successive lists.
 */
import type { HostEvent, HostView } from './types.js';
import type { MonitoredHost } from './host-monitor.js';
import type { HostInstance } from './types.js';

export function toHostView(
  host: MonitoredHost,
  nowMs: number,
  self: HostInstance | undefined,
): HostView {
  const record = host.record;
  const isSelf =
    self !== undefined &&
    record !== undefined &&
    self.hostId === host.hostId &&
    self.generation === record.generation;
  return {
    hostId: host.hostId,
    // A slot never read as valid (corrupt since we first saw it) has no generation to show.
    generation: record?.generation ?? 0,
    hostName: record?.hostName ?? '',
    state: isSelf ? 'live' : host.state,
    self: isSelf,
    heartbeatAgeMs: Math.max(0, nowMs - host.changedAtMs),
    address: record?.address ?? '',
    payload: record?.payload,
    payloadSizeBytes: record?.payloadSizeBytes ?? 0,
    renewedWallMs: record?.renewedWallMs ?? 0,
  };
}

function samePayload(a: Buffer | undefined, b: Buffer | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  return a.equals(b);
}

/** The events that lead from `previous` to `next` (both keyed by host id). */
export function diffHostViews(
  previous: ReadonlyMap<number, HostView>,
  next: ReadonlyMap<number, HostView>,
): HostEvent[] {
  const events: HostEvent[] = [];
  for (const [hostId, host] of next) {
    const before = previous.get(hostId);
    if (before === undefined || before.generation !== host.generation) {
      events.push({ kind: 'joined', host });
      continue;
    }
    if (before.state !== host.state) events.push({ kind: 'state', host });
    if (
      !samePayload(before.payload, host.payload) ||
      before.hostName !== host.hostName ||
      before.address !== host.address
    ) {
      events.push({ kind: 'payload', host });
    }
  }
  for (const [hostId, host] of previous) {
    if (!next.has(hostId)) events.push({ kind: 'removed', host });
  }
  return events;
}
