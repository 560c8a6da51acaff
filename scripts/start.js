#!/usr/bin/env node
// `npm start`: the embedded default host for a newcomer. Runs tandemd in the foreground with
// its data under ./data, and the first time makes two sparse 8 GiB PV files under ./data/pvs
// and a volume group `vg0` on them, so that `npx tandem lv create -n vm1-disk0 -L 1G vg0` works
// right away. Flags after `npm start --` go to tandemd.
//
// tandemd scans ./data/pvs (--vg-dir) at every start, so vg0 is found again after a restart.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const dataDir = path.join(root, 'data');
const pvDir = path.join(dataDir, 'pvs');
const pvSizeBytes = 8 * 1024 ** 3;
const pvPaths = ['pv0.img', 'pv1.img'].map((name) => path.join(pvDir, name));

fs.mkdirSync(pvDir, { recursive: true });
const firstStart = pvPaths.every((pvPath) => !fs.existsSync(pvPath));
if (firstStart) {
  for (const pvPath of pvPaths) {
    fs.closeSync(fs.openSync(pvPath, 'w'));
    fs.truncateSync(pvPath, pvSizeBytes);
  }
}

const daemon = spawn(
  process.execPath,
  [
    path.join(root, 'bin', 'tandemd.js'),
    '--data-dir',
    dataDir,
    '--vg-dir',
    pvDir,
    ...process.argv.slice(2),
  ],
  { stdio: ['ignore', 'pipe', 'inherit'] },
);
for (const signal of ['SIGINT', 'SIGTERM']) process.on(signal, () => daemon.kill(signal));
daemon.on('exit', (code, signal) => process.exit(code ?? (signal === null ? 1 : 128 + 15)));

let buffered = '';
daemon.stdout.on('data', (chunk) => {
  process.stdout.write(chunk);
  buffered += chunk.toString('utf8');
  const ready = /tandemd ready grpc=(\S+)/.exec(buffered);
  if (ready === null || ready[1] === undefined) return;
  buffered = '';
  daemon.stdout.removeAllListeners('data');
  daemon.stdout.pipe(process.stdout);
  if (firstStart) createVolumeGroup(ready[1]);
});

function createVolumeGroup(grpcAddress) {
  const cli = path.join(root, 'bin', 'tandem.js');
  const result = spawnSync(
    process.execPath,
    [cli, '--server', grpcAddress, 'vg', 'create', 'vg0', ...pvPaths],
    {
      encoding: 'utf8',
    },
  );
  if (result.status !== 0) {
    process.stderr.write(`start: creating vg0 failed:\n${result.stdout}${result.stderr}`);
    return;
  }
  process.stdout.write(
    `${result.stdout}start: volume group vg0 is ready on ${pvPaths.join(', ')}\n` +
      `start: try  npx tandem lv create -n vm1-disk0 -L 1G vg0 && npx tandem lv activate vg0/vm1-disk0 --exclusive\n`,
  );
}
