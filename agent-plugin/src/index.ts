// Public API of @taskpass/agent-plugin: the broker client, task handles and the MCP client glue.
// The wire language shared with broker and verifier, re-exported so an agent needs one import.
export {
  type Action,
  argsSha256,
  type CeilingEntry,
  type CompletionStatus,
  isValidResource,
  META_ACTION,
  META_RESOURCE,
  META_TOKEN,
  type ToolArgs,
} from '@taskpass/contract';
export {
  type BrokerAuth,
  BrokerClient,
  type BrokerClientOptions,
  type CallTokenRequest,
  type CompleteResult,
  type InsecureAuth,
  IssuedToken,
  type JwtSvidAuth,
  type JwtSvidSource,
  type MtlsAuth,
  type OpenedTask,
  type TaskInfo,
} from './broker-client.ts';
export {
  AGENT_ERRORS,
  type AgentErrorCode,
  AgentPluginError,
  BrokerError,
  type BrokerErrorBody,
  isTaskpassDenial,
  TaskpassDeniedError,
} from './errors.ts';
export {
  type CallToolParams,
  type CallToolTokenOptions,
  type FetchLike,
  type ResolvedCall,
  ToolCatalog,
  type ToolCatalogOptions,
  type ToolDeclaration,
  type ToolDeclarations,
  type ToolLike,
  type TaskpassFetch,
  type TaskpassFetchOptions,
  taskpassCallTool,
  taskpassFetch,
  withCallToken,
} from './mcp.ts';
export { Task, type TaskState, type TokenRequest } from './task.ts';
