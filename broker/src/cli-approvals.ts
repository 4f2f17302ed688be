// `taskpass approvals list | show <id> | approve <id> | deny <id>` (docs/approvals.md): a person
// decides the calls a template holds for approval. The approver authenticates with their OWN user
// token (OIDC, from a trusted issuer): read from a file or the environment, never from a flag, which
// would land in shell history and in `ps`. No workload identity is presented: the broker refuses
// an SVID as approver, and an agent can ask but never approve.
//
// TLS: the broker serves its X.509-SVID, so it is authenticated by SPIFFE ID against its trust
// domain's bundle: from `--ca <pem>` (what `spire-server bundle show` prints), else from the
// Workload API. Plain http only to a loopback test broker, since the token is a bearer credential.
import { readFileSync } from 'node:fs';
import { request as httpRequest } from 'node:http';
import { request as httpsRequest } from 'node:https';
import { X509Certificate } from 'node:crypto';
import type { ConnectionOptions } from 'node:tls';
import { parseArgs } from 'node:util';
import {
  ACTIONS,
  APPROVAL_DECISIONS,
  APPROVAL_ID,
  APPROVAL_STATUSES,
  type ApprovalView,
} from '@taskpass/contract';
import { z } from 'zod';
import type { CliIo } from './cli.ts';

export const APPROVALS_USAGE = `usage:
  taskpass approvals list [--status <status>]        approvals you may decide (default: pending)
  taskpass approvals show <approval-id>              what is asked: agent, user, task, call, arguments
  taskpass approvals approve <approval-id> [--comment <text>]
  taskpass approvals deny <approval-id> [--comment <text>]
options (all commands):
  --broker <url>          the broker (env TASKPASS_BROKER_URL)
  --token-file <path>     a file holding your own user token (env TASKPASS_APPROVER_TOKEN: the token)
  --ca <pem-file>         the broker's trust bundle (env TASKPASS_CA_FILE); default: the Workload API's
  --broker-id <id>        the broker's SPIFFE ID (env TASKPASS_BROKER_ID; default spiffe://<td>/broker)
  --json                  machine-readable output
Exit codes: 0 ok, 1 refused or failed, 2 usage error.`;

/** At most this much comment (the broker's limit too). */
const MAX_COMMENT = 1000;
const TIMEOUT_MS = 15_000;

class UsageError extends Error {}

// --- Broker answers (validated: this output is what a person decides on) ----------------------

const Subject = z.object({
  agent: z.string(),
  user: z.string(),
  task: z.object({ id: z.string(), purpose: z.string() }),
  audience: z.string(),
  tool: z.string(),
  resource: z.string(),
  action: z.enum(ACTIONS),
  args_sha256: z.string(),
  arguments: z.record(z.string(), z.unknown()).optional(),
  template: z.string(),
});
const View = z.object({
  id: z.string().regex(APPROVAL_ID),
  status: z.enum(APPROVAL_STATUSES),
  created_at: z.number(),
  expires_at: z.number(),
  approval_url: z.string(),
  request: Subject,
  decision: z
    .object({
      decision: z.enum(APPROVAL_DECISIONS),
      approver: z.object({ iss: z.string(), sub: z.string() }),
      decided_at: z.number(),
      comment: z.string().optional(),
    })
    .optional(),
});
const List = z.object({ approvals: z.array(View) });

// --- Connection ---------------------------------------------------------------------------------

interface Conn {
  base: URL;
  token: string;
  tls: ConnectionOptions | undefined;
  close: () => Promise<void>;
}

interface Flags {
  broker?: string | undefined;
  'token-file'?: string | undefined;
  ca?: string | undefined;
  'broker-id'?: string | undefined;
}

function approverToken(v: Flags, io: CliIo): string {
  let token: string | undefined;
  if (v['token-file']) {
    try {
      token = readFileSync(v['token-file'], 'utf8');
    } catch (e) {
      throw new UsageError(`cannot read --token-file: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
  } else token = io.env.TASKPASS_APPROVER_TOKEN;
  token = token?.trim();
  if (!token) {
    throw new UsageError('your user token is required: --token-file <path> or TASKPASS_APPROVER_TOKEN');
  }
  // One line of visible ASCII: a file holding anything else is the wrong file (and must not be
  // sent to the broker as a header).
  if (!/^[\x21-\x7e]{1,16384}$/.test(token)) throw new UsageError('the user token is not a single token');
  return token;
}

const LOOPBACK = new Set(['127.0.0.1', '[::1]', 'localhost']);

/** The trust domain named by a CA certificate's SPIFFE URI SAN (SPIRE CAs carry one). */
function trustDomainOfCa(pem: string): string | undefined {
  try {
    const san = new X509Certificate(pem).subjectAltName ?? '';
    return /URI:spiffe:\/\/([^/,\s]+)/.exec(san)?.[1];
  } catch {
    return undefined;
  }
}

async function connect(v: Flags, io: CliIo): Promise<Conn> {
  const raw = v.broker ?? io.env.TASKPASS_BROKER_URL;
  if (!raw) throw new UsageError('--broker <url> (or TASKPASS_BROKER_URL) is required');
  let base: URL;
  try {
    base = new URL(raw.replace(/\/+$/, ''));
  } catch {
    throw new UsageError(`--broker is not a URL: ${raw}`);
  }
  const token = approverToken(v, io);
  if (base.protocol === 'http:') {
    if (!LOOPBACK.has(base.hostname)) {
      throw new UsageError(
        'plain http is allowed only to a loopback test broker: your token would travel in clear',
      );
    }
    return { base, token, tls: undefined, close: async () => {} };
  }
  if (base.protocol !== 'https:') throw new UsageError('--broker must be an https:// URL');

  const { matchId, SpiffeId, X509Bundle, tlsClientOptions } = await import('@taskpass/spiffe');
  const brokerIdFlag = v['broker-id'] ?? io.env.TASKPASS_BROKER_ID;
  const caFile = v.ca ?? io.env.TASKPASS_CA_FILE;
  const brokerId = (td: string | undefined): string => {
    const id = brokerIdFlag ?? (td ? `spiffe://${td}/broker` : undefined);
    if (!id) throw new UsageError('cannot tell the broker trust domain: give --broker-id');
    try {
      return SpiffeId.parse(id).toString();
    } catch {
      throw new UsageError(`--broker-id is not a SPIFFE ID: ${id}`);
    }
  };
  if (caFile) {
    let pem: string;
    try {
      pem = readFileSync(caFile, 'utf8');
    } catch (e) {
      throw new UsageError(`cannot read --ca: ${(e as NodeJS.ErrnoException).code ?? 'error'}`);
    }
    const id = brokerId(trustDomainOfCa(pem));
    let bundle: InstanceType<typeof X509Bundle>;
    try {
      bundle = X509Bundle.fromPem(SpiffeId.parse(id).trustDomain, pem);
    } catch (e) {
      throw new UsageError(`--ca holds no usable certificate: ${(e as Error).message}`);
    }
    return { base, token, tls: tlsClientOptions(bundle, matchId(id)), close: async () => {} };
  }
  // No --ca: the bundles of the Workload API this host runs (the broker's own trust domain, when
  // it is the only one, names the default broker ID). No SVID is presented.
  const { BundleSource } = await import('@taskpass/spiffe/workload');
  const address = io.env.SPIFFE_ENDPOINT_SOCKET;
  const bundles = await BundleSource.create({ ...(address ? { address } : {}), timeoutMs: TIMEOUT_MS });
  try {
    const tds = [...bundles.getX509Bundles()].map((b) => b.trustDomain.name);
    const id = brokerId(tds.length === 1 ? tds[0] : undefined);
    return { base, token, tls: tlsClientOptions(bundles, matchId(id)), close: () => bundles.close() };
  } catch (e) {
    await bundles.close();
    throw e;
  }
}

interface Answer {
  status: number;
  body: string;
}

function send(c: Conn, method: 'GET' | 'POST', path: string, body?: unknown): Promise<Answer> {
  const url = new URL(c.base.pathname.replace(/\/$/, '') + path, c.base);
  const headers: Record<string, string> = { authorization: `Bearer ${c.token}`, accept: 'application/json' };
  const data = body === undefined ? undefined : JSON.stringify(body);
  if (data !== undefined) headers['content-type'] = 'application/json';
  return new Promise<Answer>((resolve, reject) => {
    const req = (url.protocol === 'https:' ? httpsRequest : httpRequest)(
      url,
      { method, headers, timeout: TIMEOUT_MS, ...(c.tls ?? {}) },
      (res) => {
        let text = '';
        res.setEncoding('utf8');
        res.on('data', (chunk: string) => {
          text += chunk;
        });
        res.on('end', () => resolve({ status: res.statusCode ?? 0, body: text }));
      },
    );
    req.on('timeout', () => req.destroy(new Error(`timeout calling ${url.origin}`)));
    req.on('error', reject);
    if (data !== undefined) req.write(data);
    req.end();
  });
}

// --- Output -------------------------------------------------------------------------------------

const iso = (sec: number) => new Date(sec * 1000).toISOString();
const callOf = (r: ApprovalView['request']) => `${r.action} ${r.tool} on ${r.resource}`;

function showText(v: ApprovalView): string {
  const r = v.request;
  const lines = [
    `approval ${v.id}: ${v.status}`,
    `  agent       ${r.agent}`,
    `  for user    ${r.user}`,
    `  task        ${r.task.id}: ${r.task.purpose}`,
    `  call        ${callOf(r)} at ${r.audience}`,
    `  template    ${r.template}`,
  ];
  if (r.arguments !== undefined) {
    lines.push('  arguments');
    for (const l of JSON.stringify(r.arguments, null, 2).split('\n')) lines.push(`    ${l}`);
  }
  lines.push(`  args sha256 ${r.args_sha256} (the token is bound to exactly these arguments)`);
  lines.push(`  asked at    ${iso(v.created_at)}`);
  if (v.status === 'pending') lines.push(`  expires at  ${iso(v.expires_at)}`);
  lines.push(`  url         ${v.approval_url}`);
  const d = v.decision;
  if (d) {
    lines.push(
      `  decided     ${d.decision} by ${d.approver.sub} (${d.approver.iss}) at ${iso(d.decided_at)}`,
    );
    if (d.comment) lines.push(`  comment     ${d.comment}`);
  }
  return lines.join('\n');
}

function refused(io: CliIo, r: Answer): number {
  let msg = r.body;
  try {
    const b = JSON.parse(r.body) as { code?: string; message?: string };
    if (b.code) msg = `${b.code}: ${b.message ?? ''}`;
  } catch {}
  io.err(`taskpass: broker answered ${r.status}: ${msg}`);
  return 1;
}

function parsed<T>(schema: z.ZodType<T>, r: Answer): T {
  let json: unknown;
  try {
    json = JSON.parse(r.body);
  } catch {
    throw new Error('the broker answer is not JSON');
  }
  const p = schema.safeParse(json);
  if (!p.success) throw new Error(`the broker answer does not match the API: ${z.prettifyError(p.error)}`);
  return p.data;
}

function approvalId(arg: string | undefined, sub: string): string {
  if (!arg) throw new UsageError(`taskpass approvals ${sub} <approval-id>`);
  if (!APPROVAL_ID.test(arg)) throw new UsageError(`not an approval id (apr_…): ${arg}`);
  return arg;
}

// --- Commands -----------------------------------------------------------------------------------

/** Runs `taskpass approvals …` (argv after `approvals`); resolves with the exit code. */
export async function runApprovalsCli(argv: readonly string[], io: CliIo): Promise<number> {
  let conn: Conn | undefined;
  try {
    const { values, positionals } = parseArgs({
      args: [...argv],
      allowPositionals: true,
      options: {
        broker: { type: 'string' },
        'broker-id': { type: 'string' },
        'token-file': { type: 'string' },
        ca: { type: 'string' },
        status: { type: 'string' },
        comment: { type: 'string' },
        json: { type: 'boolean' },
        help: { type: 'boolean', short: 'h' },
      },
    });
    const [sub, arg, extra] = positionals;
    if (values.help || !sub) {
      io.out(APPROVALS_USAGE);
      return values.help ? 0 : 2;
    }
    if (extra !== undefined) throw new UsageError(`unexpected argument: ${extra}`);
    if (sub === 'list') {
      if (arg !== undefined) throw new UsageError(`unexpected argument: ${arg}`);
      const status = values.status ?? 'pending';
      if (!(APPROVAL_STATUSES as readonly string[]).includes(status)) {
        throw new UsageError(`--status must be one of ${APPROVAL_STATUSES.join(', ')}`);
      }
      conn = await connect(values, io);
      const r = await send(conn, 'GET', `/v1/approvals?status=${status}`);
      if (r.status !== 200) return refused(io, r);
      const { approvals } = parsed(List, r);
      if (values.json) io.out(JSON.stringify(approvals, null, 2));
      else {
        io.out(['APPROVAL', 'STATUS', 'EXPIRES', 'USER', 'AGENT', 'CALL', 'TEMPLATE'].join('\t'));
        for (const v of approvals) {
          const r2 = v.request;
          io.out([v.id, v.status, iso(v.expires_at), r2.user, r2.agent, callOf(r2), r2.template].join('\t'));
        }
      }
      return 0;
    }
    if (sub === 'show') {
      const id = approvalId(arg, sub);
      conn = await connect(values, io);
      const r = await send(conn, 'GET', `/v1/approvals/${id}`);
      if (r.status !== 200) return refused(io, r);
      const v = parsed(View, r);
      io.out(values.json ? JSON.stringify(v, null, 2) : showText(v));
      return 0;
    }
    if (sub === 'approve' || sub === 'deny') {
      const id = approvalId(arg, sub);
      const comment = values.comment;
      if (comment !== undefined && (comment.length === 0 || comment.length > MAX_COMMENT)) {
        throw new UsageError(`--comment must be 1 to ${MAX_COMMENT} characters`);
      }
      conn = await connect(values, io);
      const r = await send(conn, 'POST', `/v1/approvals/${id}/decision`, {
        decision: sub,
        ...(comment !== undefined ? { comment } : {}),
      });
      if (r.status < 200 || r.status > 299) return refused(io, r);
      // The decision is made and durable: report it even if the answer carries less than a view,
      // so nobody decides twice.
      let v: ApprovalView | undefined;
      try {
        v = parsed(View, r);
      } catch {}
      if (values.json) io.out(v ? JSON.stringify(v, null, 2) : r.body);
      else {
        const what = v ? `: ${callOf(v.request)} for ${v.request.user}` : '';
        io.out(`${sub === 'approve' ? 'approved' : 'denied'} ${id}${what}`);
      }
      return 0;
    }
    throw new UsageError(`unknown command: approvals ${sub}`);
  } catch (e) {
    if (e instanceof UsageError || (e as { code?: string }).code?.startsWith('ERR_PARSE_ARGS')) {
      io.err(`taskpass: ${(e as Error).message}\n${APPROVALS_USAGE}`);
      return 2;
    }
    io.err(`taskpass: ${(e as Error).message}`);
    return 1;
  } finally {
    await conn?.close();
  }
}
