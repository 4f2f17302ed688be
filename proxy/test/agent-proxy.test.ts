// taskpass proxy against a fake broker (agent-plugin's test broker) and REAL MCP servers (the SDK's
// McpServer over stateless Streamable HTTP): tools passed through under prefixes, a call token on
// every forwarded call, refusals and approvals as readable tool errors, the task completed on close
// and after the idle timeout, and the host side over the SDK's own client (in memory and HTTP).
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, request as httpRequest, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { BrokerClient } from '@taskpass/agent-plugin';
import pino from 'pino';
import { z } from 'zod';
import { detailsOf, FakeBroker } from '../../agent-plugin/test/support.ts';
import {
  AgentProxy,
  type AgentProxyDeps,
  createHostServer,
  type ProxyConfigInput,
  parseProxyConfig,
  startProxy,
  userTokenSource,
} from '../src/index.ts';

const TICKETS_AUD = 'https://tickets.test/mcp';
const NOTES_AUD = 'https://notes.test/mcp';
const dir = mkdtempSync(join(tmpdir(), 'taskpass-proxy-test-'));
const tokenFile = join(dir, 'id-token');
writeFileSync(tokenFile, 'user-id-token\n');

interface Seen {
  upstream: string;
  method: string;
  authorization: string | undefined;
}
const seen: Seen[] = [];

function ticketsServer(): McpServer {
  const mcp = new McpServer({ name: 'tickets', version: '1.0.0' });
  mcp.registerTool(
    'get_ticket',
    {
      inputSchema: { ticket_id: z.string() },
      annotations: { readOnlyHint: true },
      _meta: { 'dev.taskpass/resource': 'tickets/{ticket_id}', 'dev.taskpass/action': 'read' },
    },
    async ({ ticket_id }) => ({ content: [{ type: 'text', text: `ticket ${ticket_id}` }] }),
  );
  mcp.registerTool(
    'refund',
    {
      inputSchema: { ticket_id: z.string(), amount: z.number() },
      _meta: { 'dev.taskpass/resource': 'tickets/{ticket_id}', 'dev.taskpass/action': 'write' },
    },
    async ({ ticket_id, amount }) => ({
      content: [{ type: 'text', text: `refunded ${amount} on ${ticket_id}` }],
    }),
  );
  return mcp;
}

function notesServer(): McpServer {
  const mcp = new McpServer({ name: 'notes', version: '1.0.0' });
  mcp.registerTool(
    'get_ticket', // the same name as the ticket desk's: the prefixes keep them apart
    { inputSchema: { note_id: z.string() }, annotations: { readOnlyHint: true } },
    async ({ note_id }) => ({ content: [{ type: 'text', text: `note ${note_id}` }] }),
  );
  return mcp;
}

async function serve(name: string, make: () => McpServer): Promise<{ server: Server; url: string }> {
  const server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    const body: unknown = text ? JSON.parse(text) : undefined;
    for (const m of (Array.isArray(body) ? body : body ? [body] : []) as { method?: string }[]) {
      seen.push({
        upstream: name,
        method: m.method ?? '(response)',
        authorization: req.headers.authorization,
      });
    }
    if (req.method !== 'POST') {
      res.writeHead(405).end();
      return;
    }
    const mcp = make();
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => {
      void transport.close();
      void mcp.close();
    });
    await mcp.connect(transport);
    await transport.handleRequest(req, res, body);
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}/mcp` };
}

let broker: FakeBroker;
let tickets: { server: Server; url: string };
let notes: { server: Server; url: string };

before(async () => {
  broker = await FakeBroker.start({
    ceiling: [
      {
        template: 'tickets-support',
        audience: TICKETS_AUD,
        tools: [
          { tool: 'get_ticket', action: 'read', resources: ['tickets/*'] },
          { tool: 'refund', action: 'write', resources: ['tickets/*'], approval: true },
        ],
      },
    ],
    deny: (body, kind) =>
      kind === 'call' && body.resource === 'tickets/T-FORBIDDEN'
        ? {
            code: 'TASKPASS_DENIED_RESOURCE',
            message: 'The tool and action are allowed, but not on this resource.',
            template: 'tickets-support',
            reason: 'tickets/T-FORBIDDEN is not in tickets-support resources [tickets/T-1*]',
          }
        : undefined,
    needsApproval: (body) => body.tool === 'refund' && body.resource === 'tickets/T-BIG',
  });
  tickets = await serve('tickets', ticketsServer);
  notes = await serve('notes', notesServer);
});
after(async () => {
  for (const s of [tickets.server, notes.server]) {
    s.closeAllConnections();
    s.close();
  }
  await broker.close();
});

function config(extra: Partial<ProxyConfigInput> = {}) {
  return parseProxyConfig({
    purpose: 'answer ticket T-1',
    broker: { url: broker.url, id: 'spiffe://taskpass.local/broker' },
    user: { tokenFile },
    upstreams: { tickets: { url: 'https://tickets.test/mcp', spiffeId: 'spiffe://taskpass.local/tickets' } },
    logLevel: 'silent',
    ...extra,
  });
}

// The network as the tests see it: the fake broker over plain HTTP, each upstream's https URL
// answered by its local server.
function deps(): AgentProxyDeps {
  const local: Record<string, string> = { tickets: tickets.url, notes: notes.url };
  return {
    broker: new BrokerClient({ url: broker.url, auth: { kind: 'none-insecure' } }),
    userToken: userTokenSource({ tokenFile }, {}, () => {}),
    upstreamFetch: (u) => (_url, init) => fetch(local[u.name]!, init),
    logger: pino({ level: 'silent' }),
  };
}

const textOf = (r: CallToolResult) => (r.content[0] as { text: string }).text;
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

// The approval a task's call is waiting for, once the broker was asked.
async function pendingApproval(taskId: string | undefined) {
  for (let i = 0; i < 300; i++) {
    const a = [...broker.approvals.values()].find((x) => x.taskId === taskId && x.view.status === 'pending');
    if (a) return a;
    await sleep(10);
  }
  throw new Error(`task ${taskId} asked for no approval`);
}
const taskOf = (id: string | undefined) => broker.tasks.get(id ?? '');

describe('one upstream', () => {
  test('start opens the task for the user in the token file; tools keep their names; calls carry a call token', async () => {
    const before = seen.length;
    const proxy = new AgentProxy(config(), deps());
    await proxy.start();
    try {
      const open = broker.requestsTo('/v1/tasks').at(-1)!;
      assert.deepEqual(open.body, { purpose: 'answer ticket T-1', user_token: 'user-id-token' });
      assert.equal(taskOf(proxy.taskId)?.status, 'open');
      assert.deepEqual((await proxy.listTools()).map((t) => t.name).sort(), ['get_ticket', 'refund']);

      const r = await proxy.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1' } });
      assert.equal(r.isError, undefined);
      assert.equal(textOf(r), 'ticket T-1');
      const call = seen.slice(before).find((s) => s.method === 'tools/call')!;
      assert.deepEqual(detailsOf(call.authorization), {
        type: 'mcp_tool_call',
        tool: 'get_ticket',
        resource: 'tickets/T-1',
        action: 'read',
      });
      // Everything else (initialize, tools/list) went with the session token, which permits no call.
      for (const s of seen.slice(before).filter((x) => x.method !== 'tools/call')) {
        assert.equal(detailsOf(s.authorization)?.type, 'mcp_session', s.method);
      }
    } finally {
      await proxy.close();
    }
    assert.equal(taskOf(proxy.taskId)?.status, 'completed', 'closing completes the task');
  });

  test('a broker denial is a readable tool error, and the proxy keeps serving', async () => {
    const proxy = new AgentProxy(config(), deps());
    await proxy.start();
    try {
      const r = await proxy.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-FORBIDDEN' } });
      assert.equal(r.isError, true);
      const text = textOf(r);
      assert.match(text, /Taskpass refused the call of get_ticket \(TASKPASS_DENIED_RESOURCE\)/);
      assert.match(text, /Reason: tickets\/T-FORBIDDEN is not in tickets-support resources/);
      assert.match(text, /Template: tickets-support/);
      assert.equal(
        (r._meta?.['dev.taskpass/error'] as { code?: string } | undefined)?.code,
        'TASKPASS_DENIED_RESOURCE',
      );
      assert.equal(
        textOf(await proxy.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-2' } })),
        'ticket T-2',
      );

      const unknown = await proxy.callTool({ name: 'delete_everything', arguments: {} });
      assert.equal(unknown.isError, true);
      assert.match(textOf(unknown), /TASKPASS_PROXY_UNKNOWN_TOOL/);
    } finally {
      await proxy.close();
    }
  });

  test('approvals: fail answers at once with the approval URL and its expiry', async () => {
    const proxy = new AgentProxy(config({ approvals: { mode: 'fail' } }), deps());
    await proxy.start();
    try {
      const r = await proxy.callTool({ name: 'refund', arguments: { ticket_id: 'T-BIG', amount: 500 } });
      assert.equal(r.isError, true);
      const text = textOf(r);
      const approval = (await pendingApproval(proxy.taskId)).view;
      assert.match(text, /needs a person's approval before it can run \(TASKPASS_APPROVAL_REQUIRED\)/);
      assert.ok(text.includes(`Approve at: ${approval.approval_url}`), text);
      assert.ok(text.includes(new Date(approval.expires_at * 1000).toISOString()), text);
      assert.match(text, /Template: shop-refunds/);
    } finally {
      await proxy.close();
    }
  });

  test('approvals: wait tells the host the URL (progress and log notifications), then runs the call once approved', async () => {
    const proxy = new AgentProxy(config({ approvals: { mode: 'wait', timeoutMs: 30_000 } }), deps());
    await proxy.start();
    const [hostSide, proxySide] = InMemoryTransport.createLinkedPair();
    const server = createHostServer(proxy);
    await server.connect(proxySide);
    const host = new Client({ name: 'plain-host', version: '1.0.0' });
    const logged: string[] = [];
    host.fallbackNotificationHandler = async (n) => {
      if (n.method === 'notifications/message') logged.push(String((n.params as { data: unknown }).data));
    };
    await host.connect(hostSide);
    try {
      const progress: string[] = [];
      const pending = host.callTool(
        { name: 'refund', arguments: { ticket_id: 'T-BIG', amount: 250 } },
        undefined,
        {
          onprogress: (p) => {
            if (p.message) progress.push(p.message);
          },
        },
      );
      const approval = await pendingApproval(proxy.taskId);
      for (let i = 0; i < 200 && progress.length === 0; i++) await new Promise((r) => setTimeout(r, 10));
      assert.ok(progress[0]?.includes(approval.view.approval_url), `progress: ${progress}`);
      assert.ok(logged[0]?.includes(approval.view.approval_url), `log: ${logged}`);
      broker.decide(approval.view.id, 'approved');
      const r = (await pending) as CallToolResult;
      assert.equal(r.isError, undefined, textOf(r));
      assert.equal(textOf(r), 'refunded 250 on T-BIG');
    } finally {
      await host.close();
      await proxy.close();
    }
  });

  test('a broker outage is a readable tool error, not a crash', async () => {
    const proxy = new AgentProxy(config(), deps());
    await proxy.start();
    broker.override = (method, path) =>
      method === 'POST' && path.endsWith('/tokens')
        ? { status: 503, body: { code: 'TASKPASS_UNAVAILABLE', message: 'the store is unavailable' } }
        : undefined;
    try {
      const r = await proxy.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-3' } });
      assert.equal(r.isError, true);
      assert.match(textOf(r), /could not be made \(TASKPASS_UNAVAILABLE\)/);
      assert.match(textOf(r), /Reason: the store is unavailable/);
    } finally {
      broker.override = undefined;
      await proxy.close();
    }
  });

  test('after idleTimeoutMs without calls the task is completed; the next call opens a new one', async () => {
    const proxy = new AgentProxy(config({ idleTimeoutMs: 150 }), deps());
    await proxy.start();
    try {
      assert.equal(
        textOf(await proxy.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-4' } })),
        'ticket T-4',
      );
      const first = proxy.taskId;
      await new Promise((r) => setTimeout(r, 100));
      assert.equal(taskOf(first)?.status, 'open', 'not idle yet');
      for (let i = 0; i < 100 && taskOf(first)?.status === 'open'; i++)
        await new Promise((r) => setTimeout(r, 20));
      assert.equal(taskOf(first)?.status, 'completed');
      assert.equal(proxy.hasOpenTask, false);

      const r = await proxy.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-5' } });
      assert.equal(textOf(r), 'ticket T-5');
      assert.notEqual(proxy.taskId, first);
      assert.equal(taskOf(proxy.taskId)?.status, 'open');
    } finally {
      await proxy.close();
    }
  });

  test('a call in flight holds off the idle completion', async () => {
    const proxy = new AgentProxy(
      config({ idleTimeoutMs: 50, approvals: { mode: 'wait', timeoutMs: 30_000 } }),
      deps(),
    );
    await proxy.start();
    try {
      const pending = proxy.callTool({ name: 'refund', arguments: { ticket_id: 'T-BIG', amount: 300 } });
      const approval = await pendingApproval(proxy.taskId);
      await sleep(200); // four idle periods while waiting for the person
      assert.equal(taskOf(proxy.taskId)?.status, 'open');
      broker.decide(approval.view.id, 'approved');
      assert.equal(textOf(await pending), 'refunded 300 on T-BIG');
    } finally {
      await proxy.close();
    }
  });
});

describe('several upstreams', () => {
  const two = () =>
    config({
      upstreams: {
        tickets: {
          url: 'https://tickets.test/mcp',
          spiffeId: 'spiffe://taskpass.local/tickets',
          audience: TICKETS_AUD,
        },
        notes: {
          url: 'https://notes.test/mcp',
          spiffeId: 'spiffe://taskpass.local/notes',
          audience: NOTES_AUD,
        },
      },
    });

  test('tools are exposed as <upstream>.<tool> and each call goes to its server with a token for its audience', async () => {
    const proxy = new AgentProxy(two(), deps());
    await proxy.start();
    try {
      assert.deepEqual((await proxy.listTools()).map((t) => t.name).sort(), [
        'notes.get_ticket',
        'tickets.get_ticket',
        'tickets.refund',
      ]);
      const before = seen.length;
      assert.equal(
        textOf(await proxy.callTool({ name: 'tickets.get_ticket', arguments: { ticket_id: 'T-6' } })),
        'ticket T-6',
      );
      const call = seen.slice(before).find((s) => s.method === 'tools/call')!;
      assert.equal(call.upstream, 'tickets');
      assert.equal(detailsOf(call.authorization)?.tool, 'get_ticket', 'the upstream sees its own tool name');
      // The notes server publishes no hint and nothing is declared: refused before anything is sent.
      const r = await proxy.callTool({ name: 'notes.get_ticket', arguments: { note_id: 'n-1' } });
      assert.equal(r.isError, true);
      assert.match(textOf(r), /TASKPASS_AGENT_NO_RESOURCE_MAPPER/);
    } finally {
      await proxy.close();
    }
  });

  test('two upstreams exposing the same name fail the start, naming both', async () => {
    // The file check refuses equal prefixes, but distinct ones can still collide ("x." + "get_ticket"
    // and "x.get_" + "ticket"): the listing is the last check. Equal prefixes set after parsing reach it.
    const c = two();
    c.upstreams[0]!.prefix = 'x.';
    c.upstreams[1]!.prefix = 'x.';
    const proxy = new AgentProxy(c, deps());
    await assert.rejects(proxy.start(), (e: Error & { code?: string }) => {
      assert.equal(e.code, 'TASKPASS_PROXY_CONFIG_INVALID');
      assert.match(
        e.message,
        /"x\.get_ticket" is "get_ticket" of upstreams\.tickets and "get_ticket" of upstreams\.notes/,
      );
      return true;
    });
    assert.equal(taskOf(proxy.taskId)?.status, 'cancelled', 'the failed start cancelled its task');
    await proxy.close();
  });
});

describe('HTTP mode (loopback)', () => {
  test('a plain SDK client lists and calls; a foreign Origin or Host is refused', async () => {
    const running = await startProxy(config({ http: { host: '127.0.0.1', port: 0 } }), {
      deps: deps(),
      logger: pino({ level: 'silent' }),
    });
    try {
      assert.match(running.url!, /^http:\/\/127\.0\.0\.1:\d+\/mcp$/);
      const host = new Client({ name: 'plain-host', version: '1.0.0' });
      await host.connect(new StreamableHTTPClientTransport(new URL(running.url!)));
      assert.deepEqual((await host.listTools()).tools.map((t) => t.name).sort(), ['get_ticket', 'refund']);
      const r = (await host.callTool({
        name: 'get_ticket',
        arguments: { ticket_id: 'T-7' },
      })) as CallToolResult;
      assert.equal(textOf(r), 'ticket T-7');
      await host.close();

      const body = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list' });
      const headers = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
      const evil = await fetch(running.url!, {
        method: 'POST',
        body,
        headers: { ...headers, origin: 'https://evil.example' },
      });
      assert.equal(evil.status, 403);
      assert.equal(((await evil.json()) as { code: string }).code, 'TASKPASS_PROXY_FORBIDDEN_ORIGIN');
      // DNS rebinding: a name that resolved to 127.0.0.1 still arrives with its own Host.
      const port = new URL(running.url!).port;
      const rebound = await new Promise<number>((resolve, reject) => {
        const req = httpRequest(
          {
            host: '127.0.0.1',
            port,
            path: '/mcp',
            method: 'POST',
            headers: { ...headers, host: `evil.example:${port}` },
          },
          (res) => resolve(res.statusCode ?? 0),
        );
        req.on('error', reject);
        req.end(body);
      });
      assert.equal(rebound, 403);
    } finally {
      await running.close();
    }
  });
});
