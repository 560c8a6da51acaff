/**
 * Helpers for the targeted (hand-written) simulation scenarios: a small cluster on fixed
 * settings, started and joined, with lease operations that keep the checkers informed the way
 * the random workload does.
 */
import assert from 'node:assert/strict';
import type { AcquireOptions, LockInfo } from '../../src/locking/types.js';
import type { HostRuntime } from './host-runtime.js';
import type { ClusterConfig } from './sim-cluster.js';
import { Simulation, type SimulationOptions } from './simulation.js';

export const targetedIoTimeoutMs = 100;

export function targetedConfig(overrides: Partial<ClusterConfig> = {}): ClusterConfig {
  const t = overrides.ioTimeoutMs ?? targetedIoTimeoutMs;
  return {
    seed: 1,
    hostCount: 3,
    ioTimeoutMs: t,
    maxHosts: 4,
    resourceNames: ['r'],
    sectorBytes: 512,
    diskLatency: { minMs: 0.2, maxMs: t / 20, slowChance: 0, slowMaxMs: t / 20 },
    networkLatencyMs: { minMs: 0.1, maxMs: 1 },
    driftMax: 1e-4,
    fixedHostIds: true,
    dataRegionBytes: 2048,
    probing: false,
    ...overrides,
  };
}

/** A cluster with every host joined, no workload and no automatic rejoin. */
export async function startedSimulation(
  config: ClusterConfig,
  options: SimulationOptions = {},
): Promise<Simulation> {
  const simulation = new Simulation(config, { workload: false, autoRejoin: false, ...options });
  await simulation.setup();
  const joins = simulation.cluster.hosts.map((host) => simulation.cluster.startHost(host.index));
  const joined = await simulation.runUntilSettled(Promise.all(joins), 100 * config.ioTimeoutMs);
  assert.deepEqual(
    joined,
    joins.map(() => true),
    'every host joined',
  );
  return simulation;
}

export function runtimeOf(simulation: Simulation, index: number): HostRuntime {
  const runtime = simulation.cluster.host(index).runtime;
  assert.ok(runtime !== undefined, `host ${index} has a runtime`);
  return runtime;
}

/** Acquires on a host and tells the checkers, as the workload does. */
export async function acquireTracked(
  simulation: Simulation,
  index: number,
  name: string,
  options: AcquireOptions,
): Promise<LockInfo> {
  const host = simulation.cluster.host(index);
  const runtime = runtimeOf(simulation, index);
  const waitMs = options.waitMs ?? 0;
  const ended =
    waitMs > 0
      ? simulation.hostChecks.waitBegan(host, name, options.mode, waitMs)
      : () => undefined;
  host.busy.add(name);
  try {
    const info = await runtime.locks.acquire(name, options);
    if (options.mode === 'ex') simulation.safety.onExclusiveGranted(host, name, info.version);
    simulation.hostChecks.granted(host, name);
    return info;
  } finally {
    host.busy.delete(name);
    ended();
  }
}

/** Releases on a host; the belief ends when the call is made, as in the workload. */
export async function releaseTracked(
  simulation: Simulation,
  index: number,
  name: string,
): Promise<void> {
  const host = simulation.cluster.host(index);
  host.releasing.add(name);
  host.busy.add(name);
  try {
    await runtimeOf(simulation, index).locks.release(name);
  } finally {
    host.busy.delete(name);
    host.releasing.delete(name);
  }
}

/** The state host `observer` sees for host `target` ('absent' when not listed). */
export function stateSeenBy(simulation: Simulation, observer: number, target: number): string {
  const targetId = runtimeOfAny(simulation, target);
  const view = runtimeOf(simulation, observer)
    .hosts()
    .find((candidate) => candidate.hostId === targetId);
  return view?.state ?? 'absent';
}

function runtimeOfAny(simulation: Simulation, index: number): number {
  return simulation.config.fixedHostIds ? index + 1 : runtimeOf(simulation, index).instance.hostId;
}
