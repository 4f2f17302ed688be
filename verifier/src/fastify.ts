// fastify adapter: a preHandler (fastify has already parsed the JSON body) around the same neutral
// core as the node:http middleware. Typed structurally so this package does not depend on fastify.
import type { IncomingMessage } from 'node:http';
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import type { Verifier } from './core.ts';
import { clientCertificateOf } from './http.ts';
import { authorizeMcpRequest, refusal } from './request.ts';

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
  options: { resourceMetadataUrl?: string } = {},
): (request: FastifyRequestLike, reply: FastifyReplyLike) => Promise<unknown> {
  return async (request, reply) => {
    try {
      request.raw.auth = await authorizeMcpRequest(verifier, {
        method: request.method,
        headers: request.headers,
        body: request.body,
        clientCertificate: clientCertificateOf(request.raw),
      });
      return undefined;
    } catch (e) {
      const r = refusal(e, options.resourceMetadataUrl, request.body);
      return reply.code(r.status).headers(r.headers).send(r.body);
    }
  };
}

/** The fastify instance surface the plugin uses. */
export interface FastifyHookHost {
  addHook(
    name: 'preHandler',
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
  options: { verifier: Verifier; resourceMetadataUrl?: string },
): Promise<void> {
  scope.addHook('preHandler', taskpassPreHandler(options.verifier, options));
}
// As fastify-plugin does: the hook lands in the scope that registers the plugin (not in a child
// scope of its own, where it would cover no route). Register it inside the MCP route's scope.
Object.assign(taskpassFastify, {
  [Symbol.for('skip-override')]: true,
  [Symbol.for('fastify.display-name')]: 'taskpass',
});
