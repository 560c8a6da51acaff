/**
 * The public API of the heartbeat store: the lockspace layout and timings, the host slot format,
 * and the HeartbeatStore (the LivenessSource of src/locking).
 */
export {
  HeartbeatStore,
  type HeartbeatStoreDeps,
  type HeartbeatStoreOptions,
} from './heartbeat-store.js';
export * from './layout.js';
export * from './timings.js';
export type * from './types.js';
export {
  type DecodedSlot,
  type HeldSlot,
  type HostSlotRecord,
  addressBytesMax,
  decodeHostSlot,
  encodeHostSlot,
  hostNameBytesMax,
  hostSlotFlagLeft,
  hostSlotFormatVersion,
  hostSlotMagic,
  payloadBytesMax,
  payloadOffset,
} from './slot-format.js';
