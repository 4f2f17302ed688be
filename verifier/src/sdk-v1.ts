// Glue to @modelcontextprotocol/sdk v1: a token verifier for requireBearerAuth, a stdio tool
// wrapper reading the token from _meta, and callerOf() for tool handlers (v1 extra or v2 ctx).
import {
  InsufficientScopeError,
  InvalidTokenError,
  ServerError,
} from '@modelcontextprotocol/sdk/server/auth/errors.js';
import type { OAuthTokenVerifier } from '@modelcontextprotocol/sdk/server/auth/provider.js';
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { META_ERROR, META_TOKEN } from '@taskpass/contract';
import type { CallAuth, SessionAuth, Verifier } from './core.ts';
import { VerifierError } from './errors.ts';
import { authInfoOf, type TaskpassAuthExtra } from './request.ts';
import type { ToolArgs } from './resource.ts';

/**
 * An `OAuthTokenVerifier` for the SDK's `requireBearerAuth`. It sees only the token, not the
 * JSON-RPC body, so it can only check a session-level grant (a session token or any call token for
 * this server): use it for servers already built on requireBearerAuth, and put
 * {@link taskpassMiddleware} (or {@link withTaskpass}) in front of tool calls for per-call checks.
 * `expiresAt` is always set; refusals are `InvalidTokenError` (401) or `InsufficientScopeError` (403).
 *
 * @example
 * ```ts
 * app.use('/mcp', requireBearerAuth({ verifier: taskpassTokenVerifier(verifier), resourceMetadataUrl }));
 * ```
 */
export function taskpassTokenVerifier(verifier: Verifier): OAuthTokenVerifier {
  const errors = {
    invalid_token: InvalidTokenError,
    insufficient_scope: InsufficientScopeError,
    server_error: ServerError,
  } as const;
  return {
    verifyAccessToken: (token: string): Promise<AuthInfo> =>
      sessionAuthInfo(verifier, token, (refusal, message) => new errors[refusal](message)),
  };
}

/** A refusal in the OAuth error codes both SDKs' bearer-auth gates answer with (401, 403, 500). */
export type SessionRefusal = 'invalid_token' | 'insufficient_scope' | 'server_error';

/**
 * The session-level check behind both SDKs' token verifier interfaces: the `AuthInfo` (with
 * `expiresAt` and `extra.taskpass`) for a token, or the error `refuse` makes of the refusal.
 */
export async function sessionAuthInfo(
  verifier: Verifier,
  token: string,
  refuse: (refusal: SessionRefusal, message: string) => Error,
): Promise<AuthInfo> {
  let auth: SessionAuth;
  try {
    auth = await verifier.verifySession(token);
  } catch (e) {
    if (!(e instanceof VerifierError)) throw refuse('server_error', 'token verification failed');
    const refusal: SessionRefusal =
      e.status === 403 ? 'insufficient_scope' : e.status >= 500 ? 'server_error' : 'invalid_token';
    throw refuse(refusal, `${e.code}: ${e.message}`);
  }
  return authInfoOf(verifier, token, auth);
}

/**
 * The fields the helpers read: SDK 1.x `RequestHandlerExtra` (`authInfo`, `_meta`) or SDK 2.x
 * `ServerContext` (`http.authInfo`, `mcpReq._meta`), which both carry what `req.auth` held.
 */
export interface ExtraLike {
  authInfo?: AuthInfo | undefined;
  _meta?: Record<string, unknown> | undefined;
  http?: { authInfo?: AuthInfo | undefined } | undefined;
  mcpReq?: { _meta?: Record<string, unknown> | undefined } | undefined;
}

/**
 * Who is calling: the verified {@link CallAuth} of this tool call, or undefined when the request
 * was not a verified call (no middleware, or a session-level check only).
 *
 * @example
 * ```ts
 * mcp.registerTool('get_ticket', { inputSchema: { ticket_id: z.string() } }, async (args, extra) => {
 *   const who = callerOf(extra); // { user, agent, task, resource, approval?: { id, approver, approvedAt }, … }
 *   …
 * });
 * ```
 */
export function callerOf(extra: ExtraLike | undefined): CallAuth | undefined {
  const t = ((extra?.authInfo ?? extra?.http?.authInfo)?.extra as Partial<TaskpassAuthExtra> | undefined)
    ?.taskpass;
  return t?.kind === 'call' ? t : undefined;
}

/**
 * Wraps a tool handler so that it runs only with a valid call token for this exact call. Over
 * stdio the token is `params._meta["dev.taskpass/token"]`; over HTTP a call the middleware already
 * verified for this tool passes through. A refusal is an `isError` result whose text starts with
 * the error code (stdio has no HTTP status to carry it).
 *
 * @example
 * ```ts
 * mcp.registerTool('close_ticket', { inputSchema: { ticket_id: z.string() } },
 *   withTaskpass(async ({ ticket_id }, extra) => { … callerOf(extra) … }, { verifier, tool: 'close_ticket' }));
 * ```
 */
export function withTaskpass<A extends ToolArgs, E extends ExtraLike, R extends CallToolResult>(
  handler: (args: A, extra: E) => R | Promise<R>,
  opts: { verifier: Verifier; tool: string },
): (args: A, extra: E) => Promise<R | CallToolResult> {
  return async (args, extra) => {
    const token = (extra._meta ?? extra.mcpReq?._meta)?.[META_TOKEN];
    let auth: CallAuth;
    try {
      // Two places, two tokens: which one the handler would act on must not be our guess (RFC 6750 §2).
      if (token !== undefined && (extra.authInfo ?? extra.http?.authInfo) !== undefined) {
        throw new VerifierError(
          'TASKPASS_VERIFY_AMBIGUOUS_TOKEN',
          'a token in _meta and another on the HTTP request',
        );
      }
      const already = callerOf(extra);
      if (already && already.tool === opts.tool) return handler(args, extra);
      auth = await opts.verifier.verifyCall(typeof token === 'string' ? token : undefined, {
        tool: opts.tool,
        args,
      });
    } catch (e) {
      const err =
        e instanceof VerifierError
          ? e
          : new VerifierError('TASKPASS_VERIFY_INTERNAL', 'internal error', { cause: e });
      const { code, message } = err.toJSON();
      return {
        isError: true,
        content: [{ type: 'text', text: `${code}: ${message}` }],
        _meta: { [META_ERROR]: code },
      };
    }
    const extraTaskpass: TaskpassAuthExtra = { taskpass: auth };
    const authInfo: AuthInfo = {
      token: token as string,
      clientId: auth.clientId,
      scopes: [],
      expiresAt: auth.expiresAt,
      resource: new URL(opts.verifier.audience),
      extra: extraTaskpass as unknown as Record<string, unknown>,
    };
    return handler(args, { ...extra, authInfo });
  };
}
