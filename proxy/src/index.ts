/**
 * @taskpass/proxy — Taskpass in front of MCP servers in any language, and behind MCP hosts that
 * cannot be changed.
 *
 * `taskpass proxy` ({@link startProxy}): the agent side. An MCP host launches it as its MCP server;
 * it opens a task for the configured user and purpose and forwards tools/call to the upstream MCP
 * servers with a fresh call token each (agent-plugin's taskpassFetch).
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
export {
  CONFIG_HOSTS,
  type ConfigHost,
  EXAMPLE_PROXY_CONFIG,
  hostConfig,
  loadProxyConfig,
  parseProxyConfig,
  type ProxyConfig,
  type ProxyConfigInput,
  ProxyConfigSchema,
  type ProxyUpstreamConfig,
} from './agent/config.ts';
export {
  type DeviceLoginOptions,
  type DeviceLoginResult,
  type DevicePrompt,
  deviceLogin,
} from './agent/device-login.ts';
export { PROXY_ERRORS, ProxyError, type ProxyErrorCode } from './agent/errors.ts';
export {
  AgentProxy,
  type AgentProxyDeps,
  type ApprovalNotice,
  type HostCallContext,
  TOKEN_CHANNEL,
  type TokenMessage,
} from './agent/proxy.ts';
export {
  checkHostAndOrigin,
  createHostServer,
  type ProxyOptions,
  type RunningProxy,
  startProxy,
} from './agent/server.ts';
export {
  errorFacts,
  errorText,
  META_ERROR,
  type ToolErrorFacts,
  toolErrorResult,
} from './agent/tool-errors.ts';
export { exposeTools, type ToolRoute, type UpstreamTools } from './agent/tools.ts';
export { devicePromptText, type UserTokenSource, userTokenSource } from './agent/user-token.ts';
