// The demo story end to end on real SPIRE: the stack of examples/stack.ts (SPIRE server + agent,
// IdP, broker with ./policies, ticket desk MCP server over mTLS) and the scripted agent of
// examples/ticket-desk/agent.ts, acting for Alice (group support); Bob, a support lead, approves the
// large refund with `taskpass approvals approve` while the agent waits.
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { after, before, describe, test } from 'node:test';
import { ALICE, BOB, type Stack, startStack } from '../examples/stack.ts';
import { checkStory, runAgentScript, type Step, type Transcript } from '../examples/ticket-desk/agent.ts';

type CallStep = Extract<Step, { kind: 'call' }>;
type ReplayStep = Extract<Step, { kind: 'replay' }>;

function processesUnder(dir: string): string[] {
  try {
    return execFileSync('pgrep', ['-f', dir], { encoding: 'utf8' }).trim().split('\n').filter(Boolean);
  } catch {
    return [];
  }
}

describe('demo story (real SPIRE)', () => {
  let stack: Stack;
  let t: Transcript;
  let spireDir: string;

  before(async () => {
    stack = await startStack({
      brokerLogLevel: 'warn',
      onSpire: (s) => {
        spireDir = s.dir;
      },
    });
    t = await runAgentScript({
      ...stack.agentOptions(),
      userToken: await stack.userToken(ALICE),
      onApprovalRequired: (e) => {
        approvedWith = stack.approvalsCli(['approve', e.approvalId, '--comment', 'checked'], BOB);
      },
    });
  });
  let approvedWith: Promise<{ code: number; lines: string[] }> | undefined;
  after(() => stack?.stop());

  const call = (tool: string) => t.steps.find((s): s is CallStep => s.kind === 'call' && s.tool === tool);
  const replay = (prefix: string) =>
    t.steps.find((s): s is ReplayStep => s.kind === 'replay' && s.what.startsWith(prefix));

  test('identities come from SPIRE and the task is Alice’s, with the support ceiling', () => {
    assert.equal(t.agent.spiffeId, stack.ids.agent);
    assert.equal(t.task.sub, ALICE.sub);
    assert.equal(t.task.agent, stack.ids.agent);
    assert.deepEqual(t.task.ceiling.map((c) => c.template).sort(), [
      'tickets-refunds',
      'tickets-support-read',
      'tickets-support-write',
    ]);
    // The ceiling tells the agent that refunds are bound to their arguments and may need approval.
    const refund = t.task.ceiling.find((c) => c.template === 'tickets-refunds')?.tools[0];
    assert.deepEqual(
      { bind: refund?.bind_arguments, send: refund?.send_arguments, approval: refund?.approval },
      { bind: true, send: true, approval: true },
    );
    const published = Object.fromEntries(t.tools.map((x) => [x.name, x.action]));
    assert.equal(published.delete_ticket, 'admin');
    assert.equal(published.get_ticket, 'read');
  });

  test('allowed calls succeed with certificate-bound, short-lived tokens', () => {
    for (const tool of ['list_tickets', 'get_ticket', 'update_ticket']) {
      const s = call(tool);
      assert.equal(s?.outcome, 'allowed', `${tool}: ${JSON.stringify(s?.refusal)}`);
      assert.notEqual(s.isError, true);
      assert.equal(s.token?.certificateBound, true);
      assert.equal(s.token?.sub, ALICE.sub);
      assert.equal(s.token?.actor, stack.ids.agent);
      assert.ok(s.token!.lifetimeSec > 0 && s.token!.lifetimeSec <= 60);
    }
    assert.equal(call('update_ticket')?.token?.singleUse, true);
    assert.equal(call('get_ticket')?.token?.singleUse, false);
    // The server ran the write for the user through the agent.
    const ticket = stack.tickets.desk.get('T-1002');
    assert.equal(ticket.status, 'pending');
    assert.match(
      ticket.comments[0]?.by ?? '',
      /^alice via spiffe:\/\/taskpass\.local\/agents\/support\/triage-bot$/,
    );
  });

  test('a refund up to 100 runs on its own; above it, it waits for a support lead and names him', async () => {
    const [small, large] = t.steps.filter(
      (s): s is CallStep => s.kind === 'call' && s.tool === 'issue_refund',
    );
    assert.equal(small?.outcome, 'allowed', JSON.stringify(small?.refusal));
    assert.equal(small.approval, undefined);
    assert.equal(small.token?.argsBound, true);
    assert.equal(small.token?.approval, undefined);
    assert.equal(stack.tickets.desk.get('T-1002').order.refunded, 54);

    assert.equal(large?.outcome, 'allowed', JSON.stringify(large?.refusal));
    assert.match(large.approval?.id ?? '', /^apr_/);
    assert.match(
      large.approval?.url ?? '',
      new RegExp(`^http://127\\.0\\.0\\.1:\\d+/console/approvals/${large.approval?.id}$`),
    );
    assert.deepEqual(
      large.token?.approval && { id: large.token.approval.id, by: large.token.approval.approver },
      {
        id: large.approval?.id,
        by: BOB.sub,
      },
    );
    assert.equal(large.token?.argsBound, true);
    assert.equal(large.token?.singleUse, true);
    // The approver used the CLI; the desk recorded the refund as approved by Bob.
    const cli = await approvedWith;
    assert.equal(cli?.code, 0, cli?.lines.join('\n'));
    const t1001 = stack.tickets.desk.get('T-1001');
    assert.equal(t1001.order.refunded, 129.9);
    assert.match(t1001.comments.at(-1)?.by ?? '', /approved by bob$/);

    // The approved token, presented with ten times the amount, is refused by the MCP server.
    const tampered = replay('approved refund token');
    assert.equal(tampered?.status, 403);
    assert.equal(tampered.refusal?.code, 'TASKPASS_VERIFY_ARGS_MISMATCH');
    assert.equal(stack.tickets.desk.get('T-1001').order.refunded, 129.9);
  });

  test('the broker denies what the ceiling or the workflow does not allow', () => {
    assert.equal(call('delete_ticket')?.refusal?.by, 'broker');
    assert.equal(call('delete_ticket')?.refusal?.status, 403);
    assert.equal(call('delete_ticket')?.refusal?.code, 'TASKPASS_DENIED_TOOL');
    assert.equal(call('close_ticket')?.refusal?.code, 'TASKPASS_DENIED_PREREQUISITE');
    // Nothing was deleted or closed.
    assert.equal(stack.tickets.desk.get('T-1003').status, 'open');
  });

  test('the MCP server refuses a spent single-use token and a leftover token after completion', () => {
    const spent = replay('single-use');
    assert.equal(spent?.status, 401);
    assert.equal(spent.refusal?.code, 'TASKPASS_VERIFY_REPLAYED');
    assert.equal(t.completion.status, 'completed');
    assert.ok(t.completion.propagationMs !== undefined && t.completion.propagationMs < 2000);
    const leftover = replay('leftover');
    assert.equal(leftover?.status, 401);
    assert.equal(leftover.refusal?.code, 'TASKPASS_VERIFY_REVOKED');
    assert.match(leftover.refusal?.challenge ?? '', /error="invalid_token".*resource_metadata=/);
    assert.equal(t.afterCompletion?.code, 'TASKPASS_TASK_CLOSED');
  });

  test('the console the demo prints: Olivia signs in at the demo IdP and follows the task to its end', async () => {
    const base = new URL(stack.urls.console);
    assert.equal((await fetch(new URL('/console/api/now', base))).status, 401);
    // The browser's steps, over real HTTP: console → IdP login page → IdP → console callback.
    const start = await fetch(new URL('/console/auth/login', base), { redirect: 'manual' });
    assert.equal(start.status, 303);
    const signin = start.headers
      .getSetCookie()
      .find((c) => c.startsWith('taskpass-signin='))
      ?.split(';')[0];
    const authorize = new URL(String(start.headers.get('location')));
    assert.match(await (await fetch(authorize)).text(), /Sign in as Olivia/);
    const form = new URLSearchParams(authorize.searchParams);
    form.set('user', 'olivia');
    const chosen = await fetch(new URL('/authorize', authorize), {
      method: 'POST',
      body: form,
      redirect: 'manual',
    });
    const back = String(chosen.headers.get('location'));
    assert.ok(back.startsWith(`${base.origin}/console/auth/callback?`), back);
    const done = await fetch(back, { headers: { cookie: String(signin) }, redirect: 'manual' });
    assert.equal(done.status, 200);
    const cookie = done.headers
      .getSetCookie()
      .find((c) => c.startsWith('taskpass-console='))
      ?.split(';')[0];
    const api = (path: string) => fetch(new URL(path, base), { headers: { cookie: String(cookie) } });
    const me = (await (await api('/console/api/session')).json()) as { roles: { admin: boolean } };
    assert.equal(me.roles.admin, true);
    // The demo's task, from first call to completion, in its timeline.
    type Rec = { event: string; tool?: string; approver?: string };
    const { timeline } = (await (await api(`/console/api/tasks/${t.task.id}`)).json()) as { timeline: Rec[] };
    const events = timeline.map((r) => r.event);
    assert.equal(events[0], 'task.opened');
    assert.ok(events.includes('token.issued'));
    assert.ok(events.includes('approval.decided'));
    assert.ok(
      timeline.some((r) => r.event === 'token.issued' && r.approver === `bob at ${stack.idp.issuer}`),
    );
    assert.equal(events.at(-1), 'task.completed');
  });

  test('the whole story checks out, and stopping leaves no SPIRE process', async () => {
    assert.deepEqual(checkStory(t), []);
    assert.equal(t.ok, true);
    await stack.stop();
    assert.deepEqual(processesUnder(spireDir), []);
  });
});
