// The broker's request boundary (#7): authentication and rate limits before any body is read,
// per-route body limits, JSON depth, and JSON types taken as declared (no coercion).
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  ADMIN,
  AGENT,
  OPS,
  OPS_AGENT,
  svid,
  type TestBroker,
  TICKETS,
  testBroker,
  VERIFIER,
} from './app-support.ts';

const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
const JSON_CT = { 'content-type': 'application/json' };
const TE = 'urn:ietf:params:oauth:grant-type:token-exchange';
const form = (o: Record<string, string>) => new URLSearchParams(o).toString();
const opsDetails = JSON.stringify([
  { type: 'mcp_tool_call', tool: 'restart', resource: 'services/a', action: 'admin' },
]);
const opsExchange = { grant_type: TE, resource: OPS, authorization_details: opsDetails };

async function opsTask(b: TestBroker): Promise<string> {
  const r = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: b.mtls(OPS_AGENT),
    payload: { purpose: 'restart' },
  });
  assert.equal(r.statusCode, 201, r.body);
  return r.json().task_id;
}

const callBody = { audience: OPS, tool: 'restart', resource: 'services/a', action: 'admin' };

/** Seconds in "retry in N s" of a 429 message. */
const retryInMessage = (m: string): number => Number(/retry in (\d+) s\b/.exec(m)?.[1]);

test('introspection and revocation authenticate the caller before reading the body', async () => {
  const b = await testBroker();
  // Larger than every body limit: had the body been read first, this would be a 413.
  const huge = form({ token: 'x'.repeat(70_000) });
  for (const url of ['/oauth2/introspect', '/oauth2/revoke']) {
    const r = await b.app.inject({ method: 'POST', url, headers: FORM, payload: huge });
    assert.equal(r.statusCode, 401, `${url}: ${r.body}`);
    assert.equal(r.json().error, 'invalid_client');
    assert.equal(r.json().code, 'TASKPASS_UNAUTHENTICATED');
  }
  // The agent API did so already; it still does, for huge and deeply nested bodies alike.
  for (const payload of ['['.repeat(60_000), JSON.stringify({ purpose: 'x'.repeat(70_000) })]) {
    const r = await b.app.inject({ method: 'POST', url: '/v1/tasks', headers: JSON_CT, payload });
    assert.equal(r.statusCode, 401);
    assert.equal(r.json().code, 'TASKPASS_UNAUTHENTICATED');
  }
});

test('JSON nested deeper than the limit is refused before JSON.parse runs', async () => {
  const b = await testBroker();
  const deep = `{"purpose":${'['.repeat(5000)}"x"${']'.repeat(5000)}}`;
  const parse = JSON.parse;
  let parsed = 0;
  JSON.parse = ((...a: Parameters<typeof JSON.parse>) => {
    parsed++;
    return parse(...a);
  }) as typeof JSON.parse;
  let r: Awaited<ReturnType<typeof b.app.inject>>;
  try {
    r = await b.app.inject({
      method: 'POST',
      url: '/v1/tasks',
      headers: { ...b.mtls(OPS_AGENT), ...JSON_CT },
      payload: deep,
    });
  } finally {
    JSON.parse = parse;
  }
  assert.equal(r.statusCode, 400, r.body);
  assert.equal(r.json().code, 'TASKPASS_BAD_REQUEST');
  assert.match(r.json().message, /nested deeper/);
  assert.equal(parsed, 0, 'the body was never handed to JSON.parse');
  // Brackets inside strings do not count; shallow JSON still parses.
  const ok = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: { ...b.mtls(OPS_AGENT), ...JSON_CT },
    payload: JSON.stringify({ purpose: '[[[[[[[[[[[[[[[[[[{{{{{{{{{{{' }),
  });
  assert.equal(ok.statusCode, 201, ok.body);
});

test('each route accepts no larger body than its schema admits (413 TASKPASS_BODY_TOO_LARGE)', async () => {
  const b = await testBroker(); // default bodyLimit (64 KiB)
  const task = await opsTask(b);
  // A valid call-token body padded with whitespace past 40 KiB (the arguments may take ~32 KiB).
  const padded = `${' '.repeat(41_000)}${JSON.stringify(callBody)}`;
  const r = await b.app.inject({
    method: 'POST',
    url: `/v1/tasks/${task}/tokens`,
    headers: { ...b.mtls(OPS_AGENT), ...JSON_CT },
    payload: padded,
  });
  assert.equal(r.statusCode, 413, r.body);
  assert.deepEqual(r.json(), { code: 'TASKPASS_BODY_TOO_LARGE', message: r.json().message });
  const unpadded = await b.app.inject({
    method: 'POST',
    url: `/v1/tasks/${task}/tokens`,
    headers: { ...b.mtls(OPS_AGENT), ...JSON_CT },
    payload: JSON.stringify(callBody),
  });
  assert.equal(unpadded.statusCode, 200, unpadded.body);
  // Token exchange without a header credential (the actor would be in the form): at most 40 KiB
  // is read, whatever the global bodyLimit.
  const te = await b.app.inject({
    method: 'POST',
    url: '/oauth2/token',
    headers: FORM,
    payload: form({ ...opsExchange, actor_token: svid(OPS_AGENT), padding: 'p'.repeat(42_000) }),
  });
  assert.equal(te.statusCode, 413, te.body);
  assert.equal(te.json().error, 'invalid_request');
  assert.equal(te.json().code, 'TASKPASS_BODY_TOO_LARGE');
});

test('the token exchange counts against the agent budget of the task API; 429 slow_down with Retry-After', async () => {
  const b = await testBroker({ rateLimit: { perAgentPerMinute: 2 } });
  await opsTask(b); // 1
  const ok = await b.app.inject({
    method: 'POST',
    url: '/oauth2/token',
    headers: { ...FORM, ...b.mtls(OPS_AGENT) },
    payload: form(opsExchange),
  }); // 2
  assert.equal(ok.statusCode, 200, ok.body);
  // Same agent, credential in the form this time: still the same budget.
  const r = await b.app.inject({
    method: 'POST',
    url: '/oauth2/token',
    headers: FORM,
    payload: form({
      ...opsExchange,
      actor_token: svid(OPS_AGENT),
      actor_token_type: 'urn:ietf:params:oauth:token-type:jwt',
    }),
  });
  assert.equal(r.statusCode, 429, r.body);
  assert.equal(r.json().error, 'slow_down');
  assert.equal(r.json().code, 'TASKPASS_RATE_LIMITED');
  const retryAfter = Number(r.headers['retry-after']);
  assert.ok(retryAfter >= 1 && retryAfter <= 60, `Retry-After ${r.headers['retry-after']}`);
  assert.equal(retryInMessage(r.json().error_description), retryAfter, 'message and header agree');
  const viaHeader = await b.app.inject({
    method: 'POST',
    url: '/oauth2/token',
    headers: { ...FORM, ...b.mtls(OPS_AGENT) },
    payload: form(opsExchange),
  });
  assert.equal(viaHeader.statusCode, 429);
});

test('the 429 of the task API states the same Retry-After in header and message', async () => {
  const b = await testBroker({ rateLimit: { perAgentPerMinute: 1 } });
  await opsTask(b);
  const r = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: b.mtls(OPS_AGENT),
    payload: { purpose: 'again' },
  });
  assert.equal(r.statusCode, 429);
  assert.deepEqual(Object.keys(r.json()).sort(), ['code', 'message']);
  const retryAfter = Number(r.headers['retry-after']);
  assert.ok(retryAfter >= 1 && retryAfter <= 60);
  assert.equal(retryInMessage(r.json().message), retryAfter);
});

test('token exchange without a header credential is limited per client IP before its form is read', async () => {
  const b = await testBroker({ rateLimit: { perIpPerMinute: 1 } });
  const fields = {
    ...opsExchange,
    actor_token: svid(OPS_AGENT),
    actor_token_type: 'urn:ietf:params:oauth:token-type:jwt',
  };
  const first = await b.app.inject({
    method: 'POST',
    url: '/oauth2/token',
    headers: FORM,
    payload: form(fields),
  });
  assert.equal(first.statusCode, 200, first.body);
  // Oversized: refused for the IP budget, not for its size — the body was never read.
  const second = await b.app.inject({
    method: 'POST',
    url: '/oauth2/token',
    headers: FORM,
    payload: form({ ...fields, padding: 'p'.repeat(70_000) }),
  });
  assert.equal(second.statusCode, 429, second.body);
  assert.equal(second.json().error, 'slow_down');
  // A header credential counts against the agent, not the IP.
  const mtls = await b.app.inject({
    method: 'POST',
    url: '/oauth2/token',
    headers: { ...FORM, ...b.mtls(OPS_AGENT) },
    payload: form(opsExchange),
  });
  assert.equal(mtls.statusCode, 200, mtls.body);
});

test('introspection, revocation and admin writes are limited per caller', async () => {
  const b = await testBroker({ rateLimit: { perWorkloadPerMinute: 2, perAdminPerMinute: 1 } });
  const call = (url: string, headers: Record<string, string>) =>
    b.app.inject({ method: 'POST', url, headers: { ...FORM, ...headers }, payload: form({ token: 'nope' }) });
  assert.equal((await call('/oauth2/introspect', b.mtls(VERIFIER))).statusCode, 200);
  assert.equal((await call('/oauth2/revoke', b.mtls(VERIFIER))).statusCode, 200);
  const limited = await call('/oauth2/introspect', b.mtls(VERIFIER));
  assert.equal(limited.statusCode, 429);
  assert.equal(limited.json().error, 'slow_down');
  assert.equal(retryInMessage(limited.json().error_description), Number(limited.headers['retry-after']));
  assert.equal((await call('/oauth2/introspect', b.mtls(AGENT))).statusCode, 200, 'keyed by workload');

  const task = await opsTask(b);
  const revoke = () =>
    b.app.inject({
      method: 'POST',
      url: `/admin/v1/tasks/${task}/revoke`,
      headers: b.mtls(ADMIN),
      payload: { reason: 'test' },
    });
  assert.equal((await revoke()).statusCode, 200);
  const r = await revoke();
  assert.equal(r.statusCode, 429);
  assert.equal(r.json().code, 'TASKPASS_RATE_LIMITED');
});

test('no type coercion: JSON bodies take their declared types and nothing else', async () => {
  const b = await testBroker();
  const task = await opsTask(b);
  const post = (url: string, payload: unknown) =>
    b.app.inject({
      method: 'POST',
      url,
      headers: { ...b.mtls(OPS_AGENT), ...JSON_CT },
      payload: JSON.stringify(payload),
    });
  const refused: [string, unknown][] = [
    [`/v1/tasks/${task}/tokens`, { ...callBody, action: ['admin'] }],
    [`/v1/tasks/${task}/tokens`, { ...callBody, tool: 7 }],
    [`/v1/tasks/${task}/tokens`, { ...callBody, resource: ['services/a'] }],
    [`/v1/tasks/${task}/tokens`, { ...callBody, extra: 1 }],
    ['/v1/tasks', { purpose: 'x', ttl_seconds: '0x10' }],
    ['/v1/tasks', { purpose: 'x', ttl_seconds: '16' }],
    ['/v1/tasks', { purpose: 'x', ttl_seconds: true }],
    ['/v1/tasks', { purpose: 'x', ttl_seconds: [16] }],
    ['/v1/tasks', { purpose: 'x', ttl_seconds: null }],
    ['/v1/tasks', { purpose: 'x', ttl_seconds: 16.5 }],
    ['/v1/tasks', { purpose: 7 }],
    ['/v1/tasks', { purpose: ['x'] }],
    [`/v1/tasks/${task}/complete`, { status: ['completed'] }],
    [`/v1/tasks/${task}/session-token`, { audience: [OPS] }],
  ];
  for (const [url, payload] of refused) {
    const r = await post(url, payload);
    assert.equal(r.statusCode, 400, `${url} ${JSON.stringify(payload)} → ${r.statusCode} ${r.body}`);
    assert.equal(r.json().code, 'TASKPASS_BAD_REQUEST');
  }
  assert.equal((await post('/v1/tasks', { purpose: 'x', ttl_seconds: 16 })).statusCode, 201);
  assert.equal((await post(`/v1/tasks/${task}/tokens`, callBody)).statusCode, 200);
});

test('no type coercion: query strings hold plain decimals only; forms hold one string per field', async () => {
  const b = await testBroker();
  const list = (q: string) =>
    b.app.inject({ method: 'GET', url: `/admin/v1/tasks?${q}`, headers: b.mtls(ADMIN) });
  for (const v of ['0x10', '%201', '1e3', '%2B1', '01', '', '1.0', '-1', '10%20', '99999999999999999999']) {
    const r = await list(`limit=${v}`);
    assert.equal(r.statusCode, 400, `limit=${v} → ${r.statusCode}`);
    assert.equal(r.json().code, 'TASKPASS_BAD_REQUEST');
  }
  assert.equal((await list('limit=1&limit=2')).statusCode, 400, 'repeated field');
  assert.equal((await list('limit=10')).statusCode, 200);
  assert.equal((await list('')).statusCode, 200);

  const te = (payload: string, headers: Record<string, string> = FORM) =>
    b.app.inject({
      method: 'POST',
      url: '/oauth2/token',
      headers: { ...headers, ...b.mtls(OPS_AGENT) },
      payload,
    });
  const twice = `${form(opsExchange)}&grant_type=${encodeURIComponent(TE)}`;
  const r = await te(twice);
  assert.equal(r.statusCode, 400, r.body);
  assert.equal(r.json().error, 'invalid_request');
  const intro = await b.app.inject({
    method: 'POST',
    url: '/oauth2/introspect',
    headers: { ...FORM, ...b.mtls(VERIFIER) },
    payload: 'token=a&token=b',
  });
  assert.equal(intro.statusCode, 400);
  // The OAuth endpoints take forms (RFC 6749, 7662, 7009), not JSON.
  const json = await te(JSON.stringify(opsExchange), JSON_CT);
  assert.equal(json.statusCode, 415, json.body);
  assert.equal(json.json().code, 'TASKPASS_UNSUPPORTED_MEDIA_TYPE');
  assert.equal((await te(form(opsExchange))).statusCode, 200);
});

test('OpenAPI describes the 400, 413, 415, 429 (with Retry-After) and 503 answers', async () => {
  const b = await testBroker();
  const api = (await b.app.inject('/openapi.json')).json() as {
    paths: Record<string, Record<string, { responses: Record<string, Record<string, unknown>> }>>;
    components: { schemas: Record<string, unknown> };
  };
  const withBody = [
    ['post', '/v1/tasks'],
    ['post', '/v1/tasks/{id}/tokens'],
    ['post', '/v1/tasks/{id}/session-token'],
    ['post', '/v1/tasks/{id}/complete'],
    ['post', '/admin/v1/tasks/{id}/revoke'],
    ['post', '/oauth2/token'],
    ['post', '/oauth2/introspect'],
    ['post', '/oauth2/revoke'],
  ];
  for (const [method, path] of [...withBody, ['get', '/v1/tasks/{id}'], ['get', '/admin/v1/tasks']]) {
    const responses = api.paths[path!]![method!]!.responses;
    const codes = withBody.some(([m, p]) => m === method && p === path)
      ? ['400', '413', '415', '429', '503']
      : ['400', '429', '503'];
    for (const c of codes) {
      assert.equal(typeof responses[c]?.description, 'string', `${method} ${path} ${c}`);
      assert.notEqual(responses[c]!.description, 'Default Response', `${method} ${path} ${c}`);
    }
    assert.ok(
      (responses['429']!.headers as Record<string, unknown>)['retry-after'],
      `${path} 429 Retry-After`,
    );
  }
  // Every $ref in the document resolves.
  const text = JSON.stringify(api);
  for (const m of text.matchAll(/"\$ref":"#\/components\/schemas\/([^"]+)"/g)) {
    assert.ok(api.components.schemas[m[1]!], `$ref ${m[1]} resolves`);
  }
});

test('TICKETS agents keep working through the boundary (regression)', async () => {
  const b = await testBroker();
  const r = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: b.mtls(AGENT),
    payload: { purpose: 'answer', user_token: await b.user.sign({}) },
  });
  assert.equal(r.statusCode, 201, r.body);
  const t = await b.app.inject({
    method: 'POST',
    url: `/v1/tasks/${r.json().task_id}/tokens`,
    headers: b.mtls(AGENT),
    payload: { audience: TICKETS, tool: 'get_ticket', resource: 'tickets/1', action: 'read' },
  });
  assert.equal(t.statusCode, 200, t.body);
});

test('every OAuth refusal carries a stable code, also those raised in OAuth terms only', async () => {
  const b = await testBroker();
  const te = (fields: Record<string, string>, headers: Record<string, string> = b.mtls(OPS_AGENT)) =>
    b.app.inject({
      method: 'POST',
      url: '/oauth2/token',
      headers: { ...FORM, ...headers },
      payload: form(fields),
    });
  const cases: [Record<string, string>, string, string][] = [
    [{ grant_type: '0x10' }, 'unsupported_grant_type', 'TASKPASS_BAD_REQUEST'],
    [{ grant_type: TE, resource: OPS }, 'invalid_authorization_details', 'TASKPASS_BAD_REQUEST'],
    [
      { ...opsExchange, client_assertion: 'x', client_assertion_type: 'nope' },
      'invalid_client',
      'TASKPASS_UNAUTHENTICATED',
    ],
  ];
  for (const [fields, error, code] of cases) {
    const r = await te(fields);
    assert.equal(r.json().error, error, r.body);
    assert.equal(r.json().code, code, r.body);
  }
});
