// The heart of `taskpass proxy`: one Taskpass task for the session of work, one MCP client per
// upstream server whose fetch is agent-plugin's taskpassFetch (a fresh call token on every
// tools/call), and the host's tools/list and tools/call passed through under prefixed names.
import { AsyncLocalStorage } from 'node:async_hooks';
import { channel } from 'node:diagnostics_channel';
import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';
import type { FetchLike } from '@modelcontextprotocol/sdk/shared/transport.js';
import type { CallToolRequest, CallToolResult, Tool } from '@modelcontextprotocol/sdk/types.js';
import {
  type ApprovalMode,
  type BrokerClient,
  type Task,
  type TaskpassApprovalRequiredError,
  ToolCatalog,
  taskpassFetch,
} from '@taskpass/agent-plugin';
import type { Logger } from 'pino';
import type { ProxyConfig, ProxyUpstreamConfig } from './config.ts';
import { ProxyError } from './errors.ts';
import { errorText, toolErrorResult } from './tool-errors.ts';
import { exposeTools, type ToolRoute } from './tools.ts';
import type { UserTokenSource } from './user-token.ts';

export const PROXY_VERSION = '0.1.0';

/**
 * Test seam: each call or session token the proxy sends upstream is published here, and only while
 * something subscribes (`diagnostics_channel.subscribe(TOKEN_CHANNEL, …)` in the same process,
 * e.g. a test's `--import` preload). Nothing in the proxy subscribes and nothing is logged.
 */
export const TOKEN_CHANNEL = 'taskpass:proxy:token';
const tokenChannel = channel(TOKEN_CHANNEL);

/** What {@link TOKEN_CHANNEL} carries. */
export interface TokenMessage {
  upstream: string;
  /** The JSON-RPC method the token went with (`tools/call`, `tools/list` …). */
  method: string | undefined;
  token: string;
}

/** How the host hears about a call waiting for approval while it waits. */
export interface ApprovalNotice {
  text: string;
  approvalId: string;
  approvalUrl: string;
  expiresAt: Date;
}

/** The host request a tools/call runs for: cancellation and where to send notices. */
export interface HostCallContext {
  signal?: AbortSignal;
  /** Tells the host that the call waits for a person (progress and log notifications). */
  notify?: (n: ApprovalNotice) => void | Promise<void>;
  /** Relays the upstream's progress to the host, when the host asked for progress. */
  onprogress?: (p: { progress: number; total?: number; message?: string }) => void;
}

/** Dependencies of {@link AgentProxy} (built by `startProxy`, replaced by tests). */
export interface AgentProxyDeps {
  broker: BrokerClient;
  userToken: UserTokenSource;
  /** The fetch that reaches an upstream (mTLS with the agent's SVID, the server known by SPIFFE ID). */
  upstreamFetch: (u: ProxyUpstreamConfig) => FetchLike;
  logger: Logger;
}

interface Session {
  task: Task;
  clients: Map<string, Client>;
}

/**
 * One session of work: opens the task when started (and again after an idle completion or the
 * task's expiry), forwards tools/list and tools/call, and completes the task on {@link close} or
 * after `idleTimeoutMs` without calls.
 *
 * @example
 * ```ts
 * const proxy = new AgentProxy(config, deps);
 * await proxy.start();                 // task opened, upstream tools listed, names checked
 * await proxy.callTool({ name: 'tickets.get_ticket', arguments: { ticket_id: 'T-1' } });
 * await proxy.close('completed');      // leftover tokens are revoked with the task
 * ```
 */
export class AgentProxy {
  readonly config: ProxyConfig;
  readonly #deps: AgentProxyDeps;
  readonly #log: Logger;
  readonly #catalogs = new Map<string, ToolCatalog>();
  readonly #callContext = new AsyncLocalStorage<HostCallContext>();
  #session: Promise<Session> | undefined;
  #routes = new Map<string, ToolRoute>();
  #idleTimer: NodeJS.Timeout | undefined;
  #inFlight = 0;
  #closed = false;
  #lastTaskId: string | undefined;

  constructor(config: ProxyConfig, deps: AgentProxyDeps) {
    this.config = config;
    this.#deps = deps;
    this.#log = deps.logger;
    // Declarations and learned hints outlive a task: a new task needs no new tools/list to map calls.
    for (const u of config.upstreams) {
      this.#catalogs.set(u.name, new ToolCatalog(u.tools, { useServerHints: u.useServerHints }));
    }
  }

  /** The id of the current (or last) task. */
  get taskId(): string | undefined {
    return this.#lastTaskId;
  }

  /** True while a task is open. */
  get hasOpenTask(): boolean {
    return this.#session !== undefined;
  }

  /**
   * Opens the task, connects the upstreams and lists their tools (a name collision fails here).
   * A failed start cancels the task it opened.
   */
  async start(): Promise<void> {
    try {
      await this.listTools();
    } catch (e) {
      await this.#endSession('cancelled', 'shutdown');
      throw e;
    }
  }

  /** The tools of every upstream under their exposed names. */
  async listTools(): Promise<Tool[]> {
    return this.#busy(async () => {
      const s = await this.#current();
      const lists = [];
      for (const u of this.config.upstreams) {
        const client = s.clients.get(u.name)!;
        const tools: Tool[] = [];
        let cursor: string | undefined;
        do {
          const page = await client.listTools(cursor ? { cursor } : undefined);
          tools.push(...page.tools);
          cursor = page.nextCursor;
        } while (cursor);
        lists.push({ upstream: u.name, prefix: u.prefix, tools });
      }
      const { tools, routes } = exposeTools(lists);
      this.#routes = routes;
      return tools;
    });
  }

  /**
   * Forwards one tools/call. Never throws for a refusal or an outage: every failure is a readable
   * tool error (`isError: true`).
   */
  async callTool(params: CallToolRequest['params'], ctx: HostCallContext = {}): Promise<CallToolResult> {
    const exposed = params.name;
    let upstream = '(none)';
    try {
      return await this.#busy(async () => {
        if (!this.#routes.has(exposed) || !this.#session) await this.listTools();
        const route = this.#routes.get(exposed);
        if (!route) {
          throw new ProxyError(
            'TASKPASS_PROXY_UNKNOWN_TOOL',
            `no upstream MCP server lists a tool "${exposed}"`,
          );
        }
        upstream = route.upstream;
        const s = await this.#current();
        const client = s.clients.get(route.upstream)!;
        const waits = this.config.approvals.mode === 'wait' ? this.config.approvals.timeoutMs : 0;
        const result = await this.#callContext.run(ctx, () =>
          client.callTool(
            { name: route.tool, ...(params.arguments ? { arguments: params.arguments } : {}) },
            undefined,
            {
              timeout: this.config.callTimeoutMs + waits,
              ...(ctx.signal ? { signal: ctx.signal } : {}),
              ...(ctx.onprogress ? { onprogress: ctx.onprogress } : {}),
            },
          ),
        );
        this.#log.info(
          { event: 'call', tool: exposed, upstream, taskId: s.task.id, isError: result.isError === true },
          'call',
        );
        return result as CallToolResult;
      });
    } catch (e) {
      const result = toolErrorResult(e, exposed, {
        upstream,
        approvalTimeoutMs: this.config.approvals.timeoutMs,
      });
      const facts = result._meta?.['dev.taskpass/error'] as { code: string; reason: string } | undefined;
      this.#log.warn(
        {
          event: 'call.refused',
          tool: exposed,
          upstream,
          taskId: this.#lastTaskId,
          code: facts?.code,
          reason: facts?.reason,
        },
        'call refused',
      );
      return result;
    }
  }

  /**
   * Ends the session: the upstream connections close and the task is completed (or cancelled on a
   * crash path), which revokes every token it issued. Later requests are refused.
   */
  async close(status: 'completed' | 'cancelled' = 'completed'): Promise<void> {
    this.#closed = true;
    await this.#endSession(status, 'shutdown');
  }

  // Runs a request: no idle completion while it runs, the idle clock restarts when it ends.
  async #busy<T>(fn: () => Promise<T>): Promise<T> {
    if (this.#closed) throw new ProxyError('TASKPASS_PROXY_UPSTREAM_FAILED', 'the proxy is shutting down');
    this.#inFlight++;
    clearTimeout(this.#idleTimer);
    try {
      return await fn();
    } finally {
      this.#inFlight--;
      this.#armIdle();
    }
  }

  #armIdle(): void {
    clearTimeout(this.#idleTimer);
    if (this.#closed || this.#inFlight > 0 || !this.#session) return;
    this.#idleTimer = setTimeout(() => {
      if (this.#inFlight > 0) return;
      void this.#endSession('completed', 'idle');
    }, this.config.idleTimeoutMs);
    this.#idleTimer.unref();
  }

  // The open session; a new task when there is none yet (at start, after an idle completion) or
  // the last one ran out of time. A task the broker closed early (revoked) is not silently replaced.
  async #current(): Promise<Session> {
    const s = await this.#session?.catch(() => undefined);
    if (s) {
      const live = s.task.expiresAt.getTime() > Date.now();
      if (s.task.isOpen && live) return s;
      if (live) {
        throw new ProxyError(
          'TASKPASS_PROXY_TASK_CLOSED',
          `task ${s.task.id} was closed by the broker (revoked?); restart the proxy to open a new one`,
        );
      }
      await this.#endSession('completed', 'expired');
    }
    if (!this.#session) {
      const opening = this.#open();
      this.#session = opening;
      // A failed opening is forgotten, so the next request tries again (the user may have logged in).
      opening.catch(() => {
        if (this.#session === opening) this.#session = undefined;
      });
    }
    return this.#session;
  }

  async #open(): Promise<Session> {
    const userToken = await this.#deps.userToken();
    const task = await this.#deps.broker.openTask({
      purpose: this.config.purpose,
      ...(userToken !== undefined ? { userToken } : {}),
      ...(this.config.ttlSeconds !== undefined ? { ttlSeconds: this.config.ttlSeconds } : {}),
    });
    this.#lastTaskId = task.id;
    this.#log.info(
      { event: 'task.opened', taskId: task.id, sub: task.sub, agent: task.agent, expiresAt: task.expiresAt },
      'task opened',
    );
    const clients = new Map<string, Client>();
    try {
      for (const u of this.config.upstreams) clients.set(u.name, await this.#connect(task, u));
    } catch (e) {
      for (const c of clients.values()) await c.close().catch(() => undefined);
      await task.cancel().catch(() => undefined);
      throw new ProxyError(
        'TASKPASS_PROXY_UPSTREAM_FAILED',
        `could not connect to the upstream MCP servers: ${(e as Error).message}`,
        { cause: e },
      );
    }
    return { task, clients };
  }

  async #connect(task: Task, u: ProxyUpstreamConfig): Promise<Client> {
    const fetch = taskpassFetch(task, {
      audience: u.audience,
      tools: this.#catalogs.get(u.name)!,
      approval: this.#approvalMode(u),
      fetch: publishing(u.name, this.#deps.upstreamFetch(u)),
    });
    const client = new Client({ name: 'taskpass-proxy', version: PROXY_VERSION });
    client.onerror = (e) => this.#log.debug({ event: 'upstream.error', upstream: u.name, err: e.message });
    await client.connect(new StreamableHTTPClientTransport(new URL(u.url), { fetch }));
    return client;
  }

  #approvalMode(u: ProxyUpstreamConfig): ApprovalMode {
    if (this.config.approvals.mode === 'fail') return 'throw';
    return {
      wait: true,
      timeoutMs: this.config.approvals.timeoutMs,
      onApprovalRequired: async (e: TaskpassApprovalRequiredError) => {
        const tool = `${u.prefix}${e.request.tool}`;
        this.#log.info(
          {
            event: 'approval.required',
            tool,
            upstream: u.name,
            approvalId: e.approvalId,
            url: e.approvalUrl,
          },
          'waiting for approval',
        );
        const text = `${errorText(
          {
            code: e.code,
            reason: e.reason,
            approvalUrl: e.approvalUrl,
            expiresAt: e.expiresAt.toISOString(),
            ...(e.template ? { template: e.template } : {}),
          },
          tool,
        ).replace('then call the tool again', 'the call waits for the decision')}`;
        try {
          await this.#callContext.getStore()?.notify?.({
            text,
            approvalId: e.approvalId,
            approvalUrl: e.approvalUrl,
            expiresAt: e.expiresAt,
          });
        } catch (err) {
          // A host that cannot take notifications still gets the call's answer.
          this.#log.debug({ event: 'notify.failed', err: (err as Error).message });
        }
      },
    };
  }

  async #endSession(status: 'completed' | 'cancelled', why: 'idle' | 'shutdown' | 'expired'): Promise<void> {
    clearTimeout(this.#idleTimer);
    const pending = this.#session;
    this.#session = undefined;
    if (!pending) return;
    let s: Session;
    try {
      s = await pending;
    } catch {
      return; // never opened
    }
    for (const c of s.clients.values()) await c.close().catch(() => undefined);
    if (!s.task.isOpen) return;
    try {
      await (status === 'completed' ? s.task.complete() : s.task.cancel());
      this.#log.info({ event: `task.${status}`, taskId: s.task.id, why }, `task ${status}`);
    } catch (e) {
      // Its tokens then stay valid until they expire (seconds for call tokens): say so loudly.
      this.#log.error(
        { event: 'task.finish_failed', taskId: s.task.id, status, why, err: (e as Error).message },
        'could not finish the task at the broker',
      );
    }
  }
}

// Publishes each token sent upstream on TOKEN_CHANNEL while someone listens (see there).
function publishing(upstream: string, base: FetchLike): FetchLike {
  return (url, init) => {
    if (tokenChannel.hasSubscribers) {
      const headers = new Headers(init?.headers);
      const auth = headers.get('authorization');
      if (auth?.startsWith('Bearer ')) {
        const message: TokenMessage = {
          upstream,
          method: headers.get('mcp-method') ?? undefined,
          token: auth.slice('Bearer '.length),
        };
        tokenChannel.publish(message);
      }
    }
    return base(url, init);
  };
}
