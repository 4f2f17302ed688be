// The claims of a Taskpass call or session token (docs/design.md §2): an RFC 9068 access token
// with RFC 9396 authorization details, an RFC 8693 actor and an RFC 8705 certificate binding.
import type { Action } from './action.ts';
import type { ApprovalClaim } from './approval.ts';

/** JOSE header `typ` of every Taskpass token (RFC 9068 §2.1). */
export const ACCESS_TOKEN_TYPE = 'at+jwt';

/** RFC 9396 authorization detail of a call token: one tool, one resource, one action class. */
export interface McpToolCallDetail {
  type: 'mcp_tool_call';
  tool: string;
  resource: string;
  action: Action;
  /** Binds the token to the exact call arguments (see `argsSha256`). */
  args_sha256?: string;
  /** Present when a person approved this call (docs/approvals.md); `args_sha256` is then present too. */
  approval?: ApprovalClaim;
}

/** RFC 9396 authorization detail of a session token: permits no tool call. */
export interface McpSessionDetail {
  type: 'mcp_session';
}

/** The one RFC 9396 authorization detail a Taskpass token carries. */
export type AuthorizationDetail = McpToolCallDetail | McpSessionDetail;

/** RFC 8693 §4.1 actor claim; nested for sub-agents, the current actor outermost. */
export interface ActorClaim {
  sub: string;
  act?: ActorClaim;
}

/** RFC 8705 §3.1 confirmation claim: the SHA-256 thumbprint of the agent's client certificate. */
export interface ConfirmationClaim {
  'x5t#S256': string;
}

/** The claim set of a Taskpass call or session token. */
export interface CallTokenClaims {
  iss: string;
  /** The delegating user, or the agent's SPIFFE ID for autonomous tasks. */
  sub: string;
  act: ActorClaim;
  /** The agent's SPIFFE ID. */
  client_id: string;
  /** Exactly one MCP server: its resource URI (RFC 8707). */
  aud: string;
  iat: number;
  exp: number;
  jti: string;
  /** The task id. */
  txn: string;
  /** Exactly one entry. */
  authorization_details: AuthorizationDetail[];
  cnf?: ConfirmationClaim;
  single_use?: true;
  /** Ids of the templates that allowed the call, sorted, space-separated. */
  tpl: string;
}
