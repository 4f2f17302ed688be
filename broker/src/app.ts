// The broker as a fastify application with no listen(): server.ts owns the port, TLS and shutdown;
// tests build it with static sources and use inject(). Each group of routes lives in its own
// encapsulated scope with its own authentication hook, so nothing leaks onto /healthz and friends.
import type { X509Certificate } from 'node:crypto';
import { statSync } from 'node:fs';
import swagger from '@fastify/swagger';
import Fastify, {
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  LogController,
  type FastifyRequest,
  type FastifyServerFactory,
} from 'fastify';
import type { Redis } from 'ioredis';
import { Gauge } from 'prom-client';
import type { Logger } from 'pino';
import { ApprovalService } from './approvals.ts';
import { type AuditLog, createAuditLog } from './audit.ts';
import { agentMatcherFromConfig, idListMatcher, type WorkloadAuthenticator } from './auth.ts';
import type { BrokerConfig } from './config.ts';
import { DecisionRecorder } from './decision-log.ts';
import { BROKER_ERRORS, BrokerError } from './errors.ts';
import { type BrokerMetrics, createMetrics } from './metrics.ts';
import type { DecisionPoints } from './pdp/index.ts';
import type { KeysPort, PolicyPort } from './ports.ts';
import { limiterRedis, registerRateLimitStore } from './rate-limit.ts';
import { fastifyClientError, installDepthLimitedJsonParser, strictQueryTypes } from './request-boundary.ts';
import type { RevocationHub } from './revocation-hub.ts';
import type { LeasedCredentials } from './leased-credentials.ts';
import { adminRoutes } from './routes/admin.ts';
import { approvalRoutes } from './routes/approvals.ts';
import { authzenRoutes } from './routes/authzen.ts';
import {
  ALWAYS_FRESH,
  authenticateRequest,
  type RouteContext,
  type SvidHealth,
  socketPeerChain,
} from './routes/context.ts';
import { credentialRoutes } from './routes/credentials.ts';
import { oauthRoutes } from './routes/oauth.ts';
import { publicRoutes } from './routes/public.ts';
import { revocationRoutes } from './routes/revocations.ts';
import { ApprovalSubjectSchema, ApprovalViewSchema, ErrorBody, OAuthErrorBody } from './routes/schemas.ts';
import { taskRoutes } from './routes/tasks.ts';
import { TaskService } from './service.ts';
import { withOpenTaskCache } from './store/open-task-cache.ts';
import { SqliteStore } from './store/sqlite.ts';
import type { Store } from './store/types.ts';
import { createUserTokenVerifier, type UserTokenVerifier } from './user-tokens.ts';
import type { VaultHealth } from './vault.ts';

/** Everything the app needs, handed in (live sources in server.ts, static ones in tests). */
export interface AppDeps {
  config: BrokerConfig;
  store: Store;
  keys: KeysPort;
  /** The current policy set (PolicyWatcher swaps it on reload). */
  policies: { current(): PolicyPort };
  /** Decision points behind the templates (docs/policy-engines.md); absent: templates alone. */
  decisionPoints?: DecisionPoints;
  identity: {
    /** Authenticates workloads from the mTLS chain or a JWT-SVID. */
    agentAuth: WorkloadAuthenticator;
    /** The broker's own SVID and the Workload API (readiness, metrics). Default: always fresh. */
    svidHealth?: () => SvidHealth;
  };
  userTokens: UserTokenVerifier;
  /**
   * Verifies approvers' own tokens. Default: the trusted issuers of `users`, but for the
   * `approvals.audience` (never the delegation audience: the agent holds those tokens).
   */
  approverTokens?: UserTokenVerifier;
  hub: RevocationHub;
  logger: Logger;
  /** Epoch milliseconds (tests move time). */
  now?: () => number;
  /**
   * The peer certificate chain of a request, leaf first. Default: from the TLS socket. Tests
   * override it because inject() has no TLS.
   */
  peerCertificates?: (req: FastifyRequest) => readonly X509Certificate[] | undefined;
  /** server.ts passes an HTTPS server factory here. */
  serverFactory?: FastifyServerFactory;
  audit?: AuditLog;
  metrics?: BrokerMetrics;
  /**
   * The rate limiter's Redis client. Default: one made from `config.store.redis` (none on SQLite:
   * counters in memory). `false`: in memory even on the Redis store.
   */
  rateLimitRedis?: Redis | false;
  /**
   * Leases Vault secrets to tasks for their MCP servers (docs/vault.md): serves /v1/credentials.
   * Absent (no `vault` configured): the route does not exist.
   */
  credentials?: LeasedCredentials;
  /** Vault's health (readiness), when Vault is configured. */
  vaultHealth?: () => Promise<VaultHealth>;
}

/** The services both listeners share (the agents' API and the console): one set per process. */
export interface BrokerServices {
  ctx: RouteContext;
  service: TaskService;
  approvals: ApprovalService;
  /** The audit log, which also appends every event to the store's decision records. */
  recorder: DecisionRecorder;
  metrics: BrokerMetrics;
}

/** Builds the services from the dependencies (buildApp does when not given them). */
export function buildServices(deps: AppDeps): BrokerServices {
  const { config } = deps;
  const now = deps.now ?? Date.now;
  const svidHealth = deps.identity.svidHealth ?? ALWAYS_FRESH;
  const metrics = deps.metrics ?? createMetrics(() => deps.hub.subscriberCount(), svidHealth);
  const log = deps.audit ?? createAuditLog(deps.logger, config.audit.destination);
  // Every audit event also becomes a decision record: the one hook (decision-log.ts).
  const audit =
    log instanceof DecisionRecorder
      ? log
      : new DecisionRecorder({ store: deps.store, log, logger: deps.logger, now });
  const QUEUED = 'taskpass_decision_records_queued';
  if (!metrics.registry.getSingleMetric(QUEUED)) {
    new Gauge({
      name: QUEUED,
      help: 'Audit records not yet stored as decision records (growing: the store refuses them).',
      registers: [metrics.registry],
      collect() {
        this.set(audit.queued);
      },
    });
  }
  const WAL = 'taskpass_store_wal_bytes';
  const { store } = deps;
  if (store instanceof SqliteStore && store.path !== ':memory:' && !metrics.registry.getSingleMetric(WAL)) {
    new Gauge({
      name: WAL,
      help: "Size of the SQLite store's WAL file, bytes (under load it stays near store.sqlite.walLimitMiB).",
      registers: [metrics.registry],
      collect() {
        this.set(statSync(`${store.path}-wal`, { throwIfNoEntry: false })?.size ?? 0);
      },
    });
  }
  const service = new TaskService({
    config,
    // Issuance reads open tasks and their counters from memory (docs/performance.md). SQLite only
    // (this process is its one writer): with Redis other replicas write too, and while Redis is
    // unreachable its close events cannot arrive, so a held task could outlive its revocation;
    // every request there asks Redis, as before.
    store: withOpenTaskCache(deps.store, {
      maxTasks: deps.store instanceof SqliteStore ? config.openTaskCache : 0,
      counters: true,
      nowSec: () => Math.floor(now() / 1000),
    }),
    keys: deps.keys,
    policies: deps.policies,
    decisionPoints: deps.decisionPoints,
    audit,
    metrics,
    now,
  });
  const approverTokens =
    deps.approverTokens ??
    createUserTokenVerifier(
      config.users.trustedIssuers.map((i) => ({ ...i, audience: config.approvals.audience })),
      { now },
    );
  const approvals = new ApprovalService({ config, store: deps.store, audit, metrics, now });
  const ctx: RouteContext = {
    config,
    store: deps.store,
    keys: deps.keys,
    policies: deps.policies,
    userTokens: deps.userTokens,
    approverTokens,
    auth: deps.identity.agentAuth,
    service,
    audit,
    metrics,
    matchers: { agent: agentMatcherFromConfig(config), admin: idListMatcher(config.admins) },
    now,
    peerChain: deps.peerCertificates ?? socketPeerChain,
    svidHealth,
    vaultHealth: deps.vaultHealth,
  };
  return { ctx, service, approvals, recorder: audit, metrics };
}

/**
 * One log line per request, when it is answered, with what fastify's "incoming request" line
 * said (method, URL, peer): half the log writes on the issuance path (docs/performance.md).
 */
class OneLinePerRequest extends LogController {
  override incomingRequest(): void {}

  override requestCompleted(error: Error | null | undefined, req: FastifyRequest, reply: FastifyReply): void {
    if (this.isLogDisabled(req)) return;
    const line = { req, res: reply, responseTime: reply.elapsedTime };
    if (error) reply.log.error({ ...line, err: error }, 'request errored');
    else reply.log.info(line, 'request completed');
  }
}

/** Builds the broker application (routes registered; call `ready()` or `inject()`). */
export function buildApp(deps: AppDeps, services: BrokerServices = buildServices(deps)): FastifyInstance {
  const { config } = deps;
  const app = Fastify({
    loggerInstance: deps.logger,
    bodyLimit: config.bodyLimit,
    ...(deps.serverFactory ? { serverFactory: deps.serverFactory } : {}),
    // JSON types as declared and nothing else: no coercion (ajv's default would accept `["read"]`
    // for "read" and `"0x10"` or `true` for an integer), no silent removal of unknown fields, no
    // NaN/Infinity. Query strings are converted strictly by strictQueryTypes below.
    ajv: { customOptions: { removeAdditional: false, coerceTypes: false, strictNumbers: true } },
    return503OnClosing: true,
    logController: new OneLinePerRequest(),
  }) as unknown as FastifyInstance;
  const { ctx, approvals, recorder } = services;
  // Records still queued reach the store before it closes (server.ts closes the app first).
  app.addHook('onClose', async () => recorder.drain());

  app.decorateRequest('workload', null);
  installDepthLimitedJsonParser(app);
  app.addHook('preValidation', async (req) => strictQueryTypes(req));
  registerRateLimitStore(app, config, {
    redis: deps.rateLimitRedis === undefined ? limiterRedis(config) : deps.rateLimitRedis || undefined,
    logger: deps.logger,
  });
  app.addSchema(ApprovalSubjectSchema);
  app.addSchema(ApprovalViewSchema);
  app.addSchema(ErrorBody);
  app.addSchema(OAuthErrorBody);

  app.setErrorHandler((err: FastifyError | BrokerError, req, reply) => {
    if (err instanceof BrokerError) {
      if (err.status >= 500) req.log.error({ err }, 'request failed');
      // A store outage is brief or an operator's matter: clients back off a second, then retry.
      if (err.status === 503) reply.header('retry-after', '1');
      const body: Record<string, unknown> = { code: err.code, message: err.message };
      if (err.code === 'TASKPASS_INTERNAL') body.message = 'internal error';
      else if (err.details) Object.assign(body, err.details, body);
      return reply.code(err.status).send(body);
    }
    if (err.validation) {
      return reply.code(400).send({ code: 'TASKPASS_BAD_REQUEST', message: err.message });
    }
    const fst = fastifyClientError(err);
    if (fst) return reply.code(fst.status).send({ code: fst.code, message: err.message });
    req.log.error({ err }, 'unexpected error');
    return reply.code(500).send({ code: 'TASKPASS_INTERNAL', message: 'internal error' });
  });
  app.setNotFoundHandler((req, reply) =>
    reply
      .code(404)
      .send({ code: 'TASKPASS_NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` }),
  );

  app.register(swagger, {
    openapi: {
      openapi: '3.1.0',
      info: {
        title: 'Taskpass broker',
        version: '0.1.0',
        description: `Per-call tokens for MCP tool calls. Error codes: ${Object.keys(BROKER_ERRORS).join(', ')}.`,
      },
      servers: [{ url: config.issuer }],
      components: {
        // OpenAPI 3.1 `mutualTLS` is missing from the 3.0 typings the plugin uses.
        securitySchemes: {
          mtls: { type: 'mutualTLS', description: 'X.509-SVID client certificate' },
          jwtSvid: { type: 'http', scheme: 'bearer', bearerFormat: 'JWT-SVID' },
          approverToken: {
            type: 'http',
            scheme: 'bearer',
            bearerFormat: "JWT: the approver's own token from a trusted issuer, for approvals.audience",
          },
        } as unknown as Record<string, { type: 'http'; scheme: string }>,
      },
    },
  });

  app.register(async (scope) => publicRoutes(scope, ctx));
  app.register(async (scope) => taskRoutes(scope, ctx));
  app.register(async (scope) => oauthRoutes(scope, ctx));
  app.register(async (scope) => adminRoutes(scope, ctx));
  app.register(async (scope) => approvalRoutes(scope, ctx, approvals));
  app.register(async (scope) => authzenRoutes(scope, ctx));
  const { credentials } = deps;
  if (credentials) app.register(async (scope) => credentialRoutes(scope, ctx, credentials));
  app.register(async (scope) => {
    const mode = config.feed.auth;
    const preHandler =
      mode === 'none'
        ? async () => {}
        : async (req: FastifyRequest) => {
            const id = await authenticateRequest(ctx, req);
            if (mode === 'agents' && !ctx.matchers.agent(id.spiffeId)) {
              throw new BrokerError('TASKPASS_FORBIDDEN', 'the revocation feed is for agents only');
            }
            req.workload = id;
          };
    await revocationRoutes(scope, { hub: deps.hub, heartbeatMs: config.feed.heartbeatMs, preHandler });
  });

  // In a plugin scope so that it is registered after swagger's onRoute hook is in place.
  app.register(async (scope) => {
    scope.get(
      '/openapi.json',
      {
        schema: {
          summary: 'This OpenAPI document',
          tags: ['ops'],
          response: { 200: { type: 'object', additionalProperties: true } },
        },
      },
      async () => app.swagger(),
    );
  });
  return app;
}
