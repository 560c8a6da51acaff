/**
 * What the simulated hosts do with their leases: each running incarnation loops, taking a random
 * resource exclusive or shared (try-acquire, short or long waits), holding it for a random time,
 * writing tagged data to the resource's region while it holds it exclusive, sometimes setting the
 * value block or converting, then releasing. Every step draws from the host's seeded Random and
 * sleeps on the host's clock, so the workload replays with the seed.
 */
import type { Random } from '../../src/clock.js';
import { isTandemError } from '../../src/errors.js';
import type { LockInfo, LockMode } from '../../src/locking/types.js';
import { encodeDataTag } from './data-tag.js';
import type { HostChecker } from './host-checks.js';
import type { SafetyChecker } from './invariants.js';
import type { HostRuntime } from './host-runtime.js';
import type { SimCluster, SimHost } from './sim-cluster.js';

export interface WorkloadStats {
  acquires: number;
  grants: number;
  refusals: number;
  errors: number;
  dataWrites: number;
  dataWriteErrors: number;
  releases: number;
  converts: number;
}

export interface WorkloadOptions {
  /** Chance that an acquire asks for exclusive mode. */
  readonly exclusiveChance: number;
  /** Longest think time between two leases, in units of T. */
  readonly thinkMaxT: number;
  /** Longest hold, in units of T. */
  readonly holdMaxT: number;
}

export const defaultWorkloadOptions: WorkloadOptions = {
  exclusiveChance: 0.7,
  thinkMaxT: 2,
  holdMaxT: 3,
};

interface Session {
  readonly host: SimHost;
  readonly incarnation: number;
  readonly runtime: HostRuntime;
  readonly random: Random;
  sequence: number;
}

export function errorCode(error: unknown): string {
  if (isTandemError(error)) return error.code;
  return error instanceof Error ? error.message : String(error);
}

export class Workload {
  readonly stats: WorkloadStats = {
    acquires: 0,
    grants: 0,
    refusals: 0,
    errors: 0,
    dataWrites: 0,
    dataWriteErrors: 0,
    releases: 0,
    converts: 0,
  };

  constructor(
    private readonly cluster: SimCluster,
    private readonly safety: SafetyChecker,
    private readonly hostChecks: HostChecker,
    private readonly options: WorkloadOptions = defaultWorkloadOptions,
  ) {}

  private get ioTimeoutMs(): number {
    return this.cluster.timings.ioTimeoutMs;
  }

  /** Starts the loop of the host's current incarnation (it ends with the incarnation). */
  startFor(host: SimHost, random: Random): void {
    const runtime = host.runtime;
    if (runtime === undefined) return;
    const session: Session = { host, incarnation: host.incarnation, runtime, random, sequence: 0 };
    void this.loop(session).catch((error: unknown) => {
      this.cluster.trace.add(host.index, 'workload loop failed', { error });
    });
  }

  /** Runs `call` with `name` marked busy on the host (the lease audit then looks away). */
  private async busy<T>(session: Session, name: string, call: () => Promise<T>): Promise<T> {
    session.host.busy.add(name);
    try {
      return await call();
    } finally {
      if (this.alive(session)) session.host.busy.delete(name);
    }
  }

  private alive(session: Session): boolean {
    return session.host.incarnation === session.incarnation && session.host.status === 'up';
  }

  private async loop(session: Session): Promise<void> {
    const { host, random } = session;
    while (this.alive(session)) {
      await host.clock.sleep(random.next() * this.options.thinkMaxT * this.ioTimeoutMs);
      if (!this.alive(session)) return;
      await this.oneLease(session);
    }
  }

  private pickWaitMs(random: Random): number {
    const draw = random.next();
    if (draw < 0.3) return 0;
    if (draw < 0.7) return Math.round((1 + random.next() * 3) * this.ioTimeoutMs);
    return 20 * this.ioTimeoutMs;
  }

  private async oneLease(session: Session): Promise<void> {
    const { host, runtime, random } = session;
    const names = this.cluster.config.resourceNames.filter((name) => !host.releasing.has(name));
    const name = names[Math.floor(random.next() * names.length)];
    if (name === undefined) return;
    if (runtime.locks.held().some((info) => info.name === name)) return;
    const mode: LockMode = random.next() < this.options.exclusiveChance ? 'ex' : 'sh';
    const waitMs = this.pickWaitMs(random);
    this.stats.acquires += 1;
    const info = await this.waitFor(session, name, mode, waitMs, () =>
      this.busy(session, name, () => runtime.locks.acquire(name, { mode, waitMs })),
    );
    if (info === undefined) return;
    this.granted(session, name, mode, info);
    let version = info.version;
    let held: LockMode = mode;
    const holdUntilMs =
      this.cluster.nowMs + random.next() * this.options.holdMaxT * this.ioTimeoutMs;
    while (this.alive(session) && this.cluster.nowMs < holdUntilMs) {
      await host.clock.sleep(random.next() * this.ioTimeoutMs);
      if (!this.alive(session)) return;
      const draw = random.next();
      if (held === 'ex' && draw < 0.7) {
        if (!(await this.writeData(session, name, version))) break;
      } else if (held === 'ex' && draw < 0.8) {
        await this.busy(session, name, () =>
          runtime.locks.setValue(name, Buffer.from(`v${session.sequence}`)),
        ).catch(() => undefined);
      } else if (draw < 0.9) {
        const converted = await this.convert(session, name, held === 'ex' ? 'sh' : 'ex');
        if (converted === undefined) break;
        held = converted.heldHere ?? held;
        version = converted.version;
      }
    }
    await this.release(session, name);
  }

  /** Runs an acquire or convert, telling the liveness checker about the wait. */
  private async waitFor(
    session: Session,
    name: string,
    mode: LockMode,
    waitMs: number,
    call: () => Promise<LockInfo>,
  ): Promise<LockInfo | undefined> {
    const { host } = session;
    const ended =
      waitMs > 0 ? this.hostChecks.waitBegan(host, name, mode, waitMs) : () => undefined;
    try {
      return await call();
    } catch (error) {
      const code = errorCode(error);
      if (code === 'LOCK_HELD' || code === 'LOCK_TIMEOUT') this.stats.refusals += 1;
      else this.stats.errors += 1;
      if (this.alive(session))
        this.cluster.trace.add(host.index, `${mode} ${name} failed: ${code}`);
      return undefined;
    } finally {
      ended();
    }
  }

  private granted(session: Session, name: string, mode: LockMode, info: LockInfo): void {
    const { host } = session;
    this.stats.grants += 1;
    this.cluster.trace.add(host.index, `got ${name} ${mode}`, { version: info.version });
    if (!this.alive(session)) return;
    if (mode === 'ex') this.safety.onExclusiveGranted(host, name, info.version);
    this.hostChecks.granted(host, name);
  }

  private async convert(
    session: Session,
    name: string,
    mode: LockMode,
  ): Promise<LockInfo | undefined> {
    const { host, runtime, random } = session;
    this.stats.converts += 1;
    if (mode === 'sh') host.downgrading.add(name);
    const waitMs = mode === 'ex' ? Math.round(random.next() * 2 * this.ioTimeoutMs) : 0;
    try {
      const info = await this.waitFor(session, name, mode, waitMs, () =>
        this.busy(session, name, () => runtime.locks.convert(name, mode, { waitMs })),
      );
      if (info !== undefined) this.granted(session, name, mode, info);
      return info;
    } finally {
      host.downgrading.delete(name);
    }
  }

  /** Writes one tagged request into the resource's region; false when the write failed. */
  private async writeData(session: Session, name: string, version: number): Promise<boolean> {
    const { host, runtime, random } = session;
    const config = this.cluster.config;
    const regionIndex = config.resourceNames.indexOf(name);
    const sectorBytes = config.sectorBytes;
    const sectorCount = config.dataRegionBytes / sectorBytes;
    const first = Math.floor(random.next() * sectorCount);
    const count = 1 + Math.floor(random.next() * Math.min(4, sectorCount - first));
    session.sequence += 1;
    const data = encodeDataTag(
      {
        host: host.index,
        incarnation: session.incarnation,
        hostId: runtime.instance.hostId,
        generation: runtime.instance.generation,
        leaseVersion: version,
        sequence: session.sequence,
      },
      count * sectorBytes,
    );
    this.stats.dataWrites += 1;
    try {
      await runtime.gatedDataDevice.write(
        data,
        regionIndex * config.dataRegionBytes + first * sectorBytes,
      );
      return true;
    } catch (error) {
      this.stats.dataWriteErrors += 1;
      if (this.alive(session))
        this.cluster.trace.add(host.index, `data write ${name} failed: ${errorCode(error)}`);
      return false;
    }
  }

  /** Releases; the exclusive belief ends when the call is made. Retries a failed release. */
  private async release(session: Session, name: string): Promise<void> {
    const { host, runtime } = session;
    host.releasing.add(name);
    for (let attempt = 0; attempt < 3; attempt++) {
      if (!this.alive(session)) return;
      try {
        await this.busy(session, name, () => runtime.locks.release(name));
        this.stats.releases += 1;
        host.releasing.delete(name);
        return;
      } catch (error) {
        const code = errorCode(error);
        this.cluster.trace.add(host.index, `release ${name} failed: ${code}`);
        if (code === 'LOCK_NOT_HELD' || code === 'FENCED') {
          host.releasing.delete(name);
          return;
        }
        await host.clock.sleep(this.ioTimeoutMs);
      }
    }
  }
}
