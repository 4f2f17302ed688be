// Section 9 — issuance as the store grows (issue #13): the same broker (lib/env.ts) on a SQLite
// file that already holds N tasks — half open, half finished, each with 3 issued calls and their
// workflow counters — bulk-inserted straight into the tables (one transaction, prepared statements),
// then call tokens on fresh tasks at a fixed rate (open loop, latency from the scheduled start).
// Printed per N: p50/p99, the file's size, the broker's RSS.
import { randomBytes } from 'node:crypto';
import { rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { generateKek, SqliteStore } from '@taskpass/broker';
import { AGENT_ID, benchDir, openTasks, startBenchEnv, tokenRequests } from './lib/env.ts';
import { LoadClient } from './lib/load.ts';
import { type Percentiles, percentiles } from './lib/stats.ts';

export interface ScaleRow {
  stored: number;
  seedSec: number;
  /** Over every round's samples. */
  latency: Percentiles;
  /** p99 of each round, in round order. */
  roundP99s: number[];
  errors: number;
  fileMiB: number;
  rssMiB: number;
}

const CALLS_PER_TASK = 3;

/** Fills a new store at `path` with `n` tasks (even: open, odd: finished) and their calls. */
function seed(path: string, n: number): void {
  const db = new Database(path);
  try {
    // The bulk load is set-up, not what is measured: no fsync per page while filling.
    db.pragma('synchronous = OFF');
    db.pragma('cache_size = -262144'); // 256 MiB: random-key inserts stay in memory while filling
    const now = Math.floor(Date.now() / 1000);
    const task = db.prepare(
      `INSERT INTO tasks (id, agent, sub, purpose, status, created_at, expires_at, finished_at)
       VALUES (?, ?, 'alice', 'seeded', ?, ?, ?, ?)`,
    );
    const issued = db.prepare(
      `INSERT INTO issued (jti, task_id, tool, resource, action, template, issued_at, expires_at)
       VALUES (?, ?, 'get_ticket', ?, 'read', 'tickets-support-read', ?, ?)`,
    );
    const count = db.prepare(
      `INSERT INTO issued_counts (task_id, tool, template, n) VALUES (?, 'get_ticket', 'tickets-support-read', ?)`,
    );
    const prior = db.prepare(
      `INSERT INTO issued_prior (task_id, tool, resource, template) VALUES (?, 'get_ticket', ?, 'tickets-support-read')`,
    );
    db.transaction(() => {
      for (let i = 0; i < n; i++) {
        // Random ids, as newTaskId makes them: inserts and lookups land all over the indexes.
        const id = `tsk_${randomBytes(16).toString('base64url')}`;
        const open = i % 2 === 0;
        task.run(id, AGENT_ID, open ? 'open' : 'completed', now - 60, now + 3600, open ? null : now - 30);
        for (let c = 0; c < CALLS_PER_TASK; c++) {
          issued.run(randomBytes(16).toString('base64url'), id, `tickets/T-${c}`, now - 50, now + 10);
          prior.run(id, `tickets/T-${c}`);
        }
        count.run(id, CALLS_PER_TASK);
      }
    })();
  } finally {
    db.close();
  }
}

const fileMiB = (path: string) =>
  [path, `${path}-wal`].reduce((sum, p) => {
    try {
      return sum + statSync(p).size;
    } catch {
      return sum;
    }
  }, 0) /
  2 ** 20;

export async function runScale(o: {
  sizes: number[];
  rate: number;
  durationMs: number;
  /** Rounds over all sizes, in an order rotated every round, so that drift (the disk's fsync tail, a
   *  neighbour) hits every size alike; percentiles are over all rounds' samples. */
  rounds: number;
  log: (line: string) => void;
}): Promise<ScaleRow[]> {
  const stores: {
    n: number;
    dir: string;
    path: string;
    seedSec: number;
    latencies: number[];
    p99s: number[];
  }[] = [];
  const rows: ScaleRow[] = [];
  try {
    for (const n of o.sizes) {
      const dir = benchDir();
      const path = join(dir, 'taskpass.db');
      stores.push({ n, dir, path, seedSec: 0, latencies: [], p99s: [] });
      const schema = new SqliteStore({ path });
      await schema.init();
      await schema.close();
      const t0 = performance.now();
      seed(path, n);
      stores.at(-1)!.seedSec = (performance.now() - t0) / 1000;
      o.log(
        `${n.toLocaleString('en')} tasks seeded in ${stores.at(-1)!.seedSec.toFixed(1)} s (${fileMiB(path).toFixed(0)} MiB)`,
      );
    }
    // One KEK for the run: each store is served again in every round, with the keys it holds.
    const kek = generateKek('bench');
    let errors = new Map<number, number>();
    let rss = new Map<number, number>();
    for (let round = 0; round < o.rounds; round++) {
      for (let k = 0; k < stores.length; k++) {
        const st = stores[(round + k) % stores.length]!;
        const env = await startBenchEnv({ storePath: st.path, kek });
        try {
          const tasks = await openTasks(env, 200);
          const load = new LoadClient({
            origin: env.brokerUrl,
            tls: { key: env.agent.key, cert: env.agent.cert, ca: env.agent.ca },
            connections: 16,
          });
          try {
            const r = await load.run({
              kind: 'open',
              rate: o.rate,
              warmupMs: 500,
              durationMs: o.durationMs,
              requests: tokenRequests(tasks),
              offset: 0,
            });
            st.latencies.push(...r.latencies);
            st.p99s.push(percentiles(r.latencies).p99);
            errors = errors.set(st.n, (errors.get(st.n) ?? 0) + r.errors);
            rss = rss.set(st.n, process.memoryUsage().rss / 2 ** 20);
          } finally {
            await load.close();
          }
        } finally {
          await env.close();
        }
      }
    }
    for (const st of stores) {
      rows.push({
        stored: st.n,
        seedSec: st.seedSec,
        latency: percentiles(st.latencies),
        roundP99s: st.p99s,
        errors: errors.get(st.n) ?? 0,
        fileMiB: fileMiB(st.path),
        rssMiB: rss.get(st.n) ?? 0,
      });
    }
  } finally {
    for (const st of stores) rmSync(st.dir, { recursive: true, force: true });
  }
  return rows;
}
