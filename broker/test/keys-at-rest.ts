// Signing keys at rest (finding 11), run against every store: the stored bytes hold no private key
// material, a tampered record fails closed, KEK rotation re-wraps, plaintext keys are migrated.
// The store keeps the wrapped key opaque, so `saveSigningKey` writes a record as raw data would.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { exportJWK, generateKeyPair, calculateJwkThumbprint } from 'jose';
import { AesGcmKeyWrapper, generateKek, PlaintextKeyWrapper } from '../src/key-wrap.ts';
import { SigningKeys, type SigningKeysOptions } from '../src/keys.ts';
import type { Store, StoredSigningKey } from '../src/store/types.ts';

export interface RawKeyAccess {
  /** Every byte the store holds for its signing keys (a table file, a Redis dump), as text. */
  rawBytes(): Promise<string>;
}

export type MakeKeyStore = () => Promise<{ store: Store; raw: RawKeyAccess; cleanup: () => Promise<void> }>;

const T0 = 1_800_000_000_000;
const base = {
  rotateEverySec: 1000,
  prepublishSec: 100,
  maxTokenTtlSec: 50,
  autoStart: false,
  now: () => T0,
};
const opts = (wrapper: SigningKeysOptions['wrapper']): SigningKeysOptions => ({ ...base, wrapper });

const unreadable = (e: unknown) => (e as { code?: string }).code === 'TASKPASS_SIGNING_KEY_UNREADABLE';

/** A private JWK's secret scalar as the stores would hold it, for searching raw bytes. */
async function secretOf(store: Store, wrapper: AesGcmKeyWrapper): Promise<string[]> {
  return (await store.loadSigningKeys()).map((k) => String(wrapper.unwrap(k.privateJwk, k).d));
}

/** A key exactly as the broker before #7 stored it: the private JWK in clear. */
async function legacyKey(at: number): Promise<StoredSigningKey> {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const pub = await exportJWK(publicKey);
  const kid = await calculateJwkThumbprint(pub, 'sha256');
  return {
    kid,
    alg: 'ES256',
    privateJwk: { ...(await exportJWK(privateKey)), kid, alg: 'ES256' },
    publicJwk: { kty: pub.kty, crv: pub.crv, x: pub.x, y: pub.y, kid, alg: 'ES256', use: 'sig' },
    createdAt: at,
    activeFrom: at,
    retireAt: at + 1000,
  };
}

async function withStore(
  make: MakeKeyStore,
  fn: (s: Store, raw: RawKeyAccess) => Promise<void>,
): Promise<void> {
  const { store, raw, cleanup } = await make();
  try {
    await fn(store, raw);
  } finally {
    await cleanup();
  }
}

export function keysAtRestContract(name: string, make: MakeKeyStore): void {
  test(`${name}: stored signing keys hold no private key material (no "d", no secret scalar)`, () =>
    withStore(make, async (store, raw) => {
      const wrapper = new AesGcmKeyWrapper(generateKek('k1'));
      const keys = await SigningKeys.open(store, opts(wrapper));
      await keys.rotateIfDue(T0 + 950_000); // a successor too: two keys stored
      const stored = await store.loadSigningKeys();
      assert.equal(stored.length, 2);
      for (const k of stored) {
        assert.equal(k.privateJwk.d, undefined, 'no "d" member in the stored record');
        assert.equal(k.privateJwk.kek, 'k1');
        assert.equal(k.privateJwk.enc, 'A256GCM');
      }
      const bytes = await raw.rawBytes();
      // assert.ok, not doesNotMatch: a failure must not print the store's bytes.
      assert.ok(!/"d"\s*:/.test(bytes), 'no JWK "d" member anywhere in the stored bytes');
      for (const d of await secretOf(store, wrapper))
        assert.ok(!bytes.includes(d), 'the secret scalar is not stored');
      await keys.close();
    }));

  test(`${name}: a tampered, relabelled or foreign-KEK key fails closed with TASKPASS_SIGNING_KEY_UNREADABLE`, () =>
    withStore(make, async (store) => {
      const wrapper = new AesGcmKeyWrapper(generateKek('k1'));
      await (await SigningKeys.open(store, opts(wrapper))).close();
      const [good] = await store.loadSigningKeys();
      assert.ok(good);
      const flip = (b64: string) => {
        const b = Buffer.from(b64, 'base64url');
        b[0] = (b[0] ?? 0) ^ 1;
        return b.toString('base64url');
      };
      const env = good.privateJwk as Record<string, string>;
      const other = await legacyKey(T0 / 1000);
      const variants: [string, StoredSigningKey][] = [
        ['ciphertext', { ...good, privateJwk: { ...env, ct: flip(env.ct ?? '') } }],
        ['tag', { ...good, privateJwk: { ...env, tag: flip(env.tag ?? '') } }],
        ['iv', { ...good, privateJwk: { ...env, iv: flip(env.iv ?? '') } }],
        ['KEK id', { ...good, privateJwk: { ...env, kek: 'k2' } }],
        ['envelope under another kid', { ...other, privateJwk: env }],
        ['public key swapped', { ...good, publicJwk: other.publicJwk }],
      ];
      for (const [what, bad] of variants) {
        await store.saveSigningKey(bad);
        await assert.rejects(SigningKeys.open(store, opts(wrapper)), unreadable, what);
        await store.deleteSigningKey(bad.kid);
        await store.saveSigningKey(good);
      }
      // Another KEK, and no KEK at all (plaintext mode), cannot read it either.
      await assert.rejects(
        SigningKeys.open(store, opts(new AesGcmKeyWrapper(generateKek('k1')))),
        unreadable,
      );
      await assert.rejects(SigningKeys.open(store, opts(new PlaintextKeyWrapper())), unreadable);
      // The untouched record still loads.
      await (await SigningKeys.open(store, opts(wrapper))).close();
    }));

  test(`${name}: KEK rotation — new KEK first re-wraps every key on open; the old KEK can then go`, () =>
    withStore(make, async (store) => {
      const k1 = generateKek('k1');
      const k2 = generateKek('k2');
      const a = await SigningKeys.open(store, opts(new AesGcmKeyWrapper(k1)));
      const kid = a.current().kid;
      await a.close();

      const rotated = await SigningKeys.open(store, opts(new AesGcmKeyWrapper(`${k2},${k1}`)));
      assert.equal(rotated.current().kid, kid, 'same signing key, only its wrapping changed');
      await rotated.close();
      assert.deepEqual(
        (await store.loadSigningKeys()).map((k) => k.privateJwk.kek),
        ['k2'],
      );
      // Only k2 left in the ring: still readable. Only k1: refused, no silent fallback.
      const onlyNew = await SigningKeys.open(store, opts(new AesGcmKeyWrapper(k2)));
      assert.equal(onlyNew.current().kid, kid);
      await onlyNew.close();
      await assert.rejects(SigningKeys.open(store, opts(new AesGcmKeyWrapper(k1))), unreadable);
      // rewrapAll reports what it re-wrapped.
      const again = await SigningKeys.open(store, opts(new AesGcmKeyWrapper(k2)));
      assert.equal(await again.rewrapAll(), 0);
      await again.close();
    }));

  test(`${name}: plaintext keys from a store written before #7 are encrypted on start, same kid`, () =>
    withStore(make, async (store, raw) => {
      const legacy = await legacyKey(T0 / 1000 - 10);
      await store.saveSigningKey(legacy);
      assert.ok(/"d"\s*:/.test(await raw.rawBytes()), 'the legacy record is in clear before');

      const wrapper = new AesGcmKeyWrapper(generateKek('k1'));
      const keys = await SigningKeys.open(store, opts(wrapper));
      assert.equal(keys.current().kid, legacy.kid, 'the migrated key keeps signing');
      await keys.close();
      const [migrated] = await store.loadSigningKeys();
      assert.equal(migrated?.privateJwk.kek, 'k1');
      assert.deepEqual(wrapper.unwrap(migrated!.privateJwk, migrated!), legacy.privateJwk);
      const bytes = await raw.rawBytes();
      assert.ok(!/"d"\s*:/.test(bytes), 'no "d" left on disk after the migration');
      assert.ok(!bytes.includes(String(legacy.privateJwk.d)), 'the secret scalar is gone');
    }));
}
