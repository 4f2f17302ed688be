// Naming decision points: the configuration defines them, templates refer to them, and a name
// nobody defined is refused at load (config invalid / policy invalid with file and path).
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, test } from 'node:test';
import { parse as parseYaml } from 'yaml';
import type { BrokerError } from '../src/errors.ts';
import { parseConfig } from '../src/config.ts';
import { DecisionPoints } from '../src/pdp/index.ts';
import { loadPolicyDir, PolicySet, parseTemplateFile } from '../src/policy/index.ts';

const base = { issuer: 'https://broker.test', trustDomain: 'td.local', keys: { allowPlaintext: true } };
const opa = {
  name: 'desk',
  kind: 'opa',
  url: 'http://127.0.0.1:8181/',
  path: 'taskpass/ticket_desk/decision',
};

test('decision points in the configuration: defaults, a global one, and names checked', () => {
  const c = parseConfig({ ...base, decisionPoints: [opa], decisionPoint: 'desk' });
  assert.deepEqual(c.decisionPoints[0], { ...opa, url: 'http://127.0.0.1:8181', timeoutMs: 250 });
  assert.equal(c.decisionPoint, 'desk');
  const invalid = (raw: Record<string, unknown>) =>
    assert.throws(
      () => parseConfig({ ...base, ...raw }),
      (e: BrokerError) => e.code === 'TASKPASS_CONFIG_INVALID' && Array.isArray(e.details?.issues),
    );
  invalid({ decisionPoints: [opa], decisionPoint: 'nope' });
  invalid({ decisionPoints: [opa, opa] });
  invalid({ decisionPoints: [{ ...opa, path: '/v1/data/x' }] });
  invalid({ decisionPoints: [{ ...opa, url: 'file:///etc/passwd' }] });
  invalid({ decisionPoints: [{ ...opa, kind: 'xacml' }] });
});

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});

const template = (id: string, dp?: string) => `id: ${id}
owner: me@example.com
agents: ["spiffe://td.local/agents/*"]
delegation: optional
audience: https://svc.local/mcp
${dp ? `decision_point: ${dp}\n` : ''}tools:
  - tool: get
    action: read
    resources: ["items/*"]
`;

test('a template naming a decision point the configuration does not define is refused with file and path', async () => {
  const d = await mkdtemp(join(tmpdir(), 'taskpass-pdp-'));
  dirs.push(d);
  await writeFile(join(d, 'a.yaml'), template('a', 'desk'));
  await writeFile(join(d, 'b.yaml'), template('b', 'elsewhere'));
  const r = await loadPolicyDir(d, { decisionPoints: ['desk'] });
  assert.equal(r.ok, false);
  assert.deepEqual(!r.ok && r.errors.map((e) => [e.file, e.path, e.line]), [['b.yaml', 'decision_point', 6]]);
  assert.match(!r.ok ? r.errors[0]!.message : '', /no decision point is named "elsewhere".*desk/);
  assert.equal((await loadPolicyDir(d, { decisionPoints: ['desk', 'elsewhere'] })).ok, true);
});

test('a call allowed by several templates needs every decision point they name, plus the global one', () => {
  const parse = (text: string) => {
    const r = parseTemplateFile(parseYaml(text));
    assert.ok(r.ok);
    return r.templates[0]!;
  };
  const set = PolicySet.from([
    parse(template('a', 'desk')),
    parse(template('b', 'cedar')),
    parse(template('c')),
  ]);
  const d = set.decide({
    agent: 'spiffe://td.local/agents/x',
    user: undefined,
    audience: 'https://svc.local/mcp',
    tool: 'get',
    action: 'read',
    resource: 'items/1',
    history: [] as never,
  });
  assert.ok(d.allow);
  assert.deepEqual(d.decisionPoints, ['cedar', 'desk']);
  const dps = new DecisionPoints([], { global: 'global' });
  assert.deepEqual(dps.needed(d.decisionPoints ?? []), ['global', 'cedar', 'desk']);
});
