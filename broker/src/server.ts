// The process around the app: store, keys, policies, Workload API sources, the HTTPS server with the
// broker's own X.509-SVID (secure context swapped on rotation), signals and graceful shutdown.
//   SIGTERM / SIGINT: stop accepting, end feed streams, drain, close the store, exit.
//   SIGHUP: reload the policy directory (a bad reload keeps the previous policies).
import { createServer as createHttpServer, type IncomingMessage, type ServerResponse } from 'node:http';
import { createServer as createHttpsServer } from 'node:https';
import { currentSecureContextOptions, isSpiffeError, type X509Svid } from '@taskpass/spiffe';
import { BundleSource, svidState } from '@taskpass/spiffe/workload';
import type { FastifyInstance, FastifyServerFactory } from 'fastify';
import type { Logger } from 'pino';
import { createBrokerLogger } from './log.ts';
import type { TLSSocket } from 'node:tls';
import { type AppDeps, buildApp, buildServices } from './app.ts';
import { buildConsole } from './console/app.ts';
import { createAuditLog } from './audit.ts';
import { pinPeerIdentity } from './auth.ts';
import type { BrokerConfig } from './config.ts';
import { BrokerError } from './errors.ts';
import { keyWrapperFromConfig } from './key-wrap.ts';
import type { BrokerMetrics } from './metrics.ts';
import { DecisionPoints } from './pdp/index.ts';
import { PolicyWatcher } from './policy/index.ts';
import { RevocationHub } from './revocation-hub.ts';
import { LeasedCredentials } from './leased-credentials.ts';
import { LeaseRevoker } from './lease-revoker.ts';
import { connectVault, openSigner } from './signer.ts';
import { createStore } from './store/index.ts';
import { createUserTokenVerifier } from './user-tokens.ts';
import { createWorkloadAuthenticator } from './workload-auth.ts';
import { openX509Source, svidPicker } from './workload-sources.ts';

export { svidPicker };

/** A running broker. */
export interface RunningBroker {
  app: FastifyInstance;
  /** Base URL it listens on. */
  url: string;
  /** Graceful stop (idempotent). */
  close(): Promise<void>;
  /** Reloads the policy directory. */
  reloadPolicies(): Promise<void>;
  /** The console, when configured: its app and the URL people open. */
  console?: { app: FastifyInstance; url: string };
  /** Its metrics (a cluster worker hands its registry to the primary, cluster.ts). */
  metrics: BrokerMetrics;
}

/**
 * Starts the broker from a validated configuration. Resolves once it listens.
 * `installSignalHandlers` (default true) wires SIGTERM/SIGINT/SIGHUP.
 */
export async function startBroker(
  config: BrokerConfig,
  opts: { logger?: Logger; installSignalHandlers?: boolean } = {},
): Promise<RunningBroker> {
  const logger =
    opts.logger ?? createBrokerLogger({ level: config.logLevel, base: { service: 'taskpass-broker' } });
  const trustDomains = [config.trustDomain, ...config.federatedTrustDomains];

  // Everything opened so far, closed in reverse order if start-up fails half-way.
  const opened: (() => Promise<void> | void)[] = [];
  const unwind = async (): Promise<void> => {
    for (const c of opened.reverse()) {
      try {
        await c();
      } catch (err) {
        logger.warn({ err }, 'cleanup after a failed start');
      }
    }
  };
  try {
    return await start(config, opts, logger, trustDomains, opened);
  } catch (e) {
    await unwind();
    throw e;
  }
}

async function start(
  config: BrokerConfig,
  opts: { installSignalHandlers?: boolean },
  logger: Logger,
  trustDomains: readonly string[],
  opened: (() => Promise<void> | void)[],
): Promise<RunningBroker> {
  // The local signer needs its KEK before the store is touched (keyWrapperFromConfig throws early).
  if (config.signing.kind === 'local') keyWrapperFromConfig(config.keys);
  const store = createStore(config.store, { logger, decisionRetentionSec: config.audit.retention });
  opened.push(() => store.close());
  await store.init();
  const signer = await openSigner(config, store, logger);
  opened.push(...signer.closers);
  const keys = signer.keys;
  const decisionPoints = await DecisionPoints.fromConfig(config, { logger });
  opened.push(() => decisionPoints.close());
  const policies = new PolicyWatcher(config.policiesDir, { logger, decisionPoints: decisionPoints.names() });
  opened.push(() => policies.close());
  await policies.start();
  const hub = new RevocationHub({ store, logger, heartbeatMs: config.feed.heartbeatMs, keys });
  opened.push(() => hub.close());

  const address = config.workloadApi.address;
  const hint = config.workloadApi.hint;
  const x509 = await openX509Source(config, logger, 'keeping the cached SVID');
  opened.push(() => x509.close());
  let own: X509Svid;
  try {
    own = x509.getX509Svid();
  } catch (e) {
    let hints: string[] = [];
    try {
      hints = x509
        .getX509Context()
        .svids.map((s) => s.hint ?? '')
        .filter(Boolean);
    } catch {}
    throw new BrokerError(
      'TASKPASS_CONFIG_INVALID',
      `workloadApi.hint ${JSON.stringify(hint)} matches no X.509-SVID of this workload (hints offered: ${hints.length ? hints.map((h) => JSON.stringify(h)).join(', ') : 'none'})`,
      { hint, hints },
      { cause: e },
    );
  }
  logger.info({ spiffeId: own.id.toString(), hint, expiresAt: own.expiresAt }, 'broker X.509-SVID');
  const bundles = await BundleSource.create({
    ...(address ? { address } : {}),
    timeoutMs: config.workloadApi.timeoutMs,
  });
  opened.push(() => bundles.close());
  bundles.on('error', (err: Error) =>
    logger.warn(
      { err: err.message, code: isSpiffeError(err) ? err.code : undefined },
      'workload api error (keeping the cached bundles)',
    ),
  );
  // The SVID the HTTPS server presents: readiness and metrics report this one, which peers check.
  let served: X509Svid = own;
  let servedSerial = own.certificates[0]?.serialNumber;
  // Key, chain and the trusted domains' CAs from the source's current state (the spiffe helper).
  const secureContext = () => currentSecureContextOptions(x509, { trustDomains });

  let serverFactory: FastifyServerFactory | undefined;
  if (config.tls.mode === 'spiffe') {
    serverFactory = (handler) => {
      const server = createHttpsServer(
        {
          ...secureContext(),
          requestCert: true,
          // The TLS layer only collects the chain; the app re-validates it against the peer's own
          // trust-domain bundle. JWT-SVID clients may connect without a certificate unless required.
          rejectUnauthorized: config.tls.requireClientCert,
          minVersion: 'TLSv1.2',
        },
        handler as (req: IncomingMessage, res: ServerResponse) => void,
      );
      // The agent's identity is verified once per connection and cached for it (workload-auth.ts),
      // so the peer certificate must not change mid-connection: renegotiation (TLS 1.2 only; TLS
      // 1.3 has none) is disabled on every connection, and an attempt closes it. We keep TLS 1.2
      // for clients that lack 1.3 rather than require 1.3: with renegotiation off, 1.2 gives the
      // same guarantee, and the cache is only used on connections marked by pinPeerIdentity. See
      // docs/decisions.md "Agent identity cached per TLS connection".
      server.on('secureConnection', (socket: TLSSocket) => pinPeerIdentity(socket));
      const onUpdate = () => {
        let next: ReturnType<typeof secureContext>;
        try {
          next = secureContext();
        } catch (err) {
          // Redacted (no identity) or the hint vanished: the last good context stays on the server
          // (it cannot be unset); readiness reports the SVID missing.
          logger.error({ err }, 'no X.509-SVID for the broker in the Workload API update');
          return;
        }
        try {
          // Updates also come for the workload's other SVIDs and for bundles; log rotations only.
          const svid = x509.getX509Svid();
          server.setSecureContext(next);
          served = svid;
          const serial = svid.certificates[0]?.serialNumber;
          logger[serial === servedSerial ? 'debug' : 'info'](
            { spiffeId: svid.id.toString(), serial, expiresAt: svid.expiresAt },
            'broker TLS context updated',
          );
          servedSerial = serial;
        } catch (err) {
          // The previous context stays served; it turns stale, then expired, in readiness.
          logger.error({ err }, 'cannot apply the rotated SVID');
        }
      };
      x509.on('update', onUpdate);
      server.once('close', () => x509.off('update', onUpdate));
      return server as unknown as ReturnType<FastifyServerFactory>;
    };
  } else {
    logger.warn('tls.mode is none: serving plain HTTP (tests only)');
    serverFactory = (handler) => createHttpServer(handler) as unknown as ReturnType<FastifyServerFactory>;
  }

  const audit = createAuditLog(logger, config.audit.destination);
  opened.push(() => audit.close?.());
  // Vault, when configured, also leases downstream credentials to tasks (docs/vault.md): one client
  // for signing and leasing. A Vault that cannot be reached fails the start (fail closed).
  const vaultClosers: (() => Promise<void> | void)[] = [];
  const vault = config.vault
    ? (signer.vault ?? (await connectVault(config, logger, vaultClosers)))
    : undefined;
  opened.push(async () => {
    for (const c of [...vaultClosers].reverse()) await c();
  });
  const appDeps: AppDeps = {
    config,
    audit,
    store,
    keys,
    policies,
    decisionPoints,
    identity: {
      agentAuth: createWorkloadAuthenticator({
        x509Bundles: x509,
        // Every Workload API update (bundle or SVID) invalidates the per-connection identity cache.
        x509BundleUpdates: x509,
        jwtBundles: bundles,
        audience: config.jwtSvidAudience,
        trustDomains,
      }),
      svidHealth: () => {
        const h = x509.health();
        if (config.tls.mode !== 'spiffe' || h.svid === 'missing') return h;
        return { ...h, svid: svidState(served, h.workloadApi), expiresAt: served.expiresAt };
      },
    },
    userTokens: createUserTokenVerifier(config.users.trustedIssuers),
    hub,
    logger,
    serverFactory,
    ...(vault ? { vaultHealth: cachedFor(1000, () => vault.health()) } : {}),
  };
  const services = buildServices(appDeps);
  // Lease events go through the recorder, like every audit event, into the decision records.
  if (vault) appDeps.credentials = new LeasedCredentials({ store, vault, audit: services.recorder, logger });
  const app = buildApp(appDeps, services);
  // The revocation outbox's worker: every lease of an ended task is revoked in Vault, retried until
  // Vault confirms (also leases left by an earlier run or another replica).
  const revoker = vault
    ? new LeaseRevoker({
        store,
        revoke: (leaseId) => vault.revokeLease(leaseId),
        onPending: (n) => services.metrics.vaultLeasesPending.set(n),
        audit: services.recorder,
        logger,
      })
    : undefined;
  opened.push(() => revoker?.stop());

  opened.push(() => app.close());
  // Fastify does not know the factory's server speaks TLS and reports http://.
  const scheme = (u: string) => (config.tls.mode === 'spiffe' ? u.replace(/^http:/, 'https:') : u);
  const listening = await app.listen({
    host: config.listen.host,
    port: config.listen.port,
    listenTextResolver: (address) => `Server listening at ${scheme(address)}`,
  });
  const url = scheme(listening);
  logger.info({ url, issuer: config.issuer, tls: config.tls.mode }, 'taskpass broker listening');

  // The console: its own listener, never the agents' port; same store, services and feed.
  let consoleApp: FastifyInstance | undefined;
  let consoleUrl: string | undefined;
  if (config.console) {
    consoleApp = buildConsole({ config, store, services, hub, keys, policies, logger });
    opened.push(() => consoleApp?.close());
    const at = await consoleApp.listen({
      host: config.console.listen.host,
      port: config.console.listen.port,
    });
    consoleUrl = `${config.console.publicUrl.replace(/\/$/, '')}/console/`;
    logger.info({ listen: at, url: consoleUrl }, 'taskpass console listening');
  }

  // Expired tasks, replay entries and revocations past `until` are dropped periodically, in small
  // steps that leave the event loop free (store sweep); a sweep still running when the next tick
  // comes is joined, not doubled. The first one starts now and is not awaited: a backlog left by a
  // long downtime is swept while the broker serves. Closing the store ends a running sweep at its
  // next step.
  let closing: Promise<void> | undefined;
  const sweep = async (): Promise<void> => {
    try {
      await store.sweep(Math.floor(Date.now() / 1000));
    } catch (err) {
      if (!closing) logger.warn({ err }, 'store sweep failed (retried on the next tick)');
    }
  };
  void sweep();
  revoker?.start();
  const sweeper = setInterval(() => void sweep(), config.sweepEvery * 1000);
  sweeper.unref();

  const close = (): Promise<void> => {
    closing ??= (async () => {
      logger.info('shutting down');
      clearInterval(sweeper);
      await hub.close();
      await consoleApp?.close();
      await app.close();
      await revoker?.stop();
      await policies.close();
      // The signer, and for Transit its Vault client and JWT source, in reverse order of opening.
      for (const c of [...vaultClosers].reverse()) await c();
      for (const c of [...signer.closers].reverse()) await c();
      await x509.close();
      await bundles.close();
      await store.close();
      audit.close?.();
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
    // logrotate's postrotate: the audit file continues under its configured path.
    process.on('SIGUSR2', () => {
      audit.reopen?.();
      logger.info('audit log reopened');
    });
  }
  return {
    app,
    url,
    metrics: services.metrics,
    ...(consoleApp && consoleUrl ? { console: { app: consoleApp, url: consoleUrl } } : {}),
    close,
    reloadPolicies,
  };
}

/** `fn`'s last answer for `ms` (a probe behind a route anyone may hit, e.g. /readyz). */
function cachedFor<T>(ms: number, fn: () => Promise<T>): () => Promise<T> {
  let last: { at: number; value: Promise<T> } | undefined;
  return () => {
    const now = Date.now();
    if (!last || now - last.at >= ms) last = { at: now, value: fn() };
    return last.value;
  };
}
