// The console's JSON API (docs/console.md "Endpoints"): what the pages show and the two actions
// (revoke a task, decide an approval). Every route needs a session; state changes need the CSRF
// token; what each role sees is checked here, per route. Actions go through the broker's own
// services, so a revocation or a decision made here is the same as one made through the API:
// durable, audited, on the revocation feed.
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, type JSONWebKeySet, jwtVerify } from 'jose';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { z } from 'zod';
import { approvalView } from '../approvals.ts';
import { explainText } from '../cli.ts';
import { BrokerError } from '../errors.ts';
import type { RateLimiter } from '../rate-limit.ts';
import { FixtureCaseSchema, runCase } from '../policy/fixtures.ts';
import { PolicySet } from '../policy/engine.ts';
import { taskView } from '../routes/schemas.ts';
import type { TaskStatus } from '../store/types.ts';
import { type ConsoleDeps, type PolicyReloadStatus, parse } from './app.ts';
import { consoleEvents } from './events.ts';
import { approverOf, type ConsoleSession, type ConsoleSessions } from './session.ts';

export interface ConsoleApiDeps extends ConsoleDeps {
  now: () => number;
  limiter: RateLimiter;
  sessions: ConsoleSessions;
  lastReload: () => PolicyReloadStatus | undefined;
}

const STATE_CHANGING = new Set(['POST', 'PUT', 'PATCH', 'DELETE']);

const Limit = z.coerce.number().int().min(1).max(500).default(50);
const Id = z
  .string()
  .min(1)
  .max(128)
  .regex(/^[A-Za-z0-9_-]+$/);

export async function consoleApi(app: FastifyInstance, d: ConsoleApiDeps): Promise<void> {
  const { services, store, config, sessions } = d;
  const nowSec = () => Math.floor(d.now() / 1000);

  // Every API route: a session, and the CSRF token on state changes (checked before the body is
  // used: a forged request changes nothing).
  app.addHook('preHandler', async (req, reply) => {
    const s = await sessions.current(req);
    if (!s) throw new BrokerError('TASKPASS_CONSOLE_UNAUTHENTICATED', 'sign in at /console/auth/login');
    await d.limiter.consume(req, reply, 'admin', `console:${s.identity.iss}|${s.identity.sub}`);
    if (STATE_CHANGING.has(req.method)) sessions.checkCsrf(req, s);
    req.consoleSession = s;
  });
  const session = (req: FastifyRequest): ConsoleSession => req.consoleSession as ConsoleSession;
  const need = (req: FastifyRequest, role: 'admin' | 'viewer'): ConsoleSession => {
    const s = session(req);
    if (!s.roles[role]) {
      throw new BrokerError(
        'TASKPASS_CONSOLE_FORBIDDEN',
        role === 'admin'
          ? 'this action is for console admins'
          : 'this page is for console admins and viewers',
      );
    }
    return s;
  };

  app.get('/console/api/session', async (req) => {
    const s = session(req);
    const c = s.identity.claims;
    return {
      sub: s.identity.sub,
      iss: s.identity.iss,
      name: typeof c.name === 'string' ? c.name : undefined,
      email: typeof c.email === 'string' ? c.email : undefined,
      roles: s.roles,
      csrf_token: s.csrf,
      expires_at: s.expiresAt,
    };
  });

  app.get('/console/api/now', async (req) => {
    need(req, 'viewer');
    const nowMs = d.now();
    // Rates over whole minutes (the Redis store counts per minute): the last complete one.
    const minute = nowMs - (nowMs % 60_000);
    const [open, pending, lastMinute, lastHour, perMinute] = await Promise.all([
      store.listTasks({ status: 'open', limit: 1000 }),
      store.listPendingApprovals(nowSec(), 1000),
      store.decisionCounts(minute - 60_000, minute),
      // Up to and including this millisecond.
      store.decisionCounts(nowMs - 3_600_000, nowMs + 1),
      store.decisionCountsByMinute(minute - 3_600_000, nowMs + 1),
    ]);
    const { issued: issuedHour = 0, ...denials } = lastHour;
    return {
      at: nowMs,
      open_tasks: open.filter((t) => t.expiresAt > nowSec()).length,
      tokens_per_second: Math.round(((lastMinute.issued ?? 0) / 60) * 100) / 100,
      tokens_last_hour: issuedHour,
      denials_by_code: denials,
      approvals_waiting: pending.length,
      // The last hour per minute (minutes without records absent): the pages' charts.
      per_minute: perMinute.map((m) => ({ at: m.minute * 60_000, counts: m.counts })),
      feed: {
        seq: d.hub.seq,
        subscribers: d.hub.subscribers().map((s) => ({
          subscriber: s.subscriber ?? null,
          seq: s.seq,
          lag: s.lag,
          buffered_bytes: s.buffered,
          since: s.since,
        })),
      },
    };
  });

  const TaskQuery = z.strictObject({
    status: z.enum(['open', 'completed', 'failed', 'cancelled', 'revoked']).optional(),
    agent: z.string().max(2048).optional(),
    user: z.string().max(255).optional(),
    limit: Limit,
  });
  app.get('/console/api/tasks', async (req) => {
    need(req, 'viewer');
    const q = parse(TaskQuery, req.query);
    const tasks = await store.listTasks({
      ...(q.status ? { status: q.status as TaskStatus } : {}),
      ...(q.agent ? { agent: q.agent } : {}),
      limit: q.user ? 1000 : q.limit,
    });
    const shown = (q.user ? tasks.filter((t) => t.sub === q.user) : tasks).slice(0, q.limit);
    // Calls per task from the store's issued log: the list's "calls" column.
    const withCalls = await Promise.all(
      shown.map(async (t) => ({ ...taskView(t), calls: (await store.listIssued(t.id)).length })),
    );
    return { tasks: withCalls };
  });

  app.get('/console/api/tasks/:id', async (req) => {
    need(req, 'viewer');
    const { id } = parse(z.strictObject({ id: Id }), req.params);
    const [task, timeline, issued] = await Promise.all([
      store.getTask(id),
      store.decisionsOfTask(id, 2000),
      store.listIssued(id),
    ]);
    // A task swept from the store (expired past retention) still has its timeline.
    if (!task && timeline.length === 0) throw new BrokerError('TASKPASS_TASK_NOT_FOUND', `no task ${id}`);
    // Each token's state as verifiers see it: a closed task's tokens are all revoked (its end is on
    // the feed); otherwise a token is revoked on its own, expired, or live.
    const now = nowSec();
    const taskClosed = task?.status !== 'open';
    const withState = await Promise.all(
      issued.map(async (i) => ({
        ...i,
        state:
          taskClosed || (await store.isRevoked('token', i.jti))
            ? 'revoked'
            : i.expiresAt <= now
              ? 'expired'
              : 'live',
      })),
    );
    return { task: task ? taskView(task) : null, timeline, issued: withState };
  });

  const RevokeBody = z.strictObject({ reason: z.string().min(1).max(512).optional() });
  app.post('/console/api/tasks/:id/revoke', async (req) => {
    const s = need(req, 'admin');
    const { id } = parse(z.strictObject({ id: Id }), req.params);
    const body = parse(RevokeBody, req.body ?? {});
    const by = { id: `console:${s.identity.sub} at ${s.identity.iss}` };
    const reason = body.reason ?? `revoked from the console by ${s.identity.sub}`;
    const { task, revocation } = await services.service.complete(by, id, 'revoked', reason);
    return { task: taskView(task), revocation };
  });

  const DecisionQuery = z.strictObject({
    agent: z.string().max(2048).optional(),
    user: z.string().max(255).optional(),
    task: Id.optional(),
    code: z
      .string()
      .regex(/^TASKPASS_[A-Z_]+$/)
      .optional(),
    outcome: z.enum(['allowed', 'denied']).optional(),
    before: z.coerce.number().int().min(1).optional(),
    limit: Limit,
  });
  app.get('/console/api/decisions', async (req) => {
    need(req, 'viewer');
    const q = parse(DecisionQuery, req.query);
    return store.recentDecisions(q);
  });

  // Approvals: what this person may decide (the same check as the approvals API), for anyone
  // signed in; a person who may decide nothing gets an empty list.
  app.get('/console/api/approvals', async (req) => {
    const s = session(req);
    const list = await services.approvals.pendingFor(approverOf(s).user, 200);
    return { approvals: list.map((a) => approvalView(config, a, nowSec())) };
  });

  app.get('/console/api/approvals/:id', async (req) => {
    const { id } = parse(z.strictObject({ id: Id }), req.params);
    const a = await services.approvals.visible(approverOf(session(req)), id);
    return approvalView(config, a, nowSec());
  });

  const DecideBody = z.strictObject({
    decision: z.enum(['approve', 'deny']),
    comment: z.string().max(1024).optional(),
  });
  app.post('/console/api/approvals/:id/decision', async (req) => {
    const { id } = parse(z.strictObject({ id: Id }), req.params);
    const body = parse(DecideBody, req.body);
    // The session's verified ID token is the approver: the same service and checks as
    // POST /v1/approvals/:id/decision with an approver token.
    const decided = await services.approvals.decide(approverOf(session(req)).user, id, body);
    return approvalView(config, decided, nowSec());
  });

  app.get('/console/api/templates', async (req) => {
    need(req, 'viewer');
    const set = d.policies.current();
    const templates = set instanceof PolicySet ? set.templates : [];
    return {
      templates: templates.map((t) => ({
        id: t.id,
        owner: t.owner,
        audience: t.audience,
        agents: t.agents,
        tools: t.tools.map((x) => ({ tool: x.tool, action: x.action, resources: x.resources })),
      })),
      warnings: set.warnings ?? [],
      last_reload: d.lastReload() ?? null,
    };
  });

  const User = z.strictObject({
    iss: z.string().min(1).max(2048),
    sub: z.string().min(1).max(255),
    claims: z.record(z.string(), z.unknown()).default({}),
  });
  const CeilingBody = z.strictObject({ agent: z.string().min(1).max(2048), user: User.optional() });
  app.post('/console/api/templates/ceiling', async (req) => {
    need(req, 'viewer');
    const b = parse(CeilingBody, req.body);
    const set = d.policies.current();
    return { admits: set.admits(b.agent, b.user), ceiling: set.ceiling(b.agent, b.user) };
  });

  // What-if: one fixture case (without name and expect), decided by the same engine and code path
  // as `taskpass policy test`.
  const WhatIfBody = FixtureCaseSchema.omit({ name: true, expect: true, template: true });
  app.post('/console/api/templates/what-if', async (req) => {
    need(req, 'viewer');
    const b = parse(WhatIfBody, req.body);
    const set = d.policies.current();
    if (!(set instanceof PolicySet)) throw new BrokerError('TASKPASS_INTERNAL', 'no policy set loaded');
    const probe = runCase(set, { ...b, name: 'what-if', expect: 'allow' }, 'console');
    // Asked again expecting what it got: the message is then the engine's reason alone.
    const r =
      probe.passed || probe.actual === 'invalid-history'
        ? probe
        : runCase(set, { ...b, name: 'what-if', expect: probe.actual as 'allow' }, 'console');
    return { decision: r.actual, template: r.template ?? null, reason: r.message };
  });

  const ExplainBody = z.strictObject({ token: z.string().min(10).max(16384) });
  app.post('/console/api/tokens/explain', async (req) => {
    need(req, 'viewer');
    const { token } = parse(ExplainBody, req.body);
    let header: Record<string, unknown>;
    let claims: Record<string, unknown>;
    try {
      header = decodeProtectedHeader(token) as Record<string, unknown>;
      claims = decodeJwt(token) as Record<string, unknown>;
    } catch {
      throw new BrokerError('TASKPASS_BAD_REQUEST', 'not a JWT');
    }
    let signature: { valid: boolean; kid: unknown; why?: string };
    try {
      const jwks = createLocalJWKSet((await d.keys.jwks()) as JSONWebKeySet);
      await jwtVerify(token, jwks, { issuer: config.issuer, algorithms: ['ES256'] });
      signature = { valid: true, kid: header.kid };
    } catch (e) {
      const code = (e as { code?: string }).code ?? 'invalid';
      // jose checks the signature before the claims: an expired token was signed by us.
      signature =
        code === 'ERR_JWT_EXPIRED'
          ? { valid: true, kid: header.kid }
          : { valid: false, kid: header.kid, why: code };
    }
    const jti = typeof claims.jti === 'string' ? claims.jti : undefined;
    const txn = typeof claims.txn === 'string' ? claims.txn : undefined;
    const [tokenRevoked, taskRevoked] = await Promise.all([
      jti ? store.isRevoked('token', jti) : false,
      txn ? store.isRevoked('task', txn) : false,
    ]);
    return {
      header,
      claims,
      explanation: explainText(header, claims, nowSec()).split('\n'),
      signature,
      revoked: { token: tokenRevoked, task: taskRevoked },
      expired: typeof claims.exp === 'number' ? claims.exp <= nowSec() : null,
    };
  });

  consoleEvents(app, d, session);
}
