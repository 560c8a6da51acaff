/**
 * tandem.v1.PhysicalVolumes, VolumeGroups and LogicalVolumes: the clustered volume manager of
 * this host. Requests are checked here; the work is in ../volume-operations.ts.
 */
import type { ActivateLvRequest__Output } from '../../generated/tandem/v1/ActivateLvRequest.js';
import type { LogicalVolumesHandlers } from '../../generated/tandem/v1/LogicalVolumes.js';
import type { MoveProgress } from '../../generated/tandem/v1/MoveProgress.js';
import type { MovePvRequest__Output } from '../../generated/tandem/v1/MovePvRequest.js';
import type { PhysicalVolumesHandlers } from '../../generated/tandem/v1/PhysicalVolumes.js';
import type { VolumeEvent as VolumeEventMessage } from '../../generated/tandem/v1/VolumeEvent.js';
import type { VolumeGroupsHandlers } from '../../generated/tandem/v1/VolumeGroups.js';
import type { WatchVolumesRequest__Output } from '../../generated/tandem/v1/WatchVolumesRequest.js';
import { TandemError } from '../../errors.js';
import { stripeSizeBytesDefault } from '../../clvm/types.js';
import type { LockInfo } from '../../locking/types.js';
import type { Logger } from '../../log.js';
import type { LvActivations } from '../lv-activations.js';
import type { PvMover } from '../pv-mover.js';
import { type OpenStreams, serverStreamHandler } from '../stream.js';
import { unaryHandler } from '../unary.js';
import type { VolumeEvent, VgEntry, VolumeHost } from '../volume-host.js';
import {
  allocationPolicyField,
  lvMessage,
  pvMessages,
  requiredText,
  uint64Field,
  vgMessage,
} from '../volume-messages.js';
import type { VolumeOperations } from '../volume-operations.js';

export interface VolumeServiceDependencies {
  readonly logger: Logger;
  readonly host: () => VolumeHost;
  readonly operations: VolumeOperations;
  readonly activations: LvActivations;
  readonly mover: PvMover;
  readonly streams: OpenStreams;
  readonly nbdAddress: () => string;
}

/** The VG lockspace's locks by name; empty when this host has not joined (no holder known). */
async function locksByName(host: VolumeHost, entry: VgEntry): Promise<Map<string, LockInfo>> {
  if (entry.member === undefined) return new Map();
  const locks = await host.locksOf(entry).list();
  return new Map(locks.map((lock) => [lock.name, lock]));
}

export function physicalVolumesHandlers(
  dependencies: VolumeServiceDependencies,
): PhysicalVolumesHandlers {
  const { logger, operations, host } = dependencies;
  return {
    CreatePv: unaryHandler(
      logger,
      'PhysicalVolumes.CreatePv',
      (request) => requiredText(request.path, 'path'),
      async (pvPath) => {
        await operations.createPv(pvPath);
        const pv = pvMessages(host()).find((candidate) => candidate.path === pvPath);
        return { pv };
      },
    ),
    ListPvs: unaryHandler(
      logger,
      'PhysicalVolumes.ListPvs',
      () => undefined,
      () => ({ pvs: pvMessages(host()) }),
    ),
    RemovePv: unaryHandler(
      logger,
      'PhysicalVolumes.RemovePv',
      (request) => requiredText(request.path, 'path'),
      async (pvPath) => {
        await operations.removePv(pvPath);
        return {};
      },
    ),
    ChangePv: unaryHandler(
      logger,
      'PhysicalVolumes.ChangePv',
      (request) => {
        if (request.allocatable === undefined) {
          throw new TandemError('INVALID_ARGUMENT', 'allocatable is required');
        }
        return { pvPath: requiredText(request.path, 'path'), allocatable: request.allocatable };
      },
      async ({ pvPath, allocatable }) => {
        await operations.changePv(pvPath, allocatable);
        return { pv: pvMessages(host()).find((candidate) => candidate.path === pvPath) };
      },
    ),
    MovePv: serverStreamHandler<
      MovePvRequest__Output,
      { path: string; toPaths: string[]; stepExtents: number | undefined },
      MoveProgress
    >(
      { logger, method: 'PhysicalVolumes.MovePv', streams: dependencies.streams },
      (request) => ({
        path: requiredText(request.path, 'path'),
        toPaths: request.toPaths,
        stepExtents: request.stepExtents === 0 ? undefined : request.stepExtents,
      }),
      (request, sink) => {
        const controller = new AbortController();
        dependencies.mover
          .move(
            request.path,
            { toPaths: request.toPaths, stepExtents: request.stepExtents },
            (progress) => sink.send(progress),
            controller.signal,
          )
          .then((last) => {
            sink.send({ ...last, done: true });
            sink.fail(undefined);
          })
          .catch((error: unknown) => sink.fail(error));
        return () =>
          controller.abort(new TandemError('FAILED_PRECONDITION', 'the client cancelled the move'));
      },
    ),
  };
}

export function volumeGroupsHandlers(
  dependencies: VolumeServiceDependencies,
): VolumeGroupsHandlers {
  const { logger, operations, host } = dependencies;
  return {
    CreateVg: unaryHandler(
      logger,
      'VolumeGroups.CreateVg',
      (request) => ({
        name: requiredText(request.name, 'name'),
        pvPaths: request.pvPaths,
        extentSizeBytes: uint64Field(request.extentSizeBytes, 'extent size') || undefined,
        maxHosts: request.maxHosts || undefined,
        ioTimeoutMs: request.ioTimeoutMs || undefined,
        maxLvs: request.maxLvs || undefined,
      }),
      async (input) => ({ vg: vgMessage(await operations.createVg(input)) }),
    ),
    ExtendVg: unaryHandler(
      logger,
      'VolumeGroups.ExtendVg',
      (request) => ({ name: requiredText(request.name, 'name'), pvPaths: request.pvPaths }),
      async ({ name, pvPaths }) => ({ vg: vgMessage(await operations.extendVg(name, pvPaths)) }),
    ),
    ReduceVg: unaryHandler(
      logger,
      'VolumeGroups.ReduceVg',
      (request) => ({
        name: requiredText(request.name, 'name'),
        pvPath: requiredText(request.pvPath, 'PV path'),
      }),
      async ({ name, pvPath }) => ({ vg: vgMessage(await operations.reduceVg(name, pvPath)) }),
    ),
    RenameVg: unaryHandler(
      logger,
      'VolumeGroups.RenameVg',
      (request) => ({
        name: requiredText(request.name, 'name'),
        newName: requiredText(request.newName, 'new name'),
      }),
      async ({ name, newName }) => ({ vg: vgMessage(await operations.renameVg(name, newName)) }),
    ),
    RemoveVg: unaryHandler(
      logger,
      'VolumeGroups.RemoveVg',
      (request) => requiredText(request.name, 'name'),
      async (name, context) => {
        await operations.removeVg(name, context.signal);
        return {};
      },
    ),
    ListVgs: unaryHandler(
      logger,
      'VolumeGroups.ListVgs',
      () => undefined,
      () => ({ vgs: host().list().map(vgMessage) }),
    ),
    ListVgHistory: unaryHandler(
      logger,
      'VolumeGroups.ListVgHistory',
      (request) => requiredText(request.name, 'name'),
      async (name) => ({
        versions: (await operations.history(name)).map((version) => ({
          seqno: String(version.seqno),
          updatedWallMs: String(version.updatedWallMs),
          updatedBy: version.updatedBy,
          lastChange: version.lastChange,
          lvCount: version.lvs.filter((lv) => !lv.hidden).length,
        })),
      }),
    ),
    RestoreVg: unaryHandler(
      logger,
      'VolumeGroups.RestoreVg',
      (request) => ({
        name: requiredText(request.name, 'name'),
        seqno: uint64Field(request.seqno, 'seqno'),
      }),
      async ({ name, seqno }) => ({ vg: vgMessage(await operations.restoreVg(name, seqno)) }),
    ),
    NotifyVgChanged: unaryHandler(
      logger,
      'VolumeGroups.NotifyVgChanged',
      (request) => ({
        vgUuid: requiredText(request.vgUuid, 'VG uuid'),
        seqno: uint64Field(request.seqno, 'seqno'),
        pvPaths: request.pvPaths,
      }),
      async ({ vgUuid, seqno, pvPaths }) => {
        await host().notified(vgUuid, seqno, pvPaths);
        return {};
      },
    ),
    WatchVolumes: serverStreamHandler<WatchVolumesRequest__Output, undefined, VolumeEventMessage>(
      { logger, method: 'VolumeGroups.WatchVolumes', streams: dependencies.streams },
      () => undefined,
      (_request, sink) => {
        const volumes = host();
        for (const entry of volumes.list()) {
          sink.send({
            kind: 'VOLUME_EVENT_KIND_VG_CHANGED',
            vg: vgMessage(entry),
            snapshot: true,
            reason: '',
          });
        }
        return volumes.watch((event) => {
          const message = eventMessage(dependencies, event);
          if (message !== undefined) sink.send(message);
        });
      },
    ),
  };
}

function eventMessage(
  dependencies: VolumeServiceDependencies,
  event: VolumeEvent,
): VolumeEventMessage | undefined {
  const volumes = dependencies.host();
  const entry = volumes.byUuid(event.vgUuid);
  const kinds = {
    'vg-changed': 'VOLUME_EVENT_KIND_VG_CHANGED',
    'vg-removed': 'VOLUME_EVENT_KIND_VG_REMOVED',
    'lv-resized': 'VOLUME_EVENT_KIND_LV_RESIZED',
    'lv-activated': 'VOLUME_EVENT_KIND_LV_ACTIVATED',
    'lv-deactivated': 'VOLUME_EVENT_KIND_LV_DEACTIVATED',
  } as const;
  const kind = kinds[event.kind];
  if (entry === undefined) {
    return event.kind === 'vg-removed'
      ? { kind, vg: { uuid: event.vgUuid }, snapshot: false, reason: event.reason ?? '' }
      : undefined;
  }
  const lv =
    event.lvUuid === undefined
      ? undefined
      : entry.vg.metadata.lvs.find((candidate) => candidate.uuid === event.lvUuid);
  return {
    kind,
    vg: vgMessage(entry),
    lv:
      lv === undefined
        ? undefined
        : lvMessage(volumes, dependencies.activations, entry, lv, new Map()),
    snapshot: false,
    reason: event.reason ?? '',
  };
}

function lvTarget(request: { vgName?: string; name?: string }): { vgName: string; name: string } {
  return {
    vgName: requiredText(request.vgName, 'VG name'),
    name: requiredText(request.name, 'LV name'),
  };
}

function activationMode(request: ActivateLvRequest__Output): 'ex' | 'sh' {
  if (request.mode === 'ACTIVATION_MODE_EXCLUSIVE') return 'ex';
  if (request.mode === 'ACTIVATION_MODE_SHARED') return 'sh';
  throw new TandemError('INVALID_ARGUMENT', 'mode must be exclusive or shared');
}

export function logicalVolumesHandlers(
  dependencies: VolumeServiceDependencies,
): LogicalVolumesHandlers {
  const { logger, operations, host, activations } = dependencies;
  const reply = async (vgName: string, name: string) => {
    const volumes = host();
    const entry = volumes.byName(vgName);
    const lv = entry.vg.metadata.lvs.find(
      (candidate) => !candidate.hidden && candidate.name === name,
    );
    if (lv === undefined) throw new TandemError('LV_NOT_FOUND', `no LV ${vgName}/${name}`);
    return lvMessage(volumes, activations, entry, lv, await locksByName(volumes, entry));
  };
  return {
    CreateLv: unaryHandler(
      logger,
      'LogicalVolumes.CreateLv',
      (request) => {
        const sizeBytes = uint64Field(request.sizeBytes, 'size');
        if (sizeBytes === 0) throw new TandemError('INVALID_ARGUMENT', 'size must be above 0');
        return {
          ...lvTarget(request),
          sizeBytes,
          tags: request.tags,
          stripes: Math.max(1, request.stripes),
          // Linear LVs have no stripe size; striped ones default to 64 KiB.
          stripeSizeBytes:
            request.stripes > 1
              ? uint64Field(request.stripeSizeBytes, 'stripe size') || stripeSizeBytesDefault
              : 0,
          policy: allocationPolicyField(request.allocationPolicy),
          pvPaths: request.pvPaths,
        };
      },
      async (input) => {
        await operations.createLv({ ...input, vgName: input.vgName });
        return { lv: await reply(input.vgName, input.name) };
      },
    ),
    ExtendLv: unaryHandler(
      logger,
      'LogicalVolumes.ExtendLv',
      (request) => ({
        ...lvTarget(request),
        sizeBytes: uint64Field(request.sizeBytes, 'size'),
        relative: request.relative,
        policy: allocationPolicyField(request.allocationPolicy),
      }),
      async (input) => {
        await operations.resizeLv(input.vgName, input.name, { ...input, grow: true, force: false });
        return { lv: await reply(input.vgName, input.name) };
      },
    ),
    ReduceLv: unaryHandler(
      logger,
      'LogicalVolumes.ReduceLv',
      (request) => ({
        ...lvTarget(request),
        sizeBytes: uint64Field(request.sizeBytes, 'size'),
        relative: request.relative,
        force: request.force,
      }),
      async (input) => {
        await operations.resizeLv(input.vgName, input.name, {
          ...input,
          grow: false,
          policy: 'normal',
        });
        return { lv: await reply(input.vgName, input.name) };
      },
    ),
    RenameLv: unaryHandler(
      logger,
      'LogicalVolumes.RenameLv',
      (request) => ({ ...lvTarget(request), newName: requiredText(request.newName, 'new name') }),
      async ({ vgName, name, newName }) => {
        await operations.renameLv(vgName, name, newName);
        return { lv: await reply(vgName, newName) };
      },
    ),
    RemoveLv: unaryHandler(
      logger,
      'LogicalVolumes.RemoveLv',
      lvTarget,
      async ({ vgName, name }) => {
        await operations.removeLv(vgName, name);
        return {};
      },
    ),
    SetLvTags: unaryHandler(
      logger,
      'LogicalVolumes.SetLvTags',
      (request) => ({ ...lvTarget(request), add: request.addTags, remove: request.removeTags }),
      async ({ vgName, name, add, remove }) => {
        await operations.setLvTags(vgName, name, add, remove);
        return { lv: await reply(vgName, name) };
      },
    ),
    ListLvs: unaryHandler(
      logger,
      'LogicalVolumes.ListLvs',
      (request) => request.vgName,
      async (vgName) => {
        const volumes = host();
        const entries = vgName === '' ? volumes.list() : [volumes.byName(vgName)];
        const lvs = [];
        for (const entry of entries) {
          const locks = await locksByName(volumes, entry).catch(() => new Map<string, LockInfo>());
          for (const lv of entry.vg.metadata.lvs) {
            if (!lv.hidden) lvs.push(lvMessage(volumes, activations, entry, lv, locks));
          }
        }
        return { lvs };
      },
    ),
    ActivateLv: unaryHandler(
      logger,
      'LogicalVolumes.ActivateLv',
      (request: ActivateLvRequest__Output) => ({
        ...lvTarget(request),
        mode: activationMode(request),
      }),
      async ({ vgName, name, mode }) => {
        const activation = await activations.activate(host().byName(vgName), name, mode);
        return {
          lv: await reply(vgName, name),
          exportName: activation.exportName,
          nbdAddress: dependencies.nbdAddress(),
        };
      },
    ),
    DeactivateLv: unaryHandler(
      logger,
      'LogicalVolumes.DeactivateLv',
      lvTarget,
      async ({ vgName, name }) => {
        await activations.deactivate(host().byName(vgName), name);
        return {};
      },
    ),
  };
}
