/**
 * Plain grpc-js clients for the standard services tandemd carries (health, reflection), built
 * from the .proto files those packages ship, the way any third-party client would.
 */
import { createRequire } from 'node:module';
import path from 'node:path';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { protoPath as healthProtoPath } from 'grpc-health-check';

const require = createRequire(import.meta.url);
const deadlineMs = 10_000;

interface HealthClient extends grpc.Client {
  Check(
    request: { service: string },
    options: grpc.CallOptions,
    callback: (error: grpc.ServiceError | null, response?: { status: string }) => void,
  ): void;
}

interface ReflectionResponse {
  listServicesResponse?: { service: Array<{ name: string }> };
  errorResponse?: { errorCode: number; errorMessage: string };
}

interface ReflectionClient extends grpc.Client {
  ServerReflectionInfo(): grpc.ClientDuplexStream<{ listServices: string }, ReflectionResponse>;
}

type ClientConstructor<Client> = new (
  address: string,
  credentials: grpc.ChannelCredentials,
) => Client;

function loadService<Client>(
  protoFile: string,
  servicePath: readonly string[],
): ClientConstructor<Client> {
  const definition = protoLoader.loadSync(protoFile, { enums: String, defaults: true });
  let node: unknown = grpc.loadPackageDefinition(definition);
  for (const part of servicePath) node = (node as Record<string, unknown>)[part];
  if (typeof node !== 'function') throw new Error(`${servicePath.join('.')} not in ${protoFile}`);
  return node as ClientConstructor<Client>;
}

export async function checkHealth(address: string, service = ''): Promise<string> {
  const Health = loadService<HealthClient>(healthProtoPath, ['grpc', 'health', 'v1', 'Health']);
  const client = new Health(address, grpc.credentials.createInsecure());
  try {
    return await new Promise((resolve, reject) => {
      client.Check({ service }, { deadline: Date.now() + deadlineMs }, (error, response) => {
        if (error !== null) reject(error);
        else resolve(response?.status ?? 'missing');
      });
    });
  } finally {
    client.close();
  }
}

/** Asks the server's reflection service (v1) which services it offers. */
export async function listServicesByReflection(address: string): Promise<string[]> {
  const reflectionRoot = path.dirname(require.resolve('@grpc/reflection/package.json'));
  const protoFile = path.join(reflectionRoot, 'build/proto/grpc/reflection/v1/reflection.proto');
  const Reflection = loadService<ReflectionClient>(protoFile, [
    'grpc',
    'reflection',
    'v1',
    'ServerReflection',
  ]);
  const client = new Reflection(address, grpc.credentials.createInsecure());
  try {
    return await new Promise((resolve, reject) => {
      const call = client.ServerReflectionInfo();
      const timer = setTimeout(() => {
        call.cancel();
        reject(new Error('reflection did not answer'));
      }, deadlineMs);
      call.on('data', (response: ReflectionResponse) => {
        clearTimeout(timer);
        call.end();
        if (response.listServicesResponse === undefined) {
          reject(new Error(`reflection error: ${JSON.stringify(response.errorResponse)}`));
        } else {
          resolve(response.listServicesResponse.service.map((service) => service.name).sort());
        }
      });
      call.on('error', (error) => {
        clearTimeout(timer);
        reject(error);
      });
      call.write({ listServices: '*' });
    });
  } finally {
    client.close();
  }
}
