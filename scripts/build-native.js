// Builds the optional native addon (native/tandem_disk.c) with node-gyp.
//
// The disk layer works without it (src/disk/native.ts has a portable fallback), so a failed build
// prints a warning and exits 0 instead of failing `npm install`. The machine has no internet
// except the npm registry: node-gyp is always given a local `--nodedir` so that it never tries
// to download Node's headers.
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const repositoryDirectory = path.dirname(path.dirname(fileURLToPath(import.meta.url)));
const nativeDirectory = path.join(repositoryDirectory, 'native');
const addonPath = path.join(nativeDirectory, 'build', 'Release', 'tandem_disk.node');

function warn(message) {
  console.warn(`\n[tandem build:native] WARNING: ${message}`);
  console.warn(
    '[tandem build:native] the disk layer will use its portable fallback: no punch hole, no ' +
      'SEEK_DATA block status, no O_DIRECT (slower zeroing, everything reported as data).\n',
  );
}

function findNodeGyp() {
  // npm sets npm_config_node_gyp in lifecycle scripts; outside them, use npm's bundled copy.
  const candidates = [
    process.env.npm_config_node_gyp,
    path.join(
      path.dirname(path.dirname(process.execPath)),
      'lib/node_modules/npm/node_modules/node-gyp/bin/node-gyp.js',
    ),
    path.join(repositoryDirectory, 'node_modules/node-gyp/bin/node-gyp.js'),
  ];
  return candidates.find((candidate) => candidate !== undefined && existsSync(candidate));
}

function findNodeDirectory() {
  // The configured nodedir (npm exports it to lifecycle scripts), else the headers that ship
  // next to this node binary (e.g. /usr/include/node for /usr/bin/node).
  const candidates = [
    process.env.npm_config_nodedir,
    process.env.NODEDIR,
    path.dirname(path.dirname(process.execPath)),
  ];
  return candidates.find(
    (candidate) =>
      candidate !== undefined &&
      candidate !== '' &&
      existsSync(path.join(candidate, 'include', 'node', 'node_api.h')),
  );
}

function main() {
  if (process.platform !== 'linux') {
    warn(`the native addon is Linux-only (platform is ${process.platform}); skipped`);
    return;
  }
  if (process.env.TANDEM_SKIP_NATIVE === '1') {
    warn('TANDEM_SKIP_NATIVE=1; skipped');
    return;
  }
  const nodeGyp = findNodeGyp();
  if (nodeGyp === undefined) {
    warn('node-gyp not found (neither npm_config_node_gyp nor npm/node_modules/node-gyp)');
    return;
  }
  const nodeDirectory = findNodeDirectory();
  if (nodeDirectory === undefined) {
    warn('Node headers not found (set npm config nodedir); refusing to let node-gyp download');
    return;
  }
  const result = spawnSync(
    process.execPath,
    [nodeGyp, 'rebuild', `--nodedir=${nodeDirectory}`, '--directory', nativeDirectory],
    { stdio: 'inherit', env: { ...process.env, npm_config_nodedir: nodeDirectory } },
  );
  if (result.error !== undefined || result.status !== 0 || !existsSync(addonPath)) {
    warn(
      `node-gyp failed (${result.error?.message ?? `exit status ${String(result.status)}`}); ` +
        'see its output above',
    );
    return;
  }
  console.log(`[tandem build:native] built ${path.relative(repositoryDirectory, addonPath)}`);
}

main();
