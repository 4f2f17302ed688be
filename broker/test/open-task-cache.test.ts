import assert from 'node:assert/strict';
import { test } from 'node:test';
import { withOpenTaskCache } from '../src/store/open-task-cache.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { IssuedCall, TaskRecord } from '../src/store/types.ts';
import { approvalContract } from './store-approvals.ts';
import { type MakeStore, storeContract } from './store-contract.ts';

// The cache in front of a store must keep every promise of the store contract.
const cached: MakeStore = async () => {
  const inner = new SqliteStore({ path: ':memory:' });
  await inner.init();
  const store = withOpenTaskCache(inner, { maxTasks: 1000, counters: true });
  return { store, cleanup: () => store.close() };
};
storeContract('sqlite :memory: + open-task cache', cached);
approvalContract('sqlite :memory: + open-task cache', cached);

const nowSec = () => Math.floor(Date.now() / 1000);

const task = (id: string, ttl = 600): TaskRecord => ({
  id,
  agent: 'spiffe://t/agents/a',
  sub: 'alice',
  purpose: 'p',
  status: 'open',
  createdAt: nowSec(),
  expiresAt: nowSec() + ttl,
});

const call = (taskId: string, jti: string, resource = 'tickets/T-1'): IssuedCall => ({
  taskId,
  jti,
  tool: 'get_ticket',
  resource,
  action: 'read',
  template: 'support',
  issuedAt: nowSec(),
  expiresAt: nowSec() + 60,
});

/** A SQLite store whose reads on the issuance path are counted. */
async function counted(): Promise<{ inner: SqliteStore; reads: Record<string, number> }> {
  const inner = new SqliteStore({ path: ':memory:' });
  await inner.init();
  const reads: Record<string, number> = { getTask: 0, countIssued: 0, issuedTemplates: 0 };
  for (const m of ['getTask', 'countIssued', 'issuedTemplates'] as const) {
    const original = inner[m].bind(inner) as (...a: unknown[]) => Promise<unknown>;
    (inner as unknown as Record<string, unknown>)[m] = (...a: unknown[]) => {
      reads[m]!++;
      return original(...a);
    };
  }
  return { inner, reads };
}

test('open-task cache: a task opened here, and its counters, are answered without store reads', async () => {
  const { inner, reads } = await counted();
  const store = withOpenTaskCache(inner, { maxTasks: 10, counters: true });
  try {
    await store.createTask(task('t1'));
    assert.equal((await store.getTask('t1'))?.status, 'open');
    assert.deepEqual(await store.countIssued('t1', 'get_ticket'), new Map());
    assert.deepEqual(await store.issuedTemplates('t1', 'get_ticket', 'tickets/T-1'), new Set());
    assert.equal(await store.recordIssued(call('t1', 'j1'), { ifToolCount: 0 }), true);
    assert.deepEqual(await store.countIssued('t1', 'get_ticket'), new Map([['support', 1]]));
    assert.deepEqual(await store.issuedTemplates('t1', 'get_ticket'), new Set(['support']));
    assert.deepEqual(await store.issuedTemplates('t1', 'get_ticket', 'tickets/T-1'), new Set(['support']));
    assert.deepEqual(await store.issuedTemplates('t1', 'get_ticket', 'tickets/T-2'), new Set());
    assert.deepEqual(reads, { getTask: 0, countIssued: 0, issuedTemplates: 0 });
    // What the store says, too.
    assert.deepEqual(await inner.countIssued('t1', 'get_ticket'), new Map([['support', 1]]));
  } finally {
    await store.close();
  }
});

test('open-task cache: a task read once is held; its counters are read once, then kept up to date', async () => {
  const { inner, reads } = await counted();
  await inner.createTask(task('t1'));
  await inner.recordIssued(call('t1', 'j0'));
  const store = withOpenTaskCache(inner, { maxTasks: 10, counters: true });
  try {
    for (let i = 0; i < 3; i++) await store.getTask('t1');
    assert.equal(reads.getTask, 1);
    assert.deepEqual(await store.countIssued('t1', 'get_ticket'), new Map([['support', 1]]));
    assert.equal(await store.recordIssued(call('t1', 'j1'), { ifToolCount: 1 }), true);
    assert.deepEqual(await store.countIssued('t1', 'get_ticket'), new Map([['support', 2]]));
    assert.equal(reads.countIssued, 1);
    // A lost compare-and-set: what was held is dropped and read again.
    assert.equal(await store.recordIssued(call('t1', 'j2'), { ifToolCount: 1 }), false);
    assert.deepEqual(await store.countIssued('t1', 'get_ticket'), new Map([['support', 2]]));
    assert.equal(reads.countIssued, 2);
  } finally {
    await store.close();
  }
});

test('open-task cache: while a call of the task is being written, counters come from the store', async () => {
  const { inner, reads } = await counted();
  const store = withOpenTaskCache(inner, { maxTasks: 10, counters: true });
  try {
    await store.createTask(task('t1'));
    const writing = store.recordIssued(call('t1', 'j1'));
    // The record is in the open group-commit batch: the store's own reads see it; so does the cache.
    assert.deepEqual(await store.countIssued('t1', 'get_ticket'), new Map([['support', 1]]));
    assert.equal(reads.countIssued, 1);
    assert.equal(await writing, true);
  } finally {
    await store.close();
  }
});

test('open-task cache: closing a task (here, or through the store: the revocation event) drops it', async () => {
  const { inner, reads } = await counted();
  const store = withOpenTaskCache(inner, { maxTasks: 10, counters: true });
  try {
    await store.createTask(task('t1'));
    await store.createTask(task('t2'));
    await store.completeTask('t1', 'completed', nowSec(), 'done');
    assert.equal((await store.getTask('t1'))?.status, 'completed');
    // Closed behind the cache's back (another replica, an admin path): the store's event says so.
    await inner.completeTask('t2', 'revoked', nowSec(), 'admin');
    assert.equal((await store.getTask('t2'))?.status, 'revoked');
    assert.equal(reads.getTask, 2);
  } finally {
    await store.close();
  }
});

test('open-task cache: a task read that overlapped a close is not held (it may be stale)', async () => {
  const inner = new SqliteStore({ path: ':memory:' });
  await inner.init();
  await inner.createTask(task('t1'));
  let release: () => void = () => {};
  const gate = new Promise<void>((r) => {
    release = r;
  });
  // A read that answers late with the task as it was (a Redis round trip, say).
  const before = (await inner.getTask('t1')) as TaskRecord;
  const store = withOpenTaskCache(
    new Proxy(inner, {
      get: (t, p) =>
        p === 'getTask'
          ? async () => {
              await gate;
              return { ...before };
            }
          : (Reflect.get(t, p, t) as (...a: unknown[]) => unknown).bind(t),
    }),
    { maxTasks: 10, counters: true },
  );
  try {
    const reading = store.getTask('t1');
    await store.completeTask('t1', 'completed', nowSec(), 'done');
    release();
    assert.equal((await reading)?.status, 'open', 'the late answer itself is what the store said then');
    assert.equal(store.openTasks?.size, 0, 'but it is not held');
  } finally {
    await store.close();
  }
});

test('open-task cache: bounded (least recently used first), expired tasks are not answered', async () => {
  let now = nowSec();
  const { inner, reads } = await counted();
  const store = withOpenTaskCache(inner, { maxTasks: 2, counters: true, nowSec: () => now });
  try {
    await store.createTask(task('t1', 30));
    await store.createTask(task('t2'));
    await store.getTask('t1');
    await store.createTask(task('t3'));
    assert.equal(store.openTasks?.size, 2);
    await store.getTask('t1');
    await store.getTask('t3');
    assert.equal(reads.getTask, 0);
    await store.getTask('t2');
    assert.equal(reads.getTask, 1, 't2, the least recently used, was dropped');
    now += 60;
    // t1 has expired: read from the store (which still has it until the sweep), and not held.
    assert.equal((await store.getTask('t1'))?.id, 't1');
    assert.equal(reads.getTask, 2);
    assert.equal(store.openTasks?.size, 2);
  } finally {
    await store.close();
  }
});

test('open-task cache: without counters (Redis: other replicas record calls) they are always read', async () => {
  const { inner, reads } = await counted();
  const store = withOpenTaskCache(inner, { maxTasks: 10, counters: false });
  try {
    await store.createTask(task('t1'));
    await store.getTask('t1');
    await store.countIssued('t1', 'get_ticket');
    await store.recordIssued(call('t1', 'j1'));
    await store.countIssued('t1', 'get_ticket');
    await store.issuedTemplates('t1', 'get_ticket');
    assert.deepEqual(reads, { getTask: 0, countIssued: 2, issuedTemplates: 1 });
  } finally {
    await store.close();
  }
});

test('open-task cache: maxTasks 0 is the store itself', async () => {
  const inner = new SqliteStore({ path: ':memory:' });
  await inner.init();
  assert.equal(withOpenTaskCache(inner, { maxTasks: 0, counters: true }), inner);
  await inner.close();
});
