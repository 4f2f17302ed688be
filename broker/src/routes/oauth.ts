// The standards face: RFC 8693 token exchange, RFC 7662 introspection, RFC 7009 revocation.
// Form-encoded requests; errors are RFC 6749 §5.2 bodies `{ error, error_description }` plus our
// stable `code` (and `template` on policy denials).
//
// Token exchange, concretely:
//   grant_type            urn:ietf:params:oauth:grant-type:token-exchange (only)
//   actor                 the mTLS X.509-SVID, or actor_token (JWT-SVID, actor_token_type
//                         urn:ietf:params:oauth:token-type:jwt), or client_assertion (JWT-SVID,
//                         client_assertion_type urn:ietf:params:oauth:client-assertion-type:jwt-spiffe),
//                         or Authorization: Bearer <JWT-SVID>
//   subject_token         the delegating user's token (subject_token_type …:id_token or …:jwt);
//                         may be omitted for autonomous tasks that a template allows (a relaxation of
//                         RFC 8693, which requires it)
//   resource (or audience) the MCP server's resource URI → `aud`
//   authorization_details JSON array with exactly one `mcp_tool_call` (or `mcp_session`) entry
//   task_id               (extension) an open task of the caller; when absent a one-shot task is
//                         opened (purpose from `purpose`) and its id returned as `task_id`
import formbody from '@fastify/formbody';
import type { FastifyError, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { createLocalJWKSet, type JSONWebKeySet, type JWTPayload, jwtVerify } from 'jose';
import type { WorkloadIdentity } from '../auth.ts';
import { type BrokerErrorCode, BrokerError } from '../errors.ts';
import type { AuthorizationDetail } from '@taskpass/contract';
import { rateLimiter } from '../rate-limit.ts';
import { BODY_LIMITS, bodyLimit, fastifyClientError } from '../request-boundary.ts';
import type { VerifiedUser } from '../user-tokens.ts';
import { authenticateRequest, nowSec, type RouteContext } from './context.ts';
import {
  EmptyObject,
  IntrospectBody,
  IntrospectResponse,
  oauthErrorResponses,
  RevokeBody,
  TokenExchangeBody,
  type TokenExchangeBodyT,
  TokenExchangeResponse,
} from './schemas.ts';

export const GRANT_TOKEN_EXCHANGE = 'urn:ietf:params:oauth:grant-type:token-exchange';
export const TOKEN_TYPE_ACCESS = 'urn:ietf:params:oauth:token-type:access_token';
export const TOKEN_TYPE_JWT = 'urn:ietf:params:oauth:token-type:jwt';
export const TOKEN_TYPE_ID = 'urn:ietf:params:oauth:token-type:id_token';
export const CLIENT_ASSERTION_JWT_SPIFFE = 'urn:ietf:params:oauth:client-assertion-type:jwt-spiffe';

/** An RFC 6749 §5.2 error. */
export class OAuthError extends Error {
  constructor(
    readonly error: string,
    message: string,
    readonly status = 400,
    readonly code?: string,
    readonly template?: string,
  ) {
    super(message);
    this.name = 'OAuthError';
  }
}

const OAUTH_OF: Partial<Record<BrokerErrorCode, [string, number]>> = {
  TASKPASS_UNAUTHENTICATED: ['invalid_client', 401],
  TASKPASS_BAD_REQUEST: ['invalid_request', 400],
  TASKPASS_USER_TOKEN_INVALID: ['invalid_grant', 400],
  TASKPASS_TASK_NOT_FOUND: ['invalid_grant', 400],
  TASKPASS_TASK_NOT_OWNED: ['invalid_grant', 400],
  TASKPASS_TASK_CLOSED: ['invalid_grant', 400],
  TASKPASS_TASK_EXPIRED: ['invalid_grant', 400],
  TASKPASS_DELEGATION_REQUIRED: ['invalid_grant', 400],
  TASKPASS_DENIED_USER: ['invalid_grant', 400],
  TASKPASS_DENIED_NO_TEMPLATE: ['unauthorized_client', 400],
  TASKPASS_DENIED_AUDIENCE: ['invalid_target', 400],
  TASKPASS_DENIED_TOOL: ['invalid_authorization_details', 400],
  TASKPASS_DENIED_ACTION: ['invalid_authorization_details', 400],
  TASKPASS_DENIED_RESOURCE: ['invalid_authorization_details', 400],
  TASKPASS_DENIED_CALL_LIMIT: ['invalid_authorization_details', 400],
  TASKPASS_DENIED_PREREQUISITE: ['invalid_authorization_details', 400],
  TASKPASS_DENIED_TASK_AGE: ['invalid_grant', 400],
  TASKPASS_INVALID_RESOURCE: ['invalid_authorization_details', 400],
  TASKPASS_BODY_TOO_LARGE: ['invalid_request', 413],
  TASKPASS_UNSUPPORTED_MEDIA_TYPE: ['invalid_request', 415],
  TASKPASS_RATE_LIMITED: ['slow_down', 429],
  TASKPASS_RATE_LIMIT_UNAVAILABLE: ['temporarily_unavailable', 503],
  TASKPASS_STORE_UNAVAILABLE: ['temporarily_unavailable', 503],
  TASKPASS_SIGNER_UNAVAILABLE: ['temporarily_unavailable', 503],
  TASKPASS_ARGUMENTS_REQUIRED: ['invalid_authorization_details', 400],
  TASKPASS_ARGUMENTS_MISMATCH: ['invalid_authorization_details', 400],
  TASKPASS_PDP_DENIED: ['invalid_authorization_details', 400],
  TASKPASS_PDP_UNAVAILABLE: ['invalid_authorization_details', 400],
  // A person must decide first. The device grant's error codes (RFC 8628 §3.5) say exactly this to
  // a polling client: pending (ask again later), denied, expired; approval_id / approval_url /
  // expires_at are extension members (RFC 6749 §5.2 allows them).
  TASKPASS_APPROVAL_REQUIRED: ['authorization_pending', 400],
  TASKPASS_APPROVAL_DENIED: ['access_denied', 400],
  TASKPASS_APPROVAL_EXPIRED: ['expired_token', 400],
};

/** The approval members a BrokerError carries into an OAuth error body. */
function approvalMembers(details: Record<string, unknown> | undefined): Record<string, unknown> {
  if (!details) return {};
  const out: Record<string, unknown> = {};
  for (const k of ['approval_id', 'approval_url', 'expires_at'] as const) {
    if (details[k] !== undefined) out[k] = details[k];
  }
  return out;
}

/**
 * The one authorization detail of a token exchange. An `mcp_tool_call` may carry the call's
 * `arguments` (for templates whose approval conditions read them); they go to the decision, never
 * into the issued detail.
 */
function parseDetails(raw: string | undefined): {
  detail: AuthorizationDetail;
  arguments?: Record<string, unknown> | undefined;
} {
  if (!raw) throw new OAuthError('invalid_authorization_details', 'authorization_details is required');
  let v: unknown;
  try {
    v = JSON.parse(raw);
  } catch {
    throw new OAuthError('invalid_authorization_details', 'authorization_details is not JSON');
  }
  if (!Array.isArray(v) || v.length !== 1 || typeof v[0] !== 'object' || v[0] === null) {
    throw new OAuthError(
      'invalid_authorization_details',
      'authorization_details must be an array of exactly one object',
    );
  }
  const d = v[0] as Record<string, unknown>;
  if (d.type === 'mcp_session' && Object.keys(d).length === 1) return { detail: { type: 'mcp_session' } };
  if (d.type !== 'mcp_tool_call') {
    throw new OAuthError(
      'invalid_authorization_details',
      'authorization_details type must be mcp_tool_call or mcp_session',
    );
  }
  const { tool, resource, action, args_sha256, arguments: args } = d;
  const extra = Object.keys(d).filter(
    (k) => !['type', 'tool', 'resource', 'action', 'args_sha256', 'arguments'].includes(k),
  );
  if (
    typeof tool !== 'string' ||
    tool.length === 0 ||
    tool.length > 256 ||
    typeof resource !== 'string' ||
    (action !== 'read' && action !== 'write' && action !== 'admin') ||
    (args_sha256 !== undefined &&
      (typeof args_sha256 !== 'string' || !/^[A-Za-z0-9_-]{43}$/.test(args_sha256))) ||
    (args !== undefined && (typeof args !== 'object' || args === null || Array.isArray(args))) ||
    extra.length > 0
  ) {
    throw new OAuthError(
      'invalid_authorization_details',
      'mcp_tool_call needs tool, resource, action (read|write|admin) and optionally args_sha256 and arguments (an object), nothing else',
    );
  }
  return {
    detail: { type: 'mcp_tool_call', tool, resource, action, ...(args_sha256 ? { args_sha256 } : {}) },
    ...(args !== undefined ? { arguments: args as Record<string, unknown> } : {}),
  };
}

/** Verifies a token this broker issued (signature, iss, typ, exp); undefined when not valid. */
export async function verifyOwnToken(ctx: RouteContext, token: string): Promise<JWTPayload | undefined> {
  try {
    const jwks = (await ctx.keys.jwks()) as JSONWebKeySet;
    const { payload } = await jwtVerify(token, createLocalJWKSet(jwks), {
      issuer: ctx.config.issuer,
      typ: 'at+jwt',
      algorithms: ['ES256'],
      requiredClaims: ['exp', 'iat', 'jti', 'sub', 'aud'],
      currentDate: new Date(ctx.now()),
    });
    return payload;
  } catch {
    return undefined;
  }
}

/**
 * Registers /oauth2/{token,introspect,revoke} in a form-encoded scope with OAuth error bodies.
 * Introspection and revocation authenticate the caller and count it against its budget before the
 * body is read; the token exchange does so when the credential is in the headers (mTLS or bearer),
 * and otherwise counts the client IP first and reads at most its small form (the actor credential
 * is in it), then counts the authenticated agent as well.
 */
export async function oauthRoutes(app: FastifyInstance, ctx: RouteContext): Promise<void> {
  // Form bodies only (RFC 6749 §3.2, RFC 7662 §2.1, RFC 7009 §2.1): JSON and text answer 415.
  app.removeAllContentTypeParsers();
  await app.register(formbody, { bodyLimit: bodyLimit(ctx.config, BODY_LIMITS.tokenExchange) });
  const limiter = rateLimiter(app);

  app.setErrorHandler((err: FastifyError | BrokerError | OAuthError, req, reply) => {
    reply.header('cache-control', 'no-store');
    if (err instanceof OAuthError) {
      return reply.code(err.status).send({
        error: err.error,
        error_description: err.message,
        // Every refusal carries a stable code, also those raised in OAuth terms only.
        code:
          err.code ?? (err.error === 'invalid_client' ? 'TASKPASS_UNAUTHENTICATED' : 'TASKPASS_BAD_REQUEST'),
        ...(err.template ? { template: err.template } : {}),
      });
    }
    if (err instanceof BrokerError) {
      const [error, status] = OAUTH_OF[err.code] ?? ['server_error', 500];
      if (status >= 500) req.log.error({ err }, 'oauth request failed');
      if (status === 503) reply.header('retry-after', '1');
      const template = typeof err.details?.template === 'string' ? err.details.template : undefined;
      return reply.code(status).send({
        error,
        error_description: status >= 500 && error === 'server_error' ? 'internal error' : err.message,
        code: err.code,
        ...(template ? { template } : {}),
        ...approvalMembers(err.details),
      });
    }
    const fe = err as FastifyError;
    const fst = fe.validation ? { status: 400, code: 'TASKPASS_BAD_REQUEST' } : fastifyClientError(fe);
    if (fst) {
      return reply.code(fst.status).send({
        error: 'invalid_request',
        error_description: fe.message,
        code: fst.code,
      });
    }
    req.log.error({ err }, 'oauth request failed');
    return reply
      .code(500)
      .send({ error: 'server_error', error_description: 'internal error', code: 'TASKPASS_INTERNAL' });
  });

  const tokenEndpoint = `${ctx.config.issuer.replace(/\/$/, '')}/oauth2/token`;

  async function authClient(
    req: Parameters<typeof authenticateRequest>[1],
    body: Partial<TokenExchangeBodyT>,
  ): Promise<WorkloadIdentity> {
    try {
      if (body.client_assertion_type !== undefined || body.client_assertion !== undefined) {
        if (body.client_assertion_type !== CLIENT_ASSERTION_JWT_SPIFFE || !body.client_assertion) {
          throw new OAuthError(
            'invalid_client',
            `client_assertion_type must be ${CLIENT_ASSERTION_JWT_SPIFFE}`,
            401,
          );
        }
        return await ctx.auth.authenticate(
          { jwtSvid: body.client_assertion },
          { audience: [ctx.config.jwtSvidAudience, tokenEndpoint] },
        );
      }
      if (body.actor_token !== undefined) {
        if (body.actor_token_type !== TOKEN_TYPE_JWT) {
          throw new OAuthError('invalid_request', `actor_token_type must be ${TOKEN_TYPE_JWT}`);
        }
        return await ctx.auth.authenticate({ jwtSvid: body.actor_token });
      }
      if (req.workload) return req.workload;
      return await authenticateRequest(ctx, req);
    } catch (e) {
      if (e instanceof OAuthError) throw e;
      throw new OAuthError('invalid_client', 'client authentication failed', 401, 'TASKPASS_UNAUTHENTICATED');
    }
  }

  // Introspection and revocation: any authenticated workload, counted per workload.
  const authenticatedWorkload = async (req: FastifyRequest, reply: FastifyReply): Promise<void> => {
    try {
      req.workload = await authenticateRequest(ctx, req);
    } catch {
      throw new OAuthError(
        'invalid_client',
        'authenticate with an X.509-SVID or a JWT-SVID',
        401,
        'TASKPASS_UNAUTHENTICATED',
      );
    }
    await limiter.consume(req, reply, 'workload', req.workload.id);
  };

  app.post<{ Body: TokenExchangeBodyT }>(
    '/oauth2/token',
    {
      bodyLimit: bodyLimit(ctx.config, BODY_LIMITS.tokenExchange),
      onRequest: async (req, reply) => {
        try {
          req.workload = await authenticateRequest(ctx, req);
        } catch {
          // A bearer that does not verify is a failed client authentication. Without one the
          // actor may still be in the form (actor_token, client_assertion): no identity yet.
          if (req.headers.authorization !== undefined) {
            throw new OAuthError(
              'invalid_client',
              'client authentication failed',
              401,
              'TASKPASS_UNAUTHENTICATED',
            );
          }
        }
        if (req.workload) await limiter.consume(req, reply, 'agent', req.workload.id);
        else await limiter.consume(req, reply, 'ip', req.ip);
      },
      schema: {
        summary: 'RFC 8693 token exchange: user token + agent identity → one call token',
        tags: ['oauth'],
        consumes: ['application/x-www-form-urlencoded'],
        body: TokenExchangeBody,
        response: { 200: TokenExchangeResponse, ...oauthErrorResponses },
      },
    },
    async (req, reply) => {
      const b = req.body;
      reply.header('cache-control', 'no-store').header('pragma', 'no-cache');
      if (b.grant_type !== GRANT_TOKEN_EXCHANGE) {
        throw new OAuthError('unsupported_grant_type', `only ${GRANT_TOKEN_EXCHANGE} is supported`);
      }
      const agent = await authClient(req, b);
      if (agent.id !== req.workload?.id) await limiter.consume(req, reply, 'agent', agent.id);
      if (!ctx.matchers.agent(agent.spiffeId)) {
        throw new OAuthError(
          'invalid_client',
          'this SPIFFE ID is not an allowed agent',
          401,
          'TASKPASS_UNAUTHENTICATED',
        );
      }
      if (
        b.requested_token_type !== undefined &&
        b.requested_token_type !== TOKEN_TYPE_ACCESS &&
        b.requested_token_type !== TOKEN_TYPE_JWT
      ) {
        throw new OAuthError('invalid_request', `requested_token_type must be ${TOKEN_TYPE_ACCESS}`);
      }
      const audience = b.resource ?? b.audience;
      if (!audience) throw new OAuthError('invalid_target', 'resource (the MCP server URI) is required');
      if (b.resource !== undefined && b.audience !== undefined && b.resource !== b.audience) {
        throw new OAuthError('invalid_target', 'resource and audience disagree');
      }
      const { detail, arguments: args } = parseDetails(b.authorization_details);
      let user: VerifiedUser | undefined;
      if (b.subject_token !== undefined) {
        if (b.subject_token_type !== TOKEN_TYPE_ID && b.subject_token_type !== TOKEN_TYPE_JWT) {
          throw new OAuthError(
            'invalid_request',
            `subject_token_type must be ${TOKEN_TYPE_ID} or ${TOKEN_TYPE_JWT}`,
          );
        }
        user = await ctx.userTokens.verify(b.subject_token);
      } else if (b.subject_token_type !== undefined) {
        throw new OAuthError('invalid_request', 'subject_token_type without subject_token');
      }
      let task: Awaited<ReturnType<typeof ctx.service.usableTask>>;
      if (b.task_id) {
        task = await ctx.service.usableTask(agent, b.task_id);
        if (user && (task.userIssuer !== user.iss || task.sub !== user.sub)) {
          throw new OAuthError(
            'invalid_grant',
            'subject_token is not the user of this task',
            400,
            'TASKPASS_DENIED_USER',
          );
        }
      } else {
        ({ task } = await ctx.service.openTask(
          agent,
          { purpose: b.purpose ?? 'oauth2 token exchange' },
          user,
        ));
      }
      const issued =
        detail.type === 'mcp_session'
          ? await ctx.service.issueSession(agent, task, audience)
          : await ctx.service.issueCall(agent, task, { audience, ...detail, arguments: args });
      return {
        access_token: issued.accessToken,
        issued_token_type: TOKEN_TYPE_ACCESS,
        token_type: 'Bearer',
        expires_in: issued.expiresIn,
        authorization_details: [issued.detail],
        task_id: task.id,
      };
    },
  );

  app.post<{ Body: { token: string; token_type_hint?: string; consume?: 'true' | 'false' } }>(
    '/oauth2/introspect',
    {
      bodyLimit: bodyLimit(ctx.config, BODY_LIMITS.introspection),
      onRequest: authenticatedWorkload,
      schema: {
        summary:
          'RFC 7662 introspection (authenticated workloads). consume=true (extension) also spends a single-use token: a second consume answers active=false.',
        tags: ['oauth'],
        consumes: ['application/x-www-form-urlencoded'],
        body: IntrospectBody,
        response: { 200: IntrospectResponse, ...oauthErrorResponses },
      },
    },
    async (req, reply) => {
      reply.header('cache-control', 'no-store');
      const p = await verifyOwnToken(ctx, req.body.token);
      if (!p || typeof p.jti !== 'string') return { active: false };
      const txn = typeof p.txn === 'string' ? p.txn : undefined;
      if ((await ctx.store.isRevoked('token', p.jti)) || (txn && (await ctx.store.isRevoked('task', txn)))) {
        return { active: false };
      }
      if (txn) {
        const task = await ctx.store.getTask(txn);
        if (task?.status !== 'open' || task.expiresAt <= nowSec(ctx)) return { active: false };
      }
      if (req.body.consume === 'true' && p.single_use === true) {
        if (!ctx.config.introspection.allowConsume)
          throw new OAuthError('invalid_request', 'consume is disabled');
        if (!(await ctx.store.markUsed(p.jti, p.exp!))) return { active: false };
      }
      return { active: true, token_type: 'Bearer', ...p };
    },
  );

  app.post<{ Body: { token: string; token_type_hint?: string } }>(
    '/oauth2/revoke',
    {
      bodyLimit: bodyLimit(ctx.config, BODY_LIMITS.introspection),
      onRequest: authenticatedWorkload,
      schema: {
        summary:
          'RFC 7009 revocation by possession: any authenticated workload holding a valid token may revoke it',
        tags: ['oauth'],
        consumes: ['application/x-www-form-urlencoded'],
        body: RevokeBody,
        response: { 200: EmptyObject, ...oauthErrorResponses },
      },
    },
    async (req) => {
      const caller = req.workload!;
      const p = await verifyOwnToken(ctx, req.body.token);
      // Unknown, invalid or expired tokens: nothing to do, and RFC 7009 §2.2 says 200 all the same.
      if (p && typeof p.jti === 'string' && !(await ctx.store.isRevoked('token', p.jti))) {
        await ctx.service.revokeToken(caller, p.jti, p.exp!, typeof p.txn === 'string' ? p.txn : undefined);
      }
      return {};
    },
  );
}
