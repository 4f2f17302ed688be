// The agent's HTTP client for the broker API (docs/design.md §3). One undici dispatcher is kept per
// client so connections are reused: an mTLS handshake costs far more than a token request. Every
// broker answer is validated here, at the boundary; nothing else in the package parses broker JSON.
import {
  ACTIONS,
  type Action,
  APPROVAL_ID,
  APPROVAL_STATUSES,
  type ApprovalView,
  type CeilingEntry,
  type CompletionStatus,
} from '@taskpass/contract';
import type { Matcher, SpiffeId, TlsSource } from '@taskpass/spiffe';
import { decodeJwt } from 'jose';
import { Agent, type Dispatcher, request } from 'undici';
import { z } from 'zod';
import {
  AgentPluginError,
  BrokerError,
  type BrokerErrorBody,
  type ApprovalRequiredDetails,
  TaskpassApprovalRequiredError,
  TaskpassDeniedError,
} from './errors.ts';
import { Task } from './task.ts';
import { timeoutSignal } from './signals.ts';

/** Something that hands out JWT-SVIDs, such as `JwtSource` or `WorkloadApiClient` of `@taskpass/spiffe`. */
export interface JwtSvidSource {
  fetchJwtSvid(params: { audience: string[] }): Promise<{ readonly token: string; readonly expiresAt: Date }>;
}

/** mTLS: the agent presents the live source's current X.509-SVID; the broker is authenticated by SPIFFE ID. */
export interface MtlsAuth {
  kind: 'mtls';
  /** A live source (`X509Source`) or a static one; on `'update'` new connections use the new SVID. */
  source: TlsSource;
  /** The broker's SPIFFE ID, or a matcher (`matchId`, `matchMemberOf`, …). */
  brokerId: Matcher | SpiffeId | string;
}

/** JWT-SVID: `Authorization: Bearer <JWT-SVID>` with `aud` = the broker's audience. */
export interface JwtSvidAuth {
  kind: 'jwt-svid';
  /** The broker's JWT-SVID audience (its config `jwtSvidAudience`, by default its issuer URL). */
  audience: string;
  /** Where JWT-SVIDs come from (give this or {@link JwtSvidAuth.fetchJwtSvid}). */
  jwtSource?: JwtSvidSource;
  /** A function returning a JWT-SVID (compact JWS) for an audience. */
  fetchJwtSvid?: (audience: string) => Promise<string>;
  /** Dispatcher authenticating the broker's TLS server (e.g. `createTlsAgent(bundles, matchId(broker))`). Default: system CAs. */
  tls?: Dispatcher;
}

/** No agent authentication and plain http allowed: for tests against a fake broker only. */
export interface InsecureAuth {
  kind: 'none-insecure';
}

export type BrokerAuth = MtlsAuth | JwtSvidAuth | InsecureAuth;

/** Options of {@link BrokerClient}. */
export interface BrokerClientOptions {
  /** The broker base URL, `https://…` (plain `http://` only with `none-insecure`). */
  url: string;
  auth: BrokerAuth;
  /** Per-request timeout, connection included. Default 10 000 ms. */
  timeoutMs?: number;
  /** Use this dispatcher instead of the one the client builds from `auth` (it is not closed by {@link BrokerClient.close}). */
  dispatcher?: Dispatcher;
  /**
   * Tokens (call, session) are reused only while they stay valid this many seconds longer, so a
   * token does not expire between here and the MCP server. Default 5.
   */
  tokenReuseMarginSec?: number;
  /** Clock in epoch milliseconds (test seam). Default `Date.now`. */
  clock?: () => number;
}

/** The broker's view of a task (`GET /v1/tasks/:id`). */
export interface TaskInfo {
  id: string;
  status: 'open' | 'completed' | 'failed' | 'cancelled' | 'revoked';
  agent: string;
  sub: string;
  purpose: string;
  createdAt: Date;
  expiresAt: Date;
  finishedAt?: Date;
}

/** What {@link BrokerClient.callToken} asks for. */
export interface CallTokenRequest {
  /** The MCP server's resource URI (the token `aud`). */
  audience: string;
  tool: string;
  resource: string;
  action: Action;
  /** Binds the token to exact arguments (see `argsSha256()`). */
  argsSha256?: string;
  /**
   * The arguments themselves, for templates whose approval conditions read them (the ceiling's
   * `send_arguments`). Give `argsSha256` of the same arguments too.
   */
  arguments?: Record<string, unknown>;
}

/** Options of {@link BrokerClient.getApproval}. */
export interface GetApprovalOptions {
  /** Long poll: the broker answers when the status changes or after this many seconds (1–60). */
  waitSec?: number;
  /** Aborts the request; it then rejects with the signal's reason. */
  signal?: AbortSignal;
}

/** Result of {@link BrokerClient.complete}. */
export interface CompleteResult {
  taskId: string;
  status: string;
  /** Sequence number of the task's revocation in the broker feed. */
  revocationSeq: number;
}

/**
 * A call or session token from the broker. The token itself is a getter over a private field, so
 * `JSON.stringify`, spreading and `console.log` never show it.
 *
 * @example
 * ```ts
 * const t = await task.token({ audience: 'https://tickets.taskpass.local/mcp', tool: 'get_ticket', resource: 'tickets/T-42', action: 'read' });
 * headers.set('authorization', `Bearer ${t.accessToken}`);
 * JSON.stringify(t); // jti, expiresAt, template …, but no access token
 * ```
 */
export class IssuedToken {
  readonly #accessToken: string;
  readonly jti: string;
  readonly expiresAt: Date;
  readonly expiresIn: number;
  readonly singleUse: boolean;
  /** The template that allowed it (not secret). */
  readonly template: string;
  /**
   * Local deadline in epoch ms: the earlier of the broker's `expires_at` and receipt time plus
   * `expires_in`, so a clock difference with the broker never stretches a token's reuse.
   */
  readonly validUntilMs: number;

  /** @internal Built by {@link BrokerClient}. */
  constructor(t: z.infer<typeof TokenResponse>, receivedAtMs: number) {
    this.#accessToken = t.access_token;
    this.jti = t.jti;
    this.expiresAt = new Date(t.expires_at * 1000);
    this.expiresIn = t.expires_in;
    this.singleUse = t.single_use;
    this.template = t.template;
    this.validUntilMs = Math.min(t.expires_at * 1000, receivedAtMs + t.expires_in * 1000);
  }

  /** The compact JWS to send as `Authorization: Bearer`. Never log it. */
  get accessToken(): string {
    return this.#accessToken;
  }
}

// --- Response schemas (the boundary) ---------------------------------------------------------

const ActionSchema = z.enum(ACTIONS);
const EpochSec = z.number().int().nonnegative();
const Jws = z.string().regex(/^[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+$/, 'not a compact JWS');

const CeilingSchema = z.array(
  z.object({
    template: z.string(),
    audience: z.string(),
    tools: z.array(
      z.object({
        tool: z.string(),
        action: ActionSchema,
        resources: z.array(z.string()),
        bind_arguments: z.literal(true).optional(),
        send_arguments: z.literal(true).optional(),
        approval: z.literal(true).optional(),
      }),
    ),
  }),
);

const OpenTaskResponse = z.object({
  task_id: z.string().min(1),
  status: z.literal('open'),
  expires_at: EpochSec,
  sub: z.string().min(1),
  agent: z.string().min(1),
  ceiling: CeilingSchema,
});

const TaskViewResponse = z.object({
  task_id: z.string().min(1),
  status: z.enum(['open', 'completed', 'failed', 'cancelled', 'revoked']),
  agent: z.string(),
  sub: z.string(),
  purpose: z.string(),
  created_at: EpochSec,
  expires_at: EpochSec,
  finished_at: EpochSec.optional(),
});

const TokenResponse = z.object({
  access_token: Jws,
  token_type: z.literal('Bearer'),
  expires_in: z.number().int().nonnegative(),
  expires_at: EpochSec,
  jti: z.string().min(1),
  single_use: z.boolean(),
  template: z.string(),
});

const CompleteResponse = z.object({
  task_id: z.string().min(1),
  status: z.string(),
  revocation_seq: z.number().int().nonnegative(),
});

const ApprovalSubjectSchema = z.object({
  agent: z.string().min(1),
  user: z.string().min(1),
  task: z.object({ id: z.string().min(1), purpose: z.string() }),
  audience: z.string().min(1),
  tool: z.string().min(1),
  resource: z.string().min(1),
  action: ActionSchema,
  args_sha256: z.string().min(1),
  arguments: z.record(z.string(), z.unknown()).optional(),
  template: z.string(),
});

const ApprovalIdSchema = z.string().regex(APPROVAL_ID, 'not an approval id');
// Shown to a person, who opens it: an https (or, for a local demo broker, http) URL, nothing else.
const ApprovalUrlSchema = z.url({ protocol: /^https?$/ });

const ApprovalViewResponse = z.object({
  id: ApprovalIdSchema,
  status: z.enum(APPROVAL_STATUSES),
  created_at: EpochSec,
  expires_at: EpochSec,
  approval_url: ApprovalUrlSchema,
  request: ApprovalSubjectSchema,
  decision: z
    .object({
      decision: z.enum(['approve', 'deny']),
      approver: z.object({ iss: z.string(), sub: z.string() }),
      decided_at: EpochSec,
      comment: z.string().optional(),
    })
    .optional(),
});

const ApprovalRequiredResponse = z.object({
  code: z.literal('TASKPASS_APPROVAL_REQUIRED'),
  message: z.string(),
  approval_id: ApprovalIdSchema,
  approval_url: ApprovalUrlSchema,
  expires_at: EpochSec,
  request: ApprovalSubjectSchema,
  template: z.string(),
});

const ErrorResponse = z.object({
  code: z.string().min(1),
  message: z.string(),
  template: z.string().optional(),
  reason: z.string().optional(),
});

/** Data a {@link Task} handle is built from. */
export interface OpenedTask {
  id: string;
  expiresAt: Date;
  sub: string;
  agent: string;
  purpose: string;
  ceiling: CeilingEntry[];
}

const DEFAULT_TIMEOUT_MS = 10_000;
// A cached JWT-SVID is replaced this long before it expires (at most half its lifetime).
const JWT_SVID_REFRESH_SEC = 30;

/**
 * Client of the broker API (docs/design.md §3). Authenticates with mTLS from a live X.509 source
 * (each new connection presents the current SVID, so it survives rotation) or with JWT-SVIDs,
 * keeps connections alive, and validates every answer.
 *
 * @example
 * ```ts
 * const source = await X509Source.create();
 * const broker = new BrokerClient({
 *   url: 'https://broker.taskpass.local:8443',
 *   auth: { kind: 'mtls', source, brokerId: 'spiffe://taskpass.local/broker' },
 * });
 * await using task = await broker.openTask({ purpose: 'triage T-42', userToken });
 * const t = await task.token({ audience: 'https://tickets.taskpass.local/mcp', tool: 'get_ticket', resource: 'tickets/T-42', action: 'read' });
 * ```
 */
export class BrokerClient {
  readonly url: string;
  readonly tokenReuseMarginSec: number;
  readonly clock: () => number;
  readonly #auth: BrokerAuth;
  readonly #timeoutMs: number;
  readonly #external: Dispatcher | undefined;
  #dispatcher: Promise<Dispatcher> | undefined;
  #owned = new Set<Promise<Dispatcher>>();
  #jwt: { token: string; refreshAtMs: number } | undefined;
  #jwtInFlight: Promise<string> | undefined;
  #epoch = 0;
  #leafFingerprint: string | undefined;
  #onUpdate: (() => void) | undefined;
  #closed = false;

  constructor(opts: BrokerClientOptions) {
    let url: URL;
    try {
      url = new URL(opts.url);
    } catch (e) {
      throw new AgentPluginError('TASKPASS_AGENT_CONFIG_INVALID', `url is not a URL: ${opts.url}`, {
        cause: e,
      });
    }
    const kind = opts.auth?.kind;
    if (kind !== 'mtls' && kind !== 'jwt-svid' && kind !== 'none-insecure') {
      throw new AgentPluginError(
        'TASKPASS_AGENT_CONFIG_INVALID',
        'auth.kind must be mtls, jwt-svid or none-insecure',
      );
    }
    if (url.protocol !== 'https:' && !(kind === 'none-insecure' && url.protocol === 'http:')) {
      throw new AgentPluginError(
        'TASKPASS_AGENT_CONFIG_INVALID',
        `the broker URL must be https:// (plain http only with auth.kind none-insecure), got ${url.protocol}`,
      );
    }
    if (opts.auth.kind === 'jwt-svid') {
      const a = opts.auth;
      if (!a.audience)
        throw new AgentPluginError('TASKPASS_AGENT_CONFIG_INVALID', 'jwt-svid auth needs audience');
      if ((a.jwtSource === undefined) === (a.fetchJwtSvid === undefined)) {
        throw new AgentPluginError(
          'TASKPASS_AGENT_CONFIG_INVALID',
          'jwt-svid auth needs exactly one of jwtSource and fetchJwtSvid',
        );
      }
    }
    if (opts.auth.kind === 'mtls' && (!opts.auth.source || !opts.auth.brokerId)) {
      throw new AgentPluginError('TASKPASS_AGENT_CONFIG_INVALID', 'mtls auth needs source and brokerId');
    }
    const timeoutMs = opts.timeoutMs ?? DEFAULT_TIMEOUT_MS;
    const margin = opts.tokenReuseMarginSec ?? 5;
    if (!(timeoutMs > 0) || !(margin >= 0)) {
      throw new AgentPluginError(
        'TASKPASS_AGENT_CONFIG_INVALID',
        'timeoutMs must be > 0, tokenReuseMarginSec >= 0',
      );
    }
    this.url = url.href.replace(/\/+$/, '');
    this.#auth = opts.auth;
    this.#timeoutMs = timeoutMs;
    this.tokenReuseMarginSec = margin;
    this.clock = opts.clock ?? Date.now;
    this.#external = opts.dispatcher;

    if (opts.auth.kind === 'mtls') {
      const source = opts.auth.source;
      this.#leafFingerprint = leafFingerprint(source);
      if (typeof source.on === 'function') {
        this.#onUpdate = () => this.#rotated(source);
        source.on('update', this.#onUpdate);
      }
    }
  }

  /**
   * Increases whenever the agent's X.509-SVID changes. Tokens are bound (`cnf`) to the certificate
   * the agent used at the broker, so {@link Task} does not reuse tokens from an older identity.
   */
  get identityEpoch(): number {
    return this.#epoch;
  }

  /**
   * Opens a task (`POST /v1/tasks`) on behalf of the user whose token is given, or autonomously
   * without one (when a template allows it).
   *
   * @example
   * ```ts
   * await using task = await broker.openTask({ purpose: 'answer ticket T-42', userToken, ttlSeconds: 600 });
   * ```
   */
  async openTask(req: { purpose: string; userToken?: string; ttlSeconds?: number }): Promise<Task> {
    const body: Record<string, unknown> = { purpose: req.purpose };
    if (req.userToken !== undefined) body.user_token = req.userToken;
    if (req.ttlSeconds !== undefined) body.ttl_seconds = req.ttlSeconds;
    const r = await this.#call('POST', '/v1/tasks', body, OpenTaskResponse, 201);
    return new Task(this, {
      id: r.task_id,
      expiresAt: new Date(r.expires_at * 1000),
      sub: r.sub,
      agent: r.agent,
      purpose: req.purpose,
      ceiling: r.ceiling,
    });
  }

  /** Reads a task (`GET /v1/tasks/:id`; owner only). */
  async getTask(taskId: string): Promise<TaskInfo> {
    const r = await this.#call(
      'GET',
      `/v1/tasks/${encodeURIComponent(taskId)}`,
      undefined,
      TaskViewResponse,
      200,
    );
    return {
      id: r.task_id,
      status: r.status,
      agent: r.agent,
      sub: r.sub,
      purpose: r.purpose,
      createdAt: new Date(r.created_at * 1000),
      expiresAt: new Date(r.expires_at * 1000),
      ...(r.finished_at !== undefined ? { finishedAt: new Date(r.finished_at * 1000) } : {}),
    };
  }

  /**
   * Gets a call token for one tool call (`POST /v1/tasks/:id/tokens`). Uncached: use
   * {@link Task.token} for reuse of read tokens.
   *
   * @throws TaskpassDeniedError when the broker refuses (403).
   */
  async callToken(taskId: string, req: CallTokenRequest): Promise<IssuedToken> {
    const body: Record<string, unknown> = {
      audience: req.audience,
      tool: req.tool,
      resource: req.resource,
      action: req.action,
    };
    if (req.argsSha256 !== undefined) body.args_sha256 = req.argsSha256;
    if (req.arguments !== undefined) body.arguments = req.arguments;
    const r = await this.#call(
      'POST',
      `/v1/tasks/${encodeURIComponent(taskId)}/tokens`,
      body,
      TokenResponse,
      200,
    );
    return new IssuedToken(r, this.clock());
  }

  /** Gets a session token (`POST /v1/tasks/:id/session-token`): initialize, tools/list, ping; no tool call. */
  async sessionToken(taskId: string, audience: string): Promise<IssuedToken> {
    const r = await this.#call(
      'POST',
      `/v1/tasks/${encodeURIComponent(taskId)}/session-token`,
      { audience },
      TokenResponse,
      200,
    );
    return new IssuedToken(r, this.clock());
  }

  /**
   * Reads an approval this agent asked for (`GET /v1/approvals/:id`). With `waitSec` it is a long
   * poll: the broker holds the request until the status changes or the time is up, so a waiting
   * agent asks about once a `waitSec`. Use {@link Task.waitForApproval} to wait for a decision.
   *
   * @throws BrokerError (404 unknown approval, 403 another agent's …), AgentPluginError.
   */
  async getApproval(approvalId: string, opts: GetApprovalOptions = {}): Promise<ApprovalView> {
    const waitSec = opts.waitSec && opts.waitSec > 0 ? Math.min(60, Math.ceil(opts.waitSec)) : undefined;
    const q = waitSec === undefined ? '' : `?wait=${waitSec}`;
    const r = await this.#call(
      'GET',
      `/v1/approvals/${encodeURIComponent(approvalId)}${q}`,
      undefined,
      ApprovalViewResponse,
      200,
      // The broker holds a long poll up to waitSec: the request timeout runs on top of it.
      { timeoutMs: this.#timeoutMs + (waitSec ?? 0) * 1000, signal: opts.signal },
    );
    return r as ApprovalView;
  }

  /** Finishes a task (`POST /v1/tasks/:id/complete`); resolves once its revocation is durable. */
  async complete(taskId: string, status: CompletionStatus): Promise<CompleteResult> {
    const r = await this.#call(
      'POST',
      `/v1/tasks/${encodeURIComponent(taskId)}/complete`,
      { status },
      CompleteResponse,
      200,
    );
    return { taskId: r.task_id, status: r.status, revocationSeq: r.revocation_seq };
  }

  /** Closes the connections this client opened and stops following the X.509 source. Idempotent. */
  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    if (this.#onUpdate && this.#auth.kind === 'mtls') this.#auth.source.off?.('update', this.#onUpdate);
    const owned = [...this.#owned];
    this.#owned.clear();
    this.#dispatcher = undefined;
    await Promise.all(owned.map((p) => p.then((d) => d.close()).catch(() => undefined)));
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.close();
  }

  // --- internals -------------------------------------------------------------------------------

  #rotated(source: TlsSource): void {
    const fp = leafFingerprint(source);
    if (fp === this.#leafFingerprint) return; // a bundle-only update: connections stay valid
    this.#leafFingerprint = fp;
    this.#epoch++;
    // Open connections keep the SVID they were made with; drop them so the next request
    // handshakes with the new one. close() lets requests in flight finish.
    const old = this.#dispatcher;
    this.#dispatcher = undefined;
    if (old) {
      this.#owned.delete(old);
      old.then((d) => d.close()).catch(() => undefined);
    }
  }

  #getDispatcher(): Promise<Dispatcher> {
    if (this.#external) return Promise.resolve(this.#external);
    if (this.#closed) {
      return Promise.reject(
        new AgentPluginError('TASKPASS_AGENT_CONFIG_INVALID', 'the BrokerClient is closed'),
      );
    }
    if (this.#dispatcher) return this.#dispatcher;
    const auth = this.#auth;
    let p: Promise<Dispatcher>;
    if (auth.kind === 'mtls') {
      // Loaded lazily: only the mTLS path needs the SPIFFE TLS helpers.
      p = import('@taskpass/spiffe').then(({ createMtlsAgent, matchId }) => {
        const m = typeof auth.brokerId === 'function' ? auth.brokerId : matchId(auth.brokerId);
        return createMtlsAgent(auth.source, m);
      });
    } else if (auth.kind === 'jwt-svid' && auth.tls) {
      return Promise.resolve(auth.tls);
    } else {
      p = Promise.resolve(new Agent());
    }
    this.#dispatcher = p;
    this.#owned.add(p);
    p.catch(() => {
      if (this.#dispatcher === p) this.#dispatcher = undefined;
      this.#owned.delete(p);
    });
    return p;
  }

  async #jwtSvid(force: boolean): Promise<string> {
    const auth = this.#auth as JwtSvidAuth;
    const now = this.clock();
    if (!force && this.#jwt && now < this.#jwt.refreshAtMs) return this.#jwt.token;
    if (this.#jwtInFlight) return this.#jwtInFlight;
    const p = (async () => {
      let token: string;
      let expMs: number | undefined;
      try {
        if (auth.jwtSource) {
          const svid = await auth.jwtSource.fetchJwtSvid({ audience: [auth.audience] });
          token = svid.token;
          expMs = svid.expiresAt.getTime();
        } else {
          token = await auth.fetchJwtSvid!(auth.audience);
          const exp = decodeJwt(token).exp;
          expMs = typeof exp === 'number' ? exp * 1000 : undefined;
        }
      } catch (e) {
        throw new AgentPluginError(
          'TASKPASS_AGENT_IDENTITY_UNAVAILABLE',
          'could not get a JWT-SVID for the broker',
          {
            cause: e,
          },
        );
      }
      const t = this.clock();
      // Zero leeway on our own credential: cache it only while it is surely valid.
      if (expMs !== undefined && expMs > t) {
        const refreshSec = Math.min(JWT_SVID_REFRESH_SEC, (expMs - t) / 2000);
        this.#jwt = { token, refreshAtMs: expMs - refreshSec * 1000 };
      } else {
        this.#jwt = undefined;
      }
      return token;
    })();
    this.#jwtInFlight = p;
    try {
      return await p;
    } finally {
      this.#jwtInFlight = undefined;
    }
  }

  async #call<S extends z.ZodType>(
    method: 'GET' | 'POST',
    path: string,
    body: unknown,
    schema: S,
    okStatus: number,
    opts: SendOptions = {},
  ): Promise<z.infer<S>> {
    let res = await this.#send(method, path, body, false, opts);
    if (res.status === 401 && this.#auth.kind === 'jwt-svid') {
      // A 401 means nothing was done; retry once with a fresh JWT-SVID (the cached one may have
      // been refused for clock reasons or a key rotation at the broker).
      res = await this.#send(method, path, body, true, opts);
    }
    const json = parseJson(res.text);
    if (res.status === okStatus) {
      const parsed = schema.safeParse(json);
      if (!parsed.success) {
        throw new AgentPluginError(
          'TASKPASS_AGENT_BAD_RESPONSE',
          `${method} ${path}: the broker answer does not match the API: ${z.prettifyError(parsed.error)}`,
        );
      }
      return parsed.data;
    }
    const err = ErrorResponse.safeParse(json);
    if (res.status < 400 || !err.success) {
      throw new AgentPluginError(
        'TASKPASS_AGENT_BAD_RESPONSE',
        `${method} ${path}: unexpected HTTP ${res.status} without a Taskpass error body`,
      );
    }
    const eb: BrokerErrorBody = err.data;
    if (res.status === 403 && eb.code === 'TASKPASS_APPROVAL_REQUIRED')
      throw approvalRequired(method, path, json);
    if (res.status === 403) throw new TaskpassDeniedError(res.status, eb);
    throw new BrokerError(res.status, eb);
  }

  async #send(
    method: 'GET' | 'POST',
    path: string,
    body: unknown,
    freshJwt: boolean,
    opts: SendOptions,
  ): Promise<{ status: number; text: string }> {
    const headers: Record<string, string> = { accept: 'application/json' };
    if (body !== undefined) headers['content-type'] = 'application/json';
    if (this.#auth.kind === 'jwt-svid') headers.authorization = `Bearer ${await this.#jwtSvid(freshJwt)}`;
    const dispatcher = await this.#getDispatcher();
    const timeout = timeoutSignal(opts.timeoutMs ?? this.#timeoutMs, opts.signal);
    try {
      const res = await request(this.url + path, {
        method,
        headers,
        ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
        dispatcher,
        signal: timeout.signal,
      });
      return { status: res.statusCode, text: await res.body.text() };
    } catch (e) {
      // The caller gave up: that is not the broker being unreachable.
      if (opts.signal?.aborted) throw opts.signal.reason;
      throw new AgentPluginError('TASKPASS_AGENT_BROKER_UNREACHABLE', `${method} ${path}: ${describe(e)}`, {
        cause: e,
      });
    } finally {
      timeout.clear();
    }
  }
}

interface SendOptions {
  timeoutMs?: number | undefined;
  signal?: AbortSignal | undefined;
}

// A 403 TASKPASS_APPROVAL_REQUIRED must carry the whole approval; one that does not is refused as a
// bad answer rather than shown to a person with half its fields.
function approvalRequired(method: string, path: string, json: unknown): TaskpassApprovalRequiredError {
  const parsed = ApprovalRequiredResponse.safeParse(json);
  if (!parsed.success) {
    throw new AgentPluginError(
      'TASKPASS_AGENT_BAD_RESPONSE',
      `${method} ${path}: the approval-required answer does not match the API: ${z.prettifyError(parsed.error)}`,
    );
  }
  const b = parsed.data;
  return new TaskpassApprovalRequiredError(
    403,
    { code: b.code, message: b.message, template: b.template },
    {
      approvalId: b.approval_id,
      approvalUrl: b.approval_url,
      expiresAt: new Date(b.expires_at * 1000),
      request: b.request as ApprovalRequiredDetails['request'],
    },
  );
}

function parseJson(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function describe(e: unknown): string {
  if (e instanceof Error) {
    const code = (e as { code?: unknown }).code;
    return typeof code === 'string' ? `${code} ${e.message}` : e.message;
  }
  return String(e);
}

function leafFingerprint(source: TlsSource): string | undefined {
  try {
    return source.getX509Svid().certificates[0]?.fingerprint256;
  } catch {
    return undefined; // no identity right now (redacted); the next update brings one
  }
}
