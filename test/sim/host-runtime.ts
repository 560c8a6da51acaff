/**
 * What the simulation runs on each host: the lease stack of one incarnation of tandemd, seen
 * through a small interface so that a test can swap in a deliberately broken stack and prove the
 * checkers catch it (leases-sim.test.ts).
 */
import type { Clock, Random } from '../../src/clock.js';
import type { BlockDevice } from '../../src/disk/block-device.js';
import type {
  HostInstance,
  HostView,
  LocalState,
  PeerProber,
} from '../../src/heartbeat-store/types.js';
import type { LockService } from '../../src/locking/types.js';
import type { Logger } from '../../src/log.js';

export interface RuntimeContext {
  readonly hostIndex: number;
  readonly hostName: string;
  /** A fixed host id, or undefined to let the store pick a slot. */
  readonly hostId: number | undefined;
  readonly address: string;
  readonly lockDevice: BlockDevice;
  /** The shared data disk as this host sees it (ungated: the runtime puts its gate on it). */
  readonly dataDevice: BlockDevice;
  readonly clock: Clock;
  readonly random: Random;
  readonly logger: Logger;
  /** Undefined when the run does not model the network. */
  readonly prober: PeerProber | undefined;
  /** Aborted when the host crashes while starting. */
  readonly signal: AbortSignal;
  /** Called as soon as something exists that `stop` must close (before the join completes). */
  readonly onStoppable: (stop: () => Promise<void>) => void;
}

export interface FenceNotice {
  readonly reason: string;
  /** Every data write in flight completed within the drain time. */
  readonly drained: boolean;
}

export interface HostRuntime {
  readonly instance: HostInstance;
  readonly locks: LockService;
  /** The data disk behind this incarnation's write gate. */
  readonly gatedDataDevice: BlockDevice;
  localState(): LocalState;
  hosts(): HostView[];
  /** Whether writes pass the gate: a closed gate voids every lease belief of this host. */
  gateOpen(): boolean;
  /** Called once when the gate closed and its drain ended. */
  onFenced(listener: (notice: FenceNotice) => void): void;
  /** A crash: stop every loop at once, write nothing more. */
  stop(): Promise<void>;
  /** Leave cleanly (release everything, mark the slot). */
  leave(): Promise<void>;
}

export type RuntimeFactory = (context: RuntimeContext) => Promise<HostRuntime>;
