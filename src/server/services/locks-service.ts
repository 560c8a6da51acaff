/**
 * tandem.v1.Locks: resource locks taken by this daemon's host. Requests are checked before any
 * lease code runs; a wait for a lock ends when the client cancels, the call's deadline passes
 * or the daemon stops.
 */
import { TandemError, isTandemError } from '../../errors.js';
import type { LockEvent } from '../../generated/tandem/v1/LockEvent.js';
import type { LocksHandlers } from '../../generated/tandem/v1/Locks.js';
import type { WatchLocksRequest__Output } from '../../generated/tandem/v1/WatchLocksRequest.js';
import type { LockInfo } from '../../locking/types.js';
import type { Logger } from '../../log.js';
import {
  lockEventMessage,
  lockMessage,
  validateLockMode,
  validateLockName,
  validateLockValue,
  validateWaitMs,
} from '../lease-messages.js';
import type { LockspaceMember } from '../lockspace-member.js';
import { type OpenStreams, serverStreamHandler } from '../stream.js';
import { type CallContext, unaryHandler } from '../unary.js';
import { type LeaseServiceDependencies, requireMember } from './hosts-service.js';

/** The wait a call may still afford: never past its deadline. */
export function effectiveWaitMs(waitMs: number, deadlineMs: number, nowMs = Date.now()): number {
  return Math.max(0, Math.min(waitMs, deadlineMs - nowMs));
}

function waitSignal(member: LockspaceMember, context: CallContext): AbortSignal {
  return AbortSignal.any([context.signal, member.stopSignal]);
}

/**
 * A lock taken after its caller went away would be held by nobody who knows it: give it back.
 * Resolves with the lock for a caller still waiting.
 */
async function keepOrGiveBack(
  member: LockspaceMember,
  context: CallContext,
  logger: Logger,
  info: LockInfo,
): Promise<LockInfo> {
  if (!context.signal.aborted) return info;
  logger.warn('lock taken after its caller gave up: releasing it', { name: info.name });
  await member.locks().release(info.name);
  throw new TandemError('LOCK_TIMEOUT', `the call ended before lock '${info.name}' was taken`);
}

export function locksHandlers(dependencies: LeaseServiceDependencies): LocksHandlers {
  const { logger, streams } = dependencies;
  const member = (): LockspaceMember => requireMember(dependencies);
  return {
    Acquire: acquireHandler(logger, member),
    Release: unaryHandler(
      logger,
      'Locks.Release',
      (request) => ({
        member: member(),
        name: validateLockName(request.name),
        value: request.value === undefined ? undefined : validateLockValue(request.value),
      }),
      async ({ member: found, name, value }) => {
        await found.locks().release(name, value === undefined ? undefined : { value });
        return {};
      },
    ),
    Convert: convertHandler(logger, member),
    SetValue: unaryHandler(
      logger,
      'Locks.SetValue',
      (request) => ({
        member: member(),
        name: validateLockName(request.name),
        value: validateLockValue(request.value),
      }),
      async ({ member: found, name, value }) => ({
        lock: lockMessage(await found.locks().setValue(name, value)),
      }),
    ),
    Inspect: unaryHandler(
      logger,
      'Locks.Inspect',
      (request) => ({ member: member(), name: validateLockName(request.name) }),
      async ({ member: found, name }) => ({
        lock: lockMessage(await found.locks().inspect(name)),
      }),
    ),
    ListLocks: unaryHandler(
      logger,
      'Locks.ListLocks',
      () => member(),
      async (found) => {
        const locks = await found.locks().list();
        locks.sort((a, b) => (a.name < b.name ? -1 : a.name > b.name ? 1 : 0));
        return { locks: locks.map(lockMessage) };
      },
    ),
    WatchLocks: watchLocksHandler(logger, streams, member),
    RequestRelease: unaryHandler(
      logger,
      'Locks.RequestRelease',
      (request) => ({ member: member(), name: validateLockName(request.name) }),
      async ({ member: found, name }) => {
        try {
          await found.locks().requestRelease(name);
        } catch (error) {
          throw isTandemError(error, 'LOCK_NOT_HELD')
            ? await pointAtHolder(found, name, error)
            : error;
        }
        return {};
      },
    ),
  };
}

/**
 * RequestRelease sent to a host that does not hold the lock: say who does, and where to send it.
 * Reading the lock is best effort: if it fails, the original error stands.
 */
async function pointAtHolder(
  member: LockspaceMember,
  name: string,
  error: TandemError,
): Promise<TandemError> {
  let holders: LockInfo['sharedOwners'];
  try {
    const info = await member.locks().inspect(name);
    holders = info.owner === undefined ? info.sharedOwners : [info.owner];
  } catch {
    return error;
  }
  if (holders.length === 0) {
    return new TandemError('LOCK_NOT_HELD', `lock '${name}' is not held by any host`, {
      cause: error,
    });
  }
  const hosts = member.hosts().hosts();
  const addresses = holders.map(
    (holder) => hosts.find((host) => host.hostId === holder.hostId)?.address ?? '',
  );
  const where = holders.map((holder, index) => {
    const label = `${holder.hostName === '' ? 'host' : holder.hostName}#${holder.hostId}`;
    return addresses[index] === '' ? label : `${label} at ${addresses[index]}`;
  });
  const server = addresses.length === 1 && addresses[0] !== '' ? addresses[0] : 'HOLDER';
  return new TandemError(
    'LOCK_NOT_HELD',
    `lock '${name}' is not held by this host but by ${where.join(', ')}: ask the holder (tandem --server ${server} lock request-release ${name})`,
    { cause: error },
  );
}

function acquireHandler(logger: Logger, member: () => LockspaceMember): LocksHandlers['Acquire'] {
  return unaryHandler(
    logger,
    'Locks.Acquire',
    (request) => {
      const mode = validateLockMode(request.mode);
      const value = request.value === undefined ? undefined : validateLockValue(request.value);
      if (value !== undefined && mode !== 'ex') {
        throw new TandemError('INVALID_ARGUMENT', 'only an exclusive lock can write a value');
      }
      return {
        member: member(),
        name: validateLockName(request.name),
        mode,
        waitMs: validateWaitMs(request.waitMs),
        value,
      };
    },
    async (valid, context) => {
      const info = await valid.member.locks().acquire(valid.name, {
        mode: valid.mode,
        waitMs: effectiveWaitMs(valid.waitMs, context.deadlineMs),
        value: valid.value,
        signal: waitSignal(valid.member, context),
      });
      return { lock: lockMessage(await keepOrGiveBack(valid.member, context, logger, info)) };
    },
  );
}

function convertHandler(logger: Logger, member: () => LockspaceMember): LocksHandlers['Convert'] {
  return unaryHandler(
    logger,
    'Locks.Convert',
    (request) => ({
      member: member(),
      name: validateLockName(request.name),
      mode: validateLockMode(request.mode),
      waitMs: validateWaitMs(request.waitMs),
    }),
    async (valid, context) => {
      const info = await valid.member.locks().convert(valid.name, valid.mode, {
        waitMs: effectiveWaitMs(valid.waitMs, context.deadlineMs),
        signal: waitSignal(valid.member, context),
      });
      return { lock: lockMessage(info) };
    },
  );
}

function watchLocksHandler(
  logger: Logger,
  streams: OpenStreams,
  member: () => LockspaceMember,
): LocksHandlers['WatchLocks'] {
  return serverStreamHandler<WatchLocksRequest__Output, LockspaceMember, LockEvent>(
    { logger, method: 'Locks.WatchLocks', streams },
    () => member(),
    (found, sink) => found.watchLocks((event) => sink.send(lockEventMessage(event))),
  );
}
