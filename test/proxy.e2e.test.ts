// `taskpass proxy` end to end on real SPIRE: the stack of examples/stack.ts (SPIRE, IdP, broker with
// ./policies, the ticket desk over mTLS) and an MCP host that knows nothing of Taskpass — the SDK's
// plain Client with StdioClientTransport — launching `taskpass proxy --config proxy.yaml` as a child
// process with plain node, for Alice (her ID token in a file). Reads go through, a delete comes back
// as a readable tool error, a large refund comes back with its approval URL (approvals: fail) or
// waits and goes through once Bob approves (approvals: wait); when the host disconnects the task is
// completed, the broker refuses it new tokens and the ticket desk refuses a leftover one.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { createInterface } from 'node:readline';
import type { Readable } from 'node:stream';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport } from '@modelcontextprotocol/sdk/client/stdio.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { BrokerClient, BrokerError } from '@taskpass/agent-plugin';
import { createMtlsAgent, matchId, type TlsSource } from '@taskpass/spiffe';
import { pickByHint, X509Source } from '@taskpass/spiffe/workload';
import { decodeJwt } from 'jose';
import type { Dispatcher } from 'undici';
import { stringify as toYaml } from 'yaml';
import { ALICE, BOB, type Stack, startStack } from '../examples/stack.ts';
import { assertRefused, rawToolCall } from './support/mcp-raw.ts';
import { pollUntil } from '../harness/poll.ts';

const repoRoot = resolve(fileURLToPath(new URL('.', import.meta.url)), '..');
const captureTokens = join(repoRoot, 'test/fixtures/proxy/capture-tokens.ts');

type LogLine = Record<string, unknown>;

interface Host {
  client: Client;
  logs: LogLine[];
  stderrText(): string;
  tokenLog: string;
  taskId(): string;
}

let stack: Stack;
let agentSource: X509Source;
let asAgent: Dispatcher;
let broker: BrokerClient;
let tokenFile: string;

before(async () => {
  stack = await startStack({ brokerLogLevel: 'warn' });
  agentSource = await X509Source.create({
    address: stack.spire.address,
    picker: pickByHint(stack.hints.agent),
  });
  asAgent = createMtlsAgent(agentSource as TlsSource, matchId(stack.ids.tickets));
  broker = new BrokerClient({
    url: stack.urls.broker,
    auth: { kind: 'mtls', source: agentSource as TlsSource, brokerId: stack.ids.broker },
  });
  tokenFile = join(stack.dir, 'alice-id-token');
  await writeFile(tokenFile, `${await stack.userToken(ALICE)}\n`, { mode: 0o600 });
});
after(async () => {
  await broker?.close();
  await asAgent?.close();
  await agentSource?.close();
  await stack?.stop();
});

/** Starts an MCP host that launches `taskpass proxy` over stdio, the way a desktop host does. */
async function startHost(
  name: string,
  approvals: { mode: 'fail' | 'wait'; timeoutMs?: number },
): Promise<Host> {
  const config = join(stack.dir, `proxy-${name}.yaml`);
  await writeFile(
    config,
    toYaml({
      purpose: `Help Alice with her tickets (${name})`,
      broker: { url: stack.urls.broker, id: stack.ids.broker },
      workloadApi: { address: stack.spire.address, hint: stack.hints.agent },
      user: { tokenFile },
      upstreams: { tickets: { url: stack.urls.mcp, spiffeId: stack.ids.tickets, audience: stack.audience } },
      approvals,
      logLevel: 'info',
    }),
  );
  const tokenLog = join(stack.dir, `tokens-${name}.jsonl`);
  await writeFile(tokenLog, '');
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [
      '--conditions=taskpass:source',
      '--import',
      'tsx',
      '--import',
      captureTokens,
      'broker/src/bin/taskpass.ts',
      'proxy',
      '--config',
      config,
    ],
    cwd: repoRoot,
    env: { ...(process.env as Record<string, string>), TASKPASS_TEST_TOKEN_LOG: tokenLog },
    stderr: 'pipe',
  });
  const logs: LogLine[] = [];
  const raw: string[] = [];
  createInterface({ input: transport.stderr as Readable }).on('line', (line) => {
    raw.push(line);
    try {
      logs.push(JSON.parse(line) as LogLine);
    } catch {
      logs.push({ text: line });
    }
  });
  const client = new Client({ name: 'plain-mcp-host', version: '1.0.0' });
  await client.connect(transport);
  return {
    client,
    logs,
    stderrText: () => raw.join('\n'),
    tokenLog,
    taskId: () => {
      const opened = logs.find((l) => l.event === 'task.opened');
      assert.ok(opened, `the proxy logged no task.opened: ${raw.join('\n')}`);
      return opened.taskId as string;
    },
  };
}

const textOf = (r: unknown) => ((r as CallToolResult).content[0] as { text: string }).text;

describe('taskpass proxy behind a plain MCP host (real SPIRE)', () => {
  test('approvals: fail — tools listed and called for Alice; refusals are readable tool errors; disconnecting completes the task', async () => {
    const host = await startHost('fail', { mode: 'fail' });
    let taskId: string;
    try {
      taskId = host.taskId();
      const { tools } = await host.client.listTools();
      assert.deepEqual(
        tools.map((t) => t.name).sort(),
        ['close_ticket', 'delete_ticket', 'get_ticket', 'issue_refund', 'list_tickets', 'update_ticket'],
        'one upstream: the desk’s own tool names',
      );

      const read = await host.client.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1002' } });
      assert.equal(read.isError, undefined, textOf(read));
      const out = JSON.parse(textOf(read)) as {
        ticket: { id: string };
        caller: { user: string; task: string };
      };
      assert.equal(out.ticket.id, 'T-1002');
      assert.equal(out.caller.user, ALICE.sub, 'the desk saw Alice’s task');
      assert.equal(out.caller.task, taskId);

      const del = await host.client.callTool({ name: 'delete_ticket', arguments: { ticket_id: 'T-1003' } });
      assert.equal(del.isError, true);
      assert.match(
        textOf(del),
        /^Taskpass refused the call of delete_ticket \(TASKPASS_DENIED_TOOL\)\.\nReason: \S.+/,
      );

      await host.client.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1001' } });
      const refund = await host.client.callTool({
        name: 'issue_refund',
        arguments: { ticket_id: 'T-1001', amount: 129.9 },
      });
      assert.equal(refund.isError, true);
      const text = textOf(refund);
      assert.match(text, /needs a person's approval before it can run \(TASKPASS_APPROVAL_REQUIRED\)/);
      assert.match(text, /Template: tickets-refunds/);
      // The link is the console's approval page (the stack's approvals.url).
      const link = /Approve at: (\S+) \(expires \d{4}-\d\d-\d\dT[\d:.]+Z\)/.exec(text)?.[1];
      assert.match(link ?? '', /\/console\/approvals\/apr_[A-Za-z0-9_-]{22}$/, text);
      assert.ok(link?.startsWith(stack.urls.console), `${link} is not on ${stack.urls.console}`);
    } finally {
      await host.client.close(); // the host goes away: stdin closes
    }

    await pollUntil('the task.completed log line', 5000, 20, () =>
      host.logs.find((l) => l.event === 'task.completed' && l.taskId === taskId),
    );
    assert.equal((await broker.getTask(taskId)).status, 'completed');
    await assert.rejects(
      broker.callToken(taskId, {
        audience: stack.audience,
        tool: 'get_ticket',
        resource: 'tickets/T-1002',
        action: 'read',
      }),
      (e: unknown) => e instanceof BrokerError && e.code === 'TASKPASS_TASK_CLOSED',
    );

    // A token the proxy used is refused by the desk once the revocation arrived.
    const sent = readFileSync(host.tokenLog, 'utf8')
      .trim()
      .split('\n')
      .map((l) => JSON.parse(l) as { method?: string; token: string });
    const leftover = sent.find(
      (m) =>
        m.method === 'tools/call' &&
        (decodeJwt(m.token).authorization_details as { tool?: string; resource?: string }[])[0]?.resource ===
          'tickets/T-1002',
    );
    assert.ok(leftover, 'a call token for get_ticket T-1002 was captured');
    await stack.tickets.waitRevoked(taskId);
    assertRefused(
      await rawToolCall(asAgent, stack.urls.mcp, leftover.token, 'get_ticket', { ticket_id: 'T-1002' }),
      401,
      'TASKPASS_VERIFY_REVOKED',
      'invalid_token',
    );
    // The proxy's own logs name the task and the refusals, never a token.
    const logs = host.stderrText();
    for (const m of sent) assert.ok(!logs.includes(m.token), 'no token in the proxy logs');
    assert.ok(host.logs.some((l) => l.event === 'call.refused' && l.code === 'TASKPASS_DENIED_TOOL'));
  });

  test('approvals: wait — the call waits, the host is told the approval URL, and it runs once Bob approves', async () => {
    const host = await startHost('wait', { mode: 'wait', timeoutMs: 120_000 });
    try {
      const taskId = host.taskId();
      await host.client.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-1001' } });
      const progress: string[] = [];
      const call = host.client.callTool(
        { name: 'issue_refund', arguments: { ticket_id: 'T-1001', amount: 129.9 } },
        undefined,
        {
          timeout: 120_000,
          resetTimeoutOnProgress: true,
          onprogress: (p) => {
            if (p.message) progress.push(p.message);
          },
        },
      );
      const notice = await pollUntil('the approval notice', 20_000, 20, () =>
        progress.find((m) => /apr_[A-Za-z0-9_-]+/.test(m)),
      );
      assert.match(notice, /needs a person's approval before it can run \(TASKPASS_APPROVAL_REQUIRED\)/);
      const approvalId = /(apr_[A-Za-z0-9_-]+)/.exec(notice)![1]!;
      const decided = await stack.approvalsCli(
        ['approve', approvalId, '--comment', 'checked the parcel photos'],
        BOB,
      );
      assert.equal(decided.code, 0, decided.lines.join('\n'));

      const r = await call;
      assert.equal(r.isError, undefined, textOf(r));
      const out = JSON.parse(textOf(r)) as {
        caller: { task: string; approval?: { id: string; approver: { sub: string } } };
      };
      assert.equal(out.caller.task, taskId);
      assert.equal(out.caller.approval?.id, approvalId);
      assert.equal(out.caller.approval?.approver.sub, BOB.sub, 'the desk names who approved the call');
    } finally {
      await host.client.close();
    }
  });
});
