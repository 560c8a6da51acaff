/**
 * The native transmission thread of one connection (native/nbd_thread.c), as events the
 * connection understands.
 *
 * On a plain file export, once a client sends READs or WRITEs, the thread takes the socket
 * over, both ways: it serves each valid READ (pread into its output) and WRITE (received into
 * its own buffer, then pwrite) itself and sends the replies, batched, as nbdkit's file plugin
 * does on its own threads. Every other request reaches the connection as a parsed header; the
 * connection validates and runs it and gives the reply to send() (the thread sends it: one
 * writer). A failed pread or pwrite comes back as an event, mapped here as the file device maps
 * its own errors. After `handBackAfter` requests in a row that the thread did not serve itself
 * it gives the socket back. docs/nbd.md and docs/performance.md have the why and the figures.
 *
 * Node's own reading is stopped while the thread runs (through the socket's private handle:
 * Node offers no public way to lend a socket's descriptor), and the connection writes nothing
 * on the socket itself. When the thread stops (hand-back, end of stream, a socket error, a
 * protocol error, NBD_CMD_DISC or stop()), `stopped` is the last event, with the bytes it
 * received but did not parse; takeOutput() then gives the replies it had not sent, which the
 * connection writes before anything else, and handBack() lets Node read again.
 */
import type { Socket } from 'node:net';
import type { BlockDevice } from '../disk/block-device.js';
import { type BorrowedDescriptor, FileDevice } from '../disk/file-device.js';
import { loadDiskNative, type NbdThreadNative } from '../disk/native.js';
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

export interface ThreadEvents {
  /** A request the thread does not serve (including NBD_CMD_DISC, after which it stops). */
  request(header: ReceivedHeader): void;
  /** The thread's pwrite (or FUA's fdatasync) failed: answer with `error`, the device's. */
  writeFailed(header: ReceivedHeader, error: TandemError): void;
  /** The thread's pread failed: answer with `error`, the device's. */
  readFailed(header: ReceivedHeader, error: TandemError): void;
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
export interface TransmissionThreadPolicy {
  /** A READ or WRITE of at least this many bytes that the thread would serve starts it. */
  readonly takeOverBytes: number;
  /** Requests in a row that the thread did not serve after which it stops; 0: never. */
  readonly handBackAfter: number;
}

/**
 * Measured in docs/performance.md: with the thread serving READs and WRITEs itself, every
 * request size is served faster by it than by the event loop; requests it does not serve
 * (TRIM, WRITE_ZEROES, BLOCK_STATUS…) cost one hop more, so a run of them gives the socket back.
 */
export const defaultTransmissionThreadPolicy: TransmissionThreadPolicy = {
  takeOverBytes: 1,
  handBackAfter: 32,
};

/** Which of READ and WRITE a thread serves itself. */
export interface ThreadServes {
  readonly reads: boolean;
  readonly writes: boolean;
}

export interface ThreadSettings extends TransmissionThreadPolicy {
  readonly sizeBytes: number;
  readonly alignmentBytes: number;
  readonly maximumPayloadBytes: number;
  readonly maximumSkippedPayloadBytes: number;
  /** Events the thread may queue before it waits for the connection to take them. */
  readonly maximumQueuedEvents: number;
  /** What the thread serves itself, as serves() said; the rest goes to the connection. */
  readonly serves: ThreadServes;
  /** The connection negotiated structured replies: READ data goes in an OFFSET_DATA chunk. */
  readonly structuredReplies: boolean;
}

const eventFields = 9;
const eventKinds = {
  request: 1,
  writeFailed: 2,
  skipped: 3,
  badMagic: 4,
  oversized: 5,
  stopped: 6,
  readFailed: 7,
};
const stopReasons: readonly StopReason[] = [
  'asked',
  'end-of-stream',
  'socket-error',
  'protocol-error',
  'disconnect',
  'no-memory',
  'handed-back',
];
const control = { pause: 1, stop: 2 };

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

/** The addon's thread calls, when a thread may serve `device`. */
function nativeFor(device: BlockDevice): NbdThreadNative | undefined {
  if (process.env['TANDEM_NBD_THREAD'] === '0' || !(device instanceof FileDevice)) {
    return undefined;
  }
  return loadDiskNative().nbdThread;
}

export class TransmissionThread {
  private stopAsked = false;
  private ended = false;
  private handedBack = false;

  private constructor(
    private readonly native: NbdThreadNative,
    private readonly thread: unknown,
    private readonly socket: Socket,
    private readonly handle: StreamHandle,
    private readonly target: BorrowedDescriptor,
  ) {}

  /**
   * What a thread could serve on `device` itself: READs (not through O_DIRECT: its reply
   * buffer is not sector-aligned), WRITEs (when the export is writable). Undefined when no
   * thread could run at all (no addon, not a file, or TANDEM_NBD_THREAD=0).
   */
  static serves(device: BlockDevice, exportReadOnly: boolean): ThreadServes | undefined {
    if (nativeFor(device) === undefined || !(device instanceof FileDevice)) return undefined;
    const serves = { reads: !device.direct, writes: !exportReadOnly && !device.readOnly };
    return serves.reads || serves.writes ? serves : undefined;
  }

  /**
   * Starts the thread on `socket` for `device` (one serves() accepted) if everything it needs
   * is there: the socket's descriptor, no input buffered inside Node, and no output either
   * (the caller sees to that: the thread becomes the socket's only writer). `pending` is what
   * the connection had read but not parsed; the thread consumes it first. Undefined when the
   * connection should go on in JavaScript.
   */
  static start(
    socket: Socket,
    device: BlockDevice,
    pending: Buffer,
    settings: ThreadSettings,
    events: ThreadEvents,
  ): TransmissionThread | undefined {
    const native = nativeFor(device);
    if (native === undefined || !(device instanceof FileDevice)) return undefined;
    const handle = handleOf(socket);
    if (
      handle === undefined ||
      typeof handle.fd !== 'number' ||
      handle.fd < 0 ||
      typeof handle.readStop !== 'function' ||
      typeof handle.readStart !== 'function' ||
      socket.readableLength > 0 ||
      socket.writableLength > 0
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
    let thread: TransmissionThread | undefined;
    try {
      const rawSettings = Float64Array.of(
        settings.sizeBytes,
        settings.alignmentBytes,
        settings.maximumPayloadBytes,
        settings.maximumSkippedPayloadBytes,
        settings.maximumQueuedEvents,
        settings.handBackAfter,
        settings.serves.writes ? 1 : 0,
        settings.serves.reads ? 1 : 0,
        settings.structuredReplies ? 1 : 0,
      );
      const started = native.start(handle.fd, target.fd, pending, rawSettings, (raw, leftover) =>
        thread?.deliver(raw, leftover, events),
      );
      thread = new TransmissionThread(native, started, socket, handle, target);
      return thread;
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
    assert(this.ended, 'handBack while the transmission thread runs');
    if (this.handedBack || this.socket.destroyed) return;
    this.handedBack = true;
    this.handle.readStart?.();
    this.socket.resume();
  }

  /**
   * Queues reply bytes for the thread to send (copied: the buffer may be reused at once).
   * After `stopped`, they are part of takeOutput(). False when there was no memory for them.
   */
  send(bytes: Buffer): boolean {
    return this.native.send(this.thread, bytes);
  }

  /** Once `stopped` came: the replies the thread had not sent, for the connection to send. */
  takeOutput(): Buffer | undefined {
    assert(this.ended, 'takeOutput while the transmission thread runs');
    return this.native.takeOutput(this.thread);
  }

  /** Flow control: a paused thread reads no further request header. */
  setPaused(paused: boolean): void {
    if (!this.ended) this.native.control(this.thread, control.pause, paused ? 1 : 0);
  }

  /**
   * Asks the thread to end; `stopped` follows once it has (after a request it is in). From
   * now on it serves no READ or WRITE itself: those it still parses go to `request`/`skipped`.
   */
  stop(): void {
    if (this.ended || this.stopAsked) return;
    this.stopAsked = true;
    this.native.control(this.thread, control.stop, 1);
  }

  private deliver(raw: Float64Array, leftover: Buffer | undefined, events: ThreadEvents): void {
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
        case eventKinds.writeFailed:
          events.writeFailed(
            header,
            this.target.writeError(systemErrno, header.offsetBytes, header.lengthBytes),
          );
          break;
        case eventKinds.readFailed:
          events.readFailed(
            header,
            this.target.readError(systemErrno, header.offsetBytes, header.lengthBytes),
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
          throw new Error(`assertion failed: unknown transmission thread event ${kind}`);
      }
    }
  }
}
