/**
 * Claiming free PVs before a VG is made of them (vg create) or grows onto them (vg extend), so
 * that two hosts racing for the same blank PVs never both write a lockspace and metadata there.
 * lvmlockd serialises this with its global lock; a lock needs a lockspace, and the very first VG
 * has none yet. So the claim lives in the PV label itself and works as sanlock's delta lease
 * acquire does (Fischer's timed mutual exclusion):
 *
 *   1. read each label: in a VG, or claimed by another host and not yet seen stale -> refuse
 *      (a claim seen unchanged for claimValidMs is stale: its claimer crashed or gave up)
 *   2. write our claim (a fresh nonce) into each label, FUA, each within `ioTimeoutMs` of its read
 *   3. wait settleMs (2 × ioTimeoutMs): a racing claimer's write has landed by then
 *   4. re-read each label: all still ours -> won; otherwise lost: clear our claims that are still
 *      there (re-read just before) and refuse, naming the other host
 *
 * Why at most one wins: a racer writes only within ioTimeoutMs of reading a free label, so a
 * write landing after our step-4 read started from a read after our step-2 write landed, which
 * showed our claim. The winner must finish (the label write of the commit ends the claim) within
 * claimValidMs of its step 2, by its own clock; `check()` says whether it still may, and others
 * wait that long, by theirs, before they call a claim stale. As for leases, this assumes clocks
 * that run at about the same rate and I/O bounded by ioTimeoutMs, never agreeing wall clocks.
 */
import { randomUUID } from 'node:crypto';
import type { Clock } from '../clock.js';
import { TandemError, assert } from '../errors.js';
import type { Logger } from '../log.js';
import type { PvHandle } from './metadata-store.js';
import {
  type PvClaimMark,
  type PvLabel,
  encodePvLabel,
  readPvLabel,
  withoutClaim,
} from './pv-label.js';

/** How long a claim stays valid for its holder, and unchanged before others call it stale. */
export const claimValidMsMin = 30_000;
/** Claims left by a crashed claimer are waited out; this often the wait says it still runs. */
const staleWaitProgressMs = 5_000;

export interface PvClaimOptions {
  readonly hostName: string;
  /** The I/O bound of the VG being made (its lockspace's T). */
  readonly ioTimeoutMs: number;
  readonly clock: Clock;
  readonly logger: Logger;
  /** What the claim is for, in messages ("vg create vg0"). */
  readonly purpose: string;
  readonly signal?: AbortSignal;
  /** Default claimValidMs(ioTimeoutMs); tests use shorter ones. */
  readonly validMs?: number;
}

/** Claims held on a set of PVs; the commit that puts them into a VG ends them. */
export class PvClaim {
  constructor(
    readonly nonce: string,
    private readonly wonAtMs: number,
    private readonly validMs: number,
    private readonly clock: Clock,
    private readonly purpose: string,
  ) {}

  /** Throws unless there is still time to finish before others may call the claim stale. */
  check(): void {
    const elapsedMs = this.clock.nowMs() - this.wonAtMs;
    if (elapsedMs > this.validMs / 2) {
      throw new TandemError(
        'PV_CLAIM_LOST',
        `${this.purpose} took ${Math.round(elapsedMs)} ms since it claimed its PVs, more than the ${this.validMs / 2} ms it may; nothing was written to them as a VG: run it again`,
      );
    }
  }
}

/** The claim validity for a VG with this I/O bound. */
export function claimValidMs(ioTimeoutMs: number): number {
  return Math.max(claimValidMsMin, 15 * ioTimeoutMs);
}

/** Claims every PV of `handles` (each must be free in this host's view); see the top of file. */
export async function claimFreePvs(handles: PvHandle[], options: PvClaimOptions): Promise<PvClaim> {
  assert(handles.length > 0, 'claim at least one PV');
  const settleMs = 2 * options.ioTimeoutMs;
  const validMs = options.validMs ?? claimValidMs(options.ioTimeoutMs);
  assert(validMs > 2 * settleMs, 'a claim outlives the settle wait');
  const mark: PvClaimMark = {
    nonce: randomUUID(),
    wallMs: options.clock.wallMs(),
    hostName: options.hostName,
  };
  // Every wait first, then every claim write: a wait for one PV's stale claim must not age our
  // claims on the others.
  const stale = new Map<PvHandle, string | undefined>();
  for (const handle of handles) {
    stale.set(handle, (await waitUntilFree(handle, validMs, options)).claim?.nonce);
  }
  const startedMs = options.clock.nowMs();
  try {
    for (const handle of handles) await writeClaim(handle, mark, stale.get(handle), options);
  } catch (error) {
    await releaseClaims(handles, mark.nonce, options.logger);
    throw error;
  }
  await options.clock.sleep(settleMs, options.signal);
  const lostTo: Array<{ handle: PvHandle; claim: PvClaimMark | undefined }> = [];
  for (const handle of handles) {
    const label = await readLabelOf(handle);
    if (!holdsClaim(label, mark.nonce)) {
      lostTo.push({ handle, claim: label.claim });
    }
  }
  if (lostTo.length > 0) {
    await releaseClaims(handles, mark.nonce, options.logger);
    const first = lostTo[0];
    assert(first !== undefined, 'a lost claim');
    const other =
      first.claim === undefined ? 'another command' : `host ${first.claim.hostName || '?'}`;
    throw new TandemError(
      'PV_CLAIM_LOST',
      `${first.handle.path} was claimed by ${other} at the same time as ${options.purpose}; nothing was written to it as a VG here: run it again`,
    );
  }
  for (const handle of handles) handle.label = { ...handle.label, vgUuid: '', claim: mark };
  options.logger.debug('PVs claimed', {
    purpose: options.purpose,
    pvCount: handles.length,
    tookMs: Math.round(options.clock.nowMs() - startedMs),
  });
  return new PvClaim(mark.nonce, startedMs, validMs, options.clock, options.purpose);
}

/**
 * Writes our claim into one label: read, check it is still as waitUntilFree left it (free, or
 * the same stale claim), write, all within ioTimeoutMs from the read's start.
 */
async function writeClaim(
  handle: PvHandle,
  mark: PvClaimMark,
  staleNonce: string | undefined,
  options: PvClaimOptions,
): Promise<void> {
  const readStartedMs = options.clock.nowMs();
  const label = await readLabelOf(handle);
  refuseIfJoined(handle, label);
  if (label.claim !== undefined && label.claim.nonce !== staleNonce) {
    throw new TandemError(
      'PV_CLAIM_LOST',
      `${handle.path} was claimed by host ${label.claim.hostName || '?'} at the same time as ${options.purpose}; nothing was written to it as a VG here: run it again`,
    );
  }
  // vgUuid '' also clears a VG name left by a create that crashed before its metadata.
  const claimed: PvLabel = { ...label, vgUuid: '', claim: mark };
  await handle.device.write(encodePvLabel(claimed), 0, { fua: true });
  if (options.clock.nowMs() - readStartedMs > options.ioTimeoutMs) {
    // Past the bound the proof rests on: another host may have read the label as free after
    // our read and written its claim after ours.
    throw new TandemError(
      'PV_CLAIM_LOST',
      `claiming ${handle.path} for ${options.purpose} took longer than ${options.ioTimeoutMs} ms between read and write; run it again`,
    );
  }
}

/** Gives up claims (best effort): clears the claim of each label that still carries ours. */
export async function releaseClaims(
  handles: PvHandle[],
  nonce: string,
  logger: Logger,
): Promise<void> {
  for (const handle of handles) {
    try {
      const label = await readLabelOf(handle);
      if (!holdsClaim(label, nonce)) continue;
      handle.label = withoutClaim(label);
      await handle.device.write(encodePvLabel(handle.label), 0, { fua: true });
    } catch (error) {
      // It goes stale by itself: a later claim waits claimValidMs for it.
      logger.warn('clearing a PV claim failed', { path: handle.path, error });
    }
  }
}

/** Whether the label still carries our claim and names no VG (a commit ends every claim). */
function holdsClaim(label: PvLabel, nonce: string): boolean {
  return label.claim?.nonce === nonce && label.vgUuid === '';
}

/** PV_IN_USE when the PV joined a VG since this host's scan (a leftover VG name is no VG). */
function refuseIfJoined(handle: PvHandle, label: PvLabel): void {
  if (label.vgUuid !== '' && label.vgUuid !== handle.label.vgUuid) {
    throw new TandemError(
      'PV_IN_USE',
      `${handle.path} was added to VG ${label.vgUuid} by another host; it is not free`,
    );
  }
}

async function readLabelOf(handle: PvHandle): Promise<PvLabel> {
  const label = await readPvLabel(handle.device);
  if (label.pvUuid !== handle.label.pvUuid) {
    throw new TandemError(
      'PV_IN_USE',
      `${handle.path} now holds PV ${label.pvUuid}, not ${handle.label.pvUuid}: another host made it a PV at the same time; run the command again`,
    );
  }
  return label;
}

/**
 * Reads the label until it is free to claim: in no VG and unclaimed, or claimed by a mark seen
 * unchanged for validMs (stale). A label that joins a VG meanwhile is refused.
 */
async function waitUntilFree(
  handle: PvHandle,
  validMs: number,
  options: PvClaimOptions,
): Promise<PvLabel> {
  let seen: { nonce: string; sinceMs: number } | undefined;
  let lastProgressMs = options.clock.nowMs();
  for (;;) {
    const label = await readLabelOf(handle);
    refuseIfJoined(handle, label);
    const claim = label.claim;
    if (claim === undefined) return label;
    const nowMs = options.clock.nowMs();
    if (seen === undefined || seen.nonce !== claim.nonce) {
      seen = { nonce: claim.nonce, sinceMs: nowMs };
      options.logger.info('PV claimed by another host: waiting until it is used or goes stale', {
        path: handle.path,
        claimedBy: claim.hostName,
        claimedAtWall: new Date(claim.wallMs).toISOString(),
        purpose: options.purpose,
      });
    } else if (nowMs - seen.sinceMs >= validMs) {
      return label;
    }
    if (nowMs - lastProgressMs >= staleWaitProgressMs) {
      lastProgressMs = nowMs;
      options.logger.info('still waiting for a PV claim of another host', {
        path: handle.path,
        claimedBy: claim.hostName,
        waitedMs: Math.round(nowMs - seen.sinceMs),
        staleAfterMs: validMs,
      });
    }
    await options.clock.sleep(2 * options.ioTimeoutMs, options.signal);
  }
}
