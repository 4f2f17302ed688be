// TLS client side: the server is authenticated by its SPIFFE ID (validated against its own trust
// domain's bundle) instead of its hostname, and with mTLS the client presents its current SVID.
import type { ConnectionOptions, PeerCertificate } from 'node:tls';
import { Agent, buildConnector, type Dispatcher } from 'undici';
import type { X509BundleSource } from '../bundle/index.ts';
import type { X509Svid } from '../svid/x509.ts';
import {
  type Authorizer,
  chainFromPeerCertificate,
  type VerifyPeerOptions,
  verifyPeerChain,
} from './authorize.ts';
import {
  currentSecureContextOptions,
  type TlsHelperOptions,
  type TlsSource,
  trustedAuthorities,
} from './server.ts';

/** Options of the client helpers. */
export interface TlsClientHelperOptions extends TlsHelperOptions, VerifyPeerOptions {}

/**
 * A `checkServerIdentity` that ignores the hostname and instead verifies the server's chain against
 * the bundle of its own trust domain and applies `authorize`. Returns the error (a `SpiffeError`)
 * instead of throwing, as Node expects.
 *
 * @example
 * ```ts
 * const socket = tls.connect({
 *   host: '127.0.0.1',
 *   port,
 *   ca: trustedAuthorities(bundles),
 *   checkServerIdentity: spiffeCheckServerIdentity(bundles, matchId('spiffe://taskpass.local/broker')),
 * });
 * ```
 */
export function spiffeCheckServerIdentity(
  bundles: X509BundleSource,
  authorize: Authorizer,
  opts: VerifyPeerOptions = {},
): (hostname: string, cert: PeerCertificate) => Error | undefined {
  return (_hostname, cert) => {
    try {
      verifyPeerChain(chainFromPeerCertificate(cert), bundles, authorize, opts);
      return undefined;
    } catch (e) {
      return e as Error;
    }
  };
}

/**
 * Options for `tls.connect` / `https.request` that authenticate the server by SPIFFE ID and present
 * the source's **current** X.509-SVID. A snapshot: build them again for each new connection (or use
 * {@link createMtlsAgent}) to follow SVID rotation.
 *
 * @example
 * ```ts
 * const socket = tls.connect({ host: '127.0.0.1', port, ...mtlsClientOptions(source, matchId('spiffe://taskpass.local/broker')) });
 * ```
 */
export function mtlsClientOptions(
  source: TlsSource,
  authorize: Authorizer,
  opts: TlsClientHelperOptions = {},
): ConnectionOptions {
  return {
    ...currentSecureContextOptions(source, opts),
    rejectUnauthorized: true,
    checkServerIdentity: spiffeCheckServerIdentity(source, authorize, opts),
  };
}

/**
 * Options for a client that authenticates the server by SPIFFE ID but presents no certificate
 * (server-auth-only TLS). `bundles` must be able to list its bundles, or pass `trustDomains`.
 *
 * @example
 * ```ts
 * const bundles = new X509BundleSet([X509Bundle.fromPem(TrustDomain.parse('taskpass.local'), pem)]);
 * const socket = tls.connect({ host: '127.0.0.1', port, ...tlsClientOptions(bundles, matchId('spiffe://taskpass.local/broker')) });
 * ```
 */
export function tlsClientOptions(
  bundles: X509BundleSource,
  authorize: Authorizer,
  opts: TlsClientHelperOptions = {},
): ConnectionOptions {
  return {
    ca: trustedAuthorities(bundles, opts),
    rejectUnauthorized: true,
    checkServerIdentity: spiffeCheckServerIdentity(bundles, authorize, opts),
  };
}

/** Options of {@link createMtlsAgent} and {@link createTlsAgent}. */
export interface TlsAgentOptions extends TlsClientHelperOptions {
  /** Passed to `undici.Agent` (pool sizes, timeouts …); `connect` is ours. */
  agent?: Omit<Agent.Options, 'connect'>;
  /** Connect timeout in ms (undici's default: 10 s). */
  connectTimeoutMs?: number;
}

function agentFor(current: () => ConnectionOptions, opts: TlsAgentOptions): Agent {
  return new Agent({
    ...opts.agent,
    connect(connectOpts, callback) {
      // A fresh connector per connection picks up the current SVID and bundles. TLS session
      // resumption is off: a resumed session would skip checkServerIdentity.
      const connector = buildConnector({
        ...current(),
        maxCachedSessions: 0,
        ...(opts.connectTimeoutMs !== undefined ? { timeout: opts.connectTimeoutMs } : {}),
      });
      connector(connectOpts, callback);
    },
  });
}

/**
 * An Agent whose connections follow the client's SVID. A kept-alive connection goes on presenting
 * the certificate it was opened with, but peers bind to the current one (a call token's `cnf` is the
 * thumbprint of the SVID the agent showed the broker), so after a rotation requests must not reuse
 * it: the next request goes to a fresh pool (new handshake, new SVID) and the old pool is closed
 * gracefully (its requests in flight finish). Checked per request: the source's current SVID
 * object (a live source replaces it on every update, a static one never), and when it is another
 * object, its leaf — a bundle-only update keeps the connections. No event wiring needed.
 */
class SvidFollowingAgent extends Agent {
  readonly #source: TlsSource;
  readonly #make: () => Agent;
  #current: Agent;
  #svid: X509Svid | undefined;
  readonly #retired = new Set<Agent>();

  constructor(source: TlsSource, make: () => Agent) {
    super();
    this.#source = source;
    this.#make = make;
    this.#current = make();
    this.#svid = this.#currentSvid();
  }

  #currentSvid(): X509Svid | undefined {
    try {
      return this.#source.getX509Svid();
    } catch {
      // Redacted or closed: the next handshake fails on its own; keep the pool.
      return undefined;
    }
  }

  override dispatch(options: Agent.DispatchOptions, handler: Dispatcher.DispatchHandler): boolean {
    const svid = this.#currentSvid();
    if (svid !== undefined && svid !== this.#svid) {
      const same = this.#svid !== undefined && sameLeaf(svid, this.#svid);
      this.#svid = svid;
      if (!same) this.#rotate();
    }
    return this.#current.dispatch(options, handler);
  }

  #rotate(): void {
    const old = this.#current;
    this.#current = this.#make();
    this.#retired.add(old);
    old
      .close()
      .catch(() => undefined)
      .finally(() => this.#retired.delete(old));
  }

  override close(): Promise<void>;
  override close(callback: () => void): void;
  override close(callback?: () => void): Promise<void> | void {
    // undici's promise form calls close(callback), i.e. this override: call the base with a callback.
    const base = new Promise<void>((resolve) => super.close(() => resolve()));
    const done = Promise.all([this.#current.close(), ...[...this.#retired].map((a) => a.close()), base])
      .catch(() => undefined)
      .then(() => undefined);
    if (callback) {
      void done.then(callback);
      return;
    }
    return done;
  }

  override destroy(): Promise<void>;
  override destroy(err: Error | null): Promise<void>;
  override destroy(callback: () => void): void;
  override destroy(err: Error | null, callback: () => void): void;
  override destroy(a?: Error | null | (() => void), b?: () => void): Promise<void> | void {
    const err = typeof a === 'function' ? null : (a ?? null);
    const callback = typeof a === 'function' ? a : b;
    const base = new Promise<void>((resolve) => super.destroy(err, () => resolve()));
    const done = Promise.all([
      this.#current.destroy(err),
      ...[...this.#retired].map((x) => x.destroy(err)),
      base,
    ])
      .catch(() => undefined)
      .then(() => undefined);
    if (callback) {
      void done.then(callback);
      return;
    }
    return done;
  }
}

function sameLeaf(a: X509Svid, b: X509Svid): boolean {
  const x = a.certificates[0];
  const y = b.certificates[0];
  return x !== undefined && y !== undefined && x.raw.equals(y.raw);
}

/**
 * An undici `Agent` for mTLS: each new connection presents the source's current X.509-SVID and
 * authenticates the server by SPIFFE ID. After the SVID rotates, no request reuses a kept-alive
 * connection opened with the old one (they finish what is in flight and close), so a peer that
 * binds tokens to the client certificate sees the certificate the tokens were bound to.
 *
 * @example
 * ```ts
 * import { request } from 'undici';
 * const dispatcher = createMtlsAgent(source, matchId('spiffe://taskpass.local/broker'));
 * const res = await request('https://127.0.0.1:8443/v1/tasks', { dispatcher, method: 'POST', body });
 * ```
 */
export function createMtlsAgent(source: TlsSource, authorize: Authorizer, opts: TlsAgentOptions = {}): Agent {
  return new SvidFollowingAgent(source, () =>
    agentFor(() => mtlsClientOptions(source, authorize, opts), opts),
  );
}

/**
 * An undici `Agent` for server-auth-only TLS with the server authenticated by SPIFFE ID.
 *
 * @example
 * ```ts
 * import { request } from 'undici';
 * const dispatcher = createTlsAgent(bundles, matchId('spiffe://taskpass.local/broker'));
 * const { statusCode } = await request('https://127.0.0.1:8443/healthz', { dispatcher });
 * ```
 */
export function createTlsAgent(
  bundles: X509BundleSource,
  authorize: Authorizer,
  opts: TlsAgentOptions = {},
): Agent {
  return agentFor(() => tlsClientOptions(bundles, authorize, opts), opts);
}
