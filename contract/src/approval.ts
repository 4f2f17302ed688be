// Approvals (docs/approvals.md): a call a template marks "not without a human" waits for a person
// with their own verified identity to decide. The broker answers the token request with
// TASKPASS_APPROVAL_REQUIRED and an approval; an approver decides it; the next token request for
// the same call (same args_sha256) gets one token whose authorization detail names the approver.
//
// The request and decision objects follow the shape of the OpenID AuthZEN access request (subject,
// action, resource, context) where that helps interoperability; the field names are ours.
import type { Action } from './action.ts';

/** What an approver may answer. */
export const APPROVAL_DECISIONS = ['approve', 'deny'] as const;
/** `approve` or `deny`. */
export type ApprovalDecision = (typeof APPROVAL_DECISIONS)[number];

/**
 * The life of an approval: `pending` until decided; `approved` until its one token is issued
 * (`used`); `denied`; `expired` (nobody decided within its ttl, or it was approved and never used
 * before then); `cancelled` (its task was completed, failed, cancelled or revoked first).
 */
export const APPROVAL_STATUSES = ['pending', 'approved', 'denied', 'expired', 'cancelled', 'used'] as const;
/** One of {@link APPROVAL_STATUSES}. */
export type ApprovalStatus = (typeof APPROVAL_STATUSES)[number];

/** Approval ids: `apr_` and 128 random bits, base64url. */
export const APPROVAL_ID = /^apr_[A-Za-z0-9_-]{22}$/;

/** A person, as their verified token names them: issuer and subject. */
export interface ApproverRef {
  iss: string;
  sub: string;
}

/** The evidence of an approval inside a call token's `mcp_tool_call` authorization detail. */
export interface ApprovalClaim {
  /** The approval's id. */
  id: string;
  /** Who approved. */
  approver: ApproverRef;
  /** Epoch seconds. */
  approved_at: number;
}

/** What an approval asks: one call of one agent for one user, as the approver is shown it. */
export interface ApprovalSubject {
  /** The agent's SPIFFE ID. */
  agent: string;
  /** The user the task acts for (`sub` of its tokens). */
  user: string;
  task: { id: string; purpose: string };
  /** The MCP server's resource URI. */
  audience: string;
  tool: string;
  resource: string;
  action: Action;
  /** The digest of the call's arguments the token will be bound to. */
  args_sha256: string;
  /** The arguments themselves, when the agent sent them (templates whose `when:` reads them). */
  arguments?: Record<string, unknown>;
  /** The template whose rule asks for approval. */
  template: string;
}

/** A decision, once made. */
export interface ApprovalDecisionRecord {
  decision: ApprovalDecision;
  approver: ApproverRef;
  /** Epoch seconds. */
  decided_at: number;
  comment?: string;
}

/** `GET /v1/approvals/:id`, and each event of its stream. */
export interface ApprovalView {
  id: string;
  status: ApprovalStatus;
  /** Epoch seconds. */
  created_at: number;
  /** Epoch seconds: a pending approval expires then. */
  expires_at: number;
  /** Where an approver opens it. */
  approval_url: string;
  request: ApprovalSubject;
  decision?: ApprovalDecisionRecord;
}

/** The body of `POST /v1/approvals/:id/decision`. */
export interface ApprovalDecisionRequest {
  decision: ApprovalDecision;
  /** At most 1000 characters; shown to the agent and recorded in the audit log. */
  comment?: string;
}

/** The 403 answer to a token request that needs approval (`code: TASKPASS_APPROVAL_REQUIRED`). */
export interface ApprovalRequiredBody {
  code: 'TASKPASS_APPROVAL_REQUIRED';
  message: string;
  approval_id: string;
  approval_url: string;
  /** Epoch seconds. */
  expires_at: number;
  request: ApprovalSubject;
  template: string;
}
