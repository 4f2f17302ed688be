// The framework-neutral part of the HTTP adapters: given the HTTP method, headers, parsed JSON-RPC
// body and client certificate of one Streamable HTTP request, decide which token check applies and
// build the SDK AuthInfo; and turn a refusal into status, headers and body. http.ts and
// fastify.ts only move these values in and out of their framework.
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import { decodeMcpHeaderValue, META_TOKEN, mcpNameOf, type ToolArgs } from '@taskpass/contract';
import type { CallAuth, ClientCertificate, SessionAuth, VerifiedToken, Verifier } from './core.ts';
import { JSONRPC_HEADER_MISMATCH, JSONRPC_INVALID_REQUEST, VerifierError } from './errors.ts';
import { parseCompactJws } from './jws.ts';

/** What the adapters put in `AuthInfo.extra`. */
export interface TaskpassAuthExtra {
  taskpass: CallAuth | SessionAuth;
}

/** One HTTP request as the neutral core sees it. */
export interface McpHttpRequest {
  /** HTTP method (POST carries JSON-RPC; GET opens the SSE stream; DELETE ends a session). */
  method: string;
  /**
   * Lower-case header names, as node:http gives them. `authorization` as an array when the request
   * carried several (node:http keeps only the first in `headers`; see `headersDistinct`).
   */
  headers: Record<string, string | string[] | undefined>;
  /** The request target (path and query), to refuse a second token in `?access_token=`. */
  url?: string | undefined;
  /** The parsed JSON body (POST); undefined otherwise. */
  body?: unknown;
  clientCertificate?: ClientCertificate | undefined;
  /** The header's token as `verifier.verifyToken` already verified it (before the body was read). */
  verifiedToken?: VerifiedToken | undefined;
}

/** A refusal ready to send. */
export interface HttpRefusal {
  status: number;
  headers: Record<string, string>;
  body: unknown;
}

interface JsonRpcMessage {
  jsonrpc?: unknown;
  method?: unknown;
  id?: unknown;
  params?: { name?: unknown; uri?: unknown; arguments?: unknown } | undefined;
}

function header(h: McpHttpRequest['headers'], name: string): string | undefined {
  const v = h[name];
  return Array.isArray(v) ? v.join(', ') : v;
}

/**
 * The Bearer token of an Authorization header, or undefined (other schemes count as absent).
 *
 * @example
 * ```ts
 * bearerToken('Bearer eyJhbGciOi…'); // 'eyJhbGciOi…'
 * bearerToken('Basic dXNlcjpwYXNz'); // undefined
 * ```
 */
export function bearerToken(authorization: string | undefined): string | undefined {
  if (!authorization) return undefined;
  const sp = authorization.indexOf(' ');
  if (sp < 0 || authorization.slice(0, sp).toLowerCase() !== 'bearer') return undefined;
  const t = authorization.slice(sp + 1).trim();
  return t === '' ? undefined : t;
}

/**
 * The request's one Bearer token, checked before anything else is read: refuses two
 * `Authorization` headers (`TASKPASS_VERIFY_AMBIGUOUS_TOKEN`, RFC 6750 §2: one method, one token),
 * a request without a Bearer token (`TASKPASS_VERIFY_MISSING_TOKEN`) and a token that is not a
 * canonical compact JWS (`TASKPASS_VERIFY_MALFORMED`). No body has been read or parsed at this
 * point, so an unauthenticated request costs a header lookup, never a JSON parse.
 *
 * @example
 * ```ts
 * const token = requestBearerToken(req.headers); // throws VerifierError when absent or ambiguous
 * ```
 */
export function requestBearerToken(headers: McpHttpRequest['headers']): string {
  const v = headers.authorization;
  if (Array.isArray(v) && v.length > 1) {
    throw new VerifierError(
      'TASKPASS_VERIFY_AMBIGUOUS_TOKEN',
      'the request has more than one Authorization header',
    );
  }
  const token = bearerToken(Array.isArray(v) ? v[0] : v);
  if (token === undefined)
    throw new VerifierError('TASKPASS_VERIFY_MISSING_TOKEN', 'a Bearer token is required');
  parseCompactJws(token);
  return token;
}

const ambiguous = (where: string) =>
  new VerifierError('TASKPASS_VERIFY_AMBIGUOUS_TOKEN', `a token in the Authorization header and in ${where}`);

function badRequest(
  code: 'TASKPASS_VERIFY_BAD_REQUEST',
  msg: string,
  rpc = JSONRPC_INVALID_REQUEST,
): VerifierError {
  return new VerifierError(code, msg, { jsonRpcCode: rpc });
}

/**
 * Checks one Streamable HTTP request: a `tools/call` needs a call token for that exact call; every
 * other request (initialize, tools/list, ping, notifications, GET/DELETE) a session token or a
 * call token for this server. A JSON-RPC batch may hold at most one `tools/call` (its token then
 * also covers the batch's other messages). Resolves with the SDK `AuthInfo` to set as `req.auth`.
 * Throws {@link VerifierError}.
 *
 * @example
 * ```ts
 * const auth = await authorizeMcpRequest(verifier, { method: 'POST', headers: req.headers, body });
 * ```
 */
export async function authorizeMcpRequest(verifier: Verifier, req: McpHttpRequest): Promise<AuthInfo> {
  const token = requestBearerToken(req.headers);
  const credential = req.verifiedToken?.token === token ? req.verifiedToken : token;
  if (req.url?.includes('access_token=') && new URL(req.url, 'http://x').searchParams.has('access_token')) {
    throw ambiguous('the query');
  }
  let call: JsonRpcMessage | undefined;
  if (req.method === 'POST') {
    const body = req.body;
    const messages = (Array.isArray(body) ? body : [body]) as unknown[];
    if (messages.length === 0) throw badRequest('TASKPASS_VERIFY_BAD_REQUEST', 'empty JSON-RPC batch');
    for (const m of messages) {
      if (typeof m !== 'object' || m === null || typeof (m as JsonRpcMessage).jsonrpc !== 'string') {
        throw badRequest('TASKPASS_VERIFY_BAD_REQUEST', 'the body is not a JSON-RPC message');
      }
      // withTaskpass reads _meta's token where no verified call is at hand: two places, two tokens.
      const meta = (m as { params?: { _meta?: unknown } }).params?._meta;
      if (
        typeof meta === 'object' &&
        meta !== null &&
        (meta as Record<string, unknown>)[META_TOKEN] !== undefined
      ) {
        throw ambiguous('_meta');
      }
      if ((m as JsonRpcMessage).method === 'tools/call') {
        // One token names one call; two calls in one POST would need two tokens.
        if (call) {
          throw new VerifierError(
            'TASKPASS_VERIFY_BATCH_NOT_ALLOWED',
            'a batch may hold at most one tools/call',
            {
              jsonRpcCode: JSONRPC_INVALID_REQUEST,
            },
          );
        }
        call = m as JsonRpcMessage;
      }
    }
    checkHeaders(
      req.headers,
      call ?? (messages.length === 1 ? (messages[0] as JsonRpcMessage) : undefined),
      verifier.requireMcpHeaders === true,
    );
  }

  let auth: CallAuth | SessionAuth;
  if (call) {
    const name = call.params?.name;
    const args = call.params?.arguments;
    if (typeof name !== 'string')
      throw badRequest('TASKPASS_VERIFY_BAD_REQUEST', 'tools/call without params.name');
    if (args !== undefined && (typeof args !== 'object' || args === null || Array.isArray(args))) {
      throw badRequest('TASKPASS_VERIFY_BAD_REQUEST', 'tools/call params.arguments must be an object');
    }
    auth = await verifier.verifyCall(credential, {
      tool: name,
      args: args as ToolArgs | undefined,
      clientCertificate: req.clientCertificate,
    });
  } else {
    auth = await verifier.verifySession(credential, { clientCertificate: req.clientCertificate });
  }
  return authInfoOf(verifier, token, auth);
}

/** The SDK's `AuthInfo` for a verified token: `expiresAt` always set, the grant in `extra.taskpass`. */
export function authInfoOf(verifier: Verifier, token: string, auth: CallAuth | SessionAuth): AuthInfo {
  const extra: TaskpassAuthExtra = { taskpass: auth };
  return {
    token,
    clientId: auth.clientId,
    scopes: [],
    expiresAt: auth.expiresAt,
    resource: new URL(verifier.audience),
    extra: extra as unknown as Record<string, unknown>,
  };
}

// SEP-2243 (MCP 2026-07-28): a server that reads the body MUST refuse standard headers that
// disagree with it, and a 2026-07-28 server MUST refuse requests without them. Without
// requireMcpHeaders a missing header is let through, since 1.x clients never send one.
function checkHeaders(h: McpHttpRequest['headers'], m: JsonRpcMessage | undefined, required: boolean): void {
  const mcpName = header(h, 'mcp-name');
  const mcpMethod = header(h, 'mcp-method');
  const mismatch = (what: string) =>
    new VerifierError(
      'TASKPASS_VERIFY_HEADER_MISMATCH',
      `the ${what} header does not match the request body`,
      { jsonRpcCode: JSONRPC_HEADER_MISMATCH },
    );
  const missing = (what: string) =>
    new VerifierError('TASKPASS_VERIFY_HEADER_MISMATCH', `the required ${what} header is missing`, {
      jsonRpcCode: JSONRPC_HEADER_MISMATCH,
    });
  // Requests only (they carry an id): the spec and the SDK 2.x server exempt notifications and
  // responses; a batch without a call has no one method to mirror, so it cannot qualify.
  const isRequest = m !== undefined && typeof m.method === 'string' && m.id !== undefined;
  if (mcpMethod === undefined) {
    if (required && (m === undefined || isRequest)) throw missing('Mcp-Method');
  } else if (mcpMethod !== m?.method) {
    throw mismatch('Mcp-Method');
  }
  const name = m === undefined ? undefined : mcpNameOf(m);
  if (mcpName === undefined) {
    if (required && isRequest && name !== undefined) throw missing('Mcp-Name');
    return;
  }
  // Compared after decoding, so an SDK 2.x client's =?base64?…?= spelling of a non-ASCII name
  // matches; a header naming a target the body does not name is a disagreement too.
  if (name === undefined || decodeMcpHeaderValue(mcpName) !== name) throw mismatch('Mcp-Name');
}

function quote(s: string): string {
  // RFC 7230 quoted-string of printable ASCII: the description may echo a client-chosen tool name,
  // and a non-Latin-1 character would make node:http throw instead of answering.
  const clipped = s.length > 200 ? `${s.slice(0, 200)}…` : s;
  return clipped.replace(/[\\"]/g, '\\$&').replace(/[^\x20-\x7e]/g, '?');
}

/**
 * The RFC 6750 challenge for a refusal:
 * `Bearer error="invalid_token", error_description="…", resource_metadata="…"`.
 *
 * @example
 * ```ts
 * wwwAuthenticate(
 *   new VerifierError('TASKPASS_VERIFY_EXPIRED', 'the token has expired'),
 *   'https://tickets.taskpass.local/.well-known/oauth-protected-resource/mcp',
 * );
 * // 'Bearer error="invalid_token", error_description="the token has expired",
 * //  resource_metadata="https://tickets.taskpass.local/.well-known/oauth-protected-resource/mcp"'
 * ```
 */
export function wwwAuthenticate(err: VerifierError, resourceMetadataUrl: string | undefined): string {
  const parts: string[] = [];
  const e = err.oauthError;
  if (e) parts.push(`error="${e}"`, `error_description="${quote(err.message)}"`);
  if (resourceMetadataUrl) parts.push(`resource_metadata="${quote(resourceMetadataUrl)}"`);
  return parts.length ? `Bearer ${parts.join(', ')}` : 'Bearer';
}

/**
 * Turns any error thrown by {@link authorizeMcpRequest} into the HTTP answer: 401/403 with
 * `WWW-Authenticate` and `{ code, message }`; 400 with a JSON-RPC error (`data.code` is ours);
 * 503 with `Retry-After`; anything unexpected becomes a bare 500.
 *
 * @example
 * ```ts
 * try {
 *   auth = await authorizeMcpRequest(verifier, { method: 'POST', headers, body });
 * } catch (e) {
 *   const r = refusal(e, protectedResourceMetadataUrl(verifier.audience), body);
 *   return new Response(JSON.stringify(r.body), { status: r.status, headers: r.headers });
 * }
 * ```
 */
export function refusal(err: unknown, resourceMetadataUrl: string | undefined, body?: unknown): HttpRefusal {
  const e =
    err instanceof VerifierError
      ? err
      : new VerifierError('TASKPASS_VERIFY_INTERNAL', 'internal error', { cause: err });
  const headers: Record<string, string> = { 'content-type': 'application/json', 'cache-control': 'no-store' };
  if (e.challenge) headers['www-authenticate'] = wwwAuthenticate(e, resourceMetadataUrl);
  if (e.status === 503) headers['retry-after'] = '5';
  if (e.status === 400 && !e.challenge) {
    const id =
      !Array.isArray(body) && typeof body === 'object' && body !== null ? (body as JsonRpcMessage).id : null;
    return {
      status: 400,
      headers,
      body: {
        jsonrpc: '2.0',
        id: typeof id === 'string' || typeof id === 'number' ? id : null,
        error: { code: e.jsonRpcCode ?? JSONRPC_INVALID_REQUEST, message: e.message, data: { code: e.code } },
      },
    };
  }
  return { status: e.status, headers, body: e.toJSON() };
}
