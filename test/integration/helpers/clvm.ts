/**
 * What the clustered-VG integration tests share: CLI result checks, the shared storage of a
 * several-daemon cluster, and reading a VG straight from its PV files (not through any daemon)
 * to check what is really on disk.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { type VgRead, readVgMetadata, scanDevices } from '../../../src/clvm/metadata-store.js';
import type { VgMetadata } from '../../../src/clvm/types.js';
import { validateVgMetadata } from '../../../src/clvm/vg-operations.js';
import { openFileDevice } from '../../../src/disk/file-device.js';
import {
  type CliResult,
  type DaemonHandle,
  makeTemporaryDirectory,
  runCli,
  startDaemon,
} from './daemon.js';
import { type CleanupStack, makeSparseFile, waitFor } from './tools.js';

/** The storage every daemon of a test cluster shares (see makeSharedStorage). */
export interface SharedStorage {
  readonly directory: string;
  /** Every daemon scans it (`--vg-dir`). */
  readonly pvDirectory: string;
  /** The global lockspace every daemon joins (`--lockspace`), so that a new VG is pushed at once. */
  readonly globalLockspace: string;
  /** The path of PV file `index` (1-based). */
  pv(index: number): string;
}

/**
 * A temporary directory, removed by `cleanup`, with `pvCount` sparse PV files pvs/pvN.img and a
 * global lockspace (fast profile, 8 hosts).
 */
export async function makeSharedStorage(
  options: { readonly prefix: string; readonly pvCount: number; readonly pvSizeBytes: number },
  cleanup: CleanupStack,
): Promise<SharedStorage> {
  const directory = makeTemporaryDirectory(options.prefix);
  cleanup.defer('remove the test directory', () =>
    fs.rmSync(directory, { recursive: true, force: true }),
  );
  const pvDirectory = path.join(directory, 'pvs');
  fs.mkdirSync(pvDirectory);
  const pv = (index: number): string => path.join(pvDirectory, `pv${index}.img`);
  for (let index = 1; index <= options.pvCount; index++) {
    makeSparseFile(pv(index), options.pvSizeBytes);
  }
  const globalLockspace = path.join(directory, 'global.img');
  const init = ['lockspace', 'init', globalLockspace, '--max-hosts', '8', '--profile', 'fast'];
  checkOk(await runCli(init), 'lockspace init');
  return { directory, pvDirectory, globalLockspace, pv };
}

/** A row of `vg list --json`. */
export interface VgRow {
  readonly name: string;
  readonly uuid: string;
  readonly seqno: string | number;
  readonly joined: boolean;
  readonly lvCount: number;
}

export async function vgsOf(daemon: DaemonHandle): Promise<VgRow[]> {
  const output = checkOk(await daemon.runCli(['vg', 'list', '--json']), 'vg list');
  return (JSON.parse(output) as { vgs: VgRow[] }).vgs;
}

/** The daemons of a test cluster on one SharedStorage, by host name. */
export class TestCluster {
  readonly daemons = new Map<string, DaemonHandle>();

  constructor(readonly storage: SharedStorage) {}

  daemon(name: string): DaemonHandle {
    const found = this.daemons.get(name);
    assert.ok(found !== undefined, `daemon ${name} not started`);
    return found;
  }

  /** Starts host `name` on the shared storage (again on `dataDir`, for a restart). */
  async startHost(name: string, dataDir?: string): Promise<DaemonHandle> {
    const handle = await startDaemon({
      hostName: name,
      ...(dataDir === undefined ? {} : { dataDir }),
      extraArgs: [
        '--vg-dir',
        this.storage.pvDirectory,
        '--lockspace',
        this.storage.globalLockspace,
      ],
    });
    this.daemons.set(name, handle);
    return handle;
  }

  /** Waits until each host named has joined the lockspace of `vgName` (of this uuid, if given). */
  async waitForJoined(names: readonly string[], vgName: string, vgUuid?: string): Promise<void> {
    for (const name of names) {
      await waitFor(
        async () =>
          (await vgsOf(this.daemon(name))).some(
            (vg) => vg.name === vgName && vg.joined && (vgUuid === undefined || vg.uuid === vgUuid),
          ),
        { timeoutMs: 20_000, intervalMs: 100, description: `${name} joined ${vgName}` },
      );
    }
  }
}

/** Reads the VG straight from the PV files (not through any daemon) and checks every invariant. */
export async function validVgOnDisk(pvDirectory: string): Promise<VgMetadata> {
  return validateVgMetadata((await readVgOnDisk(pvDirectory)).metadata);
}

/** Asserts the CLI succeeded; returns its stdout. */
export function checkOk(result: CliResult, what: string): string {
  assert.equal(result.code, 0, `${what} failed:\n${result.stdout}\n${result.stderr}`);
  return result.stdout;
}

/** Asserts the CLI failed with stderr matching `pattern`. */
export function checkFails(result: CliResult, pattern: RegExp, what: string): void {
  assert.notEqual(result.code, 0, `${what} should fail:\n${result.stdout}`);
  assert.match(result.stderr, pattern, `${what}:\n${result.stderr}`);
}

/** Reads the one VG on the PV files in `directory`, opened read-only. */
export async function readVgOnDisk(directory: string): Promise<VgRead> {
  const paths = fs.readdirSync(directory).map((name) => path.join(directory, name));
  const devices = await Promise.all(
    paths.map(async (pvPath) => ({
      path: pvPath,
      device: await openFileDevice(pvPath, { readOnly: true }),
    })),
  );
  try {
    const scanned = await scanDevices(devices);
    assert.equal(scanned.byVg.size, 1, 'one VG on the PVs');
    return await readVgMetadata([...scanned.byVg.values()][0] ?? []);
  } finally {
    await Promise.all(devices.map(({ device }) => device.close()));
  }
}
