// What route modules share: the dependencies, the task service and request authentication.
import type { X509Certificate } from 'node:crypto';
import type { X509SourceHealth } from '@taskpass/spiffe/workload';
import type { FastifyRequest } from 'fastify';
import type { AuditLog } from '../audit.ts';
import {
  bearerOf,
  type IdMatcher,
  isPeerIdentityPinned,
  peerChainFromSocket,
  type WorkloadAuthenticator,
  type WorkloadIdentity,
} from '../auth.ts';
import type { BrokerConfig } from '../config.ts';
import type { BrokerMetrics } from '../metrics.ts';
import type { KeysPort, PolicyPort } from '../ports.ts';
import type { TaskService } from '../service.ts';
import type { Store } from '../store/types.ts';
import type { UserTokenVerifier } from '../user-tokens.ts';
import type { VaultHealth } from '../vault.ts';

declare module 'fastify' {
  interface FastifyRequest {
    /** The authenticated workload, set by the auth hook of the scope (null outside). */
    workload: WorkloadIdentity | null;
  }
}

/** Shared by all route modules. */
export interface RouteContext {
  config: BrokerConfig;
  store: Store;
  keys: KeysPort;
  policies: { current(): PolicyPort };
  userTokens: UserTokenVerifier;
  /** Verifies approvers' own tokens: trusted issuers, `approvals.audience`. */
  approverTokens: UserTokenVerifier;
  auth: WorkloadAuthenticator;
  service: TaskService;
  audit: AuditLog;
  metrics: BrokerMetrics;
  matchers: { agent: IdMatcher; admin: IdMatcher };
  /** Epoch milliseconds. */
  now: () => number;
  /** The peer certificate chain of a request (socket, or the test seam). */
  peerChain: (req: FastifyRequest) => readonly X509Certificate[] | undefined;
  svidHealth: () => SvidHealth;
  /** Vault's health, when Vault is configured (readiness). */
  vaultHealth?: (() => Promise<VaultHealth>) | undefined;
}

/**
 * The broker's own X.509-SVID as peers get it, and whether the Workload API is reachable
 * (readiness and metrics). `fresh` and `stale` SVIDs are served; `expired` and `missing` are not.
 */
export type SvidHealth = Pick<X509SourceHealth, 'svid' | 'workloadApi' | 'expiresAt'>;

/** For apps built without a live source (tests with static identities). */
export const ALWAYS_FRESH: () => SvidHealth = () => ({
  svid: 'fresh',
  workloadApi: 'up',
  expiresAt: undefined,
});

/** Default peer-chain lookup: the TLS socket's peer certificate chain. */
export const socketPeerChain = (req: FastifyRequest): readonly X509Certificate[] | undefined =>
  peerChainFromSocket(req.raw.socket);

/** Authenticates a request from its mTLS chain or `Authorization: Bearer <JWT-SVID>`. */
export function authenticateRequest(ctx: RouteContext, req: FastifyRequest): Promise<WorkloadIdentity> {
  const jwtSvid = bearerOf(req.headers.authorization);
  if (ctx.peerChain === socketPeerChain) {
    // The chain is read from the socket only when the authenticator has no identity cached for
    // this connection; connections whose peer certificate may still change are never cached.
    const socket = req.raw.socket;
    return ctx.auth.authenticate({
      peerChain: () => peerChainFromSocket(socket),
      connection: isPeerIdentityPinned(socket) ? socket : undefined,
      jwtSvid,
    });
  }
  return ctx.auth.authenticate({ peerChain: ctx.peerChain(req), jwtSvid });
}

/** Epoch seconds now. */
export const nowSec = (ctx: RouteContext): number => Math.floor(ctx.now() / 1000);
