// Workload authentication: who is calling the broker. Two credentials are accepted, checked the
// same way for every route that needs them:
//  - the mTLS peer X.509-SVID chain, re-validated here against the bundle of the peer's own trust
//    domain (the TLS layer only asked for a certificate; it is not trusted for the identity), and
//  - `Authorization: Bearer <JWT-SVID>` (or a JWT-SVID in an OAuth form field) for our audience.
// Agents, admins and feed readers are then decided by matchers on the SPIFFE ID.
import type { X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import { chainFromPeerCertificate, pinPeerCertificate, type SpiffeId } from '@taskpass/spiffe';
import { BrokerError } from './errors.ts';
import { compilePattern } from './policy/pattern.ts';

/** An authenticated workload. */
export interface WorkloadIdentity {
  /** SPIFFE ID string, e.g. `spiffe://taskpass.local/agents/support/1`. */
  readonly id: string;
  readonly spiffeId: SpiffeId;
  readonly trustDomain: string;
  /** How it authenticated. */
  readonly method: 'mtls' | 'jwt-svid';
  /** base64url SHA-256 of the leaf certificate DER (RFC 8705 `cnf`), only for mTLS. */
  readonly x5tS256?: string;
}

/** What a request offers as credentials. */
export interface Credentials {
  /**
   * Peer certificate chain, leaf first (from the TLS socket, or the test seam), or a function that
   * extracts it: called only when the identity is not already cached for `connection`.
   */
  peerChain?: readonly X509Certificate[] | (() => readonly X509Certificate[] | undefined) | undefined;
  /**
   * The TLS connection the chain comes from, when its peer certificate cannot change for the rest
   * of the connection (see {@link pinPeerIdentity}). An authenticator may then cache the identity
   * it verified from the chain per connection (re-verified when the trust bundles change and when
   * the verified chain leaves its validity period).
   */
  connection?: object | undefined;
  /** A JWT-SVID (from the Authorization header or an OAuth form field). */
  jwtSvid?: string | undefined;
}

/** Authenticates workloads; throws TASKPASS_UNAUTHENTICATED. */
export interface WorkloadAuthenticator {
  authenticate(
    creds: Credentials,
    opts?: { audience?: string | readonly string[] },
  ): Promise<WorkloadIdentity>;
}

/**
 * The peer certificate chain (leaf first, a trailing self-signed root dropped) of a TLS socket;
 * undefined for plain sockets or when the peer sent no certificate.
 */
export function peerChainFromSocket(socket: unknown): X509Certificate[] | undefined {
  const s = socket as Partial<TLSSocket> | undefined;
  if (!s || typeof s.getPeerCertificate !== 'function' || !s.encrypted) return undefined;
  const chain = chainFromPeerCertificate(s.getPeerCertificate(true));
  return chain.length > 0 ? chain : undefined;
}

// TLS connections on which renegotiation has been disabled (pinPeerIdentity). Only on those is the
// peer certificate fixed for the connection's lifetime, so only those may cache the peer identity.
const pinnedConnections = new WeakSet<object>();

/**
 * Makes the peer certificate of a server-side TLS connection immutable for the rest of the
 * connection, and marks the connection so that its verified identity may be cached
 * ({@link Credentials.connection}). Call it on every 'secureConnection' of the server.
 *
 * Why: with TLS 1.2 a client can renegotiate mid-connection and present another certificate (TLS
 * 1.3 has no renegotiation, and Node never requests post-handshake authentication). Node limits but
 * allows client-initiated renegotiation by default; after `disableRenegotiation()` an attempt
 * destroys the connection with ERR_TLS_RENEGOTIATION_DISABLED. So the identity verified on the
 * first request of a connection is the identity of every later request on it.
 */
export function pinPeerIdentity(socket: TLSSocket): void {
  pinPeerCertificate(socket);
  pinnedConnections.add(socket);
}

/** Has {@link pinPeerIdentity} been applied to this socket? */
export function isPeerIdentityPinned(socket: unknown): boolean {
  return typeof socket === 'object' && socket !== null && pinnedConnections.has(socket);
}

/** Extracts a bearer token from an Authorization header value. */
export function bearerOf(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^Bearer\s+([A-Za-z0-9._~+/=-]+)\s*$/i.exec(header);
  return m?.[1];
}

/** A predicate on workload identities. */
export type IdMatcher = (id: SpiffeId) => boolean;

/**
 * Matches SPIFFE IDs against a pattern in the same language as the templates' `agents:` lists:
 * `spiffe://td/agents/*` (one segment), `.../support-*` (literal prefix), `.../**` (one or more
 * trailing segments). Linear, no regular expressions.
 */
export function spiffeIdPatternMatcher(pattern: string): IdMatcher {
  const r = compilePattern(pattern, 'agent');
  if (!r.ok) throw new BrokerError('TASKPASS_CONFIG_INVALID', r.reason);
  const compiled = r.pattern;
  return (id) => compiled.match(id.toString());
}

/** Agent matcher from config: any listed ID pattern or trust domain; both empty → own trust domain. */
export function agentMatcherFromConfig(c: {
  trustDomain: string;
  agents: { trustDomains: readonly string[]; ids: readonly string[] };
}): IdMatcher {
  const tds = new Set(c.agents.trustDomains);
  const pats = c.agents.ids.map(spiffeIdPatternMatcher);
  if (tds.size === 0 && pats.length === 0) tds.add(c.trustDomain);
  return (id) => tds.has(id.trustDomain.name) || pats.some((p) => p(id));
}

/** Exact-ID matcher for admins. */
export function idListMatcher(ids: readonly string[]): IdMatcher {
  const set = new Set(ids);
  return (id) => set.has(id.toString());
}
