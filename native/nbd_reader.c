/* The read helper of an NBD transmission thread: nbd_reader.h says what and why. */
#define _GNU_SOURCE
#include "nbd_reader.h"

#include <errno.h>
#include <stdlib.h>
#include <sys/eventfd.h>
#include <unistd.h>

int nbd_read_fully(int fd, uint8_t *into, size_t length, int64_t offset) {
  while (length > 0) {
    ssize_t count = pread(fd, into, length, offset);
    if (count < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (count == 0) return ERRNO_END_OF_FILE;
    into += count;
    length -= (size_t)count;
    offset += count;
  }
  return 0;
}

static void add_to_eventfd(int fd) {
  uint64_t one = 1;
  if (write(fd, &one, sizeof one) < 0) {
    /* An eventfd write only fails on counter overflow: the reader is awake anyway. */
  }
}

/* Takes the oldest submitted slot that neither thread has begun; false when there is none. */
static bool claim(nbd_reader_t *reader, uint64_t *claimed) {
  uint64_t next = atomic_load(&reader->claimed);
  while (next < atomic_load(&reader->submitted)) {
    if (atomic_compare_exchange_weak(&reader->claimed, &next, next + 1)) {
      *claimed = next;
      return true;
    }
  }
  return false;
}

static void read_claimed(nbd_reader_t *reader, uint64_t claimed) {
  read_slot_t *slot = &reader->slots[claimed % READER_SLOTS];
  slot->error = nbd_read_fully(reader->target_fd, slot->bytes + slot->header_bytes,
                               slot->reply_bytes - slot->header_bytes, slot->offset);
  atomic_store(&slot->read, true);
}

/* The helper's body: reads submitted slots until asked to end and none is left. */
static void *read_submitted(void *argument) {
  nbd_reader_t *reader = argument;
  pthread_setname_np(pthread_self(), "tandem-nbd-read"); /* for top -H, and the tests */
  for (;;) {
    uint64_t claimed;
    while (!claim(reader, &claimed)) {
      if (atomic_load(&reader->ending)) return NULL;
      uint64_t ignored;
      /* Blocks until the next submit (or finish) adds to the counter. A failed read leaves
         the slots to the transmission thread, which reads what it waits for itself. */
      if (read(reader->work_fd, &ignored, sizeof ignored) < 0 && errno != EINTR) return NULL;
    }
    read_claimed(reader, claimed);
    add_to_eventfd(reader->wake_fd);
  }
}

bool nbd_reader_read_one(nbd_reader_t *reader) {
  uint64_t claimed;
  if (!reader->started || !claim(reader, &claimed)) return false;
  read_claimed(reader, claimed);
  return true;
}

bool nbd_reader_running(nbd_reader_t *reader, int target_fd, int wake_fd) {
  if (reader->started) return true;
  if (reader->start_failed) return false;
  reader->target_fd = target_fd;
  reader->wake_fd = wake_fd;
  reader->start_failed = true;
  reader->work_fd = eventfd(0, EFD_CLOEXEC);
  if (reader->work_fd < 0) return false;
  if (pthread_create(&reader->thread, NULL, read_submitted, reader) != 0) {
    close(reader->work_fd);
    return false;
  }
  reader->start_failed = false;
  reader->started = true;
  return true;
}

bool nbd_reader_has_room(const nbd_reader_t *reader) {
  /* `submitted` only changes on the transmission thread, the caller: no lock needed. */
  return reader->started && !reader->finished &&
         reader->submitted - reader->released < READER_SLOTS;
}

bool nbd_reader_full(const nbd_reader_t *reader) {
  return reader->started && reader->submitted - reader->released >= READER_SLOTS;
}

read_slot_t *nbd_reader_slot(nbd_reader_t *reader, size_t reply_bytes) {
  read_slot_t *slot = &reader->slots[reader->submitted % READER_SLOTS];
  if (slot->capacity < reply_bytes) {
    uint8_t *grown = malloc(reply_bytes);
    if (grown == NULL) return NULL;
    free(slot->bytes);
    slot->bytes = grown;
    slot->capacity = reply_bytes;
  }
  slot->reply_bytes = reply_bytes;
  slot->error = 0;
  atomic_store(&slot->read, false);
  return slot;
}

void nbd_reader_submit(nbd_reader_t *reader) {
  atomic_fetch_add(&reader->submitted, 1);
  add_to_eventfd(reader->work_fd);
}

read_slot_t *nbd_reader_head(nbd_reader_t *reader) {
  if (!nbd_reader_busy(reader)) return NULL;
  read_slot_t *head = &reader->slots[reader->released % READER_SLOTS];
  return atomic_load(&head->read) ? head : NULL;
}

bool nbd_reader_busy(const nbd_reader_t *reader) {
  return reader->submitted > reader->released;
}

void nbd_reader_release_head(nbd_reader_t *reader) {
  reader->released += 1;
  reader->head_sent = 0;
}

void nbd_reader_finish(nbd_reader_t *reader) {
  if (!reader->started || reader->finished) return;
  atomic_store(&reader->ending, true);
  add_to_eventfd(reader->work_fd);
  pthread_join(reader->thread, NULL);
  close(reader->work_fd);
  /* What the helper left (it ends early only if its eventfd failed) is read here. */
  while (nbd_reader_read_one(reader)) continue;
  reader->finished = true;
}

void nbd_reader_destroy(nbd_reader_t *reader) {
  for (int index = 0; index < READER_SLOTS; index++) {
    free(reader->slots[index].bytes);
    reader->slots[index].bytes = NULL;
    reader->slots[index].capacity = 0;
  }
}
