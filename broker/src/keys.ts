// The broker's token signing keys: ES256, persisted in the store, rotated with overlap.
//
// Life of a key (all times in the store, epoch seconds):
//   createdAt   published in the JWKS (not signing yet: verifiers with a cached JWKS learn it first)
//   activeFrom  = createdAt + prepublish: becomes the signing key
//   retireAt    = activeFrom + rotateEvery: the successor (published since retireAt - prepublish)
//               takes over
//   retireAt + maxTokenTtl: the last token it signed has expired; deleted from store and JWKS.
//
// The signing key is always "the key with the latest activeFrom that has been reached" (ties, which
// `addSigningKeyIfLatest` prevents, broken by the larger kid), so replicas sharing a store agree without talking to each other, and a
// broker that was down past a retireAt keeps signing with the old (still published) key until a
// successor has been published for a full prepublish period.
//
// At rest the private key is wrapped by a KeyWrapper (key-wrap.ts: AES-256-GCM under a KEK from the
// configuration). Every load re-wraps what is not under the current KEK — plain JWKs written before
// keys were wrapped, and keys wrapped under a KEK that has since been rotated out of first place —
// so a broker start (or `taskpass keys rewrap`) completes a migration or a KEK rotation.
import { createPrivateKey, type JsonWebKey, type KeyObject, type webcrypto } from 'node:crypto';
import { calculateJwkThumbprint, exportJWK, generateKeyPair } from 'jose';
import { KeySchedule, type KeyScheduleOptions } from './key-schedule.ts';
import { BrokerError } from './errors.ts';
import type { KeyWrapper } from './key-wrap.ts';
import type { Store, StoredSigningKey } from './store/types.ts';

/** Options of {@link SigningKeys.open}. */
export interface SigningKeysOptions extends KeyScheduleOptions {
  /**
   * How private keys are protected in the store. Required: there is no silent default (the broker
   * builds it from `keys.kek` / `keys.kekFile`, or plaintext only with `keys.allowPlaintext`).
   */
  wrapper: KeyWrapper;
}

/** A public signing key as served in the JWKS. */
export interface PublicSigningJwk {
  kty: 'EC';
  crv: 'P-256';
  x: string;
  y: string;
  kid: string;
  alg: 'ES256';
  use: 'sig';
  [k: string]: unknown;
}

interface LoadedKey {
  stored: StoredSigningKey;
  privateKey: KeyObject;
  publicJwk: PublicSigningJwk;
}

const byActivation = (a: StoredSigningKey, b: StoredSigningKey): number =>
  a.activeFrom - b.activeFrom || (a.kid < b.kid ? -1 : a.kid > b.kid ? 1 : 0);

function publicOf(stored: StoredSigningKey): PublicSigningJwk {
  const p = stored.publicJwk as { kty?: unknown; crv?: unknown; x?: unknown; y?: unknown };
  if (p.kty !== 'EC' || p.crv !== 'P-256' || typeof p.x !== 'string' || typeof p.y !== 'string') {
    throw new Error(`signing key ${stored.kid}: stored public key is not a P-256 EC JWK`);
  }
  // Rebuilt field by field so that nothing else stored with the key can reach the JWKS.
  return { kty: 'EC', crv: 'P-256', x: p.x, y: p.y, kid: stored.kid, alg: 'ES256', use: 'sig' };
}

/**
 * The broker's ES256 signing keys. `current()` and `jwks()` are synchronous reads of the loaded
 * set; `rotateIfDue()` (run by `start()`'s timer) publishes successors and deletes expired keys.
 */
export class SigningKeys extends KeySchedule {
  readonly #store: Store;
  readonly #wrapper: KeyWrapper;
  #keys: LoadedKey[] = [];
  #warnedStale = false;

  private constructor(store: Store, opts: SigningKeysOptions) {
    super('SigningKeys', opts);
    this.#store = store;
    this.#wrapper = opts.wrapper;
  }

  /**
   * Loads the keys from the store, creating (or scheduling) keys as needed, so that `current()`
   * works when it resolves, and starts the rotation timer unless `autoStart: false`. The store
   * must be initialised.
   */
  static async open(store: Store, opts: SigningKeysOptions): Promise<SigningKeys> {
    const k = new SigningKeys(store, opts);
    await k.rotateIfDue();
    if (opts.autoStart ?? true) k.start();
    return k;
  }

  /** How the private keys are protected in the store (for /readyz). */
  get protection(): KeyWrapper['protection'] {
    return this.#wrapper.protection;
  }

  /** The key that signs now (hot path, synchronous). */
  current(): { kid: string; privateKey: webcrypto.CryptoKey | KeyObject } {
    const now = this.nowSec();
    let pick: LoadedKey | undefined;
    for (const k of this.#keys) if (k.stored.activeFrom <= now) pick = k; // sorted by activation
    if (!pick) throw new Error('SigningKeys: no signing key is active (open() not awaited?)');
    if (pick.stored.retireAt <= now && !this.#warnedStale) {
      // Keeps signing with a published key rather than failing; the timer publishes a successor.
      this.#warnedStale = true;
      this.rotation.logger?.warn({ kid: pick.stored.kid }, 'signing key past its retireAt; rotation is late');
      void this.rotateIfDue().catch(() => {});
    }
    return { kid: pick.stored.kid, privateKey: pick.privateKey };
  }

  /** Public keys to publish: next, current, and retired ones whose tokens may still be valid. */
  jwks(): { keys: PublicSigningJwk[] } {
    return { keys: this.#keys.map((k) => ({ ...k.publicJwk })) };
  }

  /** The loaded schedule (no key material), for tests and diagnostics. */
  schedule(): { kid: string; createdAt: number; activeFrom: number; retireAt: number }[] {
    return this.#keys.map(({ stored: s }) => ({
      kid: s.kid,
      createdAt: s.createdAt,
      activeFrom: s.activeFrom,
      retireAt: s.retireAt,
    }));
  }

  /**
   * The schedule's step (run by `rotateIfDue`): reloads the keys from the store, publishes a
   * successor when the current key retires within `prepublishSec`, and deletes keys whose last
   * token has expired.
   */
  protected async rotate(now: number): Promise<void> {
    const { prepublishSec, rotateEverySec, maxTokenTtlSec } = this.rotation;
    let stored = await this.#rewrap((await this.#store.loadSigningKeys()).sort(byActivation));

    const activeAt = (keys: StoredSigningKey[], t: number) => keys.filter((k) => k.activeFrom <= t).at(-1);
    const current = activeAt(stored, now);
    const latest = stored.at(-1);
    let fresh: StoredSigningKey | undefined;
    if (!current) {
      if (!latest) {
        // Nothing to sign with and nothing published: the first key must sign at once.
        fresh = await this.#generate(now, now, now + rotateEverySec);
      }
      // else: a key is published and waits for its activeFrom; tokens cannot be signed until then.
    } else if (latest === current && now >= current.retireAt - prepublishSec) {
      // Late (broker was down, or timers stopped): the successor still waits a full prepublish.
      const activeFrom = Math.max(current.retireAt, now + prepublishSec);
      fresh = await this.#generate(now, activeFrom, activeFrom + rotateEverySec);
    }
    if (fresh) {
      // Another replica may be doing the same right now: the store adds the key only if nothing
      // newer than the current key (or, for the first key, nothing at all) was stored meanwhile,
      // in one atomic step. The loser drops its key and installs the winner's.
      if (await this.#store.addSigningKeyIfLatest(fresh, current?.activeFrom)) {
        this.rotation.logger?.info(
          { kid: fresh.kid, activeFrom: fresh.activeFrom, retireAt: fresh.retireAt },
          'signing key published',
        );
      }
      stored = (await this.#store.loadSigningKeys()).sort(byActivation);
    }

    // A key stops signing when its successor becomes active; its tokens live maxTokenTtl longer.
    const signer = activeAt(stored, now);
    const keep: StoredSigningKey[] = [];
    for (const [i, k] of stored.entries()) {
      const successor = stored.slice(i + 1).find((s) => s.activeFrom > k.activeFrom);
      const stoppedAt = successor && successor.activeFrom <= now ? successor.activeFrom : undefined;
      const expired = k !== signer && stoppedAt !== undefined && stoppedAt + maxTokenTtlSec <= now;
      if (expired) {
        await this.#store.deleteSigningKey(k.kid);
        this.rotation.logger?.info({ kid: k.kid }, 'signing key removed');
      } else keep.push(k);
    }
    await this.#install(keep);
  }

  /**
   * Wraps again, under the current KEK, every key that is stored in plaintext or under another
   * KEK, and saves it. All are unwrapped first: one that cannot be throws
   * TASKPASS_SIGNING_KEY_UNREADABLE before anything is saved. Resolves with the keys as now stored.
   */
  async #rewrap(stored: StoredSigningKey[]): Promise<StoredSigningKey[]> {
    const w = this.#wrapper;
    const changed = new Map<string, { next: StoredSigningKey; from: string }>();
    for (const s of stored) {
      if (!w.needsRewrap(s.privateJwk)) continue;
      const meta = { kid: s.kid, alg: s.alg };
      const from = typeof s.privateJwk.kek === 'string' ? s.privateJwk.kek : 'plaintext';
      changed.set(s.kid, { next: { ...s, privateJwk: w.wrap(w.unwrap(s.privateJwk, meta), meta) }, from });
    }
    for (const { next, from } of changed.values()) {
      await this.#store.saveSigningKey(next);
      this.rotation.logger?.info({ kid: next.kid, from, to: w.currentKekId }, 'signing key re-wrapped');
    }
    return stored.map((s) => changed.get(s.kid)?.next ?? s);
  }

  /** Re-wraps every stored key under the current KEK now (also done by every reload); the count. */
  async rewrapAll(): Promise<number> {
    return this.exclusive(async () => {
      const stored = await this.#store.loadSigningKeys();
      const n = stored.filter((s) => this.#wrapper.needsRewrap(s.privateJwk)).length;
      await this.#rewrap(stored);
      return n;
    });
  }

  async #install(stored: StoredSigningKey[]): Promise<void> {
    const known = new Map(this.#keys.map((k) => [k.stored.kid, k]));
    const next: LoadedKey[] = [];
    for (const s of stored) {
      const had = known.get(s.kid);
      if (had) {
        next.push({ ...had, stored: s });
        continue;
      }
      // A node:crypto KeyObject straight from the JWK: signing is node:crypto's (mint.ts), and
      // KeyObject.from() on a non-extractable CryptoKey is deprecated from Node 24 (DEP0204).
      const jwk = this.#wrapper.unwrap(s.privateJwk, { kid: s.kid, alg: s.alg });
      const privateKey = createPrivateKey({ key: jwk as JsonWebKey, format: 'jwk' });
      if (privateKey.asymmetricKeyDetails?.namedCurve !== 'prime256v1') {
        throw new Error(`signing key ${s.kid} is not a P-256 (ES256) private key`);
      }
      const publicJwk = publicOf(s);
      // The published half must be the half of the key that signs, whatever the record says.
      if (jwk.x !== publicJwk.x || jwk.y !== publicJwk.y) {
        throw new BrokerError(
          'TASKPASS_SIGNING_KEY_UNREADABLE',
          `signing key ${s.kid}: the stored public key does not belong to the private key`,
          { kid: s.kid },
        );
      }
      next.push({ stored: s, privateKey, publicJwk });
    }
    this.#keys = next;
    this.#warnedStale = false;
    this.published(next.map((k) => k.stored.kid));
  }

  async #generate(createdAt: number, activeFrom: number, retireAt: number): Promise<StoredSigningKey> {
    const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
    const pub = await exportJWK(publicKey);
    const priv = await exportJWK(privateKey);
    const kid = await calculateJwkThumbprint(pub, 'sha256');
    return {
      kid,
      alg: 'ES256',
      privateJwk: this.#wrapper.wrap({ ...priv, kid, alg: 'ES256' }, { kid, alg: 'ES256' }),
      publicJwk: { kty: pub.kty, crv: pub.crv, x: pub.x, y: pub.y, kid, alg: 'ES256', use: 'sig' },
      createdAt,
      activeFrom,
      retireAt,
    };
  }

  protected stepFailed(err: unknown): void {
    this.rotation.logger?.error({ err }, 'signing key rotation failed; retrying at the next check');
  }
}
