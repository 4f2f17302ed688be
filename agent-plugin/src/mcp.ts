// MCP client integration (docs/design.md §6). Over Streamable HTTP a fetch wrapper gives each
// tools/call POST its own call token as the Bearer, and every other request the task's session
// token; over stdio the call token rides in params._meta["dev.taskpass/token"].
import type { Client } from '@modelcontextprotocol/sdk/client/index.js';
import type { RequestOptions } from '@modelcontextprotocol/sdk/shared/protocol.js';
import type { FetchLike } from '@modelcontextprotocol/sdk/shared/transport.js';
import {
  type Action,
  argsSha256,
  checkedDeriver,
  encodeMcpHeaderValue,
  compileResourceTemplate,
  isAction,
  META_ACTION,
  META_RESOURCE,
  META_TOKEN,
  mcpNameOf,
  type ToolArgs,
} from '@taskpass/contract';
import { createParser } from 'eventsource-parser';
import type { IssuedToken } from './broker-client.ts';
import { AgentPluginError, TaskpassApprovalRequiredError } from './errors.ts';
import type { Task, TokenRequest } from './task.ts';

export type { FetchLike };

/**
 * How the agent author maps one tool's calls to a Taskpass resource and action class.
 * `resource` is a template such as `tickets/{ticket_id}` (each placeholder names an argument, dotted
 * paths reach into objects, and fills exactly one segment) or a function of the arguments.
 */
export interface ToolDeclaration {
  resource: string | ((args: ToolArgs) => string);
  action: Action;
  /** Also bind the token to the exact arguments (`args_sha256`). Default false. */
  bindArgs?: boolean;
}

/** Declarations by tool name. */
export type ToolDeclarations = Record<string, ToolDeclaration>;

/** The part of an MCP `Tool` (from tools/list) the plugin reads. */
export interface ToolLike {
  name: string;
  annotations?: { readOnlyHint?: boolean } & Record<string, unknown>;
  _meta?: Record<string, unknown>;
}

/** What a tools/call needs from the broker. */
export interface ResolvedCall {
  resource: string;
  action: Action;
  argsSha256?: string;
}

type Deriver = (args: ToolArgs) => string;

function underivable(msg: string, cause?: unknown): AgentPluginError {
  return new AgentPluginError(
    'TASKPASS_AGENT_RESOURCE_UNDERIVABLE',
    msg,
    cause === undefined ? undefined : { cause },
  );
}

/**
 * The agent derives resources with the compiler the verifier uses (`@taskpass/contract`), so both
 * sides of a call always agree on the resource; only the error type is the agent's.
 */
function asAgentDeriver(derive: (args: ToolArgs) => string): Deriver {
  return (args) => {
    try {
      return derive(args);
    } catch (e) {
      throw underivable((e as Error).message, e);
    }
  };
}

const compileTemplate = (template: string): Deriver => asAgentDeriver(compileResourceTemplate(template));
const checkedFunction = (fn: (args: ToolArgs) => string): Deriver => asAgentDeriver(checkedDeriver(fn));

interface Entry {
  derive: Deriver;
  action: Action;
  bindArgs: boolean;
}

/** Options of {@link ToolCatalog}. */
export interface ToolCatalogOptions {
  /**
   * Use resource/action hints the MCP server publishes in its tools' `_meta` for tools without a
   * declaration. Default true: a hint can only shape tokens whose audience is that same server, and
   * the broker still checks every request against the task's templates.
   */
  useServerHints?: boolean;
}

/**
 * Knows, for each tool, how a call maps to a resource and action: the agent author's declarations
 * first, then hints learned from the server's tools/list. Shared by {@link taskpassFetch} and the
 * stdio helpers.
 *
 * @example
 * ```ts
 * const catalog = new ToolCatalog({ get_ticket: { resource: 'tickets/{ticket_id}', action: 'read' } });
 * catalog.learn(await mcp.listTools()); // server-published hints for the other tools
 * catalog.resolve('get_ticket', { ticket_id: 'T-42' }); // { resource: 'tickets/T-42', action: 'read' }
 * ```
 */
export class ToolCatalog {
  readonly useServerHints: boolean;
  readonly #declared = new Map<string, Entry>();
  readonly #hints = new Map<string, Entry | string>(); // string: why the hint is unusable
  readonly #pending = new Set<Promise<void>>();

  constructor(declared: ToolDeclarations = {}, opts: ToolCatalogOptions = {}) {
    this.useServerHints = opts.useServerHints ?? true;
    for (const [name, d] of Object.entries(declared)) {
      if (!d || !isAction(d.action)) {
        throw new AgentPluginError(
          'TASKPASS_AGENT_CONFIG_INVALID',
          `tool "${name}": action must be read, write or admin`,
        );
      }
      let derive: Deriver;
      if (typeof d.resource === 'function') derive = checkedFunction(d.resource);
      else {
        try {
          derive = compileTemplate(d.resource);
        } catch (e) {
          throw new AgentPluginError(
            'TASKPASS_AGENT_CONFIG_INVALID',
            `tool "${name}": ${(e as Error).message}`,
          );
        }
      }
      this.#declared.set(name, { derive, action: d.action, bindArgs: d.bindArgs === true });
    }
  }

  /**
   * Learns server-published hints (`_meta["dev.taskpass/resource"]`, `_meta["dev.taskpass/action"]`,
   * else `annotations.readOnlyHint` → read, otherwise write) from a tools/list result or its tools.
   * Tools without a resource hint are forgotten. Ignored when `useServerHints` is false.
   */
  learn(result: { tools: readonly ToolLike[] } | readonly ToolLike[]): void {
    if (!this.useServerHints) return;
    const tools = Array.isArray(result) ? result : (result as { tools: readonly ToolLike[] }).tools;
    if (!Array.isArray(tools)) return;
    for (const t of tools as readonly ToolLike[]) {
      if (!t || typeof t.name !== 'string') continue;
      const meta = t._meta ?? {};
      const res = meta[META_RESOURCE];
      if (typeof res !== 'string') {
        this.#hints.delete(t.name);
        continue;
      }
      const act = meta[META_ACTION];
      let action: Action;
      if (isAction(act)) action = act;
      else if (act !== undefined) {
        this.#hints.set(
          t.name,
          `the server's action hint ${JSON.stringify(act)} is not read, write or admin`,
        );
        continue;
      } else action = t.annotations?.readOnlyHint === true ? 'read' : 'write';
      try {
        this.#hints.set(t.name, { derive: compileTemplate(res), action, bindArgs: false });
      } catch (e) {
        this.#hints.set(t.name, `the server's resource hint is unusable: ${(e as Error).message}`);
      }
    }
  }

  /** True when a call of `tool` can be resolved (declared, or a usable hint was learned). */
  has(tool: string): boolean {
    return this.#declared.has(tool) || typeof this.#hints.get(tool) === 'object';
  }

  /**
   * The resource and action for a call.
   *
   * @throws AgentPluginError `TASKPASS_AGENT_NO_RESOURCE_MAPPER` / `TASKPASS_AGENT_RESOURCE_UNDERIVABLE`.
   */
  resolve(tool: string, args: ToolArgs | undefined): ResolvedCall {
    let e = this.#declared.get(tool);
    if (!e && this.useServerHints) {
      const h = this.#hints.get(tool);
      if (typeof h === 'string') throw underivable(`tool "${tool}": ${h}`);
      e = h;
    }
    if (!e) {
      throw new AgentPluginError(
        'TASKPASS_AGENT_NO_RESOURCE_MAPPER',
        `tool "${tool}" has no declared resource mapper${this.useServerHints ? ' and the server published no hint for it' : ''}`,
      );
    }
    const resource = e.derive(args ?? {});
    return { resource, action: e.action, ...(e.bindArgs ? { argsSha256: argsSha256(args) } : {}) };
  }

  /** @internal Tracks a tools/list answer still being read (SSE), so calls wait for its hints. */
  track(p: Promise<void>): void {
    this.#pending.add(p);
    p.finally(() => this.#pending.delete(p)).catch(() => undefined);
  }

  /** @internal Waits (bounded) for tools/list answers still being read. */
  async settled(maxWaitMs = 5000): Promise<void> {
    if (this.#pending.size === 0) return;
    let timer: NodeJS.Timeout | undefined;
    await Promise.race([
      Promise.allSettled([...this.#pending]),
      new Promise<void>((resolve) => {
        timer = setTimeout(resolve, maxWaitMs);
        timer.unref?.();
      }),
    ]);
    clearTimeout(timer);
  }
}

/**
 * What {@link taskpassFetch} does when a call needs a person's approval: `'throw'` (default) rejects
 * the call with the {@link TaskpassApprovalRequiredError}; `{ wait: true }` waits for the decision
 * and then sends the call.
 */
export type ApprovalMode = 'throw' | ApprovalWait;

/** {@link ApprovalMode} that waits. */
export interface ApprovalWait {
  wait: true;
  /**
   * Called once per call that needs approval, before the wait, so the host can show
   * `e.approvalUrl` (and `e.request`: what is asked) to its user. Throwing here rejects the call
   * with that error instead of waiting.
   */
  onApprovalRequired?: (e: TaskpassApprovalRequiredError) => void | Promise<void>;
  /** Gives up waiting after this long (a `TimeoutError` rejects the call). Default: until the approval expires. */
  timeoutMs?: number;
}

/** Options of {@link taskpassFetch}. */
export interface TaskpassFetchOptions {
  /** The MCP server's resource URI, exactly as the broker templates name it (the token `aud`). */
  audience: string;
  /** Per-tool resource mappers and action classes, or a shared {@link ToolCatalog}. */
  tools?: ToolDeclarations | ToolCatalog;
  /** See {@link ToolCatalogOptions.useServerHints} (ignored when `tools` is a catalog). Default true. */
  useServerHints?: boolean;
  /** The fetch to wrap. Default the global `fetch`. */
  fetch?: FetchLike;
  /** Calls that need a person's approval: throw (default) or wait. See {@link ApprovalMode}. */
  approval?: ApprovalMode;
}

/** The fetch returned by {@link taskpassFetch}. */
export interface TaskpassFetch extends FetchLike {
  /** The catalog resolving tools/calls (declarations plus learned hints). */
  readonly catalog: ToolCatalog;
  /** Learns server hints from a tools/list result (they are also learned from the traffic). */
  learnTools(result: { tools: readonly ToolLike[] } | readonly ToolLike[]): void;
}

interface RpcMessage {
  jsonrpc?: unknown;
  id?: unknown;
  method?: unknown;
  params?: { name?: unknown; arguments?: unknown; requestId?: unknown } | null;
  result?: { tools?: unknown } | null;
}

function parseBody(body: unknown): RpcMessage[] | undefined {
  if (typeof body !== 'string') return undefined;
  let v: unknown;
  try {
    v = JSON.parse(body);
  } catch {
    return undefined;
  }
  const list = Array.isArray(v) ? v : [v];
  return list.filter((m): m is RpcMessage => typeof m === 'object' && m !== null);
}

function callOf(m: RpcMessage): { name: string; args: ToolArgs | undefined } {
  const name = m.params?.name;
  const args = m.params?.arguments;
  if (typeof name !== 'string') {
    throw new AgentPluginError('TASKPASS_AGENT_BAD_MCP_MESSAGE', 'tools/call without a string params.name');
  }
  if (args !== undefined && (typeof args !== 'object' || args === null || Array.isArray(args))) {
    throw new AgentPluginError(
      'TASKPASS_AGENT_BAD_MCP_MESSAGE',
      `tools/call "${name}": params.arguments must be an object`,
    );
  }
  return { name, args: args as ToolArgs | undefined };
}

/**
 * The token request for one call: the resource and action resolved by the catalog, the arguments
 * bound (`args_sha256`) when the declaration or the task's ceiling asks for it, and sent along when
 * the ceiling says `send_arguments`.
 */
function tokenRequestFor(
  task: Task,
  audience: string,
  tool: string,
  args: ToolArgs | undefined,
  r: ResolvedCall,
): TokenRequest {
  const rules = task.argumentRules(audience, tool, r.action);
  const digest = r.argsSha256 ?? (rules.bind ? argsSha256(args) : undefined);
  return {
    audience,
    tool,
    resource: r.resource,
    action: r.action,
    ...(digest !== undefined ? { argsSha256: digest } : {}),
    ...(rules.send ? { arguments: { ...args } } : {}),
  };
}

/**
 * The call token; when the broker asks for a person's approval and the mode waits: the callback,
 * the wait, and one more request (asked for approval again, that error is thrown).
 */
async function tokenOrWait(
  task: Task,
  req: TokenRequest,
  approval: ApprovalMode,
  signal: AbortSignal | undefined,
): Promise<IssuedToken> {
  try {
    return await task.token(req);
  } catch (e) {
    if (approval === 'throw' || !(e instanceof TaskpassApprovalRequiredError)) throw e;
    await approval.onApprovalRequired?.(e);
    await task.waitForApproval(e.approvalId, {
      ...(signal ? { signal } : {}),
      ...(approval.timeoutMs !== undefined ? { timeoutMs: approval.timeoutMs } : {}),
    });
    return task.token(req);
  }
}

function approvalModeOf(mode: unknown): ApprovalMode {
  if (mode === undefined || mode === 'throw') return 'throw';
  const m = mode as Partial<ApprovalWait> | null;
  const ok =
    typeof m === 'object' &&
    m !== null &&
    m.wait === true &&
    (m.onApprovalRequired === undefined || typeof m.onApprovalRequired === 'function') &&
    (m.timeoutMs === undefined || (typeof m.timeoutMs === 'number' && m.timeoutMs > 0));
  if (!ok) {
    throw new AgentPluginError(
      'TASKPASS_AGENT_CONFIG_INVALID',
      "approval must be 'throw' or { wait: true, onApprovalRequired?: function, timeoutMs?: number > 0 }",
    );
  }
  return m as ApprovalWait;
}

/**
 * A `fetch` for the SDK's `StreamableHTTPClientTransport` that authorizes every request with the
 * task: a `tools/call` POST gets a call token for exactly that tool, the resource derived from its
 * arguments and its action class (declared mapper first, else the server's published hint); every
 * other request (initialize, tools/list, ping, notifications, the GET SSE stream, DELETE) gets the
 * task's session token, which permits no tool call.
 *
 * Batches: a JSON-RPC batch may hold at most one `tools/call` (its call token then covers the
 * batch's other messages, as the verifier accepts); a batch with two or more is refused with
 * `TASKPASS_AGENT_BATCH_MULTIPLE_CALLS` before anything is sent, since one header carries one token
 * and the verifier would refuse it too. The SDK v1 client itself never batches.
 *
 * Every POST also carries the MCP 2026-07-28 `Mcp-Method` header, and `Mcp-Name` when the body
 * names a tool, prompt, resource or task, derived from the body (non-ASCII names in the spec's
 * `=?base64?…?=` form); headers the caller set there are replaced.
 *
 * Hints are learned from tools/list answers passing through (JSON or SSE) unless
 * `useServerHints: false`.
 *
 * Errors from the broker are thrown from the fetch, so `client.callTool()` rejects with the same
 * {@link TaskpassDeniedError} (code, reason, template).
 *
 * Arguments: the token is bound to the call's arguments (`args_sha256`) when the declaration says
 * `bindArgs` or the task's ceiling says `bind_arguments` or `approval` for the tool; the arguments
 * themselves go to the broker only when the ceiling says `send_arguments`.
 *
 * Approvals: with `approval: { wait: true, onApprovalRequired }` a call that needs a person's
 * approval calls back with the approval URL, waits ({@link Task.waitForApproval}), asks for the
 * token again and sends the call. It waits once per call: asked for approval again, it throws.
 * The MCP client's own request timeout (60 s by default in the SDK) still applies: pass a longer
 * `timeout` to `callTool()`. When the client gives up on the call (its `notifications/cancelled`
 * passes through this fetch) or closes the transport, the wait ends and the call is never sent.
 *
 * @example
 * ```ts
 * const transport = new StreamableHTTPClientTransport(new URL('https://tickets.taskpass.local/mcp'), {
 *   fetch: taskpassFetch(task, {
 *     audience: 'https://tickets.taskpass.local/mcp',
 *     tools: { get_ticket: { resource: 'tickets/{ticket_id}', action: 'read' } },
 *   }),
 * });
 * const mcp = new Client({ name: 'support-agent', version: '1.0.0' });
 * await mcp.connect(transport);
 * await mcp.callTool({ name: 'get_ticket', arguments: { ticket_id: 'T-42' } });
 * ```
 */
export function taskpassFetch(task: Task, opts: TaskpassFetchOptions): TaskpassFetch {
  if (typeof opts?.audience !== 'string' || opts.audience === '') {
    throw new AgentPluginError(
      'TASKPASS_AGENT_CONFIG_INVALID',
      'taskpassFetch needs the MCP server audience',
    );
  }
  const catalog =
    opts.tools instanceof ToolCatalog
      ? opts.tools
      : new ToolCatalog(
          opts.tools ?? {},
          opts.useServerHints === undefined ? {} : { useServerHints: opts.useServerHints },
        );
  const base: FetchLike = opts.fetch ?? ((url, init) => fetch(url, init));
  const audience = opts.audience;
  const approval = approvalModeOf(opts.approval);
  // Calls in flight, by JSON-RPC id: the client's cancellation of one ends its wait for approval.
  const waiting = new Map<unknown, AbortController>();

  const callToken = async (req: TokenRequest, rpcId: unknown, signal: AbortSignal | undefined) => {
    const cancel = new AbortController();
    waiting.set(rpcId, cancel);
    try {
      return await tokenOrWait(
        task,
        req,
        approval,
        signal ? AbortSignal.any([signal, cancel.signal]) : cancel.signal,
      );
    } finally {
      if (waiting.get(rpcId) === cancel) waiting.delete(rpcId);
    }
  };

  const wrapped = async (url: string | URL, init?: RequestInit): Promise<Response> => {
    const method = (init?.method ?? 'GET').toUpperCase();
    const messages = method === 'POST' ? parseBody(init?.body) : undefined;
    let token: string;
    const listIds: unknown[] = [];
    const calls = (messages ?? []).filter((m) => m.method === 'tools/call');
    if (calls.length > 1) {
      throw new AgentPluginError(
        'TASKPASS_AGENT_BATCH_MULTIPLE_CALLS',
        `a JSON-RPC batch holds ${calls.length} tools/call requests; send them one per POST`,
      );
    }
    for (const m of messages ?? []) {
      if (m.method === 'tools/list' && m.id !== undefined) listIds.push(m.id);
      if (m.method === 'notifications/cancelled') {
        waiting
          .get(m.params?.requestId)
          ?.abort(new DOMException('the MCP client cancelled the call', 'AbortError'));
      }
    }
    const call = calls[0];
    if (call) {
      const { name, args } = callOf(call);
      if (!catalog.has(name)) await catalog.settled();
      const r = catalog.resolve(name, args);
      const signal = init?.signal ?? undefined;
      token = (await callToken(tokenRequestFor(task, audience, name, args, r), call.id, signal)).accessToken;
    } else {
      token = (await task.sessionToken(audience)).accessToken;
    }
    const headers = new Headers(init?.headers);
    headers.set('authorization', `Bearer ${token}`);
    // MCP 2026-07-28 (SEP-2243) servers require Mcp-Method/Mcp-Name and refuse them when they
    // disagree with the body; SDK 1.x never sends them. Derived from the body this token is for,
    // replacing whatever the caller set, so header and body cannot disagree.
    headers.delete('mcp-method');
    headers.delete('mcp-name');
    const target = call ?? (messages?.length === 1 ? messages[0] : undefined);
    if (typeof target?.method === 'string') {
      headers.set('mcp-method', target.method);
      const name = mcpNameOf(target);
      if (name !== undefined) headers.set('mcp-name', encodeMcpHeaderValue(name));
    }
    const res = await base(url, { ...init, headers });
    if (listIds.length === 0 || !catalog.useServerHints || !res.ok || !res.body) return res;
    return learnFromResponse(catalog, res, listIds);
  };
  return Object.assign(wrapped, {
    catalog,
    learnTools: (result: { tools: readonly ToolLike[] } | readonly ToolLike[]) => catalog.learn(result),
  });
}

function learnFrom(catalog: ToolCatalog, msg: unknown, ids: Set<unknown>): void {
  for (const m of Array.isArray(msg) ? msg : [msg]) {
    const r = m as RpcMessage | null;
    if (r && typeof r === 'object' && ids.has(r.id) && r.result && Array.isArray(r.result.tools)) {
      ids.delete(r.id);
      catalog.learn({ tools: r.result.tools as ToolLike[] });
    }
  }
}

async function learnFromResponse(catalog: ToolCatalog, res: Response, listIds: unknown[]): Promise<Response> {
  const ids = new Set(listIds);
  const type = (res.headers.get('content-type') ?? '').toLowerCase();
  if (type.includes('application/json')) {
    try {
      learnFrom(catalog, await res.clone().json(), ids);
    } catch {
      // Not our business: the SDK reports unparsable answers.
    }
    return res;
  }
  if (!type.includes('text/event-stream') || !res.body) return res;
  // SSE: read a copy of the stream alongside the SDK until the tools/list answer has passed.
  const [forSdk, forUs] = res.body.tee();
  catalog.track(
    readSse(
      forUs,
      (data) => learnFrom(catalog, data, ids),
      () => ids.size === 0,
    ),
  );
  return new Response(forSdk, { status: res.status, statusText: res.statusText, headers: res.headers });
}

async function readSse(
  stream: ReadableStream<Uint8Array>,
  onData: (json: unknown) => void,
  done: () => boolean,
): Promise<void> {
  const reader = stream.getReader();
  const decoder = new TextDecoder();
  const parser = createParser({
    onEvent: (event) => {
      try {
        onData(JSON.parse(event.data));
      } catch {
        // not JSON: not a JSON-RPC message
      }
    },
  });
  try {
    while (!done()) {
      const { value, done: end } = await reader.read();
      if (end) break;
      parser.feed(decoder.decode(value, { stream: true }));
    }
  } catch {
    // The SDK's copy reports stream errors.
  } finally {
    // Stop buffering our copy; the SDK's copy is unaffected.
    reader.cancel().catch(() => undefined);
  }
}

/** Options of {@link withCallToken} and {@link taskpassCallTool}. */
export interface CallToolTokenOptions {
  /** The MCP server's resource URI (as the broker templates name it). */
  audience: string;
  /** Per-tool mappers, or a {@link ToolCatalog} (which may hold hints learned from `listTools()`). */
  tools: ToolDeclarations | ToolCatalog;
  /** Calls that need a person's approval: throw (default) or wait, as with {@link taskpassFetch}. */
  approval?: ApprovalMode;
  /** Ends a wait for approval (rejects with its reason). */
  signal?: AbortSignal;
}

/** tools/call params as `Client.callTool` takes them. */
export type CallToolParams = Parameters<Client['callTool']>[0];

/**
 * Adds a call token for this call to `params._meta["dev.taskpass/token"]` (the stdio channel; over
 * HTTP use {@link taskpassFetch}). Returns new params; the input is not modified.
 *
 * @example
 * ```ts
 * const params = await withCallToken(task, { name: 'get_ticket', arguments: { ticket_id: 'T-42' } }, { audience, tools });
 * await stdioClient.callTool(params);
 * ```
 */
export async function withCallToken(
  task: Task,
  params: CallToolParams,
  opts: CallToolTokenOptions,
): Promise<CallToolParams> {
  const catalog =
    opts.tools instanceof ToolCatalog ? opts.tools : new ToolCatalog(opts.tools, { useServerHints: false });
  const approval = approvalModeOf(opts.approval);
  const { name, args } = callOf({ params });
  const r = catalog.resolve(name, args);
  const t = await tokenOrWait(
    task,
    tokenRequestFor(task, opts.audience, name, args, r),
    approval,
    opts.signal,
  );
  return { ...params, _meta: { ...params._meta, [META_TOKEN]: t.accessToken } };
}

/**
 * `client.callTool()` with a call token in `_meta` (for stdio servers).
 *
 * @example
 * ```ts
 * const result = await taskpassCallTool(mcp, task, { name: 'get_ticket', arguments: { ticket_id: 'T-42' } }, {
 *   audience: 'https://tickets.taskpass.local/mcp',
 *   tools: { get_ticket: { resource: 'tickets/{ticket_id}', action: 'read' } },
 * });
 * ```
 */
export async function taskpassCallTool(
  client: Pick<Client, 'callTool'>,
  task: Task,
  params: CallToolParams,
  opts: CallToolTokenOptions & { requestOptions?: RequestOptions },
): Promise<Awaited<ReturnType<Client['callTool']>>> {
  const signal = opts.signal ?? opts.requestOptions?.signal;
  const withToken = await withCallToken(task, params, { ...opts, ...(signal ? { signal } : {}) });
  return client.callTool(withToken, undefined, opts.requestOptions);
}
