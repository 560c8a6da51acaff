/* The NBD receive thread (nbd_receiver.c): adds startReceiver and controlReceiver to exports. */
#ifndef TANDEM_NBD_RECEIVER_H
#define TANDEM_NBD_RECEIVER_H
#include <node_api.h>

void nbd_receiver_register(napi_env env, napi_value exports);

#endif
