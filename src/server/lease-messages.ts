/**
 * The edge between the lease layers and leases.proto: requests checked before any lease code
 * runs, and hosts, locks and events turned into their wire messages.
 */
import { TandemError } from '../errors.js';
import type { Host } from '../generated/tandem/v1/Host.js';
import type { HostEvent as HostEventMessage } from '../generated/tandem/v1/HostEvent.js';
import type { Lock } from '../generated/tandem/v1/Lock.js';
import type { LockEvent as LockEventMessage } from '../generated/tandem/v1/LockEvent.js';
import type { LockMode as LockModeMessage } from '../generated/tandem/v1/LockMode.js';
import type { LockOwner as LockOwnerMessage } from '../generated/tandem/v1/LockOwner.js';
import type { Timestamp } from '../generated/google/protobuf/Timestamp.js';
import { payloadBytesMax } from '../heartbeat-store/index.js';
import type { HostEvent, HostState, HostView } from '../heartbeat-store/types.js';
import {
  type LockEvent,
  type LockInfo,
  type LockMode,
  type LockOwner,
  resourceNameBytesMax,
  resourceNamePattern,
  valueBlockBytesMax,
} from '../locking/types.js';

/** The longest wait for a lock one call may ask for: an hour. */
export const lockWaitMsMax = 3_600_000;

function invalid(message: string): TandemError {
  return new TandemError('INVALID_ARGUMENT', message);
}

export function validateLockName(name: string): string {
  if (!resourceNamePattern.test(name)) {
    throw invalid(
      name === ''
        ? 'a lock name is required'
        : `lock name '${name}' must be 1..${resourceNameBytesMax} characters of [A-Za-z0-9._:/@+-]`,
    );
  }
  return name;
}

/** EX or SH, as a request sends it (the enum name, or its number). */
export function validateLockMode(mode: string | number): LockMode {
  if (mode === 'LOCK_MODE_EX' || mode === 1) return 'ex';
  if (mode === 'LOCK_MODE_SH' || mode === 2) return 'sh';
  throw invalid(`lock mode must be LOCK_MODE_EX or LOCK_MODE_SH, not ${String(mode)}`);
}

export function validateWaitMs(waitMs: number): number {
  if (!Number.isInteger(waitMs) || waitMs < 0 || waitMs > lockWaitMsMax) {
    throw invalid(`wait_ms must be an integer in 0..${lockWaitMsMax}, not ${waitMs}`);
  }
  return waitMs;
}

export function validateLockValue(value: Buffer): Buffer {
  if (value.length > valueBlockBytesMax) {
    throw invalid(`a lock value holds at most ${valueBlockBytesMax} bytes, not ${value.length}`);
  }
  return value;
}

export function validatePayload(payload: Buffer): Buffer {
  if (payload.length > payloadBytesMax) {
    throw invalid(`a host payload holds at most ${payloadBytesMax} bytes, not ${payload.length}`);
  }
  return payload;
}

export function timestampOf(wallMs: number): Timestamp {
  return {
    seconds: String(Math.floor(wallMs / 1000)),
    nanos: (((wallMs % 1000) + 1000) % 1000) * 1_000_000,
  };
}

const hostStates: Readonly<Record<HostState, Host['state']>> = {
  live: 'HOST_STATE_LIVE',
  failed: 'HOST_STATE_FAILED',
  isolated: 'HOST_STATE_ISOLATED',
  left: 'HOST_STATE_LEFT',
};

export function hostMessage(view: HostView): Host {
  return {
    hostId: view.hostId,
    hostName: view.hostName,
    generation: String(view.generation),
    state: hostStates[view.state],
    heartbeatAgeMs: String(Math.max(0, Math.round(view.heartbeatAgeMs))),
    address: view.address,
    payloadSizeBytes: view.payloadSizeBytes,
    payload: view.payload ?? Buffer.alloc(0),
    payloadUnreadable: view.payload === undefined,
    self: view.self,
    renewedTime: view.renewedWallMs > 0 ? timestampOf(view.renewedWallMs) : null,
  };
}

const hostEventKinds: Readonly<Record<HostEvent['kind'], HostEventMessage['kind']>> = {
  joined: 'HOST_EVENT_KIND_JOINED',
  state: 'HOST_EVENT_KIND_STATE',
  payload: 'HOST_EVENT_KIND_PAYLOAD',
  removed: 'HOST_EVENT_KIND_REMOVED',
};

export function hostEventMessage(event: HostEvent): HostEventMessage {
  return { kind: hostEventKinds[event.kind], host: hostMessage(event.host), snapshot: false };
}

/** The first batch of WatchHosts: live and isolated hosts as JOINED, the others as STATE. */
export function hostSnapshotMessage(view: HostView): HostEventMessage {
  const kind = view.state === 'live' || view.state === 'isolated' ? 'joined' : 'state';
  return { ...hostEventMessage({ kind, host: view }), snapshot: true };
}

export function lockModeMessage(mode: LockMode | 'free' | undefined): LockModeMessage {
  if (mode === 'ex') return 'LOCK_MODE_EX';
  if (mode === 'sh') return 'LOCK_MODE_SH';
  return 'LOCK_MODE_FREE';
}

function ownerMessage(owner: LockOwner): LockOwnerMessage {
  return {
    hostId: owner.hostId,
    generation: String(owner.generation),
    hostName: owner.hostName,
  };
}

export function lockMessage(info: LockInfo): Lock {
  return {
    name: info.name,
    mode: lockModeMessage(info.mode),
    owner: info.owner === undefined ? null : ownerMessage(info.owner),
    sharedOwners: info.sharedOwners.map(ownerMessage),
    version: String(info.version),
    value: info.value,
    since: info.sinceWallMs > 0 ? timestampOf(info.sinceWallMs) : null,
    heldHere: lockModeMessage(info.heldHere),
  };
}

const lockEventKinds: Readonly<Record<LockEvent['kind'], LockEventMessage['kind']>> = {
  acquired: 'LOCK_EVENT_KIND_ACQUIRED',
  released: 'LOCK_EVENT_KIND_RELEASED',
  converted: 'LOCK_EVENT_KIND_CONVERTED',
  value: 'LOCK_EVENT_KIND_VALUE',
  lost: 'LOCK_EVENT_KIND_LOST',
};

export function lockEventMessage(event: LockEvent): LockEventMessage {
  return {
    kind: lockEventKinds[event.kind],
    name: event.name,
    mode: lockModeMessage(event.mode),
    version: String(event.version),
    reason: event.reason ?? '',
  };
}
