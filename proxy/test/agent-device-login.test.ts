// The OIDC device login (RFC 8628) of taskpass proxy against a small fake IdP: discovery, the device
// authorization request, the prompt (for stderr), polling through authorization_pending and
// slow_down, and the failures a person can cause (declining, letting the code expire).
import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { SignJWT } from 'jose';
import { deviceLogin, type DevicePrompt, ProxyError, userTokenSource } from '../src/index.ts';

setFlagsFromString('--expose-gc');
const gc = runInNewContext('gc') as () => void;

interface Script {
  /** Answers of the token endpoint, in order (the last one repeats). */
  answers: { status: number; body: Record<string, unknown> }[];
  interval?: number;
  expiresIn?: number;
  issuer?: string;
}

let server: Server;
let issuer: string;
let script: Script;
const seen: { path: string; form: Record<string, string> }[] = [];
const idToken = await new SignJWT({ email: 'alice@example.com' })
  .setProtectedHeader({ alg: 'HS256' })
  .setSubject('alice')
  .setIssuedAt()
  .setExpirationTime('1h')
  .sign(new TextEncoder().encode('a-test-key-of-at-least-32-bytes!!'));

before(async () => {
  server = createServer(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const form = Object.fromEntries(new URLSearchParams(Buffer.concat(chunks).toString('utf8')));
    const path = (req.url ?? '/').split('?')[0]!;
    seen.push({ path, form });
    const send = (status: number, body: unknown) =>
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    if (path === '/.well-known/openid-configuration') {
      return send(200, {
        issuer: script.issuer ?? issuer,
        device_authorization_endpoint: `${issuer}/device/code`,
        token_endpoint: `${issuer}/token`,
      });
    }
    if (path === '/device/code') {
      if (form.client_id !== 'taskpass-proxy') return send(401, { error: 'invalid_client' });
      return send(200, {
        device_code: 'dev-code-1',
        user_code: 'WDJB-MJHT',
        verification_uri: `${issuer}/device`,
        verification_uri_complete: `${issuer}/device?user_code=WDJB-MJHT`,
        expires_in: script.expiresIn ?? 600,
        interval: script.interval ?? 0,
      });
    }
    if (path === '/token') {
      const next = script.answers.length > 1 ? script.answers.shift()! : script.answers[0]!;
      return send(next.status, next.body);
    }
    send(404, { error: 'not_found' });
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  issuer = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
});
after(() => {
  server.closeAllConnections();
  server.close();
});

const pending = { status: 400, body: { error: 'authorization_pending' } };
const login = (prompts: DevicePrompt[] = [], extra: Partial<Parameters<typeof deviceLogin>[0]> = {}) =>
  deviceLogin({
    issuer,
    clientId: 'taskpass-proxy',
    scope: 'openid email',
    token: 'id_token',
    prompt: (p) => prompts.push(p),
    ...extra,
  });

test('the person is prompted with the URL and code; the proxy polls until the login completes', async () => {
  script = {
    answers: [
      pending,
      pending,
      { status: 200, body: { access_token: 'at', id_token: idToken, expires_in: 3600 } },
    ],
  };
  seen.length = 0;
  const prompts: DevicePrompt[] = [];
  const r = await login(prompts);
  assert.equal(r.token, idToken);
  assert.ok(
    r.expiresAt && Math.abs(r.expiresAt.getTime() - (Date.now() + 3600_000)) < 5000,
    'exp of the ID token',
  );
  assert.deepEqual(prompts, [
    {
      verificationUri: `${issuer}/device`,
      verificationUriComplete: `${issuer}/device?user_code=WDJB-MJHT`,
      userCode: 'WDJB-MJHT',
      expiresInSec: 600,
    },
  ]);
  assert.deepEqual(seen.find((s) => s.path === '/device/code')?.form, {
    client_id: 'taskpass-proxy',
    scope: 'openid email',
  });
  const polls = seen.filter((s) => s.path === '/token');
  assert.equal(polls.length, 3);
  assert.deepEqual(polls[0]!.form, {
    grant_type: 'urn:ietf:params:oauth:grant-type:device_code',
    device_code: 'dev-code-1',
    client_id: 'taskpass-proxy',
  });
});

test('token: access_token returns the access token instead', async () => {
  script = { answers: [{ status: 200, body: { access_token: 'opaque-at', expires_in: 60 } }] };
  const r = await login([], { token: 'access_token' });
  assert.equal(r.token, 'opaque-at');
  assert.ok(r.expiresAt && r.expiresAt.getTime() > Date.now());
});

test('slow_down makes the proxy poll less often (RFC 8628 §3.5: +5 s)', async () => {
  script = {
    answers: [
      { status: 400, body: { error: 'slow_down' } },
      { status: 200, body: { id_token: idToken } },
    ],
  };
  const t0 = Date.now();
  await login();
  assert.ok(Date.now() - t0 >= 4900, 'waited the added 5 s before polling again');
});

const failsWith = (re: RegExp) => (e: unknown) => {
  assert.ok(e instanceof ProxyError);
  assert.equal(e.code, 'TASKPASS_PROXY_DEVICE_LOGIN_FAILED');
  assert.match(e.message, re);
  return true;
};

test('a declined login, an expired code or an answer without the token fail with TASKPASS_PROXY_DEVICE_LOGIN_FAILED', async () => {
  script = { answers: [pending, { status: 400, body: { error: 'access_denied' } }] };
  await assert.rejects(login(), failsWith(/the person declined the login/));
  script = { answers: [{ status: 400, body: { error: 'expired_token' } }] };
  await assert.rejects(login(), failsWith(/the device code expired/));
  // The expiry holds even while the garbage collector runs (a timeout signal combined with
  // AbortSignal.any() can be collected on Node 20 and never fire).
  script = { answers: [pending], expiresIn: 1 };
  const collecting = setInterval(gc, 5);
  try {
    await assert.rejects(login(), failsWith(/not completed before the device code expired/));
  } finally {
    clearInterval(collecting);
  }
  script = { answers: [{ status: 200, body: { access_token: 'at' } }] };
  await assert.rejects(login(), failsWith(/the token answer holds no id_token/));
  script = { answers: [{ status: 400, body: { error: 'invalid_grant', error_description: 'bad code' } }] };
  await assert.rejects(login(), failsWith(/the token endpoint refused: invalid_grant — bad code/));
});

test('discovery must name the configured issuer, and the client must be accepted', async () => {
  script = { answers: [pending], issuer: 'https://someone-else.example' };
  await assert.rejects(login(), failsWith(/names issuer https:\/\/someone-else\.example/));
  script = { answers: [pending] };
  await assert.rejects(
    login([], { clientId: 'other' }),
    failsWith(/device authorization refused \(HTTP 401: invalid_client\)/),
  );
  await assert.rejects(login([], { issuer: 'http://127.0.0.1:1' }), failsWith(/could not be reached/));
});

test('userTokenSource: the prompt reads well on stderr, and a valid token is reused without a new login', async () => {
  script = { answers: [{ status: 200, body: { id_token: idToken } }] };
  const lines: string[] = [];
  const source = userTokenSource(
    { oidc: { issuer, clientId: 'taskpass-proxy', scope: 'openid', token: 'id_token' } },
    {},
    (s) => lines.push(s),
  );
  assert.equal(await source(), idToken);
  assert.equal(await source(), idToken);
  assert.equal(lines.length, 1, 'one login');
  assert.equal(
    lines[0],
    [
      'Taskpass: sign in to let this agent act for you.',
      `  Open ${issuer}/device and enter the code WDJB-MJHT`,
      `  (or open ${issuer}/device?user_code=WDJB-MJHT)`,
      '  The code expires in 10 minutes.',
    ].join('\n'),
  );
});

test('userTokenSource: token file re-read each time, env variable, autonomous', async () => {
  const file = join(mkdtempSync(join(tmpdir(), 'taskpass-proxy-ut-')), 'token');
  writeFileSync(file, 'first\n');
  const fromFile = userTokenSource({ tokenFile: file }, {}, () => {});
  assert.equal(await fromFile(), 'first');
  writeFileSync(file, 'refreshed\n');
  assert.equal(await fromFile(), 'refreshed');
  writeFileSync(file, '  \n');
  await assert.rejects(fromFile(), (e: ProxyError) => e.code === 'TASKPASS_PROXY_USER_TOKEN_UNAVAILABLE');
  assert.equal(await userTokenSource({ tokenEnv: 'T' }, { T: 'from-env' }, () => {})(), 'from-env');
  await assert.rejects(
    userTokenSource({ tokenEnv: 'T' }, {}, () => {})(),
    (e: ProxyError) => e.code === 'TASKPASS_PROXY_USER_TOKEN_UNAVAILABLE' && /T is not set/.test(e.message),
  );
  assert.equal(await userTokenSource({ autonomous: true }, {}, () => {})(), undefined);
});
