// `args_sha256` (docs/design.md §2): binds a call token to the exact call arguments. The agent
// hashes what it will send, the verifier what it received; both must serialise identically.
import { createHash } from 'node:crypto';
import type { ToolArgs } from './resource-template.ts';

/**
 * Canonical JSON: object keys sorted by UTF-16 code units (as RFC 8785), no whitespace, `undefined`
 * members dropped. Throws a TypeError for values with no JSON form.
 *
 * @example
 * ```ts
 * canonicalJson({ b: 1, a: [true, null] }); // '{"a":[true,null],"b":1}'
 * ```
 */
export function canonicalJson(v: unknown): string {
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
 * The `args_sha256` of call arguments: base64url(SHA-256(canonical JSON)). Missing arguments hash
 * as `{}`.
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
