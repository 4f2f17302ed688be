// Readiness and metrics report the broker's own SVID: a stale one (Workload API down, SVID still
// valid) keeps the broker ready and says so; an expired or missing one makes it not ready.
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import type { SvidHealth } from '../src/routes/context.ts';
import type { VaultHealth } from '../src/vault.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { testBroker } from './app-support.ts';
import { tempDir } from './sqlite-support.ts';

function healthOf(state: { current: SvidHealth }): () => SvidHealth {
  return () => state.current;
}

test('readiness: fresh → 200; stale (Workload API down, SVID valid) → 200 and says so; expired or missing → 503', async () => {
  const inAMinute = new Date(Date.now() + 60_000);
  const state: { current: SvidHealth } = {
    current: { svid: 'fresh', workloadApi: 'up', expiresAt: inAMinute },
  };
  const b = await testBroker({}, { identity: { svidHealth: healthOf(state) } });

  let r = await b.app.inject('/readyz');
  assert.equal(r.statusCode, 200, r.body);
  assert.equal(r.json().checks.svid, true);
  assert.equal(r.json().svid.state, 'fresh');
  assert.equal(r.json().svid.workloadApi, 'up');
  assert.equal(r.json().svid.expiresAt, inAMinute.toISOString());
  assert.ok(r.json().svid.expiresInSeconds > 0 && r.json().svid.expiresInSeconds <= 60);

  state.current = { svid: 'stale', workloadApi: 'down', expiresAt: inAMinute };
  r = await b.app.inject('/readyz');
  assert.equal(r.statusCode, 200, r.body);
  assert.deepEqual(
    { ready: r.json().status, svid: r.json().svid.state, api: r.json().svid.workloadApi },
    { ready: 'ready', svid: 'stale', api: 'down' },
  );

  state.current = { svid: 'expired', workloadApi: 'down', expiresAt: new Date(Date.now() - 1000) };
  r = await b.app.inject('/readyz');
  assert.equal(r.statusCode, 503, r.body);
  assert.equal(r.json().status, 'not_ready');
  assert.equal(r.json().checks.svid, false);
  assert.equal(r.json().svid.state, 'expired');
  assert.ok(r.json().svid.expiresInSeconds < 0);

  state.current = { svid: 'missing', workloadApi: 'up', expiresAt: undefined };
  r = await b.app.inject('/readyz');
  assert.equal(r.statusCode, 503, r.body);
  assert.deepEqual(r.json().svid, { state: 'missing', workloadApi: 'up' });
});

test('readiness fails closed when the SVID health cannot be read', async () => {
  const b = await testBroker(
    {},
    {
      identity: {
        svidHealth: () => {
          throw new Error('source closed');
        },
      },
    },
  );
  const r = await b.app.inject('/readyz');
  assert.equal(r.statusCode, 503, r.body);
  assert.equal(r.json().svid.state, 'missing');
});

test('metrics: SVID expiry, SVID state and Workload API up, read at scrape time', async () => {
  const state: { current: SvidHealth } = {
    current: { svid: 'fresh', workloadApi: 'up', expiresAt: new Date(Date.now() + 120_000) },
  };
  const b = await testBroker({}, { identity: { svidHealth: healthOf(state) } });
  const scrape = async () => (await b.app.inject('/metrics')).body;
  const value = (body: string, name: string) => {
    const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(body);
    return m ? Number(m[1]) : undefined;
  };

  let body = await scrape();
  assert.equal(value(body, 'taskpass_workload_api_up'), 1);
  const expiry = value(body, 'taskpass_svid_expiry_seconds');
  assert.ok(expiry !== undefined && expiry > 100 && expiry <= 120, body);
  assert.match(body, /^taskpass_svid_state\{state="fresh"\} 1$/m);
  assert.match(body, /^taskpass_svid_state\{state="stale"\} 0$/m);

  state.current = { svid: 'stale', workloadApi: 'down', expiresAt: new Date(Date.now() + 30_000) };
  body = await scrape();
  assert.equal(value(body, 'taskpass_workload_api_up'), 0);
  assert.match(body, /^taskpass_svid_state\{state="stale"\} 1$/m);
  assert.match(body, /^taskpass_svid_state\{state="fresh"\} 0$/m);

  state.current = { svid: 'missing', workloadApi: 'down', expiresAt: undefined };
  body = await scrape();
  assert.equal(value(body, 'taskpass_svid_expiry_seconds'), 0, 'no SVID: nothing valid left');
  assert.match(body, /^taskpass_svid_state\{state="missing"\} 1$/m);
});

test('readiness reports Vault: not ready while Vault signs and is sealed or down; with leases alone it is reported only', async () => {
  const vault: { current: VaultHealth } = { current: { state: 'up' } };
  const vaultCfg = { address: 'http://127.0.0.1:1', auth: { method: 'token', token: 'dev' } };
  const signing = await testBroker(
    { vault: vaultCfg, signing: { kind: 'vault-transit' } },
    { vaultHealth: async () => vault.current },
  );
  const leasing = await testBroker({ vault: vaultCfg }, { vaultHealth: async () => vault.current });

  let r = await signing.app.inject('/readyz');
  assert.equal(r.statusCode, 200, r.body);
  assert.equal(r.json().checks.vault, true);
  assert.deepEqual(r.json().vault, { state: 'up' });

  for (const state of [
    { state: 'sealed', reason: 'sealed' },
    { state: 'down', reason: 'vault health: connect ECONNREFUSED' },
  ] as const) {
    vault.current = state;
    r = await signing.app.inject('/readyz');
    assert.equal(r.statusCode, 503, r.body);
    assert.equal(r.json().checks.vault, false);
    assert.deepEqual(r.json().vault, state);
    r = await leasing.app.inject('/readyz');
    assert.equal(r.statusCode, 200, r.body);
    assert.equal(r.json().checks.vault, false);
    assert.equal(r.json().vault.state, state.state);
  }
  // Without Vault configured, readiness says nothing about it.
  const plain = await testBroker();
  r = await plain.app.inject('/readyz');
  assert.equal(r.json().checks.vault, undefined);
  assert.equal(r.json().vault, undefined);
  for (const b of [signing, leasing, plain]) await b.app.close();
});

test("metrics: the SQLite store's WAL size, read at scrape time (none for other stores)", async () => {
  using tmp = tempDir();
  const store = new SqliteStore({ path: join(tmp.dir, 'broker.db') });
  await store.init();
  const b = await testBroker({}, { store });
  try {
    const wal = async () => {
      const m = /^taskpass_store_wal_bytes (\d+)$/m.exec((await b.app.inject('/metrics')).body);
      return m ? Number(m[1]) : undefined;
    };
    const size = () => statSync(join(tmp.dir, 'broker.db-wal')).size;
    const before = await wal();
    assert.equal(before, size(), 'the gauge is the file size');
    assert.ok(before! > 0 && before! < 2_000_000);
    // 2 MB in one record: the file grows past any size it had, wherever the WAL starts over.
    await store.revokeToken(`jti-${'x'.repeat(2_000_000)}`, Math.floor(Date.now() / 1000) + 60, 'test');
    const after = await wal();
    assert.ok(after! > 2_000_000, `read again at the next scrape (${before} → ${after})`);
    assert.equal(after, size());
  } finally {
    await b.app.close();
    await store.close();
  }
  const memory = await testBroker();
  assert.doesNotMatch((await memory.app.inject('/metrics')).body, /taskpass_store_wal_bytes/);
  await memory.app.close();
});
