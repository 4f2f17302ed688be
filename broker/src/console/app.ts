// The console's own fastify instance (docs/console.md): served by the broker process on its own
// listener (`console.listen`), never on the agents' port, with the same store and services. This
// file holds the instance, the security headers every answer carries, and sign-in; the JSON API is
// api.ts, the live events events.ts.
import Fastify, {
  type FastifyError,
  type FastifyInstance,
  type FastifyReply,
  type FastifyRequest,
} from 'fastify';
import type { Logger } from 'pino';
import { z } from 'zod';
import type { BrokerServices } from '../app.ts';
import type { BrokerConfig } from '../config.ts';
import { BrokerError } from '../errors.ts';
import type { KeysPort, PolicyPort } from '../ports.ts';
import type { RevocationHub } from '../revocation-hub.ts';
import type { Store } from '../store/types.ts';
import { limiterRedis, rateLimiter, registerRateLimitStore } from '../rate-limit.ts';
import { consoleApi } from './api.ts';
import { consolePages } from './pages.ts';
import { OidcClient } from './oidc.ts';
import { type ConsoleSession, ConsoleSessions } from './session.ts';

/** The Content-Security-Policy of every console answer: nothing inline, nothing from elsewhere. */
export const CONSOLE_CSP =
  "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; " +
  "frame-ancestors 'none'; base-uri 'none'; form-action 'self'";

/** The last policy reload, as the templates page shows it. */
export interface PolicyReloadStatus {
  at: number;
  ok: boolean;
  files?: readonly string[];
  templates?: number;
  errors?: readonly unknown[];
}

/** Everything the console needs: the broker's own services, nothing of its own but sessions. */
export interface ConsoleDeps {
  config: BrokerConfig;
  store: Store;
  services: BrokerServices;
  hub: RevocationHub;
  keys: KeysPort;
  /** The policy set in force; with `on` (the PolicyWatcher), reload results are followed too. */
  policies: {
    current(): PolicyPort;
    on?(event: 'reloaded' | 'rejected', l: (r: Omit<PolicyReloadStatus, 'at'>) => void): unknown;
  };
  logger: Logger;
  /** Epoch milliseconds. */
  now?: () => number;
  /** How often the live events look for records of other replicas, ms (default 1000). */
  eventsPollMs?: number;
}

declare module 'fastify' {
  interface FastifyRequest {
    consoleSession: ConsoleSession | null;
  }
}

/** JSON with `<`, `>`, `&` and line separators escaped: still JSON, never readable as markup. */
export function safeJson(v: unknown): string {
  return JSON.stringify(v).replace(
    /[<>&\u2028\u2029]/g,
    (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`,
  );
}

/** Builds the console application (call `listen`, or `inject` in tests). */
export function buildConsole(deps: ConsoleDeps): FastifyInstance {
  const cfg = deps.config.console;
  if (!cfg) throw new Error('buildConsole: no console section in the configuration');
  const now = deps.now ?? Date.now;
  const app = Fastify({
    loggerInstance: deps.logger.child({ listener: 'console' }),
    bodyLimit: 65536,
    return503OnClosing: true,
  }) as unknown as FastifyInstance;
  const sessions = new ConsoleSessions(cfg, deps.store, now);
  const oidc = new OidcClient(cfg, { now });

  let lastReload: PolicyReloadStatus | undefined;
  deps.policies.on?.('reloaded', (r) => {
    lastReload = { at: now(), ...r };
  });
  deps.policies.on?.('rejected', (r) => {
    lastReload = { at: now(), ...r };
  });

  app.decorateRequest('consoleSession', null);
  app.setReplySerializer((payload) => safeJson(payload));
  app.addHook('onSend', async (_req, reply, payload) => {
    reply.header('content-security-policy', CONSOLE_CSP);
    reply.header('x-content-type-options', 'nosniff');
    // same-origin, not no-referrer: under no-referrer a browser's form POST carries `Origin: null`,
    // which the CSRF origin check (session.ts) must refuse; same-origin still tells no one else.
    reply.header('referrer-policy', 'same-origin');
    reply.header('x-frame-options', 'DENY');
    reply.header('cross-origin-opener-policy', 'same-origin');
    reply.header('cross-origin-resource-policy', 'same-origin');
    if (!cfg.insecureCookies) reply.header('strict-transport-security', 'max-age=31536000');
    // Nothing a console answer holds belongs in a shared or back-button cache.
    if (!reply.getHeader('cache-control')) reply.header('cache-control', 'no-store');
    return payload;
  });
  app.setErrorHandler((err: FastifyError | BrokerError, req, reply) => {
    if (err instanceof BrokerError) {
      if (err.status >= 500) req.log.error({ err }, 'console request failed');
      if (err.status === 503) reply.header('retry-after', '1');
      const body: Record<string, unknown> = { code: err.code, message: err.message };
      if (err.code === 'TASKPASS_INTERNAL') body.message = 'internal error';
      else if (err.details) Object.assign(body, err.details, body);
      return reply.code(err.status).send(body);
    }
    if (err.validation || (err.statusCode && err.statusCode >= 400 && err.statusCode < 500)) {
      return reply.code(err.statusCode ?? 400).send({ code: 'TASKPASS_BAD_REQUEST', message: err.message });
    }
    req.log.error({ err }, 'unexpected console error');
    return reply.code(500).send({ code: 'TASKPASS_INTERNAL', message: 'internal error' });
  });
  app.setNotFoundHandler((req, reply) =>
    reply
      .code(404)
      .send({ code: 'TASKPASS_NOT_FOUND', message: `no route ${req.method} ${req.url.split('?')[0]}` }),
  );

  // Rate limits as on the agents' API (rate-limit.ts; shared through Redis on the Redis store):
  // sign-in per client IP (it writes a sign-in state to the store before anyone is known), the API
  // per signed-in person, on the admin budget.
  const limiterClient = limiterRedis(deps.config);
  registerRateLimitStore(app, deps.config, { redis: limiterClient, logger: deps.logger });
  app.register(async (scope) => {
    const limiter = rateLimiter(scope);
    scope.addHook('onRequest', async (req, reply) => limiter.consume(req, reply, 'ip', req.ip));
    // Sign-in. `return` must be a path under /console (no open redirect).
    const LoginQuery = z.strictObject({
      return: z
        .string()
        .regex(/^\/console(\/[A-Za-z0-9/_.~%-]*)?$/)
        .optional(),
    });
    scope.get('/console/auth/login', async (req, reply) => {
      const q = parse(LoginQuery, req.query);
      const { state, login, url } = await oidc.begin(q.return ?? '/console/');
      await sessions.saveLogin(reply, state, login);
      return reply.redirect(url, 303);
    });

    const CallbackQuery = z
      .object({
        code: z.string().min(1).max(4096).optional(),
        state: z.string().min(16).max(128),
        error: z.string().max(256).optional(),
        error_description: z.string().max(1024).optional(),
        iss: z.string().max(2048).optional(),
        session_state: z.string().max(1024).optional(),
      })
      .strict();
    scope.get(cfg.oidc.redirectPath, async (req, reply) => {
      const q = parse(CallbackQuery, req.query);
      const login = await sessions.takeLogin(req, reply, q.state);
      if (q.error || !q.code) {
        throw new BrokerError(
          'TASKPASS_CONSOLE_SIGNIN_FAILED',
          `the identity provider answered ${q.error ?? 'no code'}`,
        );
      }
      // RFC 9207: when the provider names itself, it must be ours (mix-up defence).
      if (q.iss !== undefined && q.iss !== cfg.oidc.issuer) {
        throw new BrokerError(
          'TASKPASS_CONSOLE_SIGNIN_FAILED',
          'the answer comes from another identity provider',
        );
      }
      const identity = await oidc.finish(q.code, login);
      await sessions.open(reply, identity);
      req.log.info({ sub: identity.sub, iss: identity.iss }, 'console sign-in');
      // A same-site page that moves on: the SameSite=Strict session cookie is sent from there on
      // (a redirect would still count as part of the identity provider's cross-site navigation).
      const to = login.returnTo;
      return reply
        .type('text/html; charset=utf-8')
        .send(
          `<!doctype html><meta charset="utf-8"><meta http-equiv="refresh" content="0;url=${to}"><link rel="icon" href="data:,"><title>Signed in</title><a href="${to}">Continue to the console</a>`,
        );
    });

    scope.post('/console/auth/logout', async (req, reply) => {
      const s = await sessions.current(req);
      if (s) sessions.checkCsrf(req, s);
      await sessions.close(reply, s);
      // A page's sign-out form gets a page; the API's callers get JSON.
      if (isForm(req)) {
        return reply
          .type('text/html; charset=utf-8')
          .send(
            '<!doctype html><meta charset="utf-8"><title>Signed out</title><p>Signed out. <a href="/console/">Sign in again</a></p>',
          );
      }
      return { signed_out: true };
    });
  });

  // The pages' forms (application/x-www-form-urlencoded): flat string fields, the last of a name
  // wins; the pages validate them with zod like the API validates JSON.
  app.addContentTypeParser('application/x-www-form-urlencoded', { parseAs: 'string' }, (_req, body, done) =>
    done(null, Object.fromEntries(new URLSearchParams(body as string))),
  );
  // The pages: every page's data comes from the API below (inject), limited there per person.
  app.register(async (scope) => consolePages(scope, { root: app, sessions }));

  app.register(async (scope) =>
    consoleApi(scope, {
      ...deps,
      now,
      sessions,
      lastReload: () => lastReload,
      limiter: rateLimiter(scope),
    }),
  );
  return app;
}

/** Is the request an HTML form's POST? */
export const isForm = (req: FastifyRequest): boolean =>
  (req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded');

/** Validates with zod; a failure is TASKPASS_BAD_REQUEST naming the fields. */
export function parse<T extends z.ZodType>(schema: T, v: unknown): z.output<T> {
  const r = schema.safeParse(v);
  if (!r.success) {
    throw new BrokerError(
      'TASKPASS_BAD_REQUEST',
      r.error.issues.map((i) => `${i.path.join('.') || '(root)'}: ${i.message}`).join('; '),
    );
  }
  return r.data;
}

export type { FastifyReply, FastifyRequest };
