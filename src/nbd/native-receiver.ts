/**
 * The native receive thread of one connection (native/nbd_receiver.c), as events the connection
 * understands.
 *
 * On a writable plain file export, when a client sends large WRITEs, the thread takes over the
 * reading side of the socket: it writes each valid WRITE to the file itself (received into its
 * own buffer, then pwrite, on one thread, as nbdkit does) and hands every other request to the
 * connection as a parsed header. The connection still validates and runs every other request
 * and writes every reply, so ordering, flush barriers and error replies stay in one place
 * (connection.ts). After `handBackAfter` requests in a row that are not large WRITEs the thread
 * gives the socket back (small requests are cheaper parsed by Node: one thread hop less).
 * docs/performance.md has the measurements that led here.
 *
 * Node's own reading is stopped while the thread runs (through the socket's private handle:
 * Node offers no public way to lend a socket's descriptor). When the thread stops (hand-back,
 * end of stream, a socket error, a protocol error, NBD_CMD_DISC or stop()), `stopped` is the
 * last event, with the bytes it received but did not parse; the connection then lets Node read
 * again (handBack) and parses those bytes first.
 */
import type { Socket } from 'node:net';
import type { BlockDevice } from '../disk/block-device.js';
import { type BorrowedDescriptor, FileDevice } from '../disk/file-device.js';
import { loadDiskNative, type NbdReceiverNative } from '../disk/native.js';
import { type TandemError, assert } from '../errors.js';
import type { NbdRequestHeader } from './request-executor.js';

/** One request header as the thread read it (offsets from 2^53 on are -1, as in wire.ts). */
export type ReceivedHeader = NbdRequestHeader;

export type StopReason =
  | 'asked'
  | 'end-of-stream'
  | 'socket-error'
  | 'protocol-error'
  | 'disconnect'
  | 'no-memory'
  | 'handed-back';

export interface ReceiverEvents {
  /** A request other than WRITE (including NBD_CMD_DISC, after which the thread stops). */
  request(header: ReceivedHeader): void;
  /** The thread wrote a WRITE: `error` is undefined for success, else the device's error. */
  written(header: ReceivedHeader, error: TandemError | undefined): void;
  /** A WRITE the thread did not take (it failed a check); its payload was read and dropped. */
  skipped(header: ReceivedHeader): void;
  /** A header with a wrong magic number; the thread stops. */
  badMagic(magic: number): void;
  /** A WRITE too large even to skip; the thread stops. */
  oversized(header: ReceivedHeader): void;
  /**
   * The thread ended; the last event. `systemErrno` explains a socket error; `leftover` holds
   * the bytes it received after the last request it parsed.
   */
  stopped(reason: StopReason, systemErrno: number, leftover: Buffer): void;
}

/** When a thread takes over a connection and when it gives it back. */
export interface ReceiveThreadPolicy {
  /** A WRITE of at least this many bytes is large: the thread takes over when one arrives. */
  readonly largeWriteBytes: number;
  /** Requests in a row that are not large WRITEs after which the thread stops; 0: never. */
  readonly handBackAfter: number;
}

/**
 * Measured in docs/performance.md: 1 MiB writes need the thread to keep up with nbdkit, and
 * 4 KiB requests are served faster without it (one thread hop less per request).
 */
export const defaultReceiveThreadPolicy: ReceiveThreadPolicy = {
  largeWriteBytes: 64 * 1024,
  handBackAfter: 32,
};

export interface ReceiverSettings extends ReceiveThreadPolicy {
  readonly sizeBytes: number;
  readonly alignmentBytes: number;
  readonly maximumPayloadBytes: number;
  readonly maximumSkippedPayloadBytes: number;
  /** Events the thread may queue before it waits for the connection to take them. */
  readonly maximumQueuedEvents: number;
}

const eventFields = 9;
const eventKinds = { request: 1, written: 2, skipped: 3, badMagic: 4, oversized: 5, stopped: 6 };
const stopReasons: readonly StopReason[] = [
  'asked',
  'end-of-stream',
  'socket-error',
  'protocol-error',
  'disconnect',
  'no-memory',
  'handed-back',
];
const control = { pause: 1, stopWrites: 2, stop: 3 };

interface StreamHandle {
  fd?: number;
  reading?: boolean;
  readStart?: () => number;
  readStop?: () => number;
}

function handleOf(socket: Socket): StreamHandle | undefined {
  const handle = (socket as unknown as { _handle?: StreamHandle | null })._handle;
  return handle === null ? undefined : handle;
}

/** The addon's receiver calls, when a thread may serve `device`. */
function nativeFor(device: BlockDevice): NbdReceiverNative | undefined {
  if (process.env['TANDEM_NBD_RECEIVER'] === '0' || !(device instanceof FileDevice)) {
    return undefined;
  }
  return loadDiskNative().nbdReceiver;
}

export class NativeReceiver {
  private stopAsked = false;
  private ended = false;
  private handedBack = false;
  private writesStopped = false;

  private constructor(
    private readonly native: NbdReceiverNative,
    private readonly thread: unknown,
    private readonly socket: Socket,
    private readonly handle: StreamHandle,
    private readonly target: BorrowedDescriptor,
  ) {}

  /** Whether a thread could serve `device` at all (the addon is there, a file). */
  static supports(device: BlockDevice): boolean {
    return nativeFor(device) !== undefined;
  }

  /**
   * Starts the thread on `socket` for `device` if everything it needs is there: the addon, a
   * writable FileDevice, the socket's descriptor, and no input buffered inside Node. `pending`
   * is what the connection had read but not parsed; the thread consumes it first. Undefined
   * when the connection should go on reading in JavaScript.
   */
  static start(
    socket: Socket,
    device: BlockDevice,
    pending: Buffer,
    settings: ReceiverSettings,
    events: ReceiverEvents,
  ): NativeReceiver | undefined {
    const native = nativeFor(device);
    if (native === undefined || !(device instanceof FileDevice)) return undefined;
    const handle = handleOf(socket);
    if (
      handle === undefined ||
      typeof handle.fd !== 'number' ||
      handle.fd < 0 ||
      typeof handle.readStop !== 'function' ||
      typeof handle.readStart !== 'function' ||
      socket.readableLength > 0
    ) {
      return undefined;
    }
    const target = device.borrowDescriptor();
    if (target === undefined) return undefined;
    // Stop Node's reading first: from here on the thread is the socket's only reader. The
    // handle keeps saying it reads, or Node's stream would start it again the next time it
    // wants more data (net.Socket's _read starts a handle that says it is not reading).
    socket.pause();
    handle.readStop();
    handle.reading = true;
    let receiver: NativeReceiver | undefined;
    try {
      const rawSettings = Float64Array.of(
        settings.sizeBytes,
        settings.alignmentBytes,
        settings.maximumPayloadBytes,
        settings.maximumSkippedPayloadBytes,
        settings.maximumQueuedEvents,
        settings.largeWriteBytes,
        settings.handBackAfter,
      );
      const started = native.start(handle.fd, target.fd, pending, rawSettings, (raw, leftover) =>
        receiver?.deliver(raw, leftover, events),
      );
      receiver = new NativeReceiver(native, started, socket, handle, target);
      return receiver;
    } catch {
      // No thread (out of descriptors or memory): Node reads again, as if never lent.
      target.release();
      handle.readStart();
      socket.resume();
      return undefined;
    }
  }

  /**
   * Lets Node read the socket again, once the thread has stopped: to see the peer's FIN, or
   * to parse what a client still sends after the thread ended.
   */
  handBack(): void {
    assert(this.ended, 'handBack while the receive thread runs');
    if (this.handedBack || this.socket.destroyed) return;
    this.handedBack = true;
    this.handle.readStart?.();
    this.socket.resume();
  }

  /** Flow control: a paused thread reads no further request header. */
  setPaused(paused: boolean): void {
    if (!this.ended) this.native.control(this.thread, control.pause, paused ? 1 : 0);
  }

  /** Every later WRITE goes to the connection (as `skipped`) instead of to the file. */
  stopWrites(): void {
    if (this.ended || this.writesStopped) return;
    this.writesStopped = true;
    this.native.control(this.thread, control.stopWrites, 1);
  }

  /** Asks the thread to end; `stopped` follows once it has (after a write it is in). */
  stop(): void {
    if (this.ended || this.stopAsked) return;
    this.stopAsked = true;
    this.native.control(this.thread, control.stop, 1);
  }

  private deliver(raw: Float64Array, leftover: Buffer | undefined, events: ReceiverEvents): void {
    for (let base = 0; base + eventFields <= raw.length; base += eventFields) {
      const kind = raw[base] ?? 0;
      const header: ReceivedHeader = {
        flags: raw[base + 1] ?? 0,
        type: raw[base + 2] ?? 0,
        handleHigh: raw[base + 3] ?? 0,
        handleLow: raw[base + 4] ?? 0,
        offsetBytes: raw[base + 5] ?? 0,
        lengthBytes: raw[base + 6] ?? 0,
      };
      const extra = raw[base + 7] ?? 0;
      const systemErrno = raw[base + 8] ?? 0;
      switch (kind) {
        case eventKinds.request:
          events.request(header);
          break;
        case eventKinds.written:
          events.written(
            header,
            systemErrno === 0
              ? undefined
              : this.target.writeError(systemErrno, header.offsetBytes, header.lengthBytes),
          );
          break;
        case eventKinds.skipped:
          events.skipped(header);
          break;
        case eventKinds.badMagic:
          events.badMagic(extra);
          break;
        case eventKinds.oversized:
          events.oversized(header);
          break;
        case eventKinds.stopped:
          this.ended = true;
          this.target.release();
          events.stopped(stopReasons[extra] ?? 'asked', systemErrno, leftover ?? Buffer.alloc(0));
          break;
        default:
          throw new Error(`assertion failed: unknown receiver event ${kind}`);
      }
    }
  }
}
