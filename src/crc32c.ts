/**
 * CRC32C (Castagnoli), the checksum of every on-disk record (ARCHITECTURE.md: "All structures
 * ... carry a CRC32C"). The table-driven implementation comes from the crc-32 package.
 */
// A default import: the package is CommonJS whose exports Node's ESM loader cannot list, so a
// namespace import has only `default` at run time (and `buf` would be undefined).
import crc32cModule from 'crc-32/crc32c.js';

/** The unsigned CRC32C of `data` (check value of "123456789" is 0xe3069283). */
export function crc32c(data: Uint8Array): number {
  return crc32cModule.buf(data) >>> 0;
}
