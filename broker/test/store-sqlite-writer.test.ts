// The SQLite store with its writer thread (store/sqlite-writer.ts), the default for a file: every
// store contract against it, and what only a second thread can get wrong — calls decided but not
// committed yet, a batch that fails while later ones are on their way, the thread dying, restarts.
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { chainAfter, verifyChain } from '../src/decision-chain.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { IssuedCall } from '../src/store/types.ts';
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
  withFileStore({}, async (s) => {
    await append(s, inputs(1));
    // A record whose seq is taken: the whole batch (with the issued call beside it) is rolled back.
    const failure = (p: Promise<unknown>) =>
      p.then(
        () => undefined,
        (e: Error) => e.message,
      );
    const bad = failure(s.appendDecisions((head) => chainAfter({ seq: head.seq - 1, hash: 'x' }, inputs(1))));
    const beside = failure(s.recordIssued(call('lost')));
    const outcomes = [];
    // Batches sent before and after the store learned of the failure, each in its own turn.
    for (let i = 0; i < 6; i++) {
      await turn();
      outcomes.push(
        append(s, inputs(1, `tsk_${i}`)).then(
          (r) => ({ ok: true, seq: r[0]!.seq }),
          () => ({ ok: false, seq: 0 }),
        ),
      );
    }
    assert.match(String(await bad), /UNIQUE/);
    assert.match(String(await beside), /UNIQUE/, 'the call in the same batch failed with it');
    // Those sent before the store saw the failure are refused (they may chain on the lost record).
    const settled = await Promise.all(outcomes);
    const after = await append(s, inputs(1, 'tsk_after'));
    settled.push({ ok: true, seq: after[0]!.seq });
    assert.deepEqual(
      await s.countIssued('t1', 'get_ticket'),
      new Map(),
      'the rolled-back call is not counted',
    );
    const verdict = await verifyChain(s);
    assert.equal(verdict.ok, true, JSON.stringify(verdict));
    const head = await s.decisionHead();
    assert.equal(head.seq, 1 + settled.filter((o) => o.ok).length, 'every append that resolved is stored');
    for (const o of settled.filter((x) => x.ok)) {
      assert.equal((await s.decisionsRange(o.seq - 1, 1))[0]?.seq, o.seq);
    }
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
