// MCP TypeScript SDK 2.x end to end on real SPIRE: the stack of examples/stack.ts (SPIRE, IdP,
// broker with ./policies, the SDK 1.x ticket desk) plus the same ticket desk on SDK 2.x
// (@modelcontextprotocol/server + /node) with requireMcpHeaders. An agent on
// @modelcontextprotocol/client 2.x with the agent plugin's taskpassFetch calls both through the
// broker, over mTLS with its X.509-SVID: allowed and denied calls, the 2026-07-28 standard headers,
// and no MCP session anywhere (the task travels in the token).
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Client, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { Client as ClientV1 } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport as StreamableHTTPClientTransportV1 } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { type BrokerClient, type Task, TaskpassDeniedError, taskpassFetch } from '@taskpass/agent-plugin';
import { type Agent, fetch as undiciFetch } from 'undici';
import { ALICE, type Stack, startStack } from '../examples/stack.ts';
import { type RunningTicketDesk, startTicketDesk } from '../examples/ticket-desk/server.ts';
import { assertAccepted, rawToolCall } from './support/mcp-raw.ts';
import { agentSide } from './support/workloads.ts';

interface Sent {
  method: string | undefined;
  mcpMethod: string | null;
  mcpName: string | null;
  sessionSent: string | null;
  sessionAnswered: string | null;
  status: number;
}

describe('SDK 2.x server and client with Taskpass (real SPIRE, HTTPS with mTLS)', () => {
  let stack: Stack;
  let asAgent: Agent;
  let broker: BrokerClient;
  let v2: RunningTicketDesk;
  const cleanups: (() => Promise<unknown>)[] = [];

  before(async () => {
    stack = await startStack({ brokerLogLevel: 'warn' });
    const agent = await agentSide(stack);
    cleanups.push(() => agent.close());
    ({ toDesk: asAgent, broker } = agent);
    // The same desk software on SDK 2.x, for the same resource URI, refusing requests without the
    // 2026-07-28 standard headers.
    v2 = await startTicketDesk({
      workloadApiAddress: stack.spire.address,
      hint: stack.hints.tickets,
      brokerUrl: stack.urls.broker,
      brokerIssuer: stack.issuer,
      brokerId: stack.ids.broker,
      audience: stack.audience,
      sdk: 'v2',
      requireMcpHeaders: true,
    });
    cleanups.push(() => v2.close());
  });

  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    await stack?.stop();
  });

  const openTask = async (purpose: string): Promise<Task> =>
    broker.openTask({ purpose, userToken: await stack.userToken(ALICE), ttlSeconds: 300 });

  /** A 2.x client with taskpassFetch over the agent's mTLS connection, recording what went out. */
  function agentClient(task: Task, mcpUrl: string, mode: 'auto' | 'legacy' | '2026-07-28') {
    const sent: Sent[] = [];
    const transport = new StreamableHTTPClientTransport(new URL(mcpUrl), {
      fetch: taskpassFetch(task, {
        audience: stack.audience,
        fetch: async (url, init) => {
          const res = (await undiciFetch(url, {
            ...(init as object),
            dispatcher: asAgent,
          })) as unknown as Response;
          const h = new Headers(init?.headers);
          const body =
            typeof init?.body === 'string' ? (JSON.parse(init.body) as { method?: string }) : undefined;
          sent.push({
            method: body?.method,
            mcpMethod: h.get('mcp-method'),
            mcpName: h.get('mcp-name'),
            sessionSent: h.get('mcp-session-id'),
            sessionAnswered: res.headers.get('mcp-session-id'),
            status: res.status,
          });
          return res;
        },
      }),
    });
    const client = new Client(
      { name: 'triage-bot', version: '2.0.0' },
      mode === 'legacy'
        ? {}
        : { versionNegotiation: { mode: mode === 'auto' ? 'auto' : { pin: '2026-07-28' } } },
    );
    // Closed in after() too, so a failed test leaves no open exchange behind.
    cleanups.push(() => client.close());
    return { client, transport, sent };
  }

  const outputOf = (r: Awaited<ReturnType<Client['callTool']>>) =>
    JSON.parse((r.content as { text: string }[])[0]!.text) as {
      ticket?: { id: string };
      caller?: { user: string; agent: string; task: string };
    };

  test('2.x client → 2.x server (2026-07-28): allowed, the caller verified; denied by the broker; no session, no initialize', async () => {
    await using task = await openTask('read T-1001 on the 2.x desk');
    const { client, transport, sent } = agentClient(task, v2.mcpUrl, '2026-07-28');
    await client.connect(transport);
    // No declarations: the plugin learns the resource/action hints from tools/list as it passes.
    await client.listTools();
    const r = await client.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1001' } });
    assert.equal(r.isError, undefined);
    const out = outputOf(r);
    assert.equal(out.ticket?.id, 'T-1001');
    assert.deepEqual(
      { user: out.caller?.user, agent: out.caller?.agent, task: out.caller?.task },
      { user: ALICE.sub, agent: stack.ids.agent, task: task.id },
    );

    await assert.rejects(
      client.callTool({ name: 'delete_ticket', arguments: { ticket_id: 'T-1001' } }),
      (e: unknown) => e instanceof TaskpassDeniedError && /^TASKPASS_DENIED_/.test(e.code),
    );
    assert.equal(v2.desk.get('T-1001').id, 'T-1001', 'nothing was deleted');

    // Every POST carried the standard headers; nothing carried or created an MCP session.
    assert.ok(sent.length > 0);
    for (const s of sent) {
      assert.equal(s.mcpMethod, s.method ?? null, JSON.stringify(s));
      assert.equal(s.sessionSent, null);
      assert.equal(s.sessionAnswered, null);
    }
    assert.ok(sent.some((s) => s.method === 'tools/call' && s.mcpName === 'get_ticket'));
    assert.ok(!sent.some((s) => s.method === 'initialize'), 'a 2026-07-28 exchange has no initialize');
    await client.close();
    await task.complete();
  });

  test('one 2.x client configuration (mode auto) calls both servers: 2026-07-28 on 2.x, the 2025 protocol on 1.x', async () => {
    await using task = await openTask('read T-1002 on both desks');
    for (const [desk, url, initialize] of [
      ['v2', v2.mcpUrl, false],
      ['v1', stack.urls.mcp, true],
    ] as const) {
      const { client, transport, sent } = agentClient(task, url, 'auto');
      await client.connect(transport);
      await client.listTools();
      const r = await client.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1002' } });
      assert.equal(r.isError, undefined, desk);
      assert.equal(outputOf(r).caller?.agent, stack.ids.agent, desk);
      await assert.rejects(
        client.callTool({ name: 'delete_ticket', arguments: { ticket_id: 'T-1002' } }),
        TaskpassDeniedError,
        desk,
      );
      assert.equal(
        sent.some((s) => s.method === 'initialize'),
        initialize,
        `${desk}: ${JSON.stringify(sent.map((s) => s.method))}`,
      );
      // The plugin sends the headers to the 1.x server too (they are harmless there); never a session.
      for (const s of sent) {
        assert.equal(s.mcpMethod, s.method ?? null, `${desk} ${JSON.stringify(s)}`);
        assert.equal(s.sessionAnswered, null, desk);
      }
      await client.close();
    }
    await task.complete();
  });

  test('2.x client in its default 2025 mode, with the plugin, works against the header-requiring 2.x desk', async () => {
    await using task = await openTask('read T-1003 on the 2.x desk');
    const { client, transport, sent } = agentClient(task, v2.mcpUrl, 'legacy');
    await client.connect(transport);
    await client.listTools();
    const r = await client.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1003' } });
    assert.equal(r.isError, undefined);
    // The SDK sent initialize without the standard headers; the plugin added them.
    assert.ok(sent.some((s) => s.method === 'initialize' && s.mcpMethod === 'initialize'));
    await client.close();
    await task.complete();
  });

  test('1.x client with the plugin → the header-requiring 2.x desk (2025 protocol): allowed and denied', async () => {
    await using task = await openTask('read T-1001 on the 2.x desk');
    const client = new ClientV1({ name: 'triage-bot', version: '1.0.0' });
    cleanups.push(() => client.close());
    const transport = new StreamableHTTPClientTransportV1(new URL(v2.mcpUrl), {
      fetch: taskpassFetch(task, {
        audience: stack.audience,
        fetch: async (url, init) =>
          (await undiciFetch(url, { ...(init as object), dispatcher: asAgent })) as unknown as Response,
      }),
    });
    await client.connect(transport);
    await client.listTools();
    const r = await client.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1001' } });
    assert.equal(r.isError, undefined, JSON.stringify(r.content));
    assert.equal(
      (JSON.parse((r.content as { text: string }[])[0]!.text) as { caller: { agent: string } }).caller.agent,
      stack.ids.agent,
    );
    await assert.rejects(
      client.callTool({ name: 'delete_ticket', arguments: { ticket_id: 'T-1001' } }),
      TaskpassDeniedError,
    );
    await client.close();
    await task.complete();
  });

  test('the 2.x desk refuses a call without the standard headers or with disagreeing ones (-32020), before the token is spent', async () => {
    await using task = await openTask('read T-1001, raw');
    const token = (
      await task.token({
        audience: stack.audience,
        tool: 'get_ticket',
        resource: 'tickets/T-1001',
        action: 'read',
      })
    ).accessToken;
    const args = { ticket_id: 'T-1001' };
    const variants: Record<string, string>[] = [
      {},
      { 'mcp-method': 'tools/call' },
      { 'mcp-method': 'tools/call', 'mcp-name': 'delete_ticket' },
      { 'mcp-method': 'tools/list', 'mcp-name': 'get_ticket' },
    ];
    for (const headers of variants) {
      const r = await rawToolCall(asAgent, v2.mcpUrl, token, 'get_ticket', args, headers);
      assert.equal(r.status, 400, JSON.stringify(headers));
      const err = r.rpcError as { code: number; data: { code: string } };
      assert.equal(err.code, -32020);
      assert.equal(err.data.code, 'TASKPASS_VERIFY_HEADER_MISMATCH');
    }
    // The same token, with the right headers, still works (single use is spent only by a call that passed).
    assertAccepted(
      await rawToolCall(asAgent, v2.mcpUrl, token, 'get_ticket', args, {
        'mcp-method': 'tools/call',
        'mcp-name': 'get_ticket',
      }),
    );
    // The 1.x desk (requireMcpHeaders off) takes the headerless call, and refuses a disagreeing header.
    const v1Token = (
      await task.token({
        audience: stack.audience,
        tool: 'get_ticket',
        resource: 'tickets/T-1001',
        action: 'read',
      })
    ).accessToken;
    const bad = await rawToolCall(asAgent, stack.urls.mcp, v1Token, 'get_ticket', args, {
      'mcp-name': 'close_ticket',
    });
    assert.equal(bad.status, 400);
    assertAccepted(await rawToolCall(asAgent, stack.urls.mcp, v1Token, 'get_ticket', args));
    await task.complete();
  });
});
