// Unit tests of `taskpass guard`: configuration validation, what the upstream is told (headers and
// stdio _meta), which tools are protected, the stdio bridge, the CLI, and docs/errors.md.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import type { ServerResponse } from 'node:http';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { after, describe, test } from 'node:test';
import { runCli as brokerCli } from '@taskpass/broker';
import { createVerifier } from '@taskpass/verifier';
import { parse as parseYaml } from 'yaml';
import {
  callerIdentity,
  downstreamResponseHeaders,
  EXAMPLE_CONFIG,
  GUARD_ERRORS,
  GuardError,
  loadGuardConfig,
  META_CALLER,
  parseGuardConfig,
  runCli,
  toolPolicies,
  upstreamRequestHeaders,
} from '../src/index.ts';
import { StdioUpstream } from '../src/guard/upstream-stdio.ts';

const dir = mkdtempSync(join(tmpdir(), 'taskpass-guard-test-'));
const secretFile = join(dir, 'secret');
writeFileSync(secretFile, 'a-long-enough-shared-secret\n');

const minimal = {
  audience: 'https://notes.example.com/mcp',
  broker: { url: 'https://127.0.0.1:8443', id: 'spiffe://example.org/broker' },
  upstream: { url: 'http://127.0.0.1:9000/mcp' },
};

function configError(raw: unknown): string {
  try {
    parseGuardConfig(raw, 'guard.yaml', { env: {} });
  } catch (e) {
    assert.ok(e instanceof GuardError);
    assert.equal(e.code, 'TASKPASS_GUARD_CONFIG_INVALID');
    return e.message;
  }
  assert.fail('the configuration was accepted');
}

describe('configuration', () => {
  test('a minimal configuration gets safe defaults', () => {
    const c = parseGuardConfig(minimal, 'guard.yaml', { env: {} });
    assert.equal(c.requireCertificateBinding, true);
    assert.equal(c.learnTools, true);
    assert.deepEqual(c.listen, { host: '127.0.0.1', port: 8445 });
    assert.equal(c.upstream.timeoutMs, 30_000);
    assert.equal(c.secret, undefined);
  });

  test('errors name the file and the path of the field', () => {
    assert.match(
      configError({ ...minimal, upstream: { url: 'ftp://x/mcp' } }),
      /^guard\.yaml is invalid: upstream\.url: /,
    );
    assert.match(configError({ ...minimal, listen: { port: 70000 } }), /listen\.port: /);
    assert.match(
      configError({ ...minimal, broker: { url: minimal.broker.url, id: 'broker' } }),
      /broker\.id: not a SPIFFE ID/,
    );
    // Strict objects: a typo is an error, not an ignored (and so unenforced) setting.
    assert.match(
      configError({ ...minimal, requireCertificateBindng: false }),
      /\(root\): Unrecognized key.*requireCertificateBindng/,
    );
    assert.match(
      configError({ ...minimal, tools: { read_note: { resource: 'notes/{', action: 'read' } } }),
      /tools\.read_note\.resource: not a resource template/,
    );
    assert.match(
      configError({ ...minimal, tools: { x: { resource: 'notes', action: 'delete' } } }),
      /tools\.x\.action/,
    );
  });

  test('exactly one upstream: a URL or a command', () => {
    assert.match(
      configError({ ...minimal, upstream: { url: minimal.upstream.url, command: ['notes'] } }),
      /upstream: give exactly one of url/,
    );
    assert.match(configError({ ...minimal, upstream: {} }), /upstream: give exactly one of url/);
    const c = parseGuardConfig({ ...minimal, upstream: { command: ['python', '-m', 'notes'] } }, 'x', {
      env: {},
    });
    assert.deepEqual(c.upstream.command, ['python', '-m', 'notes']);
  });

  test('an upstream off loopback needs the shared secret; the secret must be long enough', () => {
    const remote = { ...minimal, upstream: { url: 'http://notes.internal:9000/mcp' } };
    assert.match(
      configError(remote),
      /upstream\.secretFile: an upstream that is not on loopback needs the shared secret/,
    );
    const c = parseGuardConfig({ ...remote, upstream: { ...remote.upstream, secretFile } }, 'x', { env: {} });
    assert.equal(c.secret, 'a-long-enough-shared-secret');
    // From the environment too, resolved against the config file's directory.
    const viaEnv = parseGuardConfig(remote, 'x', {
      env: { TASKPASS_GUARD_SECRET_FILE: 'secret' },
      baseDir: dir,
    });
    assert.equal(viaEnv.secret, 'a-long-enough-shared-secret');
    const short = join(dir, 'short');
    writeFileSync(short, 'tiny');
    assert.match(
      configError({ ...minimal, upstream: { ...minimal.upstream, secretFile: short } }),
      /at least 16/,
    );
    assert.match(
      configError({ ...minimal, upstream: { ...minimal.upstream, secretFile: join(dir, 'nope') } }),
      /cannot read/,
    );
  });

  test('the audience needs a path: it is the MCP endpoint', () => {
    assert.match(
      configError({ ...minimal, audience: 'https://notes.example.com' }),
      /audience: the resource URI needs a path/,
    );
  });

  test('YAML files load; the printed example is a valid configuration', () => {
    const file = join(dir, 'guard.yaml');
    writeFileSync(
      file,
      'audience: https://notes.example.com/mcp\nbroker: { url: https://b:8443, id: spiffe://example.org/broker }\nupstream: { url: http://127.0.0.1:1/mcp, secretFile: secret }\n',
    );
    assert.equal(loadGuardConfig(file, {}).secret, 'a-long-enough-shared-secret');
    writeFileSync(file, 'audience: [\n');
    assert.throws(() => loadGuardConfig(file, {}), /cannot parse .*guard\.yaml/);
    const example = parseYaml(EXAMPLE_CONFIG) as { upstream: Record<string, unknown> };
    example.upstream.secretFile = secretFile;
    const c = parseGuardConfig(example, 'example', { env: {} });
    assert.deepEqual(Object.keys(c.tools), ['read_note', 'delete_note']);
  });
});

/** An unsigned JWT whose payload is `claims` (only decoded here, never verified). */
function jwtWith(claims: Record<string, unknown>): string {
  const b64 = (v: unknown) => Buffer.from(JSON.stringify(v)).toString('base64url');
  return `${b64({ alg: 'ES256', kid: 'k' })}.${b64(claims)}.c2ln`;
}

const callAuth = (token: string) => ({
  token,
  extra: {
    taskpass: {
      kind: 'call',
      user: 'zoë',
      agent: 'spiffe://example.org/agents/bot',
      actorChain: ['spiffe://example.org/agents/bot'],
      task: 'tsk_1',
      jti: 'jti-1',
      expiresAt: 0,
      clientId: 'spiffe://example.org/agents/bot',
      tool: 'read_note',
      resource: 'notes/n-1',
      action: 'read',
      singleUse: false,
    },
  },
});

describe('what the upstream is told', () => {
  test('the Authorization header, Client-Cert, cookies and the caller own Taskpass-* headers are not forwarded', () => {
    const h = upstreamRequestHeaders(
      {
        authorization: 'Bearer secret-token',
        'client-cert': ':AAAA:',
        cookie: 'a=b',
        host: 'guard',
        'taskpass-user': 'mallory',
        'taskpass-approval-id': 'apr_forged',
        'taskpass-guard-secret': 'guessed',
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        'mcp-session-id': 's1',
        'mcp-protocol-version': '2025-06-18',
        'mcp-method': 'tools/call',
        'mcp-name': 'read_note',
      },
      callerIdentity(callAuth(jwtWith({ authorization_details: [{ type: 'mcp_tool_call' }] }))),
      'a-long-enough-shared-secret',
    );
    assert.deepEqual(h, {
      accept: 'application/json, text/event-stream',
      'content-type': 'application/json',
      'mcp-method': 'tools/call',
      'mcp-name': 'read_note',
      'mcp-protocol-version': '2025-06-18',
      'mcp-session-id': 's1',
      // Non-ASCII in the MCP header encoding.
      'taskpass-user': `=?base64?${Buffer.from('zoë').toString('base64')}?=`,
      'taskpass-agent': 'spiffe://example.org/agents/bot',
      'taskpass-task': 'tsk_1',
      'taskpass-jti': 'jti-1',
      'taskpass-token-type': 'mcp_tool_call',
      'taskpass-tool': 'read_note',
      'taskpass-resource': 'notes/n-1',
      'taskpass-action': 'read',
      'taskpass-guard-secret': 'a-long-enough-shared-secret',
    });
  });

  test('an approval in the token detail is passed on; a malformed one is not', () => {
    const approval = {
      id: `apr_${'A'.repeat(22)}`,
      approver: { iss: 'https://idp', sub: 'lead' },
      approved_at: 1,
    };
    const id = callerIdentity(
      callAuth(jwtWith({ authorization_details: [{ type: 'mcp_tool_call', approval }] })),
    );
    assert.equal(id?.approvalId, approval.id);
    assert.equal(id?.approver, 'lead');
    assert.equal(id?.approverIssuer, 'https://idp');
    const bad = callerIdentity(
      callAuth(
        jwtWith({ authorization_details: [{ type: 'mcp_tool_call', approval: { ...approval, id: 'x' } }] }),
      ),
    );
    assert.equal(bad?.approvalId, undefined);
    assert.equal(callerIdentity({ token: 't' }), undefined, 'no verified caller, no identity');
  });

  test('session tokens name their type and no tool', () => {
    const a = callAuth('x.y.z');
    const id = callerIdentity({
      token: 'x',
      extra: { taskpass: { ...a.extra.taskpass, kind: 'session', tokenType: 'mcp_session' } },
    });
    assert.equal(id?.tokenType, 'mcp_session');
    assert.equal(id?.tool, undefined);
  });

  test('hop-by-hop headers of the answer are dropped', () => {
    assert.deepEqual(
      downstreamResponseHeaders({
        connection: 'keep-alive',
        'transfer-encoding': 'chunked',
        'content-type': 'text/event-stream',
        'mcp-session-id': 's',
      }),
      { 'content-type': 'text/event-stream', 'mcp-session-id': 's' },
    );
  });
});

describe('which tools are protected', () => {
  test('declarations win; learned tools need a resource hint; bad hints are refused', () => {
    const { tools, skipped } = toolPolicies({ read_note: { resource: 'notes/{id}', action: 'write' } }, [
      { name: 'read_note', _meta: { 'dev.taskpass/resource': 'other/{x}', 'dev.taskpass/action': 'read' } },
      {
        name: 'list_notes',
        annotations: { readOnlyHint: true },
        _meta: { 'dev.taskpass/resource': 'notes' },
      },
      { name: 'purge', _meta: { 'dev.taskpass/resource': 'notes', 'dev.taskpass/action': 'admin' } },
      { name: 'count_notes', annotations: { readOnlyHint: true } },
      { name: 'weird', _meta: { 'dev.taskpass/resource': 'notes/{', 'dev.taskpass/action': 'read' } },
      { name: 'bad_action', _meta: { 'dev.taskpass/resource': 'notes', 'dev.taskpass/action': 'delete' } },
    ]);
    assert.deepEqual(Object.keys(tools).sort(), ['list_notes', 'purge', 'read_note']);
    assert.deepEqual(skipped.map((s) => s.name).sort(), ['bad_action', 'count_notes', 'weird']);
    const v = createVerifier({
      issuer: 'https://b',
      audience: 'https://n/mcp',
      jwks: { keys: [{ kty: 'EC' }] },
      tools,
    });
    assert.equal(v.actionOf('read_note'), 'write', 'the declaration, not the hint');
    assert.equal(v.actionOf('list_notes'), 'read', 'readOnlyHint');
    assert.equal(v.actionOf('purge'), 'admin');
    assert.equal(v.actionOf('count_notes'), undefined, 'refused: deny by default');
  });
});

/** A ServerResponse stand-in recording what the bridge writes. */
function recorder(): ServerResponse & { status?: number; body?: string; done: Promise<void> } {
  let finish!: () => void;
  const r = {
    done: new Promise<void>((res) => {
      finish = res;
    }),
    writeHead(status: number) {
      r.status = status;
      return r;
    },
    end(body?: string) {
      r.body = body;
      finish();
      return r;
    },
  } as unknown as ServerResponse & { status?: number; body?: string; done: Promise<void> };
  return r;
}

describe('stdio upstream', () => {
  const fixture = resolve(import.meta.dirname, '..', '..', 'test', 'fixtures', 'guard', 'stdio-notes.ts');
  const upstream = new StdioUpstream({
    command: [process.execPath, '--import', 'tsx', fixture],
    timeoutMs: 5000,
  });
  after(() => upstream.close());
  const forward = async (body: unknown, identity?: Record<string, string>) => {
    const res = recorder();
    await upstream.forward(
      { method: 'POST', url: '/mcp', headers: {}, body, identity, signal: new AbortController().signal },
      res,
    );
    return { status: res.status, body: res.body ? JSON.parse(res.body) : undefined };
  };

  test('tools are listed; callers ids come back on their answers; the caller is in _meta', async () => {
    const tools = await upstream.listTools();
    assert.deepEqual(tools.map((t) => t.name).sort(), ['count_notes', 'read_note', 'slow_note']);
    const call = (id: unknown, note: string) => ({
      jsonrpc: '2.0',
      id,
      method: 'tools/call',
      // A caller's own dev.taskpass/caller is replaced by the guard's.
      params: {
        name: 'read_note',
        arguments: { note_id: note },
        _meta: { [META_CALLER]: { user: 'mallory' } },
      },
    });
    const [a, b] = await Promise.all([
      forward(call('same', 'n-1'), { user: 'alice' }),
      forward(call('same', 'n-2'), { user: 'bob' }),
    ]);
    assert.equal(a.body.id, 'same');
    assert.equal(b.body.id, 'same');
    const out = (r: { body: { result: { content: { text: string }[] } } }) =>
      JSON.parse(r.body.result.content[0]!.text);
    assert.deepEqual([out(a).text, out(a).caller], ['buy milk', { user: 'alice' }]);
    assert.deepEqual([out(b).text, out(b).caller], ['call the bank', { user: 'bob' }]);
  });

  test('initialize is answered from the guard own session; notifications get 202; batches stay batches', async () => {
    const init = await forward({ jsonrpc: '2.0', id: 7, method: 'initialize', params: {} });
    assert.equal(init.body.id, 7);
    assert.equal(init.body.result.serverInfo.name, 'stdio-notes');
    assert.equal((await forward({ jsonrpc: '2.0', method: 'notifications/initialized' })).status, 202);
    const batch = await forward([
      { jsonrpc: '2.0', id: 1, method: 'ping' },
      { jsonrpc: '2.0', method: 'notifications/initialized' },
      { jsonrpc: '2.0', id: 2, method: 'tools/list' },
    ]);
    assert.ok(Array.isArray(batch.body));
    assert.deepEqual(
      batch.body.map((m: { id: number }) => m.id),
      [1, 2],
    );
  });
});

describe('CLI', () => {
  test('taskpass-proxy guard --print-config, usage errors; taskpass guard forwards here', async () => {
    const lines: string[] = [];
    const io = { out: (s: string) => lines.push(s), err: (s: string) => lines.push(s), env: {} };
    assert.equal(await runCli(['guard', '--print-config'], io), 0);
    assert.match(lines.join('\n'), /^# taskpass guard/);
    assert.equal(await runCli([], io), 2);
    assert.equal(await runCli(['nope'], io), 2);
    assert.equal(await runCli(['guard'], io), 2);
    lines.length = 0;
    assert.equal(await runCli(['guard', '--config', join(dir, 'missing.yaml')], io), 1);
    assert.match(lines.join('\n'), /TASKPASS_GUARD_CONFIG_INVALID: cannot read configuration file/);
    lines.length = 0;
    assert.equal(await brokerCli(['guard', '--print-config'], io), 0);
    assert.match(lines.join('\n'), /^# taskpass guard/);
  });
});

test('GUARD_ERRORS and the Guard section of docs/errors.md list the same codes and statuses', () => {
  const md = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  const start = md.indexOf('## Guard (TASKPASS_GUARD_*)');
  assert.ok(start >= 0, 'docs/errors.md has a "## Guard (TASKPASS_GUARD_*)" section');
  const next = md.indexOf('\n## ', start + 1);
  const section = md.slice(start, next < 0 ? undefined : next);
  const rows = [...section.matchAll(/^\|\s*`(TASKPASS_GUARD_[A-Z_]+)`\s*\|\s*(\d{3})\s*\|/gm)].map((m) => [
    m[1]!,
    Number(m[2]),
  ]);
  assert.deepEqual(
    rows.sort(),
    Object.entries(GUARD_ERRORS)
      .map(([code, e]) => [code, e.status])
      .sort(),
  );
});
