// The MCP 2026-07-28 Streamable HTTP standard headers (SEP-2243): `Mcp-Method` mirrors the body's
// `method`, `Mcp-Name` the name a request targets. The verifier checks them and the agent plugin
// sends them, so both sides take the mapping and the value encoding from this one file.

/** Which `params` field `Mcp-Name` mirrors, per method (the SDK 2.x table, spec streamable-http). */
export const MCP_NAME_SOURCE: Readonly<Record<string, 'name' | 'uri' | 'taskId'>> = Object.freeze({
  'tools/call': 'name',
  'prompts/get': 'name',
  'resources/read': 'uri',
  'tasks/get': 'taskId',
  'tasks/update': 'taskId',
  'tasks/cancel': 'taskId',
});

const PREFIX = '=?base64?';
const SUFFIX = '?=';
const CANONICAL_BASE64 = /^(?:[A-Za-z0-9+/]{4})*(?:[A-Za-z0-9+/]{2}==|[A-Za-z0-9+/]{3}=)?$/;

/**
 * The name a JSON-RPC message targets, which `Mcp-Name` must carry: `params.name`, `params.uri`
 * or `params.taskId` by method; undefined for methods without one or when the field is no string.
 *
 * @example
 * ```ts
 * mcpNameOf({ method: 'tools/call', params: { name: 'get_ticket' } }); // 'get_ticket'
 * mcpNameOf({ method: 'tools/list' }); // undefined
 * ```
 */
export function mcpNameOf(message: { method?: unknown; params?: unknown }): string | undefined {
  const m = message.method;
  const field = typeof m === 'string' && Object.hasOwn(MCP_NAME_SOURCE, m) ? MCP_NAME_SOURCE[m] : undefined;
  const p = message.params;
  if (field === undefined || typeof p !== 'object' || p === null || Array.isArray(p)) return undefined;
  const v = (p as Record<string, unknown>)[field];
  return typeof v === 'string' ? v : undefined;
}

// A header value can hold visible ASCII, space and tab only, and proxies trim its ends; anything
// else travels as `=?base64?<UTF-8 base64>?=` (so does a value that itself looks like the sentinel).
function needsBase64(s: string): boolean {
  if (s === '' || s !== s.trim() || (s.startsWith(PREFIX) && s.endsWith(SUFFIX))) return true;
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c !== 9 && (c < 32 || c > 126)) return true;
  }
  return false;
}

/**
 * A value as an `Mcp-Name` / `Mcp-Param-*` header carries it: as is when it is plain ASCII, else
 * the spec's `=?base64?…?=` form.
 *
 * @example
 * ```ts
 * encodeMcpHeaderValue('get_ticket'); // 'get_ticket'
 * encodeMcpHeaderValue('tickets/é'); // '=?base64?dGlja2V0cy/DqQ==?='
 * ```
 */
export function encodeMcpHeaderValue(value: string): string {
  return needsBase64(value) ? `${PREFIX}${Buffer.from(value, 'utf8').toString('base64')}${SUFFIX}` : value;
}

/**
 * The value an `Mcp-Name` header stands for, or undefined when its `=?base64?…?=` form is not
 * canonical base64 of valid UTF-8 (refused like a mismatch: two spellings of one name are two names).
 *
 * @example
 * ```ts
 * decodeMcpHeaderValue('=?base64?dGlja2V0cy/DqQ==?='); // 'tickets/é'
 * ```
 */
export function decodeMcpHeaderValue(value: string): string | undefined {
  if (!(value.startsWith(PREFIX) && value.endsWith(SUFFIX))) return value;
  if (value.length < PREFIX.length + SUFFIX.length) return undefined;
  const b64 = value.slice(PREFIX.length, value.length - SUFFIX.length);
  if (!CANONICAL_BASE64.test(b64)) return undefined;
  try {
    return new TextDecoder('utf-8', { fatal: true }).decode(Buffer.from(b64, 'base64'));
  } catch {
    return undefined;
  }
}
