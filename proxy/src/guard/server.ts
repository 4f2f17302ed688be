// `taskpass guard`: terminates mTLS with the guard's own X.509-SVID, runs the verifier's node:http
// middleware (the same checks and refusals as a TypeScript MCP server embedding the verifier), and
// forwards what passed to the upstream MCP server with the caller's identity in Taskpass-* headers.
import {
  createServer as createHttpServer,
  type IncomingMessage,
  type Server,
  type ServerResponse,
} from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { createMtlsAgent, matchId, matchMemberOf, mtlsServerOptions, type TlsSource } from '@taskpass/spiffe';
import { pickByHint, X509Source } from '@taskpass/spiffe/workload';
import {
  createVerifier,
  prmHandler,
  protectedResourceMetadata,
  protectedResourceMetadataUrl,
  type ReplayCache,
  RevocationFeedClient,
  type TaskpassAuthExtra,
  type TaskpassRequest,
  taskpassMiddleware,
  type Verifier,
  VerifierError,
} from '@taskpass/verifier';
import pino, { type Logger } from 'pino';
import type { GuardConfig } from './config.ts';
import { GuardError } from './errors.ts';
import { callerIdentity, upstreamRequestHeaders } from './headers.ts';
import { createGuardMetrics, type GuardMetrics } from './metrics.ts';
import { toolPolicies } from './tools.ts';
import type { Upstream } from './upstream.ts';
import { HttpUpstream } from './upstream-http.ts';
import { StdioUpstream } from './upstream-stdio.ts';

/** Options of {@link startGuard} besides the configuration. */
export interface GuardOptions {
  /** The guard's live X.509 source (default: one from `config.workloadApi`, closed with the guard). */
  source?: X509Source;
  logger?: Logger;
}

/** What `GET /readyz` answers. */
export interface GuardReadiness {
  status: 'ready' | 'not_ready';
  checks: { svid: boolean; feed: boolean; upstream: boolean };
  feedAgeSeconds?: number;
}

/** A running guard. */
export interface RunningGuard {
  /** `https://<host>:<port>` */
  readonly origin: string;
  /** The guarded MCP endpoint on the guard (the audience's path). */
  readonly mcpUrl: string;
  readonly audience: string;
  /** The SPIFFE ID the guard presents. */
  readonly spiffeId: string;
  /** `http://<host>:<port>` of the admin listener (metrics, health), when configured. */
  readonly adminOrigin: string | undefined;
  /** The tools it lets through (declared or learned). */
  readonly tools: readonly string[];
  readonly verifier: Verifier;
  readonly feed: RevocationFeedClient;
  readonly metrics: GuardMetrics;
  readiness(): GuardReadiness;
  close(): Promise<void>;
}

function sendError(res: ServerResponse, e: GuardError): void {
  res
    .writeHead(e.status, { 'content-type': 'application/json', 'cache-control': 'no-store' })
    .end(JSON.stringify(e.toJSON()));
}

async function runCleanups(cleanups: (() => Promise<unknown> | unknown)[]): Promise<void> {
  for (const c of cleanups.reverse()) {
    try {
      await c();
    } catch {
      // best effort: keep closing the rest
    }
  }
}

async function replayCacheOf(
  config: GuardConfig,
  cleanups: (() => unknown)[],
): Promise<ReplayCache | undefined> {
  if (!config.replay) return undefined;
  const { RedisReplayCache } = await import('@taskpass/verifier');
  const { Redis } = await import('ioredis');
  const redis = new Redis(config.replay.redis.url, { lazyConnect: false, maxRetriesPerRequest: 1 });
  cleanups.push(() => redis.quit());
  return new RedisReplayCache(redis, {
    ...(config.replay.redis.keyPrefix ? { keyPrefix: config.replay.redis.keyPrefix } : {}),
  });
}

function upstreamOf(config: GuardConfig, log: Logger): Upstream {
  const u = config.upstream;
  if (u.url) return new HttpUpstream({ url: u.url, timeoutMs: u.timeoutMs });
  return new StdioUpstream({
    command: u.command!,
    env: u.env,
    cwd: u.cwd,
    timeoutMs: u.timeoutMs,
    startTimeoutMs: u.startTimeoutMs,
    log: (event, data) => log.info({ event, ...data }, event),
  });
}

// Start-up may race the upstream's own start: ask until it answers or startTimeoutMs passes.
async function learnTools(upstream: Upstream, headers: Record<string, string>, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    try {
      return await upstream.listTools(headers);
    } catch (e) {
      if (Date.now() > deadline) {
        throw new GuardError(
          'TASKPASS_GUARD_CONFIG_INVALID',
          `could not learn the tools of the upstream MCP server: ${(e as Error).message}`,
          { cause: e },
        );
      }
      await new Promise((r) => setTimeout(r, 200));
    }
  }
}

function listen(server: Server, port: number, host: string): Promise<AddressInfo> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve(server.address() as AddressInfo);
    });
  });
}

const originOf = (scheme: string, a: AddressInfo) =>
  `${scheme}://${a.family === 'IPv6' ? `[${a.address}]` : a.address}:${a.port}`;

/**
 * Starts the guard. Resolves once it listens, the revocation feed delivered its first snapshot and
 * the upstream's tools are known.
 *
 * @example
 * ```ts
 * const guard = await startGuard(loadGuardConfig('guard.yaml'));
 * // … guard.mcpUrl
 * await guard.close();
 * ```
 */
export async function startGuard(config: GuardConfig, opts: GuardOptions = {}): Promise<RunningGuard> {
  const log =
    opts.logger ?? pino({ level: config.logLevel, base: { service: 'taskpass-guard' } }, pino.destination(2));
  const brokerUrl = config.broker.url.replace(/\/+$/, '');
  const issuer = config.broker.issuer ?? brokerUrl;
  const audience = config.audience;
  const mcpPath = new URL(audience).pathname;
  const cleanups: (() => Promise<unknown> | unknown)[] = [];
  try {
    const source =
      opts.source ??
      (await X509Source.create({
        ...(config.workloadApi.address ? { address: config.workloadApi.address } : {}),
        ...(config.workloadApi.hint ? { picker: pickByHint(config.workloadApi.hint) } : {}),
      }));
    if (!opts.source) cleanups.push(() => source.close());
    const spiffeId = source.getX509Svid().id;

    // JWKS and revocation feed over mTLS with the guard's SVID, the broker known by its SPIFFE ID.
    const brokerDispatcher = createMtlsAgent(source as TlsSource, matchId(config.broker.id));
    cleanups.push(() => brokerDispatcher.close());
    const feed = new RevocationFeedClient({
      brokerUrl,
      dispatcher: brokerDispatcher,
      backoff: { initialMs: 100, maxMs: 2000 },
      onError: (e) => log.warn({ event: 'feed.error', err: e.message }, 'revocation feed error'),
    });
    cleanups.push(() => feed.close());
    await feed.ready(config.feedReadyTimeoutMs);

    const upstream = upstreamOf(config, log);
    cleanups.push(() => upstream.close());
    await upstream.start();
    const learned = config.learnTools
      ? await learnTools(
          upstream,
          config.secret ? { 'taskpass-guard-secret': config.secret } : {},
          config.upstream.startTimeoutMs,
        )
      : [];
    const { tools, skipped } = toolPolicies(config.tools, learned);
    for (const s of skipped)
      log.warn({ event: 'tool.skipped', tool: s.name, reason: s.reason }, 'tool refused');

    const replayCache = await replayCacheOf(config, cleanups);
    const verifier = createVerifier({
      issuer,
      audience,
      jwksUri: `${brokerUrl}/.well-known/jwks.json`,
      dispatcher: brokerDispatcher,
      tools,
      revocation: feed,
      requireCertificateBinding: config.requireCertificateBinding,
      requireMcpHeaders: config.requireMcpHeaders,
      ...(config.staleness ? { staleness: config.staleness } : {}),
      ...(replayCache ? { replayCache } : {}),
    });
    const metrics = createGuardMetrics();
    const resourceMetadataUrl = protectedResourceMetadataUrl(audience);
    const guard = taskpassMiddleware(verifier, {
      resourceMetadataUrl,
      ...(config.maxBodyBytes ? { maxBodyBytes: config.maxBodyBytes } : {}),
      onRefusal: (e, r, req) => {
        const code = e instanceof VerifierError ? e.code : 'TASKPASS_VERIFY_INTERNAL';
        metrics.requests.inc({ result: 'refused', code });
        (req as GuardRequest).refusedCode = code;
        if (r.status >= 500)
          log.error({ event: 'verify.error', code, err: (e as Error)?.message }, 'refused');
      },
    });
    const servePrm = prmHandler(
      protectedResourceMetadata({ resource: audience, issuer, certificateBound: true }),
    );
    const readiness = (): GuardReadiness => {
      const h = source.health();
      const checks = {
        svid: h.svid === 'fresh' || h.svid === 'stale',
        feed: feed.lastEventAt !== undefined,
        upstream: upstream.ready(),
      };
      return {
        status: checks.svid && checks.feed && checks.upstream ? 'ready' : 'not_ready',
        checks,
        ...(feed.lastEventAt !== undefined
          ? { feedAgeSeconds: Math.max(0, Math.floor((Date.now() - feed.lastEventAt) / 1000)) }
          : {}),
      };
    };

    const health = (req: IncomingMessage, res: ServerResponse, withMetrics: boolean): boolean => {
      const path = (req.url ?? '/').split('?')[0];
      if (req.method !== 'GET') return false;
      if (path === '/healthz') {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
        return true;
      }
      if (path === '/readyz') {
        const r = readiness();
        res
          .writeHead(r.status === 'ready' ? 200 : 503, { 'content-type': 'application/json' })
          .end(JSON.stringify(r));
        return true;
      }
      if (withMetrics && path === '/metrics') {
        void metrics.registry.metrics().then((text) => {
          res.writeHead(200, { 'content-type': metrics.registry.contentType }).end(text);
        });
        return true;
      }
      return false;
    };

    const forward = async (req: GuardRequest, res: ServerResponse): Promise<void> => {
      metrics.requests.inc({ result: 'allowed', code: '' });
      const aborted = new AbortController();
      res.once('close', () => {
        if (!res.writableFinished) aborted.abort();
      });
      const identity = callerIdentity(req.auth!);
      const started = performance.now();
      let outcome = 'ok';
      try {
        await upstream.forward(
          {
            method: req.method ?? 'POST',
            url: req.url ?? mcpPath,
            headers: upstreamRequestHeaders(req.headers, identity, config.secret),
            identity,
            body: req.body,
            signal: aborted.signal,
          },
          res,
        );
      } catch (e) {
        const ge =
          e instanceof GuardError
            ? e
            : new GuardError('TASKPASS_GUARD_UPSTREAM_UNAVAILABLE', 'the upstream MCP server failed', {
                cause: e,
              });
        outcome = ge.code;
        req.upstreamCode = ge.code;
        log.warn(
          { event: 'upstream.error', code: ge.code, err: (ge.cause as Error | undefined)?.message },
          ge.message,
        );
        if (!res.headersSent) sendError(res, ge);
        else res.destroy();
      } finally {
        const seconds = (performance.now() - started) / 1000;
        metrics.upstream.observe({ outcome }, seconds);
        req.upstreamMs = Math.round(seconds * 10_000) / 10;
      }
    };

    const clientTds = config.clientTrustDomains ?? [spiffeId.trustDomain.name];
    const matchers = clientTds.map((td) => matchMemberOf(td));
    const mtls = mtlsServerOptions(source as TlsSource, (id) => matchers.some((m) => m(id)), {
      onError: (e) => log.info({ event: 'tls.refused', err: e.message }, 'TLS client refused'),
    });
    const server = createHttpsServer(mtls.options, (req: GuardRequest, res) => {
      if (servePrm(req, res) || health(req, res, false)) return;
      const path = (req.url ?? '/').split('?')[0];
      if (path !== mcpPath)
        return sendError(res, new GuardError('TASKPASS_GUARD_NOT_FOUND', `no such path: ${path}`));
      if (upstream.kind === 'stdio' && req.method !== 'POST') {
        res.setHeader('allow', 'POST');
        return sendError(
          res,
          new GuardError('TASKPASS_GUARD_METHOD_NOT_ALLOWED', 'a stdio upstream takes POST requests only'),
        );
      }
      const started = performance.now();
      res.once('close', () => logRequest(log, req, res, mtls.peerSpiffeId, started));
      void guard(req, res, () => {
        void forward(req, res);
      });
    });
    mtls.attach(server);
    const addr = await listen(server, config.listen.port, config.listen.host);
    cleanups.push(() => closeServer(server));

    let adminOrigin: string | undefined;
    if (config.admin) {
      const admin = createHttpServer((req, res) => {
        if (!health(req, res, true)) sendError(res, new GuardError('TASKPASS_GUARD_NOT_FOUND', 'not found'));
      });
      const a = await listen(admin, config.admin.port, config.admin.host);
      cleanups.push(() => closeServer(admin));
      adminOrigin = originOf('http', a);
    }

    const origin = originOf('https', addr);
    log.info(
      {
        event: 'listening',
        origin,
        spiffeId: spiffeId.toString(),
        audience,
        upstream: upstream.kind,
        tools: Object.keys(tools),
        ...(adminOrigin ? { admin: adminOrigin } : {}),
      },
      'taskpass guard listening',
    );
    let closing: Promise<void> | undefined;
    return {
      origin,
      mcpUrl: `${origin}${mcpPath}`,
      audience,
      spiffeId: spiffeId.toString(),
      adminOrigin,
      tools: Object.keys(tools),
      verifier,
      feed,
      metrics,
      readiness,
      close() {
        closing ??= runCleanups(cleanups);
        return closing;
      },
    };
  } catch (e) {
    await runCleanups(cleanups);
    throw e;
  }
}

/** A request as the guard annotates it for its log line. */
type GuardRequest = TaskpassRequest & { refusedCode?: string; upstreamCode?: string; upstreamMs?: number };

function closeServer(server: Server): Promise<void> {
  return new Promise((resolve) => {
    server.close(() => resolve());
    server.closeAllConnections();
  });
}

// One line per request: who, what, the decision, timings. Never the token or the arguments.
function logRequest(
  log: Logger,
  req: GuardRequest,
  res: ServerResponse,
  peerOf: (s: TLSSocket) => { toString(): string },
  started: number,
): void {
  let peer: string | undefined;
  try {
    peer = peerOf(req.socket as TLSSocket).toString();
  } catch {
    peer = undefined;
  }
  const rpc = req.body as { method?: unknown; params?: { name?: unknown } } | undefined;
  const who = (req.auth?.extra as TaskpassAuthExtra | undefined)?.taskpass;
  log.info(
    {
      event: 'request',
      peer,
      method: req.method,
      rpc: typeof rpc?.method === 'string' ? rpc.method : undefined,
      tool: typeof rpc?.params?.name === 'string' ? rpc.params.name : undefined,
      status: res.statusCode,
      code: req.refusedCode ?? req.upstreamCode,
      ...(who ? { user: who.user, agent: who.agent, task: who.task, jti: who.jti } : {}),
      ms: Math.round((performance.now() - started) * 10) / 10,
      upstreamMs: req.upstreamMs,
    },
    req.refusedCode ? 'refused' : 'forwarded',
  );
}
