// The host's side of `taskpass proxy`: a low-level MCP `Server` (tools/list and tools/call passed
// through, not re-declared) over stdio — the host launches the proxy as a command — or over
// stateless Streamable HTTP on loopback, behind a Host/Origin check against DNS rebinding.
import {
  createServer,
  type IncomingMessage,
  type Server as HttpServer,
  type ServerResponse,
} from 'node:http';
import type { AddressInfo } from 'node:net';
import { Server } from '@modelcontextprotocol/sdk/server/index.js';
import { StdioServerTransport } from '@modelcontextprotocol/sdk/server/stdio.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import { CallToolRequestSchema, ListToolsRequestSchema } from '@modelcontextprotocol/sdk/types.js';
import { BrokerClient } from '@taskpass/agent-plugin';
import { createMtlsAgent, matchId, type TlsSource } from '@taskpass/spiffe';
import { pickByHint, X509Source } from '@taskpass/spiffe/workload';
import pino, { type Logger } from 'pino';
import { type Dispatcher, fetch as undiciFetch } from 'undici';
import { isLoopbackHost } from '../guard/config.ts';
import type { ProxyConfig } from './config.ts';
import { ProxyError } from './errors.ts';
import { AgentProxy, type AgentProxyDeps, type HostCallContext, PROXY_VERSION } from './proxy.ts';
import { userTokenSource } from './user-token.ts';

/**
 * The MCP server the host talks to, answering from `proxy`. One per connection (stdio) or per
 * request (stateless HTTP); the proxy and its task are shared.
 */
export function createHostServer(proxy: AgentProxy): Server {
  const server = new Server(
    { name: 'taskpass-proxy', version: PROXY_VERSION },
    {
      capabilities: { tools: {}, logging: {} },
      instructions:
        'Tools of MCP servers reached through Taskpass. A refused call returns a tool error that says why; a call that needs a person’s approval says where to approve it.',
    },
  );
  server.setRequestHandler(ListToolsRequestSchema, async () => ({ tools: await proxy.listTools() }));
  server.setRequestHandler(CallToolRequestSchema, async (req, extra) => {
    const progressToken = req.params._meta?.progressToken;
    const ctx: HostCallContext = {
      signal: extra.signal,
      notify: async (n) => {
        // Progress reaches hosts that asked for it (and resets their request timeout); the log
        // message reaches the others' consoles.
        if (progressToken !== undefined) {
          await extra.sendNotification({
            method: 'notifications/progress',
            params: { progressToken, progress: 0, message: n.text },
          });
        }
        await extra.sendNotification({
          method: 'notifications/message',
          params: { level: 'warning', logger: 'taskpass', data: n.text },
        });
      },
      ...(progressToken !== undefined
        ? {
            onprogress: (p) => {
              void extra
                .sendNotification({ method: 'notifications/progress', params: { progressToken, ...p } })
                .catch(() => undefined);
            },
          }
        : {}),
    };
    return proxy.callTool(req.params, ctx);
  });
  return server;
}

/** Options of {@link startProxy} besides the configuration. */
export interface ProxyOptions {
  /** The agent's live X.509 source (default: one from `config.workloadApi`, closed with the proxy). */
  source?: X509Source;
  logger?: Logger;
  env?: NodeJS.ProcessEnv;
  /** Where a device login's instructions go. Default stderr (stdout is the MCP channel). */
  prompt?: (text: string) => void;
  /** Replace dependencies (tests). */
  deps?: Partial<AgentProxyDeps>;
}

/** A running proxy. */
export interface RunningProxy {
  readonly proxy: AgentProxy;
  /** HTTP mode: `http://127.0.0.1:<port><path>`. */
  readonly url: string | undefined;
  /** Completes the task (or cancels it) and stops serving. Idempotent. */
  close(status?: 'completed' | 'cancelled'): Promise<void>;
  /** Resolves when the host went away (stdio: stdin closed). */
  readonly hostGone: Promise<void>;
}

/** How the proxy reaches the network by default: the agent's SVID for the broker and every upstream. */
function networkDeps(config: ProxyConfig, source: X509Source) {
  const dispatchers: Dispatcher[] = [];
  const broker = new BrokerClient({
    url: config.broker.url,
    auth: { kind: 'mtls', source: source as TlsSource, brokerId: config.broker.id },
  });
  const upstreamFetch: AgentProxyDeps['upstreamFetch'] = (u) => {
    // The upstream is authenticated by its SPIFFE ID; the agent presents its own SVID.
    const dispatcher = createMtlsAgent(source as TlsSource, matchId(u.spiffeId));
    dispatchers.push(dispatcher);
    return (url, init) =>
      undiciFetch(url, { ...(init as object), dispatcher }) as unknown as Promise<Response>;
  };
  const close = async () => {
    for (const d of dispatchers.splice(0)) await d.close().catch(() => undefined);
    await broker.close().catch(() => undefined);
  };
  return { deps: { broker, upstreamFetch }, close };
}

/**
 * Starts the proxy: opens the task, lists the upstream tools (checking their exposed names), then
 * serves the host over stdio, or over HTTP on loopback when `config.http` is set.
 *
 * @example
 * ```ts
 * const running = await startProxy(loadProxyConfig('proxy.yaml'));
 * await running.hostGone;
 * await running.close();
 * ```
 */
export async function startProxy(config: ProxyConfig, opts: ProxyOptions = {}): Promise<RunningProxy> {
  const log =
    opts.logger ?? pino({ level: config.logLevel, base: { service: 'taskpass-proxy' } }, pino.destination(2));
  const cleanups: (() => Promise<unknown>)[] = [];
  const cleanup = async () => {
    for (const c of cleanups.splice(0).reverse()) await c().catch(() => undefined);
  };
  try {
    let source = opts.source;
    const needsNetwork = !(opts.deps?.broker && opts.deps.upstreamFetch);
    if (!source && needsNetwork) {
      const s = await X509Source.create({
        ...(config.workloadApi.address ? { address: config.workloadApi.address } : {}),
        ...(config.workloadApi.hint ? { picker: pickByHint(config.workloadApi.hint) } : {}),
      });
      cleanups.push(() => s.close());
      source = s;
    }
    let network: Pick<AgentProxyDeps, 'broker' | 'upstreamFetch'> | undefined;
    if (needsNetwork) {
      const n = networkDeps(config, source!);
      cleanups.push(n.close);
      network = n.deps;
    }
    const deps = {
      userToken: userTokenSource(
        config.user,
        opts.env ?? process.env,
        opts.prompt ?? ((text) => process.stderr.write(`${text}\n`)),
      ),
      logger: log,
      ...network,
      ...opts.deps,
    } as AgentProxyDeps;
    if (source)
      log.info({ event: 'identity', spiffeId: source.getX509Svid().id.toString() }, 'agent identity');

    const proxy = new AgentProxy(config, deps);
    await proxy.start();
    log.info(
      { event: 'upstreams.ready', upstreams: config.upstreams.map((u) => u.name), taskId: proxy.taskId },
      'upstreams ready',
    );

    let closing: Promise<void> | undefined;
    let hostGoneResolve!: () => void;
    const hostGone = new Promise<void>((r) => {
      hostGoneResolve = r;
    });
    let url: string | undefined;
    if (config.http) {
      const http = await serveHttp(proxy, config.http, log);
      cleanups.push(() => new Promise<void>((r) => http.server.close(() => r())));
      url = http.url;
    } else {
      const server = createHostServer(proxy);
      const transport = new StdioServerTransport();
      // The SDK's stdio transport does not notice end of input: the host closing stdin is the
      // disconnect that ends the session of work.
      process.stdin.once('end', hostGoneResolve);
      process.stdin.once('close', hostGoneResolve);
      transport.onclose = hostGoneResolve;
      await server.connect(transport);
      cleanups.push(() => server.close());
    }
    log.info(
      { event: 'listening', mode: config.http ? 'http' : 'stdio', ...(url ? { url } : {}) },
      'serving',
    );
    return {
      proxy,
      url,
      hostGone,
      close: (status = 'completed') => {
        closing ??= (async () => {
          await proxy.close(status);
          await cleanup();
        })();
        return closing;
      },
    };
  } catch (e) {
    await cleanup();
    throw e;
  }
}

/** Is this request's Host this loopback listener, and its Origin (if any) one we allow? */
export function checkHostAndOrigin(
  headers: IncomingMessage['headers'],
  port: number,
  allowedOrigins: readonly string[],
): string | undefined {
  const host = headers.host;
  let hostUrl: URL | undefined;
  try {
    hostUrl = host ? new URL(`http://${host}`) : undefined;
  } catch {
    hostUrl = undefined;
  }
  if (!hostUrl || !isLoopbackHost(hostUrl.hostname) || Number(hostUrl.port || 80) !== port) {
    return `Host ${JSON.stringify(host ?? '')} is not this loopback listener`;
  }
  const origin = headers.origin;
  if (origin !== undefined && !allowedOrigins.includes(origin)) {
    return `Origin ${JSON.stringify(origin)} is not allowed (http.allowedOrigins)`;
  }
  return undefined;
}

function refuse(
  res: ServerResponse,
  status: number,
  e: ProxyError | { code: string; message: string },
): void {
  res
    .writeHead(status, { 'content-type': 'application/json', 'cache-control': 'no-store' })
    .end(JSON.stringify({ code: e.code, message: e.message }));
}

async function serveHttp(
  proxy: AgentProxy,
  http: NonNullable<ProxyConfig['http']>,
  log: Logger,
): Promise<{ server: HttpServer; url: string }> {
  let port = http.port;
  const server = createServer((req, res) => {
    const path = (req.url ?? '/').split('?')[0];
    const bad = checkHostAndOrigin(req.headers, port, http.allowedOrigins);
    if (bad) {
      log.warn({ event: 'http.refused', reason: bad }, 'request refused');
      refuse(res, 403, new ProxyError('TASKPASS_PROXY_FORBIDDEN_ORIGIN', bad));
      return;
    }
    if (path !== http.path) {
      refuse(res, 404, { code: 'TASKPASS_PROXY_NOT_FOUND', message: `the MCP endpoint is ${http.path}` });
      return;
    }
    if (req.method !== 'POST') {
      // Stateless: no server-to-client stream and no session to delete.
      res.writeHead(405, { allow: 'POST' }).end();
      return;
    }
    const server = createHostServer(proxy);
    const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
    res.on('close', () => {
      void transport.close();
      void server.close();
    });
    server
      .connect(transport)
      .then(() => transport.handleRequest(req, res))
      .catch((e: Error) => {
        log.error({ event: 'http.error', err: e.message }, 'request failed');
        if (!res.headersSent) res.writeHead(500).end();
      });
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(http.port, http.host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const a = server.address() as AddressInfo;
  port = a.port;
  const host = a.family === 'IPv6' ? `[${a.address}]` : a.address;
  return { server, url: `http://${host}:${a.port}${http.path}` };
}
