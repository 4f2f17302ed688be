// Decision points behind the templates, on a real OPA (harness/opa.ts): the templates allow a
// call, then OPA may take it away. Denials, an engine that is down, slow or answers garbage, a bad
// policy push (OPA keeps the last good one), caching, and the ticket desk's Rego rules.
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import { after, before, test } from 'node:test';
import type { AuditEvent } from '../src/audit.ts';
import { DecisionPoints, pdpInputOf } from '../src/pdp/index.ts';
import { createOpaDecisionPoint, type OpaConfig } from '../src/pdp/opa.ts';
import { type Opa, startOpa, TICKET_DESK_REGO } from '../../harness/opa.ts';
import { freePort } from '../../harness/net.ts';
import { AGENT, type TestBroker, TICKETS, testBroker } from './app-support.ts';

const GATE = `package gate

# Ticket 13 is off limits; ticket 7 answers garbage.
default decision := {"allow": true}

decision := {"allow": false, "reason": "ticket 13 is cursed"} if input.resource.id == "tickets/13"

decision := {"allow": "yes"} if input.resource.id == "tickets/7"
`;

let opa: Opa;
before(async () => {
  opa = await startOpa([TICKET_DESK_REGO]);
  const r = await opa.putPolicy('gate', GATE);
  assert.equal(r.status, 200, JSON.stringify(r.body));
});
after(() => opa.close());

const opaCfg = (over: Partial<OpaConfig> = {}): OpaConfig => ({
  name: 'desk',
  kind: 'opa',
  url: opa.url,
  path: 'gate/decision',
  timeoutMs: 2000,
  ...over,
});

async function brokerWith(cfg: OpaConfig, audit: AuditEvent[] = []): Promise<TestBroker> {
  const clock = { now: Date.now() };
  const b = await testBroker(
    {},
    {
      decisionPoints: new DecisionPoints([createOpaDecisionPoint(cfg)], {
        global: cfg.name,
        now: () => clock.now,
      }),
      audit: { record: (e) => audit.push(e) },
    },
  );
  // One clock for the broker and the decision cache.
  Object.defineProperty(clock, 'now', { get: () => b.clock.now });
  return b;
}

async function openTask(b: TestBroker): Promise<string> {
  const res = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: b.mtls(AGENT),
    payload: { purpose: 'answer ticket', user_token: await b.user.sign({}), ttl_seconds: 600 },
  });
  assert.equal(res.statusCode, 201, res.body);
  return res.json().task_id;
}

const read = (ticket: string) => ({
  audience: TICKETS,
  tool: 'get_ticket',
  resource: `tickets/${ticket}`,
  action: 'read',
});

async function ask(b: TestBroker, task: string, ticket: string) {
  const res = await b.app.inject({
    method: 'POST',
    url: `/v1/tasks/${task}/tokens`,
    headers: b.mtls(AGENT),
    payload: read(ticket),
  });
  return { status: res.statusCode, body: res.json() as Record<string, unknown> };
}

test('OPA allows: the token is issued; OPA denies: 403 TASKPASS_PDP_DENIED naming engine, policy and reason, audited', async () => {
  const audit: AuditEvent[] = [];
  const b = await brokerWith(opaCfg(), audit);
  const task = await openTask(b);
  assert.equal((await ask(b, task, '42')).status, 200);
  const no = await ask(b, task, '13');
  assert.equal(no.status, 403);
  assert.equal(no.body.code, 'TASKPASS_PDP_DENIED');
  assert.equal(no.body.engine, 'opa/desk');
  assert.equal(no.body.policy, 'gate/decision');
  assert.equal(no.body.template, 'tickets-support');
  assert.match(
    String(no.body.message),
    /opa\/desk \(policy gate\/decision\) denied the call: ticket 13 is cursed/,
  );
  const denied = audit.find((e) => e.event === 'token.denied');
  assert.equal(denied?.code, 'TASKPASS_PDP_DENIED');
  assert.equal(denied?.engine, 'opa/desk');
  assert.equal(denied?.resource, 'tickets/13');
  await b.app.close();
});

test('an engine that is down fails closed: 403 TASKPASS_PDP_UNAVAILABLE naming the engine', async () => {
  const b = await brokerWith(opaCfg({ url: `http://127.0.0.1:${await freePort()}` }));
  const r = await ask(b, await openTask(b), '42');
  assert.equal(r.status, 403);
  assert.equal(r.body.code, 'TASKPASS_PDP_UNAVAILABLE');
  assert.equal(r.body.engine, 'opa/desk');
  assert.match(String(r.body.message), /opa\/desk .* is unreachable .*fail closed/);
  await b.app.close();
});

test('an engine that does not answer in time fails closed', async () => {
  // Accepts the request and never answers.
  const stalled = createServer(() => {});
  await new Promise<void>((r) => stalled.listen(0, '127.0.0.1', r));
  const port = (stalled.address() as { port: number }).port;
  const b = await brokerWith(opaCfg({ url: `http://127.0.0.1:${port}`, timeoutMs: 50 }));
  const r = await ask(b, await openTask(b), '42');
  assert.equal(r.body.code, 'TASKPASS_PDP_UNAVAILABLE');
  assert.match(String(r.body.message), /did not answer within 50 ms/);
  await b.app.close();
  stalled.closeAllConnections();
  await new Promise((r) => stalled.close(r));
});

test('a malformed answer or an undefined rule fails closed', async () => {
  const b = await brokerWith(opaCfg());
  const task = await openTask(b);
  const garbage = await ask(b, task, '7');
  assert.equal(garbage.body.code, 'TASKPASS_PDP_UNAVAILABLE');
  assert.match(String(garbage.body.message), /not a decision/);
  await b.app.close();
  const nowhere = await brokerWith(opaCfg({ path: 'gate/no_such_rule' }));
  const undef = await ask(nowhere, await openTask(nowhere), '42');
  assert.equal(undef.body.code, 'TASKPASS_PDP_UNAVAILABLE');
  assert.match(String(undef.body.message), /no such rule/);
  await nowhere.app.close();
});

test('a policy push with a syntax error is refused by OPA; issuance keeps deciding on the last good policy', async () => {
  const b = await brokerWith(opaCfg());
  const task = await openTask(b);
  const bad = await opa.putPolicy('gate', `${GATE}\ndecision := {"allow": true} if {`);
  assert.equal(bad.status, 400);
  assert.equal((await ask(b, task, '13')).body.code, 'TASKPASS_PDP_DENIED');
  assert.equal((await ask(b, task, '42')).status, 200);
  await b.app.close();
});

test('an answer is reused only when the engine says so and the policy has a version, within its ttl', async () => {
  await opa.putPolicy(
    'cached',
    'package cached\n\ndecision := {"allow": data.cached_allow, "cache_ttl_sec": 60}\n',
  );
  await opa.putData('cached_allow', true);
  const clock = { now: Date.now() };
  const points = (version?: string) =>
    new DecisionPoints([createOpaDecisionPoint(opaCfg({ path: 'cached/decision', version }))], {
      now: () => clock.now,
    });
  const versioned = points('cached-v1');
  const unversioned = points();
  const input = refund('T-1002', 'eu', new Date(clock.now).toISOString());
  const later = { ...input, context: { ...input.context, time: new Date(clock.now + 5000).toISOString() } };
  assert.equal((await versioned.decide(['desk'], input)).allow, true);
  assert.equal((await unversioned.decide(['desk'], input)).allow, true);
  await opa.putData('cached_allow', false);
  // The versioned point reuses its allow for 60 s (the clock fields are not part of the key); the
  // unversioned one asks OPA every time.
  assert.equal((await versioned.decide(['desk'], later)).allow, true);
  assert.equal((await unversioned.decide(['desk'], input)).allow, false);
  clock.now += 61_000;
  assert.equal((await versioned.decide(['desk'], input)).allow, false);
});

const deskPoint = () =>
  createOpaDecisionPoint(opaCfg({ name: 'ticket-desk', path: 'taskpass/ticket_desk/decision' }));

function refund(ticket: string, region: string | undefined, time: string) {
  return pdpInputOf({
    agent: AGENT,
    user: { iss: 'https://idp.test', sub: 'alice', claims: region ? { region } : {} },
    task: { id: 'tsk_1', purpose: 'refund', createdAt: 0 },
    call: { audience: TICKETS, tool: 'issue_refund', resource: `tickets/${ticket}`, action: 'write' },
    templates: ['tickets-refunds'],
    arguments: { ticket_id: ticket, amount: 10 },
    now: Date.parse(time),
  });
}

test("ticket desk (Rego): refunds only for the user's own region, no writes outside business hours", async () => {
  const dp = deskPoint();
  assert.equal((await dp.decide(refund('T-1002', 'eu', '2026-12-02T10:00:00Z'))).allow, true);
  const other = await dp.decide(refund('T-1003', 'eu', '2026-12-02T10:00:00Z'));
  assert.equal(other.allow, false);
  assert.match(!other.allow ? other.reason : '', /own region \(tickets\/T-1003 is in us, the user in eu\)/);
  const noClaim = await dp.decide(refund('T-1002', undefined, '2026-12-02T10:00:00Z'));
  assert.equal(noClaim.allow, false);
  const late = await dp.decide(refund('T-1002', 'eu', '2026-12-02T19:30:00Z'));
  assert.equal(late.allow, false);
  assert.match(!late.allow ? late.reason : '', /outside business hours \(08:00-18:00 UTC\)/);
  // The hours are OPA data: a desk open around the clock allows the same call.
  await opa.putData('ticket_desk/business_hours', { start: 0, end: 24 });
  try {
    assert.equal((await dp.decide(refund('T-1002', 'eu', '2026-12-02T19:30:00Z'))).allow, true);
  } finally {
    await opa.putData('ticket_desk/business_hours', { start: 8, end: 18 });
  }
});

test('taskpass policy test --engine opa runs the Rego fixtures against the real OPA, and fails on a wrong expectation', async () => {
  const { runCli } = await import('../src/cli.ts');
  const { cp, mkdtemp, readFile, writeFile } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const { tmpdir } = await import('node:os');
  const run = async (dir: string) => {
    const out: string[] = [];
    const err: string[] = [];
    const code = await runCli(['policy', 'test', dir, '--engine', 'opa', '--opa-url', opa.url], {
      out: (s) => out.push(s),
      err: (s) => err.push(s),
      env: {},
    });
    return { code, out: out.join('\n'), err: err.join('\n') };
  };
  const ok = await run(TICKET_DESK_REGO);
  assert.equal(ok.code, 0, ok.err);
  assert.match(ok.out, /^opa: 7 passed, 0 failed$/);

  // A fixture that expects the opposite of what the policy says fails, naming the case and why.
  const dir = await mkdtemp(join(tmpdir(), 'taskpass-rego-'));
  await cp(TICKET_DESK_REGO, dir, { recursive: true });
  const file = join(dir, 'fixtures', 'tickets.yaml');
  const text = await readFile(file, 'utf8');
  await writeFile(
    file,
    text.replace(/resource: tickets\/T-1003\n(.*\n){1}.*expect: deny/, (m) =>
      m.replace('expect: deny', 'expect: allow'),
    ),
  );
  const bad = await run(dir);
  assert.equal(bad.code, 1);
  assert.match(
    bad.err,
    /FAIL tickets\.yaml: a refund on a ticket of another region: expected allow, got TASKPASS_PDP_DENIED \(.*own region/,
  );
  assert.match(bad.out, /^opa: 6 passed, 1 failed$/);
});
