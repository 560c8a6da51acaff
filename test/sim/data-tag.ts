/**
 * The tag every simulated data write carries in its first bytes, so that the checkers know who
 * wrote it under which lease: host, incarnation, host instance and the lease version (the fencing
 * token) the writer held.
 */
const dataTagMagic = Buffer.from('SIMDATA1', 'ascii');
export const dataTagBytes = 40;

export interface DataTag {
  readonly host: number;
  readonly incarnation: number;
  readonly hostId: number;
  readonly generation: number;
  readonly leaseVersion: number;
  readonly sequence: number;
}

export function encodeDataTag(tag: DataTag, lengthBytes: number): Buffer {
  const buffer = Buffer.alloc(lengthBytes, tag.sequence & 0xff);
  dataTagMagic.copy(buffer, 0);
  buffer.writeUInt32LE(tag.host, 8);
  buffer.writeUInt32LE(tag.incarnation, 12);
  buffer.writeUInt32LE(tag.hostId, 16);
  buffer.writeUInt32LE(tag.generation, 20);
  buffer.writeBigUInt64LE(BigInt(tag.leaseVersion), 24);
  buffer.writeUInt32LE(tag.sequence, 32);
  return buffer;
}

/** The tag at the start of `data`, or undefined when it is not there (e.g. a torn prefix). */
export function decodeDataTag(data: Buffer): DataTag | undefined {
  if (data.length < dataTagBytes || !data.subarray(0, 8).equals(dataTagMagic)) return undefined;
  return {
    host: data.readUInt32LE(8),
    incarnation: data.readUInt32LE(12),
    hostId: data.readUInt32LE(16),
    generation: data.readUInt32LE(20),
    leaseVersion: Number(data.readBigUInt64LE(24)),
    sequence: data.readUInt32LE(32),
  };
}
