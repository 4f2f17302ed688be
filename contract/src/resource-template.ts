// How a tool call's arguments become the resource string the token names (docs/design.md §5-6).
// The agent derives the resource it asks the broker for, the verifier derives the one the call
// really touches; both compile the same template here, so they agree by construction. Templates
// are compiled once into literal/placeholder parts: deriving is a few property reads and one join,
// with no regular expression built from configuration.
import { ContractError } from './errors.ts';
import { isResourceSegment, isValidResource, MAX_RESOURCE_BYTES } from './resource.ts';

/** Call arguments as the MCP client sent them (`params.arguments`). */
export type ToolArgs = Record<string, unknown>;

/** Derives a resource from call arguments (compiled template or checked user function). */
export type ResourceDeriver = (args: ToolArgs) => string;

const PLACEHOLDER_RE = /^[A-Za-z_][A-Za-z0-9_-]*(\.[A-Za-z_][A-Za-z0-9_-]*)*$/;

function underivable(msg: string, cause?: unknown): ContractError {
  return new ContractError(
    'TASKPASS_CONTRACT_RESOURCE_UNDERIVABLE',
    msg,
    cause === undefined ? undefined : { cause },
  );
}

function invalidTemplate(msg: string): ContractError {
  return new ContractError('TASKPASS_CONTRACT_TEMPLATE_INVALID', msg);
}

function segmentOf(value: unknown, name: string): string {
  let s: string;
  if (typeof value === 'string') s = value;
  else if (typeof value === 'number' && Number.isSafeInteger(value)) s = String(value);
  else throw underivable(`argument "${name}" is missing or not a string/integer`);
  // One placeholder fills exactly one segment: "1/../2" or "*" must never widen the resource.
  if (!isResourceSegment(s)) throw underivable(`argument "${name}" is not a valid resource segment`);
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
 * dotted paths reach into objects, each fills exactly one segment) into a deriver.
 *
 * @throws ContractError `TASKPASS_CONTRACT_TEMPLATE_INVALID` for an invalid template; the deriver
 *   throws `TASKPASS_CONTRACT_RESOURCE_UNDERIVABLE` when the arguments give no valid resource.
 *
 * @example
 * ```ts
 * const derive = compileResourceTemplate('tickets/{ticket_id}');
 * derive({ ticket_id: 'T-42' }); // 'tickets/T-42'
 * derive({ ticket_id: '../x' }); // throws ContractError TASKPASS_CONTRACT_RESOURCE_UNDERIVABLE
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
    if (close < 0) throw invalidTemplate(`resource template "${template}": unclosed "{"`);
    const name = template.slice(open + 1, close);
    if (!PLACEHOLDER_RE.test(name))
      throw invalidTemplate(`resource template "${template}": bad placeholder "${name}"`);
    parts.push({ name, path: name.split('.') });
    i = close + 1;
  }
  // Validate the literal skeleton by substituting a harmless segment for every placeholder.
  const skeleton = parts.map((p) => (typeof p === 'string' ? p : 'x')).join('');
  if (!isValidResource(skeleton))
    throw invalidTemplate(`resource template "${template}" is not a valid resource pattern`);
  if (parts.every((p) => typeof p === 'string')) {
    return () => template;
  }
  return (args) => {
    let out = '';
    for (const p of parts) out += typeof p === 'string' ? p : segmentOf(lookup(args, p.path), p.name);
    if (out.length > MAX_RESOURCE_BYTES)
      throw underivable(`derived resource is longer than ${MAX_RESOURCE_BYTES} bytes`);
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
 * derive({ owner: '..', repo: 'api' });   // throws ContractError TASKPASS_CONTRACT_RESOURCE_UNDERIVABLE
 * ```
 */
export function checkedDeriver(fn: (args: ToolArgs) => string): ResourceDeriver {
  return (args) => {
    let r: unknown;
    try {
      r = fn(args);
    } catch (e) {
      throw underivable('the resource function threw', e);
    }
    if (typeof r !== 'string' || !isValidResource(r))
      throw underivable('the resource function returned no valid resource');
    return r;
  };
}
