// Section 4 — the revocation feed's snapshot at production scale (issue #7, finding 0): a SQLite
// store seeded with N live revocations, the real hub and routes on loopback HTTP, and one fresh
// verifier (`RevocationFeedClient`, format 2) in a worker thread. Measures the verifier's time to
// ready and the broker's event-loop delay while it streams, with a request answered meanwhile.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { monitorEventLoopDelay } from 'node:perf_hooks';
import Database from 'better-sqlite3';
import Fastify from 'fastify';
import { Agent, fetch } from 'undici';
import { RevocationHub, revocationRoutes, SqliteStore } from '@taskpass/broker';
import { tsWorker } from './lib/load.ts';

export interface FeedSnapshotResult {
  size: number;
  readyMs: number;
  /** Broker event-loop delay while the snapshot streamed, ms. */
  loopMaxMs: number;
  loopP99Ms: number;
  /** Latency of /ping requests sent one after another while the snapshot streamed. */
  pingMaxMs: number;
  pings: number;
  /** The same loop's delay over one idle second before (what the shared machine adds). */
  idleLoopMaxMs: number;
  /** Broker work per snapshot page (read from the store + serialise), no network: median and max, ms. */
  pageMedianMs: number;
  pageMaxMs: number;
}

// Times each step of a snapshot's pages (store read, serialisation): the longest any other request
// can wait behind the feed.
async function pageWork(hub: RevocationHub): Promise<{ median: number; max: number }> {
  const view = await hub.open(undefined);
  const ds: number[] = [];
  try {
    const pages = view.pages();
    for (;;) {
      const t = performance.now();
      const r = await pages.next();
      if (r.done) break;
      r.value.revocations.map((x) => JSON.stringify(x)).join(',');
      ds.push(performance.now() - t);
    }
  } finally {
    view.close();
  }
  ds.sort((a, b) => a - b);
  return { median: ds[ds.length >> 1] ?? 0, max: ds.at(-1) ?? 0 };
}

export async function runFeedSnapshot(size: number): Promise<FeedSnapshotResult> {
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-bench-feed-'));
  const path = join(dir, 'broker.db');
  const store = new SqliteStore({ path });
  await store.init();
  const db = new Database(path);
  const until = Math.floor(Date.now() / 1000) + 3600;
  const insert = db.prepare(
    "INSERT INTO revocations (seq, kind, id, until, reason) VALUES (?, 'task', ?, ?, 'completed')",
  );
  db.transaction(() => {
    for (let i = 1; i <= size; i++)
      insert.run(i, `task-${String(i).padStart(8, '0')}-${'x'.repeat(27)}`, until);
    db.prepare("UPDATE counters SET value = ? WHERE name = 'revocation_seq'").run(size);
  })();
  db.close();
  const hub = new RevocationHub({ store, heartbeatMs: 60_000 });
  const page = await pageWork(hub);
  const app = Fastify();
  await app.register(revocationRoutes, { hub });
  app.get('/ping', async () => ({ pong: true }));
  const brokerUrl = await app.listen({ host: '127.0.0.1', port: 0 });
  const dispatcher = new Agent();
  try {
    const idle = monitorEventLoopDelay({ resolution: 1 });
    idle.enable();
    await new Promise((r) => setTimeout(r, 1000));
    idle.disable();
    const loop = monitorEventLoopDelay({ resolution: 1 });
    loop.enable();
    const worker = tsWorker(new URL('./lib/feed-snapshot-worker.ts', import.meta.url), { brokerUrl });
    const done = new Promise<{ readyMs?: number; size?: number; error?: string }>((resolve, reject) => {
      worker.once('message', resolve);
      worker.once('error', reject);
    });
    let streaming = true;
    let pingMaxMs = 0;
    let pings = 0;
    const pinger = (async () => {
      while (streaming) {
        const t = performance.now();
        await (await fetch(`${brokerUrl}/ping`, { dispatcher })).text();
        pingMaxMs = Math.max(pingMaxMs, performance.now() - t);
        pings++;
        await new Promise((r) => setTimeout(r, 20));
      }
    })();
    const r = await done;
    streaming = false;
    await pinger;
    loop.disable();
    await worker.terminate();
    if (r.error || r.readyMs === undefined) throw new Error(`feed snapshot: ${r.error ?? 'no result'}`);
    if (r.size !== size) throw new Error(`feed snapshot: verifier holds ${r.size}, expected ${size}`);
    return {
      size,
      readyMs: r.readyMs,
      loopMaxMs: loop.max / 1e6,
      loopP99Ms: loop.percentile(99) / 1e6,
      pingMaxMs,
      pings,
      idleLoopMaxMs: idle.max / 1e6,
      pageMedianMs: page.median,
      pageMaxMs: page.max,
    };
  } finally {
    await dispatcher.destroy();
    await app.close();
    await hub.close();
    await store.close();
    rmSync(dir, { recursive: true, force: true });
  }
}
