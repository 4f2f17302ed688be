// A stdio upstream: one MCP server process the guard launches and initializes itself. HTTP callers
// share it: every request gets a guard-chosen JSON-RPC id on the way in (so two callers' ids never
// collide) and its own id back on the answer. Callers' `initialize` is answered with the result the
// server gave the guard; the server's own requests and notifications to a client have nowhere to go
// (no SSE stream) and are refused or dropped.
import { type ChildProcess, spawn } from 'node:child_process';
import type { ServerResponse } from 'node:http';
import { createInterface } from 'node:readline';
import { GuardError } from './errors.ts';
import type { CallerIdentity } from './headers.ts';
import {
  type ForwardRequest,
  GUARD_CLIENT_INFO,
  GUARD_PROTOCOL_VERSION,
  META_CALLER,
  toolsOfListResult,
  type Upstream,
  type UpstreamTool,
} from './upstream.ts';

interface JsonRpc {
  jsonrpc?: unknown;
  id?: unknown;
  method?: unknown;
  params?: unknown;
  result?: unknown;
  error?: unknown;
}

interface Pending {
  resolve(m: JsonRpc): void;
  reject(e: Error): void;
  timer: NodeJS.Timeout;
}

/** Options of {@link StdioUpstream}. */
export interface StdioUpstreamOptions {
  command: readonly string[];
  env?: Record<string, string> | undefined;
  cwd?: string | undefined;
  timeoutMs: number;
  /** How long launching and initializing may take (default 15 s: a cold interpreter is slow). */
  startTimeoutMs?: number | undefined;
  /** A line the server wrote on stderr, or a note about the process. */
  log?: (event: string, data: Record<string, unknown>) => void;
}

// The caller's identity in the request's _meta, replacing whatever the caller put there itself.
function withCaller(m: JsonRpc, identity: CallerIdentity | undefined): JsonRpc {
  const params =
    typeof m.params === 'object' && m.params !== null && !Array.isArray(m.params) ? m.params : {};
  const { _meta, ...rest } = params as { _meta?: unknown };
  const meta = typeof _meta === 'object' && _meta !== null ? { ..._meta } : {};
  delete (meta as Record<string, unknown>)[META_CALLER];
  if (identity) (meta as Record<string, unknown>)[META_CALLER] = identity;
  return { ...m, params: { ...rest, _meta: meta } };
}

const unavailable = (msg: string, cause?: unknown) =>
  new GuardError('TASKPASS_GUARD_UPSTREAM_UNAVAILABLE', msg, cause === undefined ? undefined : { cause });

/** A stdio MCP server behind the guard. */
export class StdioUpstream implements Upstream {
  readonly kind = 'stdio' as const;
  readonly #o: StdioUpstreamOptions;
  #child: ChildProcess | undefined;
  #starting: Promise<void> | undefined;
  #initResult: unknown;
  #nextId = 1;
  readonly #pending = new Map<number, Pending>();
  #closed = false;

  constructor(o: StdioUpstreamOptions) {
    this.#o = o;
  }

  ready(): boolean {
    return this.#child !== undefined && this.#child.exitCode === null && this.#initResult !== undefined;
  }

  /** Launches and initializes the server (again, after it exited). */
  start(): Promise<void> {
    this.#starting ??= this.#launch().catch((e) => {
      this.#starting = undefined;
      this.#child?.kill();
      throw e;
    });
    return this.#starting;
  }

  async #launch(): Promise<void> {
    const [cmd, ...args] = this.#o.command;
    const child = spawn(cmd!, args, {
      cwd: this.#o.cwd,
      env: { ...process.env, ...this.#o.env },
      stdio: ['pipe', 'pipe', 'pipe'],
    });
    this.#child = child;
    const log = this.#o.log ?? (() => {});
    child.on('error', (e) =>
      this.#lost(child, unavailable(`the stdio server could not be started: ${e.message}`, e)),
    );
    child.on('exit', (code, signal) => {
      log('upstream.exit', { code, signal });
      this.#lost(child, unavailable('the stdio MCP server exited'));
    });
    createInterface({ input: child.stderr! }).on('line', (line) => log('upstream.stderr', { line }));
    createInterface({ input: child.stdout! }).on('line', (line) => this.#onLine(line));
    child.stdin!.on('error', () => {}); // an exited child's EPIPE surfaces through 'exit'

    const init = await this.#request(
      {
        jsonrpc: '2.0',
        method: 'initialize',
        params: { protocolVersion: GUARD_PROTOCOL_VERSION, capabilities: {}, clientInfo: GUARD_CLIENT_INFO },
      },
      undefined,
      this.#o.startTimeoutMs ?? 15_000,
    );
    if (init.error !== undefined || init.result === undefined)
      throw unavailable('the stdio MCP server refused initialize');
    this.#send({ jsonrpc: '2.0', method: 'notifications/initialized' });
    this.#initResult = init.result;
  }

  #lost(child: ChildProcess, e: GuardError): void {
    if (this.#child !== child) return;
    this.#child = undefined;
    this.#initResult = undefined;
    this.#starting = undefined;
    for (const p of this.#pending.values()) {
      clearTimeout(p.timer);
      p.reject(e);
    }
    this.#pending.clear();
    // One process serves every caller: bring it back (a crash loop is slowed to one try a second).
    if (!this.#closed) {
      setTimeout(() => {
        if (!this.#closed && !this.#child)
          this.start().catch((err) =>
            this.#o.log?.('upstream.restart_failed', { err: (err as Error).message }),
          );
      }, 1000).unref();
    }
  }

  #onLine(line: string): void {
    if (line.trim() === '') return;
    let m: JsonRpc;
    try {
      m = JSON.parse(line) as JsonRpc;
    } catch {
      this.#o.log?.('upstream.bad_output', { bytes: line.length });
      return;
    }
    if (typeof m !== 'object' || m === null) return;
    if (m.method !== undefined) {
      // The server asks the client something (sampling, elicitation, roots): no client can answer.
      if (m.id !== undefined)
        this.#send({
          jsonrpc: '2.0',
          id: m.id,
          error: { code: -32601, message: 'the Taskpass guard does not relay server-to-client requests' },
        });
      return;
    }
    const p = typeof m.id === 'number' ? this.#pending.get(m.id) : undefined;
    if (!p) return;
    this.#pending.delete(m.id as number);
    clearTimeout(p.timer);
    p.resolve(m);
  }

  #send(m: JsonRpc): void {
    const stdin = this.#child?.stdin;
    if (!stdin || stdin.destroyed) throw unavailable('the stdio MCP server is not running');
    stdin.write(`${JSON.stringify(m)}\n`);
  }

  #request(m: JsonRpc, signal?: AbortSignal, timeoutMs = this.#o.timeoutMs): Promise<JsonRpc> {
    const id = this.#nextId++;
    return new Promise<JsonRpc>((resolve, reject) => {
      const timer = setTimeout(() => {
        this.#pending.delete(id);
        // The answer would have nowhere to go: let the server stop working on it.
        this.#trySend({ jsonrpc: '2.0', method: 'notifications/cancelled', params: { requestId: id } });
        reject(
          new GuardError('TASKPASS_GUARD_UPSTREAM_TIMEOUT', 'the stdio MCP server did not answer in time'),
        );
      }, timeoutMs);
      this.#pending.set(id, { resolve, reject, timer });
      signal?.addEventListener('abort', () => {
        if (!this.#pending.delete(id)) return;
        clearTimeout(timer);
        // Tell the server the caller is gone, as a client would.
        this.#trySend({ jsonrpc: '2.0', method: 'notifications/cancelled', params: { requestId: id } });
        reject(unavailable('the caller went away'));
      });
      try {
        this.#send({ ...m, id });
      } catch (e) {
        this.#pending.delete(id);
        clearTimeout(timer);
        reject(e);
      }
    });
  }

  #trySend(m: JsonRpc): void {
    try {
      this.#send(m);
    } catch {
      // gone already
    }
  }

  /** One message of the caller's body: its answer, or undefined for a notification or response. */
  async #one(
    m: JsonRpc,
    signal: AbortSignal,
    identity: CallerIdentity | undefined,
  ): Promise<JsonRpc | undefined> {
    const isRequest = typeof m.method === 'string' && m.id !== undefined && m.id !== null;
    if (!isRequest) {
      // The guard initialized the server already; a caller's own "initialized" would be a second one.
      if (typeof m.method === 'string' && m.method !== 'notifications/initialized') this.#send(m);
      return undefined;
    }
    if (m.method === 'initialize') return { jsonrpc: '2.0', id: m.id, result: this.#initResult };
    const { id: callerId, ...rest } = m;
    const answer = await this.#request(withCaller(rest, identity), signal);
    return { ...answer, id: callerId };
  }

  async forward(req: ForwardRequest, res: ServerResponse): Promise<void> {
    if (!this.ready()) await this.start();
    const batch = Array.isArray(req.body);
    const messages = (batch ? req.body : [req.body]) as JsonRpc[];
    const answers = (await Promise.all(messages.map((m) => this.#one(m, req.signal, req.identity)))).filter(
      (a): a is JsonRpc => a !== undefined,
    );
    if (answers.length === 0) {
      res.writeHead(202).end();
      return;
    }
    res
      .writeHead(200, { 'content-type': 'application/json' })
      .end(JSON.stringify(batch ? answers : answers[0]));
  }

  async listTools(): Promise<UpstreamTool[]> {
    await this.start();
    const tools: UpstreamTool[] = [];
    let cursor: string | undefined;
    for (let page = 0; page < 100; page++) {
      const m = await this.#request({
        jsonrpc: '2.0',
        method: 'tools/list',
        params: cursor ? { cursor } : {},
      });
      if (m.error !== undefined || m.result === undefined)
        throw unavailable('tools/list failed on the stdio server');
      const list = toolsOfListResult(m.result);
      tools.push(...list.tools);
      cursor = list.nextCursor;
      if (!cursor) break;
    }
    return tools;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    const child = this.#child;
    if (!child || child.exitCode !== null) return;
    await new Promise<void>((resolve) => {
      const kill = setTimeout(() => child.kill('SIGKILL'), 2000);
      child.once('exit', () => {
        clearTimeout(kill);
        resolve();
      });
      child.stdin?.end();
      child.kill('SIGTERM');
    });
  }
}
