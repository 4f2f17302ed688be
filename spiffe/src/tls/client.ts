// TLS client side: the server is authenticated by its SPIFFE ID (validated against its own trust
// domain's bundle) instead of its hostname, and with mTLS the client presents its current SVID.
import type { ConnectionOptions, PeerCertificate } from 'node:tls';
import { Agent, buildConnector } from 'undici';
import type { X509BundleSource } from '../bundle/index.ts';
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
 * An undici `Agent` for mTLS: each new connection presents the source's current X.509-SVID and
 * authenticates the server by SPIFFE ID. Existing keep-alive connections keep the SVID they were
 * opened with.
 *
 * @example
 * ```ts
 * import { request } from 'undici';
 * const dispatcher = createMtlsAgent(source, matchId('spiffe://taskpass.local/broker'));
 * const res = await request('https://127.0.0.1:8443/v1/tasks', { dispatcher, method: 'POST', body });
 * ```
 */
export function createMtlsAgent(source: TlsSource, authorize: Authorizer, opts: TlsAgentOptions = {}): Agent {
  return agentFor(() => mtlsClientOptions(source, authorize, opts), opts);
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
