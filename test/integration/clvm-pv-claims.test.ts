/**
 * Two hosts that make VGs of the same free PVs at the same moment (src/clvm/pv-claim.ts): at
 * most one `vg create` goes on, the other fails with a message and writes no VG there, and both
 * hosts then see one whole VG whose lockspace works. lvmlockd has its global lock for this; the
 * first VG of a cluster has no lockspace yet, so tandem claims the PVs in their labels.
 */
import assert from 'node:assert/strict';
import fs from 'node:fs';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { checkOk } from './helpers/clvm.js';
import {
  type CliResult,
  type DaemonHandle,
  makeTemporaryDirectory,
  startDaemon,
  stopAllDaemons,
} from './helpers/daemon.js';
import { CleanupStack, makeSparseFile, waitFor } from './helpers/tools.js';

const mebibyte = 1024 * 1024;

interface VgRow {
  name: string;
  pvCount: number;
  joined: boolean;
}

describe('racing vg creates on the same PVs', { timeout: 180_000 }, () => {
  const cleanup = new CleanupStack();
  let work = '';
  let pvDirectory = '';
  const hosts: DaemonHandle[] = [];
  const pv = (index: number): string => path.join(pvDirectory, `pv${index}.img`);

  async function vgs(host: DaemonHandle): Promise<VgRow[]> {
    const output = checkOk(await host.runCli(['vg', 'list', '--json']), 'vg list');
    return (JSON.parse(output) as { vgs: VgRow[] }).vgs;
  }

  before(async () => {
    work = makeTemporaryDirectory('tandem-pv-claims-');
    cleanup.defer('remove the work directory', () =>
      fs.rmSync(work, { recursive: true, force: true }),
    );
    pvDirectory = path.join(work, 'pvs');
    fs.mkdirSync(pvDirectory);
    for (const index of [1, 2]) makeSparseFile(pv(index), 128 * mebibyte);
    for (const name of ['a', 'b']) {
      const dataDir = path.join(work, `data-${name}`);
      fs.mkdirSync(dataDir);
      hosts.push(
        await startDaemon({ dataDir, hostName: name, extraArgs: ['--vg-dir', pvDirectory] }),
      );
    }
  });

  after(async () => {
    try {
      await stopAllDaemons();
    } finally {
      await cleanup.runAll();
    }
  });

  test('at most one of two simultaneous creates wins; the VG is whole on both hosts', async () => {
    const [a, b] = hosts;
    assert.ok(a !== undefined && b !== undefined);
    for (const index of [1, 2]) checkOk(await a.runCli(['pv', 'create', pv(index)]), 'pv create');
    const create = (host: DaemonHandle, name: string): Promise<CliResult> =>
      host.runCli(['vg', 'create', name, pv(1), pv(2), '--io-timeout', '250']);
    const results = await Promise.all([create(a, 'vga'), create(b, 'vgb')]);
    const winners = results.filter((result) => result.code === 0);
    assert.ok(winners.length <= 1, `both creates succeeded: ${JSON.stringify(results)}`);
    for (const result of results) {
      if (result.code === 0) continue;
      assert.match(
        result.stderr,
        /claimed by|PV_CLAIM_LOST|not free|already a PV of VG/,
        `the loser says why: ${result.stderr}`,
      );
    }
    let name = results[0]?.code === 0 ? 'vga' : 'vgb';
    if (winners.length === 0) {
      // Both lost (each held one PV when the other looked): their claims were cleared, so a
      // create run again alone goes on at once.
      checkOk(await create(a, 'vga'), 'vg create run again');
      name = 'vga';
    }
    for (const host of [a, b]) {
      await waitFor(
        async () => {
          const rows = await vgs(host);
          return rows.length === 1 && rows[0]?.name === name && rows[0]?.joined === true;
        },
        { timeoutMs: 30_000, intervalMs: 250, description: `${name} alone and joined` },
      );
      const [row] = await vgs(host);
      assert.equal(row?.pvCount, 2, 'the VG holds both PVs');
    }
    // The lockspace the winner formatted is the one both hosts joined: an LV created on one
    // host is active there and refused on the other.
    checkOk(await a.runCli(['lv', 'create', '-n', 'disk0', '-L', '8M', name]), 'lv create');
    checkOk(await a.runCli(['lv', 'activate', `${name}/disk0`, '--exclusive']), 'activate on a');
    await waitFor(
      async () => (await b.runCli(['lv', 'list', '--json'])).stdout.includes('"disk0"'),
      { timeoutMs: 30_000, intervalMs: 250, description: 'b sees disk0' },
    );
    const refused = await b.runCli(['lv', 'activate', `${name}/disk0`, '--exclusive']);
    assert.notEqual(refused.code, 0, 'b may not activate what a holds');
    assert.match(refused.stderr, /active on a|host a|\ba \(host id/, refused.stderr);
  });
});
