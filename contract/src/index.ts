/**
 * @taskpass/contract — the wire language broker, verifier and agent plugin share: token claims
 * (RFC 9068, 9396, 8693, 8705), action classes, the resource grammar and its template compiler,
 * `args_sha256`, approvals, the MCP `_meta` keys, the revocation feed format and the ceiling entry.
 * No dependency on the other packages.
 */
export { ACTIONS, type Action, isAction } from './action.ts';
export {
  APPROVAL_DECISIONS,
  APPROVAL_ID,
  APPROVAL_STATUSES,
  type ApprovalClaim,
  type ApprovalDecision,
  type ApprovalDecisionRecord,
  type ApprovalDecisionRequest,
  type ApprovalRequiredBody,
  type ApprovalStatus,
  type ApprovalSubject,
  type ApprovalView,
  type ApproverRef,
} from './approval.ts';
export { argsSha256, canonicalJson } from './args-sha256.ts';
export type { CeilingEntry, CeilingTool } from './ceiling.ts';
export {
  ACCESS_TOKEN_TYPE,
  type ActorClaim,
  type AuthorizationDetail,
  type CallTokenClaims,
  type ConfirmationClaim,
  type McpSessionDetail,
  type McpToolCallDetail,
} from './claims.ts';
export { COMPLETION_STATUSES, type CompletionStatus } from './completion.ts';
export {
  CREDENTIALS_PATH,
  type CredentialRequest,
  isVaultPath,
  type LeasedCredentialResponse,
  SUBJECT_TOKEN_TYPE_ACCESS,
  VAULT_PATH_PATTERN,
} from './credentials.ts';
export { CONTRACT_ERRORS, ContractError, type ContractErrorCode } from './errors.ts';
export { decodeMcpHeaderValue, encodeMcpHeaderValue, MCP_NAME_SOURCE, mcpNameOf } from './mcp-headers.ts';
export { META_ACTION, META_ERROR, META_RESOURCE, META_TOKEN } from './meta.ts';
export {
  checkResource,
  isResourceChar,
  isResourceSegment,
  isValidResource,
  MAX_RESOURCE_BYTES,
  RESOURCE_SEGMENT_CHARS,
  type ResourceCheck,
} from './resource.ts';
export {
  checkedDeriver,
  compileResourceTemplate,
  type ResourceDeriver,
  type ToolArgs,
} from './resource-template.ts';
export {
  FEED_EVENTS,
  FEED_VERSION,
  FEED_VERSION_HEADER,
  isRevocation,
  type Revocation,
} from './revocation.ts';
export { x5tS256 } from './thumbprint.ts';
