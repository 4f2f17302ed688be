// Every way a forwarded tools/call can fail, as an MCP tool result a person can read (`isError:
// true`): the host shows it to its user or its model instead of crashing, and the text says the
// stable code, the reason, the template and — when a person can lift the refusal — where to approve.
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { AgentPluginError, BrokerError, isApprovalRequired, isTaskpassDenial } from '@taskpass/agent-plugin';
import { ProxyError } from './errors.ts';

/** What a tool error says, also in `_meta["dev.taskpass/error"]` for hosts that read it. */
export interface ToolErrorFacts {
  code: string;
  reason: string;
  template?: string;
  approvalId?: string;
  approvalUrl?: string;
  expiresAt?: string;
}

export const META_ERROR = 'dev.taskpass/error';

// An AgentPluginError's message starts with its code; the reason is what follows.
const withoutCode = (message: string, code: string) =>
  message.startsWith(`${code}: `) ? message.slice(code.length + 2) : message;

/** The facts of an error thrown while forwarding `tool` to `upstream`. */
export function errorFacts(
  e: unknown,
  ctx: { upstream: string; approvalTimeoutMs?: number },
): ToolErrorFacts {
  if (isApprovalRequired(e)) {
    return {
      code: e.code,
      reason: e.reason,
      ...(e.template ? { template: e.template } : {}),
      approvalId: e.approvalId,
      approvalUrl: e.approvalUrl,
      expiresAt: e.expiresAt.toISOString(),
    };
  }
  if (isTaskpassDenial(e)) {
    return { code: e.code, reason: e.reason, ...(e.template ? { template: e.template } : {}) };
  }
  if (e instanceof BrokerError) return { code: e.code, reason: e.brokerMessage };
  if (e instanceof AgentPluginError) {
    const reason = withoutCode(e.message, e.code);
    return {
      code: e.code,
      reason:
        e.code === 'TASKPASS_AGENT_BROKER_UNREACHABLE'
          ? `the Taskpass broker could not be reached (${reason}); the call was not sent`
          : reason,
    };
  }
  if (e instanceof ProxyError) return { code: e.code, reason: e.message };
  if (e instanceof DOMException && e.name === 'TimeoutError') {
    return {
      code: 'TASKPASS_PROXY_APPROVAL_TIMEOUT',
      reason: `no one decided the approval within ${Math.round((ctx.approvalTimeoutMs ?? 0) / 1000)} s; the call was not sent`,
    };
  }
  const message = e instanceof Error ? e.message : String(e);
  return {
    code: 'TASKPASS_PROXY_UPSTREAM_FAILED',
    reason: `the MCP server "${ctx.upstream}" failed: ${message}`,
  };
}

/** The text a person reads. */
export function errorText(f: ToolErrorFacts, tool: string): string {
  const lines: string[] = [];
  if (f.approvalUrl) {
    lines.push(`The call of ${tool} needs a person's approval before it can run (${f.code}).`);
  } else if (f.code.startsWith('TASKPASS_DENIED') || f.code.startsWith('TASKPASS_APPROVAL')) {
    lines.push(`Taskpass refused the call of ${tool} (${f.code}).`);
  } else {
    lines.push(`The call of ${tool} could not be made (${f.code}).`);
  }
  lines.push(`Reason: ${f.reason}`);
  if (f.template) lines.push(`Template: ${f.template}`);
  if (f.approvalUrl) {
    lines.push(`Approve at: ${f.approvalUrl} (expires ${f.expiresAt})`);
    lines.push('Ask someone who may approve it to open the link, then call the tool again.');
  }
  return lines.join('\n');
}

/**
 * A tools/call failure as a readable MCP tool error.
 *
 * @example
 * ```ts
 * try { return await client.callTool(params); }
 * catch (e) { return toolErrorResult(e, 'tickets.delete_ticket', { upstream: 'tickets' }); }
 * ```
 */
export function toolErrorResult(
  e: unknown,
  tool: string,
  ctx: { upstream: string; approvalTimeoutMs?: number },
): CallToolResult {
  const facts = errorFacts(e, ctx);
  return {
    isError: true,
    content: [{ type: 'text', text: errorText(facts, tool) }],
    _meta: { [META_ERROR]: { ...facts } },
  };
}
