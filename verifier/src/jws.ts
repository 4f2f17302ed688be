// Strict compact JWS (RFC 7515 §7.1) before any crypto. Base64url decoders are lenient (Node 20's
// ignores padding, whitespace and the unused low bits of the last character), so several strings
// decode to one signed token. Everything keyed on the token string (replay cache, revocation by
// jti, logs, introspection) is sound only if each token has exactly one spelling: this accepts
// only the canonical one.
import { VerifierError } from './errors.ts';

/** Longest token accepted, in characters (a Taskpass call token is well under 2 KiB). */
export const MAX_TOKEN_LENGTH = 8192;

const SEGMENT = /^[A-Za-z0-9_-]+$/;
const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';

/** The protected header fields the verifier relies on; everything else is left to jose. */
export interface JwsHeader {
  kid: string;
  [k: string]: unknown;
}

function malformed(message: string): never {
  throw new VerifierError('TASKPASS_VERIFY_MALFORMED', message);
}

// Canonical unpadded base64url (RFC 7515 §2, RFC 4648 §3.5): only the alphabet, a length that
// encodes whole bytes, and zero unused bits in the last character.
function isCanonicalSegment(s: string): boolean {
  if (!SEGMENT.test(s)) return false;
  const rem = s.length % 4;
  if (rem === 1) return false;
  if (rem === 0) return true;
  const last = B64URL.indexOf(s[s.length - 1]!);
  return last % (rem === 2 ? 16 : 4) === 0;
}

/**
 * Checks that `token` is a canonical compact JWS and returns its protected header. Refuses
 * (`TASKPASS_VERIFY_MALFORMED`) anything but three non-empty, unpadded, canonical base64url
 * segments of at most {@link MAX_TOKEN_LENGTH} characters whose header is a JSON object with a
 * non-empty `kid`; refuses any `crit` (`TASKPASS_VERIFY_UNSUPPORTED_CRIT`: no extension is
 * implemented, RFC 7515 §4.1.11). Signature and claims are jose's job afterwards.
 *
 * @example
 * ```ts
 * parseCompactJws(token).kid; // 'k1'
 * parseCompactJws(`${token}==`); // throws VerifierError TASKPASS_VERIFY_MALFORMED
 * ```
 */
export function parseCompactJws(token: string): JwsHeader {
  if (token.length > MAX_TOKEN_LENGTH) malformed('the token is too long');
  const parts = token.split('.');
  if (parts.length !== 3) malformed('the token is not a compact JWS (three segments)');
  if (!parts.every(isCanonicalSegment)) {
    malformed('the token segments are not canonical unpadded base64url');
  }
  let header: unknown;
  try {
    header = JSON.parse(Buffer.from(parts[0]!, 'base64url').toString('utf8'));
  } catch {
    malformed('the token header is not JSON');
  }
  if (typeof header !== 'object' || header === null || Array.isArray(header)) {
    malformed('the token header is not a JSON object');
  }
  const h = header as Record<string, unknown>;
  if ('crit' in h) {
    throw new VerifierError(
      'TASKPASS_VERIFY_UNSUPPORTED_CRIT',
      'the token header names critical extensions this verifier does not implement',
    );
  }
  if (typeof h.kid !== 'string' || h.kid === '') malformed('the token header has no kid');
  return h as JwsHeader;
}
