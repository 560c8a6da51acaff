#!/usr/bin/env node
// The daemon. libuv sizes its thread pool when the pool first starts, so the size must be in
// the environment before anything can touch fs or dns: hence set here, before the import.
// The NBD path issues many positional reads and writes at once; 4 threads (the default) would
// queue them.
process.env.UV_THREADPOOL_SIZE ??= '16';

const { main } = await import('../dist/src/server/daemon.js');
await main(process.argv);
