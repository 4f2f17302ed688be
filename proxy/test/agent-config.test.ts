// taskpass proxy: configuration validation (errors name the file and the field), --print-config for
// the common hosts, tool-name prefixing, and refusals turned into tool errors a person can read.
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import {
  AgentPluginError,
  BrokerError,
  TaskpassApprovalRequiredError,
  TaskpassDeniedError,
} from '@taskpass/agent-plugin';
import { parse as parseYaml } from 'yaml';
import {
  CONFIG_HOSTS,
  exposeTools,
  hostConfig,
  loadProxyConfig,
  PROXY_ERRORS,
  ProxyError,
  parseProxyConfig,
  runCli,
  toolErrorResult,
} from '../src/index.ts';

const dir = mkdtempSync(join(tmpdir(), 'taskpass-proxy-config-'));

const minimal = {
  purpose: 'triage T-1',
  broker: { url: 'https://broker.example.com:8443', id: 'spiffe://taskpass.local/broker' },
  user: { tokenEnv: 'TASKPASS_USER_TOKEN' },
  upstreams: {
    tickets: { url: 'https://tickets.example.com/mcp', spiffeId: 'spiffe://taskpass.local/tickets' },
  },
};

function configError(raw: unknown): string {
  try {
    parseProxyConfig(raw, 'proxy.yaml');
  } catch (e) {
    assert.ok(e instanceof ProxyError);
    assert.equal(e.code, 'TASKPASS_PROXY_CONFIG_INVALID');
    return e.message;
  }
  assert.fail('the configuration was accepted');
}

test('a minimal configuration gets safe defaults', () => {
  const c = parseProxyConfig(minimal);
  assert.equal(c.approvals.mode, 'fail');
  assert.equal(c.idleTimeoutMs, 15 * 60_000);
  assert.equal(c.http, undefined, 'stdio unless http is configured');
  assert.equal(c.upstreams.length, 1);
  assert.equal(c.upstreams[0]!.name, 'tickets');
  assert.equal(c.upstreams[0]!.prefix, '', 'one upstream: its tools keep their names');
  assert.equal(c.upstreams[0]!.audience, 'https://tickets.example.com/mcp', 'audience defaults to the URL');
  assert.equal(c.upstreams[0]!.useServerHints, true);
});

test('several upstreams are prefixed with their names unless a prefix is given', () => {
  const c = parseProxyConfig({
    ...minimal,
    upstreams: {
      tickets: minimal.upstreams.tickets,
      notes: {
        url: 'https://notes.example.com/mcp',
        spiffeId: 'spiffe://taskpass.local/notes',
        prefix: 'n/',
      },
    },
  });
  assert.deepEqual(
    c.upstreams.map((u) => [u.name, u.prefix]),
    [
      ['tickets', 'tickets.'],
      ['notes', 'n/'],
    ],
  );
  assert.match(
    configError({
      ...minimal,
      upstreams: {
        a: { ...minimal.upstreams.tickets, prefix: 'x.' },
        b: { ...minimal.upstreams.tickets, prefix: 'x.' },
      },
    }),
    /^proxy\.yaml: upstreams\.b\.prefix: "x\." is also the prefix of upstreams\.a$/,
  );
});

test('errors name the file and the path of each wrong field', () => {
  assert.match(
    configError({
      ...minimal,
      upstreams: { tickets: { ...minimal.upstreams.tickets, url: 'http://tickets.example.com/mcp' } },
    }),
    /^proxy\.yaml is invalid: upstreams\.tickets\.url: /,
  );
  assert.match(
    configError({
      ...minimal,
      upstreams: { tickets: { ...minimal.upstreams.tickets, spiffeId: 'tickets' } },
    }),
    /upstreams\.tickets\.spiffeId: not a SPIFFE ID/,
  );
  assert.match(
    configError({
      ...minimal,
      upstreams: {
        tickets: {
          ...minimal.upstreams.tickets,
          tools: { get_ticket: { resource: 'tickets/{', action: 'read' } },
        },
      },
    }),
    /upstreams\.tickets\.tools\.get_ticket\.resource: not a resource template/,
  );
  assert.match(
    configError({
      ...minimal,
      upstreams: {
        tickets: { ...minimal.upstreams.tickets, tools: { t: { resource: 'x', action: 'delete' } } },
      },
    }),
    /upstreams\.tickets\.tools\.t\.action: /,
  );
  assert.match(
    configError({ ...minimal, upstreams: {} }),
    /upstreams: configure at least one upstream MCP server/,
  );
  assert.match(
    configError({ ...minimal, user: { tokenEnv: 'A', tokenFile: 'f' } }),
    /user: give exactly one of tokenFile, tokenEnv, oidc and autonomous: true/,
  );
  assert.match(configError({ ...minimal, user: {} }), /user: give exactly one of/);
  assert.match(
    configError({ ...minimal, user: { oidc: { issuer: 'http://idp.example.com', clientId: 'p' } } }),
    /user\.oidc\.issuer: must be https \(plain http only on loopback\)/,
  );
  assert.match(
    configError({ ...minimal, broker: { ...minimal.broker, url: 'http://broker.example.com' } }),
    /broker\.url: must be https/,
  );
  assert.match(configError({ ...minimal, approvals: { mode: 'maybe' } }), /approvals\.mode: /);
  assert.match(configError({ ...minimal, idleTimeoutMs: 0 }), /idleTimeoutMs: /);
  assert.match(configError({ ...minimal, purpose: '' }), /purpose: /);
  // Strict objects: a typo is an error, not a silently ignored setting.
  assert.match(
    configError({ ...minimal, aprovals: { mode: 'wait' } }),
    /\(root\): Unrecognized key: "aprovals"/,
  );
  assert.match(
    configError({ ...minimal, upstreams: { tickets: { ...minimal.upstreams.tickets, audiance: 'x' } } }),
    /upstreams\.tickets: Unrecognized key: "audiance"/,
  );
  assert.match(
    configError({ ...minimal, upstreams: { 'bad name': minimal.upstreams.tickets } }),
    /upstreams\.bad name: /,
  );
});

test('HTTP mode listens on loopback only', () => {
  const c = parseProxyConfig({ ...minimal, http: {} });
  assert.deepEqual(c.http, { host: '127.0.0.1', port: 8765, path: '/mcp', allowedOrigins: [] });
  for (const host of ['0.0.0.0', '192.168.1.10', 'example.com', '::']) {
    assert.match(
      configError({ ...minimal, http: { host } }),
      /http\.host: the proxy listens on loopback only/,
      host,
    );
  }
  for (const host of ['127.0.0.1', '::1', 'localhost']) parseProxyConfig({ ...minimal, http: { host } });
});

test('loadProxyConfig reads YAML or JSON and resolves a relative token file against the file', () => {
  const yamlFile = join(dir, 'proxy.yaml');
  writeFileSync(
    yamlFile,
    [
      'purpose: triage T-1',
      'broker: { url: "https://broker.example.com:8443", id: "spiffe://taskpass.local/broker" }',
      'user: { tokenFile: secrets/id-token }',
      'upstreams:',
      '  tickets: { url: "https://tickets.example.com/mcp", spiffeId: "spiffe://taskpass.local/tickets" }',
      '',
    ].join('\n'),
  );
  assert.equal(loadProxyConfig(yamlFile).user.tokenFile, join(dir, 'secrets/id-token'));
  const jsonFile = join(dir, 'proxy.json');
  writeFileSync(jsonFile, JSON.stringify({ ...minimal, approvals: { mode: 'wait' } }));
  assert.equal(loadProxyConfig(jsonFile).approvals.mode, 'wait');

  const bad = join(dir, 'bad.yaml');
  writeFileSync(bad, 'purpose: [unclosed\n');
  assert.throws(
    () => loadProxyConfig(bad),
    (e: ProxyError) => e.message.startsWith(`cannot parse ${bad}`),
  );
  writeFileSync(
    bad,
    'purpose: x\nbroker: { url: "https://b.example", id: "spiffe://t/broker" }\nupstreams: {}\nuser: { autonomous: true }\n',
  );
  assert.throws(
    () => loadProxyConfig(bad),
    (e: ProxyError) => e.message.startsWith(`${bad} is invalid: upstreams:`),
  );
  assert.throws(
    () => loadProxyConfig(join(dir, 'missing.yaml')),
    (e: ProxyError) =>
      e.code === 'TASKPASS_PROXY_CONFIG_INVALID' && /cannot read configuration file/.test(e.message),
  );
});

test('--print-config: each host gets a ready-to-paste entry launching `taskpass proxy --config <file>`', () => {
  const path = '/home/alice/.config/taskpass/proxy.yaml';
  const args = ['proxy', '--config', path];
  const claude = JSON.parse(hostConfig('claude-desktop', path).text);
  assert.deepEqual(claude, { mcpServers: { taskpass: { command: 'taskpass', args } } });
  const vscode = JSON.parse(hostConfig('vscode', path).text);
  assert.deepEqual(vscode, { servers: { taskpass: { type: 'stdio', command: 'taskpass', args } } });
  assert.deepEqual(JSON.parse(hostConfig('cursor', path).text), claude);
  assert.equal(hostConfig('stdio', path).text, `taskpass proxy --config ${path}`);
  assert.equal(hostConfig('stdio', '/a b/p.yaml').text, "taskpass proxy --config '/a b/p.yaml'");
  // The example proxy.yaml is itself a valid configuration.
  const example = parseProxyConfig(parseYaml(hostConfig('yaml', path).text), 'example');
  assert.equal(example.upstreams[0]!.name, 'tickets');
});

test('taskpass-proxy proxy --print-config writes only the text on stdout (the hint goes to stderr)', async () => {
  for (const host of CONFIG_HOSTS) {
    const out: string[] = [];
    const err: string[] = [];
    const code = await runCli(['proxy', '--print-config', host, '--config', 'proxy.yaml'], {
      out: (s) => out.push(s),
      err: (s) => err.push(s),
      env: {},
    });
    assert.equal(code, 0);
    if (host !== 'yaml' && host !== 'stdio') JSON.parse(out.join('\n'));
    assert.ok(out.join('\n').includes(host === 'yaml' ? 'upstreams:' : join(process.cwd(), 'proxy.yaml')));
    assert.equal(err.length, 1);
  }
  const err: string[] = [];
  const io = { out: () => {}, err: (s: string) => err.push(s), env: {} };
  assert.equal(await runCli(['proxy', '--print-config', 'emacs'], io), 2);
  assert.match(err.join('\n'), /unknown host "emacs"/);
  assert.equal(await runCli(['proxy'], io), 2, '--config is required');
  const badFile = join(dir, 'invalid.yaml');
  writeFileSync(badFile, 'purpose: x\n');
  assert.equal(await runCli(['proxy', '--config', badFile], io), 1);
  assert.match(err.at(-1)!, /^error: TASKPASS_PROXY_CONFIG_INVALID: .*invalid\.yaml is invalid: broker: /);
});

test('tool names: the prefix goes before each name, collisions name both upstreams', () => {
  const { tools, routes } = exposeTools([
    { upstream: 'tickets', prefix: 'tickets.', tools: [{ name: 'get_ticket', description: 'd' }] },
    { upstream: 'notes', prefix: 'notes.', tools: [{ name: 'get_ticket' }, { name: 'read_note' }] },
  ]);
  assert.deepEqual(
    tools.map((t) => t.name),
    ['tickets.get_ticket', 'notes.get_ticket', 'notes.read_note'],
  );
  assert.equal(tools[0]!.description, 'd', 'everything but the name passes through');
  assert.deepEqual(routes.get('notes.get_ticket'), { upstream: 'notes', tool: 'get_ticket' });
  assert.throws(
    () =>
      exposeTools([
        { upstream: 'a', prefix: 'x.', tools: [{ name: 'get_ticket' }] },
        { upstream: 'b', prefix: 'x.get_', tools: [{ name: 'ticket' }] },
      ]),
    (e: ProxyError) =>
      e.code === 'TASKPASS_PROXY_CONFIG_INVALID' &&
      e.message.includes('"x.get_ticket" is "get_ticket" of upstreams.a and "ticket" of upstreams.b'),
  );
});

const textOf = (r: ReturnType<typeof toolErrorResult>) => (r.content[0] as { text: string }).text;

test('refusals become tool errors that say the code, the reason, the template and where to approve', () => {
  const denied = toolErrorResult(
    new TaskpassDeniedError(403, {
      code: 'TASKPASS_DENIED_TOOL',
      message: 'No template allows this tool.',
      reason: 'delete_ticket is not a tool of any template of this task',
      template: 'tickets-support-write',
    }),
    'tickets.delete_ticket',
    { upstream: 'tickets' },
  );
  assert.equal(denied.isError, true);
  assert.equal(
    textOf(denied),
    [
      'Taskpass refused the call of tickets.delete_ticket (TASKPASS_DENIED_TOOL).',
      'Reason: delete_ticket is not a tool of any template of this task',
      'Template: tickets-support-write',
    ].join('\n'),
  );

  const expiresAt = new Date('2026-12-02T14:00:00Z');
  const approval = toolErrorResult(
    new TaskpassApprovalRequiredError(
      403,
      {
        code: 'TASKPASS_APPROVAL_REQUIRED',
        message: 'A support lead must approve this call.',
        template: 'tickets-refunds',
      },
      {
        approvalId: 'apr_1',
        approvalUrl: 'https://broker.example.com/v1/approvals/apr_1',
        expiresAt,
        request: {} as never,
      },
    ),
    'issue_refund',
    { upstream: 'tickets' },
  );
  const text = textOf(approval);
  assert.match(
    text,
    /^The call of issue_refund needs a person's approval before it can run \(TASKPASS_APPROVAL_REQUIRED\)\./,
  );
  assert.match(text, /Reason: A support lead must approve this call\./);
  assert.match(text, /Template: tickets-refunds/);
  assert.match(
    text,
    /Approve at: https:\/\/broker\.example\.com\/v1\/approvals\/apr_1 \(expires 2026-12-02T14:00:00\.000Z\)/,
  );
  assert.deepEqual(approval._meta?.['dev.taskpass/error'], {
    code: 'TASKPASS_APPROVAL_REQUIRED',
    reason: 'A support lead must approve this call.',
    template: 'tickets-refunds',
    approvalId: 'apr_1',
    approvalUrl: 'https://broker.example.com/v1/approvals/apr_1',
    expiresAt: expiresAt.toISOString(),
  });

  const outage = textOf(
    toolErrorResult(
      new AgentPluginError('TASKPASS_AGENT_BROKER_UNREACHABLE', 'connect ECONNREFUSED 127.0.0.1:8443'),
      'get_ticket',
      { upstream: 'tickets' },
    ),
  );
  assert.match(outage, /could not be made \(TASKPASS_AGENT_BROKER_UNREACHABLE\)/);
  assert.match(
    outage,
    /Reason: the Taskpass broker could not be reached \(connect ECONNREFUSED 127\.0\.0\.1:8443\); the call was not sent/,
  );

  assert.match(
    textOf(
      toolErrorResult(new BrokerError(429, { code: 'TASKPASS_RATE_LIMITED', message: 'slow down' }), 't', {
        upstream: 'u',
      }),
    ),
    /\(TASKPASS_RATE_LIMITED\)\.\nReason: slow down/,
  );
  assert.match(
    textOf(
      toolErrorResult(new DOMException('timed out', 'TimeoutError'), 't', {
        upstream: 'u',
        approvalTimeoutMs: 120_000,
      }),
    ),
    /\(TASKPASS_PROXY_APPROVAL_TIMEOUT\)\.\nReason: no one decided the approval within 120 s/,
  );
  assert.match(
    textOf(toolErrorResult(new Error('Streamable HTTP error: 403'), 't', { upstream: 'tickets' })),
    /\(TASKPASS_PROXY_UPSTREAM_FAILED\)\.\nReason: the MCP server "tickets" failed: Streamable HTTP error: 403/,
  );
});

test('PROXY_ERRORS and the Agent proxy section of docs/errors.md list the same codes', () => {
  const md = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  const start = md.indexOf('## Agent proxy (TASKPASS_PROXY_*)');
  assert.ok(start >= 0, 'docs/errors.md has a "## Agent proxy (TASKPASS_PROXY_*)" section');
  const next = md.indexOf('\n## ', start + 1);
  const section = md.slice(start, next < 0 ? undefined : next);
  const rows = [...section.matchAll(/^\|\s*`(TASKPASS_PROXY_[A-Z_]+)`\s*\|/gm)].map((m) => m[1]!);
  assert.deepEqual(rows.sort(), Object.keys(PROXY_ERRORS).sort());
});
