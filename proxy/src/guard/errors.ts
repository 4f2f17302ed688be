/**
 * The guard's own refusals and failures (the verifier's refusals keep their TASKPASS_VERIFY_*
 * codes and bodies). docs/errors.md lists every code under "Guard"; a test keeps them in sync.
 */
export const GUARD_ERRORS = {
  TASKPASS_GUARD_CONFIG_INVALID: {
    status: 500,
    description:
      'The guard configuration is invalid (start-up only; the message names the field), or the upstream tools could not be learned.',
  },
  TASKPASS_GUARD_UPSTREAM_UNAVAILABLE: {
    status: 502,
    description:
      'The upstream MCP server could not be reached, closed the connection, or (stdio) could not be started or exited. The request was verified; the call may not have run.',
  },
  TASKPASS_GUARD_UPSTREAM_TIMEOUT: {
    status: 504,
    description:
      'The upstream MCP server did not answer within `upstream.timeoutMs`. The call may have run: do not retry a write blindly.',
  },
  TASKPASS_GUARD_NOT_FOUND: {
    status: 404,
    description:
      'No such path on the guard (it serves the MCP endpoint, its RFC 9728 metadata, /healthz and /readyz).',
  },
  TASKPASS_GUARD_METHOD_NOT_ALLOWED: {
    status: 405,
    description:
      'A stdio upstream has no server-to-client stream and no sessions: GET and DELETE on the MCP endpoint are refused.',
  },
} as const satisfies Record<string, { status: number; description: string }>;

export type GuardErrorCode = keyof typeof GUARD_ERRORS;

/** An error of the guard with a stable code; `toJSON()` is the `{ code, message }` body. */
export class GuardError extends Error {
  readonly code: GuardErrorCode;
  readonly status: number;

  constructor(code: GuardErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'GuardError';
    this.code = code;
    this.status = GUARD_ERRORS[code].status;
  }

  toJSON(): { code: GuardErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}
