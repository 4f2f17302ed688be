import type { ApprovalSubject } from '@taskpass/contract';

/**
 * Errors of the agent plugin. Three kinds, each with a stable string `code`:
 *
 * - {@link TaskpassDeniedError}: the broker refused with 403 (a policy denial, an expired task …).
 *   Carries the broker's `code`, `reason` and, for template decisions, `template`, so an agent
 *   framework can show the refusal. Its subclass {@link TaskpassApprovalRequiredError} is the
 *   refusal a person can lift: the call waits for an approval.
 * - {@link BrokerError}: any other `{ code, message }` error answer of the broker (401, 404, 409, 429, 5xx).
 * - {@link AgentPluginError}: raised by the plugin itself (`TASKPASS_AGENT_…`, listed in
 *   {@link AGENT_ERRORS} and docs/errors.md; a test keeps both in sync).
 */
export const AGENT_ERRORS = {
  TASKPASS_AGENT_CONFIG_INVALID:
    'The BrokerClient or taskpassFetch options are invalid (thrown at construction).',
  TASKPASS_AGENT_BROKER_UNREACHABLE:
    'The broker could not be reached: connection, TLS handshake or timeout (the cause is attached).',
  TASKPASS_AGENT_BAD_RESPONSE:
    'The broker answered with a body that is not JSON or fails validation (response schemas are checked).',
  TASKPASS_AGENT_IDENTITY_UNAVAILABLE:
    'No JWT-SVID could be obtained from the JWT source for the broker audience.',
  TASKPASS_AGENT_TASK_NOT_OPEN:
    'The task was already completed, failed or cancelled through this handle (or the broker says it is closed).',
  TASKPASS_AGENT_NO_RESOURCE_MAPPER:
    'A tools/call names a tool with neither a declared resource mapper nor a server-published hint.',
  TASKPASS_AGENT_RESOURCE_UNDERIVABLE:
    'The resource mapper threw, or its result (or a template placeholder value) is not a valid resource.',
  TASKPASS_AGENT_BATCH_MULTIPLE_CALLS:
    'A JSON-RPC batch holds more than one tools/call; one Authorization header carries one call token.',
  TASKPASS_AGENT_BAD_MCP_MESSAGE: 'A tools/call has no string params.name or non-object params.arguments.',
} as const;

/** A code of {@link AgentPluginError}. */
export type AgentErrorCode = keyof typeof AGENT_ERRORS;

/**
 * An error raised by the plugin itself (not an answer of the broker).
 *
 * @example
 * ```ts
 * try { await client.callTool({ name: 'get_ticket', arguments: {} }); }
 * catch (e) { if (e instanceof AgentPluginError && e.code === 'TASKPASS_AGENT_NO_RESOURCE_MAPPER') … }
 * ```
 */
export class AgentPluginError extends Error {
  override readonly name = 'AgentPluginError';
  readonly code: AgentErrorCode;

  constructor(code: AgentErrorCode, message: string, options?: { cause?: unknown }) {
    super(`${code}: ${message}`, options);
    this.code = code;
  }
}

/** The `{ code, message, … }` body of a broker error answer (docs/design.md §3). */
export interface BrokerErrorBody {
  code: string;
  message: string;
  template?: string | undefined;
  reason?: string | undefined;
}

/**
 * A broker error answer other than a 403 denial: `code` is the broker's (`TASKPASS_TASK_NOT_FOUND`,
 * `TASKPASS_UNAUTHENTICATED`, `TASKPASS_RATE_LIMITED` …; see docs/errors.md, Broker section).
 *
 * @example
 * ```ts
 * try {
 *   await broker.openTask({ purpose: 'triage T-42', userToken });
 * } catch (e) {
 *   if (e instanceof BrokerError && e.code === 'TASKPASS_RATE_LIMITED') await retryLater();
 *   else throw e;
 * }
 * ```
 */
export class BrokerError extends Error {
  override readonly name: string = 'BrokerError';
  /** The broker's stable code. */
  readonly code: string;
  /** HTTP status of the answer. */
  readonly status: number;
  /** The broker's message, as sent. */
  readonly brokerMessage: string;

  constructor(status: number, body: BrokerErrorBody) {
    super(`${body.code}: ${body.message}`);
    this.code = body.code;
    this.status = status;
    this.brokerMessage = body.message;
  }
}

/**
 * The broker refused (HTTP 403): no template allows this call, the task expired, a call cap was
 * reached … `reason` is the human-readable explanation (the broker's `reason`, else its message),
 * `template` the template that decided when the broker names one.
 *
 * Thrown by `Task.token()`, and through `taskpassFetch` it rejects the MCP client's `callTool()`
 * with this same object.
 *
 * @example
 * ```ts
 * try {
 *   await mcp.callTool({ name: 'close_ticket', arguments: { ticket_id: 'T-1' } });
 * } catch (e) {
 *   if (e instanceof TaskpassDeniedError) askForApproval(e.code, e.reason, e.template);
 *   else throw e;
 * }
 * ```
 */
export class TaskpassDeniedError extends BrokerError {
  override readonly name: string = 'TaskpassDeniedError';
  /** Why the broker refused. */
  readonly reason: string;
  /** The scope template that decided, when the broker names one. */
  readonly template: string | undefined;

  constructor(status: number, body: BrokerErrorBody) {
    super(status, body);
    this.reason = body.reason ?? body.message;
    this.template = body.template;
  }
}

/** The `TASKPASS_APPROVAL_REQUIRED` answer, as {@link TaskpassApprovalRequiredError} is built from it. */
export interface ApprovalRequiredDetails {
  approvalId: string;
  approvalUrl: string;
  /** When the pending approval expires (the broker's `expires_at`). */
  expiresAt: Date;
  /** What the approver is asked: agent, user, task, tool, resource, action, arguments or their digest. */
  request: ApprovalSubject;
}

/**
 * The broker will issue this call's token only after a person approves it (403
 * `TASKPASS_APPROVAL_REQUIRED`, docs/approvals.md). Show {@link approvalUrl} to someone who may
 * approve, then {@link Task.waitForApproval} and ask for the token again; or let `taskpassFetch`
 * do all that with its `approval: { wait: true }` option.
 *
 * It extends {@link TaskpassDeniedError} on purpose: until someone approves, the call is refused,
 * and code written before approvals existed (`instanceof TaskpassDeniedError`, `isTaskpassDenial`)
 * keeps treating it as a refusal instead of retrying blindly. Check for this class first to wait.
 *
 * @example
 * ```ts
 * try {
 *   await task.token({ audience, tool: 'refund', resource: 'orders/o-1', action: 'write', argsSha256: argsSha256(args) });
 * } catch (e) {
 *   if (!(e instanceof TaskpassApprovalRequiredError)) throw e;
 *   tellUser(`waiting for approval: ${e.approvalUrl} (until ${e.expiresAt.toISOString()})`);
 *   await task.waitForApproval(e.approvalId, { timeoutMs: 10 * 60_000 });
 *   // ask for the token again: it now names the approver
 * }
 * ```
 */
export class TaskpassApprovalRequiredError extends TaskpassDeniedError {
  override readonly name: string = 'TaskpassApprovalRequiredError';
  /** The approval's id (`apr_…`), for {@link Task.waitForApproval}. */
  readonly approvalId: string;
  /** Where an approver opens the request. Not a secret; a host shows it to its user. */
  readonly approvalUrl: string;
  readonly expiresAt: Date;
  readonly request: ApprovalSubject;

  constructor(status: number, body: BrokerErrorBody, details: ApprovalRequiredDetails) {
    super(status, body);
    this.approvalId = details.approvalId;
    this.approvalUrl = details.approvalUrl;
    this.expiresAt = details.expiresAt;
    this.request = details.request;
  }
}

/**
 * True for a {@link TaskpassDeniedError} (a {@link TaskpassApprovalRequiredError} included), also
 * one from another copy of this package (checks the shape, not only the prototype).
 *
 * @example
 * ```ts
 * try {
 *   await mcp.callTool({ name: 'close_ticket', arguments: { ticket_id: 'T-1' } });
 * } catch (e) {
 *   if (isTaskpassDenial(e)) console.warn(`denied (${e.code}): ${e.reason}`);
 *   else throw e;
 * }
 * ```
 */
export function isTaskpassDenial(e: unknown): e is TaskpassDeniedError {
  if (e instanceof TaskpassDeniedError) return true;
  const x = e as Partial<TaskpassDeniedError> | null;
  return (
    typeof x === 'object' &&
    x !== null &&
    (x.name === 'TaskpassDeniedError' || x.name === 'TaskpassApprovalRequiredError') &&
    typeof x.code === 'string' &&
    typeof x.reason === 'string'
  );
}

/**
 * True for a {@link TaskpassApprovalRequiredError}, also one from another copy of this package.
 *
 * @example
 * ```ts
 * catch (e) { if (isApprovalRequired(e)) show(e.approvalUrl); else throw e; }
 * ```
 */
export function isApprovalRequired(e: unknown): e is TaskpassApprovalRequiredError {
  if (e instanceof TaskpassApprovalRequiredError) return true;
  const x = e as Partial<TaskpassApprovalRequiredError> | null;
  return (
    isTaskpassDenial(e) &&
    x?.name === 'TaskpassApprovalRequiredError' &&
    typeof x.approvalId === 'string' &&
    typeof x.approvalUrl === 'string'
  );
}
