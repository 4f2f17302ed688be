import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { createLocalJWKSet, decodeProtectedHeader, jwtVerify, SignJWT } from 'jose';
import { AesGcmKeyWrapper, generateKek } from '../src/key-wrap.ts';
import { SigningKeys, type SigningKeysOptions } from '../src/keys.ts';
import { SqliteStore } from '../src/store/sqlite.ts';

const T0 = 1_800_000_000_000; // epoch ms
const wrapper = new AesGcmKeyWrapper(generateKek('test-kek'));
const ROT = {
  rotateEverySec: 1000,
  prepublishSec: 100,
  maxTokenTtlSec: 50,
  autoStart: false,
  wrapper,
} as const;

function clock(start = T0) {
  const c = {
    ms: start,
    now: () => c.ms,
    at: (sec: number): number => {
      c.ms = start + sec * 1000;
      return c.ms;
    },
  };
  return c;
}

async function memStore(): Promise<SqliteStore> {
  const s = new SqliteStore({ path: ':memory:' });
  await s.init();
  return s;
}

const kids = (k: SigningKeys) => k.jwks().keys.map((j) => j.kid);

async function sign(k: SigningKeys, nowMs: number, ttl = 50): Promise<string> {
  const { kid, privateKey } = k.current();
  const iat = Math.floor(nowMs / 1000);
  return new SignJWT({ sub: 'x' })
    .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid })
    .setIssuedAt(iat)
    .setExpirationTime(iat + ttl)
    .sign(privateKey);
}

async function verifies(k: SigningKeys, token: string, nowMs: number): Promise<boolean> {
  try {
    await jwtVerify(token, createLocalJWKSet(k.jwks()), {
      currentDate: new Date(nowMs),
      algorithms: ['ES256'],
    });
    return true;
  } catch {
    return false;
  }
}

test('keys: a first key signs at once; the JWKS holds public fields only; tokens verify', async () => {
  const store = await memStore();
  const c = clock();
  const k = await SigningKeys.open(store, { ...ROT, now: c.now });
  const { kid } = k.current();
  assert.match(kid, /^[A-Za-z0-9_-]{43}$/, 'RFC 7638 SHA-256 thumbprint');
  const jwks = k.jwks();
  assert.equal(jwks.keys.length, 1);
  assert.deepEqual(Object.keys(jwks.keys[0] ?? {}).sort(), ['alg', 'crv', 'kid', 'kty', 'use', 'x', 'y']);
  assert.equal(jwks.keys[0]?.alg, 'ES256');
  assert.equal(jwks.keys[0]?.use, 'sig');
  assert.ok(!JSON.stringify(jwks).includes('"d"'));
  const token = await sign(k, c.ms);
  assert.equal(decodeProtectedHeader(token).kid, kid);
  assert.equal(await verifies(k, token, c.ms), true);
  await k.close();
  await store.close();
});

test('keys: persisted in the store, so a restart keeps signing with the same key', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-keys-'));
  try {
    const path = join(dir, 'broker.db');
    const c = clock();
    const s1 = new SqliteStore({ path });
    await s1.init();
    const k1 = await SigningKeys.open(s1, { ...ROT, now: c.now });
    const kid = k1.current().kid;
    const token = await sign(k1, c.ms);
    await k1.close();
    await s1.close();

    c.at(10);
    const s2 = new SqliteStore({ path });
    await s2.init();
    const k2 = await SigningKeys.open(s2, { ...ROT, now: c.now });
    assert.equal(k2.current().kid, kid);
    assert.deepEqual(kids(k2), [kid]);
    assert.equal(await verifies(k2, token, c.ms), true, 'tokens from before the restart still verify');
    await k2.close();
    await s2.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('keys: rotation publishes the next key before it signs and keeps the old one until its tokens expired', async () => {
  const store = await memStore();
  const c = clock();
  const k = await SigningKeys.open(store, { ...ROT, now: c.now });
  const k1 = k.current().kid;

  await k.rotateIfDue(c.at(899));
  assert.deepEqual(kids(k), [k1], 'nothing new before retireAt - prepublish');

  await k.rotateIfDue(c.at(900));
  const published = kids(k);
  assert.equal(published.length, 2, 'successor published');
  const k2 = published.find((x) => x !== k1) as string;
  assert.equal(k.current().kid, k1, 'the successor does not sign yet');
  await k.rotateIfDue(c.at(950));
  assert.equal(kids(k).length, 2, 'no third key while a successor is pending');

  c.at(999);
  const lastOld = await sign(k, c.ms, 50);
  assert.equal(decodeProtectedHeader(lastOld).kid, k1);

  c.at(1000);
  assert.equal(k.current().kid, k2, 'switches at activeFrom without waiting for the timer');
  const firstNew = await sign(k, c.ms);
  await k.rotateIfDue(c.ms);
  assert.deepEqual(new Set(kids(k)), new Set([k1, k2]), 'the old key stays published');
  assert.equal(await verifies(k, lastOld, c.at(1040)), true);
  assert.equal(await verifies(k, firstNew, c.ms), true);

  await k.rotateIfDue(c.at(1049));
  assert.ok(kids(k).includes(k1), 'kept until stop + max token ttl');
  await k.rotateIfDue(c.at(1050));
  assert.deepEqual(kids(k), [k2], 'removed once its last token has expired');
  assert.deepEqual(
    (await store.loadSigningKeys()).map((x) => x.kid),
    [k2],
    'and deleted from the store',
  );
  await k.close();
  await store.close();
});

test('keys: after downtime past retireAt the old key keeps signing until a successor was published long enough', async () => {
  const store = await memStore();
  const c = clock();
  const a = await SigningKeys.open(store, { ...ROT, now: c.now });
  const k1 = a.current().kid;
  await a.close();

  c.at(5000); // the broker was down through the whole rotation window
  const b = await SigningKeys.open(store, { ...ROT, now: c.now });
  assert.equal(b.current().kid, k1, 'no unpublished key signs');
  const sched = b.schedule();
  assert.equal(sched.length, 2);
  assert.equal(sched[1]?.activeFrom, 5000 + T0 / 1000 + 100, 'successor waits a full prepublish');
  c.at(5100);
  assert.notEqual(b.current().kid, k1);
  await b.rotateIfDue(c.at(5150));
  assert.deepEqual(kids(b), [b.current().kid]);
  await b.close();
  await store.close();
});

test('keys: replicas sharing a store converge on the same keys, even when rotating at the same time', async () => {
  const store = await memStore();
  const c = clock();
  const opts: SigningKeysOptions = { ...ROT, now: c.now };
  const [a, b] = await Promise.all([SigningKeys.open(store, opts), SigningKeys.open(store, opts)]);
  await Promise.all([a.rotateIfDue(), b.rotateIfDue()]);
  assert.equal(a.current().kid, b.current().kid);

  c.at(900);
  await Promise.all([a.rotateIfDue(c.ms), b.rotateIfDue(c.ms)]);
  await Promise.all([a.rotateIfDue(c.ms), b.rotateIfDue(c.ms)]); // each sees the other's writes
  assert.deepEqual(new Set(kids(a)), new Set(kids(b)));
  c.at(1000);
  assert.equal(a.current().kid, b.current().kid, 'the same successor signs on both');
  await a.close();
  await b.close();
  await store.close();
});

test('keys: onChange fires when the published set changes, also for a key another replica published', async () => {
  const store = await memStore();
  const c = clock();
  const a = await SigningKeys.open(store, { ...ROT, now: c.now });
  const b = await SigningKeys.open(store, { ...ROT, now: c.now });
  const seenA: string[][] = [];
  const seenB: string[][] = [];
  a.onChange(() => seenA.push(a.kids()));
  b.onChange(() => seenB.push(b.kids()));

  await a.rotateIfDue(c.at(899));
  await b.rotateIfDue(c.ms);
  assert.deepEqual([seenA, seenB], [[], []], 'no change, no event');

  await a.rotateIfDue(c.at(900));
  assert.equal(seenA.length, 1, 'a published a successor');
  assert.equal(seenA[0]?.length, 2);
  await b.rotateIfDue(c.at(901));
  assert.deepEqual(seenB, seenA, "b learns a's key at its next check, well before it signs at 1000");

  await a.rotateIfDue(c.at(1050));
  assert.equal(seenA.length, 2, 'the retired key left the JWKS');
  assert.deepEqual(a.kids(), seenA[1]);
  await a.close();
  await b.close();
  await store.close();
});

test('keys: bad schedules are refused', async () => {
  const store = await memStore();
  await assert.rejects(
    SigningKeys.open(store, { rotateEverySec: 100, prepublishSec: 100, maxTokenTtlSec: 10, wrapper }),
    /prepublishSec/,
  );
  await store.close();
});
