// `npm run demo`: the whole story on real SPIRE, told in a few screens. Starts the stack
// (examples/stack.ts), runs the scripted agent (examples/ticket-desk/agent.ts) for Alice, prints who
// is who, the task and its ceiling, each tool call with its token, the refusals with their codes,
// a large refund that waits until a support lead (Bob, with his own IdP token) approves it with
// `taskpass approvals approve`, the completion and what happens to a leftover token, then stops
// everything and checks that no SPIRE process of this run is left. Exit code 0 only when every step
// went as expected. `--keep` keeps the stack up after the story (until Ctrl-C) so a person can follow
// the task in the web console. `--vault` runs it on a real Vault: tokens signed by its Transit key,
// and the ticket desk on PostgreSQL as a per-task database user that Vault creates for the task and
// the broker has revoked once the task ended.
import { execFileSync } from 'node:child_process';
import type { TaskpassApprovalRequiredError } from '@taskpass/agent-plugin';
import { calculateJwkThumbprint, exportJWK, importSPKI } from 'jose';
import { ALICE, BOB, type Stack, startStack } from './stack.ts';
import { checkStory, runAgentScript, type Step, type Transcript } from './ticket-desk/agent.ts';
import { pgRoleExists } from './ticket-desk/tickets-pg.ts';

const tty = process.stdout.isTTY && !process.env.NO_COLOR;
const paint = (code: string) => (s: string) => (tty ? `\x1b[${code}m${s}\x1b[0m` : s);
const bold = paint('1');
const dim = paint('2');
const green = paint('32');
const red = paint('31');
const yellow = paint('33');
const OK = green('✔');
const NO = red('✘');

const out = (s = '') => process.stdout.write(`${s}\n`);
const section = (s: string) => out(`\n${bold(`▸ ${s}`)}`);
const secs = (ms: number) => `${(ms / 1000).toFixed(1)} s`;
const msf = (ms: number) => (ms < 10 ? `${ms.toFixed(1)} ms` : `${Math.round(ms)} ms`);
const time = (iso: string) => iso.slice(11, 19);

function argsText(args: Record<string, unknown>): string {
  return Object.entries(args)
    .map(
      ([k, v]) =>
        `${k}=${typeof v === 'string' && v.length > 24 ? `"${v.slice(0, 24)}…"` : JSON.stringify(v)}`,
    )
    .join(' ');
}

function summary(step: Extract<Step, { kind: 'call' }>): string {
  const r = step.result as
    | {
        tickets?: { id: string }[];
        ticket?: { subject: string; status: string; order: { id: string; amount: number; currency: string } };
        caller?: { user: string; agent: string; approval?: { approver: { sub: string } }; db_user?: string };
      }
    | undefined;
  if (step.isError) return red(`tool error: ${JSON.stringify(r)}`);
  const c = r?.caller;
  const approved = c?.approval ? `, approved by ${c.approval.approver.sub}` : '';
  const asDb = c?.db_user ? `, as database user ${c.db_user}` : '';
  const by = c ? dim(` (server saw ${c.user} via …/${c.agent.split('/').pop()}${approved}${asDb})`) : '';
  if (r?.tickets) return `${r.tickets.length} tickets: ${r.tickets.map((x) => x.id).join(', ')}${by}`;
  if (r?.ticket) {
    const t = r.ticket;
    return `"${t.subject}", ${t.status}, order ${t.order.id} ${t.order.amount.toFixed(2)} ${t.order.currency}${by}`;
  }
  return JSON.stringify(r);
}

function printStep(step: Step): void {
  if (step.kind === 'call') {
    const what = `${step.tool} ${argsText(step.args)}`;
    if (step.outcome === 'error' && !step.refusal) {
      // The token was accepted but the tool failed (e.g. no leased credential): say why.
      out(`  ${red('!!')} ${bold(what)}`);
      out(`      ${summary(step)}`);
      return;
    }
    if (step.outcome === 'allowed') {
      const tk = step.token;
      const facts = tk
        ? `token ${tk.lifetimeSec} s, ${tk.singleUse ? 'single use' : 'reusable'}${tk.certificateBound ? ', bound to the agent cert' : ''}${tk.argsBound ? ', bound to these arguments' : ''}, by ${tk.template}`
        : 'no token recorded';
      out(`  ${OK} ${bold(what)}`);
      if (step.approval) {
        out(`      ${yellow('403 TASKPASS_APPROVAL_REQUIRED')}: the agent waits for a support lead`);
        out(`      ${dim(`approval ${step.approval.id} at ${step.approval.url}`)}`);
        for (const l of approverLines) out(`      ${dim('approver$')} ${l}`);
        const a = tk?.approval;
        out(
          `      approved by ${bold(a?.approver ?? '?')} after ${msf(step.approval.waitedMs)}; the token names the approval and the exact arguments`,
        );
      }
      out(`      ${dim(facts)} ${dim(`· ${msf(step.ms)}`)}`);
      out(`      → ${summary(step)}`);
    } else {
      const r = step.refusal;
      const by = r?.by === 'broker' ? 'broker refused the token' : `${r?.by ?? '?'} refused`;
      const mark = step.outcome === step.expect ? NO : red('!!');
      out(`  ${mark} ${bold(what)}`);
      out(
        `      ${by}: ${yellow(`${r?.status ?? ''} ${r?.code}`)}${r?.template ? ` (template ${r.template})` : ''}`,
      );
      out(`      ${dim(r?.reason ?? '')}`);
    }
  } else {
    const r = step.refusal;
    out(
      `  ${step.outcome === 'refused' ? NO : red('!!')} ${bold(`replay: ${step.what}`)} ${dim(`(${step.tool}, jti ${step.token.jti.slice(0, 8)}…)`)}`,
    );
    if (r) {
      out(`      MCP server answered ${yellow(`${r.status} ${r.code}`)}: ${dim(r.reason)}`);
      if (r.challenge)
        out(
          `      ${dim(`WWW-Authenticate: ${r.challenge.slice(0, 110)}${r.challenge.length > 110 ? '…' : ''}`)}`,
        );
    } else {
      out(`      ${red(`accepted (HTTP ${step.status})`)}`);
    }
  }
}

/** What the support lead typed and saw (`taskpass approvals approve …`), shown with the refund. */
const approverLines: string[] = [];

/**
 * The support lead at work: Bob signs in to the IdP (his own token, for the broker's approvals
 * audience — never the delegation token the agent holds) and approves with the admin CLI.
 */
async function approveAsLead(stack: Stack, e: TaskpassApprovalRequiredError): Promise<void> {
  approverLines.push(`taskpass approvals approve ${e.approvalId} --comment "…"`);
  const r = await stack.approvalsCli(
    ['approve', e.approvalId, '--comment', 'Parcel damage confirmed on the photos.'],
    BOB,
  );
  approverLines.push(...r.lines.map((l) => (r.code === 0 ? l : red(l))));
}

function printStory(stack: Stack, t: Transcript, agentMs: number): void {
  section('Who is who (identities issued by SPIRE just now)');
  const row = (k: string, v: string, more = '') =>
    out(`  ${k.padEnd(11)} ${v}${more ? `  ${dim(more)}` : ''}`);
  row(
    'user',
    `${ALICE.sub} <${ALICE.email}>, groups [${ALICE.groups.join(', ')}]`,
    `ID token from ${stack.idp.issuer}`,
  );
  row(
    'approver',
    `${BOB.sub} <${BOB.email}>, groups [${BOB.groups.join(', ')}]`,
    'his own token, for the approvals audience',
  );
  row('agent', t.agent.spiffeId, `X.509-SVID until ${time(t.agent.svidExpiresAt)} UTC`);
  row('broker', stack.ids.broker, `${stack.urls.broker}, iss ${stack.issuer}`);
  row('console', stack.urls.console, 'sign in at the demo IdP as alice, bob or olivia (admin)');
  row('MCP server', t.mcpServer.spiffeId, `${t.mcpServer.url}, aud ${t.mcpServer.audience}`);

  section(`Task opened in ${msf(t.task.openMs)}: "${t.task.purpose}"`);
  out(
    `  task ${t.task.id}  for ${bold(t.task.sub)}  by ${t.task.agent}  until ${time(t.task.expiresAt)} UTC`,
  );
  out('  ceiling (the most this task can ever do):');
  for (const c of t.task.ceiling) {
    const tools = c.tools.map((x) => `${x.tool} ${x.action} ${x.resources.join(',')}`).join('; ');
    out(`    ${c.template.padEnd(22)} ${tools}`);
  }
  out(
    `  tools the server publishes: ${t.tools.map((x) => `${x.name}${dim(`(${x.action}${x.destructive ? ', destructive' : ''})`)}`).join(' ')}`,
  );

  const afterStart = t.steps.findIndex((s) => s.kind === 'replay' && s.what.startsWith('leftover'));
  section('Tool calls: one fresh token per call, decided by the broker at call time');
  for (const s of t.steps.slice(0, afterStart < 0 ? undefined : afterStart)) printStep(s);

  const c = t.completion;
  section(`Task ${c.status} in ${msf(c.ms)}: revocation #${c.revocationSeq} durable before the answer`);
  if (c.propagationMs !== undefined) {
    out(`  the revocation reached the MCP server's feed ${msf(c.propagationMs)} after complete() returned`);
  }
  for (const s of afterStart < 0 ? [] : t.steps.slice(afterStart)) printStep(s);
  if (t.afterCompletion) {
    const a = t.afterCompletion;
    out(`  ${NO} ${bold('a new token for the finished task')}`);
    out(`      broker answered ${yellow(`${a.status} ${a.code}`)}: ${dim(a.reason)}`);
  }
  out(dim(`\n  agent script: ${msf(agentMs)} in total`));
}

/** `--keep`: the stack stays up so a person can follow the task in the console; Ctrl-C stops it. */
const keep = process.argv.slice(2).includes('--keep');

async function keepUp(stack: Stack, t: Transcript): Promise<void> {
  const base = new URL(stack.urls.console).origin;
  section('The stack stays up (--keep): follow the task in the console');
  out(`  ${bold(`${base}/console/tasks/${t.task.id}`)}`);
  out('  sign in at the demo IdP as olivia (admin: every page, revoke), bob (support lead: approvals,');
  out('  read-only pages) or alice (her approvals only). The timeline shows every decision of the story.');
  out(dim('  Press Ctrl-C to stop everything.'));
  await new Promise<void>((resolve) => {
    for (const sig of ['SIGINT', 'SIGTERM'] as const) process.once(sig, () => resolve());
  });
  out('');
}

function spireLeft(dir: string): string[] {
  try {
    return execFileSync('pgrep', ['-af', dir], { encoding: 'utf8' })
      .trim()
      .split('\n')
      .filter((l) => l && !l.includes('pgrep'));
  } catch {
    return []; // pgrep exits 1 when nothing matches
  }
}

/**
 * `--engine opa`: the ticket desk's Rego policy, on a real OPA, behind the templates; `--engine
 * cedar`: the same rules in Cedar, evaluated in the broker.
 */
const engineArg = process.argv.indexOf('--engine');
const engineName = engineArg >= 0 ? process.argv[engineArg + 1] : 'templates';
if (engineName !== 'templates' && engineName !== 'opa' && engineName !== 'cedar') {
  process.stderr.write(`--engine must be opa or cedar (default: templates alone), not ${engineName}\n`);
  process.exit(2);
}
const engine: 'templates' | 'opa' | 'cedar' = engineName;

/** `--vault`: Transit signs the tokens; the desk runs on PostgreSQL as per-task database users. */
const withVault = process.argv.slice(2).includes('--vault');

/** What the demo saw of Vault (`--vault`): the signing key and the task's database user. */
interface VaultFacts {
  /** Transit key `taskpass`: each version's kid (RFC 7638 thumbprint of its public key). */
  transitKids: Map<string, number>;
  /** The kids that signed the tokens of the allowed calls. */
  tokenKids: Set<string>;
  /** Every database user the desk's calls ran as, in order of first appearance. */
  dbUsers: string[];
  /** The first call's user was in pg_roles while the task was open. */
  existedDuringTask?: boolean;
  /** It was gone from pg_roles this long after complete() returned; undefined if it stayed. */
  goneAfterMs?: number;
}

/** The kid of every version of the Transit key, as the broker publishes them (JWK thumbprints). */
async function transitKids(stack: Stack): Promise<Map<string, number>> {
  const key = (await stack.vault?.api('GET', 'transit/keys/taskpass')) as
    | { data: { keys: Record<string, { public_key: string }> } }
    | undefined;
  const kids = new Map<string, number>();
  for (const [version, k] of Object.entries(key?.data.keys ?? {})) {
    const jwk = await exportJWK(await importSPKI(k.public_key, 'ES256', { extractable: true }));
    kids.set(await calculateJwkThumbprint(jwk), Number(version));
  }
  return kids;
}

function dbUsersOf(steps: readonly Step[]): string[] {
  const users: string[] = [];
  for (const s of steps) {
    const u =
      s.kind === 'call'
        ? (s.result as { caller?: { db_user?: unknown } } | undefined)?.caller?.db_user
        : undefined;
    if (typeof u === 'string' && !users.includes(u)) users.push(u);
  }
  return users;
}

function printVault(stack: Stack, f: VaultFacts): void {
  section('Vault: Transit signs the tokens, the desk runs as a database user leased to the task');
  const versions = [...f.tokenKids].map((k) => (f.transitKids.has(k) ? `v${f.transitKids.get(k)}` : '?'));
  const all = f.tokenKids.size > 0 && [...f.tokenKids].every((k) => f.transitKids.has(k));
  out(
    `  ${all ? OK : NO} every call token was signed by Vault Transit key ${bold('taskpass')} ${versions.join(', ')} ${dim(`(kid ${[...f.tokenKids].map((k) => `${k.slice(0, 12)}…`).join(', ')}; the private key never left ${stack.vault?.address ?? 'Vault'})`)}`,
  );
  const first = f.dbUsers[0];
  out(
    `  ${first ? OK : NO} the first desk call ran as ${bold(first ?? '(none)')} in schema ${stack.deskDatabase?.schema ?? '?'}, a user Vault created for this task`,
  );
  out(
    `  ${f.dbUsers.length === 1 ? OK : NO} every call of the task ran as that one user ${dim(`(${f.dbUsers.length} user(s) seen: the desk caches the lease until it ends)`)}`,
  );
  out(`  ${f.existedDuringTask ? OK : NO} it was in pg_roles while the task was open`);
  out(
    f.goneAfterMs !== undefined
      ? `  ${OK} it was gone from pg_roles ${msf(f.goneAfterMs)} after complete(): the broker revoked the lease`
      : `  ${NO} ${first ? 'it was still in pg_roles 10 s after complete()' : 'no user to watch after complete()'}`,
  );
}

function checkVault(f: VaultFacts): string[] {
  const problems: string[] = [];
  if (f.tokenKids.size === 0 || ![...f.tokenKids].every((k) => f.transitKids.has(k)))
    problems.push('a call token was not signed by the Transit key');
  if (f.dbUsers.length === 0) problems.push('no desk call reported the database user it ran as');
  if (f.dbUsers.length > 1)
    problems.push(`the task's calls ran as ${f.dbUsers.length} database users, not one`);
  if (!f.existedDuringTask) problems.push("the task's database user was not in pg_roles during the task");
  if (f.goneAfterMs === undefined)
    problems.push("the task's database user was still there 10 s after complete");
  return problems;
}

async function main(): Promise<number> {
  const started = performance.now();
  out(bold('Taskpass demo: an agent acting for a user, one short-lived token per MCP tool call'));
  section(
    `Starting the stack on 127.0.0.1 (real SPIRE, IdP, broker, ticket desk MCP server${withVault ? ', Vault, PostgreSQL' : ''})`,
  );
  let stack: Stack | undefined;
  let transcript: Transcript | undefined;
  let agentMs = 0;
  let failure: unknown;
  let spireDir: string | undefined;
  let vaultFacts: VaultFacts | undefined;
  try {
    stack = await startStack({
      engine,
      vault: withVault,
      progress: (l) => out(`  ${l}`),
      onSpire: (spire) => {
        spireDir = spire.dir;
      },
    });
    out(`  ${dim(`stack ready in ${secs(stack.timings.total)}`)}`);
    const a0 = performance.now();
    const running = stack;
    transcript = await runAgentScript({
      ...stack.agentOptions(),
      userToken: await stack.userToken(ALICE),
      onApprovalRequired: (e) =>
        void approveAsLead(running, e).catch((err) => approverLines.push(red(String(err)))),
      // With Vault: while the task is still open, its database user must exist.
      ...(withVault
        ? {
            beforeComplete: async (_task: string, steps: readonly Step[]) => {
              const users = dbUsersOf(steps);
              vaultFacts = { transitKids: new Map(), tokenKids: new Set(), dbUsers: users };
              if (users[0]) vaultFacts.existedDuringTask = await pgRoleExists(users[0]);
            },
          }
        : {}),
    });
    agentMs = performance.now() - a0;
    if (withVault) {
      const f: VaultFacts = vaultFacts ?? { transitKids: new Map(), tokenKids: new Set(), dbUsers: [] };
      vaultFacts = f;
      const completedAt = performance.now();
      // The broker's revoker runs every 2 s: the lease, and with it the user, goes soon after.
      const user = f.dbUsers[0];
      while (user && performance.now() - completedAt < 10_000) {
        if (!(await pgRoleExists(user))) {
          f.goneAfterMs = performance.now() - completedAt;
          break;
        }
        await new Promise((r) => setTimeout(r, 100));
      }
      f.transitKids = await transitKids(stack);
      for (const s of transcript.steps)
        if (s.kind === 'call' && s.outcome === 'allowed' && s.token?.kid) f.tokenKids.add(s.token.kid);
    }
    printStory(stack, transcript, agentMs);
    if (vaultFacts) printVault(stack, vaultFacts);
    if (stack.opa) {
      section('Policy engine behind the templates');
      out(
        `  ${OK} OPA (policies/rego/ticket_desk.rego: refunds only in the user's region, writes in business hours) decided ${await stack.opa.queries()} calls after the templates allowed them`,
      );
    }
    if (engine === 'cedar') {
      section('Policy engine behind the templates');
      out(
        `  ${OK} Cedar (policies/cedar/tickets.cedar: refunds only in the user's region, writes in business hours — widened to the whole week for the demo) allowed every call the templates allowed: each token above passed it`,
      );
    }
    if (keep) await keepUp(stack, transcript);
  } catch (e) {
    failure = e;
  }

  section('Shutdown');
  const s0 = performance.now();
  if (stack) await stack.stop();
  const left = spireDir ? spireLeft(spireDir) : [];
  out(
    `  ticket desk, broker, IdP${withVault ? ', Vault (and the desk schema)' : ''} and SPIRE stopped in ${msf(performance.now() - s0)}`,
  );
  out(
    left.length === 0
      ? `  ${OK} no SPIRE process of this run is left (pgrep -f ${spireDir ?? '(not started)'}: none)`
      : `  ${NO} still running:\n    ${left.join('\n    ')}`,
  );

  const problems = [
    ...(failure ? [`the run failed: ${(failure as Error).stack ?? failure}`] : []),
    ...(transcript ? checkStory(transcript) : []),
    ...(withVault ? (vaultFacts ? checkVault(vaultFacts) : ['no Vault facts were gathered']) : []),
    ...(left.length ? ['SPIRE processes were left running'] : []),
  ];
  const total = secs(performance.now() - started);
  if (problems.length === 0) {
    out(`\n${green(bold('Story as expected'))} in ${total}.`);
    return 0;
  }
  out(`\n${red(bold('The story deviated:'))}`);
  for (const p of problems) out(`  - ${p}`);
  out(dim(`(${total})`));
  return 1;
}

process.exitCode = await main();
