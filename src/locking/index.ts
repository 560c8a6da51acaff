/** The public API of the resource-lease layer (docs/leases.md). */
export * from './types.js';
export {
  LockManager,
  type LockManagerDeps,
  type FenceResult,
  pollIntervalMs,
} from './lock-manager.js';
export { WriteGate, gateDevice, type GateCloseResult, type WriteGateDeps } from './write-gate.js';
export { checkResourceName } from './resource-directory.js';
export {
  type LeaderRecord,
  type BallotRecord,
  type DecodeResult,
  decodeLeader,
  encodeLeader,
  decodeBallot,
  encodeBallot,
  decodeDirectoryEntry,
  encodeDirectoryEntry,
} from './lease-format.js';
