import assert from 'node:assert/strict';
import { generateKeyPairSync, sign } from 'node:crypto';
import { test } from 'node:test';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify } from 'jose';
import { BrokerError } from '../src/errors.ts';
import {
  AGENT,
  ISSUER,
  OPS,
  OPS_AGENT,
  OTHER_AGENT,
  type TestBroker,
  TICKETS,
  testBroker,
} from './app-support.ts';

async function openTask(b: TestBroker, headers = b.mtls(AGENT), claims: Record<string, unknown> = {}) {
  const res = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers,
    payload: { purpose: 'answer ticket', user_token: await b.user.sign(claims), ttl_seconds: 600 },
  });
  assert.equal(res.statusCode, 201, res.body);
  return res.json() as {
    task_id: string;
    expires_at: number;
    sub: string;
    agent: string;
    ceiling: unknown[];
  };
}

function token(b: TestBroker, task: string, body: Record<string, unknown>, headers = b.mtls(AGENT)) {
  return b.app.inject({ method: 'POST', url: `/v1/tasks/${task}/tokens`, headers, payload: body });
}

const read = { audience: TICKETS, tool: 'get_ticket', resource: 'tickets/42', action: 'read' };

test('open a task, get a call token over mTLS: every claim including cnf', async () => {
  const b = await testBroker();
  const t = await openTask(b);
  assert.equal(t.sub, 'alice');
  assert.equal(t.agent, AGENT);
  assert.equal(t.ceiling.length, 1);
  const res = await token(b, t.task_id, { ...read, args_sha256: 'a'.repeat(43) });
  assert.equal(res.statusCode, 200, res.body);
  assert.equal(res.headers['cache-control'], 'no-store');
  const body = res.json();
  assert.equal(body.token_type, 'Bearer');
  assert.equal(body.template, 'tickets-support');
  assert.equal(body.single_use, false);
  assert.deepEqual(decodeProtectedHeader(body.access_token), { alg: 'ES256', typ: 'at+jwt', kid: 'k1' });
  const { payload } = await jwtVerify(body.access_token, createLocalJWKSet({ keys: [b.publicJwk] }), {
    issuer: ISSUER,
    audience: TICKETS,
    typ: 'at+jwt',
    currentDate: new Date(b.clock.now),
  });
  const iat = Math.floor(b.clock.now / 1000);
  assert.deepEqual(payload, {
    iss: ISSUER,
    sub: 'alice',
    act: { sub: AGENT },
    client_id: AGENT,
    aud: TICKETS,
    iat,
    exp: iat + 60,
    jti: body.jti,
    txn: t.task_id,
    authorization_details: [
      {
        type: 'mcp_tool_call',
        tool: 'get_ticket',
        resource: 'tickets/42',
        action: 'read',
        args_sha256: 'a'.repeat(43),
      },
    ],
    cnf: { 'x5t#S256': `thumb-of-${AGENT}` },
    tpl: 'tickets-support',
  });
  assert.equal(body.expires_in, 60);
  assert.equal(b.store.issued.length, 1);
  // JWT-SVID callers get no cnf
  const j = await token(b, t.task_id, read, b.jwt(AGENT));
  assert.equal(j.statusCode, 200);
  const p2 = JSON.parse(Buffer.from(j.json().access_token.split('.')[1], 'base64url').toString());
  assert.equal(p2.cnf, undefined);
});

test('each denial is a 403 with code, message and template', async () => {
  const b = await testBroker();
  const t = await openTask(b);
  const cases: [Record<string, unknown>, string, string | undefined][] = [
    [{ ...read, audience: 'https://other/mcp' }, 'TASKPASS_DENIED_AUDIENCE', undefined],
    [{ ...read, tool: 'delete_ticket' }, 'TASKPASS_DENIED_TOOL', 'tickets-support'],
    [{ ...read, action: 'write' }, 'TASKPASS_DENIED_ACTION', 'tickets-support'],
    [{ ...read, resource: 'users/1' }, 'TASKPASS_DENIED_RESOURCE', 'tickets-support'],
    [{ ...read, tool: 'close_ticket', action: 'write' }, 'TASKPASS_DENIED_PREREQUISITE', 'tickets-support'],
  ];
  for (const [body, code, template] of cases) {
    const r = await token(b, t.task_id, body);
    assert.equal(r.statusCode, 403, code);
    const e = r.json();
    assert.equal(e.code, code);
    assert.equal(e.template, template);
    assert.ok(e.message.length > 0);
  }
  // prerequisite satisfied, then the call limit
  assert.equal((await token(b, t.task_id, read)).statusCode, 200);
  const w = await token(b, t.task_id, { ...read, tool: 'close_ticket', action: 'write' });
  assert.equal(w.statusCode, 200);
  assert.equal(w.json().single_use, true);
  const again = await token(b, t.task_id, { ...read, tool: 'close_ticket', action: 'write' });
  assert.equal(again.json().code, 'TASKPASS_DENIED_CALL_LIMIT');
  // invalid resource grammar
  const bad = await token(b, t.task_id, { ...read, resource: 'tickets/../x' });
  assert.equal(bad.statusCode, 400);
  assert.equal(bad.json().code, 'TASKPASS_INVALID_RESOURCE');
});

test('task admission: delegation required, user conditions, bad user token, unknown agent, autonomous', async () => {
  const b = await testBroker();
  const open = (headers: Record<string, string>, payload: Record<string, unknown>) =>
    b.app.inject({ method: 'POST', url: '/v1/tasks', headers, payload });
  let r = await open(b.mtls(AGENT), { purpose: 'x' });
  assert.equal(r.json().code, 'TASKPASS_DELEGATION_REQUIRED');
  r = await open(b.mtls(AGENT), { purpose: 'x', user_token: await b.user.sign({ groups: ['sales'] }) });
  assert.equal(r.json().code, 'TASKPASS_DENIED_USER');
  r = await open(b.mtls(AGENT), { purpose: 'x', user_token: await b.user.sign({}, { aud: 'someone-else' }) });
  assert.equal(r.statusCode, 401);
  assert.equal(r.json().code, 'TASKPASS_USER_TOKEN_INVALID');
  r = await open(b.mtls(AGENT), { purpose: 'x', user_token: await b.user.sign({}, { iss: 'https://evil' }) });
  assert.equal(r.json().code, 'TASKPASS_USER_TOKEN_INVALID');
  r = await open(b.mtls(AGENT), {
    purpose: 'x',
    user_token: await b.user.sign({}, { exp: Math.floor(Date.now() / 1000) - 600 }),
  });
  assert.equal(r.json().code, 'TASKPASS_USER_TOKEN_INVALID');
  r = await open(b.mtls('spiffe://taskpass.local/verifiers/x'), { purpose: 'x' });
  assert.equal(r.statusCode, 403, 'authenticated, but not an allowed agent');
  assert.equal(r.json().code, 'TASKPASS_FORBIDDEN');
  r = await open(b.mtls(OPS_AGENT), { purpose: 'nightly restart', ttl_seconds: 99999 });
  assert.equal(r.statusCode, 201);
  const task = r.json();
  assert.equal(task.sub, OPS_AGENT);
  assert.equal(task.expires_at, Math.floor(b.clock.now / 1000) + 900, 'capped at max_task_ttl');
  const tk = await token(
    b,
    task.task_id,
    { audience: OPS, tool: 'restart', resource: 'services/api', action: 'admin' },
    b.mtls(OPS_AGENT),
  );
  assert.equal(tk.statusCode, 200);
});

test('task lifetime is capped by the user token expiry', async () => {
  const b = await testBroker();
  const exp = Math.floor(b.clock.now / 1000) + 120;
  const r = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: b.mtls(AGENT),
    payload: { purpose: 'x', user_token: await b.user.sign({}, { exp }) },
  });
  assert.equal(r.json().expires_at, exp);
});

test('ownership, completion, closed and expired tasks', async () => {
  const b = await testBroker();
  const t = await openTask(b);
  const g = await b.app.inject({ method: 'GET', url: `/v1/tasks/${t.task_id}`, headers: b.mtls(AGENT) });
  assert.equal(g.statusCode, 200);
  assert.equal(g.json().status, 'open');
  assert.equal(g.json().purpose, 'answer ticket');
  const other = await token(b, t.task_id, read, b.mtls(OTHER_AGENT));
  assert.equal(other.statusCode, 403);
  assert.equal(other.json().code, 'TASKPASS_TASK_NOT_OWNED');
  const nf = await token(b, 'tsk_nope', read);
  assert.equal(nf.statusCode, 404);
  assert.equal(nf.json().code, 'TASKPASS_TASK_NOT_FOUND');
  const oc = await b.app.inject({
    method: 'POST',
    url: `/v1/tasks/${t.task_id}/complete`,
    headers: b.mtls(OTHER_AGENT),
    payload: { status: 'completed' },
  });
  assert.equal(oc.json().code, 'TASKPASS_TASK_NOT_OWNED');

  const c = await b.app.inject({
    method: 'POST',
    url: `/v1/tasks/${t.task_id}/complete`,
    headers: b.mtls(AGENT),
    payload: { status: 'completed' },
  });
  assert.equal(c.statusCode, 200, c.body);
  assert.deepEqual(c.json(), { task_id: t.task_id, status: 'completed', revocation_seq: 1 });
  assert.ok(await b.store.isRevoked('task', t.task_id), 'revocation is in the store before the answer');
  const after = await token(b, t.task_id, read);
  assert.equal(after.statusCode, 409);
  assert.equal(after.json().code, 'TASKPASS_TASK_CLOSED');
  const again = await b.app.inject({
    method: 'POST',
    url: `/v1/tasks/${t.task_id}/complete`,
    headers: b.mtls(AGENT),
    payload: { status: 'failed' },
  });
  assert.equal(again.json().revocation_seq, 1, 'idempotent');

  const t2 = await openTask(b);
  b.clock.now += 601_000;
  const exp = await token(b, t2.task_id, read);
  assert.equal(exp.statusCode, 403);
  assert.equal(exp.json().code, 'TASKPASS_TASK_EXPIRED');
});

test('token exp never exceeds the task expiry', async () => {
  const b = await testBroker();
  const t = await openTask(b);
  b.clock.now += (600 - 10) * 1000;
  const r = await token(b, t.task_id, read);
  assert.equal(r.json().expires_at, t.expires_at);
  assert.equal(r.json().expires_in, 10);
});

test('session token permits no tool call', async () => {
  const b = await testBroker();
  const t = await openTask(b);
  const r = await b.app.inject({
    method: 'POST',
    url: `/v1/tasks/${t.task_id}/session-token`,
    headers: b.jwt(AGENT),
    payload: { audience: TICKETS },
  });
  assert.equal(r.statusCode, 200, r.body);
  const p = JSON.parse(Buffer.from(r.json().access_token.split('.')[1], 'base64url').toString());
  assert.deepEqual(p.authorization_details, [{ type: 'mcp_session' }]);
  assert.equal(p.exp - p.iat, 120);
  const d = await b.app.inject({
    method: 'POST',
    url: `/v1/tasks/${t.task_id}/session-token`,
    headers: b.jwt(AGENT),
    payload: { audience: OPS },
  });
  assert.equal(d.json().code, 'TASKPASS_DENIED_AUDIENCE');
});

test('authentication, validation and store failures', async () => {
  const b = await testBroker();
  const un = await b.app.inject({ method: 'POST', url: '/v1/tasks', payload: { purpose: 'x' } });
  assert.equal(un.statusCode, 401);
  assert.equal(un.json().code, 'TASKPASS_UNAUTHENTICATED');
  const bad = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: b.mtls(OPS_AGENT),
    payload: { purpose: 'x', extra: 1 },
  });
  assert.equal(bad.statusCode, 400);
  assert.equal(bad.json().code, 'TASKPASS_BAD_REQUEST');
  const t = await openTask(b);
  b.store.failWrites = true;
  const r = await token(b, t.task_id, read);
  assert.equal(r.statusCode, 503);
  assert.equal(r.json().code, 'TASKPASS_STORE_UNAVAILABLE');
  assert.equal(r.headers['retry-after'], '1');
  assert.ok(!r.body.includes('disk full'));
  const c = await b.app.inject({
    method: 'POST',
    url: `/v1/tasks/${t.task_id}/complete`,
    headers: b.mtls(AGENT),
    payload: { status: 'completed' },
  });
  assert.equal(c.json().code, 'TASKPASS_STORE_UNAVAILABLE');
});

test('rate limit per agent', async () => {
  const b = await testBroker({ rateLimit: { perAgentPerMinute: 2 } });
  const get = (id: string) => b.app.inject({ method: 'GET', url: '/v1/tasks/tsk_x', headers: b.mtls(id) });
  assert.equal((await get(AGENT)).statusCode, 404);
  assert.equal((await get(AGENT)).statusCode, 404);
  const r = await get(AGENT);
  assert.equal(r.statusCode, 429);
  assert.equal(r.json().code, 'TASKPASS_RATE_LIMITED');
  assert.equal((await get(OTHER_AGENT)).statusCode, 404, 'keyed by agent id');
});

test('an authenticated workload that is not an allowed agent gets 403 TASKPASS_FORBIDDEN', async () => {
  const b = await testBroker();
  const notAgent = 'spiffe://taskpass.local/mcp/tickets';
  const r = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: b.mtls(notAgent),
    payload: { purpose: 'x' },
  });
  assert.equal(r.statusCode, 403);
  assert.equal(r.json().code, 'TASKPASS_FORBIDDEN');
  // feed.auth "agents": other workloads are refused the same way; no credential stays 401
  const f = await testBroker({ feed: { auth: 'agents' } });
  const fr = await f.app.inject({ url: '/v1/revocations', headers: f.mtls(notAgent) });
  assert.equal(fr.statusCode, 403);
  assert.equal(fr.json().code, 'TASKPASS_FORBIDDEN');
  assert.equal((await f.app.inject({ url: '/v1/revocations', headers: f.mtls(AGENT) })).statusCode, 200);
  assert.equal((await f.app.inject('/v1/revocations')).statusCode, 401);
});

test('a remote signer that fails leaves no issued call behind; one that works signs what is recorded', async () => {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  let up = false;
  const b = await testBroker(
    {},
    {
      signingKey: {
        kid: 'k1',
        sign: async (input: Buffer) => {
          if (!up) throw new BrokerError('TASKPASS_SIGNER_UNAVAILABLE', 'Vault is sealed');
          return sign('sha256', input, { key: privateKey, dsaEncoding: 'ieee-p1363' });
        },
      },
    },
  );
  const t = await openTask(b);
  const down = await token(b, t.task_id, read);
  assert.equal(down.statusCode, 503, down.body);
  assert.equal(down.json().code, 'TASKPASS_SIGNER_UNAVAILABLE');
  assert.deepEqual(await b.store.listIssued(t.task_id), [], 'nothing recorded for a token never signed');
  up = true;
  const ok = await token(b, t.task_id, read);
  assert.equal(ok.statusCode, 200, ok.body);
  const { payload } = await jwtVerify(ok.json().access_token, publicKey);
  assert.deepEqual(
    (await b.store.listIssued(t.task_id)).map((c) => c.jti),
    [payload.jti],
  );
});
