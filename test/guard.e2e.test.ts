// `taskpass guard` in front of an MCP server in another language, end to end on real SPIRE: the
// stack of examples/stack.ts (SPIRE, IdP, broker) with the notes templates of
// test/fixtures/guard/policies; tools/mcp-notes-go (the official Go SDK, no Taskpass code) behind
// a guard that has its own SVID and learned the tools from the server's tools/list hints. Tokens
// come from the broker through the agent plugin; each call is a raw JSON-RPC POST over the agent's
// mTLS connection to the guard, so the test controls the Authorization header exactly. What the
// Go server executed is read back from it: a refused call must never have reached it.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { createInterface } from 'node:readline';
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BrokerClient, type Task } from '@taskpass/agent-plugin';
import { parseGuardConfig, type RunningGuard, startGuard } from '@taskpass/proxy';
import { createMtlsAgent, matchId, type TlsSource } from '@taskpass/spiffe';
import type { X509Source } from '@taskpass/spiffe/workload';
import { Redis } from 'ioredis';
import pino from 'pino';
import { type Agent, fetch } from 'undici';
import { ALICE, type Stack, startStack } from '../examples/stack.ts';
import { type NotesGo, startNotesGo } from './support/notes-go.ts';
import { assertAccepted, assertRefused, rawToolCall } from './support/mcp-raw.ts';
import { pollUntil } from '../harness/poll.ts';
import { registerWorkload, sourceByHint } from './support/workloads.ts';

const NOTES_AUDIENCE = 'https://notes.taskpass.local/mcp';
const ARCHIVE_AUDIENCE = 'https://notes-archive.taskpass.local/mcp';
const GUARD_ID = 'spiffe://taskpass.local/mcp/notes-guard';
const SECRET = 'guard-secret-0123456789abcdef';
/** Another support agent: a workload of the trust domain, not the one the tokens are bound to. */
const OTHER_AGENT_ID = 'spiffe://taskpass.local/agents/support/other-bot';
const repoRoot = resolve(import.meta.dirname, '..');
/** The shared Redis of the tests; this file's keys live under its own prefix and are removed after. */
const REDIS_URL = 'redis://127.0.0.1:6379';
const REPLAY_PREFIX = `taskpass:test:guard:${process.pid}:${Date.now()}:`;
const policiesDir = resolve(import.meta.dirname, 'fixtures', 'guard', 'policies');

describe('taskpass guard in front of a Go MCP server (real SPIRE, mTLS)', () => {
  let stack: Stack;
  let notes: NotesGo;
  let guard: RunningGuard;
  /** A second replica of `guard`: the same upstream, the same Redis replay cache. */
  let replica: RunningGuard;
  let stdioGuard: RunningGuard;
  let deadGuard: RunningGuard;
  let guardSource: X509Source;
  let agentSource: X509Source;
  let asAgent: Agent;
  let broker: BrokerClient;
  const cleanups: (() => Promise<unknown>)[] = [];

  before(async () => {
    stack = await startStack({ brokerLogLevel: 'warn', feedHeartbeatMs: 250, policiesDir });
    const secretFile = join(stack.dir, 'guard-secret');
    await writeFile(secretFile, `${SECRET}\n`, { mode: 0o600 });
    notes = await startNotesGo({ secretFile });
    cleanups.push(() => notes.close());

    guardSource = await registerWorkload(stack, {
      spiffeId: GUARD_ID,
      hint: 'notes-guard',
      entryId: 'taskpass-4-guard',
    });
    cleanups.push(() => guardSource.close());
    agentSource = await sourceByHint(stack, stack.hints.agent);
    cleanups.push(() => agentSource.close());
    asAgent = createMtlsAgent(agentSource as TlsSource, matchId(GUARD_ID));
    cleanups.push(() => asAgent.close());
    broker = new BrokerClient({
      url: stack.urls.broker,
      auth: { kind: 'mtls', source: agentSource as TlsSource, brokerId: stack.ids.broker },
    });
    cleanups.push(() => broker.close());

    const base = {
      listen: { host: '127.0.0.1', port: 0 },
      audience: NOTES_AUDIENCE,
      broker: { url: stack.urls.broker, issuer: stack.issuer, id: stack.ids.broker },
      admin: { host: '127.0.0.1', port: 0 },
    };
    const logger = pino({ level: 'silent' });
    // No tool declared: read_note and delete_note are learned from the Go server's _meta hints.
    // Two replicas share one replay cache in Redis: a token spent at one is spent at both.
    const replicated = {
      ...base,
      upstream: { url: notes.mcpUrl, secretFile },
      replay: { redis: { url: REDIS_URL, keyPrefix: REPLAY_PREFIX } },
    };
    guard = await startGuard(parseGuardConfig(replicated, 'guard test config'), {
      source: guardSource,
      logger,
    });
    cleanups.push(() => guard.close());
    replica = await startGuard(parseGuardConfig(replicated, 'replica config'), {
      source: guardSource,
      logger,
    });
    cleanups.push(() => replica.close());
    cleanups.push(async () => {
      const redis = new Redis(REDIS_URL);
      const keys = await redis.keys(`${REPLAY_PREFIX}*`);
      if (keys.length) await redis.del(...keys);
      await redis.quit();
    });
    stdioGuard = await startGuard(
      parseGuardConfig(
        {
          ...base,
          upstream: {
            command: [process.execPath, '--import', 'tsx', 'test/fixtures/guard/stdio-notes.ts'],
            timeoutMs: 3000,
          },
        },
        'stdio guard test config',
      ),
      { source: guardSource, logger },
    );
    cleanups.push(() => stdioGuard.close());
    // An upstream that is not there: tools declared, nothing learned.
    deadGuard = await startGuard(
      parseGuardConfig(
        {
          ...base,
          upstream: { url: 'http://127.0.0.1:9/mcp', timeoutMs: 1000 },
          tools: { read_note: { resource: 'notes/{note_id}', action: 'read' } },
          learnTools: false,
        },
        'dead upstream guard config',
      ),
      { source: guardSource, logger },
    );
    cleanups.push(() => deadGuard.close());
  });

  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    await stack?.stop();
  });

  const openTask = async (purpose: string): Promise<Task> =>
    broker.openTask({ purpose, userToken: await stack.userToken(ALICE), ttlSeconds: 300 });
  const token = async (
    task: Task,
    tool: string,
    note: string,
    action: 'read' | 'write' = 'read',
    audience = NOTES_AUDIENCE,
  ) => (await task.token({ audience, tool, resource: `notes/${note}`, action })).accessToken;
  const servedCount = async () => (await notes.calls()).length;

  test('the guard learned the Go server tools and serves RFC 9728 metadata', async () => {
    assert.deepEqual([...guard.tools].sort(), ['delete_note', 'read_note']);
    const r = await fetch(`${guard.origin}/.well-known/oauth-protected-resource/mcp`, {
      dispatcher: asAgent,
    });
    assert.equal(r.status, 200);
    const doc = (await r.json()) as Record<string, unknown>;
    assert.equal(doc.resource, NOTES_AUDIENCE);
    assert.deepEqual(doc.authorization_servers, [stack.issuer]);
    assert.equal(doc.tls_client_certificate_bound_access_tokens, true);
  });

  test('an allowed call reaches the Go server with the caller in Taskpass-* headers, not the token', async () => {
    await using task = await openTask('read note n-1');
    const t = await token(task, 'read_note', 'n-1');
    const before = await servedCount();
    const out = assertAccepted(
      await rawToolCall(
        asAgent,
        guard.mcpUrl,
        t,
        'read_note',
        { note_id: 'n-1' },
        {
          // Made-up identity headers from the caller never reach the upstream.
          'taskpass-user': 'mallory',
          'taskpass-approval-id': 'apr_forgedforgedforgedforg',
          'taskpass-guard-secret': 'not-the-secret-at-all',
        },
      ),
    );
    assert.equal(out.text, 'buy milk');
    const calls = await notes.calls();
    assert.equal(calls.length, before + 1);
    const served = calls.at(-1)!;
    assert.equal(served.tool, 'read_note');
    assert.equal(served.authorization, false, 'the Authorization header is stripped');
    assert.deepEqual(served.headers, {
      'taskpass-user': ALICE.sub,
      'taskpass-agent': stack.ids.agent,
      'taskpass-task': task.id,
      'taskpass-jti': served.headers['taskpass-jti'],
      'taskpass-token-type': 'mcp_tool_call',
      'taskpass-tool': 'read_note',
      'taskpass-resource': 'notes/n-1',
      'taskpass-action': 'read',
    });
    assert.match(served.headers['taskpass-jti'] ?? '', /\S{8,}/);
    assert.deepEqual(out.taskpass, served.headers, 'the tool result echoes what it received');
    await task.complete();
  });

  test('wrong tool, wrong resource, wrong audience and no token are refused by the guard, unseen upstream', async () => {
    await using task = await openTask('read note n-2');
    const read = await token(task, 'read_note', 'n-2');
    const archive = await token(task, 'read_note', 'n-2', 'read', ARCHIVE_AUDIENCE);
    const before = await servedCount();

    assertRefused(
      await rawToolCall(asAgent, guard.mcpUrl, read, 'delete_note', { note_id: 'n-2' }),
      403,
      'TASKPASS_VERIFY_WRONG_TOOL',
      'insufficient_scope',
    );
    assertRefused(
      await rawToolCall(asAgent, guard.mcpUrl, read, 'read_note', { note_id: 'n-3' }),
      403,
      'TASKPASS_VERIFY_WRONG_RESOURCE',
      'insufficient_scope',
    );
    assertRefused(
      await rawToolCall(asAgent, guard.mcpUrl, archive, 'read_note', { note_id: 'n-2' }),
      401,
      'TASKPASS_VERIFY_WRONG_AUDIENCE',
      'invalid_token',
    );
    const none = await rawToolCall(asAgent, guard.mcpUrl, undefined, 'read_note', { note_id: 'n-2' });
    assert.equal(none.status, 401);
    assert.equal(none.code, 'TASKPASS_VERIFY_MISSING_TOKEN');
    assert.equal(
      none.challenge,
      `Bearer resource_metadata="https://notes.taskpass.local/.well-known/oauth-protected-resource/mcp"`,
    );
    assert.equal(await servedCount(), before, 'the Go server saw none of them');

    // The read token itself is good for the call it names.
    assertAccepted(await rawToolCall(asAgent, guard.mcpUrl, read, 'read_note', { note_id: 'n-2' }));
    assert.equal(await servedCount(), before + 1);
    await task.complete();
  });

  test('a single-use token is refused when replayed, at the same guard and at its replica; the Go server deleted once', async () => {
    await using task = await openTask('delete note n-3');
    const del = await token(task, 'delete_note', 'n-3', 'write');
    const before = (await notes.calls()).filter((c) => c.tool === 'delete_note').length;
    const first = assertAccepted(
      await rawToolCall(asAgent, guard.mcpUrl, del, 'delete_note', { note_id: 'n-3' }),
    );
    assert.equal(first.deleted, true);
    for (const g of [guard, replica]) {
      assertRefused(
        await rawToolCall(asAgent, g.mcpUrl, del, 'delete_note', { note_id: 'n-3' }),
        401,
        'TASKPASS_VERIFY_REPLAYED',
        'invalid_token',
      );
    }
    const deletes = (await notes.calls()).filter((c) => c.tool === 'delete_note');
    assert.equal(deletes.length, before + 1, 'the replay never reached the Go server');
    await task.complete();
  });

  test('a token of a completed task is refused once the revocation feed says so', async () => {
    const task = await openTask('read note n-1, then stop');
    const t = await token(task, 'read_note', 'n-1');
    assertAccepted(await rawToolCall(asAgent, guard.mcpUrl, t, 'read_note', { note_id: 'n-1' }));
    await task.complete();
    await pollUntil('the guard learns of the completed task', 5000, 5, () =>
      guard.feed.isRevoked(task.id, '') ? true : undefined,
    );
    const before = await servedCount();
    assertRefused(
      await rawToolCall(asAgent, guard.mcpUrl, t, 'read_note', { note_id: 'n-1' }),
      401,
      'TASKPASS_VERIFY_REVOKED',
      'invalid_token',
    );
    assert.equal(await servedCount(), before);
  });

  test('straight to the Go server, a request without the guard secret is refused there', async () => {
    const before = await servedCount();
    const r = await fetch(notes.mcpUrl, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'taskpass-user': 'alice',
        'taskpass-tool': 'delete_note',
      },
      body: JSON.stringify({
        jsonrpc: '2.0',
        id: 1,
        method: 'tools/call',
        params: { name: 'delete_note', arguments: { note_id: 'n-1' } },
      }),
    });
    assert.equal(r.status, 401);
    assert.equal(((await r.json()) as { code: string }).code, 'NOTES_GUARD_SECRET_REQUIRED');
    assert.equal(await servedCount(), before);
  });

  test('metrics count allowed and refused requests by code; readyz reports SVID, feed and upstream', async () => {
    const text = await (await fetch(`${guard.adminOrigin}/metrics`)).text();
    assert.match(text, /taskpass_guard_requests_total\{result="allowed",code=""\} [1-9]/);
    assert.match(
      text,
      /taskpass_guard_requests_total\{result="refused",code="TASKPASS_VERIFY_WRONG_TOOL"\} 1/,
    );
    assert.match(text, /taskpass_guard_requests_total\{result="refused",code="TASKPASS_VERIFY_REPLAYED"\} 1/);
    assert.match(text, /taskpass_guard_upstream_seconds_count\{outcome="ok"\} [1-9]/);
    const ready = await fetch(`${guard.adminOrigin}/readyz`);
    assert.equal(ready.status, 200);
    assert.deepEqual(((await ready.json()) as { checks: unknown }).checks, {
      svid: true,
      feed: true,
      upstream: true,
    });
  });

  test('an upstream that cannot be reached is a 502 with a stable code', async () => {
    await using task = await openTask('read note n-1 (dead upstream)');
    const r = await rawToolCall(
      asAgent,
      deadGuard.mcpUrl,
      await token(task, 'read_note', 'n-1'),
      'read_note',
      {
        note_id: 'n-1',
      },
    );
    assert.equal(r.status, 502);
    assert.equal(r.code, 'TASKPASS_GUARD_UPSTREAM_UNAVAILABLE');
    await task.complete();
  });

  test('a token presented over another workload mTLS connection is refused (cnf), unseen upstream', async () => {
    const otherSource = await registerWorkload(stack, {
      spiffeId: OTHER_AGENT_ID,
      hint: 'other-agent',
      entryId: 'taskpass-5-other',
    });
    const asOther = createMtlsAgent(otherSource as TlsSource, matchId(GUARD_ID));
    try {
      await using task = await openTask('read note n-1 (stolen token)');
      const t = await token(task, 'read_note', 'n-1');
      const before = await servedCount();
      assertRefused(
        await rawToolCall(asOther, guard.mcpUrl, t, 'read_note', { note_id: 'n-1' }),
        401,
        'TASKPASS_VERIFY_CNF_MISMATCH',
        'invalid_token',
      );
      assert.equal(await servedCount(), before);
      await task.complete();
    } finally {
      await asOther.close();
      await otherSource.close();
    }
  });

  test('taskpass guard --config guard.yaml as a process (through the broker CLI) serves and stops on SIGTERM', async () => {
    const file = join(stack.dir, 'guard.yaml');
    await writeFile(
      file,
      [
        'listen: { host: 127.0.0.1, port: 0 }',
        `workloadApi: { address: "${stack.spire.address}", hint: notes-guard }`,
        `audience: ${NOTES_AUDIENCE}`,
        `broker: { url: "${stack.urls.broker}", issuer: "${stack.issuer}", id: "${stack.ids.broker}" }`,
        `upstream: { url: "${notes.mcpUrl}", secretFile: guard-secret }`,
        'logLevel: info',
        '',
      ].join('\n'),
    );
    const child = spawn(
      process.execPath,
      [
        '--conditions=taskpass:source',
        '--import',
        'tsx',
        'broker/src/bin/taskpass.ts',
        'guard',
        '--config',
        file,
      ],
      { cwd: repoRoot, stdio: ['ignore', 'ignore', 'pipe'] },
    );
    const exited = new Promise<number | null>((r) => child.once('exit', (code) => r(code)));
    try {
      const logLines: Record<string, unknown>[] = [];
      const origin = await new Promise<string>((res, rej) => {
        const timer = setTimeout(
          () => rej(new Error(`no listening line: ${JSON.stringify(logLines)}`)),
          30_000,
        );
        createInterface({ input: child.stderr! }).on('line', (line) => {
          const l = JSON.parse(line) as Record<string, unknown>;
          logLines.push(l);
          if (l.event === 'listening') {
            clearTimeout(timer);
            res(l.origin as string);
          }
        });
        void exited.then((code) => rej(new Error(`the guard exited (${code}): ${JSON.stringify(logLines)}`)));
      });
      await using task = await openTask('read note n-2 through the CLI guard');
      const t = await token(task, 'read_note', 'n-2');
      const out = assertAccepted(
        await rawToolCall(asAgent, `${origin}/mcp`, t, 'read_note', { note_id: 'n-2' }),
      );
      assert.equal(out.text, 'call the bank');
      await task.complete();
      // The request line names the caller, never the token.
      await pollUntil('the request log line', 2000, 10, () => logLines.find((l) => l.event === 'request'));
      const text = JSON.stringify(logLines);
      assert.ok(!text.includes(t), 'the token is never logged');
      assert.ok(!text.includes(SECRET), 'the secret is never logged');
      assert.ok(
        logLines.some((l) => l.event === 'request' && l.user === ALICE.sub && l.tool === 'read_note'),
      );
    } finally {
      child.kill('SIGTERM');
      assert.equal(await exited, 0);
    }
  });

  test('stdio upstream: allowed calls get the caller in _meta; undeclared tools, wrong tokens and timeouts are refused', async () => {
    assert.deepEqual([...stdioGuard.tools].sort(), ['read_note', 'slow_note'], 'count_notes has no hints');
    await using task = await openTask('read notes over stdio');
    const t1 = await token(task, 'read_note', 'n-1');
    const a = await rawToolCall(asAgent, stdioGuard.mcpUrl, t1, 'read_note', { note_id: 'n-1' });
    const out = assertAccepted(a);
    assert.equal(out.text, 'buy milk');
    assert.deepEqual(out.caller, {
      user: ALICE.sub,
      agent: stack.ids.agent,
      task: task.id,
      jti: (out.caller as { jti: string }).jti,
      tokenType: 'mcp_tool_call',
      tool: 'read_note',
      resource: 'notes/n-1',
      action: 'read',
    });
    const servedBefore = out.served as number;

    assertRefused(
      await rawToolCall(asAgent, stdioGuard.mcpUrl, t1, 'count_notes', {}),
      403,
      'TASKPASS_VERIFY_UNKNOWN_TOOL',
      'insufficient_scope',
    );
    assertRefused(
      await rawToolCall(asAgent, stdioGuard.mcpUrl, t1, 'read_note', { note_id: 'n-2' }),
      403,
      'TASKPASS_VERIFY_WRONG_RESOURCE',
      'insufficient_scope',
    );
    // Concurrent callers share the one process; ids are the guard's, answers go back to their caller.
    const [b, c] = await Promise.all([
      rawToolCall(asAgent, stdioGuard.mcpUrl, t1, 'read_note', { note_id: 'n-1' }),
      rawToolCall(asAgent, stdioGuard.mcpUrl, await token(task, 'read_note', 'n-2'), 'read_note', {
        note_id: 'n-2',
      }),
    ]);
    assert.equal(assertAccepted(b).text, 'buy milk');
    assert.equal(assertAccepted(c).text, 'call the bank');
    assert.equal(
      Math.max(assertAccepted(b).served as number, assertAccepted(c).served as number),
      servedBefore + 2,
      'the refused calls never reached the stdio server',
    );

    const slow = await rawToolCall(
      asAgent,
      stdioGuard.mcpUrl,
      await token(task, 'slow_note', 'n-1'),
      'slow_note',
      {
        note_id: 'n-1',
        ms: 8000,
      },
    );
    assert.equal(slow.status, 504);
    assert.equal(slow.code, 'TASKPASS_GUARD_UPSTREAM_TIMEOUT');

    const get = await fetch(stdioGuard.mcpUrl, {
      dispatcher: asAgent,
      headers: { authorization: `Bearer ${t1}` },
    });
    assert.equal(get.status, 405);
    assert.equal(((await get.json()) as { code: string }).code, 'TASKPASS_GUARD_METHOD_NOT_ALLOWED');
    await task.complete();
  });
});
