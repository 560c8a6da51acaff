/**
 * A worker thread of `runSeeds`: runs the seeds it is given, one after another, and posts each
 * result back. Every run is independent of the thread it runs in (a pure function of its seed).
 */
import { parentPort, workerData } from 'node:worker_threads';
import { type ScenarioShape, generateScenario } from './scenario.js';
import { runScenario } from './simulation.js';

interface SeedWorkerData {
  readonly seeds: readonly number[];
  readonly shape: ScenarioShape;
}

async function main(): Promise<void> {
  const port = parentPort;
  if (port === null) throw new Error('seed-worker.js runs as a worker thread');
  const { seeds, shape } = workerData as SeedWorkerData;
  for (const seed of seeds) {
    const result = await runScenario(generateScenario(seed, shape));
    port.postMessage(result);
  }
}

await main();
