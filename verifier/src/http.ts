// node:http / express adapter. It must run before StreamableHTTPServerTransport.handleRequest: a
// tool handler can only produce an isError result, never the 401/403 challenge a client acts on.
import type { IncomingMessage, ServerResponse } from 'node:http';
import { BlockList, isIP } from 'node:net';
import type { TLSSocket } from 'node:tls';
import type { AuthInfo } from '@modelcontextprotocol/sdk/server/auth/types.js';
import { x5tS256 } from '@taskpass/contract';
import { DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_JSON_DEPTH, readJsonBody, withinDepth } from './body.ts';
import type { ClientCertificate, Verifier } from './core.ts';
import { VerifierError } from './errors.ts';
import {
  authorizeMcpRequest,
  type HttpRefusal,
  type McpHttpRequest,
  refusal,
  requestBearerToken,
} from './request.ts';

/** Options of {@link taskpassMiddleware}. */
export interface MiddlewareOptions extends ClientCertificateOptions {
  /** The RFC 9728 metadata URL, sent as `resource_metadata` in every challenge. */
  resourceMetadataUrl?: string;
  /** Largest JSON body read when no body parser ran (default 1 MiB). */
  maxBodyBytes?: number;
  /** Deepest nesting of JSON arrays/objects in a body (default 64). */
  maxJsonDepth?: number;
  /** Told of every refusal before it is sent (metrics, logs); `error` is what the checks threw. */
  onRefusal?: (error: unknown, refusal: HttpRefusal, req: TaskpassRequest) => void;
}

/** Where the client certificate of a request may come from besides the TLS connection itself. */
export interface ClientCertificateOptions {
  /**
   * IP addresses or CIDR ranges (`10.0.0.0/8`, `::1`) of TLS-terminating proxies whose RFC 9440
   * `Client-Cert` header names the client certificate. A request from one of them gets its
   * certificate from that header only (none when absent); from any other peer the header is
   * ignored. Default: none, the header is never believed.
   */
  trustedProxies?: string[];
}

/** A request after the middleware: `body` is the parsed JSON-RPC body, `auth` the SDK AuthInfo. */
export type TaskpassRequest = IncomingMessage & { body?: unknown; auth?: AuthInfo };

// A TLS connection's peer certificate does not change, so hash it once per socket, not per request.
const thumbprints = new WeakMap<object, { x5tS256: string } | null>();

/** A compiled `trustedProxies` list: is this peer address a trusted proxy? */
export type ProxyTrust = (address: string | undefined) => boolean;

/**
 * Compiles `trustedProxies` (addresses or CIDR ranges) once; throws
 * `TASKPASS_VERIFY_CONFIG_INVALID` on an entry that is neither.
 *
 * @example
 * ```ts
 * const trusted = proxyTrust(['10.0.0.0/8', '::1']);
 * trusted('10.1.2.3'); // true
 * ```
 */
export function proxyTrust(list: readonly string[] = []): ProxyTrust {
  if (list.length === 0) return () => false;
  const blocks = new BlockList();
  for (const entry of list) {
    const [addr, bits, extra] = entry.split('/');
    const family = isIP(addr ?? '');
    const prefix = bits === undefined ? undefined : Number(bits);
    const max = family === 4 ? 32 : 128;
    if (
      family === 0 ||
      extra !== undefined ||
      (prefix !== undefined && (!/^\d{1,3}$/.test(bits!) || prefix > max))
    ) {
      throw new VerifierError(
        'TASKPASS_VERIFY_CONFIG_INVALID',
        `trustedProxies: "${entry}" is not an IP address or CIDR range`,
      );
    }
    const type = family === 4 ? 'ipv4' : 'ipv6';
    if (prefix === undefined) blocks.addAddress(addr!, type);
    else blocks.addSubnet(addr!, prefix, type);
  }
  return (address) => {
    if (address === undefined) return false;
    // An IPv4 peer on a dual-stack socket is reported as ::ffff:a.b.c.d.
    const v4 = address.startsWith('::ffff:') ? address.slice(7) : address;
    if (isIP(v4) === 4) return blocks.check(v4, 'ipv4');
    return isIP(address) === 6 && blocks.check(address, 'ipv6');
  };
}

// RFC 9440 §2.2: the DER certificate as an RFC 8941 byte sequence, `:` base64 `:`. Only the
// canonical spelling is taken: a list (two headers, joined by node:http with ", "), parameters or
// lenient base64 are refused, since the proxy we trust never sends them.
function clientCertHeader(value: string | string[] | undefined): ClientCertificate | undefined {
  if (value === undefined) return undefined;
  const m = Array.isArray(value) ? null : /^[ \t]*:([A-Za-z0-9+/]+={0,2}):[ \t]*$/.exec(value);
  const der = m ? Buffer.from(m[1]!, 'base64') : undefined;
  if (!der || der.length === 0 || der.toString('base64') !== m![1]) {
    throw new VerifierError(
      'TASKPASS_VERIFY_BAD_REQUEST',
      'the Client-Cert header is not one base64 DER certificate',
    );
  }
  return der;
}

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
export function clientCertificateOf(
  req: IncomingMessage,
  trusted?: ProxyTrust,
): ClientCertificate | undefined {
  // Behind a trusted proxy the connection's own certificate (if any) is the proxy's, not the client's.
  if (trusted?.(req.socket?.remoteAddress)) return clientCertHeader(req.headers['client-cert']);
  const socket = req.socket as Partial<TLSSocket> | undefined;
  if (socket?.encrypted !== true || typeof socket.getPeerCertificate !== 'function') return undefined;
  let t = thumbprints.get(socket);
  if (t === undefined) {
    const raw = socket.getPeerCertificate(false)?.raw;
    t = raw && raw.length > 0 ? { x5tS256: x5tS256(raw) } : null;
    thumbprints.set(socket, t);
  }
  return t ?? undefined;
}

/**
 * The request headers as the neutral core wants them: node:http keeps only the first of several
 * `Authorization` headers in `req.headers`, so when there is more than one they are passed as an
 * array (and refused as ambiguous).
 *
 * @example
 * ```ts
 * await authorizeMcpRequest(verifier, { method: 'POST', headers: requestHeaders(req), body });
 * ```
 */
export function requestHeaders(req: IncomingMessage): McpHttpRequest['headers'] {
  const raw = req.rawHeaders;
  let n = 0;
  for (let i = 0; i < raw.length; i += 2)
    if (raw[i]!.length === 13 && raw[i]!.toLowerCase() === 'authorization') n++;
  return n > 1 ? { ...req.headers, authorization: req.headersDistinct.authorization } : req.headers;
}

const tooDeep = () => new VerifierError('TASKPASS_VERIFY_BAD_REQUEST', 'the body nests JSON too deeply');

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
  const maxBytes = options.maxBodyBytes ?? DEFAULT_MAX_BODY_BYTES;
  const maxDepth = options.maxJsonDepth ?? DEFAULT_MAX_JSON_DEPTH;
  const trusted = proxyTrust(options.trustedProxies);
  return async (req, res, next) => {
    let body: unknown;
    try {
      const headers = requestHeaders(req);
      // No body is read, let alone parsed, for a request without one valid token for this server.
      const verifiedToken = await verifier.verifyToken(requestBearerToken(headers));
      if (req.method === 'POST') {
        if (req.body !== undefined) {
          body = req.body;
          if (!withinDepth(body, maxDepth)) throw tooDeep();
        } else {
          body = await readJsonBody(req, req.headers['content-length'], { maxBytes, maxDepth });
        }
        req.body = body;
      }
      req.auth = await authorizeMcpRequest(verifier, {
        method: req.method ?? 'GET',
        headers,
        url: req.url,
        body,
        verifiedToken,
        clientCertificate: clientCertificateOf(req, trusted),
      });
    } catch (e) {
      const r = refusal(e, resourceMetadataUrl, body);
      options.onRefusal?.(e, r, req);
      sendRefusal(res, r);
      return;
    }
    next();
  };
}
