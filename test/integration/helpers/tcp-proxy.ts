/**
 * A TCP forwarder that a test can cut: the "network" between a daemon and its peers. A daemon
 * publishes the proxy's address (`tandemd --advertise`), so its peers probe it through here;
 * `cut()` drops every connection and refuses new ones, as a pulled cable would look to them,
 * while the daemon itself keeps running and keeps its storage.
 */
import net from 'node:net';

export interface TcpProxy {
  readonly address: string;
  cut(): void;
  restore(): void;
  close(): Promise<void>;
}

/** Connections held at once; a test never needs more, and a bug cannot open unbounded sockets. */
const connectionsMax = 256;

export async function startTcpProxy(targetHost: string, targetPort: number): Promise<TcpProxy> {
  let isCut = false;
  const sockets = new Set<net.Socket>();
  const server = net.createServer((client) => {
    if (isCut || sockets.size >= connectionsMax) {
      client.destroy();
      return;
    }
    const upstream = net.connect(targetPort, targetHost);
    sockets.add(client);
    sockets.add(upstream);
    const drop = (): void => {
      client.destroy();
      upstream.destroy();
      sockets.delete(client);
      sockets.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const bound = server.address();
  if (bound === null || typeof bound === 'string') throw new Error('proxy: no TCP address');
  return {
    address: `127.0.0.1:${bound.port}`,
    cut: () => {
      isCut = true;
      for (const socket of sockets) socket.destroy();
      sockets.clear();
    },
    restore: () => {
      isCut = false;
    },
    close: async () => {
      isCut = true;
      for (const socket of sockets) socket.destroy();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
  };
}

/** A port that was free a moment ago (for a daemon whose address must be known before start). */
export async function freePort(): Promise<number> {
  const server = net.createServer();
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const bound = server.address();
  await new Promise<void>((resolve) => server.close(() => resolve()));
  if (bound === null || typeof bound === 'string') throw new Error('no TCP address');
  return bound.port;
}

/** Whether something listens on 127.0.0.1:port (one connect, closed at once). */
export function canConnect(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const socket = net.connect(port, '127.0.0.1');
    socket.once('connect', () => {
      socket.destroy();
      resolve(true);
    });
    socket.once('error', () => resolve(false));
  });
}
