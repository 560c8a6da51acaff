/**
 * The push half of how hosts learn of a VG change: after a commit, NotifyVgChanged goes to every
 * peer this host knows, at once and in parallel. A push is a hint: a peer that misses it (network
 * down, daemon restarting) still sees the change by polling the VG lock's value block, so a
 * failed push is logged at debug level and never retried.
 *
 * One channel per peer address is kept (a change must not wait for a TCP and HTTP/2 handshake);
 * at most `notifyChannelsMax`, the least recently used is closed first.
 */
import * as grpc from '@grpc/grpc-js';
import { loadTandemProto } from '../generated/tandem-proto.js';
import type { VolumeGroupsClient } from '../generated/tandem/v1/VolumeGroups.js';
import type { Logger } from '../log.js';

export const notifyChannelsMax = 256;
/** A push that takes longer than this is given up (the poll catches the change). */
export const notifyDeadlineMs = 2_000;

export interface VgChangedNotice {
  readonly vgUuid: string;
  readonly seqno: number;
  readonly pvPaths: readonly string[];
}

export class VgNotifier {
  private readonly clients = new Map<string, VolumeGroupsClient>();
  private closed = false;

  constructor(private readonly options: { logger: Logger }) {}

  /** Sends the notice to every address; returns at once (the pushes run in the background). */
  notify(addresses: readonly string[], notice: VgChangedNotice): void {
    if (this.closed) return;
    for (const address of addresses) {
      const client = this.client(address);
      client.NotifyVgChanged(
        { vgUuid: notice.vgUuid, seqno: String(notice.seqno), pvPaths: [...notice.pvPaths] },
        { deadline: Date.now() + notifyDeadlineMs },
        (error) => {
          if (error !== null) {
            this.options.logger.debug('push to a peer failed (it will poll)', {
              address,
              grpcCode: error.code,
              details: error.details,
            });
          }
        },
      );
    }
  }

  close(): void {
    this.closed = true;
    for (const client of this.clients.values()) client.close();
    this.clients.clear();
  }

  private client(address: string): VolumeGroupsClient {
    const existing = this.clients.get(address);
    if (existing !== undefined) {
      this.clients.delete(address);
      this.clients.set(address, existing);
      return existing;
    }
    while (this.clients.size >= notifyChannelsMax) {
      const oldest = this.clients.keys().next().value;
      if (oldest === undefined) break;
      this.clients.get(oldest)?.close();
      this.clients.delete(oldest);
    }
    const proto = loadTandemProto();
    const created = new proto.tandem.v1.VolumeGroups(address, grpc.credentials.createInsecure());
    this.clients.set(address, created);
    return created;
  }
}
