/**
 * Runs the BlockDevice conformance suite on every device the disk layer offers, and tests what
 * is particular to FileDevice (opening, direct I/O modes, the portable fallback, errno mapping).
 */
import assert from 'node:assert/strict';
import { execFileSync, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { systemErrorToDiskError } from '../../src/disk/checks.js';
import { FaultInjectingDevice } from '../../src/disk/fault-device.js';
import { openFileDevice } from '../../src/disk/file-device.js';
import { MemoryDevice } from '../../src/disk/memory-device.js';
import {
  fallbackDiskNative,
  loadDiskNative,
  sysfsBlockDeviceGeometry,
} from '../../src/disk/native.js';
import { expectCode, pattern, runBlockDeviceConformance } from './disk-conformance.js';

const deviceSizeBytes = 8 * 1024 * 1024;
const temporaryDirectory = fs.mkdtempSync(path.join(os.tmpdir(), 'tandem-disk-'));
let fileCounter = 0;
after(() => fs.rmSync(temporaryDirectory, { recursive: true, force: true }));

/** A new sparse file of the suite's size; reads as zeroes. */
function sparseFile(sizeBytes = deviceSizeBytes): string {
  const filePath = path.join(temporaryDirectory, `device-${fileCounter++}.img`);
  fs.writeFileSync(filePath, '');
  fs.truncateSync(filePath, sizeBytes);
  return filePath;
}

function directIoSkipReason(): string | undefined {
  if (!loadDiskNative().isNative) return 'the native addon is not built (npm run build:native)';
  try {
    const fd = fs.openSync(sparseFile(4096), fs.constants.O_RDWR | fs.constants.O_DIRECT);
    fs.closeSync(fd);
    return undefined;
  } catch (error) {
    return `${temporaryDirectory} refuses O_DIRECT (${String(error)})`;
  }
}

function loopSkipReason(): string | undefined {
  if (process.platform !== 'linux') return 'loop devices are Linux-only';
  if (process.getuid?.() !== 0) return 'loop devices need root';
  const probe = spawnSync('losetup', ['--version'], { encoding: 'utf8' });
  if (probe.error !== undefined || probe.status !== 0) return 'losetup is not available';
  if (!fs.existsSync('/dev/loop-control')) return '/dev/loop-control is missing';
  return undefined;
}

/** A sparse-file-backed device per test, opened with `direct` as given. */
function fileFactory(direct: 'on' | 'off', native = loadDiskNative()) {
  let lastPath: string | undefined;
  return async ({ readOnly }: { readOnly: boolean }) => {
    // Read-only opens reuse the last file: it is just as zero, and proves read-only opening.
    const filePath = readOnly && lastPath !== undefined ? lastPath : sparseFile();
    lastPath = filePath;
    return openFileDevice(filePath, { direct, readOnly, native });
  };
}

runBlockDeviceConformance('buffered regular file', fileFactory('off'));
runBlockDeviceConformance(
  'regular file, portable fallback (no addon)',
  fileFactory('off', fallbackDiskNative),
);
runBlockDeviceConformance('O_DIRECT regular file', fileFactory('on'), {
  skip: directIoSkipReason(),
});

for (const sector of [512, 4096] as const) {
  runBlockDeviceConformance(
    `memory device, ${sector} B sectors`,
    async ({ readOnly }) =>
      new MemoryDevice({
        sizeBytes: deviceSizeBytes,
        logicalSectorSizeBytes: sector,
        alignmentBytes: sector === 4096 ? 4096 : 1,
        readOnly,
      }),
  );
}

runBlockDeviceConformance(
  'fault wrapper over memory (pass-through)',
  async ({ readOnly }) =>
    new FaultInjectingDevice(new MemoryDevice({ sizeBytes: deviceSizeBytes, readOnly })),
);
runBlockDeviceConformance(
  'fault wrapper over O_DIRECT file (pass-through)',
  async (options) => new FaultInjectingDevice(await fileFactory('on')(options)),
  { skip: directIoSkipReason() },
);

/** Attaches a loop device in `before` and always detaches it in `after`. */
function loopSuite(sectorBytes: 512 | 4096, direct: 'auto' | 'off'): void {
  let loopPath = '';
  const factory = async ({ readOnly }: { readOnly: boolean }) => {
    // Zero the whole device through the device itself, so page caches stay coherent.
    const writer = await openFileDevice(loopPath, { direct });
    try {
      await writer.writeZeroes(0, writer.sizeBytes);
      await writer.flush();
    } finally {
      await writer.close();
    }
    return openFileDevice(loopPath, { direct, readOnly });
  };
  runBlockDeviceConformance(`loop device, ${sectorBytes} B sectors, direct ${direct}`, factory, {
    skip: loopSkipReason(),
    before: async () => {
      const backing = sparseFile();
      loopPath = execFileSync(
        'losetup',
        ['--find', '--show', '--sector-size', String(sectorBytes), backing],
        { encoding: 'utf8' },
      ).trim();
    },
    after: async () => {
      if (loopPath !== '') execFileSync('losetup', ['--detach', loopPath]);
    },
  });
}

loopSuite(512, 'auto');
loopSuite(4096, 'auto');
loopSuite(4096, 'off');

describe('openFileDevice', () => {
  it('fails with NOT_FOUND for a missing path', async () => {
    await expectCode(openFileDevice(path.join(temporaryDirectory, 'missing')), 'NOT_FOUND');
  });

  it('refuses a directory', async () => {
    await expectCode(openFileDevice(temporaryDirectory), 'DISK_INVALID_ARGUMENT');
  });

  it("opens regular files buffered with direct 'auto'", async () => {
    const device = await openFileDevice(sparseFile());
    try {
      assert.equal(device.direct, false);
      assert.equal(device.kind, 'file');
      assert.equal(device.alignmentBytes, 1);
      assert.equal(device.capabilities.consistentAcrossConnections, true);
    } finally {
      await device.close();
    }
  });

  it("refuses direct 'on' without the addon", async () => {
    await expectCode(
      openFileDevice(sparseFile(), { direct: 'on', native: fallbackDiskNative }),
      'DISK_NOT_SUPPORTED',
    );
  });

  it('ends an O_DIRECT file at its last whole sector', { skip: directIoSkipReason() }, async () => {
    const device = await openFileDevice(sparseFile(deviceSizeBytes + 100), { direct: 'on' });
    try {
      assert.equal(device.direct, true);
      assert.equal(device.sizeBytes % device.alignmentBytes, 0);
      assert.equal(device.sizeBytes, deviceSizeBytes);
    } finally {
      await device.close();
    }
  });

  it('falls back to zero buffers and all-data status without the addon', async () => {
    const device = await openFileDevice(sparseFile(), { native: fallbackDiskNative });
    try {
      assert.equal(device.capabilities.fastZero, false);
      assert.equal(device.capabilities.blockStatus, false);
      await device.write(pattern(8192, 1), 0);
      await expectCode(device.writeZeroes(0, 4096, { fastOnly: true }), 'DISK_NOT_SUPPORTED');
      await device.writeZeroes(0, 4096);
      const buffer = Buffer.alloc(8192);
      await device.read(buffer, 0);
      assert.ok(buffer.subarray(0, 4096).every((byte) => byte === 0));
      assert.deepEqual(buffer.subarray(4096), pattern(8192, 1).subarray(4096));
      assert.deepEqual(await device.blockStatus(0, 65536), [
        { lengthBytes: 65536, hole: false, zero: false },
      ]);
      await device.discard(0, 4096);
    } finally {
      await device.close();
    }
  });
});

describe('block device geometry', { skip: loopSkipReason() }, () => {
  let loopPath = '';
  before(() => {
    loopPath = execFileSync(
      'losetup',
      ['--find', '--show', '--sector-size', '4096', sparseFile()],
      { encoding: 'utf8' },
    ).trim();
  });
  after(() => {
    if (loopPath !== '') execFileSync('losetup', ['--detach', loopPath]);
  });

  it('reads the same geometry from sysfs (fallback) as from the ioctls', async () => {
    const native = await openFileDevice(loopPath, { readOnly: true });
    const fallback = await openFileDevice(loopPath, { readOnly: true, native: fallbackDiskNative });
    try {
      assert.equal(native.kind, 'block');
      assert.equal(native.direct, loadDiskNative().isNative);
      assert.equal(native.sizeBytes, deviceSizeBytes);
      assert.equal(native.logicalSectorSizeBytes, 4096);
      assert.equal(fallback.direct, false, "'auto' is buffered without aligned buffers");
      assert.equal(fallback.alignmentBytes, 1);
      const geometry = await sysfsBlockDeviceGeometry(fs.statSync(loopPath).rdev);
      assert.deepEqual(geometry, {
        sizeBytes: native.sizeBytes,
        logicalSectorSizeBytes: native.logicalSectorSizeBytes,
        physicalSectorSizeBytes: native.physicalSectorSizeBytes,
      });
    } finally {
      await native.close();
      await fallback.close();
    }
  });
});

describe('systemErrorToDiskError', () => {
  const device = new MemoryDevice({ sizeBytes: 4096 });
  const systemError = (code: string) => Object.assign(new Error(code), { code });
  const cases: [string, string][] = [
    ['ENOSPC', 'DISK_NO_SPACE'],
    ['EDQUOT', 'DISK_NO_SPACE'],
    ['ENXIO', 'DISK_GONE'],
    ['ENODEV', 'DISK_GONE'],
    ['EIO', 'DISK_IO'],
    ['EROFS', 'DISK_READ_ONLY'],
    ['EOPNOTSUPP', 'DISK_NOT_SUPPORTED'],
  ];
  for (const [errno, code] of cases) {
    it(`maps ${errno} to ${code}, keeping the errno and the cause`, () => {
      const error = systemErrorToDiskError(systemError(errno), device, 'read', 0, 512);
      assert.equal(error.code, code);
      assert.equal(error.details['errno'], errno);
      assert.ok(error.cause instanceof Error);
    });
  }
  it('maps EIO on a vanished device to DISK_GONE', () => {
    const error = systemErrorToDiskError(systemError('EIO'), device, 'read', 0, 512, () => true);
    assert.equal(error.code, 'DISK_GONE');
  });
});
