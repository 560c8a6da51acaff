/**
 * Two hosts that make (vg create) or rename to (vg rename) the same VG name at the same moment,
 * on different PVs: the PV claims do not order them, the VG name lock does
 * (src/server/vg-name-lock.ts). Exactly one wins each race, the other fails with VG_EXISTS, and
 * both hosts then list one VG of that name (never VG_INCONSISTENT, "two VGs are named ...").
 * First with a global lockspace (`--lockspace`), then without one: the lease then lives in the
 * lockspace of the one VG both hosts joined.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkFails, checkOk } from './helpers/clvm.js';
import {
  type CliResult,
  type DaemonHandle,
  makeTemporaryDirectory,
  runCli,
  startDaemon,
  stopAllDaemons,
} from './helpers/daemon.js';
import { CleanupStack, makeSparseFile, waitFor } from './helpers/tools.js';

const mebibyte = 1024 * 1024;
const rounds = 3;
/** Small, fast VGs: T = 250 ms, a small lockspace. */
const vgOptions = ['--io-timeout', '250', '--max-hosts', '8', '--max-lvs', '16'];

interface VgRow {
  name: string;
  joined: boolean;
}

async function vgsOf(host: DaemonHandle): Promise<VgRow[]> {
  const output = checkOk(await host.runCli(['vg', 'list', '--json']), 'vg list');
  return (JSON.parse(output) as { vgs: VgRow[] }).vgs;
}

/** Waits until `host` lists exactly `count` VGs named `name` (and, if any, joined). */
async function waitForVgCount(host: DaemonHandle, name: string, count: number): Promise<void> {
  await waitFor(
    async () => {
      const named = (await vgsOf(host)).filter((row) => row.name === name);
      return named.length === count && named.every((row) => row.joined);
    },
    { timeoutMs: 20_000, intervalMs: 100, description: `${count} VG(s) named ${name} joined` },
  );
}

/** Asserts exactly one of two racing commands succeeded and the other said VG_EXISTS. */
function checkOneWins(results: readonly CliResult[], name: string, what: string): number {
  const winners = results.filter((result) => result.code === 0);
  assert.equal(winners.length, 1, `exactly one ${what} wins: ${JSON.stringify(results)}`);
  const winner = results.findIndex((result) => result.code === 0);
  const loser = results[1 - winner];
  assert.ok(loser !== undefined);
  checkFails(loser, new RegExp(`a VG named ${name} exists.*\\(VG_EXISTS\\)`), `the losing ${what}`);
  return winner;
}

/** Two daemons on one PV directory, `--lockspace` given or not. */
class TwoHosts {
  readonly cleanup = new CleanupStack();
  work = '';
  pvDirectory = '';
  hosts: DaemonHandle[] = [];

  pv(index: number): string {
    return path.join(this.pvDirectory, `pv${index}.img`);
  }

  async start(prefix: string, pvCount: number, globalLockspace: boolean): Promise<void> {
    this.work = makeTemporaryDirectory(prefix);
    this.cleanup.defer('remove the work directory', () =>
      fs.rmSync(this.work, { recursive: true, force: true }),
    );
    this.pvDirectory = path.join(this.work, 'pvs');
    fs.mkdirSync(this.pvDirectory);
    for (let index = 1; index <= pvCount; index++) makeSparseFile(this.pv(index), 64 * mebibyte);
    const extraArgs = ['--vg-dir', this.pvDirectory];
    if (globalLockspace) {
      const lockspace = path.join(this.work, 'global.img');
      const init = ['lockspace', 'init', lockspace, '--max-hosts', '8', '--profile', 'fast'];
      checkOk(await runCli(init), 'lockspace init');
      extraArgs.push('--lockspace', lockspace);
    }
    this.hosts = await Promise.all(
      ['a', 'b'].map((name) => {
        const dataDir = path.join(this.work, `data-${name}`);
        fs.mkdirSync(dataDir);
        return startDaemon({ dataDir, hostName: name, extraArgs });
      }),
    );
  }

  pair(): [DaemonHandle, DaemonHandle] {
    const [a, b] = this.hosts;
    assert.ok(a !== undefined && b !== undefined);
    return [a, b];
  }

  /**
   * Rounds of `vg create NAME` on A (on pvA) and B (on pvB) at once: one wins, and the VG is
   * removed again for the next round. Returns how many rounds each host won.
   */
  async raceCreates(name: string, pvA: string, pvB: string): Promise<number[]> {
    const [a, b] = this.pair();
    const wins = [0, 0];
    for (let round = 1; round <= rounds; round++) {
      const results = await Promise.all([
        a.runCli(['vg', 'create', name, pvA, ...vgOptions]),
        b.runCli(['vg', 'create', name, pvB, ...vgOptions]),
      ]);
      const winner = checkOneWins(results, name, `vg create (round ${round})`);
      wins[winner] = (wins[winner] ?? 0) + 1;
      for (const host of [a, b]) await waitForVgCount(host, name, 1);
      checkOk(await (winner === 0 ? a : b).runCli(['vg', 'remove', name]), 'vg remove');
      for (const host of [a, b]) await waitForVgCount(host, name, 0);
    }
    return wins;
  }

  async stop(): Promise<void> {
    try {
      await stopAllDaemons();
    } finally {
      await this.cleanup.runAll();
    }
  }
}

describe('racing VG names with a global lockspace', { timeout: 240_000 }, () => {
  const cluster = new TwoHosts();
  before(() => cluster.start('tandem-vg-names-global-', 4, true));
  after(() => cluster.stop());

  test('vg create of one name on different PVs: one wins each round', async () => {
    const wins = await cluster.raceCreates('vgx', cluster.pv(1), cluster.pv(2));
    assert.equal((wins[0] ?? 0) + (wins[1] ?? 0), rounds);
    const [a, b] = cluster.pair();
    const logs = a.stderr() + b.stderr();
    assert.match(logs, /"message":"VG name lock taken".*"where":"the global lockspace"/);
  });

  test('vg rename of two VGs to one name: one wins', async () => {
    const [a, b] = cluster.pair();
    checkOk(await a.runCli(['vg', 'create', 'vg1', cluster.pv(3), ...vgOptions]), 'vg create');
    checkOk(await b.runCli(['vg', 'create', 'vg2', cluster.pv(4), ...vgOptions]), 'vg create');
    for (const host of [a, b]) {
      await waitForVgCount(host, 'vg1', 1);
      await waitForVgCount(host, 'vg2', 1);
    }
    const results = await Promise.all([
      a.runCli(['vg', 'rename', 'vg1', 'vgn']),
      b.runCli(['vg', 'rename', 'vg2', 'vgn']),
    ]);
    const winner = checkOneWins(results, 'vgn', 'vg rename');
    const kept = winner === 0 ? 'vg2' : 'vg1';
    for (const host of [a, b]) {
      await waitForVgCount(host, 'vgn', 1);
      await waitForVgCount(host, kept, 1);
      const names = (await vgsOf(host)).map((row) => row.name).sort();
      assert.deepEqual(names, [kept, 'vgn'].sort(), 'vgn and the VG not renamed');
    }
  });
});

describe('racing VG names without a global lockspace', { timeout: 240_000 }, () => {
  const cluster = new TwoHosts();
  before(() => cluster.start('tandem-vg-names-vg-', 3, false));
  after(() => cluster.stop());

  test("vg create of one name: serialised by the one VG's lockspace", async () => {
    const [a, b] = cluster.pair();
    // The first VG of the cluster is made without the name lock: there is no lockspace yet.
    checkOk(await a.runCli(['vg', 'create', 'vg0', cluster.pv(1), ...vgOptions]), 'vg create');
    assert.match(a.stderr(), /no lockspace for the VG name lock: going on without it/);
    for (const host of [a, b]) await waitForVgCount(host, 'vg0', 1);
    const wins = await cluster.raceCreates('vgx', cluster.pv(2), cluster.pv(3));
    assert.equal((wins[0] ?? 0) + (wins[1] ?? 0), rounds);
    for (const host of [a, b]) {
      assert.match(
        host.stderr(),
        /"message":"VG name lock taken".*"where":"the lockspace of VG vg0"/,
        'each host took the lease in vg0',
      );
    }
  });
});
