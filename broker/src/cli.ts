#!/usr/bin/env node
// `taskpass` — run and operate the broker.
//   taskpass serve [--config file] [--workers N|auto]
//   taskpass policy validate <dir> [--strict] | policy test <dir>
//   taskpass tasks list [--broker URL] [--status s] | tasks revoke <id> [--broker URL] [--reason r]
//   taskpass token decode <jwt> | token explain <jwt> [--broker URL]
//   taskpass audit verify [--from seq] [--to seq]
//   taskpass keys generate-kek [--id id] | keys rewrap [--config file]
//   taskpass approvals list | show <id> | approve <id> | deny <id>   (cli-approvals.ts)
// Admin calls use the caller's own X.509-SVID from the Workload API over mTLS (https URLs), or plain
// HTTP for a tls:none test broker. Exit codes: 0 ok, 1 failure/denied, 2 usage error.
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { parseArgs } from 'node:util';
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, type JSONWebKeySet, jwtVerify } from 'jose';
import { BrokerError } from './errors.ts';

/** Where the CLI writes (tests capture it). */
export interface CliIo {
  out: (s: string) => void;
  err: (s: string) => void;
  env: NodeJS.ProcessEnv;
  /** How to reach the broker over mTLS (from flags and environment; set by runCli). */
  conn?: { hint?: string | undefined; brokerId?: string | undefined };
}

const USAGE = `usage:
  taskpass serve [--config <file>] [--workers <n>|auto]
                                                 run the broker; --workers (config workers,
                                                 TASKPASS_WORKERS): that many processes on the
                                                 same ports, auto = one per core (Redis store only)
  taskpass policy validate <dir> [--strict]   (--strict: overlap warnings fail too)
  taskpass policy test <dir>                  the templates' allow/deny fixtures (<dir>/fixtures)
  taskpass policy test <dir> --engine cedar [--schema <file>]
  taskpass policy test <dir> --engine opa [--opa-url <url>] [--opa-path <rule>]
                                                 a decision point's fixtures (<dir>/fixtures/*.yaml)
                                                 against Cedar (the .cedar files of <dir>) or a
                                                 running OPA serving <dir>'s Rego
  taskpass tasks list [--broker <url>] [--status <status>] [--agent <id>]
  taskpass tasks revoke <task-id> [--broker <url>] [--reason <text>]
  taskpass token decode <jwt>
  taskpass token explain <jwt> [--broker <url>]
  taskpass keys generate-kek [--id <kek-id>] [--out <file>]
                                                 a new KEK ring entry (id:base64url) on stdout, or
                                                 into a new file (mode 0600; an existing one is kept)
  taskpass keys rewrap [--config <file>]         re-wrap stored signing keys under the current KEK
  taskpass guard --config <file>                 the enforcing reverse proxy (needs @taskpass/proxy)
  taskpass proxy --config <file>                 the agent side for unmodified MCP hosts (needs @taskpass/proxy)
  taskpass audit verify [--config <file>] [--from <seq>] [--to <seq>]
                                                 walk the decision records' hash chain in the store;
                                                 exit 1 at the first broken link
  taskpass approvals list|show|approve|deny ...  decide calls held for approval, as yourself
                                                 (taskpass approvals --help)
Broker calls over https authenticate both sides by SPIFFE ID: this process presents its X.509-SVID
from the Workload API (--hint picks the entry by hint) and accepts only the broker's SPIFFE ID
(--broker-id, default spiffe://<own trust domain>/broker).
Environment: TASKPASS_CONFIG, TASKPASS_BROKER_URL, TASKPASS_BROKER_ID, TASKPASS_SVID_HINT,
SPIFFE_ENDPOINT_SOCKET, TASKPASS_JWT_SVID (http brokers).`;

class UsageError extends Error {}

interface HttpResult {
  status: number;
  body: string;
}

async function call(
  url: string,
  method: string,
  io: CliIo,
  body?: { type: string; data: string },
  auth: 'mtls' | 'none' = 'mtls',
): Promise<HttpResult> {
  const u = new URL(url);
  const headers: Record<string, string> = body ? { 'content-type': body.type } : {};
  let tlsOpts: Record<string, unknown> = {};
  let close: (() => Promise<void>) | undefined;
  // Over https the broker is always authenticated by SPIFFE ID (public routes such as the JWKS
  // included: a JWKS from an impostor would make `token explain` vouch for forged tokens).
  if (u.protocol === 'https:') {
    const { matchId, mtlsClientOptions } = await import('@taskpass/spiffe');
    const { X509Source, pickByHint } = await import('@taskpass/spiffe/workload');
    const hint = io.conn?.hint;
    const address = io.env.SPIFFE_ENDPOINT_SOCKET;
    const source = await X509Source.create({
      ...(address ? { address } : {}),
      ...(hint ? { picker: pickByHint(hint) } : {}),
      timeoutMs: 15_000,
    });
    close = () => source.close();
    // The broker is authenticated by its SPIFFE ID (validated against its own trust domain's
    // bundle), not by host name: a certificate from any other workload of the domain is refused.
    const brokerId = io.conn?.brokerId ?? `spiffe://${source.getX509Svid().id.trustDomain.name}/broker`;
    tlsOpts = { ...mtlsClientOptions(source, matchId(brokerId)) };
  }
  if (u.protocol === 'http:' && auth === 'mtls' && io.env.TASKPASS_JWT_SVID) {
    // A tls:none broker cannot see a client certificate: authenticate with a JWT-SVID instead.
    headers.authorization = `Bearer ${io.env.TASKPASS_JWT_SVID}`;
  }
  try {
    return await new Promise<HttpResult>((resolve, reject) => {
      const req = (u.protocol === 'https:' ? httpsRequest : httpRequest)(
        u,
        { method, headers, timeout: 10_000, ...tlsOpts },
        (res) => {
          let data = '';
          res.setEncoding('utf8');
          res.on('data', (c: string) => {
            data += c;
          });
          res.on('end', () => resolve({ status: res.statusCode ?? 0, body: data }));
        },
      );
      req.on('timeout', () => req.destroy(new Error(`timeout calling ${url}`)));
      req.on('error', reject);
      if (body) req.write(body.data);
      req.end();
    });
  } finally {
    await close?.();
  }
}

function brokerUrl(v: Record<string, unknown>, io: CliIo, required: boolean): string | undefined {
  const url = (typeof v.broker === 'string' ? v.broker : undefined) ?? io.env.TASKPASS_BROKER_URL;
  if (!url && required) throw new UsageError('--broker <url> (or TASKPASS_BROKER_URL) is required');
  return url?.replace(/\/$/, '');
}

export function explainText(
  header: Record<string, unknown>,
  c: Record<string, unknown>,
  nowSec: number,
): string {
  const lines: string[] = [];
  const d = Array.isArray(c.authorization_details)
    ? (c.authorization_details[0] as Record<string, unknown>)
    : undefined;
  const act = c.act as { sub?: string } | undefined;
  lines.push(
    `token ${String(c.jti)} (kid ${String(header.kid)}, ${String(header.alg)}, typ ${String(header.typ)})`,
  );
  lines.push(`  issued by   ${String(c.iss)}`);
  lines.push(`  for user    ${String(c.sub)}${act?.sub === c.sub ? ' (autonomous task)' : ''}`);
  lines.push(`  agent       ${String(act?.sub ?? c.client_id)}`);
  lines.push(`  task        ${String(c.txn)}`);
  lines.push(`  template    ${String(c.tpl)}`);
  if (d?.type === 'mcp_session')
    lines.push(`  permits     MCP session requests on ${String(c.aud)}; no tool call`);
  else if (d) {
    lines.push(
      `  permits     ${String(d.action)} call of tool ${String(d.tool)} on resource ${String(d.resource)} at ${String(c.aud)}`,
    );
    if (d.args_sha256) lines.push(`  arguments   bound to sha256 ${String(d.args_sha256)}`);
  }
  lines.push(`  single use  ${c.single_use === true ? 'yes' : 'no'}`);
  const cnf = c.cnf as Record<string, string> | undefined;
  lines.push(
    `  bound to    ${cnf?.['x5t#S256'] ? `client certificate x5t#S256 ${cnf['x5t#S256']}` : 'nothing (bearer; JWT-SVID agent)'}`,
  );
  const iat = Number(c.iat);
  const exp = Number(c.exp);
  lines.push(
    `  lifetime    ${exp - iat}s, ${exp > nowSec ? `expires in ${exp - nowSec}s` : `expired ${nowSec - exp}s ago`} (${new Date(exp * 1000).toISOString()})`,
  );
  return lines.join('\n');
}

// A variable specifier: the broker neither depends on nor type-checks against the proxy package.
const PROXY_PACKAGE = '@taskpass/proxy';

async function runProxyCli(argv: readonly string[], io: CliIo): Promise<number> {
  let proxy: { runCli(argv: readonly string[], io: Pick<CliIo, 'out' | 'err' | 'env'>): Promise<number> };
  try {
    proxy = await import(PROXY_PACKAGE);
  } catch (e) {
    const missing = (e as { code?: unknown }).code === 'ERR_MODULE_NOT_FOUND';
    if (!missing || !String((e as Error).message).includes(PROXY_PACKAGE)) throw e;
    io.err(`taskpass ${argv[0]} needs the @taskpass/proxy package: npm install @taskpass/proxy`);
    return 1;
  }
  return proxy.runCli(argv, io);
}

/** Runs the CLI; resolves with the exit code. */
export async function runCli(argv: readonly string[], io: CliIo = defaultIo()): Promise<number> {
  // `taskpass guard …` and `taskpass proxy …` belong to @taskpass/proxy, an optional package with
  // options of its own.
  if (argv[0] === 'guard' || argv[0] === 'proxy') return runProxyCli(argv, io);
  // Approvers are people with their own token, not workloads: their own flags and connection.
  if (argv[0] === 'approvals') return (await import('./cli-approvals.ts')).runApprovalsCli(argv.slice(1), io);
  try {
    const { values, positionals } = parseArgs({
      args: [...argv],
      allowPositionals: true,
      options: {
        config: { type: 'string', short: 'c' },
        broker: { type: 'string' },
        'broker-id': { type: 'string' },
        hint: { type: 'string' },
        status: { type: 'string' },
        agent: { type: 'string' },
        reason: { type: 'string' },
        id: { type: 'string' },
        out: { type: 'string' },
        from: { type: 'string' },
        to: { type: 'string' },
        json: { type: 'boolean' },
        strict: { type: 'boolean' },
        engine: { type: 'string' },
        schema: { type: 'string' },
        'opa-url': { type: 'string' },
        'opa-path': { type: 'string' },
        workers: { type: 'string' },
        help: { type: 'boolean', short: 'h' },
      },
    });
    const [cmd, sub, arg] = positionals;
    io = {
      ...io,
      conn: {
        hint: values.hint ?? io.env.TASKPASS_SVID_HINT,
        brokerId: values['broker-id'] ?? io.env.TASKPASS_BROKER_ID,
      },
    };
    if (values.help || !cmd) {
      io.out(USAGE);
      return values.help ? 0 : 2;
    }
    if (cmd === 'serve') {
      const { loadConfigInput, parseConfig } = await import('./config.ts');
      const { startBroker } = await import('./server.ts');
      const { default: cluster } = await import('node:cluster');
      const { servePrimary, serveWorker, WORKER_ENV } = await import('./cluster.ts');
      // A worker forked by `serve --workers N`: its configuration comes from the primary.
      if (cluster.isWorker && io.env[WORKER_ENV] === '1') {
        await serveWorker(startBroker);
        return -1; // keep running
      }
      const env = values.workers === undefined ? io.env : { ...io.env, TASKPASS_WORKERS: values.workers };
      const input = loadConfigInput({ ...(values.config ? { file: values.config } : {}), env });
      const config = parseConfig(input.raw, input.source);
      if (config.workers > 1) return await servePrimary(input, config, io);
      await startBroker(config);
      return -1; // keep running
    }
    if (cmd === 'keys' && sub === 'generate-kek') {
      const { generateKek } = await import('./key-wrap.ts');
      // Printed once, for the operator to put into a secret store; never logged.
      const kek = values.id ? generateKek(values.id) : generateKek();
      if (!values.out) {
        io.out(kek);
        return 0;
      }
      const { writeFileSync } = await import('node:fs');
      try {
        writeFileSync(values.out, `${kek}\n`, { flag: 'wx', mode: 0o600 });
        io.out(`new KEK ${kek.slice(0, kek.indexOf(':'))} written to ${values.out}`);
      } catch (e) {
        // Never replace a KEK: the keys in the store could no longer be read.
        if ((e as NodeJS.ErrnoException).code !== 'EEXIST') throw e;
        io.out(`${values.out} exists; kept`);
      }
      return 0;
    }
    if (cmd === 'audit' && sub === 'verify') {
      const seqArg = (name: string, v: string | undefined): number | undefined => {
        if (v === undefined) return undefined;
        if (!/^\d+$/.test(v)) throw new UsageError(`--${name} must be a record seq (a whole number)`);
        return Number(v);
      };
      const from = seqArg('from', values.from);
      const to = seqArg('to', values.to);
      const { loadConfig } = await import('./config.ts');
      const { createStore } = await import('./store/index.ts');
      const { verifyChain } = await import('./decision-chain.ts');
      const config = loadConfig({ ...(values.config ? { file: values.config } : {}), env: io.env });
      const store = createStore(config.store);
      await store.init();
      try {
        const v = await verifyChain(store, { from, to });
        if (values.json) io.out(JSON.stringify(v));
        else if (v.ok) {
          io.out(
            v.count === 0
              ? `ok: no records to check (chain head ${v.last.seq}, hash ${v.last.hash})`
              : `ok: ${v.count} record(s) ${v.first}..${v.last.seq} verified; last hash ${v.last.hash}`,
          );
        } else io.err(`BROKEN at record ${v.seq}: ${v.problem} (${v.checked} record(s) verified before it)`);
        return v.ok ? 0 : 1;
      } finally {
        await store.close();
      }
    }
    if (cmd === 'keys' && sub === 'rewrap') {
      // What every broker start does too; this lets an operator finish a KEK rotation (and then
      // drop the old KEK) without restarting the replicas.
      const { loadConfig } = await import('./config.ts');
      const { keyWrapperFromConfig } = await import('./key-wrap.ts');
      const { SigningKeys } = await import('./keys.ts');
      const { createStore } = await import('./store/index.ts');
      const config = loadConfig({ ...(values.config ? { file: values.config } : {}), env: io.env });
      const wrapper = keyWrapperFromConfig(config.keys);
      const store = createStore(config.store);
      await store.init();
      try {
        const keys = await SigningKeys.open(store, {
          wrapper,
          rotateEverySec: config.keys.rotateEvery,
          prepublishSec: config.keys.prepublish,
          maxTokenTtlSec: config.tokens.maxTtl,
          autoStart: false,
        });
        await keys.close();
        const left = (await store.loadSigningKeys()).filter((k) => wrapper.needsRewrap(k.privateJwk)).length;
        io.out(
          `${left === 0 ? 'ok' : 'NOT DONE'}: signing keys ${wrapper.protection === 'encrypted' ? `wrapped under KEK ${wrapper.currentKekId}` : 'stored in plaintext'}${left ? ` (${left} left)` : ''}`,
        );
        return left === 0 ? 0 : 1;
      } finally {
        await store.close();
      }
    }
    if (cmd === 'policy' && (sub === 'validate' || sub === 'test')) {
      if (!arg) throw new UsageError(`taskpass policy ${sub} <dir>`);
      const policy = await import('./policy/index.ts');
      if (sub === 'validate') {
        const r = await policy.loadPolicyDir(arg);
        if (!r.ok) {
          io.err(policy.formatPolicyErrors(r.errors));
          return 1;
        }
        // Warnings do not make the set invalid (the broker loads it); --strict makes them fail CI.
        if (r.set.warnings.length) io.err(policy.formatPolicyWarnings(r.set.warnings));
        io.out(
          `ok: ${r.set.templates.length} template(s) in ${r.files.length} file(s) under ${arg}` +
            (r.set.warnings.length ? `, ${r.set.warnings.length} warning(s)` : ''),
        );
        return values.strict && r.set.warnings.length ? 1 : 0;
      }
      if (values.engine !== undefined) return await engineFixtures(arg, values, io);
      const result = await policy.runFixtures(arg);
      for (const f of result.failures) io.err(`FAIL ${f.file}: ${f.message}`);
      io.out(`${result.passed} passed, ${result.failures.length} failed`);
      return result.failures.length === 0 ? 0 : 1;
    }
    if (cmd === 'tasks' && sub === 'list') {
      const base = brokerUrl(values, io, true)!;
      const q = new URLSearchParams();
      if (values.status) q.set('status', values.status);
      if (values.agent) q.set('agent', values.agent);
      const r = await call(`${base}/admin/v1/tasks${q.size ? `?${q}` : ''}`, 'GET', io);
      if (r.status !== 200) return fail(io, r);
      const { tasks } = JSON.parse(r.body) as { tasks: Record<string, unknown>[] };
      if (values.json) io.out(JSON.stringify(tasks, null, 2));
      else {
        io.out(['TASK', 'STATUS', 'AGENT', 'SUB', 'EXPIRES'].join('\t'));
        for (const t of tasks) {
          io.out(
            [t.task_id, t.status, t.agent, t.sub, new Date(Number(t.expires_at) * 1000).toISOString()].join(
              '\t',
            ),
          );
        }
      }
      return 0;
    }
    if (cmd === 'tasks' && sub === 'revoke') {
      if (!arg) throw new UsageError('taskpass tasks revoke <task-id>');
      const base = brokerUrl(values, io, true)!;
      const r = await call(`${base}/admin/v1/tasks/${encodeURIComponent(arg)}/revoke`, 'POST', io, {
        type: 'application/json',
        data: JSON.stringify(values.reason ? { reason: values.reason } : {}),
      });
      if (r.status !== 200) return fail(io, r);
      const b = JSON.parse(r.body) as { task_id: string; revocation_seq: number };
      io.out(`revoked ${b.task_id} (revocation seq ${b.revocation_seq})`);
      return 0;
    }
    if (cmd === 'token' && (sub === 'decode' || sub === 'explain')) {
      if (!arg) throw new UsageError(`taskpass token ${sub} <jwt>`);
      let header: Record<string, unknown>;
      let claims: Record<string, unknown>;
      try {
        header = decodeProtectedHeader(arg) as Record<string, unknown>;
        claims = decodeJwt(arg) as Record<string, unknown>;
      } catch {
        io.err('not a JWT');
        return 1;
      }
      if (sub === 'decode') {
        io.out(JSON.stringify({ header, claims }, null, 2));
        io.out('(decoded without verification)');
        return 0;
      }
      io.out(explainText(header, claims, Math.floor(Date.now() / 1000)));
      const base = brokerUrl(values, io, false);
      if (!base) {
        io.out('  signature   not checked (give --broker to verify against its JWKS and introspect)');
        return 0;
      }
      const jwks = await call(`${base}/.well-known/jwks.json`, 'GET', io, undefined, 'none');
      let verified = false;
      try {
        await jwtVerify(arg, createLocalJWKSet(JSON.parse(jwks.body) as JSONWebKeySet), {
          typ: 'at+jwt',
          algorithms: ['ES256'],
        });
        verified = true;
        io.out('  signature   valid (broker JWKS)');
      } catch (e) {
        io.out(`  signature   INVALID or expired: ${(e as Error).message}`);
      }
      const intro = await call(`${base}/oauth2/introspect`, 'POST', io, {
        type: 'application/x-www-form-urlencoded',
        data: new URLSearchParams({ token: arg }).toString(),
      });
      if (intro.status === 200) {
        const a = JSON.parse(intro.body) as { active: boolean };
        io.out(
          `  broker      ${a.active ? 'active' : 'NOT active (expired, revoked, task closed or consumed)'}`,
        );
        return verified && a.active ? 0 : 1;
      }
      io.out(`  broker      introspection refused (${intro.status})`);
      return verified ? 0 : 1;
    }
    throw new UsageError(`unknown command: ${positionals.join(' ')}`);
  } catch (e) {
    if (e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      io.err(`taskpass: ${(e as Error).message}\n${USAGE}`);
      return 2;
    }
    if (e instanceof BrokerError) {
      io.err(`taskpass: ${e.code}: ${e.message}`);
      return 1;
    }
    io.err(`taskpass: ${(e as Error).message}`);
    return 1;
  }
}

function fail(io: CliIo, r: HttpResult): number {
  let msg = r.body;
  try {
    const b = JSON.parse(r.body) as { code?: string; message?: string };
    if (b.code) msg = `${b.code}: ${b.message ?? ''}`;
  } catch {}
  io.err(`taskpass: broker answered ${r.status}: ${msg}`);
  return 1;
}

function defaultIo(): CliIo {
  return {
    out: (s) => process.stdout.write(`${s}\n`),
    err: (s) => process.stderr.write(`${s}\n`),
    env: process.env,
  };
}

const isMain =
  process.argv[1] && import.meta.url.endsWith(process.argv[1].replace(/\\/g, '/').split('/').pop() ?? '');
if (isMain && /cli\.(ts|js)$/.test(process.argv[1] ?? '')) {
  runCli(process.argv.slice(2)).then((code) => {
    if (code >= 0) process.exitCode = code;
  });
}

/**
 * `taskpass policy test <dir> --engine cedar|opa`: a decision point's fixtures (docs/policy-engines.md
 * "Fixtures") against the engine itself — Cedar loaded from `<dir>` in this process, or the OPA server
 * at `--opa-url` that serves `<dir>`'s Rego — so a policy change is checked the way the broker will
 * ask it.
 */
async function engineFixtures(
  dir: string,
  values: { engine?: string; schema?: string; 'opa-url'?: string; 'opa-path'?: string },
  io: CliIo,
): Promise<number> {
  const { readdir, readFile } = await import('node:fs/promises');
  const { join } = await import('node:path');
  const { parsePdpFixtures, runPdpFixtures } = await import('./pdp/fixtures.ts');
  const fixturesDir = join(dir, 'fixtures');
  const files = (await readdir(fixturesDir).catch(() => [] as string[]))
    .filter((f) => /\.ya?ml$/.test(f))
    .sort();
  if (files.length === 0) throw new UsageError(`no fixture files (*.yaml) in ${fixturesDir}`);
  let dp: import('./pdp/types.ts').DecisionPoint;
  if (values.engine === 'cedar') {
    const { createCedarDecisionPoint } = await import('./pdp/cedar.ts');
    dp = await createCedarDecisionPoint({
      name: 'cedar',
      policies: dir,
      schema: values.schema,
      watch: false,
    });
  } else if (values.engine === 'opa') {
    const { createOpaDecisionPoint } = await import('./pdp/opa.ts');
    dp = createOpaDecisionPoint({
      name: 'opa',
      kind: 'opa',
      url: values['opa-url'] ?? 'http://127.0.0.1:8181',
      path: values['opa-path'] ?? 'taskpass/ticket_desk/decision',
      timeoutMs: 2000,
    });
  } else {
    throw new UsageError(`--engine must be cedar or opa, not ${values.engine}`);
  }
  let passed = 0;
  let failed = 0;
  try {
    for (const f of files) {
      const cases = parsePdpFixtures(await readFile(join(fixturesDir, f), 'utf8'));
      const failures = await runPdpFixtures(dp, cases);
      for (const m of failures) io.err(`FAIL ${f}: ${m}`);
      failed += failures.length;
      passed += cases.length - failures.length;
    }
  } finally {
    await dp.close();
  }
  io.out(`${values.engine}: ${passed} passed, ${failed} failed`);
  return failed === 0 ? 0 : 1;
}
