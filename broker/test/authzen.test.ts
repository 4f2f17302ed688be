// AuthZEN 1.0 both ways: the broker as a PDP (discovery, evaluation, batch evaluations, callers
// only) answering our own AuthZEN client over HTTP; and that client as a decision point behind the
// templates, against a tiny real HTTP PDP.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { createServer, type IncomingHttpHeaders } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { createAuthzenDecisionPoint } from '../src/pdp/authzen.ts';
import { DecisionPoints, type PdpInput } from '../src/pdp/index.ts';
import { AGENT, OTHER_AGENT, type TestBroker, TICKETS, testBroker, VERIFIER } from './app-support.ts';

const GATEWAY = VERIFIER;

async function broker(): Promise<TestBroker & { url: string }> {
  const b = await testBroker({ authzen: { callers: [GATEWAY] } });
  const url = await b.app.listen({ port: 0, host: '127.0.0.1' });
  return Object.assign(b, { url });
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

const call = (task: string, tool: string, resource: string, action: 'read' | 'write' = 'read'): PdpInput => ({
  subject: { type: 'agent', id: AGENT, properties: {} },
  action: { name: tool, properties: { action_class: action } },
  resource: { type: 'mcp_resource', id: resource, properties: { audience: TICKETS } },
  context: { task: { id: task }, templates: [], time: new Date().toISOString() },
});

test('discovery: the AuthZEN configuration names the PDP and both evaluation endpoints (public)', async () => {
  const b = await testBroker();
  const res = await b.app.inject({ method: 'GET', url: '/.well-known/authzen-configuration' });
  assert.equal(res.statusCode, 200);
  assert.deepEqual(res.json(), {
    policy_decision_point: 'https://broker.test',
    access_evaluation_endpoint: 'https://broker.test/access/v1/evaluation',
    access_evaluations_endpoint: 'https://broker.test/access/v1/evaluations',
  });
  const openapi = (await b.app.inject({ method: 'GET', url: '/openapi.json' })).json();
  assert.ok(openapi.paths['/access/v1/evaluation']?.post);
  assert.ok(openapi.paths['/access/v1/evaluations']?.post);
  await b.app.close();
});

test('our AuthZEN client asks the broker: allowed and denied calls, decided like issuance', async () => {
  const b = await broker();
  const task = await openTask(b);
  const client = createAuthzenDecisionPoint({
    name: 'taskpass',
    kind: 'authzen',
    url: b.url,
    timeoutMs: 2000,
    headers: b.jwt(GATEWAY),
  });
  assert.equal((await client.decide(call(task, 'get_ticket', 'tickets/42'))).allow, true);
  const tool = await client.decide(call(task, 'delete_ticket', 'tickets/42'));
  assert.equal(tool.allow, false);
  assert.match(!tool.allow ? tool.reason : '', /denied the call: tool delete_ticket not allowed/);
  // The task's workflow state: close_ticket needs a get_ticket token on the same ticket first.
  const early = await client.decide(call(task, 'close_ticket', 'tickets/42', 'write'));
  assert.match(!early.allow ? early.reason : '', /get_ticket on the same resource must come first/);
  const other = await client.decide({
    ...call(task, 'get_ticket', 'tickets/42'),
    subject: { type: 'agent', id: OTHER_AGENT, properties: {} },
  });
  assert.match(!other.allow ? other.reason : '', /no task/);
  // Nothing was issued by asking.
  assert.equal(b.store.issued.length, 0);
  await b.app.close();
});

test('only authenticated, configured callers may ask', async () => {
  const b = await testBroker({ authzen: { callers: [GATEWAY] } });
  const task = await openTask(b);
  const payload = call(task, 'get_ticket', 'tickets/42');
  const post = (headers: Record<string, string>) =>
    b.app.inject({ method: 'POST', url: '/access/v1/evaluation', headers, payload });
  const anon = await post({});
  assert.equal(anon.statusCode, 401);
  assert.equal(anon.json().code, 'TASKPASS_UNAUTHENTICATED');
  const stranger = await post(b.mtls(AGENT));
  assert.equal(stranger.statusCode, 403);
  assert.equal(stranger.json().code, 'TASKPASS_FORBIDDEN');
  const gw = await post(b.mtls(GATEWAY));
  assert.equal(gw.statusCode, 200);
  assert.deepEqual(gw.json(), { decision: true });
  const bad = await b.app.inject({
    method: 'POST',
    url: '/access/v1/evaluation',
    headers: b.mtls(GATEWAY),
    payload: { subject: {} },
  });
  assert.equal(bad.statusCode, 400);
  assert.equal(bad.json().code, 'TASKPASS_BAD_REQUEST');
  await b.app.close();
});

test('batch evaluations: defaults merged into each item, and the three evaluation semantics', async () => {
  const b = await testBroker({ authzen: { callers: [GATEWAY] } });
  const task = await openTask(b);
  const { subject, resource, context } = call(task, 'get_ticket', 'tickets/42');
  const items = [
    { action: { name: 'get_ticket', properties: { action_class: 'read' } } },
    { action: { name: 'delete_ticket', properties: { action_class: 'write' } } },
    {
      action: { name: 'get_ticket', properties: { action_class: 'read' } },
      resource: { ...resource, id: 'tickets/7' },
    },
  ];
  const batch = async (semantic?: string) => {
    const res = await b.app.inject({
      method: 'POST',
      url: '/access/v1/evaluations',
      headers: b.mtls(GATEWAY),
      payload: {
        subject,
        resource,
        context,
        evaluations: items,
        ...(semantic ? { options: { evaluations_semantic: semantic } } : {}),
      },
    });
    assert.equal(res.statusCode, 200, res.body);
    return (res.json().evaluations as { decision: boolean; context?: { code: string } }[]).map((e) =>
      e.decision ? 'allow' : e.context?.code,
    );
  };
  assert.deepEqual(await batch(), ['allow', 'TASKPASS_DENIED_TOOL', 'allow']);
  assert.deepEqual(await batch('execute_all'), ['allow', 'TASKPASS_DENIED_TOOL', 'allow']);
  assert.deepEqual(await batch('deny_on_first_deny'), ['allow', 'TASKPASS_DENIED_TOOL']);
  assert.deepEqual(await batch('permit_on_first_permit'), ['allow']);
  await b.app.close();
});

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

test('an AuthZEN PDP behind the templates: its denial, its garbage, and the bearer token from a file', async () => {
  const seen: IncomingHttpHeaders[] = [];
  const pdp = createServer((req, res) => {
    seen.push(req.headers);
    let body = '';
    req.on('data', (d) => {
      body += d;
    });
    req.on('end', () => {
      const input = JSON.parse(body) as PdpInput;
      res.setHeader('content-type', 'application/json');
      if (input.resource.id === 'tickets/13')
        res.end(JSON.stringify({ decision: false, context: { reason: 'audit hold' } }));
      else if (input.resource.id === 'tickets/7') res.end(JSON.stringify({ decision: 'maybe' }));
      else res.end(JSON.stringify({ decision: true }));
    });
  });
  await new Promise<void>((r) => pdp.listen(0, '127.0.0.1', r));
  const dir = await mkdtemp(join(tmpdir(), 'taskpass-authzen-'));
  dirs.push(dir);
  await writeFile(join(dir, 'token'), 'secret-token\n');
  const point = createAuthzenDecisionPoint({
    name: 'central',
    kind: 'authzen',
    url: `http://127.0.0.1:${(pdp.address() as { port: number }).port}`,
    timeoutMs: 2000,
    tokenFile: join(dir, 'token'),
  });
  const b = await testBroker({}, { decisionPoints: new DecisionPoints([point], { global: 'central' }) });
  const task = await openTask(b);
  const ask = async (ticket: string) =>
    (
      await b.app.inject({
        method: 'POST',
        url: `/v1/tasks/${task}/tokens`,
        headers: b.mtls(AGENT),
        payload: { audience: TICKETS, tool: 'get_ticket', resource: `tickets/${ticket}`, action: 'read' },
      })
    ).json();
  assert.ok((await ask('42')).access_token);
  const no = await ask('13');
  assert.equal(no.code, 'TASKPASS_PDP_DENIED');
  assert.equal(no.engine, 'authzen/central');
  assert.match(no.message, /denied the call: audit hold/);
  assert.equal((await ask('7')).code, 'TASKPASS_PDP_UNAVAILABLE');
  assert.equal(seen[0]?.authorization, 'Bearer secret-token');
  await b.app.close();
  pdp.closeAllConnections();
  await new Promise((r) => pdp.close(r));
});
