/**
 * The agent-side proxy's own failures (`taskpass proxy`). Refusals of the broker keep their codes
 * (TASKPASS_DENIED_*, TASKPASS_APPROVAL_*) and reach the MCP host as readable tool errors, not as
 * these. docs/errors.md lists every code under "Agent proxy"; a test keeps them in sync.
 */
export const PROXY_ERRORS = {
  TASKPASS_PROXY_CONFIG_INVALID:
    'The proxy configuration is invalid (start-up only; the message names the file and the field), or two upstreams expose the same tool name.',
  TASKPASS_PROXY_USER_TOKEN_UNAVAILABLE:
    'The user token could not be read: the token file is missing or empty, or the environment variable is unset.',
  TASKPASS_PROXY_DEVICE_LOGIN_FAILED:
    'The OIDC device login failed: discovery, the device authorization request, a denied or expired login, or an answer without the token.',
  TASKPASS_PROXY_UNKNOWN_TOOL: 'The host called a tool that no upstream MCP server lists.',
  TASKPASS_PROXY_UPSTREAM_FAILED:
    'An upstream MCP server could not be reached, refused the request, or answered with an error.',
  TASKPASS_PROXY_TASK_CLOSED:
    'The broker closed the task before it expired (an administrator revoked it); the proxy opens no new task on its own: restart it.',
  TASKPASS_PROXY_APPROVAL_TIMEOUT:
    'A call waited for a person’s approval longer than `approvals.timeoutMs` (approvals: wait); it was not sent.',
  TASKPASS_PROXY_FORBIDDEN_ORIGIN:
    'HTTP mode: a request with a Host that is not this loopback listener, or an Origin not in `http.allowedOrigins` (DNS rebinding protection).',
  TASKPASS_PROXY_NOT_FOUND: 'HTTP mode: no such path (the proxy serves its MCP endpoint, `http.path`, only).',
} as const;

export type ProxyErrorCode = keyof typeof PROXY_ERRORS;

/** An error of the agent-side proxy with a stable code. */
export class ProxyError extends Error {
  readonly code: ProxyErrorCode;

  constructor(code: ProxyErrorCode, message: string, options?: { cause?: unknown }) {
    super(message, options);
    this.name = 'ProxyError';
    this.code = code;
  }

  toJSON(): { code: ProxyErrorCode; message: string } {
    return { code: this.code, message: this.message };
  }
}
