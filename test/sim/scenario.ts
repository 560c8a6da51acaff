/**
 * Seeded random schedules for the lease simulation: the cluster's shape (hosts, resources,
 * sector size, host id policy) and a list of timed faults. A scenario is a pure function of its
 * seed: `generateScenario(seed)` always gives the same one, and running it gives the same trace.
 */
import type { ClusterConfig } from './sim-cluster.js';
import { randomFrom, seedStream } from './sim-cluster.js';

export type FaultKind =
  | 'stall-short'
  | 'stall-long'
  | 'fail'
  | 'lost-writes'
  | 'torn-writes'
  | 'slow'
  | 'crash'
  | 'wall-jump'
  | 'partition';

export interface FaultPlan {
  readonly kind: FaultKind;
  readonly host: number;
  readonly atMs: number;
  /** How long the fault lasts (for crash: the delay before the restart). */
  readonly durationMs: number;
  /** Stalls and write faults: the data disk too, not only the lockspace. */
  readonly dataToo: boolean;
  /** fail, lost-writes, torn-writes: the chance per request; wall-jump: the jump in ms. */
  readonly amount: number;
}

export interface Scenario {
  readonly seed: number;
  readonly config: ClusterConfig;
  readonly durationMs: number;
  /** When each host first starts. */
  readonly startMs: readonly number[];
  readonly faults: readonly FaultPlan[];
  /** Delay before a fenced or crashed host joins again, in units of T (drawn per event). */
  readonly rejoinMaxT: number;
}

export interface ScenarioShape {
  /** Virtual duration in units of T. */
  readonly durationT: number;
  readonly ioTimeoutMs: number;
  readonly hostCountMin: number;
  readonly hostCountMax: number;
  /** Faults per run: 0..this. */
  readonly faultCountMax: number;
}

export const defaultShape: ScenarioShape = {
  durationT: 40,
  ioTimeoutMs: 100,
  hostCountMin: 3,
  hostCountMax: 5,
  faultCountMax: 4,
};

/** The shapes the CI test runs (replay and soak take one by name: --shape short|long). */
export const shapes = {
  /** Many quick runs: joins, contention, short faults. */
  short: { ...defaultShape, durationT: 10, hostCountMax: 4, faultCountMax: 2 },
  /** Fewer runs long enough for takeovers after crashes and fences. */
  long: defaultShape,
} as const satisfies Record<string, ScenarioShape>;

export type ShapeName = keyof typeof shapes;

export function parseShapeName(text: string): ShapeName {
  if (text === 'short' || text === 'long') return text;
  throw new Error(`--shape must be 'short' or 'long', not '${text}'`);
}

const faultKinds: readonly FaultKind[] = [
  'stall-short',
  'stall-long',
  'fail',
  'lost-writes',
  'torn-writes',
  'slow',
  'crash',
  'wall-jump',
  'partition',
];

export function generateScenario(seed: number, shape: ScenarioShape = defaultShape): Scenario {
  const nextSeed = seedStream(seed ^ 0x0c0ffee);
  const random = randomFrom(nextSeed());
  const uniform = (low: number, high: number): number => low + random.next() * (high - low);
  const integer = (low: number, high: number): number => Math.floor(uniform(low, high + 1));
  const t = shape.ioTimeoutMs;
  const hostCount = integer(shape.hostCountMin, shape.hostCountMax);
  const resourceCount = integer(1, 3);
  const sectorBytes = random.next() < 0.8 ? 512 : 4096;
  let config: ClusterConfig = {
    seed,
    hostCount,
    ioTimeoutMs: t,
    maxHosts: hostCount + 1,
    resourceNames: Array.from({ length: resourceCount }, (_, index) => `res-${index}`),
    sectorBytes,
    diskLatency: { minMs: 0.2, maxMs: t / 20, slowChance: 0.02, slowMaxMs: t / 2 },
    networkLatencyMs: { minMs: 0.1, maxMs: 2 },
    driftMax: 1e-4,
    fixedHostIds: random.next() < 0.5,
    dataRegionBytes: 4 * sectorBytes,
    // Probes cost a timer per peer every T/2: only some runs model the network.
    probing: random.next() < 0.3,
  };
  const durationMs = shape.durationT * t;
  const startMs = Array.from({ length: hostCount }, () => uniform(0, 2 * t));
  const faults: FaultPlan[] = [];
  const faultCount = integer(0, shape.faultCountMax);
  // Faults start once hosts have joined and leave time at the end to see their aftermath.
  const faultFromMs = 3 * t;
  const faultToMs = Math.max(faultFromMs, durationMs - Math.min(8 * t, durationMs / 3));
  for (let index = 0; index < faultCount; index++) {
    const kind = faultKinds[Math.floor(random.next() * faultKinds.length)] ?? 'crash';
    faults.push(
      planFault(kind, integer(0, hostCount - 1), uniform(faultFromMs, faultToMs), t, uniform),
    );
  }
  faults.sort((left, right) => left.atMs - right.atMs);
  if (faults.some((fault) => fault.kind === 'partition')) config = { ...config, probing: true };
  return { seed, config, durationMs, startMs, faults, rejoinMaxT: 6 };
}

function planFault(
  kind: FaultKind,
  host: number,
  atMs: number,
  t: number,
  uniform: (low: number, high: number) => number,
): FaultPlan {
  const dataToo = uniform(0, 1) < 0.5;
  switch (kind) {
    case 'stall-short':
      return { kind, host, atMs, durationMs: uniform(0.5 * t, 3 * t), dataToo, amount: 0 };
    case 'stall-long':
      return { kind, host, atMs, durationMs: uniform(5 * t, 10 * t), dataToo, amount: 0 };
    case 'fail':
      return { kind, host, atMs, durationMs: uniform(t, 6 * t), dataToo, amount: uniform(0.3, 1) };
    case 'lost-writes':
      return {
        kind,
        host,
        atMs,
        durationMs: uniform(t, 5 * t),
        dataToo,
        amount: uniform(0.1, 0.5),
      };
    case 'torn-writes':
      return {
        kind,
        host,
        atMs,
        durationMs: uniform(t, 4 * t),
        dataToo,
        amount: uniform(0.2, 0.6),
      };
    case 'slow':
      return {
        kind,
        host,
        atMs,
        durationMs: uniform(2 * t, 6 * t),
        dataToo,
        amount: uniform(0.3, 1.5) * t,
      };
    case 'crash':
      return { kind, host, atMs, durationMs: uniform(t, 10 * t), dataToo, amount: 0 };
    case 'wall-jump':
      return { kind, host, atMs, durationMs: 0, dataToo, amount: uniform(-3_600_000, 3_600_000) };
    case 'partition':
      return { kind, host, atMs, durationMs: uniform(2 * t, 8 * t), dataToo, amount: 0 };
  }
}

export function describeScenario(scenario: Scenario): string {
  const config = scenario.config;
  const lines = [
    `seed ${scenario.seed}: ${config.hostCount} hosts, resources ${config.resourceNames.join(',')}, ` +
      `T ${config.ioTimeoutMs} ms, sector ${config.sectorBytes}, ` +
      `${config.fixedHostIds ? 'fixed' : 'auto'} host ids, ${scenario.durationMs} ms`,
  ];
  for (const fault of scenario.faults) {
    lines.push(
      `  at ${fault.atMs.toFixed(1)} ${fault.kind} host-${fault.host} for ${fault.durationMs.toFixed(1)} ms` +
        `${fault.dataToo ? ' (+data)' : ''}${fault.amount !== 0 ? ` amount ${fault.amount.toFixed(2)}` : ''}`,
    );
  }
  return lines.join('\n');
}
