/**
 * tandem.v1.Hosts: the hosts of the lockspace this daemon joined, as this host sees them, and
 * this host's own slot (payload, fence). Without a lockspace every call is refused.
 */
import { TandemError } from '../../errors.js';
import type { HostEvent } from '../../generated/tandem/v1/HostEvent.js';
import type { HostsHandlers } from '../../generated/tandem/v1/Hosts.js';
import type { WatchHostsRequest__Output } from '../../generated/tandem/v1/WatchHostsRequest.js';
import type { Logger } from '../../log.js';
import {
  hostEventMessage,
  hostMessage,
  hostSnapshotMessage,
  validatePayload,
} from '../lease-messages.js';
import { type LockspaceMember, noLockspaceMessage } from '../lockspace-member.js';
import { type OpenStreams, serverStreamHandler } from '../stream.js';
import { unaryHandler } from '../unary.js';

/** A fence reason is logged; it is cut to this length. */
const fenceReasonCharactersMax = 200;

export interface LeaseServiceDependencies {
  readonly logger: Logger;
  /** undefined when tandemd runs without --lockspace. */
  readonly member: () => LockspaceMember | undefined;
  readonly streams: OpenStreams;
  /** --lockspace as configured; undefined when none. */
  readonly lockspace: string | undefined;
}

/** The member, or the error every lease call gives on a daemon without a (joined) lockspace. */
export function requireMember(dependencies: LeaseServiceDependencies): LockspaceMember {
  const member = dependencies.member();
  if (member !== undefined) return member;
  if (dependencies.lockspace === undefined) {
    throw new TandemError('LOCKSPACE_NOT_JOINED', noLockspaceMessage);
  }
  throw new TandemError(
    'LOCKSPACE_NOT_JOINED',
    `this host is still joining its lockspace ${dependencies.lockspace}; try again in a moment`,
  );
}

export function hostsHandlers(dependencies: LeaseServiceDependencies): HostsHandlers {
  const { logger, streams } = dependencies;
  return {
    ListHosts: unaryHandler(
      logger,
      'Hosts.ListHosts',
      () => requireMember(dependencies),
      (member) => ({
        hosts: member
          .hosts()
          .hosts()
          .slice()
          .sort((a, b) => a.hostId - b.hostId)
          .map(hostMessage),
      }),
    ),
    WatchHosts: serverStreamHandler<WatchHostsRequest__Output, LockspaceMember, HostEvent>(
      { logger, method: 'Hosts.WatchHosts', streams },
      () => requireMember(dependencies),
      (member, sink) => {
        // Both run in one turn of the event loop: no change falls between snapshot and watch.
        const store = member.hosts();
        const snapshot = store
          .hosts()
          .slice()
          .sort((a, b) => a.hostId - b.hostId);
        for (const host of snapshot) sink.send(hostSnapshotMessage(host));
        return store.watch((event) => sink.send(hostEventMessage(event)));
      },
    ),
    PublishPayload: unaryHandler(
      logger,
      'Hosts.PublishPayload',
      (request) => ({
        member: requireMember(dependencies),
        payload: validatePayload(request.payload),
      }),
      async ({ member, payload }) => {
        await member.hosts().publish(payload);
        return {};
      },
    ),
    Fence: unaryHandler(
      logger,
      'Hosts.Fence',
      (request) => ({
        member: requireMember(dependencies),
        reason:
          request.reason.trim() === ''
            ? 'fenced on request (Hosts.Fence)'
            : request.reason.slice(0, fenceReasonCharactersMax),
      }),
      async ({ member, reason }) => {
        await member.fence(reason);
        return {};
      },
    ),
  };
}
