/**
 * The VG metadata across the PVs of a VG: the crash-safe commit, the read that picks the newest
 * valid copy, history, device scanning, and removal (docs/clvm.md, "Commit protocol").
 *
 * Every PV of the VG holds the whole metadata twice (MDA 0 at its start, MDA 1 at its end). A
 * commit writes the new record everywhere, flushes, then flips every MDA header, then flushes;
 * a reader takes the valid copy with the highest seqno. A crash anywhere therefore leaves every
 * copy at the old or the new seqno, and readers see exactly the old or the new VG.
 */
import type { BlockDevice } from '../disk/block-device.js';
import { TandemError, assert, isTandemError } from '../errors.js';
import { crc32c } from '../crc32c.js';
import type { VgMetadata } from './types.js';
import { decodeVgMetadata, encodeVgMetadata } from './metadata-codec.js';
import {
  type MdaHeader,
  type MetadataRecord,
  clearHeader,
  encodeRecord,
  history,
  placeRecord,
  readCommittedRecord,
  readMdaHeader,
  recordSizeBytes,
  ringSizeBytes,
  writeHeader,
  writeRecord,
} from './metadata-ring.js';
import { type PvLabel, checkUuid, readPvLabel, wipePv, writePvVgUuid } from './pv-label.js';

/** A PV as the store sees it. `label` is replaced when the store rewrites the label. */
export interface PvHandle {
  readonly path: string;
  readonly device: BlockDevice;
  label: PvLabel;
}

export type MdaIndex = 0 | 1;
const mdaIndexes: readonly MdaIndex[] = [0, 1];

export interface MetadataCopy {
  readonly pvUuid: string;
  readonly mda: MdaIndex;
  /** The seqno of the valid copy; undefined when the MDA is empty or corrupt. */
  readonly seqno: number | undefined;
  /** Why this copy is not the newest valid one (stale, empty, corrupt). */
  readonly problem?: string;
}

export interface VgRead {
  readonly metadata: VgMetadata;
  readonly copies: MetadataCopy[];
  /** PVs with at least one copy that is not the newest: the next commit repairs them. */
  readonly stalePvUuids: string[];
}

export interface ScanResult {
  readonly byVg: Map<string, PvHandle[]>;
  readonly unassigned: PvHandle[];
  readonly notPvs: string[];
  readonly problems: Array<{ path: string; message: string }>;
}

function where(pv: PvHandle, mda: MdaIndex): string {
  return `${pv.path} (PV ${pv.label.pvUuid}) MDA ${mda}`;
}

/** What a commit does to one MDA: nothing (a retry found it done) or write after `header`. */
type MdaPlan =
  { readonly kind: 'done' } | { readonly kind: 'write'; readonly header: MdaHeader | undefined };

/**
 * Reads an MDA before a commit and refuses, before any write, a commit that would overwrite
 * another VG or a newer change. A corrupt header is repaired by the commit like a stale one.
 */
async function inspectMda(
  pv: PvHandle,
  mda: MdaIndex,
  md: VgMetadata,
  body: Buffer,
): Promise<MdaPlan> {
  let header: MdaHeader | undefined;
  try {
    header = await readMdaHeader(pv.device, pv.label.metadataAreas[mda]);
  } catch (error) {
    if (isTandemError(error, 'MDA_CORRUPT')) return { kind: 'write', header: undefined };
    throw error;
  }
  if (header === undefined) return { kind: 'write', header };
  if (header.vgUuid !== md.uuid) {
    throw new TandemError(
      'PV_IN_USE',
      `${where(pv, mda)} holds metadata of VG ${header.vgUuid}, not of VG ${md.uuid}`,
    );
  }
  const { committed } = header;
  if (committed.seqno < md.seqno) return { kind: 'write', header };
  // A copy at this seqno or newer that is corrupt is taken by no reader: the commit repairs it.
  try {
    await readCommittedRecord(pv.device, pv.label.metadataAreas[mda]);
  } catch (error) {
    if (isTandemError(error, 'MDA_CORRUPT')) return { kind: 'write', header: undefined };
    throw error;
  }
  // The same seqno and body: a retry of a commit whose outcome was unknown reached this MDA.
  const sameBody = committed.bodyLengthBytes === body.length && committed.bodyCrc === crc32c(body);
  if (committed.seqno === md.seqno && sameBody) return { kind: 'done' };
  throw new TandemError(
    'VG_INCONSISTENT',
    `${where(pv, mda)} already holds seqno ${committed.seqno} of VG ${md.uuid}; refusing to commit seqno ${md.seqno} (the VG changed since it was read)`,
  );
}

interface RecordWrite {
  readonly mda: MdaIndex;
  readonly offsetBytes: number;
  readonly record: Buffer;
}

function planRecord(
  pv: PvHandle,
  mda: MdaIndex,
  header: MdaHeader | undefined,
  md: VgMetadata,
  body: Buffer,
): RecordWrite {
  const area = pv.label.metadataAreas[mda];
  const committed = header?.committed;
  const record = encodeRecord(
    {
      vgUuid: md.uuid,
      seqno: md.seqno,
      previous:
        committed === undefined
          ? undefined
          : { offsetBytes: committed.offsetBytes, seqno: committed.seqno },
    },
    body,
  );
  const offsetBytes = placeRecord(
    ringSizeBytes(area),
    committed === undefined
      ? undefined
      : {
          offsetBytes: committed.offsetBytes,
          sizeBytes: recordSizeBytes(committed.bodyLengthBytes),
        },
    record.length,
    where(pv, mda),
  );
  return { mda, offsetBytes, record };
}

/** Reads every MDA, refuses unsafe commits, and returns the records to write per PV. */
async function planCommit(pvs: PvHandle[], md: VgMetadata, body: Buffer) {
  const inspected = await Promise.all(
    pvs.map(async (pv) => [await inspectMda(pv, 0, md, body), await inspectMda(pv, 1, md, body)]),
  );
  return pvs.map((pv, index) =>
    mdaIndexes.flatMap((mda) => {
      const plan = inspected[index]?.[mda];
      assert(plan !== undefined, 'an MDA was inspected');
      return plan.kind === 'done' ? [] : [planRecord(pv, mda, plan.header, md, body)];
    }),
  );
}

/**
 * Commits `md` to every PV given, both MDAs each: writes every record, flushes, writes every MDA
 * header, flushes. A PV joining the VG gets its label's VG UUID first. A failure leaves the
 * outcome unknown (each copy old or new): read again before deciding anything.
 */
export async function commitVgMetadata(pvs: PvHandle[], md: VgMetadata): Promise<void> {
  assert(Number.isSafeInteger(md.seqno) && md.seqno > 0, `seqno ${md.seqno} is a positive integer`);
  assert(pvs.length > 0, 'a commit needs at least one PV');
  assert(
    new Set(pvs.map((pv) => pv.label.pvUuid)).size === pvs.length,
    'each PV is given once to a commit',
  );
  checkUuid(md.uuid, 'VG UUID');
  const body = encodeVgMetadata(md);
  const bodyCrc = crc32c(body);
  const plans = await planCommit(pvs, md, body);
  await Promise.all(
    pvs.map(async (pv, index) => {
      // The label names the VG before any record does: a crash then leaves an unassigned PV.
      if (pv.label.vgUuid !== md.uuid) pv.label = await writePvVgUuid(pv.device, pv.label, md.uuid);
      for (const plan of plans[index] ?? []) {
        await writeRecord(
          pv.device,
          pv.label.metadataAreas[plan.mda],
          plan.offsetBytes,
          plan.record,
        );
      }
    }),
  );
  await Promise.all(pvs.map((pv) => pv.device.flush()));
  await Promise.all(
    pvs.map(async (pv, index) => {
      for (const plan of plans[index] ?? []) {
        const area = pv.label.metadataAreas[plan.mda];
        const committed = {
          offsetBytes: plan.offsetBytes,
          bodyLengthBytes: body.length,
          seqno: md.seqno,
          bodyCrc,
        };
        await writeHeader(pv.device, area, {
          vgUuid: md.uuid,
          ringSizeBytes: ringSizeBytes(area),
          committed,
        });
      }
    }),
  );
  await Promise.all(pvs.map((pv) => pv.device.flush()));
}

type CopyRead =
  | { kind: 'valid'; pv: PvHandle; mda: MdaIndex; record: MetadataRecord }
  | { kind: 'empty' | 'corrupt'; pv: PvHandle; mda: MdaIndex; problem: string };

async function readCopy(pv: PvHandle, mda: MdaIndex): Promise<CopyRead> {
  try {
    const committed = await readCommittedRecord(pv.device, pv.label.metadataAreas[mda]);
    if (committed === undefined) return { kind: 'empty', pv, mda, problem: 'no metadata' };
    return { kind: 'valid', pv, mda, record: committed.record };
  } catch (error) {
    if (!isTandemError(error, 'MDA_CORRUPT')) throw error;
    return { kind: 'corrupt', pv, mda, problem: error.message };
  }
}

async function readAllCopies(pvs: readonly PvHandle[]): Promise<CopyRead[]> {
  const perPv = await Promise.all(
    pvs.map(async (pv) => [await readCopy(pv, 0), await readCopy(pv, 1)]),
  );
  return perPv.flat();
}

function checkOneVg(copies: readonly CopyRead[]): void {
  const byVg = new Map<string, string[]>();
  for (const copy of copies) {
    if (copy.kind !== 'valid') continue;
    const names = byVg.get(copy.record.header.vgUuid) ?? [];
    names.push(`${copy.pv.path} MDA ${copy.mda}`);
    byVg.set(copy.record.header.vgUuid, names);
  }
  if (byVg.size > 1) {
    const list = [...byVg].map(([vg, names]) => `VG ${vg} on ${names.join(', ')}`).join('; ');
    throw new TandemError('VG_INCONSISTENT', `the PVs given belong to different VGs: ${list}`);
  }
}

/** The newest valid copy, decoded; copies of a seqno whose body does not decode count as corrupt. */
function newest(copies: CopyRead[]): { metadata: VgMetadata; seqno: number } | undefined {
  const valid = copies.filter((copy) => copy.kind === 'valid');
  const seqnos = [...new Set(valid.map((copy) => copy.record.header.seqno))].sort((a, b) => b - a);
  for (const seqno of seqnos) {
    const same = valid.filter((copy) => copy.record.header.seqno === seqno);
    const [first] = same;
    assert(first !== undefined, 'a seqno of a valid copy');
    const different = same.find((copy) => !copy.record.body.equals(first.record.body));
    if (different !== undefined) {
      throw new TandemError(
        'VG_INCONSISTENT',
        `${first.pv.path} MDA ${first.mda} and ${different.pv.path} MDA ${different.mda} hold different metadata under the same seqno ${seqno} (two writers without the VG lock?)`,
      );
    }
    try {
      const metadata = decodeVgMetadata(first.record.body, `${first.pv.path} MDA ${first.mda}`);
      if (metadata.seqno !== seqno || metadata.uuid !== first.record.header.vgUuid) {
        throw new TandemError(
          'MDA_CORRUPT',
          `${first.pv.path} MDA ${first.mda}: the body says seqno ${metadata.seqno} of VG ${metadata.uuid}, the record header seqno ${seqno} of VG ${first.record.header.vgUuid}`,
        );
      }
      return { metadata, seqno };
    } catch (error) {
      if (!isTandemError(error, 'MDA_CORRUPT')) throw error;
      for (const copy of same) {
        const { pv, mda } = copy;
        copies[copies.indexOf(copy)] = { kind: 'corrupt', pv, mda, problem: error.message };
      }
    }
  }
  return undefined;
}

/**
 * Reads both MDAs of every PV and returns the valid copy with the highest seqno, with a report
 * of every copy. VG_INCONSISTENT when the PVs hold different VGs; VG_NOT_FOUND when every MDA is
 * empty; MDA_CORRUPT (listing every problem) when no copy is valid.
 */
export async function readVgMetadata(pvs: PvHandle[]): Promise<VgRead> {
  assert(pvs.length > 0, 'a read needs at least one PV');
  const copies = await readAllCopies(pvs);
  checkOneVg(copies);
  const found = newest(copies);
  if (found === undefined) {
    const problems = copies.map(
      (copy) => `${where(copy.pv, copy.mda)}: ${copy.kind === 'valid' ? 'valid' : copy.problem}`,
    );
    const allEmpty = copies.every((copy) => copy.kind === 'empty');
    throw new TandemError(
      allEmpty ? 'VG_NOT_FOUND' : 'MDA_CORRUPT',
      allEmpty
        ? `no VG metadata on ${pvs.map((pv) => pv.path).join(', ')}`
        : `no valid copy of the VG metadata: ${problems.join('; ')}`,
    );
  }
  const stale = new Set<string>();
  const report = copies.map((copy): MetadataCopy => {
    const base = { pvUuid: copy.pv.label.pvUuid, mda: copy.mda };
    if (copy.kind !== 'valid') {
      stale.add(base.pvUuid);
      return { ...base, seqno: undefined, problem: copy.problem };
    }
    const seqno = copy.record.header.seqno;
    if (seqno === found.seqno) return { ...base, seqno };
    stale.add(base.pvUuid);
    return { ...base, seqno, problem: `stale: seqno ${seqno}, the newest is ${found.seqno}` };
  });
  return { metadata: found.metadata, copies: report, stalePvUuids: [...stale] };
}

/** Every VG version still intact in some MDA of the PVs, newest first, one per seqno. */
export async function listVgHistory(pvs: PvHandle[]): Promise<VgMetadata[]> {
  const { metadata: newestMetadata } = await readVgMetadata(pvs);
  const bySeqno = new Map<number, VgMetadata>();
  for (const pv of pvs) {
    for (const mda of mdaIndexes) {
      let records: MetadataRecord[];
      try {
        records = await history(pv.device, pv.label.metadataAreas[mda]);
      } catch (error) {
        // readVgMetadata has reported this MDA already; history shows what the others hold.
        if (isTandemError(error, 'MDA_CORRUPT')) continue;
        throw error;
      }
      for (const record of records) {
        const { seqno, vgUuid } = record.header;
        if (vgUuid !== newestMetadata.uuid || bySeqno.has(seqno)) continue;
        try {
          bySeqno.set(seqno, decodeVgMetadata(record.body, `${where(pv, mda)} seqno ${seqno}`));
        } catch (error) {
          if (!isTandemError(error, 'MDA_CORRUPT')) throw error;
        }
      }
    }
  }
  return [...bySeqno.values()].sort((a, b) => b.seqno - a.seqno);
}

/**
 * The VG of a PV: its label's VG, if its MDAs hold a valid copy of that VG's metadata. A label
 * naming a VG its MDAs do not hold (a commit that added the PV crashed) leaves it unassigned.
 */
async function vgOfPv(
  pv: PvHandle,
): Promise<{ vgUuid: string | undefined; holdsAny: boolean; problems: string[] }> {
  const copies = [await readCopy(pv, 0), await readCopy(pv, 1)];
  const problems = copies.flatMap((copy) =>
    copy.kind === 'corrupt' ? [`MDA ${copy.mda}: ${copy.problem}`] : [],
  );
  const held = new Set(
    copies.flatMap((copy) => (copy.kind === 'valid' ? [copy.record.header.vgUuid] : [])),
  );
  for (const vgUuid of held) {
    if (vgUuid !== pv.label.vgUuid) {
      problems.push(`the label names VG '${pv.label.vgUuid}' but the metadata VG ${vgUuid}`);
    }
  }
  const vgUuid = held.has(pv.label.vgUuid) ? pv.label.vgUuid : undefined;
  return { vgUuid, holdsAny: held.size > 0, problems };
}

/**
 * Reads the label and metadata areas of every device and groups the PVs by VG: a PV is in the
 * VG its label names if its MDAs hold that VG's metadata, or hold none and the VG's newest
 * metadata lists it. Any other PV is unassigned.
 */
export async function scanDevices(
  devices: ReadonlyArray<{ path: string; device: BlockDevice }>,
): Promise<ScanResult> {
  const result: ScanResult = { byVg: new Map(), unassigned: [], notPvs: [], problems: [] };
  const seen = new Map<string, string>();
  const claimants: PvHandle[] = [];
  for (const { path, device } of devices) {
    let label: PvLabel;
    try {
      label = await readPvLabel(device);
    } catch (error) {
      if (isTandemError(error, 'PV_NOT_FOUND')) result.notPvs.push(path);
      else if (error instanceof TandemError) result.problems.push({ path, message: error.message });
      else throw error;
      continue;
    }
    const other = seen.get(label.pvUuid);
    if (other !== undefined) {
      result.problems.push({
        path,
        message: `PV ${label.pvUuid} is also at ${other}; ignored here`,
      });
      continue;
    }
    seen.set(label.pvUuid, path);
    const pv: PvHandle = { path, device, label };
    const { vgUuid, holdsAny, problems } = await vgOfPv(pv);
    for (const message of problems) result.problems.push({ path, message });
    if (vgUuid !== undefined) result.byVg.set(vgUuid, [...(result.byVg.get(vgUuid) ?? []), pv]);
    else if (label.vgUuid !== '' && !holdsAny) claimants.push(pv);
    else result.unassigned.push(pv);
  }
  await settleClaimants(result, claimants);
  return result;
}

/**
 * A PV whose label names VG X while its own MDAs hold no metadata is X's when X's newest
 * metadata lists it: the commit that added it reached the other PVs only (its copies are stale,
 * the next commit repairs them). Otherwise that commit never took effect and the PV is free.
 */
async function settleClaimants(result: ScanResult, claimants: readonly PvHandle[]): Promise<void> {
  const listedByVg = new Map<string, ReadonlySet<string>>();
  for (const vgUuid of new Set(claimants.map((pv) => pv.label.vgUuid))) {
    const members = result.byVg.get(vgUuid);
    if (members === undefined) continue;
    try {
      const { metadata } = await readVgMetadata(members);
      listedByVg.set(vgUuid, new Set(metadata.pvs.map((pv) => pv.uuid)));
    } catch (error) {
      // The VG itself is unreadable; opening it reports why. Its claimants stay free.
      if (!(error instanceof TandemError)) throw error;
    }
  }
  for (const pv of claimants) {
    const members = result.byVg.get(pv.label.vgUuid);
    if (members !== undefined && listedByVg.get(pv.label.vgUuid)?.has(pv.label.pvUuid) === true) {
      members.push(pv);
    } else {
      result.unassigned.push(pv);
    }
  }
}

/**
 * Takes the PVs out of their VG: zeroes both MDA headers, flushes, then clears the label's VG
 * UUID (or, with `wipeLabel`, the whole label: the device is no PV any more) and flushes, so a
 * crash in between leaves an unassigned PV, never metadata the label does not lead to.
 */
export async function removeVgMetadata(
  pvs: PvHandle[],
  options: { wipeLabel?: boolean } = {},
): Promise<void> {
  await Promise.all(
    pvs.map(async (pv) => {
      if (options.wipeLabel === true) {
        await wipePv(pv.device, pv.label);
        return;
      }
      for (const area of pv.label.metadataAreas) await clearHeader(pv.device, area);
      await pv.device.flush();
      pv.label = await writePvVgUuid(pv.device, pv.label, '');
      await pv.device.flush();
    }),
  );
}
