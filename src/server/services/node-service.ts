/** tandem.v1.Node: facts about this daemon. Nothing here is invented: unknown facts are absent. */
import type { NodeHandlers } from '../../generated/tandem/v1/Node.js';
import type { GetInfoResponse } from '../../generated/tandem/v1/GetInfoResponse.js';
import type { LockspaceState } from '../../generated/tandem/v1/LockspaceState.js';
import type { Logger } from '../../log.js';
import type { MembershipInfo, MembershipState } from '../lockspace-member.js';
import { unaryHandler } from '../unary.js';

export interface NodeFacts {
  readonly version: string;
  readonly hostName: string;
  readonly startTime: Date;
  readonly grpcAddress: string;
  readonly nbdAddress: string;
}

export interface NodeServiceDependencies {
  readonly logger: Logger;
  readonly facts: () => NodeFacts;
  readonly exportCounts: () => { exportCount: number; connectionCount: number };
  /** This host in its lockspace; undefined without --lockspace. */
  readonly membership?: () => MembershipInfo | undefined;
  /** Injected so tests can fix the uptime. */
  readonly nowMs?: () => number;
}

const lockspaceStates: Readonly<Record<MembershipState, LockspaceState>> = {
  idle: 'LOCKSPACE_STATE_IDLE',
  joining: 'LOCKSPACE_STATE_JOINING',
  joined: 'LOCKSPACE_STATE_JOINED',
  'renewal-failing': 'LOCKSPACE_STATE_RENEWAL_FAILING',
  fenced: 'LOCKSPACE_STATE_FENCED',
  left: 'LOCKSPACE_STATE_LEFT',
  // A stopping daemon releases everything and leaves.
  stopping: 'LOCKSPACE_STATE_LEFT',
  stopped: 'LOCKSPACE_STATE_LEFT',
};

function lockspaceFields(
  membership: MembershipInfo | undefined,
): Pick<
  GetInfoResponse,
  'hostId' | 'generation' | 'lockspacePath' | 'lockspaceUuid' | 'lockspaceState'
> {
  if (membership === undefined) {
    return {
      hostId: 0,
      generation: '0',
      lockspacePath: '',
      lockspaceUuid: '',
      lockspaceState: 'LOCKSPACE_STATE_NONE',
    };
  }
  return {
    hostId: membership.hostId,
    generation: String(membership.generation),
    lockspacePath: membership.lockspace,
    lockspaceUuid: membership.uuid,
    lockspaceState: lockspaceStates[membership.state],
  };
}

export function nodeInfo(dependencies: NodeServiceDependencies): GetInfoResponse {
  const facts = dependencies.facts();
  const nowMs = (dependencies.nowMs ?? Date.now)();
  const startMs = facts.startTime.getTime();
  const counts = dependencies.exportCounts();
  return {
    version: facts.version,
    hostName: facts.hostName,
    runtimeVersion: process.version,
    processId: process.pid,
    startTime: {
      seconds: String(Math.floor(startMs / 1000)),
      nanos: (startMs % 1000) * 1_000_000,
    },
    uptimeSeconds: String(Math.max(0, Math.floor((nowMs - startMs) / 1000))),
    grpcAddress: facts.grpcAddress,
    nbdAddress: facts.nbdAddress,
    exportCount: counts.exportCount,
    connectionCount: counts.connectionCount,
    ...lockspaceFields(dependencies.membership?.()),
  };
}

export function nodeHandlers(dependencies: NodeServiceDependencies): NodeHandlers {
  return {
    // GetInfoRequest has no fields, so there is nothing to validate.
    GetInfo: unaryHandler(
      dependencies.logger,
      'Node.GetInfo',
      () => undefined,
      () => nodeInfo(dependencies),
    ),
  };
}
