// Signing keys at rest: the private JWK is stored wrapped (encrypted) by a key-encryption key
// (KEK) that lives outside the store (a file or an environment variable), so a copy of the store —
// an RDB/AOF file, a SQLite backup, a replica — does not hand out the broker's signing keys.
//
// A wrapper is the seam for other protections (a Vault Transit or KMS wrapper, later an external
// signer): SigningKeys only ever calls wrap / unwrap / needsRewrap.
//
// Format of a wrapped key, as stored in the key's record (never a JWK, so no `d` field):
//   { "enc": "A256GCM", "kek": "<KEK id>", "iv": b64url(12 bytes), "ct": b64url, "tag": b64url(16 bytes) }
// The AAD binds the ciphertext to the key's kid, alg and the KEK id: a wrapped key moved to another
// record, or relabelled with another KEK id, fails to decrypt.
import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { BrokerError } from './errors.ts';

/** What a wrapper binds a key to (authenticated, not secret). */
export interface WrappedKeyMeta {
  kid: string;
  alg: string;
}

/** Protects private signing keys at rest. */
export interface KeyWrapper {
  /** `encrypted` or `plaintext` — for /readyz and the logs. */
  readonly protection: 'encrypted' | 'plaintext';
  /** Id of the KEK new keys are wrapped under (undefined for plaintext). */
  readonly currentKekId: string | undefined;
  /** The stored form of a private JWK. */
  wrap(privateJwk: Record<string, unknown>, meta: WrappedKeyMeta): Record<string, unknown>;
  /** The private JWK back; throws `TASKPASS_SIGNING_KEY_UNREADABLE` when it cannot be recovered. */
  unwrap(stored: Record<string, unknown>, meta: WrappedKeyMeta): Record<string, unknown>;
  /** True when the stored form should be wrapped again (plaintext, or under a KEK that is not current). */
  needsRewrap(stored: Record<string, unknown>): boolean;
}

const KEK_ID = /^[A-Za-z0-9._-]{1,64}$/;
const B64URL = /^[A-Za-z0-9_-]+$/;

/** A stored key that is a wrapped envelope (rather than a plain JWK). */
export function isWrapped(stored: Record<string, unknown>): boolean {
  return stored.enc !== undefined || stored.kek !== undefined;
}

function unreadable(meta: WrappedKeyMeta, why: string, cause?: unknown): BrokerError {
  // The message names the kid and the reason, never key material.
  return new BrokerError(
    'TASKPASS_SIGNING_KEY_UNREADABLE',
    `signing key ${meta.kid}: ${why}`,
    { kid: meta.kid },
    cause === undefined ? undefined : { cause },
  );
}

function aad(meta: WrappedKeyMeta, kekId: string): Buffer {
  return Buffer.from(`taskpass/signing-key/v1\0${meta.kid}\0${meta.alg}\0${kekId}`, 'utf8');
}

/**
 * Parses a KEK ring: comma- or newline-separated `id:key` entries, the key 32 bytes in base64url.
 * The FIRST entry is the current KEK (new keys are wrapped under it); the others only decrypt, so
 * rotation is: put the new KEK first, keep the old one after it until `taskpass keys rewrap` (or a
 * broker start) has re-wrapped every stored key, then drop it. Throws a plain Error whose message
 * never contains key material.
 */
export function parseKekRing(text: string): { current: string; keys: Map<string, Buffer> } {
  const keys = new Map<string, Buffer>();
  let current: string | undefined;
  const entries = text
    .split(/[,\n]/)
    .map((e) => e.trim())
    .filter((e) => e !== '' && !e.startsWith('#'));
  for (const [i, entry] of entries.entries()) {
    const at = entry.indexOf(':');
    const id = at > 0 ? entry.slice(0, at) : '';
    const b64 = at > 0 ? entry.slice(at + 1).trim() : '';
    if (!KEK_ID.test(id))
      throw new Error(`KEK entry ${i + 1}: expected <id>:<base64url key>, id [A-Za-z0-9._-]{1,64}`);
    if (!B64URL.test(b64)) throw new Error(`KEK ${id}: the key is not base64url`);
    const key = Buffer.from(b64, 'base64url');
    if (key.length !== 32) throw new Error(`KEK ${id}: must be 32 bytes (256 bits), got ${key.length}`);
    if (keys.has(id)) throw new Error(`KEK ${id}: listed twice`);
    keys.set(id, key);
    current ??= id;
  }
  if (current === undefined) throw new Error('no KEK entry');
  return { current, keys };
}

/** A new random KEK ring entry `id:base64url(32 random bytes)`. */
export function generateKek(id = `kek-${new Date().toISOString().slice(0, 10).replaceAll('-', '')}`): string {
  if (!KEK_ID.test(id)) throw new Error('KEK id must match [A-Za-z0-9._-]{1,64}');
  return `${id}:${randomBytes(32).toString('base64url')}`;
}

/** AES-256-GCM under a ring of KEKs (node:crypto). */
export class AesGcmKeyWrapper implements KeyWrapper {
  readonly protection = 'encrypted' as const;
  readonly currentKekId: string;
  readonly #keys: ReadonlyMap<string, Buffer>;

  /** `ring`: the text form of {@link parseKekRing}. */
  constructor(ring: string) {
    const { current, keys } = parseKekRing(ring);
    this.currentKekId = current;
    this.#keys = keys;
  }

  wrap(privateJwk: Record<string, unknown>, meta: WrappedKeyMeta): Record<string, unknown> {
    const kekId = this.currentKekId;
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.#keys.get(kekId) as Buffer, iv);
    cipher.setAAD(aad(meta, kekId));
    const ct = Buffer.concat([cipher.update(JSON.stringify(privateJwk), 'utf8'), cipher.final()]);
    return {
      enc: 'A256GCM',
      kek: kekId,
      iv: iv.toString('base64url'),
      ct: ct.toString('base64url'),
      tag: cipher.getAuthTag().toString('base64url'),
    };
  }

  unwrap(stored: Record<string, unknown>, meta: WrappedKeyMeta): Record<string, unknown> {
    // A plain JWK: written before keys were wrapped (or in plaintext mode); SigningKeys re-wraps it.
    if (!isWrapped(stored)) return plainJwk(stored, meta);
    const { enc, kek, iv, ct, tag } = stored;
    if (
      enc !== 'A256GCM' ||
      typeof kek !== 'string' ||
      typeof iv !== 'string' ||
      typeof ct !== 'string' ||
      typeof tag !== 'string'
    ) {
      throw unreadable(meta, 'the stored key is not an A256GCM envelope');
    }
    const key = this.#keys.get(kek);
    if (!key) throw unreadable(meta, `wrapped under KEK ${JSON.stringify(kek)}, which is not configured`);
    const ivB = Buffer.from(iv, 'base64url');
    const tagB = Buffer.from(tag, 'base64url');
    if (ivB.length !== 12 || tagB.length !== 16)
      throw unreadable(meta, 'malformed envelope (iv or tag length)');
    let text: string;
    try {
      const d = createDecipheriv('aes-256-gcm', key, ivB, { authTagLength: 16 });
      d.setAAD(aad(meta, kek));
      d.setAuthTag(tagB);
      text = Buffer.concat([d.update(Buffer.from(ct, 'base64url')), d.final()]).toString('utf8');
    } catch (e) {
      throw unreadable(
        meta,
        `does not decrypt under KEK ${JSON.stringify(kek)} (wrong KEK or tampered record)`,
        e,
      );
    }
    let jwk: unknown;
    try {
      jwk = JSON.parse(text);
    } catch {
      throw unreadable(meta, 'decrypted content is not a JWK');
    }
    return plainJwk(jwk, meta);
  }

  needsRewrap(stored: Record<string, unknown>): boolean {
    return !isWrapped(stored) || stored.kek !== this.currentKekId;
  }
}

/**
 * No protection at rest: keys are stored as plain JWKs. Only with the explicit
 * `keys.allowPlaintext: true`; the broker then says so in its logs and on /readyz. A key that is
 * already wrapped cannot be read without its KEK and fails closed.
 */
export class PlaintextKeyWrapper implements KeyWrapper {
  readonly protection = 'plaintext' as const;
  readonly currentKekId = undefined;
  wrap(privateJwk: Record<string, unknown>): Record<string, unknown> {
    return { ...privateJwk };
  }
  unwrap(stored: Record<string, unknown>, meta: WrappedKeyMeta): Record<string, unknown> {
    if (isWrapped(stored)) {
      throw unreadable(meta, `wrapped under KEK ${JSON.stringify(stored.kek)}, but no KEK is configured`);
    }
    return plainJwk(stored, meta);
  }
  needsRewrap(): boolean {
    return false;
  }
}

function plainJwk(jwk: unknown, meta: WrappedKeyMeta): Record<string, unknown> {
  if (
    jwk === null ||
    typeof jwk !== 'object' ||
    Array.isArray(jwk) ||
    typeof (jwk as { d?: unknown }).d !== 'string'
  ) {
    throw unreadable(meta, 'the stored key is neither a wrapped key nor a private JWK');
  }
  return jwk as Record<string, unknown>;
}

/** The `keys` configuration fields that choose the wrapper. */
export interface KeyWrapperConfig {
  kek?: string | undefined;
  kekFile?: string | undefined;
  allowPlaintext?: boolean | undefined;
}

/**
 * The wrapper the configuration asks for. Deny by default: without a KEK (`keys.kek` /
 * `TASKPASS_KEK`, or `keys.kekFile` / `TASKPASS_KEK_FILE`) the broker refuses to start unless the
 * operator explicitly set `keys.allowPlaintext: true`. `readFile` is a test seam.
 */
export function keyWrapperFromConfig(
  cfg: KeyWrapperConfig,
  readFile: (path: string) => string = (p) => readFileSync(p, 'utf8'),
): KeyWrapper {
  let ring = cfg.kek;
  if (cfg.kekFile !== undefined) {
    try {
      ring = readFile(cfg.kekFile);
    } catch (e) {
      throw new BrokerError(
        'TASKPASS_CONFIG_INVALID',
        `keys.kekFile: cannot read ${cfg.kekFile}: ${(e as NodeJS.ErrnoException).code ?? 'error'}`,
        { path: 'keys.kekFile' },
      );
    }
  }
  if (ring !== undefined) {
    try {
      return new AesGcmKeyWrapper(ring);
    } catch (e) {
      throw new BrokerError(
        'TASKPASS_CONFIG_INVALID',
        `keys.kek${cfg.kekFile !== undefined ? 'File' : ''}: ${(e as Error).message}`,
        {
          path: cfg.kekFile !== undefined ? 'keys.kekFile' : 'keys.kek',
        },
      );
    }
  }
  if (cfg.allowPlaintext === true) return new PlaintextKeyWrapper();
  throw new BrokerError(
    'TASKPASS_CONFIG_INVALID',
    'no key-encryption key for the signing keys: set TASKPASS_KEK_FILE / keys.kekFile (or TASKPASS_KEK), e.g. from `taskpass keys generate-kek`; or, knowingly, keys.allowPlaintext: true',
    { path: 'keys.kek' },
  );
}
