// Property-based tests of the pattern language (broker/src/policy/pattern.ts, docs/design.md §5)
// against a reference model written here, independently, as regular expressions over the design's
// grammar. Each property keeps numRuns small enough to run in well under two seconds.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { compileResourceTemplate } from '@taskpass/contract';
import { type CompiledPattern, compilePattern, validateResource } from '../src/policy/pattern.ts';

// ---- the reference model ------------------------------------------------------------------------

const CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~:@+=-';
const SEG = '[A-Za-z0-9._~:@+=-]+';
const GRAMMAR = new RegExp(`^${SEG}(/${SEG})*$`);
const esc = (s: string) => s.replace(/[.*+?^${}()|[\]\\/-]/g, '\\$&');

/** A valid resource per the design: grammar, ≤ 512 bytes, no "." or ".." segment. */
function refValid(path: string): boolean {
  return (
    GRAMMAR.test(path) &&
    Buffer.byteLength(path) <= 512 &&
    path.split('/').every((s) => s !== '.' && s !== '..')
  );
}
/** One valid segment. */
const refSegment = (v: string) => refValid(v) && !v.includes('/');

/**
 * Reference matcher for a resource pattern. `vars` gives placeholder values; a placeholder whose
 * value is not one valid segment makes the pattern match nothing.
 */
function refMatch(pattern: string, path: string, vars: Record<string, string | undefined> = {}): boolean {
  if (!refValid(path)) return false;
  const parts: string[] = [];
  const segs = pattern.split('/');
  for (const [i, seg] of segs.entries()) {
    if (seg === '**') {
      if (i !== segs.length - 1) throw new Error('bad test pattern');
      parts.push(`${SEG}(?:/${SEG})*`);
      continue;
    }
    const star = seg.endsWith('*');
    const body = star ? seg.slice(0, -1) : seg;
    let text = '';
    let ok = true;
    body.replace(
      /\{user\.([A-Za-z0-9_.:-]+)\}|([^{]+)/g,
      (_m, name: string | undefined, lit: string | undefined) => {
        if (name !== undefined) {
          const v = vars[name];
          if (v === undefined || !refSegment(v)) ok = false;
          else text += v;
        } else text += lit;
        return '';
      },
    );
    if (!ok || text === '.' || text === '..') return false;
    parts.push(star ? `${esc(text)}[A-Za-z0-9._~:@+=-]+` : esc(text));
  }
  return new RegExp(`^${parts.join('/')}$`).test(path);
}

// ---- generators ---------------------------------------------------------------------------------

// A small alphabet makes patterns and paths collide often enough to test both answers.
const word = fc.constantFrom('a', 'b', 'ab', 'T-1', 'T-12', 'x.y', '.a', 'a.', '~', 'a:b', '..a');
const literalSeg = word;
const starSeg = fc.oneof(
  fc.constant('*'),
  word.map((w) => `${w}*`),
);
const patternArb = fc
  .tuple(fc.array(fc.oneof(literalSeg, starSeg), { minLength: 1, maxLength: 4 }), fc.boolean())
  .map(([segs, globstar]) => [...segs, ...(globstar ? ['**'] : [])].join('/'));

/** A path that often matches `pattern`: each segment instantiated, then maybe mutated. */
const pathFor = (pattern: string) =>
  fc
    .tuple(
      // '' fills a "prefix*" with nothing: the prefix alone must not match.
      fc.array(fc.oneof(word, fc.constantFrom('1', 'zz', 'T-', '')), {
        minLength: pattern.split('/').length + 2,
        maxLength: pattern.split('/').length + 2,
      }),
      fc.integer({ min: 0, max: 3 }),
      fc.constantFrom('keep', 'drop', 'extend'),
    )
    .map(([fill, extra, how]) => {
      const out: string[] = [];
      for (const [i, seg] of pattern.split('/').entries()) {
        if (seg === '**') for (let k = 0; k <= extra; k++) out.push(fill[k]!);
        else if (seg.endsWith('*')) out.push(seg.slice(0, -1) + fill[i]!);
        else out.push(seg);
      }
      if (how === 'drop') out.pop();
      if (how === 'extend') out.push(fill[0]!);
      return out.join('/');
    });

const compiled = (p: string, kind: 'resource' | 'agent' = 'resource'): CompiledPattern => {
  const r = compilePattern(p, kind);
  assert.ok(r.ok, r.ok ? '' : r.reason);
  return r.pattern;
};

// Strings that stress the grammar: its characters, separators, dots, look-alikes, spaces, controls.
const hostileChar = fc.constantFrom(
  ...CHARS.split(''),
  '/',
  '.',
  '.',
  '*',
  '{',
  '}',
  '%',
  ' ',
  '\\',
  '\n',
  '\u0000',
  '\u2215',
  '\uff0f',
  'é',
  'Т',
  '\u{1F600}',
);
const hostileString = fc.array(hostileChar, { maxLength: 24 }).map((a) => a.join(''));

// ---- properties ---------------------------------------------------------------------------------

describe('property: the pattern matcher agrees with the reference model', () => {
  test('literal, "*", "prefix*" and final "**" segments', () => {
    fc.assert(
      fc.property(
        patternArb.chain((p) => fc.tuple(fc.constant(p), fc.oneof(pathFor(p), hostileString))),
        ([pattern, path]) => {
          assert.equal(compiled(pattern).match(path), refMatch(pattern, path), `${pattern} vs ${path}`);
        },
      ),
      { numRuns: 1000 },
    );
  });

  test('"*" is exactly one segment, "prefix*" at least one more character, "**" one or more segments', () => {
    fc.assert(
      fc.property(
        fc.array(fc.oneof(word, fc.constantFrom('T-', 'T')), { minLength: 1, maxLength: 5 }),
        (segs) => {
          const path = segs.join('/');
          assert.equal(compiled('*').match(path), segs.length === 1);
          assert.equal(compiled('**').match(path), true);
          assert.equal(compiled('a/**').match(path), segs[0] === 'a' && segs.length >= 2);
          assert.equal(
            compiled('T-*').match(path),
            segs.length === 1 && segs[0]!.startsWith('T-') && segs[0]!.length > 2,
          );
        },
      ),
      { numRuns: 300 },
    );
  });
});

describe('property: placeholders only ever fill one valid segment', () => {
  const shapes = [
    'items/{user.v}',
    'items/{user.v}/end',
    'p-{user.v}',
    '{user.v}-*',
    'a/{user.v}{user.w}/**',
  ];
  test('a value matches only as itself, and only when it is one valid segment', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...shapes),
        fc.oneof(hostileString, word),
        fc.oneof(hostileString, word),
        fc.array(fc.oneof(word, hostileString), { maxLength: 3 }),
        (shape, v, w, tail) => {
          const p = compiled(shape);
          const ctx = { user: { sub: 's', claims: { v, w } } };
          // Candidate paths: the value spliced in as the reference would, plus hostile variants.
          const spliced = shape
            .replace('{user.v}', v)
            .replace('{user.w}', w)
            .replace('/**', '/q')
            .replace('*', 'z');
          for (const path of [
            spliced,
            `${spliced}/${tail.join('/')}`,
            ...tail,
            `items/${v}`,
            `items/${v}/end`,
          ]) {
            const got = p.match(path, ctx);
            assert.equal(got, refMatch(shape, path, { v, w }), `${shape} ${JSON.stringify({ v, w, path })}`);
            if (got) {
              assert.ok(refSegment(v) && (!shape.includes('{user.w}') || refSegment(w)));
            }
          }
          // Every shape puts literal text next to its placeholders or uses one alone, so the
          // substituted text is never "." or ".." when each value is a valid segment.
          const fills = refSegment(v) && (!shape.includes('{user.w}') || refSegment(w));
          assert.equal(p.render(ctx) !== undefined, fills);
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('property: nothing matches a path outside the grammar', () => {
  test('no pattern matches a path with a "." or ".." segment or an out-of-grammar character', () => {
    const badSegment = fc.constantFrom('.', '..');
    const badChar = fc.constantFrom(
      ' ',
      '%',
      '\\',
      '\n',
      '\u0000',
      '\u2215',
      '\uff0f',
      'é',
      '*',
      '{',
      '}',
      '?',
      '#',
    );
    fc.assert(
      fc.property(
        fc.oneof(patternArb, fc.constantFrom('**', '*/**', '{user.v}/**', '{agent.id}/**', '*/*/*')),
        fc.array(word, { minLength: 1, maxLength: 4 }),
        fc.nat(),
        fc.oneof(
          badSegment,
          badChar.chain((c) => word.map((w) => `${w}${c}`)),
        ),
        fc.oneof(word, hostileString),
        (pattern, segs, at, bad, v) => {
          const path: string[] = [...segs];
          path.splice(at % (segs.length + 1), 0, bad);
          const s = path.join('/');
          const ctx = { user: { sub: 's', claims: { v } }, agent: 'spiffe://td.local/agents/bot' };
          assert.equal(compiled(pattern).match(s, ctx), false, `${pattern} matched ${JSON.stringify(s)}`);
          assert.equal(validateResource(s).ok, false);
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('property: matching is linear', () => {
  /** Counts reads of input segments (by index) while matching. */
  function countReads(p: CompiledPattern, segs: string[]): { result: boolean; reads: number } {
    let reads = 0;
    const proxy = new Proxy(segs, {
      get(target, key, recv) {
        if (typeof key === 'string' && /^\d+$/.test(key)) reads++;
        return Reflect.get(target, key, recv);
      },
    });
    return { result: p.matchSegments(proxy), reads };
  }

  test('each pattern segment reads at most one input segment, however long the input', () => {
    fc.assert(
      fc.property(
        patternArb,
        fc.integer({ min: 1, max: 5000 }),
        fc.constantFrom('a', 'ab', 'aaaaaaaa', 'T-1'),
        (pattern, n, seg) => {
          const p = compiled(pattern);
          const segs = Array.from({ length: n }, () => seg);
          const { reads } = countReads(p, segs);
          assert.ok(reads <= pattern.split('/').length, `${reads} reads for ${pattern} on ${n} segments`);
        },
      ),
      { numRuns: 200 },
    );
  });

  test('adversarial shapes for backtracking matchers cost pattern-length reads', () => {
    // "a*/a*/…/**" against "aaaa/aaaa/…/b": a backtracking glob would try every split.
    for (const k of [4, 16, 64]) {
      const pattern = [...Array.from({ length: k }, () => 'a*'), '**'].join('/');
      const segs = [...Array.from({ length: 4 * k }, () => 'a'.repeat(32)), 'b'];
      const { result, reads } = countReads(compiled(pattern), segs);
      assert.equal(result, true);
      assert.ok(reads <= k + 1, `${reads} reads for k=${k}`);
    }
  });
});

describe('property: agent patterns', () => {
  const TDS = ['td.local', 'other.td'];
  test('the trust domain is literal and agent IDs outside the SPIFFE grammar never match', () => {
    fc.assert(
      fc.property(
        fc.constantFrom(...TDS),
        fc.array(fc.oneof(fc.constantFrom('agents', 'bot', 'support', 'x'), fc.constantFrom('*', 'sup*')), {
          minLength: 1,
          maxLength: 3,
        }),
        fc.boolean(),
        fc.constantFrom(...TDS, 'TD.local', 'td.local:443', ''),
        fc.array(fc.oneof(fc.constantFrom('agents', 'bot', 'support', 'x', 'support-1'), hostileString), {
          minLength: 0,
          maxLength: 4,
        }),
        (td, segs, globstar, idTd, idPath) => {
          const pattern = `spiffe://${td}/${[...segs, ...(globstar ? ['**'] : [])].join('/')}`;
          const id = `spiffe://${idTd}/${idPath.join('/')}`;
          const idSegs = idPath.join('/').split('/');
          const validId =
            /^[a-z0-9._-]+$/.test(idTd) &&
            idSegs.every((s) => /^[A-Za-z0-9._-]+$/.test(s) && s !== '.' && s !== '..');
          const got = compiled(pattern, 'agent').match(id);
          if (!validId || idTd !== td) assert.equal(got, false, `${pattern} matched ${JSON.stringify(id)}`);
          else {
            const path = idPath.join('/');
            assert.equal(
              got,
              refMatch([...segs, ...(globstar ? ['**'] : [])].join('/'), path),
              `${pattern} vs ${id}`,
            );
          }
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('property: the broker speaks the resource grammar of the contract', () => {
  test('validateResource follows the design grammar (the contract check, with the broker code)', () => {
    const longish = fc
      .tuple(fc.integer({ min: 500, max: 520 }), fc.constantFrom('a', 'a/', '.', 'é'))
      .map(([n, c]) => `x${c.repeat(n)}`.slice(0, n));
    fc.assert(
      fc.property(
        fc.oneof(
          hostileString,
          longish,
          fc.array(word, { minLength: 1, maxLength: 6 }).map((a) => a.join('/')),
        ),
        (s) => {
          const r = validateResource(s);
          assert.equal(r.ok, refValid(s), JSON.stringify(s));
          if (!r.ok) assert.equal(r.code, 'TASKPASS_INVALID_RESOURCE');
        },
      ),
      { numRuns: 1000 },
    );
  });

  // A policy placeholder ({user.v}) and an MCP server's resource template ({v}) fill a segment by
  // the same rule: a value one accepts and the other refuses would fail closed at the verifier, or
  // be checked by different rules.
  test('a policy placeholder and a resource template accept the same values', () => {
    const brokerPattern = compilePattern('items/{user.v}', 'resource');
    assert.ok(brokerPattern.ok);
    const derive = compileResourceTemplate('items/{v}');
    fc.assert(
      fc.property(
        fc.oneof(
          hostileString,
          fc.array(word, { minLength: 1, maxLength: 3 }).map((a) => a.join('/')),
        ),
        (v) => {
          let templateValue: string | undefined;
          try {
            templateValue = derive({ v });
          } catch {
            templateValue = undefined;
          }
          const policyValue = brokerPattern.pattern.render({ user: { sub: 's', claims: { v } } });
          assert.equal(policyValue, templateValue, JSON.stringify(v));
        },
      ),
      { numRuns: 1000 },
    );
  });
});
