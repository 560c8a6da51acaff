/*
 * The NBD transmission thread's way out (nbd_thread.c has the thread): its output buffer, the
 * read helper's reply slots (nbd_reader.c), JavaScript's replies and events. Every reply leaves
 * whole through one writer, this thread; replies otherwise may pass each other, as NBD allows.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <node_api.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "nbd_thread_state.h"

void nbd_thread_wake(serving_thread_t *serving) {
  uint64_t one = 1;
  if (write(serving->wake_fd, &one, sizeof one) < 0) {
    /* An eventfd write only fails on counter overflow: the thread is awake anyway. */
  }
}

size_t nbd_pending_bytes(const byte_buffer_t *buffer) { return buffer->end - buffer->start; }

/* Makes room for `extra` more bytes at the end; false on no memory. */
bool nbd_reserve(byte_buffer_t *buffer, size_t extra) {
  if (buffer->start == buffer->end) buffer->start = buffer->end = 0;
  if (buffer->capacity - buffer->end >= extra) return true;
  size_t used = buffer->end - buffer->start;
  if (buffer->start > 0 && buffer->capacity - used >= extra) {
    memmove(buffer->bytes, buffer->bytes + buffer->start, used);
  } else {
    size_t capacity = buffer->capacity == 0 ? 64 * 1024 : buffer->capacity;
    while (capacity - used < extra) capacity *= 2;
    uint8_t *grown = malloc(capacity);
    if (grown == NULL) return false;
    if (used > 0) memcpy(grown, buffer->bytes + buffer->start, used);
    free(buffer->bytes);
    buffer->bytes = grown;
    buffer->capacity = capacity;
  }
  buffer->start = 0;
  buffer->end = used;
  return true;
}

/* Appends one event; wakes JavaScript when the queue was empty. Returns false on no memory. */
bool nbd_post_event(serving_thread_t *serving, int kind, const double *header, double extra,
                    int system_errno) {
  pthread_mutex_lock(&serving->mutex);
  if (serving->event_count == serving->event_capacity) {
    size_t capacity = serving->event_capacity == 0 ? 64 : serving->event_capacity * 2;
    double *grown = realloc(serving->events, capacity * EVENT_FIELDS * sizeof(double));
    if (grown == NULL) {
      pthread_mutex_unlock(&serving->mutex);
      return false;
    }
    serving->events = grown;
    serving->event_capacity = capacity;
  }
  double *event = serving->events + serving->event_count * EVENT_FIELDS;
  event[0] = kind;
  for (int field = 0; field < 6; field++) event[1 + field] = header == NULL ? 0 : header[field];
  event[7] = extra;
  event[8] = system_errno;
  serving->event_count += 1;
  bool call = !serving->notified;
  serving->notified = true;
  pthread_mutex_unlock(&serving->mutex);
  if (call) napi_call_threadsafe_function(serving->deliver, NULL, napi_tsfn_nonblocking);
  return true;
}

bool nbd_append(byte_buffer_t *buffer, const void *bytes, size_t length) {
  if (!nbd_reserve(buffer, length)) return false;
  if (length > 0) memcpy(buffer->bytes + buffer->end, bytes, length); /* bytes may be NULL */
  buffer->end += length;
  return true;
}

/* Moves JavaScript's replies behind the thread's own output; false on no memory. */
bool nbd_take_javascript_output(serving_thread_t *serving) {
  bool ok = true;
  pthread_mutex_lock(&serving->mutex);
  byte_buffer_t *from = &serving->javascript_output;
  size_t length = nbd_pending_bytes(from);
  if (length > 0) {
    ok = nbd_append(&serving->output, from->bytes + from->start, length);
    if (ok) from->start = from->end = 0;
  }
  pthread_mutex_unlock(&serving->mutex);
  return ok;
}

/*
 * One send of bytes[*sent, length) without waiting; advances *sent, sets *blocked when the
 * socket took less. False on a socket error (socket_errno says which).
 */
static bool send_some(serving_thread_t *serving, const uint8_t *bytes, size_t length,
                      size_t *sent, bool *blocked) {
  while (*sent < length) {
    ssize_t count =
        send(serving->socket_fd, bytes + *sent, length - *sent, MSG_DONTWAIT | MSG_NOSIGNAL);
    if (count > 0) {
      *sent += (size_t)count;
      continue;
    }
    if (count < 0 && errno == EINTR) continue;
    if (count < 0 && (errno == EAGAIN || errno == EWOULDBLOCK)) {
      *blocked = true;
      return true;
    }
    serving->socket_errno = count < 0 ? errno : EPIPE;
    return false;
  }
  return true;
}

/*
 * Sends what it can without waiting: with `flush`, the read helper's completed replies in
 * order and the output; without, only the rest of a reply begun. A reply begun leaves whole
 * before any other; replies may otherwise pass each other, as NBD allows. A READ the helper
 * could not read goes to JavaScript as READ_FAILED here, in its turn.
 */
send_t nbd_send_replies(serving_thread_t *serving, bool flush) {
  byte_buffer_t *output = &serving->output;
  nbd_reader_t *reader = &serving->reader;
  for (;;) {
    bool blocked = false;
    bool head_wanted = flush ? !serving->output_in_progress : reader->head_sent > 0;
    read_slot_t *head = head_wanted ? nbd_reader_head(reader) : NULL;
    if (head != NULL && head->error != 0) {
      if (!nbd_post_event(serving, EVENT_READ_FAILED, head->request, 0, head->error)) {
        return SEND_NO_MEMORY;
      }
      nbd_reader_release_head(reader);
      continue;
    }
    if (head != NULL) {
      if (!send_some(serving, head->bytes, head->reply_bytes, &reader->head_sent, &blocked)) {
        return SEND_SOCKET_ERROR;
      }
      if (blocked) return SEND_DONE;
      nbd_reader_release_head(reader);
      continue;
    }
    if (nbd_pending_bytes(output) == 0 || !(flush || serving->output_in_progress)) {
      return SEND_DONE;
    }
    size_t sent = 0;
    if (!send_some(serving, output->bytes + output->start, nbd_pending_bytes(output), &sent,
                   &blocked)) {
      return SEND_SOCKET_ERROR;
    }
    output->start += sent;
    if (output->start == output->end) {
      output->start = output->end = 0;
      serving->output_in_progress = false;
    } else if (sent > 0) {
      serving->output_in_progress = true;
    }
    if (blocked) return SEND_DONE;
  }
}

/*
 * Once the read helper has ended: moves its replies not sent yet into the output (a reply
 * begun goes first), for takeOutput, and hands its failed reads to JavaScript. False on no
 * memory.
 */
bool nbd_keep_unsent_reads(serving_thread_t *serving) {
  nbd_reader_t *reader = &serving->reader;
  byte_buffer_t *output = &serving->output;
  read_slot_t *head = nbd_reader_head(reader);
  if (head != NULL && reader->head_sent > 0) {
    byte_buffer_t kept = {0};
    if (!nbd_append(&kept, head->bytes + reader->head_sent,
                    head->reply_bytes - reader->head_sent) ||
        !nbd_append(&kept, output->bytes + output->start, nbd_pending_bytes(output))) {
      free(kept.bytes);
      return false;
    }
    nbd_reader_release_head(reader);
    free(output->bytes);
    *output = kept;
    serving->output_in_progress = false;
  }
  for (; (head = nbd_reader_head(reader)) != NULL; nbd_reader_release_head(reader)) {
    bool kept = head->error != 0
                    ? nbd_post_event(serving, EVENT_READ_FAILED, head->request, 0, head->error)
                    : nbd_append(output, head->bytes, head->reply_bytes);
    if (!kept) return false;
  }
  return true;
}

