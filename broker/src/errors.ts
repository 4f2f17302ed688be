/**
 * Every error the broker returns has a stable code, an HTTP status and a one-line description.
 * HTTP bodies are `{ code, message }` (plus `template` on denials). docs/errors.md lists every code;
 * a test keeps this table and the docs in sync.
 */
export const BROKER_ERRORS = {
  TASKPASS_BAD_REQUEST: {
    status: 400,
    description: 'The request body, query or parameters failed validation.',
  },
  TASKPASS_INVALID_RESOURCE: {
    status: 400,
    description: 'The resource string is not a valid resource (grammar, length, dot segments).',
  },
  TASKPASS_UNAUTHENTICATED: {
    status: 401,
    description: 'No valid agent credential (mTLS X.509-SVID or JWT-SVID for the broker audience).',
  },
  TASKPASS_USER_TOKEN_INVALID: {
    status: 401,
    description:
      'The delegating user token is invalid: unknown issuer, bad signature, audience, expiry or algorithm.',
  },
  TASKPASS_FORBIDDEN: {
    status: 403,
    description: 'The workload authenticated but may not use this API (not an allowed agent or feed reader).',
  },
  TASKPASS_NOT_FOUND: { status: 404, description: 'No such route.' },
  TASKPASS_TASK_NOT_FOUND: { status: 404, description: 'No such task.' },
  TASKPASS_TASK_NOT_OWNED: { status: 403, description: 'The task belongs to another agent.' },
  TASKPASS_TASK_CLOSED: {
    status: 409,
    description: 'The task is completed, failed, cancelled or revoked; its tokens are revoked.',
  },
  TASKPASS_TASK_EXPIRED: { status: 403, description: 'The task has expired; it behaves as revoked.' },
  TASKPASS_DENIED_NO_TEMPLATE: {
    status: 403,
    description: 'No scope template covers this agent (and user): deny by default.',
  },
  TASKPASS_DELEGATION_REQUIRED: {
    status: 403,
    description: 'The templates for this agent require a delegating user token.',
  },
  TASKPASS_DENIED_USER: {
    status: 403,
    description: 'The delegating user does not meet the template user conditions.',
  },
  TASKPASS_DENIED_AUDIENCE: {
    status: 403,
    description: 'No template allows this agent to call this MCP server (audience).',
  },
  TASKPASS_DENIED_TOOL: { status: 403, description: 'No template allows this tool on this MCP server.' },
  TASKPASS_DENIED_ACTION: {
    status: 403,
    description: 'The tool is allowed, but not with this action class.',
  },
  TASKPASS_DENIED_RESOURCE: {
    status: 403,
    description: 'The tool and action are allowed, but not on this resource.',
  },
  TASKPASS_DENIED_CALL_LIMIT: {
    status: 403,
    description: 'The template caps calls of this tool per task and the cap is reached.',
  },
  TASKPASS_DENIED_PREREQUISITE: {
    status: 403,
    description: 'The template requires an earlier step in this task that has not happened.',
  },
  TASKPASS_DENIED_TASK_AGE: {
    status: 403,
    description:
      "The task is older than the template's max_task_ttl; that template no longer allows calls in it.",
  },
  TASKPASS_ARGUMENTS_REQUIRED: {
    status: 400,
    description:
      "The template binds this call to its arguments: send args_sha256 (and the arguments themselves when the template's approval conditions read them).",
  },
  TASKPASS_ARGUMENTS_MISMATCH: {
    status: 400,
    description: 'The arguments sent with the token request do not hash to its args_sha256.',
  },
  TASKPASS_PDP_DENIED: {
    status: 403,
    description:
      'The templates allow this call, but a decision point behind them (OPA, Cedar, AuthZEN) denied it; the body names the engine and policy (`engine`, `policy`, `reason`).',
  },
  TASKPASS_PDP_UNAVAILABLE: {
    status: 403,
    description:
      'A decision point behind the templates errored, did not answer in time, or answered something that is not a decision: the call is denied (fail closed). The body names the engine (`engine`, `reason`).',
  },
  TASKPASS_APPROVAL_REQUIRED: {
    status: 403,
    description:
      'A person must approve this call first; the body names the approval (approval_id, approval_url, expires_at). Ask again once it is approved.',
  },
  TASKPASS_APPROVAL_DENIED: {
    status: 403,
    description: 'An approver denied this call (their comment is in the body); it stays denied in this task.',
  },
  TASKPASS_APPROVAL_EXPIRED: {
    status: 403,
    description:
      'The approval expired before it was decided, or was approved and not used in time; the next token request asks anew.',
  },
  TASKPASS_APPROVAL_NOT_FOUND: {
    status: 404,
    description: 'No such approval, or not one the caller may see.',
  },
  TASKPASS_APPROVAL_ALREADY_DECIDED: {
    status: 409,
    description: 'The approval is no longer pending (decided first by someone else, used or cancelled).',
  },
  TASKPASS_APPROVER_TOKEN_INVALID: {
    status: 401,
    description:
      "The approver's token is missing or invalid: unknown issuer, bad signature, expired, or not minted for the approvals audience.",
  },
  TASKPASS_APPROVER_IS_WORKLOAD: {
    status: 403,
    description:
      'A workload (mTLS X.509-SVID or JWT-SVID) tried to decide an approval: agents may ask, only people approve.',
  },
  TASKPASS_APPROVER_NOT_ALLOWED: {
    status: 403,
    description: "The approver does not meet the rule's approvers: conditions.",
  },
  TASKPASS_APPROVAL_SEPARATION_OF_DUTIES: {
    status: 403,
    description:
      'The user the task acts for may not approve its own request (separation of duties; the rule does not name delegating_user).',
  },
  TASKPASS_FORBIDDEN_ADMIN: { status: 403, description: 'The caller is not an administrator.' },
  TASKPASS_CONSOLE_UNAUTHENTICATED: {
    status: 401,
    description: 'No console session (or it expired, or was signed out): sign in at /console/auth/login.',
  },
  TASKPASS_CONSOLE_FORBIDDEN: {
    status: 403,
    description:
      "The signed-in person's role does not include this console page or action (admins, viewers).",
  },
  TASKPASS_CONSOLE_CSRF: {
    status: 403,
    description:
      "A console POST, PUT or DELETE without the session's CSRF token in `X-CSRF-Token` (or from another origin); nothing was changed.",
  },
  TASKPASS_CONSOLE_SIGNIN_FAILED: {
    status: 401,
    description:
      'The console sign-in did not complete: unknown or reused state, identity provider unreachable, code refused, or an invalid ID token (issuer, audience, signature, expiry, nonce).',
  },
  TASKPASS_RATE_LIMITED: {
    status: 429,
    description:
      'Too many requests from this caller; `Retry-After` gives the seconds until its window resets.',
  },
  TASKPASS_RATE_LIMIT_UNAVAILABLE: {
    status: 503,
    description:
      'The shared rate limiter (Redis) did not answer in time; refused, not let through unmetered.',
  },
  TASKPASS_BODY_TOO_LARGE: {
    status: 413,
    description: 'The request body is larger than this route accepts; it was not read further.',
  },
  TASKPASS_UNSUPPORTED_MEDIA_TYPE: {
    status: 415,
    description: 'The request body has a content type this route does not accept.',
  },
  TASKPASS_SIGNER_UNAVAILABLE: {
    status: 503,
    description:
      'The Vault Transit signer could not sign (Vault unreachable, sealed or refusing, or its signing queue is full); no token was issued, and a retry is safe. Answered with `Retry-After: 1`.',
  },
  TASKPASS_CREDENTIAL_ALREADY_ISSUED: {
    status: 409,
    description:
      'The task already holds a live lease on this Vault path; its secret was handed out once (to be cached by the MCP server until the lease ends) and is never stored or returned again.',
  },
  TASKPASS_CREDENTIAL_FORBIDDEN: {
    status: 403,
    description:
      "The caller of /v1/credentials is not the call token's audience: its SPIFFE ID is not listed in `vault.credentialClients` for the token's `aud`. Nothing was leased.",
  },
  TASKPASS_CREDENTIAL_SUBJECT_INVALID: {
    status: 400,
    description:
      'The subject_token of /v1/credentials is not a live call token of this broker (signature, issuer, `typ`, expiry, a tool call, not revoked).',
  },
  TASKPASS_CREDENTIAL_NOT_IN_TEMPLATE: {
    status: 403,
    description:
      'No tool rule that allowed the call names this Vault path (`vault_secret:`), or the rules name several and the request named none of them.',
  },
  TASKPASS_CREDENTIAL_UNAVAILABLE: {
    status: 503,
    description:
      'Vault could not lease the secret (unreachable, sealed or refusing), or not for at most the time the task has left; nothing was handed out, and a retry is safe.',
  },
  TASKPASS_STORE_UNAVAILABLE: {
    status: 503,
    description:
      'The store could not be reached or did not answer in time (Redis down, frozen, loading, read-only; SQLite locked by another writer past `busyTimeoutMs`, disk full or failing), or could not make the change durable; nothing was acknowledged, and a retry is safe. Answered with `Retry-After: 1`.',
  },
  TASKPASS_INTERNAL: {
    status: 500,
    description: 'Unexpected error; details are in the broker log, never in the response.',
  },
  TASKPASS_POLICY_INVALID: {
    status: 400,
    description:
      'A scope template or decision point policy file is invalid (file, path or line and column, and reason are given).',
  },
  TASKPASS_CONFIG_INVALID: {
    status: 500,
    description: 'The broker configuration is invalid (reported at start-up).',
  },
  TASKPASS_SIGNING_KEY_UNREADABLE: {
    status: 500,
    description:
      'A stored signing key cannot be decrypted (KEK not configured, wrong KEK or tampered record); it is never used.',
  },
} as const satisfies Record<string, { status: number; description: string }>;

export type BrokerErrorCode = keyof typeof BROKER_ERRORS;

export class BrokerError extends Error {
  readonly code: BrokerErrorCode;
  readonly status: number;
  readonly details: Record<string, unknown> | undefined;
  constructor(
    code: BrokerErrorCode,
    message: string,
    details?: Record<string, unknown>,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'BrokerError';
    this.code = code;
    this.status = BROKER_ERRORS[code].status;
    this.details = details;
  }
  toJSON(): Record<string, unknown> {
    return { code: this.code, message: this.message, ...this.details };
  }
}
