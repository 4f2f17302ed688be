// The Vault lease records and their revocation outbox, run against every Store implementation.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { test } from 'node:test';
import { BrokerError } from '../src/errors.ts';
import type { NewLease, Store, TaskRecord } from '../src/store/types.ts';
import type { MakeStore } from './store-contract.ts';

const NOW = Math.floor(Date.now() / 1000);
const PATH = 'database/creds/ticket-desk';

async function openTask(s: Store, ttl = 600): Promise<TaskRecord> {
  const t: TaskRecord = {
    id: `task-${randomUUID()}`,
    agent: 'spiffe://taskpass.local/agents/support/a1',
    sub: 'alice',
    purpose: 'answer ticket T-1',
    status: 'open',
    createdAt: NOW,
    expiresAt: NOW + ttl,
  };
  await s.createTask(t);
  return t;
}

const lease = (taskId: string, over: Partial<NewLease> = {}): NewLease => ({
  taskId,
  path: PATH,
  leaseId: `${PATH}/${randomUUID()}`,
  issuedAt: NOW,
  expiresAt: NOW + 300,
  ...over,
});

async function withStore(make: MakeStore, fn: (s: Store) => Promise<void>): Promise<void> {
  const { store, cleanup } = await make();
  try {
    await fn(store);
  } finally {
    await cleanup();
  }
}

/** Registers the lease tests for one implementation. */
export function leaseContract(name: string, make: MakeStore): void {
  test(`${name}: one lease per task and path while it lives; a closed or missing task gets none`, () =>
    withStore(make, async (s) => {
      const t = await openTask(s);
      const first = lease(t.id);
      const a = await s.recordLease(first, NOW);
      assert.equal(a.recorded, true);
      assert.deepEqual(a.lease, { ...first, state: 'active', dueAt: t.expiresAt, attempts: 0 });
      const again = await s.recordLease(lease(t.id), NOW + 10);
      assert.equal(again.recorded, false);
      assert.equal(again.lease?.leaseId, first.leaseId, 'the live lease is handed out again');
      const other = await s.recordLease(lease(t.id, { path: 'database/creds/other' }), NOW);
      assert.equal(other.recorded, true, 'another path is another lease');
      const after = lease(t.id, { issuedAt: NOW + 300, expiresAt: NOW + 500 });
      const renewed = await s.recordLease(after, NOW + 300);
      assert.equal(renewed.recorded, true, 'a lease past its end is replaced');
      assert.equal((await s.getLease(t.id, PATH))?.leaseId, after.leaseId);

      await s.completeTask(t.id, 'completed', NOW + 20, 'completed');
      const closed = await s.recordLease(lease(t.id, { path: 'database/creds/late' }), NOW + 30);
      assert.deepEqual(closed, { recorded: false, lease: undefined });
      const expiring = await openTask(s, 60);
      assert.equal((await s.recordLease(lease(expiring.id), NOW + 60)).recorded, false, 'expired task');
      await assert.rejects(
        s.recordLease(lease('task-missing'), NOW),
        (e: unknown) => e instanceof BrokerError && e.code === 'TASKPASS_TASK_NOT_FOUND',
      );
    }));

  test(`${name}: a task's end makes its leases due in the same step; retry and revoked settle them`, () =>
    withStore(make, async (s) => {
      const t = await openTask(s);
      const bystander = await openTask(s);
      const l = lease(t.id);
      await s.recordLease(l, NOW);
      await s.recordLease(lease(bystander.id), NOW);
      assert.deepEqual(await s.dueLeases(NOW + 100, 10), [], 'nothing due while the tasks are open');

      await s.completeTask(t.id, 'failed', NOW + 100, 'failed');
      const due = await s.dueLeases(NOW + 100, 10);
      assert.deepEqual(due, [{ ...l, state: 'revoking', dueAt: NOW + 100, attempts: 0 }]);
      assert.equal(await s.countDueLeases(NOW + 100), 1);
      assert.equal(await s.countDueLeases(NOW + 99), 1, 'a lease of an ended task is pending');

      await s.leaseRetry(t.id, PATH, l.leaseId, NOW + 130);
      assert.deepEqual(await s.dueLeases(NOW + 129, 10), [], 'backing off');
      assert.equal(await s.countDueLeases(NOW + 129), 1, 'and still pending');
      assert.equal((await s.dueLeases(NOW + 130, 10))[0]?.attempts, 1);
      await s.leaseRevoked(t.id, PATH, 'some-other-lease');
      assert.equal(await s.countDueLeases(NOW + 130), 1, 'another lease id settles nothing');
      await s.leaseRevoked(t.id, PATH, l.leaseId);
      assert.equal(await s.countDueLeases(NOW + 1000), 1, 'only the bystander, at its expiry');
      assert.equal(await s.getLease(t.id, PATH), undefined);
      // A second finish of the task changes nothing.
      await s.completeTask(t.id, 'completed', NOW + 200, 'completed');
      assert.equal((await s.dueLeases(NOW + 1000, 10))[0]?.taskId, bystander.id);
    }));

  test(`${name}: an open task's lease is due at the task's expiry; dueLeases is ordered and limited`, () =>
    withStore(make, async (s) => {
      const short = await openTask(s, 100);
      const long = await openTask(s, 200);
      await s.recordLease(lease(long.id), NOW);
      await s.recordLease(lease(short.id), NOW);
      assert.equal(await s.countDueLeases(NOW + 99), 0, 'open tasks: nothing pending before expiry');
      await s.leaseRetry(short.id, PATH, (await s.getLease(short.id, PATH))!.leaseId, NOW + 100);
      assert.equal(
        (await s.getLease(short.id, PATH))?.state,
        'revoking',
        'a failed attempt makes it revoking',
      );
      assert.deepEqual(
        (await s.dueLeases(NOW + 200, 10)).map((l) => [l.taskId, l.state, l.dueAt]),
        [
          [short.id, 'revoking', NOW + 100],
          [long.id, 'active', NOW + 200],
        ],
      );
      assert.equal((await s.dueLeases(NOW + 200, 1)).length, 1);
    }));
}
