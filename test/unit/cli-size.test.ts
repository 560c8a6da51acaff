import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { InvalidArgumentError } from 'commander';
import { boundedSizeOption, parseSize, sizeBytesMax } from '../../src/cli/size.js';

const kib = 1024n;
const mib = 1024n ** 2n;
const gib = 1024n ** 3n;
const tib = 1024n ** 4n;

const bytes = (text: string, unit: 'b' | 'k' | 'm' = 'm'): bigint => parseSize(text, unit).bytes;

describe('parseSize', () => {
  test('binary units, case-insensitive, with an optional b or ib', () => {
    assert.equal(bytes('20G'), 20n * gib);
    assert.equal(bytes('20g'), 20n * gib);
    assert.equal(bytes('20GB'), 20n * gib);
    assert.equal(bytes('20GiB'), 20n * gib);
    assert.equal(bytes('20gib'), 20n * gib);
    assert.equal(bytes('512M'), 512n * mib);
    assert.equal(bytes('64k'), 64n * kib);
    assert.equal(bytes('2T'), 2n * tib);
    assert.equal(bytes('1P'), 1024n * tib);
    assert.equal(bytes('4096b'), 4096n);
    assert.equal(bytes('4096B'), 4096n);
    assert.equal(bytes('8s'), 4096n);
    assert.equal(bytes(' 1G '), gib);
  });

  test('a bare number is in the default unit, as in LVM (MiB for -L, KiB for stripes)', () => {
    assert.equal(bytes('4096'), 4n * gib);
    assert.equal(bytes('64', 'k'), 64n * kib);
    assert.equal(bytes('4096', 'b'), 4096n);
  });

  test('fractions are exact and round up to a whole byte', () => {
    assert.equal(bytes('1.5T'), tib + tib / 2n);
    assert.equal(bytes('0.5G'), 512n * mib);
    assert.equal(bytes('.5k'), 512n);
    assert.equal(bytes('1.'), mib);
    assert.equal(bytes('0.1k'), 103n, '102.4 bytes round up');
    assert.equal(bytes('1.0000000001G'), gib + 1n);
  });

  test('signs: relative when the option allows that sign, refused otherwise', () => {
    assert.deepEqual(parseSize('+5G', 'm', '+'), { bytes: 5n * gib, relative: true });
    assert.deepEqual(parseSize('5G', 'm', '+'), { bytes: 5n * gib, relative: false });
    assert.deepEqual(parseSize('-1G', 'm', '-'), { bytes: gib, relative: true });
    assert.throws(() => parseSize('-1G', 'm', '+'), /such as 20G or \+5G; '-' is not allowed here/);
    assert.throws(() => parseSize('+1G', 'm', '-'), /such as 20G or -5G; '\+' is not allowed here/);
    assert.throws(() => parseSize('+1G', 'm'), /without a sign/);
    assert.throws(() => parseSize('-1G', 'm'), /without a sign/);
  });

  test('zero, garbage and overflow are refused with a clear message', () => {
    for (const text of ['0', '0G', '0.0k', '+0']) {
      assert.throws(() => parseSize(text, 'm', '+'), /more than 0 bytes/, text);
    }
    for (const text of [
      '',
      'G',
      'abc',
      'NaN',
      'Infinity',
      '1e9',
      '1,5G',
      '1 G',
      '1GG',
      '1Gi',
      '1x',
      '0x10',
      '--1',
      '1.2.3',
    ]) {
      assert.throws(() => parseSize(text, 'm'), InvalidArgumentError, text);
      assert.throws(() => parseSize(text, 'm'), /expected a size such as 20G/, text);
    }
    assert.throws(() => parseSize('9P', 'm'), /at most 9007199254740991 bytes \(8 PiB\)/);
    assert.throws(() => parseSize('1E', 'm'), /at most 9007199254740991 bytes/);
    assert.throws(() => parseSize('99999999999999999999999', 'm'), /at most/);
    assert.throws(
      () => parseSize(`${'9'.repeat(50)}`, 'b'),
      /expected a size/,
      'too long to parse',
    );
    assert.equal(parseSize(`${sizeBytesMax}b`, 'm').bytes, sizeBytesMax);
    assert.throws(() => parseSize(`${sizeBytesMax + 1n}b`, 'm'), /at most/);
  });

  test('bounded sizes', () => {
    const extentSize = boundedSizeOption('m', mib, gib);
    assert.equal(extentSize('4'), 4n * mib);
    assert.equal(extentSize('1G'), gib);
    assert.throws(() => extentSize('512k'), /expected a size from 1\.0 MiB to 1\.0 GiB/);
    assert.throws(() => extentSize('2G'), /expected a size from 1\.0 MiB to 1\.0 GiB/);
  });
});
