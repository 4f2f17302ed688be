// Overlapping templates never weaken each other (issue #7, finding 9): when several templates allow a
// call, the token gets the strictest facts among them, and nothing depends on how ids sort.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import fc from 'fast-check';
import { type Decision, PolicySet } from '../src/policy/engine.ts';
import { type Template, type TemplateInput, TemplateSchema } from '../src/policy/schema.ts';
import type { IssuedCall } from '../src/store/types.ts';

const TD = 'spiffe://taskpass.local';
const BOT = `${TD}/agents/support-bot`;
const IDP = 'https://idp.taskpass.local';
const TICKETS = 'https://tickets.taskpass.local/mcp';
const alice = { iss: IDP, sub: 'alice', claims: { groups: ['support'] } };

const tpl = (t: TemplateInput): Template => TemplateSchema.parse(t);

const strict = (id: string): TemplateInput => ({
  id,
  owner: 'strict@taskpass.local',
  agents: [BOT],
  audience: TICKETS,
  ttl: '30s',
  tools: [
    { tool: 'get_ticket', action: 'read', resources: ['tickets/*'] },
    {
      tool: 'close_ticket',
      action: 'write',
      resources: ['tickets/*'],
      max_calls_per_task: 1,
      requires: [{ tool: 'get_ticket', same_resource: true }],
    },
  ],
});
const lenient = (id: string): TemplateInput => ({
  id,
  owner: 'lenient@taskpass.local',
  agents: [`${TD}/agents/*`],
  audience: TICKETS,
  ttl: '120s',
  tools: [{ tool: 'close_ticket', action: 'write', resources: ['tickets/**'], single_use: false }],
});

let n = 0;
const step = (tool: string, resource: string, template: string, action: IssuedCall['action'] = 'read') =>
  ({
    taskId: 't',
    jti: `j${n++}`,
    tool,
    resource,
    action,
    template,
    issuedAt: 0,
    expiresAt: 60,
  }) satisfies IssuedCall;

const close = (set: PolicySet, history: IssuedCall[]): Decision =>
  set.decide({
    agent: BOT,
    user: alice,
    audience: TICKETS,
    tool: 'close_ticket',
    action: 'write',
    resource: 'tickets/T-1',
    history,
  });

describe('overlapping templates', () => {
  test('both allow: shortest ttl, single use if either says so, both named — whichever id sorts first', () => {
    for (const [s, l] of [
      ['a-strict', 'z-lenient'],
      ['z-strict', 'a-lenient'],
    ] as const) {
      const set = PolicySet.from([tpl(lenient(l)), tpl(strict(s))]);
      const d = close(set, [step('get_ticket', 'tickets/T-1', s)]);
      const ids = [s, l].sort();
      assert.deepEqual(d, {
        allow: true,
        template: ids.join(' '),
        templates: ids,
        owner: 'lenient@taskpass.local, strict@taskpass.local',
        ttlSec: 30,
        singleUse: true,
        bindArguments: false,
      });
    }
  });
  test('a template whose conditions do not hold allows nothing and sets nothing', () => {
    const set = PolicySet.from([tpl(strict('a-strict')), tpl(lenient('z-lenient'))]);
    // Prerequisite missing: only the lenient grant applies (validate warns about this overlap).
    assert.deepEqual(close(set, []), {
      allow: true,
      template: 'z-lenient',
      templates: ['z-lenient'],
      owner: 'lenient@taskpass.local',
      ttlSec: 120,
      singleUse: false,
      bindArguments: false,
    });
    // Strict template's cap reached: likewise.
    const capped = close(set, [
      step('get_ticket', 'tickets/T-1', 'a-strict'),
      step('close_ticket', 'tickets/T-1', 'a-strict', 'write'),
    ]);
    assert.equal(capped.allow && capped.template, 'z-lenient');
  });
  test('past calls recorded under several templates count and satisfy prerequisites by audience', () => {
    const set = PolicySet.from([tpl(strict('a-strict')), tpl(lenient('z-lenient'))]);
    const both = 'a-strict z-lenient';
    const d = close(set, [step('get_ticket', 'tickets/T-1', both)]);
    assert.equal(d.allow && d.template, both, 'a multi-template record satisfies the prerequisite');
    const capped = close(set, [
      step('get_ticket', 'tickets/T-1', 'a-strict'),
      step('close_ticket', 'tickets/T-1', both, 'write'),
    ]);
    assert.equal(capped.allow && capped.template, 'z-lenient', 'a multi-template record counts to the cap');
    // A record naming a template that is gone still counts (fail closed) but proves nothing.
    const gone = close(set, [step('get_ticket', 'tickets/T-1', 'a-strict gone')]);
    assert.equal(gone.allow && gone.template, 'z-lenient');
  });
  test('session tokens: every admitting template named, the shortest ttl', () => {
    const set = PolicySet.from([tpl(lenient('a-lenient')), tpl(strict('z-strict'))]);
    assert.deepEqual(set.session(BOT, alice, TICKETS), {
      template: 'a-lenient z-strict',
      owner: 'lenient@taskpass.local, strict@taskpass.local',
      ttlSec: 30,
    });
  });
});

// ---- property: decisions do not depend on template order or on how ids sort --------------------

const NAMES = ['t-a', 't-b', 't-c', 't-d'];
const TOOLS = ['get_ticket', 'close_ticket'] as const;
const RESOURCES = ['tickets/T-1', 'tickets/T-2', 'tickets/x/y'];

const toolArb = (tool: (typeof TOOLS)[number]) =>
  fc.record({
    tool: fc.constant(tool),
    action: fc.constant(tool === 'get_ticket' ? ('read' as const) : ('write' as const)),
    resources: fc.subarray(['tickets/*', 'tickets/T-*', 'tickets/**', 'tickets/T-1'], { minLength: 1 }),
    single_use: fc.option(fc.boolean(), { nil: undefined }),
    max_calls_per_task: fc.option(fc.integer({ min: 1, max: 3 }), { nil: undefined }),
    requires:
      tool === 'get_ticket'
        ? fc.constant<{ tool: string; same_resource: boolean }[]>([])
        : fc.subarray([{ tool: 'get_ticket', same_resource: true }], { minLength: 0 }),
  });

/** A template without its id (ids are assigned by the property). */
const bodyArb = fc.record({
  agents: fc.subarray([BOT, `${TD}/agents/*`, `${TD}/agents/support-*`], { minLength: 1 }),
  delegation: fc.constantFrom('required' as const, 'optional' as const),
  users: fc.option(fc.constant<TemplateInput['users']>({ claims: { groups: ['support'] } }), {
    nil: undefined,
  }),
  audience: fc.constantFrom(TICKETS, TICKETS, 'https://kb.taskpass.local/mcp'),
  ttl: fc.integer({ min: 1, max: 120 }).map((s) => `${s}s`),
  max_task_ttl: fc.constantFrom('2m', '5m', '15m', '1h'),
  tools: fc
    .subarray([...TOOLS], { minLength: 1 })
    .chain((names) => fc.tuple(...names.map((t) => toolArb(t)))),
});

const caseArb = fc.record({
  bodies: fc.array(bodyArb, { minLength: 1, maxLength: NAMES.length }),
  // A permutation of the names: body i gets id NAMES[perm[i]].
  perm: fc.shuffledSubarray([0, 1, 2, 3], { minLength: 4, maxLength: 4 }),
  order: fc.func(fc.integer()),
  tool: fc.constantFrom(...TOOLS),
  resource: fc.constantFrom(...RESOURCES),
  user: fc.constantFrom(alice, { iss: IDP, sub: 'bob', claims: { groups: ['sales'] } }, undefined),
  taskAgeSec: fc.option(fc.integer({ min: 0, max: 4000 }), { nil: undefined }),
  // Past calls: tool, resource, and which bodies issued them (by index; may name a missing one).
  history: fc.array(
    fc.record({
      tool: fc.constantFrom(...TOOLS),
      resource: fc.constantFrom(...RESOURCES),
      by: fc.uniqueArray(fc.integer({ min: 0, max: NAMES.length }), { minLength: 1, maxLength: 2 }),
    }),
    { maxLength: 4 },
  ),
});

/** Decision facts with template ids mapped back to body indexes. */
function facts(d: Decision, indexOf: (id: string) => number) {
  return d.allow
    ? {
        allow: true,
        ttlSec: d.ttlSec,
        singleUse: d.singleUse,
        templates: d.template.split(' ').map(indexOf).sort(),
      }
    : { allow: false, code: d.code };
}

describe('property: decisions are independent of template order and id sorting', () => {
  test('renaming and reordering templates changes neither the decision nor the token facts', () => {
    fc.assert(
      fc.property(caseArb, (c) => {
        const decideWith = (name: (i: number) => string, reorder: boolean) => {
          const templates = c.bodies.map((b, i) => tpl({ ...b, id: name(i), owner: `o${i}@x` }));
          if (reorder) templates.sort((x, y) => c.order(x.id) - c.order(y.id));
          const set = PolicySet.from(templates);
          const history = c.history.map((h) =>
            step(
              h.tool,
              h.resource,
              h.by
                .map((i) => (i < c.bodies.length ? name(i) : 'gone'))
                .sort()
                .join(' '),
              h.tool === 'get_ticket' ? 'read' : 'write',
            ),
          );
          const d = set.decide({
            agent: BOT,
            user: c.user,
            audience: TICKETS,
            tool: c.tool,
            action: c.tool === 'get_ticket' ? 'read' : 'write',
            resource: c.resource,
            history,
            taskAgeSec: c.taskAgeSec,
          });
          return facts(d, (id) => c.bodies.findIndex((_, i) => name(i) === id));
        };
        const plain = decideWith((i) => NAMES[i]!, false);
        const renamed = decideWith((i) => NAMES[c.perm[i]!]!, true);
        assert.deepEqual(renamed, plain);
      }),
      { numRuns: 300 },
    );
  });
});

describe('shipped policies', () => {
  test('the triage agent gets tickets-bulk-triage’s 10 s single-use reads; others keep 60 s', async () => {
    const { loadPolicyDir } = await import('../src/policy/loader.ts');
    const { fileURLToPath } = await import('node:url');
    const r = await loadPolicyDir(fileURLToPath(new URL('../../policies', import.meta.url)));
    assert.ok(r.ok);
    const read = (agent: string) =>
      r.set.decide({
        agent,
        user: alice,
        audience: TICKETS,
        tool: 'get_ticket',
        action: 'read',
        resource: 'tickets/T-1',
        history: [],
      });
    const triage = read(`${TD}/agents/support/triage`);
    assert.ok(triage.allow);
    assert.deepEqual(
      [triage.ttlSec, triage.singleUse, triage.template],
      [10, true, 'tickets-bulk-triage tickets-support-read'],
    );
    const bot = read(BOT);
    assert.ok(bot.allow);
    assert.deepEqual([bot.ttlSec, bot.singleUse, bot.template], [60, false, 'tickets-support-read']);
  });
});

describe('max_task_ttl bounds each template’s own grants', () => {
  const short = (id: string): TemplateInput => ({
    id,
    owner: 'short@taskpass.local',
    agents: [BOT],
    delegation: 'optional',
    audience: TICKETS,
    ttl: '60s',
    max_task_ttl: '5m',
    tools: [{ tool: 'issue_refund', action: 'write', resources: ['tickets/*'] }],
  });
  const long = (id: string): TemplateInput => ({
    id,
    owner: 'long@taskpass.local',
    agents: [BOT],
    delegation: 'optional',
    audience: TICKETS,
    ttl: '60s',
    max_task_ttl: '1h',
    tools: [{ tool: 'get_ticket', action: 'read', resources: ['tickets/*'] }],
  });
  const set = PolicySet.from([tpl(short('refunds')), tpl(long('reads'))]);
  const at = (tool: string, taskAgeSec: number | undefined): Decision =>
    set.decide({
      agent: BOT,
      user: undefined,
      audience: TICKETS,
      tool,
      action: tool === 'get_ticket' ? 'read' : 'write',
      resource: 'tickets/T-1',
      history: [],
      taskAgeSec,
    });

  test('a task kept alive by a longer template does not stretch a shorter one', () => {
    assert.equal(set.maxTaskTtlSec(BOT, undefined), 3600, 'the task may live an hour');
    const late = at('issue_refund', 600);
    assert.equal(late.allow, false);
    assert.ok(!late.allow);
    assert.equal(late.code, 'TASKPASS_DENIED_TASK_AGE');
    assert.equal(late.template, 'refunds');
    assert.match(late.reason, /first 300s of a task \(max_task_ttl\) and this task was opened 600s ago/);
    assert.equal(at('get_ticket', 600).allow, true, 'the longer template still allows its own calls');
  });
  test('tokens expire by the end of the template’s max_task_ttl', () => {
    const d = at('issue_refund', 290);
    assert.ok(d.allow);
    assert.equal(d.ttlSec, 10);
    assert.equal(set.session(BOT, undefined, TICKETS, 290)?.ttlSec, 10);
    assert.equal(set.session(BOT, undefined, TICKETS, 600)?.template, 'reads');
  });
  test('overlapping templates: the one past its max_task_ttl allows nothing; validate warns', () => {
    const both = PolicySet.from([
      tpl(short('refunds')),
      tpl({ ...short('refunds-late'), owner: 'late@taskpass.local', max_task_ttl: '1h' }),
    ]);
    const d = both.decide({
      agent: BOT,
      user: undefined,
      audience: TICKETS,
      tool: 'issue_refund',
      action: 'write',
      resource: 'tickets/T-1',
      history: [],
      taskAgeSec: 600,
    });
    assert.equal(d.allow && d.template, 'refunds-late');
    assert.deepEqual(
      both.warnings.map((w) => [w.template, w.widens, w.widened.map((x) => x.detail)]),
      [['refunds-late', 'refunds', ['allows calls up to 3600s into a task, not 300s']]],
    );
  });
});

describe('the broker passes the task’s age to the policy', () => {
  test('POST /v1/tasks/:id/tokens is refused with TASKPASS_DENIED_TASK_AGE once the template’s max_task_ttl passed', async () => {
    const { AGENT, TICKETS: AUD, testBroker } = await import('./app-support.ts');
    const agentTpl = (t: Omit<TemplateInput, 'agents' | 'audience'>): TemplateInput => ({
      ...t,
      agents: [AGENT],
      audience: AUD,
    });
    const policy = PolicySet.from([
      tpl(
        agentTpl({
          id: 'refunds',
          owner: 'o',
          delegation: 'optional',
          max_task_ttl: '5m',
          tools: [{ tool: 'issue_refund', action: 'write', resources: ['tickets/*'] }],
        }),
      ),
      tpl(
        agentTpl({
          id: 'reads',
          owner: 'o',
          delegation: 'optional',
          max_task_ttl: '1h',
          tools: [{ tool: 'get_ticket', action: 'read', resources: ['tickets/*'] }],
        }),
      ),
    ]);
    const b = await testBroker({}, { policy });
    try {
      const task = await b.app.inject({
        method: 'POST',
        url: '/v1/tasks',
        headers: b.mtls(AGENT),
        payload: { purpose: 'age' },
      });
      assert.equal(task.statusCode, 201, task.body);
      const id = task.json().task_id as string;
      const refund = () =>
        b.app.inject({
          method: 'POST',
          url: `/v1/tasks/${id}/tokens`,
          headers: b.mtls(AGENT),
          payload: { audience: AUD, tool: 'issue_refund', resource: 'tickets/T-1', action: 'write' },
        });
      b.clock.now += 290_000;
      const early = await refund();
      assert.equal(early.statusCode, 200, early.body);
      assert.ok(early.json().expires_in <= 10, early.body);
      b.clock.now += 310_000;
      const late = await refund();
      assert.equal(late.statusCode, 403, late.body);
      assert.equal(late.json().code, 'TASKPASS_DENIED_TASK_AGE');
    } finally {
      await b.app.close();
    }
  });
});
