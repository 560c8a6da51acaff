/**
 * The gRPC side of tandemd: one grpc-js Server carrying the tandem services, the standard
 * health service (grpc.health.v1) and server reflection, so grpcurl and load balancers work
 * without a copy of our .proto files.
 */
import * as grpc from '@grpc/grpc-js';
import { ReflectionService } from '@grpc/reflection';
import * as protoLoader from '@grpc/proto-loader';
import { HealthImplementation, protoPath as healthProtoPath } from 'grpc-health-check';
import { TandemError } from '../errors.js';
import {
  loadTandemPackageDefinition,
  loadTandemProto,
  protoLoaderOptions,
} from '../generated/tandem-proto.js';
import type { Logger } from '../log.js';
import { type ListenAddress, formatListenAddress } from './config.js';

/** A request or response larger than this is refused by grpc-js before any handler runs. */
export const grpcMessageBytesMax = 4 * 1024 * 1024;
/** Concurrent calls per client connection (HTTP/2 streams). */
export const grpcConcurrentStreamsMax = 128;

export interface TandemServiceRegistration {
  /** Full name, e.g. tandem.v1.Exports; also the health service name. */
  readonly name: string;
  readonly definition: grpc.ServiceDefinition;
  readonly handlers: grpc.UntypedServiceImplementation;
}

export class TandemGrpcServer {
  private readonly server: grpc.Server;
  private readonly health: HealthImplementation;
  private readonly serviceNames: string[];
  private boundAddress: string | undefined;

  constructor(
    private readonly options: {
      logger: Logger;
      services: readonly TandemServiceRegistration[];
    },
  ) {
    this.server = new grpc.Server({
      'grpc.max_receive_message_length': grpcMessageBytesMax,
      'grpc.max_send_message_length': grpcMessageBytesMax,
      'grpc.max_concurrent_streams': grpcConcurrentStreamsMax,
    });
    this.serviceNames = options.services.map((service) => service.name);
    for (const service of options.services) {
      this.server.addService(service.definition, service.handlers);
    }
    // Everything is NOT_SERVING until listen() succeeds; '' is the whole server.
    this.health = new HealthImplementation(
      Object.fromEntries(['', ...this.serviceNames].map((name) => [name, 'NOT_SERVING'])),
    );
    this.health.addToServer(this.server);
    // Reflection describes what the package definition holds: ours plus health, so that
    // `grpcurl list` shows every service a client can call.
    const described = {
      ...loadTandemPackageDefinition(),
      ...protoLoader.loadSync(healthProtoPath, protoLoaderOptions),
    };
    new ReflectionService(described).addToServer(this.server);
  }

  /** Binds; port 0 picks a free port. Resolves with the address actually bound. */
  async listen(address: ListenAddress): Promise<ListenAddress> {
    const text = formatListenAddress(address);
    const port = await new Promise<number>((resolve, reject) => {
      this.server.bindAsync(text, grpc.ServerCredentials.createInsecure(), (error, boundPort) => {
        if (error === null) resolve(boundPort);
        else reject(error);
      });
    }).catch((error: unknown) => {
      const reason = error instanceof Error ? error.message : String(error);
      throw new TandemError('LISTEN_FAILED', `cannot listen for gRPC on ${text}: ${reason}`, {
        cause: error,
      });
    });
    const bound = { host: address.host, port };
    this.boundAddress = formatListenAddress(bound);
    this.setServing('SERVING');
    this.options.logger.info('grpc listening', { address: this.boundAddress });
    return bound;
  }

  /**
   * Stops taking calls and lets running ones finish for up to `graceMs`, then cuts the rest:
   * a stuck client must not keep the daemon from exiting.
   */
  async shutdown(graceMs: number): Promise<void> {
    this.setServing('NOT_SERVING');
    let timer: NodeJS.Timeout | undefined;
    const graceful = new Promise<boolean>((resolve) => {
      this.server.tryShutdown(() => resolve(true));
    });
    const timedOut = new Promise<boolean>((resolve) => {
      timer = setTimeout(() => resolve(false), graceMs);
    });
    const finishedInTime = await Promise.race([graceful, timedOut]);
    clearTimeout(timer);
    if (!finishedInTime) {
      this.options.logger.warn('grpc calls still running after the grace period; cutting them', {
        graceMs,
      });
      this.server.forceShutdown();
    }
    this.options.logger.info('grpc stopped', { address: this.boundAddress });
  }

  private setServing(status: 'SERVING' | 'NOT_SERVING'): void {
    for (const name of ['', ...this.serviceNames]) this.health.setStatus(name, status);
  }
}

/** The tandem service definitions, typed by the generated code. */
export function tandemServiceDefinitions(): {
  node: grpc.ServiceDefinition;
  exports: grpc.ServiceDefinition;
  hosts: grpc.ServiceDefinition;
  locks: grpc.ServiceDefinition;
  physicalVolumes: grpc.ServiceDefinition;
  volumeGroups: grpc.ServiceDefinition;
  logicalVolumes: grpc.ServiceDefinition;
} {
  const proto = loadTandemProto();
  return {
    node: proto.tandem.v1.Node.service,
    exports: proto.tandem.v1.Exports.service,
    hosts: proto.tandem.v1.Hosts.service,
    locks: proto.tandem.v1.Locks.service,
    physicalVolumes: proto.tandem.v1.PhysicalVolumes.service,
    volumeGroups: proto.tandem.v1.VolumeGroups.service,
    logicalVolumes: proto.tandem.v1.LogicalVolumes.service,
  };
}
