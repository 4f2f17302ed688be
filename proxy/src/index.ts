/**
 * @taskpass/proxy — Taskpass in front of MCP servers in any language.
 *
 * `taskpass guard` ({@link startGuard}): an enforcing reverse proxy that terminates mTLS with its
 * own SVID, runs the verifier's checks on every request and forwards what passes to an MCP server
 * (Streamable HTTP or stdio) with the caller's identity in Taskpass-* headers.
 */
export {
  EXAMPLE_CONFIG,
  type GuardConfig,
  type GuardConfigInput,
  GuardConfigSchema,
  isLoopbackHost,
  loadGuardConfig,
  parseGuardConfig,
} from './guard/config.ts';
export { GUARD_ERRORS, GuardError, type GuardErrorCode } from './guard/errors.ts';
export {
  type ApprovalEvidence,
  approvalOf,
  type CallerIdentity,
  callerIdentity,
  downstreamResponseHeaders,
  FORWARDED_REQUEST_HEADERS,
  GUARD_SECRET_HEADER,
  IDENTITY_HEADERS,
  upstreamRequestHeaders,
} from './guard/headers.ts';
export { createGuardMetrics, type GuardMetrics } from './guard/metrics.ts';
export {
  type GuardOptions,
  type GuardReadiness,
  type RunningGuard,
  startGuard,
} from './guard/server.ts';
export { type SkippedTool, toolPolicies } from './guard/tools.ts';
export { META_CALLER, type UpstreamTool } from './guard/upstream.ts';
export { runCli } from './cli.ts';
