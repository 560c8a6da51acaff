import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import {
  formatBytes,
  formatDuration,
  formatTable,
  jsonUint64,
  parseUint64,
} from '../../src/cli/output.js';

describe('formatBytes', () => {
  test('binary units with one decimal', () => {
    assert.equal(formatBytes(0n), '0 B');
    assert.equal(formatBytes(1023n), '1023 B');
    assert.equal(formatBytes(1024n), '1.0 KiB');
    assert.equal(formatBytes(1536n), '1.5 KiB');
    assert.equal(formatBytes(1024n ** 3n), '1.0 GiB');
    assert.equal(formatBytes(64n * 1024n ** 2n), '64.0 MiB');
    assert.equal(formatBytes(1024n ** 2n - 1n), '1024.0 KiB');
    assert.equal(formatBytes(2n ** 64n - 1n), '16.0 EiB');
  });
});

describe('formatTable', () => {
  test('aligns columns, right-aligns numbers, trims trailing blanks', () => {
    const rows = [
      { name: 'a', size: '1.0 GiB', file: '/x' },
      { name: 'longer-name', size: '512 B', file: '/y/z' },
    ];
    const text = formatTable(
      [
        { header: 'NAME', value: (row: (typeof rows)[number]) => row.name },
        { header: 'SIZE', value: (row) => row.size, align: 'right' },
        { header: 'FILE', value: (row) => row.file },
      ],
      rows,
    );
    assert.equal(
      text,
      ['NAME            SIZE  FILE', 'a            1.0 GiB  /x', 'longer-name    512 B  /y/z'].join(
        '\n',
      ),
    );
  });
});

describe('wire numbers', () => {
  test('uint64 strings', () => {
    assert.equal(jsonUint64('42'), 42);
    assert.equal(jsonUint64('18446744073709551615'), '18446744073709551615');
    assert.equal(parseUint64('7', 'size'), 7n);
    assert.throws(() => parseUint64('-1', 'size'), /invalid size/);
  });

  test('durations', () => {
    assert.equal(formatDuration(5n), '5s');
    assert.equal(formatDuration(65n), '1m 5s');
    assert.equal(formatDuration(3_661n), '1h 1m 1s');
    assert.equal(formatDuration(90_061n), '1d 1h 1m');
  });
});
