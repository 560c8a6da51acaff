/**
 * An in-process gRPC server with the volume services (PhysicalVolumes, VolumeGroups,
 * LogicalVolumes) and fake handlers, for CLI tests: it records every request as it arrived
 * (decoded with the same loader options as the daemon: uint64 as strings, defaults filled in)
 * and answers with the reply or failure a test set for that method.
 */
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { main } from '../../../src/cli/main.js';
import { loadTandemProto } from '../../../src/generated/tandem-proto.js';
import type { Lv__Output } from '../../../src/generated/tandem/v1/Lv.js';
import type { MoveProgress__Output } from '../../../src/generated/tandem/v1/MoveProgress.js';
import type { Pv__Output } from '../../../src/generated/tandem/v1/Pv.js';
import type { Vg__Output } from '../../../src/generated/tandem/v1/Vg.js';

export interface RecordedCall {
  readonly method: string;
  readonly request: unknown;
}

export interface FakeFailure {
  readonly code: grpc.status;
  readonly details: string;
  /** The stable tandem error code, sent as the daemon does (trailing metadata). */
  readonly tandemCode?: string;
}

/** A server-streaming handler: write messages, end, or wait for the client to cancel. */
export type FakeStream = (call: grpc.ServerWritableStream<unknown, unknown>) => void;

export class FakeVolumeDaemon {
  readonly calls: RecordedCall[] = [];
  private readonly replies = new Map<string, unknown>();
  private readonly failures = new Map<string, FakeFailure>();
  private readonly streams = new Map<string, FakeStream>();

  private readonly server = new grpc.Server();
  private boundAddress: string | undefined;

  constructor() {
    const v1 = loadTandemProto().tandem.v1;
    for (const service of [v1.PhysicalVolumes, v1.VolumeGroups, v1.LogicalVolumes]) {
      this.server.addService(service.service, this.implementation(service.service));
    }
  }

  /** Binds a free port on 127.0.0.1. */
  async listen(): Promise<void> {
    const port = await new Promise<number>((resolve, reject) => {
      this.server.bindAsync(
        '127.0.0.1:0',
        grpc.ServerCredentials.createInsecure(),
        (error, bound) => (error === null ? resolve(bound) : reject(error)),
      );
    });
    this.boundAddress = `127.0.0.1:${port}`;
  }

  get address(): string {
    if (this.boundAddress === undefined) throw new Error('the fake daemon is not listening yet');
    return this.boundAddress;
  }

  /** The next calls of `method` answer with `response`. */
  reply(method: string, response: unknown): void {
    this.failures.delete(method);
    this.replies.set(method, response);
  }

  /** The next calls of `method` fail with this status. */
  fail(method: string, failure: FakeFailure): void {
    this.failures.set(method, failure);
  }

  onStream(method: string, handler: FakeStream): void {
    this.streams.set(method, handler);
  }

  /** The requests of `method` so far. */
  requests(method: string): unknown[] {
    return this.calls.filter((call) => call.method === method).map((call) => call.request);
  }

  reset(): void {
    this.calls.length = 0;
    this.replies.clear();
    this.failures.clear();
    this.streams.clear();
  }

  stop(): void {
    this.server.forceShutdown();
  }

  statusOf(failure: FakeFailure): grpc.StatusObject {
    const metadata = new grpc.Metadata();
    if (failure.tandemCode !== undefined) metadata.set('tandem-error-code', failure.tandemCode);
    return { code: failure.code, details: failure.details, metadata };
  }

  private implementation(definition: grpc.ServiceDefinition): grpc.UntypedServiceImplementation {
    const handlers: grpc.UntypedServiceImplementation = {};
    for (const [method, spec] of Object.entries(definition)) {
      if (spec.responseStream) {
        handlers[method] = (call: grpc.ServerWritableStream<unknown, unknown>) => {
          this.calls.push({ method, request: call.request });
          const failure = this.failures.get(method);
          if (failure !== undefined) call.emit('error', this.statusOf(failure));
          else (this.streams.get(method) ?? ((stream) => stream.end()))(call);
        };
      } else {
        handlers[method] = (
          call: grpc.ServerUnaryCall<unknown, unknown>,
          callback: grpc.sendUnaryData<unknown>,
        ) => {
          this.calls.push({ method, request: call.request });
          const failure = this.failures.get(method);
          if (failure !== undefined) callback(this.statusOf(failure));
          else callback(null, this.replies.get(method) ?? {});
        };
      }
    }
    return handlers;
  }
}

export const gib = 1024 ** 3;

/** Fixtures: what the daemon answers, as a test starts from. */
export const pv = (overrides: Partial<Pv__Output> = {}): Pv__Output => ({
  path: '/dev/sdb',
  uuid: 'pv-uuid-1',
  sizeBytes: String(10 * gib),
  vgName: 'vg0',
  vgUuid: 'vg-uuid',
  extentCount: 2559,
  freeExtentCount: 100,
  missing: false,
  allocatable: true,
  ...overrides,
});

export const vg = (overrides: Partial<Vg__Output> = {}): Vg__Output => ({
  name: 'vg0',
  uuid: 'vg-uuid',
  seqno: '12',
  extentSizeBytes: String(4 * 1024 * 1024),
  pvCount: 2,
  lvCount: 1,
  sizeBytes: String(20 * gib),
  freeBytes: String(10 * gib),
  extentCount: 5118,
  freeExtentCount: 2559,
  maxHosts: 128,
  partial: false,
  joined: true,
  hostId: 3,
  lastChange: 'lv create disk1',
  updatedBy: 'node-a',
  moving: false,
  maxLvs: 1024,
  ...overrides,
});

export const lv = (overrides: Partial<Lv__Output> = {}): Lv__Output => ({
  name: 'disk1',
  vgName: 'vg0',
  uuid: 'lv-uuid',
  sizeBytes: String(20 * gib),
  extentCount: 5120,
  tags: ['vm-7'],
  segments: [
    {
      lvExtentStart: 0,
      extentCount: 5120,
      type: 'linear',
      stripeCount: 1,
      stripeSizeBytes: '0',
      areas: ['/dev/sdb:0-2558', '/dev/sdc:0-2560'],
    },
  ],
  activeOn: ['node-a'],
  activeMode: 'exclusive',
  exportName: 'vg0/disk1',
  partial: false,
  ...overrides,
});

export const progress = (overrides: Partial<MoveProgress__Output>): MoveProgress__Output => ({
  vgName: 'vg0',
  lvName: 'disk1',
  movedExtentCount: 0,
  totalExtentCount: 512,
  movedBytes: '0',
  totalBytes: String(2 * gib),
  done: false,
  ...overrides,
});

export interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

/** Runs of `tandem --server <the fake daemon> …`, with stdout and stderr captured. */
export function cliRunners(daemon: FakeVolumeDaemon): {
  runCli(args: readonly string[], options?: { tty?: boolean }): Promise<CliRun>;
  ok(args: readonly string[]): Promise<string>;
  usageError(args: readonly string[], message: RegExp): Promise<void>;
} {
  const runCli = async (
    args: readonly string[],
    options: { tty?: boolean } = {},
  ): Promise<CliRun> => {
    let stdout = '';
    let stderr = '';
    const code = await main(['node', 'tandem', '--server', daemon.address, ...args], {
      stdout: { write: (text) => void (stdout += text) },
      stderr: { write: (text) => void (stderr += text), isTTY: options.tty, columns: 120 },
    });
    return { code, stdout, stderr };
  };
  return {
    runCli,
    /** Runs and expects success; a failure shows what the CLI said. */
    ok: async (args) => {
      const result = await runCli(args);
      assert.equal(result.code, 0, `tandem ${args.join(' ')}: ${result.stderr}`);
      return result.stdout;
    },
    /** Runs and expects a usage error: nothing may reach the daemon. */
    usageError: async (args, message) => {
      const result = await runCli(args);
      assert.equal(result.code, 1, `tandem ${args.join(' ')} should fail`);
      assert.match(result.stderr, message);
      assert.deepEqual(daemon.calls, [], 'a usage error calls nobody');
    },
  };
}
