// The console's sign-in (docs/console.md): OpenID Connect authorization code flow with PKCE (S256),
// `state` bound to the browser by a cookie and `nonce` bound to the ID token. The ID token is
// verified with jose against the issuer's JWKS (from discovery; pinned algorithms, issuer, audience
// = our client id, expiry, nonce), like user tokens are (user-tokens.ts): keys only from the
// configured issuer, never from the token's headers.
import { createHash, randomBytes } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { createRemoteJWKSet, type JWTPayload, type JWTVerifyGetKey, jwtVerify } from 'jose';
import type { BrokerConfig } from '../config.ts';
import { BrokerError } from '../errors.ts';

type ConsoleConfig = NonNullable<BrokerConfig['console']>;

/** What discovery tells us about the issuer. */
interface IssuerMetadata {
  authorizationEndpoint: string;
  tokenEndpoint: string;
  jwks: JWTVerifyGetKey;
}

/** A sign-in in progress: kept server-side under the hash of `state` until the callback. */
export interface LoginState {
  nonce: string;
  verifier: string;
  /** Where to go after sign-in (a path under /console). */
  returnTo: string;
}

/** The verified person behind a console session. */
export interface ConsoleIdentity {
  iss: string;
  sub: string;
  /** The ID token's claims (nonce and hashes dropped): roles and approvers: match on them. */
  claims: Record<string, unknown>;
  /** Epoch seconds: the ID token's expiry. */
  exp: number;
}

const b64u = (b: Buffer): string => b.toString('base64url');
/** 256 random bits, base64url. */
export const randomToken = (): string => b64u(randomBytes(32));
/** The PKCE S256 challenge of a verifier (RFC 7636). */
export const pkceChallenge = (verifier: string): string =>
  b64u(createHash('sha256').update(verifier).digest());

const signInFailed = (message: string, cause?: unknown): BrokerError =>
  new BrokerError('TASKPASS_CONSOLE_SIGNIN_FAILED', message, undefined, cause ? { cause } : undefined);

const DROPPED = new Set(['nonce', 'at_hash', 'c_hash', 'sid', 'auth_time']);

/** The OIDC relying party of the console. */
export class OidcClient {
  readonly #cfg: ConsoleConfig;
  readonly #redirectUri: string;
  readonly #secret: string | undefined;
  readonly #now: () => number;
  #meta: Promise<IssuerMetadata> | undefined;

  constructor(cfg: ConsoleConfig, opts: { now?: () => number } = {}) {
    this.#cfg = cfg;
    this.#redirectUri = new URL(cfg.oidc.redirectPath, cfg.publicUrl).toString();
    // Read once at start-up: a missing secret file fails the start, not the first sign-in.
    this.#secret = cfg.oidc.clientSecretFile
      ? readFileSync(cfg.oidc.clientSecretFile, 'utf8').trim()
      : undefined;
    this.#now = opts.now ?? Date.now;
  }

  get redirectUri(): string {
    return this.#redirectUri;
  }

  #metadata(): Promise<IssuerMetadata> {
    this.#meta ??= (async () => {
      const issuer = this.#cfg.oidc.issuer;
      const url =
        this.#cfg.oidc.discoveryUrl ?? `${issuer.replace(/\/$/, '')}/.well-known/openid-configuration`;
      const res = await fetch(url, { signal: AbortSignal.timeout(5000) });
      if (!res.ok) throw new Error(`discovery ${url} answered ${res.status}`);
      const m = (await res.json()) as Record<string, unknown>;
      if (m.issuer !== issuer) throw new Error(`discovery at ${url} names another issuer`);
      const urlField = (k: string): string => {
        const v = m[k];
        if (typeof v !== 'string' || !/^https?:\/\//.test(v))
          throw new Error(`discovery at ${url} has no ${k}`);
        return v;
      };
      const methods = m.code_challenge_methods_supported;
      if (Array.isArray(methods) && !methods.includes('S256')) {
        throw new Error(`the issuer does not support PKCE S256 (${url})`);
      }
      return {
        authorizationEndpoint: urlField('authorization_endpoint'),
        tokenEndpoint: urlField('token_endpoint'),
        jwks: createRemoteJWKSet(new URL(urlField('jwks_uri'))),
      };
    })();
    // A failed discovery is retried on the next sign-in.
    this.#meta.catch(() => {
      this.#meta = undefined;
    });
    return this.#meta;
  }

  /** Starts a sign-in: the state to keep and the URL to send the browser to. */
  async begin(returnTo: string): Promise<{ state: string; login: LoginState; url: string }> {
    let meta: IssuerMetadata;
    try {
      meta = await this.#metadata();
    } catch (e) {
      throw signInFailed('the identity provider cannot be reached', e);
    }
    const state = randomToken();
    const login: LoginState = { nonce: randomToken(), verifier: randomToken(), returnTo };
    const url = new URL(meta.authorizationEndpoint);
    url.search = new URLSearchParams({
      response_type: 'code',
      client_id: this.#cfg.oidc.clientId,
      redirect_uri: this.#redirectUri,
      scope: this.#cfg.oidc.scopes.join(' '),
      state,
      nonce: login.nonce,
      code_challenge: pkceChallenge(login.verifier),
      code_challenge_method: 'S256',
    }).toString();
    return { state, login, url: url.toString() };
  }

  /** Redeems the code (with the PKCE verifier) and verifies the ID token. */
  async finish(code: string, login: LoginState): Promise<ConsoleIdentity> {
    let meta: IssuerMetadata;
    try {
      meta = await this.#metadata();
    } catch (e) {
      throw signInFailed('the identity provider cannot be reached', e);
    }
    const form = new URLSearchParams({
      grant_type: 'authorization_code',
      code,
      redirect_uri: this.#redirectUri,
      code_verifier: login.verifier,
      client_id: this.#cfg.oidc.clientId,
    });
    const headers: Record<string, string> = {
      'content-type': 'application/x-www-form-urlencoded',
      accept: 'application/json',
    };
    if (this.#secret !== undefined) {
      // client_secret_basic (RFC 6749 §2.3.1): both parts form-encoded before base64.
      const enc = (s: string) => encodeURIComponent(s).replace(/%20/g, '+');
      headers.authorization = `Basic ${Buffer.from(`${enc(this.#cfg.oidc.clientId)}:${enc(this.#secret)}`).toString('base64')}`;
    }
    let body: Record<string, unknown>;
    try {
      const res = await fetch(meta.tokenEndpoint, {
        method: 'POST',
        headers,
        body: form.toString(),
        signal: AbortSignal.timeout(10_000),
      });
      body = (await res.json()) as Record<string, unknown>;
      if (!res.ok) {
        const why = typeof body.error === 'string' ? body.error.slice(0, 64) : `HTTP ${res.status}`;
        throw new Error(`token endpoint refused the code: ${why}`);
      }
    } catch (e) {
      throw signInFailed('the identity provider did not redeem the sign-in code', e);
    }
    if (typeof body.id_token !== 'string') throw signInFailed('the identity provider returned no ID token');
    let payload: JWTPayload;
    try {
      ({ payload } = await jwtVerify(body.id_token, meta.jwks, {
        issuer: this.#cfg.oidc.issuer,
        audience: this.#cfg.oidc.clientId,
        algorithms: [...this.#cfg.oidc.algorithms],
        clockTolerance: this.#cfg.oidc.clockToleranceSec,
        requiredClaims: ['exp', 'iat', 'sub', 'iss', 'nonce'],
        currentDate: new Date(this.#now()),
      }));
    } catch (e) {
      throw signInFailed('the ID token is invalid', e);
    }
    if (payload.nonce !== login.nonce)
      throw signInFailed('the ID token does not answer this sign-in (nonce)');
    // A token for several audiences must name us as its authorized party (OIDC Core 3.1.3.7).
    if (Array.isArray(payload.aud) && payload.aud.length > 1 && payload.azp !== this.#cfg.oidc.clientId) {
      throw signInFailed('the ID token was issued to another party (azp)');
    }
    if (typeof payload.sub !== 'string' || !payload.sub || payload.sub.length > 255) {
      throw signInFailed('the ID token has no usable sub');
    }
    if (payload.sub.startsWith('spiffe://')) throw signInFailed('a workload identity cannot sign in');
    const claims: Record<string, unknown> = {};
    for (const [k, v] of Object.entries(payload)) if (!DROPPED.has(k)) claims[k] = v;
    return { iss: this.#cfg.oidc.issuer, sub: payload.sub, claims, exp: payload.exp ?? 0 };
  }
}
