/**
 * A real file system on a tandem export, through the kernel: nbdfuse shows the export as a
 * file, losetup makes it a block device, and ext4 lives on that. Files written in one attach
 * must read back identical in the next one (new nbdfuse, new loop device, so no cache can
 * answer), and again after the daemon restarted from its data dir.
 *
 * Needs root, /dev/fuse and free loop devices (the kernel nbd module is not needed). Every
 * mount, loop device, FUSE mount and nbdfuse process is undone in `after` even when a test
 * fails, in the only safe order: umount, losetup -d, fusermount3 -u, then nbdfuse exits.
 */
import assert from 'node:assert/strict';
import crypto from 'node:crypto';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
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
const exportSizeBytes = 256 * mebibyte;
const exportName = 'ext4';
/** The superblock starts at 1024; s_magic is 56 bytes into it. */
const ext4MagicOffsetBytes = 1024 + 56;
const ext4Magic = 0xef53;
/** nbdfuse connects and mounts within this, or the attach fails. */
const attachTimeoutMs = 15_000;
/** mkfs, fsck, mount and umount of a 256 MiB file system. */
const fileSystemCommandTimeoutMs = 90_000;
/** Last line of defence: no suite may run longer, whatever hangs. */
const suiteTimeoutMs = 150_000;

const requiredTools = ['nbdfuse', 'fusermount3', 'losetup', 'mkfs.ext4', 'fsck.ext4', 'mount'];
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

/**
 * An export seen as a block device: nbdfuse → loop device → (optionally) a mounted file system.
 * detach() undoes whatever was done, in order, and keeps going past a failed step.
 */
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
    assert.equal(fs.statSync(fuseFile).size, exportSizeBytes, 'the FUSE file has the export size');
    const losetup = expectSuccess(await runCommand('losetup', ['--find', '--show', fuseFile]));
    attachment.loopDevice = losetup.stdout.trim();
    assert.match(attachment.loopDevice, /^\/dev\/loop\d+$/);
    return attachment;
  }

  async mount(mountPoint: string): Promise<void> {
    fs.mkdirSync(mountPoint, { recursive: true });
    expectSuccess(
      await runCommand('mount', ['-t', 'ext4', this.loopDevice, mountPoint], {
        timeoutMs: fileSystemCommandTimeoutMs,
      }),
    );
    this.mountPoint = mountPoint;
  }

  async unmount(): Promise<void> {
    const mountPoint = this.mountPoint;
    if (mountPoint === undefined) return;
    const result = await runCommand('umount', [mountPoint], {
      timeoutMs: fileSystemCommandTimeoutMs,
    });
    if (result.code !== 0) {
      // Still undo it (lazily) so the loop device can go, then report the failure.
      await runCommand('umount', ['-l', mountPoint]);
      this.mountPoint = undefined;
      throw new Error(describeResult(result));
    }
    this.mountPoint = undefined;
  }

  /** Runs the clean-up step registered for this attachment (once). */
  release(): Promise<void> {
    return this.releaseStep?.run() ?? this.detach();
  }

  private async detach(): Promise<void> {
    const failures: unknown[] = [];
    const attempt = async (work: () => Promise<void>): Promise<void> => {
      try {
        await work();
      } catch (error) {
        failures.push(error);
      }
    };
    await attempt(() => this.unmount());
    if (this.loopDevice !== '') {
      const device = this.loopDevice;
      this.loopDevice = '';
      await attempt(async () => {
        expectSuccess(await runCommand('losetup', ['-d', device]));
      });
    }
    if (this.fuseMounted || mountsUnder(this.fuseDirectory).length > 0) {
      this.fuseMounted = false;
      await attempt(async () => {
        const result = await runCommand('fusermount3', ['-u', this.fuseDirectory]);
        if (result.code !== 0) {
          await runCommand('fusermount3', ['-u', '-z', this.fuseDirectory]);
          throw new Error(describeResult(result));
        }
      });
    }
    const nbdfuse = this.nbdfuse;
    this.nbdfuse = undefined;
    if (nbdfuse !== undefined) {
      // nbdfuse exits by itself once unmounted; a kill here means it did not.
      await attempt(async () => {
        try {
          await nbdfuse.waitForExit(10_000);
        } catch (error) {
          await nbdfuse.stop();
          throw error;
        }
      });
    }
    if (failures.length > 0) throw new AggregateError(failures, 'detach failed');
  }
}

/** Random files and a directory tree: relative path → SHA-256 of what was written. */
function writeFileTree(root: string): Map<string, string> {
  const written = new Map<string, string>();
  const put = (relativePath: string, sizeBytes: number): void => {
    const data = crypto.randomBytes(sizeBytes);
    fs.mkdirSync(path.dirname(path.join(root, relativePath)), { recursive: true });
    fs.writeFileSync(path.join(root, relativePath), data);
    written.set(relativePath, sha256(data));
  };
  put('big.bin', 24 * mebibyte);
  put('tree/a/b/c/deep.bin', mebibyte + 123);
  put('tree/empty', 0);
  for (let index = 0; index < 24; index++) {
    put(`tree/many/file-${index}.dat`, 1 + crypto.randomInt(256 * 1024));
  }
  return written;
}

/** Every regular file under `root` (lost+found aside): relative path → SHA-256. */
async function readFileTree(root: string): Promise<Map<string, string>> {
  const found = new Map<string, string>();
  const entries = fs.readdirSync(root, { recursive: true, withFileTypes: true });
  for (const entry of entries) {
    if (!entry.isFile()) continue;
    const full = path.join(entry.parentPath, entry.name);
    const relative = path.relative(root, full);
    if (relative.startsWith('lost+found')) continue;
    found.set(relative, await sha256File(full));
  }
  return sorted(found);
}

function sorted(map: Map<string, string>): Map<string, string> {
  return new Map([...map].sort(([left], [right]) => left.localeCompare(right)));
}

describe('ext4 on a loop device over nbdfuse', { skip, timeout: suiteTimeoutMs }, () => {
  const cleanup = new CleanupStack();
  let work: string;
  let dataDir: string;
  let backing: string;
  let daemon: DaemonHandle;
  let attachCount = 0;
  let written: Map<string, string> | undefined;

  async function attach(): Promise<LoopAttachment> {
    attachCount += 1;
    const uri = nbdUri(daemon.nbdHost, daemon.nbdPort, exportName);
    return LoopAttachment.attach(uri, path.join(work, `fuse-${attachCount}`), cleanup);
  }

  async function fsck(device: string): Promise<void> {
    const result = await runCommand('fsck.ext4', ['-f', '-n', device], {
      timeoutMs: fileSystemCommandTimeoutMs,
    });
    assert.equal(result.code, 0, `fsck finds the file system clean:\n${describeResult(result)}`);
  }

  async function assertNothingLeft(): Promise<void> {
    assert.deepEqual(mountsUnder(work), [], 'no mount left under the work directory');
    assert.deepEqual(await loopDevicesUnder(work), [], 'no loop device left on our files');
  }

  /** Mounts a fresh attachment, checks every file, unmounts, fscks and detaches. */
  async function verifyFiles(mountName: string): Promise<void> {
    assert.ok(written !== undefined, 'the first test wrote the files');
    const attachment = await attach();
    const mountPoint = path.join(work, mountName);
    await attachment.mount(mountPoint);
    assert.deepEqual(await readFileTree(mountPoint), sorted(written));
    await attachment.unmount();
    await fsck(attachment.loopDevice);
    await attachment.release();
    await assertNothingLeft();
  }

  before(async () => {
    work = makeTemporaryDirectory('tandem-nbd-loop-');
    cleanup.defer('remove the work directory', () =>
      fs.rmSync(work, { recursive: true, force: true }),
    );
    dataDir = path.join(work, 'data');
    fs.mkdirSync(dataDir);
    daemon = await startDaemon({ dataDir });
    cleanup.defer('stop the daemon', () => daemon.stop());
    backing = makeSparseFile(path.join(work, 'ext4.img'), exportSizeBytes);
    const added = await daemon.runCli(['export', 'add', '--name', exportName, '--file', backing]);
    assert.equal(added.code, 0, added.stderr);
  });

  after(async () => {
    try {
      await cleanup.runAll();
    } finally {
      await stopAllDaemons();
    }
    // After the clean-up: the work directory is gone, so look for its name anywhere.
    assert.deepEqual(mountsUnder(work), [], 'no mount left behind');
    assert.deepEqual(await loopDevicesUnder(work), [], 'no loop device left behind');
  });

  test('mkfs.ext4, mount, write a file tree, umount: fsck finds it clean', async () => {
    const attachment = await attach();
    expectSuccess(
      await runCommand('mkfs.ext4', ['-q', attachment.loopDevice], {
        timeoutMs: fileSystemCommandTimeoutMs,
      }),
    );
    const mountPoint = path.join(work, 'mount-1');
    await attachment.mount(mountPoint);
    const tree = writeFileTree(mountPoint);
    expectSuccess(await runCommand('sync', []));
    assert.deepEqual(await readFileTree(mountPoint), sorted(tree), 'files as written');
    await attachment.unmount();
    await fsck(attachment.loopDevice);
    await attachment.release();
    await assertNothingLeft();
    // The file system reached the file behind the export: ext4's magic is in its superblock.
    const superblock = Buffer.alloc(2);
    const handle = fs.openSync(backing, 'r');
    try {
      fs.readSync(handle, superblock, 0, 2, ext4MagicOffsetBytes);
    } finally {
      fs.closeSync(handle);
    }
    assert.equal(superblock.readUInt16LE(0), ext4Magic, 'ext4 superblock magic in the file');
    written = tree;
  });

  test('a new nbdfuse and loop device read every file back identical', async () => {
    await verifyFiles('mount-2');
  });

  test('after a daemon restart on the same data dir, the export is back with the files', async () => {
    assert.equal(await daemon.stop(), 0, 'SIGTERM stops the daemon with exit code 0');
    daemon = await startDaemon({ dataDir });
    const list = await daemon.runCli(['export', 'list', '--json']);
    assert.equal(list.code, 0, list.stderr);
    const exports: unknown = JSON.parse(list.stdout);
    assert.match(JSON.stringify(exports), new RegExp(`"name":"${exportName}"`));
    await verifyFiles('mount-3');
  });
});
