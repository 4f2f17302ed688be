// Decision points behind the templates (issue #11): OPA, Cedar and any AuthZEN 1.0 PDP. Templates
// stay the ceiling — a decision point is only ever asked about a call a template already allows, and
// can only take it away. Every engine sees the same input, shaped after the AuthZEN 1.0 evaluation
// request (subject, action, resource, context); docs/policy-engines.md writes the mapping down.
import type { Action } from '@taskpass/contract';

/** What every decision point is asked: one call, in AuthZEN 1.0's four parts. */
export interface PdpInput {
  subject: {
    /** `agent` always; the AuthZEN subject type. */
    type: 'agent';
    /** The agent's SPIFFE ID. */
    id: string;
    properties: {
      /** The delegating user (absent for an autonomous task). */
      user?: { iss: string; sub: string; claims: Record<string, unknown> } | undefined;
    };
  };
  action: {
    /** The MCP tool name. */
    name: string;
    properties: { action_class: Action };
  };
  resource: {
    /** `mcp_resource`; the AuthZEN resource type. */
    type: 'mcp_resource';
    /** The call's resource string. */
    id: string;
    properties: {
      /** The MCP server's resource URI (the token's `aud`). */
      audience: string;
    };
  };
  context: {
    task?: { id: string; purpose?: string | undefined; age_sec?: number | undefined } | undefined;
    /** Calls of this tool already issued in the task (the count the templates compute). */
    calls_of_tool?: number | undefined;
    /** The allowing templates' ids. */
    templates: readonly string[];
    /** The call's arguments, when the token is bound to them. */
    arguments?: Readonly<Record<string, unknown>> | undefined;
    /** The approval, when a person approved the call. */
    approval?: { id: string; approver: { iss: string; sub: string } } | undefined;
    /** Request time, RFC 3339. */
    time: string;
  };
}

/**
 * An engine's answer. `allow: false` with `code` `TASKPASS_PDP_DENIED` is the engine saying no;
 * `TASKPASS_PDP_UNAVAILABLE` is an engine that errored, timed out or answered garbage (fail closed).
 * `reason` names the engine (and policy, when known). `cacheable`: the engine said this answer may
 * be reused for identical input while `version` is unchanged.
 */
export type PdpDecision =
  | {
      allow: true;
      engine: string;
      policy?: string | undefined;
      cacheable?: boolean | undefined;
      /** How long the engine said this answer may be reused (with `cacheable`); default 60 s. */
      cacheTtlSec?: number | undefined;
    }
  | {
      allow: false;
      code: 'TASKPASS_PDP_DENIED' | 'TASKPASS_PDP_UNAVAILABLE';
      reason: string;
      engine: string;
      policy?: string | undefined;
    };

/** One configured decision point. Implementations never throw from `decide`: they fail closed. */
export interface DecisionPoint {
  /** The configured name (templates refer to it by `decision_point: <name>`). */
  readonly name: string;
  readonly kind: 'opa' | 'cedar' | 'authzen';
  /** Identifies the policy in force (cache key part); changes on reload. */
  version(): string;
  decide(input: PdpInput, signal?: AbortSignal): Promise<PdpDecision>;
  close(): Promise<void>;
}
