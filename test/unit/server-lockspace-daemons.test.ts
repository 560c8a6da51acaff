/**
 * Two real daemons (startDaemon, in this process) on one lockspace file formatted with the fast
 * profile, driven through the gRPC API: conflicts, hand-over, waits that honour the call's
 * deadline and cancellation, host lists, watch streams, and a clean stop that leaves.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import * as grpc from '@grpc/grpc-js';
import { initLockspace } from '../../src/cli/commands/lockspace.js';
import { loadTandemProto } from '../../src/generated/tandem-proto.js';
import type { AcquireResponse__Output } from '../../src/generated/tandem/v1/AcquireResponse.js';
import type { GetInfoResponse__Output } from '../../src/generated/tandem/v1/GetInfoResponse.js';
import type { HostsClient } from '../../src/generated/tandem/v1/Hosts.js';
import type { InspectResponse__Output } from '../../src/generated/tandem/v1/InspectResponse.js';
import type { ListHostsResponse__Output } from '../../src/generated/tandem/v1/ListHostsResponse.js';
import type { ListLocksResponse__Output } from '../../src/generated/tandem/v1/ListLocksResponse.js';
import type { LockEvent__Output } from '../../src/generated/tandem/v1/LockEvent.js';
import type { LocksClient } from '../../src/generated/tandem/v1/Locks.js';
import type { NodeClient } from '../../src/generated/tandem/v1/Node.js';
import { type LogLevel, createLogger } from '../../src/log.js';
import type { DaemonConfig } from '../../src/server/config.js';
import { type RunningDaemon, readyLine, startDaemon } from '../../src/server/daemon.js';
import { LockspaceMember } from '../../src/server/lockspace-member.js';
import type { BlockDevice } from '../../src/disk/block-device.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { gateDevice } from '../../src/locking/index.js';
import { errorCodeMetadataKey } from '../../src/server/status.js';

const callTimeoutMs = 5_000;
const directory = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-lockspace-daemons-'));
const lockspacePath = path.join(directory, 'leases.img');
const logLines: string[] = [];

function config(name: string, extra: Partial<DaemonConfig>): DaemonConfig {
  return {
    dataDir: path.join(directory, name),
    grpc: { host: '127.0.0.1', port: 0 },
    nbd: { host: '127.0.0.1', port: 0 },
    hostName: name,
    logLevel: 'info',
    lockspace: undefined,
    hostId: undefined,
    advertise: undefined,
    vgDir: undefined,
    pvs: [],
    restoreActivations: true,
    ...extra,
  };
}

function logger(level: LogLevel = 'info') {
  return createLogger({ level, sink: { write: (line) => void logLines.push(line) } });
}

interface Clients {
  node: NodeClient;
  hosts: HostsClient;
  locks: LocksClient;
}

function clientsFor(address: string): Clients {
  const proto = loadTandemProto();
  const credentials = grpc.credentials.createInsecure();
  return {
    node: new proto.tandem.v1.Node(address, credentials),
    hosts: new proto.tandem.v1.Hosts(address, credentials),
    locks: new proto.tandem.v1.Locks(address, credentials),
  };
}

type Invoke<Response> = (
  options: grpc.CallOptions,
  callback: (error: grpc.ServiceError | null, response?: Response) => void,
) => unknown;

function call<Response>(invoke: Invoke<Response>, timeoutMs = callTimeoutMs): Promise<Response> {
  return new Promise((resolve, reject) => {
    invoke({ deadline: Date.now() + timeoutMs }, (error, response) => {
      if (error !== null) reject(error);
      else if (response === undefined) reject(new Error('no response'));
      else resolve(response);
    });
  });
}

/** Checks a failed call's gRPC status and tandem error code. */
function failsWith(status: grpc.status, tandemCode?: string, message?: RegExp) {
  return (error: unknown): boolean => {
    const serviceError = error as grpc.ServiceError;
    assert.equal(serviceError.code, status, serviceError.details);
    if (tandemCode !== undefined) {
      assert.deepEqual(serviceError.metadata.get(errorCodeMetadataKey), [tandemCode]);
    }
    if (message !== undefined) assert.match(serviceError.details, message);
    return true;
  };
}

after(() => fs.rmSync(directory, { recursive: true, force: true }));

const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

describe('two daemons on one lockspace', () => {
  let daemonA: RunningDaemon;
  let daemonB: RunningDaemon;
  let a: Clients;
  let b: Clients;
  const closers: Array<() => unknown> = [];

  before(async () => {
    await initLockspace(lockspacePath, { profile: 'fast', maxHosts: 8, maxResources: 16 });
    daemonA = await startDaemon(
      config('node-a', { lockspace: lockspacePath, hostId: 1 }),
      logger(),
    );
    closers.push(() => daemonA.stop());
    daemonB = await startDaemon(config('node-b', { lockspace: lockspacePath }), logger());
    closers.push(() => daemonB.stop());
    a = clientsFor(daemonA.grpcAddress);
    b = clientsFor(daemonB.grpcAddress);
    for (const clients of [a, b]) {
      closers.push(() => Object.values(clients).forEach((client: grpc.Client) => client.close()));
    }
  });

  after(async () => {
    for (const close of closers.reverse()) await close();
  });

  test('each joined with a host id, in its ready line and GetInfo', async () => {
    assert.match(readyLine(daemonA), /^tandemd ready grpc=\S+ nbd=\S+ host-id=1 generation=\d+$/);
    const membershipB = daemonB.membership();
    assert.ok(membershipB !== undefined && membershipB.hostId !== 1 && membershipB.hostId > 0);
    const info = await call<GetInfoResponse__Output>((options, callback) =>
      a.node.GetInfo({}, options, callback),
    );
    assert.equal(info.hostId, 1);
    assert.equal(info.lockspaceState, 'LOCKSPACE_STATE_JOINED');
    assert.equal(info.lockspacePath, lockspacePath);
    assert.ok(logLines.some((line) => line.includes('"message":"joined the lockspace"')));
  });

  test('acquire on A, conflict on B, release, B acquires', async () => {
    const taken = await call<AcquireResponse__Output>((options, callback) =>
      a.locks.Acquire(
        { name: 'vm-1', mode: 'LOCK_MODE_EX', value: Buffer.from('aa', 'hex') },
        options,
        callback,
      ),
    );
    assert.equal(taken.lock?.mode, 'LOCK_MODE_EX');
    assert.equal(taken.lock?.heldHere, 'LOCK_MODE_EX');
    assert.equal(taken.lock?.owner?.hostId, 1);
    assert.deepEqual(taken.lock?.value, Buffer.from('aa', 'hex'));

    await assert.rejects(
      call((options, callback) =>
        b.locks.Acquire({ name: 'vm-1', mode: 'LOCK_MODE_EX' }, options, callback),
      ),
      failsWith(grpc.status.ABORTED, 'LOCK_HELD'),
    );
    await call((options, callback) => a.locks.Release({ name: 'vm-1' }, options, callback));
    const takenByB = await call<AcquireResponse__Output>((options, callback) =>
      b.locks.Acquire({ name: 'vm-1', mode: 'LOCK_MODE_EX' }, options, callback),
    );
    assert.equal(takenByB.lock?.owner?.hostId, daemonB.membership()?.hostId);
    assert.deepEqual(takenByB.lock?.value, Buffer.from('aa', 'hex'), 'no value given: kept');

    const listed = await call<ListLocksResponse__Output>((options, callback) =>
      a.locks.ListLocks({}, options, callback),
    );
    const vm1 = listed.locks.find((lock) => lock.name === 'vm-1');
    assert.equal(vm1?.owner?.hostName, 'node-b');
    assert.equal(vm1?.heldHere, 'LOCK_MODE_FREE');
  });

  test('a wait ends at the call deadline and when the client cancels; nothing is taken late', async () => {
    const startedMs = Date.now();
    await assert.rejects(
      call(
        (options, callback) =>
          a.locks.Acquire(
            { name: 'vm-1', mode: 'LOCK_MODE_EX', waitMs: 60_000 },
            options,
            callback,
          ),
        400,
      ),
      failsWith(grpc.status.DEADLINE_EXCEEDED),
    );
    assert.ok(Date.now() - startedMs < 3_000, 'the deadline, not wait_ms, ended the call');
    const cancelled = a.locks.Acquire(
      { name: 'vm-1', mode: 'LOCK_MODE_EX', waitMs: 60_000 },
      { deadline: Date.now() + 30_000 },
      () => undefined,
    );
    await sleep(100);
    cancelled.cancel();
    await sleep(100);
    await call((options, callback) => b.locks.Release({ name: 'vm-1' }, options, callback));
    await sleep(300);
    const inspected = await call<InspectResponse__Output>((options, callback) =>
      a.locks.Inspect({ name: 'vm-1' }, options, callback),
    );
    assert.equal(inspected.lock?.mode, 'LOCK_MODE_FREE', 'no abandoned waiter took the lock');
  });

  test('host list shows both hosts live, from either side', async () => {
    const listed = await call<ListHostsResponse__Output>((options, callback) =>
      a.hosts.ListHosts({}, options, callback),
    );
    assert.deepEqual(
      listed.hosts.map((host) => [host.hostName, host.state, host.self]),
      [
        ['node-a', 'HOST_STATE_LIVE', true],
        ['node-b', 'HOST_STATE_LIVE', false],
      ],
    );
    assert.equal(listed.hosts[1]?.address, daemonB.grpcAddress);
  });

  test('watch streams lock events; bad requests are refused at the edge', async () => {
    const events: LockEvent__Output[] = [];
    const stream = b.locks.WatchLocks({});
    stream.on('data', (event: LockEvent__Output) => events.push(event));
    stream.on('error', () => undefined);
    await sleep(100);
    await call((options, callback) =>
      b.locks.Acquire({ name: 'vm-2', mode: 'LOCK_MODE_SH' }, options, callback),
    );
    await call((options, callback) => b.locks.Release({ name: 'vm-2' }, options, callback));
    await sleep(100);
    stream.cancel();
    assert.deepEqual(
      events.map((event) => [event.kind, event.name]),
      [
        ['LOCK_EVENT_KIND_ACQUIRED', 'vm-2'],
        ['LOCK_EVENT_KIND_RELEASED', 'vm-2'],
      ],
    );
    await assert.rejects(
      call((options, callback) =>
        b.locks.Acquire({ name: 'bad name', mode: 'LOCK_MODE_EX' }, options, callback),
      ),
      failsWith(grpc.status.INVALID_ARGUMENT, 'INVALID_ARGUMENT', /lock name 'bad name'/),
    );
    await assert.rejects(
      call((options, callback) =>
        b.locks.Acquire(
          { name: 'vm-3', mode: 'LOCK_MODE_SH', value: Buffer.from('01', 'hex') },
          options,
          callback,
        ),
      ),
      failsWith(grpc.status.INVALID_ARGUMENT, 'INVALID_ARGUMENT', /only an exclusive lock/),
    );
  });

  test('request-release goes to the holder; elsewhere it names the holder', async () => {
    await call((options, callback) =>
      b.locks.Acquire({ name: 'vm-5', mode: 'LOCK_MODE_EX' }, options, callback),
    );
    await assert.rejects(
      call((options, callback) => a.locks.RequestRelease({ name: 'vm-5' }, options, callback)),
      failsWith(
        grpc.status.FAILED_PRECONDITION,
        'LOCK_NOT_HELD',
        new RegExp(`held by this host but by node-b#\\d+ at ${daemonB.grpcAddress}`),
      ),
    );
    await call((options, callback) => b.locks.RequestRelease({ name: 'vm-5' }, options, callback));
    const inspected = await call<InspectResponse__Output>((options, callback) =>
      a.locks.Inspect({ name: 'vm-5' }, options, callback),
    );
    assert.equal(inspected.lock?.mode, 'LOCK_MODE_FREE');
  });

  test('a clean stop releases every lock and leaves; the other host sees it', async () => {
    await call((options, callback) =>
      b.locks.Acquire({ name: 'vm-4', mode: 'LOCK_MODE_EX' }, options, callback),
    );
    await daemonB.stop();
    // A sees the leave at its next read of B's slot (every T/4 = 62.5 ms with the fast profile).
    let stateOfB: string | undefined;
    for (let attempt = 0; attempt < 40 && stateOfB !== 'HOST_STATE_LEFT'; attempt += 1) {
      await sleep(50);
      const listed = await call<ListHostsResponse__Output>((options, callback) =>
        a.hosts.ListHosts({}, options, callback),
      );
      stateOfB = listed.hosts.find((host) => host.hostName === 'node-b')?.state;
    }
    assert.equal(stateOfB, 'HOST_STATE_LEFT');
    const inspected = await call<InspectResponse__Output>((options, callback) =>
      a.locks.Inspect({ name: 'vm-4' }, options, callback),
    );
    assert.equal(inspected.lock?.mode, 'LOCK_MODE_FREE');
  });

  test('Fence releases every lock and leaves; the host then refuses lease calls', async () => {
    await call((options, callback) =>
      a.locks.Acquire({ name: 'vm-6', mode: 'LOCK_MODE_EX' }, options, callback),
    );
    await call((options, callback) => a.hosts.Fence({ reason: 'unit test' }, options, callback));
    await call((options, callback) => a.hosts.Fence({ reason: 'twice' }, options, callback));
    assert.equal(daemonA.membership()?.state, 'left');
    await assert.rejects(
      call((options, callback) => a.hosts.ListHosts({}, options, callback)),
      failsWith(
        grpc.status.FAILED_PRECONDITION,
        'LOCKSPACE_NOT_JOINED',
        /fenced on request \(unit test\) and left its lockspace; restart tandemd/,
      ),
    );
    const member = await LockspaceMember.start({
      lockspace: lockspacePath,
      hostName: 'node-e',
      address: '',
      logger: logger(),
    });
    try {
      const info = await member.locks().inspect('vm-6');
      assert.equal(info.mode, 'free', 'released on disk by the fence');
    } finally {
      await member.stop();
    }
  });
});

describe('a daemon without a lockspace', () => {
  test('refuses lease calls with FAILED_PRECONDITION and says how to fix it', async () => {
    const daemon = await startDaemon(config('node-c', {}), logger());
    const clients = clientsFor(daemon.grpcAddress);
    try {
      assert.equal(
        readyLine(daemon),
        `tandemd ready grpc=${daemon.grpcAddress} nbd=${daemon.nbdAddress}`,
      );
      const expected = failsWith(
        grpc.status.FAILED_PRECONDITION,
        'LOCKSPACE_NOT_JOINED',
        /^this host joined no lockspace; start tandemd with --lockspace PATH$/,
      );
      await assert.rejects(
        call((options, callback) => clients.hosts.ListHosts({}, options, callback)),
        expected,
      );
      await assert.rejects(
        call((options, callback) =>
          clients.locks.Acquire({ name: 'x', mode: 'LOCK_MODE_EX' }, options, callback),
        ),
        expected,
      );
      const info = await call<GetInfoResponse__Output>((options, callback) =>
        clients.node.GetInfo({}, options, callback),
      );
      assert.equal(info.lockspaceState, 'LOCKSPACE_STATE_NONE');
      assert.equal(info.hostId, 0);
    } finally {
      for (const client of Object.values(clients)) client.close();
      await daemon.stop();
    }
  });
});

describe('a member fenced by its heartbeat store', () => {
  test('joins again with a new generation after the host dead time', async () => {
    const ownLockspace = path.join(directory, 'rejoin.img');
    await initLockspace(ownLockspace, { profile: 'fast', maxHosts: 2, maxResources: 2 });
    const member = await LockspaceMember.start({
      lockspace: ownLockspace,
      hostName: 'node-d',
      address: '',
      logger: logger(),
    });
    try {
      const first = member.info();
      await member.locks().acquire('vm-d', { mode: 'ex' });
      member.store.fence('a test says so');
      assert.equal(member.info().state, 'fenced');
      // Host dead time 1.5 s, then a join of about 0.5 s.
      for (let attempt = 0; attempt < 80 && member.info().state !== 'joined'; attempt += 1) {
        await sleep(50);
      }
      const second = member.info();
      assert.equal(second.state, 'joined');
      // A new instance: the same host id with a newer generation, or (without --host-id) a slot
      // the auto-pick found free.
      assert.ok(
        second.hostId !== first.hostId || second.generation > first.generation,
        `a new instance: ${JSON.stringify(first)} -> ${JSON.stringify(second)}`,
      );
      assert.ok(logLines.some((line) => line.includes('"message":"rejoined the lockspace"')));
      // The old generation's lock is dead to everyone: the new instance may take it.
      const again = await member.locks().acquire('vm-d', { mode: 'ex', waitMs: 3_000 });
      assert.equal(again.owner?.generation, second.generation);
    } finally {
      await member.stop();
    }
  });
  test('a fence that leaves a gated write stuck calls the exit hook (the watchdog role)', async () => {
    const ownLockspace = path.join(directory, 'stuck.img');
    await initLockspace(ownLockspace, { profile: 'fast', maxHosts: 2, maxResources: 2 });
    const stuckCounts: number[] = [];
    const member = await LockspaceMember.start({
      lockspace: ownLockspace,
      hostName: 'node-s',
      address: '',
      logger: logger(),
      onWritesStuck: (count) => stuckCounts.push(count),
    });
    try {
      // A data device whose writes never complete, written through the lockspace's gate.
      const data = new MemoryDevice({ sizeBytes: 1024 * 1024 });
      const hanging: BlockDevice = Object.assign(Object.create(data) as BlockDevice, {
        write: () => new Promise<void>(() => undefined),
      });
      const gated = gateDevice(hanging, member.locks().gate);
      void gated.write(Buffer.alloc(512), 0).catch(() => undefined);
      member.store.fence('a test stalls the data disk');
      const drainMs = member.store.timings.fenceDrainMs;
      await sleep(drainMs + 500);
      assert.deepEqual(stuckCounts, [1], 'one write stuck past the drain time');
      await assert.rejects(gated.write(Buffer.alloc(512), 0), /FENCED|fenced/);
    } finally {
      await member.stop();
    }
  });
});
