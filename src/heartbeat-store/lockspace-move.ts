/**
 * The mover's side of moving a lockspace to other extents (docs/adr/0002-moving-the-lockspace-lv.md;
 * the hosts' side is movable-device.ts), below the VG metadata that records the move:
 *
 *   moveToCommit:  `moving E` into the old copy's header; wait until every live host says
 *                  `ready` in its slot; copy; then, only while this host's own lease is certainly
 *                  held, `forwarded E` (the commit point: the new copy is the lockspace)
 *   writeEndMark:  `forwarded E` or `aborted E`, again after a failure; fence when it keeps failing
 *   waitForMoveAcks(phase 'done'): every live host left the move, so the copy it left is unused
 *
 * The copy runs while every live host is `ready`: no lease write but host slot writes happens,
 * and those go to the old copy first, then to the new one. So everything outside the host slots
 * is frozen and copied plainly; each slot is copied by reading the old copy, writing the new one
 * and reading the old copy again, and copied again while that re-read differs. A host's write
 * that lands in the new copy after ours has landed in the old copy before our re-read (it wrote
 * there first), so no slot ends older in the new copy than in the old one.
 */
import type { Clock } from '../clock.js';
import type { BlockDevice } from '../disk/block-device.js';
import { TandemError, assert } from '../errors.js';
import type { Logger } from '../log.js';
import type { HeartbeatStore } from './heartbeat-store.js';
import {
  type LockspaceLayout,
  type LockspaceMoveMark,
  encodeHeader,
  hostSlotBytes,
  noMoveMark,
  writeLockspaceMoveMark,
} from './layout.js';
import type { MovableLockspaceDevice } from './movable-device.js';
import type { MovePhase } from './slot-format.js';
import { SlotIo } from './slot-io.js';
import type { HostInstance } from './types.js';

/** The copy moves this much per request (less when the devices cap requests lower). */
export const moveCopyChunkBytes = 1024 * 1024;
/** A slot is copied again at most this often; a host renews every T/2, far slower than a copy. */
export const slotRecopiesMax = 16;
/** A mark that ends a move is tried this often before the mover fences itself instead. */
export const endMarkAttemptsMax = 3;

/** The mover: its heartbeat store and lockspace device, in the VG's lockspace. */
export interface MoverContext {
  readonly store: HeartbeatStore;
  readonly device: MovableLockspaceDevice;
  readonly clock: Clock;
  readonly logger: Logger;
}

export interface MoveProgress {
  readonly phase: 'waiting for hosts' | 'copying';
  readonly copiedBytes: number;
  readonly totalBytes: number;
}

/** A move that failed before its commit point; `markWritten`: hosts may have entered it. */
export class MoveNotCommitted extends Error {
  constructor(
    readonly markWritten: boolean,
    readonly reason: unknown,
  ) {
    super(`the lockspace move failed before its commit point: ${String(reason)}`, {
      cause: reason,
    });
  }
}

/**
 * Steps 2-5 of the move (top of this file). Throws MoveNotCommitted when it failed before the
 * commit point, which the caller then aborts; resolves once `forwarded E` is written.
 */
export async function moveToCommit(
  context: MoverContext,
  epoch: number,
  onProgress: (progress: MoveProgress) => void,
  signal: AbortSignal,
): Promise<void> {
  const { store, device, logger } = context;
  const self = store.localInstance();
  const layout = store.layout;
  const mark = (state: LockspaceMoveMark['state']): LockspaceMoveMark => ({
    state,
    epoch,
    moverHostId: self.hostId,
    moverGeneration: self.generation,
  });
  let markWritten = false;
  // The copy being left, where the commit point is written (the device may switch meanwhile).
  const old = device.current;
  try {
    checkOwnLease(store);
    markWritten = true;
    await device.writeMoveMark(mark('moving'));
    store.renewSoon();
    await waitForMoveAcks(device.current, layout, {
      ...ackWaitOptions(context, epoch, 'ready', signal),
      onPending: (pending) => {
        onProgress({ phase: 'waiting for hosts', copiedBytes: 0, totalBytes: layout.sizeBytes });
        if (pending.length > 0) logger.debug('lockspace move: hosts not ready yet', { pending });
      },
    });
    const copies = device.moving();
    if (copies?.epoch !== epoch || copies.old !== old) {
      throw new TandemError('LOCKSPACE_MOVING', 'this host left the lockspace move it runs');
    }
    logger.info('lockspace move: every live host is ready; copying', { epoch });
    const copied = await copyMovingLockspace(copies.old, copies.next, layout, (progress) =>
      onProgress({ phase: 'copying', ...progress }),
    );
    logger.info('lockspace move: copied', { epoch, slotRecopyCount: copied.slotRecopyCount });
    signal.throwIfAborted();
    checkOwnLease(store);
  } catch (error) {
    throw new MoveNotCommitted(markWritten, error);
  }
  // From the first try of this write on, no other mark may follow: it may have landed.
  await writeEndMark(context, old, mark('forwarded'));
}

/**
 * Writes a mark that ends a move into the header of `copy` (the old one), again after a failure
 * (the same mark twice is harmless). If it keeps failing, the hosts would stay in the move,
 * refusing lease writes, for as long as this host lives: it fences itself instead, and once it
 * is dead each host decides from whatever the header says then (movable-device.ts).
 */
export async function writeEndMark(
  context: MoverContext,
  copy: BlockDevice,
  mark: LockspaceMoveMark,
): Promise<void> {
  const { store } = context;
  for (let attempt = 1; ; attempt++) {
    try {
      await writeLockspaceMoveMark(copy, store.layout, mark);
      return;
    } catch (error) {
      if (attempt >= endMarkAttemptsMax) {
        context.logger.error(`cannot write the ${mark.state} mark of a lockspace move: fencing`, {
          epoch: mark.epoch,
          error,
        });
        store.fence(`the ${mark.state} mark of a lockspace move could not be written`);
        throw error;
      }
      await context.clock.sleep(store.timings.ioTimeoutMs);
    }
  }
}

/** How the mover waits for the hosts' answers: they come at their next renewal (T/2). */
export function ackWaitOptions(
  context: MoverContext,
  epoch: number,
  phase: Exclude<MovePhase, 'none'>,
  signal?: AbortSignal,
): AckWaitOptions {
  const { store } = context;
  const timings = store.timings;
  return {
    epoch,
    phase,
    liveness: (owner) => store.ownerLiveness(owner),
    clock: context.clock,
    // A host that died just before is judged dead within the dead time plus a monitor read.
    timeoutMs: timings.hostDeadMs + 4 * timings.ioTimeoutMs,
    signal,
  };
}

/** The mover writes a mark only while its own lease is certainly held. */
function checkOwnLease(store: HeartbeatStore): void {
  if (!store.writesAllowed()) {
    throw new TandemError('FENCED', 'this host is not renewing its lease in the lockspace');
  }
}

export interface CopyProgress {
  readonly copiedBytes: number;
  readonly totalBytes: number;
}

export interface CopyOutcome {
  /** Slots copied again because their host wrote them during the copy. */
  readonly slotRecopyCount: number;
}

/** Copies the lockspace of `layout` from `old` to `next`; flushes `next` at the end. */
export async function copyMovingLockspace(
  old: BlockDevice,
  next: BlockDevice,
  layout: LockspaceLayout,
  onProgress: (progress: CopyProgress) => void = () => undefined,
): Promise<CopyOutcome> {
  assert(next.sizeBytes >= layout.sizeBytes, 'the new copy holds the whole lockspace');
  const chunkBytes = Math.min(moveCopyChunkBytes, old.maximumIoBytes, next.maximumIoBytes);
  assert(chunkBytes % hostSlotBytes === 0, 'copy chunks hold whole slots');
  const totalBytes = layout.sizeBytes;
  let copiedBytes = 0;
  // The new copy's header carries no move mark: it is a plain lockspace from its first use.
  const header = Buffer.alloc(layout.hostSlotsOffset);
  encodeHeader(layout, noMoveMark).copy(header, 0);
  await next.write(header, 0);
  copiedBytes += header.length;
  let slotRecopyCount = 0;
  for (let offset = layout.hostSlotsOffset; offset < layout.directoryOffset; offset += chunkBytes) {
    const length = Math.min(chunkBytes, layout.directoryOffset - offset);
    slotRecopyCount += await copySlots(old, next, offset, length);
    copiedBytes += length;
    onProgress({ copiedBytes, totalBytes });
  }
  const buffer = Buffer.alloc(chunkBytes);
  for (let offset = layout.directoryOffset; offset < layout.sizeBytes; offset += chunkBytes) {
    const piece = buffer.subarray(0, Math.min(chunkBytes, layout.sizeBytes - offset));
    await old.read(piece, offset);
    await next.write(piece, offset);
    copiedBytes += piece.length;
    onProgress({ copiedBytes, totalBytes });
  }
  await next.flush();
  return { slotRecopyCount };
}

/** Copies the slots in [offset, offset + length) by the rule above; returns the recopies. */
async function copySlots(
  old: BlockDevice,
  next: BlockDevice,
  offset: number,
  length: number,
): Promise<number> {
  const first = Buffer.alloc(length);
  const again = Buffer.alloc(length);
  await old.read(first, offset);
  await next.write(first, offset);
  await old.read(again, offset);
  let recopies = 0;
  for (let at = 0; at < length; at += hostSlotBytes) {
    let copied = first.subarray(at, at + hostSlotBytes);
    let current = again.subarray(at, at + hostSlotBytes);
    for (let attempt = 1; !copied.equals(current); attempt++) {
      if (attempt > slotRecopiesMax) {
        throw new TandemError(
          'LOCKSPACE_MOVING',
          `the host slot at ${offset + at} changed during each of ${slotRecopiesMax} copies`,
        );
      }
      copied = Buffer.from(current);
      await next.write(copied, offset + at);
      current = Buffer.alloc(hostSlotBytes);
      await old.read(current, offset + at);
      recopies++;
    }
  }
  return recopies;
}

export interface AckWaitOptions {
  readonly epoch: number;
  /** `ready` before the copy; `done` before the copy that was left is given away. */
  readonly phase: Exclude<MovePhase, 'none'>;
  /** The waiting host's judgement of a host instance (the heartbeat store's). */
  readonly liveness: (owner: HostInstance) => 'alive' | 'dead';
  readonly clock: Clock;
  /** How long to wait at most. */
  readonly timeoutMs: number;
  readonly signal?: AbortSignal;
  /** Called after each read with the hosts still awaited (for progress). */
  readonly onPending?: (pending: readonly PendingHost[]) => void;
}

export interface PendingHost {
  readonly hostId: number;
  readonly hostName: string;
  readonly why: string;
}

/**
 * Reads every slot of the lockspace on `device` every T/4 until each held slot that is not
 * left says `phase` for `epoch`, or its host is dead; throws FAILED_PRECONDITION naming the
 * hosts that did not answer within the timeout.
 */
export async function waitForMoveAcks(
  device: BlockDevice,
  layout: LockspaceLayout,
  options: AckWaitOptions,
): Promise<void> {
  const io = new SlotIo(device, layout, options.clock);
  const startedMs = options.clock.nowMs();
  for (;;) {
    const pending = await pendingHosts(io, layout, options);
    options.onPending?.(pending);
    if (pending.length === 0) return;
    if (options.clock.nowMs() - startedMs >= options.timeoutMs) {
      const names = pending.map((host) => `${host.hostName} (host id ${host.hostId}: ${host.why})`);
      // A host that cannot reach the new place's PVs, or runs a tandem without lockspace moves,
      // never says ready; one whose I/O stalls says nothing until it is dead.
      const hint =
        options.phase === 'ready'
          ? ' (a host that cannot reach the PVs of the new place, or runs an older tandem, never says ready: see its log)'
          : '';
      throw new TandemError(
        'FAILED_PRECONDITION',
        `the lockspace move waited ${options.timeoutMs} ms for hosts to be ${options.phase}: ${names.join(', ')}${hint}`,
      );
    }
    await options.clock.sleep(layout.ioTimeoutMs / 4, options.signal);
  }
}

async function pendingHosts(
  io: SlotIo,
  layout: LockspaceLayout,
  options: AckWaitOptions,
): Promise<PendingHost[]> {
  const read = await io.readRange(1, layout.maxHosts);
  const failure = read.failures[0];
  if (failure !== undefined) throw failure.error;
  const pending: PendingHost[] = [];
  for (const { hostId, slot } of read.observations) {
    if (slot.kind === 'free') continue;
    if (slot.kind === 'corrupt') {
      pending.push({ hostId, hostName: '?', why: `slot reads as corrupt: ${slot.reason}` });
      continue;
    }
    if (slot.left) continue;
    const ack = slot.moveAck;
    if (ack.epoch === options.epoch && ack.phase === options.phase) continue;
    if (options.liveness({ hostId, generation: slot.generation }) === 'dead') continue;
    const says = ack.epoch === 0 ? 'no answer yet' : `says ${ack.phase} for move ${ack.epoch}`;
    pending.push({ hostId, hostName: slot.hostName, why: says });
  }
  return pending;
}
