// Admin API: list and revoke tasks. Its own scope, whose hook admits only the configured admin
// SPIFFE IDs (TASKPASS_FORBIDDEN_ADMIN for any other authenticated workload).
import type { FastifyInstance } from 'fastify';
import { TaskpassError } from '../errors.ts';
import type { TaskStatus } from '../store/types.ts';
import { authenticateRequest, type RouteContext } from './context.ts';
import {
  AdminListQuery,
  AdminListResponse,
  AdminRevokeBody,
  CompleteResponse,
  errorResponses,
  TaskIdParams,
  taskView,
} from './schemas.ts';

const security: Record<string, string[]>[] = [{ mtls: [] }, { jwtSvid: [] }];

/** Registers /admin/v1/**. */
export async function adminRoutes(app: FastifyInstance, ctx: RouteContext): Promise<void> {
  app.addHook('onRequest', async (req) => {
    const id = await authenticateRequest(ctx, req);
    if (!ctx.matchers.admin(id.spiffeId)) {
      throw new TaskpassError('TASKPASS_FORBIDDEN_ADMIN', 'this SPIFFE ID is not an administrator');
    }
    req.workload = id;
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
      schema: {
        summary: 'Revoke a task and every token of it (admins); answers after the revocation is durable',
        tags: ['admin'],
        security,
        params: TaskIdParams,
        body: AdminRevokeBody,
        response: { 200: CompleteResponse, ...errorResponses },
      },
    },
    async (req) => {
      const t = await ctx.store.getTask(req.params.id);
      if (!t) throw new TaskpassError('TASKPASS_TASK_NOT_FOUND', `no task ${req.params.id}`);
      const reason = req.body?.reason ?? 'revoked by an administrator';
      const { task, revocation } = await ctx.service.finish(req.workload!, t.id, 'revoked', reason);
      return { task_id: task.id, status: task.status, revocation_seq: revocation.seq };
    },
  );
}
