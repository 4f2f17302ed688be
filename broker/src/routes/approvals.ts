// The approval API (docs/approvals.md): the agent that asked reads and waits for its approvals;
// people — authenticated by their OWN token from a trusted issuer, minted for `approvals.audience` —
// list, read and decide them. Agents can ask, never approve: a decision arriving with a client
// certificate or a JWT-SVID is refused whatever else it carries.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import {
  type ApprovalCaller,
  type ApprovalService,
  approvalView,
  isLive,
  verifyApprover,
} from '../approvals.ts';
import { bearerOf, type WorkloadIdentity } from '../auth.ts';
import { BrokerError } from '../errors.ts';
import { rateLimiter } from '../rate-limit.ts';
import { BODY_LIMITS, bodyLimit } from '../request-boundary.ts';
import { type ApprovalRecord, effectiveStatus } from '../store/types.ts';
import { authenticateRequest, nowSec, type RouteContext } from './context.ts';
import {
  ApprovalDecisionBody,
  type ApprovalDecisionBodyT,
  ApprovalGetQuery,
  ApprovalIdParams,
  ApprovalListQuery,
  ApprovalListResponse,
  ApprovalViewSchema,
  bodyErrorResponses,
  errorResponses,
} from './schemas.ts';

const agentOrApprover: Record<string, string[]>[] = [{ mtls: [] }, { jwtSvid: [] }, { approverToken: [] }];
const approverOnly: Record<string, string[]>[] = [{ approverToken: [] }];

/** Heartbeat of approval streams: keeps proxies from closing a quiet stream. */
const SSE_HEARTBEAT_MS = 15_000;

/** The workload a request authenticates as, if any (mTLS chain or JWT-SVID); undefined if none. */
async function workloadOf(ctx: RouteContext, req: FastifyRequest): Promise<WorkloadIdentity | undefined> {
  try {
    return await authenticateRequest(ctx, req);
  } catch (e) {
    if (e instanceof BrokerError && e.code === 'TASKPASS_UNAUTHENTICATED') return undefined;
    throw e;
  }
}

/** Does the request present a client certificate (valid or not)? */
function hasClientCertificate(ctx: RouteContext, req: FastifyRequest): boolean {
  const chain = ctx.peerChain(req);
  return chain !== undefined && chain.length > 0;
}

/** Registers /v1/approvals/** in its own scope (agents and approvers authenticate differently). */
export async function approvalRoutes(
  app: FastifyInstance,
  ctx: RouteContext,
  approvals: ApprovalService,
): Promise<void> {
  const limiter = rateLimiter(app);
  // Open streams, ended when the broker shuts down (an idle SSE stream would hold close()).
  const streams = new Set<() => void>();
  app.addHook('preClose', async () => {
    for (const end of [...streams]) end();
  });
  const delegationAudiences = new Set(
    ctx.config.users.trustedIssuers.flatMap((i) =>
      typeof i.audience === 'string' ? [i.audience] : i.audience,
    ),
  );

  /** The agent (its SVID) or the approver (their own token); counted against their budgets. */
  async function callerOf(req: FastifyRequest, reply: FastifyReply): Promise<ApprovalCaller> {
    const workload = await workloadOf(ctx, req);
    if (workload) {
      if (!ctx.matchers.agent(workload.spiffeId)) {
        throw new BrokerError('TASKPASS_FORBIDDEN', 'this SPIFFE ID is not an allowed agent');
      }
      await limiter.consume(req, reply, 'agent', workload.id);
      return { kind: 'agent', agent: workload };
    }
    return { kind: 'approver', user: await approverOf(req, reply) };
  }

  /** A person, by their own token; never a workload. */
  async function approverOf(req: FastifyRequest, reply: FastifyReply) {
    // Counted per client address before the token is verified (verification costs a signature check).
    await limiter.consume(req, reply, 'ip', req.ip);
    const token = bearerOf(req.headers.authorization);
    if (!token) {
      throw new BrokerError(
        'TASKPASS_APPROVER_TOKEN_INVALID',
        'authenticate with Authorization: Bearer <your own token for the approvals audience>',
      );
    }
    return verifyApprover(ctx.approverTokens, token, delegationAudiences);
  }

  app.get<{ Querystring: { status: 'pending'; limit: number } }>(
    '/v1/approvals',
    {
      schema: {
        summary: 'Approvals pending that the calling person may decide',
        tags: ['approvals'],
        security: approverOnly,
        querystring: ApprovalListQuery,
        response: { 200: ApprovalListResponse, ...errorResponses },
      },
    },
    async (req, reply) => {
      if (hasClientCertificate(ctx, req)) {
        throw new BrokerError(
          'TASKPASS_APPROVER_IS_WORKLOAD',
          'approvals are listed for people, not workloads',
        );
      }
      const caller = await callerOf(req, reply);
      if (caller.kind !== 'approver') {
        throw new BrokerError(
          'TASKPASS_APPROVER_IS_WORKLOAD',
          'approvals are listed for people, not workloads',
        );
      }
      const list = await approvals.pendingFor(caller.user, req.query.limit);
      reply.header('cache-control', 'no-store');
      const now = nowSec(ctx);
      return { approvals: list.map((a) => approvalView(ctx.config, a, now)) };
    },
  );

  app.get<{ Params: { id: string }; Querystring: { wait?: number } }>(
    '/v1/approvals/:id',
    {
      schema: {
        summary:
          'Read an approval (its agent, or a person who may decide it); ?wait= long-polls, Accept: text/event-stream streams each change',
        tags: ['approvals'],
        security: agentOrApprover,
        params: ApprovalIdParams,
        querystring: ApprovalGetQuery,
        response: {
          200: {
            description: 'The approval (JSON), or a text/event-stream of `approval` events',
            content: {
              'application/json': { schema: ApprovalViewSchema },
              'text/event-stream': { schema: { type: 'string' } },
            },
          },
          ...errorResponses,
        },
      },
    },
    async (req, reply) => {
      const caller = await callerOf(req, reply);
      const id = req.params.id;
      reply.header('cache-control', 'no-store');
      if (/\btext\/event-stream\b/.test(req.headers.accept ?? '')) {
        await approvals.visible(caller, id);
        return streamApproval(ctx, streams, req, reply, id);
      }
      const waitMs = (req.query.wait ?? 0) * 1000;
      // Subscribed before reading: a change between the read and the wait is not missed.
      const abort = new AbortController();
      req.raw.once('close', () => abort.abort());
      const watch = waitMs > 0 ? approvals.waitForChange(id, waitMs, abort.signal) : undefined;
      try {
        const first = await approvals.visible(caller, id);
        const now = nowSec(ctx);
        // Only a pending approval is waited on: once decided, the agent wants to know at once.
        if (!watch || effectiveStatus(first, now) !== 'pending') return approvalView(ctx.config, first, now);
        // Until a change, the wait's end, or the approval's own expiry (which changes its status).
        const untilExpiry = Math.max(0, (first.expiresAt - now) * 1000 + 50);
        if (untilExpiry < waitMs) setTimeout(watch.cancel, untilExpiry).unref();
        await watch.changed;
        const later = await approvals.visible(caller, id);
        return approvalView(ctx.config, later, nowSec(ctx));
      } finally {
        watch?.cancel();
      }
    },
  );

  app.post<{ Params: { id: string }; Body: ApprovalDecisionBodyT }>(
    '/v1/approvals/:id/decision',
    {
      bodyLimit: bodyLimit(ctx.config, BODY_LIMITS.approvalDecision),
      // Before the body is read: only people decide.
      onRequest: async (req) => {
        if (hasClientCertificate(ctx, req) || (await workloadOf(ctx, req))) {
          throw new BrokerError(
            'TASKPASS_APPROVER_IS_WORKLOAD',
            'a workload (X.509-SVID or JWT-SVID) cannot approve: agents ask, people decide',
          );
        }
      },
      schema: {
        summary:
          'Approve or deny (a person, with their own token for the approvals audience); first decision wins',
        tags: ['approvals'],
        security: approverOnly,
        params: ApprovalIdParams,
        body: ApprovalDecisionBody,
        response: { 200: ApprovalViewSchema, ...bodyErrorResponses },
      },
    },
    async (req, reply) => {
      const user = await approverOf(req, reply);
      const decided = await approvals.decide(user, req.params.id, req.body);
      reply.header('cache-control', 'no-store');
      return approvalView(ctx.config, decided, nowSec(ctx));
    },
  );
}

/**
 * Server-sent events: one `approval` event with the current view, then one per change, until the
 * approval is no longer pending or approved (the last event says how it ended) or the client goes.
 */
async function streamApproval(
  ctx: RouteContext,
  streams: Set<() => void>,
  req: FastifyRequest,
  reply: FastifyReply,
  id: string,
): Promise<void> {
  const res = reply.raw;
  reply.hijack();
  let ended = false;
  let heartbeat: NodeJS.Timeout | undefined;
  let expiry: NodeJS.Timeout | undefined;
  let last = '';
  let reading = Promise.resolve();
  const end = () => {
    if (ended) return;
    ended = true;
    streams.delete(end);
    off();
    if (heartbeat) clearInterval(heartbeat);
    if (expiry) clearTimeout(expiry);
    if (!res.writableEnded) res.end();
  };
  const send = (a: ApprovalRecord) => {
    const now = nowSec(ctx);
    const view = approvalView(ctx.config, a, now);
    if (view.status !== last) {
      last = view.status;
      res.write(`event: approval\ndata: ${JSON.stringify(view)}\n\n`);
    }
    if (!isLive(a, now)) end();
    else if (!expiry) {
      // Its expiry changes the status without a store event.
      expiry = setTimeout(() => refresh(), Math.max(0, (a.expiresAt - now) * 1000 + 50));
      expiry.unref();
    }
  };
  // Reads one after the other, so events leave in the order the changes were read.
  const refresh = () => {
    reading = reading.then(async () => {
      if (ended) return;
      try {
        const a = await ctx.store.getApproval(id);
        if (a && !ended) send(a);
      } catch (err) {
        req.log.warn({ err }, 'approval stream: cannot read the approval; closing');
        end();
      }
    });
  };
  const off = ctx.store.onApprovalChange((x) => {
    if (x === id) refresh();
  });
  streams.add(end);
  req.raw.on('close', end);
  res.writeHead(200, {
    'content-type': 'text/event-stream; charset=utf-8',
    'cache-control': 'no-cache, no-store, no-transform',
    'x-accel-buffering': 'no',
  });
  heartbeat = setInterval(() => {
    if (!ended) res.write(': heartbeat\n\n');
  }, SSE_HEARTBEAT_MS);
  heartbeat.unref();
  refresh();
  await reading;
}
