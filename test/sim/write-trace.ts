/**
 * Puts every write that lands on the lockspace into the trace, decoded: which record it is
 * (host slot, directory, leader or ballot block of an area) and its main fields. For replays:
 * `replay.js SEED --writes` shows exactly what reached the platters, and when.
 */
import { hostSlotBytes, type LockspaceLayout } from '../../src/heartbeat-store/layout.js';
import { decodeBallot, decodeLeader } from '../../src/locking/lease-format.js';
import type { LogFields } from '../../src/log.js';
import type { SimCluster } from './sim-cluster.js';
import type { LandedWrite } from './sim-disk.js';

function describeBlock(
  layout: LockspaceLayout,
  offsetBytes: number,
  block: Buffer,
): { what: string; fields: LogFields } {
  if (offsetBytes < layout.hostSlotsOffset) return { what: 'header', fields: {} };
  if (offsetBytes < layout.directoryOffset) {
    const hostId = Math.floor((offsetBytes - layout.hostSlotsOffset) / hostSlotBytes) + 1;
    return { what: `slot ${hostId}`, fields: {} };
  }
  if (offsetBytes < layout.resourcesOffset) return { what: 'directory', fields: {} };
  const area = Math.floor((offsetBytes - layout.resourcesOffset) / layout.resourceAreaBytes);
  const blockIndex =
    (offsetBytes - layout.resourcesOffset - area * layout.resourceAreaBytes) / layout.blockSize;
  if (blockIndex === 0) {
    const leader = decodeLeader(block);
    if (leader.status === 'corrupt') return { what: `area ${area} leader (corrupt)`, fields: {} };
    const { leaseVersion, ownerHostId, ownerGeneration, name } = leader.record;
    return {
      what: `area ${area} leader`,
      fields: { name, version: leaseVersion, owner: `${ownerHostId}.${ownerGeneration}` },
    };
  }
  const ballot = decodeBallot(block);
  if (ballot.status === 'corrupt') {
    return { what: `area ${area} ballot ${blockIndex} (corrupt)`, fields: {} };
  }
  const record = ballot.record;
  return {
    what: `area ${area} ballot ${blockIndex}`,
    fields: {
      version: record.leaseVersion,
      mbal: record.mbal,
      bal: record.bal,
      inp: `${record.inpHostId}.${record.inpGeneration}`,
      shared: record.modeFlags,
      ticket: record.waitTicket,
    },
  };
}

export function traceLockspaceWrites(cluster: SimCluster): void {
  const layout = cluster.layout;
  cluster.lockDisk.landListeners.push((write: LandedWrite) => {
    for (let done = 0; done < write.lengthBytes; done += layout.blockSize) {
      const offsetBytes = write.offsetBytes + done;
      const inSlots = offsetBytes >= layout.hostSlotsOffset && offsetBytes < layout.directoryOffset;
      // A slot is one record in its first block; the rest of the 4 KiB is its payload.
      if (inSlots && (offsetBytes - layout.hostSlotsOffset) % hostSlotBytes !== 0) continue;
      const block = write.data.subarray(done, done + layout.blockSize);
      if (block.length < layout.blockSize) break;
      const { what, fields } = describeBlock(layout, offsetBytes, block);
      cluster.trace.add(
        write.host,
        `landed ${what} (${write.how}, issued ${write.issuedMs.toFixed(3)})`,
        fields,
      );
    }
  });
}
