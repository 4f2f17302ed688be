// node:http / express adapter. It must run before StreamableHTTPServerTransport.handleRequest: a
// tool handler can only produce an isError result, never the 401/403 challenge a client acts on.
import type { IncomingMessage, ServerResponse } from 'node:http';
import type { TLSSocket } from 'node:tls';
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import type { ClientCertificate, Verifier } from './core.ts';
import { certificateThumbprint } from './core.ts';
import { JSONRPC_PARSE_ERROR, VerifierError } from './errors.ts';
import { authorizeMcpRequest, type HttpRefusal, refusal } from './request.ts';

/** Options of {@link taskpassMiddleware}. */
export interface MiddlewareOptions {
  /** The RFC 9728 metadata URL, sent as `resource_metadata` in every challenge. */
  resourceMetadataUrl?: string;
  /** Largest JSON body read when no body parser ran (default 4 MiB, as the SDK). */
  maxBodyBytes?: number;
}

/** A request after the middleware: `body` is the parsed JSON-RPC body, `auth` the SDK AuthInfo. */
export type TaskpassRequest = IncomingMessage & { body?: unknown; auth?: AuthInfo };

// A TLS connection's peer certificate does not change, so hash it once per socket, not per request.
const thumbprints = new WeakMap<object, { x5tS256: string } | null>();

/**
 * The client certificate of an mTLS connection (its x5t#S256), or undefined on plain HTTP/TLS.
 *
 * @example
 * ```ts
 * const auth = await authorizeMcpRequest(verifier, {
 *   method: 'POST',
 *   headers: req.headers,
 *   body,
 *   clientCertificate: clientCertificateOf(req),
 * });
 * ```
 */
export function clientCertificateOf(req: IncomingMessage): ClientCertificate | undefined {
  const socket = req.socket as Partial<TLSSocket> | undefined;
  if (socket?.encrypted !== true || typeof socket.getPeerCertificate !== 'function') return undefined;
  let t = thumbprints.get(socket);
  if (t === undefined) {
    const raw = socket.getPeerCertificate(false)?.raw;
    t = raw && raw.length > 0 ? { x5tS256: certificateThumbprint(raw) } : null;
    thumbprints.set(socket, t);
  }
  return t ?? undefined;
}

async function readJson(req: IncomingMessage, limit: number): Promise<unknown> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const c of req as AsyncIterable<Buffer>) {
    size += c.length;
    if (size > limit) throw new VerifierError('TASKPASS_VERIFY_BAD_REQUEST', 'the body is too large');
    chunks.push(c);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new VerifierError('TASKPASS_VERIFY_BAD_REQUEST', 'the body is not JSON', {
      jsonRpcCode: JSONRPC_PARSE_ERROR,
    });
  }
}

/**
 * Writes a refusal on a node:http response.
 *
 * @example
 * ```ts
 * try {
 *   req.auth = await authorizeMcpRequest(verifier, { method: 'POST', headers: req.headers, body });
 * } catch (e) {
 *   return sendRefusal(res, refusal(e, resourceMetadataUrl, body));
 * }
 * ```
 */
export function sendRefusal(res: ServerResponse, r: HttpRefusal): void {
  res.writeHead(r.status, r.headers).end(JSON.stringify(r.body));
}

/**
 * Express / node:http middleware enforcing Taskpass tokens on an MCP Streamable HTTP endpoint.
 * Reads the JSON body (or takes `req.body` from `express.json()`), checks `Mcp-Name`/`Mcp-Method`
 * against it, verifies the Bearer token for the exact call, and sets `req.auth` (SDK AuthInfo with
 * `extra.taskpass`), which `transport.handleRequest(req, res, req.body)` hands to tool handlers as
 * `extra.authInfo` (read it with {@link callerOf}). Refusals are 401/403 with `WWW-Authenticate`,
 * 400 with a JSON-RPC error, or 503.
 *
 * @example
 * ```ts
 * const guard = taskpassMiddleware(verifier, { resourceMetadataUrl: protectedResourceMetadataUrl(audience) });
 * http.createServer((req, res) =>
 *   guard(req, res, async () => {
 *     const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
 *     await mcp.connect(transport);
 *     await transport.handleRequest(req, res, req.body);
 *   }),
 * );
 * // express: app.post('/mcp', express.json(), guard, handler)
 * ```
 */
export function taskpassMiddleware(
  verifier: Verifier,
  options: MiddlewareOptions = {},
): (req: TaskpassRequest, res: ServerResponse, next: (err?: unknown) => void) => Promise<void> {
  const { resourceMetadataUrl } = options;
  const limit = options.maxBodyBytes ?? 4 * 1024 * 1024;
  return async (req, res, next) => {
    let body: unknown;
    try {
      if (req.method === 'POST') {
        body = req.body !== undefined ? req.body : await readJson(req, limit);
        req.body = body;
      }
      req.auth = await authorizeMcpRequest(verifier, {
        method: req.method ?? 'GET',
        headers: req.headers,
        body,
        clientCertificate: clientCertificateOf(req),
      });
    } catch (e) {
      sendRefusal(res, refusal(e, resourceMetadataUrl, body));
      return;
    }
    next();
  };
}
