// Downstream credentials leased to a task (issue #12, docs/vault.md) on a real Vault server (built by
// scripts/build-vault.mjs) whose database secrets engine creates users in the local PostgreSQL
// (127.0.0.1:5432, trust auth): a per-task database user exists while the task is open and is gone
// once the task ended and the revocation outbox ran; a revocation that failed while Vault was down
// completes after Vault is back and after a broker restart (a fresh store on the same file).
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import {
  BrokerError,
  type LeasedCredential,
  LeasedCredentials,
  LeaseRevoker,
  SqliteStore,
  type TaskRecord,
  VaultClient,
} from '@taskpass/broker';
import { pgQuery, pgRoleExists } from '../examples/ticket-desk/tickets-pg.ts';
import { type OwnVault, startVault } from '../harness/vault.ts';

const ROLE_PATH = 'database/creds/ticket-desk';
const sql = pgQuery;
const roleExists = (name: string) => pgRoleExists(name);

describe('Vault leases on a task (real Vault, real PostgreSQL)', () => {
  let vault: OwnVault;
  let client: VaultClient;
  let dir: string;
  let store: SqliteStore;
  // Vault's own connection user for this run (trust auth: the password is not checked here).
  const admin = `taskpass_vault_${randomUUID().replaceAll('-', '').slice(0, 12)}`;
  const nowSec = () => Math.floor(Date.now() / 1000);

  const openTask = async (ttl = 600): Promise<TaskRecord> => {
    const t: TaskRecord = {
      id: `task-${randomUUID()}`,
      agent: 'spiffe://taskpass.local/agents/support/a1',
      sub: 'alice',
      purpose: 'answer ticket T-1',
      status: 'open',
      createdAt: nowSec(),
      expiresAt: nowSec() + ttl,
    };
    await store.createTask(t);
    return t;
  };
  const credentials = () => new LeasedCredentials({ store, vault: client });
  const revoker = () => new LeaseRevoker({ store, revoke: (id) => client.revokeLease(id) });
  const created = new Set<string>();
  const username = (c: LeasedCredential) => {
    const name = String(c.data.username);
    created.add(name);
    return name;
  };

  before(async () => {
    await sql(`CREATE ROLE ${admin} WITH LOGIN CREATEROLE PASSWORD 'unused'`);
    vault = await startVault();
    await vault.api('POST', 'sys/mounts/database', { type: 'database' });
    await vault.api('POST', 'database/config/taskpass-pg', {
      plugin_name: 'postgresql-database-plugin',
      connection_url: 'postgresql://{{username}}:{{password}}@127.0.0.1:5432/postgres?sslmode=disable',
      username: admin,
      password: 'unused',
      allowed_roles: 'ticket-desk',
    });
    await vault.api('POST', 'database/roles/ticket-desk', {
      db_name: 'taskpass-pg',
      creation_statements: [
        `CREATE ROLE "{{name}}" WITH LOGIN PASSWORD '{{password}}' VALID UNTIL '{{expiration}}';`,
      ],
      default_ttl: '1h',
      max_ttl: '2h',
    });
    client = await VaultClient.connect({
      address: vault.address,
      auth: { method: 'token', token: vault.rootToken },
    });
    dir = mkdtempSync(join(tmpdir(), 'taskpass-leases-e2e-'));
    store = new SqliteStore({ path: join(dir, 'broker.db') });
    await store.init();
  });

  after(async () => {
    client?.close();
    await store?.close();
    await vault?.stop();
    if (dir) rmSync(dir, { recursive: true, force: true });
    // Users Vault created for this run and did not drop (a failed test); the database is shared.
    for (const name of created) await sql(`DROP ROLE IF EXISTS "${name}"`).catch(() => {});
    await sql(`DROP ROLE IF EXISTS ${admin}`);
  });

  test('a leased database user exists during the task, once per task and path, and is gone after complete', async () => {
    const task = await openTask(600);
    const c = await credentials().issue(task, ROLE_PATH, nowSec());
    assert.ok(await roleExists(username(c)), 'the per-task user exists in PostgreSQL');
    assert.ok(c.expiresAt <= task.expiresAt, "the lease is no longer than the task's time left");
    await assert.rejects(
      credentials().issue(task, ROLE_PATH, nowSec()),
      (e: unknown) => e instanceof BrokerError && e.code === 'TASKPASS_CREDENTIAL_ALREADY_ISSUED',
    );

    await store.completeTask(task.id, 'completed', nowSec(), 'completed');
    assert.deepEqual(await revoker().runOnce(), { revoked: 1, failed: 0, pending: 0 });
    assert.equal(await roleExists(username(c)), false, 'the user was dropped with its lease');
    await assert.rejects(
      credentials().issue((await store.getTask(task.id))!, ROLE_PATH, nowSec()),
      (e: unknown) => e instanceof BrokerError && e.code === 'TASKPASS_TASK_CLOSED',
    );
    // A request that read the task while it was open, and came after its end: the lease Vault made
    // for it is revoked at once, and nothing is handed out.
    const before = await sql('SELECT rolname FROM pg_roles');
    await assert.rejects(
      credentials().issue(task, ROLE_PATH, nowSec()),
      (e: unknown) => e instanceof BrokerError && e.code === 'TASKPASS_TASK_CLOSED',
    );
    assert.deepEqual(await sql('SELECT rolname FROM pg_roles'), before, 'no user left behind');
  });

  test('a revocation that failed while Vault was down completes after Vault returns and a broker restart', async () => {
    const task = await openTask(600);
    const c = await credentials().issue(task, ROLE_PATH, nowSec());
    await vault.kill();
    await store.completeTask(task.id, 'cancelled', nowSec(), 'cancelled');
    assert.deepEqual(await revoker().runOnce(), { revoked: 0, failed: 1, pending: 1 });
    assert.ok(await roleExists(username(c)), 'Vault is down: the user is still there');

    // The broker restarts (a new store on the same file), then Vault comes back.
    await store.close();
    store = new SqliteStore({ path: join(dir, 'broker.db') });
    await store.init();
    await vault.restart();
    const lease = await store.getLease(task.id, ROLE_PATH);
    assert.equal(lease?.attempts, 1);
    // The attempt after the backoff (taken as now, without waiting for it).
    const r = new LeaseRevoker({ store, now: () => lease!.dueAt, revoke: (id) => client.revokeLease(id) });
    assert.deepEqual(await r.runOnce(), { revoked: 1, failed: 0, pending: 0 });
    assert.equal(await roleExists(username(c)), false);
  });

  test('Vault down when a credential is asked: refused with its code, nothing recorded', async () => {
    const task = await openTask(600);
    await vault.kill();
    try {
      await assert.rejects(
        credentials().issue(task, ROLE_PATH, nowSec()),
        (e: unknown) => e instanceof BrokerError && e.code === 'TASKPASS_CREDENTIAL_UNAVAILABLE',
      );
      assert.equal(await store.getLease(task.id, ROLE_PATH), undefined);
    } finally {
      await vault.restart();
    }
  });
});
