#!/usr/bin/env node
// `npm test`: lint, cycle check, build (`npm run build`: native addon, generated code, tsc), then
// every compiled test file under node:test.
//
// Usage: npm test [-- <substring>...]   runs only test files whose path contains a substring.
// TANDEM_TEST_CONCURRENCY sets how many test files run at once (default 1: some integration
// tests may bind fixed ports; ours bind port 0 and can run side by side).
import { spawnSync } from 'node:child_process';
import fs from 'node:fs';
import path from 'node:path';
import { fileURLToPath } from 'node:url';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');
const npm = process.platform === 'win32' ? 'npm.cmd' : 'npm';

function run(what, command, args) {
  process.stdout.write(`\n> ${what}\n`);
  const result = spawnSync(command, args, { cwd: root, stdio: 'inherit' });
  if (result.status !== 0) {
    process.stderr.write(`test: ${what} failed (exit ${result.status ?? result.signal})\n`);
    process.exit(result.status ?? 1);
  }
}

function findTests(directory) {
  if (!fs.existsSync(directory)) return [];
  const found = [];
  for (const entry of fs.readdirSync(directory, { withFileTypes: true })) {
    const full = path.join(directory, entry.name);
    if (entry.isDirectory()) found.push(...findTests(full));
    else if (entry.isFile() && entry.name.endsWith('.test.js')) found.push(full);
  }
  return found.sort();
}

run('lint', npm, ['run', '--silent', 'lint']);
run('cycles', npm, ['run', '--silent', 'cycles']);
run('build', npm, ['run', '--silent', 'build']);

const filters = process.argv.slice(2);
// Only compiled tests whose source still exists: a deleted or renamed test leaves its old .js in
// dist/, and dist/ is not wiped because another build may be using it.
const hasSource = (file) =>
  fs.existsSync(
    path.join(root, path.relative(path.join(root, 'dist'), file)).replace(/\.js$/, '.ts'),
  );
const tests = findTests(path.join(root, 'dist', 'test'))
  .filter(hasSource)
  .filter((file) => filters.length === 0 || filters.some((filter) => file.includes(filter)));
if (tests.length === 0) {
  process.stderr.write('test: no test files found under dist/test\n');
  process.exit(1);
}
const concurrency = process.env.TANDEM_TEST_CONCURRENCY ?? '1';
process.stdout.write(`\n> node --test (${tests.length} files, concurrency ${concurrency})\n`);
const result = spawnSync(
  process.execPath,
  [
    '--test',
    `--test-concurrency=${concurrency}`,
    ...tests.map((file) => path.relative(root, file)),
  ],
  { cwd: root, stdio: 'inherit' },
);
process.exit(result.status ?? 1);
