// POST /v1/credentials (docs/vault.md): an MCP server exchanges the call token it verified for the
// Vault secret that the call's tool rule names (`vault_secret:`), leased to the task. In RFC 8693
// terms the call token is the subject and the MCP server the actor: it authenticates with its own
// SVID (mTLS or JWT-SVID) and must be the token's audience (`vault.credentialClients`). The answer
// is a secret, not a token, so it is JSON at its own path rather than at /oauth2/token.
//
// Checked in this order, each refusal with its own code and an audit record:
//   caller listed at all            → TASKPASS_CREDENTIAL_FORBIDDEN (before the body is read)
//   subject a live call token       → TASKPASS_CREDENTIAL_SUBJECT_INVALID
//   caller serves the token's `aud` → TASKPASS_CREDENTIAL_FORBIDDEN
//   a rule of `tpl` names the path  → TASKPASS_CREDENTIAL_NOT_IN_TEMPLATE
//   task open, Vault leases         → TASKPASS_TASK_CLOSED / _EXPIRED, TASKPASS_CREDENTIAL_*
import {
  type Action,
  type CredentialRequest,
  CREDENTIALS_PATH,
  isAction,
  type LeasedCredentialResponse,
  SUBJECT_TOKEN_TYPE_ACCESS,
} from '@taskpass/contract';
import type { FastifyInstance } from 'fastify';
import type { JWTPayload } from 'jose';
import { BrokerError } from '../errors.ts';
import type { LeasedCredentials } from '../leased-credentials.ts';
import { templateIds } from '../policy/engine.ts';
import { rateLimiter } from '../rate-limit.ts';
import { BODY_LIMITS, bodyLimit } from '../request-boundary.ts';
import { authenticateRequest, nowSec, type RouteContext } from './context.ts';
import { verifyOwnToken } from './oauth.ts';
import { bodyErrorResponses, CredentialBody, CredentialResponse } from './schemas.ts';

/** A verified call token's facts the exchange needs. */
interface CallSubject {
  jti: string;
  task: string;
  audience: string;
  agent: string;
  tool: string;
  action: Action;
  templates: string[];
}

/** The call token's facts, or undefined when it is not a call token (e.g. a session token). */
function callSubject(p: JWTPayload): CallSubject | undefined {
  const detail = Array.isArray(p.authorization_details) ? p.authorization_details[0] : undefined;
  const act = p.act as { sub?: unknown } | undefined;
  if (
    typeof p.jti !== 'string' ||
    typeof p.txn !== 'string' ||
    typeof p.aud !== 'string' ||
    typeof act?.sub !== 'string' ||
    typeof p.tpl !== 'string' ||
    detail?.type !== 'mcp_tool_call' ||
    typeof detail.tool !== 'string' ||
    !isAction(detail.action)
  ) {
    return undefined;
  }
  return {
    jti: p.jti,
    task: p.txn,
    audience: p.aud,
    agent: act.sub,
    tool: detail.tool,
    action: detail.action,
    templates: templateIds(p.tpl),
  };
}

/** Registers /v1/credentials in a scope authenticated as a credential client. */
export async function credentialRoutes(
  app: FastifyInstance,
  ctx: RouteContext,
  credentials: LeasedCredentials,
): Promise<void> {
  const limiter = rateLimiter(app);
  const audiencesOf = new Map(
    (ctx.config.vault?.credentialClients ?? []).map((c) => [c.spiffeId, new Set(c.audiences)]),
  );
  const deny = (code: 'TASKPASS_CREDENTIAL_FORBIDDEN', message: string, by: string, task?: string) => {
    ctx.audit.record({ event: 'credential.denied', code, reason: message, by, task });
    return new BrokerError(code, message);
  };

  app.addHook('onRequest', async (req, reply) => {
    const id = await authenticateRequest(ctx, req);
    await limiter.consume(req, reply, 'workload', id.id);
    if (!audiencesOf.has(id.id)) {
      throw deny(
        'TASKPASS_CREDENTIAL_FORBIDDEN',
        'this SPIFFE ID is not a credential client (vault.credentialClients)',
        id.id,
      );
    }
    req.workload = id;
  });

  app.post<{ Body: CredentialRequest }>(
    CREDENTIALS_PATH,
    {
      bodyLimit: bodyLimit(ctx.config, BODY_LIMITS.introspection),
      schema: {
        summary:
          "Exchange a verified call token for the Vault secret its tool rule names, leased to the task (the caller must be the token's audience)",
        tags: ['credentials'],
        security: [{ mtls: [] }, { jwtSvid: [] }],
        body: CredentialBody,
        response: { 200: CredentialResponse, ...bodyErrorResponses },
      },
    },
    async (req, reply): Promise<LeasedCredentialResponse> => {
      reply.header('cache-control', 'no-store').header('pragma', 'no-cache');
      const caller = req.workload!.id;
      const { subject_token, subject_token_type, path } = req.body;
      const invalid = (why: string, task?: string) => {
        ctx.audit.record({
          event: 'credential.denied',
          code: 'TASKPASS_CREDENTIAL_SUBJECT_INVALID',
          reason: why,
          by: caller,
          task,
        });
        return new BrokerError('TASKPASS_CREDENTIAL_SUBJECT_INVALID', `subject_token: ${why}`);
      };
      if (subject_token_type !== undefined && subject_token_type !== SUBJECT_TOKEN_TYPE_ACCESS) {
        throw invalid(`subject_token_type must be ${SUBJECT_TOKEN_TYPE_ACCESS}`);
      }
      const payload = await verifyOwnToken(ctx, subject_token);
      const call = payload && callSubject(payload);
      if (!call) throw invalid('not a valid call token of this broker');
      if (!audiencesOf.get(caller)?.has(call.audience)) {
        throw deny(
          'TASKPASS_CREDENTIAL_FORBIDDEN',
          `the call token is for ${call.audience}, which this caller does not serve`,
          caller,
          call.task,
        );
      }
      if ((await ctx.store.isRevoked('token', call.jti)) || (await ctx.store.isRevoked('task', call.task))) {
        throw invalid('revoked', call.task);
      }
      const task = await ctx.store.getTask(call.task);
      if (!task || task.agent !== call.agent) throw invalid('its task is unknown', call.task);

      const named =
        ctx.policies.current().vaultSecrets?.({
          templates: call.templates,
          agent: call.agent,
          audience: call.audience,
          tool: call.tool,
          action: call.action,
        }) ?? [];
      const chosen =
        path === undefined ? (named.length === 1 ? named[0] : undefined) : named.find((n) => n === path);
      if (chosen === undefined) {
        const message =
          named.length === 0
            ? `no rule allowing ${call.tool} (${call.action}) names a Vault secret`
            : path === undefined
              ? `the rules allowing ${call.tool} name several Vault secrets (${named.join(', ')}); name one as path`
              : `no rule allowing ${call.tool} (${call.action}) names ${path}`;
        ctx.audit.record({
          event: 'credential.denied',
          code: 'TASKPASS_CREDENTIAL_NOT_IN_TEMPLATE',
          reason: message,
          by: caller,
          task: call.task,
          path,
        });
        throw new BrokerError('TASKPASS_CREDENTIAL_NOT_IN_TEMPLATE', message);
      }
      const now = nowSec(ctx);
      const c = await credentials.issue(task, chosen, now, { by: caller, jti: call.jti });
      return {
        task_id: c.taskId,
        path: c.path,
        lease_id: c.leaseId,
        lease_duration: Math.max(0, c.expiresAt - now),
        expires_at: c.expiresAt,
        data: c.data,
      };
    },
  );
}
