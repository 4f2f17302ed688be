// The ticket desk on PostgreSQL with per-task database users leased from Vault (issue #12,
// docs/vault.md), end to end on real SPIRE, a real Vault (scripts/build-vault.mjs) and the local
// PostgreSQL (127.0.0.1:5432, trust auth): the stack with `vault: true` signs with Transit, and the
// desk exchanges each verified call token at the broker's POST /v1/credentials (over mTLS with its
// SVID) for its task's database user. First, Vault's database role for the desk on its own (the
// statements the operator gives it), without a broker.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import type { BrokerClient, Task } from '@taskpass/agent-plugin';
import { createMtlsAgent, matchId, type TlsSource } from '@taskpass/spiffe';
import type { X509Source } from '@taskpass/spiffe/workload';
import { type CallAuth, type FetchLike, TaskCredentials } from '@taskpass/verifier';
import { type Agent, fetch as undiciFetch } from 'undici';
import { PgTicketDesk, pgQuery, pgRoleExists } from '../examples/ticket-desk/tickets-pg.ts';
import { type Stack, startStack } from '../examples/stack.ts';
import { assertAccepted, rawToolCall } from './support/mcp-raw.ts';
import { DESK_SECRET_PATH, type DeskDatabase, setUpDeskDatabaseEngine } from '../examples/vault-setup.ts';
import { pollUntil } from '../harness/poll.ts';
import { type OwnVault, startVault } from '../harness/vault.ts';
import { agentSide, registerWorkload } from './support/workloads.ts';

const sql = pgQuery;
const roleExists = (name: string) => pgRoleExists(name);

/** Polls until the role is gone (the broker's revoker runs every 2 s); the ms it took, or undefined. */
async function goneWithin(name: string, ms: number): Promise<number | undefined> {
  const t0 = performance.now();
  while (performance.now() - t0 < ms) {
    if (!(await roleExists(name))) return performance.now() - t0;
    await new Promise((r) => setTimeout(r, 100));
  }
  return undefined;
}

/** Vault's leases under the desk's path (root may list them). */
async function vaultLeases(vault: OwnVault): Promise<string[]> {
  try {
    const r = (await vault.api('GET', `sys/leases/lookup/${DESK_SECRET_PATH}?list=true`)) as {
      data?: { keys?: string[] };
    };
    return r.data?.keys ?? [];
  } catch (e) {
    if (/HTTP 404/.test((e as Error).message)) return [];
    throw e;
  }
}

describe("Vault's database role for the desk (real Vault, real PostgreSQL, no broker)", () => {
  let vault: OwnVault;
  let db: DeskDatabase;

  before(async () => {
    vault = await startVault();
    db = await setUpDeskDatabaseEngine(vault);
  });
  after(async () => {
    await db?.drop();
    await vault?.stop();
    if (db) {
      assert.equal((await sql('SELECT 1 FROM pg_namespace WHERE nspname = $1', [db.schema])).length, 0);
      assert.equal(await roleExists(db.adminRole), false, "Vault's admin user was dropped");
    }
  });

  test('a leased user reads and writes the desk as a member of its role, and is dropped when its lease is revoked', async () => {
    const lease = (await vault.api('GET', DESK_SECRET_PATH)) as {
      lease_id: string;
      lease_duration: number;
      data: { username: string; password: string };
    };
    const user = lease.data.username;
    assert.ok(await roleExists(user));
    const member = await sql(
      `SELECT 1 FROM pg_auth_members a JOIN pg_roles g ON g.oid = a.roleid JOIN pg_roles m ON m.oid = a.member
        WHERE g.rolname = $1 AND m.rolname = $2`,
      [`${db.schema}_desk`, user],
    );
    assert.equal(member.length, 1, "the user is a member of the desk's role");

    // The desk as that user, the credential handed out by a broker stub.
    const stub: FetchLike = async () => ({
      ok: true,
      status: 200,
      json: async () => ({
        task_id: 'task-1',
        path: DESK_SECRET_PATH,
        lease_id: lease.lease_id,
        lease_duration: lease.lease_duration,
        expires_at: Math.floor(Date.now() / 1000) + lease.lease_duration,
        data: lease.data,
      }),
    });
    const desk = new PgTicketDesk({
      schema: db.schema,
      credentials: new TaskCredentials({ brokerUrl: 'https://broker.invalid', fetch: stub }),
    });
    const auth = { kind: 'call', task: 'task-1', jti: 'j1' } as CallAuth;
    const s = await desk.open({ token: 't', auth });
    try {
      assert.equal(s.dbUser, user);
      const t = await s.ops.comment('T-1001', 'alice via agent', 'on it');
      assert.equal(t.status, 'pending');
    } finally {
      await s.close();
    }

    await vault.api('PUT', 'sys/leases/revoke', { lease_id: lease.lease_id });
    assert.equal(await roleExists(user), false, 'revoking the lease dropped the user');
  });
});

describe('ticket desk on PostgreSQL as per-task users leased through the broker (real SPIRE, Vault, PostgreSQL)', () => {
  let stack: Stack;
  let broker: BrokerClient;
  let asAgent: Agent;
  let agentSource: X509Source;
  const cleanups: (() => Promise<unknown>)[] = [];

  before(async () => {
    stack = await startStack({ vault: true, brokerLogLevel: 'silent' });
    cleanups.push(() => stack.stop());
    const agent = await agentSide(stack);
    cleanups.push(() => agent.close());
    ({ toDesk: asAgent, broker, source: agentSource } = agent);
  });
  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
  });

  /** Waits until the broker's gauge of pending lease revocations (set after each revoker pass) reads `n`. */
  const pendingLeases = (n: number, timeoutMs: number) =>
    pollUntil(`taskpass_vault_leases_pending ${n}`, timeoutMs, 200, async () => {
      const text = (await stack.broker.app.inject('/metrics')).body;
      return new RegExp(`^taskpass_vault_leases_pending ${n}$`, 'm').test(text) ? true : undefined;
    });
  const openTask = (purpose: string): Promise<Task> =>
    stack.userToken().then((userToken) => broker.openTask({ purpose, userToken, ttlSeconds: 600 }));
  const deskCall = async (task: Task, ticket: string) => {
    const t = await broker.callToken(task.id, {
      audience: stack.audience,
      tool: 'get_ticket',
      resource: `tickets/${ticket}`,
      action: 'read',
    });
    return {
      token: t.accessToken,
      result: await rawToolCall(asAgent, stack.urls.mcp, t.accessToken, 'get_ticket', { ticket_id: ticket }),
    };
  };
  const dbUserOf = (r: Awaited<ReturnType<typeof deskCall>>) =>
    (assertAccepted(r.result).caller as { db_user?: string } | undefined)?.db_user;

  test('a call runs as a per-task database user that exists during the task and is gone after complete; the next call reuses it', async () => {
    const task = await openTask('vault desk e2e');
    const first = dbUserOf(await deskCall(task, 'T-1002'));
    assert.ok(first, 'the desk reports the database user the call ran as');
    assert.ok(await roleExists(first), 'the per-task user exists during the task');
    assert.equal(
      dbUserOf(await deskCall(task, 'T-1001')),
      first,
      'the second call reused the cached credential',
    );
    assert.equal(stack.tickets.credentials?.size, 1);

    // Another task: another user.
    const other = await openTask('vault desk e2e, another task');
    const second = dbUserOf(await deskCall(other, 'T-1002'));
    assert.ok(second && second !== first, 'each task has its own database user');

    await task.complete();
    assert.ok((await goneWithin(first, 10_000)) !== undefined, 'the user was dropped after complete');
    assert.ok(await roleExists(second), "the other task's user stays while that task is open");
    await other.complete();
    assert.ok((await goneWithin(second, 10_000)) !== undefined);
  });

  test('a workload that is not the token audience gets TASKPASS_CREDENTIAL_FORBIDDEN and no lease is recorded', async () => {
    const task = await openTask('vault desk e2e, forbidden');
    const t = await broker.callToken(task.id, {
      audience: stack.audience,
      tool: 'get_ticket',
      resource: 'tickets/T-1003',
      action: 'read',
    });
    const notes = await registerWorkload(stack, {
      spiffeId: 'spiffe://taskpass.local/mcp/notes',
      hint: 'notes',
      entryId: 'taskpass-4-notes',
    });
    cleanups.push(() => notes.close());
    const leasesBefore = await vaultLeases(stack.vault!);
    for (const source of [agentSource, notes]) {
      const toBroker = createMtlsAgent(source as TlsSource, matchId(stack.ids.broker));
      try {
        const res = await undiciFetch(`${stack.urls.broker}/v1/credentials`, {
          method: 'POST',
          dispatcher: toBroker,
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ subject_token: t.accessToken, path: DESK_SECRET_PATH }),
        });
        const body = (await res.json()) as { code?: string; data?: unknown };
        assert.equal(res.status, 403, `${source.getX509Svid().id}: ${JSON.stringify(body.code)}`);
        assert.equal(body.code, 'TASKPASS_CREDENTIAL_FORBIDDEN');
        assert.equal(body.data, undefined);
      } finally {
        await toBroker.close();
      }
    }
    assert.deepEqual(await vaultLeases(stack.vault!), leasesBefore, 'Vault leased nothing');
    // Nothing was recorded for the task: the desk, the token's audience, still gets its one credential.
    const r = await rawToolCall(asAgent, stack.urls.mcp, t.accessToken, 'get_ticket', {
      ticket_id: 'T-1003',
    });
    const user = (assertAccepted(r).caller as { db_user?: string } | undefined)?.db_user;
    assert.ok(user && (await roleExists(user)));
    await task.complete();
    assert.ok((await goneWithin(user, 10_000)) !== undefined);
  });

  test('a lease of a task ended while Vault is down stays pending (gauge, user kept) and is revoked once Vault is back', async () => {
    const task = await openTask('vault desk e2e, Vault outage');
    const user = dbUserOf(await deskCall(task, 'T-1001'));
    assert.ok(user && (await roleExists(user)));
    const vault = stack.vault!;
    await vault.kill();
    try {
      await task.complete();
      // The revoker's pass after complete fails, puts the lease back with backoff and reports it.
      await pendingLeases(1, 10_000);
      assert.ok(await roleExists(user), 'the user is still there: nobody could revoke it');
    } finally {
      await vault.restart();
    }
    assert.ok((await goneWithin(user, 20_000)) !== undefined, 'revoked at the next attempt');
    await pendingLeases(0, 10_000);
  });
});
