// Peer verification shared by the server and client helpers. Node verifies the handshake against
// one pooled `ca` list, which accepts a certificate issued by *any* trusted domain's CA for *any*
// SPIFFE ID (SPIFFE-NOTES §2.2, X509-SVID.md §5.1). So after the handshake the peer chain is
// re-validated against the bundle of the leaf's own trust domain, then the matcher decides.
import { X509Certificate } from 'node:crypto';
import type { PeerCertificate, TLSSocket } from 'node:tls';
import type { X509BundleSource } from '../bundle/index.ts';
import { SpiffeError } from '../errors.ts';
import type { Matcher, SpiffeId } from '../id.ts';
import { verifyX509Svid } from '../svid/index.ts';

/** Decides whether a verified peer SPIFFE ID may talk to us (a {@link Matcher}: `matchId`, `matchMemberOf`, …). */
export type Authorizer = Matcher;

/** Options of {@link verifyPeerChain} and {@link peerSpiffeId}. */
export interface VerifyPeerOptions {
  /** Validation time (test seam). Default now. */
  now?: Date;
}

const verified = new WeakMap<TLSSocket, SpiffeId>();

/**
 * Makes the peer certificate of a server-side TLS connection fixed for the rest of the connection,
 * so that an identity verified once per connection (as {@link peerSpiffeId} and the Taskpass
 * broker and verifier cache it) stays the identity of every later request on it.
 *
 * With TLS 1.2 a client may renegotiate mid-connection and present another certificate (TLS 1.3
 * has no renegotiation, and Node never requests post-handshake authentication). Node limits but
 * allows client-initiated renegotiation by default; after `disableRenegotiation()` an attempt fails
 * with ERR_TLS_RENEGOTIATION_DISABLED, and the connection is destroyed here rather than left to
 * whatever the server does with socket errors. Call it on every 'secureConnection';
 * {@link mtlsServerOptions}' `attach` does.
 *
 * @example
 * ```ts
 * const server = tls.createServer(options);
 * server.on('secureConnection', pinPeerCertificate);
 * ```
 */
export function pinPeerCertificate(socket: TLSSocket): void {
  socket.disableRenegotiation();
  socket.on('error', (e: NodeJS.ErrnoException) => {
    if (e.code === 'ERR_TLS_RENEGOTIATION_DISABLED') socket.destroy();
  });
}

/**
 * Turns the detailed peer certificate Node hands to `checkServerIdentity` (or
 * `socket.getPeerCertificate(true)`) into a chain, leaf first. Node appends the trust anchor it
 * found in the `ca` list; self-signed certificates after the leaf are dropped, since an anchor in
 * the chain proves nothing and the verification below brings its own, per trust domain.
 *
 * @example
 * ```ts
 * const chain = chainFromPeerCertificate(socket.getPeerCertificate(true));
 * chain[0]; // the peer's leaf certificate (X509Certificate)
 * ```
 */
export function chainFromPeerCertificate(peer: PeerCertificate | undefined): X509Certificate[] {
  const chain: X509Certificate[] = [];
  const seen = new Set<string>();
  let cur: PeerCertificate | undefined = peer;
  while (cur?.raw && cur.raw.length > 0 && !seen.has(cur.fingerprint256)) {
    seen.add(cur.fingerprint256);
    const cert = new X509Certificate(cur.raw);
    const selfSigned = cert.subject === cert.issuer && cert.checkIssued(cert) && cert.verify(cert.publicKey);
    if (chain.length === 0 || !selfSigned) chain.push(cert);
    const next: PeerCertificate | undefined = (cur as Partial<{ issuerCertificate: PeerCertificate }>)
      .issuerCertificate;
    if (!next || next === cur) break;
    cur = next;
  }
  return chain;
}

/**
 * Verifies a peer chain (leaf first) against the bundle of the leaf's own trust domain and applies
 * the authorizer.
 *
 * @throws SpiffeError `ERR_SPIFFE_X509_VERIFY_FAILED` / `ERR_SPIFFE_NO_BUNDLE` /
 *   `ERR_SPIFFE_INVALID_X509_SVID` when the chain is not a valid SVID of a trusted domain, and
 *   `ERR_SPIFFE_UNAUTHORIZED` when it is valid but the authorizer refuses its ID.
 *
 * @example
 * ```ts
 * const chain = chainFromPeerCertificate(socket.getPeerCertificate(true));
 * const id = verifyPeerChain(chain, source, matchMemberOf('taskpass.local'));
 * ```
 */
export function verifyPeerChain(
  chain: readonly X509Certificate[],
  bundles: X509BundleSource,
  authorize: Authorizer,
  opts: VerifyPeerOptions = {},
): SpiffeId {
  if (chain.length === 0) {
    throw new SpiffeError('ERR_SPIFFE_X509_VERIFY_FAILED', 'the peer presented no certificate');
  }
  const { id } = verifyX509Svid(chain, bundles, opts.now ? { now: opts.now } : undefined);
  if (!authorize(id)) {
    throw new SpiffeError('ERR_SPIFFE_UNAUTHORIZED', `peer ${id.toString()} is not authorized`);
  }
  return id;
}

/**
 * The verified SPIFFE ID of a TLS peer. Re-validates the chain the peer presented against the
 * bundle of its own trust domain (not the pooled `ca` list) and, when given, applies `authorize`.
 * Results are cached per socket.
 *
 * @example
 * ```ts
 * https.createServer(server.options, (req, res) => {
 *   const id = peerSpiffeId(req.socket as TLSSocket, source);
 *   res.end(`hello ${id}`);
 * });
 * ```
 * @throws SpiffeError (see {@link verifyPeerChain}); `ERR_SPIFFE_UNAUTHORIZED` when refused.
 */
export function peerSpiffeId(
  socket: TLSSocket,
  bundles: X509BundleSource,
  authorize?: Authorizer,
  opts: VerifyPeerOptions = {},
): SpiffeId {
  const cached = verified.get(socket);
  if (cached && !opts.now) {
    if (authorize && !authorize(cached)) {
      throw new SpiffeError('ERR_SPIFFE_UNAUTHORIZED', `peer ${cached.toString()} is not authorized`);
    }
    return cached;
  }
  const id = verifyPeerChain(
    chainFromPeerCertificate(socket.getPeerCertificate(true)),
    bundles,
    authorize ?? (() => true),
    opts,
  );
  verified.set(socket, id);
  return id;
}
