import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { createStore } from '../src/store/index.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { append } from './decision-chain.ts';
import { approvalContract } from './store-approvals.ts';
import { type MakeStore, storeContract } from './store-contract.ts';
import { tempDir, withFileStore } from './sqlite-support.ts';
import { leaseContract } from './store-leases.ts';

const memory: MakeStore = async () => {
  const store = new SqliteStore({ path: ':memory:' });
  await store.init();
  return { store, cleanup: () => store.close() };
};
storeContract('sqlite :memory:', memory);
approvalContract('sqlite :memory:', memory);
leaseContract('sqlite :memory:', memory);

const nowSec = () => Math.floor(Date.now() / 1000);

test('sqlite file: WAL journal, parent directories created, schema version recorded', async () => {
  using tmp = tempDir();
  const path = join(tmp.dir, 'nested', 'broker.db');
  const s = new SqliteStore({ path });
  await s.init();
  await s.close();
  const db = new Database(path, { readonly: true });
  try {
    assert.equal(db.pragma('journal_mode', { simple: true }), 'wal');
    assert.equal(
      db.pragma('auto_vacuum', { simple: true }),
      2,
      'a new file is INCREMENTAL from its first table',
    );
    assert.equal((db.prepare('SELECT version FROM schema_version').get() as { version: number }).version, 5);
  } finally {
    db.close();
  }
  const again = new SqliteStore({ path });
  await again.init(); // migrations are not re-applied
  await again.close();
});

test('sqlite file: revocations and seq survive a restart; seq is never reused', async () => {
  using tmp = tempDir();
  const path = join(tmp.dir, 'broker.db');
  const now = nowSec();
  const a = new SqliteStore({ path });
  await a.init();
  await a.createTask({
    id: 't1',
    agent: 'a',
    sub: 'u',
    purpose: 'p',
    status: 'open',
    createdAt: now,
    expiresAt: now + 5,
  });
  const fin = await a.completeTask('t1', 'completed', now, 'done');
  const tok = await a.revokeToken('j1', now + 600, 'x');
  assert.equal(await a.markUsed('once', now + 600), true);
  await a.close();

  const b = new SqliteStore({ path });
  await b.init();
  assert.equal(await b.currentSeq(), 2);
  assert.deepEqual(await b.revocationsSince(0, now), [fin.revocation, tok]);
  assert.equal(await b.isRevoked('task', 't1'), true);
  assert.equal((await b.getTask('t1'))?.status, 'completed');
  assert.equal(await b.markUsed('once', now + 600), false, 'single use survives a restart');
  // Sweep everything away, restart again: the next seq still follows the last one handed out.
  await b.sweep(now + 100_000);
  assert.equal(await b.isRevoked('task', 't1'), false);
  await b.close();

  const c = new SqliteStore({ path });
  await c.init();
  assert.equal(await c.currentSeq(), 2);
  assert.equal((await c.revokeToken('j2', now + 60, 'x')).seq, 3);
  await c.close();
});

test('sqlite: finishing an already-finished task after its revocation was swept still answers', async () => {
  const s = new SqliteStore({ path: ':memory:' });
  await s.init();
  const now = nowSec();
  await s.createTask({
    id: 't',
    agent: 'a',
    sub: 'u',
    purpose: 'p',
    status: 'open',
    createdAt: now,
    expiresAt: now + 10,
  });
  const first = await s.completeTask('t', 'cancelled', now, 'stop');
  await s.sweep(now + 20); // revocation past `until`, task still within retention
  const again = await s.completeTask('t', 'completed', now + 20, 'late');
  assert.equal(again.alreadyCompleted, true);
  assert.equal(again.revocation.seq, first.revocation.seq);
  assert.equal(again.task.status, 'cancelled');
  assert.equal(await s.isRevoked('task', 't'), true, 'a finished task stays revoked');
  await s.close();
});

test('sqlite: a newer schema than the code is refused', async () => {
  using tmp = tempDir();
  const path = join(tmp.dir, 'broker.db');
  const s = new SqliteStore({ path });
  await s.init();
  await s.close();
  const db = new Database(path);
  db.prepare('UPDATE schema_version SET version = 99').run();
  db.close();
  await assert.rejects(new SqliteStore({ path }).init(), /schema version 99/);
});

test('sqlite: methods before init() fail clearly; createStore picks SQLite', async () => {
  const s = new SqliteStore({ path: ':memory:' });
  await assert.rejects(s.currentSeq(), /init\(\)/);
  const viaKind = createStore({ kind: 'sqlite', path: ':memory:' });
  assert.ok(viaKind instanceof SqliteStore);
  const viaSection = createStore({ sqlite: { path: ':memory:' } });
  assert.ok(viaSection instanceof SqliteStore);
  await viaSection.init();
  assert.equal(await viaSection.currentSeq(), 0);
  await viaSection.close();
});

test('sqlite: upgrading a version-1 file backfills the workflow lookups from the issued log', async () => {
  using tmp = tempDir();
  const path = join(tmp.dir, 'broker.db');
  const s = new SqliteStore({ path });
  await s.init();
  await s.close();
  // Back to what version 1 had: no lookup tables, and calls in the issued log only.
  const db = new Database(path);
  db.exec(
    'DROP TABLE issued_counts; DROP TABLE issued_prior; DROP TABLE approvals; DROP TABLE approval_calls; DROP TABLE decisions; DROP TABLE decision_chain; DROP TABLE console_sessions; DROP TABLE leases; UPDATE schema_version SET version = 1',
  );
  const ins = db.prepare(
    `INSERT INTO issued (jti, task_id, tool, resource, action, template, issued_at, expires_at)
     VALUES (?, 't1', ?, ?, 'read', ?, 0, 60)`,
  );
  ins.run('j1', 'get_ticket', 'tickets/T-1', 'support');
  ins.run('j2', 'get_ticket', 'tickets/T-1', 'support');
  ins.run('j3', 'close_ticket', 'tickets/T-1', 'support');
  db.close();
  const up = new SqliteStore({ path });
  await up.init();
  try {
    assert.deepEqual(await up.countIssued('t1', 'get_ticket'), new Map([['support', 2]]));
    assert.deepEqual([...(await up.issuedTemplates('t1', 'close_ticket', 'tickets/T-1'))], ['support']);
  } finally {
    await up.close();
  }
});

test('sqlite: issued calls are group-committed, durable before they resolve, failures kept apart', () =>
  withFileStore({}, async (s, view) => {
    const now = nowSec();
    const call = (jti: string) => ({
      taskId: 't1',
      jti,
      tool: 'get_ticket',
      resource: 'tickets/T-1',
      action: 'read' as const,
      template: 'support',
      issuedAt: now,
      expiresAt: now + 60,
    });
    const committed = () => view.committed('issued');
    const a = s.recordIssued(call('j1'));
    const b = s.recordIssued(call('j2'));
    const dup = s.recordIssued(call('j1')).then(
      () => undefined,
      (e: Error) => e,
    );
    // Visible to the store's own reads at once (call limits see every call already decided)…
    assert.deepEqual(await s.countIssued('t1', 'get_ticket'), new Map([['support', 2]]));
    // …but not committed until the batch is: nothing of it resolved yet.
    assert.equal(committed(), 0);
    let settled = false;
    void Promise.all([a, b]).then(() => {
      settled = true;
    });
    await Promise.resolve();
    assert.equal(settled, false);
    await Promise.all([a, b]);
    assert.equal(committed(), 2, 'committed (and fsynced) before the promises resolved');
    assert.match(String(await dup), /UNIQUE/, 'only the failed record is rejected');
    // A write of another kind commits an open batch before its own transaction.
    const c = s.recordIssued(call('j3'));
    await s.revokeToken('x', now + 60, 'test');
    assert.equal(committed(), 3);
    await c;
    // Closing commits what is pending.
    const d = s.recordIssued(call('j4'));
    await s.close();
    await d;
    assert.equal(committed(), 4);
  }));

test('sqlite: decision records join the issued-call group commit, durable before either resolves', () =>
  withFileStore({}, async (s, view) => {
    const now = nowSec();
    const count = view.committed;
    const issued = s.recordIssued({
      taskId: 't1',
      jti: 'j1',
      tool: 'get_ticket',
      resource: 'tickets/T-1',
      action: 'read',
      template: 'support',
      issuedAt: now,
      expiresAt: now + 60,
    });
    const records = append(s, [{ at: Date.now(), event: 'token.issued', task: 't1', jti: 'j1' }]);
    // A field with no JSON form cannot be hashed: that append fails, nothing of it is written.
    const bad = s
      .appendDecisions([{ at: Date.now(), event: 'token.denied', n: 1n as unknown as number }])
      .then(
        () => undefined,
        (e: Error) => e,
      );
    assert.equal(count('issued') + count('decisions'), 0, 'nothing committed before the turn ends');
    await Promise.all([issued, records]);
    assert.equal(count('issued'), 1);
    assert.equal(count('decisions'), 1);
    assert.match(String(await bad), /BigInt/, 'only the failed append is rejected');
    assert.equal((await s.decisionHead()).seq, 1);
  }));

// Finding: the sweep ran as one synchronous transaction (1M stored tasks, 50k expiring: the broker
// stalled 8.5 s). It now runs in bounded transactions and yields between them.
test('sqlite sweep: a large backlog goes in many small transactions; the event loop runs in between', async () => {
  const s = new SqliteStore({ path: ':memory:', sweepBatchRows: 100, taskRetentionSec: 0 });
  await s.init();
  const now = nowSec();
  const N = 1500;
  for (let i = 0; i < N; i++) {
    const id = `t${i}`;
    await s.createTask({
      id,
      agent: 'a',
      sub: 'u',
      purpose: 'p',
      status: 'open',
      createdAt: now - 100,
      expiresAt: now - 10,
    });
    await s.recordIssued({
      taskId: id,
      jti: `j${i}`,
      tool: 'x',
      resource: 'r',
      action: 'read',
      template: 'tpl',
      issuedAt: now - 50,
      expiresAt: now - 20,
    });
    await s.markUsed(`u${i}`, now - 1);
  }
  await s.revokeToken('kept', now + 600, 'x');
  await s.createTask({
    id: 'live',
    agent: 'a',
    sub: 'u',
    purpose: 'p',
    status: 'open',
    createdAt: now,
    expiresAt: now + 600,
  });

  let ended = false;
  let ticksDuringSweep = 0;
  const sweeping = s.sweep(now).then(() => {
    ended = true;
  });
  // Callbacks scheduled after the sweep started run before it ends (the old sweep had finished
  // synchronously inside the call).
  const tick = (): void => {
    if (ended) return;
    ticksDuringSweep++;
    setImmediate(tick);
  };
  setImmediate(tick);
  let timerRan = false;
  setTimeout(() => {
    timerRan = !ended;
  }, 0);
  await sweeping;
  // 1500 tasks + 1500 issued rows (+ counts, prior) + 1500 used markers at 100 rows a step.
  assert.ok(ticksDuringSweep >= 45, `the loop turned ${ticksDuringSweep} times during the sweep`);
  assert.ok(timerRan, 'a timer due during the sweep ran before it ended');
  assert.equal((await s.listTasks({ limit: 10_000 })).length, 1);
  assert.deepEqual(await s.listIssued('t0'), []);
  assert.equal(await s.markUsed('u1', now + 600), true, 'the old marker was swept');
  assert.deepEqual(
    (await s.revocationsSince(0, 0)).map((r) => r.id),
    ['kept'],
  );
  await s.close();
});

test('sqlite sweep: each batch is an index range scan (EXPLAIN QUERY PLAN)', async () => {
  const plans: Record<string, string> = {
    'SELECT id FROM tasks WHERE expires_at <= 1 ORDER BY expires_at LIMIT 5': 'tasks_expires',
    "DELETE FROM issued WHERE task_id = 'x' LIMIT 5": 'issued_task',
    "DELETE FROM issued_counts WHERE task_id = 'x' LIMIT 5": 'PRIMARY KEY',
    "DELETE FROM issued_prior WHERE task_id = 'x' LIMIT 5": 'PRIMARY KEY',
    'DELETE FROM revocations WHERE until <= 1 LIMIT 5': 'revocations_until',
    'DELETE FROM used WHERE until <= 1 LIMIT 5': 'used_until',
    "DELETE FROM approvals WHERE task_id = 'x' LIMIT 5": 'approvals_task',
    "DELETE FROM approval_calls WHERE task_id = 'x' LIMIT 5": 'approval_calls_task',
  };
  using tmp = tempDir();
  const path = join(tmp.dir, 'plan.db');
  const st = new SqliteStore({ path });
  await st.init();
  await st.close();
  const file = new Database(path);
  try {
    for (const [sql, index] of Object.entries(plans)) {
      const detail = (file.prepare(`EXPLAIN QUERY PLAN ${sql}`).all() as { detail: string }[])
        .map((r) => r.detail)
        .join('; ');
      assert.match(detail, new RegExp(`USING .*${index}`), `${sql}: ${detail}`);
      assert.doesNotMatch(detail, /^SCAN|; SCAN/, `${sql}: no full scan (${detail})`);
    }
  } finally {
    file.close();
  }
});

test('sqlite sweep: freed pages go back to the file system, also in a database made before auto_vacuum', async () => {
  using tmp = tempDir();
  const path = join(tmp.dir, 'broker.db');
  // A database as the broker wrote it before: auto_vacuum = NONE.
  const old = new SqliteStore({ path });
  await old.init();
  await old.close();
  const raw = new Database(path);
  raw.pragma('auto_vacuum = NONE');
  raw.exec('VACUUM');
  assert.equal(raw.pragma('auto_vacuum', { simple: true }), 0);
  raw.close();

  const s = new SqliteStore({ path, taskRetentionSec: 0 });
  await s.init(); // converts
  const now = nowSec();
  const pad = 'x'.repeat(2000);
  for (let i = 0; i < 600; i++) {
    await s.createTask({
      id: `t${i}`,
      agent: 'a',
      sub: 'u',
      purpose: pad,
      status: 'open',
      createdAt: now - 100,
      expiresAt: now - 10,
    });
  }
  const pages = () => {
    const db = new Database(path, { readonly: true });
    try {
      return {
        mode: db.pragma('auto_vacuum', { simple: true }),
        count: db.pragma('page_count', { simple: true }) as number,
        free: db.pragma('freelist_count', { simple: true }) as number,
      };
    } finally {
      db.close();
    }
  };
  const before = pages();
  assert.equal(before.mode, 2, 'converted to INCREMENTAL on start');
  await s.sweep(now);
  const after = pages();
  assert.equal(after.free, 0, 'no free page left behind');
  assert.ok(after.count < before.count / 4, `file shrank: ${before.count} -> ${after.count} pages`);
  await s.close();
});

test('sqlite: a replay marker is kept until its token expires, then swept', async () => {
  const s = new SqliteStore({ path: ':memory:' });
  await s.init();
  const now = nowSec();
  assert.equal(await s.markUsed('j', now + 60), true);
  await s.sweep(now + 59);
  assert.equal(await s.markUsed('j', now + 60), false, 'still spent one second before exp');
  await s.sweep(now + 60);
  assert.equal(await s.markUsed('j', now + 60), true, 'swept at exp (the token no longer verifies)');
  await s.close();
});

test('sqlite: a database held by another writer answers TASKPASS_STORE_UNAVAILABLE, not a bare error', async () => {
  using tmp = tempDir();
  const path = join(tmp.dir, 'broker.db');
  const s = new SqliteStore({ path, busyTimeoutMs: 50 });
  await s.init();
  const other = new Database(path);
  try {
    other.exec('BEGIN EXCLUSIVE');
    const now = nowSec();
    const task = {
      id: 'tsk_busy',
      agent: 'spiffe://t/a',
      sub: 'u',
      purpose: 'p',
      status: 'open' as const,
      createdAt: now,
      expiresAt: now + 60,
    };
    await assert.rejects(s.createTask(task), (e: unknown) => {
      const err = e as { code?: string; status?: number; cause?: { code?: string } };
      assert.equal(err.code, 'TASKPASS_STORE_UNAVAILABLE');
      assert.equal(err.status, 503);
      assert.equal(err.cause?.code, 'SQLITE_BUSY');
      return true;
    });
    other.exec('COMMIT');
    await s.createTask(task); // the lock is gone: the same write goes through
    assert.equal((await s.getTask('tsk_busy'))?.id, 'tsk_busy');
  } finally {
    other.close();
    await s.close();
  }
});

// Checkpoints off the event loop (store/checkpointer.ts): the store's own connection never
// checkpoints, so a WAL that stays small under many commits was checkpointed by the worker.
test('sqlite: WAL checkpoints run on a thread of their own; inline when asked; none lost at close', async () => {
  using tmp = tempDir();
  const now = nowSec();
  const walPages = async (checkpoint: 'background' | 'inline') => {
    const path = join(tmp.dir, `${checkpoint}.db`);
    const s = new SqliteStore({ path, checkpoint, checkpointIntervalMs: 5 });
    await s.init();
    let most = 0;
    try {
      // 400 commits of ~40 KiB each: about 4,000 WAL frames, four times the inline threshold.
      for (let i = 0; i < 400; i++) {
        await s.revokeToken(`${'x'.repeat(40_000)}-${i}`, now + 60, 'test');
        most = Math.max(most, walFrames(path));
        // Every 20 commits, the thread's next run (it copies what it can every 5 ms; with the
        // cores busy with other tests it can be starved for longer, and the WAL then grows).
        if (i % 20 === 0) await nextCheckpoint(s);
      }
      const stats = await s.checkpointStats();
      return { most, stats };
    } finally {
      await s.close();
      // Closing the last connection checkpointed everything: the WAL is gone or empty.
      assert.equal(walFrames(path), 0);
      const again = new SqliteStore({ path, checkpoint: 'inline' });
      await again.init();
      assert.equal((await again.revocationsSince(0, now)).length, 400, 'every revocation is in the file');
      await again.close();
    }
  };
  const background = await walPages('background');
  assert.ok(
    background.stats && background.stats.runs > 0 && background.stats.frames > 0,
    'the worker checkpointed',
  );
  assert.equal(background.stats?.errors, 0);
  const inline = await walPages('inline');
  assert.equal(inline.stats, undefined, 'no checkpoint thread when asked for inline');
  // Both keep the WAL bounded; without any checkpoint it would hold all ~4,000 frames.
  assert.ok(background.most < 2_000, `background: WAL at most ${background.most} frames`);
  assert.ok(inline.most < 2_000, `inline: WAL at most ${inline.most} frames`);
});

test('sqlite: with the checkpoint thread stopped, both connections checkpoint inline again', async () => {
  using tmp = tempDir();
  const path = join(tmp.dir, 'broker.db');
  const s = new SqliteStore({ path, checkpointIntervalMs: 60_000 });
  await s.init();
  try {
    assert.ok(await s.checkpointStats(), 'checkpoint thread running');
    const db = new Database(path);
    try {
      assert.equal(
        Number(db.pragma('wal_autocheckpoint', { simple: true })),
        1000,
        'a new connection has its own',
      );
    } finally {
      db.close();
    }
    s.stopWriterForTest('checkpointer');
    await new Promise((r) => setTimeout(r, 200));
    assert.equal(await s.checkpointStats(), undefined, 'the failure was seen');
    assert.ok(await s.writerStats(), 'the writer thread goes on');
    const now = nowSec();
    // Written on the store's own connection…
    for (let i = 0; i < 200; i++) await s.revokeToken(`${'y'.repeat(40_000)}-${i}`, now + 60, 'test');
    assert.ok(walFrames(path) < 2_000, `WAL at ${walFrames(path)} frames: inline checkpoints are back`);
    // …and on the writer thread's (decision records of ~40 KiB each).
    for (let i = 0; i < 200; i++) {
      await append(s, [{ at: Date.now(), event: 'token.denied', task: 't', reason: 'z'.repeat(40_000) }]);
    }
    assert.ok(walFrames(path) < 2_000, `WAL at ${walFrames(path)} frames: the writer checkpoints too`);
  } finally {
    await s.close();
  }
});

/** Frames in the WAL file by its size (header 32 bytes, each frame a 24-byte header and a page). */
/** Waits for the checkpoint thread's next run (at once when checkpoints run inline). */
async function nextCheckpoint(s: SqliteStore): Promise<void> {
  const before = (await s.checkpointStats())?.runs;
  if (before === undefined) return;
  const deadline = Date.now() + 5_000;
  while (((await s.checkpointStats())?.runs ?? 0) <= before && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 2));
  }
}

function walFrames(path: string): number {
  try {
    const size = statSync(`${path}-wal`).size;
    return size <= 32 ? 0 : Math.round((size - 32) / (24 + 4096));
  } catch {
    return 0;
  }
}
