/**
 * WriteGate and gateDevice: writes pass while open, fail with FENCED (without reaching the device)
 * once closed, and close waits for in-flight writes up to the drain time.
 */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { BlockDevice } from '../../src/disk/block-device.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { silentLogger } from '../../src/log.js';
import { WriteGate, gateDevice } from '../../src/locking/write-gate.js';
import { VirtualScheduler } from '../sim/virtual-time.js';
import { code } from './locking-harness.js';

/** Counts the mutating requests that reach the device; each takes `latencyMs` of virtual time. */
function slowCountingDevice(
  scheduler: VirtualScheduler,
  latencyMs: number,
): { device: BlockDevice; issued: string[] } {
  const base = new MemoryDevice({ sizeBytes: 1024 * 1024 });
  const issued: string[] = [];
  const device = Object.create(base) as BlockDevice;
  const delayed = (kind: string, operation: () => Promise<void>) => async (): Promise<void> => {
    issued.push(kind);
    await scheduler.sleep(latencyMs);
    await operation();
  };
  device.write = (buffer, offset) => delayed('write', () => base.write(buffer, offset))();
  device.flush = () => delayed('flush', () => base.flush())();
  device.discard = (offset, length) => delayed('discard', () => base.discard(offset, length))();
  device.writeZeroes = (offset, length) =>
    delayed('writeZeroes', () => base.writeZeroes(offset, length))();
  return { device, issued };
}

function setup(latencyMs: number) {
  const scheduler = new VirtualScheduler();
  const gate = new WriteGate({
    clock: scheduler.clockFor(),
    fenceDrainMs: 250,
    logger: silentLogger,
  });
  const { device, issued } = slowCountingDevice(scheduler, latencyMs);
  return { scheduler, gate, issued, gated: gateDevice(device, gate) };
}

describe('WriteGate', () => {
  it('passes writes while open and refuses every mutating call after close', async () => {
    const { scheduler, gate, issued, gated } = setup(1);
    await scheduler.runUntilSettled(gated.write(Buffer.alloc(512, 1), 0));
    assert.deepEqual(issued, ['write']);
    const closed: string[] = [];
    gate.onClose((reason) => closed.push(reason));
    const result = await scheduler.runUntilSettled(gate.close('test fence'));
    assert.deepEqual(result, { drained: true, stuckWrites: 0 });
    assert.equal(gate.isOpen, false);
    assert.deepEqual(closed, ['test fence']);
    await assert.rejects(gated.write(Buffer.alloc(512), 0), code('FENCED'));
    await assert.rejects(gated.flush(), code('FENCED'));
    await assert.rejects(gated.discard(0, 512), code('FENCED'));
    await assert.rejects(gated.writeZeroes(0, 512), code('FENCED'));
    // Reads still pass, and no mutating request reached the device after close.
    const buffer = Buffer.alloc(512);
    await gated.read(buffer, 0);
    assert.equal(buffer[0], 1);
    assert.deepEqual(issued, ['write']);
  });

  it('waits for in-flight writes before reporting drained', async () => {
    const { scheduler, gate, issued, gated } = setup(100);
    const inFlight = gated.write(Buffer.alloc(512, 2), 0);
    await scheduler.settle();
    assert.equal(gate.inFlight, 1);
    const closing = gate.close('fence');
    const late = gated.write(Buffer.alloc(512, 3), 512);
    await assert.rejects(late, code('FENCED'));
    const result = await scheduler.runUntilSettled(closing);
    await inFlight;
    assert.deepEqual(result, { drained: true, stuckWrites: 0 });
    assert.equal(scheduler.nowMs, 100);
    assert.deepEqual(issued, ['write']);
  });

  it('reports stuck writes after the drain time', async () => {
    const { scheduler, gate, gated } = setup(10_000);
    const stuck = gated.write(Buffer.alloc(512), 0);
    await scheduler.settle();
    const result = await scheduler.runUntilSettled(gate.close('fence'));
    assert.deepEqual(result, { drained: false, stuckWrites: 1 });
    assert.equal(scheduler.nowMs, 250);
    await scheduler.runUntilSettled(stuck);
    // A second close returns the first result.
    assert.deepEqual(await gate.close('again'), result);
  });
});

describe('WriteGate asks whether the lease is still held before every write', () => {
  // Regression: a daemon stopped past its lease (SIGSTOP) woke, and its event loop handled a
  // write queued in its NBD socket before the fence timer ran. The gate now asks at write time.
  it('refuses and closes when the lease is no longer certainly held, without reaching the device', async () => {
    const scheduler = new VirtualScheduler();
    const base = new MemoryDevice({ sizeBytes: 1024 * 1024 });
    const issued: string[] = [];
    const device = Object.create(base) as BlockDevice;
    device.write = (buffer, offset) => {
      issued.push('write');
      return base.write(buffer, offset);
    };
    let allowed = true;
    let asked = 0;
    const gate = new WriteGate({
      clock: scheduler.clockFor(),
      fenceDrainMs: 250,
      logger: silentLogger,
      writesAllowed: () => {
        asked += 1;
        return allowed;
      },
    });
    const gated = gateDevice(device, gate);
    await gated.write(Buffer.alloc(512), 0);
    allowed = false;
    await assert.rejects(gated.write(Buffer.alloc(512), 512), code('FENCED'));
    assert.equal(gate.isOpen, false);
    assert.deepEqual(issued, ['write']);
    assert.equal(asked, 2);
    allowed = true;
    await assert.rejects(gated.write(Buffer.alloc(512), 0), code('FENCED'));
  });
});
