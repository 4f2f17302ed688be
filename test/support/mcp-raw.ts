/**
 * One raw MCP `tools/call` POST over a given undici dispatcher (e.g. an mTLS agent holding some
 * workload's X.509-SVID), with exactly the `Authorization` header the test chooses. The ticket desk
 * serves stateless Streamable HTTP, so a call needs no `initialize` or session id first.
 *
 * @example
 * ```ts
 * const r = await rawToolCall(dispatcher, desk.mcpUrl, token, 'get_ticket', { ticket_id: 'T-1001' });
 * assert.equal(r.status, 200);
 * ```
 */
import assert from 'node:assert/strict';
import { type Dispatcher, fetch } from 'undici';

export interface RawCallResult {
  status: number;
  /** `code` of a verifier refusal body (`{ code, message }`). */
  code?: string;
  /** The `WWW-Authenticate` header, if any. */
  challenge?: string;
  /** The JSON-RPC result of an accepted call (`undefined` when refused). */
  result?: { isError?: boolean; content?: unknown; structuredContent?: unknown };
  /** The JSON-RPC error of an accepted request, if the server answered one. */
  rpcError?: unknown;
  /** The raw body (parsed JSON when possible). */
  body: unknown;
}

let nextId = 1;

/** Parses a JSON body or the first `data:` message of an SSE body. */
function parseBody(text: string, contentType: string): unknown {
  if (contentType.includes('text/event-stream')) {
    for (const line of text.split(/\r?\n/)) {
      if (line.startsWith('data:')) {
        try {
          return JSON.parse(line.slice(5).trim());
        } catch {
          // keep looking
        }
      }
    }
    return text;
  }
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

export async function rawToolCall(
  dispatcher: Dispatcher,
  mcpUrl: string,
  token: string | undefined,
  tool: string,
  args: Record<string, unknown>,
  /** More request headers, e.g. `mcp-method` / `mcp-name`. */
  extraHeaders: Record<string, string> = {},
): Promise<RawCallResult> {
  const headers: Record<string, string> = {
    'content-type': 'application/json',
    accept: 'application/json, text/event-stream',
    ...extraHeaders,
  };
  if (token !== undefined) headers.authorization = `Bearer ${token}`;
  const res = await fetch(mcpUrl, {
    method: 'POST',
    dispatcher,
    headers,
    body: JSON.stringify({
      jsonrpc: '2.0',
      id: nextId++,
      method: 'tools/call',
      params: { name: tool, arguments: args },
    }),
  });
  const body = parseBody(await res.text(), res.headers.get('content-type') ?? '');
  const out: RawCallResult = { status: res.status, body };
  const challenge = res.headers.get('www-authenticate');
  if (challenge !== null) out.challenge = challenge;
  if (typeof body === 'object' && body !== null) {
    const b = body as { code?: unknown; result?: RawCallResult['result']; error?: unknown };
    if (typeof b.code === 'string') out.code = b.code;
    if (b.result !== undefined) out.result = b.result;
    if (b.error !== undefined) out.rpcError = b.error;
  }
  return out;
}

/** The parsed JSON text of an accepted tool call's first content item. */
export function toolOutput<T = Record<string, unknown>>(r: RawCallResult): T | undefined {
  const content = r.result?.content;
  const first = Array.isArray(content) ? (content[0] as { type?: string; text?: string }) : undefined;
  if (first?.type !== 'text' || typeof first.text !== 'string') return undefined;
  try {
    return JSON.parse(first.text) as T;
  } catch {
    return undefined;
  }
}

/** An RFC 7230 quoted-string (the description may contain escaped quotes). */
const QUOTED = String.raw`"(?:[^"\\]|\\.)+"`;

/**
 * Asserts a refusal: the status, the verifier's code, no tool result, and (when `oauthError` is
 * given) an RFC 6750 challenge with `error`, `error_description` and `resource_metadata`.
 */
export function assertRefused(r: RawCallResult, status: number, code: string, oauthError?: string): void {
  assert.equal(
    r.status,
    status,
    `expected HTTP ${status} ${code}, got ${r.status} ${JSON.stringify(r.body)}`,
  );
  assert.equal(r.code, code);
  assert.equal(r.result, undefined, 'a refused call has no tool result');
  if (oauthError !== undefined) {
    assert.match(
      r.challenge ?? '',
      new RegExp(
        `^Bearer error="${oauthError}", error_description=${QUOTED}, resource_metadata="https://[^"]+"$`,
      ),
    );
  }
}

/** Asserts the call ran and returns the tool's JSON output. */
export function assertAccepted(r: RawCallResult): Record<string, unknown> {
  assert.equal(r.status, 200, `expected the call to be accepted, got ${r.status} ${JSON.stringify(r.body)}`);
  assert.equal(r.result?.isError, undefined, `the tool failed: ${JSON.stringify(r.result)}`);
  const out = toolOutput(r);
  assert.ok(out, 'the tool returned JSON text');
  return out;
}
