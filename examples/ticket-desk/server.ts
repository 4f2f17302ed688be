// The ticket desk as an MCP server protected by Taskpass. It serves MCP Streamable HTTP over HTTPS
// with its own X.509-SVID and asks every client for its certificate (mTLS), so the verifier can
// check that a call token's `cnf` names the certificate presenting it. The verifier's node:http
// middleware runs before the MCP transport: a refused call is a real 401/403 challenge. Broker
// keys (JWKS) and the revocation feed are fetched over mTLS with the same SVID, the broker being
// authenticated by its SPIFFE ID.
//
//   node --conditions=taskpass:source --import tsx examples/ticket-desk/server.ts \
//     --broker-url https://127.0.0.1:8443 --port 8444
//
// Flags (or environment): --workload-api (SPIFFE_ENDPOINT_SOCKET), --hint (TICKETS_SVID_HINT),
// --broker-url (TASKPASS_BROKER_URL), --broker-issuer (TASKPASS_BROKER_ISSUER, default the URL),
// --broker-id (TASKPASS_BROKER_ID), --audience (TICKETS_AUDIENCE), --host/--port (TICKETS_HOST/_PORT),
// --db-schema (TICKETS_DB_SCHEMA: serve from that PostgreSQL schema on PGHOST/PGPORT/PGDATABASE as
// per-task database users leased through the broker, docs/vault.md; default the in-memory desk).
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import type { TLSSocket } from 'node:tls';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { McpServer } from '@modelcontextprotocol/sdk/server/mcp.js';
import { StreamableHTTPServerTransport } from '@modelcontextprotocol/sdk/server/streamableHttp.js';
import type { CallToolResult } from '@modelcontextprotocol/sdk/types.js';
import { toNodeHandler } from '@modelcontextprotocol/node';
import { createMcpHandler, McpServer as McpServerV2 } from '@modelcontextprotocol/server';
import { createMtlsAgent, matchId, matchMemberOf, mtlsServerOptions, type TlsSource } from '@taskpass/spiffe';
import { pickByHint, X509Source } from '@taskpass/spiffe/workload';
import {
  type CallAuth,
  callerOf,
  createVerifier,
  prmHandler,
  protectedResourceMetadata,
  protectedResourceMetadataUrl,
  type ReplayCache,
  RevocationFeedClient,
  TaskCredentials,
  taskpassMiddleware,
  type Verifier,
} from '@taskpass/verifier';
import { z } from 'zod';
import { memoryBackend, type TicketBackend, TicketDesk, type TicketOps } from './tickets.ts';
import { type PgLocation, PgTicketDesk } from './tickets-pg.ts';

export const TICKETS_AUDIENCE = 'https://tickets.taskpass.local/mcp';
export const TICKETS_ID = 'spiffe://taskpass.local/mcp/tickets';
export const BROKER_ID = 'spiffe://taskpass.local/broker';

const ticketId = z
  .string()
  .regex(/^T-\d{1,9}$/, 'a ticket id looks like T-1001')
  .describe('Ticket id, e.g. T-1001');

/**
 * The tools, declared once: the same objects are the MCP registrations (title, schema,
 * annotations, `_meta` hints published in tools/list) and the verifier's policy for each tool
 * (it reads `annotations` and the `dev.taskpass/*` hints of `_meta`).
 */
export const TOOLS = {
  list_tickets: {
    title: 'List tickets',
    description: 'Lists tickets (id, subject, status), optionally only those with one status.',
    inputSchema: { status: z.enum(['open', 'pending', 'closed']).optional() },
    annotations: { readOnlyHint: true },
    _meta: { 'dev.taskpass/resource': 'tickets', 'dev.taskpass/action': 'read' },
  },
  get_ticket: {
    title: 'Read a ticket',
    description: 'Reads one ticket with its order and comments.',
    inputSchema: { ticket_id: ticketId },
    annotations: { readOnlyHint: true },
    _meta: { 'dev.taskpass/resource': 'tickets/{ticket_id}', 'dev.taskpass/action': 'read' },
  },
  update_ticket: {
    title: 'Comment on a ticket',
    description: 'Adds a comment to a ticket (an open ticket becomes pending).',
    inputSchema: { ticket_id: ticketId, comment: z.string().min(1).max(2000) },
    annotations: { readOnlyHint: false, destructiveHint: false },
    _meta: { 'dev.taskpass/resource': 'tickets/{ticket_id}', 'dev.taskpass/action': 'write' },
  },
  close_ticket: {
    title: 'Close a ticket',
    description: 'Closes a ticket.',
    inputSchema: { ticket_id: ticketId },
    annotations: { readOnlyHint: false, destructiveHint: false, idempotentHint: true },
    _meta: { 'dev.taskpass/resource': 'tickets/{ticket_id}', 'dev.taskpass/action': 'write' },
  },
  issue_refund: {
    title: 'Refund an order',
    description: "Refunds part or all of the ticket's order. Money leaves the company: irreversible.",
    inputSchema: { ticket_id: ticketId, amount: z.number().positive().max(100_000) },
    annotations: { readOnlyHint: false, destructiveHint: true },
    _meta: { 'dev.taskpass/resource': 'tickets/{ticket_id}', 'dev.taskpass/action': 'write' },
  },
  delete_ticket: {
    title: 'Delete a ticket',
    description: 'Deletes a ticket and its history for good (administrators only).',
    inputSchema: { ticket_id: ticketId },
    annotations: { readOnlyHint: false, destructiveHint: true },
    _meta: { 'dev.taskpass/resource': 'tickets/{ticket_id}', 'dev.taskpass/action': 'admin' },
  },
} as const;

/** One line per served request or notable event; never token material. */
export type DeskLog = (event: string, data?: Record<string, unknown>) => void;

/** Options of {@link startTicketDesk}. */
export interface TicketDeskOptions {
  /** The live X.509 source of the server's identity; or give `workloadApiAddress` (+ `hint`). */
  source?: X509Source;
  /** Workload API address (`unix:///…`); default SPIFFE_ENDPOINT_SOCKET. Used when `source` is not given. */
  workloadApiAddress?: string;
  /** Picks this server's SVID by entry hint (when one workload holds several identities). */
  hint?: string;
  /** Where the broker is reached, e.g. `https://127.0.0.1:8443`. */
  brokerUrl: string;
  /** The broker's `iss` (config `issuer`); default `brokerUrl`. */
  brokerIssuer?: string;
  /** The broker's SPIFFE ID (its TLS server certificate is authenticated by it). */
  brokerId?: string;
  /** This server's canonical resource URI (token `aud`). Default {@link TICKETS_AUDIENCE}. */
  audience?: string;
  /** Clients in this trust domain may connect (the token then decides). Default: the server's own. */
  clientTrustDomain?: string;
  host?: string;
  /** 0 (default) = ephemeral. */
  port?: number;
  /** The data; default a fresh seeded desk. */
  desk?: TicketDesk;
  /**
   * Serve the tickets from PostgreSQL instead (tickets-pg.ts: a schema made by setUpDeskDatabase),
   * each call connecting as its task's database user leased through the broker (TaskCredentials).
   */
  database?: { schema: string; location?: PgLocation; path?: string };
  /** Wait this long for the first revocation snapshot before serving (default 10 s). */
  feedReadyTimeoutMs?: number;
  /**
   * Where the revocation feed is fetched, when not at `brokerUrl` (e.g. through a proxy a test can
   * cut). The JWKS is still fetched from `brokerUrl`.
   */
  feedBrokerUrl?: string;
  /** The verifier's feed staleness policy (default: writes refused after 30 s of silence, reads continue). */
  staleness?: { maxFeedAgeMs?: number; readsWhenStale?: 'allow' | 'deny' };
  /**
   * Where spent single-use jtis are remembered (default: in this process). Replicas of one MCP
   * server must share one, e.g. `new RedisReplayCache(redis)`.
   */
  replayCache?: ReplayCache;
  /**
   * The MCP SDK serving the tools: `v1` (default; `@modelcontextprotocol/sdk`, stateless
   * Streamable HTTP, protocol up to 2025-11-25) or `v2` (`@modelcontextprotocol/server` +
   * `/node`: 2026-07-28 without sessions, and the 2025 protocol statelessly).
   */
  sdk?: 'v1' | 'v2';
  /** The verifier's `requireMcpHeaders` (default false: Mcp-Method/Mcp-Name checked when present). */
  requireMcpHeaders?: boolean;
  log?: DeskLog;
}

/** A running ticket desk. */
export interface RunningTicketDesk {
  /** `https://127.0.0.1:<port>` */
  readonly origin: string;
  /** The MCP endpoint, `https://127.0.0.1:<port>/mcp`. */
  readonly mcpUrl: string;
  /** The canonical resource URI (token audience). */
  readonly audience: string;
  /** The SPIFFE ID the server presents. */
  readonly spiffeId: string;
  /** The in-memory data (left untouched when the desk runs on PostgreSQL). */
  readonly desk: TicketDesk;
  /** Where the tools' data lives: the in-memory desk, or a {@link PgTicketDesk}. */
  readonly backend: TicketBackend;
  /** The leased credentials of the calls, when the desk runs on PostgreSQL. */
  readonly credentials?: TaskCredentials | undefined;
  readonly verifier: Verifier;
  readonly feed: RevocationFeedClient;
  /** What `GET /readyz` answers (its SVID and the feed), without a TLS connection. */
  readiness(): ReturnType<typeof readiness>;
  /** Resolves with the ms waited once the feed knows the task (or token) is revoked; rejects on timeout. */
  waitRevoked(taskId: string, opts?: { jti?: string; timeoutMs?: number }): Promise<number>;
  close(): Promise<void>;
}

function text(v: unknown): CallToolResult {
  return { content: [{ type: 'text', text: JSON.stringify(v) }], structuredContent: v as never };
}

function fail(message: string): CallToolResult {
  return { isError: true, content: [{ type: 'text', text: message }] };
}

/**
 * Who acts, as the tool handlers record it: "alice via spiffe://…/triage-bot", and for a call a
 * person approved (the token's approval, docs/approvals.md) ", approved by bob".
 */
function actor(who: CallAuth | undefined): string {
  if (!who) return 'unknown';
  const approved = who.approval ? `, approved by ${who.approval.approver.sub}` : '';
  return `${who.user} via ${who.agent}${approved}`;
}

function callerView(who: CallAuth | undefined, dbUser: string | undefined) {
  return who
    ? {
        user: who.user,
        agent: who.agent,
        task: who.task,
        resource: who.resource,
        action: who.action,
        // The person who approved this exact call, as the token names them (docs/approvals.md).
        ...(who.approval ? { approval: who.approval } : {}),
        // The database user the call ran as (the PostgreSQL desk: the task's leased user).
        ...(dbUser ? { db_user: dbUser } : {}),
      }
    : undefined;
}

type ToolName = keyof typeof TOOLS;

type Action = (ops: TicketOps, args: never, who: CallAuth | undefined) => Promise<object>;

/** What each tool does, given the call's data, its arguments and the verified caller. */
const ACTIONS: { [K in ToolName]: Action } = {
  list_tickets: async (ops, { status }: { status?: 'open' | 'pending' | 'closed' }) => ({
    tickets: await ops.list(status),
  }),
  get_ticket: async (ops, { ticket_id }: { ticket_id: string }) => ({ ticket: await ops.get(ticket_id) }),
  update_ticket: async (ops, { ticket_id, comment }: { ticket_id: string; comment: string }, who) => ({
    ticket: await ops.comment(ticket_id, actor(who), comment),
  }),
  close_ticket: async (ops, { ticket_id }: { ticket_id: string }, who) => ({
    ticket: await ops.close(ticket_id, actor(who)),
  }),
  issue_refund: async (ops, { ticket_id, amount }: { ticket_id: string; amount: number }, who) => ({
    ticket: await ops.refund(ticket_id, amount, actor(who)),
  }),
  delete_ticket: async (ops, { ticket_id }: { ticket_id: string }) => {
    await ops.delete(ticket_id);
    return { deleted: ticket_id };
  },
};

// The caller is read from the SDK 1.x `extra` or the SDK 2.x `ctx` alike (callerOf takes both).
// The data is opened for this call alone (the PostgreSQL desk: a connection as the task's user)
// and released when the call is done, whatever happened.
function guarded(backend: TicketBackend, action: Action) {
  return async (args: unknown, extra: Parameters<typeof callerOf>[0]): Promise<CallToolResult> => {
    const who = callerOf(extra);
    try {
      const session = await backend.open(extra);
      try {
        const result = await action(session.ops, args as never, who);
        return text({ ...result, caller: callerView(who, session.dbUser) });
      } finally {
        await session.close().catch(() => {});
      }
    } catch (e) {
      // A CredentialError names its code (e.g. TASKPASS_CREDENTIAL_UNAVAILABLE): say it first.
      const code = (e as { code?: unknown }).code;
      const message = (e as Error).message;
      return fail(typeof code === 'string' && code.startsWith('TASKPASS_') ? `${code}: ${message}` : message);
    }
  };
}

const backendOf = (desk: TicketDesk | TicketBackend): TicketBackend =>
  desk instanceof TicketDesk ? memoryBackend(desk) : desk;

/** Registers the ticket tools on an MCP server (SDK 1.x); handlers read the verified caller. */
export function registerTicketTools(mcp: McpServer, desk: TicketDesk | TicketBackend): void {
  const backend = backendOf(desk);
  // One loop over six differently typed tools: the per-tool schema typing is TOOLS' own.
  const register = mcp.registerTool.bind(mcp) as (name: string, config: object, cb: unknown) => unknown;
  for (const name of Object.keys(TOOLS) as ToolName[])
    register(name, TOOLS[name], guarded(backend, ACTIONS[name]));
}

/** The same tools on an SDK 2.x server (it takes object schemas, not zod raw shapes). */
export function registerTicketToolsV2(mcp: McpServerV2, desk: TicketDesk | TicketBackend): void {
  const backend = backendOf(desk);
  const register = mcp.registerTool.bind(mcp) as (name: string, config: object, cb: unknown) => unknown;
  for (const name of Object.keys(TOOLS) as ToolName[]) {
    const { inputSchema, ...config } = TOOLS[name];
    register(name, { ...config, inputSchema: z.object(inputSchema) }, guarded(backend, ACTIONS[name]));
  }
}

/**
 * Starts the ticket desk MCP server. Resolves once it listens and the revocation feed delivered its
 * first snapshot (so a token revoked before start-up is refused from the first request).
 *
 * @example
 * ```ts
 * const tickets = await startTicketDesk({ workloadApiAddress: spire.address, hint: 'tickets',
 *   brokerUrl: broker.url, brokerIssuer: 'https://broker.taskpass.local' });
 * // … tickets.mcpUrl
 * await tickets.close();
 * ```
 */
export async function startTicketDesk(opts: TicketDeskOptions): Promise<RunningTicketDesk> {
  const log: DeskLog = opts.log ?? (() => {});
  const audience = opts.audience ?? TICKETS_AUDIENCE;
  const brokerUrl = opts.brokerUrl.replace(/\/+$/, '');
  const issuer = opts.brokerIssuer ?? brokerUrl;
  const brokerId = opts.brokerId ?? BROKER_ID;
  const desk = opts.desk ?? new TicketDesk();

  const ownSource = opts.source === undefined;
  const source =
    opts.source ??
    (await X509Source.create({
      ...(opts.workloadApiAddress ? { address: opts.workloadApiAddress } : {}),
      ...(opts.hint ? { picker: pickByHint(opts.hint) } : {}),
    }));
  const cleanups: (() => Promise<unknown> | unknown)[] = [];
  if (ownSource) cleanups.push(() => source.close());
  try {
    const spiffeId = source.getX509Svid().id;
    // Broker requests (JWKS, revocation feed) over mTLS with this server's SVID.
    const brokerDispatcher = createMtlsAgent(source as TlsSource, matchId(brokerId));
    cleanups.push(() => brokerDispatcher.close());
    let lastFeedError: Error | undefined;
    const feed = new RevocationFeedClient({
      brokerUrl: opts.feedBrokerUrl?.replace(/\/+$/, '') ?? brokerUrl,
      dispatcher: brokerDispatcher,
      backoff: { initialMs: 100, maxMs: 2000 },
      onError: (e) => {
        lastFeedError = e;
        log('feed.error', { message: e.message });
      },
    });
    cleanups.push(() => feed.close());
    try {
      await feed.ready(opts.feedReadyTimeoutMs ?? 10_000);
    } catch (e) {
      const why = lastFeedError ? ` (last feed error: ${describe(lastFeedError)})` : '';
      throw new Error(`${(e as Error).message}${why}`, { cause: lastFeedError ?? e });
    }

    const verifier = createVerifier({
      issuer,
      audience,
      jwksUri: `${brokerUrl}/.well-known/jwks.json`,
      dispatcher: brokerDispatcher,
      tools: TOOLS,
      revocation: feed,
      // Every token must be bound to the agent's X.509-SVID and presented over that mTLS connection.
      requireCertificateBinding: true,
      ...(opts.staleness ? { staleness: opts.staleness } : {}),
      ...(opts.replayCache ? { replayCache: opts.replayCache } : {}),
      ...(opts.requireMcpHeaders ? { requireMcpHeaders: true } : {}),
    });
    // On PostgreSQL each call runs as its task's database user, leased through the broker over the
    // same mTLS connection (the broker checks this server is the call token's audience); a task
    // the feed revoked gets no credential from the cache.
    const credentials = opts.database
      ? new TaskCredentials({ brokerUrl, dispatcher: brokerDispatcher, revocation: feed })
      : undefined;
    const backend: TicketBackend =
      opts.database && credentials
        ? new PgTicketDesk({
            schema: opts.database.schema,
            credentials,
            ...(opts.database.location ? { location: opts.database.location } : {}),
            ...(opts.database.path ? { path: opts.database.path } : {}),
          })
        : memoryBackend(desk);
    const resourceMetadataUrl = protectedResourceMetadataUrl(audience);
    const guard = taskpassMiddleware(verifier, { resourceMetadataUrl });
    const servePrm = prmHandler(
      protectedResourceMetadata({ resource: audience, issuer, resourceName: 'Ticket desk' }),
    );

    // SDK 2.x: one server per request from a factory, no sessions (2026-07-28 has none; 2025
    // traffic is served statelessly). req.auth from the guard reaches handlers as ctx.http.authInfo.
    const serveV2 =
      opts.sdk === 'v2'
        ? toNodeHandler(
            createMcpHandler(
              () => {
                const mcp = new McpServerV2({ name: 'ticket-desk', version: '2.0.0' });
                registerTicketToolsV2(mcp, backend);
                return mcp;
              },
              { onerror: (e) => log('mcp.error', { message: e.message }) },
            ),
          )
        : undefined;

    const clientTd = opts.clientTrustDomain ?? spiffeId.trustDomain.name;
    const mtls = mtlsServerOptions(source as TlsSource, matchMemberOf(clientTd), {
      onError: (e) => log('tls.refused', { message: e.message }),
    });
    const server: Server = createServer(mtls.options, (req, res) => {
      if (servePrm(req, res)) return;
      const path = (req.url ?? '/').split('?')[0];
      if (path === '/healthz' && req.method === 'GET') {
        res.writeHead(200, { 'content-type': 'application/json' }).end('{"status":"ok"}');
        return;
      }
      if (path === '/readyz' && req.method === 'GET') {
        const body = readiness(source, feed);
        res
          .writeHead(body.status === 'ready' ? 200 : 503, { 'content-type': 'application/json' })
          .end(JSON.stringify(body));
        return;
      }
      if (path !== '/mcp') {
        res.writeHead(404, { 'content-type': 'application/json' }).end('{"error":"not_found"}');
        return;
      }
      const peer = (() => {
        try {
          return mtls.peerSpiffeId(req.socket as TLSSocket).toString();
        } catch {
          return undefined;
        }
      })();
      const started = performance.now();
      res.once('finish', () => {
        const rpc = (req as { body?: { method?: string; params?: { name?: string } } }).body;
        log('request', {
          peer,
          method: rpc?.method ?? req.method,
          tool: rpc?.params?.name,
          status: res.statusCode,
          ms: Math.round((performance.now() - started) * 10) / 10,
        });
      });
      void guard(req, res, async () => {
        if (serveV2) {
          await serveV2(req, res, (req as { body?: unknown }).body);
          return;
        }
        // Stateless Streamable HTTP: one McpServer and transport per request.
        const mcp = new McpServer({ name: 'ticket-desk', version: '1.0.0' });
        registerTicketTools(mcp, backend);
        const transport = new StreamableHTTPServerTransport({ sessionIdGenerator: undefined });
        res.once('close', () => {
          void transport.close();
          void mcp.close();
        });
        try {
          await mcp.connect(transport);
          await transport.handleRequest(req, res, (req as { body?: unknown }).body);
        } catch (e) {
          log('mcp.error', { message: (e as Error).message });
          if (!res.headersSent) res.writeHead(500).end();
        }
      });
    });
    mtls.attach(server);
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', () => {
        server.off('error', reject);
        resolve();
      });
    });
    cleanups.push(
      () =>
        new Promise<void>((resolve) => {
          server.close(() => resolve());
          server.closeAllConnections();
        }),
    );
    const addr = server.address() as AddressInfo;
    const origin = `https://${addr.address}:${addr.port}`;
    log('listening', { origin, spiffeId: spiffeId.toString(), audience });

    let closing: Promise<void> | undefined;
    return {
      origin,
      mcpUrl: `${origin}/mcp`,
      audience,
      spiffeId: spiffeId.toString(),
      desk,
      backend,
      credentials,
      verifier,
      feed,
      readiness: () => readiness(source, feed),
      async waitRevoked(taskId, o = {}) {
        const started = performance.now();
        const deadline = Date.now() + (o.timeoutMs ?? 5000);
        while (!feed.isRevoked(taskId, o.jti ?? '')) {
          if (Date.now() > deadline) throw new Error(`the revocation of ${taskId} did not arrive in time`);
          await new Promise((r) => setTimeout(r, 1));
        }
        return performance.now() - started;
      },
      close() {
        closing ??= runCleanups(cleanups);
        return closing;
      },
    };
  } catch (e) {
    await runCleanups(cleanups);
    throw e;
  }
}

/**
 * The desk's readiness: ready while its own X.509-SVID is valid — `fresh`, or `stale` when the
 * Workload API is down (served until it expires) — and the revocation feed delivered its snapshot.
 * An expired or missing SVID is not ready: peers refuse it anyway.
 */
export function readiness(
  source: Pick<X509Source, 'health'>,
  feed: Pick<RevocationFeedClient, 'lastEventAt'>,
  now: number = Date.now(),
): {
  status: 'ready' | 'not_ready';
  checks: { svid: boolean; feed: boolean };
  svid: { state: string; workloadApi: string; expiresAt?: string; expiresInSeconds?: number };
  feedAgeSeconds?: number;
} {
  const h = source.health(now);
  const svid: ReturnType<typeof readiness>['svid'] = { state: h.svid, workloadApi: h.workloadApi };
  if (h.expiresAt) {
    svid.expiresAt = h.expiresAt.toISOString();
    svid.expiresInSeconds = Math.floor((h.expiresAt.getTime() - now) / 1000);
  }
  const checks = { svid: h.svid === 'fresh' || h.svid === 'stale', feed: feed.lastEventAt !== undefined };
  return {
    status: checks.svid && checks.feed ? 'ready' : 'not_ready',
    checks,
    svid,
    ...(feed.lastEventAt !== undefined
      ? { feedAgeSeconds: Math.max(0, Math.floor((now - feed.lastEventAt) / 1000)) }
      : {}),
  };
}

function describe(e: Error): string {
  const causes: string[] = [];
  for (let c: unknown = e; c instanceof Error && causes.length < 4; c = c.cause) {
    const code = (c as { code?: unknown }).code;
    causes.push(typeof code === 'string' ? `${code} ${c.message}` : c.message);
  }
  return causes.join(' ← ');
}

async function runCleanups(cleanups: (() => Promise<unknown> | unknown)[]): Promise<void> {
  for (const c of cleanups.reverse()) {
    try {
      await c();
    } catch {
      // best effort: keep closing the rest
    }
  }
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      'workload-api': { type: 'string' },
      hint: { type: 'string' },
      'broker-url': { type: 'string' },
      'broker-issuer': { type: 'string' },
      'broker-id': { type: 'string' },
      audience: { type: 'string' },
      host: { type: 'string' },
      port: { type: 'string' },
      'db-schema': { type: 'string' },
    },
  });
  const env = process.env;
  const brokerUrl = values['broker-url'] ?? env.TASKPASS_BROKER_URL;
  if (!brokerUrl) throw new Error('--broker-url (or TASKPASS_BROKER_URL) is required');
  const workloadApiAddress = values['workload-api'] ?? env.SPIFFE_ENDPOINT_SOCKET;
  const hint = values.hint ?? env.TICKETS_SVID_HINT;
  const brokerIssuer = values['broker-issuer'] ?? env.TASKPASS_BROKER_ISSUER;
  const brokerId = values['broker-id'] ?? env.TASKPASS_BROKER_ID;
  const audience = values.audience ?? env.TICKETS_AUDIENCE;
  const schema = values['db-schema'] ?? env.TICKETS_DB_SCHEMA;
  const tickets = await startTicketDesk({
    brokerUrl,
    ...(workloadApiAddress ? { workloadApiAddress } : {}),
    ...(hint ? { hint } : {}),
    ...(brokerIssuer ? { brokerIssuer } : {}),
    ...(brokerId ? { brokerId } : {}),
    ...(audience ? { audience } : {}),
    ...(schema
      ? {
          database: {
            schema,
            location: {
              host: env.PGHOST ?? '127.0.0.1',
              port: Number(env.PGPORT ?? 5432),
              database: env.PGDATABASE ?? 'postgres',
            },
          },
        }
      : {}),
    host: values.host ?? env.TICKETS_HOST ?? '127.0.0.1',
    port: Number(values.port ?? env.TICKETS_PORT ?? 8444),
    log: (event, data) => console.log(JSON.stringify({ t: new Date().toISOString(), event, ...data })),
  });
  const stop = () => {
    void tickets.close().then(() => process.exit(0));
  };
  process.once('SIGTERM', stop);
  process.once('SIGINT', stop);
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  main().catch((e) => {
    console.error(e);
    process.exit(1);
  });
}
