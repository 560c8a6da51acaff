/**
 * One run of the lease simulation: a SimCluster, the checkers, the workload and the fault
 * schedule, stepped on virtual time with every invariant checked after every step. A run stops at
 * its first violation and returns it with the tail of the event trace.
 */
import type { Random } from '../../src/clock.js';
import { HostChecker } from './host-checks.js';
import type { RuntimeFactory } from './host-runtime.js';
import { SafetyChecker, type Violation, ViolationLog } from './invariants.js';
import { LeaseAudit } from './lease-audit.js';
import { traceLockspaceWrites } from './write-trace.js';
import { startRealRuntime } from './real-runtime.js';
import type { FaultPlan, Scenario } from './scenario.js';
import { describeScenario } from './scenario.js';
import {
  type ClusterConfig,
  SimCluster,
  type SimHost,
  randomFrom,
  seedStream,
} from './sim-cluster.js';
import type { SimDiskView } from './sim-disk.js';
import {
  Workload,
  type WorkloadOptions,
  type WorkloadStats,
  defaultWorkloadOptions,
} from './workload.js';

export interface SimulationOptions {
  readonly factory?: RuntimeFactory;
  /** Print every trace event as it happens. */
  readonly live?: (line: string) => void;
  readonly debug?: boolean;
  /** The workload, or false for a test that drives the hosts itself. */
  readonly workload?: WorkloadOptions | false;
  /** Fenced hosts join again and crashed hosts restart after a random delay (default true). */
  readonly autoRejoin?: boolean;
  readonly rejoinMaxT?: number;
  /** Allowed time after the dead time for a waiter to get a crashed holder's lease. */
  readonly livenessSlackMs?: number;
  readonly traceCapacity?: number;
  /** How long a lease may name a running owner that does not hold it (default 4T). */
  readonly orphanLimitMs?: number;
  /** Trace every write that lands on the lockspace, decoded (replay --writes). */
  readonly traceWrites?: boolean;
}

export interface RunStats extends WorkloadStats {
  /** Crashed holders whose resource reached a waiter in time (liveness judged). */
  livenessJudged: number;
  /** Observer verdicts on a crashed host's state at its deadline. */
  failedStateJudged: number;
  /** 'failed' verdicts checked against the dead time. */
  failedEarlyJudged: number;
  steps: number;
  joins: number;
  crashes: number;
  fences: number;
}

export interface RunResult {
  readonly seed: number;
  readonly ok: boolean;
  readonly violations: readonly Violation[];
  readonly virtualMs: number;
  readonly stats: RunStats;
  readonly description: string;
  readonly traceTail: readonly string[];
}

/** Timers fired at one virtual instant beyond which the run is a livelock. */
const sameInstantStepsMax = 50_000;

export class Simulation {
  readonly cluster: SimCluster;
  readonly log: ViolationLog;
  readonly safety: SafetyChecker;
  readonly hostChecks: HostChecker;
  readonly audit: LeaseAudit;
  readonly workload: Workload | undefined;
  readonly counters = { steps: 0, joins: 0, crashes: 0, fences: 0 };
  private readonly policyRandom: Random;
  private readonly workloadSeeds: () => number;
  private readonly autoRejoin: boolean;
  private readonly rejoinMaxT: number;
  private sameInstantSteps = 0;
  private lastStepMs = -1;

  constructor(
    readonly config: ClusterConfig,
    options: SimulationOptions = {},
  ) {
    this.cluster = new SimCluster(config, options.factory ?? startRealRuntime, {
      capacity: options.traceCapacity,
      live: options.live,
      debug: options.debug,
    });
    const nextSeed = seedStream(config.seed ^ 0x51a7);
    this.policyRandom = randomFrom(nextSeed());
    this.workloadSeeds = seedStream(nextSeed());
    this.autoRejoin = options.autoRejoin ?? true;
    this.rejoinMaxT = options.rejoinMaxT ?? 6;
    this.log = new ViolationLog(this.cluster);
    this.safety = new SafetyChecker(this.cluster, this.log);
    this.hostChecks = new HostChecker(this.cluster, this.log, {
      livenessSlackMs: options.livenessSlackMs ?? 4 * config.ioTimeoutMs,
      rateAllowance: 2 * config.driftMax,
    });
    this.audit = new LeaseAudit(
      this.cluster,
      this.log,
      options.orphanLimitMs ?? 4 * config.ioTimeoutMs,
    );
    this.workload =
      options.workload === false
        ? undefined
        : new Workload(
            this.cluster,
            this.safety,
            this.hostChecks,
            options.workload ?? defaultWorkloadOptions,
          );
    this.safety.attach();
    this.hostChecks.attach();
    if (options.traceWrites === true) traceLockspaceWrites(this.cluster);
    this.attachHooks();
  }

  private attachHooks(): void {
    const hooks = this.cluster.hooks;
    hooks.afterStart.push((host) => {
      this.counters.joins += 1;
      this.safety.onJoined(host);
      this.workload?.startFor(host, randomFrom(this.workloadSeeds()));
    });
    hooks.beforeCrash.push((host) => this.hostChecks.beforeCrash(host));
    hooks.afterCrash.push((host) => {
      this.counters.crashes += 1;
      // Half the crashed hosts stay down past the dead time, so that the others' verdicts on
      // them (failed in time) and takeovers of their leases get judged.
      const extraT = this.policyRandom.next() < 0.5 ? 0 : 8;
      if (this.autoRejoin) {
        this.later(host, () => void this.cluster.startHost(host.index), extraT);
      }
    });
    hooks.onFenced.push((host, _reason, drained) => {
      this.counters.fences += 1;
      if (!this.autoRejoin || !drained) return;
      const incarnation = host.incarnation;
      this.later(host, async () => {
        if (host.incarnation !== incarnation || host.status !== 'fenced') return;
        await this.cluster.retireHost(host.index, 'fenced: joining again');
        await this.cluster.startHost(host.index);
      });
    });
  }

  /** Runs `action` after a random delay of 1..rejoinMaxT × T, plus `extraT` × T (true time). */
  private later(host: SimHost, action: () => void | Promise<void>, extraT = 0): void {
    const t = this.config.ioTimeoutMs;
    const delayMs = t * (extraT + 1 + this.policyRandom.next() * (this.rejoinMaxT - 1));
    this.cluster.scheduler.after(delayMs, () => {
      void Promise.resolve(action()).catch((error: unknown) => {
        this.cluster.trace.add(host.index, 'rejoin failed', { error });
      });
    });
  }

  async setup(): Promise<void> {
    await this.cluster.format();
  }

  startHostAt(index: number, atMs: number): void {
    this.cluster.scheduler.at(atMs, () => void this.cluster.startHost(index));
  }

  injectFault(plan: FaultPlan): void {
    this.cluster.scheduler.at(plan.atMs, () => applyFault(this.cluster, plan));
  }

  private afterStep(): void {
    this.counters.steps += 1;
    const now = this.cluster.nowMs;
    if (now === this.lastStepMs) {
      this.sameInstantSteps += 1;
      if (this.sameInstantSteps === sameInstantStepsMax) {
        this.log.report('harness', `livelock: ${sameInstantStepsMax} timers at one instant`);
      }
    } else {
      this.lastStepMs = now;
      this.sameInstantSteps = 0;
    }
    this.checkNow();
  }

  /** Every invariant, now (after each step, and before a run starts stepping). */
  checkNow(): void {
    this.safety.afterStep();
    this.hostChecks.afterStep();
    this.audit.afterStep();
  }

  /** Steps until true time `untilMs` or the first violation. */
  async runUntil(untilMs: number): Promise<void> {
    await this.cluster.scheduler.settle();
    this.checkNow();
    await this.cluster.scheduler.runSteps({
      untilMs,
      afterStep: () => this.afterStep(),
      stop: () => this.log.failed,
    });
  }

  /** Steps until `promise` settles (or `limitMs` passes, or a violation); returns its outcome. */
  async runUntilSettled<T>(promise: Promise<T>, limitMs: number): Promise<T> {
    let settled = false;
    const observed = promise.finally(() => {
      settled = true;
    });
    observed.catch(() => undefined);
    await this.cluster.scheduler.runSteps({
      untilMs: this.cluster.nowMs + limitMs,
      afterStep: () => this.afterStep(),
      stop: () => settled || this.log.failed,
    });
    if (!settled) {
      const violation = this.log.violations[0];
      throw new Error(
        violation === undefined
          ? `still pending after ${limitMs} ms of virtual time`
          : `stopped at a violation: ${violation.invariant}: ${violation.message}`,
      );
    }
    return observed;
  }

  result(seed: number, description: string): RunResult {
    const stats: RunStats = {
      ...(this.workload?.stats ?? emptyWorkloadStats()),
      livenessJudged: this.hostChecks.judgedCounts.liveness,
      failedStateJudged: this.hostChecks.judgedCounts.failedState,
      failedEarlyJudged: this.hostChecks.judgedCounts.failedEarly,
      ...this.counters,
    };
    return {
      seed,
      ok: !this.log.failed,
      violations: this.log.violations,
      virtualMs: this.cluster.nowMs,
      stats,
      description,
      traceTail: this.log.failed ? this.cluster.trace.tail(80) : [],
    };
  }
}

function emptyWorkloadStats(): WorkloadStats {
  return {
    acquires: 0,
    grants: 0,
    refusals: 0,
    errors: 0,
    dataWrites: 0,
    dataWriteErrors: 0,
    releases: 0,
    converts: 0,
  };
}

function viewsFor(host: SimHost, dataToo: boolean): SimDiskView[] {
  const views: SimDiskView[] = [];
  if (host.lockView !== undefined) views.push(host.lockView);
  if (dataToo && host.dataView !== undefined) views.push(host.dataView);
  return views;
}

/** Applies one planned fault now and schedules its end. */
export function applyFault(cluster: SimCluster, plan: FaultPlan): void {
  const host = cluster.host(plan.host);
  if (plan.kind === 'wall-jump') {
    host.clock.jumpWall(plan.amount);
    cluster.trace.add(plan.host, `wall clock jumps ${Math.round(plan.amount)} ms`);
    return;
  }
  if (plan.kind === 'crash') {
    cluster.crashHost(plan.host, 'scenario');
    return;
  }
  if (plan.kind !== 'partition' && !host.running) {
    cluster.trace.add(plan.host, `fault ${plan.kind} skipped: host ${host.status}`);
    return;
  }
  const views = viewsFor(host, plan.dataToo);
  const endFault = cluster.beginFault(plan.host, plan.kind);
  const set = (apply: (view: SimDiskView) => void): void => views.forEach(apply);
  let undo: () => void;
  switch (plan.kind) {
    case 'stall-short':
    case 'stall-long':
      set((view) => view.stall());
      undo = () => set((view) => view.unstall());
      break;
    case 'fail':
      set((view) => (view.faults.failChance = plan.amount));
      undo = () => set((view) => (view.faults.failChance = 0));
      break;
    case 'lost-writes':
      set((view) => (view.faults.lostWriteChance = plan.amount));
      undo = () => set((view) => (view.faults.lostWriteChance = 0));
      break;
    case 'torn-writes':
      set((view) => (view.faults.tornWriteChance = plan.amount));
      undo = () => set((view) => (view.faults.tornWriteChance = 0));
      break;
    case 'slow':
      set((view) => (view.faults.extraLatencyMs = plan.amount));
      undo = () => set((view) => (view.faults.extraLatencyMs = 0));
      break;
    case 'partition':
      host.partitioned = true;
      undo = () => (host.partitioned = false);
      break;
  }
  cluster.scheduler.after(plan.durationMs, () => {
    undo();
    endFault();
  });
}

/** Runs one generated scenario to its end (or its first violation). */
export async function runScenario(
  scenario: Scenario,
  options: SimulationOptions = {},
): Promise<RunResult> {
  const simulation = new Simulation(scenario.config, {
    rejoinMaxT: scenario.rejoinMaxT,
    ...options,
  });
  const onRejection = (reason: unknown): void => {
    const text = reason instanceof Error ? (reason.stack ?? reason.message) : String(reason);
    simulation.log.report('harness', `unhandled rejection: ${text}`);
  };
  process.on('unhandledRejection', onRejection);
  try {
    await simulation.setup();
    scenario.startMs.forEach((atMs, index) => simulation.startHostAt(index, atMs));
    for (const fault of scenario.faults) simulation.injectFault(fault);
    await simulation.runUntil(scenario.durationMs);
  } finally {
    simulation.cluster.stopAll();
    // A rejection raised while stopping still belongs to this run.
    await simulation.cluster.scheduler.settle();
    process.off('unhandledRejection', onRejection);
  }
  return simulation.result(scenario.seed, describeScenario(scenario));
}
