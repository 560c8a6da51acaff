/**
 * Sizes as people type them, LVM style: `20G`, `512m`, `1.5T`, `+5G`, `-1G`.
 *
 * Units are binary and case-insensitive: k (KiB), m (MiB), g, t, p, e, each with an optional
 * trailing `b` or `ib` (`20GiB`, `20gb`, `20G` are the same); `b` alone is bytes and `s` is
 * 512-byte sectors. A number without a unit is in the option's default unit, as in LVM: MiB for
 * `-L` and `--extent-size`, KiB for `--stripe-size` (so `-L 4096` is 4 GiB; `-L 4096b` is
 * 4096 bytes). A fraction rounds up to a whole byte; the daemon rounds up to whole extents.
 *
 * A size is positive and at most 2^53 - 1 bytes (8 PiB): it travels as a uint64 string but the
 * daemon computes with safe integers.
 */
import { InvalidArgumentError } from 'commander';
import { formatBytes } from './output.js';

export type SizeUnit = 'b' | 's' | 'k' | 'm' | 'g' | 't' | 'p' | 'e';

const unitBytes: Readonly<Record<SizeUnit, bigint>> = {
  b: 1n,
  s: 512n,
  k: 1024n,
  m: 1024n ** 2n,
  g: 1024n ** 3n,
  t: 1024n ** 4n,
  p: 1024n ** 5n,
  e: 1024n ** 6n,
};

/** The largest size accepted: Number.MAX_SAFE_INTEGER bytes. */
export const sizeBytesMax = BigInt(Number.MAX_SAFE_INTEGER);
/** Longer input is a mistake, and is refused before any arithmetic on it. */
const sizeTextLengthMax = 40;

const sizePattern = /^([+-]?)(\d+(?:\.\d*)?|\.\d+)([a-z]*)$/i;

export interface SizeArgument {
  readonly bytes: bigint;
  /** Given with a sign: bytes to add (`+`) or to take away (`-`), not the new size. */
  readonly relative: boolean;
}

function isSizeUnit(text: string): text is SizeUnit {
  return Object.hasOwn(unitBytes, text);
}

function unitOf(suffix: string, defaultUnit: SizeUnit): SizeUnit | undefined {
  const text = suffix.toLowerCase();
  if (text === '') return defaultUnit;
  if (text === 'b' || text === 's') return text;
  const letter = text.replace(/i?b$/, '');
  return /^[kmgtpe]$/.test(letter) && isSizeUnit(letter) ? letter : undefined;
}

/** Whole bytes of `digits` (a decimal, maybe with a fraction) times `unit`, rounded up. */
function bytesOf(digits: string, unit: bigint): bigint {
  const [whole = '', fraction = ''] = digits.split('.');
  const scale = 10n ** BigInt(fraction.length);
  const scaled = BigInt(`${whole === '' ? '0' : whole}${fraction}`) * unit;
  return (scaled + scale - 1n) / scale;
}

/**
 * Parses one size. `sign` names the sign the option accepts ('+' for a grow, '-' for a shrink);
 * without it a sign is refused.
 */
export function parseSize(text: string, defaultUnit: SizeUnit, sign?: '+' | '-'): SizeArgument {
  const trimmed = text.trim();
  const example = sign === undefined ? '20G' : `20G or ${sign}5G`;
  const match = trimmed.length <= sizeTextLengthMax ? sizePattern.exec(trimmed) : null;
  const unit = match === null ? undefined : unitOf(match[3] ?? '', defaultUnit);
  if (match === null || unit === undefined) {
    throw new InvalidArgumentError(
      `expected a size such as ${example} (units b, s, k, m, g, t, p, e; default ${defaultUnit})`,
    );
  }
  const given = match[1] ?? '';
  if (given !== '' && given !== sign) {
    throw new InvalidArgumentError(
      sign === undefined
        ? `expected a size without a sign, such as ${example}`
        : `expected a size such as ${example}; '${given}' is not allowed here`,
    );
  }
  const bytes = bytesOf(match[2] ?? '', unitBytes[unit]);
  if (bytes <= 0n) throw new InvalidArgumentError('a size must be more than 0 bytes');
  if (bytes > sizeBytesMax) {
    throw new InvalidArgumentError(`a size must be at most ${sizeBytesMax} bytes (8 PiB)`);
  }
  return { bytes, relative: given !== '' };
}

/** An argParser for commander: an unsigned size in bytes. */
export function sizeOption(defaultUnit: SizeUnit): (text: string) => bigint {
  return (text) => parseSize(text, defaultUnit).bytes;
}

/** An argParser for commander: a new size, or one relative with `sign`. */
export function relativeSizeOption(
  defaultUnit: SizeUnit,
  sign: '+' | '-',
): (text: string) => SizeArgument {
  return (text) => parseSize(text, defaultUnit, sign);
}

/** A size in range for an option with limits (extent size, stripe size). */
export function boundedSizeOption(
  defaultUnit: SizeUnit,
  minBytes: bigint,
  maxBytes: bigint,
): (text: string) => bigint {
  return (text) => {
    const bytes = parseSize(text, defaultUnit).bytes;
    if (bytes < minBytes || bytes > maxBytes) {
      throw new InvalidArgumentError(
        `expected a size from ${formatBytes(minBytes)} to ${formatBytes(maxBytes)}`,
      );
    }
    return bytes;
  };
}
