/**
 * Every refusal of the verifier has a stable code, an HTTP status and (for 401/403) the RFC 6750
 * error that goes into `WWW-Authenticate`. docs/errors.md lists every code; a test keeps this
 * table and the docs in sync.
 *
 * Statuses follow RFC 6750 §3.1 and the MCP authorization spec: 401 `invalid_token` when the token
 * itself is not acceptable (the client should get a new one), 403 `insufficient_scope` when a valid
 * token does not cover this call, 400 for requests that are malformed before any token matters,
 * 503 when the verifier cannot decide safely right now (fail closed, but do not send the client
 * into a pointless re-authorization loop).
 */
export const VERIFIER_ERRORS = {
  TASKPASS_VERIFY_MISSING_TOKEN: {
    status: 401,
    description:
      'No `Authorization: Bearer` token (or no `_meta` token over stdio). The challenge has no error code (RFC 6750 §3.1).',
  },
  TASKPASS_VERIFY_MALFORMED: {
    status: 401,
    description:
      'The token is not a canonical compact JWS (three unpadded base64url segments, at most 8192 characters, a JSON header with a `kid`), or a claim has the wrong shape (act, authorization_details, cnf, exp before iat).',
  },
  TASKPASS_VERIFY_MISSING_CLAIM: {
    status: 401,
    description:
      'A required claim is absent (exp, iat, jti, sub, aud, iss, client_id, txn, act, authorization_details).',
  },
  TASKPASS_VERIFY_BAD_ALGORITHM: {
    status: 401,
    description: 'The token is not signed with ES256 (HS256, none and every other algorithm are refused).',
  },
  TASKPASS_VERIFY_UNSUPPORTED_CRIT: {
    status: 401,
    description:
      'The token header has `crit` (RFC 7515 §4.1.11): it names extensions this verifier does not implement (it implements none).',
  },
  TASKPASS_VERIFY_BAD_SIGNATURE: {
    status: 401,
    description: 'The signature does not verify with the broker key.',
  },
  TASKPASS_VERIFY_UNKNOWN_KID: {
    status: 401,
    description: 'No key in the broker JWKS matches the token `kid` (after one rate-limited refetch).',
  },
  TASKPASS_VERIFY_WRONG_ISSUER: {
    status: 401,
    description: 'The `iss` claim is not the configured broker issuer.',
  },
  TASKPASS_VERIFY_WRONG_AUDIENCE: {
    status: 401,
    description: 'The `aud` claim is not exactly one string equal to this server resource URI.',
  },
  TASKPASS_VERIFY_WRONG_TYPE: { status: 401, description: 'The header `typ` is not `at+jwt` (RFC 9068).' },
  TASKPASS_VERIFY_BAD_ACTOR: {
    status: 401,
    description:
      'The current actor (outermost `act.sub`) is not the token `client_id`, or an actor is not a SPIFFE ID.',
  },
  TASKPASS_VERIFY_LIFETIME_TOO_LONG: {
    status: 401,
    description:
      'The token lifetime (`exp - iat`) exceeds the verifier limit `maxTokenLifetimeSec` (default 300 s).',
  },
  TASKPASS_VERIFY_EXPIRED: {
    status: 401,
    description: 'The token has expired (beyond the clock tolerance).',
  },
  TASKPASS_VERIFY_NOT_YET_VALID: { status: 401, description: 'The token `nbf` or `iat` is in the future.' },
  TASKPASS_VERIFY_REVOKED: {
    status: 401,
    description: 'The token, or the task it belongs to, was revoked (revocation feed or introspection).',
  },
  TASKPASS_VERIFY_REPLAYED: { status: 401, description: 'A single-use token was presented a second time.' },
  TASKPASS_VERIFY_CNF_MISMATCH: {
    status: 401,
    description:
      'The token is bound (`cnf.x5t#S256`) to another client certificate than the one on this connection.',
  },
  TASKPASS_VERIFY_CNF_REQUIRED: {
    status: 401,
    description:
      'The token is bound (`cnf`) but the request presents no client certificate (mTLS or `Client-Cert` from a trusted proxy), or `requireCertificateBinding` is set and the token has no `cnf`.',
  },
  TASKPASS_VERIFY_JWKS_UNAVAILABLE: { status: 503, description: 'The broker JWKS could not be fetched.' },
  TASKPASS_VERIFY_FEED_STALE: {
    status: 503,
    description:
      'The revocation feed has been silent longer than the staleness limit; writes (and, if configured, reads) are refused.',
  },
  TASKPASS_VERIFY_FEED_NOT_READY: {
    status: 503,
    description:
      'The revocation feed has not delivered its first complete snapshot yet; every call (reads too) is refused.',
  },
  TASKPASS_VERIFY_INTROSPECTION_FAILED: {
    status: 503,
    description: 'Introspection is required for this action but the broker could not be reached.',
  },
  TASKPASS_VERIFY_REPLAY_UNAVAILABLE: {
    status: 503,
    description:
      'The replay cache (e.g. Redis shared by replicas) could not be asked; single-use tokens are refused rather than risk a replay.',
  },
  TASKPASS_VERIFY_REPLAY_CACHE_FULL: {
    status: 503,
    description:
      'The replay cache is full of unexpired entries; single-use tokens are refused rather than forgotten.',
  },
  TASKPASS_VERIFY_SESSION_TOKEN_FOR_CALL: {
    status: 403,
    description:
      'A session token (`mcp_session`) was presented for a `tools/call`; a call token is required.',
  },
  TASKPASS_VERIFY_UNKNOWN_TOOL: {
    status: 403,
    description: 'The called tool has no Taskpass declaration on this server (deny by default).',
  },
  TASKPASS_VERIFY_WRONG_TOOL: {
    status: 403,
    description: 'The token names another tool than the one being called.',
  },
  TASKPASS_VERIFY_WRONG_RESOURCE: {
    status: 403,
    description: 'The resource derived from the call arguments is not the token resource.',
  },
  TASKPASS_VERIFY_RESOURCE_UNDERIVABLE: {
    status: 403,
    description:
      'No valid resource can be derived from the call arguments (missing or non-segment placeholder value).',
  },
  TASKPASS_VERIFY_WRONG_ACTION: {
    status: 403,
    description:
      'The token action class (read, write, admin) is not the class this server declares for the tool.',
  },
  TASKPASS_VERIFY_ARGS_MISMATCH: {
    status: 403,
    description: 'The token carries `args_sha256` and the call arguments hash to another value.',
  },
  TASKPASS_VERIFY_APPROVAL_UNBOUND: {
    status: 401,
    description:
      'The token carries an `approval` but no `args_sha256`: an approval is for one exact call, so such a token is refused whatever the call.',
  },
  TASKPASS_VERIFY_HEADER_MISMATCH: {
    status: 400,
    description:
      'The `Mcp-Name` or `Mcp-Method` header disagrees with the JSON-RPC body, or (with `requireMcpHeaders`) a required one is missing (JSON-RPC error -32020).',
  },
  TASKPASS_VERIFY_BATCH_NOT_ALLOWED: {
    status: 400,
    description:
      'A JSON-RPC batch holds more than one `tools/call`; one token covers one call (JSON-RPC error -32600).',
  },
  TASKPASS_VERIFY_BAD_REQUEST: {
    status: 400,
    description:
      'The body is not JSON (-32700), not a JSON-RPC request (-32600), too large or too deeply nested; or a trusted proxy sent a malformed `Client-Cert`.',
  },
  TASKPASS_VERIFY_AMBIGUOUS_TOKEN: {
    status: 400,
    description:
      'More than one credential: two `Authorization` headers, or a token both in the header and in `_meta`/the query. Answered as an RFC 6750 `invalid_request` challenge with `{ code, message }`.',
    challenge: true,
  },
  TASKPASS_VERIFY_INTERNAL: {
    status: 500,
    description: 'Unexpected error in the verifier; details are logged, never returned.',
  },
  TASKPASS_VERIFY_CONFIG_INVALID: {
    status: 500,
    description: 'The verifier options are invalid (thrown by createVerifier at start-up).',
  },
} as const satisfies Record<
  string,
  // challenge: a 400 about the credential, answered like 401/403 (RFC 6750 challenge, { code, message }).
  { status: 400 | 401 | 403 | 500 | 503; description: string; challenge?: true }
>;

/** A stable verifier error code. */
export type VerifierErrorCode = keyof typeof VERIFIER_ERRORS;

/** JSON-RPC error codes used on 400 answers. */
export const JSONRPC_HEADER_MISMATCH = -32020;
export const JSONRPC_INVALID_REQUEST = -32600;
export const JSONRPC_PARSE_ERROR = -32700;

/**
 * A refusal (or failure) of the verifier. Match on `code`, never on `message`.
 *
 * @example
 * ```ts
 * try { await verifier.verifyCall(token, call); }
 * catch (e) { if (e instanceof VerifierError && e.code === 'TASKPASS_VERIFY_REVOKED') …; }
 * ```
 */
export class VerifierError extends Error {
  override readonly name = 'VerifierError';
  readonly code: VerifierErrorCode;
  /** HTTP status for this code. */
  readonly status: 400 | 401 | 403 | 500 | 503;
  /** JSON-RPC error code for 400 answers. */
  readonly jsonRpcCode: number | undefined;
  /** Answered with an RFC 6750 `WWW-Authenticate` challenge and `{ code, message }` (401, 403, credential 400s). */
  readonly challenge: boolean;

  constructor(code: VerifierErrorCode, message: string, options?: { cause?: unknown; jsonRpcCode?: number }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.status = VERIFIER_ERRORS[code].status;
    this.jsonRpcCode = options?.jsonRpcCode;
    const entry: { status: number; challenge?: true } = VERIFIER_ERRORS[code];
    this.challenge = entry.status === 401 || entry.status === 403 || entry.challenge === true;
  }

  /**
   * The RFC 6750 `error` for the challenge: `invalid_token` (401), `insufficient_scope` (403),
   * `invalid_request` (400), or undefined (missing token, 5xx).
   */
  get oauthError(): 'invalid_token' | 'insufficient_scope' | 'invalid_request' | undefined {
    if (this.code === 'TASKPASS_VERIFY_MISSING_TOKEN') return undefined;
    if (this.status === 401) return 'invalid_token';
    if (this.status === 403) return 'insufficient_scope';
    if (this.status === 400) return 'invalid_request';
    return undefined;
  }

  /** The HTTP body `{ code, message }` (5xx bodies never carry internal detail). */
  toJSON(): { code: VerifierErrorCode; message: string } {
    return { code: this.code, message: this.status === 500 ? 'internal error' : this.message };
  }
}
