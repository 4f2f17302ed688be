// The approval API on the Redis store, and two broker replicas sharing one Redis.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { argsSha256 } from '@taskpass/contract';
import { RedisStore } from '../src/store/redis.ts';
import { approvalApiTests, approvalPolicy } from './app-approvals.ts';
import { AGENT, TICKETS, testBroker } from './app-support.ts';
import { dropPrefix, URL } from './redis-support.ts';

approvalApiTests('approvals (redis)', async () => {
  const prefix = `taskpass-test:${randomUUID()}:`;
  const store = new RedisStore({ url: URL, prefix });
  await store.init();
  return {
    store,
    cleanup: async () => {
      await store.close();
      await dropPrefix(prefix);
    },
  };
});

test('two replicas on one Redis: the same approval, a decision on one wakes a waiter on the other', async () => {
  const prefix = `taskpass-test:${randomUUID()}:`;
  const sa = new RedisStore({ url: URL, prefix });
  const sb = new RedisStore({ url: URL, prefix });
  await sa.init();
  await sb.init();
  const policy = approvalPolicy();
  const a = await testBroker({}, { store: sa, policy });
  const b = await testBroker({}, { store: sb, policy });
  try {
    const opened = await a.app.inject({
      method: 'POST',
      url: '/v1/tasks',
      headers: a.mtls(AGENT),
      payload: { purpose: 'refund', user_token: await a.user.sign({ sub: 'alice' }) },
    });
    const task = opened.json().task_id;
    const args = { ticket_id: 'T-1', amount: 900 };
    const body = {
      audience: TICKETS,
      tool: 'issue_refund',
      resource: 'tickets/T-1',
      action: 'write',
      args_sha256: argsSha256(args),
      arguments: args,
    };
    const ask = (x: typeof a) =>
      x.app.inject({
        method: 'POST',
        url: `/v1/tasks/${task}/tokens`,
        headers: x.mtls(AGENT),
        payload: body,
      });
    const [onA, onB] = await Promise.all([ask(a), ask(b)]);
    assert.equal(onA.json().code, 'TASKPASS_APPROVAL_REQUIRED');
    assert.equal(
      onA.json().approval_id,
      onB.json().approval_id,
      'one approval for the call, whichever replica',
    );
    const id = onA.json().approval_id;

    const waiting = a.app.inject({
      method: 'GET',
      url: `/v1/approvals/${id}?wait=30`,
      headers: a.mtls(AGENT),
    });
    await new Promise((r) => setTimeout(r, 200));
    // Replica b's IdP key differs from a's (each test broker has its own); sign with b's.
    const lena = await b.user.sign({ sub: 'lena', groups: ['support-leads'] }, { aud: 'taskpass-approvals' });
    const [d1, d2] = await Promise.all([
      b.app.inject({
        method: 'POST',
        url: `/v1/approvals/${id}/decision`,
        headers: { authorization: `Bearer ${lena}` },
        payload: { decision: 'approve' },
      }),
      b.app.inject({
        method: 'POST',
        url: `/v1/approvals/${id}/decision`,
        headers: { authorization: `Bearer ${lena}` },
        payload: { decision: 'deny' },
      }),
    ]);
    assert.deepEqual([d1.statusCode, d2.statusCode].sort(), [200, 409]);
    const w = await waiting;
    assert.equal(w.statusCode, 200, w.body);
    assert.notEqual(w.json().status, 'pending', 'the waiter on replica a heard the decision made on b');
  } finally {
    await a.app.close();
    await b.app.close();
    await sa.close();
    await sb.close();
    await dropPrefix(prefix);
  }
});
