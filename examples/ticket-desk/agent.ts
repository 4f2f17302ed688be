// A support agent (spiffe://taskpass.local/agents/support/triage-bot) working one short, scripted
// task for a user: it proves who it is with its X.509-SVID (mTLS to the broker and to the MCP
// server), opens a task with the user's ID token, and lets the MCP client call tools through
// `taskpassFetch`, which fetches one call token per tools/call. The script also tries what it may
// not do (a delete, closing a ticket it never read), replays a spent single-use token, issues a
// small refund on its own and a large one only once a support lead approved it, shows that the
// approved token is refused for any other amount, completes the task and replays a leftover token
// afterwards. Everything is recorded in a
// structured transcript (never token material: only jtis, lifetimes and claims' shapes).
//
//   node --conditions=taskpass:source --import tsx examples/ticket-desk/agent.ts \
//     --broker-url https://127.0.0.1:8443 --mcp-url https://127.0.0.1:8444/mcp --user-token "$ID_TOKEN"
//
// Flags (or environment): --workload-api (SPIFFE_ENDPOINT_SOCKET), --hint (AGENT_SVID_HINT),
// --broker-url (TASKPASS_BROKER_URL), --broker-id (TASKPASS_BROKER_ID), --mcp-url (TICKETS_MCP_URL),
// --tickets-id (TICKETS_SPIFFE_ID), --audience (TICKETS_AUDIENCE), --user-token (USER_TOKEN).
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { FetchLike } from '@modelcontextprotocol/sdk/shared/transport.js';
import {
  AgentPluginError,
  BrokerClient,
  BrokerError,
  type CeilingEntry,
  isTaskpassDenial,
  type TaskpassApprovalRequiredError,
  taskpassFetch,
} from '@taskpass/agent-plugin';
import { createMtlsAgent, matchId, type TlsSource } from '@taskpass/spiffe';
import { pickByHint, X509Source } from '@taskpass/spiffe/workload';
import { decodeJwt, decodeProtectedHeader } from 'jose';
import { type Dispatcher, fetch as undiciFetch } from 'undici';
import { BROKER_ID, TICKETS_AUDIENCE, TICKETS_ID } from './server.ts';

export const AGENT_ID = 'spiffe://taskpass.local/agents/support/triage-bot';

/** Options of {@link runAgentScript}. */
export interface AgentScriptOptions {
  /** The agent's live X.509 source; or give `workloadApiAddress` (+ `hint`). */
  source?: X509Source;
  /** Workload API address (`unix:///…`); default SPIFFE_ENDPOINT_SOCKET. */
  workloadApiAddress?: string;
  /** Picks the agent's SVID by entry hint. */
  hint?: string;
  /** Where the broker is reached, e.g. `https://127.0.0.1:8443`. */
  brokerUrl: string;
  /** The broker's SPIFFE ID. Default spiffe://taskpass.local/broker. */
  brokerId?: string;
  /** The MCP endpoint, e.g. `https://127.0.0.1:8444/mcp`. */
  mcpUrl: string;
  /** The MCP server's SPIFFE ID (its TLS certificate is authenticated by it). */
  ticketsId?: string;
  /** The MCP server's resource URI (token audience). */
  audience?: string;
  /** The delegating user's ID token. */
  userToken: string;
  /** The ticket the task is about. Default T-1002 ("Charged twice for one order", 54.00). */
  ticketId?: string;
  /** A ticket whose order is above the refund limit. Default T-1001 (129.90). */
  largeRefundTicketId?: string;
  /**
   * Called right after the task completed; resolves with how long the revocation took to reach
   * the MCP server (e.g. the stack's `tickets.waitRevoked`). Without it the leftover token is
   * replayed at once.
   */
  awaitRevocation?: (taskId: string) => Promise<number>;
  /**
   * Awaited after the last tool call and before the task is completed, with the steps so far (e.g.
   * for the demo to look at what the task's calls left in the world while the task is open).
   */
  beforeComplete?: (taskId: string, steps: readonly Step[]) => Promise<void>;
  /**
   * Called (not awaited) when a call waits for a person's approval, e.g. to have the demo's support
   * lead decide it. Without it the agent waits for someone to decide at the approval URL.
   */
  onApprovalRequired?: (e: TaskpassApprovalRequiredError) => void;
  /** How long a call waits for an approval, ms. Default 60 000. */
  approvalTimeoutMs?: number;
}

/** A large refund's approval, as the agent saw it. */
export interface ApprovalFacts {
  id: string;
  url: string;
  /** Until the person decided and the token was issued, ms. */
  waitedMs: number;
}

/** A refusal, from the broker (no token minted) or from the MCP server (token refused). */
export interface Refusal {
  by: 'broker' | 'mcp-server' | 'agent-plugin';
  status?: number;
  code: string;
  reason: string;
  template?: string;
  /** The MCP server's `WWW-Authenticate` challenge. */
  challenge?: string;
}

/** What the agent can see of a token (never the token itself). */
export interface TokenFacts {
  jti: string;
  /** The signing key's id (`kid` of the JWS header): which broker key, or Transit key version, signed it. */
  kid?: string;
  lifetimeSec: number;
  singleUse: boolean;
  template?: string;
  /** `cnf.x5t#S256` is present: the token only works over the agent's own mTLS connection. */
  certificateBound: boolean;
  /** `sub` (the user) and `act.sub` (the agent). */
  sub?: string;
  actor?: string;
  /** `args_sha256` is present: the token is good for these exact arguments only. */
  argsBound: boolean;
  /** Who approved the call, when a person did (`authorization_details[0].approval`). */
  approval?: { id: string; approver: string; approvedAt: number };
}

/** One step of the script. */
export type Step =
  | {
      kind: 'call';
      tool: string;
      args: Record<string, unknown>;
      expect: 'allowed' | 'denied';
      outcome: 'allowed' | 'denied' | 'refused' | 'error';
      token?: TokenFacts;
      /** The tool result (parsed JSON text), when the server ran the tool. */
      result?: unknown;
      isError?: boolean;
      refusal?: Refusal;
      /** The call waited for a person's approval. */
      approval?: ApprovalFacts;
      ms: number;
    }
  | {
      kind: 'replay';
      what: string;
      tool: string;
      token: TokenFacts;
      expect: 'refused';
      outcome: 'accepted' | 'refused';
      status: number;
      refusal?: Refusal;
      ms: number;
    };

/** The structured story of one run. */
export interface Transcript {
  agent: { spiffeId: string; svidExpiresAt: string };
  mcpServer: { url: string; spiffeId: string; audience: string };
  tools: { name: string; action?: unknown; resource?: unknown; readOnly?: boolean; destructive?: boolean }[];
  task: {
    id: string;
    purpose: string;
    sub: string;
    agent: string;
    expiresAt: string;
    ceiling: CeilingEntry[];
    openMs: number;
  };
  steps: Step[];
  completion: { status: string; revocationSeq: number; ms: number; propagationMs?: number };
  /** Asking the broker for a new token after completion. */
  afterCompletion?: Refusal;
  /** True when every step ended as expected. */
  ok: boolean;
  /** The steps (or checks) that deviated, one line each. */
  deviations: string[];
}

/** Receives each step as it happens (for live output). */
export type StepLog = (entry: { event: string; [k: string]: unknown }) => void;

interface Recorded {
  tool: string;
  token: string;
  status: number;
  body?: unknown;
  challenge?: string;
}

function factsOf(token: string): TokenFacts {
  const c = decodeJwt(token) as Record<string, unknown> & {
    jti?: string;
    iat?: number;
    exp?: number;
    cnf?: Record<string, unknown>;
    act?: { sub?: string };
    authorization_details?: {
      args_sha256?: string;
      approval?: { id: string; approver: { sub: string }; approved_at: number };
    }[];
  };
  const detail = c.authorization_details?.[0];
  const kid = decodeProtectedHeader(token).kid;
  return {
    jti: String(c.jti),
    ...(typeof kid === 'string' ? { kid } : {}),
    lifetimeSec: (c.exp ?? 0) - (c.iat ?? 0),
    singleUse: c.single_use === true,
    ...(typeof c.tpl === 'string' ? { template: c.tpl } : {}),
    certificateBound: typeof c.cnf?.['x5t#S256'] === 'string',
    ...(typeof c.sub === 'string' ? { sub: c.sub } : {}),
    ...(typeof c.act?.sub === 'string' ? { actor: c.act.sub } : {}),
    argsBound: typeof detail?.args_sha256 === 'string',
    ...(detail?.approval
      ? {
          approval: {
            id: detail.approval.id,
            approver: detail.approval.approver.sub,
            approvedAt: detail.approval.approved_at,
          },
        }
      : {}),
  };
}

function parseResult(r: Record<string, unknown>): unknown {
  const first = Array.isArray(r.content) ? (r.content[0] as { type?: string; text?: string }) : undefined;
  if (first?.type !== 'text' || typeof first.text !== 'string') return r.content;
  try {
    return JSON.parse(first.text);
  } catch {
    return first.text;
  }
}

function refusalFromServer(status: number, body: unknown, challenge?: string): Refusal {
  const b = body as { code?: string; message?: string } | undefined;
  return {
    by: 'mcp-server',
    status,
    code: b?.code ?? `HTTP_${status}`,
    reason: b?.message ?? '',
    ...(challenge ? { challenge } : {}),
  };
}

const ms = (start: number) => Math.round((performance.now() - start) * 10) / 10;

/**
 * Runs the scripted task and returns its transcript. Never throws for an unexpected outcome of a
 * step (it is recorded in `deviations`); throws only when the stack is unreachable.
 *
 * @example
 * ```ts
 * const t = await runAgentScript({ workloadApiAddress: spire.address, hint: 'agent', brokerUrl, mcpUrl, userToken });
 * if (!t.ok) console.error(t.deviations);
 * ```
 */
export async function runAgentScript(opts: AgentScriptOptions, log: StepLog = () => {}): Promise<Transcript> {
  const source =
    opts.source ??
    (await X509Source.create({
      ...(opts.workloadApiAddress ? { address: opts.workloadApiAddress } : {}),
      ...(opts.hint ? { picker: pickByHint(opts.hint) } : {}),
    }));
  // The MCP server is authenticated by its SPIFFE ID; the agent presents its own SVID.
  const mcpDispatcher = createMtlsAgent(source as TlsSource, matchId(opts.ticketsId ?? TICKETS_ID));
  try {
    return await script(opts, source, mcpDispatcher, log);
  } finally {
    await mcpDispatcher.close().catch(() => undefined);
    if (!opts.source) await source.close();
  }
}

async function script(
  opts: AgentScriptOptions,
  source: X509Source,
  mcpDispatcher: Dispatcher,
  log: StepLog,
): Promise<Transcript> {
  const ticket = opts.ticketId ?? 'T-1002';
  const audience = opts.audience ?? TICKETS_AUDIENCE;
  const brokerId = opts.brokerId ?? BROKER_ID;
  const ticketsId = opts.ticketsId ?? TICKETS_ID;
  const deviations: string[] = [];
  const svid = source.getX509Svid();
  const agentInfo = { spiffeId: svid.id.toString(), svidExpiresAt: svid.expiresAt.toISOString() };
  log({ event: 'identity', ...agentInfo });

  const mtlsFetch = ((url: string | URL, init?: RequestInit) =>
    undiciFetch(url, {
      ...(init as object),
      dispatcher: mcpDispatcher,
    }) as unknown as Promise<Response>) satisfies FetchLike;

  // Records each tools/call as it leaves: the token's claims (for the transcript) and the answer.
  let last: Recorded | undefined;
  const recordingFetch: FetchLike = async (url, init) => {
    const res = await mtlsFetch(url, init);
    const body = typeof init?.body === 'string' ? (JSON.parse(init.body) as { method?: string }) : undefined;
    if (body?.method === 'tools/call') {
      const auth = new Headers(init?.headers).get('authorization') ?? '';
      const rec: Recorded = {
        tool: String((body as { params?: { name?: unknown } }).params?.name),
        token: auth.replace(/^Bearer /, ''),
        status: res.status,
      };
      const challenge = res.headers.get('www-authenticate');
      if (challenge) rec.challenge = challenge;
      if (!res.ok)
        rec.body = await res
          .clone()
          .json()
          .catch(() => undefined);
      last = rec;
    }
    return res;
  };

  // Sends one tools/call with a given token, outside the MCP client (what a thief would do).
  const rawCall = async (token: string, tool: string, args: Record<string, unknown>) => {
    const res = await mtlsFetch(opts.mcpUrl, {
      method: 'POST',
      headers: {
        'content-type': 'application/json',
        accept: 'application/json, text/event-stream',
        authorization: `Bearer ${token}`,
      },
      body: JSON.stringify({
        jsonrpc: '2.0',
        id: 1,
        method: 'tools/call',
        params: { name: tool, arguments: args },
      }),
    });
    const text = await res.text();
    let body: unknown;
    try {
      body = JSON.parse(text);
    } catch {
      body = text;
    }
    return { status: res.status, body, challenge: res.headers.get('www-authenticate') ?? undefined };
  };

  await using broker = new BrokerClient({
    url: opts.brokerUrl,
    auth: { kind: 'mtls', source: source as TlsSource, brokerId },
  });

  const purpose = `Triage ${ticket}: customer reports being charged twice`;
  const t0 = performance.now();
  const steps: Step[] = [];
  let leftover: { token: string; tool: string; args: Record<string, unknown> } | undefined;
  let taskInfo: Transcript['task'];
  let tools: Transcript['tools'];
  let completion: Transcript['completion'];
  {
    await using task = await broker.openTask({ purpose, userToken: opts.userToken, ttlSeconds: 300 });
    taskInfo = {
      id: task.id,
      purpose,
      sub: task.sub,
      agent: task.agent,
      expiresAt: task.expiresAt.toISOString(),
      ceiling: task.ceiling.map((c) => ({ ...c, tools: c.tools.map((x) => ({ ...x })) })),
      openMs: ms(t0),
    };
    log({ event: 'task.opened', ...taskInfo });

    const mcp = new Client({ name: 'triage-bot', version: '1.0.0' });
    // A call that needs a person's approval waits for the decision (then gets its one token).
    let waiting: { id: string; url: string; since: number } | undefined;
    const approval = {
      wait: true as const,
      timeoutMs: opts.approvalTimeoutMs ?? 60_000,
      onApprovalRequired: (e: TaskpassApprovalRequiredError) => {
        waiting = { id: e.approvalId, url: e.approvalUrl, since: performance.now() };
        log({ event: 'approval.required', id: e.approvalId, url: e.approvalUrl, tool: e.request.tool });
        opts.onApprovalRequired?.(e);
      },
    };
    // No declarations: the plugin uses the resource/action hints the server publishes in tools/list.
    const transport = new StreamableHTTPClientTransport(new URL(opts.mcpUrl), {
      fetch: taskpassFetch(task, { audience, fetch: recordingFetch, approval }),
    });
    await mcp.connect(transport);
    try {
      const listed = await mcp.listTools();
      tools = listed.tools.map((t) => ({
        name: t.name,
        action: t._meta?.['dev.taskpass/action'],
        resource: t._meta?.['dev.taskpass/resource'],
        readOnly: t.annotations?.readOnlyHint === true,
        destructive: t.annotations?.destructiveHint === true,
      }));
      log({ event: 'tools.listed', tools });

      const call = async (tool: string, args: Record<string, unknown>, expect: 'allowed' | 'denied') => {
        last = undefined;
        waiting = undefined;
        const start = performance.now();
        let step: Extract<Step, { kind: 'call' }>;
        try {
          const r = await mcp.callTool({ name: tool, arguments: args });
          step = {
            kind: 'call',
            tool,
            args,
            expect,
            outcome: r.isError === true ? 'error' : 'allowed',
            result: parseResult(r),
            isError: r.isError === true,
            ms: ms(start),
          };
        } catch (e) {
          const rec = last as Recorded | undefined;
          let refusal: Refusal;
          let outcome: 'denied' | 'refused' | 'error';
          if (isTaskpassDenial(e)) {
            outcome = 'denied';
            refusal = {
              by: 'broker',
              status: e.status,
              code: e.code,
              reason: e.reason,
              ...(e.template ? { template: e.template } : {}),
            };
          } else if (rec && rec.tool === tool && rec.status >= 400) {
            outcome = 'refused';
            refusal = refusalFromServer(rec.status, rec.body, rec.challenge);
          } else {
            outcome = 'error';
            const err = e as Error & { code?: unknown };
            refusal = {
              by:
                e instanceof AgentPluginError
                  ? 'agent-plugin'
                  : e instanceof BrokerError
                    ? 'broker'
                    : 'mcp-server',
              code: typeof err.code === 'string' ? err.code : err.name,
              reason: err.message,
            };
          }
          step = { kind: 'call', tool, args, expect, outcome, refusal, ms: ms(start) };
        }
        const rec = last as Recorded | undefined;
        if (rec && rec.tool === tool) step.token = factsOf(rec.token);
        const asked = waiting as { id: string; url: string; since: number } | undefined;
        if (asked) step.approval = { id: asked.id, url: asked.url, waitedMs: ms(asked.since) };
        steps.push(step);
        log({ event: 'step', ...step });
        if (step.outcome !== expect) {
          deviations.push(
            `${tool}(${JSON.stringify(args)}): expected ${expect}, got ${step.outcome}` +
              (step.refusal ? ` (${step.refusal.code}: ${step.refusal.reason})` : ''),
          );
        }
        return { step, token: rec?.tool === tool ? rec.token : undefined };
      };

      const replay = async (
        what: string,
        token: string | undefined,
        tool: string,
        args: Record<string, unknown>,
      ) => {
        if (!token) {
          deviations.push(`${what}: no token was recorded to replay`);
          return;
        }
        const start = performance.now();
        const r = await rawCall(token, tool, args);
        const step: Step = {
          kind: 'replay',
          what,
          tool,
          token: factsOf(token),
          expect: 'refused',
          outcome: r.status >= 400 ? 'refused' : 'accepted',
          status: r.status,
          ...(r.status >= 400 ? { refusal: refusalFromServer(r.status, r.body, r.challenge) } : {}),
          ms: ms(start),
        };
        steps.push(step);
        log({ event: 'step', ...step });
        if (step.outcome !== 'refused')
          deviations.push(`${what}: the MCP server accepted it (HTTP ${r.status})`);
        return step;
      };

      // Reads: one read token each (reused by the plugin while valid).
      await call('list_tickets', { status: 'open' }, 'allowed');
      const read = await call('get_ticket', { ticket_id: ticket }, 'allowed');
      leftover = read.token
        ? { token: read.token, tool: 'get_ticket', args: { ticket_id: ticket } }
        : undefined;

      // A write: single use, allowed only because the ticket was read in this task.
      const write = await call(
        'update_ticket',
        {
          ticket_id: ticket,
          comment: 'Duplicate charge confirmed on the order; a support lead needs to approve the refund.',
        },
        'allowed',
      );
      await replay('single-use write token presented again', write.token, 'update_ticket', {
        ticket_id: ticket,
        comment: 'Duplicate charge confirmed on the order; a support lead needs to approve the refund.',
      });

      // Refunds: the token is bound to the exact arguments. Up to 100 the template needs nobody
      // else; above it a support lead approves this very call, and the token names them.
      const order = (read.step.result as { ticket?: { order?: { amount?: number } } } | undefined)?.ticket
        ?.order;
      await call('issue_refund', { ticket_id: ticket, amount: order?.amount ?? 54 }, 'allowed');
      const large = opts.largeRefundTicketId ?? 'T-1001';
      const big = await call('get_ticket', { ticket_id: large }, 'allowed');
      const bigOrder = (big.step.result as { ticket?: { order?: { amount?: number } } } | undefined)?.ticket
        ?.order;
      const amount = bigOrder?.amount ?? 129.9;
      const approved = await call('issue_refund', { ticket_id: large, amount }, 'allowed');
      await replay('approved refund token presented with another amount', approved.token, 'issue_refund', {
        ticket_id: large,
        amount: amount * 10,
      });

      // What the task's ceiling does not include, or its workflow does not allow yet.
      await call('delete_ticket', { ticket_id: 'T-1003' }, 'denied');
      await call('close_ticket', { ticket_id: 'T-1003' }, 'denied');
    } finally {
      await mcp.close().catch(() => undefined);
    }

    await opts.beforeComplete?.(task.id, steps);
    const c0 = performance.now();
    const done = await task.complete();
    completion = { status: done.status, revocationSeq: done.revocationSeq, ms: ms(c0) };
    if (opts.awaitRevocation) {
      completion.propagationMs = Math.round((await opts.awaitRevocation(task.id)) * 10) / 10;
    }
    log({ event: 'task.completed', ...completion });
  }

  // After completion: the leftover read token (still unexpired) and a fresh token request.
  if (leftover) {
    const start = performance.now();
    const r = await rawCall(leftover.token, leftover.tool, leftover.args);
    const step: Step = {
      kind: 'replay',
      what: 'leftover read token after the task completed',
      tool: leftover.tool,
      token: factsOf(leftover.token),
      expect: 'refused',
      outcome: r.status >= 400 ? 'refused' : 'accepted',
      status: r.status,
      ...(r.status >= 400 ? { refusal: refusalFromServer(r.status, r.body, r.challenge) } : {}),
      ms: ms(start),
    };
    steps.push(step);
    log({ event: 'step', ...step });
    if (step.outcome !== 'refused')
      deviations.push(`leftover token: accepted after completion (HTTP ${r.status})`);
  } else {
    deviations.push('no leftover read token to replay');
  }

  let afterCompletion: Refusal | undefined;
  try {
    await broker.callToken(taskInfo.id, {
      audience,
      tool: 'get_ticket',
      resource: `tickets/${ticket}`,
      action: 'read',
    });
    deviations.push('the broker minted a token for a completed task');
  } catch (e) {
    if (e instanceof BrokerError) {
      afterCompletion = {
        by: 'broker',
        status: e.status,
        code: e.code,
        reason: isTaskpassDenial(e) ? e.reason : e.brokerMessage,
      };
      log({ event: 'after-completion', ...afterCompletion });
    } else {
      deviations.push(`new token after completion: ${(e as Error).message}`);
    }
  }

  return {
    agent: agentInfo,
    mcpServer: { url: opts.mcpUrl, spiffeId: ticketsId, audience },
    tools: tools!,
    task: taskInfo,
    steps,
    completion: completion!,
    ...(afterCompletion ? { afterCompletion } : {}),
    ok: deviations.length === 0,
    deviations,
  };
}

/**
 * What the scripted story must show, beyond each step's own expectation: the exact refusal codes.
 * Returns one line per problem (empty when the story is as expected).
 */
export function checkStory(t: Transcript): string[] {
  const problems = [...t.deviations];
  const calls = (tool: string) =>
    t.steps.filter((s): s is Extract<Step, { kind: 'call' }> => s.kind === 'call' && s.tool === tool);
  const call = (tool: string) => calls(tool)[0];
  const replay = (prefix: string) =>
    t.steps.find(
      (s): s is Extract<Step, { kind: 'replay' }> => s.kind === 'replay' && s.what.startsWith(prefix),
    );
  for (const tool of ['list_tickets', 'get_ticket', 'update_ticket']) {
    const s = call(tool);
    if (s?.outcome !== 'allowed' || s.isError) problems.push(`${tool} did not succeed`);
    else if (!s.token?.certificateBound)
      problems.push(`${tool}: its token is not bound to the agent certificate`);
  }
  if (call('update_ticket')?.token?.singleUse !== true)
    problems.push('the update_ticket token is not single use');
  const expectDenied = (tool: string, code: RegExp) => {
    const s = call(tool);
    if (s?.outcome !== 'denied' || s.refusal?.by !== 'broker' || !code.test(s.refusal.code)) {
      problems.push(`${tool}: expected a broker denial ${code}, got ${s?.outcome} ${s?.refusal?.code ?? ''}`);
    }
  };
  const [small, large] = calls('issue_refund');
  if (small?.outcome !== 'allowed' || small.isError || small.approval || !small.token?.argsBound)
    problems.push('the small refund did not run on its own with a token bound to its arguments');
  if (large?.outcome !== 'allowed' || large.isError || !large.approval)
    problems.push('the large refund did not wait for an approval and then run');
  else if (large.token?.approval?.id !== large.approval.id || !large.token.argsBound)
    problems.push('the large refund token does not name its approval or is not bound to its arguments');
  expectDenied('delete_ticket', /^TASKPASS_DENIED_/);
  expectDenied('close_ticket', /^TASKPASS_DENIED_PREREQUISITE$/);
  const expectRefused = (prefix: string, code: string) => {
    const s = replay(prefix);
    if (s?.outcome !== 'refused' || s.refusal?.code !== code) {
      problems.push(
        `${prefix}: expected the MCP server to refuse with ${code}, got ${s?.outcome} ${s?.refusal?.code ?? ''}`,
      );
    }
  };
  expectRefused('single-use', 'TASKPASS_VERIFY_REPLAYED');
  expectRefused('approved refund token', 'TASKPASS_VERIFY_ARGS_MISMATCH');
  expectRefused('leftover', 'TASKPASS_VERIFY_REVOKED');
  if (t.completion.status !== 'completed') problems.push(`the task ended ${t.completion.status}`);
  if (t.afterCompletion?.code !== 'TASKPASS_TASK_CLOSED') {
    problems.push(
      `a new token after completion: expected TASKPASS_TASK_CLOSED, got ${t.afterCompletion?.code}`,
    );
  }
  return [...new Set(problems)];
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'workload-api': { type: 'string' },
      hint: { type: 'string' },
      'broker-url': { type: 'string' },
      'broker-id': { type: 'string' },
      'mcp-url': { type: 'string' },
      'tickets-id': { type: 'string' },
      audience: { type: 'string' },
      'user-token': { type: 'string' },
      ticket: { type: 'string' },
    },
  });
  const env = process.env;
  const need = (v: string | undefined, what: string): string => {
    if (!v) throw new Error(`${what} is required`);
    return v;
  };
  const pick = <T extends string>(k: string, v: T | undefined) => (v ? { [k]: v } : {});
  const t = await runAgentScript(
    {
      brokerUrl: need(values['broker-url'] ?? env.TASKPASS_BROKER_URL, '--broker-url (TASKPASS_BROKER_URL)'),
      mcpUrl: need(values['mcp-url'] ?? env.TICKETS_MCP_URL, '--mcp-url (TICKETS_MCP_URL)'),
      userToken: need(values['user-token'] ?? env.USER_TOKEN, '--user-token (USER_TOKEN)'),
      ...pick('workloadApiAddress', values['workload-api'] ?? env.SPIFFE_ENDPOINT_SOCKET),
      ...pick('hint', values.hint ?? env.AGENT_SVID_HINT),
      ...pick('brokerId', values['broker-id'] ?? env.TASKPASS_BROKER_ID),
      ...pick('ticketsId', values['tickets-id'] ?? env.TICKETS_SPIFFE_ID),
      ...pick('audience', values.audience ?? env.TICKETS_AUDIENCE),
      ...pick('ticketId', values.ticket),
    },
    (entry) => console.error(JSON.stringify(entry)),
  );
  console.log(JSON.stringify(t, null, 2));
  const problems = checkStory(t);
  for (const p of problems) console.error(`deviation: ${p}`);
  process.exitCode = problems.length === 0 ? 0 : 1;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
