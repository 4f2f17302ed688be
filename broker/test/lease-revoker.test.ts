import assert from 'node:assert/strict';
import { join } from 'node:path';
import { test } from 'node:test';
import type { AuditEvent } from '../src/audit.ts';
import { backoffSec, LeaseRevoker } from '../src/lease-revoker.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { tempDir } from './sqlite-support.ts';

const NOW = Math.floor(Date.now() / 1000);
const PATH = 'database/creds/ticket-desk';

async function openStore(path: string): Promise<SqliteStore> {
  const s = new SqliteStore({ path });
  await s.init();
  return s;
}

test('backoff doubles from the base up to the cap', () => {
  assert.deepEqual(
    [1, 2, 3, 4, 10].map((n) => backoffSec(n, { baseSec: 2, maxSec: 20 })),
    [2, 4, 8, 16, 20],
  );
});

test('a revocation that failed while Vault was down is retried with backoff, and completes after a restart', async () => {
  using tmp = tempDir();
  const file = join(tmp.dir, 'broker.db');
  let now = NOW;
  const events: AuditEvent[] = [];
  const pending: number[] = [];
  const revoked: string[] = [];
  let vaultUp = false;
  const revokerOn = (store: SqliteStore) =>
    new LeaseRevoker({
      store,
      now: () => now,
      revoke: async (id) => {
        if (!vaultUp) throw new Error('connect ECONNREFUSED 127.0.0.1:8200');
        revoked.push(id);
      },
      backoff: { baseSec: 2, maxSec: 60 },
      audit: { record: (e) => events.push(e) },
      onPending: (n) => pending.push(n),
    });

  let store = await openStore(file);
  await store.createTask({
    id: 't1',
    agent: 'spiffe://taskpass.local/agents/a',
    sub: 'alice',
    purpose: 'p',
    status: 'open',
    createdAt: NOW,
    expiresAt: NOW + 600,
  });
  await store.recordLease(
    { taskId: 't1', path: PATH, leaseId: 'lease-1', issuedAt: NOW, expiresAt: NOW + 300 },
    NOW,
  );
  let revoker = revokerOn(store);
  assert.deepEqual(await revoker.runOnce(), { revoked: 0, failed: 0, pending: 0 }, 'open task: nothing due');

  await store.completeTask('t1', 'completed', NOW + 10, 'completed');
  now = NOW + 10;
  assert.deepEqual(await revoker.runOnce(), { revoked: 0, failed: 1, pending: 1 }, 'Vault down; backing off');
  assert.equal((await store.getLease('t1', PATH))?.dueAt, NOW + 12);
  now = NOW + 12;
  assert.deepEqual(await revoker.runOnce(), { revoked: 0, failed: 1, pending: 1 });
  assert.equal((await store.getLease('t1', PATH))?.dueAt, NOW + 16, 'the wait doubles');
  assert.deepEqual(
    events.map((e) => [e.event, e.lease, e.attempts]),
    [
      ['lease.revoke_failed', 'lease-1', 1],
      ['lease.revoke_failed', 'lease-1', 2],
    ],
  );

  // The broker restarts; Vault is back.
  await store.close();
  store = await openStore(file);
  revoker = revokerOn(store);
  vaultUp = true;
  now = NOW + 16;
  assert.equal(await store.countDueLeases(now), 1, 'the outbox survived the restart');
  assert.deepEqual(await revoker.runOnce(), { revoked: 1, failed: 0, pending: 0 });
  assert.deepEqual(revoked, ['lease-1']);
  assert.equal(await store.getLease('t1', PATH), undefined);
  assert.equal(events.at(-1)?.event, 'lease.revoked');
  assert.deepEqual(pending, [0, 1, 1, 0]);
  await store.close();
});

test("the loop revokes an expired task's lease and reports what is pending; stop waits for the pass", async () => {
  const store = await openStore(':memory:');
  await store.createTask({
    id: 't2',
    agent: 'spiffe://taskpass.local/agents/a',
    sub: 'alice',
    purpose: 'p',
    status: 'open',
    createdAt: NOW - 100,
    expiresAt: NOW - 1,
  });
  // Recorded while the task was open; the task has expired since.
  await store.recordLease(
    { taskId: 't2', path: PATH, leaseId: 'lease-2', issuedAt: NOW - 90, expiresAt: NOW },
    NOW - 90,
  );
  const revoked: string[] = [];
  let pendingSeen: number | undefined;
  let passed = () => {};
  const done = new Promise<void>((r) => {
    passed = r;
  });
  const revoker = new LeaseRevoker({
    store,
    intervalMs: 10,
    revoke: async (id) => {
      revoked.push(id);
    },
    onPending: (n) => {
      pendingSeen = n;
      passed();
    },
  });
  revoker.start();
  // The revoker's timer is unref'd (it never keeps a broker alive): hold the loop while waiting.
  const alive = setInterval(() => {}, 1000);
  await done;
  clearInterval(alive);
  await revoker.stop();
  assert.deepEqual(revoked, ['lease-2']);
  assert.equal(pendingSeen, 0);
  await store.close();
});
