/**
 * The real lease stack on one simulated host: HeartbeatStore (delta lease, liveness) and
 * LockManager (Disk Paxos leases, write gate) exactly as tandemd wires them, on the host's view of
 * the shared lockspace disk, with its data disk behind the manager's write gate.
 */
import { HeartbeatStore } from '../../src/heartbeat-store/heartbeat-store.js';
import { LockManager } from '../../src/locking/lock-manager.js';
import { gateDevice } from '../../src/locking/write-gate.js';
import type { FenceNotice, HostRuntime, RuntimeContext } from './host-runtime.js';

export async function startRealRuntime(context: RuntimeContext): Promise<HostRuntime> {
  const store = await HeartbeatStore.open(
    context.lockDevice,
    { hostName: context.hostName, hostId: context.hostId, address: context.address },
    {
      clock: context.clock,
      random: context.random,
      logger: context.logger.child({ part: 'hb' }),
      prober: context.prober,
    },
  );
  context.onStoppable(() => store.close());
  const instance = await store.join(context.signal);
  const manager = new LockManager({
    device: context.lockDevice,
    liveness: store,
    clock: context.clock,
    random: context.random,
    logger: context.logger.child({ part: 'locks' }),
  });
  const gate = manager.gate;
  const fenceListeners: ((notice: FenceNotice) => void)[] = [];
  gate.onClose((reason) => {
    // Listeners run inside close() before it records its drain: ask for the result afterwards
    // (calling close() from here would recurse).
    queueMicrotask(() => {
      void gate.close(reason).then((result) => {
        for (const listener of fenceListeners) listener({ reason, drained: result.drained });
      });
    });
  });
  const stop = async (): Promise<void> => {
    await manager.close();
    await store.close();
  };
  context.onStoppable(stop);
  return {
    instance,
    locks: manager,
    gatedDataDevice: gateDevice(context.dataDevice, gate),
    localState: () => store.localState(),
    hosts: () => store.hosts(),
    gateOpen: () => gate.isOpen,
    onFenced: (listener) => {
      fenceListeners.push(listener);
    },
    stop,
    leave: () => store.leave(),
  };
}
