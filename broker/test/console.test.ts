// The console's foundation (docs/console.md): OIDC sign-in with PKCE against the demo IdP on
// loopback, session cookies, CSRF, security headers, roles, and the two actions (revoke a task,
// decide an approval) going through the broker's own services.
import assert from 'node:assert/strict';
import { request } from 'node:http';
import { test } from 'node:test';
import pino from 'pino';
import { buildConsole, CONSOLE_CSP } from '../src/console/app.ts';
import type { Revocation } from '@taskpass/contract';
import { AGENT, IDP, TICKETS } from './app-support.ts';

import {
  b,
  consoleSection,
  cookieOf,
  get,
  idp,
  openTask,
  post,
  PUBLIC,
  refund,
  signIn,
  token,
  web,
} from './console-support.ts';

test('sign-in: authorization code with PKCE S256, state and nonce; session cookie HttpOnly SameSite=Strict; roles from claims', async () => {
  const olivia = await signIn('olivia');
  const q = olivia.authorizeUrl.searchParams;
  assert.equal(q.get('response_type'), 'code');
  assert.equal(q.get('code_challenge_method'), 'S256');
  assert.match(q.get('code_challenge') ?? '', /^[A-Za-z0-9_-]{43}$/);
  assert.match(q.get('state') ?? '', /^[A-Za-z0-9_-]{43}$/);
  assert.match(q.get('nonce') ?? '', /^[A-Za-z0-9_-]{43}$/);
  assert.equal(q.get('redirect_uri'), `${PUBLIC}/console/auth/callback`);
  const flags = olivia.sessionCookie.split(';').map((s) => s.trim());
  assert.ok(flags.includes('HttpOnly'));
  assert.ok(flags.includes('SameSite=Strict'));
  assert.ok(flags.includes('Path=/'));
  assert.ok(flags.includes('Max-Age=3600'));
  // The opaque id is 256 random bits; the store keeps only its hash.
  const id = olivia.cookie.split('=')[1]!;
  assert.match(id, /^[A-Za-z0-9_-]{43}$/);
  const me = (await get(olivia, '/console/api/session')).json();
  assert.equal(me.sub, 'olivia');
  assert.equal(me.name, 'Olivia');
  assert.deepEqual(me.roles, { admin: true, viewer: true });
  const bob = (await get(await signIn('bob'), '/console/api/session')).json();
  assert.deepEqual(bob.roles, { admin: false, viewer: true });
  const alice = (await get(await signIn('alice'), '/console/api/session')).json();
  assert.deepEqual(alice.roles, { admin: false, viewer: false });

  // Sign out: the session is gone from the store.
  const out = await post(olivia, '/console/auth/logout', {});
  assert.equal(out.statusCode, 200);
  assert.equal((await get(olivia, '/console/api/session')).statusCode, 401);
});

test('sign-in refuses a callback from another browser, a reused state, and an unknown code', async () => {
  const start = await web.inject({ method: 'GET', url: '/console/auth/login' });
  const authorizeUrl = new URL(String(start.headers.location));
  const login = cookieOf(start.headers['set-cookie'], 'taskpass-signin')!.split(';')[0]!;
  const form = new URLSearchParams(authorizeUrl.searchParams);
  form.set('user', 'olivia');
  const chosen = await fetch(new URL('/authorize', authorizeUrl), {
    method: 'POST',
    body: form,
    redirect: 'manual',
  });
  const back = new URL(String(chosen.headers.get('location')));
  const cb = (cookie?: string, search = back.search) =>
    web.inject({ method: 'GET', url: back.pathname + search, headers: cookie ? { cookie } : {} });
  // Login CSRF: the attacker's code delivered to a victim's browser, which never started it.
  const other = await cb('taskpass-signin=AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA');
  assert.equal(other.statusCode, 401);
  assert.equal(other.json().code, 'TASKPASS_CONSOLE_SIGNIN_FAILED');
  assert.equal(cookieOf(other.headers['set-cookie'], 'taskpass-console'), undefined);
  const noCookie = await cb();
  assert.equal(noCookie.statusCode, 401);
  // A forged code with the right state: the IdP refuses it; the state is then used up.
  const forged = new URLSearchParams(back.search);
  forged.set('code', 'forged-code-forged-code');
  const bad = await cb(login, `?${forged}`);
  assert.equal(bad.statusCode, 401);
  assert.equal(bad.json().code, 'TASKPASS_CONSOLE_SIGNIN_FAILED');
  const replay = await cb(login);
  assert.equal(replay.statusCode, 401, 'a state is used once');
  // `return` may only point into the console.
  const open = await web.inject({ method: 'GET', url: '/console/auth/login?return=https://evil.example/' });
  assert.equal(open.statusCode, 400);
});

test('secure cookies: __Host- names, Secure; plain-http cookies only for loopback tests', async () => {
  const { parseConfig } = await import('../src/config.ts');
  const base = { issuer: 'https://broker.test', trustDomain: 'taskpass.local' };
  const secure = parseConfig({
    ...base,
    console: consoleSection(idp, { insecureCookies: false, publicUrl: 'https://console.test' }),
  });
  const s = buildConsole({
    config: secure,
    store: b.store,
    services: b.services,
    hub: b.hub,
    keys: b.deps.keys,
    policies: b.deps.policies,
    logger: pino({ level: 'silent' }),
  });
  try {
    const r = await s.inject({ method: 'GET', url: '/console/auth/login' });
    const c = cookieOf(r.headers['set-cookie'], '__Host-taskpass-signin');
    assert.ok(c, String(r.headers['set-cookie']));
    assert.match(c, /; Secure; SameSite=Lax$/);
    assert.match(String(r.headers['strict-transport-security']), /max-age=/);
  } finally {
    await s.close();
  }
  assert.throws(
    () =>
      parseConfig({
        ...base,
        console: consoleSection(idp, { listen: { host: '0.0.0.0', port: 8444 } }),
      }),
    /insecureCookies is for plain-http loopback tests only/,
  );
  assert.throws(
    () => parseConfig({ ...base, console: consoleSection(idp, { insecureCookies: false }) }),
    /must be https/,
  );
  assert.throws(
    () =>
      parseConfig({
        ...base,
        users: { trustedIssuers: [{ issuer: IDP, audience: 'taskpass-console', discovery: true }] },
        console: consoleSection(idp),
      }),
    /client id of its own/,
  );
});

test('every answer carries the CSP and friends; JSON stays JSON (no markup) even for hostile strings', async () => {
  const task = await openTask('<script>alert(1)</script>\u202Egnp.exe');
  const bob = await signIn('bob');
  for (const r of [
    await get(bob, `/console/api/tasks/${task}`),
    await get(undefined, '/console/api/now'),
    await get(bob, '/console/api/nope'),
  ]) {
    assert.equal(r.headers['content-security-policy'], CONSOLE_CSP);
    assert.match(CONSOLE_CSP, /frame-ancestors 'none'/);
    assert.equal(r.headers['x-content-type-options'], 'nosniff');
    assert.equal(r.headers['referrer-policy'], 'same-origin');
    assert.equal(r.headers['cache-control'], 'no-store');
    assert.match(String(r.headers['content-type']), /^application\/json/);
    assert.doesNotMatch(r.body, /[<>]/);
  }
  const view = await get(bob, `/console/api/tasks/${task}`);
  assert.equal(view.json().task.purpose, '<script>alert(1)</script>\u202Egnp.exe');
  await b.services.recorder.flush();
  const again = await get(bob, `/console/api/tasks/${task}`);
  assert.equal(again.json().timeline[0]?.event, 'task.opened');
});

test('roles: no session 401; a viewer is refused admin actions; a person with no role sees only their (empty) approvals', async () => {
  const none = await get(undefined, '/console/api/tasks');
  assert.equal(none.statusCode, 401);
  assert.equal(none.json().code, 'TASKPASS_CONSOLE_UNAUTHENTICATED');
  const task = await openTask();
  const bob = await signIn('bob');
  assert.equal((await get(bob, '/console/api/now')).statusCode, 200);
  assert.equal((await get(bob, '/console/api/tasks')).statusCode, 200);
  const refused = await post(bob, `/console/api/tasks/${task}/revoke`, {});
  assert.equal(refused.statusCode, 403);
  assert.equal(refused.json().code, 'TASKPASS_CONSOLE_FORBIDDEN');
  assert.equal((await b.store.getTask(task))?.status, 'open');
  const alice = await signIn('alice');
  for (const url of [
    '/console/api/now',
    '/console/api/tasks',
    `/console/api/tasks/${task}`,
    '/console/api/templates',
  ]) {
    const r = await get(alice, url);
    assert.equal(r.statusCode, 403, url);
    assert.equal(r.json().code, 'TASKPASS_CONSOLE_FORBIDDEN');
  }
  const mine = await get(alice, '/console/api/approvals');
  assert.equal(mine.statusCode, 200);
  assert.deepEqual(mine.json(), { approvals: [] });
});

test('CSRF: a state change without the session token, with a wrong one, or from another origin changes nothing', async () => {
  const task = await openTask();
  const olivia = await signIn('olivia');
  const url = `/console/api/tasks/${task}/revoke`;
  for (const headers of [
    { 'x-csrf-token': '' },
    { 'x-csrf-token': 'A'.repeat(43) },
    { origin: 'https://evil.example' },
  ]) {
    const r = await web.inject({
      method: 'POST',
      url,
      headers: {
        cookie: olivia.cookie,
        ...(headers.origin ? { 'x-csrf-token': olivia.csrf } : {}),
        ...headers,
      },
      payload: {},
    });
    assert.equal(r.statusCode, 403, JSON.stringify(headers));
    assert.equal(r.json().code, 'TASKPASS_CONSOLE_CSRF');
  }
  const noHeader = await web.inject({ method: 'POST', url, headers: { cookie: olivia.cookie }, payload: {} });
  assert.equal(noHeader.json().code, 'TASKPASS_CONSOLE_CSRF');
  assert.equal((await b.store.getTask(task))?.status, 'open');
  // Another session's token is not this session's.
  const bob = await signIn('bob');
  const crossed = await post({ cookie: olivia.cookie, csrf: bob.csrf }, url, {});
  assert.equal(crossed.json().code, 'TASKPASS_CONSOLE_CSRF');
  assert.equal((await b.store.getTask(task))?.status, 'open');
});

test('revoke from the console: durable, on the feed, audited with the admin, refused to the agent afterwards', async () => {
  const task = await openTask();
  const t1 = await token(task, {
    audience: TICKETS,
    tool: 'close_ticket',
    resource: 'tickets/T-1',
    action: 'write',
    arguments: { a: 1 },
  });
  assert.equal(t1.statusCode, 200, t1.body);
  const fed: Revocation[] = [];
  const off = b.hub.subscribe((r) => fed.push(r));
  const olivia = await signIn('olivia');
  const stateOf = async () =>
    ((await get(olivia, `/console/api/tasks/${task}`)).json().issued as { state: string }[]).map(
      (i) => i.state,
    );
  assert.deepEqual(await stateOf(), ['live'], 'an open task’s unexpired token is live');
  const r = await post(olivia, `/console/api/tasks/${task}/revoke`, { reason: 'looked wrong' });
  off();
  assert.equal(r.statusCode, 200, r.body);
  assert.equal(r.json().task.status, 'revoked');
  assert.deepEqual(
    fed.map((x) => [x.kind, x.id]),
    [['task', task]],
  );
  // Durable before the answer: the record is in the store already (no flush here).
  const tl = (await get(olivia, `/console/api/tasks/${task}`)).json().timeline as Record<string, unknown>[];
  const last = tl.at(-1)!;
  assert.equal(last.event, 'task.revoked');
  assert.equal(last.by, `console:olivia at ${IDP}`);
  assert.equal(last.reason, 'looked wrong');
  assert.deepEqual(
    tl.map((x) => x.event),
    ['task.opened', 'token.issued', 'task.revoked'],
  );
  assert.deepEqual(await stateOf(), ['revoked'], 'a closed task’s tokens are revoked');
  const after = await token(task, {
    audience: TICKETS,
    tool: 'close_ticket',
    resource: 'tickets/T-1',
    action: 'write',
    arguments: { a: 2 },
  });
  assert.equal(after.json().code, 'TASKPASS_TASK_CLOSED');
  // Token explain sees the revocation.
  const ex = await post(olivia, '/console/api/tokens/explain', { token: t1.json().access_token });
  assert.equal(ex.statusCode, 200, ex.body);
  assert.equal(ex.json().signature.valid, true);
  assert.deepEqual(ex.json().revoked, { token: false, task: true });
  assert.ok(ex.json().explanation.some((l: string) => /close_ticket on resource tickets\/T-1/.test(l)));
});

test('approve from the console: the session identity is the approver; the waiting call goes through', async () => {
  const task = await openTask();
  const asked = await token(task, refund(250));
  assert.equal(asked.json().code, 'TASKPASS_APPROVAL_REQUIRED');
  const id = asked.json().approval_id as string;
  // Alice (the delegating user, not a lead) may not decide it and does not see it.
  const alice = await signIn('alice');
  assert.deepEqual((await get(alice, '/console/api/approvals')).json(), { approvals: [] });
  const no = await post(alice, `/console/api/approvals/${id}/decision`, { decision: 'approve' });
  assert.equal(no.statusCode, 403);
  assert.equal(no.json().code, 'TASKPASS_APPROVAL_SEPARATION_OF_DUTIES');
  const bob = await signIn('bob');
  const queue = (await get(bob, '/console/api/approvals')).json().approvals as {
    id: string;
    request: { arguments?: unknown };
  }[];
  const mine = queue.find((a) => a.id === id);
  assert.ok(mine, 'bob sees the pending refund');
  assert.deepEqual(mine.request.arguments, { ticket_id: 'T-1', amount: 250 });
  const withoutCsrf = await web.inject({
    method: 'POST',
    url: `/console/api/approvals/${id}/decision`,
    headers: { cookie: bob.cookie },
    payload: { decision: 'approve' },
  });
  assert.equal(withoutCsrf.json().code, 'TASKPASS_CONSOLE_CSRF');
  const ok = await post(bob, `/console/api/approvals/${id}/decision`, {
    decision: 'approve',
    comment: 'fine',
  });
  assert.equal(ok.statusCode, 200, ok.body);
  assert.equal(ok.json().status, 'approved');
  assert.deepEqual(ok.json().decision.approver, { iss: IDP, sub: 'bob' });
  const minted = await token(task, refund(250));
  assert.equal(minted.statusCode, 200, minted.body);
  const claims = JSON.parse(Buffer.from(minted.json().access_token.split('.')[1], 'base64url').toString());
  assert.equal(claims.authorization_details[0].approval.approver.sub, 'bob');
  await b.services.recorder.flush();
  const timeline = (await get(bob, `/console/api/tasks/${task}`)).json().timeline as Record<
    string,
    unknown
  >[];
  const issued = timeline.find((x) => x.event === 'token.issued');
  assert.equal(issued?.approval, id);
  assert.equal(issued?.approver, `bob at ${IDP}`);
  assert.equal(issued?.jti, claims.jti);
  assert.equal(issued?.template, 'refunds');
  const events = timeline.map((x) => x.event);
  assert.deepEqual(events, [
    'task.opened',
    'approval.requested',
    'approval.refused', // Alice's attempt, refused (separation of duties)
    'approval.decided',
    'token.issued',
    'approval.used',
  ]);
});

test('now, decisions, templates, ceiling and what-if', async () => {
  const bob = await signIn('bob');
  const task = await openTask();
  await token(task, {
    audience: TICKETS,
    tool: 'delete_everything',
    resource: 'tickets/T-1',
    action: 'write',
  });
  await b.services.recorder.flush();
  const metrics = (await b.app.inject({ method: 'GET', url: '/metrics' })).body;
  assert.match(metrics, /^taskpass_decision_records_queued 0$/m);
  const now = (await get(bob, '/console/api/now')).json();
  assert.ok(now.open_tasks >= 1);
  assert.ok(Object.keys(now.denials_by_code).length >= 1, JSON.stringify(now));
  assert.ok(Array.isArray(now.feed.subscribers));
  const thisMinute = now.per_minute.at(-1);
  assert.equal(thisMinute.at, b.clock.now - (b.clock.now % 60_000));
  assert.ok(thisMinute.counts.TASKPASS_DENIED_TOOL >= 1, JSON.stringify(now.per_minute));
  const denied = (await get(bob, '/console/api/decisions?outcome=denied&limit=5')).json();
  assert.ok(denied.records.length >= 1);
  assert.ok(
    denied.records.every((r: { event: string }) => r.event === 'token.denied' || r.event === 'task.denied'),
  );
  assert.equal((await get(bob, '/console/api/decisions?outcome=maybe')).statusCode, 400);
  const t = (await get(bob, '/console/api/templates')).json();
  assert.deepEqual(
    t.templates.map((x: { id: string }) => x.id),
    ['refunds'],
  );
  const user = { iss: IDP, sub: 'alice', claims: { groups: ['support'] } };
  const ceiling = await post(bob, '/console/api/templates/ceiling', { agent: AGENT, user });
  assert.equal(ceiling.statusCode, 200, ceiling.body);
  assert.equal(ceiling.json().admits.ok, true);
  const whatIf = (amount: number) =>
    post(bob, '/console/api/templates/what-if', {
      agent: AGENT,
      user,
      audience: TICKETS,
      tool: 'issue_refund',
      action: 'write',
      resource: 'tickets/T-1',
      arguments: { ticket_id: 'T-1', amount },
    });
  assert.deepEqual((await whatIf(250)).json(), {
    decision: 'approval_required',
    template: 'refunds',
    reason: '',
  });
  assert.equal((await whatIf(50)).json().decision, 'allow');
  const strict = await post(bob, '/console/api/templates/what-if', { agent: AGENT, extra: 1 });
  assert.equal(strict.statusCode, 400);
});

test('live events: new decision records and approval changes reach an open stream', async () => {
  const bob = await signIn('bob');
  const url = await web.listen({ host: '127.0.0.1', port: 0 });
  const got: string[] = [];
  const req = request(`${url}/console/api/events`, { headers: { cookie: bob.cookie } });
  const opened = new Promise<void>((resolve, reject) => {
    req.on('response', (res) => {
      assert.equal(res.headers['content-type'], 'text/event-stream; charset=utf-8');
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        got.push(c);
        if (c.includes('event: ready')) resolve();
      });
    });
    req.on('error', reject);
  });
  req.end();
  await opened;
  const task = await openTask();
  const deadline = Date.now() + 5000;
  while (!got.join('').includes(task) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
  req.destroy();
  const text = got.join('');
  assert.match(text, /event: decision\ndata: \{[^\n]*"event":"task.opened"/);
  assert.ok(text.includes(task));
});

test('a session ends at sessionTtl; its cookie then opens nothing', async () => {
  const bob = await signIn('bob');
  assert.equal((await get(bob, '/console/api/now')).statusCode, 200);
  b.clock.now += 3601_000;
  try {
    const r = await get(bob, '/console/api/now');
    assert.equal(r.statusCode, 401);
    assert.equal(r.json().code, 'TASKPASS_CONSOLE_UNAUTHENTICATED');
  } finally {
    b.clock.now -= 3601_000;
  }
});

test('now: each verifier on the revocation feed, with its SPIFFE ID and lag', async () => {
  const url = await b.app.listen({ host: '127.0.0.1', port: 0 });
  const VERIFIER_ID = 'spiffe://taskpass.local/mcp/tickets';
  const req = request(`${url}/v1/revocations/stream`, { headers: { 'x-test-peer': VERIFIER_ID } });
  const snapshot = new Promise<void>((resolve, reject) => {
    req.on('response', (res) => {
      res.setEncoding('utf8');
      res.on('data', (c: string) => {
        if (c.includes('snapshot')) resolve();
      });
    });
    req.on('error', reject);
  });
  req.end();
  try {
    await snapshot;
    const bob = await signIn('bob');
    const feed = (await get(bob, '/console/api/now')).json().feed;
    const mine = feed.subscribers.find((s: { subscriber: string }) => s.subscriber === VERIFIER_ID);
    assert.ok(mine, JSON.stringify(feed));
    assert.equal(mine.seq, feed.seq);
    assert.equal(mine.lag, 0);
  } finally {
    req.destroy();
  }
});

test('rate limits: sign-in per client IP, the API per person (the broker rate limiter)', async () => {
  const { parseConfig } = await import('../src/config.ts');
  const config = parseConfig({
    issuer: 'https://broker.test',
    trustDomain: 'taskpass.local',
    rateLimit: { perIpPerMinute: 2, perAdminPerMinute: 1 },
    console: consoleSection(idp),
  });
  const c = buildConsole({
    config,
    store: b.store,
    services: b.services,
    hub: b.hub,
    keys: b.deps.keys,
    policies: b.deps.policies,
    logger: pino({ level: 'silent' }),
  });
  try {
    const codes: number[] = [];
    for (let i = 0; i < 3; i++)
      codes.push((await c.inject({ method: 'GET', url: '/console/auth/login' })).statusCode);
    assert.deepEqual(codes, [303, 303, 429]);
    const olivia = await signIn('olivia');
    const api = () =>
      c.inject({ method: 'GET', url: '/console/api/session', headers: { cookie: olivia.cookie } });
    assert.equal((await api()).statusCode, 200, 'the session is in the shared store');
    const limited = await api();
    assert.equal(limited.statusCode, 429);
    assert.equal(limited.json().code, 'TASKPASS_RATE_LIMITED');
    assert.ok(Number(limited.headers['retry-after']) > 0);
  } finally {
    await c.close();
  }
});
