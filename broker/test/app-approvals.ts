// The approval flow through the HTTP API (docs/approvals.md), run on SQLite (app-approvals.test.ts)
// and on Redis (app-approvals.redis.test.ts): a real PolicySet with approval rules, the test app's
// fake agent authentication, and approvers' tokens from the test IdP for the approvals audience.
import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { test } from 'node:test';
import { argsSha256 } from '@taskpass/contract';
import type { AuditEvent } from '../src/audit.ts';
import { PolicySet } from '../src/policy/engine.ts';
import { TemplateSchema } from '../src/policy/schema.ts';
import type { Store } from '../src/store/types.ts';
import { AGENT, IDP, OTHER_AGENT, type TestBroker, TICKETS, testBroker } from './app-support.ts';

/** A fresh, initialised store and its cleanup. */
export type MakeAppStore = () => Promise<{ store: Store; cleanup: () => Promise<void> }>;

const APPROVALS_AUD = 'taskpass-approvals';
const LEADS = { issuer: IDP, claims: { groups: ['support-leads'] } };

export const approvalPolicy = (): PolicySet =>
  PolicySet.from([
    TemplateSchema.parse({
      id: 'refunds',
      owner: 'support@taskpass.local',
      agents: ['spiffe://taskpass.local/agents/support/*'],
      users: { issuer: IDP, claims: { groups: ['support'] } },
      audience: TICKETS,
      tools: [
        {
          tool: 'issue_refund',
          action: 'write',
          resources: ['tickets/*'],
          approval: { approvers: LEADS, when: [{ arg: 'amount', op: 'gt', value: 100 }], ttl: '5m' },
        },
        { tool: 'close_ticket', action: 'write', resources: ['tickets/*'], bind_arguments: true },
        {
          tool: 'escalate',
          action: 'write',
          resources: ['tickets/*'],
          approval: { approvers: { ...LEADS, delegating_user: true } },
        },
      ],
    }),
  ]);

const refund = (amount: number, over: Record<string, unknown> = {}) => {
  const args = { ticket_id: 'T-1', amount };
  return {
    audience: TICKETS,
    tool: 'issue_refund',
    resource: 'tickets/T-1',
    action: 'write',
    args_sha256: argsSha256(args),
    arguments: args,
    ...over,
  };
};

const claimsOf = (token: string) =>
  JSON.parse(Buffer.from(token.split('.')[1]!, 'base64url').toString()) as Record<string, unknown>;

/** Helpers over one test broker. */
function h(b: TestBroker<Store>) {
  const person = (sub: string, groups: string[], opts: Parameters<typeof b.user.sign>[1] = {}) =>
    b.user.sign({ sub, groups }, { aud: APPROVALS_AUD, ...opts });
  return {
    async openTask(sub = 'alice', groups = ['support']) {
      const r = await b.app.inject({
        method: 'POST',
        url: '/v1/tasks',
        headers: b.mtls(AGENT),
        payload: { purpose: 'refund a double charge', user_token: await b.user.sign({ sub, groups }) },
      });
      assert.equal(r.statusCode, 201, r.body);
      return r.json().task_id as string;
    },
    token(task: string, body: Record<string, unknown>, headers = b.mtls(AGENT)) {
      return b.app.inject({ method: 'POST', url: `/v1/tasks/${task}/tokens`, headers, payload: body });
    },
    lena: () => person('lena', ['support', 'support-leads']),
    leo: () => person('leo', ['support-leads']),
    carl: () => person('carl', ['support']),
    person,
    decide(id: string, token: string, decision: 'approve' | 'deny', comment?: string, headers = {}) {
      return b.app.inject({
        method: 'POST',
        url: `/v1/approvals/${id}/decision`,
        headers: { authorization: `Bearer ${token}`, ...headers },
        payload: { decision, ...(comment ? { comment } : {}) },
      });
    },
    view(id: string, headers: Record<string, string>, query = '') {
      return b.app.inject({ method: 'GET', url: `/v1/approvals/${id}${query}`, headers });
    },
  };
}

/** Registers the approval API tests for one store. */
export function approvalApiTests(name: string, make: MakeAppStore): void {
  async function withBroker(fn: (b: TestBroker<Store>, audit: AuditEvent[]) => Promise<void>) {
    const { store, cleanup } = await make();
    const audit: AuditEvent[] = [];
    const b = await testBroker(
      {},
      { store, policy: approvalPolicy(), audit: { record: (e) => audit.push(e) } },
    );
    try {
      await fn(b, audit);
    } finally {
      await b.app.close();
      await cleanup();
    }
  }

  test(`${name}: approval required, same call same approval, approve, one token naming the approver, once`, () =>
    withBroker(async (b, audit) => {
      const x = h(b);
      const task = await x.openTask();
      const r1 = await x.token(task, refund(250));
      assert.equal(r1.statusCode, 403, r1.body);
      const body = r1.json();
      assert.equal(body.code, 'TASKPASS_APPROVAL_REQUIRED');
      assert.match(body.approval_id, /^apr_[A-Za-z0-9_-]{22}$/);
      assert.equal(body.approval_url, `https://broker.test/v1/approvals/${body.approval_id}`);
      assert.equal(body.template, 'refunds');
      assert.ok(body.expires_at > Math.floor(b.clock.now / 1000));
      assert.deepEqual(body.request, {
        agent: AGENT,
        user: 'alice',
        task: { id: task, purpose: 'refund a double charge' },
        audience: TICKETS,
        tool: 'issue_refund',
        resource: 'tickets/T-1',
        action: 'write',
        args_sha256: argsSha256({ ticket_id: 'T-1', amount: 250 }),
        arguments: { ticket_id: 'T-1', amount: 250 },
        template: 'refunds',
      });
      const r2 = await x.token(task, refund(250));
      assert.equal(r2.json().approval_id, body.approval_id, 'asking again gives the same approval');
      const other = await x.token(task, refund(251));
      assert.notEqual(other.json().approval_id, body.approval_id, 'other arguments, other approval');

      const d = await x.decide(body.approval_id, await x.lena(), 'approve', 'checked the order');
      assert.equal(d.statusCode, 200, d.body);
      assert.equal(d.json().status, 'approved');
      assert.deepEqual(d.json().decision.approver, { iss: IDP, sub: 'lena' });
      assert.equal(d.json().decision.comment, 'checked the order');

      const t = await x.token(task, refund(250));
      assert.equal(t.statusCode, 200, t.body);
      const detail = (claimsOf(t.json().access_token).authorization_details as Record<string, unknown>[])[0]!;
      assert.equal(detail.args_sha256, argsSha256({ ticket_id: 'T-1', amount: 250 }));
      assert.deepEqual(detail.approval, {
        id: body.approval_id,
        approver: { iss: IDP, sub: 'lena' },
        approved_at: d.json().decision.decided_at,
      });
      assert.equal(t.json().single_use, true);

      const again = await x.token(task, refund(250));
      assert.equal(again.statusCode, 403);
      assert.equal(again.json().code, 'TASKPASS_APPROVAL_REQUIRED', 'one approval, one token');
      assert.notEqual(again.json().approval_id, body.approval_id, 'the next one is a new approval');
      const used = await x.view(body.approval_id, b.mtls(AGENT));
      assert.equal(used.json().status, 'used');

      const events = audit.filter((e) => e.event.startsWith('approval.')).map((e) => e.event);
      assert.deepEqual(events, [
        'approval.requested',
        'approval.requested',
        'approval.decided',
        'approval.used',
        'approval.requested',
      ]);
      assert.ok(
        audit.every((e) => !JSON.stringify(e).includes('checked the order')),
        'no comment in the audit',
      );
      const metrics = (await b.app.inject({ method: 'GET', url: '/metrics' })).body;
      assert.match(metrics, /taskpass_approval_requests_total 3/);
      assert.match(metrics, /taskpass_approval_decisions_total\{result="approved"\} 1/);
      assert.match(metrics, /taskpass_approval_time_to_decide_seconds_count\{result="approved"\} 1/);
    }));

  test(`${name}: below the limit no approval is needed; the token is still bound to its arguments`, () =>
    withBroker(async (b) => {
      const x = h(b);
      const task = await x.openTask();
      const t = await x.token(task, refund(100));
      assert.equal(t.statusCode, 200, t.body);
      const detail = (claimsOf(t.json().access_token).authorization_details as Record<string, unknown>[])[0]!;
      assert.equal(detail.args_sha256, argsSha256({ ticket_id: 'T-1', amount: 100 }));
      assert.equal(detail.approval, undefined);
    }));

  test(`${name}: arguments that do not hash to args_sha256, or missing, are refused`, () =>
    withBroker(async (b) => {
      const x = h(b);
      const task = await x.openTask();
      const tampered = await x.token(task, refund(50, { arguments: { ticket_id: 'T-1', amount: 5000 } }));
      assert.equal(tampered.statusCode, 400);
      assert.equal(tampered.json().code, 'TASKPASS_ARGUMENTS_MISMATCH');
      const digestOnly = await x.token(task, refund(50, { arguments: undefined }));
      assert.equal(digestOnly.statusCode, 400);
      assert.equal(digestOnly.json().code, 'TASKPASS_ARGUMENTS_REQUIRED', 'when: needs the arguments');
      const unbound = await x.token(task, {
        audience: TICKETS,
        tool: 'close_ticket',
        resource: 'tickets/T-1',
        action: 'write',
      });
      assert.equal(unbound.statusCode, 400);
      assert.equal(unbound.json().code, 'TASKPASS_ARGUMENTS_REQUIRED', 'bind_arguments needs args_sha256');
      const argsOnly = await x.token(task, refund(50, { args_sha256: undefined }));
      assert.equal(
        argsOnly.statusCode,
        200,
        'the digest is computed from the arguments when only they are sent',
      );
    }));

  test(`${name}: denied → TASKPASS_APPROVAL_DENIED with the comment, and it stays denied`, () =>
    withBroker(async (b) => {
      const x = h(b);
      const task = await x.openTask();
      const id = (await x.token(task, refund(500))).json().approval_id;
      const d = await x.decide(id, await x.lena(), 'deny', 'not a double charge');
      assert.equal(d.statusCode, 200, d.body);
      assert.equal(d.json().status, 'denied');
      assert.equal(d.json().decision.decision, 'deny');
      for (let i = 0; i < 2; i++) {
        const t = await x.token(task, refund(500));
        assert.equal(t.statusCode, 403);
        assert.equal(t.json().code, 'TASKPASS_APPROVAL_DENIED');
        assert.equal(t.json().approval_id, id);
        assert.equal(t.json().comment, 'not a double charge');
      }
    }));

  test(`${name}: expired → no decision, TASKPASS_APPROVAL_EXPIRED once, then asked anew`, () =>
    withBroker(async (b) => {
      const x = h(b);
      const task = await x.openTask();
      const id = (await x.token(task, refund(500))).json().approval_id;
      b.clock.now += 301_000;
      const late = await x.decide(id, await x.lena(), 'approve');
      assert.equal(late.statusCode, 403, late.body);
      assert.equal(late.json().code, 'TASKPASS_APPROVAL_EXPIRED');
      assert.equal((await x.view(id, b.mtls(AGENT))).json().status, 'expired');
      const t = await x.token(task, refund(500));
      assert.equal(t.json().code, 'TASKPASS_APPROVAL_EXPIRED');
      assert.equal(t.json().approval_id, id);
      const next = await x.token(task, refund(500));
      assert.equal(next.json().code, 'TASKPASS_APPROVAL_REQUIRED');
      assert.notEqual(next.json().approval_id, id);
    }));

  test(`${name}: two concurrent decisions — one wins, the other gets 409`, () =>
    withBroker(async (b) => {
      const x = h(b);
      const task = await x.openTask();
      const id = (await x.token(task, refund(500))).json().approval_id;
      const [l, o] = await Promise.all([
        x.decide(id, await x.lena(), 'approve'),
        x.decide(id, await x.leo(), 'deny'),
      ]);
      assert.deepEqual([l.statusCode, o.statusCode].sort(), [200, 409], `${l.body} ${o.body}`);
      const loser = l.statusCode === 409 ? l : o;
      assert.equal(loser.json().code, 'TASKPASS_APPROVAL_ALREADY_DECIDED');
      const winner = l.statusCode === 200 ? l : o;
      assert.equal((await x.view(id, b.mtls(AGENT))).json().status, winner.json().status);
    }));

  test(`${name}: completing the task cancels its approvals; approval after completion refused`, () =>
    withBroker(async (b, audit) => {
      const x = h(b);
      const task = await x.openTask();
      const id = (await x.token(task, refund(500))).json().approval_id;
      const c = await b.app.inject({
        method: 'POST',
        url: `/v1/tasks/${task}/complete`,
        headers: b.mtls(AGENT),
        payload: { status: 'completed' },
      });
      assert.equal(c.statusCode, 200, c.body);
      assert.equal((await x.view(id, b.mtls(AGENT))).json().status, 'cancelled');
      const d = await x.decide(id, await x.lena(), 'approve');
      assert.equal(d.statusCode, 409);
      assert.equal(d.json().code, 'TASKPASS_APPROVAL_ALREADY_DECIDED');
      assert.ok(audit.some((e) => e.event === 'approval.cancelled' && e.approval === id));
    }));

  test(`${name}: who may decide — approvers:, separation of duties, delegating_user`, () =>
    withBroker(async (b) => {
      const x = h(b);
      const task = await x.openTask();
      const id = (await x.token(task, refund(500))).json().approval_id;
      const carl = await x.decide(id, await x.carl(), 'approve');
      assert.equal(carl.statusCode, 403);
      assert.equal(carl.json().code, 'TASKPASS_APPROVER_NOT_ALLOWED');

      // Lena, a lead, delegates the task herself: she cannot approve her own request...
      const own = await x.openTask('lena', ['support', 'support-leads']);
      const ownId = (await x.token(own, refund(500))).json().approval_id;
      const self = await x.decide(ownId, await x.lena(), 'approve');
      assert.equal(self.statusCode, 403);
      assert.equal(self.json().code, 'TASKPASS_APPROVAL_SEPARATION_OF_DUTIES');
      assert.equal((await x.decide(ownId, await x.leo(), 'approve')).statusCode, 200, 'another lead may');

      // ...unless the rule names delegating_user: then the user the task acts for confirms.
      const esc = { audience: TICKETS, tool: 'escalate', resource: 'tickets/T-1', action: 'write' };
      const escId = (await x.token(task, { ...esc, args_sha256: argsSha256({}) })).json().approval_id;
      assert.ok(escId);
      const alice = await x.person('alice', ['support']);
      const confirm = await x.decide(escId, alice, 'approve');
      assert.equal(confirm.statusCode, 200, confirm.body);
    }));

  test(`${name}: an agent's identity is refused as approver; forged, expired and delegation tokens too`, () =>
    withBroker(async (b) => {
      const x = h(b);
      const task = await x.openTask();
      const id = (await x.token(task, refund(500))).json().approval_id;
      const lena = await x.lena();
      const mtls = await x.decide(id, lena, 'approve', undefined, b.mtls(AGENT));
      assert.equal(mtls.statusCode, 403);
      assert.equal(mtls.json().code, 'TASKPASS_APPROVER_IS_WORKLOAD');
      const jwt = await x.decide(id, b.jwt(AGENT).authorization!.slice(7), 'approve');
      assert.equal(jwt.statusCode, 403);
      assert.equal(jwt.json().code, 'TASKPASS_APPROVER_IS_WORKLOAD');

      const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
      const refused = [
        await x.person('lena', ['support-leads'], { key: privateKey }), // forged
        await x.person('lena', ['support-leads'], { exp: Math.floor(b.clock.now / 1000) - 600 }), // expired
        await x.person('lena', ['support-leads'], { aud: 'taskpass' }), // the delegation audience
        await x.person('lena', ['support-leads'], { iss: 'https://evil.example' }),
        'not-a-jwt',
      ];
      // A token for both audiences: the agent could hold it.
      const both = await b.user.sign({
        sub: 'lena',
        groups: ['support-leads'],
        aud: ['taskpass', APPROVALS_AUD],
      });
      for (const token of [...refused, both]) {
        const r = await x.decide(id, token, 'approve');
        assert.equal(r.statusCode, 401, r.body);
        assert.equal(r.json().code, 'TASKPASS_APPROVER_TOKEN_INVALID');
      }
      const none = await b.app.inject({
        method: 'POST',
        url: `/v1/approvals/${id}/decision`,
        payload: { decision: 'approve' },
      });
      assert.equal(none.json().code, 'TASKPASS_APPROVER_TOKEN_INVALID');
      assert.equal((await x.view(id, b.mtls(AGENT))).json().status, 'pending', 'nothing was decided');
    }));

  test(`${name}: who sees what — the asking agent, approvers who may decide, nobody else`, () =>
    withBroker(async (b) => {
      const x = h(b);
      const task = await x.openTask();
      const id = (await x.token(task, refund(500))).json().approval_id;
      assert.equal((await x.view(id, b.mtls(AGENT))).statusCode, 200);
      assert.equal((await x.view(id, b.jwt(AGENT))).statusCode, 200);
      const other = await x.view(id, b.mtls(OTHER_AGENT));
      assert.equal(other.statusCode, 404);
      assert.equal(other.json().code, 'TASKPASS_APPROVAL_NOT_FOUND');
      assert.equal((await x.view(id, { authorization: `Bearer ${await x.lena()}` })).statusCode, 200);
      assert.equal((await x.view(id, { authorization: `Bearer ${await x.carl()}` })).statusCode, 404);
      assert.equal((await x.view('apr_AAAAAAAAAAAAAAAAAAAAAA', b.mtls(AGENT))).statusCode, 404);

      const list = (token: string) =>
        b.app.inject({
          method: 'GET',
          url: '/v1/approvals?status=pending',
          headers: { authorization: `Bearer ${token}` },
        });
      const forLena = await list(await x.lena());
      assert.equal(forLena.statusCode, 200, forLena.body);
      assert.deepEqual(
        forLena.json().approvals.map((a: { id: string }) => a.id),
        [id],
      );
      assert.deepEqual((await list(await x.carl())).json().approvals, []);
      const agentList = await b.app.inject({ method: 'GET', url: '/v1/approvals', headers: b.mtls(AGENT) });
      assert.equal(agentList.statusCode, 403);
      assert.equal(agentList.json().code, 'TASKPASS_APPROVER_IS_WORKLOAD');
    }));

  test(`${name}: ?wait= returns as soon as the approval is decided; SSE streams each change`, () =>
    withBroker(async (b) => {
      const x = h(b);
      const task = await x.openTask();
      const id = (await x.token(task, refund(500))).json().approval_id;
      const started = Date.now();
      const waiting = x.view(id, b.mtls(AGENT), '?wait=30');
      const streaming = b.app.inject({
        method: 'GET',
        url: `/v1/approvals/${id}`,
        headers: { ...b.mtls(AGENT), accept: 'text/event-stream' },
      });
      await new Promise((r) => setTimeout(r, 100));
      assert.equal((await x.decide(id, await x.lena(), 'approve')).statusCode, 200);
      const w = await waiting;
      assert.equal(w.statusCode, 200, w.body);
      assert.equal(w.json().status, 'approved');
      assert.ok(Date.now() - started < 10_000, 'answered on the change, not at the end of the wait');
      const atOnce = Date.now();
      const decided = await x.view(id, b.mtls(AGENT), '?wait=30');
      assert.equal(decided.json().status, 'approved');
      assert.ok(Date.now() - atOnce < 5_000, 'a decided approval is not waited on');
      assert.equal((await x.token(task, refund(500))).statusCode, 200);
      const s = await streaming; // ends once the approval is used
      assert.match(String(s.headers['content-type']), /text\/event-stream/);
      const statuses = s.body
        .split('\n\n')
        .filter((e) => e.startsWith('event: approval'))
        .map((e) => JSON.parse(e.split('\ndata: ')[1]!).status);
      assert.deepEqual(statuses, ['pending', 'approved', 'used']);
      const quick = await x.view(id, b.mtls(AGENT), '?wait=30');
      assert.equal(quick.json().status, 'used', 'a settled approval answers at once');
      assert.equal((await x.view(id, b.mtls(AGENT), '?wait=61')).statusCode, 400, 'wait is at most 60');
    }));

  test(`${name}: the OAuth token exchange answers authorization_pending, then the approved token`, () =>
    withBroker(async (b) => {
      const x = h(b);
      const task = await x.openTask();
      const args = { ticket_id: 'T-1', amount: 500 };
      const fields = {
        grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
        resource: TICKETS,
        task_id: task,
        authorization_details: JSON.stringify([
          {
            type: 'mcp_tool_call',
            tool: 'issue_refund',
            resource: 'tickets/T-1',
            action: 'write',
            args_sha256: argsSha256(args),
            arguments: args,
          },
        ]),
      };
      const ask = () =>
        b.app.inject({
          method: 'POST',
          url: '/oauth2/token',
          headers: { 'content-type': 'application/x-www-form-urlencoded', ...b.mtls(AGENT) },
          payload: new URLSearchParams(fields).toString(),
        });
      const pending = await ask();
      assert.equal(pending.statusCode, 400, pending.body);
      assert.equal(pending.json().error, 'authorization_pending');
      assert.equal(pending.json().code, 'TASKPASS_APPROVAL_REQUIRED');
      const id = pending.json().approval_id;
      assert.match(id, /^apr_/);
      assert.match(pending.json().approval_url, /\/v1\/approvals\/apr_/);
      assert.equal((await x.decide(id, await x.lena(), 'approve')).statusCode, 200);
      const ok = await ask();
      assert.equal(ok.statusCode, 200, ok.body);
      assert.equal(ok.json().authorization_details[0].approval.id, id);
      assert.equal(
        ok.json().authorization_details[0].arguments,
        undefined,
        'arguments never go into the token',
      );
    }));
}
