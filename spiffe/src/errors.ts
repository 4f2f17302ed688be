/**
 * Every error this package throws is a {@link SpiffeError} with a stable `code`. Match on `code`,
 * never on `message`. The list is documented in docs/errors.md and kept in sync by a test.
 */
export const SPIFFE_ERROR_CODES = {
  ERR_SPIFFE_INVALID_ID:
    'A SPIFFE ID does not follow SPIFFE-ID.md (scheme, trust domain, path rules, length).',
  ERR_SPIFFE_INVALID_TRUST_DOMAIN: 'A trust domain name is not lowercase [a-z0-9._-], is empty or too long.',
  ERR_SPIFFE_INVALID_BUNDLE: 'A bundle (DER, PEM, JWKS or SPIFFE format) could not be parsed.',
  ERR_SPIFFE_NO_BUNDLE: 'No bundle is known for the trust domain that must be validated against.',
  ERR_SPIFFE_INVALID_X509_SVID:
    'An X.509-SVID breaks X509-SVID.md (URI SAN, CA flags, key usage, key mismatch).',
  ERR_SPIFFE_X509_VERIFY_FAILED: 'An X.509-SVID chain does not verify against its own trust domain bundle.',
  ERR_SPIFFE_INVALID_JWT_SVID:
    'A JWT-SVID is malformed or breaks JWT-SVID.md (alg, typ, kid, sub, aud, exp).',
  ERR_SPIFFE_JWT_VERIFY_FAILED: 'A JWT-SVID signature does not verify with the key named by its kid.',
  ERR_SPIFFE_JWT_EXPIRED: 'A JWT-SVID is expired (beyond the allowed leeway).',
  ERR_SPIFFE_JWT_AUDIENCE: 'A JWT-SVID does not carry the expected audience.',
  ERR_SPIFFE_INVALID_ADDRESS:
    'The Workload API address (option or SPIFFE_ENDPOINT_SOCKET) is invalid or missing.',
  ERR_SPIFFE_NO_IDENTITY:
    'The Workload API has no identity for this workload (PermissionDenied, or redacted).',
  ERR_SPIFFE_WORKLOAD_API:
    'The Workload API failed (unavailable, invalid argument, unimplemented, bad response).',
  ERR_SPIFFE_TIMEOUT: 'No first update arrived from the Workload API within the timeout.',
  ERR_SPIFFE_CLOSED: 'The client or source was closed.',
  ERR_SPIFFE_UNAUTHORIZED: 'A peer SPIFFE ID is valid but not authorized by the matcher.',
} as const;

export type SpiffeErrorCode = keyof typeof SPIFFE_ERROR_CODES;

/**
 * The error this package throws; `code` is one of {@link SPIFFE_ERROR_CODES}.
 *
 * @example
 * ```ts
 * try {
 *   SpiffeId.parse('https://example.org/web');
 * } catch (e) {
 *   if (e instanceof SpiffeError) e.code; // 'ERR_SPIFFE_INVALID_ID'
 * }
 * ```
 */
export class SpiffeError extends Error {
  readonly code: SpiffeErrorCode;
  constructor(code: SpiffeErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'SpiffeError';
    this.code = code;
  }
}

/**
 * True when `e` is a {@link SpiffeError}, and, when `code` is given, one with that code.
 *
 * @example
 * ```ts
 * const source = await X509Source.create({ timeoutMs: 10_000 }).catch((e: unknown) => {
 *   if (isSpiffeError(e, 'ERR_SPIFFE_TIMEOUT')) console.error('no SVID yet: is this workload registered?');
 *   throw e;
 * });
 * ```
 */
export function isSpiffeError(e: unknown, code?: SpiffeErrorCode): e is SpiffeError {
  return e instanceof SpiffeError && (code === undefined || e.code === code);
}
