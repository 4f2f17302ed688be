// JWT bundles: the public keys (by kid) that sign a trust domain's JWT-SVIDs.
import { createPublicKey, type JsonWebKey, type KeyObject } from 'node:crypto';
import { SpiffeError } from '../errors.ts';
import type { TrustDomain } from '../id.ts';

/** Anything that can hand out the JWT bundle of a trust domain (a static set, a live source). */
export interface JwtBundleSource {
  getJwtBundleForTrustDomain(td: TrustDomain): JwtBundle | undefined;
}

/** JWT-SVIDs are signed with RS*, PS* or ES* (JWT-SVID.md §2), so only these key types can verify one. */
const KNOWN_KTY = new Set(['EC', 'RSA']);

/**
 * Public members of a JWK for a signing key, copied one by one so that nothing else (`use`,
 * `key_ops`, a stray private `d`) reaches the key importer.
 */
export function publicJwkMembers(jwk: Record<string, unknown>): JsonWebKey {
  if (jwk.kty === 'EC') return { kty: 'EC', crv: jwk.crv, x: jwk.x, y: jwk.y } as JsonWebKey;
  return { kty: 'RSA', n: jwk.n, e: jwk.e } as JsonWebKey;
}

/**
 * Imports one JWT authority from a JWK. Returns `undefined` for keys that JWT-SVID validation
 * ignores (unknown `kty`, or a `use` other than absent, `sig` or `jwt-svid`).
 *
 * @internal Shared with the SPIFFE bundle parser.
 */
export function importJwtAuthority(jwk: unknown): { kid: string; key: KeyObject } | undefined {
  if (typeof jwk !== 'object' || jwk === null || Array.isArray(jwk)) {
    throw new SpiffeError('ERR_SPIFFE_INVALID_BUNDLE', 'a JWKS key is not an object');
  }
  const k = jwk as Record<string, unknown>;
  // The Workload API sends a standard JWKS without `use`; SPIFFE bundles mark keys `jwt-svid`.
  if (k.use !== undefined && k.use !== 'jwt-svid' && k.use !== 'sig') return undefined;
  if (typeof k.kty !== 'string' || !KNOWN_KTY.has(k.kty)) return undefined;
  if (typeof k.kid !== 'string' || k.kid === '') {
    throw new SpiffeError('ERR_SPIFFE_INVALID_BUNDLE', 'a JWT authority has no kid (JWT-SVID.md §6)');
  }
  try {
    return { kid: k.kid, key: createPublicKey({ key: publicJwkMembers(k), format: 'jwk' }) };
  } catch (e) {
    throw new SpiffeError(
      'ERR_SPIFFE_INVALID_BUNDLE',
      `JWT authority ${JSON.stringify(k.kid)} is not a valid key`,
      {
        cause: e,
      },
    );
  }
}

/** Parses JSON given as text, bytes or an already-parsed value. */
export function parseJsonInput(json: string | Uint8Array | object): unknown {
  if (typeof json === 'string' || json instanceof Uint8Array) {
    const text = typeof json === 'string' ? json : Buffer.from(json).toString('utf8');
    try {
      return JSON.parse(text);
    } catch (e) {
      throw new SpiffeError('ERR_SPIFFE_INVALID_BUNDLE', 'bundle is not valid JSON', { cause: e });
    }
  }
  return json;
}

/**
 * The JWT authorities of one trust domain, keyed by `kid`.
 *
 * @example
 * ```ts
 * const bundle = JwtBundle.fromJwks(TrustDomain.parse('example.org'), jwksJson);
 * bundle.findJwtAuthority('kid-1'); // KeyObject | undefined
 * ```
 */
export class JwtBundle implements JwtBundleSource {
  readonly trustDomain: TrustDomain;
  readonly keys: ReadonlyMap<string, KeyObject>;

  constructor(trustDomain: TrustDomain, keys: Iterable<readonly [string, KeyObject]> = []) {
    this.trustDomain = trustDomain;
    const m = new Map<string, KeyObject>();
    for (const [kid, key] of keys) {
      if (key.type !== 'public')
        throw new SpiffeError('ERR_SPIFFE_INVALID_BUNDLE', 'JWT authorities must be public keys');
      m.set(kid, key);
    }
    this.keys = m;
  }

  /**
   * Parses a JWK Set: either the standard JWKS that the Workload API's `FetchJWTBundles` returns
   * (no `use`) or a SPIFFE bundle (`use: "jwt-svid"` keys; `x509-svid` keys are skipped). Keys with
   * an unknown `use` or `kty` are ignored; a JWT key without `kid`, or a repeated `kid`, is an error.
   *
   * @throws SpiffeError `ERR_SPIFFE_INVALID_BUNDLE`
   */
  static fromJwks(trustDomain: TrustDomain, json: string | Uint8Array | object): JwtBundle {
    const doc = parseJsonInput(json);
    if (typeof doc !== 'object' || doc === null || !Array.isArray((doc as { keys?: unknown }).keys)) {
      throw new SpiffeError('ERR_SPIFFE_INVALID_BUNDLE', 'JWKS has no "keys" array');
    }
    const keys = new Map<string, KeyObject>();
    for (const jwk of (doc as { keys: unknown[] }).keys) {
      const a = importJwtAuthority(jwk);
      if (!a) continue;
      // Two keys under one kid would make the verifying key depend on order; refuse instead.
      if (keys.has(a.kid))
        throw new SpiffeError('ERR_SPIFFE_INVALID_BUNDLE', `JWKS repeats kid ${JSON.stringify(a.kid)}`);
      keys.set(a.kid, a.key);
    }
    return new JwtBundle(trustDomain, keys);
  }

  findJwtAuthority(kid: string): KeyObject | undefined {
    return this.keys.get(kid);
  }

  /** The standard JWKS form (no `use`), as the Workload API serves it. */
  toJwks(): { keys: JsonWebKey[] } {
    return {
      keys: [...this.keys].map(([kid, key]) => ({ ...key.export({ format: 'jwk' }), kid })),
    };
  }

  getJwtBundleForTrustDomain(td: TrustDomain): JwtBundle | undefined {
    return td.equals(this.trustDomain) ? this : undefined;
  }
}

/**
 * JWT bundles of several trust domains. A static {@link JwtBundleSource}.
 *
 * @example
 * ```ts
 * const set = new JwtBundleSet([JwtBundle.fromJwks(td, jwks)]);
 * await parseAndValidateJwtSvid(token, set, 'https://broker.example.org');
 * ```
 */
export class JwtBundleSet implements JwtBundleSource, Iterable<JwtBundle> {
  private readonly byName = new Map<string, JwtBundle>();

  constructor(bundles: Iterable<JwtBundle> = []) {
    for (const b of bundles) this.add(b);
  }

  add(bundle: JwtBundle): void {
    this.byName.set(bundle.trustDomain.name, bundle);
  }

  remove(td: TrustDomain): boolean {
    return this.byName.delete(td.name);
  }

  get(td: TrustDomain): JwtBundle | undefined {
    return this.byName.get(td.name);
  }

  has(td: TrustDomain): boolean {
    return this.byName.has(td.name);
  }

  get size(): number {
    return this.byName.size;
  }

  getJwtBundleForTrustDomain(td: TrustDomain): JwtBundle | undefined {
    return this.get(td);
  }

  [Symbol.iterator](): Iterator<JwtBundle> {
    return this.byName.values();
  }
}
