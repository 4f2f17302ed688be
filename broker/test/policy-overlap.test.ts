// `taskpass policy validate` warns about a template that widens another's rule for the same agent,
// tool and resource (issue #7, finding 9); the warnings ride on the loaded policy set.
import assert from 'node:assert/strict';
import { mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import fc from 'fast-check';
import { runCli } from '../src/cli.ts';
import {
  compilePattern,
  loadPolicyDir,
  PolicySet,
  PolicyWatcher,
  type PolicyWarning,
  patternsOverlap,
} from '../src/policy/index.ts';
import { type TemplateInput, TemplateSchema } from '../src/policy/schema.ts';

const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function dirWith(files: Record<string, string>): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'taskpass-overlap-'));
  dirs.push(d);
  for (const [n, c] of Object.entries(files)) await writeFile(join(d, n), c);
  return d;
}

const STRICT = `id: strict
owner: strict@example.com
agents: ["spiffe://td.local/agents/bot"]
audience: https://svc.local/mcp
ttl: 30s
tools:
  - tool: get
    action: read
    resources: ["items/*"]
  - tool: close
    action: write
    resources: ["items/*"]
    max_calls_per_task: 1
    requires: [{ tool: get, same_resource: true }]
`;
const LENIENT = `id: lenient
owner: lenient@example.com
agents: ["spiffe://td.local/agents/*"]
audience: https://svc.local/mcp
ttl: 120s
tools:
  - tool: close
    action: write
    resources: ["items/**"]
    single_use: false
`;

const tpl = (t: TemplateInput) => TemplateSchema.parse(t);
const base = (over: Partial<TemplateInput>): TemplateInput => ({
  id: 'a',
  owner: 'o@example.com',
  agents: ['spiffe://td.local/agents/bot'],
  audience: 'https://svc.local/mcp',
  tools: [{ tool: 'close', action: 'write', resources: ['items/*'], max_calls_per_task: 1 }],
  ...over,
});
const warningsOf = (...ts: TemplateInput[]): readonly PolicyWarning[] => PolicySet.from(ts.map(tpl)).warnings;

describe('overlap warnings', () => {
  test('names both templates, the tool, what is widened, and file and line of each', async () => {
    const d = await dirWith({ 'strict.yaml': STRICT, 'lenient.yaml': LENIENT });
    const r = await loadPolicyDir(d);
    assert.ok(r.ok);
    assert.equal(r.set.warnings.length, 1, JSON.stringify(r.set.warnings));
    const w = r.set.warnings[0]!;
    assert.equal(w.template, 'lenient');
    assert.equal(w.widens, 'strict');
    assert.equal(w.tool, 'close');
    assert.equal(w.action, 'write');
    assert.deepEqual(
      w.widened.map((x) => x.condition),
      ['requires', 'max_calls_per_task', 'ttl', 'single_use'],
    );
    assert.deepEqual(w.at, { file: 'lenient.yaml', path: 'tools[0]', line: 7, col: 5 });
    assert.deepEqual(w.other, { file: 'strict.yaml', path: 'tools[1]', line: 10, col: 5 });
    assert.match(w.message, /template "lenient" widens template "strict" \(strict\.yaml:10:5 tools\[1\]\)/);
    assert.match(w.message, /tool "close" \(write\) on https:\/\/svc\.local\/mcp/);
    assert.match(w.message, /no prerequisite "get" on the same resource/);
    assert.match(w.message, /no call cap \(the other allows 1 per task\)/);
    assert.match(w.message, /tokens live 120s, not 30s/);
    assert.match(w.message, /reusable, not single use/);
  });

  test('list files: the path and line point into templates[i]', async () => {
    const list = `templates:\n${[STRICT, LENIENT]
      .map((t) =>
        t
          .trimEnd()
          .split('\n')
          .map((l, i) => (i === 0 ? `  - ${l}` : `    ${l}`))
          .join('\n'),
      )
      .join('\n')}\n`;
    const r = await loadPolicyDir(await dirWith({ 'all.yaml': list }));
    assert.ok(r.ok, JSON.stringify(!r.ok && r.errors));
    const w = r.set.warnings[0]!;
    assert.equal(w.at?.path, 'templates[1].tools[0]');
    assert.equal(w.at?.file, 'all.yaml');
    assert.equal(w.at?.line, 22); // 1 (templates:) + 14 (strict) + 7
  });

  test('a longer ttl or a reusable token alone does not widen: the stricter facts win where both allow', () => {
    assert.deepEqual(
      warningsOf(
        base({ id: 'a', ttl: '30s' }),
        base({
          id: 'b',
          ttl: '120s',
          tools: [
            {
              tool: 'close',
              action: 'write',
              resources: ['items/**'],
              max_calls_per_task: 1,
              single_use: false,
            },
          ],
        }),
      ),
      [],
    );
  });

  test('no warning without overlap: other agents, resources, audience, tool or action', () => {
    const lax = { tool: 'close', action: 'write' as const, resources: ['items/*'] };
    assert.deepEqual(
      warningsOf(base({}), base({ id: 'b', agents: ['spiffe://td.local/agents/other'], tools: [lax] })),
      [],
    );
    assert.deepEqual(
      warningsOf(base({}), base({ id: 'b', agents: ['spiffe://other.td/agents/bot'], tools: [lax] })),
      [],
    );
    assert.deepEqual(
      warningsOf(base({}), base({ id: 'b', tools: [{ ...lax, resources: ['notes/*', 'items'] }] })),
      [],
    );
    assert.deepEqual(
      warningsOf(base({}), base({ id: 'b', audience: 'https://x.local/mcp', tools: [lax] })),
      [],
    );
    assert.deepEqual(warningsOf(base({}), base({ id: 'b', tools: [{ ...lax, tool: 'open' }] })), []);
    assert.deepEqual(warningsOf(base({}), base({ id: 'b', tools: [{ ...lax, action: 'admin' }] })), []);
    // Overlap through wildcards and prefixes is found.
    const hit = warningsOf(
      base({ agents: ['spiffe://td.local/agents/support-*'] }),
      base({ id: 'b', agents: ['spiffe://td.local/agents/**'], tools: [{ ...lax, resources: ['it*/T-*'] }] }),
    );
    assert.deepEqual(
      hit.map((w) => [w.template, w.widens]),
      [['b', 'a']],
    );
  });

  test('user and delegation conditions, prerequisites on any resource, higher caps', () => {
    const users = warningsOf(
      base({ users: { issuer: 'https://idp', claims: { groups: ['leads'], tier: 'gold' } } }),
      base({
        id: 'b',
        users: { issuer: ['https://idp', 'https://other'], claims: { groups: ['leads', 'all'] } },
      }),
    );
    assert.deepEqual(
      users.map((w) => w.widened.map((x) => x.detail)),
      [
        [
          'accepts user tokens from https://other (not only https://idp)',
          'user claim "groups" may also be "all"',
          'no condition on user claim "tier"',
        ],
      ],
    );
    const autonomous = warningsOf(base({}), base({ id: 'b', delegation: 'optional' }));
    assert.deepEqual(
      autonomous[0]?.widened.map((x) => x.condition),
      ['delegation'],
    );
    const wf = warningsOf(
      base({
        tools: [
          {
            tool: 'close',
            action: 'write',
            resources: ['items/*'],
            max_calls_per_task: 2,
            requires: [{ tool: 'get', same_resource: true }],
          },
          { tool: 'get', action: 'read', resources: ['items/*'] },
        ],
      }),
      base({
        id: 'b',
        tools: [
          {
            tool: 'close',
            action: 'write',
            resources: ['items/*'],
            max_calls_per_task: 3,
            requires: [{ tool: 'get' }],
          },
        ],
      }),
    );
    assert.deepEqual(
      wf[0]?.widened.map((x) => x.detail),
      ['prerequisite "get" on any resource, not the same one', 'call cap 3 per task, higher than 2'],
    );
  });

  test('taskpass policy validate prints the warnings but succeeds; --strict fails on them', async () => {
    const d = await dirWith({ 'strict.yaml': STRICT, 'lenient.yaml': LENIENT });
    const out: string[] = [];
    const err: string[] = [];
    const io = { out: (s: string) => out.push(s), err: (s: string) => err.push(s), env: {} };
    assert.equal(await runCli(['policy', 'validate', d], io), 0);
    assert.match(
      err.join('\n'),
      /^lenient\.yaml:7:5 tools\[0\]: warning: template "lenient" widens template "strict"/m,
    );
    assert.match(out.join('\n'), /ok: 2 template\(s\) in 2 file\(s\) .*, 1 warning\(s\)/);
    assert.equal(await runCli(['policy', 'validate', d, '--strict'], io), 1);
  });

  test('the watcher reports and logs warnings without refusing the set', async () => {
    const d = await dirWith({ 'strict.yaml': STRICT, 'lenient.yaml': LENIENT });
    const warned: string[] = [];
    const logger = {
      info: () => {},
      error: () => {},
      warn: (_o: object, m?: string) => warned.push(m ?? ''),
    };
    const w = new PolicyWatcher(d, { watch: false, logger });
    try {
      const r = await w.reload();
      assert.ok(r.ok);
      assert.equal(r.warnings.length, 1);
      assert.equal(w.current().warnings.length, 1);
      assert.match(warned.join('\n'), /1 overlap warning\(s\):\nlenient\.yaml:7:5 tools\[0\]: warning:/);
    } finally {
      await w.close();
    }
  });
});

// ---- patternsOverlap is sound: whenever some path matches both patterns, it says so -------------

const LITS = ['a', 'b', 'ab', 'T-1', 'T-12'];
const segArb = fc.oneof(
  fc.constantFrom(...LITS),
  fc.constantFrom('*', 'a*', 'T-*', 'T-1*'),
  fc.constant('{user.sub}'),
);
const patArb = fc
  .tuple(fc.array(segArb, { minLength: 1, maxLength: 3 }), fc.boolean())
  .map(([segs, globstar]) => [...segs, ...(globstar ? ['**'] : [])].join('/'));
const pathArb = fc.array(fc.constantFrom(...LITS, 'abc', 'T-123', 'x'), { minLength: 1, maxLength: 5 });

describe('property: patternsOverlap', () => {
  test('a path (and user) matching both patterns means they overlap; overlap is symmetric', () => {
    fc.assert(
      fc.property(patArb, patArb, fc.array(pathArb, { minLength: 1, maxLength: 6 }), (a, b, paths) => {
        const pa = compilePattern(a, 'resource');
        const pb = compilePattern(b, 'resource');
        assert.ok(pa.ok && pb.ok);
        const overlap = patternsOverlap(pa.pattern, pb.pattern);
        assert.equal(patternsOverlap(pb.pattern, pa.pattern), overlap);
        for (const p of paths) {
          for (const sub of LITS) {
            const ctx = { user: { sub, claims: {} } };
            const s = p.join('/');
            if (pa.pattern.match(s, ctx) && pb.pattern.match(s, ctx)) {
              assert.ok(overlap, `${a} and ${b} both match ${s} (sub ${sub}) but were reported disjoint`);
            }
          }
        }
      }),
      { numRuns: 500 },
    );
  });
  test('precise on literals and prefixes', () => {
    const o = (a: string, b: string) => {
      const pa = compilePattern(a, 'resource');
      const pb = compilePattern(b, 'resource');
      assert.ok(pa.ok && pb.ok);
      return patternsOverlap(pa.pattern, pb.pattern);
    };
    assert.equal(o('a/b', 'a/b'), true);
    assert.equal(o('a/b', 'a/c'), false);
    assert.equal(o('a/T-*', 'a/T-1'), true);
    assert.equal(o('a/T-*', 'a/T-'), false, 'a prefix needs at least one more character');
    assert.equal(o('a/T-*', 'a/U*'), false);
    assert.equal(o('a/T-*', 'a/T-1*'), true);
    assert.equal(o('a/**', 'a'), false, '** needs at least one segment');
    assert.equal(o('a/**', 'a/b/c/d'), true);
    assert.equal(o('a/*/c', 'a/**'), true);
    assert.equal(o('a/*', 'a/*/c'), false);
    assert.equal(o('{agent.id}/x', 'agents/bot/x'), true);
  });
});

describe('GET /admin/v1/policies/warnings', () => {
  test('admins see the loaded set’s warnings; other workloads are refused', async () => {
    const { ADMIN, AGENT, testBroker } = await import('./app-support.ts');
    const d = await dirWith({ 'strict.yaml': STRICT, 'lenient.yaml': LENIENT });
    const r = await loadPolicyDir(d);
    assert.ok(r.ok);
    const b = await testBroker({}, { policy: r.set });
    try {
      const get = (h: Record<string, string>) =>
        b.app.inject({ method: 'GET', url: '/admin/v1/policies/warnings', headers: h });
      const ok = await get(b.mtls(ADMIN));
      assert.equal(ok.statusCode, 200, ok.body);
      const [w, ...rest] = ok.json().warnings;
      assert.equal(rest.length, 0);
      assert.equal(w.template, 'lenient');
      assert.equal(w.widens, 'strict');
      assert.equal(w.tool, 'close');
      assert.deepEqual(w.at, { file: 'lenient.yaml', path: 'tools[0]', line: 7, col: 5 });
      assert.match(w.message, /no prerequisite "get" on the same resource/);
      const no = await get(b.mtls(AGENT));
      assert.equal(no.statusCode, 403);
      assert.equal(no.json().code, 'TASKPASS_FORBIDDEN_ADMIN');
    } finally {
      await b.app.close();
    }
    const plain = await testBroker();
    try {
      const res = await plain.app.inject({
        method: 'GET',
        url: '/admin/v1/policies/warnings',
        headers: plain.mtls(ADMIN),
      });
      assert.deepEqual(res.json(), { warnings: [] });
    } finally {
      await plain.app.close();
    }
  });
});
