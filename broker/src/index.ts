// Public API of @taskpass/broker.
export { type AppDeps, buildApp } from './app.ts';
export { type AuditEvent, type AuditLog, createAuditLog } from './audit.ts';
export {
  agentMatcherFromConfig,
  bearerOf,
  type Credentials,
  type IdMatcher,
  isPeerIdentityPinned,
  peerChainFromSocket,
  pinPeerIdentity,
  spiffeIdPatternMatcher,
  type WorkloadAuthenticator,
  type WorkloadIdentity,
  x5tS256Of,
} from './auth.ts';
export { runCli } from './cli.ts';
export {
  type BrokerConfig,
  type BrokerConfigInput,
  ConfigSchema,
  ENV_VARS,
  loadConfig,
  parseConfig,
  parseDurationSec,
  type TrustedIssuerConfig,
} from './config.ts';
export { BROKER_ERRORS, type BrokerErrorCode, TaskpassError } from './errors.ts';
export {
  AesGcmKeyWrapper,
  generateKek,
  type KeyWrapper,
  keyWrapperFromConfig,
  PlaintextKeyWrapper,
  parseKekRing,
} from './key-wrap.ts';
export { SigningKeys, type SigningKeysOptions } from './keys.ts';
export { type BrokerMetrics, createMetrics } from './metrics.ts';
export {
  type ActClaim,
  type AuthorizationDetail,
  type MintInput,
  mintToken,
  type TokenClaims,
} from './mint.ts';
export type {
  CeilingEntry,
  HistoryQueries,
  KeysPort,
  PolicyDecision,
  PolicyPort,
  PolicyUser,
  TaskHistory,
} from './ports.ts';
export {
  compilePattern,
  loadPolicyDir,
  PolicyWatcher,
  type PolicyWatcherOptions,
  validateResource,
} from './policy/index.ts';
export { FeedOverflowError, RevocationHub, type RevocationHubOptions } from './revocation-hub.ts';
export { authorizationServerMetadata } from './routes/public.ts';
export { type RevocationRoutesOptions, revocationRoutes } from './routes/revocations.ts';
export { type RunningBroker, startBroker } from './server.ts';
export { checkResource, type IssuedToken, TaskService } from './service.ts';
export {
  createStore,
  RedisStore,
  type RedisStoreOptions,
  SqliteStore,
  type SqliteStoreOptions,
} from './store/index.ts';
export { REVOCATION_GRACE_SEC } from './store/types.ts';
export type * from './store/types.ts';
export { createUserTokenVerifier, type UserTokenVerifier, type VerifiedUser } from './user-tokens.ts';
export { createWorkloadAuthenticator } from './workload-auth.ts';
