// The broker and the verifier each validate resources (broker/src/policy/pattern.ts and
// broker/src/service.ts; verifier/src/resource.ts). Until they share one package, this property
// test catches any divergence: a resource one side accepts and the other refuses would make every
// such call fail closed at the verifier (or, worse, be checked by different rules).
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { compileResourceTemplate, isValidResource } from '@taskpass/verifier/resource';
import fc from 'fast-check';
import { checkResource, compilePattern, validateResource } from '@taskpass/broker';

const CHARS = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._~:@+=-';
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
  '\r',
  '\t',
  '\u0000',
  '\u2215',
  '\uff0f',
  '\u00e9',
  '\u0422',
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

const brokerService = (s: string) => {
  try {
    checkResource(s);
    return true;
  } catch {
    return false;
  }
};

describe('property: broker and verifier agree on the resource grammar', () => {
  test('what a valid resource is', () => {
    fc.assert(
      fc.property(candidate, (s) => {
        const verifier = isValidResource(s);
        assert.equal(validateResource(s).ok, verifier, `policy engine vs verifier on ${JSON.stringify(s)}`);
        assert.equal(brokerService(s), verifier, `broker service vs verifier on ${JSON.stringify(s)}`);
      }),
      { numRuns: 2000 },
    );
  });

  test('which values fill one segment of a placeholder', () => {
    const brokerPattern = compilePattern('items/{user.v}', 'resource');
    assert.ok(brokerPattern.ok);
    const derive = compileResourceTemplate('items/{v}');
    fc.assert(
      fc.property(fc.oneof(hostile, dotted), (v) => {
        let verifierValue: string | undefined;
        try {
          verifierValue = derive({ v });
        } catch {
          verifierValue = undefined;
        }
        const brokerValue = brokerPattern.pattern.render({ user: { sub: 's', claims: { v } } });
        assert.equal(brokerValue, verifierValue, JSON.stringify(v));
      }),
      { numRuns: 1000 },
    );
  });
});
