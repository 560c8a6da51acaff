/**
 * The contract of the heartbeat store, as the layers above (src/locking, src/server) use it.
 * heartbeat-store.ts implements it; docs/leases.md describes the protocol behind it.
 */
import type { LockspaceLayout } from './layout.js';
import type { LeaseTimings } from './timings.js';

/**
 * A host as one observer sees it:
 * - `live`: its slot changed within the dead time (or we have not watched it that long yet);
 * - `failed`: its slot stood still for the dead time on the observer's own clock;
 * - `isolated`: its slot renews, but it answered no network probe for the isolation time;
 * - `left`: it left cleanly (released everything first).
 */
export type HostState = 'live' | 'failed' | 'isolated' | 'left';

/** One instance of a host in the lockspace: host id plus the generation of that join. */
export interface HostInstance {
  readonly hostId: number;
  readonly generation: number;
}

export interface HostView extends HostInstance {
  readonly hostName: string;
  readonly state: HostState;
  /** This host's own slot. */
  readonly self: boolean;
  /** Milliseconds since this observer last saw the slot change (its own monotonic clock). */
  readonly heartbeatAgeMs: number;
  /** The gRPC address the host publishes for its peers ('' when none). */
  readonly address: string;
  /** The published payload; undefined while it cannot be read (e.g. torn by a crash). */
  readonly payload: Buffer | undefined;
  readonly payloadSizeBytes: number;
  /** The host's wall clock at its last renewal, for humans only. */
  readonly renewedWallMs: number;
}

/** What `watch` emits: a host appeared, changed state or name or payload, or its slot was freed. */
export interface HostEvent {
  readonly kind: 'joined' | 'state' | 'payload' | 'removed';
  readonly host: HostView;
}

/** The local host's lease lifecycle. */
export type LocalState = 'idle' | 'joining' | 'joined' | 'renewal-failing' | 'fenced' | 'left';

export interface LocalEvent {
  readonly state: LocalState;
  readonly reason?: string;
}

/**
 * How a host checks that a peer is reachable over the network (the server layer implements it
 * with a gRPC call; the simulation with its network model). Resolves true if the peer answered.
 */
export interface PeerProber {
  probe(address: string, signal: AbortSignal): Promise<boolean>;
}

/** What the resource-lease layer needs from the heartbeat store. */
export interface LivenessSource {
  readonly layout: LockspaceLayout;
  readonly timings: LeaseTimings;
  /** This host's instance; throws LOCKSPACE_NOT_JOINED (or FENCED) unless joined and renewing. */
  localInstance(): HostInstance;
  /**
   * Whether a lease owned by `owner` may still be in use: 'alive' unless this host knows that
   * instance is gone (its slot stood still for the dead time as watched by this host, or shows a
   * clean leave, or a newer generation, or is free). A host it has not watched for the dead time
   * yet is 'alive'. Never 'dead' early: this answer lets others take the owner's leases.
   */
  ownerLiveness(owner: HostInstance): 'alive' | 'dead';
  /** Called when this host's state changes; returns an unsubscribe function. */
  onLocalState(listener: (event: LocalEvent) => void): () => void;
  /**
   * Synchronous, on this host's monotonic clock: joined, renewing, and a renewal that started
   * less than the renewal fail time ago succeeded. False fences at once if the deadline passed.
   * The write gate asks it before every protected write.
   */
  writesAllowed?(): boolean;
}
