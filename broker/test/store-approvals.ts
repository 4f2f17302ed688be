// The approval part of the Store contract (docs/approvals.md), run against SQLite and Redis by
// store-sqlite.test.ts and store.redis.test.ts.
import assert from 'node:assert/strict';
import { randomBytes, randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { argsSha256 } from '@taskpass/contract';
import { BrokerError } from '../src/errors.ts';
import { type ApprovalRecord, effectiveStatus, type Store, type TaskRecord } from '../src/store/types.ts';
import type { MakeStore } from './store-contract.ts';

const nowSec = () => Math.floor(Date.now() / 1000);

function task(over: Partial<TaskRecord> = {}): TaskRecord {
  const now = nowSec();
  return {
    id: `task-${randomUUID()}`,
    agent: 'spiffe://taskpass.local/agents/support-bot',
    sub: 'alice',
    userIssuer: 'https://idp',
    purpose: 'refund T-1',
    status: 'open',
    createdAt: now,
    expiresAt: now + 600,
    ...over,
  };
}

/** An approval request for a refund of `amount` in task `t`. */
export function approvalFor(
  t: TaskRecord,
  amount: number,
  over: Partial<ApprovalRecord> = {},
): ApprovalRecord {
  const args = { ticket_id: 'T-1', amount };
  const now = nowSec();
  return {
    id: `apr_${randomBytes(16).toString('base64url')}`,
    taskId: t.id,
    agent: t.agent,
    sub: t.sub,
    userIssuer: 'https://idp',
    purpose: t.purpose,
    audience: 'https://tickets/mcp',
    tool: 'issue_refund',
    resource: 'tickets/T-1',
    action: 'write',
    argsSha256: argsSha256(args),
    arguments: args,
    template: 'refunds',
    rules: [
      {
        approvers: { issuers: ['https://idp'], claims: [], anyone: true, delegatingUser: false },
        when: [],
        ttlSec: 600,
        separationOfDuties: true,
      },
    ],
    status: 'pending',
    createdAt: now,
    expiresAt: now + 600,
    ...over,
  };
}

const lena = { iss: 'https://idp', sub: 'lena' };
const carl = { iss: 'https://idp', sub: 'carl' };

async function withStore(make: MakeStore, fn: (s: Store) => Promise<void>): Promise<void> {
  const { store, cleanup } = await make();
  try {
    await fn(store);
  } finally {
    await cleanup();
  }
}

const issued = (t: TaskRecord, jti: string) => ({
  taskId: t.id,
  jti,
  tool: 'issue_refund',
  resource: 'tickets/T-1',
  action: 'write' as const,
  template: 'refunds',
  issuedAt: nowSec(),
  expiresAt: nowSec() + 30,
});

/** Registers the approval contract tests for one implementation. */
export function approvalContract(name: string, make: MakeStore): void {
  test(`${name} approvals: the same call gets the same approval, a different call another; round trip`, () =>
    withStore(make, async (s) => {
      const t = task();
      await s.createTask(t);
      const a = approvalFor(t, 250);
      const first = await s.requestApproval(a, nowSec());
      assert.equal(first.created, true);
      assert.deepEqual(first.approval, a, 'stored as given (rules, arguments, empty lists too)');
      assert.deepEqual(await s.getApproval(a.id), a);
      const again = await s.requestApproval(approvalFor(t, 250), nowSec());
      assert.equal(again.created, false);
      assert.equal(again.approval.id, a.id, 'same call, same approval');
      const other = await s.requestApproval(approvalFor(t, 251), nowSec());
      assert.equal(other.created, true);
      assert.notEqual(other.approval.id, a.id, 'other arguments, other approval');
      assert.equal(await s.getApproval('apr_nope'), undefined);
      assert.deepEqual(
        (await s.listPendingApprovals(nowSec(), 10)).map((x) => x.id).sort(),
        [a.id, other.approval.id].sort(),
      );
    }));

  test(`${name} approvals: concurrent requests for one call create one approval`, () =>
    withStore(make, async (s) => {
      const t = task();
      await s.createTask(t);
      const rs = await Promise.all([1, 2, 3, 4].map(() => s.requestApproval(approvalFor(t, 300), nowSec())));
      assert.equal(rs.filter((r) => r.created).length, 1);
      assert.equal(new Set(rs.map((r) => r.approval.id)).size, 1);
    }));

  test(`${name} approvals: the first decision wins, durably; the loser learns who won`, () =>
    withStore(make, async (s) => {
      const t = task();
      await s.createTask(t);
      const { approval: a } = await s.requestApproval(approvalFor(t, 250), nowSec());
      const changed: string[] = [];
      const off = s.onApprovalChange((id) => changed.push(id));
      const now = nowSec();
      const [x, y] = await Promise.all([
        s.decideApproval(a.id, { status: 'approved', approver: lena, decidedAt: now, comment: 'ok' }, now),
        s.decideApproval(a.id, { status: 'denied', approver: carl, decidedAt: now }, now),
      ]);
      assert.ok(x && y);
      assert.equal([x, y].filter((r) => r.decided).length, 1, 'exactly one decision is recorded');
      const winner = x.decided ? x : y;
      const loser = x.decided ? y : x;
      assert.deepEqual(loser.approval, winner.approval, 'the loser sees the recorded decision');
      const stored = await s.getApproval(a.id);
      assert.equal(stored?.status, winner.approval.status);
      assert.deepEqual(stored?.approver, winner.approval.approver);
      assert.equal(stored?.decidedAt, now);
      for (let i = 0; i < 200 && !changed.includes(a.id); i++) await new Promise((r) => setTimeout(r, 5));
      assert.ok(changed.includes(a.id), 'listeners hear of the decision');
      off();
      assert.deepEqual(await s.listPendingApprovals(nowSec(), 10), [], 'no longer pending');
      assert.equal(
        await s.decideApproval('apr_nope', { status: 'approved', approver: lena, decidedAt: now }, now),
        undefined,
      );
    }));

  test(`${name} approvals: a denied call stays denied; an expired one is reported once, then asked anew`, () =>
    withStore(make, async (s) => {
      const t = task();
      await s.createTask(t);
      const now = nowSec();
      const { approval: d } = await s.requestApproval(approvalFor(t, 250), now);
      await s.decideApproval(d.id, { status: 'denied', approver: lena, decidedAt: now, comment: 'no' }, now);
      const again = await s.requestApproval(approvalFor(t, 250), now + 5);
      assert.equal(again.approval.id, d.id);
      assert.equal(again.approval.status, 'denied');
      assert.equal(again.approval.comment, 'no');

      const { approval: e } = await s.requestApproval(approvalFor(t, 99, { expiresAt: now + 10 }), now);
      const late = await s.decideApproval(
        e.id,
        { status: 'approved', approver: lena, decidedAt: now + 10 },
        now + 10,
      );
      assert.equal(late?.decided, false, 'no decision on an expired approval');
      assert.equal(effectiveStatus(late!.approval, now + 10), 'expired');
      const report = await s.requestApproval(approvalFor(t, 99), now + 11);
      assert.equal(report.created, false);
      assert.equal(report.approval.id, e.id);
      assert.equal(report.approval.status, 'expired');
      const fresh = await s.requestApproval(approvalFor(t, 99), now + 12);
      assert.equal(fresh.created, true, 'after the expiry was reported, the call is asked anew');
      assert.notEqual(fresh.approval.id, e.id);
    }));

  test(`${name} approvals: one approval yields one issued call, once, in the same step`, () =>
    withStore(make, async (s) => {
      const t = task();
      await s.createTask(t);
      const now = nowSec();
      const { approval: a } = await s.requestApproval(approvalFor(t, 250), now);
      const consume = { id: a.id, now };
      assert.equal(await s.recordIssued(issued(t, 'j0'), { consumeApproval: consume }), false, 'pending: no');
      assert.equal((await s.listIssued(t.id)).length, 0, 'nothing recorded');
      await s.decideApproval(a.id, { status: 'approved', approver: lena, decidedAt: now }, now);
      const rs = await Promise.all([
        s.recordIssued(issued(t, 'j1'), { consumeApproval: consume }),
        s.recordIssued(issued(t, 'j2'), { consumeApproval: consume }),
      ]);
      assert.deepEqual(rs.sort(), [false, true]);
      const used = await s.getApproval(a.id);
      assert.equal(used?.status, 'used');
      assert.equal(used?.usedAt, now);
      assert.ok(used?.jti === 'j1' || used?.jti === 'j2');
      assert.deepEqual(
        (await s.listIssued(t.id)).map((c) => c.jti),
        [used.jti],
        'only the winning call was recorded',
      );
      const next = await s.requestApproval(approvalFor(t, 250), now);
      assert.equal(next.created, true, 'after use, the same call needs a new approval');

      const { approval: b } = await s.requestApproval(approvalFor(t, 7, { expiresAt: now + 10 }), now);
      await s.decideApproval(b.id, { status: 'approved', approver: lena, decidedAt: now }, now);
      assert.equal(
        await s.recordIssued(issued(t, 'j3'), { consumeApproval: { id: b.id, now: now + 10 } }),
        false,
        'an approval not used before its expiry is not used after',
      );
    }));

  test(`${name} approvals: completing the task cancels its pending and approved approvals, atomically`, () =>
    withStore(make, async (s) => {
      const t = task();
      const other = task();
      await s.createTask(t);
      await s.createTask(other);
      const now = nowSec();
      const { approval: p } = await s.requestApproval(approvalFor(t, 1), now);
      const { approval: a } = await s.requestApproval(approvalFor(t, 2), now);
      const { approval: d } = await s.requestApproval(approvalFor(t, 3), now);
      const { approval: o } = await s.requestApproval(approvalFor(other, 1), now);
      const changed: string[] = [];
      const off = s.onApprovalChange((id) => changed.push(id));
      await s.decideApproval(a.id, { status: 'approved', approver: lena, decidedAt: now }, now);
      await s.decideApproval(d.id, { status: 'denied', approver: lena, decidedAt: now }, now);
      // Across replicas the decisions' notifications arrive later (pub/sub): let them land first, so
      // that what follows counts only the cancellations.
      for (let i = 0; i < 200 && !(changed.includes(a.id) && changed.includes(d.id)); i++)
        await new Promise((res) => setTimeout(res, 5));
      changed.length = 0;
      const r = await s.completeTask(t.id, 'completed', now, 'done');
      assert.deepEqual(r.cancelledApprovals.sort(), [p.id, a.id].sort());
      assert.equal((await s.getApproval(p.id))?.status, 'cancelled');
      assert.equal((await s.getApproval(a.id))?.status, 'cancelled');
      assert.equal((await s.getApproval(d.id))?.status, 'denied', 'a decision stays as it was');
      assert.equal((await s.getApproval(o.id))?.status, 'pending', 'other tasks untouched');
      assert.equal(
        (await s.decideApproval(p.id, { status: 'approved', approver: lena, decidedAt: now }, now))?.decided,
        false,
      );
      assert.deepEqual((await s.completeTask(t.id, 'completed', now, 'again')).cancelledApprovals, []);
      for (let i = 0; i < 200 && changed.length < 2; i++) await new Promise((res) => setTimeout(res, 5));
      assert.deepEqual(changed.sort(), [p.id, a.id].sort());
      off();
      await assert.rejects(
        s.requestApproval(approvalFor(t, 9), now),
        (e: unknown) => e instanceof BrokerError && e.code === 'TASKPASS_TASK_CLOSED',
      );
      await assert.rejects(
        s.requestApproval(approvalFor(task(), 9), now),
        (e: unknown) => e instanceof BrokerError && e.code === 'TASKPASS_TASK_NOT_FOUND',
      );
    }));

  test(`${name} approvals: swept with their task`, () =>
    withStore(make, async (s) => {
      const now = nowSec();
      const t = task({ createdAt: now - 100, expiresAt: now + 50 });
      await s.createTask(t);
      const { approval: a } = await s.requestApproval(approvalFor(t, 1, { expiresAt: now + 40 }), now);
      await s.sweep(now + 45);
      assert.ok(await s.getApproval(a.id), 'kept while its task is kept');
      assert.deepEqual(await s.listPendingApprovals(now + 45, 10), [], 'an expired one is not pending');
      await s.sweep(now + 50 + 3600 * 24);
      if (s.constructor.name === 'SqliteStore') assert.equal(await s.getApproval(a.id), undefined);
    }));
}
