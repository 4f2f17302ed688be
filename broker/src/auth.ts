// Workload authentication: who is calling the broker. Two credentials are accepted, checked the
// same way for every route that needs them:
//  - the mTLS peer X.509-SVID chain, re-validated here against the bundle of the peer's own trust
//    domain (the TLS layer only asked for a certificate; it is not trusted for the identity), and
//  - `Authorization: Bearer <JWT-SVID>` (or a JWT-SVID in an OAuth form field) for our audience.
// Agents, admins and feed readers are then decided by matchers on the SPIFFE ID.
import { createHash, X509Certificate } from 'node:crypto';
import type { TLSSocket } from 'node:tls';
import type { SpiffeId } from '@taskpass/spiffe';
import { TaskpassError } from './errors.ts';

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
  /** Peer certificate chain, leaf first (from the TLS socket, or the test seam). */
  peerChain?: readonly X509Certificate[] | undefined;
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

/** RFC 8705 thumbprint: base64url(SHA-256(DER)). */
export function x5tS256Of(cert: X509Certificate): string {
  return createHash('sha256').update(cert.raw).digest('base64url');
}

/** The peer certificate chain (leaf first) of a TLS socket; undefined for plain sockets or no cert. */
export function peerChainFromSocket(socket: unknown): X509Certificate[] | undefined {
  const s = socket as Partial<TLSSocket> | undefined;
  if (!s || typeof s.getPeerCertificate !== 'function' || !s.encrypted) return undefined;
  const top = s.getPeerCertificate(true);
  if (!top?.raw) return undefined;
  const out: X509Certificate[] = [];
  const seen = new Set<string>();
  let cur: typeof top | undefined = top;
  while (cur?.raw && out.length < 10) {
    const fp = cur.fingerprint256;
    if (seen.has(fp)) break;
    seen.add(fp);
    out.push(new X509Certificate(cur.raw));
    const next: typeof top | undefined = cur.issuerCertificate;
    if (!next || next === cur) break;
    cur = next;
  }
  return out;
}

/** Extracts a bearer token from an Authorization header value. */
export function bearerOf(header: string | undefined): string | undefined {
  if (!header) return undefined;
  const m = /^Bearer\s+([A-Za-z0-9._~+/=-]+)\s*$/i.exec(header);
  return m?.[1];
}

/** A predicate on workload identities. */
export type IdMatcher = (id: SpiffeId) => boolean;

function matchSegments(pattern: readonly string[], value: readonly string[]): boolean {
  for (let i = 0; i < pattern.length; i++) {
    const p = pattern[i]!;
    if (p === '**' && i === pattern.length - 1) return value.length > i;
    const v = value[i];
    if (v === undefined) return false;
    if (p === '*') continue;
    if (p.endsWith('*')) {
      if (!v.startsWith(p.slice(0, -1))) return false;
      continue;
    }
    if (p !== v) return false;
  }
  return value.length === pattern.length;
}

/**
 * Matches SPIFFE IDs against a pattern: `spiffe://td/agents/*` (one segment), `.../support-*`
 * (literal prefix), `.../**` (one or more trailing segments). Linear, no regular expressions.
 */
export function spiffeIdPatternMatcher(pattern: string): IdMatcher {
  const m = /^spiffe:\/\/([^/]+)(\/.*)?$/.exec(pattern);
  if (!m) throw new TaskpassError('TASKPASS_CONFIG_INVALID', `invalid SPIFFE ID pattern ${pattern}`);
  const td = m[1]!;
  const segs = (m[2] ?? '').split('/').filter(Boolean);
  return (id) => id.trustDomain.name === td && matchSegments(segs, id.path.split('/').filter(Boolean));
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
