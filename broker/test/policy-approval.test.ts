// Approval rules in templates (docs/approvals.md): validation with paths, `when:` conditions, the
// decision ("approval required" or plain allow), argument binding, the ceiling, and who may approve.
import assert from 'node:assert/strict';
import { describe, test } from 'node:test';
import { argsSha256 } from '@taskpass/contract';
import { parsePolicyText } from '../src/policy/loader.ts';
import { approverMayDecide, conditionHolds, type DecideInput, PolicySet } from '../src/policy/engine.ts';
import { type TemplateInput, TemplateSchema } from '../src/policy/schema.ts';

const TD = 'spiffe://taskpass.local';
const BOT = `${TD}/agents/support-bot`;
const IDP = 'https://idp.taskpass.local';
const TICKETS = 'https://tickets.taskpass.local/mcp';
const alice = { iss: IDP, sub: 'alice', claims: { groups: ['support'] } };
const lena = { iss: IDP, sub: 'lena', claims: { groups: ['support', 'support-leads'] } };

const refunds = (approval: Record<string, unknown> | undefined, extra: Record<string, unknown> = {}) =>
  ({
    id: 'refunds',
    owner: 'support@taskpass.local',
    agents: [BOT],
    users: { issuer: IDP, claims: { groups: ['support'] } },
    audience: TICKETS,
    tools: [
      {
        tool: 'issue_refund',
        action: 'write',
        resources: ['tickets/*'],
        ...(approval ? { approval } : {}),
        ...extra,
      },
    ],
  }) as TemplateInput;

const LEADS = { approvers: { issuer: IDP, claims: { groups: ['support-leads'] } } };
const ABOVE_100 = { ...LEADS, when: [{ arg: 'amount', op: 'gt', value: 100 }] };

const set = (...t: TemplateInput[]) => PolicySet.from(t.map((x) => TemplateSchema.parse(x)));

const call = (args: Record<string, unknown> | undefined, over: Partial<DecideInput> = {}): DecideInput => ({
  agent: BOT,
  user: alice,
  audience: TICKETS,
  tool: 'issue_refund',
  action: 'write',
  resource: 'tickets/T-1',
  history: [],
  arguments: args,
  argsSha256: args ? argsSha256(args) : undefined,
  ...over,
});

describe('approval rules: validation', () => {
  const errors = (yaml: string) => {
    const r = parsePolicyText(yaml, 'refunds.yaml');
    assert.equal(r.ok, false, 'must be refused');
    return r.ok ? [] : r.errors.map((e) => `${e.path}: ${e.message}`);
  };
  const head = `id: r
owner: o
agents: [${BOT}]
audience: ${TICKETS}
tools:
  - tool: issue_refund
    action: write
    resources: ["tickets/*"]
`;

  test('defaults: ttl 10m, separation of duties, always binds arguments', () => {
    const t = TemplateSchema.parse(refunds(LEADS));
    const rule = t.tools[0]!;
    assert.equal(rule.bindArguments, true);
    assert.equal(rule.approval?.ttlSec, 600);
    assert.equal(rule.approval?.separationOfDuties, true);
    assert.deepEqual(rule.approval?.when, []);
    assert.equal(rule.approval?.approvers.anyone, true);
    assert.equal(rule.approval?.approvers.delegatingUser, false);
  });

  test('errors name the file path of the offending field', () => {
    assert.deepEqual(errors(`${head}    approval: { approvers: {} }\n`), [
      'tools[0].approval.approvers: name who may approve: an issuer, claims, or delegating_user: true',
    ]);
    assert.match(
      errors(
        `${head}    approval: { approvers: { issuer: x }, when: [{ arg: amount, op: gt, value: "100" }] }\n`,
      )[0]!,
      /^tools\[0\]\.approval\.when\[0\]\.value: gt takes a number/,
    );
    assert.match(
      errors(
        `${head}    approval: { approvers: { issuer: x }, when: [{ arg: amount, op: between, value: 1 }] }\n`,
      )[0]!,
      /^tools\[0\]\.approval\.when\[0\]\.op: /,
    );
    assert.match(
      errors(
        `${head}    approval: { approvers: { issuer: x }, when: [{ arg: __proto__.x, op: exists }] }\n`,
      )[0]!,
      /^tools\[0\]\.approval\.when\[0\]\.arg: arg names a prototype key/,
    );
    assert.match(
      errors(`${head}    approval: { approvers: { issuer: x }, when: [{ arg: "a b", op: exists }] }\n`)[0]!,
      /^tools\[0\]\.approval\.when\[0\]\.arg: arg is a dotted path/,
    );
    assert.match(
      errors(
        `${head}    approval: { approvers: { issuer: x }, when: [{ arg: tier, op: in, value: [] }] }\n`,
      )[0]!,
      /^tools\[0\]\.approval\.when\[0\]\.value: in takes a non-empty list/,
    );
    assert.match(
      errors(
        `${head}    approval: { approvers: { issuer: x }, when: [{ arg: a, op: eq, value: [1] }] }\n`,
      )[0]!,
      /^tools\[0\]\.approval\.when\[0\]\.value: eq takes one literal/,
    );
    assert.match(
      errors(`${head}    approval: { approvers: { issuer: x }, ttl: 2d }\n`)[0]!,
      /^tools\[0\]\.approval\.ttl: invalid duration/,
    );
    assert.match(
      errors(`${head}    approval: { approvers: { issuer: x }, script: "1+1" }\n`)[0]!,
      /^tools\[0\]\.approval: .*script/,
    );
    assert.match(
      errors(`${head}    bind_arguments: false\n    approval: { approvers: { issuer: x } }\n`)[0]!,
      /^tools\[0\]\.bind_arguments: a rule with approval always binds/,
    );
    assert.match(
      errors(head.replace('action: write', 'action: read') + '    bind_arguments: true\n')[0]!,
      /^tools\[0\]\.bind_arguments: bind_arguments is for write and admin rules/,
    );
    assert.match(
      errors(
        head.replace('audience:', 'delegation: forbidden\naudience:') +
          '    approval: { approvers: { delegating_user: true } }\n',
      )[0]!,
      /^tools\[0\]\.approval\.approvers\.delegating_user: autonomous tasks/,
    );
  });
});

describe('approval rules: when conditions', () => {
  const c = (op: string, value: unknown, arg = 'amount') =>
    TemplateSchema.parse(refunds({ ...LEADS, when: [{ arg, op, value }] })).tools[0]!.approval!.when[0]!;

  test('comparisons, eq, in, exists, dotted paths', () => {
    assert.equal(conditionHolds(c('gt', 100), { amount: 100.5 }), true);
    assert.equal(conditionHolds(c('gt', 100), { amount: 100 }), false);
    assert.equal(conditionHolds(c('ge', 100), { amount: 100 }), true);
    assert.equal(conditionHolds(c('lt', 100), { amount: 99 }), true);
    assert.equal(conditionHolds(c('le', 100), { amount: 101 }), false);
    assert.equal(conditionHolds(c('eq', 'EUR', 'currency'), { currency: 'EUR' }), true);
    assert.equal(conditionHolds(c('eq', 1, 'n'), { n: '1' }), false, 'no coercion');
    assert.equal(conditionHolds(c('in', ['a', 'b'], 'tier'), { tier: 'b' }), true);
    assert.equal(conditionHolds(c('in', ['a', 'b'], 'tier'), {}), false);
    assert.equal(conditionHolds(c('exists', true, 'force'), { force: false }), true);
    assert.equal(conditionHolds(c('exists', false, 'force'), {}), true);
    assert.equal(conditionHolds(c('gt', 10, 'order.total'), { order: { total: 11 } }), true);
  });

  test('a comparison on a missing or non-numeric argument holds (fail closed)', () => {
    assert.equal(conditionHolds(c('gt', 100), {}), true);
    assert.equal(conditionHolds(c('gt', 100), { amount: '5' }), true);
    assert.equal(conditionHolds(c('lt', 100), { amount: null }), true);
    assert.equal(conditionHolds(c('gt', 100, 'toString'), {}), true, 'prototype members are not arguments');
  });
});

describe('approval rules: decisions', () => {
  test('above the limit: approval required, with template, ttl and rules', () => {
    const d = set(refunds({ ...ABOVE_100, ttl: '5m' })).decide(call({ ticket_id: 'T-1', amount: 250 }));
    assert.equal(d.allow, true);
    assert.ok(d.allow && d.approval);
    assert.equal(d.approval.template, 'refunds');
    assert.equal(d.approval.ttlSec, 300);
    assert.equal(d.approval.rules.length, 1);
    assert.equal(d.bindArguments, true);
  });

  test('at or below the limit: allowed without approval', () => {
    const d = set(refunds(ABOVE_100)).decide(call({ ticket_id: 'T-1', amount: 100 }));
    assert.equal(d.allow, true);
    assert.equal(d.allow && d.approval, undefined);
  });

  test('no when: every call needs approval', () => {
    const d = set(refunds(LEADS)).decide(call({}));
    assert.ok(d.allow && d.approval);
  });

  test('arguments missing where when: reads them → TASKPASS_ARGUMENTS_REQUIRED', () => {
    const d = set(refunds(ABOVE_100)).decide(call(undefined, { argsSha256: argsSha256({ amount: 5 }) }));
    assert.equal(d.allow, false);
    assert.equal(!d.allow && d.code, 'TASKPASS_ARGUMENTS_REQUIRED');
  });

  test('a binding rule without args_sha256 → TASKPASS_ARGUMENTS_REQUIRED; a plain write does not need one', () => {
    const bound = set(refunds(undefined, { bind_arguments: true }));
    const d = bound.decide(call(undefined));
    assert.equal(!d.allow && d.code, 'TASKPASS_ARGUMENTS_REQUIRED');
    assert.equal(bound.decide(call({ a: 1 })).allow, true);
    assert.equal(set(refunds(undefined)).decide(call(undefined)).allow, true);
  });

  test('a lenient overlapping template does not lift another template’s approval', () => {
    const lenient = { ...refunds(undefined), id: 'lenient' } as TemplateInput;
    const d = set(refunds(ABOVE_100), lenient).decide(call({ amount: 500 }));
    assert.ok(d.allow && d.approval, 'approval still required');
    assert.equal(d.allow && d.template, 'lenient refunds');
    assert.equal(d.allow && d.approval?.template, 'refunds');
  });

  test('the ceiling says when to bind, to send arguments, and that approval may be asked', () => {
    const ceiling = set(refunds(ABOVE_100)).ceiling(BOT, alice);
    assert.deepEqual(ceiling[0]!.tools[0], {
      tool: 'issue_refund',
      action: 'write',
      resources: ['tickets/*'],
      bind_arguments: true,
      send_arguments: true,
      approval: true,
    });
    const noWhen = set(refunds(LEADS)).ceiling(BOT, alice)[0]!.tools[0]!;
    assert.equal(noWhen.send_arguments, undefined);
    assert.equal(set(refunds(undefined)).ceiling(BOT, alice)[0]!.tools[0]!.bind_arguments, undefined);
  });
});

describe('approval rules: who may approve', () => {
  const rulesOf = (approval: Record<string, unknown>) =>
    TemplateSchema.parse(refunds(approval)).tools[0]!.approval!;

  test('approvers by issuer and claims', () => {
    const r = [rulesOf(LEADS)];
    assert.deepEqual(approverMayDecide(r, lena, alice), { ok: true });
    const carl = { iss: IDP, sub: 'carl', claims: { groups: ['support'] } };
    const no = approverMayDecide(r, carl, alice);
    assert.equal(!no.ok && no.code, 'TASKPASS_APPROVER_NOT_ALLOWED');
    const otherIdp = approverMayDecide(r, { ...lena, iss: 'https://evil' }, alice);
    assert.equal(!otherIdp.ok && otherIdp.code, 'TASKPASS_APPROVER_NOT_ALLOWED');
  });

  test('separation of duties: the delegating user cannot approve, even as a lead', () => {
    const r = [rulesOf(LEADS)];
    const self = approverMayDecide(r, lena, { iss: IDP, sub: 'lena' });
    assert.equal(!self.ok && self.code, 'TASKPASS_APPROVAL_SEPARATION_OF_DUTIES');
    const off = [rulesOf({ ...LEADS, separation_of_duties: false })];
    assert.deepEqual(approverMayDecide(off, lena, { iss: IDP, sub: 'lena' }), { ok: true });
  });

  test('delegating_user: true lets the delegating user confirm; alone, nobody else may', () => {
    const only = [rulesOf({ approvers: { delegating_user: true } })];
    assert.deepEqual(approverMayDecide(only, alice, alice), { ok: true });
    const other = approverMayDecide(only, lena, alice);
    assert.equal(!other.ok && other.code, 'TASKPASS_APPROVER_NOT_ALLOWED');
    const both = [rulesOf({ approvers: { ...LEADS.approvers, delegating_user: true } })];
    assert.deepEqual(approverMayDecide(both, alice, alice), { ok: true });
    assert.deepEqual(approverMayDecide(both, lena, alice), { ok: true });
  });

  test('several asking rules: the approver must satisfy all', () => {
    const r = [rulesOf(LEADS), rulesOf({ approvers: { issuer: IDP, claims: { groups: ['finance'] } } })];
    const d = approverMayDecide(r, lena, alice);
    assert.equal(!d.ok && d.code, 'TASKPASS_APPROVER_NOT_ALLOWED');
    const both = { ...lena, claims: { groups: ['support-leads', 'finance'] } };
    assert.deepEqual(approverMayDecide(r, both, alice), { ok: true });
  });
});
