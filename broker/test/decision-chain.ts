// The decision records' contract (hash chain, queries, retention with an anchor, sessions), run
// against every store: SQLite in decision-chain.test.ts, Redis in decision-chain.redis.test.ts.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { type DecisionInput, verifyChain } from '../src/decision-chain.ts';
import { DecisionRecorder } from '../src/decision-log.ts';
import { GENESIS_HASH, type Store } from '../src/store/types.ts';
import type { MakeStore } from './store-contract.ts';

const T0 = 1_700_000_000_000;

/** n token decisions on task `task`: even ones issued, odd ones denied. */
export function inputs(n: number, task = 'tsk_1', at = T0): DecisionInput[] {
  return Array.from({ length: n }, (_, i) =>
    i % 2 === 0
      ? { at: at + i, event: 'token.issued', agent: 'spiffe://td/a', user: 'alice', task, jti: `j${i}` }
      : {
          at: at + i,
          event: 'token.denied',
          agent: 'spiffe://td/b',
          user: 'bob',
          task,
          code: 'TASKPASS_DENIED_TOOL',
          reason: `no <b>${i}</b>`,
        },
  ) as DecisionInput[];
}

export const append = (s: Store, recs: DecisionInput[]) => s.appendDecisions(recs);

async function withStore(make: MakeStore, fn: (s: Store) => Promise<void>): Promise<void> {
  const { store, cleanup } = await make();
  try {
    await fn(store);
  } finally {
    await cleanup();
  }
}

export function decisionContract(name: string, make: MakeStore): void {
  test(`${name}: records chain from genesis; verify walks them; queries by task, filters, counts`, () =>
    withStore(make, async (s) => {
      assert.deepEqual(await s.decisionHead(), { seq: 0, hash: GENESIS_HASH });
      const empty = await verifyChain(s);
      assert.equal(empty.ok && empty.count, 0);
      const first = await append(s, inputs(3, 'tsk_a'));
      const second = await append(s, inputs(4, 'tsk_b', T0 + 120_000));
      assert.deepEqual(
        [...first, ...second].map((r) => r.seq),
        [1, 2, 3, 4, 5, 6, 7],
      );
      assert.equal(first[0]?.prev_hash, GENESIS_HASH);
      assert.equal(second[0]?.prev_hash, first[2]?.hash);
      assert.deepEqual(await s.decisionHead(), { seq: 7, hash: second[3]?.hash });
      const v = await verifyChain(s, { pageSize: 2 });
      assert.ok(v.ok);
      assert.equal(v.count, 7);
      assert.equal(v.last.hash, second[3]?.hash);
      const part = await verifyChain(s, { from: 3, to: 5 });
      assert.ok(part.ok && part.count === 3);

      const tl = await s.decisionsOfTask('tsk_a', 100);
      assert.deepEqual(
        tl.map((r) => [r.seq, r.event]),
        [
          [1, 'token.issued'],
          [2, 'token.denied'],
          [3, 'token.issued'],
        ],
      );
      assert.equal(tl[1]?.reason, 'no <b>1</b>');

      const denied = await s.recentDecisions({ outcome: 'denied' });
      assert.deepEqual(
        denied.records.map((r) => r.seq),
        [7, 5, 2],
      );
      const bob = await s.recentDecisions({ user: 'alice', limit: 2 });
      assert.deepEqual(
        bob.records.map((r) => r.seq),
        [6, 4],
      );
      assert.ok(bob.next !== undefined);
      const more = await s.recentDecisions({ user: 'alice', limit: 2, before: bob.next });
      assert.deepEqual(
        more.records.map((r) => r.seq),
        [3, 1],
      );
      const byCode = await s.recentDecisions({ code: 'TASKPASS_DENIED_TOOL', task: 'tsk_b' });
      assert.deepEqual(
        byCode.records.map((r) => r.seq),
        [7, 5],
      );
      // Per minute on Redis: the first batch is in minute 0, the second two minutes later.
      assert.deepEqual(await s.decisionCounts(T0 - (T0 % 60_000), T0 - (T0 % 60_000) + 60_000), {
        issued: 2,
        TASKPASS_DENIED_TOOL: 1,
      });
      const all = await s.decisionCounts(T0 - 3_600_000, T0 + 3_600_000);
      assert.deepEqual(all, { issued: 4, TASKPASS_DENIED_TOOL: 3 });
      const m0 = Math.floor(T0 / 60_000);
      assert.deepEqual(await s.decisionCountsByMinute(T0 - 3_600_000, T0 + 3_600_000), [
        { minute: m0, counts: { issued: 2, TASKPASS_DENIED_TOOL: 1 } },
        { minute: m0 + 2, counts: { issued: 2, TASKPASS_DENIED_TOOL: 2 } },
      ]);
    }));

  test(`${name}: retention sweeps the oldest records and keeps the chain verifiable by its anchor`, () =>
    withStore(make, async (s) => {
      const old = await append(s, inputs(5, 'tsk_old', T0));
      await append(s, inputs(3, 'tsk_new', T0 + 86_400_000));
      let swept = 0;
      for (let n = 1; n > 0; swept += n) n = await s.sweepDecisions(T0 + 3_600_000);
      assert.equal(swept, 5);
      assert.deepEqual(await s.decisionAnchor(), { seq: 5, hash: old[4]?.hash });
      assert.deepEqual(await s.decisionsOfTask('tsk_old', 10), []);
      const v = await verifyChain(s);
      assert.ok(v.ok, JSON.stringify(v));
      assert.equal(v.count, 3);
      assert.equal(v.first, 6);
      // The next append continues the chain after the swept records.
      const next = await append(s, inputs(1, 'tsk_new', T0 + 86_400_500));
      assert.equal(next[0]?.seq, 9);
    }));

  test(`${name}: the recorder group-commits audit events; flush makes them durable; concurrent appends stay one chain`, () =>
    withStore(make, async (s) => {
      const log: string[] = [];
      const rec = new DecisionRecorder({ store: s, log: { record: (e) => log.push(e.event) }, groupMs: 5 });
      const seen: number[] = [];
      rec.onRecord((r) => seen.push(r.seq));
      for (let i = 0; i < 40; i++) {
        rec.record({ event: 'token.issued', task: 'tsk_r', jti: `j${i}`, agent: 'a' });
      }
      // Not a field of the audit whitelist: never stored.
      rec.record({ event: 'task.revoked', task: 'tsk_r', ...({ token: 'secret' } as object) });
      assert.equal(log.length, 41);
      await rec.flush();
      const tl = await s.decisionsOfTask('tsk_r', 100);
      assert.equal(tl.length, 41);
      assert.equal(tl.at(-1)?.event, 'task.revoked');
      assert.equal('token' in (tl.at(-1) ?? {}), false);
      assert.equal(seen.length, 41);
      // Two writers racing for the head (two replicas, or the recorder and another process).
      await Promise.all([append(s, inputs(10, 'x')), append(s, inputs(10, 'y')), append(s, inputs(10, 'z'))]);
      const v = await verifyChain(s);
      assert.ok(v.ok, JSON.stringify(v));
      assert.equal(v.count, 71);
      await rec.drain();
    }));

  test(`${name}: console sessions expire and are taken once`, () =>
    withStore(make, async (s) => {
      const now = Math.floor(Date.now() / 1000);
      await s.putConsoleSession({ id: 'h1', expiresAt: now + 60, data: { sub: 'alice' } });
      await s.putConsoleSession({ id: 'h2', expiresAt: now - 1, data: {} });
      assert.deepEqual((await s.getConsoleSession('h1', now))?.data, { sub: 'alice' });
      assert.equal(await s.getConsoleSession('h2', now), undefined);
      assert.equal(await s.getConsoleSession('h1', now + 61), undefined);
      assert.equal((await s.takeConsoleSession('h1', now))?.id, 'h1');
      assert.equal(await s.takeConsoleSession('h1', now), undefined);
      await s.putConsoleSession({ id: 'h3', expiresAt: now + 60, data: {} });
      await s.deleteConsoleSession('h3');
      assert.equal(await s.getConsoleSession('h3', now), undefined);
    }));
}
