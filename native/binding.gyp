{
  "targets": [
    {
      "target_name": "tandem_disk",
      "sources": ["tandem_disk.c", "nbd_thread.c", "nbd_thread_napi.c", "nbd_output.c", "nbd_reader.c"],
      "cflags": ["-O2", "-Wall", "-Wextra", "-Wno-unused-parameter"],
      "defines": ["NAPI_VERSION=8"]
    }
  ]
}
