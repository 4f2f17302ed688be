import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { exportJWK, generateKeyPair, SignJWT } from 'jose';
import pino from 'pino';
import { createAuditLog } from '../src/audit.ts';
import { parseConfig } from '../src/config.ts';
import { createBrokerLogger } from '../src/log.ts';
import { createUserTokenVerifier } from '../src/user-tokens.ts';
import { testBroker } from './app-support.ts';

test('audit records whitelisted fields only, never a token', () => {
  const lines: string[] = [];
  const log = pino({ level: 'info' }, { write: (s: string) => lines.push(s) });
  const audit = createAuditLog(log);
  audit.record({
    event: 'token.issued',
    agent: 'spiffe://td/a',
    task: 't',
    jti: 'j',
    template: 'x',
    ...{ token: 'eyJsecret' },
  });
  const rec = JSON.parse(lines[0]!);
  assert.equal(rec.audit, true);
  assert.equal(rec.event, 'token.issued');
  assert.equal(rec.jti, 'j');
  assert.ok(!lines[0]!.includes('eyJsecret'));
});

test('user tokens via OIDC discovery; pinned algorithms and audience', async () => {
  const { privateKey, publicKey } = await generateKeyPair('RS256');
  const jwk = { ...(await exportJWK(publicKey)), kid: 'r1', alg: 'RS256' };
  const cfg = parseConfig({
    issuer: 'https://b.test',
    trustDomain: 'td',
    users: {
      trustedIssuers: [
        { issuer: 'https://idp.test', audience: 'tp', discovery: true, algorithms: ['RS256'] },
      ],
    },
  });
  const fetched: string[] = [];
  const discoveryFetch = async (url: string) => {
    fetched.push(url);
    return {
      ok: true,
      status: 200,
      json: async () => ({ issuer: 'https://idp.test', jwks_uri: 'https://idp.test/jwks' }),
    };
  };
  const v = createUserTokenVerifier(cfg.users.trustedIssuers, { fetch: discoveryFetch });
  const tok = await new SignJWT({ email: 'a@x' })
    .setProtectedHeader({ alg: 'RS256', kid: 'r1' })
    .setIssuer('https://idp.test')
    .setAudience('tp')
    .setSubject('alice')
    .setExpirationTime('5m')
    .sign(privateKey);
  // The remote JWKS fetch goes to the network; serve it from a stub global fetch.
  const orig = globalThis.fetch;
  globalThis.fetch = (async () =>
    new Response(JSON.stringify({ keys: [jwk] }), {
      headers: { 'content-type': 'application/json' },
    })) as typeof fetch;
  try {
    const u = await v.verify(tok);
    assert.equal(u.sub, 'alice');
    assert.equal(u.iss, 'https://idp.test');
    assert.equal(u.claims.email, 'a@x');
    assert.deepEqual(fetched, ['https://idp.test/.well-known/openid-configuration']);
    const noExp = await new SignJWT({})
      .setProtectedHeader({ alg: 'RS256', kid: 'r1' })
      .setIssuer('https://idp.test')
      .setAudience('tp')
      .setSubject('alice')
      .sign(privateKey);
    await assert.rejects(v.verify(noExp), { code: 'TASKPASS_USER_TOKEN_INVALID' });
    const hs = await new SignJWT({})
      .setProtectedHeader({ alg: 'HS256' })
      .setIssuer('https://idp.test')
      .setAudience('tp')
      .setSubject('alice')
      .setExpirationTime('5m')
      .sign(new Uint8Array(32));
    await assert.rejects(v.verify(hs), { code: 'TASKPASS_USER_TOKEN_INVALID' });
  } finally {
    globalThis.fetch = orig;
  }
});

test('audit file: appended, and reopened under its path after logrotate moved it (no record lost)', async () => {
  const { mkdtempSync, readFileSync, renameSync, rmSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-audit-'));
  try {
    const path = join(dir, 'audit', 'audit.log');
    const audit = createAuditLog(pino({ level: 'silent' }), path);
    const events = (f: string): string[] => {
      let text = '';
      try {
        text = readFileSync(f, 'utf8');
      } catch {}
      return text
        .split('\n')
        .filter(Boolean)
        .map((l) => `${JSON.parse(l).event} ${JSON.parse(l).task}`);
    };
    // The file is written asynchronously: wait (bounded) until the lines are there.
    const until = async (f: string, n: number): Promise<string[]> => {
      for (let i = 0; i < 200 && events(f).length < n; i++) await new Promise((r) => setTimeout(r, 10));
      return events(f);
    };
    audit.record({ event: 'task.opened', task: 't1' });
    await until(path, 1);
    renameSync(path, `${path}.1`); // what logrotate does
    audit.record({ event: 'task.completed', task: 't1' }); // still goes to the moved file
    assert.deepEqual(await until(`${path}.1`, 2), ['task.opened t1', 'task.completed t1']);
    assert.ok(audit.reopen, 'a file audit log can be reopened');
    audit.reopen();
    audit.record({ event: 'task.opened', task: 't2' });
    assert.deepEqual(await until(path, 1), ['task.opened t2']);
    audit.close?.();
    assert.deepEqual(events(`${path}.1`), ['task.opened t1', 'task.completed t1']);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('one log line per request, written when it is answered, with method, URL, status and time', async () => {
  const lines: Record<string, unknown>[] = [];
  const logger = pino({ level: 'info' }, { write: (s: string) => lines.push(JSON.parse(s)) });
  const b = await testBroker({}, { logger });
  try {
    await b.app.inject({ method: 'GET', url: '/healthz' });
    await b.app.inject({ method: 'POST', url: '/v1/tasks', payload: {} });
    const requests = lines.filter((l) => String(l.msg).startsWith('request') || l.msg === 'incoming request');
    assert.deepEqual(
      requests.map((l) => [
        l.msg,
        (l.req as { method?: string }).method,
        (l.req as { url?: string }).url,
        (l.res as { statusCode?: number }).statusCode,
        typeof l.responseTime,
      ]),
      [
        ['request completed', 'GET', '/healthz', 200, 'number'],
        ['request completed', 'POST', '/v1/tasks', 401, 'number'],
      ],
    );
    assert.ok(requests.every((l) => typeof l.reqId === 'string'));
  } finally {
    await b.app.close();
  }
});

test('the broker log reaches its file within 100 ms of a line, without waiting for 4 KiB', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-log-'));
  try {
    const path = join(dir, 'broker.log');
    const logger = createBrokerLogger({ level: 'info' }, path);
    logger.info({ n: 1 }, 'first');
    await new Promise((r) => setTimeout(r, 400));
    const written = () => readFileSync(path, 'utf8').trim().split('\n').filter(Boolean);
    assert.deepEqual(
      written().map((l) => JSON.parse(l).msg),
      ['first'],
    );
    for (let i = 0; i < 3; i++) logger.info({ i }, 'burst');
    await new Promise((r) => setTimeout(r, 400));
    assert.equal(written().length, 4);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});
