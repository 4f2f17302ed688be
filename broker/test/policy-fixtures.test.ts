import assert from 'node:assert/strict';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { BROKER_ERRORS } from '../src/errors.ts';
import { runFixtures } from '../src/policy/index.ts';

const SHIPPED = resolve(dirname(fileURLToPath(import.meta.url)), '../../policies');

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function dirWith(files: Record<string, string>): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'taskpass-fixtures-'));
  dirs.push(d);
  await mkdir(join(d, 'fixtures'));
  for (const [n, c] of Object.entries(files)) await writeFile(join(d, n), c);
  return d;
}

const TEMPLATE = `id: t
owner: me@example.com
agents: ["spiffe://td.local/agents/a"]
delegation: forbidden
audience: https://svc.local/mcp
tools:
  - { tool: get, action: read, resources: ["items/*"] }
  - { tool: put, action: write, resources: ["items/*"], requires: [{ tool: get, same_resource: true }] }
`;
const CASE = `  - name: NAME
    agent: spiffe://td.local/agents/a
    audience: https://svc.local/mcp
    tool: TOOL
    action: ACTION
    resource: items/1
    expect: EXPECT
`;
const c = (name: string, tool: string, action: string, expect: string, extra = '') =>
  CASE.replace('NAME', name).replace('TOOL', tool).replace('ACTION', action).replace('EXPECT', expect) +
  extra;

describe('runFixtures', () => {
  test('every shipped fixture in policies/ passes, and every template has allow and deny cases', async () => {
    const r = await runFixtures(SHIPPED);
    assert.deepEqual(r.failures, [], r.report);
    assert.equal(r.ok, true);
    assert.ok(r.passed >= 20, r.report);
    for (const cov of r.coverage) {
      assert.ok(
        cov.allow > 0 && cov.deny > 0,
        `template ${cov.template} needs allow and deny fixtures: ${r.report}`,
      );
    }
    // Every denial code the engine can produce for a call is exercised by the shipped fixtures.
    const seen = new Set(r.cases.map((x) => x.actual));
    for (const code of [
      'allow',
      'TASKPASS_INVALID_RESOURCE',
      'TASKPASS_DENIED_NO_TEMPLATE',
      'TASKPASS_DELEGATION_REQUIRED',
      'TASKPASS_DENIED_USER',
      'TASKPASS_DENIED_AUDIENCE',
      'TASKPASS_DENIED_TOOL',
      'TASKPASS_DENIED_ACTION',
      'TASKPASS_DENIED_RESOURCE',
      'TASKPASS_DENIED_CALL_LIMIT',
      'TASKPASS_DENIED_PREREQUISITE',
      'TASKPASS_DENIED_TASK_AGE',
    ]) {
      assert.ok(seen.has(code), `no shipped fixture ends in ${code}`);
      if (code !== 'allow') assert.ok(code in BROKER_ERRORS);
    }
  });
  test('reports failing cases with expected vs actual and the reason', async () => {
    const d = await dirWith({
      't.yaml': TEMPLATE,
      'fixtures/f.yaml': `cases:\n${c('reads', 'get', 'read', 'allow')}${c('wrong', 'put', 'write', 'allow')}${c(
        'tpl',
        'get',
        'read',
        'allow',
        '    template: other\n',
      )}`,
    });
    const r = await runFixtures(d);
    assert.equal(r.ok, false);
    assert.equal(r.passed, 1);
    assert.deepEqual(
      r.failures.map((f) => [f.file, f.name]),
      [
        ['fixtures/f.yaml', 'wrong'],
        ['fixtures/f.yaml', 'tpl'],
      ],
    );
    assert.match(r.failures[0]!.message, /expected allow, got TASKPASS_DENIED_PREREQUISITE \(template "t"/);
    assert.match(r.failures[1]!.message, /expected template other, got t/);
    assert.match(r.report, /^ok {3}fixtures\/f\.yaml reads: allow \(t\)$/m);
    assert.match(r.report, /^FAIL fixtures\/f\.yaml wrong/m);
    assert.match(r.report, /1 passed, 2 failed$/);
  });
  test('history steps are replayed through the policies; explicit templates inject steps', async () => {
    const d = await dirWith({
      't.yaml': TEMPLATE,
      'fixtures/f.yaml': `cases:\n${c('after get', 'put', 'write', 'allow', '    history: [{ tool: get, resource: items/1 }]\n')}${c(
        'impossible history',
        'get',
        'read',
        'allow',
        '    history: [{ tool: put, action: write, resource: items/1 }]\n',
      )}${c('injected', 'put', 'write', 'allow', '    history: [{ tool: get, resource: items/1, template: t }]\n')}`,
    });
    const r = await runFixtures(d);
    assert.equal(r.passed, 2, r.report);
    assert.match(
      r.failures[0]!.message,
      /history\[0\] \(put on items\/1\) would be denied: TASKPASS_DENIED_PREREQUISITE/,
    );
  });
  test('policy load errors and bad fixture files are failures, not exceptions', async () => {
    const bad = await dirWith({
      't.yaml': TEMPLATE.replace('action: read', 'action: nope'),
      'fixtures/f.yaml': 'cases: []',
    });
    const r1 = await runFixtures(bad);
    assert.equal(r1.ok, false);
    assert.equal(r1.failures[0]!.file, 't.yaml');
    assert.match(r1.failures[0]!.message, /tools\[0\]\.action/);

    const badFix = await dirWith({
      't.yaml': TEMPLATE,
      'fixtures/f.yaml': `cases:\n${c('x', 'get', 'read', 'TASKPASS_NOPE')}`,
    });
    const r2 = await runFixtures(badFix);
    assert.equal(r2.ok, false);
    assert.equal(r2.failures[0]!.file, 'fixtures/f.yaml');
    assert.match(r2.failures[0]!.message, /cases\[0\]\.expect/);

    const none = await dirWith({ 't.yaml': TEMPLATE });
    const r3 = await runFixtures(none);
    assert.equal(r3.ok, false);
    assert.match(r3.report, /no fixture files/);
  });
});
