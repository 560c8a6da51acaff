/*
 * Inside the NBD transmission thread: the state that nbd_thread.c (the thread), nbd_output.c
 * (its replies on their way out) and nbd_thread_napi.c (its JavaScript interface) share, and
 * the calls between them.
 */
#ifndef TANDEM_NBD_THREAD_STATE_H
#define TANDEM_NBD_THREAD_STATE_H
#include <node_api.h>
#include <pthread.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "nbd_reader.h"

/* The stage's capacity: what one recv may bring in (more when the connection hands over more). */
#define STAGE_BYTES (64 * 1024)

/* Event kinds; each event is EVENT_FIELDS doubles (see transmission-thread.ts). */
enum {
  EVENT_REQUEST = 1,
  EVENT_WRITE_FAILED = 2,
  EVENT_WRITE_SKIPPED = 3,
  EVENT_BAD_MAGIC = 4,
  EVENT_OVERSIZED = 5,
  EVENT_STOPPED = 6,
  EVENT_READ_FAILED = 7,
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
typedef struct {
  uint8_t *bytes;
  size_t capacity;
  size_t start;
  size_t end;
} byte_buffer_t;

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
  /* After hand_back_after requests in a row not served here the thread stops (0: never). */
  uint32_t hand_back_after;
  bool writable;
  bool serves_reads;
  bool structured_replies;
  napi_threadsafe_function deliver;
  pthread_t thread;
  bool thread_started;

  /*
   * Bytes received but not parsed yet: small requests arrive many to one recv. It starts with
   * what the connection had read when the thread took over. stage.bytes[start, end).
   */
  byte_buffer_t stage;

  /* Thread-only while the thread runs; read by takeOutput once it has ended. */
  byte_buffer_t output;
  /* Output was sent in part: its first byte is inside a reply, which must leave whole. */
  bool output_in_progress;
  /* Large READs are read here, their replies sent from its slots. */
  nbd_reader_t reader;
  uint8_t *piece;
  int socket_errno;
  uint32_t other_requests_in_a_row;
  /* A header was read and its request not finished: the stage does not start at a request. */
  bool inside_request;

  /* Shared, under mutex. */
  pthread_mutex_t mutex;
  bool stop_requested;
  bool paused;
  bool notified;
  bool ended;
  double *events;
  size_t event_count;
  size_t event_capacity;
  /* Replies from JavaScript, sent by the thread (or taken back by takeOutput). */
  byte_buffer_t javascript_output;

  /* Main thread only. */
  int references;
} serving_thread_t;
/* Bytes in buffer[start, end). */
size_t nbd_pending_bytes(const byte_buffer_t *buffer);
/* Makes room for `extra` more bytes at the end; false on no memory. */
bool nbd_reserve(byte_buffer_t *buffer, size_t extra);
/* Appends `length` bytes; false on no memory. */
bool nbd_append(byte_buffer_t *buffer, const void *bytes, size_t length);
/* Wakes the thread wherever it waits. */
void nbd_thread_wake(serving_thread_t *serving);
/* Moves JavaScript's replies behind the thread's own output; false on no memory. */
bool nbd_take_javascript_output(serving_thread_t *serving);
/* Appends one event for JavaScript (header: the request's 6 fields, or NULL); false on no
   memory. */
bool nbd_post_event(serving_thread_t *serving, int kind, const double *header, double extra,
                    int system_errno);
typedef enum { SEND_DONE = 0, SEND_SOCKET_ERROR, SEND_NO_MEMORY } send_t;
/* Sends what can leave without waiting; with `flush`, everything ready (nbd_output.c). */
send_t nbd_send_replies(serving_thread_t *serving, bool flush);
/* Once the read helper has ended: its unsent replies join the output; false on no memory. */
bool nbd_keep_unsent_reads(serving_thread_t *serving);
/* The thread's body (pthread_create's start routine). */
void *nbd_thread_run(void *argument);

#endif
