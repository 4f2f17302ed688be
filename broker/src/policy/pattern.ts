// The safe pattern language of scope templates (docs/design.md §5).
//
//   pattern  := segment ("/" segment)*
//   segment  := "**"                    one or more segments; only as the final segment
//             | part* ["*"]            literal text and placeholders, optionally ending in "*"
//   part     := literal | "{user.<claim>}" | "{agent.name}"
//   "{agent.id}" is a whole segment of its own (see below)
//
// A segment ending in "*" matches any input segment that starts with the text before the "*" and
// is at least one character longer ("*" alone = exactly one segment, "T-*" = "T-1", "T-abc", not
// "T-"). Placeholders are replaced by verified values at match time; a value that is not itself one
// valid resource segment (no "/", "*", "{", ".", "..", non-ASCII, ...) makes the pattern not match,
// so a user claim such as "a/*" can never widen a grant.
//
// `{agent.id}` stands for the path segments of the caller's SPIFFE ID (spiffe://td/agents/bot ->
// "agents/bot"): an agent ID always contains "/", so it cannot be a single segment; its segments are
// compared literally, one by one, which keeps the "values never act as wildcards" guarantee.
// `{agent.name}` is the last path segment.
//
// Agent patterns are SPIFFE IDs: "spiffe://" + trust domain (a literal, so no pattern crosses trust
// domains) + path segments in the same language, without placeholders. Matching never backtracks:
// each pattern segment consumes exactly one input segment, except a final "**" which consumes the
// rest, so it is linear in the input. No regular expression is ever built from file content.
//
// What a RESOURCE is (its grammar) is not defined here but in @taskpass/contract, which the verifier
// and the agent use too: patterns match resources, they do not redefine them.
import {
  checkResource,
  isResourceSegment,
  MAX_RESOURCE_BYTES,
  RESOURCE_SEGMENT_CHARS,
} from '@taskpass/contract';
import type { BrokerErrorCode } from '../errors.ts';

/** Longest SPIFFE ID we accept, in bytes (SPIFFE spec: 2048). */
export const MAX_SPIFFE_ID_BYTES = 2048;

// Character tables instead of regexes: obviously linear, and shared by validation and matching.
const RESOURCE_CHARS = charTable(RESOURCE_SEGMENT_CHARS);
const SPIFFE_PATH_CHARS = charTable('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._-');
const TRUST_DOMAIN_CHARS = charTable('abcdefghijklmnopqrstuvwxyz0123456789._-');
const CLAIM_CHARS = charTable('ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.:-');

function charTable(chars: string): Uint8Array {
  const t = new Uint8Array(128);
  for (let i = 0; i < chars.length; i++) t[chars.charCodeAt(i)] = 1;
  return t;
}

function allIn(s: string, table: Uint8Array): boolean {
  for (let i = 0; i < s.length; i++) {
    const c = s.charCodeAt(i);
    if (c >= 128 || table[c] !== 1) return false;
  }
  return true;
}

/**
 * The contract's resource check with the broker's error code attached (the policy engine answers
 * with it).
 */
export function validateResource(
  s: string,
): { ok: true } | { ok: false; code: Extract<BrokerErrorCode, 'TASKPASS_INVALID_RESOURCE'>; reason: string } {
  const r = checkResource(s);
  return r.ok ? r : { ok: false, code: 'TASKPASS_INVALID_RESOURCE', reason: r.reason };
}

/** A SPIFFE ID split for matching: the trust domain first, then the path segments. Frozen. */
export interface ParsedSpiffeId {
  readonly trustDomain: string;
  readonly path: readonly string[];
}

// Agents are few and every request asks about one: each ID is parsed once. Bounded: at most 1024
// IDs of at most 2048 bytes (longer ones are refused before), cleared when full. The parsed values
// are frozen, so sharing them is safe.
const parsedIds = new Map<string, ParsedSpiffeId | null>();

/**
 * Parses a SPIFFE ID strictly (lower-case scheme and trust domain, non-empty path, segments of
 * [A-Za-z0-9._-], no "." / ".." segments, no query/fragment/port/userinfo). Undefined if invalid.
 */
export function parseSpiffeId(id: string): ParsedSpiffeId | undefined {
  if (typeof id !== 'string' || id.length > MAX_SPIFFE_ID_BYTES) return undefined;
  let parsed = parsedIds.get(id);
  if (parsed === undefined) {
    parsed = parseSpiffeIdOnce(id) ?? null;
    if (parsedIds.size >= 1024) parsedIds.clear();
    parsedIds.set(id, parsed);
  }
  return parsed ?? undefined;
}

function parseSpiffeIdOnce(id: string): ParsedSpiffeId | undefined {
  if (!id.startsWith('spiffe://')) return undefined;
  const parts = id.slice('spiffe://'.length).split('/');
  const td = parts[0]!;
  if (td.length === 0 || !allIn(td, TRUST_DOMAIN_CHARS)) return undefined;
  const path = parts.slice(1);
  if (path.length === 0) return undefined;
  for (const seg of path) {
    if (seg.length === 0 || seg === '.' || seg === '..' || !allIn(seg, SPIFFE_PATH_CHARS)) return undefined;
  }
  return Object.freeze({ trustDomain: td, path: Object.freeze(path) });
}

/** Verified values placeholders are replaced with. */
export interface PatternContext {
  /** The delegating user (absent for autonomous tasks: user placeholders then never match). */
  user?: { sub: string; claims: Record<string, unknown> } | undefined;
  /** The agent's SPIFFE ID. */
  agent?: string | undefined;
}

type Part = { kind: 'literal'; text: string } | { kind: 'user'; claim: string } | { kind: 'agentName' };

type Segment =
  | { kind: 'globstar' }
  | { kind: 'agentId' }
  /** `parts` concatenated; `star` = the segment ends in `*` (prefix match, ≥ 1 more character). */
  | { kind: 'text'; parts: Part[]; star: boolean };

/** A compiled pattern. Immutable; safe to share between requests. */
export interface CompiledPattern {
  readonly source: string;
  readonly kind: 'resource' | 'agent';
  /** Does `input` (a resource, or a SPIFFE ID for agent patterns) match? Invalid input never does. */
  match(input: string, ctx?: PatternContext): boolean;
  /** Same as match, for input already split into segments (trust domain first for agents). */
  matchSegments(input: readonly string[], ctx?: PatternContext): boolean;
  /**
   * The pattern with placeholders replaced (for a task's ceiling); undefined when a placeholder
   * has no valid value for this context (the pattern can then match nothing).
   */
  render(ctx?: PatternContext): string | undefined;
  /** Does the pattern use `{user.*}` placeholders? */
  readonly usesUser: boolean;
}

/** Compiles a pattern, or explains why it is not one. */
export function compilePattern(
  source: string,
  kind: 'resource' | 'agent',
): { ok: true; pattern: CompiledPattern } | { ok: false; reason: string } {
  const fail = (reason: string) => ({
    ok: false as const,
    reason: `invalid ${kind} pattern "${source}": ${reason}`,
  });
  if (typeof source !== 'string' || source.length === 0) return fail('empty');
  let raw: string[];
  let prefix: string | undefined;
  if (kind === 'agent') {
    if (source.length > MAX_SPIFFE_ID_BYTES) return fail(`longer than ${MAX_SPIFFE_ID_BYTES} bytes`);
    if (!source.startsWith('spiffe://')) return fail('agent patterns start with spiffe://<trust domain>/');
    const all = source.slice('spiffe://'.length).split('/');
    prefix = all[0]!;
    if (prefix.length === 0 || !allIn(prefix, TRUST_DOMAIN_CHARS)) {
      return fail('the trust domain must be a literal of [a-z0-9._-] (no wildcards across trust domains)');
    }
    raw = all.slice(1);
    if (raw.length === 0) return fail('a path is required (e.g. spiffe://example.org/agents/*)');
  } else {
    if (source.length > MAX_RESOURCE_BYTES) return fail(`longer than ${MAX_RESOURCE_BYTES} bytes`);
    raw = source.split('/');
  }
  const segs: Segment[] = [];
  for (let i = 0; i < raw.length; i++) {
    const r = compileSegment(raw[i]!, kind, i === raw.length - 1);
    if (typeof r === 'string') return fail(`segment ${i + 1} "${raw[i]}": ${r}`);
    segs.push(r);
  }
  const usesUser = segs.some((s) => s.kind === 'text' && s.parts.some((p) => p.kind === 'user'));
  const head = prefix;
  const shape = [...(head !== undefined ? [{ kind: 'lit', text: head } as const] : []), ...segs.map(shapeOf)];
  const pattern: CompiledPattern = {
    source,
    kind,
    usesUser,
    matchSegments(input, ctx) {
      if (head !== undefined) {
        if (input[0] !== head) return false;
        return matchAll(segs, input, 1, ctx);
      }
      return matchAll(segs, input, 0, ctx);
    },
    match(input, ctx) {
      if (kind === 'agent') {
        const id = parseSpiffeId(input);
        return id !== undefined && this.matchSegments([id.trustDomain, ...id.path], ctx);
      }
      return validateResource(input).ok && this.matchSegments(input.split('/'), ctx);
    },
    render(ctx) {
      const out: string[] = [];
      for (const s of segs) {
        if (s.kind === 'globstar') out.push('**');
        else if (s.kind === 'agentId') {
          const p = agentPath(ctx);
          if (!p) return undefined;
          out.push(...p);
        } else {
          const t = substitute(s.parts, ctx);
          if (t === undefined) return undefined;
          out.push(s.star ? `${t}*` : t);
        }
      }
      const path = out.join('/');
      return head !== undefined ? `spiffe://${head}/${path}` : path;
    },
  };
  shapes.set(pattern, shape);
  return { ok: true, pattern };
}

// ---- overlap ------------------------------------------------------------------------------------

/**
 * What a pattern segment can match, with placeholders widened to "any one segment" ({agent.id} to
 * "one or more"), so that overlap is over-approximated: two patterns reported disjoint really are.
 */
type Shape =
  | { kind: 'lit'; text: string }
  | { kind: 'prefix'; text: string } // text + at least one more character
  | { kind: 'any' } // exactly one segment
  | { kind: 'many' }; // one or more segments

const shapes = new WeakMap<CompiledPattern, readonly Shape[]>();

function shapeOf(s: Segment): Shape {
  if (s.kind === 'globstar' || s.kind === 'agentId') return { kind: 'many' };
  if (s.parts.some((p) => p.kind !== 'literal')) return { kind: 'any' };
  const text = s.parts.map((p) => (p as { text: string }).text).join('');
  if (!s.star) return { kind: 'lit', text };
  return text ? { kind: 'prefix', text } : { kind: 'any' };
}

/** Can one segment be in both sets? (`many` is handled by the caller as "any" per segment.) */
function segmentsMeet(a: Shape, b: Shape): boolean {
  if (a.kind === 'any' || a.kind === 'many' || b.kind === 'any' || b.kind === 'many') return true;
  if (a.kind === 'lit' && b.kind === 'lit') return a.text === b.text;
  if (a.kind === 'lit') return a.text.length > b.text.length && a.text.startsWith(b.text);
  if (b.kind === 'lit') return b.text.length > a.text.length && b.text.startsWith(a.text);
  return a.text.startsWith(b.text) || b.text.startsWith(a.text);
}

/**
 * Could some input match both patterns (for some user and agent, placeholders counting as any
 * valid value)? Over-approximates: false means no input matches both. Runs over the product of
 * the two patterns' segment automata, O(length(a) × length(b)).
 */
export function patternsOverlap(a: CompiledPattern, b: CompiledPattern): boolean {
  const A = shapes.get(a);
  const B = shapes.get(b);
  if (!A || !B || a.kind !== b.kind) return false;
  // State i of a pattern = i segments matched; a "many" segment also loops on its own end state.
  const moves = (P: readonly Shape[], i: number): { to: number; shape: Shape }[] => {
    const out: { to: number; shape: Shape }[] = [];
    if (i < P.length) out.push({ to: i + 1, shape: P[i]! });
    if (i > 0 && P[i - 1]!.kind === 'many') out.push({ to: i, shape: { kind: 'any' } });
    return out;
  };
  const seen = new Set<number>([0]);
  const stack = [0];
  const width = B.length + 1;
  while (stack.length) {
    const st = stack.pop()!;
    const i = Math.floor(st / width);
    const j = st % width;
    if (i === A.length && j === B.length) return true;
    for (const ma of moves(A, i)) {
      for (const mb of moves(B, j)) {
        const next = ma.to * width + mb.to;
        if (!seen.has(next) && segmentsMeet(ma.shape, mb.shape)) {
          seen.add(next);
          stack.push(next);
        }
      }
    }
  }
  return false;
}

/** Compiles a pattern known to be valid (validated by the schema); throws otherwise. */
export function mustCompile(source: string, kind: 'resource' | 'agent'): CompiledPattern {
  const r = compilePattern(source, kind);
  if (!r.ok) throw new Error(r.reason);
  return r.pattern;
}

function compileSegment(raw: string, kind: 'resource' | 'agent', last: boolean): Segment | string {
  if (raw.length === 0) return 'empty segment (leading, trailing or double "/")';
  if (raw === '**') return last ? { kind: 'globstar' } : '"**" is only allowed as the final segment';
  const literalChars = kind === 'agent' ? SPIFFE_PATH_CHARS : RESOURCE_CHARS;
  if (raw === '{agent.id}') {
    return kind === 'resource' ? { kind: 'agentId' } : 'placeholders are not allowed in agent patterns';
  }
  const parts: Part[] = [];
  let star = false;
  let lit = '';
  let i = 0;
  while (i < raw.length) {
    const ch = raw[i]!;
    if (ch === '*') {
      if (raw[i + 1] === '*') return '"**" must be a whole (final) segment';
      if (i !== raw.length - 1) return '"*" is only allowed at the end of a segment';
      star = true;
      i++;
      continue;
    }
    if (ch === '{') {
      if (kind === 'agent') return 'placeholders are not allowed in agent patterns';
      const end = raw.indexOf('}', i);
      if (end < 0) return 'unterminated placeholder';
      const name = raw.slice(i + 1, end);
      if (lit) parts.push({ kind: 'literal', text: lit });
      lit = '';
      if (name === 'agent.name') parts.push({ kind: 'agentName' });
      else if (name === 'agent.id')
        return '{agent.id} expands to several segments and must be a whole segment';
      else if (name.startsWith('user.') && name.length > 5 && allIn(name.slice(5), CLAIM_CHARS)) {
        parts.push({ kind: 'user', claim: name.slice(5) });
      } else return `unknown placeholder "{${name}}" (use {user.<claim>}, {agent.id} or {agent.name})`;
      i = end + 1;
      continue;
    }
    const c = raw.charCodeAt(i);
    if (c >= 128 || literalChars[c] !== 1) {
      return kind === 'agent'
        ? `character "${ch}" is not allowed in a SPIFFE ID path (use [A-Za-z0-9._-])`
        : `character "${ch}" is not allowed in a resource (use [A-Za-z0-9._~:@+=-])`;
    }
    lit += ch;
    i++;
  }
  if (lit) parts.push({ kind: 'literal', text: lit });
  const only = parts.length === 1 ? parts[0] : undefined;
  if (!star && only?.kind === 'literal' && (only.text === '.' || only.text === '..')) {
    return '"." and ".." segments are not allowed';
  }
  return { kind: 'text', parts, star };
}

function agentPath(ctx: PatternContext | undefined): readonly string[] | undefined {
  if (!ctx?.agent) return undefined;
  const id = parseSpiffeId(ctx.agent);
  // SPIFFE path segments are a subset of resource segments, so each is a safe literal.
  return id?.path;
}

/** Concatenated parts, or undefined when a placeholder has no single-segment value. */
function substitute(parts: readonly Part[], ctx: PatternContext | undefined): string | undefined {
  let out = '';
  for (const p of parts) {
    if (p.kind === 'literal') out += p.text;
    else {
      const v = p.kind === 'agentName' ? agentPath(ctx)?.at(-1) : userValue(ctx, p.claim);
      if (v === undefined || !isResourceSegment(v)) return undefined;
      out += v;
    }
  }
  // A literal prefix plus a value could still spell "." or ".." (e.g. "." + "."): refuse it too.
  if (out === '.' || out === '..' || out.length > MAX_RESOURCE_BYTES) return undefined;
  return out;
}

function userValue(ctx: PatternContext | undefined, claim: string): string | undefined {
  const u = ctx?.user;
  if (!u) return undefined;
  const v = claim === 'sub' ? u.sub : Object.hasOwn(u.claims, claim) ? u.claims[claim] : undefined;
  return typeof v === 'string' ? v : undefined;
}

function matchAll(
  segs: readonly Segment[],
  input: readonly string[],
  from: number,
  ctx: PatternContext | undefined,
): boolean {
  let i = from;
  for (const s of segs) {
    if (s.kind === 'globstar') return input.length - i >= 1;
    if (s.kind === 'agentId') {
      const p = agentPath(ctx);
      if (!p) return false;
      for (const seg of p) if (input[i++] !== seg) return false;
      continue;
    }
    const seg = input[i++];
    if (seg === undefined) return false;
    const text = substitute(s.parts, ctx);
    if (text === undefined) return false;
    if (s.star ? !(seg.length > text.length && seg.startsWith(text)) : seg !== text) return false;
  }
  return i === input.length;
}
