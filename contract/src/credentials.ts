// Downstream credentials leased to a task (docs/vault.md): an MCP server holding a verified call
// token exchanges it at the broker for the Vault secret that the call's tool rule names (e.g. a
// per-task PostgreSQL user). In RFC 8693 terms the call token is the subject and the MCP server's
// own SVID (mTLS or JWT-SVID) the actor; the answer is a secret, not a token, so it is served as
// JSON at its own path rather than at /oauth2/token.

/** The broker's credential endpoint (POST, JSON). */
export const CREDENTIALS_PATH = '/v1/credentials';

/** RFC 8693 §3: the subject is an OAuth access token (a Taskpass call token). */
export const SUBJECT_TOKEN_TYPE_ACCESS = 'urn:ietf:params:oauth:token-type:access_token';

/**
 * A Vault path a tool rule may name (`vault_secret:`): two or more plain segments of
 * `[A-Za-z0-9._-]`, the first not starting with a dot, no `.` or `..` segment, at most 256 bytes.
 */
export const VAULT_PATH_PATTERN =
  /^(?!.*(?:^|\/)\.{1,2}(?:\/|$))[A-Za-z0-9_-][A-Za-z0-9._-]*(?:\/[A-Za-z0-9._-]+)+$/;

export const isVaultPath = (s: unknown): s is string =>
  typeof s === 'string' && s.length <= 256 && VAULT_PATH_PATTERN.test(s);

/** The body of `POST /v1/credentials`. */
export interface CredentialRequest {
  /** The call token the MCP server verified for the call it is serving. */
  subject_token: string;
  /** Optional; when given, {@link SUBJECT_TOKEN_TYPE_ACCESS}. */
  subject_token_type?: typeof SUBJECT_TOKEN_TYPE_ACCESS;
  /**
   * The Vault path the call needs. Optional when the tool rule that allowed the call names exactly
   * one; when given, it must be the rule's `vault_secret`.
   */
  path?: string;
}

/** The answer: the secret, once per task and path, with the lease that ends it. */
export interface LeasedCredentialResponse {
  task_id: string;
  path: string;
  /** Vault's lease id (for audit; the broker revokes it when the task ends). */
  lease_id: string;
  /** Seconds the lease has left at issue. */
  lease_duration: number;
  /** Epoch seconds: the lease's end, never after the task's. */
  expires_at: number;
  /** The secret itself, e.g. `{ username, password }`. Keep it in memory only. */
  data: Record<string, unknown>;
}
