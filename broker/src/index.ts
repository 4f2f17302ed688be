// Public API of @taskpass/broker.
// The wire language (claims, actions, ceiling, revocations) is @taskpass/contract's; re-exported so
// code embedding the broker needs one import.
export type {
  Action,
  ActorClaim,
  ApprovalClaim,
  ApprovalRequiredBody,
  ApprovalView,
  AuthorizationDetail,
  CallTokenClaims,
  CeilingEntry,
  Revocation,
} from '@taskpass/contract';
export { type AppDeps, buildApp } from './app.ts';
export { ApprovalService, approvalUrl, approvalView } from './approvals.ts';
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
export { BROKER_ERRORS, type BrokerErrorCode, BrokerError } from './errors.ts';
export {
  AesGcmKeyWrapper,
  generateKek,
  type KeyWrapper,
  keyWrapperFromConfig,
  PlaintextKeyWrapper,
  parseKekRing,
} from './key-wrap.ts';
export { SigningKeys, type SigningKeysOptions } from './keys.ts';
export { TransitSigner, type TransitSignerOptions, type VaultPort } from './transit-signer.ts';
export {
  type LeasedCredential,
  LeasedCredentials,
  type LeasedCredentialsOptions,
} from './leased-credentials.ts';
export { backoffSec, LeaseRevoker, type LeaseRevokerOptions } from './lease-revoker.ts';
export {
  type VaultAuth,
  VaultClient,
  type VaultClientOptions,
  type VaultHealth,
  VaultRequestError,
  type VaultResponse,
  VaultUnavailableError,
} from './vault.ts';
export { connectVault } from './signer.ts';
export { type BrokerMetrics, createMetrics } from './metrics.ts';
export { type MintInput, mintToken, mintTokenWith, type TokenSigningKey } from './mint.ts';
export type {
  ApprovalRequirement,
  ApproverCheck,
  HistoryQueries,
  KeysPort,
  PolicyDecision,
  PolicyPort,
  PolicyUser,
  TaskHistory,
} from './ports.ts';
export {
  createDecisionPoint,
  type DecisionPoint,
  DecisionPoints,
  type PdpDecision,
  type PdpInput,
  pdpInputOf,
} from './pdp/index.ts';
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
export { createBrokerLogger } from './log.ts';
export { type RunningBroker, startBroker } from './server.ts';
export { type MintedToken, TaskService } from './service.ts';
export {
  createStore,
  RedisStore,
  type RedisStoreOptions,
  SqliteStore,
  type SqliteStoreOptions,
} from './store/index.ts';
export { effectiveStatus, REVOCATION_GRACE_SEC } from './store/types.ts';
export type * from './store/types.ts';
export { createUserTokenVerifier, type UserTokenVerifier, type VerifiedUser } from './user-tokens.ts';
export { createWorkloadAuthenticator } from './workload-auth.ts';
