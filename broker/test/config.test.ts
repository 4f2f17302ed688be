import assert from 'node:assert/strict';
import { mkdtempSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { loadConfig, parseConfig, parseDurationSec } from '../src/config.ts';
import { BrokerError } from '../src/errors.ts';
import { generateKek, keyWrapperFromConfig } from '../src/key-wrap.ts';

const minimal = { issuer: 'https://broker.test:8443', trustDomain: 'taskpass.local' };

test('defaults are applied and the result is deeply frozen', () => {
  const c = parseConfig(minimal);
  assert.equal(c.listen.port, 8443);
  assert.equal(c.tls.mode, 'spiffe');
  assert.equal(c.jwtSvidAudience, 'https://broker.test:8443');
  assert.deepEqual(c.store, {
    sqlite: {
      path: 'taskpass.db',
      cacheMiB: 64,
      mmapMiB: 1024,
      writer: 'thread',
      checkpoint: 'background',
      walLimitMiB: 64,
    },
  });
  assert.equal(c.tokens.defaultTtl, 60);
  assert.equal(c.keys.rotateEvery, 86400);
  assert.equal(c.feed.auth, 'workloads');
  assert.equal(c.feed.heartbeatMs, 5000);
  assert.ok(Object.isFrozen(c) && Object.isFrozen(c.listen) && Object.isFrozen(c.admins));
  assert.throws(() => {
    (c.listen as { port: number }).port = 1;
  }, TypeError);
});

test('durations, trust-domain prefixes and issuers', () => {
  assert.equal(parseDurationSec('15m'), 900);
  assert.equal(parseDurationSec('500ms'), 1);
  assert.equal(parseDurationSec('x'), undefined);
  const c = parseConfig({
    ...minimal,
    trustDomain: 'spiffe://taskpass.local',
    tokens: { defaultTtl: '30s', maxTtl: '2m' },
    users: {
      trustedIssuers: [{ issuer: 'https://idp.test', audience: 'taskpass', jwks: { keys: [{ kty: 'EC' }] } }],
    },
    store: { redis: { url: 'redis://127.0.0.1:6379' } },
  });
  assert.equal(c.trustDomain, 'taskpass.local');
  assert.equal(c.tokens.maxTtl, 120);
  assert.deepEqual(c.users.trustedIssuers[0]?.algorithms, ['RS256', 'ES256']);
  assert.equal(c.store.redis?.url, 'redis://127.0.0.1:6379');
});

function invalid(raw: unknown): { path: string; message: string }[] {
  try {
    parseConfig(raw);
  } catch (e) {
    assert.ok(e instanceof BrokerError);
    assert.equal(e.code, 'TASKPASS_CONFIG_INVALID');
    return e.details?.issues as { path: string; message: string }[];
  }
  assert.fail('expected TASKPASS_CONFIG_INVALID');
}

test('invalid configurations name the offending path', () => {
  assert.ok(invalid({ trustDomain: 'x' }).some((i) => i.path === 'issuer'));
  assert.ok(invalid({ ...minimal, tls: { mode: 'plain' } }).some((i) => i.path === 'tls.mode'));
  assert.ok(
    invalid({ ...minimal, tokens: { defaultTtl: 'soon' } }).some((i) => i.path === 'tokens.defaultTtl'),
  );
  assert.ok(invalid({ ...minimal, typo: 1 }).length > 0);
  assert.ok(invalid({ ...minimal, admins: ['not-a-spiffe-id'] }).some((i) => i.path === 'admins.0'));
  assert.ok(
    invalid({ ...minimal, users: { trustedIssuers: [{ issuer: 'https://i', audience: 'a' }] } }).some((i) =>
      i.path.startsWith('users.trustedIssuers.0'),
    ),
  );
  assert.ok(
    invalid({ ...minimal, keys: { rotateEvery: '1h', prepublish: '2h' } }).some(
      (i) => i.path === 'keys.prepublish',
    ),
  );
  assert.ok(
    invalid({ ...minimal, store: { sqlite: { path: 'a' }, redis: { url: 'redis://x' } } }).some(
      (i) => i.path === 'store',
    ),
  );
});

test('keys.prepublish shorter than the announced JWKS cache lifetime is refused, naming both values', () => {
  // Default jwksMaxAge is 10 min, the verifier's default JWKS cache: a 5 min prepublish conflicts.
  const issues = invalid({ ...minimal, keys: { rotateEvery: '1h', prepublish: '5m' } });
  const issue = issues.find((i) => i.path === 'keys.prepublish');
  assert.ok(issue, JSON.stringify(issues));
  assert.match(issue.message, /keys\.prepublish \(300s\).*keys\.jwksMaxAge \(600s\)/);
  assert.throws(() => parseConfig({ ...minimal, keys: { rotateEvery: '1h', prepublish: '5m' } }), {
    code: 'TASKPASS_CONFIG_INVALID',
  });
  const ok = parseConfig({ ...minimal, keys: { rotateEvery: '1h', prepublish: '5m', jwksMaxAge: '5m' } });
  assert.equal(ok.keys.jwksMaxAge, 300);
  assert.equal(parseConfig(minimal).keys.jwksMaxAge, 600);
});

test('loadConfig reads YAML from --config and lets TASKPASS_* env override it', () => {
  const dir = mkdtempSync(join(tmpdir(), 'tp-config-'));
  const file = join(dir, 'broker.yaml');
  writeFileSync(
    file,
    'issuer: https://broker.test\ntrustDomain: taskpass.local\nlisten:\n  port: 9000\nadmins: []\n',
  );
  const c = loadConfig({
    argv: ['serve', '--config', file],
    env: {
      TASKPASS_LISTEN_PORT: '9443',
      TASKPASS_ADMINS: 'spiffe://taskpass.local/admin/a, spiffe://taskpass.local/admin/b',
      TASKPASS_TLS_MODE: 'none',
    },
  });
  assert.equal(c.listen.port, 9443);
  assert.equal(c.tls.mode, 'none');
  assert.deepEqual(c.admins, ['spiffe://taskpass.local/admin/a', 'spiffe://taskpass.local/admin/b']);
  const j = join(dir, 'broker.json');
  writeFileSync(j, JSON.stringify(minimal));
  assert.equal(loadConfig({ env: { TASKPASS_CONFIG: j } }).issuer, minimal.issuer);
  assert.throws(
    () => loadConfig({ file: join(dir, 'missing.yaml'), env: {} }),
    /cannot read configuration file/,
  );
  writeFileSync(file, 'issuer: [unclosed');
  assert.throws(
    () => loadConfig({ file, env: {} }),
    (e: unknown) => e instanceof BrokerError && e.code === 'TASKPASS_CONFIG_INVALID',
  );
});

test('workloadApi.hint picks the broker SVID; sweepEvery schedules the store sweep', async () => {
  const d = parseConfig(minimal);
  assert.equal(d.workloadApi.hint, undefined);
  assert.equal(d.sweepEvery, 60);
  const c = parseConfig({ ...minimal, workloadApi: { hint: 'broker' }, sweepEvery: '5m' });
  assert.equal(c.workloadApi.hint, 'broker');
  assert.equal(c.sweepEvery, 300);
  assert.throws(() => parseConfig({ ...minimal, workloadApi: { hint: '' } }), BrokerError);
  const e = loadConfig({
    env: {
      TASKPASS_ISSUER: minimal.issuer,
      TASKPASS_TRUST_DOMAIN: 'taskpass.local',
      TASKPASS_WORKLOAD_API_HINT: 'b',
    },
  });
  assert.equal(e.workloadApi.hint, 'b');
  const { svidPicker } = await import('../src/server.ts');
  assert.equal(svidPicker(undefined), undefined, 'no hint: the source default (first SVID)');
  const pick = svidPicker('broker')!;
  const svids = [{ hint: 'agent' }, { hint: 'broker' }] as never[];
  assert.equal(pick(svids), svids[1]);
  assert.equal(pick([{ hint: 'agent' }] as never[]), undefined);
});

test('rateLimit: a budget per caller class, a Redis timeout, each settable from the environment', () => {
  assert.deepEqual(parseConfig(minimal).rateLimit, {
    perAgentPerMinute: 1200,
    perWorkloadPerMinute: 6000,
    perAdminPerMinute: 600,
    perIpPerMinute: 600,
    redisTimeoutMs: 500,
  });
  const c = loadConfig({
    env: {
      TASKPASS_ISSUER: minimal.issuer,
      TASKPASS_TRUST_DOMAIN: minimal.trustDomain,
      TASKPASS_RATE_LIMIT_PER_WORKLOAD_PER_MINUTE: '10',
      TASKPASS_RATE_LIMIT_PER_ADMIN_PER_MINUTE: '11',
      TASKPASS_RATE_LIMIT_PER_IP_PER_MINUTE: '12',
    },
  });
  assert.equal(c.rateLimit.perWorkloadPerMinute, 10);
  assert.equal(c.rateLimit.perAdminPerMinute, 11);
  assert.equal(c.rateLimit.perIpPerMinute, 12);
  for (const bad of [
    { perIpPerMinute: 0 },
    { perAgentPerMinute: 1.5 },
    { redisTimeoutMs: 0 },
    { other: 1 },
  ]) {
    assert.throws(() => parseConfig({ ...minimal, rateLimit: bad }), /rateLimit/);
  }
});

test('signing keys at rest: no KEK and no plaintext opt-in refuses to start; KEKs from env or file', () => {
  const kek = generateKek('k1');
  // The default: neither a KEK nor allowPlaintext — the wrapper (built at start-up) refuses.
  const none = parseConfig(minimal);
  assert.equal(none.keys.allowPlaintext, false);
  assert.throws(
    () => keyWrapperFromConfig(none.keys),
    (e: BrokerError) => e.code === 'TASKPASS_CONFIG_INVALID' && /keys\.allowPlaintext/.test(e.message),
  );
  // Explicit opt-in.
  assert.equal(
    keyWrapperFromConfig(parseConfig({ ...minimal, keys: { allowPlaintext: true } }).keys).protection,
    'plaintext',
  );
  // TASKPASS_KEK and TASKPASS_KEK_FILE.
  const fromEnv = loadConfig({
    env: { TASKPASS_ISSUER: minimal.issuer, TASKPASS_TRUST_DOMAIN: 'taskpass.local', TASKPASS_KEK: kek },
  });
  const w = keyWrapperFromConfig(fromEnv.keys);
  assert.equal(w.protection, 'encrypted');
  assert.equal(w.currentKekId, 'k1');
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-kek-'));
  const file = join(dir, 'kek');
  writeFileSync(file, `# rotated 2026-12\n${generateKek('k2')}\n${kek}\n`);
  const fromFile = loadConfig({
    env: {
      TASKPASS_ISSUER: minimal.issuer,
      TASKPASS_TRUST_DOMAIN: 'taskpass.local',
      TASKPASS_KEK_FILE: file,
    },
  });
  assert.equal(keyWrapperFromConfig(fromFile.keys).currentKekId, 'k2', 'the first entry is current');
  assert.throws(
    () => keyWrapperFromConfig({ kekFile: join(dir, 'missing') }),
    (e: BrokerError) => e.code === 'TASKPASS_CONFIG_INVALID',
  );
  // A malformed KEK fails validation without echoing the key.
  const short = `k1:${Buffer.alloc(16, 7).toString('base64url')}`;
  assert.throws(
    () => parseConfig({ ...minimal, keys: { kek: short } }),
    (e: BrokerError) =>
      e.code === 'TASKPASS_CONFIG_INVALID' &&
      /32 bytes/.test(e.message) &&
      !e.message.includes(short.slice(3)),
  );
  assert.throws(() => parseConfig({ ...minimal, keys: { kek, allowPlaintext: true } }), BrokerError);
  assert.throws(() => parseConfig({ ...minimal, keys: { kek, kekFile: file } }), BrokerError);
});

test('store.redis.timeoutMs bounds every Redis call: default 2000 ms, TASKPASS_STORE_REDIS_TIMEOUT_MS sets it', () => {
  const d = parseConfig({ ...minimal, store: { redis: { url: 'redis://127.0.0.1:6379' } } });
  assert.equal(d.store.redis?.timeoutMs, 2000);
  const e = loadConfig({
    env: {
      TASKPASS_ISSUER: minimal.issuer,
      TASKPASS_TRUST_DOMAIN: minimal.trustDomain,
      TASKPASS_STORE_REDIS_URL: 'redis://127.0.0.1:6379',
      TASKPASS_STORE_REDIS_TIMEOUT_MS: '500',
    },
  });
  assert.equal(e.store.redis?.timeoutMs, 500);
  assert.ok(
    invalid({ ...minimal, store: { redis: { url: 'redis://x', timeoutMs: 0 } } }).some(
      (i) => i.path === 'store.redis.timeoutMs',
    ),
  );
});

test('approvals: a distinct audience for approver tokens, and an approval URL template with {id}', () => {
  const c = parseConfig(minimal);
  assert.equal(c.approvals.audience, 'taskpass-approvals');
  assert.equal(c.approvals.url, undefined);
  const idp = (audience: string | string[]) => ({
    users: { trustedIssuers: [{ issuer: 'https://idp.test', audience, jwks: { keys: [{ kty: 'EC' }] } }] },
  });
  const refused = (raw: Record<string, unknown>, path: string, message: RegExp) =>
    assert.throws(
      () => parseConfig({ ...minimal, ...raw }),
      (e: unknown) => {
        assert.ok(e instanceof BrokerError && e.code === 'TASKPASS_CONFIG_INVALID');
        const issues = (e.details?.issues ?? []) as { path: string; message: string }[];
        assert.match(issues.find((i) => i.path === path)?.message ?? '', message);
        return true;
      },
    );
  // The agent holds delegation tokens: one valid for approving would let it approve.
  refused(idp(['taskpass', 'taskpass-approvals']), 'approvals.audience', /delegation token the agent holds/);
  refused(
    { ...idp('taskpass'), approvals: { audience: 'taskpass' } },
    'approvals.audience',
    /users\.trustedIssuers\[0\]/,
  );
  refused({ approvals: { url: 'https://console.example/approvals' } }, 'approvals.url', /\{id\}/);
  refused({ approvals: { url: '/approvals/{id}' } }, 'approvals.url', /absolute URL/);
  const ok = parseConfig({
    ...minimal,
    ...idp('taskpass'),
    approvals: { audience: 'approvals', url: 'https://console.example/a/{id}' },
  });
  assert.equal(ok.approvals.url, 'https://console.example/a/{id}');
  assert.equal(
    loadConfig({
      env: {
        TASKPASS_ISSUER: minimal.issuer,
        TASKPASS_TRUST_DOMAIN: 'td',
        TASKPASS_APPROVALS_AUDIENCE: 'apr',
      },
    }).approvals.audience,
    'apr',
  );
});

test('signing: local by default; vault-transit needs the vault section, with defaults for key and mount', () => {
  assert.deepEqual(parseConfig(minimal).signing, { kind: 'local' });
  assert.throws(
    () => parseConfig({ ...minimal, signing: { kind: 'vault-transit' } }),
    (e: unknown) =>
      e instanceof BrokerError && e.code === 'TASKPASS_CONFIG_INVALID' && /vault/.test(e.message),
  );
  const c = parseConfig({
    ...minimal,
    signing: { kind: 'vault-transit' },
    vault: { address: 'https://vault.test:8200', auth: { method: 'jwt', role: 'taskpass-broker' } },
  });
  assert.deepEqual(c.signing, {
    kind: 'vault-transit',
    key: 'taskpass',
    mount: 'transit',
    maxBatch: 64,
    maxQueue: 1024,
  });
  assert.deepEqual(c.vault?.auth, {
    method: 'jwt',
    role: 'taskpass-broker',
    mount: 'jwt',
    audience: 'vault',
  });
  // A key name that is not one Vault path segment is refused.
  assert.throws(() =>
    parseConfig({
      ...minimal,
      signing: { kind: 'vault-transit', key: '../sys' },
      vault: { address: 'https://vault.test:8200', auth: { method: 'token', token: 't' } },
    }),
  );
});

test('workers: 1 by default, auto is the available parallelism, more than one needs Redis', async () => {
  const { availableParallelism } = await import('node:os');
  assert.equal(parseConfig(minimal).workers, 1);
  const redis = { redis: { url: 'redis://127.0.0.1:6379' } };
  assert.equal(parseConfig({ ...minimal, store: redis, workers: 4 }).workers, 4);
  assert.equal(parseConfig({ ...minimal, store: redis, workers: 'auto' }).workers, availableParallelism());
  assert.throws(() => parseConfig({ ...minimal, store: redis, workers: 0 }), /workers/);
  // The SQLite store (also the default) has one writer and in-process revocation events.
  for (const store of [undefined, { sqlite: { path: 'x.db' } }]) {
    assert.throws(
      () => parseConfig({ ...minimal, ...(store ? { store } : {}), workers: 2 }),
      (e: unknown) =>
        e instanceof BrokerError &&
        e.code === 'TASKPASS_CONFIG_INVALID' &&
        /workers: 2 processes need the Redis store/.test(e.message) &&
        /one writer/.test(e.message) &&
        /revocation events/.test(e.message) &&
        /Configure store\.redis/.test(e.message),
    );
  }
  // TASKPASS_WORKERS (and `serve --workers`, which sets it) on top of the file.
  assert.equal(loadConfig({ env: { ...envOf(minimal), TASKPASS_WORKERS: '1' } }).workers, 1);
  assert.throws(
    () => loadConfig({ env: { ...envOf(minimal), TASKPASS_WORKERS: '2' } }),
    /workers: 2 processes need the Redis store/,
  );
});

/** The minimal configuration as environment variables. */
function envOf(c: typeof minimal): NodeJS.ProcessEnv {
  return { TASKPASS_ISSUER: c.issuer, TASKPASS_TRUST_DOMAIN: c.trustDomain };
}
