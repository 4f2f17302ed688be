// JWT-SVIDs (JWT-SVID.md): strict header and claim rules on top of jose's signature check. The key
// is chosen only from the bundle of the trust domain named by `sub`, by `kid`; jku/x5u/jwk
// headers are never followed.
import { inspect } from 'node:util';
import { compactVerify, decodeJwt, decodeProtectedHeader, errors as joseErrors } from 'jose';
import type { JwtBundleSource } from '../bundle/jwt.ts';
import { SpiffeError } from '../errors.ts';
import { SpiffeId } from '../id.ts';

/** JWT-SVID.md §2: RS, ES and PS with SHA-256/384/512. Nothing else (no none, HS*, EdDSA). */
export const JWT_SVID_ALGORITHMS = [
  'RS256',
  'RS384',
  'RS512',
  'ES256',
  'ES384',
  'ES512',
  'PS256',
  'PS384',
  'PS512',
] as const;

const ALLOWED_ALGS = new Set<string>(JWT_SVID_ALGORITHMS);
/** go-jose's default leeway, used by SPIRE and go-spiffe. */
const DEFAULT_CLOCK_TOLERANCE_SEC = 60;

/**
 * A JWT-SVID whose claims passed the JWT-SVID.md rules. The token is a bearer credential:
 * `toJSON()`, `toString()` and `util.inspect` show only the ID, audience, expiry and hint.
 *
 * @example
 * ```ts
 * const svid = await parseAndValidateJwtSvid(token, bundles, 'https://broker.example.org');
 * log.info({ svid }, 'caller'); // { id, audience, expiresAt } — never the token
 * ```
 */
export class JwtSvid {
  readonly id: SpiffeId;
  readonly audience: string[];
  readonly expiresAt: Date;
  readonly claims: Record<string, unknown>;
  readonly hint: string | undefined;
  readonly #token: string;

  /** @internal Use {@link parseAndValidateJwtSvid} or {@link parseInsecureJwtSvid}. */
  constructor(token: string, id: SpiffeId, claims: Record<string, unknown>, hint?: string) {
    this.#token = token;
    this.id = id;
    this.claims = Object.freeze({ ...claims });
    this.audience = typeof claims.aud === 'string' ? [claims.aud] : [...(claims.aud as string[])];
    this.expiresAt = new Date((claims.exp as number) * 1000);
    this.hint = hint === '' ? undefined : hint;
  }

  /** The compact JWS. A getter over a private field, so spreading or inspecting the SVID skips it. */
  get token(): string {
    return this.#token;
  }

  toJSON(): { id: string; audience: string[]; expiresAt: string; hint?: string } {
    const out: { id: string; audience: string[]; expiresAt: string; hint?: string } = {
      id: this.id.toString(),
      audience: this.audience,
      expiresAt: this.expiresAt.toISOString(),
    };
    if (this.hint !== undefined) out.hint = this.hint;
    return out;
  }

  toString(): string {
    return `JwtSvid(${this.id.toString()}, expires ${this.expiresAt.toISOString()})`;
  }

  [inspect.custom](): string {
    return `JwtSvid ${JSON.stringify(this.toJSON())}`;
  }
}

export interface ValidateJwtSvidOptions {
  /** Leeway for `exp` and `nbf`, in seconds. Default 60 (go-jose's, as SPIRE uses). */
  clockToleranceSec?: number;
  /** Validation time; defaults to now. */
  now?: Date;
}

function invalid(message: string, cause?: unknown): SpiffeError {
  return new SpiffeError('ERR_SPIFFE_INVALID_JWT_SVID', message, cause === undefined ? undefined : { cause });
}

interface Unverified {
  id: SpiffeId;
  kid: string | undefined;
  claims: Record<string, unknown>;
}

/** Header and claim rules that need no key. */
function inspectToken(token: string, requireKid: boolean): Unverified {
  if (typeof token !== 'string' || token.split('.').length !== 3) {
    throw invalid('a JWT-SVID must be a JWS in compact serialization (three dot-separated parts)');
  }
  let header: ReturnType<typeof decodeProtectedHeader>;
  let claims: Record<string, unknown>;
  try {
    header = decodeProtectedHeader(token);
    claims = decodeJwt(token) as Record<string, unknown>;
  } catch (e) {
    throw invalid('malformed JWT-SVID', e);
  }
  if (typeof header.alg !== 'string' || !ALLOWED_ALGS.has(header.alg)) {
    throw invalid(`JWT-SVID alg ${JSON.stringify(header.alg)} is not allowed (RS/ES/PS 256/384/512 only)`);
  }
  if (header.typ !== undefined && header.typ !== 'JWT' && header.typ !== 'JOSE') {
    throw invalid(`JWT-SVID typ ${JSON.stringify(header.typ)} is not allowed (JWT or JOSE)`);
  }
  const kid = header.kid;
  if (kid !== undefined && (typeof kid !== 'string' || kid === ''))
    throw invalid('JWT-SVID kid is not a string');
  if (requireKid && kid === undefined) {
    // JWT-SVID.md makes kid optional, but SPIRE and go-spiffe require it: without it the key
    // would have to be guessed among the trust domain's keys.
    throw invalid('JWT-SVID has no kid header');
  }
  if (typeof claims.sub !== 'string' || claims.sub === '') throw invalid('JWT-SVID has no sub claim');
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(claims.sub);
  } catch (e) {
    throw invalid('JWT-SVID sub is not a valid SPIFFE ID', e);
  }
  const aud = claims.aud;
  const audOk =
    (typeof aud === 'string' && aud !== '') ||
    (Array.isArray(aud) && aud.length > 0 && aud.every((a) => typeof a === 'string'));
  if (!audOk) throw invalid('JWT-SVID has no aud claim');
  if (typeof claims.exp !== 'number' || !Number.isFinite(claims.exp))
    throw invalid('JWT-SVID has no exp claim');
  if (claims.nbf !== undefined && (typeof claims.nbf !== 'number' || !Number.isFinite(claims.nbf))) {
    throw invalid('JWT-SVID nbf is not a number');
  }
  return { id, kid, claims };
}

function checkTimeAndAudience(
  claims: Record<string, unknown>,
  expected: string | readonly string[],
  opts: ValidateJwtSvidOptions,
): void {
  const nowSec = (opts.now ?? new Date()).getTime() / 1000;
  const leeway = opts.clockToleranceSec ?? DEFAULT_CLOCK_TOLERANCE_SEC;
  if ((claims.exp as number) + leeway < nowSec) {
    throw new SpiffeError('ERR_SPIFFE_JWT_EXPIRED', 'JWT-SVID has expired');
  }
  if (typeof claims.nbf === 'number' && claims.nbf - leeway > nowSec) {
    throw invalid('JWT-SVID is not valid yet (nbf)');
  }
  const want = typeof expected === 'string' ? [expected] : [...expected];
  if (want.length === 0 || want.some((w) => typeof w !== 'string' || w === '')) {
    // An empty expectation would accept every audience (go-jose's behaviour); refuse it instead.
    throw new SpiffeError('ERR_SPIFFE_JWT_AUDIENCE', 'no expected audience given');
  }
  const have = typeof claims.aud === 'string' ? [claims.aud] : (claims.aud as string[]);
  if (!want.some((w) => have.includes(w))) {
    throw new SpiffeError(
      'ERR_SPIFFE_JWT_AUDIENCE',
      `JWT-SVID audience does not include ${JSON.stringify(want)}`,
    );
  }
}

/**
 * Validates a JWT-SVID: header rules (alg allow-list, typ, kid required), claim rules (sub is a
 * SPIFFE ID, aud present and containing one of `audience`, exp present and not past), and the
 * signature with the key named by `kid` in the bundle of `sub`'s trust domain.
 *
 * @example
 * ```ts
 * const svid = await parseAndValidateJwtSvid(bearer, jwtBundles, 'https://broker.example.org');
 * svid.id.toString(); // 'spiffe://example.org/agents/a1'
 * ```
 * @param audience the audience expected; with several, any one of them suffices.
 * @throws SpiffeError `ERR_SPIFFE_INVALID_JWT_SVID`, `ERR_SPIFFE_NO_BUNDLE`,
 *   `ERR_SPIFFE_JWT_VERIFY_FAILED`, `ERR_SPIFFE_JWT_EXPIRED`, `ERR_SPIFFE_JWT_AUDIENCE`
 */
export async function parseAndValidateJwtSvid(
  token: string,
  bundles: JwtBundleSource,
  audience: string | readonly string[],
  opts: ValidateJwtSvidOptions = {},
): Promise<JwtSvid> {
  const { id, kid, claims } = inspectToken(token, true);
  const bundle = bundles.getJwtBundleForTrustDomain(id.trustDomain);
  if (!bundle) {
    throw new SpiffeError('ERR_SPIFFE_NO_BUNDLE', `no JWT bundle for trust domain ${id.trustDomain.name}`);
  }
  const key = bundle.findJwtAuthority(kid!);
  if (!key) {
    throw new SpiffeError(
      'ERR_SPIFFE_JWT_VERIFY_FAILED',
      `no JWT authority with kid ${JSON.stringify(kid)} in trust domain ${id.trustDomain.name}`,
    );
  }
  try {
    await compactVerify(token, key, { algorithms: [...JWT_SVID_ALGORITHMS] });
  } catch (e) {
    // Node 22+ turns the KeyObject into a CryptoKey for the header's alg (KeyObject.toCryptoKey),
    // and a key that does not fit that alg (RS256 on an EC key) fails there with a WebCrypto
    // DOMException (DataError); Node 20 has no toCryptoKey and jose throws a TypeError instead.
    if (e instanceof joseErrors.JOSEError || e instanceof TypeError || e instanceof DOMException) {
      throw new SpiffeError('ERR_SPIFFE_JWT_VERIFY_FAILED', 'JWT-SVID signature does not verify', {
        cause: e,
      });
    }
    throw e;
  }
  checkTimeAndAudience(claims, audience, opts);
  return new JwtSvid(token, id, claims);
}

/**
 * Parses a JWT-SVID **without** checking its signature, for tokens that came from the Workload
 * API itself (to read the ID and expiry of our own SVID). The header and claim rules, expiry and
 * audience are still checked. Never use it on a token received from a peer.
 *
 * @example
 * ```ts
 * const mine = parseInsecureJwtSvid(resp.svids[0].svid, ['https://broker.example.org'], { hint: resp.svids[0].hint });
 * ```
 * @throws SpiffeError `ERR_SPIFFE_INVALID_JWT_SVID`, `ERR_SPIFFE_JWT_EXPIRED`, `ERR_SPIFFE_JWT_AUDIENCE`
 */
export function parseInsecureJwtSvid(
  token: string,
  audience: string | readonly string[],
  opts: ValidateJwtSvidOptions & { hint?: string } = {},
): JwtSvid {
  const { id, claims } = inspectToken(token, false);
  checkTimeAndAudience(claims, audience, opts);
  return new JwtSvid(token, id, claims, opts.hint);
}
