// A Streamable HTTP upstream: each verified request is sent on with undici and the answer (JSON or
// an SSE stream) is piped back as it arrives, never buffered whole.
import type { ServerResponse } from 'node:http';
import { pipeline } from 'node:stream/promises';
import { errors as undiciErrors, Pool } from 'undici';
import { GuardError } from './errors.ts';
import { downstreamResponseHeaders } from './headers.ts';
import {
  type ForwardRequest,
  GUARD_CLIENT_INFO,
  GUARD_PROTOCOL_VERSION,
  toolsOfListResult,
  type Upstream,
  type UpstreamTool,
} from './upstream.ts';

function upstreamError(e: unknown): GuardError {
  if (e instanceof GuardError) return e;
  if (e instanceof undiciErrors.HeadersTimeoutError || e instanceof undiciErrors.BodyTimeoutError) {
    return new GuardError(
      'TASKPASS_GUARD_UPSTREAM_TIMEOUT',
      'the upstream MCP server did not answer in time',
      {
        cause: e,
      },
    );
  }
  return new GuardError(
    'TASKPASS_GUARD_UPSTREAM_UNAVAILABLE',
    'the upstream MCP server could not be reached',
    {
      cause: e,
    },
  );
}

// The first JSON-RPC message with this id in a JSON or SSE body (start-up requests only).
function messageWithId(contentType: string | undefined, text: string, id: number): unknown {
  const candidates: unknown[] = [];
  if (contentType?.includes('text/event-stream')) {
    for (const event of text.split(/\r?\n\r?\n/)) {
      const data = event
        .split(/\r?\n/)
        .filter((l) => l.startsWith('data:'))
        .map((l) => l.slice(5).replace(/^ /, ''))
        .join('\n');
      if (data) candidates.push(JSON.parse(data));
    }
  } else if (text.trim() !== '') {
    const body = JSON.parse(text) as unknown;
    candidates.push(...(Array.isArray(body) ? body : [body]));
  }
  return candidates.find((m) => (m as { id?: unknown })?.id === id);
}

/** Options of {@link HttpUpstream}. */
export interface HttpUpstreamOptions {
  url: string;
  timeoutMs: number;
}

/** A Streamable HTTP MCP server. */
export class HttpUpstream implements Upstream {
  readonly kind = 'http' as const;
  readonly #url: URL;
  readonly #pool: Pool;
  readonly #timeoutMs: number;

  constructor(o: HttpUpstreamOptions) {
    this.#url = new URL(o.url);
    this.#timeoutMs = o.timeoutMs;
    this.#pool = new Pool(this.#url.origin, { connections: 64 });
  }

  async start(): Promise<void> {}

  ready(): boolean {
    return true;
  }

  async forward(req: ForwardRequest, res: ServerResponse): Promise<void> {
    let answer: Awaited<ReturnType<Pool['request']>>;
    try {
      answer = await this.#pool.request({
        // The upstream's own endpoint path: the guard's path is the audience's, which may differ.
        path: `${this.#url.pathname}${this.#url.search}`,
        method: req.method as 'POST',
        headers: req.headers,
        ...(req.method === 'POST' ? { body: JSON.stringify(req.body) } : {}),
        headersTimeout: this.#timeoutMs,
        // A GET is the server-to-client SSE stream, which may stay quiet for long.
        bodyTimeout: req.method === 'GET' ? 0 : this.#timeoutMs,
        signal: req.signal,
      });
    } catch (e) {
      throw upstreamError(e);
    }
    res.writeHead(
      answer.statusCode,
      downstreamResponseHeaders(answer.headers as Record<string, string | string[] | undefined>),
    );
    // SSE events reach the caller as they come.
    res.flushHeaders();
    try {
      await pipeline(answer.body, res);
    } catch (e) {
      // The answer has started: the only way to tell the caller is to cut the stream.
      res.destroy();
      if (!req.signal.aborted) throw upstreamError(e);
    }
  }

  async #rpc(
    headers: Record<string, string>,
    id: number | undefined,
    method: string,
    params: unknown,
    sessionId: string | undefined,
  ): Promise<{ message: unknown; sessionId: string | undefined }> {
    const r = await this.#pool.request({
      path: `${this.#url.pathname}${this.#url.search}`,
      method: 'POST',
      headers: {
        ...headers,
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'mcp-protocol-version': GUARD_PROTOCOL_VERSION,
        ...(sessionId ? { 'mcp-session-id': sessionId } : {}),
      },
      body: JSON.stringify({ jsonrpc: '2.0', ...(id === undefined ? {} : { id }), method, params }),
      headersTimeout: this.#timeoutMs,
      bodyTimeout: this.#timeoutMs,
    });
    const text = await r.body.text();
    if (r.statusCode >= 400) throw new Error(`${method} answered HTTP ${r.statusCode}`);
    const sid = r.headers['mcp-session-id'];
    const ct = r.headers['content-type'];
    return {
      message:
        id === undefined ? undefined : messageWithId(typeof ct === 'string' ? ct : undefined, text, id),
      sessionId: typeof sid === 'string' ? sid : sessionId,
    };
  }

  async listTools(headers: Record<string, string>): Promise<UpstreamTool[]> {
    try {
      // A stateful upstream wants initialize first; a stateless one does not mind it.
      const init = await this.#rpc(
        headers,
        1,
        'initialize',
        { protocolVersion: GUARD_PROTOCOL_VERSION, capabilities: {}, clientInfo: GUARD_CLIENT_INFO },
        undefined,
      );
      const sessionId = init.sessionId;
      await this.#rpc(headers, undefined, 'notifications/initialized', {}, sessionId);
      const tools: UpstreamTool[] = [];
      let cursor: string | undefined;
      for (let page = 0; page < 100; page++) {
        const r = await this.#rpc(headers, 2 + page, 'tools/list', cursor ? { cursor } : {}, sessionId);
        const m = r.message as { result?: unknown; error?: { message?: unknown } } | undefined;
        if (!m || m.error || m.result === undefined) {
          throw new Error(`tools/list failed: ${String(m?.error?.message ?? 'no answer')}`);
        }
        const list = toolsOfListResult(m.result);
        tools.push(...list.tools);
        cursor = list.nextCursor;
        if (!cursor) break;
      }
      if (sessionId) {
        await this.#pool
          .request({
            path: this.#url.pathname,
            method: 'DELETE',
            headers: { ...headers, 'mcp-session-id': sessionId },
          })
          .then((r) => r.body.dump())
          .catch(() => undefined);
      }
      return tools;
    } catch (e) {
      throw upstreamError(e);
    }
  }

  async close(): Promise<void> {
    await this.#pool.close();
  }
}
