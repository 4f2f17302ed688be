// The middleware in front of a REAL McpServer + StreamableHTTPServerTransport (stateless), driven by
// the SDK Client whose fetch sets a per-request Bearer token, as the agent plugin does.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { z } from 'zod';
import type { CallAuth } from '../src/core.ts';
import { type TaskpassRequest, taskpassMiddleware } from '../src/http.ts';
import {
  prmHandler,
  protectedResourceMetadata,
  protectedResourceMetadataUrl,
} from '../src/resource-metadata.ts';
import { callerOf } from '../src/sdk-v1.ts';
import { AGENT, AUDIENCE, ISSUER, type Key, listen, mint, newKey, USER, verifierFor } from './support.ts';

let key: Key;
let server: Awaited<ReturnType<typeof listen>>;
let endpoint: string;
const seen: CallAuth[] = [];
const PRM_URL = protectedResourceMetadataUrl(AUDIENCE);

function mcpServer(): McpServer {
  const mcp = new McpServer({ name: 'tickets', version: '1.0.0' });
  mcp.registerTool(
    'get_ticket',
    { inputSchema: { ticket_id: z.string() }, annotations: { readOnlyHint: true } },
    async ({ ticket_id }, extra) => {
      const who = callerOf(extra);
      if (who) seen.push(who);
      return { content: [{ type: 'text', text: `ticket ${ticket_id} for ${who?.user} via ${who?.agent}` }] };
    },
  );
  mcp.registerTool(
    'close_ticket',
    { inputSchema: { ticket_id: z.string() }, annotations: { destructiveHint: true } },
    async ({ ticket_id }) => ({ content: [{ type: 'text', text: `closed ${ticket_id}` }] }),
  );
  return mcp;
}

before(async () => {
  key = await newKey('k1');
  const verifier = verifierFor(key, {
    tools: {
      get_ticket: { resource: 'tickets/{ticket_id}', annotations: { readOnlyHint: true } },
      close_ticket: { resource: 'tickets/{ticket_id}', annotations: { destructiveHint: true } },
    },
  });
  const guard = taskpassMiddleware(verifier, { resourceMetadataUrl: PRM_URL });
  const servePrm = prmHandler(protectedResourceMetadata({ resource: AUDIENCE, issuer: ISSUER }));
  server = await listen((req, res) => {
    if (servePrm(req, res)) return;
    void guard(req, res, async () => {
      const mcp = mcpServer();
      const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
      res.on('close', () => {
        void transport.close();
        void mcp.close();
      });
      await mcp.connect(transport);
      await transport.handleRequest(req, res, (req as TaskpassRequest).body);
    });
  });
  endpoint = `${server.url}/mcp`;
});
after(() => server.close());

const session = () => mint({ key, claims: { authorization_details: [{ type: 'mcp_session' }] } });

/** An SDK client whose fetch picks the Bearer per JSON-RPC message and records refusals. */
function client(
  tokenFor: (msg: { method: string; params?: { name?: string } }) => Promise<string | undefined>,
) {
  const responses: Response[] = [];
  const transport = new StreamableHTTPClientTransport(new URL(endpoint), {
    fetch: async (url, init) => {
      const headers = new Headers(init?.headers);
      const body = typeof init?.body === 'string' ? JSON.parse(init.body) : undefined;
      const msg = Array.isArray(body) ? body[0] : body;
      const token = msg ? await tokenFor(msg) : await session();
      if (token) headers.set('authorization', `Bearer ${token}`);
      const r = await fetch(url, { ...init, headers });
      // Only refusals are recorded: cloning a streamed body would make the SDK's cancel() wait forever.
      if (r.ok) return r;
      const text = await r.text();
      responses.push(new Response(text, { status: r.status, headers: r.headers }));
      return new Response(text, { status: r.status, headers: r.headers });
    },
  });
  return { c: new Client({ name: 'agent', version: '1.0.0' }), transport, responses };
}

describe('taskpassMiddleware with the MCP SDK', () => {
  test('an allowed call reaches the handler, which sees user, agent and task', async () => {
    const { c, transport } = client(async (m) =>
      m.method === 'tools/call' ? mint({ key, claims: { txn: 'task-42' } }) : session(),
    );
    await c.connect(transport);
    const tools = await c.listTools();
    assert.deepEqual(tools.tools.map((t) => t.name).sort(), ['close_ticket', 'get_ticket']);
    const r = await c.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1' } });
    assert.equal(r.isError, undefined);
    assert.deepEqual(r.content, [{ type: 'text', text: `ticket T-1 for ${USER} via ${AGENT}` }]);
    const who = seen.at(-1)!;
    assert.equal(who.user, USER);
    assert.equal(who.agent, AGENT);
    assert.equal(who.task, 'task-42');
    assert.equal(who.resource, 'tickets/T-1');
    await c.close();
  });

  test('a call token for another resource gets HTTP 403 insufficient_scope with the challenge', async () => {
    const { c, transport, responses } = client(async (m) =>
      m.method === 'tools/call' ? mint({ key, detail: { resource: 'tickets/T-2' } }) : session(),
    );
    await c.connect(transport);
    await assert.rejects(c.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1' } }));
    const r = responses.at(-1)!;
    assert.equal(r.status, 403);
    assert.equal(
      r.headers.get('www-authenticate'),
      `Bearer error="insufficient_scope", error_description="the token is for another resource", resource_metadata="${PRM_URL}"`,
    );
    assert.deepEqual(await r.json(), {
      code: 'TASKPASS_VERIFY_WRONG_RESOURCE',
      message: 'the token is for another resource',
    });
    await c.close().catch(() => {});
  });

  test('an expired call token gets HTTP 401 invalid_token', async () => {
    const { c, transport, responses } = client(async (m) =>
      m.method === 'tools/call' ? mint({ key, iat: -600 }) : session(),
    );
    await c.connect(transport);
    await assert.rejects(c.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1' } }));
    const r = responses.at(-1)!;
    assert.equal(r.status, 401);
    assert.equal(
      r.headers.get('www-authenticate'),
      `Bearer error="invalid_token", error_description="the token has expired", resource_metadata="${PRM_URL}"`,
    );
    await c.close().catch(() => {});
  });

  test('a session token cannot call a tool; initialize without a token is refused', async () => {
    const { c, transport, responses } = client(() => session());
    await c.connect(transport);
    await assert.rejects(c.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1' } }));
    assert.equal(responses.at(-1)!.status, 403);
    assert.equal(
      ((await responses.at(-1)!.json()) as { code: string }).code,
      'TASKPASS_VERIFY_SESSION_TOKEN_FOR_CALL',
    );
    await c.close().catch(() => {});

    const anon = client(async () => undefined);
    await assert.rejects(anon.c.connect(anon.transport));
    const r = anon.responses.at(-1)!;
    assert.equal(r.status, 401);
    assert.equal(r.headers.get('www-authenticate'), `Bearer resource_metadata="${PRM_URL}"`);
  });
});

describe('taskpassMiddleware, raw HTTP', () => {
  const post = (body: unknown, headers: Record<string, string>) =>
    fetch(endpoint, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        ...headers,
      },
      body: typeof body === 'string' ? body : JSON.stringify(body),
    });
  const call = (name: string, id = 1) => ({
    jsonrpc: '2.0',
    id,
    method: 'tools/call',
    params: { name, arguments: { ticket_id: 'T-1' } },
  });

  test('Mcp-Name disagreeing with the body → 400 with JSON-RPC -32020', async () => {
    const r = await post(call('get_ticket'), {
      authorization: `Bearer ${await mint({ key })}`,
      'mcp-name': 'close_ticket',
    });
    assert.equal(r.status, 400);
    assert.deepEqual(await r.json(), {
      jsonrpc: '2.0',
      id: 1,
      error: {
        code: -32020,
        message: 'the Mcp-Name header does not match the request body',
        data: { code: 'TASKPASS_VERIFY_HEADER_MISMATCH' },
      },
    });
    const m = await post(call('get_ticket'), {
      authorization: `Bearer ${await mint({ key })}`,
      'mcp-method': 'tools/list',
    });
    assert.equal(m.status, 400);
  });

  test('Mcp-Name agreeing with the body passes', async () => {
    const r = await post(call('get_ticket'), {
      authorization: `Bearer ${await mint({ key })}`,
      'mcp-name': 'get_ticket',
      'mcp-method': 'tools/call',
    });
    assert.equal(r.status, 200);
  });

  test('batches: two tools/call refused; one tools/call with a notification is covered by its token', async () => {
    const two = await post([call('get_ticket', 1), call('get_ticket', 2)], {
      authorization: `Bearer ${await mint({ key })}`,
    });
    assert.equal(two.status, 400);
    assert.equal(
      ((await two.json()) as { error: { data: { code: string } } }).error.data.code,
      'TASKPASS_VERIFY_BATCH_NOT_ALLOWED',
    );

    const mixed = await post(
      [{ jsonrpc: '2.0', method: 'notifications/initialized' }, call('get_ticket', 3)],
      {
        authorization: `Bearer ${await mint({ key, detail: { resource: 'tickets/T-9' } })}`,
      },
    );
    assert.equal(mixed.status, 403, 'the one call in the batch is checked against the token');
  });

  test('unparsable body → 400 -32700', async () => {
    const r = await post('{nope', { authorization: `Bearer ${await mint({ key })}` });
    assert.equal(r.status, 400);
    assert.equal(((await r.json()) as { error: { code: number } }).error.code, -32700);
  });

  test('a write tool needs a write token', async () => {
    const r = await post(call('close_ticket'), {
      authorization: `Bearer ${await mint({ key, detail: { tool: 'close_ticket', action: 'read' } })}`,
    });
    assert.equal(r.status, 403);
    assert.equal(((await r.json()) as { code: string }).code, 'TASKPASS_VERIFY_WRONG_ACTION');
  });
});

describe('protected resource metadata (RFC 9728)', () => {
  test('served at the path-inserted and root well-known URLs', async () => {
    assert.equal(PRM_URL, 'https://tickets.taskpass.test/.well-known/oauth-protected-resource/mcp');
    for (const path of [
      '/.well-known/oauth-protected-resource/mcp',
      '/.well-known/oauth-protected-resource',
    ]) {
      const r = await fetch(`${server.url}${path}`);
      assert.equal(r.status, 200);
      assert.deepEqual(await r.json(), {
        resource: AUDIENCE,
        authorization_servers: [ISSUER],
        bearer_methods_supported: ['header'],
        tls_client_certificate_bound_access_tokens: true,
        authorization_details_types_supported: ['mcp_tool_call', 'mcp_session'],
      });
    }
  });
});

describe('clientCertificateOf', () => {
  test('hashes the peer leaf once per TLS socket; none on plain sockets or without a client cert', async () => {
    const { clientCertificateOf } = await import('../src/http.ts');
    const { createHash } = await import('node:crypto');
    const der = Buffer.from('leaf DER');
    let calls = 0;
    const socket = {
      encrypted: true,
      getPeerCertificate: () => {
        calls++;
        return { raw: der };
      },
    };
    const req = { socket } as unknown as import('node:http').IncomingMessage;
    const expected = { x5tS256: createHash('sha256').update(der).digest('base64url') };
    assert.deepEqual(clientCertificateOf(req), expected);
    assert.deepEqual(clientCertificateOf(req), expected);
    assert.equal(calls, 1);
    const noCert = { socket: { encrypted: true, getPeerCertificate: () => ({}) } } as unknown as typeof req;
    assert.equal(clientCertificateOf(noCert), undefined);
    assert.equal(clientCertificateOf({ socket: {} } as unknown as typeof req), undefined);
  });
});

test('a client-chosen tool name never breaks the challenge header', async () => {
  const r = await fetch(endpoint, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${await mint({ key })}` },
    body: JSON.stringify({
      jsonrpc: '2.0',
      id: 1,
      method: 'tools/call',
      params: { name: '工具"\r\n', arguments: {} },
    }),
  });
  assert.equal(r.status, 403);
  assert.equal(
    r.headers.get('www-authenticate'),
    `Bearer error="insufficient_scope", error_description="tool \\"??\\"??\\" is not protected by this server", resource_metadata="${PRM_URL}"`,
  );
});

test('onRefusal is told of each refusal (error and answer) before it is sent, and of nothing else', async () => {
  const told: { code: unknown; status: number }[] = [];
  const verifier = verifierFor(key, {
    tools: { get_ticket: { resource: 'tickets/{ticket_id}', annotations: { readOnlyHint: true } } },
  });
  const guard = taskpassMiddleware(verifier, {
    onRefusal: (e, r) => told.push({ code: (e as { code?: unknown }).code, status: r.status }),
  });
  const s = await listen((req, res) => {
    void guard(req, res, () => res.writeHead(200).end('{}'));
  });
  try {
    const call = async (token: string) =>
      (
        await fetch(`${s.url}/mcp`, {
          method: 'POST',
          headers: { 'content-type': 'application/json', authorization: `Bearer ${token}` },
          body: JSON.stringify({
            jsonrpc: '2.0',
            id: 1,
            method: 'tools/call',
            params: { name: 'get_ticket', arguments: { ticket_id: 'T-1' } },
          }),
        })
      ).status;
    assert.equal(await call(await mint({ key, detail: { resource: 'tickets/T-2' } })), 403);
    assert.equal(await call(await mint({ key })), 200);
    assert.deepEqual(told, [{ code: 'TASKPASS_VERIFY_WRONG_RESOURCE', status: 403 }]);
  } finally {
    await s.close();
  }
});
