/*
 * The read helper of an NBD transmission thread (nbd_reader.c).
 *
 * A single thread that copies 1 MiB out of the page cache and then the same 1 MiB into the
 * socket is busy all the time while the client waits half of it: measured here, one connection
 * read at 0.8x nbdkit, whose worker threads overlap one request's pread with another's send.
 * So a large READ goes to this helper: it preads into a reply slot while the transmission
 * thread sends the slots read before. Slots are begun, and their replies leave, in the order
 * submitted. Small READs stay on the transmission thread, where a hand-over would cost more
 * than the copy.
 *
 * Slots move free -> submitted (the transmission thread wrote the reply header and the range)
 * -> claimed (a thread began to read it) -> read (the data is in, or the error) -> released
 * (the transmission thread sent the reply, or handed on the failure) -> free. Counters that
 * only grow say where the slots are (slot n is slots[n % READER_SLOTS]), and each slot's
 * `read` flag says when its data is in; these atomics are all the two threads share, and
 * their stores publish the slot's contents. The helper sleeps on an eventfd that each submit
 * adds to; the transmission thread learns of each read slot through its own wake eventfd.
 * Rather than sleep until the helper is done, the transmission thread claims and reads a
 * waiting slot itself: a sleep and a wake-up cost more than the copy on a virtual machine.
 */
#ifndef TANDEM_NBD_READER_H
#define TANDEM_NBD_READER_H
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* One slot is sent while the next is read and a third waits (2 and 6 measured no better). */
#define READER_SLOTS 3
/* The errno of a READ whose file ended before its range did (READ_FAILED's errno field). */
#define ERRNO_END_OF_FILE (-1)

typedef struct {
  uint8_t *bytes; /* the reply: its header, then the data */
  size_t capacity;
  size_t header_bytes;
  size_t reply_bytes;
  int64_t offset;
  double request[6]; /* the request's fields, for READ_FAILED */
  int error;         /* 0, an errno, or ERRNO_END_OF_FILE */
  _Atomic bool read; /* the data (or error) is in: the reply may go */
} read_slot_t;

typedef struct {
  int target_fd;
  int wake_fd;
  pthread_t thread;
  bool started;
  bool start_failed;
  bool finished; /* the helper has ended: every submitted slot is completed */
  read_slot_t slots[READER_SLOTS];
  int work_fd; /* an eventfd: each submit adds one, and the helper waits on it */
  /* Transmission thread only. */
  uint64_t released;
  size_t head_sent; /* bytes of the oldest completed reply already sent */
  /* Written by one side, read by the other. */
  _Atomic uint64_t submitted;
  _Atomic uint64_t claimed; /* slots begun, by either thread */
  _Atomic bool ending;
} nbd_reader_t;

/* 0, an errno, or ERRNO_END_OF_FILE when the file ends first. */
int nbd_read_fully(int fd, uint8_t *into, size_t length, int64_t offset);
/* Starts the helper on first use; false when it cannot run (the caller reads inline). */
bool nbd_reader_running(nbd_reader_t *reader, int target_fd, int wake_fd);
/* Whether a slot is free for nbd_reader_slot. */
bool nbd_reader_has_room(const nbd_reader_t *reader);
/* Whether it runs and every slot is taken. */
bool nbd_reader_full(const nbd_reader_t *reader);
/* The free slot to fill, with room for `reply_bytes`; NULL on no memory. */
read_slot_t *nbd_reader_slot(nbd_reader_t *reader, size_t reply_bytes);
/* Hands the filled slot (header, header_bytes, offset, request) to the helper. */
void nbd_reader_submit(nbd_reader_t *reader);
/* Reads the oldest submitted slot not begun yet on the caller's thread; false if none. */
bool nbd_reader_read_one(nbd_reader_t *reader);
/* The oldest slot not released yet if its data is read, else NULL. */
read_slot_t *nbd_reader_head(nbd_reader_t *reader);
/* Whether any slot is submitted and not released. */
bool nbd_reader_busy(const nbd_reader_t *reader);
/* Frees the head slot (nbd_reader_head) for reuse. */
void nbd_reader_release_head(nbd_reader_t *reader);
/* Lets the helper complete every submitted slot, then ends it. */
void nbd_reader_finish(nbd_reader_t *reader);
/* After nbd_reader_finish: frees the slots. */
void nbd_reader_destroy(nbd_reader_t *reader);

#endif
