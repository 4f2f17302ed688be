// What the upstream is told, and what it is not. Request headers reach it through an allowlist (the
// MCP transport's own headers), so the caller's Authorization header, its Client-Cert and any
// Taskpass-* header it made up never do; the guard then adds who is calling, from the verified
// token only. The upstream may believe these headers only from the guard: a request carrying the
// shared secret (Taskpass-Guard-Secret), or one arriving on a listener only the guard can reach.
import type { IncomingHttpHeaders } from 'node:http';
import { APPROVAL_ID, encodeMcpHeaderValue } from '@taskpass/contract';
import type { TaskpassAuthExtra } from '@taskpass/verifier';
import { decodeJwt } from 'jose';

/** The request headers forwarded as they came: the Streamable HTTP transport's own. */
export const FORWARDED_REQUEST_HEADERS = [
  'accept',
  'content-type',
  'last-event-id',
  'mcp-method',
  'mcp-name',
  'mcp-protocol-version',
  'mcp-session-id',
  'user-agent',
] as const;

/** The identity headers the guard sets (and the only Taskpass-* headers the upstream receives). */
export const IDENTITY_HEADERS = {
  user: 'taskpass-user',
  agent: 'taskpass-agent',
  task: 'taskpass-task',
  jti: 'taskpass-jti',
  tokenType: 'taskpass-token-type',
  tool: 'taskpass-tool',
  resource: 'taskpass-resource',
  action: 'taskpass-action',
  approvalId: 'taskpass-approval-id',
  approver: 'taskpass-approver',
  approverIssuer: 'taskpass-approver-issuer',
} as const;

/** The shared-secret header proving a request came through the guard. */
export const GUARD_SECRET_HEADER = 'taskpass-guard-secret';

/** Hop-by-hop headers (RFC 9110 §7.6.1) never copied from the upstream's answer. */
const HOP_BY_HOP = new Set([
  'connection',
  'keep-alive',
  'proxy-authenticate',
  'proxy-connection',
  'te',
  'trailer',
  'transfer-encoding',
  'upgrade',
]);

/** An approval as the token's authorization detail carries it (docs/approvals.md). */
export interface ApprovalEvidence {
  id: string;
  approver: { iss: string; sub: string };
}

/**
 * The approval in a verified token's `mcp_tool_call` detail, when it has a well-formed one. The
 * token was verified before this is read; a malformed approval is simply not reported.
 */
export function approvalOf(token: string): ApprovalEvidence | undefined {
  const details = decodeJwt(token).authorization_details;
  const a = Array.isArray(details) ? (details[0] as { approval?: unknown } | undefined)?.approval : undefined;
  if (typeof a !== 'object' || a === null) return undefined;
  const { id, approver } = a as { id?: unknown; approver?: { iss?: unknown; sub?: unknown } };
  if (typeof id !== 'string' || !APPROVAL_ID.test(id)) return undefined;
  if (typeof approver?.iss !== 'string' || typeof approver.sub !== 'string') return undefined;
  return { id, approver: { iss: approver.iss, sub: approver.sub } };
}

/** Who is calling, from the verified token: what the identity headers (or, over stdio, `_meta`) carry. */
export type CallerIdentity = Partial<Record<keyof typeof IDENTITY_HEADERS, string>>;

/**
 * The caller's identity from the middleware's `req.auth` (undefined without a verified token).
 *
 * @example
 * ```ts
 * callerIdentity(req.auth); // { user: 'alice', agent: 'spiffe://…', task: 'tsk_…', tool: 'read_note', … }
 * ```
 */
export function callerIdentity(auth: {
  token: string;
  extra?: Record<string, unknown> | undefined;
}): CallerIdentity | undefined {
  const who = (auth.extra as TaskpassAuthExtra | undefined)?.taskpass;
  if (!who) return undefined;
  const id: CallerIdentity = { user: who.user, agent: who.agent, task: who.task, jti: who.jti };
  if (who.kind === 'session') return { ...id, tokenType: who.tokenType };
  Object.assign(id, {
    tokenType: 'mcp_tool_call',
    tool: who.tool,
    resource: who.resource,
    action: who.action,
  });
  const approval = approvalOf(auth.token);
  if (approval) {
    Object.assign(id, {
      approvalId: approval.id,
      approver: approval.approver.sub,
      approverIssuer: approval.approver.iss,
    });
  }
  return id;
}

/**
 * The headers of the request to the upstream: the allowlisted transport headers, the identity of
 * the verified caller (values in the MCP header encoding: as is when plain ASCII, else
 * `=?base64?…?=`), and the shared secret when configured.
 *
 * @example
 * ```ts
 * const headers = upstreamRequestHeaders(req.headers, callerIdentity(req.auth), secret);
 * // { 'content-type': 'application/json', 'taskpass-user': 'alice', 'taskpass-tool': 'read_note', … }
 * ```
 */
export function upstreamRequestHeaders(
  incoming: IncomingHttpHeaders,
  identity: CallerIdentity | undefined,
  secret?: string,
): Record<string, string> {
  const out: Record<string, string> = {};
  for (const name of FORWARDED_REQUEST_HEADERS) {
    const v = incoming[name];
    if (typeof v === 'string') out[name] = v;
    else if (Array.isArray(v)) out[name] = v.join(', ');
  }
  for (const [k, v] of Object.entries(identity ?? {})) {
    if (v !== undefined) out[IDENTITY_HEADERS[k as keyof typeof IDENTITY_HEADERS]] = encodeMcpHeaderValue(v);
  }
  if (secret !== undefined) out[GUARD_SECRET_HEADER] = secret;
  return out;
}

/** The upstream's response headers the caller gets: all but hop-by-hop ones. */
export function downstreamResponseHeaders(
  headers: Record<string, string | string[] | undefined>,
): Record<string, string | string[]> {
  const out: Record<string, string | string[]> = {};
  for (const [name, v] of Object.entries(headers)) {
    if (v === undefined || HOP_BY_HOP.has(name.toLowerCase())) continue;
    out[name] = v;
  }
  return out;
}
