/*
 * The NBD receive thread: one per connection while it streams large WRITEs to a writable plain
 * file export (src/nbd/native-receiver.ts is the only caller; docs/performance.md says why).
 *
 * The thread owns the reading side of the connection's socket. It reads each request header;
 * a WRITE that passes the checks the connection gave it is received into the thread's own
 * buffer and written to the file with pwrite on the same thread, as nbdkit's file plugin does,
 * so the payload is copied twice (socket to buffer, buffer to page cache) while still in this
 * core's cache, and no other thread is woken on the way. Every other request (and every WRITE
 * that fails a check) goes to JavaScript as an event; JavaScript validates it, runs it and
 * writes every reply, so the socket has one writer. After `hand_back_after` requests in a row
 * that are not large WRITEs the thread stops at a request boundary and returns the bytes it
 * received but did not parse (small requests are cheaper parsed by Node, one hop less).
 *
 * Events reach JavaScript in batches through one threadsafe function: the thread appends to a
 * queue under the mutex and calls into JavaScript only when the queue was empty. The queue is
 * bounded: the thread waits while it is full, and while JavaScript has paused it (flow control).
 *
 * The thread reads from a dup of the socket's descriptor and writes to a dup of the file's,
 * so a close on the JavaScript side never frees a number under it. stop() wakes it through an
 * eventfd; it never blocks JavaScript. After its last event (STOPPED) it releases the
 * threadsafe function; the state is freed once both that and the JavaScript handle are gone.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <poll.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nbd_receiver.h"

#define REQUEST_MAGIC 0x25609513u
#define REQUEST_HEADER_BYTES 28
#define CMD_WRITE 1
#define CMD_DISC 2
#define CMD_FLAG_FUA 1
/* Payloads are received and written in pieces of at most this, so a connection's buffer stays
   small even for 32 MiB writes. */
#define PIECE_BYTES_MAXIMUM (1024 * 1024)
#define STAGE_BYTES (64 * 1024)

/* Event kinds; each event is EVENT_FIELDS doubles (see native-receiver.ts). */
enum {
  EVENT_REQUEST = 1,
  EVENT_WRITE_DONE = 2,
  EVENT_WRITE_SKIPPED = 3,
  EVENT_BAD_MAGIC = 4,
  EVENT_OVERSIZED = 5,
  EVENT_STOPPED = 6,
};
/* Why the thread stopped (field 7 of EVENT_STOPPED). */
enum {
  STOP_ASKED = 0,
  STOP_END_OF_STREAM = 1,
  STOP_SOCKET_ERROR = 2,
  STOP_PROTOCOL = 3,
  STOP_DISCONNECT = 4,
  STOP_NO_MEMORY = 5,
  STOP_HANDED_BACK = 6,
};
#define EVENT_FIELDS 9

typedef enum { RECEIVED = 0, RECEIVE_STOP, RECEIVE_EOF, RECEIVE_ERROR } receive_t;

typedef struct {
  /* Fixed at start. */
  int socket_fd;
  int target_fd;
  int wake_fd;
  double size_bytes;
  uint32_t alignment_bytes;
  uint32_t maximum_payload_bytes;
  uint32_t maximum_skipped_bytes;
  uint32_t maximum_queued_events;
  /* A WRITE of at least this is "large"; after hand_back_after other requests in a row the
     thread stops and gives the socket back (0: never). */
  uint32_t large_write_bytes;
  uint32_t hand_back_after;
  napi_threadsafe_function deliver;
  pthread_t thread;
  bool thread_started;

  /*
   * Bytes received but not parsed yet: small requests arrive many to one recv. It starts with
   * what the connection had read when the thread took over. stage[stage_start, stage_end).
   */
  uint8_t *stage;
  size_t stage_capacity;
  size_t stage_start;
  size_t stage_end;

  /* Thread-only. */
  uint8_t *piece;
  int socket_errno;
  uint32_t other_requests_in_a_row;
  /* A header was read and its request not finished: the stage does not start at a request. */
  bool inside_request;

  /* Shared, under mutex. */
  pthread_mutex_t mutex;
  pthread_cond_t changed;
  bool stop_requested;
  bool paused;
  bool draining;
  bool notified;
  double *events;
  size_t event_count;
  size_t event_capacity;

  /* Main thread only. */
  int references;
} receiver_t;

static void release_reference(receiver_t *receiver) {
  receiver->references -= 1;
  if (receiver->references > 0) return;
  pthread_mutex_destroy(&receiver->mutex);
  pthread_cond_destroy(&receiver->changed);
  close(receiver->wake_fd);
  free(receiver->events);
  free(receiver->stage);
  free(receiver);
}

/* Appends one event; wakes JavaScript when the queue was empty. Returns false on no memory. */
static bool post_event(receiver_t *receiver, int kind, const double *header, double extra,
                       int system_errno) {
  pthread_mutex_lock(&receiver->mutex);
  if (receiver->event_count == receiver->event_capacity) {
    size_t capacity = receiver->event_capacity == 0 ? 64 : receiver->event_capacity * 2;
    double *grown = realloc(receiver->events, capacity * EVENT_FIELDS * sizeof(double));
    if (grown == NULL) {
      pthread_mutex_unlock(&receiver->mutex);
      return false;
    }
    receiver->events = grown;
    receiver->event_capacity = capacity;
  }
  double *event = receiver->events + receiver->event_count * EVENT_FIELDS;
  event[0] = kind;
  for (int field = 0; field < 6; field++) event[1 + field] = header == NULL ? 0 : header[field];
  event[7] = extra;
  event[8] = system_errno;
  receiver->event_count += 1;
  bool wake = !receiver->notified;
  receiver->notified = true;
  pthread_mutex_unlock(&receiver->mutex);
  if (wake) napi_call_threadsafe_function(receiver->deliver, NULL, napi_tsfn_nonblocking);
  return true;
}

/* Waits until the socket is readable or stop() was called; false when asked to stop. */
static bool wait_readable(receiver_t *receiver) {
  struct pollfd watched[2] = {
      {.fd = receiver->socket_fd, .events = POLLIN},
      {.fd = receiver->wake_fd, .events = POLLIN},
  };
  for (;;) {
    int ready = poll(watched, 2, -1);
    if (ready < 0 && errno == EINTR) continue;
    if (ready < 0) return true; /* let recv report the error */
    if (watched[1].revents != 0) {
      pthread_mutex_lock(&receiver->mutex);
      bool stop = receiver->stop_requested;
      pthread_mutex_unlock(&receiver->mutex);
      if (stop) return false;
      uint64_t ignored;
      if (read(receiver->wake_fd, &ignored, sizeof ignored) < 0) {
        /* Nothing to do: the counter is only a wake-up. */
      }
    }
    if (watched[0].revents != 0) return true;
  }
}

/* One recv into `into`; waits for data. RECEIVED with *got > 0, or why not. */
static receive_t receive_some(receiver_t *receiver, uint8_t *into, size_t length, size_t *got) {
  for (;;) {
    ssize_t count = recv(receiver->socket_fd, into, length, MSG_DONTWAIT);
    if (count > 0) {
      *got = (size_t)count;
      return RECEIVED;
    }
    if (count == 0) return RECEIVE_EOF;
    if (errno == EINTR) continue;
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      if (!wait_readable(receiver)) return RECEIVE_STOP;
      continue;
    }
    receiver->socket_errno = errno;
    return RECEIVE_ERROR;
  }
}

/*
 * Fills `length` bytes of `into` (or drops them when `into` is NULL): first from the stage,
 * then straight from the socket for what is at least a stage long (a large payload is not
 * copied twice), else through the stage, which then keeps what follows for the next call.
 */
static receive_t receive_exact(receiver_t *receiver, uint8_t *into, size_t length) {
  size_t filled = 0;
  while (filled < length) {
    size_t staged = receiver->stage_end - receiver->stage_start;
    if (staged > 0) {
      size_t taken = staged < length - filled ? staged : length - filled;
      if (into != NULL) memcpy(into + filled, receiver->stage + receiver->stage_start, taken);
      receiver->stage_start += taken;
      filled += taken;
      continue;
    }
    receiver->stage_start = receiver->stage_end = 0;
    size_t got = 0;
    receive_t outcome;
    if (into != NULL && length - filled >= receiver->stage_capacity) {
      outcome = receive_some(receiver, into + filled, length - filled, &got);
      if (outcome != RECEIVED) return outcome;
      filled += got;
    } else {
      outcome = receive_some(receiver, receiver->stage, receiver->stage_capacity, &got);
      if (outcome != RECEIVED) return outcome;
      receiver->stage_end = got;
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

/*
 * Receives a WRITE's payload piece by piece and writes each piece. On a write error the rest of
 * the payload is still received (and dropped) so the stream stays in step. Returns the receive
 * outcome; *write_error is the first errno of a failed pwrite/fdatasync, or 0.
 */
static receive_t receive_and_write(receiver_t *receiver, int64_t offset, uint32_t length, bool fua,
                                   int *write_error) {
  *write_error = 0;
  uint32_t done = 0;
  while (done < length) {
    uint32_t piece = length - done < PIECE_BYTES_MAXIMUM ? length - done : PIECE_BYTES_MAXIMUM;
    receive_t outcome = receive_exact(receiver, receiver->piece, piece);
    if (outcome != RECEIVED) return outcome;
    if (*write_error == 0) {
      *write_error = write_fully(receiver->target_fd, receiver->piece, piece, offset + done);
    }
    done += piece;
  }
  if (*write_error == 0 && fua && fdatasync(receiver->target_fd) != 0) *write_error = errno;
  return RECEIVED;
}

/* Whether this thread may write the request itself; the others go to JavaScript. */
static bool writes_here(receiver_t *receiver, uint16_t flags, double offset, uint32_t length) {
  pthread_mutex_lock(&receiver->mutex);
  bool draining = receiver->draining;
  pthread_mutex_unlock(&receiver->mutex);
  return !draining && (flags & ~CMD_FLAG_FUA) == 0 && length > 0 &&
         length <= receiver->maximum_payload_bytes && offset >= 0 &&
         offset + length <= receiver->size_bytes &&
         (uint64_t)offset % receiver->alignment_bytes == 0 &&
         length % receiver->alignment_bytes == 0;
}

/* Waits while paused or while the queue is full; false when asked to stop. */
static bool wait_for_room(receiver_t *receiver) {
  pthread_mutex_lock(&receiver->mutex);
  while (!receiver->stop_requested &&
         (receiver->paused || receiver->event_count >= receiver->maximum_queued_events)) {
    pthread_cond_wait(&receiver->changed, &receiver->mutex);
  }
  bool stop = receiver->stop_requested;
  pthread_mutex_unlock(&receiver->mutex);
  return !stop;
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

/* One request; returns -1 to go on, or the reason to stop. */
static int handle_request(receiver_t *receiver) {
  uint8_t raw[REQUEST_HEADER_BYTES];
  receive_t outcome = receive_exact(receiver, raw, REQUEST_HEADER_BYTES);
  if (outcome != RECEIVED) return stop_reason_of(outcome);
  receiver->inside_request = true;
  uint32_t magic = read_u32(raw);
  if (magic != REQUEST_MAGIC) {
    if (!post_event(receiver, EVENT_BAD_MAGIC, NULL, magic, 0)) return STOP_NO_MEMORY;
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
  if (type == CMD_WRITE && length >= receiver->large_write_bytes) {
    receiver->other_requests_in_a_row = 0;
  } else {
    receiver->other_requests_in_a_row += 1;
  }
  if (type != CMD_WRITE) {
    if (!post_event(receiver, EVENT_REQUEST, header, 0, 0)) return STOP_NO_MEMORY;
    receiver->inside_request = false;
    return type == CMD_DISC ? STOP_DISCONNECT : -1;
  }
  if (writes_here(receiver, flags, offset, length)) {
    if (receiver->piece == NULL) {
      void *allocated = NULL;
      if (posix_memalign(&allocated, 4096, PIECE_BYTES_MAXIMUM) != 0) return STOP_NO_MEMORY;
      receiver->piece = allocated;
    }
    int write_error = 0;
    outcome = receive_and_write(receiver, (int64_t)offset, length, (flags & CMD_FLAG_FUA) != 0,
                                &write_error);
    if (outcome != RECEIVED) return stop_reason_of(outcome);
    /* Only the errno: the connection maps it as the file device maps its own errors. */
    if (!post_event(receiver, EVENT_WRITE_DONE, header, 0, write_error)) {
      return STOP_NO_MEMORY;
    }
    receiver->inside_request = false;
    return -1;
  }
  if (length > receiver->maximum_skipped_bytes) {
    if (!post_event(receiver, EVENT_OVERSIZED, header, 0, 0)) return STOP_NO_MEMORY;
    return STOP_PROTOCOL;
  }
  outcome = receive_exact(receiver, NULL, length);
  if (outcome != RECEIVED) return stop_reason_of(outcome);
  if (!post_event(receiver, EVENT_WRITE_SKIPPED, header, 0, 0)) return STOP_NO_MEMORY;
  receiver->inside_request = false;
  return -1;
}

static void *run_receiver(void *argument) {
  receiver_t *receiver = argument;
  int reason = STOP_ASKED;
  for (;;) {
    if (!wait_for_room(receiver)) break;
    int outcome = handle_request(receiver);
    if (outcome >= 0) {
      reason = outcome;
      break;
    }
    if (receiver->hand_back_after > 0 &&
        receiver->other_requests_in_a_row >= receiver->hand_back_after) {
      reason = STOP_HANDED_BACK;
      break;
    }
  }
  free(receiver->piece);
  receiver->piece = NULL;
  /* The rest of a request cut short is no request: nothing is left to parse. */
  if (receiver->inside_request) receiver->stage_start = receiver->stage_end;
  close(receiver->socket_fd);
  close(receiver->target_fd);
  /* STOPPED must arrive even when memory ran out: retry, it is the thread's last act. */
  while (!post_event(receiver, EVENT_STOPPED, NULL, reason, receiver->socket_errno)) usleep(1000);
  napi_release_threadsafe_function(receiver->deliver, napi_tsfn_release);
  return NULL;
}

/* On the main thread: hands every queued event to the JavaScript callback at once. */
static void deliver_events(napi_env env, napi_value callback, void *context, void *data) {
  (void)data;
  receiver_t *receiver = context;
  if (env == NULL) return;
  pthread_mutex_lock(&receiver->mutex);
  size_t count = receiver->event_count;
  napi_value array_buffer, events, ignored, global, leftover;
  void *raw = NULL;
  bool made = napi_create_arraybuffer(env, count * EVENT_FIELDS * sizeof(double), &raw,
                                      &array_buffer) == napi_ok;
  if (made) {
    memcpy(raw, receiver->events, count * EVENT_FIELDS * sizeof(double));
    receiver->event_count = 0;
    receiver->notified = false;
    pthread_cond_broadcast(&receiver->changed);
  }
  pthread_mutex_unlock(&receiver->mutex);
  if (!made) {
    /* Out of memory here: the events stay queued; try again on a later turn of the loop. */
    napi_call_threadsafe_function(receiver->deliver, NULL, napi_tsfn_nonblocking);
    return;
  }
  if (napi_create_typedarray(env, napi_float64_array, count * EVENT_FIELDS, array_buffer, 0,
                             &events) != napi_ok) {
    return;
  }
  /* STOPPED is the thread's last event: the stage no longer changes, and what is left in it
     (requests received but not parsed) goes along for the connection to parse. */
  const double *last = count == 0 ? NULL : (const double *)raw + (count - 1) * EVENT_FIELDS;
  size_t left = receiver->stage_end - receiver->stage_start;
  if (last == NULL || last[0] != EVENT_STOPPED || left == 0 ||
      napi_create_buffer_copy(env, left, receiver->stage + receiver->stage_start, NULL,
                              &leftover) != napi_ok) {
    napi_get_undefined(env, &leftover);
  }
  napi_value call_arguments[2] = {events, leftover};
  napi_get_global(env, &global);
  napi_call_function(env, global, callback, 2, call_arguments, &ignored);
}

static void finalize_deliver(napi_env env, void *data, void *context) {
  (void)env;
  (void)data;
  receiver_t *receiver = context;
  if (receiver->thread_started) pthread_join(receiver->thread, NULL);
  release_reference(receiver);
}

static void finalize_handle(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  receiver_t *receiver = data;
  pthread_mutex_lock(&receiver->mutex);
  receiver->stop_requested = true;
  pthread_cond_broadcast(&receiver->changed);
  pthread_mutex_unlock(&receiver->mutex);
  uint64_t one = 1;
  if (write(receiver->wake_fd, &one, sizeof one) < 0) {
    /* An eventfd write only fails on counter overflow: the thread is awake anyway. */
  }
  release_reference(receiver);
}

/*
 * startReceiver(socketFd, targetFd, pending: Buffer, settings: Float64Array, onEvents): handle
 * settings: [sizeBytes, alignmentBytes, maximumPayloadBytes, maximumSkippedPayloadBytes,
 * maximumQueuedEvents, largeWriteBytes, handBackAfter] (the export is writable: the connection
 * starts no thread on a read-only one). Both descriptors are
 * duplicated; the caller keeps its own. onEvents(events, leftover) gets `leftover` (a Buffer)
 * with the batch that holds STOPPED, when bytes were received but not parsed.
 */
static napi_value js_start_receiver(napi_env env, napi_callback_info info) {
  napi_value arguments[5], handle, resource_name;
  size_t count = 5;
  int32_t socket_fd = -1, target_fd = -1;
  void *pending = NULL, *settings_data = NULL;
  size_t pending_length = 0, settings_length = 0;
  napi_typedarray_type settings_type;
  if (napi_get_cb_info(env, info, &count, arguments, NULL, NULL) != napi_ok || count < 5 ||
      napi_get_value_int32(env, arguments[0], &socket_fd) != napi_ok ||
      napi_get_value_int32(env, arguments[1], &target_fd) != napi_ok ||
      napi_get_buffer_info(env, arguments[2], &pending, &pending_length) != napi_ok ||
      napi_get_typedarray_info(env, arguments[3], &settings_type, &settings_length,
                               &settings_data, NULL, NULL) != napi_ok ||
      settings_type != napi_float64_array || settings_length < 7) {
    napi_throw_type_error(env, "EINVAL",
                          "startReceiver(socketFd, targetFd, pending, settings, onEvents)");
    return NULL;
  }
  const double *settings = settings_data;
  if (settings[1] < 1 || settings[4] < 1) {
    napi_throw_range_error(env, "EINVAL", "alignment and queue bound must be positive");
    return NULL;
  }
  receiver_t *receiver = calloc(1, sizeof *receiver);
  if (receiver == NULL) {
    napi_throw_error(env, "ENOMEM", "no memory for an NBD receiver");
    return NULL;
  }
  receiver->socket_fd = fcntl(socket_fd, F_DUPFD_CLOEXEC, 3);
  receiver->target_fd = fcntl(target_fd, F_DUPFD_CLOEXEC, 3);
  receiver->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  int error = errno;
  if (receiver->socket_fd < 0 || receiver->target_fd < 0 || receiver->wake_fd < 0) {
    if (receiver->socket_fd >= 0) close(receiver->socket_fd);
    if (receiver->target_fd >= 0) close(receiver->target_fd);
    if (receiver->wake_fd >= 0) close(receiver->wake_fd);
    free(receiver);
    napi_throw_error(env, error == EMFILE ? "EMFILE" : "EIO",
                     "cannot duplicate descriptors for an NBD receiver");
    return NULL;
  }
  receiver->size_bytes = settings[0];
  receiver->alignment_bytes = (uint32_t)settings[1];
  receiver->maximum_payload_bytes = (uint32_t)settings[2];
  receiver->maximum_skipped_bytes = (uint32_t)settings[3];
  receiver->maximum_queued_events = (uint32_t)settings[4];
  receiver->large_write_bytes = (uint32_t)settings[5];
  receiver->hand_back_after = (uint32_t)settings[6];
  receiver->stage_capacity = pending_length > STAGE_BYTES ? pending_length : STAGE_BYTES;
  receiver->stage = malloc(receiver->stage_capacity);
  if (receiver->stage != NULL && pending_length > 0) {
    memcpy(receiver->stage, pending, pending_length);
    receiver->stage_end = pending_length;
  }
  bool failed = receiver->stage == NULL;
  pthread_mutex_init(&receiver->mutex, NULL);
  pthread_cond_init(&receiver->changed, NULL);
  receiver->references = 1; /* the JavaScript handle */
  failed = failed ||
           napi_create_string_utf8(env, "tandem_nbd_receiver", NAPI_AUTO_LENGTH,
                                   &resource_name) != napi_ok ||
           napi_create_threadsafe_function(env, arguments[4], NULL, resource_name, 0, 1, receiver,
                                           finalize_deliver, receiver, deliver_events,
                                           &receiver->deliver) != napi_ok;
  if (!failed) {
    receiver->references += 1; /* the threadsafe function, released by finalize_deliver */
    napi_unref_threadsafe_function(env, receiver->deliver);
    if (pthread_create(&receiver->thread, NULL, run_receiver, receiver) == 0) {
      receiver->thread_started = true;
    } else {
      /* No thread: the function's finalizer drops its reference without a join. */
      napi_release_threadsafe_function(receiver->deliver, napi_tsfn_abort);
      failed = true;
    }
  }
  if (failed) {
    close(receiver->socket_fd);
    close(receiver->target_fd);
    release_reference(receiver);
    napi_throw_error(env, "EIO", "cannot start an NBD receive thread");
    return NULL;
  }
  if (napi_create_external(env, receiver, finalize_handle, NULL, &handle) != napi_ok) {
    /* The thread runs; without a handle nobody can stop it but the peer. Ask it to stop. */
    finalize_handle(env, receiver, NULL);
    napi_throw_error(env, "EINTERNAL", "cannot create an NBD receiver handle");
    return NULL;
  }
  return handle;
}

/* controlReceiver(handle, what, value): 1 pause (value 0/1), 2 drain, 3 stop. */
static napi_value js_control_receiver(napi_env env, napi_callback_info info) {
  napi_value arguments[3];
  size_t count = 3;
  void *data = NULL;
  int32_t what = 0, value = 0;
  if (napi_get_cb_info(env, info, &count, arguments, NULL, NULL) != napi_ok || count < 3 ||
      napi_get_value_external(env, arguments[0], &data) != napi_ok ||
      napi_get_value_int32(env, arguments[1], &what) != napi_ok ||
      napi_get_value_int32(env, arguments[2], &value) != napi_ok || data == NULL) {
    napi_throw_type_error(env, "EINVAL", "controlReceiver(handle, what, value)");
    return NULL;
  }
  receiver_t *receiver = data;
  pthread_mutex_lock(&receiver->mutex);
  if (what == 1) receiver->paused = value != 0;
  if (what == 2) receiver->draining = true;
  if (what == 3) receiver->stop_requested = true;
  pthread_cond_broadcast(&receiver->changed);
  pthread_mutex_unlock(&receiver->mutex);
  if (what == 3) {
    uint64_t one = 1;
    if (write(receiver->wake_fd, &one, sizeof one) < 0) {
      /* See finalize_handle. */
    }
  }
  return NULL;
}

void nbd_receiver_register(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"startReceiver", NULL, js_start_receiver, NULL, NULL, NULL, napi_enumerable, NULL},
      {"controlReceiver", NULL, js_control_receiver, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof properties / sizeof properties[0], properties);
}
