// taskpassFetch in front of a REAL McpServer + StreamableHTTPServerTransport (stateless) on
// node:http, driven by the SDK Client. A small check in front of the server records, per JSON-RPC
// method, the Authorization header that reached it.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { decodeJwt } from 'jose';
import { z } from 'zod';
import {
  AgentPluginError,
  argsSha256,
  BrokerClient,
  META_TOKEN,
  type Task,
  TaskpassDeniedError,
  type ToolDeclarations,
  taskpassCallTool,
  taskpassFetch,
  withCallToken,
} from '../src/index.ts';
import { detailsOf, FakeBroker } from './support.ts';

const AUD = 'https://tickets.test/mcp';

interface Seen {
  http: string;
  method: string;
  authorization: string | undefined;
}

function mcpServer(): McpServer {
  const mcp = new McpServer({ name: 'tickets', version: '1.0.0' });
  // Declared by the agent author in the tests (no hint).
  mcp.registerTool(
    'get_ticket',
    { inputSchema: { ticket_id: z.string() }, annotations: { readOnlyHint: true } },
    async ({ ticket_id }) => ({
      content: [{ type: 'text', text: `ticket ${ticket_id}` }],
    }),
  );
  // Server-published hints (docs/design.md §6).
  mcp.registerTool(
    'close_ticket',
    {
      inputSchema: { ticket_id: z.string() },
      _meta: { 'dev.taskpass/resource': 'tickets/{ticket_id}', 'dev.taskpass/action': 'write' },
    },
    async ({ ticket_id }) => ({ content: [{ type: 'text', text: `closed ${ticket_id}` }] }),
  );
  mcp.registerTool(
    'list_comments',
    {
      inputSchema: { ticket: z.object({ id: z.string() }) },
      annotations: { readOnlyHint: true },
      _meta: { 'dev.taskpass/resource': 'tickets/{ticket.id}/comments' },
    },
    async ({ ticket }) => ({ content: [{ type: 'text', text: `comments of ${ticket.id}` }] }),
  );
  mcp.registerTool('echo_meta', { inputSchema: { ticket_id: z.string() } }, async (_args, extra) => ({
    content: [{ type: 'text', text: JSON.stringify(extra._meta ?? {}) }],
  }));
  return mcp;
}

let broker: FakeBroker;
let http: Server;
let endpoint: URL;
let json = false; // enableJsonResponse of the next server transports
const seen: Seen[] = [];

before(async () => {
  broker = await FakeBroker.start({
    deny: (body, kind) =>
      kind === 'call' && body.resource === 'tickets/FORBIDDEN'
        ? {
            code: 'TASKPASS_DENIED_RESOURCE',
            message: 'The tool and action are allowed, but not on this resource.',
            template: 'tickets-support',
            reason: 'tickets/FORBIDDEN is not in tickets-support resources [tickets/T-*]',
          }
        : undefined,
  });
  http = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    const body: unknown = text ? JSON.parse(text) : undefined;
    const msgs = (Array.isArray(body) ? body : body ? [body] : []) as { method?: string }[];
    for (const m of msgs)
      seen.push({
        http: req.method ?? '',
        method: m.method ?? '(response)',
        authorization: req.headers.authorization,
      });
    if (msgs.length === 0)
      seen.push({ http: req.method ?? '', method: '', authorization: req.headers.authorization });
    if (req.method !== 'POST') {
      res.writeHead(405).end(); // stateless: no standalone SSE stream, no session to delete
      return;
    }
    const mcp = mcpServer();
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: undefined,
      enableJsonResponse: json,
    });
    res.on('close', () => {
      void transport.close();
      void mcp.close();
    });
    await mcp.connect(transport);
    await transport.handleRequest(req, res, body);
  });
  await new Promise<void>((r) => http.listen(0, '127.0.0.1', r));
  endpoint = new URL(`http://127.0.0.1:${(http.address() as AddressInfo).port}/mcp`);
});
after(async () => {
  http.closeAllConnections();
  http.close();
  await broker.close();
});

const declared: ToolDeclarations = { get_ticket: { resource: 'tickets/{ticket_id}', action: 'read' } };

async function connect(task: Task, opts: Partial<Parameters<typeof taskpassFetch>[1]> = {}) {
  const contentTypes: string[] = [];
  const fetch = taskpassFetch(task, {
    audience: AUD,
    tools: declared,
    fetch: async (url, init) => {
      const res = await globalThis.fetch(url, init);
      contentTypes.push(res.headers.get('content-type') ?? '');
      return res;
    },
    ...opts,
  });
  const client = new Client({ name: 'agent', version: '1.0.0' });
  await client.connect(new StreamableHTTPClientTransport(endpoint, { fetch }));
  return { client, fetch, contentTypes };
}

const textOf = (r: Awaited<ReturnType<Client['callTool']>>) => (r.content as { text: string }[])[0]?.text;

for (const mode of ['SSE', 'JSON'] as const) {
  describe(`Streamable HTTP, ${mode} responses`, () => {
    before(() => {
      json = mode === 'JSON';
    });

    test('each tools/call carries the call token for exactly that call; everything else the session token', async () => {
      await using bc = new BrokerClient({ url: broker.url, auth: { kind: 'none-insecure' } });
      await using task = await bc.openTask({ purpose: 'p' });
      seen.length = 0;
      const { client, contentTypes } = await connect(task);
      await client.listTools();
      assert.equal(
        textOf(await client.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1' } })),
        'ticket T-1',
      );
      // close_ticket and list_comments are resolved from the hints the server published in tools/list.
      assert.equal(
        textOf(await client.callTool({ name: 'close_ticket', arguments: { ticket_id: 'T-2' } })),
        'closed T-2',
      );
      assert.equal(
        textOf(await client.callTool({ name: 'list_comments', arguments: { ticket: { id: 'T-3' } } })),
        'comments of T-3',
      );
      await client.ping();
      await client.close();
      assert.ok(
        contentTypes.some((t) => t.includes(mode === 'SSE' ? 'text/event-stream' : 'application/json')),
      );

      const calls = seen.filter((s) => s.method === 'tools/call').map((s) => detailsOf(s.authorization));
      assert.deepEqual(calls, [
        { type: 'mcp_tool_call', tool: 'get_ticket', resource: 'tickets/T-1', action: 'read' },
        { type: 'mcp_tool_call', tool: 'close_ticket', resource: 'tickets/T-2', action: 'write' },
        { type: 'mcp_tool_call', tool: 'list_comments', resource: 'tickets/T-3/comments', action: 'read' },
      ]);
      const others = seen.filter((s) => s.method !== 'tools/call');
      assert.deepEqual(
        [...new Set(others.map((s) => `${s.http} ${s.method}`))].sort(),
        ['GET ', 'POST initialize', 'POST notifications/initialized', 'POST ping', 'POST tools/list'].sort(),
      );
      for (const s of others) {
        assert.deepEqual(detailsOf(s.authorization), { type: 'mcp_session' }, `${s.http} ${s.method}`);
        assert.equal(decodeJwt(s.authorization!.slice(7)).aud, AUD);
      }
      // One session token for the whole session; one broker request per call.
      assert.equal(new Set(others.map((s) => s.authorization)).size, 1);
      assert.equal(broker.requestsTo(`/${task.id}/tokens`).length, 3);
    });

    test('read tokens are reused for the same call; single-use (write) tokens never', async () => {
      await using bc = new BrokerClient({ url: broker.url, auth: { kind: 'none-insecure' } });
      await using task = await bc.openTask({ purpose: 'p' });
      seen.length = 0;
      const { client } = await connect(task);
      await client.listTools();
      for (let i = 0; i < 2; i++) {
        await client.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1' } });
        await client.callTool({ name: 'close_ticket', arguments: { ticket_id: 'T-1' } });
      }
      await client.close();
      const jtis = (tool: string) =>
        seen
          .filter((s) => s.method === 'tools/call' && detailsOf(s.authorization)?.tool === tool)
          .map((s) => decodeJwt(s.authorization!.slice(7)).jti);
      assert.equal(new Set(jtis('get_ticket')).size, 1);
      assert.equal(new Set(jtis('close_ticket')).size, 2);
    });

    test('a denial rejects callTool() with the TaskpassDeniedError (code, reason, template); nothing reaches the server', async () => {
      await using bc = new BrokerClient({ url: broker.url, auth: { kind: 'none-insecure' } });
      await using task = await bc.openTask({ purpose: 'p' });
      const { client } = await connect(task);
      seen.length = 0;
      const err = await client.callTool({ name: 'get_ticket', arguments: { ticket_id: 'FORBIDDEN' } }).then(
        () => assert.fail('expected a denial'),
        (e: unknown) => e,
      );
      assert.ok(err instanceof TaskpassDeniedError, String(err));
      assert.equal(err.code, 'TASKPASS_DENIED_RESOURCE');
      assert.equal(err.status, 403);
      assert.equal(err.template, 'tickets-support');
      assert.match(err.reason, /tickets\/FORBIDDEN is not in/);
      assert.equal(seen.filter((s) => s.method === 'tools/call').length, 0);
      // The client and task stay usable.
      assert.equal(
        textOf(await client.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-9' } })),
        'ticket T-9',
      );
      await client.close();
    });
  });
}

test('without a mapper or hint, callTool() rejects with TASKPASS_AGENT_NO_RESOURCE_MAPPER', async () => {
  json = false;
  await using bc = new BrokerClient({ url: broker.url, auth: { kind: 'none-insecure' } });
  await using task = await bc.openTask({ purpose: 'p' });
  const { client } = await connect(task, { useServerHints: false });
  await client.listTools(); // hints are published but not used
  await assert.rejects(
    client.callTool({ name: 'close_ticket', arguments: { ticket_id: 'T-2' } }),
    (e: unknown) => {
      assert.ok(e instanceof AgentPluginError);
      assert.equal(e.code, 'TASKPASS_AGENT_NO_RESOURCE_MAPPER');
      return true;
    },
  );
  // An argument that is not one segment never widens the resource.
  await assert.rejects(client.callTool({ name: 'get_ticket', arguments: { ticket_id: '../admin' } }), {
    code: 'TASKPASS_AGENT_RESOURCE_UNDERIVABLE',
  });
  await client.close();
});

test('explicit learnTools() from listTools(), for clients whose traffic the wrapper cannot read', async () => {
  await using bc = new BrokerClient({ url: broker.url, auth: { kind: 'none-insecure' } });
  await using task = await bc.openTask({ purpose: 'p' });
  const f = taskpassFetch(task, { audience: AUD, fetch: async () => new Response('{}') });
  assert.equal(f.catalog.has('close_ticket'), false);
  f.learnTools({
    tools: [
      {
        name: 'close_ticket',
        _meta: { 'dev.taskpass/resource': 'tickets/{ticket_id}', 'dev.taskpass/action': 'write' },
      },
    ],
  });
  assert.deepEqual(f.catalog.resolve('close_ticket', { ticket_id: 'T-4' }), {
    resource: 'tickets/T-4',
    action: 'write',
  });
});

describe('batches', () => {
  async function harness() {
    const bc = new BrokerClient({ url: broker.url, auth: { kind: 'none-insecure' } });
    const task = await bc.openTask({ purpose: 'p' });
    const sent: (string | null)[] = [];
    const f = taskpassFetch(task, {
      audience: AUD,
      tools: declared,
      fetch: async (_url, init) => {
        sent.push(new Headers(init?.headers).get('authorization'));
        return new Response('{}', { headers: { 'content-type': 'application/json' } });
      },
    });
    const post = (body: unknown) =>
      f(endpoint, {
        method: 'POST',
        body: JSON.stringify(body),
        headers: { 'content-type': 'application/json' },
      });
    return { bc, task, sent, post };
  }
  const call = (id: number, ticket: string) => ({
    jsonrpc: '2.0',
    id,
    method: 'tools/call',
    params: { name: 'get_ticket', arguments: { ticket_id: ticket } },
  });

  test('a batch with one tools/call is sent with that call token; one without, with the session token', async () => {
    const { bc, task, sent, post } = await harness();
    await post([
      { jsonrpc: '2.0', id: 1, method: 'ping' },
      call(2, 'T-7'),
      { jsonrpc: '2.0', method: 'notifications/progress' },
    ]);
    await post([
      { jsonrpc: '2.0', id: 3, method: 'ping' },
      { jsonrpc: '2.0', id: 4, method: 'tools/list' },
    ]);
    assert.deepEqual(detailsOf(sent[0] ?? undefined), {
      type: 'mcp_tool_call',
      tool: 'get_ticket',
      resource: 'tickets/T-7',
      action: 'read',
    });
    assert.deepEqual(detailsOf(sent[1] ?? undefined), { type: 'mcp_session' });
    await task.complete();
    await bc.close();
  });

  test('a batch with two tools/calls is refused before anything is sent', async () => {
    const { bc, task, sent, post } = await harness();
    await assert.rejects(post([call(1, 'T-1'), call(2, 'T-2')]), {
      code: 'TASKPASS_AGENT_BATCH_MULTIPLE_CALLS',
    });
    assert.equal(sent.length, 0);
    assert.equal(broker.requestsTo(`/${task.id}/tokens`).length, 0);
    await assert.rejects(post({ jsonrpc: '2.0', id: 1, method: 'tools/call', params: { arguments: {} } }), {
      code: 'TASKPASS_AGENT_BAD_MCP_MESSAGE',
    });
    await task.complete();
    await bc.close();
  });
});

describe('stdio: the call token in params._meta', () => {
  async function linked() {
    const [clientSide, serverSide] = InMemoryTransport.createLinkedPair();
    const mcp = mcpServer();
    await mcp.connect(serverSide);
    const client = new Client({ name: 'agent', version: '1.0.0' });
    await client.connect(clientSide);
    return { client, mcp };
  }

  test('taskpassCallTool puts a call token for that call in _meta["dev.taskpass/token"]', async () => {
    await using bc = new BrokerClient({ url: broker.url, auth: { kind: 'none-insecure' } });
    await using task = await bc.openTask({ purpose: 'p' });
    const { client, mcp } = await linked();
    const tools: ToolDeclarations = {
      echo_meta: { resource: 'tickets/{ticket_id}', action: 'write', bindArgs: true },
    };
    const r = await taskpassCallTool(
      client,
      task,
      { name: 'echo_meta', arguments: { ticket_id: 'T-8' }, _meta: { keep: 1 } },
      { audience: AUD, tools },
    );
    const meta = JSON.parse(textOf(r) ?? '{}') as Record<string, unknown>;
    assert.equal(meta.keep, 1);
    const token = meta[META_TOKEN] as string;
    assert.deepEqual((decodeJwt(token).authorization_details as unknown[])[0], {
      type: 'mcp_tool_call',
      tool: 'echo_meta',
      resource: 'tickets/T-8',
      action: 'write',
      args_sha256: argsSha256({ ticket_id: 'T-8' }),
    });
    // withCallToken returns new params and leaves the caller's untouched.
    const params = { name: 'echo_meta', arguments: { ticket_id: 'T-8' } };
    const withToken = await withCallToken(task, params, { audience: AUD, tools });
    assert.equal('_meta' in params, false);
    assert.equal(typeof withToken._meta?.[META_TOKEN], 'string');
    await client.close();
    await mcp.close();
  });
});

test('MCP 2026-07-28 headers: every POST carries Mcp-Method (and Mcp-Name where the body names a target), derived from the body', async () => {
  await using bc = new BrokerClient({ url: broker.url, auth: { kind: 'none-insecure' } });
  await using task = await bc.openTask({ purpose: 'p' });
  const sent: { method: string | null; name: string | null }[] = [];
  const f = taskpassFetch(task, {
    audience: AUD,
    tools: { ...declared, résumé: { resource: 'tickets/{ticket_id}', action: 'read' } },
    fetch: async (_url, init) => {
      const h = new Headers(init?.headers);
      sent.push({ method: h.get('mcp-method'), name: h.get('mcp-name') });
      return new Response('{}', { headers: { 'content-type': 'application/json' } });
    },
  });
  const post = (body: unknown, headers: Record<string, string> = {}) =>
    f(endpoint, {
      method: 'POST',
      body: JSON.stringify(body),
      headers: { 'content-type': 'application/json', ...headers },
    });
  const callOf = (name: string) => ({
    jsonrpc: '2.0',
    id: 1,
    method: 'tools/call',
    params: { name, arguments: { ticket_id: 'T-1' } },
  });
  await post(callOf('get_ticket'));
  await post({ jsonrpc: '2.0', id: 2, method: 'tools/list' });
  await post({ jsonrpc: '2.0', method: 'notifications/initialized' });
  await post({ jsonrpc: '2.0', id: 3, method: 'resources/read', params: { uri: 'tickets://T-1' } });
  // A non-ASCII name travels in the spec's =?base64?…?= form.
  await post(callOf('résumé'));
  // Headers the caller set that disagree with the body are replaced, not forwarded.
  await post(callOf('get_ticket'), { 'mcp-method': 'tools/list', 'mcp-name': 'close_ticket' });
  await f(endpoint, { method: 'GET' });
  assert.deepEqual(sent, [
    { method: 'tools/call', name: 'get_ticket' },
    { method: 'tools/list', name: null },
    { method: 'notifications/initialized', name: null },
    { method: 'resources/read', name: 'tickets://T-1' },
    { method: 'tools/call', name: `=?base64?${Buffer.from('résumé').toString('base64')}?=` },
    { method: 'tools/call', name: 'get_ticket' },
    { method: null, name: null },
  ]);
});

test('hints are learned from an SSE tools/list answer split anywhere, with CRLF lines, comments and ids', async () => {
  await using bc = new BrokerClient({ url: broker.url, auth: { kind: 'none-insecure' } });
  await using task = await bc.openTask({ purpose: 'p' });
  const answer = {
    jsonrpc: '2.0',
    id: 7,
    result: {
      tools: [
        {
          name: 'split_tool',
          _meta: { 'dev.taskpass/resource': 'tickets/{id}', 'dev.taskpass/action': 'read' },
        },
      ],
    },
  };
  const json = JSON.stringify(answer);
  // A comment, an event id, and the JSON split over two data lines (joined with a newline).
  const cut = json.indexOf(',"result"');
  const sse = `: keep-alive\r\nid: 1\r\nevent: message\r\ndata: ${json.slice(0, cut)}\r\ndata: ${json.slice(cut)}\r\n\r\n`;
  const bytes = new TextEncoder().encode(sse);
  const f = taskpassFetch(task, {
    audience: AUD,
    fetch: async () =>
      new Response(
        new ReadableStream<Uint8Array>({
          start(c) {
            for (let i = 0; i < bytes.length; i += 5) c.enqueue(bytes.slice(i, i + 5));
            c.close();
          },
        }),
        { status: 200, headers: { 'content-type': 'text/event-stream' } },
      ),
  });
  const res = await f(endpoint, {
    method: 'POST',
    body: JSON.stringify({ jsonrpc: '2.0', id: 7, method: 'tools/list' }),
  });
  assert.equal(await res.text(), sse); // the SDK's copy is untouched
  await f.catalog.settled();
  assert.ok(f.catalog.has('split_tool'));
  assert.deepEqual(f.catalog.resolve('split_tool', { id: 'T-9' }), {
    resource: 'tickets/T-9',
    action: 'read',
  });
});
