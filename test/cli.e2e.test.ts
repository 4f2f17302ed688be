// The admin CLI against a running broker on real SPIRE, as an operator runs it: a separate process
// (`broker/src/cli.ts`), its own X.509-SVID from the Workload API picked by hint, the broker
// authenticated by SPIFFE ID. Lists and revokes a task, explains a live token, and refuses a
// non-admin caller and a server that is not the broker.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import { BrokerClient } from '@taskpass/agent-plugin';
import type { TlsSource } from '@taskpass/spiffe';
import type { X509Source } from '@taskpass/spiffe/workload';
import { ADMIN_ID, ALICE, type Stack, startStack } from '../examples/stack.ts';
import { registerWorkload, sourceByHint } from './support/workloads.ts';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const cliPath = join(root, 'broker', 'src', 'cli.ts');

interface CliRun {
  code: number;
  stdout: string;
  stderr: string;
}

describe('taskpass admin CLI (real SPIRE, mTLS by SPIFFE ID)', () => {
  let stack: Stack;
  let agentSource: X509Source;
  let broker: BrokerClient;

  async function cli(args: string[], hint: string): Promise<CliRun> {
    try {
      const { stdout, stderr } = await promisify(execFile)(
        process.execPath,
        ['--conditions=taskpass:source', '--import', 'tsx', cliPath, ...args],
        {
          cwd: root,
          env: { ...process.env, SPIFFE_ENDPOINT_SOCKET: stack.spire.address, TASKPASS_SVID_HINT: hint },
          timeout: 60_000,
        },
      );
      return { code: 0, stdout, stderr };
    } catch (e) {
      const r = e as { code?: number; stdout?: string; stderr?: string };
      return {
        code: typeof r.code === 'number' ? r.code : -1,
        stdout: r.stdout ?? '',
        stderr: r.stderr ?? '',
      };
    }
  }

  before(async () => {
    stack = await startStack({ brokerLogLevel: 'warn' });
    const admin = await registerWorkload(stack, {
      spiffeId: ADMIN_ID,
      hint: 'admin',
      entryId: 'taskpass-5-admin',
    });
    await admin.close();
    agentSource = await sourceByHint(stack, stack.hints.agent);
    broker = new BrokerClient({
      url: stack.urls.broker,
      auth: { kind: 'mtls', source: agentSource as TlsSource, brokerId: stack.ids.broker },
    });
  });

  after(async () => {
    await broker?.close();
    await agentSource?.close();
    await stack?.stop();
  });

  test('tasks list shows an open task; tasks revoke closes it and the broker refuses new tokens', async () => {
    const task = await broker.openTask({ purpose: 'cli revoke', userToken: await stack.userToken(ALICE) });
    const list = await cli(
      ['tasks', 'list', '--broker', stack.urls.broker, '--status', 'open', '--json'],
      'admin',
    );
    assert.equal(list.code, 0, list.stderr);
    const tasks = JSON.parse(list.stdout) as { task_id: string; agent: string }[];
    const listed = tasks.find((t) => t.task_id === task.id);
    assert.ok(listed, `task ${task.id} listed`);
    assert.equal(listed.agent, stack.ids.agent);

    const revoke = await cli(
      ['tasks', 'revoke', task.id, '--broker', stack.urls.broker, '--reason', 'cli test'],
      'admin',
    );
    assert.equal(revoke.code, 0, revoke.stderr);
    assert.equal((await broker.getTask(task.id)).status, 'revoked');
    await assert.rejects(
      task.token({
        audience: stack.audience,
        tool: 'get_ticket',
        resource: 'tickets/T-1001',
        action: 'read',
      }),
      (e: { code?: string }) => e.code === 'TASKPASS_TASK_CLOSED',
    );
  });

  test('token explain says why a live token was issued and that the broker holds it active', async () => {
    await using task = await broker.openTask({
      purpose: 'cli explain',
      userToken: await stack.userToken(ALICE),
    });
    const t = await task.token({
      audience: stack.audience,
      tool: 'get_ticket',
      resource: 'tickets/T-1002',
      action: 'read',
    });
    const r = await cli(['token', 'explain', t.accessToken, '--broker', stack.urls.broker], 'admin');
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /template\s+tickets-support-read/);
    assert.match(r.stdout, /permits\s+read call of tool get_ticket on resource tickets\/T-1002/);
    assert.match(r.stdout, /signature\s+valid/);
    assert.match(r.stdout, /broker\s+active/);
    assert.ok(!r.stdout.includes(t.accessToken), 'the token itself is never printed');
  });

  test('a workload that is not an admin is refused (TASKPASS_FORBIDDEN_ADMIN)', async () => {
    const r = await cli(['tasks', 'list', '--broker', stack.urls.broker], stack.hints.agent);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /403.*TASKPASS_FORBIDDEN_ADMIN/);
  });

  test('a server with another SPIFFE ID than the broker is refused before anything is sent', async () => {
    // The ticket desk is a real workload of the same trust domain, serving HTTPS with its SVID.
    const origin = new URL(stack.urls.mcp).origin;
    const r = await cli(['tasks', 'list', '--broker', origin], 'admin');
    assert.equal(r.code, 1);
    assert.match(r.stderr, /spiffe:\/\/taskpass\.local\/mcp\/tickets/);
    assert.match(r.stderr, /not authorized|unauthorized|ERR_SPIFFE/i);
  });
});
