// The resource grammar and the template compiler, against a reference model written here,
// independently, as regular expressions over the design's grammar (docs/design.md §5).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import {
  ContractError,
  checkedDeriver,
  checkResource,
  compileResourceTemplate,
  isResourceSegment,
  isValidResource,
} from '../src/index.ts';

const CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~:@+=-';
const SEG = '[A-Za-z0-9._~:@+=-]+';
const GRAMMAR = new RegExp(`^${SEG}(/${SEG})*$`);
const refValid = (s: string) =>
  GRAMMAR.test(s) && Buffer.byteLength(s) <= 512 && s.split('/').every((x) => x !== '.' && x !== '..');
const refSegment = (s: string) => refValid(s) && !s.includes('/');

const char = fc.constantFrom(
  ...CHARS.split(''),
  '/',
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
  '\t',
  '\u0000',
  '\u2215',
  '\uff0f',
  '\u00e9',
  '\u{1F600}',
);
const hostile = fc.array(char, { maxLength: 24 }).map((a) => a.join(''));
// Around the 512-byte limit, with multi-byte characters and slashes near the end.
const longish = fc
  .tuple(fc.integer({ min: 505, max: 520 }), fc.constantFrom('a', 'a/', '.', '\u00e9', '..'))
  .map(([n, c]) => `x${c.repeat(n)}`.slice(0, n));
const dotted = fc
  .array(fc.constantFrom('a', '.', '..', '...', '.a', 'a.', 'T-1'), { minLength: 1, maxLength: 5 })
  .map((a) => a.join('/'));
const candidate = fc.oneof(hostile, longish, dotted);

describe('resource grammar', () => {
  test('accepts the design examples and refuses traversal, wildcards and encodings', () => {
    for (const s of ['tickets/T-42', 'a', 'repos/acme/api', 'x:y@z+=~.-_', '...', 'a'.repeat(512)])
      assert.equal(isValidResource(s), true, s);
    for (const s of [
      '',
      '/a',
      'a/',
      'a//b',
      'a/../b',
      '.',
      'tickets/*',
      'a%2fb',
      'a b',
      'é',
      'a'.repeat(513),
    ])
      assert.equal(isValidResource(s), false, s);
    assert.equal(isValidResource(undefined as unknown as string), false);
  });

  test('checkResource says why', () => {
    assert.deepEqual(checkResource('a/../b'), {
      ok: false,
      reason: 'the resource has a "." or ".." segment',
    });
    assert.deepEqual(checkResource('ok/T-1'), { ok: true });
  });

  test('property: checkResource, isValidResource and isResourceSegment follow the grammar', () => {
    fc.assert(
      fc.property(candidate, (s) => {
        assert.equal(checkResource(s).ok, refValid(s), JSON.stringify(s));
        assert.equal(isValidResource(s), refValid(s), JSON.stringify(s));
        assert.equal(isResourceSegment(s), refSegment(s), JSON.stringify(s));
      }),
      { numRuns: 2000 },
    );
  });
});

describe('resource templates', () => {
  test('placeholders fill one segment from string or integer arguments, dotted paths reach in', () => {
    assert.equal(compileResourceTemplate('tickets/{ticket_id}')({ ticket_id: 'T-42' }), 'tickets/T-42');
    assert.equal(compileResourceTemplate('t/{n}')({ n: 7 }), 't/7');
    assert.equal(
      compileResourceTemplate('r/{repo.owner}/{repo.name}')({ repo: { owner: 'a', name: 'b' } }),
      'r/a/b',
    );
    assert.equal(compileResourceTemplate('static/x')({}), 'static/x');
  });

  test('an invalid template throws TASKPASS_CONTRACT_TEMPLATE_INVALID', () => {
    for (const t of ['tickets/{id', 'a/{1x}', 'a/../{x}', 'a//{x}', '']) {
      assert.throws(
        () => compileResourceTemplate(t),
        (e) => e instanceof ContractError && e.code === 'TASKPASS_CONTRACT_TEMPLATE_INVALID',
        t,
      );
    }
  });

  test('property: a derived value never widens or escapes its segment', () => {
    const derive = compileResourceTemplate('items/{v}');
    fc.assert(
      fc.property(fc.oneof(hostile, dotted, fc.integer(), fc.double(), fc.constant(null)), (v) => {
        let out: string | undefined;
        try {
          out = derive({ v });
        } catch (e) {
          assert.ok(e instanceof ContractError && e.code === 'TASKPASS_CONTRACT_RESOURCE_UNDERIVABLE');
        }
        const ok =
          (typeof v === 'string' && refSegment(v)) || (typeof v === 'number' && Number.isSafeInteger(v));
        assert.equal(out, ok ? `items/${v}` : undefined, JSON.stringify(v));
      }),
      { numRuns: 1000 },
    );
  });

  test('inherited properties are not arguments', () => {
    assert.throws(
      () => compileResourceTemplate('x/{constructor}')({}),
      (e) => e instanceof ContractError && e.code === 'TASKPASS_CONTRACT_RESOURCE_UNDERIVABLE',
    );
  });

  test('checkedDeriver checks a user function like a template, keeping what it threw as cause', () => {
    const derive = checkedDeriver((a) => `repos/${a.owner}/${a.repo}`);
    assert.equal(derive({ owner: 'acme', repo: 'api' }), 'repos/acme/api');
    assert.throws(
      () => derive({ owner: '..', repo: 'api' }),
      (e) => e instanceof ContractError && e.code === 'TASKPASS_CONTRACT_RESOURCE_UNDERIVABLE',
    );
    const boom = new Error('boom');
    assert.throws(
      () =>
        checkedDeriver(() => {
          throw boom;
        })({}),
      (e) => e instanceof ContractError && e.cause === boom,
    );
  });
});
