import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { isTandemError } from '../../src/errors.js';
import type { HostView } from '../../src/heartbeat-store/types.js';
import type { LockInfo } from '../../src/locking/types.js';
import {
  hostEventMessage,
  hostMessage,
  hostSnapshotMessage,
  lockEventMessage,
  lockMessage,
  timestampOf,
  validateLockMode,
  validateLockName,
  validateLockValue,
  validatePayload,
  validateWaitMs,
} from '../../src/server/lease-messages.js';
import { effectiveWaitMs } from '../../src/server/services/locks-service.js';

function assertInvalid(run: () => unknown, pattern: RegExp): void {
  assert.throws(run, (error: unknown) => {
    assert.ok(isTandemError(error, 'INVALID_ARGUMENT'), String(error));
    assert.match(error.message, pattern);
    return true;
  });
}

const hostView: HostView = {
  hostId: 2,
  generation: 5,
  hostName: 'node-b',
  state: 'isolated',
  self: false,
  heartbeatAgeMs: 312.6,
  address: '10.0.0.2:7600',
  payload: Buffer.from('hi'),
  payloadSizeBytes: 2,
  renewedWallMs: 1_700_000_000_123,
};

describe('lease requests are checked at the edge', () => {
  test('lock names', () => {
    assert.equal(validateLockName('vg0/lv-1@a:b+c'), 'vg0/lv-1@a:b+c');
    assertInvalid(() => validateLockName(''), /^a lock name is required$/);
    assertInvalid(() => validateLockName('has space'), /1\.\.48 characters of/);
    assertInvalid(() => validateLockName('x'.repeat(49)), /1\.\.48 characters/);
  });

  test('modes: EX or SH only', () => {
    assert.equal(validateLockMode('LOCK_MODE_EX'), 'ex');
    assert.equal(validateLockMode('LOCK_MODE_SH'), 'sh');
    assert.equal(validateLockMode(2), 'sh');
    assertInvalid(() => validateLockMode('LOCK_MODE_UNSPECIFIED'), /must be LOCK_MODE_EX or/);
    assertInvalid(() => validateLockMode('LOCK_MODE_FREE'), /must be LOCK_MODE_EX or/);
  });

  test('wait, value and payload limits', () => {
    assert.equal(validateWaitMs(0), 0);
    assert.equal(validateWaitMs(3_600_000), 3_600_000);
    assertInvalid(() => validateWaitMs(3_600_001), /wait_ms must be an integer in 0\.\.3600000/);
    assert.equal(validateLockValue(Buffer.alloc(64)).length, 64);
    assertInvalid(() => validateLockValue(Buffer.alloc(65)), /at most 64 bytes, not 65/);
    assert.equal(validatePayload(Buffer.alloc(1024)).length, 1024);
    assertInvalid(() => validatePayload(Buffer.alloc(1025)), /at most 1024 bytes, not 1025/);
  });

  test('a wait never runs past the call deadline', () => {
    assert.equal(effectiveWaitMs(5_000, 1_000_300, 1_000_000), 300);
    assert.equal(effectiveWaitMs(100, 1_000_300, 1_000_000), 100);
    assert.equal(effectiveWaitMs(100, 999_000, 1_000_000), 0);
    assert.equal(effectiveWaitMs(100, Infinity, 1_000_000), 100);
  });
});

describe('lease wire messages', () => {
  test('hosts', () => {
    const message = hostMessage(hostView);
    assert.deepEqual(message, {
      hostId: 2,
      hostName: 'node-b',
      generation: '5',
      state: 'HOST_STATE_ISOLATED',
      heartbeatAgeMs: '313',
      address: '10.0.0.2:7600',
      payloadSizeBytes: 2,
      payload: Buffer.from('hi'),
      payloadUnreadable: false,
      self: false,
      renewedTime: { seconds: '1700000000', nanos: 123_000_000 },
    });
    const torn = hostMessage({ ...hostView, payload: undefined });
    assert.equal(torn.payloadUnreadable, true);
    assert.deepEqual(torn.payload, Buffer.alloc(0));
  });

  test('host events: the snapshot says JOINED for live hosts, STATE for the others', () => {
    assert.equal(hostSnapshotMessage(hostView).kind, 'HOST_EVENT_KIND_JOINED');
    assert.equal(hostSnapshotMessage(hostView).snapshot, true);
    assert.equal(hostSnapshotMessage({ ...hostView, state: 'left' }).kind, 'HOST_EVENT_KIND_STATE');
    const event = hostEventMessage({ kind: 'removed', host: hostView });
    assert.equal(event.kind, 'HOST_EVENT_KIND_REMOVED');
    assert.equal(event.snapshot, false);
  });

  test('locks', () => {
    const shared: LockInfo = {
      name: 'vg0',
      mode: 'sh',
      owner: undefined,
      sharedOwners: [
        { hostId: 1, generation: 3, hostName: 'a' },
        { hostId: 2, generation: 9, hostName: 'b' },
      ],
      version: 7,
      value: Buffer.from('00ff', 'hex'),
      sinceWallMs: 1_500,
      heldHere: 'sh',
    };
    assert.deepEqual(lockMessage(shared), {
      name: 'vg0',
      mode: 'LOCK_MODE_SH',
      owner: null,
      sharedOwners: [
        { hostId: 1, generation: '3', hostName: 'a' },
        { hostId: 2, generation: '9', hostName: 'b' },
      ],
      version: '7',
      value: Buffer.from('00ff', 'hex'),
      since: { seconds: '1', nanos: 500_000_000 },
      heldHere: 'LOCK_MODE_SH',
    });
    const free = lockMessage({
      ...shared,
      mode: 'free',
      sharedOwners: [],
      sinceWallMs: 0,
      heldHere: undefined,
    });
    assert.equal(free.mode, 'LOCK_MODE_FREE');
    assert.equal(free.heldHere, 'LOCK_MODE_FREE');
    assert.equal(free.since, null);
  });

  test('lock events and timestamps', () => {
    assert.deepEqual(
      lockEventMessage({ kind: 'lost', name: 'x', mode: 'free', version: 4, reason: 'fenced' }),
      {
        kind: 'LOCK_EVENT_KIND_LOST',
        name: 'x',
        mode: 'LOCK_MODE_FREE',
        version: '4',
        reason: 'fenced',
      },
    );
    assert.equal(
      lockEventMessage({ kind: 'acquired', name: 'x', mode: 'ex', version: 5 }).reason,
      '',
    );
    assert.deepEqual(timestampOf(0), { seconds: '0', nanos: 0 });
  });
});
