/**
 * A deliberately broken lease stack: it grants every acquire at once, in memory, without any
 * disk I/O, so two hosts can both "hold" one resource exclusive. The simulation must catch it;
 * leases-sim.test.ts uses it to prove the checkers can fail.
 */
import { TandemError } from '../../src/errors.js';
import type { LockInfo, LockMode, LockService } from '../../src/locking/types.js';
import type { HostRuntime, RuntimeContext } from './host-runtime.js';

function info(name: string, mode: LockMode | undefined, version: number): LockInfo {
  return {
    name,
    mode: mode ?? 'free',
    owner: undefined,
    sharedOwners: [],
    version,
    value: Buffer.alloc(0),
    sinceWallMs: 0,
    heldHere: mode,
  };
}

/** Shared by every host, so that versions rise and only the double grant is wrong. */
let grantCount = 0;

class GrantEverything implements LockService {
  private readonly heldModes = new Map<string, LockMode>();
  private version = 0;

  async acquire(name: string, options: { mode: LockMode }): Promise<LockInfo> {
    grantCount += 1;
    this.version = grantCount;
    this.heldModes.set(name, options.mode);
    return info(name, options.mode, this.version);
  }

  async release(name: string): Promise<void> {
    if (!this.heldModes.delete(name)) throw new TandemError('LOCK_NOT_HELD', `${name} not held`);
  }

  async convert(name: string, mode: LockMode): Promise<LockInfo> {
    this.heldModes.set(name, mode);
    return info(name, mode, this.version);
  }

  async setValue(name: string): Promise<LockInfo> {
    return info(name, this.heldModes.get(name), this.version);
  }

  async inspect(name: string): Promise<LockInfo> {
    return info(name, this.heldModes.get(name), this.version);
  }

  async list(): Promise<LockInfo[]> {
    return this.held();
  }

  held(): LockInfo[] {
    return [...this.heldModes].map(([name, mode]) => info(name, mode, this.version));
  }

  watch(): () => void {
    return () => undefined;
  }
}

export async function startBrokenRuntime(context: RuntimeContext): Promise<HostRuntime> {
  const locks = new GrantEverything();
  return {
    instance: { hostId: context.hostIndex + 1, generation: 1 },
    locks,
    gatedDataDevice: context.dataDevice,
    localState: () => 'joined',
    hosts: () => [],
    gateOpen: () => true,
    onFenced: () => undefined,
    stop: async () => undefined,
    leave: async () => undefined,
  };
}
