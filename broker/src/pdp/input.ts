// The one place a call becomes a decision point's input (docs/policy-engines.md "The input"):
// every engine sees the same four parts, shaped after the AuthZEN 1.0 evaluation request.
import type { Action } from '@taskpass/contract';
import type { PolicyUser } from '../ports.ts';
import type { PdpInput } from './types.ts';

/** What the issuance path knows about a call once the templates allowed it. */
export interface CallFacts {
  agent: string;
  user: PolicyUser | undefined;
  task: { id: string; purpose: string; createdAt: number };
  call: { audience: string; tool: string; resource: string; action: Action };
  /** The allowing templates' ids. */
  templates: readonly string[];
  /** Calls of the tool already issued in the task, when fetched. */
  callsOfTool?: number | undefined;
  /** The call's arguments, when the token is bound to them and they were sent. */
  arguments?: Readonly<Record<string, unknown>> | undefined;
  approval?: { id: string; approver: { iss: string; sub: string } } | undefined;
  /** Epoch milliseconds. */
  now: number;
}

export function pdpInputOf(f: CallFacts): PdpInput {
  const nowSec = Math.floor(f.now / 1000);
  return {
    subject: {
      type: 'agent',
      id: f.agent,
      properties: f.user ? { user: { iss: f.user.iss, sub: f.user.sub, claims: f.user.claims } } : {},
    },
    action: { name: f.call.tool, properties: { action_class: f.call.action } },
    resource: { type: 'mcp_resource', id: f.call.resource, properties: { audience: f.call.audience } },
    context: {
      task: { id: f.task.id, purpose: f.task.purpose, age_sec: nowSec - f.task.createdAt },
      ...(f.callsOfTool !== undefined ? { calls_of_tool: f.callsOfTool } : {}),
      templates: [...f.templates],
      ...(f.arguments !== undefined ? { arguments: f.arguments } : {}),
      ...(f.approval ? { approval: f.approval } : {}),
      time: new Date(f.now).toISOString(),
    },
  };
}
