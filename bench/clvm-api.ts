/**
 * The clustered-VG benchmark's hosts: tandemd daemons started as the integration tests start
 * them (separate processes on 127.0.0.1, port 0), and typed gRPC calls to their volume services
 * made from the benchmark process itself, which is faster and more exact to time than a CLI
 * process per call. Every unary call has a deadline; every stream has a bound.
 */
import path from 'node:path';
import { ApiConnection } from '../src/cli/api.js';
import type { ActivateLvResponse__Output } from '../src/generated/tandem/v1/ActivateLvResponse.js';
import type { CreateLvRequest } from '../src/generated/tandem/v1/CreateLvRequest.js';
import type { CreateLvResponse__Output } from '../src/generated/tandem/v1/CreateLvResponse.js';
import type { CreateVgRequest } from '../src/generated/tandem/v1/CreateVgRequest.js';
import type { CreateVgResponse__Output } from '../src/generated/tandem/v1/CreateVgResponse.js';
import type { ListLvsResponse__Output } from '../src/generated/tandem/v1/ListLvsResponse.js';
import type { ListPvsResponse__Output } from '../src/generated/tandem/v1/ListPvsResponse.js';
import type { ListVgsResponse__Output } from '../src/generated/tandem/v1/ListVgsResponse.js';
import type { LogicalVolumesClient } from '../src/generated/tandem/v1/LogicalVolumes.js';
import type { Lv__Output } from '../src/generated/tandem/v1/Lv.js';
import type { MoveProgress__Output } from '../src/generated/tandem/v1/MoveProgress.js';
import type { PhysicalVolumesClient } from '../src/generated/tandem/v1/PhysicalVolumes.js';
import type { Pv__Output } from '../src/generated/tandem/v1/Pv.js';
import type { Vg__Output } from '../src/generated/tandem/v1/Vg.js';
import type { VolumeEvent__Output } from '../src/generated/tandem/v1/VolumeEvent.js';
import type { VolumeGroupsClient } from '../src/generated/tandem/v1/VolumeGroups.js';
import { type DaemonHandle, startDaemon } from '../test/integration/helpers/daemon.js';
import { waitFor } from '../test/integration/helpers/tools.js';

/** Deadline of one unary call; a VG create formats a lockspace, so it gets more. */
const callTimeoutMs = 30_000;
const createVgTimeoutMs = 120_000;
/** How long a host may take to join a VG's lockspace after it learnt of the VG. */
export const joinTimeoutMs = 60_000;

export interface ClusterPaths {
  /** The --vg-dir of every host. */
  readonly pvDirectory: string;
  /** The global lockspace, so that hosts know each other's addresses. */
  readonly globalLockspacePath: string;
  /** Data dirs go under it. */
  readonly workDirectory: string;
}

export async function startHost(paths: ClusterPaths, hostName: string): Promise<VolumesApi> {
  const daemon = await startDaemon({
    hostName,
    dataDir: path.join(paths.workDirectory, `data-${hostName}`),
    extraArgs: [
      '--vg-dir',
      paths.pvDirectory,
      '--lockspace',
      paths.globalLockspacePath,
      '--log-level',
      'warn',
    ],
  });
  return new VolumesApi(daemon);
}

/** One daemon and one channel per volume service. */
export class VolumesApi {
  private readonly connection: ApiConnection;
  private readonly lvs: LogicalVolumesClient;
  private readonly vgs: VolumeGroupsClient;
  private readonly pvs: PhysicalVolumesClient;

  constructor(readonly daemon: DaemonHandle) {
    this.connection = new ApiConnection(daemon.grpcAddress, callTimeoutMs);
    const services = this.connection.services.tandem.v1;
    this.lvs = this.connection.client<LogicalVolumesClient>(services.LogicalVolumes);
    this.vgs = this.connection.client<VolumeGroupsClient>(services.VolumeGroups);
    this.pvs = this.connection.client<PhysicalVolumesClient>(services.PhysicalVolumes);
  }

  async createVg(request: CreateVgRequest): Promise<Vg__Output> {
    const response = await this.connection.call<CreateVgResponse__Output>(
      (metadata, options, callback) => this.vgs.CreateVg(request, metadata, options, callback),
      { timeoutMs: createVgTimeoutMs },
    );
    if (response.vg === null) throw new Error('CreateVg answered without the VG');
    return response.vg;
  }

  async createLv(request: CreateLvRequest): Promise<Lv__Output> {
    const response = await this.connection.call<CreateLvResponse__Output>(
      (metadata, options, callback) => this.lvs.CreateLv(request, metadata, options, callback),
    );
    if (response.lv === null) throw new Error('CreateLv answered without the LV');
    return response.lv;
  }

  async listLvs(vgName: string): Promise<Lv__Output[]> {
    const response = await this.connection.call<ListLvsResponse__Output>(
      (metadata, options, callback) => this.lvs.ListLvs({ vgName }, metadata, options, callback),
    );
    return response.lvs;
  }

  async listVgs(): Promise<Vg__Output[]> {
    const response = await this.connection.call<ListVgsResponse__Output>(
      (metadata, options, callback) => this.vgs.ListVgs({}, metadata, options, callback),
    );
    return response.vgs;
  }

  async vg(vgName: string): Promise<Vg__Output> {
    const found = (await this.listVgs()).find((vg) => vg.name === vgName);
    if (found === undefined) throw new Error(`${this.daemon.grpcAddress} does not know ${vgName}`);
    return found;
  }

  async listPvs(): Promise<Pv__Output[]> {
    const response = await this.connection.call<ListPvsResponse__Output>(
      (metadata, options, callback) => this.pvs.ListPvs({}, metadata, options, callback),
    );
    return response.pvs;
  }

  /** Activates exclusive here; resolves with the export's nbd:// host, port and name. */
  async activateExclusive(
    vgName: string,
    name: string,
  ): Promise<{ exportName: string; nbdAddress: string }> {
    const response = await this.connection.call<ActivateLvResponse__Output>(
      (metadata, options, callback) =>
        this.lvs.ActivateLv(
          { vgName, name, mode: 'ACTIVATION_MODE_EXCLUSIVE' },
          metadata,
          options,
          callback,
        ),
    );
    return { exportName: response.exportName, nbdAddress: response.nbdAddress };
  }

  /**
   * Runs a whole PV move; resolves with its last progress message (done). Cancelled, and then
   * rejected, after `timeoutMs`.
   */
  async movePv(
    pvPath: string,
    toPaths: readonly string[],
    timeoutMs: number,
  ): Promise<MoveProgress__Output> {
    const signal = AbortSignal.timeout(timeoutMs);
    let last: MoveProgress__Output | undefined;
    await this.connection.stream<MoveProgress__Output>(
      (metadata, options) =>
        this.pvs.MovePv({ path: pvPath, toPaths: [...toPaths] }, metadata, options),
      (progress) => {
        last = progress;
      },
      signal,
    );
    if (signal.aborted) throw new Error(`pv move ${pvPath} not done within ${timeoutMs} ms`);
    if (last?.done !== true) throw new Error(`pv move ${pvPath} ended before it was done`);
    return last;
  }

  /** WatchVolumes until `signal` aborts; `onEvent` gets every event as it arrives. */
  watch(onEvent: (event: VolumeEvent__Output) => void, signal: AbortSignal): Promise<void> {
    return this.connection.stream<VolumeEvent__Output>(
      (metadata, options) => this.vgs.WatchVolumes({}, metadata, options),
      onEvent,
      signal,
    );
  }

  /** Waits until this host has joined `vgName`'s lockspace (it can then take the VG lock). */
  async waitJoined(vgName: string): Promise<void> {
    await waitFor(
      async () => (await this.listVgs()).some((vg) => vg.name === vgName && vg.joined),
      {
        timeoutMs: joinTimeoutMs,
        intervalMs: 100,
        description: `${this.daemon.grpcAddress} to join VG ${vgName}`,
      },
    );
  }

  async stop(): Promise<void> {
    this.connection.close();
    const code = await this.daemon.stop();
    if (code !== 0) console.error(`bench: tandemd ${this.daemon.grpcAddress} exited with ${code}`);
  }
}
