/**
 * @taskpass/verifier — per-call token checks for MCP servers.
 *
 * Framework-neutral core ({@link createVerifier}), node:http/express and fastify adapters, the
 * revocation feed client, RFC 9728 metadata, and MCP SDK glue.
 */
// The wire language shared with broker and agent, re-exported so a server needs one import.
export {
  type Action,
  argsSha256,
  compileResourceTemplate,
  isValidResource,
  META_ACTION,
  META_RESOURCE,
  META_TOKEN,
  type ResourceDeriver,
  type Revocation,
  type ToolArgs,
  x5tS256,
} from '@taskpass/contract';
export {
  type CallApproval,
  type CallAuth,
  type ClientCertificate,
  createVerifier,
  type FetchLike,
  type SessionAuth,
  type ToolCall,
  type ToolPolicy,
  type VerifiedToken,
  type Verifier,
  type VerifierOptions,
} from './core.ts';
export {
  CredentialError,
  LeasedCredential,
  TaskCredentials,
  type TaskCredentialsOptions,
  type VerifiedCall,
} from './credentials.ts';
export {
  JSONRPC_HEADER_MISMATCH,
  JSONRPC_INVALID_REQUEST,
  JSONRPC_PARSE_ERROR,
  VERIFIER_ERRORS,
  VerifierError,
  type VerifierErrorCode,
} from './errors.ts';
export {
  type BodyLimits,
  DEFAULT_MAX_BODY_BYTES,
  DEFAULT_MAX_JSON_DEPTH,
  JsonNestingGuard,
  readJsonBody,
} from './body.ts';
export {
  type FastifyHookHost,
  type FastifyReplyLike,
  type FastifyRequestLike,
  type FastifyVerifierOptions,
  taskpassFastify,
  taskpassOnRequest,
  taskpassPreHandler,
} from './fastify.ts';
export {
  type ClientCertificateOptions,
  clientCertificateOf,
  type MiddlewareOptions,
  type ProxyTrust,
  proxyTrust,
  requestHeaders,
  sendRefusal,
  type TaskpassRequest,
  taskpassMiddleware,
} from './http.ts';
export { type JwsHeader, MAX_TOKEN_LENGTH, parseCompactJws } from './jws.ts';
export { decodeMcpHeaderValue, encodeMcpHeaderValue, MCP_NAME_SOURCE, mcpNameOf } from './mcp-headers.ts';
export {
  type PrmOptions,
  type ProtectedResourceMetadata,
  prmHandler,
  protectedResourceMetadata,
  protectedResourceMetadataPath,
  protectedResourceMetadataUrl,
  registerProtectedResourceMetadata,
} from './resource-metadata.ts';
export {
  DEFAULT_REPLAY_MAX_ENTRIES,
  MemoryReplayCache,
  type RedisEval,
  RedisReplayCache,
  type ReplayCache,
  ReplayCacheFullError,
} from './replay.ts';
export {
  authorizeMcpRequest,
  bearerToken,
  type HttpRefusal,
  type McpHttpRequest,
  refusal,
  requestBearerToken,
  type TaskpassAuthExtra,
  wwwAuthenticate,
} from './request.ts';
export {
  type BrokerConnection,
  pullRevocations,
  RevocationFeedClient,
  type RevocationFeedOptions,
  type RevocationSource,
} from './revocation.ts';
export { callerOf, type ExtraLike, taskpassTokenVerifier, withTaskpass } from './sdk-v1.ts';
