// Taskpass as an OpenID AuthZEN 1.0 policy decision point (docs/policy-engines.md "Taskpass as an
// AuthZEN PDP"): a gateway in front of an MCP server asks whether this agent may call this tool on
// this resource, for the user of this task, now — answered from the engine that issues tokens
// (templates, the task's workflow state, the decision points behind them), without issuing one.
// The evaluation endpoints are for authenticated callers the configuration names (SPIFFE mTLS or
// JWT-SVID, `authzen.callers`); the discovery document is public.
import { ACTIONS } from '@taskpass/contract';
import type { FastifyInstance } from 'fastify';
import { z } from 'zod';
import { idListMatcher } from '../auth.ts';
import { BrokerError } from '../errors.ts';
import { rateLimiter } from '../rate-limit.ts';
import { BODY_LIMITS, bodyLimit } from '../request-boundary.ts';
import { authenticateRequest, type RouteContext } from './context.ts';
import { bodyErrorResponses } from './schemas.ts';

const EVALUATION = '/access/v1/evaluation';
const EVALUATIONS = '/access/v1/evaluations';
/** Most evaluations in one batch request. */
const MAX_BATCH = 64;

const Subject = z.looseObject({ type: z.string().min(1).max(128), id: z.string().min(1).max(2048) });
const Action = z.looseObject({
  name: z.string().min(1).max(128),
  properties: z.looseObject({ action_class: z.enum(ACTIONS).optional() }).optional(),
});
const Resource = z.looseObject({
  type: z.string().min(1).max(128),
  id: z.string().min(1).max(2048),
  properties: z.looseObject({ audience: z.string().min(1).max(2048).optional() }).optional(),
});
const Context = z.looseObject({
  task: z.looseObject({ id: z.string().min(1).max(64) }).optional(),
  task_id: z.string().min(1).max(64).optional(),
  arguments: z.record(z.string(), z.unknown()).optional(),
  args_sha256: z.string().max(64).optional(),
});
const Evaluation = z.object({
  subject: Subject,
  action: Action,
  resource: Resource,
  context: Context.optional(),
});
const Partial = z.object({
  subject: Subject.optional(),
  action: Action.optional(),
  resource: Resource.optional(),
  context: Context.optional(),
});
const Batch = Partial.extend({
  evaluations: z.array(Partial).max(MAX_BATCH).optional(),
  options: z
    .looseObject({
      evaluations_semantic: z
        .enum(['execute_all', 'deny_on_first_deny', 'permit_on_first_permit'])
        .default('execute_all'),
    })
    .optional(),
});

type EvaluationT = z.infer<typeof Evaluation>;
/** An AuthZEN evaluation response; `context` says why a call is denied (stable code and reason). */
type Answer = { decision: boolean; context?: { code: string; reason: string; engine?: string | undefined } };

function parse<T>(schema: z.ZodType<T>, body: unknown, what: string): T {
  const r = schema.safeParse(body);
  if (!r.success) {
    const issues = r.error.issues.map((i) => ({ path: i.path.map(String).join('.'), message: i.message }));
    throw new BrokerError(
      'TASKPASS_BAD_REQUEST',
      `${what}: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`,
      {
        issues,
      },
    );
  }
  return r.data;
}

const deny = (code: string, reason: string): Answer => ({ decision: false, context: { code, reason } });

/** One evaluation: an agent subject, a tool action, an MCP resource, and the task in context. */
async function evaluate(ctx: RouteContext, e: EvaluationT): Promise<Answer> {
  if (e.subject.type !== 'agent')
    return deny('TASKPASS_BAD_REQUEST', 'subject.type must be "agent" (a SPIFFE ID)');
  if (e.resource.type !== 'mcp_resource') {
    return deny('TASKPASS_BAD_REQUEST', 'resource.type must be "mcp_resource"');
  }
  const audience = e.resource.properties?.audience;
  if (!audience)
    return deny('TASKPASS_BAD_REQUEST', 'resource.properties.audience (the MCP server) is required');
  const action = e.action.properties?.action_class;
  if (!action)
    return deny('TASKPASS_BAD_REQUEST', 'action.properties.action_class (read, write, admin) is required');
  const taskId = e.context?.task?.id ?? e.context?.task_id;
  if (!taskId) return deny('TASKPASS_BAD_REQUEST', 'context.task.id (the task the call is for) is required');
  const v = await ctx.service.evaluateCall(e.subject.id, taskId, {
    audience,
    tool: e.action.name,
    resource: e.resource.id,
    action,
    arguments: e.context?.arguments,
    ...(e.context?.args_sha256 ? { args_sha256: e.context.args_sha256 } : {}),
  });
  if (v.allow) return { decision: true };
  return {
    decision: false,
    context: { code: v.code, reason: v.reason, ...(v.engine ? { engine: v.engine } : {}) },
  };
}

/** A batch item with the request's defaults filled in (AuthZEN 1.0: an item's own parts win). */
function merged(top: z.infer<typeof Partial>, item: z.infer<typeof Partial>): EvaluationT {
  return parse(
    Evaluation,
    {
      subject: item.subject ?? top.subject,
      action: item.action ?? top.action,
      resource: item.resource ?? top.resource,
      context: item.context ?? top.context,
    },
    'evaluation',
  );
}

const answerSchema = {
  type: 'object',
  required: ['decision'],
  properties: {
    decision: { type: 'boolean' },
    context: {
      type: 'object',
      properties: { code: { type: 'string' }, reason: { type: 'string' }, engine: { type: 'string' } },
    },
  },
} as const;
const requestSchema = { type: 'object', additionalProperties: true } as const;
const security: Record<string, string[]>[] = [{ mtls: [] }, { jwtSvid: [] }];

export async function authzenRoutes(app: FastifyInstance, ctx: RouteContext): Promise<void> {
  const base = ctx.config.issuer.replace(/\/+$/, '');
  app.get(
    '/.well-known/authzen-configuration',
    {
      schema: {
        summary: 'AuthZEN 1.0 PDP metadata',
        tags: ['authzen'],
        response: {
          200: {
            type: 'object',
            properties: {
              policy_decision_point: { type: 'string' },
              access_evaluation_endpoint: { type: 'string' },
              access_evaluations_endpoint: { type: 'string' },
            },
          },
        },
      },
    },
    async () => ({
      policy_decision_point: base,
      access_evaluation_endpoint: `${base}${EVALUATION}`,
      access_evaluations_endpoint: `${base}${EVALUATIONS}`,
    }),
  );

  // The evaluation endpoints in a scope of their own, behind authentication and the callers list.
  app.register(async (scope) => {
    const callers = idListMatcher(ctx.config.authzen.callers);
    const limiter = rateLimiter(scope);
    scope.addHook('onRequest', async (req, reply) => {
      const id = await authenticateRequest(ctx, req);
      if (!callers(id.spiffeId)) {
        throw new BrokerError(
          'TASKPASS_FORBIDDEN',
          'this SPIFFE ID is not an allowed AuthZEN caller (authzen.callers)',
        );
      }
      req.workload = id;
      await limiter.consume(req, reply, 'workload', id.id);
    });
    const limit = bodyLimit(ctx.config, BODY_LIMITS.callToken);

    scope.post(
      EVALUATION,
      {
        bodyLimit: limit,
        schema: {
          summary: 'AuthZEN 1.0 access evaluation: may this agent make this call in this task now?',
          tags: ['authzen'],
          security,
          body: requestSchema,
          response: { 200: answerSchema, ...bodyErrorResponses },
        },
      },
      async (req) => evaluate(ctx, parse(Evaluation, req.body, 'evaluation request')),
    );

    scope.post(
      EVALUATIONS,
      {
        bodyLimit: limit,
        schema: {
          summary: 'AuthZEN 1.0 access evaluations (batch, with default subject/action/resource/context)',
          tags: ['authzen'],
          security,
          body: requestSchema,
          response: {
            200: { type: 'object', properties: { evaluations: { type: 'array', items: answerSchema } } },
            ...bodyErrorResponses,
          },
        },
      },
      async (req) => {
        const b = parse(Batch, req.body, 'evaluations request');
        const items = b.evaluations?.length ? b.evaluations : [{}];
        const semantic = b.options?.evaluations_semantic ?? 'execute_all';
        const requests = items.map((item) => merged(b, item));
        if (semantic === 'execute_all')
          return { evaluations: await Promise.all(requests.map((e) => evaluate(ctx, e))) };
        // Short-circuiting: in order, stopping after the first denial (or permit).
        const stopOn = semantic !== 'deny_on_first_deny';
        const evaluations: Answer[] = [];
        for (const e of requests) {
          const a = await evaluate(ctx, e);
          evaluations.push(a);
          if (a.decision === stopOn) break;
        }
        return { evaluations };
      },
    );
  });
}
