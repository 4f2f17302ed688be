// The store sweep's longest event-loop block (issue #7): a SQLite store holding `--stored` tasks of
// which `--expiring` have expired (each with one issued call), swept once
//   before: the sweep as it was — every delete in one synchronous transaction
//   after:  SqliteStore.sweep — bounded transactions with setImmediate between them, then
//           incremental_vacuum in steps
// on two copies of the same database file. Prints the longest time the event loop could not run a
// callback while sweeping (the gap between consecutive setImmediate ticks), the sweep's total
// time, and the file size after it.
//   node --conditions=taskpass:source --import tsx bench/sweep.ts [--stored 1000000] [--expiring 50000]
import { copyFileSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { loadavg, tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import Database from 'better-sqlite3';
import { SqliteStore } from '@taskpass/broker';

const { values } = parseArgs({
  options: { stored: { type: 'string', default: '1000000' }, expiring: { type: 'string', default: '50000' } },
});
const STORED = Number(values.stored);
const EXPIRING = Number(values.expiring);
const NOW = 1_900_000_000;
const RETENTION = 300;

const dir = mkdtempSync(join(tmpdir(), 'taskpass-bench-sweep-'));
const size = (p: string) => {
  let n = 0;
  for (const f of [p, `${p}-wal`]) {
    try {
      n += statSync(f).size;
    } catch {}
  }
  return `${(n / 2 ** 20).toFixed(0)} MiB`;
};

/** Runs `work`, ticking setImmediate meanwhile; the longest gap between ticks (ms). */
async function maxBlock(
  work: () => Promise<unknown> | unknown,
): Promise<{ maxMs: number; p99Ms: number; totalMs: number }> {
  const gaps: number[] = [];
  let last = performance.now();
  let max = 0;
  let done = false;
  const tick = () => {
    const t = performance.now();
    max = Math.max(max, t - last);
    gaps.push(t - last);
    last = t;
    if (!done) setImmediate(tick);
  };
  setImmediate(tick);
  await new Promise((r) => setImmediate(r));
  const t0 = performance.now();
  await work();
  const totalMs = performance.now() - t0;
  done = true;
  await new Promise((r) => setImmediate(r));
  max = Math.max(max, performance.now() - last);
  gaps.sort((a, b) => a - b);
  return { maxMs: max, p99Ms: gaps[Math.floor(gaps.length * 0.99)] ?? max, totalMs };
}

async function main(): Promise<void> {
  const base = join(dir, 'base.db');
  const init = new SqliteStore({ path: base });
  await init.init();
  await init.close();

  let t = performance.now();
  const db = new Database(base);
  db.pragma('journal_mode = WAL');
  db.pragma('synchronous = OFF');
  const insTask = db.prepare(
    `INSERT INTO tasks (id, agent, sub, purpose, status, created_at, expires_at) VALUES (?, 'spiffe://taskpass.local/agents/a', 'alice', 'bench', 'open', ?, ?)`,
  );
  const insIssued = db.prepare(
    `INSERT INTO issued (jti, task_id, tool, resource, action, template, issued_at, expires_at) VALUES (?, ?, 'get_ticket', ?, 'read', 'tpl', ?, ?)`,
  );
  const insCount = db.prepare(
    `INSERT INTO issued_counts (task_id, tool, template, n) VALUES (?, 'get_ticket', 'tpl', 1)`,
  );
  const insPrior = db.prepare(
    `INSERT INTO issued_prior (task_id, tool, resource, template) VALUES (?, 'get_ticket', ?, 'tpl')`,
  );
  db.transaction(() => {
    for (let i = 0; i < STORED; i++) {
      const id = `task-${i.toString(36).padStart(8, '0')}`;
      const expired =
        i % Math.max(1, Math.floor(STORED / EXPIRING)) === 0 && i / Math.floor(STORED / EXPIRING) < EXPIRING;
      const exp = expired ? NOW - RETENTION - 10 : NOW + 3600;
      insTask.run(id, exp - 900, exp);
      if (expired) {
        insIssued.run(`jti-${i}`, id, `tickets/T-${i}`, exp - 60, exp - 30);
        insCount.run(id);
        insPrior.run(id, `tickets/T-${i}`);
      }
    }
  })();
  db.pragma('wal_checkpoint(TRUNCATE)');
  const expired = (
    db.prepare('SELECT COUNT(*) AS n FROM tasks WHERE expires_at <= ?').get(NOW - RETENTION) as { n: number }
  ).n;
  db.close();
  console.log(
    `filled ${STORED} tasks (${expired} expired) in ${((performance.now() - t) / 1000).toFixed(1)} s; ${size(base)}`,
  );

  const beforePath = join(dir, 'before.db');
  const afterPath = join(dir, 'after.db');
  copyFileSync(base, beforePath);
  copyFileSync(base, afterPath);

  // Before: the old statements, one transaction, as SqliteStore.sweep ran them.
  const old = new Database(beforePath);
  old.pragma('journal_mode = WAL');
  old.pragma('synchronous = FULL');
  const cutoff = NOW - RETENTION;
  const before = await maxBlock(() =>
    old
      .transaction(() => {
        old
          .prepare('DELETE FROM issued WHERE task_id IN (SELECT id FROM tasks WHERE expires_at <= ?)')
          .run(cutoff);
        old
          .prepare('DELETE FROM issued_counts WHERE task_id IN (SELECT id FROM tasks WHERE expires_at <= ?)')
          .run(cutoff);
        old
          .prepare('DELETE FROM issued_prior WHERE task_id IN (SELECT id FROM tasks WHERE expires_at <= ?)')
          .run(cutoff);
        old.prepare('DELETE FROM tasks WHERE expires_at <= ?').run(cutoff);
        old.prepare('DELETE FROM revocations WHERE until <= ?').run(NOW);
        old.prepare('DELETE FROM used WHERE until <= ?').run(NOW);
      })
      .immediate(),
  );
  old.close();

  t = performance.now();
  const store = new SqliteStore({ path: afterPath });
  await store.init();
  const openMs = performance.now() - t;
  const after = await maxBlock(() => store.sweep(NOW));
  const left = (await store.listTasks({ limit: STORED })).length;
  await store.close();

  console.log(`\nsweep of ${expired} expired tasks among ${STORED} stored (SQLite, WAL, synchronous=FULL)`);
  console.log(
    `  before (one transaction):  max event-loop block ${before.maxMs.toFixed(0)} ms, total ${before.totalMs.toFixed(0)} ms, file ${size(beforePath)}`,
  );
  console.log(
    `  after  (batched + vacuum): max event-loop block ${after.maxMs.toFixed(1)} ms (p99 of the gaps ${after.p99Ms.toFixed(1)} ms), total ${after.totalMs.toFixed(0)} ms, file ${size(afterPath)}`,
  );
  console.log(
    `  load average ${loadavg()[0]?.toFixed(1)}: the machine is shared, and an I/O wait shows as a block`,
  );
  console.log(`  (store open ${openMs.toFixed(0)} ms; ${left} tasks left)`);
}

main()
  .catch((e) => {
    console.error(e);
    process.exitCode = 1;
  })
  .finally(() => rmSync(dir, { recursive: true, force: true }));
