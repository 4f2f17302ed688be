import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ADMIN,
  AGENT,
  ISSUER,
  OPS,
  OPS_AGENT,
  svid,
  type TestBroker,
  TICKETS,
  testBroker,
  VERIFIER,
} from './app-support.ts';

const form = (o: Record<string, string>) => new URLSearchParams(o).toString();
const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
const TE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const details = JSON.stringify([
  { type: 'mcp_tool_call', tool: 'get_ticket', resource: 'tickets/7', action: 'read' },
]);

async function exchange(
  b: TestBroker,
  fields: Record<string, string>,
  headers: Record<string, string> = b.mtls(AGENT),
) {
  return b.app.inject({
    method: 'POST',
    url: '/oauth2/token',
    headers: { ...FORM, ...headers },
    payload: form(fields),
  });
}

test('RFC 8693 token exchange happy path (mTLS actor, one-shot task) and with actor_token / client_assertion', async () => {
  const b = await testBroker();
  const user = await b.user.sign({});
  const base = {
    grant_type: TE,
    subject_token: user,
    subject_token_type: 'urn:ietf:params:oauth:token-type:id_token',
    resource: TICKETS,
    authorization_details: details,
  };
  const r = await exchange(b, base);
  assert.equal(r.statusCode, 200, r.body);
  assert.equal(r.headers['cache-control'], 'no-store');
  const body = r.json();
  assert.equal(body.issued_token_type, 'urn:ietf:params:oauth:token-type:access_token');
  assert.equal(body.token_type, 'Bearer');
  assert.equal(body.expires_in, 60);
  assert.deepEqual(body.authorization_details, JSON.parse(details));
  assert.match(body.task_id, /^tsk_/);
  const p = JSON.parse(Buffer.from(body.access_token.split('.')[1], 'base64url').toString());
  assert.equal(p.sub, 'alice');
  assert.deepEqual(p.act, { sub: AGENT });
  assert.ok(p.cnf['x5t#S256']);

  // actor_token = JWT-SVID, existing task
  const r2 = await exchange(
    b,
    {
      ...base,
      task_id: body.task_id,
      actor_token: svid(AGENT),
      actor_token_type: 'urn:ietf:params:oauth:token-type:jwt',
    },
    {},
  );
  assert.equal(r2.statusCode, 200, r2.body);
  assert.equal(r2.json().task_id, body.task_id);
  // client_assertion jwt-spiffe, autonomous (no subject_token)
  const r3 = await exchange(
    b,
    {
      grant_type: TE,
      client_assertion_type: 'urn:ietf:params:oauth:client-assertion-type:jwt-spiffe',
      client_assertion: svid(OPS_AGENT),
      resource: OPS,
      authorization_details: JSON.stringify([
        { type: 'mcp_tool_call', tool: 'restart', resource: 'services/a', action: 'admin' },
      ]),
    },
    {},
  );
  assert.equal(r3.statusCode, 200, r3.body);
});

test('token exchange errors are RFC 6749 bodies with our code', async () => {
  const b = await testBroker();
  const user = await b.user.sign({});
  const ok = {
    grant_type: TE,
    subject_token: user,
    subject_token_type: 'urn:ietf:params:oauth:token-type:jwt',
    resource: TICKETS,
    authorization_details: details,
  };
  const cases: [Record<string, string>, Record<string, string> | undefined, number, string, string?][] = [
    [{ ...ok, grant_type: 'client_credentials' }, undefined, 400, 'unsupported_grant_type'],
    [ok, {}, 401, 'invalid_client', 'TASKPASS_UNAUTHENTICATED'],
    [
      { ...ok, subject_token_type: 'urn:ietf:params:oauth:token-type:saml2' },
      undefined,
      400,
      'invalid_request',
    ],
    [{ ...ok, subject_token: 'garbage' }, undefined, 400, 'invalid_grant', 'TASKPASS_USER_TOKEN_INVALID'],
    [{ ...ok, authorization_details: 'not json' }, undefined, 400, 'invalid_authorization_details'],
    [
      { ...ok, authorization_details: '[{"type":"mcp_tool_call","tool":"get_ticket"}]' },
      undefined,
      400,
      'invalid_authorization_details',
    ],
    [{ ...ok, resource: 'https://other/mcp' }, undefined, 400, 'invalid_target', 'TASKPASS_DENIED_AUDIENCE'],
    [
      { grant_type: TE, resource: TICKETS, authorization_details: details },
      undefined,
      400,
      'invalid_grant',
      'TASKPASS_DELEGATION_REQUIRED',
    ],
    [
      { ...ok, authorization_details: details.replace('tickets/7', 'users/7') },
      undefined,
      400,
      'invalid_authorization_details',
      'TASKPASS_DENIED_RESOURCE',
    ],
    [{ ...ok, task_id: 'tsk_missing' }, undefined, 400, 'invalid_grant', 'TASKPASS_TASK_NOT_FOUND'],
  ];
  for (const [fields, headers, status, error, code] of cases) {
    const r = await exchange(b, fields, headers);
    assert.equal(r.statusCode, status, `${error}: ${r.body}`);
    const e = r.json();
    assert.equal(e.error, error, r.body);
    assert.equal(typeof e.error_description, 'string');
    if (code) assert.equal(e.code, code);
    assert.ok(!r.body.includes(user), 'never echoes the token');
    assert.ok(!/at .*\.ts:\d+/.test(r.body), 'no stack');
  }
  const denied = await exchange(b, { ...ok, authorization_details: details.replace('tickets/7', 'users/7') });
  assert.equal(denied.json().template, 'tickets-support');
});

async function issue(b: TestBroker, action: 'read' | 'write' = 'read') {
  const task = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: b.mtls(AGENT),
    payload: { purpose: 'p', user_token: await b.user.sign({}) },
  });
  const id = task.json().task_id as string;
  const get = async (tool: string, act: string) =>
    (
      await b.app.inject({
        method: 'POST',
        url: `/v1/tasks/${id}/tokens`,
        headers: b.mtls(AGENT),
        payload: { audience: TICKETS, tool, resource: 'tickets/1', action: act },
      })
    ).json().access_token as string;
  const r = await get('get_ticket', 'read');
  return { task: id, token: action === 'read' ? r : await get('close_ticket', 'write') };
}

const introspect = (
  b: TestBroker,
  fields: Record<string, string>,
  headers: Record<string, string> = b.mtls(VERIFIER),
) =>
  b.app.inject({
    method: 'POST',
    url: '/oauth2/introspect',
    headers: { ...FORM, ...headers },
    payload: form(fields),
  });

test('introspection: active with claims, inactive when bad, revoked, completed, consumed; needs a workload', async () => {
  const b = await testBroker();
  const { task, token } = await issue(b);
  const r = await introspect(b, { token });
  assert.equal(r.statusCode, 200);
  const a = r.json();
  assert.equal(a.active, true);
  assert.equal(a.iss, ISSUER);
  assert.equal(a.sub, 'alice');
  assert.equal(a.aud, TICKETS);
  assert.equal(a.client_id, AGENT);
  assert.equal(a.txn, task);
  assert.deepEqual(a.act, { sub: AGENT });
  assert.ok(a.cnf['x5t#S256']);
  assert.equal(a.authorization_details[0].tool, 'get_ticket');
  for (const k of ['exp', 'iat', 'jti']) assert.ok(a[k], k);

  assert.deepEqual((await introspect(b, { token: 'nope' })).json(), { active: false });
  assert.deepEqual((await introspect(b, { token: token.slice(0, -4) + 'AAAA' })).json(), { active: false });
  const un = await introspect(b, { token }, {});
  assert.equal(un.statusCode, 401);
  assert.equal(un.json().error, 'invalid_client');

  // single-use consumption
  const w = await issue(b, 'write');
  assert.equal((await introspect(b, { token: w.token, consume: 'true' })).json().active, true);
  assert.equal((await introspect(b, { token: w.token, consume: 'true' })).json().active, false);

  // revocation endpoint (RFC 7009): 200 for garbage, revokes a real token
  const rv = (t: string, h: Record<string, string> = b.jwt(AGENT)) =>
    b.app.inject({
      method: 'POST',
      url: '/oauth2/revoke',
      headers: { ...FORM, ...h },
      payload: form({ token: t }),
    });
  assert.equal((await rv('garbage')).statusCode, 200);
  assert.equal((await rv(token, {})).statusCode, 401);
  const ok = await rv(token);
  assert.equal(ok.statusCode, 200);
  assert.equal(b.store.revs.at(-1)?.kind, 'token');
  assert.equal((await introspect(b, { token })).json().active, false);

  // completing the task deactivates all its tokens
  const c = await issue(b);
  await b.app.inject({
    method: 'POST',
    url: `/v1/tasks/${c.task}/complete`,
    headers: b.mtls(AGENT),
    payload: { status: 'cancelled' },
  });
  assert.equal((await introspect(b, { token: c.token })).json().active, false);
  // expiry
  const e = await issue(b);
  b.clock.now += 3600_000;
  assert.equal((await introspect(b, { token: e.token })).json().active, false);
});

test('metadata, JWKS, health, readiness, metrics and OpenAPI are public; admin needs an admin', async () => {
  const b = await testBroker();
  const md = (await b.app.inject('/.well-known/oauth-authorization-server')).json();
  assert.equal(md.issuer, ISSUER);
  assert.equal(md.token_endpoint, `${ISSUER}/oauth2/token`);
  assert.equal(md.introspection_endpoint, `${ISSUER}/oauth2/introspect`);
  assert.equal(md.revocation_endpoint, `${ISSUER}/oauth2/revoke`);
  assert.equal(md.jwks_uri, `${ISSUER}/.well-known/jwks.json`);
  assert.ok(md.grant_types_supported.includes(TE));
  assert.ok(md.token_endpoint_auth_methods_supported.includes('tls_client_auth'));
  assert.equal(md.tls_client_certificate_bound_access_tokens, true);
  assert.deepEqual(md.authorization_details_types_supported, ['mcp_tool_call', 'mcp_session']);

  const jwksRes = await b.app.inject('/.well-known/jwks.json');
  // The cache lifetime announced is the one config checked against keys.prepublish.
  assert.equal(jwksRes.headers['cache-control'], `public, max-age=${b.config.keys.jwksMaxAge}`);
  const jwks = jwksRes.json();
  assert.equal(jwks.keys[0].kid, 'k1');
  assert.equal(jwks.keys[0].d, undefined);

  assert.deepEqual((await b.app.inject('/healthz')).json(), { status: 'ok' });
  const ready = await b.app.inject('/readyz');
  assert.equal(ready.statusCode, 200, ready.body);

  await issue(b);
  const m = await b.app.inject('/metrics');
  assert.equal(m.statusCode, 200);
  assert.match(m.body, /taskpass_decisions_total\{result="allow",reason="allowed"\} 1/);
  assert.match(m.body, /taskpass_issuance_seconds_bucket/);
  assert.match(m.body, /taskpass_feed_subscribers/);

  const api = (await b.app.inject('/openapi.json')).json() as {
    paths: Record<string, Record<string, unknown>>;
  };
  const expected: [string, string][] = [
    ['post', '/v1/tasks'],
    ['get', '/v1/tasks/{id}'],
    ['post', '/v1/tasks/{id}/tokens'],
    ['post', '/v1/tasks/{id}/session-token'],
    ['post', '/v1/tasks/{id}/complete'],
    ['get', '/v1/revocations'],
    ['get', '/.well-known/jwks.json'],
    ['get', '/.well-known/oauth-authorization-server'],
    ['post', '/oauth2/token'],
    ['post', '/oauth2/introspect'],
    ['post', '/oauth2/revoke'],
    ['get', '/admin/v1/tasks'],
    ['post', '/admin/v1/tasks/{id}/revoke'],
    ['get', '/healthz'],
    ['get', '/readyz'],
    ['get', '/metrics'],
    ['get', '/openapi.json'],
  ];
  for (const [method, path] of expected) assert.ok(api.paths[path]?.[method], `${method} ${path} in OpenAPI`);
  for (const [path, ops] of Object.entries(api.paths)) {
    for (const [method, op] of Object.entries(ops)) {
      assert.ok((op as { responses?: object }).responses, `${method} ${path} declares responses`);
    }
  }

  // admin
  const list = (h: Record<string, string>) =>
    b.app.inject({ method: 'GET', url: '/admin/v1/tasks', headers: h });
  assert.equal((await list({})).statusCode, 401);
  const na = await list(b.mtls(AGENT));
  assert.equal(na.statusCode, 403);
  assert.equal(na.json().code, 'TASKPASS_FORBIDDEN_ADMIN');
  const l = await list(b.mtls(ADMIN));
  assert.equal(l.statusCode, 200);
  assert.equal(l.json().tasks.length, 1);
  const id = l.json().tasks[0].task_id;
  const rv = await b.app.inject({
    method: 'POST',
    url: `/admin/v1/tasks/${id}/revoke`,
    headers: b.jwt(ADMIN),
    payload: { reason: 'incident 7' },
  });
  assert.equal(rv.statusCode, 200, rv.body);
  assert.equal(rv.json().status, 'revoked');
  const rvAgent = await b.app.inject({
    method: 'POST',
    url: `/admin/v1/tasks/${id}/revoke`,
    headers: b.jwt(AGENT),
    payload: {},
  });
  assert.equal(rvAgent.statusCode, 403);
  assert.equal(
    (await b.app.inject({ method: 'POST', url: '/admin/v1/tasks/tsk_zz/revoke', headers: b.jwt(ADMIN) }))
      .statusCode,
    404,
  );

  // feed: default "workloads" needs an authenticated workload
  assert.equal((await b.app.inject('/v1/revocations')).statusCode, 401);
  assert.equal((await b.app.inject({ url: '/v1/revocations', headers: b.mtls(VERIFIER) })).statusCode, 200);
  const open = await testBroker({ feed: { auth: 'none' } });
  assert.equal((await open.app.inject('/v1/revocations')).statusCode, 200);
});

test('error bodies: no stack, no token; unknown routes; oversize bodies', async () => {
  const b = await testBroker({ bodyLimit: 2048 });
  const nf = await b.app.inject('/nope');
  assert.equal(nf.statusCode, 404);
  assert.equal(nf.json().code, 'TASKPASS_NOT_FOUND');
  const big = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: { ...b.mtls(AGENT), 'content-type': 'application/json' },
    payload: JSON.stringify({ purpose: 'x'.repeat(4000) }),
  });
  assert.equal(big.statusCode, 413);
  assert.deepEqual(Object.keys(big.json()).sort(), ['code', 'message']);
  const badJson = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: { ...b.mtls(AGENT), 'content-type': 'application/json' },
    payload: '{"purpose":',
  });
  assert.equal(badJson.statusCode, 400);
  assert.equal(badJson.json().code, 'TASKPASS_BAD_REQUEST');
  const ut = await b.user.sign({}, { aud: 'wrong' });
  const r = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: b.mtls(AGENT),
    payload: { purpose: 'x', user_token: ut },
  });
  assert.ok(!r.body.includes(ut));
  assert.ok(!r.body.includes('stack'));
});

test('/readyz says how the signing keys are kept at rest (plaintext only by explicit opt-in)', async () => {
  for (const protection of ['encrypted', 'plaintext'] as const) {
    const b = await testBroker({}, { keysProtection: protection });
    const ready = await b.app.inject('/readyz');
    assert.equal(ready.statusCode, 200);
    assert.equal(ready.json().signing_keys_at_rest, protection);
    await b.app.close();
  }
});
