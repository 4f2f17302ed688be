// The system under test, built the way broker/src/server.ts builds it, with the real pieces: SQLite
// store (WAL, synchronous=FULL), SigningKeys, the policy directory (policies/*.yaml), the
// RevocationHub with its SSE feed, fastify with the broker's own request logging, the audit log and
// the rate limiter. Only the Workload API is replaced: SVIDs and bundles come from the spiffe
// package's TestCa, so agents authenticate with real X.509-SVIDs over mTLS, verified by
// createWorkloadAuthenticator exactly as in production. User tokens come from examples/idp.
import type { X509Certificate } from 'node:crypto';
import { EventEmitter } from 'node:events';
import { mkdtempSync, rmSync } from 'node:fs';
import { createServer as createHttpsServer, type ServerOptions } from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { JwtBundleSet, X509BundleSet } from '@taskpass/spiffe';
import { TestCa } from '@taskpass/spiffe/testing';
import type { FastifyInstance, FastifyServerFactory } from 'fastify';
import { Agent, Pool } from 'undici';
import {
  AesGcmKeyWrapper,
  type AppDeps,
  type BrokerConfig,
  buildApp,
  createBrokerLogger,
  createStore,
  createUserTokenVerifier,
  createWorkloadAuthenticator,
  generateKek,
  parseConfig,
  pinPeerIdentity,
  PolicyWatcher,
  RevocationHub,
  SigningKeys,
  type Store,
} from '@taskpass/broker';
import { type Idp, startIdp } from '../../examples/idp/idp.ts';
import type { PreparedRequest } from './load.ts';

export const TRUST_DOMAIN = 'taskpass.local';
export const AGENT_ID = `spiffe://${TRUST_DOMAIN}/agents/support/bench`;
export const VERIFIER_ID = `spiffe://${TRUST_DOMAIN}/mcp/tickets`;
export const BROKER_ID = `spiffe://${TRUST_DOMAIN}/broker`;
export const ISSUER = 'https://broker.taskpass.local:8443';
export const AUDIENCE = 'https://tickets.taskpass.local/mcp';
export const POLICIES_DIR = resolve(import.meta.dirname, '../../policies');

/** PEM material for one workload (what the Workload API would hand it). */
export interface Pem {
  key: string;
  cert: string;
  /** The trust bundle (PEM). */
  ca: string;
}

export interface BenchEnv {
  brokerUrl: string;
  brokerApp: FastifyInstance;
  config: BrokerConfig;
  store: Store;
  keys: SigningKeys;
  hub: RevocationHub;
  idp: Idp;
  ca: TestCa;
  /** The broker's own SVID (reused by the baseline server so that TLS costs the same). */
  brokerTls: Pem;
  agent: Pem;
  verifier: Pem;
  /** HTTPS server options of the broker (also used by the baseline server). */
  httpsOptions: ServerOptions;
  /** An undici Pool for setup requests from the main thread, as the agent (mTLS). */
  agentPool: Pool;
  /** A fresh ID token for a support user. */
  userToken(sub?: string): Promise<string>;
  /** An undici Agent presenting the verifier's SVID (for feed clients). */
  verifierDispatcher(): Agent;
  /**
   * Another broker app on its own port, sharing store, keys, policies, hub and logs with the main
   * one, for what-if measurements: with its own peer-certificate lookup, or with its records off
   * (see {@link withoutRecords}). Returns its origin.
   */
  startVariant(o: { peerCertificates?: AppDeps['peerCertificates']; records?: false }): Promise<string>;
  /** The broker's public JWKS. */
  jwks(): { keys: Record<string, unknown>[] };
  close(): Promise<void>;
}

/**
 * What-if, never for serving: the store as the broker sees it, except that issued calls and
 * decision records are not written (they resolve at once, nothing hashed or sent to the writer).
 * With the audit and request lines off too, it shows what the issuance path costs without its
 * records: the part of the gap to the bare route that durability and audit do not explain.
 */
function withoutRecords(store: Store): Store {
  return new Proxy(store, {
    get(target, prop) {
      if (prop === 'recordIssued') return async () => true;
      if (prop === 'appendDecisions') return async () => [];
      const v = Reflect.get(target, prop, target);
      // Bound to the store itself: its methods use private fields, which a proxy does not have.
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
}

const pemOf = (certs: readonly X509Certificate[]): string => certs.map((c) => c.toString()).join('');

/** Where the SQLite file lives: a fresh directory under the OS temp dir (a real disk here). */
export function benchDir(): string {
  return mkdtempSync(join(tmpdir(), 'taskpass-bench-'));
}

export async function startBenchEnv(
  opts: {
    logFile?: string;
    /** An existing SQLite file to serve from (scale runs); default: a fresh one in a temp dir. */
    storePath?: string;
    /** The KEK ring wrapping the signing keys (a store served again needs the same one); default: a new one. */
    kek?: string;
  } = {},
): Promise<BenchEnv> {
  const dir = benchDir();
  const ca = await TestCa.create(TRUST_DOMAIN);
  const caPem = pemOf(ca.x509Bundle().authorities);
  const svidPem = async (id: string): Promise<Pem> => {
    const s = (await ca.createX509Svid(id, { ttlSec: 3600 })).toX509Svid();
    return { key: s.privateKeyPem(), cert: s.certChainPem(), ca: caPem };
  };
  const brokerTls = await svidPem(BROKER_ID);
  const agent = await svidPem(AGENT_ID);
  const verifier = await svidPem(VERIFIER_ID);

  const idp = await startIdp();
  // Everything the broker logs (the request lines at info, the audit trail) goes to /dev/null
  // through the destination `taskpass serve` writes its log with (broker/src/log.ts).
  const logDest = opts.logFile ?? '/dev/null';
  const logger = createBrokerLogger({ level: 'info', base: { service: 'taskpass-broker' } }, logDest);
  const config = parseConfig({
    issuer: ISSUER,
    trustDomain: TRUST_DOMAIN,
    listen: { host: '127.0.0.1', port: 0 },
    tls: { mode: 'spiffe' },
    agents: { ids: [`spiffe://${TRUST_DOMAIN}/agents/**`] },
    users: {
      trustedIssuers: [
        { issuer: idp.issuer, audience: 'taskpass', jwksUri: idp.jwksUri, algorithms: ['ES256'] },
      ],
    },
    policiesDir: POLICIES_DIR,
    store: { sqlite: { path: opts.storePath ?? join(dir, 'taskpass.db') } },
    // The limiter still runs on every request; the limit is raised so that one benchmark agent
    // doing thousands of requests a second is not throttled.
    rateLimit: { perAgentPerMinute: 1_000_000_000 },
    audit: { destination: logDest },
    logLevel: 'info',
  });

  const store = createStore(config.store as { sqlite: { path: string } }, { logger });
  await store.init();
  const keys = await SigningKeys.open(store, {
    // As a broker with a KEK: keys are unwrapped once at load, signing does not touch the wrapper.
    wrapper: new AesGcmKeyWrapper(opts.kek ?? generateKek('bench')),
    rotateEverySec: config.keys.rotateEvery,
    prepublishSec: config.keys.prepublish,
    maxTokenTtlSec: config.tokens.maxTtl,
    logger,
  });
  const policies = new PolicyWatcher(config.policiesDir, { logger });
  await policies.start();
  const hub = new RevocationHub({ store, logger, heartbeatMs: config.feed.heartbeatMs, keys });

  const httpsOptions: ServerOptions = {
    key: brokerTls.key,
    cert: brokerTls.cert,
    ca: caPem,
    requestCert: true,
    rejectUnauthorized: config.tls.requireClientCert,
    minVersion: 'TLSv1.2',
  };
  // As server.ts: renegotiation disabled on every connection, which lets the authenticator cache
  // the verified agent identity per connection.
  const serverFactory: FastifyServerFactory = (handler) =>
    createHttpsServer(httpsOptions, handler).on(
      'secureConnection',
      pinPeerIdentity,
    ) as unknown as ReturnType<FastifyServerFactory>;

  const agentAuth = createWorkloadAuthenticator({
    x509Bundles: new X509BundleSet([ca.x509Bundle()]),
    // The Workload API's X509Source announces bundle changes; the test CA's bundle never changes.
    x509BundleUpdates: new EventEmitter(),
    jwtBundles: new JwtBundleSet([ca.jwtBundle()]),
    audience: config.jwtSvidAudience ?? config.issuer,
    trustDomains: [TRUST_DOMAIN],
  });
  const build = (o: { peerCertificates?: AppDeps['peerCertificates']; records?: false } = {}) =>
    buildApp({
      config,
      store: o.records === false ? withoutRecords(store) : store,
      keys,
      policies,
      identity: { agentAuth },
      userTokens: createUserTokenVerifier(config.users.trustedIssuers),
      hub,
      // Records off: no audit line and no request line either (info level).
      logger: o.records === false ? logger.child({}, { level: 'warn' }) : logger,
      ...(o.records === false ? { audit: { record() {} } } : {}),
      serverFactory,
      ...(o.peerCertificates ? { peerCertificates: o.peerCertificates } : {}),
    });
  const brokerApp = build();
  const variants: FastifyInstance[] = [];
  // listen() reports http:// because fastify does not know what the server factory built.
  await brokerApp.listen({ host: '127.0.0.1', port: 0 });
  const port = (brokerApp.server.address() as AddressInfo).port;
  const origin = `https://127.0.0.1:${port}`;

  const connect = (p: Pem) => ({
    key: p.key,
    cert: p.cert,
    ca: p.ca,
    checkServerIdentity: () => undefined,
  });
  const agentPool = new Pool(origin, { connections: 8, connect: connect(agent) });
  const dispatchers: Agent[] = [];

  return {
    brokerUrl: origin,
    brokerApp,
    config,
    store,
    keys,
    hub,
    idp,
    ca,
    brokerTls,
    agent,
    verifier,
    httpsOptions,
    agentPool,
    userToken: (sub = 'alice') =>
      idp.idToken({ sub, groups: ['support'], audience: 'taskpass', ttlSec: 3600 }),
    verifierDispatcher() {
      const d = new Agent({ connect: connect(verifier) });
      dispatchers.push(d);
      return d;
    },
    jwks: () => keys.jwks() as unknown as { keys: Record<string, unknown>[] },
    async startVariant(o) {
      const app = build(o);
      variants.push(app);
      await app.listen({ host: '127.0.0.1', port: 0 });
      return `https://127.0.0.1:${(app.server.address() as AddressInfo).port}`;
    },
    async close() {
      await agentPool.close();
      for (const v of variants) await v.close();
      await hub.close();
      await brokerApp.close();
      await Promise.all(dispatchers.map((d) => d.close().catch(() => {})));
      await policies.close();
      await keys.close?.();
      await store.close();
      await idp.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

/** JSON request as the agent over the shared mTLS pool; throws on non-2xx. */
export async function agentCall<T>(env: BenchEnv, method: string, path: string, body?: unknown): Promise<T> {
  const res = await env.agentPool.request({
    method,
    path,
    headers: { 'content-type': 'application/json' },
    ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
  });
  const text = await res.body.text();
  if (res.statusCode < 200 || res.statusCode >= 300) {
    throw new Error(`${method} ${path}: HTTP ${res.statusCode} ${text}`);
  }
  return JSON.parse(text) as T;
}

/** Opens `n` tasks for the benchmark agent (real POST /v1/tasks with a user token). */
/**
 * One call token request per task (`get_ticket` on its own ticket, read): round-robin over them,
 * each task's history grows slowly and evenly (≈ total calls / tasks). `pathOf` sends the same body
 * elsewhere (the bare route).
 */
export function tokenRequests(
  tasks: readonly string[],
  pathOf: (task: string) => string = (task) => `/v1/tasks/${task}/tokens`,
): PreparedRequest[] {
  return tasks.map((id, i) => ({
    method: 'POST',
    path: pathOf(id),
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({
      audience: AUDIENCE,
      tool: 'get_ticket',
      resource: `tickets/T-${i}`,
      action: 'read',
    }),
  }));
}

export async function openTasks(env: BenchEnv, n: number, parallel = 16): Promise<string[]> {
  const userToken = await env.userToken();
  const out: string[] = [];
  let next = 0;
  const worker = async () => {
    while (next < n) {
      next++;
      const t = await agentCall<{ task_id: string }>(env, 'POST', '/v1/tasks', {
        purpose: 'benchmark',
        user_token: userToken,
      });
      out.push(t.task_id);
    }
  };
  await Promise.all(Array.from({ length: parallel }, worker));
  return out;
}

/** Issues one get_ticket call token on a task. */
export async function issueToken(
  env: BenchEnv,
  taskId: string,
  ticket: string,
): Promise<{ access_token: string; jti: string }> {
  return agentCall(env, 'POST', `/v1/tasks/${taskId}/tokens`, {
    audience: AUDIENCE,
    tool: 'get_ticket',
    resource: `tickets/${ticket}`,
    action: 'read',
  });
}
