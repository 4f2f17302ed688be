// The SQLite store with its writer thread (store/sqlite-writer.ts), the default for a file: every
// store contract against it, and what only a second thread can get wrong — calls decided but not
// committed yet, a batch that fails while later ones are on their way, the thread dying, restarts.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { chainAfter, type DecisionInput, recordHash, verifyChain } from '../src/decision-chain.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { GENESIS_HASH, type IssuedCall } from '../src/store/types.ts';
import { append, decisionContract, inputs } from './decision-chain.ts';
import { approvalContract } from './store-approvals.ts';
import { type MakeStore, storeContract } from './store-contract.ts';
import { holdWriteLock, tempDir, withFileStore } from './sqlite-support.ts';
import { leaseContract } from './store-leases.ts';

const threaded: MakeStore = async () => {
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-writer-'));
  const store = new SqliteStore({ path: join(dir, 'broker.db') });
  await store.init();
  assert.ok(await store.writerStats(), 'the writer thread runs');
  return {
    store,
    cleanup: async () => {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
};
storeContract('sqlite file, writer thread', threaded);
approvalContract('sqlite file, writer thread', threaded);
leaseContract('sqlite file, writer thread', threaded);
decisionContract('sqlite file, writer thread', threaded);

const nowSec = () => Math.floor(Date.now() / 1000);
const call = (jti: string, tool = 'get_ticket'): IssuedCall => ({
  taskId: 't1',
  jti,
  tool,
  resource: 'tickets/T-1',
  action: 'read',
  template: 'support',
  issuedAt: nowSec(),
  expiresAt: nowSec() + 60,
});
const turn = () => new Promise((r) => setImmediate(r));

test('writer thread: a cap counts the calls decided and not committed yet', () =>
  withFileStore({}, async (s, view) => {
    const committed = () => view.committed('issued');
    // Both decided on a count of 0, in one turn: one compare-and-set wins.
    const results = await Promise.all([
      s.recordIssued(call('a'), { ifToolCount: 0 }),
      s.recordIssued(call('b'), { ifToolCount: 0 }),
    ]);
    assert.deepEqual(results, [true, false]);
    // Across turns, while the first batch is on the writer thread (held there by another lock).
    const lock = holdWriteLock(view.path);
    const first = s.recordIssued(call('c'), { ifToolCount: 1 });
    await turn();
    assert.equal(committed(), 1, 'c is not committed yet');
    assert.equal(await s.recordIssued(call('d'), { ifToolCount: 1 }), false, 'c counted while in flight');
    assert.deepEqual(await s.countIssued('t1', 'get_ticket'), new Map([['support', 2]]));
    assert.deepEqual(await s.issuedTemplates('t1', 'get_ticket', 'tickets/T-1'), new Set(['support']));
    lock.release();
    assert.equal(await first, true);
    assert.equal(committed(), 2);
    // Committed and answered: counted once, from the file.
    assert.deepEqual(await s.countIssued('t1', 'get_ticket'), new Map([['support', 2]]));
    assert.deepEqual(
      (await s.listIssued('t1')).map((c) => c.jti),
      ['a', 'c'],
    );
  }));

test('writer thread: a failed batch fails alone; later records land on an unbroken chain', () =>
  withFileStore({ busyTimeoutMs: 20 }, async (s, view) => {
    await append(s, inputs(1));
    const failure = (p: Promise<unknown>) =>
      p.then(
        () => undefined,
        (e: Error) => e.message,
      );
    // Another connection holds the write lock past the writer's busy timeout: the whole batch
    // (records and the issued call beside them) fails, and nothing of it is written.
    const lock = holdWriteLock(view.path);
    const bad = failure(append(s, inputs(2, 'tsk_lost')));
    const beside = failure(s.recordIssued(call('lost')));
    assert.match(String(await bad), /locked|busy/i);
    assert.match(String(await beside), /locked|busy/i, 'the call in the same batch failed with it');
    lock.release();
    // Batches of later turns chain on the head the file has: every one of them is stored.
    const later = [];
    for (let i = 0; i < 6; i++) {
      later.push(append(s, inputs(1, `tsk_${i}`)));
      await turn();
    }
    const seqs = (await Promise.all(later)).map((r) => r[0]!.seq);
    assert.deepEqual(seqs, [2, 3, 4, 5, 6, 7]);
    assert.deepEqual(
      await s.countIssued('t1', 'get_ticket'),
      new Map(),
      'the rolled-back call is not counted',
    );
    const verdict = await verifyChain(s);
    assert.equal(verdict.ok, true, JSON.stringify(verdict));
    assert.equal((await s.decisionHead()).seq, 7);
  }));

test('writer thread: it chains and hashes records exactly as decision-chain.ts does', () =>
  withFileStore({}, async (s) => {
    // Fields whose canonical JSON is easy to get wrong: key order by UTF-16 code units, escapes,
    // non-ASCII, numbers in exponent form, negative zero, empty strings.
    const tricky = [
      {
        at: 1,
        event: 'token.denied',
        Zeta: 'upper first',
        alpha: 'ä\u0000"\\\n',
        é: 'é',
        '😀': '𝄞',
        code: 'X',
      },
      { at: 2, event: 'token.issued', n: 1e21, m: -0, small: 5e-7, empty: '', task: 'tsk_ü' },
      // Keys that look like array indices go first in an object: the writer must not rely on order.
      { at: 3, event: 'task.opened', '10': 'ten', '9': 'nine', 'a"b': 'q', 'a\\b': 'r', ab: 's', A: 't' },
    ] as DecisionInput[];
    const stored = await append(s, tricky);
    assert.deepEqual(stored, chainAfter({ seq: 0, hash: GENESIS_HASH }, tricky));
    // As JSON, as the file keeps them (-0 is 0 there, and in the hash).
    assert.deepEqual(await s.decisionsRange(0, 10), JSON.parse(JSON.stringify(stored)));
    for (const r of stored) assert.equal(recordHash(r), r.hash);
    assert.equal((await verifyChain(s)).ok, true);
    assert.deepEqual(await s.decisionCounts(0, 10), { X: 1, issued: 1 });
  }));

test('writer thread: when it dies, batches in flight fail and the store goes on inline', () =>
  withFileStore({}, async (s, view) => {
    await s.recordIssued(call('before'));
    await append(s, inputs(2));
    s.stopWriterForTest();
    await new Promise((r) => setTimeout(r, 100));
    assert.equal(await s.writerStats(), undefined, 'no writer thread any more');
    assert.equal(await s.recordIssued(call('after')), true);
    await append(s, inputs(2, 'tsk_after'));
    assert.equal(view.committed('issued'), 2, 'written inline');
    assert.equal((await verifyChain(s)).ok, true);
    assert.equal((await s.decisionHead()).seq, 4);
  }));

test('writer thread: batch ids continue after a restart, so calls in flight are never taken as committed', async () => {
  using tmp = tempDir();
  const path = join(tmp.dir, 'broker.db');
  const a = new SqliteStore({ path });
  await a.init();
  for (let i = 0; i < 5; i++) await a.recordIssued(call(`a${i}`));
  await a.close();
  const b = new SqliteStore({ path });
  await b.init();
  try {
    const lock = holdWriteLock(path);
    const p = b.recordIssued(call('b0'));
    await turn();
    // In flight on the new writer: counted once (from memory), not hidden by the old mark.
    assert.deepEqual(await b.countIssued('t1', 'get_ticket'), new Map([['support', 6]]));
    lock.release();
    await p;
    assert.deepEqual(await b.countIssued('t1', 'get_ticket'), new Map([['support', 6]]));
  } finally {
    await b.close();
  }
});
