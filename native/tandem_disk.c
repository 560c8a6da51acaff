/*
 * tandem_disk: the few Linux system calls that Node's fs module does not offer and that the disk
 * layer needs (src/disk/native.ts is the only caller).
 *
 * Calls that may wait on a device (fallocate, lseek SEEK_DATA/SEEK_HOLE, BLKDISCARD, BLKZEROOUT,
 * posix_fadvise) run as napi async work on libuv's thread pool and return promises, so a stalled
 * disk never blocks the event loop. The ioctls that only read block device geometry and the
 * buffer address helper are synchronous: they are cheap and used at open or on the I/O path.
 *
 * Errors are thrown (or rejected) as Error objects with `code` (e.g. 'EOPNOTSUPP'), a negative
 * `errno` and `syscall`, like Node's own system errors.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/falloc.h>
#include <linux/fs.h>
#include <linux/stat.h>
#include <node_api.h>
#include <limits.h>
#include <malloc.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <unistd.h>

#include "nbd_thread.h"

#define CHECK(call)                                                                                \
  do {                                                                                             \
    if ((call) != napi_ok) {                                                                       \
      napi_throw_error(env, "EINTERNAL", "napi call failed: " #call);                            \
      return NULL;                                                                                 \
    }                                                                                              \
  } while (0)

typedef enum {
  OPERATION_FALLOCATE,
  OPERATION_SEEK_DATA,
  OPERATION_SEEK_HOLE,
  OPERATION_DISCARD,
  OPERATION_ZERO_OUT,
  OPERATION_FADVISE_WILLNEED,
  OPERATION_FDATASYNC,
} operation_t;

static const char *operation_names[] = {
    "fallocate", "lseek", "lseek", "ioctl(BLKDISCARD)", "ioctl(BLKZEROOUT)", "posix_fadvise",
    "fdatasync",
};

typedef struct {
  napi_async_work work;
  napi_deferred deferred;
  operation_t operation;
  int fd;
  int mode;
  int64_t offset;
  int64_t length;
  int64_t result;
  int error;
} job_t;

static const char *errno_name(int error) {
  switch (error) {
  case EOPNOTSUPP: return "EOPNOTSUPP";
  case ENOSPC: return "ENOSPC";
  case EDQUOT: return "EDQUOT";
  case EIO: return "EIO";
  case ENXIO: return "ENXIO";
  case ENODEV: return "ENODEV";
  case ENOMEDIUM: return "ENOMEDIUM";
  case EINVAL: return "EINVAL";
  case EBADF: return "EBADF";
  case ENOTTY: return "ENOTTY";
  case EPERM: return "EPERM";
  case EACCES: return "EACCES";
  case EROFS: return "EROFS";
  case EFBIG: return "EFBIG";
  case ENOSYS: return "ENOSYS";
  case EAGAIN: return "EAGAIN";
  case EINTR: return "EINTR";
  case ENOMEM: return "ENOMEM";
  case ESPIPE: return "ESPIPE";
  case ETXTBSY: return "ETXTBSY";
  case EBUSY: return "EBUSY";
  default: return "EUNKNOWN";
  }
}

static napi_value make_error(napi_env env, int error, const char *syscall_name) {
  char message[256];
  napi_value code, text, result, errno_value, syscall_value;
  snprintf(message, sizeof message, "%s failed: %s", syscall_name, strerror(error));
  napi_create_string_utf8(env, errno_name(error), NAPI_AUTO_LENGTH, &code);
  napi_create_string_utf8(env, message, NAPI_AUTO_LENGTH, &text);
  napi_create_error(env, code, text, &result);
  napi_create_int32(env, -error, &errno_value);
  napi_set_named_property(env, result, "errno", errno_value);
  napi_create_string_utf8(env, syscall_name, NAPI_AUTO_LENGTH, &syscall_value);
  napi_set_named_property(env, result, "syscall", syscall_value);
  return result;
}

static void throw_errno(napi_env env, int error, const char *syscall_name) {
  napi_throw(env, make_error(env, error, syscall_name));
}

static void execute_job(napi_env env, void *data) {
  (void)env;
  job_t *job = data;
  job->error = 0;
  job->result = 0;
  switch (job->operation) {
  case OPERATION_FALLOCATE:
    if (fallocate(job->fd, job->mode, job->offset, job->length) != 0) job->error = errno;
    break;
  case OPERATION_SEEK_DATA:
  case OPERATION_SEEK_HOLE: {
    int whence = job->operation == OPERATION_SEEK_DATA ? SEEK_DATA : SEEK_HOLE;
    off_t position = lseek(job->fd, job->offset, whence);
    if (position >= 0) {
      job->result = position;
    } else if (errno == ENXIO) {
      /* No data (or hole) at or after the offset: an answer, not an error. */
      job->result = -1;
    } else {
      job->error = errno;
    }
    break;
  }
  case OPERATION_DISCARD:
  case OPERATION_ZERO_OUT: {
    uint64_t range[2] = {(uint64_t)job->offset, (uint64_t)job->length};
    unsigned long request = job->operation == OPERATION_DISCARD ? BLKDISCARD : BLKZEROOUT;
    if (ioctl(job->fd, request, range) != 0) job->error = errno;
    break;
  }
  case OPERATION_FADVISE_WILLNEED:
    /* posix_fadvise returns the error number instead of setting errno. */
    job->error = posix_fadvise(job->fd, job->offset, job->length, POSIX_FADV_WILLNEED);
    break;
  case OPERATION_FDATASYNC:
    if (fdatasync(job->fd) != 0) job->error = errno;
    break;
  }
}

static void complete_job(napi_env env, napi_status status, void *data) {
  job_t *job = data;
  if (status != napi_ok) {
    napi_value error;
    napi_value code, text;
    napi_create_string_utf8(env, "ECANCELED", NAPI_AUTO_LENGTH, &code);
    napi_create_string_utf8(env, "async work cancelled", NAPI_AUTO_LENGTH, &text);
    napi_create_error(env, code, text, &error);
    napi_reject_deferred(env, job->deferred, error);
  } else if (job->error != 0) {
    napi_reject_deferred(env, job->deferred,
                         make_error(env, job->error, operation_names[job->operation]));
  } else {
    napi_value result;
    napi_create_double(env, (double)job->result, &result);
    napi_resolve_deferred(env, job->deferred, result);
  }
  napi_delete_async_work(env, job->work);
  free(job);
}

/* Reads up to four integer arguments: fd, then (depending on the call) mode/offset/length. */
static int read_arguments(napi_env env, napi_callback_info info, size_t expected, int64_t *values) {
  napi_value arguments[4];
  size_t count = 4;
  if (napi_get_cb_info(env, info, &count, arguments, NULL, NULL) != napi_ok || count < expected) {
    napi_throw_type_error(env, "EINVAL", "wrong number of arguments");
    return 0;
  }
  for (size_t index = 0; index < expected; index++) {
    if (napi_get_value_int64(env, arguments[index], &values[index]) != napi_ok) {
      napi_throw_type_error(env, "EINVAL", "arguments must be integers");
      return 0;
    }
  }
  return 1;
}

static napi_value start_job(napi_env env, operation_t operation, int fd, int mode, int64_t offset,
                            int64_t length) {
  job_t *job = calloc(1, sizeof *job);
  napi_value promise, resource_name;
  if (job == NULL) {
    throw_errno(env, ENOMEM, "calloc");
    return NULL;
  }
  job->operation = operation;
  job->fd = fd;
  job->mode = mode;
  job->offset = offset;
  job->length = length;
  CHECK(napi_create_promise(env, &job->deferred, &promise));
  CHECK(napi_create_string_utf8(env, "tandem_disk", NAPI_AUTO_LENGTH, &resource_name));
  CHECK(napi_create_async_work(env, NULL, resource_name, execute_job, complete_job, job,
                               &job->work));
  CHECK(napi_queue_async_work(env, job->work));
  return promise;
}

/* fallocate(fd, mode, offset, length): Promise<number> */
static napi_value js_fallocate(napi_env env, napi_callback_info info) {
  int64_t values[4];
  if (!read_arguments(env, info, 4, values)) return NULL;
  return start_job(env, OPERATION_FALLOCATE, (int)values[0], (int)values[1], values[2], values[3]);
}

/* seekData(fd, offset) / seekHole(fd, offset): Promise<number>, -1 for ENXIO */
static napi_value js_seek_data(napi_env env, napi_callback_info info) {
  int64_t values[2];
  if (!read_arguments(env, info, 2, values)) return NULL;
  return start_job(env, OPERATION_SEEK_DATA, (int)values[0], 0, values[1], 0);
}

static napi_value js_seek_hole(napi_env env, napi_callback_info info) {
  int64_t values[2];
  if (!read_arguments(env, info, 2, values)) return NULL;
  return start_job(env, OPERATION_SEEK_HOLE, (int)values[0], 0, values[1], 0);
}

/* blockDiscard(fd, offset, length) / blockZeroOut(fd, offset, length): Promise<number> */
static napi_value js_block_discard(napi_env env, napi_callback_info info) {
  int64_t values[3];
  if (!read_arguments(env, info, 3, values)) return NULL;
  return start_job(env, OPERATION_DISCARD, (int)values[0], 0, values[1], values[2]);
}

static napi_value js_block_zero_out(napi_env env, napi_callback_info info) {
  int64_t values[3];
  if (!read_arguments(env, info, 3, values)) return NULL;
  return start_job(env, OPERATION_ZERO_OUT, (int)values[0], 0, values[1], values[2]);
}

/* adviseWillNeed(fd, offset, length): Promise<number> */
static napi_value js_advise_will_need(napi_env env, napi_callback_info info) {
  int64_t values[3];
  if (!read_arguments(env, info, 3, values)) return NULL;
  return start_job(env, OPERATION_FADVISE_WILLNEED, (int)values[0], 0, values[1], values[2]);
}

/* fdatasync(fd): Promise<number> */
static napi_value js_fdatasync(napi_env env, napi_callback_info info) {
  int64_t values[1];
  if (!read_arguments(env, info, 1, values)) return NULL;
  return start_job(env, OPERATION_FDATASYNC, (int)values[0], 0, 0, 0);
}


/*
 * Batched positional I/O: the NBD hot path.
 *
 * Handing each 4 KiB request to libuv's thread pool on its own costs a thread wake-up and a
 * completion per request, which dominated the server's profile. submitBatch() hands the pool
 * a whole batch (all requests parsed in one event-loop turn, up to a bound set by the caller):
 * one wake-up, the system calls back to back on one pool thread, one completion. The event loop
 * itself never waits on the disk.
 *
 * submitBatch(fd, buffers, offsets, writes, callback): `buffers` is an array whose elements are
 * each a Buffer or, for a write, an array of Buffers written back to back with pwritev (a gather
 * write: the NBD server hands over a payload as the socket chunks it arrived in, without joining
 * them first); `offsets` a Float64Array of byte offsets, `writes` a Uint8Array (1 = write,
 * 0 = read); callback(results) gets an Int32Array: 0 for success, a positive errno, or -1 for
 * end of file.
 */
#define BATCH_MAXIMUM_OPERATIONS 256
/* Pieces of one gather write; the NBD server's largest payload (32 MiB) in 4 KiB pieces. */
#define BATCH_MAXIMUM_PIECES 8192

typedef struct {
  struct iovec *vectors;
  int vector_count;
  /* One piece lives here, so plain reads and writes need no allocation. */
  struct iovec single;
  int64_t offset;
  int write;
  int result;
} batch_operation_t;

typedef struct {
  napi_async_work work;
  napi_ref buffers_reference;
  napi_ref callback_reference;
  int fd;
  size_t count;
  batch_operation_t operations[];
} batch_t;

/*
 * Moves every byte of the operation, looping over short transfers; the vectors are advanced in
 * place. At most IOV_MAX vectors go to one call.
 */
static int transfer_fully(int fd, batch_operation_t *operation) {
  struct iovec *vectors = operation->vectors;
  int remaining_count = operation->vector_count;
  int64_t offset = operation->offset;
  while (remaining_count > 0) {
    if (vectors->iov_len == 0) {
      vectors++;
      remaining_count--;
      continue;
    }
    int call_count = remaining_count < IOV_MAX ? remaining_count : IOV_MAX;
    ssize_t moved = operation->write ? pwritev(fd, vectors, call_count, offset)
                                     : preadv(fd, vectors, call_count, offset);
    if (moved < 0) {
      if (errno == EINTR) continue;
      return errno;
    }
    if (moved == 0) return operation->write ? EIO : -1;
    offset += moved;
    size_t left = (size_t)moved;
    while (left > 0 && left >= vectors->iov_len) {
      left -= vectors->iov_len;
      vectors++;
      remaining_count--;
    }
    if (left > 0) {
      vectors->iov_base = (char *)vectors->iov_base + left;
      vectors->iov_len -= left;
    }
  }
  return 0;
}

static void execute_batch(napi_env env, void *data) {
  (void)env;
  batch_t *batch = data;
  for (size_t index = 0; index < batch->count; index++) {
    batch->operations[index].result = transfer_fully(batch->fd, &batch->operations[index]);
  }
}

static void free_batch(batch_t *batch) {
  for (size_t index = 0; index < batch->count; index++) {
    if (batch->operations[index].vectors != &batch->operations[index].single) {
      free(batch->operations[index].vectors);
    }
  }
  free(batch);
}

static void complete_batch(napi_env env, napi_status status, void *data) {
  batch_t *batch = data;
  napi_value callback, global, array_buffer, results, ignored;
  void *raw = NULL;
  if (napi_create_arraybuffer(env, batch->count * sizeof(int32_t), &raw, &array_buffer) ==
          napi_ok &&
      napi_create_typedarray(env, napi_int32_array, batch->count, array_buffer, 0, &results) ==
          napi_ok) {
    int32_t *out = raw;
    for (size_t index = 0; index < batch->count; index++) {
      out[index] = status == napi_ok ? batch->operations[index].result : ECANCELED;
    }
    napi_get_reference_value(env, batch->callback_reference, &callback);
    napi_get_global(env, &global);
    napi_call_function(env, global, callback, 1, &results, &ignored);
  }
  napi_delete_reference(env, batch->buffers_reference);
  napi_delete_reference(env, batch->callback_reference);
  napi_delete_async_work(env, batch->work);
  free_batch(batch);
}

/*
 * Fills the operation's vectors from a Buffer, or for a write from an array of Buffers. Returns
 * NULL, or what was wrong. The caller has pointed `vectors` at `single`.
 */
static const char *read_operation_pieces(napi_env env, napi_value element,
                                         batch_operation_t *operation) {
  bool is_array = false;
  if (napi_is_array(env, element, &is_array) != napi_ok) return "cannot inspect a batch element";
  if (!is_array) {
    if (napi_get_buffer_info(env, element, &operation->single.iov_base,
                             &operation->single.iov_len) != napi_ok) {
      return "every batch element must be a Buffer or an array of Buffers";
    }
    return NULL;
  }
  uint32_t piece_count = 0;
  if (!operation->write) return "only a write may gather pieces";
  if (napi_get_array_length(env, element, &piece_count) != napi_ok || piece_count == 0 ||
      piece_count > BATCH_MAXIMUM_PIECES) {
    return "a gather write needs 1 to 8192 pieces";
  }
  struct iovec *vectors = calloc(piece_count, sizeof *vectors);
  if (vectors == NULL) return "out of memory for a gather write";
  operation->vectors = vectors;
  operation->vector_count = (int)piece_count;
  for (uint32_t index = 0; index < piece_count; index++) {
    napi_value piece;
    if (napi_get_element(env, element, index, &piece) != napi_ok ||
        napi_get_buffer_info(env, piece, &vectors[index].iov_base, &vectors[index].iov_len) !=
            napi_ok) {
      return "every piece of a gather write must be a Buffer";
    }
  }
  return NULL;
}

static napi_value js_submit_batch(napi_env env, napi_callback_info info) {
  napi_value arguments[5], resource_name;
  size_t argument_count = 5;
  int32_t fd;
  uint32_t count = 0;
  CHECK(napi_get_cb_info(env, info, &argument_count, arguments, NULL, NULL));
  if (argument_count < 5 || napi_get_value_int32(env, arguments[0], &fd) != napi_ok ||
      napi_get_array_length(env, arguments[1], &count) != napi_ok || count == 0 ||
      count > BATCH_MAXIMUM_OPERATIONS) {
    napi_throw_type_error(env, "EINVAL", "submitBatch(fd, buffers[1..256], offsets, writes, cb)");
    return NULL;
  }
  double *offsets = NULL;
  uint8_t *writes = NULL;
  size_t offsets_length = 0, writes_length = 0;
  napi_typedarray_type type;
  napi_value ignored_buffer;
  size_t ignored_offset;
  if (napi_get_typedarray_info(env, arguments[2], &type, &offsets_length, (void **)&offsets,
                               &ignored_buffer, &ignored_offset) != napi_ok ||
      type != napi_float64_array || offsets_length < count ||
      napi_get_typedarray_info(env, arguments[3], &type, &writes_length, (void **)&writes,
                               &ignored_buffer, &ignored_offset) != napi_ok ||
      type != napi_uint8_array || writes_length < count) {
    napi_throw_type_error(env, "EINVAL", "offsets must be a Float64Array, writes a Uint8Array");
    return NULL;
  }
  batch_t *batch = calloc(1, sizeof *batch + count * sizeof(batch_operation_t));
  if (batch == NULL) {
    throw_errno(env, ENOMEM, "calloc");
    return NULL;
  }
  batch->fd = fd;
  batch->count = count;
  for (uint32_t index = 0; index < count; index++) {
    batch_operation_t *operation = &batch->operations[index];
    napi_value element;
    operation->offset = (int64_t)offsets[index];
    operation->write = writes[index] != 0;
    operation->vectors = &operation->single;
    operation->vector_count = 1;
    const char *problem = napi_get_element(env, arguments[1], index, &element) != napi_ok
                              ? "cannot read a batch element"
                              : read_operation_pieces(env, element, operation);
    if (problem != NULL) {
      batch->count = index + 1;
      free_batch(batch);
      napi_throw_type_error(env, "EINVAL", problem);
      return NULL;
    }
  }
  /* The array keeps every Buffer (and so its memory) alive until the batch completes; the
   * nested arrays of a gather write are reachable from it. */
  CHECK(napi_create_reference(env, arguments[1], 1, &batch->buffers_reference));
  CHECK(napi_create_reference(env, arguments[4], 1, &batch->callback_reference));
  CHECK(napi_create_string_utf8(env, "tandem_disk_batch", NAPI_AUTO_LENGTH, &resource_name));
  CHECK(napi_create_async_work(env, NULL, resource_name, execute_batch, complete_batch, batch,
                               &batch->work));
  CHECK(napi_queue_async_work(env, batch->work));
  return NULL;
}


/*
 * preadNoWait(fd, buffer, offset): reads from the page cache only (preadv2 with RWF_NOWAIT) and
 * returns the bytes read, or a negative errno (-EAGAIN when the data is not cached, -EOPNOTSUPP
 * where the kernel or filesystem lacks RWF_NOWAIT). It never waits on a device, so the event loop
 * may call it directly; whatever it cannot serve goes to the pool through submitBatch().
 */
static napi_value js_pread_nowait(napi_env env, napi_callback_info info) {
  napi_value arguments[3], result;
  size_t argument_count = 3;
  int32_t fd;
  int64_t offset;
  void *data = NULL;
  size_t length = 0;
  CHECK(napi_get_cb_info(env, info, &argument_count, arguments, NULL, NULL));
  if (argument_count < 3 || napi_get_value_int32(env, arguments[0], &fd) != napi_ok ||
      napi_get_buffer_info(env, arguments[1], &data, &length) != napi_ok ||
      napi_get_value_int64(env, arguments[2], &offset) != napi_ok) {
    napi_throw_type_error(env, "EINVAL", "preadNoWait(fd, buffer, offset)");
    return NULL;
  }
#ifdef RWF_NOWAIT
  struct iovec vector = {.iov_base = data, .iov_len = length};
  ssize_t moved = preadv2(fd, &vector, 1, offset, RWF_NOWAIT);
  CHECK(napi_create_int64(env, moved >= 0 ? (int64_t)moved : -(int64_t)errno, &result));
#else
  (void)fd; (void)offset;
  CHECK(napi_create_int64(env, -(int64_t)EOPNOTSUPP, &result));
#endif
  return result;
}

/*
 * retainFreedHeap(bytes): glibc returns the top of the heap to the kernel once more than
 * M_TRIM_THRESHOLD (128 KiB by default) is free there. Node allocates a fresh 64 KiB buffer for
 * every socket read and frees it at the next garbage collection, so a server receiving 1 MiB
 * writes grows and trims its heap constantly and every chunk lands on newly faulted, zeroed pages
 * (measured: 26,000 page faults per GiB received, 600 with 16 MiB retained). Returns whether
 * glibc took the setting.
 */
static napi_value js_retain_freed_heap(napi_env env, napi_callback_info info) {
  int64_t values[1];
  napi_value result;
  if (!read_arguments(env, info, 1, values)) return NULL;
  if (values[0] < 0 || values[0] > INT_MAX) {
    napi_throw_range_error(env, "EINVAL", "retainFreedHeap(bytes) takes 0 to 2^31-1 bytes");
    return NULL;
  }
  CHECK(napi_get_boolean(env, mallopt(M_TRIM_THRESHOLD, (int)values[0]) == 1, &result));
  return result;
}

static napi_value set_number(napi_env env, napi_value object, const char *name, double value) {
  napi_value number;
  CHECK(napi_create_double(env, value, &number));
  CHECK(napi_set_named_property(env, object, name, number));
  return object;
}

/* blockDeviceGeometry(fd): { sizeBytes, logicalSectorSizeBytes, physicalSectorSizeBytes } */
static napi_value js_block_device_geometry(napi_env env, napi_callback_info info) {
  int64_t values[1];
  uint64_t size_bytes = 0;
  int logical = 0;
  unsigned int physical = 0;
  napi_value result;
  if (!read_arguments(env, info, 1, values)) return NULL;
  int fd = (int)values[0];
  if (ioctl(fd, BLKGETSIZE64, &size_bytes) != 0) {
    throw_errno(env, errno, "ioctl(BLKGETSIZE64)");
    return NULL;
  }
  if (ioctl(fd, BLKSSZGET, &logical) != 0) {
    throw_errno(env, errno, "ioctl(BLKSSZGET)");
    return NULL;
  }
  if (ioctl(fd, BLKPBSZGET, &physical) != 0) {
    throw_errno(env, errno, "ioctl(BLKPBSZGET)");
    return NULL;
  }
  CHECK(napi_create_object(env, &result));
  set_number(env, result, "sizeBytes", (double)size_bytes);
  set_number(env, result, "logicalSectorSizeBytes", logical);
  set_number(env, result, "physicalSectorSizeBytes", physical);
  return result;
}

/*
 * directIoAlignment(fd): { memoryAlignmentBytes, offsetAlignmentBytes }, zeroes when the kernel
 * or the filesystem does not say (statx STATX_DIOALIGN, Linux 6.1+).
 */
static napi_value js_direct_io_alignment(napi_env env, napi_callback_info info) {
  int64_t values[1];
  struct statx status;
  napi_value result;
  if (!read_arguments(env, info, 1, values)) return NULL;
  memset(&status, 0, sizeof status);
  long outcome = syscall(SYS_statx, (int)values[0], "", AT_EMPTY_PATH, STATX_DIOALIGN, &status);
  int known = outcome == 0 && (status.stx_mask & STATX_DIOALIGN) != 0;
  CHECK(napi_create_object(env, &result));
  set_number(env, result, "memoryAlignmentBytes", known ? status.stx_dio_mem_align : 0);
  set_number(env, result, "offsetAlignmentBytes", known ? status.stx_dio_offset_align : 0);
  return result;
}

/* addressModulo(buffer, alignment): the buffer's start address modulo `alignment`. */
static napi_value js_address_modulo(napi_env env, napi_callback_info info) {
  napi_value arguments[2];
  size_t count = 2;
  void *data = NULL;
  size_t length = 0;
  int64_t alignment = 0;
  napi_value result;
  CHECK(napi_get_cb_info(env, info, &count, arguments, NULL, NULL));
  if (count < 2 || napi_get_buffer_info(env, arguments[0], &data, &length) != napi_ok ||
      napi_get_value_int64(env, arguments[1], &alignment) != napi_ok || alignment <= 0) {
    napi_throw_type_error(env, "EINVAL", "addressModulo(buffer, alignment > 0)");
    return NULL;
  }
  CHECK(napi_create_double(env, (double)((uintptr_t)data % (uint64_t)alignment), &result));
  return result;
}

static napi_value init(napi_env env, napi_value exports) {
  napi_property_descriptor properties[] = {
      {"fallocate", NULL, js_fallocate, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekData", NULL, js_seek_data, NULL, NULL, NULL, napi_enumerable, NULL},
      {"seekHole", NULL, js_seek_hole, NULL, NULL, NULL, napi_enumerable, NULL},
      {"blockDiscard", NULL, js_block_discard, NULL, NULL, NULL, napi_enumerable, NULL},
      {"blockZeroOut", NULL, js_block_zero_out, NULL, NULL, NULL, napi_enumerable, NULL},
      {"adviseWillNeed", NULL, js_advise_will_need, NULL, NULL, NULL, napi_enumerable, NULL},
      {"fdatasync", NULL, js_fdatasync, NULL, NULL, NULL, napi_enumerable, NULL},
      {"blockDeviceGeometry", NULL, js_block_device_geometry, NULL, NULL, NULL, napi_enumerable,
       NULL},
      {"directIoAlignment", NULL, js_direct_io_alignment, NULL, NULL, NULL, napi_enumerable, NULL},
      {"addressModulo", NULL, js_address_modulo, NULL, NULL, NULL, napi_enumerable, NULL},
      {"submitBatch", NULL, js_submit_batch, NULL, NULL, NULL, napi_enumerable, NULL},
      {"preadNoWait", NULL, js_pread_nowait, NULL, NULL, NULL, napi_enumerable, NULL},
      {"retainFreedHeap", NULL, js_retain_freed_heap, NULL, NULL, NULL, napi_enumerable, NULL},
  };
  CHECK(napi_define_properties(env, exports, sizeof properties / sizeof properties[0],
                               properties));
  set_number(env, exports, "FALLOC_FL_KEEP_SIZE", FALLOC_FL_KEEP_SIZE);
  set_number(env, exports, "FALLOC_FL_PUNCH_HOLE", FALLOC_FL_PUNCH_HOLE);
  set_number(env, exports, "FALLOC_FL_ZERO_RANGE", FALLOC_FL_ZERO_RANGE);
  set_number(env, exports, "BATCH_MAXIMUM_OPERATIONS", BATCH_MAXIMUM_OPERATIONS);
  nbd_thread_register(env, exports);
  return exports;
}

NAPI_MODULE(NODE_GYP_MODULE_NAME, init)
