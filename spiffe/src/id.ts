// SPIFFE IDs and trust domains, exactly as SPIFFE-ID.md §2 defines them. Parsing is strict and
// byte-oriented on purpose: the WHATWG URL parser normalises (lowercases, percent-decodes, resolves
// dot segments), and an ID that only became valid after normalisation must be rejected, not fixed.
import { SpiffeError } from './errors.ts';

const SCHEME_PREFIX = 'spiffe://';
const MAX_ID_BYTES = 2048;
const MAX_TRUST_DOMAIN_BYTES = 255;

function isTrustDomainChar(c: number): boolean {
  // a-z 0-9 . _ -   (uppercase is rejected like go-spiffe, despite §2.4's case-insensitivity)
  return (c >= 0x61 && c <= 0x7a) || (c >= 0x30 && c <= 0x39) || c === 0x2e || c === 0x5f || c === 0x2d;
}

function isPathChar(c: number): boolean {
  return isTrustDomainChar(c) || (c >= 0x41 && c <= 0x5a);
}

function checkTrustDomainName(
  name: string,
  code: 'ERR_SPIFFE_INVALID_ID' | 'ERR_SPIFFE_INVALID_TRUST_DOMAIN',
) {
  if (name.length === 0) throw new SpiffeError(code, 'trust domain is missing');
  if (name.length > MAX_TRUST_DOMAIN_BYTES) {
    throw new SpiffeError(code, `trust domain is longer than ${MAX_TRUST_DOMAIN_BYTES} bytes`);
  }
  for (let i = 0; i < name.length; i++) {
    const c = name.charCodeAt(i);
    if (isTrustDomainChar(c)) continue;
    // Name the usual culprits so the message says which rule was broken.
    const what =
      c === 0x3a
        ? 'a port'
        : c === 0x40
          ? 'userinfo'
          : c === 0x25
            ? 'percent-encoding'
            : c >= 0x41 && c <= 0x5a
              ? 'uppercase letters'
              : `the character ${JSON.stringify(name[i])}`;
    throw new SpiffeError(code, `trust domain contains ${what}; only lowercase [a-z0-9._-] is allowed`);
  }
}

function checkPath(path: string): void {
  if (path === '') return;
  if (path[0] !== '/') throw new SpiffeError('ERR_SPIFFE_INVALID_ID', 'path must start with "/"');
  const segments = path.slice(1).split('/');
  for (const seg of segments) {
    if (seg === '') {
      throw new SpiffeError('ERR_SPIFFE_INVALID_ID', 'path has an empty segment or a trailing "/"');
    }
    if (seg === '.' || seg === '..') {
      throw new SpiffeError('ERR_SPIFFE_INVALID_ID', 'path has a "." or ".." segment');
    }
    for (let i = 0; i < seg.length; i++) {
      const c = seg.charCodeAt(i);
      if (isPathChar(c)) continue;
      const what =
        c === 0x25
          ? 'percent-encoding'
          : c === 0x3f
            ? 'a query'
            : c === 0x23
              ? 'a fragment'
              : `the character ${JSON.stringify(seg[i])}`;
      throw new SpiffeError('ERR_SPIFFE_INVALID_ID', `path contains ${what}; segments allow [a-zA-Z0-9._-]`);
    }
  }
}

/**
 * A SPIFFE trust domain (the authority part of a SPIFFE ID), always in its canonical lowercase form.
 *
 * @example
 * ```ts
 * const td = TrustDomain.parse('example.org');
 * td.idString(); // 'spiffe://example.org'
 * ```
 */
export class TrustDomain {
  readonly name: string;

  private constructor(name: string) {
    this.name = name;
  }

  /**
   * Parses a trust domain name (`example.org`) or the SPIFFE ID of a trust domain
   * (`spiffe://example.org`). The Workload API keys bundle maps by either form depending on the
   * implementation, so both are accepted. A SPIFFE ID with a path is refused here; use
   * {@link TrustDomain.fromIdOrName} to take the trust domain of any ID.
   *
   * @throws SpiffeError `ERR_SPIFFE_INVALID_TRUST_DOMAIN`
   */
  static parse(s: string): TrustDomain {
    if (s.includes(':') || s.includes('/')) {
      let id: SpiffeId;
      try {
        id = SpiffeId.parse(s);
      } catch (e) {
        throw new SpiffeError(
          'ERR_SPIFFE_INVALID_TRUST_DOMAIN',
          `invalid trust domain ${JSON.stringify(s)}`,
          {
            cause: e,
          },
        );
      }
      if (id.path !== '') {
        throw new SpiffeError(
          'ERR_SPIFFE_INVALID_TRUST_DOMAIN',
          `${JSON.stringify(s)} is a SPIFFE ID with a path, not a trust domain`,
        );
      }
      return id.trustDomain;
    }
    checkTrustDomainName(s, 'ERR_SPIFFE_INVALID_TRUST_DOMAIN');
    return new TrustDomain(s);
  }

  /**
   * Like go-spiffe's `TrustDomainFromString`: accepts a bare name or any SPIFFE ID (with or without a
   * path) and returns its trust domain.
   *
   * @example
   * ```ts
   * TrustDomain.fromIdOrName('spiffe://example.org/web').name; // 'example.org'
   * ```
   */
  static fromIdOrName(s: string): TrustDomain {
    if (s.startsWith(SCHEME_PREFIX) || s.includes(':')) {
      try {
        return SpiffeId.parse(s).trustDomain;
      } catch (e) {
        throw new SpiffeError(
          'ERR_SPIFFE_INVALID_TRUST_DOMAIN',
          `invalid trust domain ${JSON.stringify(s)}`,
          {
            cause: e,
          },
        );
      }
    }
    return TrustDomain.parse(s);
  }

  /** The SPIFFE ID of the trust domain itself: `spiffe://<name>`. */
  idString(): string {
    return SCHEME_PREFIX + this.name;
  }

  equals(o: TrustDomain): boolean {
    return o instanceof TrustDomain && o.name === this.name;
  }

  toString(): string {
    return this.name;
  }

  toJSON(): string {
    return this.name;
  }

  /** @internal Used by SpiffeId.parse after it has validated the name. */
  static _trusted(name: string): TrustDomain {
    return new TrustDomain(name);
  }
}

/**
 * A SPIFFE ID: `spiffe://<trust domain><path>`.
 *
 * @example
 * ```ts
 * const id = SpiffeId.parse('spiffe://example.org/agents/support');
 * id.trustDomain.name; // 'example.org'
 * id.path;             // '/agents/support'
 * ```
 */
export class SpiffeId {
  readonly trustDomain: TrustDomain;
  /** `''` for the trust domain's own ID, else `/seg(/seg)*`. */
  readonly path: string;

  private constructor(trustDomain: TrustDomain, path: string) {
    this.trustDomain = trustDomain;
    this.path = path;
  }

  /**
   * Parses and validates a SPIFFE ID string.
   *
   * @throws SpiffeError `ERR_SPIFFE_INVALID_ID`
   */
  static parse(s: string): SpiffeId {
    if (typeof s !== 'string' || s.length === 0) {
      throw new SpiffeError('ERR_SPIFFE_INVALID_ID', 'SPIFFE ID is empty');
    }
    if (Buffer.byteLength(s, 'utf8') > MAX_ID_BYTES) {
      throw new SpiffeError('ERR_SPIFFE_INVALID_ID', `SPIFFE ID is longer than ${MAX_ID_BYTES} bytes`);
    }
    if (!s.startsWith(SCHEME_PREFIX)) {
      throw new SpiffeError(
        'ERR_SPIFFE_INVALID_ID',
        'SPIFFE ID must start with "spiffe://" (lowercase scheme)',
      );
    }
    const rest = s.slice(SCHEME_PREFIX.length);
    if (rest.includes('?')) throw new SpiffeError('ERR_SPIFFE_INVALID_ID', 'SPIFFE ID must not have a query');
    if (rest.includes('#'))
      throw new SpiffeError('ERR_SPIFFE_INVALID_ID', 'SPIFFE ID must not have a fragment');
    const slash = rest.indexOf('/');
    const td = slash === -1 ? rest : rest.slice(0, slash);
    const path = slash === -1 ? '' : rest.slice(slash);
    checkTrustDomainName(td, 'ERR_SPIFFE_INVALID_ID');
    checkPath(path);
    return new SpiffeId(TrustDomain._trusted(td), path);
  }

  /**
   * Builds an ID from path segments, each validated on its own (no `/` inside a segment).
   *
   * @example
   * ```ts
   * SpiffeId.fromSegments(TrustDomain.parse('example.org'), 'agents', 'a1').toString();
   * // 'spiffe://example.org/agents/a1'
   * ```
   */
  static fromSegments(td: TrustDomain, ...segments: string[]): SpiffeId {
    for (const seg of segments) {
      if (seg.includes('/')) {
        throw new SpiffeError('ERR_SPIFFE_INVALID_ID', 'a path segment must not contain "/"');
      }
    }
    const path = segments.length === 0 ? '' : '/' + segments.join('/');
    checkPath(path);
    const id = new SpiffeId(td, path);
    if (Buffer.byteLength(id.toString(), 'utf8') > MAX_ID_BYTES) {
      throw new SpiffeError('ERR_SPIFFE_INVALID_ID', `SPIFFE ID is longer than ${MAX_ID_BYTES} bytes`);
    }
    return id;
  }

  memberOf(td: TrustDomain): boolean {
    return this.trustDomain.equals(td);
  }

  equals(o: SpiffeId): boolean {
    return o instanceof SpiffeId && o.trustDomain.equals(this.trustDomain) && o.path === this.path;
  }

  toString(): string {
    return SCHEME_PREFIX + this.trustDomain.name + this.path;
  }

  toJSON(): string {
    return this.toString();
  }
}

/** Decides whether a (validated) peer SPIFFE ID is acceptable. */
export type Matcher = (id: SpiffeId) => boolean;

/**
 * Matches every SPIFFE ID. Only for peers whose chain was already verified against their own
 * trust domain's bundle; it authorizes any workload of any trusted domain.
 *
 * @example
 * ```ts
 * const mtls = mtlsServerOptions(source, matchAny()); // every workload of every trusted domain
 * ```
 */
export function matchAny(): Matcher {
  return () => true;
}

/**
 * Matches exactly one SPIFFE ID.
 *
 * @example
 * ```ts
 * const m = matchId('spiffe://example.org/broker');
 * m(SpiffeId.parse('spiffe://example.org/broker')); // true
 * ```
 */
export function matchId(id: SpiffeId | string): Matcher {
  const want = typeof id === 'string' ? SpiffeId.parse(id) : id;
  return (got) => want.equals(got);
}

/**
 * Matches any of the given SPIFFE IDs.
 *
 * @example
 * ```ts
 * const m = matchOneOf('spiffe://example.org/a', 'spiffe://example.org/b');
 * ```
 */
export function matchOneOf(...ids: (SpiffeId | string)[]): Matcher {
  const want = new Set(ids.map((i) => (typeof i === 'string' ? SpiffeId.parse(i) : i).toString()));
  return (got) => want.has(got.toString());
}

/**
 * Matches any SPIFFE ID in the trust domain.
 *
 * @example
 * ```ts
 * const m = matchMemberOf('example.org');
 * m(SpiffeId.parse('spiffe://example.org/anything')); // true
 * ```
 */
export function matchMemberOf(td: TrustDomain | string): Matcher {
  const want = typeof td === 'string' ? TrustDomain.parse(td) : td;
  return (got) => got.memberOf(want);
}
