// The ticket desk's Rego on a real OPA behind the templates, on real SPIRE (examples/stack.ts with
// `engine: 'opa'`): the demo story still checks out with OPA deciding every call the templates
// allow; with the desk closed (OPA data: no business hours) the same agent's writes are denied by
// OPA, naming it, while its reads go on.
import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { ALICE, BOB, type Stack, startStack } from '../examples/stack.ts';
import { checkStory, runAgentScript, type Step, type Transcript } from '../examples/ticket-desk/agent.ts';

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
