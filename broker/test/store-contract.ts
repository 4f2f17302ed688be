// The Store contract, run against every implementation (SQLite and Redis).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { BrokerError } from '../src/errors.ts';
import type { Revocation } from '@taskpass/contract';
import {
  REVOCATION_GRACE_SEC,
  type Store,
  type StoredSigningKey,
  type TaskRecord,
} from '../src/store/types.ts';

/** A fresh, initialised store (each call gets its own empty namespace) and its cleanup. */
export type MakeStore = () => Promise<{ store: Store; cleanup: () => Promise<void> }>;

const nowSec = () => Math.floor(Date.now() / 1000);

function task(over: Partial<TaskRecord> = {}): TaskRecord {
  const now = nowSec();
  return {
    id: `task-${randomUUID()}`,
    agent: 'spiffe://taskpass.local/agents/support/a1',
    sub: 'alice',
    purpose: 'answer ticket T-1',
    status: 'open',
    createdAt: now,
    expiresAt: now + 600,
    ...over,
  };
}

async function withStore(make: MakeStore, fn: (s: Store) => Promise<void>): Promise<void> {
  const { store, cleanup } = await make();
  try {
    await fn(store);
  } finally {
    await cleanup();
  }
}

const waitFor = async (cond: () => boolean, ms = 2000): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 5));
  }
};

/** Registers the contract tests for one implementation. */
export function storeContract(name: string, make: MakeStore): void {
  test(`${name}: init is idempotent; tasks round-trip with optional fields`, () =>
    withStore(make, async (s) => {
      await s.init();
      const a = task({ userIssuer: 'https://idp', userClaims: { groups: ['support'], n: 1 } });
      const b = task({ createdAt: a.createdAt + 1 });
      await s.createTask(a);
      await s.createTask(b);
      assert.deepEqual(await s.getTask(a.id), a);
      assert.deepEqual(await s.getTask(b.id), b);
      assert.equal(await s.getTask('nope'), undefined);
      await assert.rejects(s.createTask(a), 'a task id is never overwritten');
    }));

  test(`${name}: listTasks filters by status and agent, newest first, with a limit`, () =>
    withStore(make, async (s) => {
      const now = nowSec();
      const t1 = task({ createdAt: now - 3 });
      const t2 = task({ createdAt: now - 2, agent: 'spiffe://taskpass.local/agents/other' });
      const t3 = task({ createdAt: now - 1 });
      for (const t of [t1, t2, t3]) await s.createTask(t);
      await s.completeTask(t3.id, 'completed', now, 'done');
      assert.deepEqual(
        (await s.listTasks()).map((t) => t.id),
        [t3.id, t2.id, t1.id],
      );
      assert.deepEqual(
        (await s.listTasks({ status: 'open' })).map((t) => t.id),
        [t2.id, t1.id],
      );
      assert.deepEqual(
        (await s.listTasks({ agent: t1.agent })).map((t) => t.id),
        [t3.id, t1.id],
      );
      assert.deepEqual(
        (await s.listTasks({ limit: 1 })).map((t) => t.id),
        [t3.id],
      );
    }));

  test(`${name}: completeTask is atomic, idempotent and appends one task revocation`, () =>
    withStore(make, async (s) => {
      const t = task();
      await s.createTask(t);
      const seen: Revocation[] = [];
      const off = s.onRevocation((r) => seen.push(r));
      const at = nowSec();
      const r1 = await s.completeTask(t.id, 'completed', at, 'task completed');
      assert.equal(r1.alreadyCompleted, false);
      assert.equal(r1.task.status, 'completed');
      assert.equal(r1.task.finishedAt, at);
      assert.deepEqual(r1.revocation, {
        seq: 1,
        kind: 'task',
        id: t.id,
        until: t.expiresAt,
        reason: 'task completed',
      });
      assert.equal((await s.getTask(t.id))?.status, 'completed');
      assert.equal(await s.currentSeq(), 1);

      const r2 = await s.completeTask(t.id, 'revoked', at + 5, 'again');
      assert.equal(r2.alreadyCompleted, true);
      assert.equal(r2.task.status, 'completed', 'the first outcome stands');
      assert.deepEqual(r2.revocation, r1.revocation);
      assert.equal(await s.currentSeq(), 1, 'no second revocation');

      await waitFor(() => seen.length >= 1);
      await new Promise((r) => setTimeout(r, 30));
      assert.deepEqual(seen, [r1.revocation], 'onRevocation fired once');
      off();

      await assert.rejects(s.completeTask('missing', 'completed', at, 'x'), (e: unknown) => {
        assert.ok(e instanceof BrokerError);
        assert.equal(e.code, 'TASKPASS_TASK_NOT_FOUND');
        return true;
      });
      assert.equal(await s.currentSeq(), 1, 'a failed finish consumes no seq');
    }));

  test(`${name}: concurrent finishes of one task yield exactly one revocation`, () =>
    withStore(make, async (s) => {
      const t = task();
      await s.createTask(t);
      const at = nowSec();
      const rs = await Promise.all(
        (['completed', 'failed', 'cancelled', 'revoked'] as const).map((st) =>
          s.completeTask(t.id, st, at, st),
        ),
      );
      assert.equal(rs.filter((r) => !r.alreadyCompleted).length, 1);
      assert.equal(new Set(rs.map((r) => r.revocation.seq)).size, 1);
      assert.equal(await s.currentSeq(), 1);
    }));

  test(`${name}: issued calls are kept in order per task`, () =>
    withStore(make, async (s) => {
      const t = task();
      await s.createTask(t);
      const now = nowSec();
      const calls = ['get_ticket', 'close_ticket', 'get_ticket'].map((tool, i) => ({
        taskId: t.id,
        jti: `jti-${randomUUID()}`,
        tool,
        resource: 'tickets/T-1',
        action: tool === 'get_ticket' ? ('read' as const) : ('write' as const),
        template: 'tickets-support',
        issuedAt: now + i,
        expiresAt: now + 60 + i,
      }));
      for (const c of calls) await s.recordIssued(c);
      assert.deepEqual(await s.listIssued(t.id), calls);
      assert.deepEqual(await s.listIssued('other'), []);
    }));

  test(`${name}: recordIssued with ifToolCount is a compare-and-set on the tool's count in the task`, () =>
    withStore(make, async (s) => {
      const t = task();
      await s.createTask(t);
      const now = nowSec();
      const call = (tool: string, template = 'support') => ({
        taskId: t.id,
        jti: `jti-${randomUUID()}`,
        tool,
        resource: 'tickets/T-1',
        action: 'write' as const,
        template,
        issuedAt: now,
        expiresAt: now + 60,
      });
      assert.equal(await s.recordIssued(call('close_ticket'), { ifToolCount: 0 }), true);
      // Another template's call of the same tool counts too; other tools do not.
      assert.equal(await s.recordIssued(call('close_ticket', 'leads'), { ifToolCount: 1 }), true);
      assert.equal(await s.recordIssued(call('get_ticket')), true);
      assert.equal(await s.recordIssued(call('close_ticket'), { ifToolCount: 1 }), false, 'stale count');
      const total = (m: Map<string, number>) => [...m.values()].reduce((a, b) => a + b, 0);
      assert.equal(total(await s.countIssued(t.id, 'close_ticket')), 2, 'a refused record writes nothing');
      // Ten concurrent writers that all read count 2: exactly one wins.
      const results = await Promise.all(
        Array.from({ length: 10 }, () => s.recordIssued(call('close_ticket'), { ifToolCount: 2 })),
      );
      assert.equal(results.filter(Boolean).length, 1);
      assert.equal(total(await s.countIssued(t.id, 'close_ticket')), 3);
      assert.equal((await s.listIssued(t.id)).length, 4);
    }));

  test(`${name}: countIssued and issuedTemplates answer from the calls recorded`, () =>
    withStore(make, async (s) => {
      const t = task();
      const other = task();
      await s.createTask(t);
      await s.createTask(other);
      const now = nowSec();
      // Tool names with spaces, colons and digits: the stores must keep (template, tool) and
      // (resource, tool) pairs apart whatever they hold.
      const calls: [tool: string, resource: string, template: string][] = [
        ['get_ticket', 'tickets/T-1', 'support'],
        ['get_ticket', 'tickets/T-1', 'support'],
        ['get_ticket', 'tickets/T-2', 'leads'],
        ['close_ticket', 'tickets/T-1', 'support'],
        ['3:x y', 'r', 'a'],
        ['x y', 'r', '3:a'],
      ];
      for (const [i, [tool, resource, template]] of calls.entries()) {
        await s.recordIssued({
          taskId: t.id,
          jti: `jti-${randomUUID()}`,
          tool,
          resource,
          action: 'read',
          template,
          issuedAt: now + i,
          expiresAt: now + 60,
        });
      }
      await s.recordIssued({
        taskId: other.id,
        jti: `jti-${randomUUID()}`,
        tool: 'get_ticket',
        resource: 'tickets/T-9',
        action: 'read',
        template: 'support',
        issuedAt: now,
        expiresAt: now + 60,
      });
      const sorted = <T>(it: Iterable<T>) => [...it].sort();
      assert.deepEqual(
        await s.countIssued(t.id, 'get_ticket'),
        new Map([
          ['support', 2],
          ['leads', 1],
        ]),
      );
      assert.deepEqual(await s.countIssued(t.id, 'close_ticket'), new Map([['support', 1]]));
      assert.deepEqual(await s.countIssued(t.id, 'refund'), new Map());
      assert.deepEqual(await s.countIssued(t.id, '3:x y'), new Map([['a', 1]]));
      assert.deepEqual(await s.countIssued(t.id, 'x y'), new Map([['3:a', 1]]));
      assert.deepEqual(await s.countIssued(other.id, 'get_ticket'), new Map([['support', 1]]));
      assert.deepEqual(await s.countIssued('no-such-task', 'get_ticket'), new Map());

      assert.deepEqual(sorted(await s.issuedTemplates(t.id, 'get_ticket')), ['leads', 'support']);
      assert.deepEqual(sorted(await s.issuedTemplates(t.id, 'get_ticket', 'tickets/T-1')), ['support']);
      assert.deepEqual(sorted(await s.issuedTemplates(t.id, 'get_ticket', 'tickets/T-2')), ['leads']);
      assert.deepEqual(sorted(await s.issuedTemplates(t.id, 'get_ticket', 'tickets/T-3')), []);
      assert.deepEqual(sorted(await s.issuedTemplates(t.id, 'close_ticket', 'tickets/T-2')), []);
      assert.deepEqual(sorted(await s.issuedTemplates(t.id, 'x y', 'r')), ['3:a']);
      assert.deepEqual(sorted(await s.issuedTemplates(other.id, 'get_ticket', 'tickets/T-1')), []);
      assert.deepEqual(sorted(await s.issuedTemplates('no-such-task', 'get_ticket')), []);
    }));

  test(`${name}: concurrent recordIssued calls in one task are all counted`, () =>
    withStore(make, async (s) => {
      const t = task();
      await s.createTask(t);
      const now = nowSec();
      await Promise.all(
        Array.from({ length: 50 }, (_, i) =>
          s.recordIssued({
            taskId: t.id,
            jti: `jti-${randomUUID()}`,
            tool: 'get_ticket',
            resource: `tickets/T-${i % 5}`,
            action: 'read',
            template: 'support',
            issuedAt: now,
            expiresAt: now + 60,
          }),
        ),
      );
      assert.deepEqual(await s.countIssued(t.id, 'get_ticket'), new Map([['support', 50]]));
      assert.equal((await s.listIssued(t.id)).length, 50);
      assert.deepEqual([...(await s.issuedTemplates(t.id, 'get_ticket', 'tickets/T-4'))], ['support']);
    }));

  test(`${name}: token revocations, revocationsSince, currentSeq, isRevoked`, () =>
    withStore(make, async (s) => {
      const now = nowSec();
      assert.equal(await s.currentSeq(), 0);
      assert.deepEqual(await s.revocationsSince(0, now), []);
      const a = await s.revokeToken('jti-a', now + 60, 'rfc7009');
      const b = await s.revokeToken('jti-b', now - 1, 'already expired');
      const t = task();
      await s.createTask(t);
      const c = (await s.completeTask(t.id, 'revoked', now, 'admin')).revocation;
      assert.deepEqual([a.seq, b.seq, c.seq], [1, 2, 3]);
      assert.deepEqual(a, { seq: 1, kind: 'token', id: 'jti-a', until: now + 60, reason: 'rfc7009' });
      assert.deepEqual(await s.revocationsSince(0, now), [a, c], 'only live ones');
      assert.deepEqual(await s.revocationsSince(1, now), [c]);
      assert.deepEqual(await s.revocationsSince(3, now), []);
      assert.deepEqual(await s.revocationsSince(0, now - 10), [a, b, c]);
      // Paged: a page scans at most `limit` seqs; the expired b uses a slot but is not returned.
      assert.deepEqual(await s.revocationsPage(0, now, 2), { revocations: [a], next: 2 });
      assert.deepEqual(await s.revocationsPage(2, now, 2), { revocations: [c], next: undefined });
      assert.deepEqual(await s.revocationsPage(0, now, 3), { revocations: [a, c], next: 3 });
      assert.deepEqual(await s.revocationsPage(3, now, 3), { revocations: [], next: undefined });
      assert.deepEqual(await s.revocationsPage(0, now - 10, 10), { revocations: [a, b, c], next: undefined });
      assert.equal(await s.currentSeq(), 3);
      assert.equal(await s.isRevoked('token', 'jti-a'), true);
      assert.equal(await s.isRevoked('token', 'jti-zzz'), false);
      assert.equal(await s.isRevoked('task', t.id), true);
      const open = task();
      await s.createTask(open);
      assert.equal(await s.isRevoked('task', open.id), false);
      assert.equal(await s.isRevoked('task', 'jti-a'), false, 'kinds are separate');
    }));

  test(`${name}: seq is strictly increasing under concurrency`, () =>
    withStore(make, async (s) => {
      const until = nowSec() + 60;
      const rs = await Promise.all(Array.from({ length: 50 }, (_, i) => s.revokeToken(`j${i}`, until, 'x')));
      assert.deepEqual(
        rs.map((r) => r.seq).sort((x, y) => x - y),
        Array.from({ length: 50 }, (_, i) => i + 1),
      );
      assert.equal(await s.currentSeq(), 50);
    }));

  test(`${name}: markUsed is true exactly once`, () =>
    withStore(make, async (s) => {
      const until = nowSec() + 60;
      assert.equal(await s.markUsed('jti-1', until), true);
      assert.equal(await s.markUsed('jti-1', until), false);
      assert.equal(await s.markUsed('jti-2', until), true);
      const many = await Promise.all(Array.from({ length: 20 }, () => s.markUsed('jti-3', until)));
      assert.equal(many.filter(Boolean).length, 1, 'concurrent callers: one winner');
    }));

  test(`${name}: signing keys save, update, load and delete`, () =>
    withStore(make, async (s) => {
      const k = (kid: string, activeFrom: number): StoredSigningKey => ({
        kid,
        alg: 'ES256',
        privateJwk: { kty: 'EC', crv: 'P-256', x: 'x', y: 'y', d: 'd' },
        publicJwk: { kty: 'EC', crv: 'P-256', x: 'x', y: 'y' },
        createdAt: activeFrom - 10,
        activeFrom,
        retireAt: activeFrom + 100,
      });
      assert.deepEqual(await s.loadSigningKeys(), []);
      await s.saveSigningKey(k('k1', 100));
      await s.saveSigningKey(k('k2', 200));
      const sort = (ks: StoredSigningKey[]) => ks.sort((x, y) => x.activeFrom - y.activeFrom);
      assert.deepEqual(sort(await s.loadSigningKeys()), [k('k1', 100), k('k2', 200)]);
      await s.saveSigningKey({ ...k('k1', 100), retireAt: 500 });
      assert.equal((await s.loadSigningKeys()).find((x) => x.kid === 'k1')?.retireAt, 500);
      await s.deleteSigningKey('k1');
      assert.deepEqual(await s.loadSigningKeys(), [k('k2', 200)]);
    }));

  test(`${name}: addSigningKeyIfLatest adds the first key or a successor once`, () =>
    withStore(make, async (s) => {
      const k = (kid: string, activeFrom: number): StoredSigningKey => ({
        kid,
        alg: 'ES256',
        privateJwk: { kty: 'EC', crv: 'P-256', x: 'x', y: 'y', d: 'd' },
        publicJwk: { kty: 'EC', crv: 'P-256', x: 'x', y: 'y' },
        createdAt: activeFrom - 10,
        activeFrom,
        retireAt: activeFrom + 100,
      });
      const firsts = await Promise.all(
        ['a', 'b', 'c'].map((kid) => s.addSigningKeyIfLatest(k(kid, 100), undefined)),
      );
      assert.equal(firsts.filter(Boolean).length, 1, 'one first key');
      const successors = await Promise.all(
        ['d', 'e', 'f'].map((kid) => s.addSigningKeyIfLatest(k(kid, 200), 100)),
      );
      assert.equal(successors.filter(Boolean).length, 1, 'one successor');
      assert.equal(await s.addSigningKeyIfLatest(k('g', 300), 100), false, 'a successor exists already');
      assert.equal(await s.addSigningKeyIfLatest(k('h', 300), 200), true);
      assert.deepEqual((await s.loadSigningKeys()).map((x) => x.activeFrom).sort(), [100, 200, 300]);
    }));

  test(`${name}: onRevocation delivers in seq order and unsubscribes`, () =>
    withStore(make, async (s) => {
      const got: number[] = [];
      const off = s.onRevocation((r) => got.push(r.seq));
      const until = nowSec() + 60;
      for (let i = 0; i < 5; i++) await s.revokeToken(`j${i}`, until, 'x');
      await waitFor(() => got.length === 5);
      assert.deepEqual(got, [1, 2, 3, 4, 5]);
      off();
      await s.revokeToken('j-late', until, 'x');
      await new Promise((r) => setTimeout(r, 50));
      assert.equal(got.length, 5);
    }));

  test(`${name}: sweep drops expired revocations, tasks, calls and replay entries, never seqs`, () =>
    withStore(make, async (s) => {
      const now = nowSec();
      const old = task({ createdAt: now - 100, expiresAt: now + 10 });
      const young = task({ expiresAt: now + 10_000 });
      await s.createTask(old);
      await s.createTask(young);
      await s.recordIssued({
        taskId: old.id,
        jti: 'j-old',
        tool: 't',
        resource: 'r',
        action: 'read',
        template: 'x',
        issuedAt: now,
        expiresAt: now + 10,
      });
      await s.completeTask(old.id, 'completed', now, 'done');
      const keep = await s.revokeToken('j-keep', now + 5000, 'x');
      assert.equal(await s.markUsed('u-1', now + 10), true);

      const later = now + 3600; // past `old`'s expiry plus any retention
      await s.sweep(later);
      assert.equal(await s.getTask(old.id), undefined);
      assert.deepEqual(await s.listIssued(old.id), []);
      assert.deepEqual(await s.countIssued(old.id, 't'), new Map());
      assert.deepEqual([...(await s.issuedTemplates(old.id, 't', 'r'))], []);
      assert.ok(await s.getTask(young.id));
      assert.deepEqual(await s.revocationsSince(0, later - 1), [keep]);
      assert.deepEqual(await s.revocationsSince(0, 0), [keep], 'expired revocations are gone');
      assert.deepEqual(
        (await s.listTasks()).map((t) => t.id),
        [young.id],
      );
      assert.equal(await s.currentSeq(), 2, 'the seq survives the sweep');
      const next = await s.revokeToken('j-next', now + 60, 'x');
      assert.equal(next.seq, 3, 'never reused');
    }));

  test(`${name}: retention — revocations, tasks and their issued calls are kept exactly as long as they matter`, () =>
    withStore(make, async (s) => {
      const now = nowSec();
      const R = 300; // both stores' default task retention after expiry
      const t = task({ createdAt: now - 10, expiresAt: now + 100 });
      await s.createTask(t);
      await s.recordIssued({
        taskId: t.id,
        jti: 'j-ret',
        tool: 't',
        resource: 'r',
        action: 'read',
        template: 'x',
        issuedAt: now,
        expiresAt: now + 50,
      });
      const taskRev = (await s.completeTask(t.id, 'completed', now, 'done')).revocation; // until = task expiry
      const tokenRev = await s.revokeToken('j-tok', now + 200, 'x'); // until = token exp
      const revs = async () => (await s.revocationsSince(0, 0)).map((r) => r.seq);
      const issued = async () => (await s.listIssued(t.id)).length;

      const G = REVOCATION_GRACE_SEC; // served and kept this long past `until` (verifier clock tolerance)
      await s.sweep(now + 100);
      assert.deepEqual(await revs(), [taskRev.seq, tokenRev.seq], 'nothing before its until');
      await s.sweep(now + 100 + G - 1);
      assert.deepEqual(await revs(), [taskRev.seq, tokenRev.seq], 'kept for the grace after its until');
      assert.equal(G, R, 'the steps below assume the grace equals the task retention');
      assert.ok(await s.getTask(t.id), 'the task stays for the retention after its expiry');
      assert.equal(await issued(), 1, 'its issued calls stay with it');
      assert.equal((await s.countIssued(t.id, 't')).get('x'), 1);
      assert.equal(await s.isRevoked('task', t.id), true, 'the finished task still answers revoked');
      await s.sweep(now + 100 + G);
      assert.deepEqual(await revs(), [tokenRev.seq], 'the task revocation goes at task expiry + grace');
      assert.equal(await s.getTask(t.id), undefined);
      assert.equal(await issued(), 0);
      assert.deepEqual(await s.countIssued(t.id, 't'), new Map());
      assert.deepEqual([...(await s.issuedTemplates(t.id, 't', 'r'))], []);
      await s.sweep(now + 200 + G - 1);
      assert.deepEqual(await revs(), [tokenRev.seq]);
      await s.sweep(now + 200 + G);
      assert.deepEqual(await revs(), [], 'the token revocation goes at token expiry + grace');
      assert.equal(await s.currentSeq(), tokenRev.seq, 'the seq is never swept');
    }));
}
