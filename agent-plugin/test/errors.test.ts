import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import {
  AGENT_ERRORS,
  AgentPluginError,
  BrokerError,
  isTaskpassDenial,
  TaskpassDeniedError,
} from '../src/errors.ts';

test('AGENT_ERRORS and the agent plugin section of docs/errors.md list the same codes', () => {
  const md = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  const start = md.indexOf('## Agent plugin (TASKPASS_AGENT_*)');
  assert.ok(start >= 0, 'docs/errors.md has a "## Agent plugin (TASKPASS_AGENT_*)" section');
  const next = md.indexOf('\n## ', start + 1);
  const section = md.slice(start, next < 0 ? undefined : next);
  const rows = [...section.matchAll(/^\|\s*`(TASKPASS_AGENT_[A-Z_]+)`\s*\|/gm)].map((m) => m[1]!);
  assert.deepEqual(rows.sort(), Object.keys(AGENT_ERRORS).sort());
});

test('error classes carry code, status, reason and template', () => {
  const e = new AgentPluginError('TASKPASS_AGENT_TASK_NOT_OPEN', 'task t1 is completed');
  assert.equal(e.code, 'TASKPASS_AGENT_TASK_NOT_OPEN');
  assert.match(e.message, /^TASKPASS_AGENT_TASK_NOT_OPEN: /);

  const d = new TaskpassDeniedError(403, {
    code: 'TASKPASS_DENIED_RESOURCE',
    message: 'not on this resource',
    template: 'tickets-support',
  });
  assert.ok(d instanceof BrokerError);
  assert.deepEqual(
    [d.code, d.status, d.reason, d.template, d.name],
    ['TASKPASS_DENIED_RESOURCE', 403, 'not on this resource', 'tickets-support', 'TaskpassDeniedError'],
  );
  assert.equal(new TaskpassDeniedError(403, { code: 'X', message: 'm', reason: 'r' }).reason, 'r');
  assert.ok(isTaskpassDenial(d));
  assert.ok(isTaskpassDenial({ ...d, name: 'TaskpassDeniedError', code: d.code, reason: d.reason }));
  assert.ok(!isTaskpassDenial(new BrokerError(404, { code: 'TASKPASS_TASK_NOT_FOUND', message: 'x' })));
  assert.ok(!isTaskpassDenial(null));
});
