import assert from 'node:assert/strict';
import { test } from 'node:test';
import { runCli } from '../src/cli.ts';
import { ADMIN, AGENT, svid, TICKETS, testBroker } from './app-support.ts';

function io(env: NodeJS.ProcessEnv = {}) {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (s: string) => out.push(s), err: (s: string) => err.push(s), env }, out, err };
}

test('usage errors exit 2; token decode/explain work offline', async () => {
  const u = io();
  assert.equal(await runCli(['frobnicate'], u.io), 2);
  assert.match(u.err.join('\n'), /unknown command/);
  assert.equal(await runCli([], io().io), 2);
  assert.equal(await runCli(['token', 'decode', 'not-a-jwt'], io().io), 1);

  const b = await testBroker();
  const task = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: b.mtls(AGENT),
    payload: { purpose: 'p', user_token: await b.user.sign({}) },
  });
  const tok = (
    await b.app.inject({
      method: 'POST',
      url: `/v1/tasks/${task.json().task_id}/tokens`,
      headers: b.mtls(AGENT),
      payload: { audience: TICKETS, tool: 'get_ticket', resource: 'tickets/9', action: 'read' },
    })
  ).json().access_token as string;
  const d = io();
  assert.equal(await runCli(['token', 'decode', tok], d.io), 0);
  assert.equal(JSON.parse(d.out[0]!).claims.tpl, 'tickets-support');
  const e = io();
  assert.equal(await runCli(['token', 'explain', tok], e.io), 0);
  const text = e.out.join('\n');
  assert.match(text, /template +tickets-support/);
  assert.match(text, /read call of tool get_ticket on resource tickets\/9/);
  assert.match(text, /bound to +client certificate/);

  // against a listening tls:none broker: verify + introspect, list and revoke as admin
  const url = await b.app.listen({ host: '127.0.0.1', port: 0 });
  try {
    const v = io({ TASKPASS_JWT_SVID: svid(AGENT) });
    assert.equal(await runCli(['token', 'explain', tok, '--broker', url], v.io), 0, v.out.join('\n'));
    assert.match(v.out.join('\n'), /signature +valid/);
    assert.match(v.out.join('\n'), /broker +active/);
    const denied = io({ TASKPASS_JWT_SVID: svid(AGENT) });
    assert.equal(await runCli(['tasks', 'list', '--broker', url], denied.io), 1);
    assert.match(denied.err.join('\n'), /TASKPASS_FORBIDDEN_ADMIN/);
    const l = io({ TASKPASS_JWT_SVID: svid(ADMIN), TASKPASS_BROKER_URL: url });
    assert.equal(await runCli(['tasks', 'list'], l.io), 0);
    assert.match(l.out.join('\n'), new RegExp(task.json().task_id));
    const r = io({ TASKPASS_JWT_SVID: svid(ADMIN) });
    assert.equal(
      await runCli(['tasks', 'revoke', task.json().task_id, '--broker', url, '--reason', 'test'], r.io),
      0,
    );
    assert.match(r.out.join('\n'), /revoked tsk_/);
    const after = io({ TASKPASS_JWT_SVID: svid(AGENT) });
    assert.equal(await runCli(['token', 'explain', tok, '--broker', url], after.io), 1);
    assert.match(after.out.join('\n'), /NOT active/);
  } finally {
    await b.app.close();
  }
});

test('keys generate-kek prints a usable KEK; keys rewrap migrates a store to it', async () => {
  const { mkdtempSync, readFileSync, rmSync, statSync } = await import('node:fs');
  const { tmpdir } = await import('node:os');
  const { join } = await import('node:path');
  const { SqliteStore } = await import('../src/store/sqlite.ts');
  const { PlaintextKeyWrapper } = await import('../src/key-wrap.ts');
  const { SigningKeys } = await import('../src/keys.ts');
  const g = io();
  assert.equal(await runCli(['keys', 'generate-kek', '--id', 'prod-1'], g.io), 0);
  const kek = g.out[0] ?? '';
  assert.match(kek, /^prod-1:[A-Za-z0-9_-]{43}$/);

  const dir = mkdtempSync(join(tmpdir(), 'taskpass-cli-keys-'));
  try {
    const path = join(dir, 'broker.db');
    const store = new SqliteStore({ path });
    await store.init();
    const opts = { rotateEverySec: 86400, prepublishSec: 3600, maxTokenTtlSec: 300, autoStart: false };
    await (await SigningKeys.open(store, { ...opts, wrapper: new PlaintextKeyWrapper() })).close();
    await store.close();
    const env = {
      TASKPASS_ISSUER: 'https://broker.test',
      TASKPASS_TRUST_DOMAIN: 'taskpass.local',
      TASKPASS_STORE_SQLITE_PATH: path,
      TASKPASS_KEK: kek,
    };
    const r = io(env);
    assert.equal(await runCli(['keys', 'rewrap'], r.io), 0, r.err.join('\n'));
    assert.match(r.out.join('\n'), /ok: signing keys wrapped under KEK prod-1/);
    const check = new SqliteStore({ path });
    await check.init();
    assert.deepEqual(
      (await check.loadSigningKeys()).map((k) => [k.privateJwk.kek, k.privateJwk.d]),
      [['prod-1', undefined]],
    );
    await check.close();
    // --out writes a new file once and never replaces it.
    const out = join(dir, 'kek');
    assert.equal(await runCli(['keys', 'generate-kek', '--out', out], io().io), 0);
    const first = readFileSync(out, 'utf8');
    assert.match(first, /^kek-\d{8}:[A-Za-z0-9_-]{43}\n$/);
    assert.equal(statSync(out).mode & 0o777, 0o600);
    const again = io();
    assert.equal(await runCli(['keys', 'generate-kek', '--out', out], again.io), 0);
    assert.match(again.out.join(''), /exists; kept/);
    assert.equal(readFileSync(out, 'utf8'), first);
    // Without a KEK (and without the plaintext opt-in) the command refuses, like the broker.
    const refused = io({ ...env, TASKPASS_KEK: '' });
    assert.equal(await runCli(['keys', 'rewrap'], refused.io), 1);
    assert.match(refused.err.join('\n'), /TASKPASS_CONFIG_INVALID/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('serve --workers 2 on the SQLite store is refused before anything starts', async () => {
  const r = io({ TASKPASS_ISSUER: 'https://broker.test:8443', TASKPASS_TRUST_DOMAIN: 'taskpass.local' });
  assert.equal(await runCli(['serve', '--workers', '2'], r.io), 1);
  const msg = r.err.join('\n');
  assert.match(msg, /^taskpass: TASKPASS_CONFIG_INVALID: .*workers: 2 processes need the Redis store/);
  assert.match(msg, /Configure store\.redis/);
});
