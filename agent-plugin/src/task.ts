// A task handle: the agent's side of one task at the broker. It caches tokens (read and session
// tokens while valid; single-use tokens never) and ends the task on `await using` disposal.
import type {
  Action,
  ApprovalStatus,
  ApprovalView,
  CeilingEntry,
  CompletionStatus,
} from '@taskpass/contract';
import type {
  BrokerClient,
  CallTokenRequest,
  CompleteResult,
  IssuedToken,
  OpenedTask,
} from './broker-client.ts';
import { AgentPluginError, BrokerError, TaskpassDeniedError } from './errors.ts';
import { timeoutSignal } from './signals.ts';

/**
 * Where the handle is: `open`; `finishing` while complete/fail/cancel is in flight; the finish
 * status once the broker confirmed it; `closed` when the broker reported the task closed or expired
 * (revoked by an administrator, or timed out).
 */
export type TaskState = 'open' | 'finishing' | CompletionStatus | 'closed';

/** What {@link Task.token} asks for: one tool call at one MCP server. */
export interface TokenRequest {
  /** The MCP server's resource URI. */
  audience: string;
  tool: string;
  resource: string;
  action: Action;
  /** Binds the token to exact arguments (`argsSha256(args)`). */
  argsSha256?: string;
  /** The arguments themselves, when the ceiling says `send_arguments` (see {@link Task.argumentRules}). */
  arguments?: Record<string, unknown>;
}

/** What the task's ceiling asks of a call's arguments (see {@link Task.argumentRules}). */
export interface ArgumentRules {
  /** Bind the token to the arguments: send `args_sha256`. */
  bind: boolean;
  /** Send the arguments themselves too (templates whose approval conditions read them). */
  send: boolean;
  /** A person's approval may be asked for some or all calls. */
  approval: boolean;
}

/** Options of {@link Task.waitForApproval}. */
export interface WaitForApprovalOptions {
  /** Stops waiting: rejects with the signal's reason (an `AbortError` by default). */
  signal?: AbortSignal;
  /** Gives up after this long: rejects with a `TimeoutError` DOMException. Default: no limit but the approval's own expiry. */
  timeoutMs?: number;
}

// How a decided approval that is not an approval ends the wait: a TaskpassDeniedError with this code.
const APPROVAL_ENDINGS: Partial<Record<ApprovalStatus, string>> = {
  denied: 'TASKPASS_APPROVAL_DENIED',
  expired: 'TASKPASS_APPROVAL_EXPIRED',
  cancelled: 'TASKPASS_APPROVAL_CANCELLED',
};
// The long poll holds each request this long at most (the broker's limit).
const LONG_POLL_SEC = 60;
// A poll that comes back pending sooner than this is followed by a pause: a broker (or proxy)
// that does not hold the request must not turn the wait into a busy loop.
const MIN_POLL_INTERVAL_MS = 1000;
// Backoff after failed polls (broker unreachable, 429, 5xx): doubling, with jitter, up to the cap.
const BACKOFF_FIRST_MS = 500;
const BACKOFF_MAX_MS = 30_000;

interface Cached {
  token: IssuedToken;
  epoch: number;
}

// Codes with which the broker says the task can no longer be used.
const CLOSED_CODES = new Set(['TASKPASS_TASK_CLOSED', 'TASKPASS_TASK_EXPIRED']);
const MAX_CACHED = 256;

/**
 * One open task at the broker. Get it from {@link BrokerClient.openTask}.
 *
 * Tokens: {@link Task.token} reuses a read (not single-use) token for the same audience, tool,
 * resource, action and argument hash while it stays valid for `tokenReuseMarginSec` more seconds;
 * a single-use token is never handed out twice. {@link Task.sessionToken} is cached the same way.
 *
 * Ending: call {@link Task.complete}, {@link Task.fail} or {@link Task.cancel}; with `await using`
 * a task still open when the scope exits (normally or by an exception) is cancelled, which revokes
 * every token it issued.
 *
 * @example
 * ```ts
 * {
 *   await using task = await broker.openTask({ purpose: 'close duplicate T-7', userToken });
 *   await doWork(task);     // throws? → the task is cancelled on the way out
 *   await task.complete();  // explicit completion: disposal then does nothing
 * }
 * ```
 */
export class Task {
  readonly id: string;
  readonly expiresAt: Date;
  /** The user the task acts for (the agent's SPIFFE ID for autonomous tasks). */
  readonly sub: string;
  /** The agent's SPIFFE ID as the broker authenticated it. */
  readonly agent: string;
  readonly purpose: string;
  /** The most the task may ever do: templates, audiences, tools, resource patterns. */
  readonly ceiling: readonly CeilingEntry[];
  readonly #client: BrokerClient;
  #state: TaskState = 'open';
  #finishing: Promise<CompleteResult> | undefined;
  #finishingStatus: CompletionStatus | undefined;
  readonly #calls = new Map<string, Cached>();
  readonly #sessions = new Map<string, Cached>();
  readonly #inflight = new Map<string, Promise<IssuedToken>>();

  /** @internal Use {@link BrokerClient.openTask}. */
  constructor(client: BrokerClient, t: OpenedTask) {
    this.#client = client;
    this.id = t.id;
    this.expiresAt = t.expiresAt;
    this.sub = t.sub;
    this.agent = t.agent;
    this.purpose = t.purpose;
    this.ceiling = Object.freeze(t.ceiling.map((c) => Object.freeze({ ...c })));
  }

  /** The handle's state. */
  get state(): TaskState {
    return this.#state;
  }

  /** True while tokens can be requested. */
  get isOpen(): boolean {
    return this.#state === 'open';
  }

  /**
   * A call token for one tool call (cached for read tokens, see the class comment).
   *
   * @throws TaskpassDeniedError when the broker refuses; AgentPluginError `TASKPASS_AGENT_TASK_NOT_OPEN`
   *   after the task was finished.
   * @example
   * ```ts
   * const t = await task.token({ audience: 'https://tickets.taskpass.local/mcp', tool: 'get_ticket', resource: 'tickets/T-42', action: 'read' });
   * headers.set('authorization', `Bearer ${t.accessToken}`);
   * ```
   */
  async token(req: TokenRequest): Promise<IssuedToken> {
    const key = JSON.stringify([
      'call',
      req.audience,
      req.tool,
      req.resource,
      req.action,
      req.argsSha256 ?? '',
      req.arguments === undefined ? 0 : 1,
    ]);
    const r: CallTokenRequest = {
      audience: req.audience,
      tool: req.tool,
      resource: req.resource,
      action: req.action,
      ...(req.argsSha256 !== undefined ? { argsSha256: req.argsSha256 } : {}),
      ...(req.arguments !== undefined ? { arguments: req.arguments } : {}),
    };
    return this.#cached(this.#calls, key, () => this.#client.callToken(this.id, r));
  }

  /**
   * What the ceiling says about the arguments of calls of `tool` with `action` at `audience`: a
   * rule of any template that allows the call asking to bind (or send) them is enough, since the
   * broker may pick that template. A rule with `approval` always binds (an approval is for one
   * exact call). The MCP helpers apply this themselves.
   *
   * @example
   * ```ts
   * const rules = task.argumentRules('https://shop.test/mcp', 'refund', 'write');
   * const req = { audience, tool: 'refund', resource: 'orders/o-1', action: 'write' as const,
   *   ...(rules.bind ? { argsSha256: argsSha256(args) } : {}), ...(rules.send ? { arguments: args } : {}) };
   * ```
   */
  argumentRules(audience: string, tool: string, action: Action): ArgumentRules {
    const r: ArgumentRules = { bind: false, send: false, approval: false };
    for (const entry of this.ceiling) {
      if (entry.audience !== audience) continue;
      for (const t of entry.tools) {
        if (t.tool !== tool || t.action !== action) continue;
        r.approval ||= t.approval === true;
        r.send ||= t.send_arguments === true;
        r.bind ||= t.bind_arguments === true || t.approval === true || t.send_arguments === true;
      }
    }
    return r;
  }

  /**
   * Waits for a person to decide an approval this task asked for (the `approvalId` of a
   * {@link TaskpassApprovalRequiredError}). Each request is a long poll the broker holds until the
   * status changes (at most 60 s), so waiting costs about one request a minute; failed requests
   * are retried with a growing, jittered pause (up to 30 s). Not-found and forbidden answers end
   * the wait at once.
   *
   * Resolves with the approval once approved (also once its token was already issued, `used`):
   * ask for the call's token again. Rejects with a {@link TaskpassDeniedError} whose code is
   * `TASKPASS_APPROVAL_DENIED` (`reason` is the approver's comment when given),
   * `TASKPASS_APPROVAL_EXPIRED` or `TASKPASS_APPROVAL_CANCELLED` (the task was closed first); with
   * the signal's reason when aborted; with a `TimeoutError` DOMException after `timeoutMs`.
   *
   * @example
   * ```ts
   * const view = await task.waitForApproval(e.approvalId, { timeoutMs: 15 * 60_000, signal });
   * console.log(`approved by ${view.decision?.approver.sub}`);
   * ```
   */
  async waitForApproval(approvalId: string, opts: WaitForApprovalOptions = {}): Promise<ApprovalView> {
    this.#assertOpen();
    const signal = waitSignal(opts);
    let backoffMs = 0;
    for (;;) {
      signal?.throwIfAborted();
      this.#assertOpen(); // finished here meanwhile: the broker cancels the approval anyway
      const started = Date.now();
      let view: ApprovalView;
      try {
        view = await this.#client.getApproval(approvalId, {
          waitSec: LONG_POLL_SEC,
          ...(signal ? { signal } : {}),
        });
      } catch (e) {
        signal?.throwIfAborted();
        if (!retryable(e)) throw e;
        backoffMs = Math.min(BACKOFF_MAX_MS, backoffMs === 0 ? BACKOFF_FIRST_MS : backoffMs * 2);
        await sleep(backoffMs / 2 + Math.random() * (backoffMs / 2), signal);
        continue;
      }
      backoffMs = 0;
      if (view.status === 'approved' || view.status === 'used') return view;
      const code = APPROVAL_ENDINGS[view.status];
      if (code) {
        throw new TaskpassDeniedError(403, {
          code,
          // The broker's wording for the same ending, so both paths read alike.
          message: view.decision
            ? `${view.decision.approver.sub} ${view.status} this call`
            : `approval ${approvalId} is ${view.status}`,
          ...(view.decision?.comment ? { reason: view.decision.comment } : {}),
          template: view.request.template,
        });
      }
      const elapsed = Date.now() - started;
      if (elapsed < MIN_POLL_INTERVAL_MS) await sleep(MIN_POLL_INTERVAL_MS - elapsed, signal);
    }
  }

  /**
   * The session token for an MCP server (initialize, tools/list, ping, notifications, GET/DELETE):
   * it permits no tool call. Cached while valid.
   */
  async sessionToken(audience: string): Promise<IssuedToken> {
    return this.#cached(this.#sessions, JSON.stringify(['session', audience]), () =>
      this.#client.sessionToken(this.id, audience),
    );
  }

  /** Completes the task; its tokens are revoked once this resolves. */
  complete(): Promise<CompleteResult> {
    return this.#complete('completed');
  }

  /** Ends the task as failed. */
  fail(): Promise<CompleteResult> {
    return this.#complete('failed');
  }

  /** Cancels the task. */
  cancel(): Promise<CompleteResult> {
    return this.#complete('cancelled');
  }

  /**
   * `await using` support: cancels the task if it is still open. Does nothing after an explicit
   * complete/fail/cancel, or when the broker already closed the task. Other failures (broker
   * unreachable) are thrown, since the task's tokens then stay valid until they expire.
   */
  async [Symbol.asyncDispose](): Promise<void> {
    if (this.#finishing) await this.#finishing.catch(() => undefined);
    if (this.#state !== 'open') return;
    try {
      await this.cancel();
    } catch (e) {
      if (e instanceof BrokerError && CLOSED_CODES.has(e.code)) return;
      throw e;
    }
  }

  /** No secrets, but keep logs short. */
  toJSON(): Record<string, unknown> {
    return { id: this.id, state: this.#state, sub: this.sub, agent: this.agent, expiresAt: this.expiresAt };
  }

  async #cached(
    map: Map<string, Cached>,
    key: string,
    fetch: () => Promise<IssuedToken>,
  ): Promise<IssuedToken> {
    this.#assertOpen();
    const hit = this.#fresh(map.get(key));
    if (hit) return hit;
    const pending = this.#inflight.get(key);
    if (pending) {
      // Share a concurrent request's token only if it turns out reusable.
      const t = await pending.catch(() => undefined);
      if (t && !t.singleUse && this.#fresh(map.get(key)) === t) return t;
      this.#assertOpen();
    }
    const epoch = this.#client.identityEpoch;
    const p = fetch();
    this.#inflight.set(key, p);
    try {
      const t = await p;
      if (!t.singleUse && this.#state === 'open') {
        if (map.size >= MAX_CACHED) this.#prune(map);
        map.set(key, { token: t, epoch });
      }
      return t;
    } catch (e) {
      if (e instanceof BrokerError && CLOSED_CODES.has(e.code)) this.#closedByBroker();
      throw e;
    } finally {
      if (this.#inflight.get(key) === p) this.#inflight.delete(key);
    }
  }

  #fresh(c: Cached | undefined): IssuedToken | undefined {
    if (!c || c.epoch !== this.#client.identityEpoch) return undefined;
    return this.#client.clock() < c.token.validUntilMs - this.#client.tokenReuseMarginSec * 1000
      ? c.token
      : undefined;
  }

  #prune(map: Map<string, Cached>): void {
    for (const [k, c] of map) if (!this.#fresh(c)) map.delete(k);
    // Still full of valid tokens: drop the oldest (Map keeps insertion order).
    while (map.size >= MAX_CACHED) map.delete(map.keys().next().value as string);
  }

  #assertOpen(): void {
    if (this.#state !== 'open') {
      throw new AgentPluginError('TASKPASS_AGENT_TASK_NOT_OPEN', `task ${this.id} is ${this.#state}`);
    }
  }

  #closedByBroker(): void {
    this.#state = 'closed';
    this.#calls.clear();
    this.#sessions.clear();
  }

  async #complete(status: CompletionStatus): Promise<CompleteResult> {
    if (this.#finishing && this.#finishingStatus === status) return this.#finishing;
    this.#assertOpen();
    this.#state = 'finishing';
    this.#finishingStatus = status;
    // Forget cached tokens at once: they are about to be revoked.
    this.#calls.clear();
    this.#sessions.clear();
    const p = this.#client.complete(this.id, status);
    this.#finishing = p;
    try {
      const r = await p;
      this.#state = status;
      return r;
    } catch (e) {
      if (e instanceof BrokerError && CLOSED_CODES.has(e.code)) this.#state = 'closed';
      else this.#state = 'open'; // nothing was finished: the caller may retry
      throw e;
    } finally {
      if (this.#finishing === p) {
        this.#finishing = undefined;
        this.#finishingStatus = undefined;
      }
    }
  }
}

/** The caller's signal and the timeout as one signal (undefined when neither is given). */
function waitSignal(opts: WaitForApprovalOptions): AbortSignal | undefined {
  if (opts.timeoutMs === undefined) return opts.signal;
  if (!(opts.timeoutMs > 0)) {
    throw new AgentPluginError('TASKPASS_AGENT_CONFIG_INVALID', 'waitForApproval timeoutMs must be > 0');
  }
  // The wait ends by itself; its timer is left to fire (unref'd) rather than cleared.
  return timeoutSignal(opts.timeoutMs, opts.signal).signal;
}

// Worth asking again: the broker could not be reached or answered, or asked us to slow down.
function retryable(e: unknown): boolean {
  if (e instanceof AgentPluginError) return e.code === 'TASKPASS_AGENT_BROKER_UNREACHABLE';
  if (e instanceof TaskpassDeniedError) return false;
  return e instanceof BrokerError && (e.status === 429 || e.status >= 500);
}

function sleep(ms: number, signal: AbortSignal | undefined): Promise<void> {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason);
      return;
    }
    const done = () => {
      signal?.removeEventListener('abort', aborted);
      resolve();
    };
    const timer = setTimeout(done, ms);
    const aborted = () => {
      clearTimeout(timer);
      reject(signal?.reason);
    };
    signal?.addEventListener('abort', aborted, { once: true });
  });
}
