import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import { BROKER_ERRORS } from '../src/errors.ts';

test('BROKER_ERRORS and the broker section of docs/errors.md list the same codes and statuses', () => {
  const md = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  const start = md.indexOf('## Broker (TASKPASS_*)');
  assert.ok(start >= 0, 'docs/errors.md has a "## Broker (TASKPASS_*)" section');
  const next = md.indexOf('\n## ', start + 1);
  const section = md.slice(start, next < 0 ? undefined : next);
  const rows = new Map<string, number>();
  for (const m of section.matchAll(/^\|\s*`(TASKPASS_[A-Z_]+)`\s*\|\s*(\d{3})\s*\|/gm))
    rows.set(m[1]!, Number(m[2]));
  assert.deepEqual([...rows.keys()].sort(), Object.keys(BROKER_ERRORS).sort());
  for (const [code, { status }] of Object.entries(BROKER_ERRORS)) assert.equal(rows.get(code), status, code);
});
