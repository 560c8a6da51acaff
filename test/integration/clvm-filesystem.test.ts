/**
 * ext4 on a clustered LV, grown from another host, as an operator would do it: the LV is active
 * exclusive on A and seen by the kernel as a loop device (nbdfuse shows the export as a file,
 * losetup makes it a block device); B runs `lv extend`; a new NBD connection to A sees the new
 * size, and resize2fs grows the file system into it without losing a byte.
 *
 * Needs root, /dev/fuse and free loop devices. Every mount, loop device, FUSE mount, nbdfuse
 * process and daemon is undone in `after` even when a test fails, in the only safe order:
 * umount, losetup -d, fusermount3 -u, nbdfuse exits, then the daemons stop.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkOk } from './helpers/clvm.js';
import {
  type DaemonHandle,
  makeTemporaryDirectory,
  startDaemon,
  stopAllDaemons,
} from './helpers/daemon.js';
import {
  type BackgroundProcess,
  type CommandResult,
  CleanupStack,
  type CleanupStep,
  describeResult,
  loopDevicesUnder,
  makeSparseFile,
  missingTools,
  mountsUnder,
  nbdUri,
  runCommand,
  sha256,
  sha256File,
  startBackground,
  waitFor,
} from './helpers/tools.js';

const mebibyte = 1024 * 1024;
const pvSizeBytes = 256 * mebibyte;
const lvSizeBytes = 64 * mebibyte;
const grownSizeBytes = 128 * mebibyte;
const exportName = 'vg0/fs';
/** nbdfuse connects and mounts within this, or the attach fails. */
const attachTimeoutMs = 15_000;
/** mkfs, e2fsck, resize2fs, mount and umount of a 128 MiB file system. */
const fileSystemCommandTimeoutMs = 90_000;
/** A change committed on B reaches A's export within this (push, or A's poll every 500 ms). */
const seenWithinMs = 5_000;
const suiteTimeoutMs = 240_000;

const requiredTools = [
  'nbdfuse',
  'fusermount3',
  'losetup',
  'blockdev',
  'mkfs.ext4',
  'e2fsck',
  'resize2fs',
  'dumpe2fs',
  'mount',
  'nbdinfo',
];
function skipReason(): string | false {
  const missing = missingTools(requiredTools);
  if (missing.length > 0) return `missing tools: ${missing.join(', ')}`;
  if (process.getuid?.() !== 0) return 'needs root (losetup, mount)';
  if (!fs.existsSync('/dev/fuse')) return 'needs /dev/fuse';
  return false;
}
const skip = skipReason();

function expectSuccess(result: CommandResult): CommandResult {
  assert.ok(result.code === 0 && !result.timedOut, describeResult(result));
  return result;
}

function runFileSystemCommand(command: string, args: readonly string[]): Promise<CommandResult> {
  return runCommand(command, args, { timeoutMs: fileSystemCommandTimeoutMs });
}

/** An export seen as a block device: nbdfuse, then a loop device, then maybe a mount. */
class LoopAttachment {
  private nbdfuse: BackgroundProcess | undefined;
  private fuseMounted = false;
  loopDevice = '';
  private mountPoint: string | undefined;
  private releaseStep: CleanupStep | undefined;

  private constructor(private readonly fuseDirectory: string) {}

  static async attach(
    uri: string,
    fuseDirectory: string,
    cleanup: CleanupStack,
  ): Promise<LoopAttachment> {
    fs.mkdirSync(fuseDirectory, { recursive: true });
    const attachment = new LoopAttachment(fuseDirectory);
    // Registered before anything exists, so a failure half-way is still undone.
    attachment.releaseStep = cleanup.defer(`detach ${fuseDirectory}`, () => attachment.detach());
    const fuseFile = path.join(fuseDirectory, 'nbd');
    const nbdfuse = startBackground('nbdfuse', [fuseFile, uri]);
    attachment.nbdfuse = nbdfuse;
    await waitFor(
      () => {
        const exit = nbdfuse.exit();
        if (exit !== undefined) {
          throw new Error(`nbdfuse exited (${exit.code ?? exit.signal}): ${nbdfuse.stderr()}`);
        }
        attachment.fuseMounted = mountsUnder(fuseDirectory).length > 0;
        return attachment.fuseMounted && fs.existsSync(fuseFile);
      },
      { timeoutMs: attachTimeoutMs, intervalMs: 100, description: `nbdfuse to show ${fuseFile}` },
    );
    const losetup = expectSuccess(await runCommand('losetup', ['--find', '--show', fuseFile]));
    attachment.loopDevice = losetup.stdout.trim();
    assert.match(attachment.loopDevice, /^\/dev\/loop\d+$/);
    return attachment;
  }

  async sizeBytes(): Promise<number> {
    const result = expectSuccess(await runCommand('blockdev', ['--getsize64', this.loopDevice]));
    return Number(result.stdout.trim());
  }

  async mount(mountPoint: string): Promise<void> {
    fs.mkdirSync(mountPoint, { recursive: true });
    expectSuccess(await runFileSystemCommand('mount', ['-t', 'ext4', this.loopDevice, mountPoint]));
    this.mountPoint = mountPoint;
  }

  async unmount(): Promise<void> {
    const mountPoint = this.mountPoint;
    if (mountPoint === undefined) return;
    this.mountPoint = undefined;
    const result = await runFileSystemCommand('umount', [mountPoint]);
    if (result.code !== 0) {
      // Still undo it (lazily) so the loop device can go, then report the failure.
      await runCommand('umount', ['-l', mountPoint]);
      throw new Error(describeResult(result));
    }
  }

  /** Runs the clean-up step registered for this attachment (once). */
  release(): Promise<void> {
    return this.releaseStep?.run() ?? this.detach();
  }

  private async detach(): Promise<void> {
    const failures: unknown[] = [];
    const attempt = async (work: () => Promise<unknown>): Promise<void> => {
      try {
        await work();
      } catch (error) {
        failures.push(error);
      }
    };
    await attempt(() => this.unmount());
    const device = this.loopDevice;
    this.loopDevice = '';
    if (device !== '') {
      await attempt(async () => expectSuccess(await runCommand('losetup', ['-d', device])));
    }
    if (this.fuseMounted || mountsUnder(this.fuseDirectory).length > 0) {
      this.fuseMounted = false;
      await attempt(async () => {
        const result = await runCommand('fusermount3', ['-u', this.fuseDirectory]);
        if (result.code === 0) return;
        await runCommand('fusermount3', ['-u', '-z', this.fuseDirectory]);
        throw new Error(describeResult(result));
      });
    }
    const nbdfuse = this.nbdfuse;
    this.nbdfuse = undefined;
    if (nbdfuse !== undefined) {
      // nbdfuse exits by itself once unmounted; a kill here means it did not.
      await attempt(() => nbdfuse.waitForExit(10_000).catch(() => nbdfuse.stop()));
    }
    if (failures.length > 0) throw new AggregateError(failures, 'detach failed');
  }
}

/** Writes `count` random files named `prefix-N.bin`; returns relative path → SHA-256. */
function writeFiles(root: string, prefix: string, count: number, sizeBytes: number) {
  const written = new Map<string, string>();
  for (let index = 0; index < count; index++) {
    const data = crypto.randomBytes(sizeBytes - crypto.randomInt(4096));
    const name = `${prefix}-${index}.bin`;
    fs.writeFileSync(path.join(root, name), data);
    written.set(name, sha256(data));
  }
  return written;
}

/** Every regular file in `root` (lost+found aside): name → SHA-256, sorted by name. */
async function readFiles(root: string): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  for (const entry of fs.readdirSync(root, { withFileTypes: true })) {
    if (entry.isFile()) found.set(entry.name, await sha256File(path.join(root, entry.name)));
  }
  return sorted(found);
}

function sorted(map: ReadonlyMap<string, string>): Map<string, string> {
  return new Map([...map].sort(([left], [right]) => left.localeCompare(right)));
}

/** The file system's size from its superblock: block count × block size. */
async function fileSystemSizeBytes(device: string): Promise<number> {
  const output = expectSuccess(await runFileSystemCommand('dumpe2fs', ['-h', device])).stdout;
  const count = /^Block count:\s+(\d+)$/m.exec(output)?.[1];
  const size = /^Block size:\s+(\d+)$/m.exec(output)?.[1];
  assert.ok(count !== undefined && size !== undefined, `dumpe2fs -h:\n${output}`);
  return Number(count) * Number(size);
}

describe(
  'ext4 on a clustered LV, grown from another host',
  { skip, timeout: suiteTimeoutMs },
  () => {
    const cleanup = new CleanupStack();
    let work = '';
    let a: DaemonHandle;
    let b: DaemonHandle;
    let attachCount = 0;
    let written = new Map<string, string>();

    async function startHost(hostName: string, pvDirectory: string): Promise<DaemonHandle> {
      const daemon = await startDaemon({ hostName, extraArgs: ['--vg-dir', pvDirectory] });
      cleanup.defer(`stop daemon ${hostName}`, () => daemon.stop());
      return daemon;
    }

    function attach(): Promise<LoopAttachment> {
      attachCount += 1;
      const uri = nbdUri(a.nbdHost, a.nbdPort, exportName);
      return LoopAttachment.attach(uri, path.join(work, `fuse-${attachCount}`), cleanup);
    }

    async function exportSizeBytes(): Promise<number> {
      const info = await runCommand('nbdinfo', [
        '--size',
        nbdUri(a.nbdHost, a.nbdPort, exportName),
      ]);
      return Number(expectSuccess(info).stdout.trim());
    }

    async function assertNothingLeft(): Promise<void> {
      assert.deepEqual(mountsUnder(work), [], 'no mount left under the work directory');
      assert.deepEqual(await loopDevicesUnder(work), [], 'no loop device left on our files');
    }

    before(async () => {
      work = makeTemporaryDirectory('tandem-clvm-fs-');
      cleanup.defer('remove the work directory', () =>
        fs.rmSync(work, { recursive: true, force: true }),
      );
      const pvDirectory = path.join(work, 'pvs');
      fs.mkdirSync(pvDirectory);
      const pvs = [1, 2].map((index) =>
        makeSparseFile(path.join(pvDirectory, `pv${index}.img`), pvSizeBytes),
      );
      a = await startHost('a', pvDirectory);
      checkOk(
        await a.runCli([
          'vg',
          'create',
          'vg0',
          ...pvs,
          '--io-timeout',
          '500',
          '--max-hosts',
          '8',
          '--max-lvs',
          '64',
        ]),
        'vg create',
      );
      checkOk(await a.runCli(['lv', 'create', '-n', 'fs', '-L', '64M', 'vg0']), 'lv create');
      // B finds the VG in --vg-dir when it starts, and has joined its lockspace once ready.
      b = await startHost('b', pvDirectory);
      const activated = checkOk(
        await a.runCli(['lv', 'activate', exportName, '--exclusive']),
        'lv activate',
      );
      assert.match(activated, /vg0\/fs/);
    });

    after(async () => {
      try {
        await cleanup.runAll();
      } finally {
        await stopAllDaemons();
      }
      assert.deepEqual(mountsUnder(work), [], 'no mount left behind');
      assert.deepEqual(await loopDevicesUnder(work), [], 'no loop device left behind');
    });

    test('mkfs.ext4 on the 64 MiB LV, mount, write files, umount', async () => {
      const attachment = await attach();
      assert.equal(await attachment.sizeBytes(), lvSizeBytes, 'the loop device has the LV size');
      expectSuccess(await runFileSystemCommand('mkfs.ext4', ['-q', attachment.loopDevice]));
      assert.equal(await fileSystemSizeBytes(attachment.loopDevice), lvSizeBytes);
      const mountPoint = path.join(work, 'mount-1');
      await attachment.mount(mountPoint);
      const files = writeFiles(mountPoint, 'first', 6, 4 * mebibyte);
      assert.deepEqual(await readFiles(mountPoint), sorted(files), 'files as written');
      await attachment.unmount();
      await attachment.release();
      await assertNothingLeft();
      written = files;
    });

    test('lv extend +64M on B: A serves 128 MiB to a new connection', async () => {
      assert.ok(written.size > 0, 'the first test wrote the files');
      // An attachment open across the extend: its connection keeps the size it negotiated.
      const attachment = await attach();
      const extended = checkOk(
        await b.runCli(['lv', 'extend', '-L', '+64M', exportName]),
        'extend',
      );
      assert.match(extended, /vg0\/fs/);
      await waitFor(async () => (await exportSizeBytes()) === grownSizeBytes, {
        timeoutMs: seenWithinMs,
        intervalMs: 100,
        description: 'the export on A has the new size',
      });
      assert.equal(await attachment.sizeBytes(), lvSizeBytes, 'the old connection keeps its size');
      await attachment.release();
      const reattached = await attach();
      assert.equal(await reattached.sizeBytes(), grownSizeBytes, 'a new loop device is 128 MiB');
      await reattached.release();
      await assertNothingLeft();
    });

    test('resize2fs grows ext4 to 128 MiB: files intact, more than 64 MiB fit, fsck clean', async () => {
      const attachment = await attach();
      const device = attachment.loopDevice;
      assert.equal(await attachment.sizeBytes(), grownSizeBytes);
      // resize2fs wants a freshly checked file system.
      expectSuccess(await runFileSystemCommand('e2fsck', ['-f', '-y', device]));
      const resized = expectSuccess(await runFileSystemCommand('resize2fs', [device]));
      assert.match(resized.stdout + resized.stderr, /is now \d+ .*blocks long/);
      assert.equal(
        await fileSystemSizeBytes(device),
        grownSizeBytes,
        'the superblock says 128 MiB',
      );
      const mountPoint = path.join(work, 'mount-2');
      await attachment.mount(mountPoint);
      const statistics = fs.statfsSync(mountPoint);
      assert.ok(
        statistics.blocks * statistics.bsize > lvSizeBytes,
        `statfs reports more than 64 MiB (${statistics.blocks} blocks of ${statistics.bsize})`,
      );
      assert.deepEqual(await readFiles(mountPoint), sorted(written), 'files intact after resize');
      // 24 + 48 MiB: more than the old file system could hold.
      const more = writeFiles(mountPoint, 'second', 12, 4 * mebibyte);
      const all = sorted(new Map([...written, ...more]));
      assert.deepEqual(await readFiles(mountPoint), all, 'old and new files');
      await attachment.unmount();
      const check = await runFileSystemCommand('fsck.ext4', ['-f', '-n', device]);
      assert.equal(check.code, 0, `fsck finds the file system clean:\n${describeResult(check)}`);
      await attachment.release();
      // And once more through a fresh connection, so no page cache answers.
      const fresh = await attach();
      await fresh.mount(path.join(work, 'mount-3'));
      assert.deepEqual(await readFiles(path.join(work, 'mount-3')), all, 'read back anew');
      await fresh.release();
      await assertNothingLeft();
    });
  },
);
