/**
 * The BlockDevice conformance suite on NbdDevice: a remote NBD export (served by tandem's own
 * server, in-process, over a memory device) used as a disk. Proves the client and the server
 * agree on every command, and that server errors come back as the disk layer's typed errors.
 */
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import { openNbdDevice, parseNbdUri } from '../../src/disk/nbd-device.js';
import { silentLogger } from '../../src/log.js';
import { NbdServer } from '../../src/nbd/server.js';
import { expectCode, pattern, runBlockDeviceConformance } from './disk-conformance.js';

const deviceSizeBytes = 8 * 1024 * 1024;
const server = new NbdServer({ logger: silentLogger });
let port = 0;
let exportCounter = 0;

before(async () => {
  port = (await server.listen({ host: '127.0.0.1', port: 0 })).port;
});
after(() => server.close());

function exportMemory(options: { readOnly: boolean; sector?: 512 | 4096 }): string {
  const name = `disk-${exportCounter++}`;
  const sector = options.sector ?? 512;
  server.addExport({
    name,
    readOnly: options.readOnly,
    device: new MemoryDevice({
      sizeBytes: deviceSizeBytes,
      logicalSectorSizeBytes: sector,
      alignmentBytes: sector === 4096 ? 4096 : 1,
    }),
  });
  return name;
}

for (const sector of [512, 4096] as const) {
  runBlockDeviceConformance(
    `NBD device over tandem's server, ${sector} B sectors`,
    async (options) =>
      openNbdDevice({
        host: '127.0.0.1',
        port,
        exportName: exportMemory({ ...options, sector }),
        readOnly: options.readOnly,
      }),
  );
}

runBlockDeviceConformance('NBD device with simple replies only', async (options) =>
  openNbdDevice({
    host: '127.0.0.1',
    port,
    exportName: exportMemory(options),
    readOnly: options.readOnly,
    structuredReplies: false,
  }),
);

describe('NBD device specifics', () => {
  it('parses nbd:// URIs', () => {
    assert.deepEqual(parseNbdUri('nbd://127.0.0.1:10810/vg0%2Flv1'), {
      host: '127.0.0.1',
      port: 10810,
      exportName: 'vg0/lv1',
    });
    assert.deepEqual(parseNbdUri('nbd://[::1]/disk'), {
      host: '::1',
      port: 10809,
      exportName: 'disk',
    });
    assert.throws(() => parseNbdUri('http://host/x'), /nbd:\/\//);
    assert.throws(() => parseNbdUri('not a uri'), /not a valid NBD URI/);
  });

  it('an unknown export is a clear open error', async () => {
    await expectCode(
      openNbdDevice({ host: '127.0.0.1', port, exportName: 'missing' }),
      'DISK_INVALID_ARGUMENT',
    );
  });

  it('a server that is not there is DISK_GONE', async () => {
    const closed = new NbdServer({ logger: silentLogger });
    const unusedPort = (await closed.listen({ host: '127.0.0.1', port: 0 })).port;
    await closed.close();
    await expectCode(
      openNbdDevice({ host: '127.0.0.1', port: unusedPort, exportName: 'x' }),
      'DISK_GONE',
    );
  });

  it('requests over the server maximum are split and arrive whole', async () => {
    const name = exportMemory({ readOnly: false });
    const device = await openNbdDevice({ host: '127.0.0.1', port, exportName: name });
    try {
      assert.equal(device.maximumIoBytes, 32 * 1024 * 1024);
      const data = pattern(3 * 1024 * 1024 + 512, 9);
      await device.write(data, 4096);
      const back = Buffer.alloc(data.length);
      await device.read(back, 4096);
      assert.ok(back.equals(data));
    } finally {
      await device.close();
    }
  });

  it('removing the export on the server makes the device fail with DISK_GONE', async () => {
    const name = exportMemory({ readOnly: false });
    const device = await openNbdDevice({ host: '127.0.0.1', port, exportName: name });
    try {
      await server.removeExport(name);
      await expectCode(device.read(Buffer.alloc(4096), 0), 'DISK_GONE');
    } finally {
      await device.close();
    }
  });
});
