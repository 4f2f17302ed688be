// A fresh verifier's feed client in its own thread (its own event loop), so the broker's event-loop
// delay measured in the main thread is the broker's alone. Reports the time to its first complete
// snapshot.
import { parentPort, workerData } from 'node:worker_threads';
import { RevocationFeedClient } from '@taskpass/verifier';

const { brokerUrl } = workerData as { brokerUrl: string };
const t0 = performance.now();
const feed = new RevocationFeedClient({ brokerUrl });
try {
  await feed.ready(600_000);
  parentPort!.postMessage({ readyMs: performance.now() - t0, size: feed.size });
} catch (e) {
  parentPort!.postMessage({ error: (e as Error).message });
} finally {
  await feed.close();
}
