/** tandem.v1.Node: facts about this daemon. Nothing here is invented: unknown facts are absent. */
import type { NodeHandlers } from '../../generated/tandem/v1/Node.js';
import type { GetInfoResponse } from '../../generated/tandem/v1/GetInfoResponse.js';
import type { Logger } from '../../log.js';
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
  /** Injected so tests can fix the uptime. */
  readonly nowMs?: () => number;
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
