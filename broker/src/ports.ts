// The small interfaces the HTTP layer needs from the policy engine, the signing keys and the
// revocation hub. The concrete classes (policy/, keys.ts, revocation-hub.ts) satisfy them
// structurally; tests may hand in fakes.
import type { Action, CeilingEntry } from '@taskpass/contract';
import type { BrokerErrorCode } from './errors.ts';
import type { ApprovalRule } from './policy/schema.ts';

/** The verified delegating user, as templates see it. */
export interface PolicyUser {
  iss: string;
  sub: string;
  claims: Record<string, unknown>;
}

/** Allowed: which template, its owner, the token ttl and single-use flag. */
export interface PolicyAllow {
  allow: true;
  template: string;
  owner?: string | undefined;
  ttlSec: number;
  singleUse: boolean;
  /** The token must carry the call's args_sha256 (the engine has checked one was given). */
  bindArguments?: boolean | undefined;
  /** A person must approve this call before its token is issued. */
  approval?: ApprovalRequirement | undefined;
  /** Decision points the allowing templates name; each must also allow (docs/policy-engines.md). */
  decisionPoints?: readonly string[] | undefined;
}

/** Why and by whose rules a call needs a person's approval (docs/approvals.md). */
export interface ApprovalRequirement {
  /** Ids of the templates whose rules ask for approval, sorted, space-separated. */
  template: string;
  /** The shortest `ttl` of those rules: how long the request stays pending. */
  ttlSec: number;
  /** Every rule asking; an approver must satisfy all of them. */
  rules: readonly ApprovalRule[];
}

/** May this person decide an approval? */
export type ApproverCheck =
  | { ok: true }
  | {
      ok: false;
      code: 'TASKPASS_APPROVER_NOT_ALLOWED' | 'TASKPASS_APPROVAL_SEPARATION_OF_DUTIES';
      reason: string;
    };

/** Denied with a stable code and a human reason (and the closest template when useful). */
export interface PolicyDeny {
  allow: false;
  code: BrokerErrorCode;
  reason: string;
  template?: string | undefined;
}
export type PolicyDecision = PolicyAllow | PolicyDeny;

/**
 * The workflow facts a decision may need about a task's earlier calls (call tokens ISSUED in it),
 * answered from targeted store queries rather than from the whole call history. A past call is
 * attributed to the template that issued it (the engine maps templates to audiences).
 */
export interface TaskHistory {
  /** Calls of `tool` issued in the task so far, per issuing template id. */
  callCounts(tool: string): ReadonlyMap<string, number>;
  /** Ids of the templates that issued a call of `tool` in the task — on `resource` when given. */
  priorTemplates(tool: string, resource?: string): ReadonlySet<string>;
}

/** Which {@link TaskHistory} lookups deciding a call may make (so they can be fetched first). */
export interface HistoryQueries {
  /** Tools whose `callCounts` may be asked. */
  counts: string[];
  /** `priorTemplates` lookups that may be made (`resource` undefined: on any resource). */
  prior: { tool: string; resource?: string | undefined }[];
}

/** Where a template's entry is in the policy directory (when the loader knows it). */
export interface PolicySourceLocation {
  file: string;
  path: string;
  line?: number | undefined;
  col?: number | undefined;
}

/** A template that widens another's rule for the same agent, tool and resource (advisory). */
export interface PolicyWarningView {
  kind: 'overlap-widens';
  template: string;
  widens: string;
  audience: string;
  tool: string;
  action: Action;
  widened: readonly { condition: string; detail: string }[];
  message: string;
  at?: PolicySourceLocation | undefined;
  other?: PolicySourceLocation | undefined;
}

/** What the broker asks of the current policy set. */
export interface PolicyPort {
  /** Overlap warnings of the loaded set (never block loading); absent means none known. */
  readonly warnings?: readonly PolicyWarningView[];
  /** May this agent open a task (for this user, or autonomously when user is undefined)? */
  admits(
    agent: string,
    user: PolicyUser | undefined,
  ): { ok: true } | { ok: false; code: BrokerErrorCode; reason: string };
  ceiling(agent: string, user: PolicyUser | undefined): CeilingEntry[];
  /** Longest task lifetime any admitting template allows. */
  maxTaskTtlSec(agent: string, user: PolicyUser | undefined): number;
  decide(input: {
    agent: string;
    user: PolicyUser | undefined;
    audience: string;
    tool: string;
    action: Action;
    resource: string;
    /** Only the lookups that `historyQueries` named for the same call are made. */
    history: TaskHistory;
    /** Seconds since the task was opened (templates' max_task_ttl bounds their grants). */
    taskAgeSec?: number | undefined;
    /** The digest the token would be bound to, when sent. */
    argsSha256?: string | undefined;
    /** The call's arguments, when sent (already checked against argsSha256). */
    arguments?: Readonly<Record<string, unknown>> | undefined;
  }): PolicyDecision;
  /** The history lookups `decide` may make for this call (superset allowed). */
  historyQueries(input: { audience: string; tool: string; action: Action; resource: string }): HistoryQueries;
  /**
   * The Vault paths (`vault_secret:`) of the rules for this tool and action in the templates that
   * allowed a call token (`tpl`), where they still admit its agent and audience. Sorted, distinct.
   */
  vaultSecrets?(input: {
    templates: readonly string[];
    agent: string;
    audience: string;
    tool: string;
    action: Action;
  }): string[];
  /** A session token for this audience: which template allows it and its ttl; undefined if none. */
  session(
    agent: string,
    user: PolicyUser | undefined,
    audience: string,
    taskAgeSec?: number,
  ): { template: string; owner?: string | undefined; ttlSec: number } | undefined;
}

/** What the broker needs from the signing keys. */
export interface KeysPort {
  /** The key that signs now: in-process, or a remote signer (Vault Transit). */
  current(): import('./mint.ts').TokenSigningKey;
  jwks(): { keys: Record<string, unknown>[] } | Promise<{ keys: Record<string, unknown>[] }>;
  /** How the private keys are kept in the store; reported on /readyz. */
  readonly protection?: 'encrypted' | 'plaintext' | 'vault-transit';
}
