import assert from 'node:assert/strict';
import { mkdtemp, rm, unlink, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { BrokerError } from '../src/errors.ts';
import {
  loadPolicyDir,
  type PolicyError,
  PolicyWatcher,
  parsePolicyText,
  type ReloadReport,
} from '../src/policy/index.ts';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function dirWith(files: Record<string, string>): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'taskpass-policy-'));
  dirs.push(d);
  for (const [n, c] of Object.entries(files)) await writeFile(join(d, n), c);
  return d;
}

const GOOD = `id: good
owner: me@example.com
agents: ["spiffe://td.local/agents/*"]
audience: https://svc.local/mcp
tools:
  - tool: get
    action: read
    resources: ["items/*"]
  - tool: put
    action: write
    resources: ["items/*"]
    requires: [{ tool: get, same_resource: true }]
`;

const errs = (text: string): PolicyError[] => {
  const r = parsePolicyText(text, 'f.yaml');
  assert.equal(r.ok, false, 'expected errors');
  return r.ok ? [] : r.errors;
};
const one = (text: string, path: string, re: RegExp) => {
  const e = errs(text);
  const hit = e.find((x) => x.path === path);
  assert.ok(hit, `no error at ${path}: ${JSON.stringify(e)}`);
  assert.match(hit.message, re);
  return hit;
};

describe('template schema and defaults', () => {
  test('defaults: delegation required, ttl 60s, max_task_ttl 15m, single_use by action', () => {
    const r = parsePolicyText(GOOD, 'f.yaml');
    assert.ok(r.ok);
    const t = r.templates[0]!;
    assert.equal(t.delegation, 'required');
    assert.equal(t.ttlSec, 60);
    assert.equal(t.maxTaskTtlSec, 900);
    assert.equal(t.tools[0]!.singleUse, false);
    assert.equal(t.tools[1]!.singleUse, true);
    assert.deepEqual(t.tools[1]!.requires, [{ tool: 'get', sameResource: true }]);
  });
  test('durations', () => {
    const r = parsePolicyText(GOOD.replace('tools:', 'ttl: 2m\nmax_task_ttl: 1h\ntools:'), 'f.yaml');
    assert.ok(r.ok);
    assert.equal(r.templates[0]!.ttlSec, 120);
    assert.equal(r.templates[0]!.maxTaskTtlSec, 3600);
    one(GOOD.replace('tools:', 'ttl: 60\ntools:'), 'ttl', /expected string|invalid/i);
    one(GOOD.replace('tools:', 'ttl: 1h30m\ntools:'), 'ttl', /invalid duration/);
    one(GOOD.replace('tools:', 'ttl: 2h\ntools:'), 'ttl', /exceeds/);
    one(GOOD.replace('tools:', 'ttl: 20m\nmax_task_ttl: 10m\ntools:'), 'ttl', /must not exceed max_task_ttl/);
  });
  test('vault_secret: a plain Vault path, absent by default', () => {
    const withSecret = (path: string) =>
      GOOD.replace(
        '    resources: ["items/*"]\n  - tool: put',
        `    resources: ["items/*"]\n    vault_secret: ${path}\n  - tool: put`,
      );
    const r = parsePolicyText(withSecret('database/creds/ticket-desk'), 'f.yaml');
    assert.ok(r.ok);
    assert.equal(r.templates[0]!.tools[0]!.vaultSecret, 'database/creds/ticket-desk');
    assert.equal(r.templates[0]!.tools[1]!.vaultSecret, undefined);
    for (const bad of [
      'database',
      'database/../sys/raw',
      '/database/creds/x',
      'database/creds/x?y',
      'a/./b',
    ]) {
      one(withSecret(JSON.stringify(bad)), 'tools[0].vault_secret', /Vault path/);
    }
  });
  test('strict: unknown keys are errors, with their path', () => {
    one(GOOD.replace('tools:', 'colour: blue\ntools:'), '', /colour/);
    one(
      GOOD.replace('    action: read\n', '    action: read\n    resouces: ["x"]\n'),
      'tools[0]',
      /resouces/,
    );
  });
  test('field errors carry the JSON path, the reason and the line', () => {
    const e = one(
      GOOD.replace('items/*"]\n  - tool: put', 'items/../x"]\n  - tool: put'),
      'tools[0].resources[0]',
      /"\." and "\.\."/,
    );
    assert.equal(e.line, 8);
    one(GOOD.replace('action: write', 'action: delete'), 'tools[1].action', /read|write|admin/);
    one(GOOD.replace('"spiffe://td.local/agents/*"', '"spiffe://*/agents/x"'), 'agents[0]', /trust domain/);
    one(GOOD.replace('https://svc.local/mcp', 'not a url'), 'audience', /absolute URI/);
    one(GOOD.replace('id: good', 'id: Good Template'), 'id', /ids are/);
    one(GOOD.replace('owner: me@example.com\n', ''), 'owner', /expected string/i);
    one(
      GOOD.replace('tool: put', 'tool: get\n    '.trimEnd()).replace('action: write', 'action: read'),
      'tools[1]',
      /listed twice/,
    );
    one(
      GOOD.replace('requires: [{ tool: get, same_resource: true }]', 'requires: [{ tool: put }]'),
      'tools[1].requires[0].tool',
      /itself/,
    );
    one(
      GOOD.replace('tools:', 'delegation: forbidden\nusers: { claims: { g: [x] } }\ntools:'),
      'users',
      /forbidden/,
    );
    one(
      GOOD.replace('tools:', 'delegation: forbidden\ntools:').replace(
        '"items/*"]\n  - tool: put',
        '"u/{user.sub}"]\n  - tool: put',
      ),
      'tools[0].resources[0]',
      /never match/,
    );
  });
  test('list files report templates[i] paths', () => {
    const list = `templates:\n${GOOD.split('\n')
      .map((l, i) => (l ? (i === 0 ? `  - ${l}` : `    ${l}`) : l))
      .join('\n')}`;
    const ok = parsePolicyText(list, 'f.yaml');
    assert.ok(ok.ok, JSON.stringify(ok));
    one(list.replace('action: write', 'action: nope'), 'templates[0].tools[1].action', /read|write|admin/);
  });
  test('YAML syntax errors give line and column', () => {
    const e = errs('id: x\nowner: [unclosed\nagents: y\n');
    assert.ok(e[0]!.line !== undefined && e[0]!.col !== undefined);
    assert.match(e[0]!.message, /YAML syntax error at line \d+, column \d+/);
    assert.match(errs('')[0]!.message, /empty/);
    assert.match(errs('id: a\nid: b\n')[0]!.message, /YAML syntax error/);
    assert.match(errs('a: 1\n---\nb: 2\n')[0]!.message, /YAML syntax error/);
  });
  test('alias bombs are refused', () => {
    const bomb = ['a: &a [x,x,x,x,x,x,x,x,x]'];
    for (let i = 0; i < 8; i++)
      bomb.push(
        `${String.fromCharCode(98 + i)}: &${String.fromCharCode(98 + i)} [*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)},*${String.fromCharCode(97 + i)}]`,
      );
    assert.match(errs(bomb.join('\n'))[0]!.message, /alias|YAML/i);
  });
});

describe('loadPolicyDir', () => {
  test('loads *.yaml and *.yml, ignores dot-files and sub-directories', async () => {
    const d = await dirWith({
      'a.yaml': GOOD,
      'b.yml': GOOD.replace('id: good', 'id: good2'),
      '.hidden.yaml': 'garbage: [',
      'notes.txt': 'ignored',
    });
    const r = await loadPolicyDir(d);
    assert.ok(r.ok, JSON.stringify(r));
    assert.deepEqual(r.files, ['a.yaml', 'b.yml']);
    assert.deepEqual(
      r.set.templates.map((t) => t.id),
      ['good', 'good2'],
    );
  });
  test('duplicate ids across files name both files', async () => {
    const d = await dirWith({ 'a.yaml': GOOD, 'b.yaml': GOOD });
    const r = await loadPolicyDir(d);
    assert.equal(r.ok, false);
    if (r.ok) return;
    assert.deepEqual(r.errors, [
      { file: 'b.yaml', path: 'id', message: 'duplicate template id "good" (also in a.yaml)' },
    ]);
  });
  test('a requirement no template can meet is an error', async () => {
    const d = await dirWith({ 'a.yaml': GOOD.replace('tool: get, same', 'tool: fetch, same') });
    const r = await loadPolicyDir(d);
    assert.equal(r.ok, false);
    if (!r.ok) assert.equal(r.errors[0]!.path, 'tools[1].requires[0].tool');
  });
  test('a missing directory is an error, not an exception', async () => {
    const r = await loadPolicyDir('/nonexistent/taskpass/policies');
    assert.equal(r.ok, false);
  });
  test('every bad file is reported, not just the first', async () => {
    const d = await dirWith({
      'a.yaml': 'id: [',
      'b.yaml': GOOD.replace('action: read', 'action: x'),
      'c.yaml': GOOD,
    });
    const r = await loadPolicyDir(d);
    assert.equal(r.ok, false);
    if (!r.ok) assert.deepEqual([...new Set(r.errors.map((e) => e.file))], ['a.yaml', 'b.yaml']);
  });
});

describe('PolicyWatcher', () => {
  test('start, reload on demand, last good set kept on a bad reload', async () => {
    const d = await dirWith({ 'a.yaml': GOOD });
    const logs: { level: string; obj: object; msg?: string }[] = [];
    const reports: ReloadReport[] = [];
    const w = new PolicyWatcher(d, {
      watch: false,
      logger: {
        info: (obj, msg) => logs.push({ level: 'info', obj, ...(msg ? { msg } : {}) }),
        error: (obj, msg) => logs.push({ level: 'error', obj, ...(msg ? { msg } : {}) }),
      },
      onReload: (r) => reports.push(r),
    });
    assert.equal(w.current().templates.length, 0, 'denies everything before start');
    await w.start();
    const first = w.current();
    assert.deepEqual(
      first.templates.map((t) => t.id),
      ['good'],
    );

    const rejected: ReloadReport[] = [];
    w.on('rejected', (r: ReloadReport) => rejected.push(r));
    await writeFile(join(d, 'a.yaml'), GOOD.replace('action: read', 'action: rad'));
    await assert.rejects(w.reload(), (err: unknown) => {
      assert.ok(err instanceof BrokerError);
      assert.equal(err.code, 'TASKPASS_POLICY_INVALID');
      assert.match(err.message, /a\.yaml:\d+:\d+ tools\[0\]\.action/);
      return true;
    });
    assert.equal(w.current(), first, 'the last good set stays in force');
    assert.equal(rejected.length, 1);
    assert.equal(reports.at(-1)?.ok, false);
    const errLog = logs.find((l) => l.level === 'error');
    assert.ok(errLog);
    assert.match(errLog.msg ?? '', /keeping the last good/);

    await writeFile(join(d, 'a.yaml'), GOOD.replace('id: good', 'id: better'));
    const ok = await w.reload();
    assert.equal(ok.ok, true);
    assert.deepEqual(
      w.current().templates.map((t) => t.id),
      ['better'],
    );
    await w.close();
  });
  test('start rejects on an invalid directory', async () => {
    const d = await dirWith({ 'a.yaml': 'nope: [' });
    const w = new PolicyWatcher(d, { watch: false });
    await assert.rejects(w.start(), /TASKPASS_POLICY_INVALID|invalid policies/);
    assert.equal(w.current().templates.length, 0);
    await w.close();
  });
  test('reloads on file changes (debounced) and keeps the last good set on a broken edit', async () => {
    const d = await dirWith({ 'a.yaml': GOOD });
    const w = new PolicyWatcher(d, { debounceMs: 30 });
    await w.start();
    const next = (ev: 'reloaded' | 'rejected') =>
      new Promise<ReloadReport>((resolve, reject) => {
        const t = setTimeout(() => reject(new Error(`no ${ev} event`)), 5000);
        w.once(ev, (r: ReloadReport) => {
          clearTimeout(t);
          resolve(r);
        });
      });
    let p = next('reloaded');
    await writeFile(join(d, 'b.yaml'), GOOD.replace('id: good', 'id: second'));
    await p;
    assert.deepEqual(
      w.current().templates.map((t) => t.id),
      ['good', 'second'],
    );
    const before = w.current();
    p = next('rejected');
    await writeFile(join(d, 'b.yaml'), 'id: second\nowner: [');
    const bad = await p;
    assert.equal(bad.ok, false);
    if (!bad.ok) assert.equal(bad.errors[0]!.file, 'b.yaml');
    assert.equal(w.current(), before);
    p = next('reloaded');
    await unlink(join(d, 'b.yaml'));
    await p;
    assert.deepEqual(
      w.current().templates.map((t) => t.id),
      ['good'],
    );
    await w.close();
  });
});
