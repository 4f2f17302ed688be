import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import Fastify, { type FastifyInstance } from 'fastify';
import { z } from 'zod';
import { taskpassFastify } from '../src/fastify.ts';
import {
  protectedResourceMetadata,
  protectedResourceMetadataUrl,
  registerProtectedResourceMetadata,
} from '../src/resource-metadata.ts';
import { callerOf } from '../src/sdk-v1.ts';
import { AUDIENCE, ISSUER, type Key, mint, newKey, verifierFor } from './support.ts';

let key: Key;
let app: FastifyInstance;
const PRM_URL = protectedResourceMetadataUrl(AUDIENCE);

before(async () => {
  key = await newKey('k1');
  const verifier = verifierFor(key, {
    tools: { get_ticket: { resource: 'tickets/{ticket_id}', annotations: { readOnlyHint: true } } },
  });
  app = Fastify();
  registerProtectedResourceMetadata(app, protectedResourceMetadata({ resource: AUDIENCE, issuer: ISSUER }));
  app.get('/healthz', async () => ({ ok: true }));
  await app.register(async (scope) => {
    await scope.register(taskpassFastify, { verifier, resourceMetadataUrl: PRM_URL });
    scope.post('/mcp', async (req, reply) => {
      const mcp = new McpServer({ name: 'tickets', version: '1.0.0' });
      mcp.registerTool(
        'get_ticket',
        { inputSchema: { ticket_id: z.string() } },
        async ({ ticket_id }, extra) => ({
          content: [{ type: 'text', text: `${ticket_id} for ${callerOf(extra)?.user}` }],
        }),
      );
      const transport = new StreamableHTTPServerTransport({
        sessionIdGenerator: undefined,
        enableJsonResponse: true,
      });
      await mcp.connect(transport);
      reply.hijack();
      await transport.handleRequest(req.raw, reply.raw, req.body);
    });
  });
  await app.ready();
});
after(() => app.close());

const call = {
  jsonrpc: '2.0',
  id: 7,
  method: 'tools/call',
  params: { name: 'get_ticket', arguments: { ticket_id: 'T-1' } },
};
const headers = (token: string) => ({
  authorization: `Bearer ${token}`,
  'content-type': 'application/json',
  accept: 'application/json, text/event-stream',
});

test('fastify: an allowed call reaches the tool with the caller', async () => {
  const r = await app.inject({
    method: 'POST',
    url: '/mcp',
    headers: headers(await mint({ key })),
    payload: call,
  });
  assert.equal(r.statusCode, 200);
  assert.deepEqual(r.json().result.content, [{ type: 'text', text: 'T-1 for alice' }]);
});

test('fastify: a refused call gets 403 with the challenge; Mcp-Name mismatch gets 400 -32020', async () => {
  const r = await app.inject({
    method: 'POST',
    url: '/mcp',
    headers: headers(await mint({ key, detail: { tool: 'other' } })),
    payload: call,
  });
  assert.equal(r.statusCode, 403);
  assert.equal(
    r.headers['www-authenticate'],
    `Bearer error="insufficient_scope", error_description="the token is for another tool than \\"get_ticket\\"", resource_metadata="${PRM_URL}"`,
  );
  assert.equal(r.json().code, 'TASKPASS_VERIFY_WRONG_TOOL');
  const m = await app.inject({
    method: 'POST',
    url: '/mcp',
    headers: { ...headers(await mint({ key })), 'mcp-name': 'x' },
    payload: call,
  });
  assert.equal(m.statusCode, 400);
  assert.equal(m.json().error.code, -32020);
});

test('fastify: the hook stays inside its scope; PRM served', async () => {
  assert.equal((await app.inject({ url: '/healthz' })).statusCode, 200);
  const prm = await app.inject({ url: '/.well-known/oauth-protected-resource/mcp' });
  assert.equal(prm.statusCode, 200);
  assert.deepEqual(prm.json().authorization_servers, [ISSUER]);
  assert.equal(prm.json().resource, AUDIENCE);
});

test('fastify: a request without a valid token is refused before fastify parses its body', async () => {
  let parsed = 0;
  const guarded = Fastify();
  guarded.addContentTypeParser('application/json', { parseAs: 'string' }, (_req, body, done) => {
    parsed++;
    done(null, JSON.parse(body as string));
  });
  const verifier = verifierFor(key, {
    tools: { get_ticket: { resource: 'tickets/{ticket_id}', action: 'read' } },
  });
  await guarded.register(async (scope) => {
    await scope.register(taskpassFastify, { verifier });
    scope.post('/mcp', async () => ({ ok: true }));
  });
  try {
    const none = await guarded.inject({
      method: 'POST',
      url: '/mcp',
      headers: { 'content-type': 'application/json' },
      payload: JSON.stringify(call),
    });
    assert.equal(none.statusCode, 401);
    assert.equal(none.json().code, 'TASKPASS_VERIFY_MISSING_TOKEN');
    assert.equal(parsed, 0);
    const forged = await guarded.inject({
      method: 'POST',
      url: '/mcp',
      headers: headers(await mint({ key: { ...(await newKey('k1')), kid: 'k1' } })),
      payload: JSON.stringify(call),
    });
    assert.equal(forged.statusCode, 401);
    assert.equal(forged.json().code, 'TASKPASS_VERIFY_BAD_SIGNATURE');
    assert.equal(parsed, 0);
    const ok = await guarded.inject({
      method: 'POST',
      url: '/mcp',
      headers: headers(await mint({ key })),
      payload: JSON.stringify(call),
    });
    assert.equal(ok.statusCode, 200);
    assert.equal(parsed, 1);
    const deep = await guarded.inject({
      method: 'POST',
      url: '/mcp',
      headers: headers(await mint({ key })),
      payload: JSON.stringify({
        ...call,
        params: {
          ...call.params,
          arguments: { ticket_id: 'T-1', n: JSON.parse(`${'['.repeat(80)}${']'.repeat(80)}`) },
        },
      }),
    });
    assert.equal(deep.statusCode, 400);
    assert.equal(deep.json().error.data.code, 'TASKPASS_VERIFY_BAD_REQUEST');
  } finally {
    await guarded.close();
  }
});
