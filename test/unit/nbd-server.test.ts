/**
 * The NBD server's export registry and lifecycle: adding and removing exports while clients are
 * attached, and closing the server.
 */
import assert from 'node:assert/strict';
import { afterEach, describe, test } from 'node:test';
import { FaultInjectingDevice } from '../../src/disk/fault-device.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { isTandemError } from '../../src/errors.js';
import { silentLogger } from '../../src/log.js';
import { NbdServer } from '../../src/nbd/server.js';
import * as wire from '../../src/nbd/wire.js';
import {
  ClientPool,
  type TestServer,
  encodeInfoRequest,
  patternBuffer,
  replyData,
  replyErrno,
  startServer,
  waitUntil,
  withTimeout,
} from './helpers/raw-nbd.js';

const sizeBytes = 1024 * 1024;
const testTimeout = { timeout: 15_000 };

function rejectsWithCode(code: string): (error: unknown) => boolean {
  return (error: unknown) => {
    assert.ok(isTandemError(error), `not a TandemError: ${String(error)}`);
    assert.equal(error.code, code);
    return true;
  };
}

describe('NBD server exports', () => {
  let fixture: TestServer | undefined;
  const pool = new ClientPool(() => fixture?.port ?? 0);

  afterEach(async () => {
    pool.closeAll();
    await fixture?.close();
    fixture = undefined;
  });

  test('addExport of a duplicate name is NBD_EXPORT_EXISTS', () => {
    const server = new NbdServer({ logger: silentLogger });
    server.addExport({ name: 'a', device: new MemoryDevice({ sizeBytes }) });
    assert.throws(
      () => server.addExport({ name: 'a', device: new MemoryDevice({ sizeBytes }) }),
      rejectsWithCode('NBD_EXPORT_EXISTS'),
    );
    assert.equal(server.listExports().length, 1);
  });

  test('removeExport of an unknown name is NBD_EXPORT_NOT_FOUND', async () => {
    const server = new NbdServer({ logger: silentLogger });
    await assert.rejects(server.removeExport('missing'), rejectsWithCode('NBD_EXPORT_NOT_FOUND'));
    server.addExport({ name: 'a', device: new MemoryDevice({ sizeBytes }) });
    await server.removeExport('a');
    await assert.rejects(server.removeExport('a'), rejectsWithCode('NBD_EXPORT_NOT_FOUND'));
    assert.equal(server.getExport('a'), undefined);
  });

  test('invalid export names are INVALID_ARGUMENT', () => {
    const server = new NbdServer({ logger: silentLogger });
    for (const name of [
      '',
      'a\u0000b',
      'tab\there',
      'new\nline',
      'x'.repeat(4097),
      'é'.repeat(2049),
    ]) {
      assert.throws(
        () => server.addExport({ name, device: new MemoryDevice({ sizeBytes }) }),
        rejectsWithCode('INVALID_ARGUMENT'),
        `name ${JSON.stringify(name.slice(0, 20))}`,
      );
    }
    assert.equal(server.listExports().length, 0);
    server.addExport({ name: 'x'.repeat(4096), device: new MemoryDevice({ sizeBytes }) });
    server.addExport({ name: 'vg0/lv-ü 1', device: new MemoryDevice({ sizeBytes }) });
    assert.equal(server.listExports().length, 2);
  });

  test(
    'removeExport closes its clients, resolves, and leaves other exports alone',
    testTimeout,
    async () => {
      fixture = await startServer([
        { name: 'a', device: new MemoryDevice({ sizeBytes }) },
        { name: 'b', device: new MemoryDevice({ sizeBytes }) },
      ]);
      const current = fixture;
      const onA = await pool.connect();
      await onA.attach('a');
      const onB = await pool.connect();
      await onB.attach('b', { structured: true });
      const negotiating = await pool.connect();
      await negotiating.handshake();

      await withTimeout(current.server.removeExport('a'), 3000, 'removeExport');
      await onA.waitForClose();
      assert.equal(current.server.getExport('a'), undefined);

      const data = patternBuffer(4096, 4);
      const write = await onB.request({
        type: wire.CMD_WRITE,
        handle: 1n,
        offset: 0,
        length: 4096,
        payload: data,
      });
      assert.equal(replyErrno(write), 0);
      assert.deepEqual(
        replyData(await onB.request({ type: wire.CMD_READ, handle: 2n, offset: 0, length: 4096 })),
        data,
      );

      // A client still negotiating cannot pick the removed export; nor can a new one.
      await negotiating.expectOptionError(
        wire.OPT_GO,
        encodeInfoRequest('a'),
        wire.REP_ERR_UNKNOWN,
      );
      const late = await pool.connect();
      await late.handshake();
      await late.expectOptionError(wire.OPT_INFO, encodeInfoRequest('a'), wire.REP_ERR_UNKNOWN);
      await late.expectOptionError(wire.OPT_GO, encodeInfoRequest('a'), wire.REP_ERR_UNKNOWN);
      const listed = await late.option(wire.OPT_LIST);
      assert.equal(listed.filter((reply) => reply.type === wire.REP_SERVER).length, 1);
      await negotiating.go('b');
    },
  );

  test(
    'removeExport lets in-flight requests finish, refuses new ones with ESHUTDOWN',
    testTimeout,
    async () => {
      const device = new FaultInjectingDevice(new MemoryDevice({ sizeBytes }));
      fixture = await startServer([{ name: 'slow', device }]);
      const current = fixture;
      const client = await pool.connect();
      await client.attach('slow');
      const stall = device.stall({ match: { kinds: ['read'] } });
      try {
        client.sendRequest({ type: wire.CMD_READ, handle: 10n, offset: 0, length: 4096 });
        await withTimeout(stall.waitForStalled(1), 3000, 'read reaches the device');
        let removed = false;
        const removal = current.server.removeExport('slow').then(() => {
          removed = true;
        });
        client.sendRequest({ type: wire.CMD_READ, handle: 11n, offset: 0, length: 512 });
        client.sendRequest({
          type: wire.CMD_WRITE,
          handle: 12n,
          offset: 0,
          length: 512,
          payload: Buffer.alloc(512, 1),
        });
        const refused = await client.readReply();
        assert.equal(refused.handle, 11n);
        assert.equal(replyErrno(refused), wire.NBD_ESHUTDOWN);
        const refusedWrite = await client.readReply();
        assert.equal(refusedWrite.handle, 12n);
        assert.equal(replyErrno(refusedWrite), wire.NBD_ESHUTDOWN);
        assert.equal(removed, false, 'removeExport waits for the in-flight read');
        stall.release();
        const finished = await client.readReply();
        assert.equal(finished.handle, 10n);
        assert.deepEqual(replyData(finished), Buffer.alloc(4096));
        await client.waitForClose();
        await withTimeout(removal, 3000, 'removeExport');
        assert.equal(current.server.connectionCount, 0);
      } finally {
        stall.release();
      }
    },
  );

  test('removeExport gives up on a stuck request after drainTimeoutMs', testTimeout, async () => {
    const device = new FaultInjectingDevice(new MemoryDevice({ sizeBytes }));
    fixture = await startServer([{ name: 'stuck', device }], { drainTimeoutMs: 200 });
    const current = fixture;
    const client = await pool.connect();
    await client.attach('stuck');
    const stall = device.stall({ match: { kinds: ['read'] } });
    try {
      client.sendRequest({ type: wire.CMD_READ, handle: 1n, offset: 0, length: 512 });
      await withTimeout(stall.waitForStalled(1), 3000, 'read reaches the device');
      await withTimeout(
        current.server.removeExport('stuck'),
        3000,
        'removeExport with a stuck request',
      );
      await client.waitForClose();
    } finally {
      stall.release();
    }
  });

  test('server.close() closes every connection and stops listening', testTimeout, async () => {
    fixture = await startServer([{ name: 'a', device: new MemoryDevice({ sizeBytes }) }]);
    const current = fixture;
    const clients = [await pool.connect(), await pool.connect(), await pool.connect()];
    const [greeted, negotiating, attached] = clients;
    assert.ok(greeted !== undefined && negotiating !== undefined && attached !== undefined);
    await negotiating.handshake();
    await attached.attach('a');
    await waitUntil(() => current.server.connectionCount === 3, 3000, 'three connections');
    await current.close();
    for (const client of clients) await client.waitForClose();
    assert.equal(current.server.connectionCount, 0);
    await assert.rejects(pool.connect());
  });
});
