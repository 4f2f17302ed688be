// The agent API (docs/design.md §3): tasks and call tokens. Registered in its own encapsulated scope
// whose onRequest hook authenticates the agent; nothing here is reachable without it.
import type { FastifyInstance } from 'fastify';
import { BrokerError } from '../errors.ts';
import { rateLimiter } from '../rate-limit.ts';
import { BODY_LIMITS, bodyLimit } from '../request-boundary.ts';
import type { MintedToken } from '../service.ts';
import type { ClosingStatus } from '../store/types.ts';
import type { VerifiedUser } from '../user-tokens.ts';
import { authenticateRequest, type RouteContext } from './context.ts';
import {
  CallTokenBody,
  type CallTokenBodyT,
  CompleteBody,
  CompleteResponse,
  bodyErrorResponses,
  errorResponses,
  OpenTaskBody,
  type OpenTaskBodyT,
  OpenTaskResponse,
  SessionTokenBody,
  TaskIdParams,
  TaskView,
  TokenResponse,
  taskView,
} from './schemas.ts';

const security: Record<string, string[]>[] = [{ mtls: [] }, { jwtSvid: [] }];

const tokenBody = (t: MintedToken) => ({
  access_token: t.accessToken,
  token_type: 'Bearer' as const,
  expires_in: t.expiresIn,
  expires_at: t.expiresAt,
  jti: t.jti,
  single_use: t.singleUse,
  template: t.template,
});

/**
 * Registers /v1/tasks/** in an agent-authenticated, rate-limited scope. Both happen in onRequest,
 * before the body is read: an unauthenticated or throttled caller never gets a byte parsed.
 */
export async function taskRoutes(app: FastifyInstance, ctx: RouteContext): Promise<void> {
  const limiter = rateLimiter(app);
  app.addHook('onRequest', async (req, reply) => {
    const id = await authenticateRequest(ctx, req);
    if (!ctx.matchers.agent(id.spiffeId)) {
      throw new BrokerError('TASKPASS_FORBIDDEN', 'this SPIFFE ID is not an allowed agent');
    }
    req.workload = id;
    await limiter.consume(req, reply, 'agent', id.id);
  });
  const limits = {
    openTask: bodyLimit(ctx.config, BODY_LIMITS.openTask),
    callToken: bodyLimit(ctx.config, BODY_LIMITS.callToken),
    small: bodyLimit(ctx.config, BODY_LIMITS.small),
  };

  app.post<{ Body: OpenTaskBodyT }>(
    '/v1/tasks',
    {
      bodyLimit: limits.openTask,
      schema: {
        summary: 'Open a task on behalf of a user (or autonomously when a template allows it)',
        tags: ['tasks'],
        security,
        body: OpenTaskBody,
        response: { 201: OpenTaskResponse, ...bodyErrorResponses },
      },
    },
    async (req, reply) => {
      const agent = req.workload!;
      let user: VerifiedUser | undefined;
      if (req.body.user_token) user = await ctx.userTokens.verify(req.body.user_token);
      const { task, ceiling } = await ctx.service.openTask(
        agent,
        { purpose: req.body.purpose, ttlSec: req.body.ttl_seconds },
        user,
      );
      return reply.code(201).send({
        task_id: task.id,
        status: task.status,
        expires_at: task.expiresAt,
        sub: task.sub,
        agent: task.agent,
        ceiling,
      });
    },
  );

  app.get<{ Params: { id: string } }>(
    '/v1/tasks/:id',
    {
      schema: {
        summary: 'Read a task (owner only)',
        tags: ['tasks'],
        security,
        params: TaskIdParams,
        response: { 200: TaskView, ...errorResponses },
      },
    },
    async (req) => {
      const t = await ctx.service.ownedTask(req.workload!, req.params.id);
      return taskView(t);
    },
  );

  app.post<{ Params: { id: string }; Body: CallTokenBodyT }>(
    '/v1/tasks/:id/tokens',
    {
      bodyLimit: limits.callToken,
      schema: {
        summary: 'Get a call token for one tool call',
        tags: ['tasks'],
        security,
        params: TaskIdParams,
        body: CallTokenBody,
        response: { 200: TokenResponse, ...bodyErrorResponses },
      },
    },
    async (req, reply) => {
      const task = await ctx.service.usableTask(req.workload!, req.params.id);
      const t = await ctx.service.issueCall(req.workload!, task, req.body);
      reply.header('cache-control', 'no-store');
      return tokenBody(t);
    },
  );

  app.post<{ Params: { id: string }; Body: { audience: string } }>(
    '/v1/tasks/:id/session-token',
    {
      bodyLimit: limits.small,
      schema: {
        summary: 'Get a session token (initialize, tools/list, ping; no tool call)',
        tags: ['tasks'],
        security,
        params: TaskIdParams,
        body: SessionTokenBody,
        response: { 200: TokenResponse, ...bodyErrorResponses },
      },
    },
    async (req, reply) => {
      const task = await ctx.service.usableTask(req.workload!, req.params.id);
      const t = await ctx.service.issueSession(req.workload!, task, req.body.audience);
      reply.header('cache-control', 'no-store');
      return tokenBody(t);
    },
  );

  app.post<{ Params: { id: string }; Body: { status: Exclude<ClosingStatus, 'revoked'> } }>(
    '/v1/tasks/:id/complete',
    {
      bodyLimit: limits.small,
      schema: {
        summary: 'Finish a task; answers only after its revocation is durable',
        tags: ['tasks'],
        security,
        params: TaskIdParams,
        body: CompleteBody,
        response: { 200: CompleteResponse, ...bodyErrorResponses },
      },
    },
    async (req) => {
      const agent = req.workload!;
      await ctx.service.ownedTask(agent, req.params.id);
      const { task, revocation } = await ctx.service.complete(
        agent,
        req.params.id,
        req.body.status,
        `task ${req.body.status}`,
      );
      return { task_id: task.id, status: task.status, revocation_seq: revocation.seq };
    },
  );
}
