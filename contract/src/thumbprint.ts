// RFC 8705 §3.1 certificate thumbprint: the broker writes it into `cnf`, the verifier computes it
// from the connection's client certificate and compares.
import { createHash, X509Certificate } from 'node:crypto';

/**
 * `x5t#S256` of a certificate: base64url(SHA-256(DER)).
 *
 * @example
 * ```ts
 * const x5t = x5tS256((req.socket as TLSSocket).getPeerCertificate().raw);
 * // equals the token's cnf['x5t#S256'] when the token is bound to this client certificate
 * ```
 */
export function x5tS256(cert: Uint8Array | X509Certificate): string {
  const der = cert instanceof X509Certificate ? cert.raw : cert;
  return createHash('sha256').update(der).digest('base64url');
}
