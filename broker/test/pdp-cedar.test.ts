import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import type { Action } from '@taskpass/contract';
import type { BrokerError } from '../src/errors.ts';
import { type CedarReloadReport, createCedarDecisionPoint } from '../src/pdp/cedar.ts';
import { runCli } from '../src/cli.ts';
import { fixtureInput, parsePdpFixtures, runPdpFixtures } from '../src/pdp/fixtures.ts';
import type { PdpInput } from '../src/pdp/types.ts';

const root = fileURLToPath(new URL('../..', import.meta.url));
const dirs: string[] = [];
after(async () => {
  for (const d of dirs) await rm(d, { recursive: true, force: true });
});
async function dirWith(files: Record<string, string>): Promise<string> {
  const d = await mkdtemp(join(tmpdir(), 'taskpass-cedar-'));
  dirs.push(d);
  for (const [n, c] of Object.entries(files)) await writeFile(join(d, n), c);
  return d;
}

const SCHEMA = `namespace Taskpass {
  entity Agent { trust_domain: String, path: String };
  entity Resource;
  action read, write, admin;
  action get_ticket in [read] appliesTo { principal: Agent, resource: Resource, context: {} };
}`;
const READS_ONLY = `@id("reads") permit (principal, action in Taskpass::Action::"read", resource);`;

function call(over: { tool?: string; action?: Action; args?: Record<string, unknown> } = {}): PdpInput {
  return fixtureInput({
    name: 'call',
    agent: 'spiffe://taskpass.local/agents/support-bot',
    user: { iss: 'https://idp.taskpass.local', sub: 'alice', claims: { groups: ['support'], region: 'eu' } },
    audience: 'https://tickets.taskpass.local/mcp',
    tool: over.tool ?? 'get_ticket',
    action: over.action ?? 'read',
    resource: 'tickets/T-1002',
    time: '2026-12-02T14:30:00Z',
    templates: ['tickets-support-read'],
    arguments: over.args,
    expect: 'allow',
  });
}

describe('Cedar decision point', () => {
  test('allows what a policy permits and names the policy', async () => {
    const dp = await createCedarDecisionPoint({
      name: 'desk',
      policies: await dirWith({ 'a.cedar': READS_ONLY }),
      watch: false,
    });
    assert.equal(dp.kind, 'cedar');
    assert.deepEqual(await dp.decide(call()), { allow: true, engine: 'desk', policy: 'reads' });
    await dp.close();
  });

  test('denies what no policy permits, and what a forbid takes away, naming the forbid', async () => {
    const policies = await dirWith({
      'a.cedar': `${READS_ONLY}
forbid (principal, action, resource) when { context.user in Taskpass::Group::"support" && context.action_class == "read" && resource == Taskpass::Resource::"tickets/T-1" };`,
    });
    const dp = await createCedarDecisionPoint({ name: 'desk', policies, watch: false });
    const none = await dp.decide(call({ tool: 'update_ticket', action: 'write' }));
    assert.deepEqual(none, {
      allow: false,
      code: 'TASKPASS_PDP_DENIED',
      reason: 'cedar desk: no policy permits',
      engine: 'desk',
    });
    const input = call();
    input.resource.id = 'tickets/T-1';
    const forbidden = await dp.decide(input);
    assert.equal(forbidden.allow, false);
    assert.equal(!forbidden.allow && forbidden.reason, 'cedar desk: denied by policy a.cedar:2');
    assert.equal(forbidden.policy, 'a.cedar:2');
    await dp.close();
  });

  test('a forbid that errors fails closed instead of being skipped', async () => {
    const policies = await dirWith({
      'a.cedar': `permit (principal, action, resource);
@id("cap") forbid (principal, action, resource) when { context.arguments.amount > 100 };`,
    });
    const dp = await createCedarDecisionPoint({ name: 'desk', policies, watch: false });
    const d = await dp.decide(call()); // no arguments: context.arguments does not exist
    assert.equal(d.allow, false);
    assert.equal(!d.allow && d.code, 'TASKPASS_PDP_DENIED');
    assert.match(
      !d.allow ? d.reason : '',
      /^cedar desk: forbid policy cap errored; failing closed \(policy cap errored: .*arguments/,
    );
    assert.equal((await dp.decide(call({ args: { amount: 5 } }))).allow, true);
    assert.equal((await dp.decide(call({ args: { amount: 500 } }))).allow, false);
    await dp.close();
  });

  test('maps the call: agent attributes, user claims and groups, action classes, decimals, time', async () => {
    const policies = await dirWith({
      'a.cedar': `permit (principal, action in Taskpass::Action::"write", resource)
when {
  principal.trust_domain == "taskpass.local" && principal.path == "/agents/support-bot" &&
  context.user.claims.region == "eu" && context.user in Taskpass::Group::"support" &&
  context.user.iss == "https://idp.taskpass.local" && context.user.sub == "alice" &&
  context.audience == "https://tickets.taskpass.local/mcp" && context.action_class == "write" &&
  context.templates.contains("tickets-support-read") && context.weekday == 3 &&
  context.time == datetime("2026-12-02T14:30:00Z") &&
  context.arguments.amount.lessThan(decimal("54.5")) && context.arguments.tags.contains("x") &&
  resource == Taskpass::Resource::"tickets/T-1002" && action == Taskpass::Action::"issue_refund"
};`,
    });
    const dp = await createCedarDecisionPoint({ name: 'desk', policies, watch: false });
    const d = await dp.decide(
      call({ tool: 'issue_refund', action: 'write', args: { amount: 54.25, tags: ['x'], gone: null } }),
    );
    assert.deepEqual(d, { allow: true, engine: 'desk', policy: 'a.cedar:1' });
    await dp.close();
  });

  test('garbage input is an engine error (TASKPASS_PDP_UNAVAILABLE), never a throw', async () => {
    const dp = await createCedarDecisionPoint({
      name: 'desk',
      policies: await dirWith({ 'a.cedar': READS_ONLY }),
      watch: false,
    });
    const cases: [string, (i: PdpInput) => void, RegExp][] = [
      [
        'an argument posing as an entity',
        (i) => {
          i.context.arguments = { x: { __entity: { type: 'Taskpass::User', id: 'root' } } };
        },
        /reserved by Cedar/,
      ],
      [
        'a float Cedar cannot hold',
        (i) => {
          i.context.arguments = { x: 1 / 3 };
        },
        /arguments\.x: 0\.333/,
      ],
      [
        'a bad time',
        (i) => {
          i.context.time = 'yesterday';
        },
        /context\.time/,
      ],
      [
        'no SPIFFE ID',
        (i) => {
          i.subject.id = 'alice';
        },
        /subject\.id/,
      ],
      [
        'no input at all',
        (i) => {
          Object.assign(i, { action: null });
        },
        /action/,
      ],
    ];
    for (const [name, spoil, reason] of cases) {
      const input = call();
      spoil(input);
      const d = await dp.decide(input);
      assert.equal(d.allow, false, name);
      assert.equal(!d.allow && d.code, 'TASKPASS_PDP_UNAVAILABLE', name);
      assert.match(!d.allow ? d.reason : '', /^cedar desk: /, name);
      assert.match(!d.allow ? d.reason : '', reason, name);
    }
    await dp.close();
  });

  test('a malformed policy at start is refused with file, line and column', async () => {
    const policies = await dirWith({
      'ok.cedar': READS_ONLY,
      'bad.cedar': '// one\npermit (principal, action, resource)\nwhen { context.x == };\n',
    });
    await assert.rejects(
      createCedarDecisionPoint({ name: 'desk', policies, watch: false }),
      (err: BrokerError) => {
        assert.equal(err.code, 'TASKPASS_POLICY_INVALID');
        assert.match(
          err.message,
          /^invalid Cedar policies for decision point "desk" in .*:\nbad\.cedar:3:21: .*unexpected token `}`/,
        );
        assert.deepEqual(
          (err.details?.errors as { file: string; line: number; column: number }[] | undefined)?.map((e) => [
            e.file,
            e.line,
            e.column,
          ]),
          [['bad.cedar', 3, 21]],
        );
        return true;
      },
    );
  });

  test('positions count characters, not UTF-8 bytes', async () => {
    const policies = await dirWith({
      'a.cedar':
        '// Änderungen für Rückerstattungen\npermit (principal, action, resource) when { "é" == };\n',
    });
    await assert.rejects(
      createCedarDecisionPoint({ name: 'desk', policies, watch: false }),
      /\na\.cedar:2:52: unexpected token/,
    );
  });

  test('other load errors: no policies, duplicate ids, templates, request entity types in entities.json', async () => {
    const cases: [Record<string, string>, RegExp][] = [
      [{}, /no \*\.cedar policy files/],
      [
        { 'a.cedar': READS_ONLY, 'b.cedar': `\n${READS_ONLY}` },
        /^b\.cedar:2:1: duplicate policy id "reads" \(also at a\.cedar:1\)/m,
      ],
      [
        { 'a.cedar': 'permit (principal == ?principal, action, resource);' },
        /policy templates are not supported/,
      ],
      [
        {
          'a.cedar': READS_ONLY,
          'entities.json': '[{"uid":{"type":"Taskpass::User","id":"x"},"attrs":{},"parents":[]}]',
        },
        /entities\.json: entity \[0\]: Taskpass::User entities come from the request/,
      ],
      [{ 'a.cedar': READS_ONLY, 'entities.json': '{' }, /entities\.json: invalid JSON/],
    ];
    for (const [files, message] of cases) {
      await assert.rejects(
        createCedarDecisionPoint({ name: 'd', policies: await dirWith(files), watch: false }),
        message,
      );
    }
  });

  test('policies are validated against the schema, errors pointing into the policy file', async () => {
    const schema = join(await dirWith({ 's.cedarschema': SCHEMA }), 's.cedarschema');
    const policies = await dirWith({
      'a.cedar': `${READS_ONLY}\npermit (principal, action, resource)\nwhen { principal.region == "eu" };\n`,
    });
    await assert.rejects(
      createCedarDecisionPoint({ name: 'desk', policies, schema, watch: false }),
      (err: BrokerError) => {
        assert.match(err.message, /\na\.cedar:3:8: .*region/);
        return true;
      },
    );
    const good = await dirWith({ 'a.cedar': READS_ONLY });
    const dp = await createCedarDecisionPoint({ name: 'desk', policies: good, schema, watch: false });
    assert.equal((await dp.decide(call())).allow, true);
    await dp.close();
    const badSchema = join(
      await dirWith({ 's.cedarschema': 'namespace Taskpass {\n  entity Agent {\n};' }),
      's.cedarschema',
    );
    await assert.rejects(
      createCedarDecisionPoint({ name: 'desk', policies: good, schema: badSchema, watch: false }),
      /\ns\.cedarschema:\d+:\d+: /,
    );
  });

  test('a reload with a syntax error keeps the last good set and reports where; a good one changes the version', async () => {
    const policies = await dirWith({ 'a.cedar': READS_ONLY });
    const reports: CedarReloadReport[] = [];
    const dp = await createCedarDecisionPoint({
      name: 'desk',
      policies,
      watch: false,
      onReload: (r) => reports.push(r),
    });
    const v1 = dp.version();
    assert.match(v1, /^[0-9a-f]{32}$/);
    await writeFile(
      join(policies, 'a.cedar'),
      `${READS_ONLY}\npermit (principal, action, resource) when { true }`,
    );
    const bad = await dp.reload();
    assert.equal(bad.ok, false);
    assert.deepEqual(!bad.ok && bad.errors.map((e) => [e.file, e.line]), [['a.cedar', 2]]);
    assert.equal(dp.version(), v1);
    assert.equal((await dp.decide(call())).allow, true);
    assert.equal((await dp.decide(call({ tool: 'update_ticket', action: 'write' }))).allow, false);
    await writeFile(join(policies, 'a.cedar'), 'permit (principal, action, resource);');
    const good = await dp.reload();
    assert.deepEqual(good, { ok: true, version: dp.version(), files: ['a.cedar'] });
    assert.notEqual(dp.version(), v1);
    assert.equal((await dp.decide(call({ tool: 'update_ticket', action: 'write' }))).allow, true);
    assert.deepEqual(
      reports.map((r) => r.ok),
      [true, false, true],
    );
    await dp.close();
  });

  test('watches the directory and reloads on change', async () => {
    const policies = await dirWith({ 'a.cedar': READS_ONLY });
    let reloaded!: (r: CedarReloadReport) => void;
    const next = new Promise<CedarReloadReport>((resolve) => {
      reloaded = resolve;
    });
    let first = true;
    const dp = await createCedarDecisionPoint({
      name: 'desk',
      policies,
      debounceMs: 20,
      onReload: (r) => {
        if (first) first = false;
        else reloaded(r);
      },
    });
    const v1 = dp.version();
    // The watcher does not keep the process alive (a broker has its server for that); this test does.
    const alive = setInterval(() => {}, 1000);
    await writeFile(
      join(policies, 'b.cedar'),
      '@id("writes") permit (principal, action in Taskpass::Action::"write", resource);',
    );
    const r = await next;
    clearInterval(alive);
    assert.deepEqual(r.ok && r.files, ['a.cedar', 'b.cedar']);
    assert.notEqual(dp.version(), v1);
    assert.deepEqual(await dp.decide(call({ tool: 'update_ticket', action: 'write' })), {
      allow: true,
      engine: 'desk',
      policy: 'writes',
    });
    await dp.close();
  });

  test("the ticket desk's Cedar policies pass their fixtures", async () => {
    const dir = join(root, 'policies/cedar');
    const dp = await createCedarDecisionPoint({
      name: 'tickets',
      policies: dir,
      schema: join(dir, 'tickets.cedarschema'),
      watch: false,
    });
    const cases = parsePdpFixtures(await readFile(join(dir, 'fixtures/tickets.yaml'), 'utf8'));
    assert.ok(cases.length >= 10);
    assert.deepEqual(await runPdpFixtures(dp, cases), []);
    await dp.close();
    // The same fixtures through the admin CLI, as a policy author runs them.
    const out: string[] = [];
    const err: string[] = [];
    const code = await runCli(
      ['policy', 'test', dir, '--engine', 'cedar', '--schema', join(dir, 'tickets.cedarschema')],
      { out: (s) => out.push(s), err: (s) => err.push(s), env: {} },
    );
    assert.equal(code, 0, err.join('\n'));
    assert.deepEqual(out, [`cedar: ${cases.length} passed, 0 failed`]);
  });

  test('a long stateful run (thousands of decisions, reloads in between) exits cleanly', async () => {
    // In a child process: a V8 abort kills the process and cannot be caught in this one.
    const child = spawn(
      process.execPath,
      [
        '--conditions=taskpass:source',
        '--import',
        'tsx',
        join(root, 'broker/test/fixtures/cedar-long-run.ts'),
        '6000',
      ],
      { cwd: root, stdio: ['ignore', 'pipe', 'pipe'] },
    );
    let out = '';
    child.stdout.on('data', (b) => {
      out += b;
    });
    child.stderr.on('data', (b) => {
      out += b;
    });
    const [code, signal] = await once(child, 'exit');
    assert.deepEqual({ code, signal }, { code: 0, signal: null }, out);
    assert.match(out, /"calls":6000,"allow":\d+,"denied":\d+/);
  });
});
