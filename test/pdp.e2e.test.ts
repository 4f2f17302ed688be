// The ticket desk's Rego on a real OPA behind the templates, on real SPIRE (examples/stack.ts with
// `engine: 'opa'`): the demo story still checks out with OPA deciding every call the templates
// allow; with the desk closed (OPA data: no business hours) the same agent's writes are denied by
// OPA, naming it, while its reads go on. The same with the rules in Cedar (`engine: 'cedar'`),
// evaluated in the broker and hot-reloaded: closing the desk in the .cedar file takes effect at the
// next call; a file with a syntax error is reported and the last good rules stay in force.
import assert from 'node:assert/strict';
import { readFile, writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { ALICE, BOB, type Stack, startStack } from '../examples/stack.ts';
import { checkStory, runAgentScript, type Step, type Transcript } from '../examples/ticket-desk/agent.ts';
import { pollUntil } from '../harness/poll.ts';

type CallStep = Extract<Step, { kind: 'call' }>;

describe('decision points on real SPIRE and OPA', () => {
  let stack: Stack;
  const story = async (): Promise<Transcript> =>
    runAgentScript({
      ...stack.agentOptions(),
      userToken: await stack.userToken(ALICE),
      onApprovalRequired: (e) => void stack.approvalsCli(['approve', e.approvalId, '--comment', 'ok'], BOB),
    });

  before(async () => {
    stack = await startStack({ engine: 'opa', brokerLogLevel: 'warn' });
  });
  after(() => stack?.stop());

  test('the demo story checks out with OPA deciding every call the templates allow', async () => {
    const t = await story();
    assert.deepEqual(checkStory(t), []);
    assert.ok((await stack.opa!.queries()) > 0);
  });

  test('with the desk closed, OPA denies the writes (TASKPASS_PDP_DENIED naming opa/ticket-desk); reads go on', async () => {
    await stack.opa!.putData('ticket_desk/business_hours', { start: 0, end: 0 });
    const t = await story();
    const calls = t.steps.filter((s): s is CallStep => s.kind === 'call');
    const read = calls.find((s) => s.tool === 'get_ticket');
    assert.equal(read?.outcome, 'allowed');
    const refund = calls.find((s) => s.tool === 'issue_refund');
    assert.equal(refund?.refusal?.code, 'TASKPASS_PDP_DENIED', JSON.stringify(refund));
    assert.match(refund?.refusal?.reason ?? '', /opa\/ticket-desk .*outside business hours/);
  });
});

describe('the Cedar decision point in the broker on real SPIRE', () => {
  let stack: Stack;
  const story = async (): Promise<Transcript> =>
    runAgentScript({
      ...stack.agentOptions(),
      userToken: await stack.userToken(ALICE),
      onApprovalRequired: (e) => void stack.approvalsCli(['approve', e.approvalId, '--comment', 'ok'], BOB),
    });
  const rules = () => join(stack.dir, 'cedar', 'tickets.cedar');
  /** The broker's log lines about the Cedar policies (loaded, or refused with where and why). */
  const reloads = async () =>
    (await readFile(join(stack.dir, 'broker.log'), 'utf8'))
      .split('\n')
      .filter((l) => l.includes('"decisionPoint":"ticket-desk"'))
      .map((l) => JSON.parse(l) as { msg: string; version?: string });
  const refundOf = (t: Transcript) =>
    t.steps.filter((s): s is CallStep => s.kind === 'call').find((s) => s.tool === 'issue_refund');

  before(async () => {
    stack = await startStack({ engine: 'cedar', brokerLogLevel: 'info' });
  });
  after(() => stack?.stop());

  test('the demo story checks out with Cedar behind every template', async () => {
    assert.deepEqual(checkStory(await story()), []);
    assert.equal((await reloads()).filter((r) => r.msg === 'decision point policies loaded').length, 1);
  });

  test('closing the desk in the .cedar file denies writes at the next call; a broken file keeps the last good rules', async () => {
    const open = await readFile(rules(), 'utf8');
    await writeFile(rules(), open.replace('duration("24h")', 'duration("0h")'));
    await pollUntil('the closed desk is loaded', 10_000, 50, async () =>
      (await reloads()).filter((r) => r.msg === 'decision point policies loaded').length === 2
        ? true
        : undefined,
    );
    const closed = refundOf(await story());
    assert.equal(closed?.refusal?.code, 'TASKPASS_PDP_DENIED', JSON.stringify(closed));
    assert.match(
      closed?.refusal?.reason ?? '',
      /cedar ticket-desk: denied by policy writes-in-business-hours/,
    );

    // A syntax error: reported with file, line and column; the closed desk stays in force.
    await writeFile(
      rules(),
      `${open.replace('duration("24h")', 'duration("0h")')}\nforbid (principal, action, resource) when {`,
    );
    const refused = await pollUntil('the broken file is reported', 10_000, 50, async () =>
      (await reloads()).find((r) => r.msg.includes('NOT reloaded')),
    );
    assert.match(refused.msg, /tickets\.cedar:\d+:\d+: /);
    const still = refundOf(await story());
    assert.equal(still?.refusal?.code, 'TASKPASS_PDP_DENIED', 'the last good (closed) rules still decide');
  });
});
