import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import type { DecideInput, Decision } from '../src/policy/engine.ts';
import { PolicySet } from '../src/policy/engine.ts';
import { type Template, type TemplateInput, TemplateSchema } from '../src/policy/schema.ts';
import type { IssuedCall } from '../src/store/types.ts';

const TD = 'spiffe://taskpass.local';
const BOT = `${TD}/agents/support-bot`;
const FAMILY = `${TD}/agents/support/triage`;
const REPORTER = `${TD}/agents/nightly-reporter`;
const IDP = 'https://idp.taskpass.local';
const TICKETS = 'https://tickets.taskpass.local/mcp';
const alice = { iss: IDP, sub: 'alice', claims: { groups: ['support'], tenant: 'acme' } };
const lead = { iss: IDP, sub: 'lena', claims: { groups: ['support', 'support-leads'] } };

const tpl = (t: TemplateInput): Template => TemplateSchema.parse(t);

const base: TemplateInput = {
  id: 'support',
  owner: 'support@taskpass.local',
  agents: [BOT, `${TD}/agents/support/*`],
  users: { issuer: IDP, claims: { groups: ['support'] } },
  audience: TICKETS,
  ttl: '60s',
  max_task_ttl: '15m',
  tools: [
    { tool: 'get_ticket', action: 'read', resources: ['tickets/*'] },
    { tool: 'list_tickets', action: 'read', resources: ['tickets'] },
    {
      tool: 'close_ticket',
      action: 'write',
      resources: ['tickets/*'],
      max_calls_per_task: 2,
      requires: [{ tool: 'get_ticket', same_resource: true }],
    },
    { tool: 'note', action: 'write', resources: ['notes/{user.tenant}/{user.sub}/*'], single_use: false },
    { tool: 'touch', action: 'write', resources: ['tickets/*'], requires: [{ tool: 'list_tickets' }] },
  ],
};
const refunds: TemplateInput = {
  id: 'refunds',
  owner: 'support@taskpass.local',
  agents: [BOT],
  users: { issuer: IDP, claims: { groups: 'support-leads' } },
  audience: TICKETS,
  ttl: '30s',
  max_task_ttl: '10m',
  tools: [
    {
      tool: 'issue_refund',
      action: 'write',
      resources: ['tickets/*'],
      max_calls_per_task: 1,
      requires: [{ tool: 'get_ticket', same_resource: true }],
    },
  ],
};
const reporter: TemplateInput = {
  id: 'reporter',
  owner: 'ops@taskpass.local',
  agents: [REPORTER],
  delegation: 'forbidden',
  audience: TICKETS,
  max_task_ttl: '1h',
  tools: [{ tool: 'list_tickets', action: 'read', resources: ['tickets'] }],
};
const optional: TemplateInput = {
  id: 'optional',
  owner: 'x@taskpass.local',
  agents: [`${TD}/agents/helper`],
  delegation: 'optional',
  users: { claims: { groups: ['support'] } },
  audience: 'https://kb.taskpass.local/mcp',
  tools: [{ tool: 'search', action: 'read', resources: ['kb/**'] }],
};

const set = PolicySet.from([tpl(base), tpl(refunds), tpl(reporter), tpl(optional)]);

let jti = 0;
const step = (tool: string, resource: string, template = 'support', action: IssuedCall['action'] = 'read') =>
  ({
    taskId: 't',
    jti: `j${jti++}`,
    tool,
    resource,
    action,
    template,
    issuedAt: 0,
    expiresAt: 60,
  }) satisfies IssuedCall;

const call = (over: Partial<DecideInput>): Decision =>
  set.decide({
    agent: BOT,
    user: alice,
    audience: TICKETS,
    tool: 'get_ticket',
    action: 'read',
    resource: 'tickets/T-1',
    history: [],
    ...over,
  });

const denied = (d: Decision, code: string, template?: string) => {
  assert.equal(d.allow, false, JSON.stringify(d));
  if (d.allow) return;
  assert.equal(d.code, code, d.reason);
  assert.equal(d.template, template, d.reason);
  assert.ok(d.reason.length > 10);
  if (template) assert.ok(d.reason.includes(`"${template}"`), `reason names the template: ${d.reason}`);
};

describe('PolicySet.decide', () => {
  test('allows a matching call with template, owner, ttl and single-use defaults', () => {
    assert.deepEqual(call({}), {
      allow: true,
      template: 'support',
      templates: ['support'],
      owner: 'support@taskpass.local',
      ttlSec: 60,
      singleUse: false,
      bindArguments: false,
    });
    const w = call({ tool: 'close_ticket', action: 'write', history: [step('get_ticket', 'tickets/T-1')] });
    assert.equal(w.allow && w.singleUse, true, 'write defaults to single use');
    const n = call({ tool: 'note', action: 'write', resource: 'notes/acme/alice/1' });
    assert.equal(n.allow && n.singleUse, false, 'single_use: false is honoured');
  });
  test('deny by default: an empty set denies everything', () => {
    denied(PolicySet.empty().decide({ ...baseInput(), history: [] }), 'TASKPASS_DENIED_NO_TEMPLATE');
  });
  test('TASKPASS_INVALID_RESOURCE before anything else', () => {
    denied(call({ resource: 'tickets/../admin' }), 'TASKPASS_INVALID_RESOURCE');
    denied(call({ agent: 'spiffe://nobody/x', resource: 'tickets%2F..' }), 'TASKPASS_INVALID_RESOURCE');
  });
  test('TASKPASS_DENIED_NO_TEMPLATE: agent not covered (or not a SPIFFE ID)', () => {
    denied(call({ agent: `${TD}/agents/other` }), 'TASKPASS_DENIED_NO_TEMPLATE');
    denied(call({ agent: `${TD}/agents/support/a/b` }), 'TASKPASS_DENIED_NO_TEMPLATE');
    denied(call({ agent: 'spiffe://evil.example/agents/support-bot' }), 'TASKPASS_DENIED_NO_TEMPLATE');
    denied(call({ agent: `${TD}/agents/support/..` }), 'TASKPASS_DENIED_NO_TEMPLATE');
    denied(call({ agent: 'not a spiffe id' }), 'TASKPASS_DENIED_NO_TEMPLATE');
  });
  test('TASKPASS_DELEGATION_REQUIRED: no user for a delegated template', () => {
    denied(call({ user: undefined }), 'TASKPASS_DELEGATION_REQUIRED', 'support');
  });
  test('TASKPASS_DENIED_USER: issuer, claims, and users on autonomous templates', () => {
    denied(call({ user: { ...alice, iss: 'https://evil' } }), 'TASKPASS_DENIED_USER', 'support');
    denied(call({ user: { ...alice, claims: { groups: ['sales'] } } }), 'TASKPASS_DENIED_USER', 'support');
    denied(call({ user: { ...alice, claims: {} } }), 'TASKPASS_DENIED_USER', 'support');
    denied(call({ user: { ...alice, claims: { groups: 'support-x' } } }), 'TASKPASS_DENIED_USER', 'support');
    denied(
      call({ agent: REPORTER, tool: 'list_tickets', resource: 'tickets' }),
      'TASKPASS_DENIED_USER',
      'reporter',
    );
    // Scalar claim equal to a value is fine.
    assert.equal(call({ user: { ...alice, claims: { groups: 'support' } } }).allow, true);
  });
  test('TASKPASS_DENIED_AUDIENCE / TOOL / ACTION / RESOURCE', () => {
    // Ties on the call side go to a template whose user conditions hold.
    denied(call({ audience: 'https://billing/mcp' }), 'TASKPASS_DENIED_AUDIENCE', 'support');
    denied(call({ tool: 'delete_ticket', action: 'admin' }), 'TASKPASS_DENIED_TOOL', 'support');
    denied(call({ tool: 'delete_ticket', action: 'admin', user: lead }), 'TASKPASS_DENIED_TOOL', 'refunds');
    denied(call({ action: 'write' }), 'TASKPASS_DENIED_ACTION', 'support');
    denied(call({ action: 'admin' }), 'TASKPASS_DENIED_ACTION', 'support');
    denied(call({ resource: 'customers/1' }), 'TASKPASS_DENIED_RESOURCE', 'support');
    denied(call({ resource: 'tickets/T-1/x' }), 'TASKPASS_DENIED_RESOURCE', 'support');
  });
  test('placeholders follow the verified user', () => {
    const note = { tool: 'note', action: 'write' as const };
    assert.equal(call({ ...note, resource: 'notes/acme/alice/1' }).allow, true);
    denied(call({ ...note, resource: 'notes/acme/bob/1' }), 'TASKPASS_DENIED_RESOURCE', 'support');
    denied(call({ ...note, resource: 'notes/other/alice/1' }), 'TASKPASS_DENIED_RESOURCE', 'support');
    const evil = { ...alice, sub: 'a/*', claims: { ...alice.claims, tenant: '*' } };
    denied(call({ ...note, user: evil, resource: 'notes/x/a/1' }), 'TASKPASS_DENIED_RESOURCE', 'support');
    denied(call({ ...note, user: evil, resource: 'notes/*/a/*/1' }), 'TASKPASS_INVALID_RESOURCE');
  });
  test('TASKPASS_DENIED_PREREQUISITE: same resource, any resource, same audience', () => {
    const close = { tool: 'close_ticket', action: 'write' as const };
    denied(call(close), 'TASKPASS_DENIED_PREREQUISITE', 'support');
    denied(
      call({ ...close, history: [step('get_ticket', 'tickets/T-2')] }),
      'TASKPASS_DENIED_PREREQUISITE',
      'support',
    );
    assert.equal(call({ ...close, history: [step('get_ticket', 'tickets/T-1')] }).allow, true);
    // A step recorded under a template for another audience, or an unknown template, does not count.
    denied(
      call({ ...close, history: [step('get_ticket', 'tickets/T-1', 'optional')] }),
      'TASKPASS_DENIED_PREREQUISITE',
      'support',
    );
    denied(
      call({ ...close, history: [step('get_ticket', 'tickets/T-1', 'gone')] }),
      'TASKPASS_DENIED_PREREQUISITE',
      'support',
    );
    // Without same_resource, any earlier list_tickets will do.
    const touch = { tool: 'touch', action: 'write' as const };
    denied(call(touch), 'TASKPASS_DENIED_PREREQUISITE', 'support');
    assert.equal(call({ ...touch, history: [step('list_tickets', 'tickets')] }).allow, true);
  });
  test('TASKPASS_DENIED_CALL_LIMIT counts issued calls of the tool in this task', () => {
    const close = { tool: 'close_ticket', action: 'write' as const };
    const h = [
      step('get_ticket', 'tickets/T-1'),
      step('close_ticket', 'tickets/T-1', 'support', 'write'),
      step('close_ticket', 'tickets/T-2', 'support', 'write'),
    ];
    denied(call({ ...close, history: h }), 'TASKPASS_DENIED_CALL_LIMIT', 'support');
    // Calls issued under a template that has since disappeared still count (fail closed).
    const h2 = [
      step('get_ticket', 'tickets/T-1'),
      step('close_ticket', 'x/1', 'gone'),
      step('close_ticket', 'x/2', 'gone'),
    ];
    denied(call({ ...close, history: h2 }), 'TASKPASS_DENIED_CALL_LIMIT', 'support');
    // Calls on another audience do not.
    const h3 = [
      step('get_ticket', 'tickets/T-1'),
      step('close_ticket', 'x/1', 'optional'),
      step('close_ticket', 'x/2', 'optional'),
    ];
    assert.equal(call({ ...close, history: h3 }).allow, true);
    // A limit failure is reported before a missing prerequisite.
    const h4 = [
      step('close_ticket', 'tickets/T-8', 'support', 'write'),
      step('close_ticket', 'tickets/T-9', 'support', 'write'),
    ];
    denied(call({ ...close, history: h4 }), 'TASKPASS_DENIED_CALL_LIMIT', 'support');
  });
  test('the closest template wins: a refund by a non-lead is DENIED_USER from the refunds template', () => {
    const refund = {
      tool: 'issue_refund',
      action: 'write' as const,
      history: [step('get_ticket', 'tickets/T-1')],
    };
    denied(call(refund), 'TASKPASS_DENIED_USER', 'refunds');
    const ok = call({ ...refund, user: lead });
    assert.equal(ok.allow && ok.template, 'refunds');
    assert.equal(ok.allow && ok.ttlSec, 30);
    denied(
      call({
        ...refund,
        user: lead,
        history: [...refund.history, step('issue_refund', 'tickets/T-0', 'refunds', 'write')],
      }),
      'TASKPASS_DENIED_CALL_LIMIT',
      'refunds',
    );
    denied(call({ ...refund, agent: FAMILY, user: lead }), 'TASKPASS_DENIED_TOOL', 'support');
    // The reason also names every other template that covered the agent, so the denial does not
    // read as if one unrelated template were the whole story.
    const d = call(refund);
    assert.ok(!d.allow && /\(also considered: [^)]*\bsupport\b/.test(d.reason), !d.allow ? d.reason : '');
  });
  test('delegation optional: with or without a user, user conditions apply when there is one', () => {
    const kb = {
      agent: `${TD}/agents/helper`,
      audience: 'https://kb.taskpass.local/mcp',
      tool: 'search',
      resource: 'kb/a/b',
    };
    assert.equal(call({ ...kb, user: undefined }).allow, true);
    assert.equal(call({ ...kb }).allow, true);
    denied(
      call({ ...kb, user: { ...alice, claims: { groups: ['x'] } } }),
      'TASKPASS_DENIED_USER',
      'optional',
    );
  });
  test('autonomous template allows without a user', () => {
    const d = call({ agent: REPORTER, user: undefined, tool: 'list_tickets', resource: 'tickets' });
    assert.equal(d.allow && d.template, 'reporter');
    denied(
      call({ agent: REPORTER, user: undefined, tool: 'get_ticket', resource: 'tickets/1' }),
      'TASKPASS_DENIED_TOOL',
      'reporter',
    );
  });
  test('never throws on hostile input', () => {
    for (const s of ['', 'a'.repeat(100_000), '\u0000', '{user.sub}', '**']) {
      assert.doesNotThrow(() => call({ agent: s, audience: s, tool: s, resource: s }));
    }
  });
});

function baseInput() {
  return {
    agent: BOT,
    user: alice,
    audience: TICKETS,
    tool: 'get_ticket',
    action: 'read' as const,
    resource: 'tickets/1',
  };
}

describe('PolicySet.admits / ceiling / maxTaskTtlSec / session', () => {
  test('admits', () => {
    assert.deepEqual(set.admits(BOT, alice), { ok: true });
    assert.deepEqual(set.admits(REPORTER, undefined), { ok: true });
    const none = set.admits(`${TD}/agents/other`, alice);
    assert.equal(!none.ok && none.code, 'TASKPASS_DENIED_NO_TEMPLATE');
    const noUser = set.admits(BOT, undefined);
    assert.equal(!noUser.ok && noUser.code, 'TASKPASS_DELEGATION_REQUIRED');
    const badUser = set.admits(BOT, { ...alice, claims: { groups: ['sales'] } });
    assert.equal(!badUser.ok && badUser.code, 'TASKPASS_DENIED_USER');
    const withUser = set.admits(REPORTER, alice);
    assert.equal(!withUser.ok && withUser.code, 'TASKPASS_DENIED_USER');
  });
  test('ceiling lists admitting templates with placeholders substituted', () => {
    assert.deepEqual(set.ceiling(BOT, alice), [
      {
        template: 'support',
        audience: TICKETS,
        tools: [
          { tool: 'get_ticket', action: 'read', resources: ['tickets/*'] },
          { tool: 'list_tickets', action: 'read', resources: ['tickets'] },
          { tool: 'close_ticket', action: 'write', resources: ['tickets/*'] },
          { tool: 'note', action: 'write', resources: ['notes/acme/alice/*'] },
          { tool: 'touch', action: 'write', resources: ['tickets/*'] },
        ],
      },
    ]);
    const leadCeiling = set.ceiling(BOT, lead);
    assert.deepEqual(
      leadCeiling.map((c) => c.template),
      ['refunds', 'support'],
    );
    // lena has no tenant claim: the note resource cannot be rendered, so the tool is left out.
    assert.equal(
      leadCeiling[1]?.tools.find((t) => t.tool === 'note'),
      undefined,
    );
    // A user whose claim cannot be a segment loses the placeholder resource (and nothing else).
    const evil = set.ceiling(BOT, { ...alice, sub: 'a/*' });
    assert.equal(
      evil[0]?.tools.find((t) => t.tool === 'note'),
      undefined,
    );
    assert.deepEqual(set.ceiling(BOT, undefined), []);
  });
  test('maxTaskTtlSec is the longest admitting max_task_ttl', () => {
    assert.equal(set.maxTaskTtlSec(BOT, alice), 900);
    assert.equal(set.maxTaskTtlSec(REPORTER, undefined), 3600);
    assert.equal(set.maxTaskTtlSec(BOT, undefined), 0);
  });
  test('session picks an admitting template for the audience', () => {
    assert.deepEqual(set.session(BOT, alice, TICKETS), {
      template: 'support',
      owner: 'support@taskpass.local',
      ttlSec: 60,
    });
    assert.equal(set.session(BOT, alice, 'https://kb.taskpass.local/mcp'), undefined);
    assert.equal(set.session(BOT, undefined, TICKETS), undefined);
  });
  test('the set is immutable and rejects duplicate ids', () => {
    assert.throws(() => PolicySet.from([tpl(base), tpl(base)]), /duplicate/);
    assert.throws(() => {
      (set.templates as Template[]).push(tpl(base));
    });
    assert.throws(() => {
      (set.templates[0] as { audience: string }).audience = 'x';
    });
  });
});

describe('PolicySet.historyQueries and store-backed histories', () => {
  test('names the call counts and prerequisites of the templates that could allow the call', () => {
    const q = (tool: string, action: IssuedCall['action'], audience = TICKETS) =>
      set.historyQueries({ audience, tool, action, resource: 'tickets/T-1' });
    assert.deepEqual(q('get_ticket', 'read'), { counts: [], prior: [] });
    assert.deepEqual(q('close_ticket', 'write'), {
      counts: ['close_ticket'],
      prior: [{ tool: 'get_ticket', resource: 'tickets/T-1' }],
    });
    assert.deepEqual(q('touch', 'write'), { counts: [], prior: [{ tool: 'list_tickets' }] });
    assert.deepEqual(q('close_ticket', 'write', 'https://other/mcp'), { counts: [], prior: [] });
  });

  test('decisions from targeted store queries equal decisions from the whole call list', async () => {
    const { SqliteStore } = await import('../src/store/sqlite.ts');
    const { loadHistory } = await import('../src/service.ts');
    const store = new SqliteStore({ path: ':memory:' });
    await store.init();
    try {
      const histories: IssuedCall[][] = [
        [],
        [step('get_ticket', 'tickets/T-1')],
        [step('get_ticket', 'tickets/T-2')],
        [step('get_ticket', 'tickets/T-1', 'optional')],
        [step('get_ticket', 'tickets/T-1', 'gone'), step('list_tickets', 'tickets')],
        [
          step('get_ticket', 'tickets/T-1'),
          step('close_ticket', 'tickets/T-1', 'support', 'write'),
          step('close_ticket', 'tickets/T-2', 'gone', 'write'),
        ],
        [step('get_ticket', 'tickets/T-1'), step('close_ticket', 'x/1', 'optional', 'write')],
        [step('get_ticket', 'tickets/T-1'), step('issue_refund', 'tickets/T-0', 'refunds', 'write')],
      ];
      const calls: Partial<DecideInput>[] = [
        {},
        { tool: 'close_ticket', action: 'write' },
        { tool: 'touch', action: 'write' },
        { tool: 'issue_refund', action: 'write', user: lead },
        { tool: 'issue_refund', action: 'write' },
      ];
      for (const [i, h] of histories.entries()) {
        const taskId = `task-${i}`;
        for (const c of h) await store.recordIssued({ ...c, taskId, jti: `${taskId}-${c.jti}` });
        for (const c of calls) {
          const input = {
            agent: BOT,
            user: alice,
            audience: TICKETS,
            tool: 'get_ticket',
            action: 'read' as const,
            resource: 'tickets/T-1',
            ...c,
          };
          const fromStore = await loadHistory(store, taskId, set.historyQueries(input));
          assert.deepEqual(
            set.decide({ ...input, history: fromStore }),
            set.decide({ ...input, history: h }),
            `history ${i}, call ${JSON.stringify(c)}`,
          );
        }
      }
    } finally {
      await store.close();
    }
  });
});
