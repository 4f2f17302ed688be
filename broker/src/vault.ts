// The broker's one Vault client (node-vault underneath), used by the Transit signer and by leased
// downstream credentials. It logs in as the workload it is — Vault's JWT auth method with the
// broker's JWT-SVID, or TLS cert auth with its X.509-SVID — or, for development only, with a static
// token; it renews its token before it expires (logging in again when renewal is refused or the
// token reached its max TTL), and keeps connections to Vault alive.
//
// Every failure to reach Vault (connection refused, timeout, sealed, 5xx) is a VaultUnavailableError,
// so callers can fail closed with their own code; a refusal (4xx) is a VaultRequestError.
import { Agent as HttpAgent } from 'node:http';
import { Agent as HttpsAgent } from 'node:https';
import nodeVault from 'node-vault';
import type { Logger } from 'pino';

/** How the broker authenticates to Vault. */
export type VaultAuth =
  | {
      /** Vault's JWT auth method with the broker's JWT-SVID (role bound to its SPIFFE ID). */
      method: 'jwt';
      role: string;
      /** Mount of the JWT auth method (default `jwt`). */
      mount?: string;
      /** Fetches a fresh JWT-SVID for the role's bound audience (the broker's Workload API). */
      jwtSvid: () => Promise<string>;
    }
  | {
      /** TLS cert auth with the broker's X.509-SVID (`tls.cert`, read at every login). */
      method: 'cert';
      /** Name of the cert role (optional: Vault tries every role otherwise). */
      name?: string;
      mount?: string;
    }
  | {
      /** A static token: development only (never renewed by login; renewed if renewable). */
      method: 'token';
      token: string;
    };

/** Options of {@link VaultClient.connect}. */
export interface VaultClientOptions {
  /** e.g. `https://vault.internal:8200`. */
  address: string;
  auth: VaultAuth;
  /** TLS to Vault: the CA to trust, and for cert auth the current X.509-SVID (chain and key). PEM. */
  tls?: { ca?: string; cert?: () => { cert: string; key: string } };
  /** Bound of every call to Vault, ms (default 5000). */
  timeoutMs?: number;
  /** Vault namespace (Enterprise / OpenBao), optional. */
  namespace?: string;
  logger?: Logger;
}

/** Vault could not be reached or cannot serve (down, sealed, timeout, 5xx). */
export class VaultUnavailableError extends Error {
  override readonly name = 'VaultUnavailableError';
}

/** Vault answered with a refusal (4xx other than an expired token, which is retried after login). */
export class VaultRequestError extends Error {
  override readonly name = 'VaultRequestError';
  constructor(
    message: string,
    readonly status: number,
  ) {
    super(message);
  }
}

interface VaultAuthInfo {
  client_token: string;
  lease_duration: number;
  renewable: boolean;
}

/** A Vault response body (`data` for reads, `auth` for logins, `lease_id` for leased secrets). */
/** What {@link VaultClient.health} found. */
export interface VaultHealth {
  state: 'up' | 'sealed' | 'down';
  reason?: string;
}

export interface VaultResponse {
  data?: Record<string, unknown>;
  auth?: VaultAuthInfo;
  lease_id?: string;
  lease_duration?: number;
  renewable?: boolean;
}

type NodeVault = ReturnType<typeof nodeVault>;

/** Renew when this fraction of the token's lease has passed. */
const RENEW_AT = 2 / 3;

function statusOf(err: unknown): number | undefined {
  const r = (err as { response?: { statusCode?: unknown } }).response;
  return typeof r?.statusCode === 'number' ? r.statusCode : undefined;
}

function isStaleConnection(err: unknown): boolean {
  const code = (err as { code?: unknown }).code;
  return code === 'ECONNRESET' || code === 'EPIPE' || /socket hang up/i.test((err as Error).message ?? '');
}

/** Maps a node-vault failure onto the two kinds callers tell apart. Messages carry no secrets. */
function classify(err: unknown, what: string): Error {
  const status = statusOf(err);
  const msg = err instanceof Error ? err.message : String(err);
  if (status === undefined || status >= 500 || status === 429) {
    return new VaultUnavailableError(`vault ${what}: ${status ? `HTTP ${status} ` : ''}${msg}`, {
      cause: err,
    });
  }
  return new VaultRequestError(`vault ${what}: HTTP ${status} ${msg}`, status);
}

/**
 * An authenticated Vault client. `read`, `write` and `revokeLease` throw VaultUnavailableError or
 * VaultRequestError; a call refused because the token expired logs in again and is retried once.
 *
 * @example
 * ```ts
 * const vault = await VaultClient.connect({
 *   address: 'https://vault:8200',
 *   auth: { method: 'jwt', role: 'taskpass-broker', jwtSvid: () => jwt.fetchJwtSvid({ audience: 'vault' }).then((s) => s.token) },
 * });
 * const key = await vault.read('transit/keys/taskpass');
 * ```
 */
export class VaultClient {
  readonly #opts: VaultClientOptions;
  readonly #vault: NodeVault;
  readonly #log: Logger | undefined;
  #timer: NodeJS.Timeout | undefined;
  #loggingIn: Promise<void> | undefined;
  #closed = false;
  readonly #agents: [HttpAgent, HttpsAgent];
  /** The token's expiry (epoch ms), when known. */
  #expiresAt = Number.POSITIVE_INFINITY;

  private constructor(opts: VaultClientOptions) {
    this.#opts = opts;
    this.#log = opts.logger;
    const timeout = opts.timeoutMs ?? 5000;
    // Kept-alive agents: signing and lease calls reuse their connections. They carry no client
    // certificate: only a cert-auth login presents one (the SVID current at that login, below).
    const agentOptions = { keepAlive: true, ...(opts.tls?.ca ? { ca: opts.tls.ca } : {}) };
    this.#agents = [new HttpAgent({ keepAlive: true }), new HttpsAgent(agentOptions)];
    this.#vault = nodeVault({
      endpoint: opts.address.replace(/\/+$/, ''),
      ...(opts.namespace ? { namespace: opts.namespace } : {}),
      ...(opts.auth.method === 'token' ? { token: opts.auth.token } : {}),
      requestOptions: {
        timeout,
        httpAgent: this.#agents[0],
        httpsAgent: this.#agents[1],
        agentOptions,
      },
    });
  }

  /** Logs in (or checks the static token) and starts renewal. Throws when Vault refuses or is down. */
  static async connect(opts: VaultClientOptions): Promise<VaultClient> {
    const c = new VaultClient(opts);
    await c.#login();
    return c;
  }

  /** Is the client logged in with a token that has not expired (as far as it knows)? */
  get authenticated(): boolean {
    return !this.#closed && Date.now() < this.#expiresAt;
  }

  read(path: string): Promise<VaultResponse> {
    return this.#call(`read ${path}`, () => this.#vault.read(path));
  }

  write(path: string, data: Record<string, unknown>): Promise<VaultResponse> {
    return this.#call(`write ${path}`, () => this.#vault.write(path, data));
  }

  /** Revokes a lease. Revoking a lease Vault no longer knows succeeds (Vault answers 204). */
  async revokeLease(leaseId: string): Promise<void> {
    await this.write('sys/leases/revoke', { lease_id: leaseId });
  }

  /**
   * Vault's own health (`sys/health`, unauthenticated): `up` (unsealed; a standby counts), `sealed`
   * (or not initialised), or `down` (no answer in `timeoutMs`). For readiness; never throws.
   */
  async health(): Promise<VaultHealth> {
    if (this.#closed) return { state: 'down', reason: 'vault client closed' };
    try {
      const h = (await this.#vault.health({ standbyok: true, sealedcode: 200, uninitcode: 200 })) as {
        sealed?: unknown;
        initialized?: unknown;
      };
      if (h?.sealed === true || h?.initialized === false) {
        return { state: 'sealed', reason: h.sealed === true ? 'sealed' : 'not initialised' };
      }
      return { state: 'up' };
    } catch (err) {
      return { state: 'down', reason: classify(err, 'health').message };
    }
  }

  /** Stops renewal and drops the token (it is not revoked: it expires on its own). */
  close(): void {
    this.#closed = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#vault.token = '';
    // Kept-alive sockets would otherwise hold the process open.
    for (const a of this.#agents) a.destroy();
  }

  async #call(what: string, fn: () => Promise<VaultResponse>): Promise<VaultResponse> {
    if (this.#closed) throw new VaultUnavailableError('vault client closed');
    if (this.#loggingIn) await this.#loggingIn.catch(() => {});
    try {
      return (await fn()) ?? {};
    } catch (err) {
      // A kept-alive connection that Vault closed (restart, idle timeout): once more on a new one.
      if (isStaleConnection(err)) {
        try {
          return (await fn()) ?? {};
        } catch (again) {
          throw classify(again, what);
        }
      }
      // 403 with a token that has expired or was revoked: log in again, once.
      if (statusOf(err) === 403 && this.#opts.auth.method !== 'token') {
        await this.#login();
        try {
          return (await fn()) ?? {};
        } catch (again) {
          throw classify(again, what);
        }
      }
      throw classify(err, what);
    }
  }

  /** One login at a time; concurrent callers share it. */
  #login(): Promise<void> {
    this.#loggingIn ??= this.#doLogin().finally(() => {
      this.#loggingIn = undefined;
    });
    return this.#loggingIn;
  }

  async #doLogin(): Promise<void> {
    const a = this.#opts.auth;
    let auth: VaultAuthInfo | undefined;
    try {
      if (a.method === 'jwt') {
        const jwt = await a.jwtSvid();
        auth = (
          (await this.#vault.jwtLogin({ role: a.role, jwt, mount_point: a.mount ?? 'jwt' })) as VaultResponse
        ).auth;
      } else if (a.method === 'cert') {
        auth = (await this.#certLogin(a)).auth;
        if (auth) this.#vault.token = auth.client_token;
      } else {
        const self = (await this.#vault.tokenLookupSelf()) as {
          data?: { ttl?: number; renewable?: boolean };
        };
        auth = {
          client_token: a.token,
          lease_duration: self.data?.ttl ?? 0,
          renewable: !!self.data?.renewable,
        };
      }
    } catch (err) {
      throw classify(err, `login (${a.method})`);
    }
    if (!auth?.client_token)
      throw new VaultRequestError(`vault login (${a.method}): no token in the answer`, 500);
    this.#log?.info({ method: a.method, ttl: auth.lease_duration }, 'logged in to vault');
    this.#schedule(auth);
  }

  /**
   * TLS cert auth: the login request alone presents the X.509-SVID current now (an SVID rotates
   * within the hour, so it is read at every login), on a connection of its own that is closed after.
   */
  async #certLogin(a: Extract<VaultAuth, { method: 'cert' }>): Promise<VaultResponse> {
    const svid = this.#opts.tls?.cert?.();
    if (!svid) throw new Error('cert auth needs the X.509-SVID (tls.cert)');
    const agent = new HttpsAgent({
      keepAlive: false,
      cert: svid.cert,
      key: svid.key,
      ...(this.#opts.tls?.ca ? { ca: this.#opts.tls.ca } : {}),
    });
    try {
      return (await this.#vault.write(`auth/${a.mount ?? 'cert'}/login`, a.name ? { name: a.name } : {}, {
        httpsAgent: agent,
      })) as VaultResponse;
    } finally {
      agent.destroy();
    }
  }

  /** Schedules the next renewal (or login) at RENEW_AT of the token's lease. TTL 0: never expires. */
  #schedule(auth: VaultAuthInfo): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    if (this.#closed) return;
    const ttlMs = auth.lease_duration * 1000;
    this.#expiresAt = ttlMs > 0 ? Date.now() + ttlMs : Number.POSITIVE_INFINITY;
    if (ttlMs <= 0) return;
    this.#timer = setTimeout(() => void this.#refresh(auth), Math.max(1000, ttlMs * RENEW_AT));
    this.#timer.unref();
  }

  async #refresh(auth: VaultAuthInfo): Promise<void> {
    try {
      if (auth.renewable) {
        const renewed = ((await this.#vault.tokenRenewSelf({})) as VaultResponse).auth;
        // A renewal capped by the token's max TTL shortens it: log in afresh before it runs out.
        if (renewed && renewed.lease_duration * 1000 >= auth.lease_duration * 1000 * (1 - RENEW_AT)) {
          this.#schedule({ ...renewed, client_token: auth.client_token });
          return;
        }
      }
      if (this.#opts.auth.method === 'token') {
        this.#log?.warn('vault static token cannot be renewed further; it will expire');
        return;
      }
      await this.#login();
    } catch (err) {
      // Retried soon: a token that is still valid keeps working meanwhile.
      this.#log?.warn({ err: (err as Error).message }, 'vault token renewal failed; retrying');
      this.#timer = setTimeout(() => void this.#refresh(auth), 5000);
      this.#timer.unref();
    }
  }
}
