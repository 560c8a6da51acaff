/**
 * Fixed newstyle negotiation of the NBD server (proto.md "Handshake", "Option haggling"), byte by
 * byte through a raw socket: what a conforming client sees, and what malformed or abusive input
 * gets (an error reply with the stream still usable, or a disconnect where the spec or a limit
 * demands one).
 */
import assert from 'node:assert/strict';
import { after, afterEach, before, describe, test } from 'node:test';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import * as wire from '../../src/nbd/wire.js';
import {
  ClientPool,
  type TestServer,
  delay,
  encodeInfoRequest,
  encodeMetaContextRequest,
  replyData,
  startServer,
  withTimeout,
} from './helpers/raw-nbd.js';

const sizeBytes = 1024 * 1024;
const maximumPayloadBytes = 64 * 1024;
const limits = {
  maximumPayloadBytes,
  maximumOptionBytes: 1024,
  maximumSkippedOptionBytes: 8192,
  maximumOptionsPerConnection: 16,
};
const testTimeout = { timeout: 15_000 };

const readWriteFlags =
  wire.TRANSMISSION_HAS_FLAGS |
  wire.TRANSMISSION_SEND_FLUSH |
  wire.TRANSMISSION_SEND_FUA |
  wire.TRANSMISSION_SEND_TRIM |
  wire.TRANSMISSION_SEND_WRITE_ZEROES |
  wire.TRANSMISSION_SEND_CACHE |
  wire.TRANSMISSION_SEND_FAST_ZERO |
  wire.TRANSMISSION_CAN_MULTI_CONN;

describe('NBD handshake', () => {
  let fixture: TestServer;
  const pool = new ClientPool(() => fixture.port);

  before(async () => {
    fixture = await startServer(
      [
        { name: 'disk', device: new MemoryDevice({ sizeBytes }), description: 'the disk' },
        { name: 'ro', device: new MemoryDevice({ sizeBytes: 2 * sizeBytes }), readOnly: true },
      ],
      limits,
    );
  });
  afterEach(() => pool.closeAll());
  after(async () => {
    pool.closeAll();
    await fixture.close();
  });

  /** After an error reply the option stream must still be in step: GO to 'disk' works. */
  async function assertStillUsable(client: Awaited<ReturnType<ClientPool['connect']>>) {
    const result = await client.go('disk');
    assert.equal(result.sizeBytes, sizeBytes);
    const reply = await client.request({ type: wire.CMD_READ, handle: 1n, offset: 0, length: 512 });
    assert.equal(replyData(reply).length, 512);
  }

  test(
    'greeting is NBDMAGIC, IHAVEOPT and FIXED_NEWSTYLE|NO_ZEROES, then silence',
    testTimeout,
    async () => {
      const client = await pool.connect();
      const greeting = await client.read(18);
      const expected = Buffer.concat([
        Buffer.from('NBDMAGIC', 'latin1'),
        Buffer.from('IHAVEOPT', 'latin1'),
        Buffer.from([0x00, 0x03]),
      ]);
      assert.deepEqual(greeting, expected);
      await client.expectQuiet(100);
    },
  );

  test('unknown client flags end the connection', testTimeout, async () => {
    const client = await pool.connect();
    await client.readGreeting();
    client.sendClientFlags(wire.CLIENT_FLAG_FIXED_NEWSTYLE | wire.CLIENT_FLAG_NO_ZEROES | 0x4);
    const rest = await client.waitForClose();
    assert.equal(rest.length, 0);
  });

  test('EXPORT_NAME with NO_ZEROES: size and flags, no padding', testTimeout, async () => {
    const client = await pool.connect();
    await client.handshake();
    client.sendOption(wire.OPT_EXPORT_NAME, Buffer.from('disk'));
    const reply = await client.read(wire.EXPORT_NAME_REPLY_BYTES);
    assert.equal(Number(reply.readBigUInt64BE(0)), sizeBytes);
    assert.equal(reply.readUInt16BE(8), readWriteFlags);
    // The next bytes must be the reply to a request, not padding.
    const read = await client.request({
      type: wire.CMD_READ,
      handle: 7n,
      offset: 512,
      length: 512,
    });
    assert.deepEqual(replyData(read), Buffer.alloc(512));
  });

  test('EXPORT_NAME without NO_ZEROES: 124 zero bytes follow', testTimeout, async () => {
    const client = await pool.connect();
    await client.handshake(wire.CLIENT_FLAG_FIXED_NEWSTYLE);
    client.sendOption(wire.OPT_EXPORT_NAME, Buffer.from('disk'));
    const reply = await client.read(wire.EXPORT_NAME_REPLY_BYTES + 124);
    assert.equal(Number(reply.readBigUInt64BE(0)), sizeBytes);
    assert.equal(reply.readUInt16BE(8), readWriteFlags);
    assert.deepEqual(reply.subarray(10), Buffer.alloc(124));
    const read = await client.request({ type: wire.CMD_READ, handle: 8n, offset: 0, length: 16 });
    assert.equal(replyData(read).length, 16);
  });

  test(
    'EXPORT_NAME of a read-only export advertises READ_ONLY and no TRIM',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.handshake();
      client.sendOption(wire.OPT_EXPORT_NAME, Buffer.from('ro'));
      const reply = await client.read(wire.EXPORT_NAME_REPLY_BYTES);
      assert.equal(Number(reply.readBigUInt64BE(0)), 2 * sizeBytes);
      const flags = reply.readUInt16BE(8);
      assert.equal(flags & wire.TRANSMISSION_READ_ONLY, wire.TRANSMISSION_READ_ONLY);
      assert.equal(flags & wire.TRANSMISSION_SEND_TRIM, 0);
      assert.equal(flags & wire.TRANSMISSION_SEND_WRITE_ZEROES, 0);
    },
  );

  test(
    'EXPORT_NAME of an unknown export closes the connection without a reply',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.handshake();
      client.sendOption(wire.OPT_EXPORT_NAME, Buffer.from('nope'));
      const rest = await client.waitForClose();
      assert.equal(rest.length, 0);
    },
  );

  test(
    'EXPORT_NAME with data over maximumOptionBytes gets no option reply (it cannot parse one)',
    testTimeout,
    async () => {
      // proto.md: NBD_OPT_EXPORT_NAME has no option reply; a server that refuses it must
      // terminate the session. An NBD_REP_ERR_TOO_BIG here would be read by the client as the
      // export size and flags.
      const client = await pool.connect();
      await client.handshake();
      client.sendOption(wire.OPT_EXPORT_NAME, Buffer.alloc(limits.maximumOptionBytes + 1, 0x61));
      const rest = await client.waitForClose(1000).catch(() => client.read(client.bufferedBytes));
      assert.equal(rest.length, 0, `server sent ${rest.length} bytes: ${rest.toString('hex')}`);
      assert.ok(client.closed, 'server kept the connection open');
    },
  );

  test('LIST names every export with its description', testTimeout, async () => {
    const client = await pool.connect();
    await client.handshake();
    const replies = await client.option(wire.OPT_LIST);
    assert.equal(replies[replies.length - 1]?.type, wire.REP_ACK);
    const servers = replies.slice(0, -1).map((reply) => {
      assert.equal(reply.type, wire.REP_SERVER);
      const nameLength = reply.data.readUInt32BE(0);
      return {
        name: reply.data.toString('utf8', 4, 4 + nameLength),
        description: reply.data.toString('utf8', 4 + nameLength),
      };
    });
    servers.sort((left, right) => left.name.localeCompare(right.name));
    assert.deepEqual(servers, [
      { name: 'disk', description: 'the disk' },
      { name: 'ro', description: '' },
    ]);
    await assertStillUsable(client);
  });

  test('LIST with data is ERR_INVALID and the stream stays usable', testTimeout, async () => {
    const client = await pool.connect();
    await client.handshake();
    await client.expectOptionError(wire.OPT_LIST, Buffer.from('junk'), wire.REP_ERR_INVALID);
    await assertStillUsable(client);
  });

  test('ABORT is acknowledged, then the server closes', testTimeout, async () => {
    const client = await pool.connect();
    await client.handshake();
    client.sendOption(wire.OPT_ABORT);
    const reply = await client.readOptionReply();
    assert.equal(reply.option, wire.OPT_ABORT);
    assert.equal(reply.type, wire.REP_ACK);
    assert.equal(reply.data.length, 0);
    assert.equal((await client.waitForClose()).length, 0);
  });

  test('STARTTLS is ERR_UNSUP', testTimeout, async () => {
    const client = await pool.connect();
    await client.handshake();
    await client.expectOptionError(wire.OPT_STARTTLS, undefined, wire.REP_ERR_UNSUP);
    await assertStillUsable(client);
  });

  test(
    'unknown option 999 (with data) is ERR_UNSUP and a following GO works',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.handshake();
      await client.expectOptionError(999, Buffer.alloc(100, 0xee), wire.REP_ERR_UNSUP);
      await client.expectOptionError(999, undefined, wire.REP_ERR_UNSUP);
      await assertStillUsable(client);
    },
  );

  test('EXTENDED_HEADERS (11) is ERR_UNSUP', testTimeout, async () => {
    const client = await pool.connect();
    await client.handshake();
    await client.expectOptionError(wire.OPT_EXTENDED_HEADERS, undefined, wire.REP_ERR_UNSUP);
    await client.structuredReplies();
    await assertStillUsable(client);
  });

  test('STRUCTURED_REPLY with data is ERR_INVALID', testTimeout, async () => {
    const client = await pool.connect();
    await client.handshake();
    await client.expectOptionError(
      wire.OPT_STRUCTURED_REPLY,
      Buffer.from([1]),
      wire.REP_ERR_INVALID,
    );
    await assertStillUsable(client);
  });

  for (const option of [wire.OPT_INFO, wire.OPT_GO]) {
    const optionName = option === wire.OPT_INFO ? 'INFO' : 'GO';
    test(
      `${optionName} with truncated or garbled data is ERR_INVALID and the stream stays usable`,
      testTimeout,
      async () => {
        const client = await pool.connect();
        await client.handshake();
        const nameTooLong = encodeInfoRequest('disk');
        nameTooLong.writeUInt32BE(100, 0);
        const hugeName = encodeInfoRequest('disk');
        hugeName.writeUInt32BE(0xffffffff, 0);
        const countTooHigh = encodeInfoRequest('disk', [wire.INFO_NAME]);
        countTooHigh.writeUInt16BE(5, 4 + 4);
        const countTooLow = encodeInfoRequest('disk', [wire.INFO_NAME, wire.INFO_BLOCK_SIZE]);
        countTooLow.writeUInt16BE(1, 4 + 4);
        const cases = [
          Buffer.alloc(0),
          Buffer.from([0, 0, 0]),
          nameTooLong,
          hugeName,
          countTooHigh,
          countTooLow,
        ];
        for (const data of cases) {
          await client.expectOptionError(option, data, wire.REP_ERR_INVALID);
        }
        await assertStillUsable(client);
      },
    );
  }

  test(
    'GO or INFO to an unknown or empty name is ERR_UNKNOWN and the stream stays usable',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.handshake();
      await client.expectOptionError(
        wire.OPT_GO,
        encodeInfoRequest('missing'),
        wire.REP_ERR_UNKNOWN,
      );
      await client.expectOptionError(
        wire.OPT_INFO,
        encodeInfoRequest('missing'),
        wire.REP_ERR_UNKNOWN,
      );
      const message = await client.expectOptionError(
        wire.OPT_GO,
        encodeInfoRequest(''),
        wire.REP_ERR_UNKNOWN,
      );
      assert.ok(message.length > 0, 'error carries a message');
      await assertStillUsable(client);
    },
  );

  test(
    'INFO replies EXPORT, NAME and DESCRIPTION when asked, BLOCK_SIZE, then GO works',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.handshake();
      const replies = await client.option(
        wire.OPT_INFO,
        encodeInfoRequest('disk', [wire.INFO_NAME, wire.INFO_DESCRIPTION, wire.INFO_BLOCK_SIZE]),
      );
      assert.equal(replies[replies.length - 1]?.type, wire.REP_ACK);
      const infos = new Map<number, Buffer>();
      for (const reply of replies.slice(0, -1)) {
        assert.equal(reply.type, wire.REP_INFO);
        const infoType = reply.data.readUInt16BE(0);
        assert.ok(!infos.has(infoType), `info ${infoType} sent once`);
        infos.set(infoType, reply.data.subarray(2));
      }
      const exportInfo = infos.get(wire.INFO_EXPORT);
      assert.ok(exportInfo !== undefined);
      assert.equal(Number(exportInfo.readBigUInt64BE(0)), sizeBytes);
      assert.equal(exportInfo.readUInt16BE(8), readWriteFlags);
      assert.equal(infos.get(wire.INFO_NAME)?.toString('utf8'), 'disk');
      assert.equal(infos.get(wire.INFO_DESCRIPTION)?.toString('utf8'), 'the disk');
      const blockSize = infos.get(wire.INFO_BLOCK_SIZE);
      assert.ok(blockSize !== undefined);
      assert.equal(blockSize.length, 12);
      assert.deepEqual(
        [blockSize.readUInt32BE(0), blockSize.readUInt32BE(4), blockSize.readUInt32BE(8)],
        [1, 4096, maximumPayloadBytes],
      );

      const plain = await client.option(wire.OPT_INFO, encodeInfoRequest('disk'));
      const types = plain
        .filter((reply) => reply.type === wire.REP_INFO)
        .map((reply) => reply.data.readUInt16BE(0));
      assert.ok(!types.includes(wire.INFO_NAME), 'NAME only when asked');
      assert.ok(types.includes(wire.INFO_EXPORT));
      await assertStillUsable(client);
    },
  );

  test('GO to a read-only export carries READ_ONLY', testTimeout, async () => {
    const client = await pool.connect();
    await client.handshake();
    const result = await client.go('ro', [wire.INFO_NAME]);
    assert.equal(result.sizeBytes, 2 * sizeBytes);
    assert.equal(
      result.transmissionFlags & wire.TRANSMISSION_READ_ONLY,
      wire.TRANSMISSION_READ_ONLY,
    );
  });

  test(
    'option data over maximumOptionBytes is ERR_TOO_BIG and the stream stays usable',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.handshake();
      const message = await client.expectOptionError(
        wire.OPT_GO,
        Buffer.alloc(limits.maximumOptionBytes + 1),
        wire.REP_ERR_TOO_BIG,
      );
      assert.ok(message.length > 0);
      // Just under the skip limit, sent in pieces.
      client.sendOption(999, Buffer.alloc(0));
      await client.readOptionReplies(999);
      const big = wire.encodeOption(
        wire.OPT_LIST,
        Buffer.alloc(limits.maximumSkippedOptionBytes, 0x55),
      );
      client.send(big.subarray(0, 100));
      await delay(20);
      client.send(big.subarray(100));
      assert.equal((await client.readOptionReplies(wire.OPT_LIST))[0]?.type, wire.REP_ERR_TOO_BIG);
      await assertStillUsable(client);
    },
  );

  test('option data over maximumSkippedOptionBytes ends the connection', testTimeout, async () => {
    const client = await pool.connect();
    await client.handshake();
    const header = wire.encodeOption(wire.OPT_GO);
    header.writeUInt32BE(limits.maximumSkippedOptionBytes + 1, 12);
    client.send(header);
    assert.equal((await client.waitForClose()).length, 0);
  });

  test('wrong option magic ends the connection', testTimeout, async () => {
    const client = await pool.connect();
    await client.handshake();
    const header = wire.encodeOption(wire.OPT_LIST);
    header.write('IHAVEOPX', 0, 'latin1');
    client.send(header);
    assert.equal((await client.waitForClose()).length, 0);
  });

  test(
    'more options than maximumOptionsPerConnection end the connection',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.handshake();
      for (let index = 0; index < limits.maximumOptionsPerConnection; index++) {
        await client.expectOptionError(wire.OPT_STARTTLS, undefined, wire.REP_ERR_UNSUP);
      }
      client.sendOption(wire.OPT_STARTTLS);
      assert.equal((await client.waitForClose()).length, 0);
    },
  );

  test(
    'STRUCTURED_REPLY then SET_META_CONTEXT base:allocation gives a non-zero id',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.handshake();
      await client.structuredReplies();
      const contextId = await client.setBaseAllocation('disk');
      assert.notEqual(contextId, 0);
      const result = await client.go('disk');
      assert.equal(result.transmissionFlags & wire.TRANSMISSION_SEND_DF, wire.TRANSMISSION_SEND_DF);
    },
  );

  test(
    'LIST_META_CONTEXT with no query and with "base:" lists base:allocation',
    testTimeout,
    async () => {
      const client = await pool.connect();
      await client.handshake();
      await client.structuredReplies();
      for (const queries of [[], ['base:'], [wire.BASE_ALLOCATION]]) {
        const replies = await client.option(
          wire.OPT_LIST_META_CONTEXT,
          encodeMetaContextRequest('disk', queries),
        );
        assert.deepEqual(
          replies.map((reply) => reply.type),
          [wire.REP_META_CONTEXT, wire.REP_ACK],
          `queries ${JSON.stringify(queries)}`,
        );
        const context = replies[0];
        assert.ok(context !== undefined);
        assert.equal(context.data.subarray(4).toString('utf8'), wire.BASE_ALLOCATION);
      }
      const none = await client.option(
        wire.OPT_LIST_META_CONTEXT,
        encodeMetaContextRequest('disk', ['qemu:']),
      );
      assert.deepEqual(
        none.map((reply) => reply.type),
        [wire.REP_ACK],
      );
      await client.expectOptionError(
        wire.OPT_LIST_META_CONTEXT,
        encodeMetaContextRequest('missing', []),
        wire.REP_ERR_UNKNOWN,
      );
      const garbled = encodeMetaContextRequest('disk', ['base:']);
      garbled.writeUInt32BE(3, 8);
      await client.expectOptionError(wire.OPT_SET_META_CONTEXT, garbled, wire.REP_ERR_INVALID);
      await assertStillUsable(client);
    },
  );

  test('SET_META_CONTEXT before STRUCTURED_REPLY is ERR_INVALID', testTimeout, async () => {
    const client = await pool.connect();
    await client.handshake();
    await client.expectOptionError(
      wire.OPT_SET_META_CONTEXT,
      encodeMetaContextRequest('disk', [wire.BASE_ALLOCATION]),
      wire.REP_ERR_INVALID,
    );
    await assertStillUsable(client);
  });
});

describe('NBD handshake timeout and half-open peers', () => {
  let fixture: TestServer | undefined;
  const pool = new ClientPool(() => fixture?.port ?? 0);

  afterEach(async () => {
    pool.closeAll();
    await fixture?.close();
    fixture = undefined;
  });

  test(
    'a client that does not finish negotiating in handshakeTimeoutMs is dropped',
    testTimeout,
    async () => {
      fixture = await startServer([{ name: 'disk', device: new MemoryDevice({ sizeBytes }) }], {
        handshakeTimeoutMs: 200,
      });
      const idle = await pool.connect();
      await idle.readGreeting();
      const haggling = await pool.connect();
      await haggling.handshake();
      await haggling.option(wire.OPT_LIST);
      const attached = await pool.connect();
      await attached.attach('disk');

      const started = Date.now();
      await idle.waitForClose(3000);
      await haggling.waitForClose(3000);
      assert.ok(Date.now() - started < 3000);
      // The timer must not fire once the transmission phase started.
      await delay(300);
      const reply = await attached.request({
        type: wire.CMD_READ,
        handle: 1n,
        offset: 0,
        length: 8,
      });
      assert.equal(replyData(reply).length, 8);
    },
  );

  for (const [what, send] of [
    [
      'ABORT',
      (client: Awaited<ReturnType<ClientPool['connect']>>) => client.sendOption(wire.OPT_ABORT),
    ],
    [
      'EXPORT_NAME of an unknown export',
      (client: Awaited<ReturnType<ClientPool['connect']>>) =>
        client.sendOption(wire.OPT_EXPORT_NAME, Buffer.from('missing')),
    ],
  ] as const) {
    test(
      `a peer that stays half-open after ${what} does not keep the connection (or server.close()) forever`,
      testTimeout,
      async () => {
        fixture = await startServer([{ name: 'disk', device: new MemoryDevice({ sizeBytes }) }], {
          drainTimeoutMs: 300,
          handshakeTimeoutMs: 300,
        });
        const current = fixture;
        const client = await pool.connect({ allowHalfOpen: true });
        await client.handshake();
        send(client);
        await client.waitForClose();
        // The client never ends its side. The server must still release the connection, within
        // its drain or handshake timeout.
        await delay(800);
        assert.equal(current.server.connectionCount, 0, 'connection still held by the server');
        await withTimeout(current.server.close(), 2000, 'server.close() with a half-open peer');
      },
    );
  }
});
