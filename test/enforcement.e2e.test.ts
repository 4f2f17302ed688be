// What the MCP server refuses, end to end on real SPIRE: the stack of examples/stack.ts (SPIRE
// server + agent, IdP, broker with ./policies, ticket desk over mTLS). Tokens come from the broker
// through the agent plugin (BrokerClient / Task); each tools/call is a raw JSON-RPC POST over an mTLS
// connection holding a chosen workload's X.509-SVID, so the test controls the Authorization header
// exactly. Two more ticket desks share the stack's SPIRE and broker: one for another resource URI
// (audience), one whose revocation feed goes through a TCP proxy the test can cut.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { BrokerClient, type Task, TaskpassDeniedError } from '@taskpass/agent-plugin';
import { createMtlsAgent, matchId, type TlsSource } from '@taskpass/spiffe';
import type { X509Source } from '@taskpass/spiffe/workload';
import type { Agent } from 'undici';
import { ALICE, type Stack, startStack } from '../examples/stack.ts';
import { type RunningTicketDesk, startTicketDesk } from '../examples/ticket-desk/server.ts';
import { assertAccepted, assertRefused, rawToolCall } from './support/mcp-raw.ts';
import { registerWorkload, sourceByHint } from './support/workloads.ts';
import { pollUntil } from '../harness/poll.ts';
import { startTcpProxy, type TcpProxy } from './support/tcp-proxy.ts';

/** Another support agent: a legitimate workload of the trust domain, but not the one tokens are bound to. */
const OTHER_AGENT_ID = 'spiffe://taskpass.local/agents/support/other-bot';
const OTHER_AUDIENCE = 'https://billing.taskpass.local/mcp';
/** Feed staleness limit of the desk behind the cuttable proxy, and the broker's heartbeat. */
const STALE_MS = 2000;
const HEARTBEAT_MS = 250;

describe('enforcement at the MCP server (real SPIRE, HTTPS with mTLS)', () => {
  let stack: Stack;
  let agentSource: X509Source;
  let otherSource: X509Source;
  /** The agent's mTLS connection to any ticket desk (authenticated by the desk's SPIFFE ID). */
  let asAgent: Agent;
  /** Another workload's mTLS connection (its own SVID) to the ticket desk. */
  let asOther: Agent;
  let broker: BrokerClient;
  let billing: RunningTicketDesk;
  let feedProxy: TcpProxy;
  let cuttable: RunningTicketDesk;
  const cleanups: (() => Promise<unknown>)[] = [];

  before(async () => {
    stack = await startStack({ brokerLogLevel: 'warn', feedHeartbeatMs: HEARTBEAT_MS });

    agentSource = await sourceByHint(stack, stack.hints.agent);
    cleanups.push(() => agentSource.close());
    otherSource = await registerWorkload(stack, {
      spiffeId: OTHER_AGENT_ID,
      hint: 'other-agent',
      entryId: 'taskpass-4-other',
    });
    cleanups.push(() => otherSource.close());
    asAgent = createMtlsAgent(agentSource as TlsSource, matchId(stack.ids.tickets));
    cleanups.push(() => asAgent.close());
    asOther = createMtlsAgent(otherSource as TlsSource, matchId(stack.ids.tickets));
    cleanups.push(() => asOther.close());
    broker = new BrokerClient({
      url: stack.urls.broker,
      auth: { kind: 'mtls', source: agentSource as TlsSource, brokerId: stack.ids.broker },
    });
    cleanups.push(() => broker.close());

    const desk = {
      workloadApiAddress: stack.spire.address,
      hint: stack.hints.tickets,
      brokerUrl: stack.urls.broker,
      brokerIssuer: stack.issuer,
      brokerId: stack.ids.broker,
    };
    // The same software for another resource: tokens must name it, not the ticket desk.
    billing = await startTicketDesk({ ...desk, audience: OTHER_AUDIENCE });
    cleanups.push(() => billing.close());
    // The ticket desk again, its revocation feed through a proxy, with a short staleness limit.
    feedProxy = await startTcpProxy({ port: Number(new URL(stack.urls.broker).port) });
    cleanups.push(() => feedProxy.close());
    cuttable = await startTicketDesk({
      ...desk,
      audience: stack.audience,
      feedBrokerUrl: `https://127.0.0.1:${feedProxy.port}`,
      staleness: { maxFeedAgeMs: STALE_MS },
    });
    cleanups.push(() => cuttable.close());
  });

  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    await stack?.stop();
  });

  const openTask = async (purpose: string): Promise<Task> =>
    broker.openTask({ purpose, userToken: await stack.userToken(ALICE), ttlSeconds: 300 });
  const readToken = (task: Task, ticket: string) =>
    task.token({
      audience: stack.audience,
      tool: 'get_ticket',
      resource: `tickets/${ticket}`,
      action: 'read',
    });
  const writeToken = (task: Task, ticket: string) =>
    task.token({
      audience: stack.audience,
      tool: 'update_ticket',
      resource: `tickets/${ticket}`,
      action: 'write',
    });

  test('a token for get_ticket is refused on a call of another tool', async () => {
    await using task = await openTask('read T-1001');
    const token = (await readToken(task, 'T-1001')).accessToken;
    const commentsBefore = stack.tickets.desk.get('T-1001').comments.length;

    const update = await rawToolCall(asAgent, stack.urls.mcp, token, 'update_ticket', {
      ticket_id: 'T-1001',
      comment: 'written with a read token',
    });
    assertRefused(update, 403, 'TASKPASS_VERIFY_WRONG_TOOL', 'insufficient_scope');
    const list = await rawToolCall(asAgent, stack.urls.mcp, token, 'list_tickets', {});
    assertRefused(list, 403, 'TASKPASS_VERIFY_WRONG_TOOL', 'insufficient_scope');
    assert.equal(stack.tickets.desk.get('T-1001').comments.length, commentsBefore, 'nothing was written');

    // The token itself is good: it works for the call it names.
    const get = assertAccepted(
      await rawToolCall(asAgent, stack.urls.mcp, token, 'get_ticket', { ticket_id: 'T-1001' }),
    );
    assert.equal((get.ticket as { id: string }).id, 'T-1001');
    await task.complete();
  });

  test('a token for tickets/T-1001 is refused on the same tool for T-1002', async () => {
    await using task = await openTask('read T-1001');
    const token = (await readToken(task, 'T-1001')).accessToken;
    const other = await rawToolCall(asAgent, stack.urls.mcp, token, 'get_ticket', { ticket_id: 'T-1002' });
    assertRefused(other, 403, 'TASKPASS_VERIFY_WRONG_RESOURCE', 'insufficient_scope');
    assertAccepted(await rawToolCall(asAgent, stack.urls.mcp, token, 'get_ticket', { ticket_id: 'T-1001' }));
    await task.complete();
  });

  test('a single-use write token works once and is refused when replayed', async () => {
    await using task = await openTask('comment on T-1003');
    // The write template requires a read of the same ticket in this task.
    assertAccepted(
      await rawToolCall(
        asAgent,
        stack.urls.mcp,
        (await readToken(task, 'T-1003')).accessToken,
        'get_ticket',
        {
          ticket_id: 'T-1003',
        },
      ),
    );
    const issued = await writeToken(task, 'T-1003');
    assert.equal(issued.singleUse, true);
    const args = { ticket_id: 'T-1003', comment: 'Address change forwarded to the carrier.' };
    const commentsBefore = stack.tickets.desk.get('T-1003').comments.length;

    const first = assertAccepted(
      await rawToolCall(asAgent, stack.urls.mcp, issued.accessToken, 'update_ticket', args),
    );
    assert.equal((first.caller as { user: string }).user, ALICE.sub);
    assert.equal(stack.tickets.desk.get('T-1003').comments.length, commentsBefore + 1);

    const again = await rawToolCall(asAgent, stack.urls.mcp, issued.accessToken, 'update_ticket', args);
    assertRefused(again, 401, 'TASKPASS_VERIFY_REPLAYED', 'invalid_token');
    assert.equal(
      stack.tickets.desk.get('T-1003').comments.length,
      commentsBefore + 1,
      'the replay wrote nothing',
    );
    await task.complete();
  });

  test('a token for one MCP server (audience) is refused by another', async () => {
    await using task = await openTask('read T-1001');
    // No template names the other server: the broker will not mint a token for it.
    await assert.rejects(
      task.token({
        audience: OTHER_AUDIENCE,
        tool: 'get_ticket',
        resource: 'tickets/T-1001',
        action: 'read',
      }),
      (e) => e instanceof TaskpassDeniedError && /^TASKPASS_DENIED_/.test(e.code),
    );
    // A token for the ticket desk, presented to the other server (same tools, same agent, same mTLS).
    const token = (await readToken(task, 'T-1001')).accessToken;
    const r = await rawToolCall(asAgent, billing.mcpUrl, token, 'get_ticket', { ticket_id: 'T-1001' });
    assertRefused(r, 401, 'TASKPASS_VERIFY_WRONG_AUDIENCE', 'invalid_token');
    assert.match(r.challenge ?? '', /resource_metadata="https:\/\/billing\.taskpass\.local\//);
    // It is a good token where it belongs.
    assertAccepted(await rawToolCall(asAgent, stack.urls.mcp, token, 'get_ticket', { ticket_id: 'T-1001' }));
    await task.complete();
  });

  test('after complete(), a leftover token is refused within the propagation window', async (t) => {
    const task = await openTask('read T-1002');
    const token = (await readToken(task, 'T-1002')).accessToken;
    assertAccepted(await rawToolCall(asAgent, stack.urls.mcp, token, 'get_ticket', { ticket_id: 'T-1002' }));

    const done = await task.complete();
    const t0 = performance.now();
    assert.equal(done.status, 'completed');
    let accepted = 0;
    const refused = await pollUntil('the leftover token refused', 5000, 0, async () => {
      const r = await rawToolCall(asAgent, stack.urls.mcp, token, 'get_ticket', { ticket_id: 'T-1002' });
      if (r.status === 200) {
        accepted++;
        return undefined;
      }
      return r;
    });
    const ms = performance.now() - t0;
    t.diagnostic(
      `leftover token refused ${ms.toFixed(1)} ms after complete() returned (${accepted} calls accepted before)`,
    );
    assertRefused(refused, 401, 'TASKPASS_VERIFY_REVOKED', 'invalid_token');
    assert.ok(ms < 2000, `refused only after ${ms.toFixed(0)} ms`);
  });

  test('a token presented over another workload’s mTLS connection is refused (cnf)', async () => {
    assert.equal(otherSource.getX509Svid().id.toString(), OTHER_AGENT_ID);
    assert.equal(agentSource.getX509Svid().id.toString(), stack.ids.agent);
    await using task = await openTask('read T-1001');
    const token = (await readToken(task, 'T-1001')).accessToken;

    const stolen = await rawToolCall(asOther, stack.urls.mcp, token, 'get_ticket', { ticket_id: 'T-1001' });
    assertRefused(stolen, 401, 'TASKPASS_VERIFY_CNF_MISMATCH', 'invalid_token');
    // Over the agent's own connection the same token is accepted.
    assertAccepted(await rawToolCall(asAgent, stack.urls.mcp, token, 'get_ticket', { ticket_id: 'T-1001' }));
    await task.complete();
  });

  test('with its revocation feed cut, the verifier refuses writes once stale, keeps reads, and recovers', async (t) => {
    const mcp = cuttable.mcpUrl;
    const desk = cuttable.desk;
    await using task = await openTask('comment on T-1001 while the feed is cut');
    const read = (await readToken(task, 'T-1001')).accessToken;
    assertAccepted(await rawToolCall(asAgent, mcp, read, 'get_ticket', { ticket_id: 'T-1001' }));
    // While the feed is fresh, writes go through.
    assertAccepted(
      await rawToolCall(asAgent, mcp, (await writeToken(task, 'T-1001')).accessToken, 'update_ticket', {
        ticket_id: 'T-1001',
        comment: 'before the cut',
      }),
    );
    assert.equal(desk.get('T-1001').comments.length, 1);

    const cutAt = performance.now();
    feedProxy.cut();
    await pollUntil('the feed goes stale', 10_000, 25, () => {
      const last = cuttable.feed.lastEventAt;
      return last !== undefined && Date.now() - last > STALE_MS ? true : undefined;
    });
    t.diagnostic(
      `feed stale ${(performance.now() - cutAt).toFixed(0)} ms after the cut (limit ${STALE_MS} ms)`,
    );

    // A fresh, valid single-use write token is refused while the feed is stale …
    const write = (await writeToken(task, 'T-1001')).accessToken;
    const args = { ticket_id: 'T-1001', comment: 'after the cut' };
    const stale = await rawToolCall(asAgent, mcp, write, 'update_ticket', args);
    assertRefused(stale, 503, 'TASKPASS_VERIFY_FEED_STALE');
    assert.ok(stale.challenge === undefined, 'a 503 is not a token challenge');
    assert.equal(desk.get('T-1001').comments.length, 1, 'nothing was written');
    // … reads continue (readsWhenStale: allow, the default).
    assertAccepted(await rawToolCall(asAgent, mcp, read, 'get_ticket', { ticket_id: 'T-1001' }));

    const restoredAt = performance.now();
    feedProxy.restore();
    const refusals: string[] = [];
    const ok = await pollUntil('the write accepted after the feed returns', 15_000, 50, async () => {
      const r = await rawToolCall(asAgent, mcp, write, 'update_ticket', args);
      if (r.status === 200) return r;
      refusals.push(`${r.status} ${r.code}`);
      return undefined;
    });
    t.diagnostic(
      `write accepted ${(performance.now() - restoredAt).toFixed(0)} ms after the feed was restored (${refusals.length} refusals before)`,
    );
    // Until then, only the staleness refusal: the refused token was not spent.
    assert.deepEqual(
      [...new Set(refusals)].filter((x) => x !== '503 TASKPASS_VERIFY_FEED_STALE'),
      [],
    );
    assertAccepted(ok);
    assert.equal(desk.get('T-1001').comments.length, 2);
    assert.equal(desk.get('T-1001').comments[1]?.text, 'after the cut');
    await task.complete();
  });
});
