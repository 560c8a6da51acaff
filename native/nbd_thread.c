/*
 * The NBD transmission thread: one per connection to a plain file export while its client
 * sends READs and WRITEs (src/nbd/transmission-thread.ts is the only caller; docs/nbd.md and
 * docs/performance.md say why and when).
 *
 * The thread owns the socket while it runs, both ways. It reads each request header itself and
 * serves a READ or a WRITE that passes the checks the connection gave it on the spot, as
 * nbdkit's file plugin does: pread into its output buffer behind the reply header, or the
 * payload received into its own buffer and pwrite; the reply goes into the output buffer. A
 * large READ that other requests could overlap goes to the read helper instead (nbd_reader.h),
 * which preads it into a reply slot while this thread sends. The output leaves in one send
 * once no further request is waiting in what was received (so replies to a pipelined burst
 * leave together), or when it has grown past a bound (nbd_output.c sends). Every other
 * request (and every READ or WRITE that fails a check) goes to JavaScript as an event;
 * JavaScript validates it, runs it and hands the reply bytes back (send()), which the thread
 * sends with its own: the socket keeps one writer. A failed pread or pwrite goes to JavaScript
 * too, as its errno, so device errors are mapped in one place. After `hand_back_after`
 * requests in a row that it did not serve itself the thread stops at a request boundary and
 * returns the bytes it received but did not parse.
 *
 * Events reach JavaScript in batches through one threadsafe function: the thread appends to a
 * queue under the mutex and calls into JavaScript only when the queue was empty. The thread
 * reads no further request while that queue is full, while JavaScript has paused it (flow
 * control), or while too much output waits for a client that does not read. Everything that
 * wakes it (new output from JavaScript, events taken, pause, stop) writes its eventfd.
 *
 * The thread reads and writes a dup of the socket's descriptor and does I/O on a dup of the
 * file's, so a close on the JavaScript side never frees a number under it. stop() never blocks
 * JavaScript: the thread ends after the request it is in, without waiting for the client to
 * read, and JavaScript takes what output it had not sent yet (takeOutput) and sends it itself.
 * After its last event (STOPPED) it releases the threadsafe function; the state is freed once
 * both that and the JavaScript handle are gone (nbd_thread_napi.c, which starts the thread and
 * is all JavaScript calls).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nbd_thread_state.h"

#define REQUEST_MAGIC 0x25609513u
#define SIMPLE_REPLY_MAGIC 0x67446698u
#define STRUCTURED_REPLY_MAGIC 0x668e33efu
#define REQUEST_HEADER_BYTES 28
#define SIMPLE_REPLY_HEADER_BYTES 16
/* A structured OFFSET_DATA chunk header: 20 bytes, then the 8-byte offset. */
#define STRUCTURED_READ_HEADER_BYTES 28
#define REPLY_FLAG_DONE 1
#define REPLY_TYPE_OFFSET_DATA 1
#define CMD_READ 0
#define CMD_WRITE 1
#define CMD_DISC 2
#define CMD_FLAG_FUA 1
#define CMD_FLAG_DF 4
/* Payloads are received and written in pieces of at most this, so a connection's buffer stays
   small even for 32 MiB writes. */
#define PIECE_BYTES_MAXIMUM (1024 * 1024)
/* READs up to this are served here (read whole before the reply starts, as an error must come
   before any data); longer ones go to JavaScript. */
#define READ_BYTES_MAXIMUM (4 * 1024 * 1024)
/* READs from this on go to the read helper (nbd_reader.h); smaller ones are read here. */
#define READER_MINIMUM_BYTES (256 * 1024)
/* Replies are sent when no further request is waiting in what was received, or once this much
   has gathered. */
#define OUTPUT_FLUSH_BYTES (256 * 1024)
/* No request is read while this much output waits for a client that does not read; under
   it, the next READ is read while the kernel still sends the last. */
#define OUTPUT_PENDING_MAXIMUM (2 * 1024 * 1024)

typedef enum { RECEIVED = 0, RECEIVE_STOP, RECEIVE_EOF, RECEIVE_ERROR } receive_t;

typedef enum { WAIT_READY = 0, WAIT_STOP, WAIT_SOCKET_ERROR, WAIT_NO_MEMORY } wait_t;
typedef enum { UNTIL_INPUT, UNTIL_ROOM, UNTIL_READ_SLOT } until_t;

/*
 * Sends replies and waits until: the socket is readable (UNTIL_INPUT); the thread may read
 * another request, as it is not paused, the event queue is not full and not too much output
 * is unsent (UNTIL_ROOM); the read helper has a free slot (UNTIL_READ_SLOT). Returns at once
 * when stop() was called. While the next request may be read (UNTIL_ROOM), replies wait until
 * OUTPUT_FLUSH_BYTES have gathered or the helper's slots are all taken: the replies to a
 * pipelined burst leave in one send, and the helper gets the next READ before the thread
 * spends its time sending the last.
 */
static wait_t wait_until(serving_thread_t *serving, until_t until) {
  for (;;) {
    if (!nbd_take_javascript_output(serving)) return WAIT_NO_MEMORY;
    pthread_mutex_lock(&serving->mutex);
    bool stop = serving->stop_requested;
    bool room = !serving->paused && serving->event_count < serving->maximum_queued_events;
    pthread_mutex_unlock(&serving->mutex);
    if (stop) return WAIT_STOP;
    bool ready = until == UNTIL_ROOM && room;
    /* While the next request can be read and the helper has room, replies wait for it. */
    bool flush = !ready || nbd_reader_full(&serving->reader) ||
                 nbd_pending_bytes(&serving->output) >= OUTPUT_FLUSH_BYTES;
    send_t sent = nbd_send_replies(serving, flush);
    if (sent != SEND_DONE) return sent == SEND_NO_MEMORY ? WAIT_NO_MEMORY : WAIT_SOCKET_ERROR;
    if (ready && nbd_pending_bytes(&serving->output) < OUTPUT_PENDING_MAXIMUM) return WAIT_READY;
    if (until == UNTIL_READ_SLOT && nbd_reader_has_room(&serving->reader)) return WAIT_READY;
    /* A READ waiting for the helper is work to do now, rather than sleep. */
    if (nbd_reader_read_one(&serving->reader)) continue;
    bool unsent =
        nbd_pending_bytes(&serving->output) > 0 || nbd_reader_head(&serving->reader) != NULL;
    short socket_events = (short)((until == UNTIL_INPUT ? POLLIN : 0) | (unsent ? POLLOUT : 0));
    struct pollfd watched[2] = {
        /* A socket watched for nothing would still report a hang-up at once, over and over. */
        {.fd = socket_events == 0 ? -1 : serving->socket_fd, .events = socket_events},
        {.fd = serving->wake_fd, .events = POLLIN},
    };
    int polled = poll(watched, 2, -1);
    if (polled < 0 && errno == EINTR) continue;
    if (polled < 0) return until == UNTIL_INPUT ? WAIT_READY : WAIT_SOCKET_ERROR; /* recv says */
    if (watched[1].revents != 0) {
      uint64_t ignored;
      if (read(serving->wake_fd, &ignored, sizeof ignored) < 0) {
        /* Nothing to do: the counter is only a wake-up. */
      }
    }
    if (until == UNTIL_INPUT && (watched[0].revents & (POLLIN | POLLHUP | POLLERR)) != 0) {
      return WAIT_READY;
    }
  }
}

/* Why the thread stops when a wait ended other than READY. */
static int stop_reason_of_wait(wait_t waited) {
  switch (waited) {
    case WAIT_STOP:
      return STOP_ASKED;
    case WAIT_NO_MEMORY:
      return STOP_NO_MEMORY;
    default:
      return STOP_SOCKET_ERROR;
  }
}

static receive_t receive_outcome_of(wait_t waited) {
  switch (waited) {
    case WAIT_READY:
      return RECEIVED;
    case WAIT_STOP:
      return RECEIVE_STOP;
    default:
      return RECEIVE_ERROR;
  }
}

/* One recv into `into`; waits for data (sending output meanwhile). RECEIVED with *got > 0. */
static receive_t receive_some(serving_thread_t *serving, uint8_t *into, size_t length,
                              size_t *got) {
  for (;;) {
    ssize_t count = recv(serving->socket_fd, into, length, MSG_DONTWAIT);
    if (count > 0) {
      *got = (size_t)count;
      return RECEIVED;
    }
    if (count == 0) return RECEIVE_EOF;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      receive_t outcome = receive_outcome_of(wait_until(serving, UNTIL_INPUT));
      if (outcome != RECEIVED) return outcome;
      continue;
    }
    serving->socket_errno = errno;
    return RECEIVE_ERROR;
  }
}

/*
 * Fills `length` bytes of `into` (or drops them when `into` is NULL): first from the stage,
 * then straight from the socket for what is at least a stage long (a large payload is not
 * copied twice), else through the stage, which then keeps what follows for the next call.
 */
static receive_t receive_exact(serving_thread_t *serving, uint8_t *into, size_t length) {
  byte_buffer_t *stage = &serving->stage;
  size_t filled = 0;
  while (filled < length) {
    size_t staged = stage->end - stage->start;
    if (staged > 0) {
      size_t taken = staged < length - filled ? staged : length - filled;
      if (into != NULL) memcpy(into + filled, stage->bytes + stage->start, taken);
      stage->start += taken;
      filled += taken;
      continue;
    }
    stage->start = stage->end = 0;
    size_t got = 0;
    receive_t outcome;
    if (into != NULL && length - filled >= stage->capacity) {
      outcome = receive_some(serving, into + filled, length - filled, &got);
      if (outcome != RECEIVED) return outcome;
      filled += got;
    } else {
      outcome = receive_some(serving, stage->bytes, stage->capacity, &got);
      if (outcome != RECEIVED) return outcome;
      stage->end = got;
    }
  }
  return RECEIVED;
}

static int write_fully(int fd, const uint8_t *data, size_t length, int64_t offset) {
  while (length > 0) {
    ssize_t written = pwrite(fd, data, length, offset);
    if (written < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (written == 0) return EIO;
    data += written;
    length -= (size_t)written;
    offset += written;
  }
  return 0;
}

static uint32_t read_u32(const uint8_t *bytes) {
  return ((uint32_t)bytes[0] << 24) | ((uint32_t)bytes[1] << 16) | ((uint32_t)bytes[2] << 8) |
         bytes[3];
}

static void write_u16(uint8_t *bytes, uint16_t value) {
  bytes[0] = (uint8_t)(value >> 8);
  bytes[1] = (uint8_t)value;
}

static void write_u32(uint8_t *bytes, uint32_t value) {
  bytes[0] = (uint8_t)(value >> 24);
  bytes[1] = (uint8_t)(value >> 16);
  bytes[2] = (uint8_t)(value >> 8);
  bytes[3] = (uint8_t)value;
}

/* A simple reply without error: the magic, errno 0, the request's 8 handle bytes. */
static bool append_success(serving_thread_t *serving, const uint8_t *handle) {
  if (!nbd_reserve(&serving->output, SIMPLE_REPLY_HEADER_BYTES)) return false;
  uint8_t *reply = serving->output.bytes + serving->output.end;
  write_u32(reply, SIMPLE_REPLY_MAGIC);
  write_u32(reply + 4, 0);
  memcpy(reply + 8, handle, 8);
  serving->output.end += SIMPLE_REPLY_HEADER_BYTES;
  return true;
}

/*
 * Receives a WRITE's payload piece by piece and writes each piece. On a write error the rest of
 * the payload is still received (and dropped) so the stream stays in step. Returns the receive
 * outcome; *write_error is the first errno of a failed pwrite/fdatasync, or 0.
 */
static receive_t receive_and_write(serving_thread_t *serving, int64_t offset, uint32_t length,
                                   bool fua, int *write_error) {
  *write_error = 0;
  uint32_t done = 0;
  while (done < length) {
    uint32_t piece = length - done < PIECE_BYTES_MAXIMUM ? length - done : PIECE_BYTES_MAXIMUM;
    receive_t outcome = receive_exact(serving, serving->piece, piece);
    if (outcome != RECEIVED) return outcome;
    if (*write_error == 0) {
      *write_error = write_fully(serving->target_fd, serving->piece, piece, offset + done);
    }
    done += piece;
  }
  if (*write_error == 0 && fua && fdatasync(serving->target_fd) != 0) *write_error = errno;
  return RECEIVED;
}

/*
 * Whether this thread may serve the READ or WRITE itself; the others go to JavaScript. Once
 * stop() was called (the export is draining) it serves nothing more: a request it parses
 * before it ends goes to JavaScript, which refuses it.
 */
static bool serves_here(serving_thread_t *serving, uint16_t type, uint16_t flags, double offset,
                        uint32_t length) {
  pthread_mutex_lock(&serving->mutex);
  bool stopping = serving->stop_requested;
  pthread_mutex_unlock(&serving->mutex);
  if (stopping || length == 0 || length > serving->maximum_payload_bytes || offset < 0 ||
      offset + length > serving->size_bytes ||
      (uint64_t)offset % serving->alignment_bytes != 0 ||
      length % serving->alignment_bytes != 0) {
    return false;
  }
  if (type == CMD_WRITE) return serving->writable && (flags & ~CMD_FLAG_FUA) == 0;
  /* DF is valid only with structured replies, and one chunk is never fragmented anyway. */
  uint16_t allowed = serving->structured_replies ? CMD_FLAG_FUA | CMD_FLAG_DF : CMD_FLAG_FUA;
  return type == CMD_READ && serving->serves_reads && (flags & ~allowed) == 0 &&
         length <= READ_BYTES_MAXIMUM;
}

static int stop_reason_of(receive_t outcome) {
  switch (outcome) {
    case RECEIVE_EOF:
      return STOP_END_OF_STREAM;
    case RECEIVE_ERROR:
      return STOP_SOCKET_ERROR;
    default:
      return STOP_ASKED;
  }
}

/* Writes a successful READ reply's header (simple, or one OFFSET_DATA chunk) at `reply`. */
static void write_read_header(serving_thread_t *serving, uint8_t *reply, const uint8_t *raw,
                              uint32_t length) {
  if (serving->structured_replies) {
    write_u32(reply, STRUCTURED_REPLY_MAGIC);
    write_u16(reply + 4, REPLY_FLAG_DONE);
    write_u16(reply + 6, REPLY_TYPE_OFFSET_DATA);
    memcpy(reply + 8, raw + 8, 8);
    write_u32(reply + 16, 8 + length);
    memcpy(reply + 20, raw + 16, 8); /* the request's offset, as it came */
  } else {
    write_u32(reply, SIMPLE_REPLY_MAGIC);
    write_u32(reply + 4, 0);
    memcpy(reply + 8, raw + 8, 8);
  }
}

/*
 * Hands a large READ to the read helper once it has a free slot. Returns false when stop()
 * was called meanwhile: the caller reads it here, so every request parsed is answered.
 * Otherwise *outcome is -1 (handed over) or the reason to stop.
 */
static bool hand_to_reader(serving_thread_t *serving, const uint8_t *raw, const double *header,
                           size_t header_bytes, int *outcome) {
  nbd_reader_t *reader = &serving->reader;
  wait_t waited = nbd_reader_has_room(reader) ? WAIT_READY : wait_until(serving, UNTIL_READ_SLOT);
  if (waited == WAIT_STOP) return false;
  if (waited != WAIT_READY) {
    *outcome = stop_reason_of_wait(waited);
    return true;
  }
  uint32_t length = (uint32_t)header[5];
  read_slot_t *slot = nbd_reader_slot(reader, header_bytes + length);
  if (slot == NULL) {
    *outcome = STOP_NO_MEMORY;
    return true;
  }
  write_read_header(serving, slot->bytes, raw, length);
  slot->header_bytes = header_bytes;
  slot->offset = (int64_t)header[4];
  memcpy(slot->request, header, sizeof slot->request);
  nbd_reader_submit(reader);
  *outcome = -1;
  return true;
}

/*
 * A READ: the data is read behind its reply header (by the read helper when it is large); the
 * reply counts only once it is whole. A failed read goes to JavaScript as READ_FAILED.
 */
static int serve_read(serving_thread_t *serving, const uint8_t *raw, const double *header) {
  uint32_t length = (uint32_t)header[5];
  size_t header_bytes =
      serving->structured_replies ? STRUCTURED_READ_HEADER_BYTES : SIMPLE_REPLY_HEADER_BYTES;
  /* With no other READ in flight and no further request received, nothing could overlap. */
  bool overlaps = nbd_reader_busy(&serving->reader) || nbd_pending_bytes(&serving->stage) > 0;
  if (length >= READER_MINIMUM_BYTES && overlaps &&
      nbd_reader_running(&serving->reader, serving->target_fd, serving->wake_fd)) {
    int outcome = -1;
    if (hand_to_reader(serving, raw, header, header_bytes, &outcome)) return outcome;
  }
  if (!nbd_reserve(&serving->output, header_bytes + length)) return STOP_NO_MEMORY;
  uint8_t *reply = serving->output.bytes + serving->output.end;
  int read_error =
      nbd_read_fully(serving->target_fd, reply + header_bytes, length, (int64_t)header[4]);
  if (read_error != 0) {
    return nbd_post_event(serving, EVENT_READ_FAILED, header, 0, read_error) ? -1 : STOP_NO_MEMORY;
  }
  write_read_header(serving, reply, raw, length);
  serving->output.end += header_bytes + length;
  return -1;
}

static int serve_write(serving_thread_t *serving, const uint8_t *raw, const double *header) {
  if (serving->piece == NULL) {
    void *allocated = NULL;
    if (posix_memalign(&allocated, 4096, PIECE_BYTES_MAXIMUM) != 0) return STOP_NO_MEMORY;
    serving->piece = allocated;
  }
  int write_error = 0;
  receive_t outcome =
      receive_and_write(serving, (int64_t)header[4], (uint32_t)header[5],
                        ((uint16_t)header[0] & CMD_FLAG_FUA) != 0, &write_error);
  if (outcome != RECEIVED) return stop_reason_of(outcome);
  serving->inside_request = false;
  if (write_error == 0) return append_success(serving, raw + 8) ? -1 : STOP_NO_MEMORY;
  /* Only the errno: the connection maps it as the file device maps its own errors. */
  return nbd_post_event(serving, EVENT_WRITE_FAILED, header, 0, write_error) ? -1 : STOP_NO_MEMORY;
}

/* One request; returns -1 to go on, or the reason to stop. */
static int handle_request(serving_thread_t *serving) {
  uint8_t raw[REQUEST_HEADER_BYTES];
  receive_t outcome = receive_exact(serving, raw, REQUEST_HEADER_BYTES);
  if (outcome != RECEIVED) return stop_reason_of(outcome);
  serving->inside_request = true;
  uint32_t magic = read_u32(raw);
  if (magic != REQUEST_MAGIC) {
    if (!nbd_post_event(serving, EVENT_BAD_MAGIC, NULL, magic, 0)) return STOP_NO_MEMORY;
    return STOP_PROTOCOL;
  }
  uint16_t flags = (uint16_t)((raw[4] << 8) | raw[5]);
  uint16_t type = (uint16_t)((raw[6] << 8) | raw[7]);
  uint32_t offset_high = read_u32(raw + 16);
  uint32_t offset_low = read_u32(raw + 20);
  uint32_t length = read_u32(raw + 24);
  /* Offsets from 2^53 on are not exact in a double: -1, as wire.ts readUint64AsNumber does. */
  double offset = offset_high >= 0x200000 ? -1 : (double)offset_high * 4294967296.0 + offset_low;
  double header[6] = {flags, type, read_u32(raw + 8), read_u32(raw + 12), offset, length};
  bool here = serves_here(serving, type, flags, offset, length);
  serving->other_requests_in_a_row = here ? 0 : serving->other_requests_in_a_row + 1;
  if (here && type == CMD_READ) {
    serving->inside_request = false;
    return serve_read(serving, raw, header);
  }
  if (here) return serve_write(serving, raw, header);
  if (type != CMD_WRITE) {
    if (!nbd_post_event(serving, EVENT_REQUEST, header, 0, 0)) return STOP_NO_MEMORY;
    serving->inside_request = false;
    return type == CMD_DISC ? STOP_DISCONNECT : -1;
  }
  if (length > serving->maximum_skipped_bytes) {
    if (!nbd_post_event(serving, EVENT_OVERSIZED, header, 0, 0)) return STOP_NO_MEMORY;
    return STOP_PROTOCOL;
  }
  outcome = receive_exact(serving, NULL, length);
  if (outcome != RECEIVED) return stop_reason_of(outcome);
  if (!nbd_post_event(serving, EVENT_WRITE_SKIPPED, header, 0, 0)) return STOP_NO_MEMORY;
  serving->inside_request = false;
  return -1;
}

void *nbd_thread_run(void *argument) {
  serving_thread_t *serving = argument;
  pthread_setname_np(pthread_self(), "tandem-nbd-tx");
  int reason = STOP_ASKED;
  for (;;) {
    wait_t waited = wait_until(serving, UNTIL_ROOM);
    if (waited != WAIT_READY) {
      reason = stop_reason_of_wait(waited);
      break;
    }
    int outcome = handle_request(serving);
    if (outcome >= 0) {
      reason = outcome;
      break;
    }
    if (serving->hand_back_after > 0 &&
        serving->other_requests_in_a_row >= serving->hand_back_after) {
      reason = STOP_HANDED_BACK;
      break;
    }
  }
  nbd_reader_finish(&serving->reader);
  /* What can leave without waiting does; takeOutput gives the connection the rest. */
  if (reason != STOP_SOCKET_ERROR && nbd_take_javascript_output(serving)) {
    nbd_send_replies(serving, true);
  }
  if (!nbd_keep_unsent_reads(serving)) reason = STOP_NO_MEMORY;
  nbd_reader_destroy(&serving->reader);
  free(serving->piece);
  serving->piece = NULL;
  /* The rest of a request cut short is no request: nothing is left to parse. */
  if (serving->inside_request) serving->stage.start = serving->stage.end;
  close(serving->socket_fd);
  close(serving->target_fd);
  pthread_mutex_lock(&serving->mutex);
  serving->ended = true;
  pthread_mutex_unlock(&serving->mutex);
  /* STOPPED must arrive even when memory ran out: retry, it is the thread's last act. */
  while (!nbd_post_event(serving, EVENT_STOPPED, NULL, reason, serving->socket_errno)) usleep(1000);
  napi_release_threadsafe_function(serving->deliver, napi_tsfn_release);
  return NULL;
}
