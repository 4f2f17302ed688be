import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { InMemoryTransport } from '@modelcontextprotocol/sdk/inMemory.js';
import { InsufficientScopeError, InvalidTokenError } from '@modelcontextprotocol/sdk/server/auth/errors.js';
import { requireBearerAuth } from '@modelcontextprotocol/sdk/server/auth/middleware/bearerAuth.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { argsSha256 } from '@taskpass/contract';
import { z } from 'zod';
import type { Verifier } from '../src/core.ts';
import { callerOf, taskpassTokenVerifier, withTaskpass } from '../src/sdk-v1.ts';
import { AGENT, AUDIENCE, type Key, mint, newKey, USER, verifierFor } from './support.ts';

let key: Key;
let verifier: Verifier;
before(async () => {
  key = await newKey('k1');
  verifier = verifierFor(key, {
    tools: {
      get_ticket: { resource: 'tickets/{ticket_id}', annotations: { readOnlyHint: true } },
      close_ticket: { resource: 'tickets/{ticket_id}', action: 'write' },
    },
  });
});

describe('taskpassTokenVerifier (requireBearerAuth)', () => {
  test('session-level check; expiresAt always set; refusals are SDK OAuth errors', async () => {
    const v = taskpassTokenVerifier(verifier);
    const info = await v.verifyAccessToken(
      await mint({ key, claims: { authorization_details: [{ type: 'mcp_session' }] } }),
    );
    assert.equal(info.clientId, AGENT);
    assert.equal(typeof info.expiresAt, 'number');
    assert.equal(info.resource?.href, AUDIENCE);
    assert.deepEqual(info.scopes, []);
    await assert.rejects(v.verifyAccessToken(await mint({ key, iat: -600 })), InvalidTokenError);
    await assert.rejects(v.verifyAccessToken('x.y.z'), InvalidTokenError);
    assert.ok(new InsufficientScopeError('x'));
  });

  test('plugged into requireBearerAuth (express-shaped request/response)', async () => {
    const mw = requireBearerAuth({
      verifier: taskpassTokenVerifier(verifier),
      resourceMetadataUrl: 'https://r/prm',
    });
    const run = async (token: string) => {
      const out: { status?: number; headers: Record<string, string>; body?: unknown; next: boolean } = {
        headers: {},
        next: false,
      };
      const req: { headers: Record<string, string>; auth?: { extra?: { taskpass?: { user: string } } } } = {
        headers: { authorization: `Bearer ${token}` },
      };
      const res = {
        set(k: string, v: string) {
          out.headers[k.toLowerCase()] = v;
          return res;
        },
        status(n: number) {
          out.status = n;
          return res;
        },
        json(b: unknown) {
          out.body = b;
          return res;
        },
      };
      await (mw as unknown as (rq: unknown, rs: unknown, n: () => void) => Promise<void>)(req, res, () => {
        out.next = true;
      });
      return { out, req };
    };
    const ok = await run(await mint({ key }));
    assert.equal(ok.out.next, true);
    assert.equal(ok.req.auth?.extra?.taskpass?.user, USER);
    const bad = await run(await mint({ key, claims: { aud: 'https://x.test' } }));
    assert.equal(bad.out.status, 401);
    assert.match(
      bad.out.headers['www-authenticate'] ?? '',
      /^Bearer error="invalid_token", error_description="TASKPASS_VERIFY_WRONG_AUDIENCE: .*resource_metadata="https:\/\/r\/prm"$/,
    );
  });
});

describe('withTaskpass over an in-memory (stdio-like) transport', () => {
  async function connect() {
    const mcp = new McpServer({ name: 'tickets', version: '1.0.0' });
    mcp.registerTool(
      'close_ticket',
      { inputSchema: { ticket_id: z.string() }, annotations: { destructiveHint: true } },
      withTaskpass(
        async ({ ticket_id }, extra) => {
          const who = callerOf(extra);
          return {
            content: [
              { type: 'text' as const, text: `closed ${ticket_id} for ${who?.user} in ${who?.task}` },
            ],
          };
        },
        { verifier, tool: 'close_ticket' },
      ),
    );
    const [a, b] = InMemoryTransport.createLinkedPair();
    await mcp.connect(a);
    const c = new Client({ name: 'agent', version: '1.0.0' });
    await c.connect(b);
    return c;
  }

  test('the token in _meta authorizes exactly one call', async () => {
    const c = await connect();
    const token = await mint({
      key,
      detail: { tool: 'close_ticket', action: 'write' },
      claims: { single_use: true, txn: 'task-5' },
    });
    const args = {
      name: 'close_ticket',
      arguments: { ticket_id: 'T-1' },
      _meta: { 'dev.taskpass/token': token },
    };
    const ok = await c.callTool(args);
    assert.equal(ok.isError, undefined);
    assert.deepEqual(ok.content, [{ type: 'text', text: `closed T-1 for ${USER} in task-5` }]);
    const again = await c.callTool(args);
    assert.equal(again.isError, true);
    assert.match((again.content as { text: string }[])[0]!.text, /^TASKPASS_VERIFY_REPLAYED: /);
    const none = await c.callTool({ name: 'close_ticket', arguments: { ticket_id: 'T-1' } });
    assert.equal(none.isError, true);
    assert.match((none.content as { text: string }[])[0]!.text, /^TASKPASS_VERIFY_MISSING_TOKEN: /);
    const other = await c.callTool({
      name: 'close_ticket',
      arguments: { ticket_id: 'T-2' },
      _meta: { 'dev.taskpass/token': await mint({ key, detail: { tool: 'close_ticket', action: 'write' } }) },
    });
    assert.match((other.content as { text: string }[])[0]!.text, /^TASKPASS_VERIFY_WRONG_RESOURCE: /);
    await c.close();
  });

  test('the tool handler sees who approved the call (SDK 1.x extra)', async () => {
    const approvals: unknown[] = [];
    const mcp = new McpServer({ name: 'tickets', version: '1.0.0' });
    mcp.registerTool(
      'close_ticket',
      { inputSchema: { ticket_id: z.string(), amount: z.number() } },
      withTaskpass(
        async ({ ticket_id }, extra) => {
          approvals.push(callerOf(extra)?.approval);
          return { content: [{ type: 'text' as const, text: `closed ${ticket_id}` }] };
        },
        { verifier, tool: 'close_ticket' },
      ),
    );
    const [a, b] = InMemoryTransport.createLinkedPair();
    await mcp.connect(a);
    const c = new Client({ name: 'agent', version: '1.0.0' });
    await c.connect(b);
    const args = { ticket_id: 'T-1', amount: 500 };
    const approval = {
      id: 'apr_BBBBBBBBBBBBBBBBBBBBBB',
      approver: { iss: 'https://idp.test', sub: 'lead-1' },
      approved_at: 1_700_000_000,
    };
    const approved = await mint({
      key,
      detail: { tool: 'close_ticket', action: 'write', args_sha256: argsSha256(args), approval },
    });
    const plain = await mint({ key, detail: { tool: 'close_ticket', action: 'write' } });
    for (const token of [approved, plain]) {
      const r = await c.callTool({
        name: 'close_ticket',
        arguments: args,
        _meta: { 'dev.taskpass/token': token },
      });
      assert.equal(r.isError, undefined);
    }
    assert.deepEqual(approvals, [
      { id: approval.id, approver: approval.approver, approvedAt: approval.approved_at },
      undefined,
    ]);
    await c.close();
  });

  test('a token in _meta next to a token on the HTTP request is refused as ambiguous', async () => {
    const handler = withTaskpass(async () => ({ content: [{ type: 'text' as const, text: 'ran' }] }), {
      verifier,
      tool: 'close_ticket',
    });
    const headerToken = await mint({ key, detail: { tool: 'close_ticket', action: 'write' } });
    const metaToken = await mint({ key, detail: { tool: 'close_ticket', action: 'write' } });
    // The HTTP middleware verified the header token for this very call; _meta carries another one.
    const httpVerified = await verifier.verifyCall(headerToken, {
      tool: 'close_ticket',
      args: { ticket_id: 'T-1' },
    });
    const r = await handler(
      { ticket_id: 'T-1' },
      {
        authInfo: { token: headerToken, clientId: 'x', scopes: [], extra: { taskpass: httpVerified } },
        _meta: { 'dev.taskpass/token': metaToken },
      },
    );
    assert.equal((r as { isError?: boolean }).isError, true);
    assert.match((r.content as { text: string }[])[0]!.text, /^TASKPASS_VERIFY_AMBIGUOUS_TOKEN: /);
  });
});
