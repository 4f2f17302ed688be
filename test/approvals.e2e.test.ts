// Approvals end to end on real SPIRE (issue #9, docs/approvals.md): the stack of examples/stack.ts
// on Redis with ./policies (tickets-refunds: a refund above 100 needs a support lead), the agent
// over mTLS with its X.509-SVID (the agent plugin's BrokerClient, and an MCP client with
// taskpassFetch), and people deciding with their OWN IdP tokens for the broker's approvals audience,
// over TLS that authenticates the broker by SPIFFE ID and presents no client certificate.
//
// Brokers: A is the stack's; B a second replica on the same Redis (same keys, same approvals);
// C a broker on the same SPIRE with its own SQLite store and a copy of ./policies whose refund
// approval lives 3 s and names `delegating_user: true` (expiry, and the delegating user confirming).
//
// Ticket T-1001 (order 129.90) takes the refunds above the limit (only the approve test runs one),
// T-1002 (54.00) the one below it.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { copyFile, mkdir, readdir, readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import {
  type ApprovalMode,
  argsSha256,
  BrokerClient,
  BrokerError,
  type CallTokenRequest,
  type Task,
  TaskpassApprovalRequiredError,
  TaskpassDeniedError,
  taskpassFetch,
} from '@taskpass/agent-plugin';
import { type RunningBroker, runCli, startBroker } from '@taskpass/broker';
import {
  createMtlsAgent,
  createTlsAgent,
  matchId,
  type TlsSource,
  TrustDomain,
  X509Bundle,
} from '@taskpass/spiffe';
import { WorkloadApiClient, type X509Source } from '@taskpass/spiffe/workload';
import { Redis } from 'ioredis';
import { decodeProtectedHeader, generateKeyPair, SignJWT } from 'jose';
import pino from 'pino';
import { type Agent, fetch as undiciFetch } from 'undici';
import { ALICE, BOB, type DemoUser, type Stack, startStack } from '../examples/stack.ts';
import { assertRefused, rawToolCall } from './support/mcp-raw.ts';
import { sleep } from '../harness/poll.ts';
import { sourceByHint } from './support/workloads.ts';

const REDIS_URL = 'redis://127.0.0.1:6379';
const PREFIX = `taskpass-test:approvals:${process.pid}:${randomUUID().slice(0, 8)}:`;
/** A second support lead, for concurrent decisions. */
const CAROL: DemoUser = { sub: 'carol', email: 'carol@taskpass.local', groups: ['support', 'support-leads'] };
/** A support agent who is no lead: outside the refund approval's `approvers:`. */
const DAVE: DemoUser = { sub: 'dave', email: 'dave@taskpass.local', groups: ['support'] };
/** The pending-approval lifetime in broker C's policies. */
const SHORT_TTL_SEC = 3;

interface Decision {
  status: number;
  body: {
    code?: string;
    status?: string;
    decision?: {
      decision: string;
      approver: { iss: string; sub: string };
      decided_at: number;
      comment?: string;
    };
  };
}

const claimsOf = (token: string) =>
  JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>;
const detailOf = (token: string) =>
  (claimsOf(token).authorization_details as Record<string, unknown>[])[0] as {
    args_sha256?: string;
    approval?: { id: string; approver: { iss: string; sub: string }; approved_at: number };
  };

const refusedWith = (code: string) => (e: unknown) => {
  assert.ok(e instanceof TaskpassDeniedError, String(e));
  assert.equal(e.code, code, e.message);
  return true;
};

/** The approval the promise is refused with (it must be refused with TASKPASS_APPROVAL_REQUIRED). */
async function approvalOf(p: Promise<unknown>): Promise<TaskpassApprovalRequiredError> {
  try {
    await p;
  } catch (e) {
    if (e instanceof TaskpassApprovalRequiredError) return e;
    throw e;
  }
  assert.fail('expected TASKPASS_APPROVAL_REQUIRED, the token was issued');
}

/** A copy of ./policies whose refund approval lives SHORT_TTL_SEC and names delegating_user. */
async function shortApprovalPolicies(dir: string): Promise<string> {
  const src = join(import.meta.dirname, '..', 'policies');
  await mkdir(dir);
  for (const name of await readdir(src)) {
    if (name.endsWith('.yaml')) await copyFile(join(src, name), join(dir, name));
  }
  const file = join(dir, 'tickets-refunds.yaml');
  const yaml = await readFile(file, 'utf8');
  const edited = yaml
    .replace(/\n {6}ttl: 10m\n/, `\n      ttl: ${SHORT_TTL_SEC}s\n`)
    .replace(
      /\n( {8})claims: \{ groups: \[support-leads\] \}\n/,
      '\n$1claims: { groups: [support-leads] }\n$1delegating_user: true\n',
    );
  assert.match(edited, new RegExp(`ttl: ${SHORT_TTL_SEC}s`), 'the approval ttl was rewritten');
  assert.match(edited, /delegating_user: true/, 'delegating_user was added');
  await writeFile(file, edited);
  return dir;
}

describe('approvals end to end (real SPIRE, mTLS, two replicas on Redis)', () => {
  let stack: Stack;
  let admin: Redis;
  let agentSource: X509Source;
  /** The agent's mTLS connections: to the ticket desk, and to the brokers. */
  let asAgent: Agent;
  let agentToBroker: Agent;
  /** A person's TLS connection to the brokers: the SPIRE bundle, no client certificate. */
  let asPerson: Agent;
  let caFile: string;
  let brokerB: RunningBroker;
  let brokerC: RunningBroker;
  let viaA: BrokerClient;
  let viaB: BrokerClient;
  let viaC: BrokerClient;
  const cleanups: (() => Promise<unknown>)[] = [];

  before(async () => {
    admin = new Redis(REDIS_URL);
    stack = await startStack({ brokerLogLevel: 'warn', redis: { url: REDIS_URL, keyPrefix: PREFIX } });
    agentSource = await sourceByHint(stack, stack.hints.agent);
    cleanups.push(() => agentSource.close());
    asAgent = createMtlsAgent(agentSource as TlsSource, matchId(stack.ids.tickets));
    cleanups.push(() => asAgent.close());
    agentToBroker = createMtlsAgent(agentSource as TlsSource, matchId(stack.ids.broker));
    cleanups.push(() => agentToBroker.close());

    // What an approver's machine trusts: the trust domain's bundle (`spire-server bundle show`).
    const pem = await stack.spire.bundlePem();
    caFile = join(stack.dir, 'bundle.pem');
    await writeFile(caFile, pem);
    asPerson = createTlsAgent(
      X509Bundle.fromPem(TrustDomain.parse('taskpass.local'), pem),
      matchId(stack.ids.broker),
    );
    cleanups.push(() => asPerson.close());

    const logger = (name: string) =>
      pino({ level: 'warn' }, pino.destination({ dest: join(stack.dir, `${name}.log`), sync: true }));
    brokerB = await startBroker(stack.brokerConfig, {
      logger: logger('broker-b'),
      installSignalHandlers: false,
    });
    cleanups.push(() => brokerB.close());
    brokerC = await startBroker(
      {
        ...stack.brokerConfig,
        policiesDir: await shortApprovalPolicies(join(stack.dir, 'policies-short')),
        store: { sqlite: { ...stack.brokerConfig.store.sqlite!, path: join(stack.dir, 'broker-c.db') } },
      },
      { logger: logger('broker-c'), installSignalHandlers: false },
    );
    cleanups.push(() => brokerC.close());

    const clientOf = (url: string) =>
      new BrokerClient({
        url,
        auth: { kind: 'mtls', source: agentSource as TlsSource, brokerId: stack.ids.broker },
      });
    viaA = clientOf(stack.urls.broker);
    viaB = clientOf(brokerB.url);
    viaC = clientOf(brokerC.url);
    for (const c of [viaA, viaB, viaC]) cleanups.push(() => c.close());
  });

  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    await stack?.stop();
    if (admin) {
      let cursor = '0';
      do {
        const [next, keys] = await admin.scan(cursor, 'MATCH', `${PREFIX}*`, 'COUNT', 500);
        cursor = next;
        if (keys.length) await admin.del(...keys);
      } while (cursor !== '0');
      await admin.quit();
    }
  });

  // --- helpers ------------------------------------------------------------------------------------

  const openTask = async (purpose: string, user: DemoUser = ALICE, via = viaA): Promise<Task> =>
    via.openTask({ purpose, userToken: await stack.userToken(user), ttlSeconds: 300 });

  const readReq = (ticket: string): CallTokenRequest => ({
    audience: stack.audience,
    tool: 'get_ticket',
    resource: `tickets/${ticket}`,
    action: 'read',
  });
  /** A refund's token request, as the plugin sends it (the ceiling says send_arguments). */
  const refundReq = (ticket: string, amount: number): CallTokenRequest => {
    const args = { ticket_id: ticket, amount };
    return {
      audience: stack.audience,
      tool: 'issue_refund',
      resource: `tickets/${ticket}`,
      action: 'write',
      argsSha256: argsSha256(args),
      arguments: args,
    };
  };
  /** Opens a task, reads the ticket (the refund's prerequisite) and asks for a refund needing approval. */
  async function askRefund(purpose: string, amount: number, user: DemoUser = ALICE, via = viaA) {
    const task = await openTask(purpose, user, via);
    await task.token(readReq('T-1001'));
    const asked = await approvalOf(task.token(refundReq('T-1001', amount)));
    return { task, asked };
  }

  /** POST /v1/approvals/:id/decision as a person: their bearer token, no client certificate. */
  async function decide(
    id: string,
    token: string,
    decision: 'approve' | 'deny',
    opts: { comment?: string; brokerUrl?: string; dispatcher?: Agent } = {},
  ): Promise<Decision> {
    const res = await undiciFetch(`${opts.brokerUrl ?? stack.urls.broker}/v1/approvals/${id}/decision`, {
      method: 'POST',
      dispatcher: opts.dispatcher ?? asPerson,
      headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
      body: JSON.stringify({ decision, ...(opts.comment ? { comment: opts.comment } : {}) }),
    });
    return { status: res.status, body: (await res.json()) as Decision['body'] };
  }
  const approveAs = async (user: DemoUser, id: string, brokerUrl?: string) =>
    decide(id, await stack.approverToken(user), 'approve', brokerUrl ? { brokerUrl } : {});

  /** `taskpass approvals …` as a person (their token in the environment, the bundle as --ca). */
  async function cli(user: DemoUser, args: string[]) {
    const out: string[] = [];
    const err: string[] = [];
    const code = await runCli(
      ['approvals', ...args, '--broker', stack.urls.broker, '--ca', caFile, '--broker-id', stack.ids.broker],
      {
        out: (s) => out.push(s),
        err: (s) => err.push(s),
        env: { TASKPASS_APPROVER_TOKEN: await stack.approverToken(user) },
      },
    );
    return { code, out: out.join('\n'), err: err.join('\n') };
  }

  /** An MCP client (SDK 1.x) on the desk with taskpassFetch over the agent's mTLS connection. */
  async function mcpClient(task: Task, approval: ApprovalMode = 'throw') {
    /** The Authorization header of each tools/call sent, by tool name. */
    const callTokens = new Map<string, string>();
    const transport = new StreamableHTTPClientTransport(new URL(stack.urls.mcp), {
      fetch: taskpassFetch(task, {
        audience: stack.audience,
        approval,
        fetch: async (url, init) => {
          const body =
            typeof init?.body === 'string' ? (JSON.parse(init.body) as Record<string, unknown>) : {};
          if (body.method === 'tools/call') {
            const name = (body.params as { name: string }).name;
            callTokens.set(name, new Headers(init?.headers).get('authorization')!.slice('Bearer '.length));
          }
          return (await undiciFetch(url, {
            ...(init as object),
            dispatcher: asAgent,
          })) as unknown as Response;
        },
      }),
    });
    const client = new Client({ name: 'support-bot', version: '1.0.0' });
    cleanups.push(() => client.close());
    await client.connect(transport);
    await client.listTools();
    return { client, callTokens };
  }
  const outputOf = (r: Awaited<ReturnType<Client['callTool']>>) =>
    JSON.parse((r.content as { text: string }[])[0]!.text) as {
      ticket: { order: { refunded: number }; comments: { by: string; text: string }[] };
      caller: { user: string; approval?: { id: string; approver: { iss: string; sub: string } } };
    };

  // --- the story ------------------------------------------------------------------------------

  test('approve: the refund above the limit waits for Bob, proceeds with his approval in the token, and the desk names him', async () => {
    await using task = await openTask('refund the damaged parcel of T-1001');
    const args = { ticket_id: 'T-1001', amount: 101 };
    const asked: TaskpassApprovalRequiredError[] = [];
    let decision: Promise<Decision> | undefined;
    let decidedAt = 0;
    const { client, callTokens } = await mcpClient(task, {
      wait: true,
      onApprovalRequired: (e) => {
        asked.push(e);
        // Bob decides a moment later, while the agent is in its long poll.
        decision = sleep(300).then(async () => {
          const d = await approveAs(BOB, e.approvalId);
          decidedAt = performance.now();
          return d;
        });
      },
    });
    await client.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1001' } });
    const r = await client.callTool({ name: 'issue_refund', arguments: args });
    const doneAt = performance.now();

    // What the agent was told: the approval, where to send a person, until when, and what is asked.
    assert.equal(asked.length, 1);
    const e = asked[0]!;
    assert.equal(e.status, 403);
    assert.equal(e.code, 'TASKPASS_APPROVAL_REQUIRED');
    assert.match(e.approvalId, /^apr_[A-Za-z0-9_-]{22}$/);
    // The stack's approvals.url: the console's approval page.
    assert.match(
      e.approvalUrl,
      new RegExp(`^http://127\\.0\\.0\\.1:\\d+/console/approvals/${e.approvalId}$`),
    );
    // The rule's ttl is 10m, but an approval never outlives its task (opened for 5 minutes).
    assert.ok(e.expiresAt.getTime() > Date.now() + 4 * 60_000, `expires at ${e.expiresAt.toISOString()}`);
    assert.equal(e.expiresAt.getTime(), task.expiresAt.getTime());
    assert.deepEqual(e.request, {
      agent: stack.ids.agent,
      user: ALICE.sub,
      task: { id: task.id, purpose: 'refund the damaged parcel of T-1001' },
      audience: stack.audience,
      tool: 'issue_refund',
      resource: 'tickets/T-1001',
      action: 'write',
      args_sha256: argsSha256(args),
      arguments: args,
      template: 'tickets-refunds',
    });

    // Bob's decision, and the call that waited for it (woken by the long poll, not a later poll).
    const d = await decision!;
    assert.equal(d.status, 200, JSON.stringify(d.body));
    assert.equal(d.body.status, 'approved');
    assert.deepEqual(d.body.decision?.approver, { iss: stack.idp.issuer, sub: BOB.sub });
    assert.ok(doneAt >= decidedAt, 'the call was sent after the decision');
    assert.ok(doneAt - decidedAt < 10_000, `the wait ended ${Math.round(doneAt - decidedAt)} ms after`);

    // The refund ran; the desk's handler saw who approved.
    assert.equal(r.isError, undefined, JSON.stringify(r.content));
    const out = outputOf(r);
    assert.equal(out.caller.user, ALICE.sub);
    assert.deepEqual(out.caller.approval?.approver, { iss: stack.idp.issuer, sub: BOB.sub });
    assert.equal(out.caller.approval?.id, e.approvalId);
    assert.equal(stack.tickets.desk.get('T-1001').order.refunded, 101);
    const comment = stack.tickets.desk.get('T-1001').comments.at(-1)!;
    assert.equal(comment.text, 'refunded 101.00 EUR');
    assert.equal(comment.by, `alice via ${stack.ids.agent}, approved by bob`);

    // The token carried the approval, bound to the exact arguments.
    const detail = detailOf(callTokens.get('issue_refund')!);
    assert.equal(detail.args_sha256, argsSha256(args));
    assert.deepEqual(detail.approval, {
      id: e.approvalId,
      approver: { iss: stack.idp.issuer, sub: BOB.sub },
      approved_at: d.body.decision!.decided_at,
    });
    assert.equal((await viaA.getApproval(e.approvalId)).status, 'used');
    await client.close();
    await task.complete();
  });

  test('a refund below the limit needs no approval (its token is still bound to its arguments)', async () => {
    await using task = await openTask('refund part of the double charge of T-1002');
    const { client, callTokens } = await mcpClient(task); // approval: 'throw'
    await client.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1002' } });
    const args = { ticket_id: 'T-1002', amount: 20 };
    const r = await client.callTool({ name: 'issue_refund', arguments: args });
    assert.equal(r.isError, undefined, JSON.stringify(r.content));
    const out = outputOf(r);
    assert.equal(out.caller.approval, undefined);
    assert.equal(out.ticket.order.refunded, 20);
    assert.equal(out.ticket.comments.at(-1)?.by, `alice via ${stack.ids.agent}`);
    const detail = detailOf(callTokens.get('issue_refund')!);
    assert.equal(detail.args_sha256, argsSha256(args));
    assert.equal(detail.approval, undefined);
    await client.close();
    await task.complete();
  });

  test('deny (taskpass approvals show / deny): the waiting agent and the next token request get TASKPASS_APPROVAL_DENIED with the comment', async () => {
    const { task, asked } = await askRefund('refund T-1001 in full', 120);
    await using _ = task;
    const shown = await cli(BOB, ['show', asked.approvalId, '--json']);
    assert.equal(shown.code, 0, shown.err);
    const view = JSON.parse(shown.out) as { status: string; request: { arguments: unknown; user: string } };
    assert.equal(view.status, 'pending');
    assert.equal(view.request.user, ALICE.sub);
    assert.deepEqual(view.request.arguments, { ticket_id: 'T-1001', amount: 120 });

    // Settled while the CLI still runs: the outcome is kept, not left as an unhandled rejection.
    const waited = task.waitForApproval(asked.approvalId, { timeoutMs: 30_000 }).then(
      () => undefined,
      (e: unknown) => e,
    );
    const comment = 'The photos show no damage.';
    const denied = await cli(BOB, ['deny', asked.approvalId, '--comment', comment]);
    assert.equal(denied.code, 0, denied.err);
    assert.match(
      denied.out,
      new RegExp(`^denied ${asked.approvalId}: write issue_refund on tickets/T-1001 for alice$`),
    );

    const ended = await waited;
    refusedWith('TASKPASS_APPROVAL_DENIED')(ended);
    assert.equal((ended as TaskpassDeniedError).reason, comment);
    // The call stays denied in this task.
    await assert.rejects(task.token(refundReq('T-1001', 120)), (e: unknown) => {
      refusedWith('TASKPASS_APPROVAL_DENIED')(e);
      assert.match((e as TaskpassDeniedError).message, /bob denied this call: The photos show no damage\./);
      // The same reason on both paths: the wait's ending and the token request's answer.
      assert.equal((e as TaskpassDeniedError).reason, comment);
      return true;
    });
    // A second decision finds it decided.
    const again = await approveAs(BOB, asked.approvalId);
    assert.equal(again.status, 409);
    assert.equal(again.body.code, 'TASKPASS_APPROVAL_ALREADY_DECIDED');
    await task.complete();
  });

  test('expire: undecided within its ttl the wait ends TASKPASS_APPROVAL_EXPIRED, a late decision is refused, the next request asks anew', async () => {
    const { task, asked } = await askRefund('refund T-1001, nobody answers', 110, ALICE, viaC);
    await using _ = task;
    const leftMs = asked.expiresAt.getTime() - Date.now();
    assert.ok(leftMs <= SHORT_TTL_SEC * 1000 + 1000, `expires in ${leftMs} ms`);
    await assert.rejects(
      task.waitForApproval(asked.approvalId, { timeoutMs: 30_000 }),
      refusedWith('TASKPASS_APPROVAL_EXPIRED'),
    );
    const late = await approveAs(BOB, asked.approvalId, brokerC.url);
    assert.equal(late.status, 403, JSON.stringify(late.body));
    assert.equal(late.body.code, 'TASKPASS_APPROVAL_EXPIRED');
    await assert.rejects(task.token(refundReq('T-1001', 110)), refusedWith('TASKPASS_APPROVAL_EXPIRED'));
    const anew = await approvalOf(task.token(refundReq('T-1001', 110)));
    assert.notEqual(anew.approvalId, asked.approvalId);
    await task.complete();
  });

  test('approvers refused: outside approvers:, the agent (mTLS SVID, JWT-SVID), forged, expired and delegation tokens', async () => {
    const { task, asked } = await askRefund('refund T-1001, many hands', 111);
    await using _ = task;
    const id = asked.approvalId;
    const expect = async (what: string, d: Promise<Decision>, status: number, code: string) => {
      const r = await d;
      assert.equal(r.status, status, `${what}: ${JSON.stringify(r.body)}`);
      assert.equal(r.body.code, code, what);
    };
    const bob = await stack.approverToken(BOB);

    // Dave is support, not a support lead; Alice neither, and she is the user the task acts for.
    await expect(
      'dave',
      decide(id, await stack.approverToken(DAVE), 'approve'),
      403,
      'TASKPASS_APPROVER_NOT_ALLOWED',
    );
    await expect(
      'alice',
      decide(id, await stack.approverToken(ALICE), 'approve'),
      403,
      'TASKPASS_APPROVAL_SEPARATION_OF_DUTIES',
    );
    // The agent's own identity: over its mTLS connection (even carrying Bob's token), or its JWT-SVID.
    await expect(
      'agent mTLS',
      decide(id, bob, 'approve', { dispatcher: agentToBroker }),
      403,
      'TASKPASS_APPROVER_IS_WORKLOAD',
    );
    const workloadApi = new WorkloadApiClient({ address: stack.spire.address });
    const jwtSvid = await workloadApi
      .fetchJwtSvid({ audience: [stack.brokerConfig.jwtSvidAudience], subject: stack.ids.agent })
      .finally(() => workloadApi.close());
    await expect(
      'agent JWT-SVID',
      decide(id, jwtSvid.token, 'approve'),
      403,
      'TASKPASS_APPROVER_IS_WORKLOAD',
    );
    // Bob's claims signed by another key (with the IdP's kid), and Bob's own token expired.
    const { privateKey } = await generateKeyPair('ES256');
    const forged = await new SignJWT({ email: BOB.email, groups: BOB.groups })
      .setProtectedHeader({ alg: 'ES256', kid: decodeProtectedHeader(bob).kid!, typ: 'JWT' })
      .setIssuer(stack.idp.issuer)
      .setSubject(BOB.sub)
      .setAudience(stack.brokerConfig.approvals.audience)
      .setIssuedAt()
      .setExpirationTime('5m')
      .sign(privateKey);
    await expect('forged', decide(id, forged, 'approve'), 401, 'TASKPASS_APPROVER_TOKEN_INVALID');
    const expired = await stack.idp.idToken({
      sub: BOB.sub,
      groups: BOB.groups,
      audience: stack.brokerConfig.approvals.audience,
      ttlSec: -600,
    });
    await expect('expired', decide(id, expired, 'approve'), 401, 'TASKPASS_APPROVER_TOKEN_INVALID');
    // Delegation tokens (the broker's audience, what the agent holds) never approve: Alice's, nor Bob's.
    for (const user of [ALICE, BOB]) {
      await expect(
        `${user.sub}'s delegation token`,
        decide(id, await stack.userToken(user), 'approve'),
        401,
        'TASKPASS_APPROVER_TOKEN_INVALID',
      );
    }
    // None of it decided anything: Bob, with his own token, still can.
    assert.equal((await viaA.getApproval(id)).status, 'pending');
    const ok = await decide(id, bob, 'approve');
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    await task.complete();
  });

  test('separation of duties: Bob cannot approve the task he delegated; with delegating_user: true he confirms it', async () => {
    const own = await askRefund('Bob has his agent refund T-1001', 112, BOB);
    await using _a = own.task;
    const self = await approveAs(BOB, own.asked.approvalId);
    assert.equal(self.status, 403, JSON.stringify(self.body));
    assert.equal(self.body.code, 'TASKPASS_APPROVAL_SEPARATION_OF_DUTIES');
    assert.equal((await approveAs(CAROL, own.asked.approvalId)).status, 200, 'another lead may');

    // Broker C's rule names delegating_user: the user the task acts for may confirm.
    const confirm = await askRefund('Bob confirms his own refund of T-1001', 112, BOB, viaC);
    await using _c = confirm.task;
    const d = await approveAs(BOB, confirm.asked.approvalId, brokerC.url);
    assert.equal(d.status, 200, JSON.stringify(d.body));
    const issued = await confirm.task.token(refundReq('T-1001', 112));
    assert.deepEqual(detailOf(issued.accessToken).approval?.approver, {
      iss: stack.idp.issuer,
      sub: BOB.sub,
    });
    await own.task.complete();
    await confirm.task.complete();
  });

  test('two concurrent decisions, on two replicas: one wins, the other gets 409 TASKPASS_APPROVAL_ALREADY_DECIDED', async () => {
    await using task = await openTask('refund T-1001, two leads at once');
    await task.token(readReq('T-1001'));
    for (const amount of [113, 114, 115]) {
      const { approvalId: id } = await approvalOf(task.token(refundReq('T-1001', amount)));
      const [bob, carol] = await Promise.all([
        stack.approverToken(BOB).then((t) => decide(id, t, 'approve')),
        stack.approverToken(CAROL).then((t) => decide(id, t, 'deny', { brokerUrl: brokerB.url })),
      ]);
      assert.deepEqual(
        [bob.status, carol.status].sort(),
        [200, 409],
        `${JSON.stringify(bob.body)} ${JSON.stringify(carol.body)}`,
      );
      const [winner, loser] = bob.status === 200 ? [bob, carol] : [carol, bob];
      assert.equal(loser.body.code, 'TASKPASS_APPROVAL_ALREADY_DECIDED');
      assert.equal((await viaA.getApproval(id)).status, winner.body.status);
      assert.equal((await viaB.getApproval(id)).status, winner.body.status);
    }
    await task.complete();
  });

  test('one approval yields one token: asking again for the same call asks for a new approval', async () => {
    const { task, asked } = await askRefund('refund T-1001 once', 116);
    await using _ = task;
    assert.equal((await approveAs(BOB, asked.approvalId)).status, 200);
    const issued = await task.token(refundReq('T-1001', 116));
    assert.equal(detailOf(issued.accessToken).approval?.id, asked.approvalId);
    assert.equal(issued.singleUse, true);
    const again = await approvalOf(task.token(refundReq('T-1001', 116)));
    assert.notEqual(again.approvalId, asked.approvalId);
    assert.equal((await viaA.getApproval(asked.approvalId)).status, 'used');
    assert.equal((await viaA.getApproval(again.approvalId)).status, 'pending');
    await task.complete();
  });

  test('completing the task cancels its approvals (pending and approved); deciding one afterwards is refused', async () => {
    const { task, asked: pending } = await askRefund('refund T-1001, then stop', 117);
    await using _ = task;
    const approved = await approvalOf(task.token(refundReq('T-1001', 118)));
    assert.equal((await approveAs(BOB, approved.approvalId)).status, 200);
    await task.complete();
    for (const a of [pending, approved]) {
      assert.equal((await viaA.getApproval(a.approvalId)).status, 'cancelled');
      const late = await approveAs(BOB, a.approvalId);
      assert.equal(late.status, 409, JSON.stringify(late.body));
      assert.equal(late.body.code, 'TASKPASS_APPROVAL_ALREADY_DECIDED');
    }
    // And the approved call yields no token in the closed task.
    await assert.rejects(
      viaA.callToken(task.id, refundReq('T-1001', 118)),
      (e: unknown) => e instanceof BrokerError && e.status === 409 && e.code === 'TASKPASS_TASK_CLOSED',
    );
  });

  test('argument tampering: the token approved for one amount is refused by the desk for another (TASKPASS_VERIFY_ARGS_MISMATCH), nothing refunded', async () => {
    const { task, asked } = await askRefund('refund T-1001, then change the amount', 102);
    await using _ = task;
    assert.equal((await approveAs(BOB, asked.approvalId)).status, 200);
    const { accessToken } = await task.token(refundReq('T-1001', 102));
    const before = stack.tickets.desk.get('T-1001').order.refunded;
    for (const args of [
      { ticket_id: 'T-1001', amount: 10 },
      { ticket_id: 'T-1001', amount: 102, note: 'extra' },
    ]) {
      const r = await rawToolCall(asAgent, stack.urls.mcp, accessToken, 'issue_refund', args);
      assertRefused(r, 403, 'TASKPASS_VERIFY_ARGS_MISMATCH');
    }
    assert.equal(stack.tickets.desk.get('T-1001').order.refunded, before, 'the desk did not refund');
    await task.complete();
  });

  test('two replicas on Redis see the same approval: asked on A, the same on B, decided on B, the long poll on A wakes', async () => {
    const { task, asked } = await askRefund('refund T-1001 across replicas', 119);
    await using _ = task;
    const onB = await approvalOf(viaB.callToken(task.id, refundReq('T-1001', 119)));
    assert.equal(onB.approvalId, asked.approvalId, 'the same call, the same approval on B');

    // Bob reads it on B (a person who may decide sees it).
    const seen = await undiciFetch(`${brokerB.url}/v1/approvals/${asked.approvalId}`, {
      dispatcher: asPerson,
      headers: { authorization: `Bearer ${await stack.approverToken(BOB)}` },
    });
    assert.equal(seen.status, 200);
    assert.equal(((await seen.json()) as { status: string }).status, 'pending');

    // The agent waits on A (one long poll of up to 60 s); Bob decides on B.
    let settled = false;
    const waiting = task.waitForApproval(asked.approvalId, { timeoutMs: 30_000 }).finally(() => {
      settled = true;
    });
    await sleep(500);
    assert.equal(settled, false, 'the agent waits while the approval is pending');
    const decided = await approveAs(BOB, asked.approvalId, brokerB.url);
    assert.equal(decided.status, 200, JSON.stringify(decided.body));
    const t0 = performance.now();
    const view = await waiting;
    const wokeMs = performance.now() - t0;
    assert.ok(wokeMs < 5000, `A's long poll woke ${Math.round(wokeMs)} ms after B's decision`);
    assert.equal(view.status, 'approved');
    assert.equal(view.decision?.approver.sub, BOB.sub);

    // The token comes from either replica, once.
    const issued = await viaB.callToken(task.id, refundReq('T-1001', 119));
    assert.equal(detailOf(issued.accessToken).approval?.id, asked.approvalId);
    const again = await approvalOf(task.token(refundReq('T-1001', 119)));
    assert.notEqual(again.approvalId, asked.approvalId);
    await task.complete();
  });
});
