// Admin API: list and revoke tasks; policy overlap warnings. Its own scope, whose hook admits only the configured admin
// SPIFFE IDs (TASKPASS_FORBIDDEN_ADMIN for any other authenticated workload).
import type { FastifyInstance } from 'fastify';
import { BrokerError } from '../errors.ts';
import { rateLimiter } from '../rate-limit.ts';
import { BODY_LIMITS, bodyLimit } from '../request-boundary.ts';
import type { TaskStatus } from '../store/types.ts';
import { authenticateRequest, type RouteContext } from './context.ts';
import {
  AdminListQuery,
  AdminListResponse,
  AdminRevokeBody,
  CompleteResponse,
  bodyErrorResponses,
  errorResponses,
  TaskIdParams,
  taskView,
} from './schemas.ts';

const security: Record<string, string[]>[] = [{ mtls: [] }, { jwtSvid: [] }];

/** Registers /admin/v1/**: authenticated, admin-only and rate-limited before any body is read. */
export async function adminRoutes(app: FastifyInstance, ctx: RouteContext): Promise<void> {
  const limiter = rateLimiter(app);
  app.addHook('onRequest', async (req, reply) => {
    const id = await authenticateRequest(ctx, req);
    if (!ctx.matchers.admin(id.spiffeId)) {
      throw new BrokerError('TASKPASS_FORBIDDEN_ADMIN', 'this SPIFFE ID is not an administrator');
    }
    req.workload = id;
    await limiter.consume(req, reply, 'admin', id.id);
  });

  app.get<{ Querystring: { status?: TaskStatus; agent?: string; limit?: number } }>(
    '/admin/v1/tasks',
    {
      schema: {
        summary: 'List tasks (admins)',
        tags: ['admin'],
        security,
        querystring: AdminListQuery,
        response: { 200: AdminListResponse, ...errorResponses },
      },
    },
    async (req) => {
      const { status, agent, limit } = req.query;
      const tasks = await ctx.store.listTasks({
        ...(status ? { status } : {}),
        ...(agent ? { agent } : {}),
        limit: limit ?? 100,
      });
      return {
        tasks: tasks.map(taskView),
      };
    },
  );

  app.post<{ Params: { id: string }; Body: { reason?: string } | null }>(
    '/admin/v1/tasks/:id/revoke',
    {
      bodyLimit: bodyLimit(ctx.config, BODY_LIMITS.small),
      schema: {
        summary: 'Revoke a task and every token of it (admins); answers after the revocation is durable',
        tags: ['admin'],
        security,
        params: TaskIdParams,
        body: AdminRevokeBody,
        response: { 200: CompleteResponse, ...bodyErrorResponses },
      },
    },
    async (req) => {
      const t = await ctx.store.getTask(req.params.id);
      if (!t) throw new BrokerError('TASKPASS_TASK_NOT_FOUND', `no task ${req.params.id}`);
      const reason = req.body?.reason ?? 'revoked by an administrator';
      const { task, revocation } = await ctx.service.complete(req.workload!, t.id, 'revoked', reason);
      return { task_id: task.id, status: task.status, revocation_seq: revocation.seq };
    },
  );

  // ---- policy overlap warnings (issue #7, finding 9; for the console to come) ----
  const location = {
    type: 'object',
    required: ['file', 'path'],
    properties: {
      file: { type: 'string' },
      path: { type: 'string' },
      line: { type: 'integer' },
      col: { type: 'integer' },
    },
  } as const;
  app.get(
    '/admin/v1/policies/warnings',
    {
      schema: {
        summary:
          'Templates that widen another template’s rule for the same agent, tool and resource (admins)',
        tags: ['admin'],
        security,
        response: {
          200: {
            type: 'object',
            required: ['warnings'],
            properties: {
              warnings: {
                type: 'array',
                items: {
                  type: 'object',
                  required: [
                    'kind',
                    'template',
                    'widens',
                    'audience',
                    'tool',
                    'action',
                    'widened',
                    'message',
                  ],
                  properties: {
                    kind: { type: 'string' },
                    template: { type: 'string' },
                    widens: { type: 'string' },
                    audience: { type: 'string' },
                    tool: { type: 'string' },
                    action: { type: 'string' },
                    widened: {
                      type: 'array',
                      items: {
                        type: 'object',
                        required: ['condition', 'detail'],
                        properties: { condition: { type: 'string' }, detail: { type: 'string' } },
                      },
                    },
                    message: { type: 'string' },
                    at: location,
                    other: location,
                  },
                },
              },
            },
          },
          ...errorResponses,
        },
      },
    },
    async () => ({ warnings: ctx.policies.current().warnings ?? [] }),
  );
}
