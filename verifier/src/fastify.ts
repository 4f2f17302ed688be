// fastify adapter: a preHandler (fastify has already parsed the JSON body) around the same neutral
// core as the node:http middleware. Typed structurally so this package does not depend on fastify.
import type { IncomingMessage } from 'node:http';
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import { DEFAULT_MAX_JSON_DEPTH, withinDepth } from './body.ts';
import type { VerifiedToken, Verifier } from './core.ts';
import { VerifierError } from './errors.ts';
import { type ClientCertificateOptions, clientCertificateOf, proxyTrust, requestHeaders } from './http.ts';
import { authorizeMcpRequest, refusal, requestBearerToken } from './request.ts';

// onRequest's verified token, for the preHandler of the same request.
const verifiedTokens = new WeakMap<object, VerifiedToken>();

/** Options of {@link taskpassPreHandler} and {@link taskpassFastify}. */
export interface FastifyVerifierOptions extends ClientCertificateOptions {
  /** The RFC 9728 metadata URL, sent as `resource_metadata` in every challenge. */
  resourceMetadataUrl?: string;
  /**
   * Deepest nesting of JSON arrays/objects in a body (default 64). fastify parses the body before
   * the preHandler: bound its size with the route's `bodyLimit` (fastify's default is 1 MiB).
   */
  maxJsonDepth?: number;
}

/** The parts of a fastify request the hook reads. */
export interface FastifyRequestLike {
  method: string;
  headers: Record<string, string | string[] | undefined>;
  body?: unknown;
  raw: IncomingMessage & { auth?: AuthInfo };
}

/** The parts of a fastify reply the hook writes. */
export interface FastifyReplyLike {
  code(status: number): FastifyReplyLike;
  headers(h: Record<string, string>): FastifyReplyLike;
  send(body: unknown): unknown;
}

/**
 * A fastify `preHandler` enforcing Taskpass tokens. On success it sets `request.raw.auth`, so the
 * route passes `request.raw` to `transport.handleRequest(request.raw, reply.raw, request.body)`.
 *
 * @example
 * ```ts
 * app.post('/mcp', { preHandler: taskpassPreHandler(verifier, { resourceMetadataUrl }) }, async (req, reply) => {
 *   const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
 *   await mcp.connect(transport);
 *   reply.hijack();
 *   await transport.handleRequest(req.raw, reply.raw, req.body);
 * });
 * ```
 */
export function taskpassPreHandler(
  verifier: Verifier,
  options: FastifyVerifierOptions = {},
): (request: FastifyRequestLike, reply: FastifyReplyLike) => Promise<unknown> {
  const trusted = proxyTrust(options.trustedProxies);
  const maxDepth = options.maxJsonDepth ?? DEFAULT_MAX_JSON_DEPTH;
  return async (request, reply) => {
    try {
      const verifiedToken = verifiedTokens.get(request.raw);
      verifiedTokens.delete(request.raw);
      if (!withinDepth(request.body, maxDepth)) {
        throw new VerifierError('TASKPASS_VERIFY_BAD_REQUEST', 'the body nests JSON too deeply');
      }
      request.raw.auth = await authorizeMcpRequest(verifier, {
        method: request.method,
        headers: requestHeaders(request.raw),
        url: request.raw.url,
        body: request.body,
        verifiedToken,
        clientCertificate: clientCertificateOf(request.raw, trusted),
      });
      return undefined;
    } catch (e) {
      const r = refusal(e, options.resourceMetadataUrl, request.body);
      return reply.code(r.status).headers(r.headers).send(r.body);
    }
  };
}

/**
 * A fastify `onRequest` hook that verifies the request's one Bearer token (form, signature,
 * claims) before fastify reads or parses the body; a request without a valid token is refused
 * there. {@link taskpassPreHandler} then checks the call without verifying the signature again.
 *
 * @example
 * ```ts
 * app.post('/mcp', { onRequest: taskpassOnRequest(verifier, opts), preHandler: taskpassPreHandler(verifier, opts) }, handler);
 * ```
 */
export function taskpassOnRequest(
  verifier: Verifier,
  options: { resourceMetadataUrl?: string } = {},
): (request: FastifyRequestLike, reply: FastifyReplyLike) => Promise<unknown> {
  return async (request, reply) => {
    try {
      const token = requestBearerToken(requestHeaders(request.raw));
      verifiedTokens.set(request.raw, await verifier.verifyToken(token));
      return undefined;
    } catch (e) {
      const r = refusal(e, options.resourceMetadataUrl);
      return reply.code(r.status).headers(r.headers).send(r.body);
    }
  };
}

/** The fastify instance surface the plugin uses. */
export interface FastifyHookHost {
  addHook(
    name: 'onRequest' | 'preHandler',
    hook: (request: FastifyRequestLike, reply: FastifyReplyLike) => Promise<unknown>,
  ): unknown;
}

/**
 * A fastify plugin adding {@link taskpassPreHandler} to every route of the scope it is registered
 * in. Register it inside an encapsulated scope holding the MCP route, so that routes such as
 * `/healthz` outside that scope stay open.
 *
 * @example
 * ```ts
 * await app.register(async (scope) => {
 *   await scope.register(taskpassFastify, { verifier, resourceMetadataUrl });
 *   scope.post('/mcp', mcpHandler);
 * });
 * ```
 */
export async function taskpassFastify(
  scope: FastifyHookHost,
  options: FastifyVerifierOptions & { verifier: Verifier },
): Promise<void> {
  scope.addHook('onRequest', taskpassOnRequest(options.verifier, options));
  scope.addHook('preHandler', taskpassPreHandler(options.verifier, options));
}
// As fastify-plugin does: the hook lands in the scope that registers the plugin (not in a child
// scope of its own, where it would cover no route). Register it inside the MCP route's scope.
Object.assign(taskpassFastify, {
  [Symbol.for('skip-override')]: true,
  [Symbol.for('fastify.display-name')]: 'taskpass',
});
