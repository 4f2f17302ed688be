// Verification of the delegating user's token (an OIDC ID token or any JWT from a configured trusted
// issuer). The issuer is chosen by the token's unverified `iss`, then everything is checked against
// that issuer's own configuration: pinned algorithms, issuer, audience, required exp/sub, small
// clock tolerance, keys only from the configured JWKS (jku/x5u/jwk headers are never followed).
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  decodeJwt,
  type JSONWebKeySet,
  type JWTPayload,
  type JWTVerifyGetKey,
  jwtVerify,
} from 'jose';
import type { TrustedIssuerConfig } from './config.ts';
import { BrokerError } from './errors.ts';

/** A verified user token. */
export interface VerifiedUser {
  iss: string;
  sub: string;
  /** Every claim of the verified token (templates match on groups, roles, email, ...). */
  claims: Record<string, unknown>;
  /** Epoch seconds. */
  exp: number;
}

/** Verifies user tokens; throws TASKPASS_USER_TOKEN_INVALID. */
export interface UserTokenVerifier {
  verify(token: string): Promise<VerifiedUser>;
}

type FetchLike = (
  url: string,
  init?: { signal?: AbortSignal },
) => Promise<{ ok: boolean; status: number; json(): Promise<unknown> }>;

const invalid = (message: string, cause?: unknown): BrokerError =>
  new BrokerError('TASKPASS_USER_TOKEN_INVALID', message, undefined, cause ? { cause } : undefined);

/** Claims copied into the task (and so into the store) — never the raw token. */
const DROPPED_CLAIMS = new Set(['at_hash', 'c_hash', 'nonce', 'sid']);

/**
 * Creates a verifier for the configured trusted issuers.
 * `discovery: true` fetches `<issuer>/.well-known/openid-configuration`, checks its `issuer`, and uses
 * its `jwks_uri`; `jwksUri` uses a remote JWKS (cached and refreshed by jose); `jwks` is static.
 */
export function createUserTokenVerifier(
  issuers: readonly TrustedIssuerConfig[],
  opts: { now?: () => number; fetch?: FetchLike } = {},
): UserTokenVerifier {
  const doFetch: FetchLike = opts.fetch ?? ((url, init) => fetch(url, init));
  const byIssuer = new Map<string, { cfg: TrustedIssuerConfig; keys: () => Promise<JWTVerifyGetKey> }>();
  for (const cfg of issuers) {
    let cached: Promise<JWTVerifyGetKey> | undefined;
    const keys = (): Promise<JWTVerifyGetKey> => {
      if (cached) return cached;
      if (cfg.jwks) {
        cached = Promise.resolve(createLocalJWKSet(cfg.jwks as JSONWebKeySet));
      } else if (cfg.jwksUri) {
        cached = Promise.resolve(createRemoteJWKSet(new URL(cfg.jwksUri)));
      } else {
        cached = (async () => {
          const url = `${cfg.issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
          const res = await doFetch(url, { signal: AbortSignal.timeout(5000) });
          if (!res.ok) throw new Error(`discovery ${url} answered ${res.status}`);
          const meta = (await res.json()) as { issuer?: unknown; jwks_uri?: unknown };
          if (meta.issuer !== cfg.issuer) throw new Error(`discovery issuer mismatch at ${url}`);
          if (typeof meta.jwks_uri !== 'string' || !/^https?:\/\//.test(meta.jwks_uri)) {
            throw new Error(`discovery at ${url} has no jwks_uri`);
          }
          return createRemoteJWKSet(new URL(meta.jwks_uri));
        })();
        // A failed discovery is retried on the next token, not cached forever.
        cached.catch(() => {
          cached = undefined;
        });
      }
      return cached;
    };
    byIssuer.set(cfg.issuer, { cfg, keys });
  }

  return {
    async verify(token) {
      let iss: unknown;
      try {
        iss = decodeJwt(token).iss;
      } catch (e) {
        throw invalid('the user token is not a JWT', e);
      }
      const entry = typeof iss === 'string' ? byIssuer.get(iss) : undefined;
      if (!entry) throw invalid('the user token issuer is not trusted');
      const { cfg } = entry;
      let getKey: JWTVerifyGetKey;
      try {
        getKey = await entry.keys();
      } catch (e) {
        throw invalid('the keys of the user token issuer are unavailable', e);
      }
      let payload: JWTPayload;
      try {
        ({ payload } = await jwtVerify(token, getKey, {
          issuer: cfg.issuer,
          audience: cfg.audience,
          algorithms: [...cfg.algorithms],
          clockTolerance: cfg.clockToleranceSec,
          requiredClaims: ['exp', 'sub', 'iss'],
          ...(opts.now ? { currentDate: new Date(opts.now()) } : {}),
        }));
      } catch (e) {
        const code = (e as { code?: string }).code;
        const why =
          code === 'ERR_JWT_EXPIRED'
            ? 'expired'
            : code === 'ERR_JWT_CLAIM_VALIDATION_FAILED'
              ? `claim check failed (${(e as { claim?: string }).claim ?? 'unknown'})`
              : code === 'ERR_JOSE_ALG_NOT_ALLOWED'
                ? 'algorithm not allowed'
                : 'signature or format invalid';
        throw invalid(`the user token is invalid: ${why}`, e);
      }
      if (typeof payload.sub !== 'string' || payload.sub.length === 0 || payload.sub.length > 255) {
        throw invalid('the user token has no usable sub');
      }
      const claims: Record<string, unknown> = {};
      for (const [k, v] of Object.entries(payload)) if (!DROPPED_CLAIMS.has(k)) claims[k] = v;
      return { iss: cfg.issuer, sub: payload.sub, claims, exp: payload.exp! };
    },
  };
}
