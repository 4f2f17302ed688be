// The SPIFFE bundle format (SPIFFE_Trust_Domain_and_Bundle.md §4): a JWK Set whose keys carry
// `use: x509-svid` (one CA in x5c) or `use: jwt-svid` (with kid), plus spiffe_sequence and
// spiffe_refresh_hint. This is what federation endpoints and `spire-server bundle show -format
// spiffe` exchange; the Workload API uses plain DER and a standard JWKS instead.
import { type JsonWebKey, type KeyObject, X509Certificate } from 'node:crypto';
import { SpiffeError } from '../errors.ts';
import type { TrustDomain } from '../id.ts';
import { splitDer } from '../internal/der.ts';
import { importJwtAuthority, JwtBundle, parseJsonInput } from './jwt.ts';
import { X509Bundle } from './x509.ts';

export interface SpiffeBundleJwk extends JsonWebKey {
  use: 'x509-svid' | 'jwt-svid';
  kid?: string;
  x5c?: string[];
}

export interface SpiffeBundleDocument {
  keys: SpiffeBundleJwk[];
  spiffe_sequence?: number;
  spiffe_refresh_hint?: number;
}

/**
 * Both kinds of authorities of one trust domain, with the bundle's sequence number and refresh hint.
 *
 * @example
 * ```ts
 * const b = SpiffeBundle.parse(TrustDomain.parse('partner.org'), await res.text());
 * x509Set.add(b.x509Bundle);
 * jwtSet.add(b.jwtBundle);
 * ```
 */
export class SpiffeBundle {
  readonly trustDomain: TrustDomain;
  readonly x509Bundle: X509Bundle;
  readonly jwtBundle: JwtBundle;
  readonly sequenceNumber: number | undefined;
  /** Seconds, as published in `spiffe_refresh_hint`. */
  readonly refreshHintSec: number | undefined;

  constructor(
    trustDomain: TrustDomain,
    opts: {
      x509Authorities?: readonly X509Certificate[];
      jwtAuthorities?: Iterable<readonly [string, KeyObject]>;
      sequenceNumber?: number;
      refreshHintSec?: number;
    } = {},
  ) {
    this.trustDomain = trustDomain;
    this.x509Bundle = new X509Bundle(trustDomain, opts.x509Authorities ?? []);
    this.jwtBundle = new JwtBundle(trustDomain, opts.jwtAuthorities ?? []);
    this.sequenceNumber = opts.sequenceNumber;
    this.refreshHintSec = opts.refreshHintSec;
  }

  /**
   * Parses a SPIFFE bundle document. Keys with an unknown `use` (or none) or an unknown `kty` are
   * ignored, as §4 requires; an `x509-svid` key must have exactly one certificate in `x5c`, and a
   * `jwt-svid` key must have a `kid`. An empty `keys` list is valid: it means "trust nothing".
   *
   * @throws SpiffeError `ERR_SPIFFE_INVALID_BUNDLE`
   */
  static parse(trustDomain: TrustDomain, json: string | Uint8Array | object): SpiffeBundle {
    const doc = parseJsonInput(json);
    if (typeof doc !== 'object' || doc === null || !Array.isArray((doc as { keys?: unknown }).keys)) {
      throw new SpiffeError('ERR_SPIFFE_INVALID_BUNDLE', 'SPIFFE bundle has no "keys" array');
    }
    const d = doc as { keys: unknown[]; spiffe_sequence?: unknown; spiffe_refresh_hint?: unknown };
    const x509: X509Certificate[] = [];
    const jwt = new Map<string, KeyObject>();
    for (const key of d.keys) {
      if (typeof key !== 'object' || key === null) {
        throw new SpiffeError('ERR_SPIFFE_INVALID_BUNDLE', 'a SPIFFE bundle key is not an object');
      }
      const k = key as Record<string, unknown>;
      if (k.use === 'x509-svid') {
        x509.push(parseX509Key(k));
      } else if (k.use === 'jwt-svid') {
        const a = importJwtAuthority(k);
        if (!a) continue;
        if (jwt.has(a.kid)) {
          throw new SpiffeError(
            'ERR_SPIFFE_INVALID_BUNDLE',
            `SPIFFE bundle repeats kid ${JSON.stringify(a.kid)}`,
          );
        }
        jwt.set(a.kid, a.key);
      }
    }
    return new SpiffeBundle(trustDomain, {
      x509Authorities: x509,
      jwtAuthorities: jwt,
      sequenceNumber: optionalInt(d.spiffe_sequence, 'spiffe_sequence'),
      refreshHintSec: optionalInt(d.spiffe_refresh_hint, 'spiffe_refresh_hint'),
    });
  }

  /** The SPIFFE bundle document (JSON-ready). */
  toDocument(): SpiffeBundleDocument {
    const keys: SpiffeBundleJwk[] = [];
    for (const cert of this.x509Bundle.authorities) {
      keys.push({
        ...cert.publicKey.export({ format: 'jwk' }),
        use: 'x509-svid',
        x5c: [cert.raw.toString('base64')],
      });
    }
    for (const [kid, key] of this.jwtBundle.keys) {
      keys.push({ ...key.export({ format: 'jwk' }), use: 'jwt-svid', kid });
    }
    const out: SpiffeBundleDocument = { keys };
    if (this.sequenceNumber !== undefined) out.spiffe_sequence = this.sequenceNumber;
    if (this.refreshHintSec !== undefined) out.spiffe_refresh_hint = this.refreshHintSec;
    return out;
  }

  /** Serialized SPIFFE bundle JSON. */
  marshal(): string {
    return JSON.stringify(this.toDocument());
  }
}

function parseX509Key(k: Record<string, unknown>): X509Certificate {
  const x5c = k.x5c;
  if (!Array.isArray(x5c) || x5c.length !== 1 || typeof x5c[0] !== 'string') {
    throw new SpiffeError(
      'ERR_SPIFFE_INVALID_BUNDLE',
      'an x509-svid key must have exactly one certificate in x5c',
    );
  }
  const der = Buffer.from(x5c[0], 'base64');
  const parts = splitDer(der, 'ERR_SPIFFE_INVALID_BUNDLE');
  if (parts.length !== 1) {
    throw new SpiffeError(
      'ERR_SPIFFE_INVALID_BUNDLE',
      'an x509-svid x5c entry must hold exactly one certificate',
    );
  }
  try {
    return new X509Certificate(parts[0]!);
  } catch (e) {
    throw new SpiffeError('ERR_SPIFFE_INVALID_BUNDLE', 'x509-svid key holds an unparseable certificate', {
      cause: e,
    });
  }
}

function optionalInt(v: unknown, name: string): number | undefined {
  if (v === undefined) return undefined;
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0) {
    throw new SpiffeError('ERR_SPIFFE_INVALID_BUNDLE', `${name} must be a non-negative integer`);
  }
  return v;
}
