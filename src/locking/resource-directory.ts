/**
 * The resource directory: which lease area holds which resource name (layout.ts: entry i names
 * area i + 1). Names are added, never removed, under the directory's own lease (area 0), taken
 * exclusive with the same Disk Paxos ballot as any resource; the whole directory is read in one
 * I/O. Lookups are cached; the cache is checked on use against the name in the leader block
 * (see PaxosLease.acquireLeader), and a mismatch drops the cache entry so the next use re-reads.
 */
import { TandemError, isTandemError } from '../errors.js';
import { directoryEntryBytes, decodeDirectoryEntry, encodeDirectoryEntry } from './lease-format.js';
import {
  type LeaseContext,
  PaxosLease,
  boundedIo,
  isNameMismatch,
  requireRecord,
} from './paxos-lease.js';
import { resourceNameBytesMax, resourceNamePattern } from './types.js';

/** The leader name of the directory lease (area 0); not a resource name anyone can use. */
export const directoryLeaseName = '@directory';
/** How often a host that wants the directory lease looks again while another host holds it. */
export const directoryPollMs = 10;
/** The directory lease is held only while one entry is written: a few I/Os, bounded by this. */
export const directoryLeaseWaitIoTimeouts = 8;

export interface DirectoryEntry {
  readonly name: string;
  /** The lease area of the resource (1..maxResources). */
  readonly areaIndex: number;
}

export function checkResourceName(name: string): void {
  if (
    typeof name !== 'string' ||
    !resourceNamePattern.test(name) ||
    Buffer.byteLength(name, 'utf8') > resourceNameBytesMax
  ) {
    throw new TandemError(
      'INVALID_ARGUMENT',
      `resource name must be 1..${resourceNameBytesMax} bytes of [A-Za-z0-9._:/@+-], not '${String(name)}'`,
    );
  }
}

export class ResourceDirectory {
  private readonly cache = new Map<string, number>();
  private readonly directoryLease: PaxosLease;

  constructor(private readonly context: LeaseContext) {
    this.directoryLease = new PaxosLease(context, 0);
  }

  /** The area of `name`, or undefined when the directory does not name it. */
  async lookup(name: string): Promise<number | undefined> {
    checkResourceName(name);
    const cached = this.cache.get(name);
    if (cached !== undefined) return cached;
    const entries = await this.readAll();
    return entries.find((entry) => entry.name === name)?.areaIndex;
  }

  /** The area of `name`, adding the name to the directory if it is new. */
  async ensure(name: string): Promise<number> {
    const found = await this.lookup(name);
    if (found !== undefined) return found;
    return this.withDirectoryLease(async () => {
      // Re-read under the lease: another host may have added the name since our read.
      const entries = await this.readAll();
      const existing = entries.find((entry) => entry.name === name);
      if (existing !== undefined) return existing.areaIndex;
      const used = new Set(entries.map((entry) => entry.areaIndex));
      let free = 0;
      for (let areaIndex = 1; areaIndex <= this.context.layout.maxResources; areaIndex += 1) {
        if (!used.has(areaIndex)) {
          free = areaIndex;
          break;
        }
      }
      if (free === 0) {
        throw new TandemError(
          'LOCKSPACE_NO_RESOURCES',
          `every one of the ${this.context.layout.maxResources} resource areas is in use; cannot add '${name}'`,
        );
      }
      await this.writeEntry(free - 1, name);
      this.cache.set(name, free);
      this.context.logger.info('resource added to the directory', { name, areaIndex: free });
      return free;
    });
  }

  /** Every named resource, read from disk now. */
  async entries(): Promise<DirectoryEntry[]> {
    return this.readAll();
  }

  /**
   * Runs `work` on the area of `name` (added first when `create`; NOT_FOUND otherwise). When the
   * leader of that area names another resource, our cache was stale: re-read once and retry.
   */
  async withArea<T>(
    name: string,
    create: boolean,
    work: (areaIndex: number) => Promise<T>,
  ): Promise<T> {
    const first = await this.resolve(name, create);
    try {
      return await work(first);
    } catch (error) {
      if (!isNameMismatch(error)) throw error;
      this.invalidate(name);
      const second = await this.resolve(name, create);
      if (second === first) throw error;
      return work(second);
    }
  }

  private async resolve(name: string, create: boolean): Promise<number> {
    const found = create ? await this.ensure(name) : await this.lookup(name);
    if (found === undefined) throw new TandemError('NOT_FOUND', `no resource named '${name}'`);
    return found;
  }

  /** The cached name of a lease area, if any. */
  nameOf(areaIndex: number): string | undefined {
    for (const [name, index] of this.cache) if (index === areaIndex) return name;
    return undefined;
  }

  /** Forgets a cached mapping (the leader named another resource). */
  invalidate(name: string): void {
    this.cache.delete(name);
  }

  private directoryBytes(): number {
    const { maxResources, blockSize } = this.context.layout;
    return Math.ceil((maxResources * directoryEntryBytes) / blockSize) * blockSize;
  }

  private async readAll(): Promise<DirectoryEntry[]> {
    const buffer = Buffer.alloc(this.directoryBytes());
    await boundedIo(this.context, 'read resource directory', () =>
      this.context.device.read(buffer, this.context.layout.directoryOffset),
    );
    const entries: DirectoryEntry[] = [];
    this.cache.clear();
    for (let index = 0; index < this.context.layout.maxResources; index += 1) {
      const bytes = buffer.subarray(index * directoryEntryBytes, (index + 1) * directoryEntryBytes);
      const name = requireRecord(decodeDirectoryEntry(bytes), `directory entry ${index}`);
      if (name === '') continue;
      entries.push({ name, areaIndex: index + 1 });
      this.cache.set(name, index + 1);
    }
    return entries;
  }

  /** Rewrites the block holding entry `index` (we hold the directory lease). */
  private async writeEntry(index: number, name: string): Promise<void> {
    const { blockSize, directoryOffset } = this.context.layout;
    const entryOffset = directoryOffset + index * directoryEntryBytes;
    const blockOffset = entryOffset - ((entryOffset - directoryOffset) % blockSize);
    const block = Buffer.alloc(blockSize);
    await boundedIo(this.context, 'read directory block', () =>
      this.context.device.read(block, blockOffset),
    );
    encodeDirectoryEntry(name).copy(block, entryOffset - blockOffset);
    this.context.checkWritable();
    await boundedIo(this.context, 'write directory entry', () =>
      this.context.device.write(block, blockOffset),
    );
  }

  private async withDirectoryLease<T>(work: () => Promise<T>): Promise<T> {
    const deadlineMs =
      this.context.clock.nowMs() + directoryLeaseWaitIoTimeouts * this.context.timings.ioTimeoutMs;
    for (;;) {
      const attempt = await this.directoryLease.acquireLeader(directoryLeaseName, () => undefined);
      if (attempt.kind === 'won') {
        const version = attempt.leader.leaseVersion;
        try {
          return await work();
        } finally {
          await this.releaseDirectoryLease(version);
        }
      }
      if (this.context.clock.nowMs() >= deadlineMs) {
        throw new TandemError(
          'LOCK_TIMEOUT',
          `the resource directory lease stayed busy (${attempt.reason})`,
        );
      }
      await this.context.clock.sleep(directoryPollMs);
    }
  }

  private async releaseDirectoryLease(version: number): Promise<void> {
    try {
      const result = await this.directoryLease.releaseLeader(version);
      if (result !== 'released') {
        this.context.logger.warn('the directory lease was taken from us while we held it');
      }
    } catch (error) {
      // The entry is written or not; a lease we failed to free is taken over once we are dead.
      if (!isTandemError(error)) throw error;
      this.context.logger.warn('could not release the directory lease', { error });
    }
  }
}
