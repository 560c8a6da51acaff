/**
 * Runs many seeds of the lease simulation on worker threads (one per core by default): the CI
 * test and the soak share it. Results come back in completion order.
 */
import { availableParallelism } from 'node:os';
import { Worker } from 'node:worker_threads';
import type { ScenarioShape } from './scenario.js';
import type { RunResult } from './simulation.js';

export interface RunSeedsOptions {
  readonly seeds: readonly number[];
  readonly shape: ScenarioShape;
  /** Worker threads (default: the available parallelism, at most 4). */
  readonly workers?: number;
  readonly onResult?: (result: RunResult) => void;
}

export async function runSeeds(options: RunSeedsOptions): Promise<RunResult[]> {
  const workerCount = Math.max(
    1,
    Math.min(options.workers ?? Math.min(4, availableParallelism()), options.seeds.length),
  );
  const shares: number[][] = Array.from({ length: workerCount }, () => []);
  options.seeds.forEach((seed, index) => shares[index % workerCount]?.push(seed));
  const results: RunResult[] = [];
  await Promise.all(
    shares.map(
      (seeds) =>
        new Promise<void>((resolve, reject) => {
          const worker = new Worker(new URL('./seed-worker.js', import.meta.url), {
            workerData: { seeds, shape: options.shape },
          });
          worker.on('message', (result: RunResult) => {
            results.push(result);
            options.onResult?.(result);
          });
          worker.on('error', reject);
          worker.on('exit', (code) => {
            if (code === 0) resolve();
            else reject(new Error(`seed worker exited with code ${code}`));
          });
        }),
    ),
  );
  return results;
}
