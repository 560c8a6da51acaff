/*
 * The JavaScript side of the NBD transmission thread (nbd_thread.c has the thread and what it
 * does): startThread, controlThread, sendOnThread and takeOutput, and the delivery of the
 * thread's events to the connection's callback on the main thread.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <node_api.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "nbd_thread.h"
#include "nbd_thread_state.h"

static void release_reference(serving_thread_t *serving) {
  serving->references -= 1;
  if (serving->references > 0) return;
  pthread_mutex_destroy(&serving->mutex);
  close(serving->wake_fd);
  free(serving->events);
  free(serving->stage.bytes);
  free(serving->output.bytes);
  free(serving->javascript_output.bytes);
  free(serving);
}

/* On the main thread: hands every queued event to the JavaScript callback at once. */
static void deliver_events(napi_env env, napi_value callback, void *context, void *data) {
  (void)data;
  serving_thread_t *serving = context;
  if (env == NULL) return;
  pthread_mutex_lock(&serving->mutex);
  size_t count = serving->event_count;
  napi_value array_buffer, events, ignored, global, leftover;
  void *raw = NULL;
  bool made = napi_create_arraybuffer(env, count * EVENT_FIELDS * sizeof(double), &raw,
                                      &array_buffer) == napi_ok;
  if (made) {
    memcpy(raw, serving->events, count * EVENT_FIELDS * sizeof(double));
    serving->event_count = 0;
    serving->notified = false;
  }
  bool ended = serving->ended;
  pthread_mutex_unlock(&serving->mutex);
  if (!made) {
    /* Out of memory here: the events stay queued; try again on a later turn of the loop. */
    napi_call_threadsafe_function(serving->deliver, NULL, napi_tsfn_nonblocking);
    return;
  }
  /* A thread that waited for room in a full queue has it again (it waits only then). */
  if (!ended && count >= serving->maximum_queued_events) nbd_thread_wake(serving);
  if (napi_create_typedarray(env, napi_float64_array, count * EVENT_FIELDS, array_buffer, 0,
                             &events) != napi_ok) {
    return;
  }
  /* STOPPED is the thread's last event: the stage no longer changes, and what is left in it
     (requests received but not parsed) goes along for the connection to parse. */
  const double *last = count == 0 ? NULL : (const double *)raw + (count - 1) * EVENT_FIELDS;
  size_t left = nbd_pending_bytes(&serving->stage);
  if (last == NULL || last[0] != EVENT_STOPPED || left == 0 ||
      napi_create_buffer_copy(env, left, serving->stage.bytes + serving->stage.start, NULL,
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
  serving_thread_t *serving = context;
  if (serving->thread_started) pthread_join(serving->thread, NULL);
  release_reference(serving);
}

static void request_stop(serving_thread_t *serving) {
  pthread_mutex_lock(&serving->mutex);
  serving->stop_requested = true;
  pthread_mutex_unlock(&serving->mutex);
  nbd_thread_wake(serving);
}

static void finalize_handle(napi_env env, void *data, void *hint) {
  (void)env;
  (void)hint;
  serving_thread_t *serving = data;
  request_stop(serving);
  release_reference(serving);
}

/*
 * startThread(socketFd, targetFd, pending: Buffer, settings: Float64Array, onEvents): handle
 * settings: [sizeBytes, alignmentBytes, maximumPayloadBytes, maximumSkippedPayloadBytes,
 * maximumQueuedEvents, handBackAfter, writable, servesReads, structuredReplies]. Both
 * descriptors are duplicated; the caller keeps its own. onEvents(events, leftover) gets
 * `leftover` (a Buffer) with the batch that holds STOPPED, when bytes were received but not
 * parsed.
 */
static napi_value js_start_thread(napi_env env, napi_callback_info info) {
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
      settings_type != napi_float64_array || settings_length < 9) {
    napi_throw_type_error(env, "EINVAL",
                          "startThread(socketFd, targetFd, pending, settings, onEvents)");
    return NULL;
  }
  const double *settings = settings_data;
  if (settings[1] < 1 || settings[4] < 1) {
    napi_throw_range_error(env, "EINVAL", "alignment and queue bound must be positive");
    return NULL;
  }
  serving_thread_t *serving = calloc(1, sizeof *serving);
  if (serving == NULL) {
    napi_throw_error(env, "ENOMEM", "no memory for an NBD transmission thread");
    return NULL;
  }
  serving->socket_fd = fcntl(socket_fd, F_DUPFD_CLOEXEC, 3);
  serving->target_fd = fcntl(target_fd, F_DUPFD_CLOEXEC, 3);
  serving->wake_fd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  int error = errno;
  if (serving->socket_fd < 0 || serving->target_fd < 0 || serving->wake_fd < 0) {
    if (serving->socket_fd >= 0) close(serving->socket_fd);
    if (serving->target_fd >= 0) close(serving->target_fd);
    if (serving->wake_fd >= 0) close(serving->wake_fd);
    free(serving);
    napi_throw_error(env, error == EMFILE ? "EMFILE" : "EIO",
                     "cannot duplicate descriptors for an NBD transmission thread");
    return NULL;
  }
  serving->size_bytes = settings[0];
  serving->alignment_bytes = (uint32_t)settings[1];
  serving->maximum_payload_bytes = (uint32_t)settings[2];
  serving->maximum_skipped_bytes = (uint32_t)settings[3];
  serving->maximum_queued_events = (uint32_t)settings[4];
  serving->hand_back_after = (uint32_t)settings[5];
  serving->writable = settings[6] != 0;
  serving->serves_reads = settings[7] != 0;
  serving->structured_replies = settings[8] != 0;
  size_t stage_capacity = pending_length > STAGE_BYTES ? pending_length : STAGE_BYTES;
  bool failed = !nbd_reserve(&serving->stage, stage_capacity);
  if (!failed && pending_length > 0) {
    memcpy(serving->stage.bytes, pending, pending_length);
    serving->stage.end = pending_length;
  }
  pthread_mutex_init(&serving->mutex, NULL);
  serving->references = 1; /* the JavaScript handle */
  failed = failed ||
           napi_create_string_utf8(env, "tandem_nbd_thread", NAPI_AUTO_LENGTH,
                                   &resource_name) != napi_ok ||
           napi_create_threadsafe_function(env, arguments[4], NULL, resource_name, 0, 1, serving,
                                           finalize_deliver, serving, deliver_events,
                                           &serving->deliver) != napi_ok;
  if (!failed) {
    serving->references += 1; /* the threadsafe function, released by finalize_deliver */
    napi_unref_threadsafe_function(env, serving->deliver);
    if (pthread_create(&serving->thread, NULL, nbd_thread_run, serving) == 0) {
      serving->thread_started = true;
    } else {
      /* No thread: the function's finalizer drops its reference without a join. */
      napi_release_threadsafe_function(serving->deliver, napi_tsfn_abort);
      failed = true;
    }
  }
  if (failed) {
    close(serving->socket_fd);
    close(serving->target_fd);
    release_reference(serving);
    napi_throw_error(env, "EIO", "cannot start an NBD transmission thread");
    return NULL;
  }
  if (napi_create_external(env, serving, finalize_handle, NULL, &handle) != napi_ok) {
    /* The thread runs; without a handle nobody can stop it but the peer. Ask it to stop. */
    finalize_handle(env, serving, NULL);
    napi_throw_error(env, "EINTERNAL", "cannot create an NBD transmission thread handle");
    return NULL;
  }
  return handle;
}

static serving_thread_t *serving_of(napi_env env, napi_value value) {
  void *data = NULL;
  if (napi_get_value_external(env, value, &data) != napi_ok) return NULL;
  return data;
}

/* controlThread(handle, what, value): 1 pause (value 0/1), 2 stop. */
static napi_value js_control_thread(napi_env env, napi_callback_info info) {
  napi_value arguments[3];
  size_t count = 3;
  int32_t what = 0, value = 0;
  serving_thread_t *serving = NULL;
  if (napi_get_cb_info(env, info, &count, arguments, NULL, NULL) != napi_ok || count < 3 ||
      (serving = serving_of(env, arguments[0])) == NULL ||
      napi_get_value_int32(env, arguments[1], &what) != napi_ok ||
      napi_get_value_int32(env, arguments[2], &value) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "controlThread(handle, what, value)");
    return NULL;
  }
  pthread_mutex_lock(&serving->mutex);
  if (what == 1) serving->paused = value != 0;
  if (what == 2) serving->stop_requested = true;
  pthread_mutex_unlock(&serving->mutex);
  nbd_thread_wake(serving);
  return NULL;
}

/* sendOnThread(handle, bytes): copies reply bytes for the thread to send; false on no memory. */
static napi_value js_send_on_thread(napi_env env, napi_callback_info info) {
  napi_value arguments[2], result;
  size_t count = 2;
  void *bytes = NULL;
  size_t length = 0;
  serving_thread_t *serving = NULL;
  if (napi_get_cb_info(env, info, &count, arguments, NULL, NULL) != napi_ok || count < 2 ||
      (serving = serving_of(env, arguments[0])) == NULL ||
      napi_get_buffer_info(env, arguments[1], &bytes, &length) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "sendOnThread(handle, bytes)");
    return NULL;
  }
  pthread_mutex_lock(&serving->mutex);
  bool ok = nbd_append(&serving->javascript_output, bytes, length);
  bool ended = serving->ended;
  pthread_mutex_unlock(&serving->mutex);
  if (ok && !ended) nbd_thread_wake(serving);
  napi_get_boolean(env, ok, &result);
  return result;
}

/*
 * takeOutput(handle): after STOPPED, every output byte not sent yet (the thread's own replies
 * first, then JavaScript's), as a Buffer, or undefined when there is none.
 */
static napi_value js_take_output(napi_env env, napi_callback_info info) {
  napi_value arguments[1], result;
  size_t count = 1;
  serving_thread_t *serving = NULL;
  if (napi_get_cb_info(env, info, &count, arguments, NULL, NULL) != napi_ok || count < 1 ||
      (serving = serving_of(env, arguments[0])) == NULL) {
    napi_throw_type_error(env, "EINVAL", "takeOutput(handle)");
    return NULL;
  }
  pthread_mutex_lock(&serving->mutex);
  bool ended = serving->ended;
  pthread_mutex_unlock(&serving->mutex);
  if (!ended) {
    napi_throw_error(env, "EBUSY", "takeOutput while the transmission thread runs");
    return NULL;
  }
  size_t length = 0;
  if (!nbd_take_javascript_output(serving) ||
      ((length = nbd_pending_bytes(&serving->output)) > 0 &&
       napi_create_buffer_copy(env, length, serving->output.bytes + serving->output.start, NULL,
                               &result) != napi_ok)) {
    napi_throw_error(env, "ENOMEM", "no memory for the transmission thread's output");
    return NULL;
  }
  serving->output.start = serving->output.end = 0;
  if (length == 0) napi_get_undefined(env, &result);
  return result;
}

void nbd_thread_register(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"startThread", NULL, js_start_thread, NULL, NULL, NULL, napi_enumerable, NULL},
      {"controlThread", NULL, js_control_thread, NULL, NULL, NULL, napi_enumerable, NULL},
      {"sendOnThread", NULL, js_send_on_thread, NULL, NULL, NULL, napi_enumerable, NULL},
      {"takeOutput", NULL, js_take_output, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  napi_define_properties(env, exports, sizeof properties / sizeof properties[0], properties);
}
