/**
 * Moving a lockspace to other extents (docs/adr/0002-moving-the-lockspace-lv.md), piece by piece:
 * the move mark in the header, the movable device's state machine, the copy rule against a
 * host writing its slot during the copy, and the mover's wait for the hosts' answers.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BlockDevice, WriteOptions } from '../../src/disk/block-device.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { isTandemError } from '../../src/errors.js';
import {
  type LockspaceLayout,
  type LockspaceMoveMark,
  decodeHeaderRecord,
  encodeHeader,
  formatLockspace,
  hostSlotOffset,
  readLockspaceHeaderRecord,
  writeLockspaceMoveMark,
} from '../../src/heartbeat-store/layout.js';
import { copyMovingLockspace, waitForMoveAcks } from '../../src/heartbeat-store/lockspace-move.js';
import { MovableLockspaceDevice } from '../../src/heartbeat-store/movable-device.js';
import {
  type HostSlotRecord,
  type SlotMoveAck,
  encodeHostSlot,
} from '../../src/heartbeat-store/slot-format.js';
import { silentLogger } from '../../src/log.js';
import { VirtualScheduler } from '../sim/virtual-time.js';

const deviceBytes = 4 * 1024 * 1024;

async function newLockspace(
  sectorBytes: 512 | 4096 = 512,
): Promise<{ old: MemoryDevice; next: MemoryDevice; layout: LockspaceLayout }> {
  const old = new MemoryDevice({ sizeBytes: deviceBytes, logicalSectorSizeBytes: sectorBytes });
  const next = new MemoryDevice({ sizeBytes: deviceBytes, logicalSectorSizeBytes: sectorBytes });
  const layout = await formatLockspace(old, {
    ioTimeoutMs: 200,
    maxHosts: 8,
    maxResources: 4,
    name: 'move-test',
    wallMs: 0,
  });
  return { old, next, layout };
}

function moveMark(
  state: LockspaceMoveMark['state'],
  epoch = 7,
  moverHostId = 2,
): LockspaceMoveMark {
  return { state, epoch, moverHostId, moverGeneration: 3 };
}

function slotRecord(hostId: number, counter: number, moveAck?: SlotMoveAck): HostSlotRecord {
  return {
    hostId,
    left: false,
    generation: 1,
    renewalCounter: counter,
    renewedWallMs: 0,
    hostName: `host${hostId}`,
    address: '',
    joinNonce: hostId,
    payload: Buffer.alloc(0),
    moveAck,
  };
}

async function readBytes(device: BlockDevice, offset: number, length: number): Promise<Buffer> {
  const buffer = Buffer.alloc(length);
  await device.read(buffer, offset);
  return buffer;
}

function codeOf(error: unknown): string {
  return isTandemError(error) ? error.code : String(error);
}

describe('lockspace header move mark', () => {
  for (const sectorBytes of [512, 4096] as const) {
    it(`round trips at its documented offsets, ${sectorBytes} B sectors`, async () => {
      const { old, layout } = await newLockspace(sectorBytes);
      assert.deepEqual((await readLockspaceHeaderRecord(old)).mark.state, 'none');
      await writeLockspaceMoveMark(old, layout, moveMark('forwarded', 2 ** 40, 8));
      const block = await readBytes(old, 0, 512);
      assert.equal(block.readUInt32LE(160), 2);
      assert.equal(block.readUInt32LE(164), 8);
      assert.equal(block.readBigUInt64LE(168), 2n ** 40n);
      assert.equal(block.readBigUInt64LE(176), 3n);
      const record = await readLockspaceHeaderRecord(old);
      assert.deepEqual(record.mark, moveMark('forwarded', 2 ** 40, 8));
      assert.deepEqual(record.layout, layout);
    });
  }

  it('refuses a mark it cannot trust, as a corrupt header', async () => {
    const { layout } = await newLockspace();
    const cases: [string, (block: Buffer) => void, RegExp][] = [
      ['unknown state', (block) => block.writeUInt32LE(9, 160), /unknown lockspace move state 9/],
      ['mover out of range', (block) => block.writeUInt32LE(99, 164), /mover host id 99/],
      ['fields without a state', (block) => block.writeUInt32LE(0, 160), /without a move state/],
      ['epoch 0', (block) => block.writeBigUInt64LE(0n, 168), /move epoch 0/],
    ];
    for (const [what, damage, reason] of cases) {
      const block = encodeHeader(layout, moveMark('moving'));
      damage(block);
      // Reseal the CRC, so that only the mark is wrong.
      block.writeUInt32LE(0, 12);
      const { crc32c } = await import('../../src/crc32c.js');
      block.writeUInt32LE(crc32c(block), 12);
      assert.throws(
        () => decodeHeaderRecord(block, 'test'),
        (error: unknown) => codeOf(error) === 'LOCKSPACE_CORRUPT' && reason.test(String(error)),
        what,
      );
    }
  });
});

/** A movable device whose locate resolves at once; its host judges the mover as `moverDead`. */
function movable(old: BlockDevice, next: BlockDevice, state: { moverDead: boolean }) {
  const located: number[] = [];
  const scheduler = new VirtualScheduler();
  const device = new MovableLockspaceDevice({
    device: old,
    locate: (epoch) => {
      located.push(epoch);
      return Promise.resolve(next);
    },
    ioTimeoutMs: 200,
    clock: scheduler.clockFor(),
    logger: silentLogger,
  });
  device.setLiveness(() => (state.moverDead ? 'dead' : 'alive'));
  return { device, located };
}

/** Lets the background locate settle (it resolves at once). */
const tick = () => new Promise<void>((resolve) => setImmediate(resolve));

describe('MovableLockspaceDevice', () => {
  it('enters a move at a slot write once the new copy is open, and refuses lease writes in it', async () => {
    const { old, next, layout } = await newLockspace();
    const { device, located } = movable(old, next, { moverDead: false });
    assert.deepEqual(await device.beforeSlotWrite('renew'), { epoch: 0, phase: 'none' });
    await writeLockspaceMoveMark(old, layout, moveMark('moving'));
    // The first slot write only starts opening the new copy; the host is not in the move yet.
    assert.deepEqual(await device.beforeSlotWrite('renew'), { epoch: 0, phase: 'none' });
    await tick();
    assert.deepEqual(located, [7]);
    assert.deepEqual(await device.beforeSlotWrite('renew'), { epoch: 7, phase: 'ready' });
    // A slot write reaches both copies; a ballot write (outside the slots) is refused.
    const slot = encodeHostSlot(slotRecord(3, 5), layout.blockSize);
    await device.write(slot, hostSlotOffset(layout, 3), { fua: true });
    assert.ok((await readBytes(old, hostSlotOffset(layout, 3), 4096)).equals(slot));
    assert.ok((await readBytes(next, hostSlotOffset(layout, 3), 4096)).equals(slot));
    await assert.rejects(
      device.write(Buffer.alloc(512), layout.resourcesOffset),
      (error: unknown) => codeOf(error) === 'LOCKSPACE_MOVING',
    );
    // Reads stay on the old copy.
    await next.write(Buffer.alloc(512, 0xee), layout.resourcesOffset);
    assert.equal((await readBytes(device, layout.resourcesOffset, 512))[0], 0);
  });

  it('says ready only once the lease writes it had in flight completed', async () => {
    const { old, next, layout } = await newLockspace();
    let release: () => void = () => undefined;
    const slow: BlockDevice = Object.create(old) as BlockDevice;
    slow.write = (buffer: Buffer, offset: number, _options?: WriteOptions) =>
      offset >= layout.resourcesOffset
        ? new Promise<void>((resolve) => {
            release = () => void old.write(buffer, offset).then(resolve);
          })
        : old.write(buffer, offset);
    const { device } = movable(slow, next, { moverDead: false });
    await device.beforeSlotWrite('renew');
    const ballot = device.write(Buffer.alloc(512, 1), layout.resourcesOffset);
    await writeLockspaceMoveMark(old, layout, moveMark('moving'));
    await device.beforeSlotWrite('renew');
    await tick();
    assert.deepEqual(await device.beforeSlotWrite('renew'), { epoch: 7, phase: 'none' });
    release();
    await ballot;
    assert.deepEqual(await device.beforeSlotWrite('renew'), { epoch: 7, phase: 'ready' });
  });

  it('switches to the new copy on forwarded and back to the old one on aborted', async () => {
    for (const [end, expected] of [
      ['forwarded', 'next'],
      ['aborted', 'old'],
    ] as const) {
      const { old, next, layout } = await newLockspace();
      await next.write(encodeHeader(layout), 0);
      const { device } = movable(old, next, { moverDead: false });
      await writeLockspaceMoveMark(old, layout, moveMark('moving'));
      await device.beforeSlotWrite('renew');
      await tick();
      await device.beforeSlotWrite('renew');
      await writeLockspaceMoveMark(old, layout, moveMark(end));
      assert.deepEqual(await device.beforeSlotWrite('renew'), { epoch: 7, phase: 'done' });
      assert.equal(device.current, expected === 'next' ? next : old, end);
      assert.equal(device.moving(), undefined);
      // Lease writes pass again, to the copy in use.
      await device.write(Buffer.alloc(512, 2), layout.resourcesOffset);
      const used = expected === 'next' ? next : old;
      assert.equal((await readBytes(used, layout.resourcesOffset, 512))[0], 2, end);
    }
  });

  it('stays on the old copy when the mover is dead and the old copy is not forwarded', async () => {
    const { old, next, layout } = await newLockspace();
    const mover = { moverDead: false };
    const { device } = movable(old, next, mover);
    await writeLockspaceMoveMark(old, layout, moveMark('moving'));
    await device.beforeSlotWrite('renew');
    await tick();
    assert.equal((await device.beforeSlotWrite('renew')).phase, 'ready');
    mover.moverDead = true;
    assert.deepEqual(await device.beforeSlotWrite('renew'), { epoch: 7, phase: 'done' });
    assert.equal(device.current, old);
    // The mark still says moving: it stays decided, and lease writes go to the old copy.
    assert.deepEqual(await device.beforeSlotWrite('renew'), { epoch: 7, phase: 'done' });
    await device.write(Buffer.alloc(512, 3), layout.resourcesOffset);
  });

  it('refuses slot writes to a copy that was forwarded while this host did not use it', async () => {
    const { old, next, layout } = await newLockspace();
    const { device } = movable(old, next, { moverDead: false });
    await writeLockspaceMoveMark(old, layout, moveMark('forwarded'));
    await assert.rejects(
      device.beforeSlotWrite('renew'),
      (error: unknown) => codeOf(error) === 'LOCKSPACE_MOVED',
    );
    // Opened on the new copy with the move already left: nothing to follow.
    const fresh = new MovableLockspaceDevice({
      device: next,
      resolvedEpoch: 7,
      locate: () => Promise.reject(new Error('not called')),
      ioTimeoutMs: 200,
      clock: new VirtualScheduler().clockFor(),
      logger: silentLogger,
    });
    await next.write(encodeHeader(layout), 0);
    assert.deepEqual(await fresh.beforeSlotWrite('renew'), { epoch: 7, phase: 'done' });
  });

  it('refuses a join while a move runs, unless its mover is dead', async () => {
    const { old, next, layout } = await newLockspace();
    const mover = { moverDead: false };
    const { device, located } = movable(old, next, mover);
    assert.deepEqual(await device.beforeSlotWrite('join'), { epoch: 0, phase: 'none' });
    await writeLockspaceMoveMark(old, layout, moveMark('moving'));
    await assert.rejects(
      device.beforeSlotWrite('join'),
      (error: unknown) =>
        codeOf(error) === 'LOCKSPACE_MOVING' && /joining waits/.test(String(error)),
    );
    assert.deepEqual(located, [], 'a refused join does not enter the move');
    mover.moverDead = true;
    assert.deepEqual(await device.beforeSlotWrite('join'), { epoch: 7, phase: 'done' });
  });

  it('writes nothing more once it finds its copy forwarded by a move it missed', async () => {
    const { old, next, layout } = await newLockspace();
    const { device } = movable(old, next, { moverDead: false });
    await device.beforeSlotWrite('renew');
    await writeLockspaceMoveMark(old, layout, moveMark('forwarded'));
    await assert.rejects(
      device.beforeSlotWrite('renew'),
      (error: unknown) => codeOf(error) === 'LOCKSPACE_MOVED',
    );
    for (const offset of [layout.resourcesOffset, hostSlotOffset(layout, 1)]) {
      await assert.rejects(
        device.write(Buffer.alloc(512), offset),
        (error: unknown) => codeOf(error) === 'LOCKSPACE_MOVED',
      );
    }
  });

  it('refuses slot writes when the header cannot be read', async () => {
    const { old, next } = await newLockspace();
    const { device } = movable(old, next, { moverDead: false });
    await old.write(Buffer.alloc(512), 0);
    await assert.rejects(
      device.beforeSlotWrite('renew'),
      (error: unknown) => codeOf(error) === 'LOCKSPACE_NOT_FOUND',
    );
  });
});

/**
 * A device whose writes to one offset wait until the test lets them go, so that a test can
 * put a host's slot write exactly between two steps of the copy.
 */
class GatedWrites implements Pick<BlockDevice, 'write'> {
  private readonly held: { go: () => void }[] = [];
  constructor(
    private readonly base: BlockDevice,
    private readonly gatedOffset: number,
  ) {}
  write(buffer: Buffer, offset: number, options?: WriteOptions): Promise<void> {
    if (offset !== this.gatedOffset) return this.base.write(buffer, offset, options);
    return new Promise<void>((resolve, reject) => {
      this.held.push({
        go: () => void this.base.write(buffer, offset, options).then(resolve, reject),
      });
    });
  }
  releaseAll(): void {
    for (const write of this.held.splice(0)) write.go();
  }
  get heldCount(): number {
    return this.held.length;
  }
}

describe('copying a moving lockspace', () => {
  it('copies a slot again when its host wrote it between the read and the re-read', async () => {
    const { old, next, layout } = await newLockspace();
    const slotAt = hostSlotOffset(layout, 2);
    await old.write(encodeHostSlot(slotRecord(2, 1), layout.blockSize), slotAt);
    await old.write(Buffer.alloc(512, 9), layout.resourcesOffset);
    // The copy writes all slots in one request from the first slot on: that write is held, and
    // meanwhile host 2 renews, old copy first, then the new one.
    const nextView = Object.create(next) as BlockDevice;
    const chunkGate = new GatedWrites(next, layout.hostSlotsOffset);
    nextView.write = (buffer, offset, options) => chunkGate.write(buffer, offset, options);
    const copying = copyMovingLockspace(old, nextView, layout);
    while (chunkGate.heldCount === 0) await tick();
    const renewed = encodeHostSlot(slotRecord(2, 2), layout.blockSize);
    await old.write(renewed, slotAt);
    await next.write(renewed, slotAt);
    // Now the copy's stale write of slot 2 lands over the renewal in the new copy...
    chunkGate.releaseAll();
    const outcome = await copying;
    // ...and its re-read of the old copy saw the renewal, so it copied slot 2 again.
    assert.equal(outcome.slotRecopyCount, 1);
    assert.ok((await readBytes(next, slotAt, 4096)).equals(renewed));
    assert.equal((await readBytes(next, layout.resourcesOffset, 512))[0], 9);
    const header = await readLockspaceHeaderRecord(next);
    assert.equal(header.mark.state, 'none');
    assert.equal(header.layout.uuid, layout.uuid);
  });
});

describe('waiting for the hosts of a move', () => {
  it('waits for every live host, passes over dead, left and free slots, and names the late', async () => {
    const { old, layout } = await newLockspace();
    const scheduler = new VirtualScheduler();
    const write = (hostId: number, ack?: SlotMoveAck, left = false) =>
      old.write(
        encodeHostSlot({ ...slotRecord(hostId, 1, ack), left }, layout.blockSize),
        hostSlotOffset(layout, hostId),
      );
    await write(1, { epoch: 7, phase: 'ready' });
    await write(2, { epoch: 6, phase: 'done' });
    await write(3, undefined, true);
    await write(4, undefined);
    const dead = new Set([4]);
    const waiting = waitForMoveAcks(old, layout, {
      epoch: 7,
      phase: 'ready',
      liveness: (owner) => (dead.has(owner.hostId) ? 'dead' : 'alive'),
      clock: scheduler.clockFor(),
      timeoutMs: 1_000,
    });
    await assert.rejects(scheduler.runUntilSettled(waiting), (error: unknown) => {
      assert.equal(codeOf(error), 'FAILED_PRECONDITION');
      assert.match(String(error), /host2 \(host id 2: says done for move 6\)/);
      assert.doesNotMatch(String(error), /host[134]/);
      return true;
    });
    await write(2, { epoch: 7, phase: 'ready' });
    await scheduler.runUntilSettled(
      waitForMoveAcks(old, layout, {
        epoch: 7,
        phase: 'ready',
        liveness: (owner) => (dead.has(owner.hostId) ? 'dead' : 'alive'),
        clock: scheduler.clockFor(),
        timeoutMs: 1_000,
      }),
    );
  });
});
