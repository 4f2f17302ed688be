// The small interfaces the HTTP layer needs from the policy engine, the signing keys and the
// revocation hub. The concrete classes (policy/, keys.ts, revocation-hub.ts) satisfy them
// structurally; tests may hand in fakes.
import type { BrokerErrorCode } from './errors.ts';
import type { Action, IssuedCall } from './store/types.ts';

/** The verified delegating user, as templates see it. */
export interface PolicyUser {
  iss: string;
  sub: string;
  claims: Record<string, unknown>;
}

/** One entry of a task's ceiling. */
export interface CeilingEntry {
  template: string;
  audience: string;
  tools: { tool: string; action: Action; resources: string[] }[];
}

/** Allowed: which template, its owner, the token ttl and single-use flag. */
export interface PolicyAllow {
  allow: true;
  template: string;
  owner?: string | undefined;
  ttlSec: number;
  singleUse: boolean;
}
/** Denied with a stable code and a human reason (and the closest template when useful). */
export interface PolicyDeny {
  allow: false;
  code: BrokerErrorCode;
  reason: string;
  template?: string | undefined;
}
export type PolicyDecision = PolicyAllow | PolicyDeny;

/** What the broker asks of the current policy set. */
export interface PolicyPort {
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
    history: readonly IssuedCall[];
  }): PolicyDecision;
  /** A session token for this audience: which template allows it and its ttl; undefined if none. */
  session(
    agent: string,
    user: PolicyUser | undefined,
    audience: string,
  ): { template: string; owner?: string | undefined; ttlSec: number } | undefined;
}

/** What the broker needs from the signing keys. */
export interface KeysPort {
  current(): {
    kid: string;
    privateKey: import('node:crypto').webcrypto.CryptoKey | import('node:crypto').KeyObject;
  };
  jwks(): { keys: Record<string, unknown>[] } | Promise<{ keys: Record<string, unknown>[] }>;
}
