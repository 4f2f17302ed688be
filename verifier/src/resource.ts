// How a tool call's arguments become the resource string the token must name (docs/design.md §5-6).
// Templates are compiled once at start-up into literal/placeholder parts, so deriving a resource on
// the hot path is a few property reads and one join, with no regular expression built from config.
import { createHash } from 'node:crypto';
import { VerifierError } from './errors.ts';

/** The resource grammar shared with the broker (docs/design.md §5). */
export const RESOURCE_RE = /^[A-Za-z0-9._~:@+=-]+(\/[A-Za-z0-9._~:@+=-]+)*$/;
const SEGMENT_RE = /^[A-Za-z0-9._~:@+=-]+$/;
const PLACEHOLDER_RE = /^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$/;
const MAX_RESOURCE = 512;

/** Call arguments as the MCP client sent them (`params.arguments`). */
export type ToolArgs = Record<string, unknown>;

/** Derives a resource from call arguments (compiled template or user function). */
export type ResourceDeriver = (args: ToolArgs) => string;

/**
 * True when `r` is a valid resource: grammar, length, no `.`/`..` segments.
 *
 * @example
 * ```ts
 * isValidResource('tickets/T-42');     // true
 * isValidResource('tickets/../admin'); // false
 * isValidResource('tickets/*');        // false
 * ```
 */
export function isValidResource(r: string): boolean {
  if (r.length > MAX_RESOURCE || !RESOURCE_RE.test(r)) return false;
  for (const s of r.split('/')) if (s === '.' || s === '..') return false;
  return true;
}

function underivable(msg: string): VerifierError {
  return new VerifierError('TASKPASS_VERIFY_RESOURCE_UNDERIVABLE', msg);
}

function segmentOf(value: unknown, name: string): string {
  let s: string;
  if (typeof value === 'string') s = value;
  else if (typeof value === 'number' && Number.isSafeInteger(value)) s = String(value);
  else throw underivable(`argument "${name}" is missing or not a string/integer`);
  // One placeholder fills exactly one segment: "1/../2" or "*" must never widen the resource.
  if (!SEGMENT_RE.test(s) || s === '.' || s === '..') {
    throw underivable(`argument "${name}" is not a valid resource segment`);
  }
  return s;
}

function lookup(args: ToolArgs, path: readonly string[]): unknown {
  let v: unknown = args;
  for (const k of path) {
    if (v === null || typeof v !== 'object' || !Object.hasOwn(v, k)) return undefined;
    v = (v as Record<string, unknown>)[k];
  }
  return v;
}

/**
 * Compiles a resource template such as `tickets/{ticket_id}` (placeholders name call arguments,
 * dotted paths reach into objects) into a deriver. Throws on an invalid template.
 *
 * @example
 * ```ts
 * const derive = compileResourceTemplate('tickets/{ticket_id}');
 * derive({ ticket_id: 'T-42' }); // 'tickets/T-42'
 * ```
 */
export function compileResourceTemplate(template: string): ResourceDeriver {
  const parts: (string | { name: string; path: string[] })[] = [];
  let i = 0;
  while (i < template.length) {
    const open = template.indexOf('{', i);
    if (open < 0) {
      parts.push(template.slice(i));
      break;
    }
    if (open > i) parts.push(template.slice(i, open));
    const close = template.indexOf('}', open);
    if (close < 0) throw new Error(`resource template "${template}": unclosed "{"`);
    const name = template.slice(open + 1, close);
    if (!PLACEHOLDER_RE.test(name))
      throw new Error(`resource template "${template}": bad placeholder "${name}"`);
    parts.push({ name, path: name.split('.') });
    i = close + 1;
  }
  // Validate the literal skeleton by substituting a harmless segment for every placeholder.
  const skeleton = parts.map((p) => (typeof p === 'string' ? p : 'x')).join('');
  if (!isValidResource(skeleton))
    throw new Error(`resource template "${template}" is not a valid resource pattern`);
  if (parts.every((p) => typeof p === 'string')) {
    return () => template;
  }
  return (args) => {
    let out = '';
    for (const p of parts) out += typeof p === 'string' ? p : segmentOf(lookup(args, p.path), p.name);
    if (out.length > MAX_RESOURCE) throw underivable('derived resource is longer than 512 bytes');
    return out;
  };
}

/**
 * Wraps a user function so that its result is checked like a template's.
 *
 * @example
 * ```ts
 * const derive = checkedDeriver((args) => `repos/${args.owner}/${args.repo}`);
 * derive({ owner: 'acme', repo: 'api' }); // 'repos/acme/api'
 * derive({ owner: '..', repo: 'api' });   // throws VerifierError TASKPASS_VERIFY_RESOURCE_UNDERIVABLE
 * ```
 */
export function checkedDeriver(fn: (args: ToolArgs) => string): ResourceDeriver {
  return (args) => {
    let r: unknown;
    try {
      r = fn(args);
    } catch (e) {
      throw new VerifierError('TASKPASS_VERIFY_RESOURCE_UNDERIVABLE', 'the resource function threw', {
        cause: e,
      });
    }
    if (typeof r !== 'string' || !isValidResource(r))
      throw underivable('the resource function returned no valid resource');
    return r;
  };
}

function canonicalJson(v: unknown): string {
  if (v === null || typeof v !== 'object') {
    const s = JSON.stringify(v);
    // undefined/functions/symbols have no JSON form; a call's arguments never legitimately hold them.
    if (s === undefined) throw new TypeError('arguments are not JSON');
    return s;
  }
  if (Array.isArray(v)) return `[${v.map(canonicalJson).join(',')}]`;
  const keys = Object.keys(v).sort();
  const o = v as Record<string, unknown>;
  const items: string[] = [];
  for (const k of keys) if (o[k] !== undefined) items.push(`${JSON.stringify(k)}:${canonicalJson(o[k])}`);
  return `{${items.join(',')}}`;
}

/**
 * The `args_sha256` of call arguments: base64url(SHA-256(canonical JSON)), where canonical JSON
 * sorts object keys (by UTF-16 code units, as RFC 8785) and has no whitespace. Agents binding a
 * token to exact arguments must hash the same way.
 *
 * @example
 * ```ts
 * argsSha256({ b: 1, a: 'x' }) === argsSha256({ a: 'x', b: 1 }); // true
 * ```
 */
export function argsSha256(args: ToolArgs | undefined): string {
  return createHash('sha256')
    .update(canonicalJson(args ?? {}))
    .digest('base64url');
}
