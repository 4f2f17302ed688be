// RFC 9728 protected resource metadata: how MCP clients learn that the broker is this server's
// authorization server and that tokens are certificate-bound and carry authorization_details.
import type { IncomingMessage, ServerResponse } from 'node:http';

/** The RFC 9728 document this package serves. */
export interface ProtectedResourceMetadata {
  resource: string;
  authorization_servers: string[];
  bearer_methods_supported: ['header'];
  tls_client_certificate_bound_access_tokens: boolean;
  authorization_details_types_supported: string[];
  resource_name?: string;
  resource_documentation?: string;
  scopes_supported?: string[];
}

/** Options of {@link protectedResourceMetadata}. */
export interface PrmOptions {
  /** This server's canonical resource URI (the verifier audience). */
  resource: string;
  /** The broker issuer (listed as the only authorization server). */
  issuer: string;
  resourceName?: string;
  resourceDocumentation?: string;
  /** Whether tokens are bound to the client certificate (RFC 8705); default true. */
  certificateBound?: boolean;
}

/**
 * Builds the metadata document.
 *
 * @example
 * ```ts
 * protectedResourceMetadata({ resource: 'https://tickets.taskpass.local/mcp', issuer: 'https://broker.taskpass.local:8443' });
 * ```
 */
export function protectedResourceMetadata(o: PrmOptions): ProtectedResourceMetadata {
  const doc: ProtectedResourceMetadata = {
    resource: o.resource,
    authorization_servers: [o.issuer],
    bearer_methods_supported: ['header'],
    tls_client_certificate_bound_access_tokens: o.certificateBound ?? true,
    authorization_details_types_supported: ['mcp_tool_call', 'mcp_session'],
  };
  if (o.resourceName) doc.resource_name = o.resourceName;
  if (o.resourceDocumentation) doc.resource_documentation = o.resourceDocumentation;
  return doc;
}

/**
 * The well-known path for a resource (RFC 9728 §3.1: inserted between host and path):
 * `https://x/mcp` → `/.well-known/oauth-protected-resource/mcp`; `https://x` → `/.well-known/oauth-protected-resource`.
 *
 * @example
 * ```ts
 * protectedResourceMetadataPath('https://tickets.taskpass.local/mcp'); // '/.well-known/oauth-protected-resource/mcp'
 * ```
 */
export function protectedResourceMetadataPath(resource: string): string {
  const path = new URL(resource).pathname.replace(/\/+$/, '');
  return `/.well-known/oauth-protected-resource${path}`;
}

/**
 * The absolute metadata URL for a resource (the `resource_metadata` of challenges).
 *
 * @example
 * ```ts
 * protectedResourceMetadataUrl('https://tickets.taskpass.local/mcp');
 * // 'https://tickets.taskpass.local/.well-known/oauth-protected-resource/mcp'
 * ```
 */
export function protectedResourceMetadataUrl(resource: string): string {
  const u = new URL(resource);
  return `${u.origin}${protectedResourceMetadataPath(resource)}`;
}

/**
 * A node:http / express handler serving the document at its well-known path (and at the root
 * well-known path, which some clients try first). Returns true when it answered the request.
 *
 * @example
 * ```ts
 * const servePrm = prmHandler(protectedResourceMetadata({ resource, issuer }));
 * http.createServer((req, res) => { if (servePrm(req, res)) return; … });
 * // express: app.use((req, res, next) => servePrm(req, res) || next());
 * ```
 */
export function prmHandler(
  doc: ProtectedResourceMetadata,
): (req: IncomingMessage, res: ServerResponse) => boolean {
  const paths = new Set([
    protectedResourceMetadataPath(doc.resource),
    '/.well-known/oauth-protected-resource',
  ]);
  const body = JSON.stringify(doc);
  return (req, res) => {
    const path = (req.url ?? '/').split('?')[0]!;
    if ((req.method !== 'GET' && req.method !== 'HEAD') || !paths.has(path)) return false;
    res.writeHead(200, {
      'content-type': 'application/json',
      'cache-control': 'public, max-age=3600',
      'access-control-allow-origin': '*',
    });
    res.end(req.method === 'HEAD' ? undefined : body);
    return true;
  };
}

/** Minimal fastify surface used to register the metadata route (no fastify import needed). */
export interface FastifyRouteHost {
  get(path: string, handler: (req: unknown, reply: FastifyReplyLike) => unknown): unknown;
}
interface FastifyReplyLike {
  header(k: string, v: string): FastifyReplyLike;
  send(body: unknown): unknown;
}

/**
 * Registers the metadata routes on a fastify instance.
 *
 * @example
 * ```ts
 * registerProtectedResourceMetadata(app, protectedResourceMetadata({ resource, issuer }));
 * ```
 */
export function registerProtectedResourceMetadata(
  app: FastifyRouteHost,
  doc: ProtectedResourceMetadata,
): void {
  const paths = new Set([
    protectedResourceMetadataPath(doc.resource),
    '/.well-known/oauth-protected-resource',
  ]);
  for (const p of paths) {
    app.get(p, (_req, reply) =>
      reply
        .header('cache-control', 'public, max-age=3600')
        .header('access-control-allow-origin', '*')
        .send(doc),
    );
  }
}
