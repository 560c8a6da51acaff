/**
 * The LV activations this host means to keep: `<data-dir>/activations.json`, so that a restart
 * of tandemd (not of the host) serves them again (activation-restore.ts).
 *
 * An entry is added when `lv activate` succeeds and removed when an activation ends for any
 * reason but a daemon stop (lv deactivate, the LV leaving the metadata, the lease lost). A clean
 * stop still deactivates every LV, but keeps the file: the intent outlives the process.
 *
 * The file records the boot id of the host (/proc/sys/kernel/random/boot_id). Entries written
 * under another boot id are not restored: after a reboot the VMs that used the LVs are gone, and
 * holding their leases would keep an HA agent from starting them on another host.
 *
 * A file that cannot be read or parsed is logged and taken as empty: it must never stop the
 * daemon. Writes are atomic (atomic-file.ts) and run one at a time, each writing the newest list.
 */
import fs from 'node:fs/promises';
import path from 'node:path';
import { checkUuid } from '../clvm/pv-label.js';
import { nameBytesMax, namePattern } from '../clvm/types.js';
import { TandemError, systemErrorCode } from '../errors.js';
import type { LockMode } from '../locking/types.js';
import type { Logger } from '../log.js';
import { writeFileAtomic } from './atomic-file.js';

export interface ActivationIntent {
  readonly vgUuid: string;
  readonly vgName: string;
  readonly lvUuid: string;
  readonly lvName: string;
  readonly mode: LockMode;
}

export interface ActivationIntentFile {
  /** The boot id of the host when the file was written; '' if it could not be read. */
  readonly bootId: string;
  readonly activations: readonly ActivationIntent[];
}

export const activationsFileName = 'activations.json';
export const defaultBootIdPath = '/proc/sys/kernel/random/boot_id';
/** Bounds what a corrupt or hostile file can make the daemon allocate and restore at start. */
export const activationIntentsMax = 16_384;
const fileFormat = 'tandem-activations';
const fileVersion = 1;
/** A boot id is a UUID (36 characters); anything much longer is not one. */
const bootIdLengthMax = 128;

const modeNames: Readonly<Record<LockMode, string>> = { ex: 'exclusive', sh: 'shared' };

export function activationsFilePath(dataDir: string): string {
  return path.join(dataDir, activationsFileName);
}

function corrupt(reason: string, cause?: unknown): TandemError {
  return new TandemError('STATE_CORRUPT', reason, { cause });
}

export function encodeActivationIntents(file: ActivationIntentFile): string {
  const activations = [...file.activations]
    .sort((a, b) => a.vgName.localeCompare(b.vgName) || a.lvName.localeCompare(b.lvName))
    .map((intent) => ({ ...intent, mode: modeNames[intent.mode] }));
  const body = { format: fileFormat, version: fileVersion, bootId: file.bootId, activations };
  return `${JSON.stringify(body, null, 2)}\n`;
}

function parseName(value: unknown, what: string): string {
  if (typeof value !== 'string' || Buffer.byteLength(value) > nameBytesMax) {
    throw corrupt(`${what} must be a name of at most ${nameBytesMax} bytes`);
  }
  if (!namePattern.test(value)) throw corrupt(`${what} '${value}' is not a VG or LV name`);
  return value;
}

function parseUuid(value: unknown, what: string): string {
  if (typeof value !== 'string') throw corrupt(`${what} must be a string`);
  try {
    checkUuid(value, what);
  } catch (error) {
    throw corrupt(`${what} '${value}' is not a UUID`, error);
  }
  return value;
}

function parseIntent(value: unknown, index: number): ActivationIntent {
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    throw corrupt(`activation ${index} is not an object`);
  }
  const record = value as Record<string, unknown>;
  const mode = record['mode'];
  if (mode !== modeNames.ex && mode !== modeNames.sh) {
    throw corrupt(`activation ${index}: mode must be 'exclusive' or 'shared'`);
  }
  return {
    vgUuid: parseUuid(record['vgUuid'], `activation ${index}: vgUuid`),
    vgName: parseName(record['vgName'], `activation ${index}: vgName`),
    lvUuid: parseUuid(record['lvUuid'], `activation ${index}: lvUuid`),
    lvName: parseName(record['lvName'], `activation ${index}: lvName`),
    mode: mode === modeNames.ex ? 'ex' : 'sh',
  };
}

/** Parses the file's text; anything unexpected is STATE_CORRUPT. */
export function decodeActivationIntents(text: string): ActivationIntentFile {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    throw corrupt('not valid JSON', error);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw corrupt('not a JSON object');
  }
  const record = parsed as Record<string, unknown>;
  if (record['format'] !== fileFormat || record['version'] !== fileVersion) {
    throw corrupt(`expected format '${fileFormat}' version ${fileVersion}`);
  }
  const bootId = record['bootId'];
  if (typeof bootId !== 'string' || bootId.length > bootIdLengthMax) {
    throw corrupt(`'bootId' must be a string of at most ${bootIdLengthMax} characters`);
  }
  const entries = record['activations'];
  if (!Array.isArray(entries) || entries.length > activationIntentsMax) {
    throw corrupt(`'activations' must be an array of at most ${activationIntentsMax}`);
  }
  const activations = entries.map((entry: unknown, index) => parseIntent(entry, index));
  if (new Set(activations.map((intent) => intent.lvUuid)).size !== activations.length) {
    throw corrupt('an LV appears twice');
  }
  return { bootId, activations };
}

/** This boot's id, or '' where the system has none (not Linux) or it cannot be read. */
export async function readBootId(filePath = defaultBootIdPath): Promise<string> {
  try {
    const text = (await fs.readFile(filePath, 'utf8')).trim();
    return text.length > 0 && text.length <= bootIdLengthMax ? text : '';
  } catch {
    return '';
  }
}

/**
 * Which recorded activations a start may restore: only those written in this very boot (a
 * restart of tandemd). An unknown boot id (either side) proves nothing, so nothing is restored.
 */
export function restorableAfterStart(
  file: ActivationIntentFile,
  currentBootId: string,
): { restorable: boolean; reason: string } {
  if (currentBootId === '') return { restorable: false, reason: 'the boot id cannot be read' };
  if (file.bootId !== currentBootId) {
    return { restorable: false, reason: 'the host rebooted since they were recorded' };
  }
  return { restorable: true, reason: 'tandemd restarted on the same boot' };
}

export function describeIntent(intent: ActivationIntent): string {
  return `${intent.vgName}/${intent.lvName} (${modeNames[intent.mode]})`;
}

/** Reads the file; a missing one is empty, a bad one is logged and taken as empty. */
async function readIntentFile(
  filePath: string,
  logger: Logger,
): Promise<ActivationIntentFile | undefined> {
  let text: string;
  try {
    text = await fs.readFile(filePath, 'utf8');
  } catch (error) {
    if (systemErrorCode(error) === 'ENOENT') return undefined;
    logger.warn('cannot read the recorded LV activations: none restored', { filePath, error });
    return undefined;
  }
  try {
    return decodeActivationIntents(text);
  } catch (error) {
    logger.warn('the recorded LV activations are unreadable: none restored', { filePath, error });
    return undefined;
  }
}

export interface LoadIntentsOptions {
  readonly dataDir: string;
  /** false (--no-restore-activations): record, but restore nothing at this start. */
  readonly restore: boolean;
  readonly logger: Logger;
  readonly bootIdPath?: string;
}

/** The recorded activations of this host, kept in memory and in the file. */
export class ActivationIntents {
  private readonly byLv = new Map<string, ActivationIntent>();
  private writing: Promise<void> = Promise.resolve();

  private constructor(
    private readonly filePath: string,
    private readonly bootId: string,
    private readonly logger: Logger,
    /** What this start should restore (the restorer takes them). */
    readonly toRestore: readonly ActivationIntent[],
  ) {
    for (const intent of toRestore) this.byLv.set(intent.lvUuid, intent);
  }

  /** Reads the file and applies the boot-id rule; never fails (problems are logged). */
  static async load(options: LoadIntentsOptions): Promise<ActivationIntents> {
    const { logger } = options;
    const filePath = activationsFilePath(options.dataDir);
    const bootId = await readBootId(options.bootIdPath);
    const file = await readIntentFile(filePath, logger);
    if (file === undefined || file.activations.length === 0) {
      return new ActivationIntents(filePath, bootId, logger, []);
    }
    const rule = restorableAfterStart(file, bootId);
    const reason = options.restore ? rule.reason : 'restoring is turned off';
    if (options.restore && rule.restorable) {
      logger.info('LV activations to restore', { count: file.activations.length, reason });
      return new ActivationIntents(filePath, bootId, logger, file.activations);
    }
    for (const intent of file.activations) {
      logger.info('not restoring an LV activation', {
        export: `${intent.vgName}/${intent.lvName}`,
        mode: intent.mode,
        reason,
      });
    }
    const intents = new ActivationIntents(filePath, bootId, logger, []);
    await intents.persist();
    return intents;
  }

  list(): ActivationIntent[] {
    return [...this.byLv.values()];
  }

  get(lvUuid: string): ActivationIntent | undefined {
    return this.byLv.get(lvUuid);
  }

  /** An activation succeeded (lv activate, or a restore under the LV's current names). */
  async activated(intent: ActivationIntent): Promise<void> {
    const known = this.byLv.get(intent.lvUuid);
    const same =
      known !== undefined &&
      known.vgUuid === intent.vgUuid &&
      known.vgName === intent.vgName &&
      known.lvName === intent.lvName &&
      known.mode === intent.mode;
    if (same) return;
    this.byLv.set(intent.lvUuid, { ...intent });
    await this.persist();
  }

  /**
   * An activation ended, or a restore was given up; with `only`, just when the recorded entry
   * is still that one (not replaced by a newer lv activate). True when an entry was removed.
   */
  async ended(lvUuid: string, only?: ActivationIntent): Promise<boolean> {
    const known = this.byLv.get(lvUuid);
    if (known === undefined || (only !== undefined && known !== only)) return false;
    this.byLv.delete(lvUuid);
    await this.persist();
    return true;
  }

  /** Writes the current list; a failure is logged (the activations themselves stand). */
  persist(): Promise<void> {
    const run = this.writing.then(async () => {
      const text = encodeActivationIntents({ bootId: this.bootId, activations: this.list() });
      await writeFileAtomic(this.filePath, text).catch((error: unknown) => {
        this.logger.warn('cannot record the LV activations of this host', {
          filePath: this.filePath,
          error,
        });
      });
    });
    this.writing = run;
    return run;
  }
}
