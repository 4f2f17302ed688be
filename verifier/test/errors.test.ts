import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { VERIFIER_ERRORS, VerifierError } from '../src/errors.ts';

test('VERIFIER_ERRORS and the verifier section of docs/errors.md list the same codes and statuses', () => {
  const md = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  const start = md.indexOf('## Verifier (TASKPASS_VERIFY_*)');
  assert.ok(start >= 0, 'docs/errors.md has a "## Verifier (TASKPASS_VERIFY_*)" section');
  const next = md.indexOf('\n## ', start + 1);
  const section = md.slice(start, next < 0 ? undefined : next);
  const rows = new Map<string, number>();
  for (const m of section.matchAll(/^\|\s*`(TASKPASS_VERIFY_[A-Z_]+)`\s*\|\s*(\d{3})\s*\|/gm)) {
    rows.set(m[1]!, Number(m[2]));
  }
  assert.deepEqual([...rows.keys()].sort(), Object.keys(VERIFIER_ERRORS).sort());
  for (const [code, { status }] of Object.entries(VERIFIER_ERRORS))
    assert.equal(rows.get(code), status, code);
});

test('every code maps to the RFC 6750 error its status implies', () => {
  for (const code of Object.keys(VERIFIER_ERRORS) as (keyof typeof VERIFIER_ERRORS)[]) {
    const e = new VerifierError(code, 'x');
    const expected =
      code === 'TASKPASS_VERIFY_MISSING_TOKEN'
        ? undefined
        : (
            { 400: 'invalid_request', 401: 'invalid_token', 403: 'insufficient_scope' } as Record<
              number,
              string
            >
          )[e.status];
    assert.equal(e.oauthError, expected, code);
    assert.deepEqual(Object.keys(e.toJSON()), ['code', 'message']);
  }
  assert.equal(
    new VerifierError('TASKPASS_VERIFY_INTERNAL', 'secret detail').toJSON().message,
    'internal error',
  );
});
