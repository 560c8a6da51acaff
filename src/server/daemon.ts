/**
 * tandemd: reads its settings, starts the NBD server and the gRPC API, joins its lockspace (with
 * --lockspace), prints one ready line on stdout, and stops cleanly on SIGTERM or SIGINT.
 *
 * Start order: data dir, exports restored, NBD listening, gRPC listening, lockspace joined,
 * ready line. So when a client sees the ready line, every restored export is already served and
 * the host holds its host id. The lockspace is joined after gRPC listens because the address
 * peers probe (published in the host slot) defaults to the bound gRPC address.
 * The LV activations recorded before a restart are restored once their VGs are joined: the
 * first try of each before the ready line, waits for an earlier instance's lease after it.
 * Stop order: watch streams end, restores stop, every held lease is released (the recorded
 * activations stay) and the lockspace left, then the API (no new changes), every NBD
 * connection, the devices, so no request is in flight on a device being closed.
 */
import fs from 'node:fs/promises';
import { Command, Option } from 'commander';
import { openFileDevice } from '../disk/file-device.js';
import { TandemError, isTandemError } from '../errors.js';
import { tandemVersion } from '../generated/version.js';
import { addressBytesMax } from '../heartbeat-store/index.js';
import { type Logger, createLogger } from '../log.js';
import { NbdServer } from '../nbd/server.js';
import { ActivationIntents } from './activation-intent.js';
import { ActivationRestorer } from './activation-restore.js';
import {
  type DaemonConfig,
  type DaemonFlags,
  type ListenAddress,
  formatListenAddress,
  isWildcardHost,
  loadConfig,
} from './config.js';
import { ExportManager } from './export-manager.js';
import {
  TandemGrpcServer,
  type TandemServiceRegistration,
  tandemServiceDefinitions,
} from './grpc-server.js';
import { LockspaceMember, type MembershipInfo } from './lockspace-member.js';
import { LvActivations } from './lv-activations.js';
import { PvMover } from './pv-mover.js';
import { exportsHandlers } from './services/exports-service.js';
import {
  logicalVolumesHandlers,
  physicalVolumesHandlers,
  volumeGroupsHandlers,
} from './services/volumes-service.js';
import { VolumeHost } from './volume-host.js';
import { VolumeOperations } from './volume-operations.js';
import { hostsHandlers } from './services/hosts-service.js';
import { locksHandlers } from './services/locks-service.js';
import { nodeHandlers } from './services/node-service.js';
import { OpenStreams } from './stream.js';

/** The exit code when fenced with writes still stuck in the kernel (EX_SOFTWARE). */
export const stuckWritesExitCode = 70;
/** How long running gRPC calls may take to finish once a stop was asked for. */
export const grpcShutdownGraceMs = 5_000;
/** If a clean stop takes longer than this, something hangs: exit non-zero rather than wait. */
export const stopTimeoutMs = 15_000;

export interface RunningDaemon {
  readonly grpcAddress: string;
  readonly nbdAddress: string;
  /** This host in its lockspace; undefined without --lockspace. */
  membership(): MembershipInfo | undefined;
  stop(): Promise<void>;
}

/** `tandemd ready grpc=… nbd=…`, plus ` host-id=N generation=G` once joined to a lockspace. */
export function readyLine(daemon: RunningDaemon): string {
  const base = `tandemd ready grpc=${daemon.grpcAddress} nbd=${daemon.nbdAddress}`;
  const membership = daemon.membership();
  if (membership === undefined) return base;
  return `${base} host-id=${membership.hostId} generation=${membership.generation}`;
}

/**
 * The address published to peers: --advertise, else the bound gRPC address. A wildcard bind
 * (0.0.0.0) cannot be dialled: the host name stands in for it then.
 */
export function advertisedAddress(
  config: DaemonConfig,
  bound: ListenAddress,
  logger: Logger,
): string {
  if (config.advertise !== undefined) return config.advertise;
  let address = formatListenAddress(bound);
  if (isWildcardHost(bound.host)) {
    address = formatListenAddress({ host: config.hostName, port: bound.port });
    logger.warn('gRPC listens on all interfaces: advertising the host name to peers', {
      address,
      hint: 'set --advertise HOST:PORT',
    });
  }
  if (Buffer.byteLength(address, 'utf8') > addressBytesMax) {
    throw new TandemError(
      'CONFIG_INVALID',
      `the gRPC address ${address} is longer than ${addressBytesMax} bytes; set --advertise HOST:PORT`,
    );
  }
  return address;
}

export async function startDaemon(config: DaemonConfig, logger: Logger): Promise<RunningDaemon> {
  const startTime = new Date();
  await fs.mkdir(config.dataDir, { recursive: true }).catch((error: unknown) => {
    throw new TandemError('CONFIG_INVALID', `cannot create data dir ${config.dataDir}`, {
      cause: error,
    });
  });
  const nbdServer = new NbdServer({ logger: logger.child({ component: 'nbd' }) });
  const exportManager = new ExportManager({
    dataDir: config.dataDir,
    registry: nbdServer,
    openDevice: (filePath, options) => openFileDevice(filePath, options),
    logger: logger.child({ component: 'exports' }),
  });
  // Known once bound (port 0 asks for any); read lazily by the handlers.
  const addresses = {
    grpc: formatListenAddress(config.grpc),
    nbd: formatListenAddress(config.nbd),
  };
  const grpcLogger = logger.child({ component: 'grpc' });
  const streams = new OpenStreams();
  let member: LockspaceMember | undefined;
  let volumeHost: VolumeHost | undefined;
  const volumesLogger = logger.child({ component: 'volumes' });
  const requireVolumeHost = (): VolumeHost => {
    if (volumeHost === undefined) {
      throw new TandemError('FAILED_PRECONDITION', 'tandemd is still starting its volume groups');
    }
    return volumeHost;
  };
  const intents = await ActivationIntents.load({
    dataDir: config.dataDir,
    restore: config.restoreActivations,
    logger: volumesLogger,
  });
  const activations = new LvActivations({
    host: requireVolumeHost,
    target: nbdServer,
    logger: volumesLogger,
    intents,
  });
  const restorer = new ActivationRestorer({
    activations,
    intents,
    hostName: config.hostName,
    logger: volumesLogger,
  });
  const operations = new VolumeOperations({
    host: requireVolumeHost,
    activations,
    hostName: config.hostName,
    logger: volumesLogger,
    globalLocks: () => member?.locks(),
  });
  const volumes = {
    host: requireVolumeHost,
    activations,
    operations,
    mover: new PvMover({
      host: requireVolumeHost,
      operations,
      activations,
      hostName: config.hostName,
      logger: volumesLogger,
    }),
  };
  const grpcServer = new TandemGrpcServer({
    logger: grpcLogger,
    services: tandemServices({
      config,
      startTime,
      nbdServer,
      exportManager,
      addresses,
      logger: grpcLogger,
      member: () => member,
      streams,
      volumes,
    }),
  });

  let grpcStarted = false;
  const stop = async (): Promise<void> => {
    streams.endAll();
    await restorer.stop();
    await activations.deactivateAll();
    await volumeHost?.stop();
    await member?.stop();
    if (grpcStarted) await grpcServer.shutdown(grpcShutdownGraceMs);
    await nbdServer.close();
    await exportManager.closeDevices();
  };
  try {
    const restored = await exportManager.restore();
    logger.info('exports restored', restored);
    addresses.nbd = formatListenAddress(await listenNbd(nbdServer, config));
    const boundGrpc = await grpcServer.listen(config.grpc);
    addresses.grpc = formatListenAddress(boundGrpc);
    grpcStarted = true;
    if (config.lockspace !== undefined) {
      member = await LockspaceMember.start({
        lockspace: config.lockspace,
        hostName: config.hostName,
        hostId: config.hostId,
        address: advertisedAddress(config, boundGrpc, logger),
        logger: logger.child({ component: 'lockspace' }),
        onWritesStuck: exitOnStuckWrites(logger),
      });
    }
    volumeHost = await VolumeHost.start({
      hostName: config.hostName,
      dataDir: config.dataDir,
      vgDir: config.vgDir,
      pvPaths: config.pvs,
      address: advertisedAddress(config, boundGrpc, logger),
      logger: volumesLogger,
      onWritesStuck: exitOnStuckWrites(logger),
      extraPeers: livePeersOf(member),
      onMetadataChanged: (entry) => activations.metadataChanged(entry),
    });
    logger.info('volume groups opened', { vgCount: volumeHost.list().length });
    await restorer.start(volumeHost);
  } catch (error) {
    await stop().catch((stopError: unknown) => {
      logger.warn('cleanup after a failed start failed', { error: stopError });
    });
    throw error;
  }
  return {
    grpcAddress: addresses.grpc,
    nbdAddress: addresses.nbd,
    membership: () => member?.info(),
    stop,
  };
}

/** Writes stuck in the kernel past the fence drain time: exit (the role of sanlock's watchdog). */
function exitOnStuckWrites(logger: Logger): (stuckWrites: number) => void {
  return (stuckWrites) => {
    logger.error('writes of this host are stuck past the fence drain time: exiting', {
      stuckWrites,
    });
    process.exit(stuckWritesExitCode);
  };
}

/** The addresses of the other live hosts of the --lockspace (they hear of VG changes too). */
function livePeersOf(member: LockspaceMember | undefined): () => string[] {
  return () => {
    if (member === undefined) return [];
    try {
      return member
        .hosts()
        .hosts()
        .filter((host) => !host.self && host.address !== '' && host.state !== 'left')
        .map((host) => host.address);
    } catch {
      return [];
    }
  };
}

/** The tandem services of this daemon; a new service file adds its registration here. */
function tandemServices(parts: {
  config: DaemonConfig;
  startTime: Date;
  nbdServer: NbdServer;
  exportManager: ExportManager;
  addresses: { grpc: string; nbd: string };
  logger: Logger;
  member: () => LockspaceMember | undefined;
  streams: OpenStreams;
  volumes: {
    host: () => VolumeHost;
    activations: LvActivations;
    operations: VolumeOperations;
    mover: PvMover;
  };
}): TandemServiceRegistration[] {
  const { config, startTime, nbdServer, exportManager, addresses, logger } = parts;
  const definitions = tandemServiceDefinitions();
  const leaseDependencies = {
    logger,
    member: parts.member,
    streams: parts.streams,
    lockspace: config.lockspace,
  };
  const volumeDependencies = {
    ...parts.volumes,
    logger,
    streams: parts.streams,
    nbdAddress: () => addresses.nbd,
  };
  return [
    {
      name: 'tandem.v1.Node',
      definition: definitions.node,
      handlers: nodeHandlers({
        logger,
        facts: () => ({
          version: tandemVersion,
          hostName: config.hostName,
          startTime,
          grpcAddress: addresses.grpc,
          nbdAddress: addresses.nbd,
        }),
        exportCounts: () => {
          const exports = nbdServer.listExports();
          const connectionCount = exports.reduce((sum, item) => sum + item.connectionCount, 0);
          return { exportCount: exports.length, connectionCount };
        },
        membership: () => parts.member()?.info(),
      }),
    },
    {
      name: 'tandem.v1.Exports',
      definition: definitions.exports,
      handlers: exportsHandlers({
        logger,
        exportManager,
        nbdBaseUri: () => `nbd://${addresses.nbd}/`,
      }),
    },
    {
      name: 'tandem.v1.Hosts',
      definition: definitions.hosts,
      handlers: hostsHandlers(leaseDependencies),
    },
    {
      name: 'tandem.v1.Locks',
      definition: definitions.locks,
      handlers: locksHandlers(leaseDependencies),
    },
    {
      name: 'tandem.v1.PhysicalVolumes',
      definition: definitions.physicalVolumes,
      handlers: physicalVolumesHandlers(volumeDependencies),
    },
    {
      name: 'tandem.v1.VolumeGroups',
      definition: definitions.volumeGroups,
      handlers: volumeGroupsHandlers(volumeDependencies),
    },
    {
      name: 'tandem.v1.LogicalVolumes',
      definition: definitions.logicalVolumes,
      handlers: logicalVolumesHandlers(volumeDependencies),
    },
  ];
}

async function listenNbd(
  nbdServer: NbdServer,
  config: DaemonConfig,
): Promise<{ host: string; port: number }> {
  try {
    return await nbdServer.listen(config.nbd);
  } catch (error) {
    const reason = error instanceof Error ? error.message : String(error);
    throw new TandemError(
      'LISTEN_FAILED',
      `cannot listen for NBD on ${formatListenAddress(config.nbd)}: ${reason}`,
      { cause: error },
    );
  }
}

export function buildDaemonProgram(): Command {
  return new Command('tandemd')
    .description('The tandem daemon: block exports over NBD, managed over gRPC.')
    .version(tandemVersion)
    .option('--config <file>', 'JSON config file; flags override its settings')
    .option('--data-dir <dir>', 'where tandemd keeps its state (default: ./data)')
    .option('--grpc <host:port>', 'gRPC API listen address; port 0 = any (default: 127.0.0.1:7600)')
    .option('--nbd <host:port>', 'NBD listen address; port 0 = any (default: 127.0.0.1:10809)')
    .option('--host-name <name>', 'this host in the cluster (default: the system host name)')
    .option(
      '--lockspace <path>',
      'join the lockspace on this file, block device or nbd://host:port/export',
    )
    .option('--host-id <n>', 'host id to join the lockspace with (default: a free one)')
    .option(
      '--vg-dir <dir>',
      'scan every file and block device in this directory for PVs and join the VGs found',
    )
    .option(
      '--advertise <host:port>',
      'gRPC address peers reach this host at (default: the bound gRPC address)',
    )
    .option(
      '--restore-activations',
      'at start, activate again the LVs active before a restart of tandemd (default)',
    )
    .option('--no-restore-activations', 'start with no LV active, whatever was recorded')
    .addOption(
      new Option('--log-level <level>', 'log level (default: info)').choices([
        'debug',
        'info',
        'warn',
        'error',
      ]),
    )
    .showHelpAfterError()
    .allowExcessArguments(false);
}

/** Commander's parsed options as loadConfig takes them (an unset flag stays undefined). */
export function toFlags(options: Record<string, unknown>): DaemonFlags {
  const text = (value: unknown): string | undefined =>
    typeof value === 'string' ? value : undefined;
  return {
    config: text(options['config']),
    dataDir: options['dataDir'],
    grpc: options['grpc'],
    nbd: options['nbd'],
    hostName: options['hostName'],
    logLevel: options['logLevel'],
    lockspace: options['lockspace'],
    hostId: options['hostId'],
    advertise: options['advertise'],
    vgDir: options['vgDir'],
    restoreActivations: options['restoreActivations'],
  };
}

function describeError(error: unknown): string {
  if (isTandemError(error)) return `${error.message} (${error.code})`;
  return error instanceof Error ? error.message : String(error);
}

/** Entry point of bin/tandemd.js. Resolves once the daemon runs; exits the process on stop. */
export async function main(argv: readonly string[] = process.argv): Promise<void> {
  const program = buildDaemonProgram();
  program.parse([...argv]);
  let logger = createLogger();
  let daemon: RunningDaemon;
  try {
    const config = await loadConfig(toFlags(program.opts()));
    logger = createLogger({ level: config.logLevel, fields: { hostName: config.hostName } });
    installCrashHandlers(logger);
    daemon = await startDaemon(config, logger);
  } catch (error) {
    logger.error('tandemd failed to start', { error });
    process.stderr.write(`tandemd: ${describeError(error)}\n`);
    process.exit(1);
  }
  const line = readyLine(daemon);
  const membership = daemon.membership();
  logger.info(line, {
    grpcAddress: daemon.grpcAddress,
    nbdAddress: daemon.nbdAddress,
    ...(membership === undefined
      ? {}
      : { hostId: membership.hostId, generation: membership.generation }),
  });
  process.stdout.write(`${line}\n`);
  installStopHandlers(daemon, logger);
}

function installStopHandlers(daemon: RunningDaemon, logger: Logger): void {
  let stopping = false;
  const onSignal = (signal: NodeJS.Signals): void => {
    if (stopping) {
      logger.warn('second signal while stopping: exiting now', { signal });
      process.exit(1);
    }
    stopping = true;
    logger.info('stopping', { signal });
    const watchdog = setTimeout(() => {
      logger.error('stop did not finish in time: exiting', { stopTimeoutMs });
      process.exit(1);
    }, stopTimeoutMs);
    watchdog.unref();
    daemon.stop().then(
      () => {
        logger.info('stopped');
        process.exit(0);
      },
      (error: unknown) => {
        logger.error('stop failed', { error });
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', onSignal);
  process.on('SIGINT', onSignal);
}

/** Crash-only: an unexpected exception leaves state unknown, so log it and exit. */
function installCrashHandlers(logger: Logger): void {
  const crash = (error: unknown): void => {
    logger.error('uncaught error: exiting', { error });
    process.exit(1);
  };
  process.on('uncaughtException', crash);
  process.on('unhandledRejection', crash);
}
