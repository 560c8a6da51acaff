/**
 * How tandemd checks that a peer host is reachable over the network: a grpc.health.v1 Check
 * call to the address the peer publishes in its host slot, with a deadline of the lockspace's
 * ioTimeoutMs. The heartbeat store uses the answers to tell an isolated host (its slot renews,
 * but nobody reaches it) from a live one (docs/leases.md, Liveness).
 *
 * One channel per address is kept and reused (a probe every T/2 must not open a connection
 * each time); at most `peerChannelsMax` are kept, the least recently used one is closed first.
 * At most one probe per address is in flight: a second one waits for the first one's answer.
 */
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';
import { maxHostsLimit } from '../heartbeat-store/layout.js';
import type { PeerProber } from '../heartbeat-store/types.js';
import type { Logger } from '../log.js';

/** As many channels as a lockspace can have hosts. */
export const peerChannelsMax = maxHostsLimit;

interface HealthCheckClient extends grpc.Client {
  Check(
    request: { service: string },
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, response?: { status: string }) => void,
  ): grpc.ClientUnaryCall;
}

type HealthCheckClientConstructor = new (
  address: string,
  credentials: grpc.ChannelCredentials,
) => HealthCheckClient;

function loadHealthClient(): HealthCheckClientConstructor {
  const definition = protoLoader.loadSync(healthProtoPath, {
    enums: String,
    defaults: true,
    keepCase: false,
  });
  const loaded = grpc.loadPackageDefinition(definition) as unknown as {
    grpc: { health: { v1: { Health: HealthCheckClientConstructor } } };
  };
  return loaded.grpc.health.v1.Health;
}

export class GrpcPeerProber implements PeerProber {
  private readonly clients = new Map<string, HealthCheckClient>();
  private readonly inFlight = new Map<string, Promise<boolean>>();
  private healthClient: HealthCheckClientConstructor | undefined;
  private closed = false;
  private timeoutMs: number;

  constructor(
    private readonly options: {
      /** The deadline of one probe; the lockspace's ioTimeoutMs. */
      timeoutMs: number;
      logger: Logger;
      channelsMax?: number;
    },
  ) {
    this.timeoutMs = options.timeoutMs;
  }

  /** The lockspace's T is known only once its header is read. */
  setTimeoutMs(timeoutMs: number): void {
    this.timeoutMs = timeoutMs;
  }

  probe(address: string, signal: AbortSignal): Promise<boolean> {
    if (this.closed || address === '' || signal.aborted) return Promise.resolve(false);
    const running = this.inFlight.get(address);
    if (running !== undefined) return running;
    const probe = this.check(address, signal).finally(() => this.inFlight.delete(address));
    this.inFlight.set(address, probe);
    return probe;
  }

  /** Closes every channel; later probes answer false. */
  close(): void {
    this.closed = true;
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }

  private check(address: string, signal: AbortSignal): Promise<boolean> {
    const client = this.client(address);
    return new Promise((resolve) => {
      const call = client.Check(
        { service: '' },
        { deadline: Date.now() + this.timeoutMs },
        (error, response) => {
          signal.removeEventListener('abort', onAbort);
          if (error !== null) {
            this.options.logger.debug('peer probe failed', {
              address,
              grpcCode: error.code,
              details: error.details,
            });
          }
          // Any answer, even NOT_SERVING while a peer stops, shows the network reaches it.
          resolve(error === null && response !== undefined);
        },
      );
      const onAbort = (): void => call.cancel();
      signal.addEventListener('abort', onAbort, { once: true });
    });
  }

  private client(address: string): HealthCheckClient {
    const existing = this.clients.get(address);
    if (existing !== undefined) {
      // Map order is insertion order: re-insert to mark it the most recently used.
      this.clients.delete(address);
      this.clients.set(address, existing);
      return existing;
    }
    const channelsMax = this.options.channelsMax ?? peerChannelsMax;
    while (this.clients.size >= channelsMax) {
      const [oldestAddress, oldest] = this.clients.entries().next().value ?? [];
      if (oldestAddress === undefined || oldest === undefined) break;
      oldest.close();
      this.clients.delete(oldestAddress);
    }
    this.healthClient ??= loadHealthClient();
    const client = new this.healthClient(address, grpc.credentials.createInsecure());
    this.clients.set(address, client);
    return client;
  }
}
