/**
 * The contract of the resource-lease layer, as src/server (and later src/clvm) use it.
 * lock-manager.ts implements it; docs/leases.md describes the Disk Paxos protocol behind it.
 */
import type { HostInstance } from '../heartbeat-store/types.js';

export type LockMode = 'ex' | 'sh';

/** The bytes of a value block (written by an exclusive holder, read by everyone). */
export const valueBlockBytesMax = 64;
/** Resource names: 1..48 bytes of [A-Za-z0-9._:/@+-]. */
export const resourceNameBytesMax = 48;
export const resourceNamePattern = /^[A-Za-z0-9._:/@+-]{1,48}$/;

export interface LockOwner extends HostInstance {
  /** From the owner's host slot, '' if unknown. */
  readonly hostName: string;
}

/** A resource lease as read from the lockspace (and, for `heldHere`, as this host holds it). */
export interface LockInfo {
  readonly name: string;
  /** 'free' when nobody holds it. */
  readonly mode: LockMode | 'free';
  /** The exclusive owner, or undefined. */
  readonly owner: LockOwner | undefined;
  /** The shared holders (empty unless mode is 'sh'). */
  readonly sharedOwners: readonly LockOwner[];
  /** The lease version: increases with every new exclusive owner (a fencing token). */
  readonly version: number;
  /** The value block, exactly as last written (may be empty). */
  readonly value: Buffer;
  /** The holder's wall clock when it took the lease (0 when free): "since when", for humans. */
  readonly sinceWallMs: number;
  /** This host holds it, and in which mode. */
  readonly heldHere: LockMode | undefined;
}

export interface AcquireOptions {
  readonly mode: LockMode;
  /** 0 (the default) is try-acquire: fail at once with LOCK_HELD on conflict. */
  readonly waitMs?: number;
  /** Written into the value block with the lease (exclusive mode only). */
  readonly value?: Buffer;
  readonly signal?: AbortSignal;
}

export type LockEventKind = 'acquired' | 'released' | 'converted' | 'value' | 'lost';

/** What `watch` emits, for locks taken, changed or lost on this host. */
export interface LockEvent {
  readonly kind: LockEventKind;
  readonly name: string;
  readonly mode: LockMode | 'free';
  readonly version: number;
  /** For 'lost': why (fenced, asked to release, owner generation replaced). */
  readonly reason?: string;
}

export interface LockService {
  acquire(name: string, options: AcquireOptions): Promise<LockInfo>;
  /** Releases a lease held here; `value` (exclusive only) is written with the release. */
  release(name: string, options?: { value?: Buffer }): Promise<void>;
  convert(
    name: string,
    mode: LockMode,
    options?: { waitMs?: number; signal?: AbortSignal },
  ): Promise<LockInfo>;
  /** Writes the value block of a lease held exclusive here. */
  setValue(name: string, value: Buffer): Promise<LockInfo>;
  /** Reads the lease from the lockspace (NOT_FOUND for a name never used). */
  inspect(name: string): Promise<LockInfo>;
  /** Every named resource of the lockspace, read from disk. */
  list(): Promise<LockInfo[]>;
  /** Locks held by this host, from memory. */
  held(): LockInfo[];
  /** Subscribes to lock events on this host; returns an unsubscribe function. */
  watch(listener: (event: LockEvent) => void): () => void;
}
