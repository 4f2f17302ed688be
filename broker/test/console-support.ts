// What the console's tests share (broker/test/console*.test.ts): a broker with the approval policy on
// SQLite, the demo IdP on loopback, the console app, a person signing in with PKCE through it, and
// small request helpers. Importing it registers the before/after hooks of the importing test file;
// `idp`, `b` and `web` are live bindings set in before().
import assert from 'node:assert/strict';
import { after, before } from 'node:test';
import { argsSha256 } from '@taskpass/contract';
import type { FastifyInstance } from 'fastify';
import pino from 'pino';
import { type Idp, startIdp } from '../../examples/idp/idp.ts';
import { buildConsole } from '../src/console/app.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { approvalPolicy } from './app-approvals.ts';
import { AGENT, IDP, type TestBroker, TICKETS, testBroker } from './app-support.ts';

export const PUBLIC = 'http://127.0.0.1:8444';
export const consoleSection = (idp: Idp, over: Record<string, unknown> = {}) => ({
  listen: { host: '127.0.0.1', port: 8444 },
  publicUrl: PUBLIC,
  insecureCookies: true,
  oidc: {
    issuer: IDP,
    discoveryUrl: idp.discoveryUrl,
    clientId: 'taskpass-console',
    scopes: ['openid', 'profile', 'email', 'groups'],
  },
  roles: {
    admins: { issuer: IDP, claims: { groups: 'taskpass-admins' } },
    viewers: { claims: { groups: ['support-leads'] } },
  },
  sessionTtl: '1h',
  ...over,
});

export let idp: Idp;
export let b: TestBroker<SqliteStore>;
export let web: FastifyInstance;

before(async () => {
  idp = await startIdp({ issuer: IDP });
  idp.registerClient({ clientId: 'taskpass-console', redirectUris: [`${PUBLIC}/console/auth/callback`] });
  const store = new SqliteStore({ path: ':memory:' });
  await store.init();
  b = await testBroker({ console: consoleSection(idp) }, { store, policy: approvalPolicy() });
  web = buildConsole({
    config: b.config,
    store,
    services: b.services,
    hub: b.hub,
    keys: b.deps.keys,
    policies: b.deps.policies,
    logger: pino({ level: 'silent' }),
    now: () => b.clock.now,
    eventsPollMs: 50,
  });
  await web.ready();
});
after(async () => {
  await web.close();
  await b.app.close();
  await b.store.close();
  await idp.close();
});

export const cookieOf = (setCookie: string | string[] | undefined, name: string): string | undefined => {
  for (const c of [setCookie ?? []].flat()) if (c.startsWith(`${name}=`)) return c;
  return undefined;
};

/** A browser session: the console's cookie and CSRF token for a demo user. */
export interface Browser {
  cookie: string;
  csrf: string;
}

/** Signs `user` in through the whole flow: console → IdP login page → IdP → console callback. */
export async function signIn(user: string): Promise<Browser & { authorizeUrl: URL; sessionCookie: string }> {
  const start = await web.inject({ method: 'GET', url: '/console/auth/login?return=/console/tasks' });
  assert.equal(start.statusCode, 303, start.body);
  const authorizeUrl = new URL(String(start.headers.location));
  const login = cookieOf(start.headers['set-cookie'], 'taskpass-signin');
  assert.ok(login, 'the sign-in is bound to the browser by a cookie');
  const page = await fetch(authorizeUrl);
  assert.equal(page.status, 200);
  assert.match(await page.text(), /Sign in as Olivia/);
  const form = new URLSearchParams(authorizeUrl.searchParams);
  form.set('user', user);
  const chosen = await fetch(new URL('/authorize', authorizeUrl), {
    method: 'POST',
    body: form,
    redirect: 'manual',
  });
  assert.equal(chosen.status, 303);
  const back = new URL(String(chosen.headers.get('location')));
  assert.equal(back.origin + back.pathname, `${PUBLIC}/console/auth/callback`);
  const done = await web.inject({
    method: 'GET',
    url: back.pathname + back.search,
    headers: { cookie: login.split(';')[0]! },
  });
  assert.equal(done.statusCode, 200, done.body);
  assert.match(done.body, /url=\/console\/tasks/);
  const sessionCookie = cookieOf(done.headers['set-cookie'], 'taskpass-console');
  assert.ok(sessionCookie, 'a session cookie');
  const cookie = sessionCookie.split(';')[0]!;
  const me = await web.inject({ method: 'GET', url: '/console/api/session', headers: { cookie } });
  assert.equal(me.statusCode, 200, me.body);
  return { cookie, csrf: me.json().csrf_token, authorizeUrl, sessionCookie };
}

export const get = (who: Browser | undefined, url: string) =>
  web.inject({ method: 'GET', url, headers: who ? { cookie: who.cookie } : {} });
export const post = (who: Browser, url: string, payload: unknown, headers: Record<string, string> = {}) =>
  web.inject({
    method: 'POST',
    url,
    headers: { cookie: who.cookie, 'x-csrf-token': who.csrf, ...headers },
    payload: payload as Record<string, unknown>,
  });

export async function openTask(purpose = 'refund a double charge'): Promise<string> {
  const r = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: b.mtls(AGENT),
    payload: { purpose, user_token: await b.user.sign({ sub: 'alice', groups: ['support'] }) },
  });
  assert.equal(r.statusCode, 201, r.body);
  return r.json().task_id;
}
export const refund = (amount: number) => {
  const args = { ticket_id: 'T-1', amount };
  return {
    audience: TICKETS,
    tool: 'issue_refund',
    resource: 'tickets/T-1',
    action: 'write',
    args_sha256: argsSha256(args),
    arguments: args,
  };
};
export const token = (task: string, body: Record<string, unknown>) =>
  b.app.inject({ method: 'POST', url: `/v1/tasks/${task}/tokens`, headers: b.mtls(AGENT), payload: body });
