// The ticket desk on PostgreSQL (examples/ticket-desk/tickets-pg.ts) on the local PostgreSQL
// (127.0.0.1:5432, trust auth), without Vault or a broker: the credential a task would lease is a
// database user made by hand with the statements Vault's role runs, handed out by a TaskCredentials
// whose broker is a stub. Each tool call connects as that user and closes its connection after;
// the user reaches the desk's schema and nothing else.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import type { CallAuth, FetchLike } from '@taskpass/verifier';
import { TaskCredentials } from '@taskpass/verifier';
import type pg from 'pg';
import { registerTicketTools } from '../examples/ticket-desk/server.ts';
import type { Ticket } from '../examples/ticket-desk/tickets.ts';
import {
  PgTicketDesk,
  pgQuery,
  setUpDeskDatabase,
  vaultRoleStatements,
} from '../examples/ticket-desk/tickets-pg.ts';

/** A tool's answer: its JSON result, or the text of its error. */
interface Answer {
  error?: string;
  caller?: Record<string, unknown> & { db_user?: string };
  tickets?: { id: string }[];
  ticket?: Ticket;
  deleted?: string;
}

const sql = <T extends pg.QueryResultRow>(text: string, values: unknown[] = [], user = 'postgres') =>
  pgQuery<T>(text, values, { user });

const callAuth = (task: string, tool = 'get_ticket'): CallAuth => ({
  kind: 'call',
  user: 'alice',
  agent: 'spiffe://taskpass.local/agents/support/triage-bot',
  actorChain: ['spiffe://taskpass.local/agents/support/triage-bot'],
  task,
  jti: randomUUID(),
  expiresAt: Math.floor(Date.now() / 1000) + 60,
  clientId: 'spiffe://taskpass.local/agents/support/triage-bot',
  tool,
  resource: 'tickets/T-1001',
  action: 'read',
  singleUse: false,
});

describe('ticket desk on PostgreSQL, as a per-task database user (no Vault)', () => {
  const run = randomUUID().replaceAll('-', '').slice(0, 10);
  const schema = `taskpass_desk_${run}`;
  const user = `v_task_${run}`;
  const stranger = `v_other_${run}`;
  let drop: (() => Promise<void>) | undefined;
  let asked = 0;
  // The broker's answer for the task, as POST /v1/credentials gives it.
  const brokerStub: FetchLike = async (_url, init) => {
    asked++;
    const body = JSON.parse(init.body ?? '{}') as { subject_token: string };
    const task = body.subject_token.split(':')[0];
    if (task === 'task-gone') {
      return {
        ok: false,
        status: 409,
        json: async () => ({ code: 'TASKPASS_TASK_CLOSED', message: 'the task is completed' }),
      };
    }
    return {
      ok: true,
      status: 200,
      json: async () => ({
        task_id: task,
        path: 'database/creds/ticket-desk',
        lease_id: `database/creds/ticket-desk/${run}`,
        lease_duration: 600,
        expires_at: Math.floor(Date.now() / 1000) + 600,
        data: { username: task === 'task-stranger' ? stranger : user, password: 'unused' },
      }),
    };
  };
  const credentials = new TaskCredentials({ brokerUrl: 'https://broker.invalid', fetch: brokerStub });
  const desk = new PgTicketDesk({ schema, credentials });

  before(async () => {
    drop = (await setUpDeskDatabase({ schema })).drop;
    // What Vault's role does for a lease (vaultRoleStatements), with fixed names.
    for (const s of vaultRoleStatements(schema).creation) {
      await sql(
        s
          .replace('{{name}}', user)
          .replace('{{password}}', 'unused')
          .replace('{{expiration}}', new Date(Date.now() + 3_600_000).toISOString()),
      );
    }
    await sql(`CREATE ROLE ${stranger} LOGIN`);
  });

  after(async () => {
    for (const s of vaultRoleStatements(schema).revocation) {
      await sql(s.replace('{{name}}', user)).catch(() => {});
    }
    await sql(`DROP ROLE IF EXISTS ${stranger}`).catch(() => {});
    await drop?.();
  });

  /** An MCP client whose calls reach the tools with this verified caller (as the middleware sets it). */
  async function connect(
    task: string,
  ): Promise<{ call(tool: string, args: object): Promise<Answer>; close(): Promise<void> }> {
    const mcp = new McpServer({ name: 'ticket-desk', version: '1.0.0' });
    registerTicketTools(mcp, desk);
    const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
    const send = clientSide.send.bind(clientSide);
    clientSide.send = (message, options) => {
      const params = (message as { params?: { name?: string } }).params;
      const authInfo: AuthInfo = {
        token: `${task}:${randomUUID()}`,
        clientId: 'spiffe://taskpass.local/agents/support/triage-bot',
        scopes: [],
        extra: { taskpass: callAuth(task, params?.name) },
      };
      return send(message, { ...options, authInfo });
    };
    await mcp.connect(serverSide);
    const client = new Client({ name: 'test', version: '1.0.0' });
    await client.connect(clientSide);
    return {
      async call(tool, args) {
        const r = await client.callTool({ name: tool, arguments: args as Record<string, unknown> });
        const text = (r.content as { text: string }[])[0]?.text ?? '';
        return r.isError ? { error: text } : JSON.parse(text);
      },
      close: async () => {
        await client.close();
        await mcp.close();
      },
    };
  }

  test('every call runs as the task user, reusing the one credential, and leaves no connection open', async () => {
    const c = await connect('task-1');
    try {
      const list = await c.call('list_tickets', {});
      assert.deepEqual(
        list.tickets?.map((t: { id: string }) => t.id),
        ['T-1001', 'T-1002', 'T-1003'],
      );
      assert.equal(list.caller?.db_user, user);
      const got = await c.call('get_ticket', { ticket_id: 'T-1002' });
      assert.equal(got.ticket?.order.amount, 54);
      assert.equal(got.caller?.db_user, user);
      const upd = await c.call('update_ticket', { ticket_id: 'T-1002', comment: 'Looking into it' });
      assert.equal(upd.ticket?.status, 'pending');
      assert.deepEqual(
        upd.ticket?.comments.map((x: { by: string; text: string }) => [x.by, x.text]),
        [['alice via spiffe://taskpass.local/agents/support/triage-bot', 'Looking into it']],
      );
      const refund = await c.call('issue_refund', { ticket_id: 'T-1002', amount: 20 });
      assert.equal(refund.ticket?.order.refunded, 20);
      const tooMuch = await c.call('issue_refund', { ticket_id: 'T-1002', amount: 40 });
      assert.equal(tooMuch.error, 'refund must be between 0 and 34.00');
      assert.equal((await c.call('close_ticket', { ticket_id: 'T-1002' })).ticket?.status, 'closed');
      assert.deepEqual(await c.call('delete_ticket', { ticket_id: 'T-1003' }), {
        deleted: 'T-1003',
        caller: { ...got.caller, resource: 'tickets/T-1001' },
      });
      assert.equal((await c.call('get_ticket', { ticket_id: 'T-1003' })).error, 'no ticket T-1003');
      assert.equal(asked, 1, 'one credential for the whole task');
      const open = await sql('SELECT 1 FROM pg_stat_activity WHERE usename = $1', [user]);
      assert.equal(open.length, 0, 'no connection of the task user is left');
    } finally {
      await c.close();
    }
  });

  test("the task user reaches the desk's schema only; a user without the grant reaches nothing", async () => {
    await assert.rejects(sql(`CREATE TABLE ${schema}.x (i int)`, [], user), /permission denied/);
    await assert.rejects(sql('CREATE TABLE public.x (i int)', [], user), /permission denied/);
    const c = await connect('task-stranger');
    try {
      const r = await c.call('list_tickets', {});
      assert.match(r.error ?? '', /permission denied/);
    } finally {
      await c.close();
    }
  });

  test("the broker's refusal is the tool's error, with its code", async () => {
    const c = await connect('task-gone');
    try {
      const r = await c.call('get_ticket', { ticket_id: 'T-1001' });
      assert.match(r.error ?? '', /^TASKPASS_TASK_CLOSED: /);
    } finally {
      await c.close();
    }
  });
});
