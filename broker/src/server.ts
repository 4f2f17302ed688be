// The process around the app: store, keys, policies, Workload API sources, the HTTPS server with the
// broker's own X.509-SVID (secure context swapped on rotation), signals and graceful shutdown.
//   SIGTERM / SIGINT: stop accepting, end feed streams, drain, close the store, exit.
//   SIGHUP: reload the policy directory (a bad reload keeps the previous policies).
import type { X509Certificate } from 'node:crypto';
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import type { SecureContextOptions } from 'node:tls';
import { BundleSource, TrustDomain, X509Source } from '@taskpass/spiffe';
import type { FastifyInstance, FastifyServerFactory } from 'fastify';
import pino, { type Logger } from 'pino';
import { buildApp } from './app.ts';
import type { BrokerConfig } from './config.ts';
import { SigningKeys } from './keys.ts';
import { PolicyWatcher } from './policy/index.ts';
import { RevocationHub } from './revocation-hub.ts';
import { createStore } from './store/index.ts';
import { createUserTokenVerifier } from './user-tokens.ts';
import { createWorkloadAuthenticator } from './workload-auth.ts';

/** A running broker. */
export interface RunningBroker {
  app: FastifyInstance;
  /** Base URL it listens on. */
  url: string;
  /** Graceful stop (idempotent). */
  close(): Promise<void>;
  /** Reloads the policy directory. */
  reloadPolicies(): Promise<void>;
}

function tlsOptions(source: X509Source, trustDomains: readonly string[]): SecureContextOptions {
  const svid = source.getX509Svid();
  const ca: string[] = [];
  for (const td of trustDomains) {
    const b = source.getX509BundleForTrustDomain(TrustDomain.parse(td));
    for (const a of b?.authorities ?? []) ca.push((a as X509Certificate).toString());
  }
  return { key: svid.privateKeyPem(), cert: svid.certChainPem(), ...(ca.length ? { ca } : {}) };
}

/**
 * Starts the broker from a validated configuration. Resolves once it listens.
 * `installSignalHandlers` (default true) wires SIGTERM/SIGINT/SIGHUP.
 */
export async function startBroker(
  config: BrokerConfig,
  opts: { logger?: Logger; installSignalHandlers?: boolean } = {},
): Promise<RunningBroker> {
  const logger = opts.logger ?? pino({ level: config.logLevel, base: { service: 'taskpass-broker' } });
  const trustDomains = [config.trustDomain, ...config.federatedTrustDomains];

  const store = createStore(config.store, { logger });
  await store.init();
  const keys = await SigningKeys.open(store, {
    rotateEverySec: config.keys.rotateEvery,
    prepublishSec: config.keys.prepublish,
    maxTokenTtlSec: config.tokens.maxTtl,
    logger,
  });
  const policies = new PolicyWatcher(config.policiesDir, { logger });
  await policies.start();
  const hub = new RevocationHub({ store, logger, heartbeatMs: config.feed.heartbeatMs });

  const address = config.workloadApi.address;
  const x509 = await X509Source.create({
    ...(address ? { address } : {}),
    timeoutMs: config.workloadApi.timeoutMs,
  });
  const bundles = await BundleSource.create({
    ...(address ? { address } : {}),
    timeoutMs: config.workloadApi.timeoutMs,
  });
  let svidReady = true;
  x509.on('error', (err: Error) => logger.warn({ err }, 'workload api error (keeping the cached SVID)'));

  let serverFactory: FastifyServerFactory | undefined;
  if (config.tls.mode === 'spiffe') {
    serverFactory = (handler) => {
      const server = createHttpsServer(
        {
          ...tlsOptions(x509, trustDomains),
          requestCert: true,
          // The TLS layer only collects the chain; the app re-validates it against the peer's own
          // trust-domain bundle. JWT-SVID clients may connect without a certificate unless required.
          rejectUnauthorized: config.tls.requireClientCert,
          minVersion: 'TLSv1.2',
        },
        handler as (req: IncomingMessage, res: ServerResponse) => void,
      );
      x509.on('update', () => {
        try {
          server.setSecureContext(tlsOptions(x509, trustDomains));
          svidReady = true;
          logger.info('broker SVID rotated');
        } catch (err) {
          svidReady = false;
          logger.error({ err }, 'cannot apply the rotated SVID');
        }
      });
      return server as unknown as ReturnType<FastifyServerFactory>;
    };
  } else {
    logger.warn('tls.mode is none: serving plain HTTP (tests only)');
    serverFactory = (handler) => createHttpServer(handler) as unknown as ReturnType<FastifyServerFactory>;
  }

  const app = buildApp({
    config,
    store,
    keys,
    policies,
    identity: {
      agentAuth: createWorkloadAuthenticator({
        x509Bundles: x509,
        jwtBundles: bundles,
        audience: config.jwtSvidAudience,
        trustDomains,
      }),
      svidReady: () => {
        try {
          return svidReady && x509.getX509Svid().expiresAt.getTime() > Date.now();
        } catch {
          return false;
        }
      },
    },
    userTokens: createUserTokenVerifier(config.users.trustedIssuers),
    hub,
    logger,
    serverFactory,
  });

  const url = await app.listen({ host: config.listen.host, port: config.listen.port });
  logger.info({ url, issuer: config.issuer, tls: config.tls.mode }, 'taskpass broker listening');

  let closing: Promise<void> | undefined;
  const close = (): Promise<void> => {
    closing ??= (async () => {
      logger.info('shutting down');
      await hub.close();
      await app.close();
      await policies.close();
      await keys.close?.();
      await x509.close();
      await bundles.close();
      await store.close();
      logger.info('stopped');
    })();
    return closing;
  };
  const reloadPolicies = async (): Promise<void> => {
    try {
      await policies.reload();
      logger.info('policies reloaded');
    } catch (err) {
      logger.error({ err }, 'policy reload failed; keeping the previous policies');
    }
  };
  if (opts.installSignalHandlers ?? true) {
    const stop = (sig: string) => {
      logger.info({ signal: sig }, 'signal');
      close().then(
        () => process.exit(0),
        (err) => {
          logger.error({ err }, 'shutdown failed');
          process.exit(1);
        },
      );
    };
    process.once('SIGTERM', () => stop('SIGTERM'));
    process.once('SIGINT', () => stop('SIGINT'));
    process.on('SIGHUP', () => void reloadPolicies());
  }
  return { app, url, close, reloadPolicies };
}
