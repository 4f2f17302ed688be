import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import pino from 'pino';
import { createStore } from '../src/store/index.ts';
import { RedisStore } from '../src/store/redis.ts';
import type { Revocation } from '@taskpass/contract';
import { REVOCATION_GRACE_SEC } from '../src/store/types.ts';
import { approvalContract } from './store-approvals.ts';
import { type MakeStore, storeContract } from './store-contract.ts';
import { leaseContract } from './store-leases.ts';

import { admin, dropPrefix, URL } from './redis-support.ts';

const prefix = () => `taskpass-test:${randomUUID()}:`;

const fresh: MakeStore = async () => {
  const p = prefix();
  const store = new RedisStore({ url: URL, prefix: p });
  await store.init();
  return {
    store,
    cleanup: async () => {
      await store.close();
      await dropPrefix(p);
    },
  };
};
storeContract('redis', fresh);
approvalContract('redis', fresh);
leaseContract('redis', fresh);

// Two replicas on one Redis: one approval per call, one decision, seen by both.
approvalContract('redis, two replicas', async () => {
  const p = prefix();
  const a = new RedisStore({ url: URL, prefix: p });
  const b = new RedisStore({ url: URL, prefix: p });
  await a.init();
  await b.init();
  // Alternate calls between the replicas: every write lands on one, every read may come from the other.
  let turn = 0;
  const store = new Proxy(a, {
    get(target, prop) {
      const which = turn++ % 2 === 0 ? target : b;
      const v = Reflect.get(which, prop) as unknown;
      return typeof v === 'function' ? v.bind(which) : v;
    },
  });
  return {
    store,
    cleanup: async () => {
      await a.close();
      await b.close();
      await dropPrefix(p);
    },
  };
});

const waitFor = async (cond: () => boolean, ms = 3000): Promise<void> => {
  const end = Date.now() + ms;
  while (!cond()) {
    if (Date.now() > end) throw new Error('timed out waiting');
    await new Promise((r) => setTimeout(r, 5));
  }
};

test('redis: a revocation made on one replica reaches the other replica, in order', async () => {
  const p = prefix();
  const a = new RedisStore({ url: URL, prefix: p });
  const b = new RedisStore({ url: URL, prefix: p });
  await a.init();
  await b.init();
  try {
    const onB: Revocation[] = [];
    const onA: Revocation[] = [];
    b.onRevocation((r) => onB.push(r));
    a.onRevocation((r) => onA.push(r));
    const now = Math.floor(Date.now() / 1000);
    await a.createTask({
      id: 't',
      agent: 'x',
      sub: 'u',
      purpose: 'p',
      status: 'open',
      createdAt: now,
      expiresAt: now + 60,
    });
    const fin = await a.completeTask('t', 'completed', now, 'done');
    const tok = await b.revokeToken('j', now + 60, 'r');
    await waitFor(() => onB.length === 2 && onA.length === 2);
    assert.deepEqual(onB, [fin.revocation, tok]);
    assert.deepEqual(onA, [fin.revocation, tok]);
    // Both replicas see the same task and the same sequence.
    assert.equal((await b.getTask('t'))?.status, 'completed');
    assert.equal((await b.completeTask('t', 'failed', now, 'x')).alreadyCompleted, true);
    assert.equal(await a.currentSeq(), 2);
  } finally {
    await a.close();
    await b.close();
    await dropPrefix(p);
  }
});

test('redis: a lost pub/sub message is filled in from the store (no gap reaches listeners)', async () => {
  const p = prefix();
  const s = new RedisStore({ url: URL, prefix: p });
  await s.init();
  try {
    const got: number[] = [];
    s.onRevocation((r) => got.push(r.seq));
    const until = Math.floor(Date.now() / 1000) + 60;
    // Written behind the store's back, as if its message had been lost: seq 1 without a publish.
    await admin.set(`${p}seq`, 1);
    await admin.zadd(`${p}revs`, 1, '1');
    await admin.zadd(`${p}revs:until`, until, '1');
    await admin.hset(
      `${p}revdata`,
      '1',
      JSON.stringify({ seq: 1, kind: 'token', id: 'lost', until, reason: 'x' }),
    );
    await s.revokeToken('j2', until, 'x');
    await waitFor(() => got.length === 2);
    assert.deepEqual(got, [1, 2]);
  } finally {
    await s.close();
    await dropPrefix(p);
  }
});

test('redis: init warns when AOF fsync-always is off (never fails for it); createStore picks Redis', async () => {
  const lines: string[] = [];
  const logger = pino({ level: 'warn' }, { write: (l: string) => void lines.push(l) });
  const p = prefix();
  const s = createStore({ redis: { url: URL, keyPrefix: p } }, { logger });
  assert.ok(s instanceof RedisStore);
  await s.init();
  await s.init();
  const [, aof] = (await admin.call('CONFIG', 'GET', 'appendonly')) as string[];
  const [, fsync] = (await admin.call('CONFIG', 'GET', 'appendfsync')) as string[];
  if (aof !== 'yes' || fsync !== 'always') assert.ok(lines.some((l) => l.includes('appendfsync always')));
  else assert.equal(lines.length, 0);
  await s.close();
  const k = createStore({ kind: 'redis', url: URL, prefix: p });
  assert.ok(k instanceof RedisStore && k.prefix === p);
  await dropPrefix(p);
});

test('redis: an unreachable Redis fails init and writes instead of hanging', async () => {
  const s = new RedisStore({
    url: 'redis://127.0.0.1:1',
    prefix: prefix(),
    timeoutMs: 500,
    redisOptions: { retryStrategy: () => null },
  });
  await assert.rejects(s.init(), { code: 'TASKPASS_STORE_UNAVAILABLE' });
  await assert.rejects(s.currentSeq(), { code: 'TASKPASS_STORE_UNAVAILABLE' });
});

test('redis: a task recorded before icount/iprior existed gets them built from its issued list', async () => {
  const p = prefix();
  const s = new RedisStore({ url: URL, prefix: p });
  await s.init();
  try {
    const now = Math.floor(Date.now() / 1000);
    const call = (jti: string, tool: string) =>
      JSON.stringify({
        taskId: 't1',
        jti,
        tool,
        resource: 'tickets/T-1',
        action: 'read',
        template: 'support',
        issuedAt: now,
        expiresAt: now + 60,
      });
    // What the previous version wrote: the list only, with the task's TTL.
    await admin.rpush(`${p}issued:t1`, call('j1', 'close_ticket'), call('j2', 'get_ticket'));
    await admin.expire(`${p}issued:t1`, 600);
    assert.deepEqual(await s.countIssued('t1', 'close_ticket'), new Map([['support', 1]]));
    assert.deepEqual([...(await s.issuedTemplates('t1', 'get_ticket', 'tickets/T-1'))], ['support']);
    // Recording goes on from there (not from zero), and the new keys expire with the list.
    await s.recordIssued(JSON.parse(call('j3', 'close_ticket')));
    assert.deepEqual(await s.countIssued('t1', 'close_ticket'), new Map([['support', 2]]));
    assert.equal((await s.listIssued('t1')).length, 3);
    assert.ok((await admin.ttl(`${p}icount:t1`)) > 0);
    assert.ok((await admin.ttl(`${p}iprior:t1`)) > 0);
  } finally {
    await s.close();
    await dropPrefix(p);
  }
});

// Every Lua script blocks all Redis clients while it runs: a backlog is swept in bounded steps.
test('redis sweep: a backlog of revocations and tasks goes in bounded steps; TTLs cover the rest', async () => {
  const p = prefix();
  const s = new RedisStore({ url: URL, prefix: p, sweepBatchRows: 50, taskRetentionSec: 0 });
  await s.init();
  const mon = await admin.monitor();
  try {
    const now = Math.floor(Date.now() / 1000);
    for (let i = 0; i < 400; i++) await s.revokeToken(`j${i}`, now - REVOCATION_GRACE_SEC - 1, 'old');
    const kept = await s.revokeToken('kept', now + 600, 'x');
    for (let i = 0; i < 120; i++) {
      await s.createTask({
        id: `t${i}`,
        agent: 'a',
        sub: 'u',
        purpose: 'p',
        status: 'open',
        createdAt: now - 100,
        expiresAt: now - 10,
      });
    }
    assert.equal(await s.markUsed('u', now + 30), true);
    const usedTtl = await admin.pttl(`${p}used:u`);
    assert.ok(usedTtl > 0 && usedTtl <= 90_000 + 1000, `the replay marker expires by itself (${usedTtl} ms)`);

    const steps = { revocations: 0, tasks: 0 };
    mon.on('monitor', (_t: string, args: string[]) => {
      if (/^eval/i.test(args[0] ?? '') && args.includes(`${p}revs:until`)) steps.revocations++;
      if (/^zrangebyscore$/i.test(args[0] ?? '') && args[1] === `${p}tasks:exp`) steps.tasks++;
    });
    await s.sweep(now);
    await new Promise((r) => setTimeout(r, 100)); // MONITOR lines arrive asynchronously
    assert.ok(steps.revocations >= 8, `${steps.revocations} revocation steps for 400 at 50 a step`);
    assert.ok(steps.tasks >= 3, `${steps.tasks} task steps for 120 at 50 a step`);
    assert.deepEqual(await s.revocationsSince(0, 0), [kept]);
    assert.equal(await admin.hlen(`${p}revdata`), 1);
    assert.equal(await admin.zcard(`${p}revs:until`), 1);
    assert.equal(await admin.zcard(`${p}tasks:exp`), 0);
    assert.deepEqual(await s.listTasks(), []);
  } finally {
    mon.disconnect();
    await s.close();
    await dropPrefix(p);
  }
});
