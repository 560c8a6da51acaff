/* The NBD transmission thread (nbd_thread.c): adds startThread, controlThread, sendOnThread and
   takeOutput to exports. */
#ifndef TANDEM_NBD_THREAD_H
#define TANDEM_NBD_THREAD_H
#include <node_api.h>

void nbd_thread_register(napi_env env, napi_value exports);

#endif
