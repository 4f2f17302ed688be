// The middleware in front of a REAL SDK 2.x server (@modelcontextprotocol/server createMcpHandler,
// mounted with @modelcontextprotocol/node toNodeHandler), driven by the SDK 2.x Client. The 2.x
// server reads `req.auth` (set by taskpassMiddleware) as `ctx.http.authInfo`; callerOf() reads it.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Client, InMemoryTransport, StreamableHTTPClientTransport } from '@modelcontextprotocol/client';
import { toNodeHandler } from '@modelcontextprotocol/node';
import { createMcpHandler, McpServer, requireBearerAuth } from '@modelcontextprotocol/server';
import { argsSha256 } from '@taskpass/contract';
import { z } from 'zod';
import type { CallAuth } from '../src/core.ts';
import { type TaskpassRequest, taskpassMiddleware } from '../src/http.ts';
import { callerOf, taskpassTokenVerifier as taskpassTokenVerifierV1, withTaskpass } from '../src/sdk-v1.ts';
import { taskpassTokenVerifier } from '../src/sdk-v2.ts';
import { AGENT, AUDIENCE, type Key, listen, mint, newKey, USER, verifierFor } from './support.ts';

let key: Key;
const servers: Awaited<ReturnType<typeof listen>>[] = [];
const seen: CallAuth[] = [];
let lenient: string;
let strict: string;

function mcpServer(): McpServer {
  const mcp = new McpServer({ name: 'tickets', version: '2.0.0' });
  mcp.registerTool(
    'get_ticket',
    { inputSchema: z.object({ ticket_id: z.string() }), annotations: { readOnlyHint: true } },
    async ({ ticket_id }, ctx) => {
      const who = callerOf(ctx);
      if (who) seen.push(who);
      return { content: [{ type: 'text', text: `ticket ${ticket_id} for ${who?.user} via ${who?.agent}` }] };
    },
  );
  return mcp;
}

async function start(requireMcpHeaders: boolean): Promise<string> {
  const verifier = verifierFor(key, {
    tools: { get_ticket: { resource: 'tickets/{ticket_id}', annotations: { readOnlyHint: true } } },
    requireMcpHeaders,
  });
  const guard = taskpassMiddleware(verifier);
  const serve = toNodeHandler(createMcpHandler(() => mcpServer()));
  const s = await listen((req, res) => {
    void guard(req, res, () => void serve(req, res, (req as TaskpassRequest).body));
  });
  servers.push(s);
  return `${s.url}/mcp`;
}

before(async () => {
  key = await newKey('k1');
  lenient = await start(false);
  strict = await start(true);
});
after(async () => {
  for (const s of servers) await s.close();
});

const session = () => mint({ key, claims: { authorization_details: [{ type: 'mcp_session' }] } });

/** A 2.x client whose fetch sets the Bearer the way taskpassFetch does: the call token for tools/call. */
function client(
  endpoint: string,
  opts: { dropHeaders?: boolean; legacy?: boolean; callToken?: () => Promise<string> } = {},
) {
  const sent: { method: string | null; name: string | null; session: string | null }[] = [];
  const responses: Response[] = [];
  const transport = new StreamableHTTPClientTransport(new URL(endpoint), {
    fetch: async (url, init) => {
      const headers = new Headers(init?.headers);
      const body =
        typeof init?.body === 'string' ? (JSON.parse(init.body) as { method?: string }) : undefined;
      headers.set(
        'authorization',
        `Bearer ${body?.method === 'tools/call' ? await (opts.callToken ?? (() => mint({ key })))() : await session()}`,
      );
      if (opts.dropHeaders) {
        headers.delete('mcp-method');
        headers.delete('mcp-name');
      }
      sent.push({
        method: headers.get('mcp-method'),
        name: headers.get('mcp-name'),
        session: headers.get('mcp-session-id'),
      });
      const r = await fetch(url, { ...init, headers });
      responses.push(r.clone());
      return r;
    },
  });
  // 2026-07-28 is opt-in on the 2.x client (default: the 2025 initialize sequence, no new headers).
  const c = new Client(
    { name: 'agent', version: '2.0.0' },
    opts.legacy ? {} : { versionNegotiation: { mode: { pin: '2026-07-28' } } },
  );
  return { c, transport, sent, responses };
}

describe('SDK 2.x server and client (2026-07-28, stateless)', () => {
  test('an allowed call reaches the 2.x handler with the verified caller; no session, no initialize', async () => {
    const { c, transport, sent } = client(strict);
    await c.connect(transport);
    const r = await c.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1' } });
    assert.equal(r.isError, undefined);
    assert.equal((r.content as { text: string }[])[0]?.text, `ticket T-1 for ${USER} via ${AGENT}`);
    assert.equal(seen.at(-1)?.tool, 'get_ticket');
    // The 2.x client sent the standard headers itself, and no request carried a session id.
    assert.ok(sent.some((s) => s.method === 'tools/call' && s.name === 'get_ticket'));
    assert.ok(sent.every((s) => s.session === null));
    assert.ok(!sent.some((s) => s.method === 'initialize'));
    await c.close();
  });

  test('the 2.x handler sees who approved the call (ctx.http.authInfo)', async () => {
    const approval = {
      id: 'apr_CCCCCCCCCCCCCCCCCCCCCC',
      approver: { iss: 'https://idp.test', sub: 'lead-2' },
      approved_at: 1_700_000_123,
    };
    const callToken = () =>
      mint({ key, detail: { args_sha256: argsSha256({ ticket_id: 'T-1' }), approval } });
    const { c, transport } = client(strict, { callToken });
    await c.connect(transport);
    const r = await c.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1' } });
    assert.equal(r.isError, undefined);
    assert.deepEqual(seen.at(-1)?.approval, {
      id: approval.id,
      approver: { iss: 'https://idp.test', sub: 'lead-2' },
      approvedAt: 1_700_000_123,
    });
    await c.close();
  });

  test('a denied call (token for another resource) is a 403 the 2.x client surfaces', async () => {
    const { c, transport, responses } = client(strict);
    await c.connect(transport);
    await assert.rejects(c.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-2' } }));
    const last = responses.at(-1)!;
    assert.equal(last.status, 403);
    assert.equal(((await last.json()) as { code: string }).code, 'TASKPASS_VERIFY_WRONG_RESOURCE');
    await c.close().catch(() => {});
  });

  test('requireMcpHeaders: the same client without Mcp-Method/Mcp-Name is refused with -32020', async () => {
    const { c, transport, responses } = client(strict, { dropHeaders: true });
    await assert.rejects(
      c.connect(transport).then(() => c.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1' } })),
    );
    const last = responses.at(-1)!;
    assert.equal(last.status, 400);
    const body = (await last.json()) as { error: { code: number; data: { code: string } } };
    assert.equal(body.error.code, -32020);
    assert.equal(body.error.data.code, 'TASKPASS_VERIFY_HEADER_MISMATCH');
    await c.close().catch(() => {});
  });

  test('without requireMcpHeaders the 2.x client in its default 2025 mode (no standard headers, initialize) works', async () => {
    const { c, transport, sent } = client(lenient, { legacy: true });
    await c.connect(transport);
    const r = await c.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1' } });
    assert.equal(r.isError, undefined);
    assert.ok(sent.every((x) => x.method === null));
    assert.ok(seen.length > 0 && seen.at(-1)?.tool === 'get_ticket');
    await c.close();
  });

  test('requireMcpHeaders refuses the 2.x client in its default 2025 mode (it sends no standard headers)', async () => {
    const { c, transport, responses } = client(strict, { legacy: true });
    await assert.rejects(c.connect(transport));
    assert.equal(responses.at(-1)!.status, 400);
    await c.close().catch(() => {});
  });

  test('a raw POST whose Mcp-Name disagrees with the body is refused before the 2.x server sees it', async () => {
    const r = await fetch(lenient, {
      method: 'POST',
      headers: {
        authorization: `Bearer ${await mint({ key })}`,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'mcp-method': 'tools/call',
        'mcp-name': 'close_ticket',
      },
      body: JSON.stringify({
        jsonrpc: '2.0',
        id: 1,
        method: 'tools/call',
        params: { name: 'get_ticket', arguments: { ticket_id: 'T-1' } },
      }),
    });
    assert.equal(r.status, 400);
    assert.equal(((await r.json()) as { error: { code: number } }).error.code, -32020);
  });
});

describe('SDK 2.x requireBearerAuth with taskpassTokenVerifier (@taskpass/verifier/sdk-v2)', () => {
  const request = (token: string) =>
    new Request(AUDIENCE, { method: 'POST', headers: { authorization: `Bearer ${token}` } });
  const verifier = () =>
    verifierFor(key, {
      tools: { get_ticket: { resource: 'tickets/{ticket_id}', annotations: { readOnlyHint: true } } },
    });
  const resourceMetadataUrl = `${AUDIENCE}/.well-known/oauth-protected-resource`;

  test('a session token passes with expiresAt and extra.taskpass; a refused one is a 401 challenge, not a 500', async () => {
    const gate = requireBearerAuth({ verifier: taskpassTokenVerifier(verifier()), resourceMetadataUrl });
    const ok = await gate(request(await session()));
    assert.ok(!(ok instanceof Response));
    assert.equal(typeof ok.expiresAt, 'number');
    assert.equal((ok.extra as { taskpass: { agent: string } }).taskpass.agent, AGENT);

    const expired = await gate(request(await mint({ key, iat: -600, ttl: 60 })));
    assert.ok(expired instanceof Response);
    assert.equal(expired.status, 401);
    assert.match(
      expired.headers.get('www-authenticate') ?? '',
      /^Bearer error="invalid_token".*TASKPASS_VERIFY_EXPIRED/,
    );
  });

  test('the SDK 1.x verifier does not fit 2.x: its refusals become a bare 500', async () => {
    const gate = requireBearerAuth({
      verifier: taskpassTokenVerifierV1(verifier()) as never,
      resourceMetadataUrl,
    });
    const r = await gate(request(await mint({ key, iat: -600, ttl: 60 })));
    assert.ok(r instanceof Response);
    assert.equal(r.status, 500);
  });
});

describe('withTaskpass on an SDK 2.x server over an in-memory (stdio-like) transport', () => {
  test('the token in _meta (ctx.mcpReq._meta) authorizes exactly the call it names', async () => {
    const verifier = verifierFor(key, {
      tools: { close_ticket: { resource: 'tickets/{ticket_id}', action: 'write' } },
    });
    const mcp = new McpServer({ name: 'tickets', version: '2.0.0' });
    mcp.registerTool(
      'close_ticket',
      { inputSchema: z.object({ ticket_id: z.string() }) },
      withTaskpass(
        async ({ ticket_id }: { ticket_id: string }, ctx: Parameters<typeof callerOf>[0] & object) => {
          const who = callerOf(ctx);
          return {
            content: [
              { type: 'text' as const, text: `closed ${ticket_id} for ${who?.user} in ${who?.task}` },
            ],
          };
        },
        { verifier, tool: 'close_ticket' },
      ) as never,
    );
    const [a, b] = InMemoryTransport.createLinkedPair();
    await mcp.connect(a as never);
    const c = new Client({ name: 'agent', version: '2.0.0' });
    await c.connect(b);
    const token = await mint({
      key,
      detail: { tool: 'close_ticket', action: 'write' },
      claims: { single_use: true, txn: 'task-7' },
    });
    const ok = await c.callTool({
      name: 'close_ticket',
      arguments: { ticket_id: 'T-1' },
      _meta: { 'dev.taskpass/token': token },
    });
    assert.equal(ok.isError, undefined, JSON.stringify(ok.content));
    assert.deepEqual(ok.content, [{ type: 'text', text: `closed T-1 for ${USER} in task-7` }]);
    const none = await c.callTool({ name: 'close_ticket', arguments: { ticket_id: 'T-1' } });
    assert.equal(none.isError, true);
    assert.match((none.content as { text: string }[])[0]!.text, /^TASKPASS_VERIFY_MISSING_TOKEN: /);
    await c.close();
  });
});
