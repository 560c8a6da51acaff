/**
 * tandemd settings: defaults, then a JSON config file (`--config FILE`), then flags; flags win.
 *
 * Everything is validated here, at the edge, so the rest of the daemon only sees well-formed
 * settings. Relative paths in the config file are taken from the file's own directory, so a
 * config keeps its meaning whatever directory tandemd is started from; relative paths given as
 * flags are taken from the current directory, as a shell user expects.
 */
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { TandemError } from '../errors.js';
import { addressBytesMax, hostNameBytesMax, maxHostsLimit } from '../heartbeat-store/index.js';
import { parseNbdUri } from '../disk/nbd-device.js';
import { type LogLevel, parseLogLevel } from '../log.js';

export interface ListenAddress {
  readonly host: string;
  /** 0 asks the system for any free port. */
  readonly port: number;
}

export interface DaemonConfig {
  readonly dataDir: string;
  readonly grpc: ListenAddress;
  readonly nbd: ListenAddress;
  readonly hostName: string;
  readonly logLevel: LogLevel;
  /** The lockspace device to join: a path (absolute) or an nbd:// URI; undefined: none. */
  readonly lockspace: string | undefined;
  /** The host id to join with; undefined: the first free slot (or the one with our name). */
  readonly hostId: number | undefined;
  /** `host:port` of the gRPC API as peers reach it; undefined: the bound gRPC address. */
  readonly advertise: string | undefined;
  /** Every file or block device in this directory is scanned for PVs at start (absolute). */
  readonly vgDir: string | undefined;
  /** More PVs to scan: paths (absolute) or nbd:// URIs (config file key `pvs`). */
  readonly pvs: readonly string[];
  /** Activate again, at start, the LVs active before a restart of tandemd (same boot only). */
  readonly restoreActivations: boolean;
}

/** The settings as given by flags or a config file, all optional and not yet checked. */
export interface ConfigInput {
  dataDir?: unknown;
  grpc?: unknown;
  nbd?: unknown;
  hostName?: unknown;
  logLevel?: unknown;
  lockspace?: unknown;
  hostId?: unknown;
  advertise?: unknown;
  vgDir?: unknown;
  pvs?: unknown;
  restoreActivations?: unknown;
}

export const defaultGrpcAddress: ListenAddress = { host: '127.0.0.1', port: 7600 };
export const defaultNbdAddress: ListenAddress = { host: '127.0.0.1', port: 10809 };
export const defaultDataDir = './data';
const configKeys: ReadonlySet<string> = new Set([
  'dataDir',
  'grpc',
  'nbd',
  'hostName',
  'logLevel',
  'lockspace',
  'hostId',
  'advertise',
  'vgDir',
  'pvs',
  'restoreActivations',
]);
/** RFC 1123 host names are at most 253 characters; we also refuse control characters. */
const hostNameLengthMax = 253;

function invalid(message: string, cause?: unknown): TandemError {
  return new TandemError('CONFIG_INVALID', message, { cause });
}

/** Parses `host:port`, `[v6]:port` or `:port`; an empty host means 127.0.0.1, never all interfaces. */
export function parseListenAddress(text: string, what: string): ListenAddress {
  const match = /^(?:\[([0-9A-Fa-f:.]+)\]|([^:[\]\s]*)):(\d{1,5})$/.exec(text.trim());
  if (match === null) {
    throw invalid(`${what}: '${text}' is not HOST:PORT (for IPv6: [ADDRESS]:PORT)`);
  }
  const host = match[1] ?? match[2] ?? '';
  const port = Number(match[3]);
  if (port > 65535) throw invalid(`${what}: port ${port} is out of range 0..65535`);
  return { host: host === '' ? '127.0.0.1' : host, port };
}

export function formatListenAddress(address: ListenAddress): string {
  return address.host.includes(':')
    ? `[${address.host}]:${address.port}`
    : `${address.host}:${address.port}`;
}

function checkString(value: unknown, what: string): string {
  if (typeof value !== 'string' || value.trim() === '') {
    throw invalid(`${what} must be a non-empty string`);
  }
  return value;
}

function checkHostName(value: unknown): string {
  const hostName = checkString(value, 'hostName');
  // eslint-disable-next-line no-control-regex
  if (hostName.length > hostNameLengthMax || /[\s\x00-\x1f\x7f]/.test(hostName)) {
    throw invalid(`hostName '${hostName}' must be 1..${hostNameLengthMax} characters, no spaces`);
  }
  return hostName;
}

function checkHostId(value: unknown): number {
  const hostId = typeof value === 'string' && /^\d+$/.test(value.trim()) ? Number(value) : value;
  if (typeof hostId !== 'number' || !Number.isInteger(hostId) || hostId < 1) {
    throw invalid(`hostId must be an integer in 1..${maxHostsLimit}, not '${String(value)}'`);
  }
  if (hostId > maxHostsLimit) {
    throw invalid(`hostId ${hostId} is out of range 1..${maxHostsLimit}`);
  }
  return hostId;
}

/** A lockspace is a path (resolved against `baseDirectory`) or an nbd:// URI (kept as it is). */
function checkLockspace(value: unknown, baseDirectory: string): string {
  const text = checkString(value, 'lockspace');
  if (/^nbd:/i.test(text)) {
    try {
      parseNbdUri(text);
    } catch (error) {
      throw invalid(`lockspace: ${error instanceof Error ? error.message : String(error)}`, error);
    }
    return text;
  }
  return path.resolve(baseDirectory, text);
}

function checkPvs(value: unknown, baseDirectory: string): string[] {
  if (!Array.isArray(value)) throw invalid('pvs must be a list of paths or nbd:// URIs');
  return value.map((item, index) => {
    const text = checkString(item, `pvs[${index}]`);
    return /^nbd:/i.test(text) ? text : path.resolve(baseDirectory, text);
  });
}

/** The address peers use: a real host (not a wildcard) and a real port. */
function checkAdvertise(value: unknown): string {
  const text = checkString(value, 'advertise');
  const address = parseListenAddress(text, 'advertise');
  if (address.port === 0 || isWildcardHost(address.host)) {
    throw invalid(`advertise: '${text}' must name a host and port that peers can reach`);
  }
  const formatted = formatListenAddress(address);
  if (Buffer.byteLength(formatted, 'utf8') > addressBytesMax) {
    throw invalid(
      `advertise: '${text}' is longer than the ${addressBytesMax} bytes of a host slot`,
    );
  }
  return formatted;
}

/** 0.0.0.0 or ::, which a server binds to but no client can connect to. */
export function isWildcardHost(host: string): boolean {
  return host === '0.0.0.0' || host === '::' || host === '0:0:0:0:0:0:0:0';
}

function checkBoolean(value: unknown, what: string): boolean {
  if (typeof value !== 'boolean') throw invalid(`${what} must be true or false`);
  return value;
}

function checkLogLevel(value: unknown): LogLevel {
  try {
    return parseLogLevel(checkString(value, 'logLevel'));
  } catch (error) {
    throw invalid(`logLevel: ${error instanceof Error ? error.message : String(error)}`, error);
  }
}

/**
 * Merges the layers (later wins) and validates the result. `baseDirectory` resolves a relative
 * data dir of each layer.
 */
export function resolveConfig(
  layers: ReadonlyArray<{ input: ConfigInput; baseDirectory: string }>,
  defaults: { hostName?: string; cwd?: string } = {},
): DaemonConfig {
  let dataDir = path.resolve(defaults.cwd ?? process.cwd(), defaultDataDir);
  let grpc = defaultGrpcAddress;
  let nbd = defaultNbdAddress;
  let hostName = defaults.hostName ?? os.hostname();
  let logLevel: LogLevel = 'info';
  let lockspace: string | undefined;
  let hostId: number | undefined;
  let advertise: string | undefined;
  let vgDir: string | undefined;
  let pvs: readonly string[] = [];
  let restoreActivations = true;
  for (const { input, baseDirectory } of layers) {
    if (input.dataDir !== undefined) {
      dataDir = path.resolve(baseDirectory, checkString(input.dataDir, 'dataDir'));
    }
    if (input.grpc !== undefined)
      grpc = parseListenAddress(checkString(input.grpc, 'grpc'), 'grpc');
    if (input.nbd !== undefined) nbd = parseListenAddress(checkString(input.nbd, 'nbd'), 'nbd');
    if (input.hostName !== undefined) hostName = checkHostName(input.hostName);
    if (input.logLevel !== undefined) logLevel = checkLogLevel(input.logLevel);
    if (input.lockspace !== undefined) lockspace = checkLockspace(input.lockspace, baseDirectory);
    if (input.hostId !== undefined) hostId = checkHostId(input.hostId);
    if (input.advertise !== undefined) advertise = checkAdvertise(input.advertise);
    if (input.vgDir !== undefined) {
      vgDir = path.resolve(baseDirectory, checkString(input.vgDir, 'vgDir'));
    }
    if (input.pvs !== undefined) pvs = checkPvs(input.pvs, baseDirectory);
    if (input.restoreActivations !== undefined) {
      restoreActivations = checkBoolean(input.restoreActivations, 'restoreActivations');
    }
  }
  if (grpc.port !== 0 && grpc.port === nbd.port && grpc.host === nbd.host) {
    throw invalid(`grpc and nbd cannot both listen on ${formatListenAddress(grpc)}`);
  }
  checkHostName(hostName);
  if (lockspace === undefined && hostId !== undefined) {
    throw invalid('hostId needs a lockspace (--lockspace PATH)');
  }
  if (Buffer.byteLength(hostName, 'utf8') > hostNameBytesMax) {
    throw invalid(
      `hostName '${hostName}' is longer than the ${hostNameBytesMax} bytes a lockspace keeps`,
    );
  }
  return {
    dataDir,
    grpc,
    nbd,
    hostName,
    logLevel,
    lockspace,
    hostId,
    advertise,
    vgDir,
    pvs,
    restoreActivations,
  };
}

/** Checks the shape of a parsed config file: an object with known keys only (typos are errors). */
export function parseConfigText(text: string, filePath: string): ConfigInput {
  let parsed: unknown;
  try {
    parsed = JSON.parse(text);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw invalid(`config file ${filePath} is not valid JSON: ${reason}`, error);
  }
  if (typeof parsed !== 'object' || parsed === null || Array.isArray(parsed)) {
    throw invalid(`config file ${filePath} must hold a JSON object`);
  }
  const unknownKeys = Object.keys(parsed).filter((key) => !configKeys.has(key));
  if (unknownKeys.length > 0) {
    throw invalid(
      `config file ${filePath}: unknown setting(s) ${unknownKeys.join(', ')} ` +
        `(known: ${[...configKeys].join(', ')})`,
    );
  }
  return parsed as ConfigInput;
}

export async function readConfigFile(filePath: string): Promise<ConfigInput> {
  let text: string;
  try {
    text = await fs.readFile(filePath, 'utf8');
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw invalid(`cannot read config file ${filePath}: ${reason}`, error);
  }
  return parseConfigText(text, filePath);
}

/** The daemon's flags as commander hands them over. */
export interface DaemonFlags extends ConfigInput {
  config?: string;
}

export async function loadConfig(flags: DaemonFlags, cwd = process.cwd()): Promise<DaemonConfig> {
  const layers: Array<{ input: ConfigInput; baseDirectory: string }> = [];
  if (flags.config !== undefined) {
    const configPath = path.resolve(cwd, flags.config);
    layers.push({
      input: await readConfigFile(configPath),
      baseDirectory: path.dirname(configPath),
    });
  }
  const { dataDir, grpc, nbd, hostName, logLevel, lockspace, hostId, advertise, vgDir } = flags;
  const { restoreActivations } = flags;
  layers.push({
    input: {
      dataDir,
      grpc,
      nbd,
      hostName,
      logLevel,
      lockspace,
      hostId,
      advertise,
      vgDir,
      restoreActivations,
    },
    baseDirectory: cwd,
  });
  return resolveConfig(layers, { cwd });
}
