// Approvals on the agent side (issue #9): the approval-required refusal, waiting for a decision
// with the long poll, the ceiling's argument rules, and taskpassFetch waiting (or throwing) in
// front of a real MCP server, against the fake broker of support.ts.
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, before, describe, test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { z } from 'zod';
import {
  AgentPluginError,
  argsSha256,
  BrokerClient,
  BrokerError,
  isApprovalRequired,
  isTaskpassDenial,
  type Task,
  TaskpassApprovalRequiredError,
  TaskpassDeniedError,
  taskpassFetch,
  withCallToken,
} from '../src/index.ts';
import { detailsOf, FakeBroker } from './support.ts';

const SHOP = 'https://shop.test/mcp';
const refundArgs = { order: 'o-1', amount: 500 };
const refund = (amount = 500) => ({
  audience: SHOP,
  tool: 'refund',
  resource: 'orders/o-1',
  action: 'write' as const,
  argsSha256: argsSha256({ order: 'o-1', amount }),
});

let broker: FakeBroker;
let mcpHttp: Server;
let endpoint: URL;
const ran: { amount: number; authorization: string | undefined }[] = [];

before(async () => {
  broker = await FakeBroker.start({
    needsApproval: (b) =>
      b.tool === 'refund' && Number((b.arguments as { amount?: number })?.amount ?? 0) > 100,
    ceiling: [
      {
        template: 'shop-refunds',
        audience: SHOP,
        tools: [
          { tool: 'refund', action: 'write', resources: ['orders/*'], send_arguments: true, approval: true },
          { tool: 'note', action: 'write', resources: ['orders/*'], bind_arguments: true },
          { tool: 'lookup', action: 'read', resources: ['orders/*'] },
        ],
      },
    ],
  });
  // A real MCP server (SDK 1.x, stateless, JSON answers) whose refund tool records what reached it.
  mcpHttp = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    if (req.method !== 'POST') {
      res.writeHead(405).end();
      return;
    }
    const mcp = new McpServer({ name: 'shop', version: '1.0.0' });
    mcp.registerTool(
      'refund',
      { inputSchema: { order: z.string(), amount: z.number() } },
      async ({ amount }) => {
        ran.push({ amount, authorization: req.headers.authorization });
        return { content: [{ type: 'text', text: `refunded ${amount}` }] };
      },
    );
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: undefined,
      enableJsonResponse: true,
    });
    res.on('close', () => {
      void transport.close();
      void mcp.close();
    });
    await mcp.connect(transport);
    await transport.handleRequest(req, res, text ? JSON.parse(text) : undefined);
  });
  await new Promise<void>((r) => mcpHttp.listen(0, '127.0.0.1', r));
  endpoint = new URL(`http://127.0.0.1:${(mcpHttp.address() as AddressInfo).port}/mcp`);
});
after(async () => {
  mcpHttp.closeAllConnections();
  mcpHttp.close();
  await broker.close();
});

const client = () => new BrokerClient({ url: broker.url, auth: { kind: 'none-insecure' } });

/** Asks for the refund token with its arguments, expecting the approval-required refusal. */
async function askApproval(task: Task, amount = 500): Promise<TaskpassApprovalRequiredError> {
  const e = await task.token({ ...refund(amount), arguments: { order: 'o-1', amount } }).then(
    () => undefined,
    (x: unknown) => x,
  );
  assert.ok(e instanceof TaskpassApprovalRequiredError, String(e));
  return e;
}

describe('the approval-required refusal', () => {
  test('is a TaskpassApprovalRequiredError, still a TaskpassDeniedError, with what is asked', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'refund o-1' });
    const e = await askApproval(task);
    assert.ok(e instanceof TaskpassDeniedError);
    assert.ok(isTaskpassDenial(e) && isApprovalRequired(e));
    assert.equal(e.code, 'TASKPASS_APPROVAL_REQUIRED');
    assert.equal(e.status, 403);
    assert.equal(e.template, 'shop-refunds');
    assert.match(e.approvalId, /^apr_[A-Za-z0-9_-]{22}$/);
    assert.equal(e.approvalUrl, `https://broker.test/approvals/${e.approvalId}`);
    assert.ok(e.expiresAt instanceof Date && e.expiresAt.getTime() > Date.now());
    assert.equal(e.request.tool, 'refund');
    assert.equal(e.request.args_sha256, argsSha256(refundArgs));
    assert.deepEqual(e.request.arguments, refundArgs);
    assert.equal(e.request.task.id, task.id);
    // Shape checks also hold for an error from another copy of the package.
    assert.ok(isApprovalRequired({ ...e, name: e.name, code: e.code, reason: e.reason }));
    assert.ok(
      !isApprovalRequired(new TaskpassDeniedError(403, { code: 'TASKPASS_DENIED_TOOL', message: 'm' })),
    );
    // Asking again for the same call gives the same approval.
    assert.equal((await askApproval(task)).approvalId, e.approvalId);
  });

  test('an approval-required answer missing its approval is a bad response, not a half-filled error', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    for (const body of [
      { code: 'TASKPASS_APPROVAL_REQUIRED', message: 'm' },
      {
        code: 'TASKPASS_APPROVAL_REQUIRED',
        message: 'm',
        approval_id: 'apr_AAAAAAAAAAAAAAAAAAAAAA',
        approval_url: 'javascript:alert(1)',
        expires_at: 1,
        request: {},
        template: 't',
      },
    ]) {
      broker.override = (_m, path) => (path.endsWith('/tokens') ? { status: 403, body } : undefined);
      try {
        await assert.rejects(task.token(refund()), (x: unknown) => {
          assert.ok(x instanceof AgentPluginError);
          assert.equal(x.code, 'TASKPASS_AGENT_BAD_RESPONSE');
          return true;
        });
      } finally {
        broker.override = undefined;
      }
    }
  });
});

describe('Task.argumentRules reads the ceiling', () => {
  test('approval and send_arguments bind; a rule for another action or server does not', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    assert.deepEqual(task.argumentRules(SHOP, 'refund', 'write'), { bind: true, send: true, approval: true });
    assert.deepEqual(task.argumentRules(SHOP, 'note', 'write'), { bind: true, send: false, approval: false });
    assert.deepEqual(task.argumentRules(SHOP, 'lookup', 'read'), {
      bind: false,
      send: false,
      approval: false,
    });
    assert.deepEqual(task.argumentRules(SHOP, 'refund', 'admin'), {
      bind: false,
      send: false,
      approval: false,
    });
    assert.deepEqual(task.argumentRules('https://other.test/mcp', 'refund', 'write'), {
      bind: false,
      send: false,
      approval: false,
    });
  });
});

describe('Task.waitForApproval', () => {
  test('holds one long poll until the decision, then the token names the approver', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    const e = await askApproval(task);
    const before = broker.requestsTo(`/approvals/${e.approvalId}`).length;
    setTimeout(() => broker.decide(e.approvalId, 'approved'), 300);
    const view = await task.waitForApproval(e.approvalId, { timeoutMs: 10_000 });
    assert.equal(view.status, 'approved');
    assert.equal(view.decision?.approver.sub, 'lead-1');
    const polls = broker.requestsTo(`/approvals/${e.approvalId}`).slice(before);
    assert.equal(polls.length, 1, 'one held request, no hammering');
    assert.equal(polls[0]?.query, 'wait=60');
    const t = await task.token({ ...refund(), arguments: refundArgs });
    const d = detailsOf(`Bearer ${t.accessToken}`);
    assert.deepEqual(d?.approval, {
      id: e.approvalId,
      approver: { iss: 'https://idp.test', sub: 'lead-1' },
      approved_at: view.decision?.decided_at,
    });
    assert.equal(d?.args_sha256, argsSha256(refundArgs));
    // An approval yields one token: the next request for the same call asks again.
    assert.notEqual((await askApproval(task)).approvalId, e.approvalId);
  });

  for (const [status, code] of [
    ['denied', 'TASKPASS_APPROVAL_DENIED'],
    ['expired', 'TASKPASS_APPROVAL_EXPIRED'],
    ['cancelled', 'TASKPASS_APPROVAL_CANCELLED'],
  ] as const) {
    test(`${status} rejects with a TaskpassDeniedError ${code}`, async () => {
      await using c = client();
      await using task = await c.openTask({ purpose: 'p' });
      const e = await askApproval(task, 101 + status.length);
      setTimeout(() => broker.decide(e.approvalId, status, 'not this one'), 100);
      await assert.rejects(task.waitForApproval(e.approvalId), (x: unknown) => {
        assert.ok(x instanceof TaskpassDeniedError);
        assert.equal(x.code, code);
        assert.equal(x.template, 'shop-refunds');
        if (status === 'denied') assert.equal(x.reason, 'not this one');
        return true;
      });
    });
  }

  test('abort and timeout end the wait with the signal reason / a TimeoutError', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    const e = await askApproval(task, 301);
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 150);
    await assert.rejects(task.waitForApproval(e.approvalId, { signal: ac.signal }), { name: 'AbortError' });
    const t0 = Date.now();
    await assert.rejects(task.waitForApproval(e.approvalId, { timeoutMs: 200 }), { name: 'TimeoutError' });
    assert.ok(Date.now() - t0 < 2000);
    await assert.rejects(task.waitForApproval(e.approvalId, { timeoutMs: 0 }), {
      code: 'TASKPASS_AGENT_CONFIG_INVALID',
    });
  });

  test('the timeout holds beside a caller signal while the garbage collector runs', async () => {
    // AbortSignal.any() does not keep an AbortSignal.timeout() alive on Node 20: collected, it never fires.
    setFlagsFromString('--expose-gc');
    const gc = runInNewContext('gc') as () => void;
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    const e = await askApproval(task, 302);
    const collecting = setInterval(gc, 5);
    try {
      const t0 = Date.now();
      await assert.rejects(
        task.waitForApproval(e.approvalId, { timeoutMs: 300, signal: new AbortController().signal }),
        { name: 'TimeoutError' },
      );
      assert.ok(Date.now() - t0 < 3000);
    } finally {
      clearInterval(collecting);
    }
  });

  test('a broker failing retries with backoff; an unknown approval ends the wait at once', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    const e = await askApproval(task, 302);
    let failures = 2;
    broker.override = (_m, path) =>
      path.startsWith('/v1/approvals/') && failures-- > 0
        ? { status: 503, body: { code: 'TASKPASS_STORE_UNAVAILABLE', message: 'try again' } }
        : undefined;
    try {
      setTimeout(() => broker.decide(e.approvalId, 'approved'), 100);
      const t0 = Date.now();
      assert.equal((await task.waitForApproval(e.approvalId, { timeoutMs: 10_000 })).status, 'approved');
      // Two pauses: 250–500 ms, then 500–1000 ms.
      assert.ok(Date.now() - t0 >= 700, `backed off (${Date.now() - t0} ms)`);
    } finally {
      broker.override = undefined;
    }
    const n = broker.requestsTo('/approvals/apr_ZZZZZZZZZZZZZZZZZZZZZZ').length;
    await assert.rejects(task.waitForApproval('apr_ZZZZZZZZZZZZZZZZZZZZZZ'), (x: unknown) => {
      assert.ok(x instanceof BrokerError);
      assert.equal(x.status, 404);
      return true;
    });
    assert.equal(broker.requestsTo('/approvals/apr_ZZZZZZZZZZZZZZZZZZZZZZ').length, n + 1);
  });

  test('a broker that answers pending without holding the poll is asked about once a second', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    const e = await askApproval(task, 303);
    const view = broker.approvals.get(e.approvalId)!.view;
    broker.override = (_m, path) =>
      path.startsWith('/v1/approvals/') ? { status: 200, body: view } : undefined;
    const before = broker.requestsTo(`/approvals/${e.approvalId}`).length;
    try {
      await assert.rejects(task.waitForApproval(e.approvalId, { timeoutMs: 2500 }), { name: 'TimeoutError' });
    } finally {
      broker.override = undefined;
    }
    const polls = broker.requestsTo(`/approvals/${e.approvalId}`).length - before;
    assert.ok(polls >= 2 && polls <= 4, `${polls} polls in 2.5 s`);
  });

  test('BrokerClient.getApproval: no wait by default, the long poll capped at 60 s', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    const e = await askApproval(task, 305);
    const path = `/approvals/${e.approvalId}`;
    assert.equal((await c.getApproval(e.approvalId)).status, 'pending');
    assert.equal(broker.requestsTo(path).at(-1)?.query, '');
    broker.decide(e.approvalId, 'approved');
    await c.getApproval(e.approvalId, { waitSec: 600 });
    assert.equal(broker.requestsTo(path).at(-1)?.query, 'wait=60');
    await c.getApproval(e.approvalId, { waitSec: 0.2 });
    assert.equal(broker.requestsTo(path).at(-1)?.query, 'wait=1');
  });

  test('a malformed approval view is a bad response', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    const e = await askApproval(task, 304);
    broker.override = (_m, path) =>
      path.startsWith('/v1/approvals/')
        ? { status: 200, body: { id: e.approvalId, status: 'approved' } }
        : undefined;
    try {
      await assert.rejects(task.waitForApproval(e.approvalId), { code: 'TASKPASS_AGENT_BAD_RESPONSE' });
    } finally {
      broker.override = undefined;
    }
  });
});

describe('taskpassFetch and approvals, in front of a real MCP server', () => {
  async function connect(task: Task, approval?: Parameters<typeof taskpassFetch>[1]['approval']) {
    const fetch = taskpassFetch(task, {
      audience: SHOP,
      tools: { refund: { resource: 'orders/{order}', action: 'write' } },
      ...(approval ? { approval } : {}),
    });
    const mcp = new Client({ name: 'agent', version: '1.0.0' });
    await mcp.connect(new StreamableHTTPClientTransport(endpoint, { fetch }));
    return mcp;
  }

  test("approval 'throw' (default): callTool rejects with the approval-required error; nothing reaches the tool", async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    const mcp = await connect(task);
    ran.length = 0;
    await assert.rejects(mcp.callTool({ name: 'refund', arguments: refundArgs }), (e: unknown) => {
      assert.ok(isApprovalRequired(e));
      return true;
    });
    assert.equal(ran.length, 0);
    // Below the limit no approval is needed; the ceiling still binds and sends the arguments.
    await mcp.callTool({ name: 'refund', arguments: { order: 'o-1', amount: 20 } });
    assert.equal(ran.length, 1);
    const d = detailsOf(ran[0]?.authorization);
    assert.equal(d?.args_sha256, argsSha256({ order: 'o-1', amount: 20 }));
    assert.equal(d?.approval, undefined);
    const sent = broker.requestsTo(`/${task.id}/tokens`).at(-1)?.body;
    assert.deepEqual(sent?.arguments, { order: 'o-1', amount: 20 });
    await mcp.close();
  });

  test('wait: calls back with the URL, waits, then sends the call with a token naming the approver', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    const shown: string[] = [];
    const mcp = await connect(task, {
      wait: true,
      timeoutMs: 10_000,
      onApprovalRequired: (e) => {
        shown.push(e.approvalUrl);
        setTimeout(() => broker.decide(e.approvalId, 'approved'), 200);
      },
    });
    ran.length = 0;
    const r = await mcp.callTool({ name: 'refund', arguments: { order: 'o-1', amount: 700 } });
    assert.deepEqual(r.content, [{ type: 'text', text: 'refunded 700' }]);
    assert.equal(shown.length, 1);
    assert.match(shown[0]!, /^https:\/\/broker\.test\/approvals\/apr_/);
    assert.equal(ran.length, 1);
    const d = detailsOf(ran[0]?.authorization);
    assert.equal((d?.approval as { approver: { sub: string } } | undefined)?.approver.sub, 'lead-1');
    assert.equal(d?.args_sha256, argsSha256({ order: 'o-1', amount: 700 }));
    await mcp.close();
  });

  test('wait: a denial rejects the call and the tool never runs', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    const mcp = await connect(task, {
      wait: true,
      onApprovalRequired: (e) => {
        setTimeout(() => broker.decide(e.approvalId, 'denied', 'too much'), 100);
      },
    });
    ran.length = 0;
    await assert.rejects(mcp.callTool({ name: 'refund', arguments: { order: 'o-1', amount: 800 } }), {
      code: 'TASKPASS_APPROVAL_DENIED',
      reason: 'too much',
    });
    assert.equal(ran.length, 0);
    await mcp.close();
  });

  test('wait: the MCP client timing out cancels the wait; the call is never sent after it', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    let approvalId = '';
    const mcp = await connect(task, {
      wait: true,
      onApprovalRequired: (e) => {
        approvalId = e.approvalId;
      },
    });
    ran.length = 0;
    await assert.rejects(
      mcp.callTool({ name: 'refund', arguments: { order: 'o-1', amount: 900 } }, undefined, { timeout: 300 }),
      /timed out/i,
    );
    await new Promise((r) => setTimeout(r, 200)); // the cancellation reaches the fetch
    broker.decide(approvalId, 'approved');
    await new Promise((r) => setTimeout(r, 300));
    assert.equal(ran.length, 0);
    assert.equal(broker.approvals.get(approvalId)?.view.status, 'approved', 'no token was taken for it');
    await mcp.close();
  });

  test('a wrong approval option fails at construction', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    for (const approval of [
      { wait: false },
      'wait',
      { wait: true, timeoutMs: -1 },
      { wait: true, onApprovalRequired: 'x' },
    ]) {
      assert.throws(
        () => taskpassFetch(task, { audience: SHOP, approval: approval as never }),
        (e: unknown) => e instanceof AgentPluginError && e.code === 'TASKPASS_AGENT_CONFIG_INVALID',
      );
    }
  });
});

describe('withCallToken (stdio) and approvals', () => {
  const tools = { refund: { resource: 'orders/{order}', action: 'write' as const } };
  const params = (amount: number) => ({ name: 'refund', arguments: { order: 'o-1', amount } });

  test('throws by default; waits with approval: { wait: true } and puts the approved token in _meta', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    await assert.rejects(withCallToken(task, params(600), { audience: SHOP, tools }), (e: unknown) =>
      isApprovalRequired(e),
    );
    const out = await withCallToken(task, params(600), {
      audience: SHOP,
      tools,
      approval: {
        wait: true,
        onApprovalRequired: (e) => void setTimeout(() => broker.decide(e.approvalId, 'approved'), 100),
      },
    });
    const d = detailsOf(`Bearer ${String(out._meta?.['dev.taskpass/token'])}`);
    assert.equal(d?.args_sha256, argsSha256({ order: 'o-1', amount: 600 }));
    assert.equal((d?.approval as { approver: { sub: string } } | undefined)?.approver.sub, 'lead-1');
  });

  test('its signal ends the wait', async () => {
    await using c = client();
    await using task = await c.openTask({ purpose: 'p' });
    const ac = new AbortController();
    setTimeout(() => ac.abort(), 150);
    await assert.rejects(
      withCallToken(task, params(601), {
        audience: SHOP,
        tools,
        approval: { wait: true },
        signal: ac.signal,
      }),
      { name: 'AbortError' },
    );
  });
});
