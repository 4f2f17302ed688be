// The framework-neutral verifier: one call token against the call actually being made
// (docs/design.md §2, §6). Adapters (http.ts, fastify.ts, sdk-v1.ts, sdk-v2.ts) only extract the
// token, the call and the client certificate, and turn a VerifierError into the transport's refusal.
//
// Check order: first what needs no token and no crypto (tool declared, resource derivable, feed
// fresh enough for this action class), then the strict compact-JWS form (jws.ts: one spelling per
// token, a kid, no crit), one jose jwtVerify (ES256 only, kid from the broker JWKS, signature, typ,
// iss, aud, exp/nbf, required claims), then O(1) claim checks (lifetime cap, actor = client_id),
// the O(1) revocation lookup, single use, and last the optional network introspection.
import type { X509Certificate } from 'node:crypto';
import {
  ACTIONS,
  type Action,
  APPROVAL_ID,
  type ApprovalClaim,
  argsSha256,
  ContractError,
  checkedDeriver,
  compileResourceTemplate,
  isAction,
  META_ACTION,
  META_RESOURCE,
  type ResourceDeriver,
  type ToolArgs,
  x5tS256,
} from '@taskpass/contract';
import { SpiffeId } from '@taskpass/spiffe';
import {
  createLocalJWKSet,
  createRemoteJWKSet,
  customFetch,
  errors as joseErrors,
  type JSONWebKeySet,
  type JWTPayload,
  type JWTVerifyGetKey,
  jwtVerify,
} from 'jose';
import { fetch as undiciFetch, type Dispatcher } from 'undici';
import { z } from 'zod';
import { VerifierError, type VerifierErrorCode } from './errors.ts';
import { parseCompactJws } from './jws.ts';
import { type ReplayCache, ReplayCacheFullError, MemoryReplayCache } from './replay.ts';
import type { RevocationSource } from './revocation.ts';

/**
 * How this server protects one tool. The same object may be the tool's MCP registration config:
 * `annotations` and `_meta` are read when `action`/`resource` are not given.
 *
 * Action: `action`, else `_meta["dev.taskpass/action"]`, else `read` when
 * `annotations.readOnlyHint` is true, else `write` (MCP's own default: not read-only, destructive).
 * `admin` is never inferred; declare it.
 * Resource: `resource`, else `_meta["dev.taskpass/resource"]`; a template such as
 * `tickets/{ticket_id}` (each placeholder fills exactly one segment) or a function of the arguments.
 */
export interface ToolPolicy {
  action?: Action;
  resource?: string | ((args: ToolArgs) => string);
  annotations?: { readOnlyHint?: boolean; destructiveHint?: boolean; [k: string]: unknown };
  _meta?: Record<string, unknown>;
}

/** Minimal fetch used for JWKS and introspection (global fetch or undici's). */
export type FetchLike = (
  url: string,
  init: { method?: string; headers?: Record<string, string>; body?: string; signal?: AbortSignal },
) => Promise<{ ok: boolean; status: number; json(): Promise<unknown> }>;

/** Options of {@link createVerifier}. Validated at creation; bad configuration throws `TASKPASS_VERIFY_CONFIG_INVALID`. */
export interface VerifierOptions {
  /** The broker issuer URL (`iss`). */
  issuer: string;
  /** This MCP server's canonical resource URI (`aud`), exactly as the broker templates name it. */
  audience: string;
  /** The broker JWKS URL (`{issuer}/.well-known/jwks.json`); or give `jwks`. */
  jwksUri?: string;
  /** A static JWKS (tests, air-gapped set-ups). */
  jwks?: JSONWebKeySet;
  /** Remote JWKS tuning: refetch cooldown on unknown kid (30 s), cache max age (10 min), timeout (5 s). */
  jwksCache?: { cooldownMs?: number; maxAgeMs?: number; timeoutMs?: number };
  /** The tools this server protects; any other tool is refused (`TASKPASS_VERIFY_UNKNOWN_TOOL`). */
  tools: Record<string, ToolPolicy>;
  /** Leeway for exp/nbf/iat, seconds (default 5). */
  clockToleranceSec?: number;
  /**
   * Longest token lifetime (`exp - iat`) accepted, seconds (default 300: the broker's default
   * `tokens.maxTtl`, which caps every template ttl). Raise it only together with the broker's cap;
   * it also bounds how long a replay-cache entry lives.
   */
  maxTokenLifetimeSec?: number;
  /** The revocation feed (see {@link RevocationFeedClient}); without one only expiry ends a token. */
  revocation?: RevocationSource;
  /** Fail-closed rules when the feed is silent (default 30 s; reads allowed). */
  staleness?: { maxFeedAgeMs?: number; readsWhenStale?: 'allow' | 'deny' };
  /** Where spent single-use jtis are kept (default: in memory, 1M entries). */
  replayCache?: ReplayCache;
  /** `claim` (default): only tokens with `single_use: true` are single use; `all`: every call token. */
  singleUse?: 'claim' | 'all';
  /**
   * A token carrying `cnf` is always accepted only from the client certificate it names (RFC 8705),
   * never as a plain bearer token. true: in addition every token must carry `cnf` (default false:
   * unbound tokens are accepted with or without a client certificate).
   */
  requireCertificateBinding?: boolean;
  /**
   * MCP 2026-07-28 servers: true refuses a POSTed JSON-RPC request without `Mcp-Method`, or
   * without `Mcp-Name` when its method names a target (`tools/call`, `prompts/get`,
   * `resources/read`, `tasks/*`), with `TASKPASS_VERIFY_HEADER_MISMATCH` (-32020). Default false:
   * the headers are checked against the body only when present, since SDK 1.x clients never send
   * them. A header that disagrees with the body is refused either way.
   */
  requireMcpHeaders?: boolean;
  /** RFC 7662 introspection at the broker for these action classes (e.g. every write). */
  introspect?: {
    endpoint: string;
    forActions?: Action[];
    /** Ask the broker to spend single-use tokens too (`consume=true`, a Taskpass extension; default true). */
    consume?: boolean;
    /** Extra headers, e.g. `authorization: Bearer <JWT-SVID>`; a function is called per request. */
    headers?: Record<string, string> | (() => Record<string, string> | Promise<Record<string, string>>);
    timeoutMs?: number;
  };
  /** undici dispatcher for broker requests (mTLS with the server's SVID). */
  dispatcher?: Dispatcher;
  /** Custom fetch for broker requests (overrides `dispatcher`). */
  fetch?: FetchLike;
  /** Clock (epoch ms), for tests. */
  now?: () => number;
}

/** The client certificate of the connection: DER, a parsed certificate, or its precomputed thumbprint. */
export type ClientCertificate = Uint8Array | X509Certificate | { x5tS256: string };

/** The call being made, as the MCP server sees it. */
export interface ToolCall {
  /** `params.name` of the `tools/call`. */
  tool: string;
  /** `params.arguments` (absent = `{}`). */
  args?: ToolArgs | undefined;
  clientCertificate?: ClientCertificate | undefined;
}

interface AuthBase {
  /** The delegating user (`sub`); the agent's SPIFFE ID for autonomous tasks. */
  user: string;
  /** The current actor (`act.sub`), the agent's SPIFFE ID. */
  agent: string;
  /** Every actor, current first (RFC 8693 nested `act`; only the first is authoritative). */
  actorChain: string[];
  /** The task id (`txn`). */
  task: string;
  jti: string;
  /** Epoch seconds. */
  expiresAt: number;
  clientId: string;
  /** The broker template that allowed the token (`tpl`, for audit). */
  template?: string;
}

/** Who approved a call (docs/approvals.md): the person's issuer and subject, and when. */
export interface CallApproval {
  /** The approval's id at the broker (`apr_…`), for audit. */
  id: string;
  /** The approver as their own verified user token named them. */
  approver: { iss: string; sub: string };
  /** Epoch seconds. */
  approvedAt: number;
}

/** Who is calling which tool on what: the result of a successful {@link Verifier.verifyCall}. */
export interface CallAuth extends AuthBase {
  kind: 'call';
  tool: string;
  resource: string;
  action: Action;
  singleUse: boolean;
  /**
   * Present when a person approved this exact call (the token is then bound to the call's
   * arguments, which the verifier recomputed).
   */
  approval?: CallApproval;
}

/** The result of {@link Verifier.verifySession}: a session token, or a call token used for a non-call request. */
export interface SessionAuth extends AuthBase {
  kind: 'session';
  /** `mcp_session`, or `mcp_tool_call` when a call token for this server was presented. */
  tokenType: 'mcp_session' | 'mcp_tool_call';
}

/**
 * A token whose form, signature and claims {@link Verifier.verifyToken} verified before the request
 * body was read. Pass it to `verifyCall`/`verifySession` in place of the string; only the verifier
 * that produced it accepts it.
 */
export interface VerifiedToken {
  readonly token: string;
}

/** The verifier: create once at start-up with {@link createVerifier}. */
export interface Verifier {
  readonly issuer: string;
  readonly audience: string;
  /** {@link VerifierOptions.requireMcpHeaders}, read by the HTTP adapters. */
  readonly requireMcpHeaders: boolean;
  /**
   * Verifies what needs no request body: the token's form, signature and claims (not the call,
   * `cnf`, revocation or single use). The HTTP adapters call it before reading the body, so a
   * request without a valid token never has its body read or parsed. Throws {@link VerifierError}.
   */
  verifyToken(token: string | undefined): Promise<VerifiedToken>;
  /** Verifies a call token for one `tools/call`. Throws {@link VerifierError}. */
  verifyCall(token: string | VerifiedToken | undefined, call: ToolCall): Promise<CallAuth>;
  /** Verifies a token for a non-call request (initialize, tools/list, ping, …). Throws {@link VerifierError}. */
  verifySession(
    token: string | VerifiedToken | undefined,
    ctx?: { clientCertificate?: ClientCertificate | undefined },
  ): Promise<SessionAuth>;
  /** The declared action class of a tool, or undefined when the tool is not protected. */
  actionOf(tool: string): Action | undefined;
}

const REQUIRED_CLAIMS = [
  'exp',
  'iat',
  'jti',
  'sub',
  'aud',
  'iss',
  'client_id',
  'txn',
  'act',
  'authorization_details',
];
const MAX_ACTOR_DEPTH = 8;
/** Default of `maxTokenLifetimeSec`: the broker's default `tokens.maxTtl`. */
const DEFAULT_MAX_TOKEN_LIFETIME_SEC = 300;

const fn = <T>(what: string) =>
  z.custom<T>((v) => typeof v === 'function', { message: `${what} must be a function` });
const httpUrl = z.url({ protocol: /^https?$/ });

const OptionsSchema = z
  .object({
    issuer: httpUrl,
    audience: httpUrl,
    jwksUri: httpUrl.optional(),
    jwks: z.object({ keys: z.array(z.looseObject({ kty: z.string() })).min(1) }).optional(),
    jwksCache: z
      .object({
        cooldownMs: z.number().int().min(0).optional(),
        maxAgeMs: z.number().int().min(0).optional(),
        timeoutMs: z.number().int().min(1).optional(),
      })
      .optional(),
    tools: z.record(
      z.string().min(1),
      z.object({
        action: z.enum(ACTIONS).optional(),
        resource: z.union([z.string().min(1), fn<(args: ToolArgs) => string>('resource')]).optional(),
        annotations: z
          .looseObject({ readOnlyHint: z.boolean().optional(), destructiveHint: z.boolean().optional() })
          .optional(),
        _meta: z.record(z.string(), z.unknown()).optional(),
      }),
    ),
    clockToleranceSec: z.number().int().min(0).max(300).default(5),
    maxTokenLifetimeSec: z.number().int().min(1).max(86_400).default(DEFAULT_MAX_TOKEN_LIFETIME_SEC),
    revocation: z
      .custom<RevocationSource>(
        (v) => typeof v === 'object' && v !== null && typeof (v as RevocationSource).isRevoked === 'function',
        { message: 'revocation must implement isRevoked(txn, jti) and lastEventAt' },
      )
      .optional(),
    staleness: z
      .object({
        maxFeedAgeMs: z.number().int().min(1).default(30_000),
        readsWhenStale: z.enum(['allow', 'deny']).default('allow'),
      })
      .default({ maxFeedAgeMs: 30_000, readsWhenStale: 'allow' }),
    replayCache: z
      .custom<ReplayCache>(
        (v) => typeof v === 'object' && v !== null && typeof (v as ReplayCache).markUsed === 'function',
        { message: 'replayCache must implement markUsed(jti, untilSec)' },
      )
      .optional(),
    singleUse: z.enum(['claim', 'all']).default('claim'),
    requireCertificateBinding: z.boolean().default(false),
    requireMcpHeaders: z.boolean().default(false),
    introspect: z
      .object({
        endpoint: httpUrl,
        forActions: z.array(z.enum(ACTIONS)).default(['write', 'admin']),
        consume: z.boolean().default(true),
        headers: z
          .union([
            z.record(z.string(), z.string()),
            fn<() => Record<string, string> | Promise<Record<string, string>>>('headers'),
          ])
          .optional(),
        timeoutMs: z.number().int().min(1).default(2000),
      })
      .optional(),
    dispatcher: z.custom<Dispatcher>((v) => typeof v === 'object' && v !== null).optional(),
    fetch: fn<FetchLike>('fetch').optional(),
    now: fn<() => number>('now').optional(),
  })
  .refine((o) => (o.jwksUri === undefined) !== (o.jwks === undefined), {
    message: 'give exactly one of jwksUri and jwks',
  });

interface CompiledTool {
  action: Action;
  derive: ResourceDeriver;
}

function compileTool(name: string, p: ToolPolicy): CompiledTool {
  const metaAction = p._meta?.[META_ACTION];
  const metaResource = p._meta?.[META_RESOURCE];
  if (metaAction !== undefined && !isAction(metaAction)) {
    throw new Error(`tool "${name}": _meta["${META_ACTION}"] must be read, write or admin`);
  }
  const action: Action =
    p.action ??
    (metaAction as Action | undefined) ??
    (p.annotations?.readOnlyHint === true ? 'read' : 'write');
  const resource = p.resource ?? metaResource;
  if (resource === undefined)
    throw new Error(`tool "${name}": no resource (give resource or _meta["${META_RESOURCE}"])`);
  if (typeof resource === 'function')
    return { action, derive: asVerifierDeriver(checkedDeriver(resource as (a: ToolArgs) => string)) };
  if (typeof resource !== 'string')
    throw new Error(`tool "${name}": resource must be a template string or a function`);
  return { action, derive: asVerifierDeriver(compileResourceTemplate(resource)) };
}

/** The contract's underivable-resource error surfaces as this package's stable code. */
function asVerifierDeriver(derive: ResourceDeriver): ResourceDeriver {
  return (args) => {
    try {
      return derive(args);
    } catch (e) {
      if (e instanceof ContractError) fail('TASKPASS_VERIFY_RESOURCE_UNDERIVABLE', e.message, e.cause);
      throw e;
    }
  };
}

function fail(code: VerifierErrorCode, message: string, cause?: unknown): never {
  throw new VerifierError(code, message, cause === undefined ? undefined : { cause });
}

function thumbprintOf(c: ClientCertificate): string {
  if (c instanceof Uint8Array) return x5tS256(c);
  if ('x5tS256' in c) return c.x5tS256;
  return x5tS256(c);
}

// jose error → our most specific code. Claim errors carry the claim name.
function mapJoseError(e: unknown): never {
  if (e instanceof VerifierError) throw e;
  if (e instanceof joseErrors.JWTExpired) fail('TASKPASS_VERIFY_EXPIRED', 'the token has expired');
  if (e instanceof joseErrors.JWTClaimValidationFailed) {
    if (e.reason === 'missing') fail('TASKPASS_VERIFY_MISSING_CLAIM', `the token has no "${e.claim}" claim`);
    switch (e.claim) {
      case 'iss':
        fail('TASKPASS_VERIFY_WRONG_ISSUER', 'the token was not issued by the configured broker');
        break;
      case 'aud':
        fail('TASKPASS_VERIFY_WRONG_AUDIENCE', 'the token was not issued for this server');
        break;
      case 'typ':
        fail('TASKPASS_VERIFY_WRONG_TYPE', 'the token typ is not at+jwt');
        break;
      case 'nbf':
        fail('TASKPASS_VERIFY_NOT_YET_VALID', 'the token is not valid yet');
        break;
    }
    fail('TASKPASS_VERIFY_MALFORMED', `the "${e.claim}" claim is invalid`);
  }
  if (e instanceof joseErrors.JOSEAlgNotAllowed || e instanceof joseErrors.JOSENotSupported) {
    fail('TASKPASS_VERIFY_BAD_ALGORITHM', 'the token is not signed with ES256');
  }
  if (e instanceof joseErrors.JWSSignatureVerificationFailed) {
    fail('TASKPASS_VERIFY_BAD_SIGNATURE', 'the token signature is invalid');
  }
  if (e instanceof joseErrors.JWKSNoMatchingKey)
    fail('TASKPASS_VERIFY_UNKNOWN_KID', 'no broker key matches the token kid');
  if (e instanceof joseErrors.JWKSMultipleMatchingKeys) {
    fail('TASKPASS_VERIFY_UNKNOWN_KID', 'the token kid matches more than one broker key');
  }
  if (e instanceof joseErrors.JWSInvalid || e instanceof joseErrors.JWTInvalid) {
    fail('TASKPASS_VERIFY_MALFORMED', 'the token is not a valid JWS/JWT');
  }
  fail('TASKPASS_VERIFY_MALFORMED', 'the token is not a valid JWS/JWT', e);
}

interface Detail {
  type: 'mcp_tool_call' | 'mcp_session';
  tool?: string;
  resource?: string;
  action?: Action;
  args_sha256?: string;
  approval?: ApprovalClaim;
}

// The approval evidence of a call token: exactly these members, so a token cannot smuggle in an
// approval the tool handler would read differently from the broker's.
const ApprovalClaimSchema = z.strictObject({
  id: z.string().regex(APPROVAL_ID),
  approver: z.strictObject({ iss: z.string().min(1), sub: z.string().min(1) }),
  approved_at: z.number().int().nonnegative(),
});

function detailOf(p: JWTPayload): Detail {
  const ad = p.authorization_details;
  if (!Array.isArray(ad) || ad.length !== 1) {
    fail('TASKPASS_VERIFY_MALFORMED', 'authorization_details must hold exactly one entry');
  }
  const d = ad[0] as Record<string, unknown> | null;
  if (typeof d !== 'object' || d === null)
    fail('TASKPASS_VERIFY_MALFORMED', 'authorization_details entry is not an object');
  if (d.type === 'mcp_session') return { type: 'mcp_session' };
  if (
    d.type !== 'mcp_tool_call' ||
    typeof d.tool !== 'string' ||
    typeof d.resource !== 'string' ||
    !isAction(d.action) ||
    (d.args_sha256 !== undefined && typeof d.args_sha256 !== 'string')
  ) {
    fail(
      'TASKPASS_VERIFY_MALFORMED',
      'authorization_details entry is not a valid mcp_tool_call or mcp_session',
    );
  }
  if (d.approval !== undefined) {
    if (!ApprovalClaimSchema.safeParse(d.approval).success) {
      fail('TASKPASS_VERIFY_MALFORMED', 'the approval of the mcp_tool_call is malformed');
    }
    // An approval is for one exact call; without the digest the token would carry a person's
    // approval to any arguments.
    if (d.args_sha256 === undefined) {
      fail('TASKPASS_VERIFY_APPROVAL_UNBOUND', 'the token carries an approval but no args_sha256');
    }
  }
  return d as unknown as Detail;
}

// RFC 8693 §4.1: the outermost act is the current actor, nested ones are earlier actors. The tool
// handler is told the agent is the current actor, so it must be the client the broker authenticated
// (client_id), and every actor must be a workload (SPIFFE ID), never a free-form name.
function actorChainOf(act: unknown, clientId: string): string[] {
  const chain: string[] = [];
  let a = act;
  while (a !== undefined) {
    if (typeof a !== 'object' || a === null || typeof (a as { sub?: unknown }).sub !== 'string') {
      fail('TASKPASS_VERIFY_MALFORMED', 'the act claim is not an RFC 8693 actor');
    }
    if (chain.length === MAX_ACTOR_DEPTH) fail('TASKPASS_VERIFY_MALFORMED', 'the actor chain is too deep');
    const sub = (a as { sub: string }).sub;
    try {
      SpiffeId.parse(sub);
    } catch {
      fail('TASKPASS_VERIFY_BAD_ACTOR', 'an actor of the token is not a SPIFFE ID');
    }
    chain.push(sub);
    a = (a as { act?: unknown }).act;
  }
  if (chain[0] !== clientId)
    fail('TASKPASS_VERIFY_BAD_ACTOR', 'the current actor is not the token client_id');
  return chain;
}

const nonEmpty = (v: unknown): v is string => typeof v === 'string' && v.length > 0;

interface Verified {
  payload: JWTPayload;
  /** Current actor first; the first equals client_id. */
  actorChain: string[];
}

/**
 * Creates the verifier. Validates every option now, so bad configuration fails at start-up.
 *
 * @example
 * ```ts
 * const verifier = createVerifier({
 *   issuer: 'https://broker.taskpass.local:8443',
 *   audience: 'https://tickets.taskpass.local/mcp',
 *   jwksUri: 'https://broker.taskpass.local:8443/.well-known/jwks.json',
 *   tools: {
 *     get_ticket: { resource: 'tickets/{ticket_id}', annotations: { readOnlyHint: true } },
 *     close_ticket: { resource: 'tickets/{ticket_id}', action: 'write' },
 *   },
 *   revocation: feed, // new RevocationFeedClient({ brokerUrl, dispatcher })
 * });
 * const who = await verifier.verifyCall(token, { tool: 'get_ticket', args: { ticket_id: 'T-1' } });
 * ```
 */
export function createVerifier(options: VerifierOptions): Verifier {
  const parsed = OptionsSchema.safeParse(options);
  if (!parsed.success) {
    throw new VerifierError(
      'TASKPASS_VERIFY_CONFIG_INVALID',
      `invalid verifier options: ${z.prettifyError(parsed.error)}`,
    );
  }
  const o = parsed.data;
  const tools = new Map<string, CompiledTool>();
  for (const [name, policy] of Object.entries(options.tools)) {
    try {
      tools.set(name, compileTool(name, policy));
    } catch (e) {
      throw new VerifierError(
        'TASKPASS_VERIFY_CONFIG_INVALID',
        `invalid verifier options: ${(e as Error).message}`,
      );
    }
  }

  const dispatcher = o.dispatcher;
  const brokerFetch: FetchLike =
    o.fetch ??
    (dispatcher ? (url, init) => undiciFetch(url, { ...init, dispatcher }) : (url, init) => fetch(url, init));

  let keys: JWTVerifyGetKey;
  if (o.jwks) keys = createLocalJWKSet(o.jwks as JSONWebKeySet);
  else {
    const remote = createRemoteJWKSet(new URL(o.jwksUri!), {
      cooldownDuration: o.jwksCache?.cooldownMs ?? 30_000,
      cacheMaxAge: o.jwksCache?.maxAgeMs ?? 600_000,
      timeoutDuration: o.jwksCache?.timeoutMs ?? 5000,
      ...(o.fetch || dispatcher
        ? {
            [customFetch]: (url: string, init: RequestInit) =>
              brokerFetch(url, init as Parameters<FetchLike>[1]) as unknown as Promise<Response>,
          }
        : {}),
    });
    // Key changes announced on the revocation feed: refetch the JWKS from the broker when a kid is
    // new to us, long before the key signs (it is published a prepublish period earlier). Only the
    // JWKS endpoint supplies keys; the announcement is a hint to look.
    o.revocation?.onKeys?.((kids) => {
      const known = new Set(remote.jwks()?.keys.map((k) => k.kid));
      if (kids.some((k) => !known.has(k))) remote.reload().catch(() => {});
    });
    // Anything but "no such key" from the remote set is the broker being unreachable, not a bad token.
    keys = async (header, token) => {
      try {
        return await remote(header, token);
      } catch (e) {
        if (e instanceof joseErrors.JWKSNoMatchingKey || e instanceof joseErrors.JWKSMultipleMatchingKeys)
          throw e;
        throw new VerifierError('TASKPASS_VERIFY_JWKS_UNAVAILABLE', 'the broker JWKS could not be fetched', {
          cause: e,
        });
      }
    };
  }

  const now = o.now ?? Date.now;
  const tol = o.clockToleranceSec;
  const maxLifetime = o.maxTokenLifetimeSec;
  const revocation = o.revocation;
  const { maxFeedAgeMs, readsWhenStale } = o.staleness;
  const replay = o.replayCache ?? new MemoryReplayCache({ now });
  const introspect = o.introspect;
  const introspectFor = new Set<Action>(introspect?.forActions ?? []);
  const verifyOptions = {
    algorithms: ['ES256'],
    typ: 'at+jwt',
    issuer: o.issuer,
    audience: o.audience,
    requiredClaims: REQUIRED_CLAIMS,
    clockTolerance: tol,
  };

  function checkFresh(action: Action): void {
    if (!revocation) return;
    // Readiness gate: before its first complete snapshot the verifier knows nothing about what is
    // revoked, so it refuses reads too (a fresh verifier once accepted a completed task's token).
    if (revocation.lastEventAt === undefined) {
      fail(
        'TASKPASS_VERIFY_FEED_NOT_READY',
        'the revocation feed has not been synced yet; every call is refused',
      );
    }
    if (action === 'read' && readsWhenStale === 'allow') return;
    const last = revocation.lastEventAt;
    if (last === undefined || now() - last > maxFeedAgeMs) {
      fail(
        'TASKPASS_VERIFY_FEED_STALE',
        `the revocation feed is stale; ${action} calls are refused until it is back`,
      );
    }
  }

  async function verifyJwt(token: string | undefined): Promise<Verified> {
    if (token === undefined || token === '')
      fail('TASKPASS_VERIFY_MISSING_TOKEN', 'a Bearer token is required');
    parseCompactJws(token);
    let payload: JWTPayload;
    try {
      // A fresh options object only when the clock is injected (tests); jose reads it per call.
      const r = await jwtVerify(
        token,
        keys,
        o.now ? { ...verifyOptions, currentDate: new Date(now()) } : verifyOptions,
      );
      payload = r.payload;
    } catch (e) {
      mapJoseError(e);
    }
    const aud = payload.aud;
    // jose accepts any array containing us; a token must name exactly one server (no confused deputy).
    if (typeof aud !== 'string' && !(Array.isArray(aud) && aud.length === 1)) {
      fail('TASKPASS_VERIFY_WRONG_AUDIENCE', 'the token must name exactly one audience');
    }
    if (typeof payload.iat !== 'number' || payload.iat > now() / 1000 + tol) {
      fail('TASKPASS_VERIFY_NOT_YET_VALID', 'the token iat is in the future');
    }
    if (
      !nonEmpty(payload.sub) ||
      !nonEmpty(payload.jti) ||
      !nonEmpty(payload.client_id) ||
      !nonEmpty(payload.txn)
    ) {
      fail('TASKPASS_VERIFY_MALFORMED', 'sub, jti, client_id and txn must be non-empty strings');
    }
    // jose has checked exp is a number; a long-lived token would also pin a replay-cache entry.
    const lifetime = (payload.exp as number) - payload.iat;
    if (lifetime <= 0) fail('TASKPASS_VERIFY_MALFORMED', 'the token exp is not after its iat');
    if (lifetime > maxLifetime) {
      fail('TASKPASS_VERIFY_LIFETIME_TOO_LONG', `the token lifetime exceeds ${maxLifetime} s`);
    }
    return { payload, actorChain: actorChainOf(payload.act, payload.client_id as string) };
  }

  // verifyToken's results, by handle: a handle cannot be forged or carry claims of its own.
  const verifiedTokens = new WeakMap<VerifiedToken, Verified>();

  async function verifiedOf(token: string | VerifiedToken): Promise<Verified> {
    if (typeof token === 'string') return verifyJwt(token);
    const v = verifiedTokens.get(token);
    if (!v) fail('TASKPASS_VERIFY_INTERNAL', 'a VerifiedToken of another verifier');
    // Verified before the body arrived; a slow body must not stretch the token's life.
    if ((v.payload.exp as number) <= now() / 1000 - tol)
      fail('TASKPASS_VERIFY_EXPIRED', 'the token has expired');
    return v;
  }

  function checkCnf(p: JWTPayload, cert: ClientCertificate | undefined): void {
    const cnf = p.cnf as Record<string, unknown> | undefined;
    let bound: string | undefined;
    if (cnf !== undefined) {
      if (typeof cnf !== 'object' || cnf === null || typeof cnf['x5t#S256'] !== 'string') {
        fail('TASKPASS_VERIFY_MALFORMED', 'the cnf claim has no x5t#S256');
      }
      bound = cnf['x5t#S256'] as string;
    }
    // RFC 8705 §3: a bound token is not a bearer token; without the certificate it is refused.
    if (bound !== undefined && cert === undefined) {
      fail('TASKPASS_VERIFY_CNF_REQUIRED', 'the token is certificate-bound; present its client certificate');
    }
    if (o.requireCertificateBinding && bound === undefined) {
      fail('TASKPASS_VERIFY_CNF_REQUIRED', 'a certificate-bound token over an mTLS connection is required');
    }
    if (bound !== undefined && cert !== undefined && thumbprintOf(cert) !== bound) {
      fail('TASKPASS_VERIFY_CNF_MISMATCH', 'the token is bound to another client certificate');
    }
  }

  function checkRevoked(p: JWTPayload): void {
    if (revocation?.isRevoked(p.txn as string, p.jti as string)) {
      fail('TASKPASS_VERIFY_REVOKED', 'the token or its task has been revoked');
    }
  }

  async function spend(jti: string, exp: number): Promise<void> {
    let first: boolean;
    try {
      first = await replay.markUsed(jti, exp + tol);
    } catch (e) {
      if (e instanceof ReplayCacheFullError) {
        fail('TASKPASS_VERIFY_REPLAY_CACHE_FULL', 'the replay cache is full; try again shortly');
      }
      // Fail closed: a replay cache we cannot ask might have seen this jti.
      fail(
        'TASKPASS_VERIFY_REPLAY_UNAVAILABLE',
        'the replay cache cannot be reached; single-use calls are refused',
      );
    }
    if (!first) fail('TASKPASS_VERIFY_REPLAYED', 'this single-use token has already been used');
  }

  async function introspectToken(token: string, singleUse: boolean): Promise<void> {
    const i = introspect!;
    let active: unknown;
    try {
      const extra = typeof i.headers === 'function' ? await i.headers() : (i.headers ?? {});
      const body = new URLSearchParams({ token, token_type_hint: 'access_token' });
      if (i.consume && singleUse) body.set('consume', 'true');
      const res = await brokerFetch(i.endpoint, {
        method: 'POST',
        headers: {
          ...extra,
          'content-type': 'application/x-www-form-urlencoded',
          accept: 'application/json',
        },
        body: body.toString(),
        signal: AbortSignal.timeout(i.timeoutMs),
      });
      if (!res.ok) throw new Error(`introspection answered HTTP ${res.status}`);
      active = ((await res.json()) as { active?: unknown }).active;
    } catch (e) {
      fail('TASKPASS_VERIFY_INTROSPECTION_FAILED', 'the broker could not be asked about this token', e);
    }
    if (active !== true) fail('TASKPASS_VERIFY_REVOKED', 'the broker reports the token inactive');
  }

  function base({ payload: p, actorChain }: Verified): AuthBase {
    const a: AuthBase = {
      user: p.sub as string,
      agent: actorChain[0]!,
      actorChain,
      task: p.txn as string,
      jti: p.jti as string,
      expiresAt: p.exp as number,
      clientId: p.client_id as string,
    };
    if (typeof p.tpl === 'string') a.template = p.tpl;
    return a;
  }

  return {
    issuer: o.issuer,
    audience: o.audience,
    requireMcpHeaders: o.requireMcpHeaders,
    actionOf: (tool) => tools.get(tool)?.action,

    async verifyToken(token) {
      const v = await verifyJwt(token);
      const handle: VerifiedToken = Object.freeze({ token: token! });
      verifiedTokens.set(handle, v);
      return handle;
    },

    async verifyCall(token, call) {
      if (token === undefined || token === '')
        fail('TASKPASS_VERIFY_MISSING_TOKEN', 'a Bearer call token is required');
      const tool = tools.get(call.tool);
      if (!tool) fail('TASKPASS_VERIFY_UNKNOWN_TOOL', `tool "${call.tool}" is not protected by this server`);
      const args = call.args ?? {};
      const resource = tool.derive(args);
      checkFresh(tool.action);

      const v = await verifiedOf(token);
      const p = v.payload;
      const d = detailOf(p);
      if (d.type === 'mcp_session') {
        fail('TASKPASS_VERIFY_SESSION_TOKEN_FOR_CALL', 'a session token cannot authorize a tool call');
      }
      if (d.tool !== call.tool)
        fail('TASKPASS_VERIFY_WRONG_TOOL', `the token is for another tool than "${call.tool}"`);
      if (d.action !== tool.action) {
        fail(
          'TASKPASS_VERIFY_WRONG_ACTION',
          `"${call.tool}" is a ${tool.action} tool; the token is for ${d.action}`,
        );
      }
      if (d.resource !== resource)
        fail('TASKPASS_VERIFY_WRONG_RESOURCE', 'the token is for another resource');
      if (d.args_sha256 !== undefined && d.args_sha256 !== argsSha256(args)) {
        fail('TASKPASS_VERIFY_ARGS_MISMATCH', 'the call arguments are not the ones the token was issued for');
      }
      checkCnf(p, call.clientCertificate);
      const auth: CallAuth = {
        kind: 'call',
        ...base(v),
        tool: call.tool,
        resource,
        action: tool.action,
        singleUse: p.single_use === true || o.singleUse === 'all',
      };
      if (d.approval) {
        const { id, approver, approved_at } = d.approval;
        auth.approval = { id, approver: { iss: approver.iss, sub: approver.sub }, approvedAt: approved_at };
      }
      checkRevoked(p);
      if (auth.singleUse) await spend(auth.jti, auth.expiresAt);
      if (introspectFor.has(tool.action)) {
        await introspectToken(typeof token === 'string' ? token : token.token, auth.singleUse);
      }
      return auth;
    },

    async verifySession(token, ctx) {
      if (token === undefined || token === '')
        fail('TASKPASS_VERIFY_MISSING_TOKEN', 'a Bearer session token is required');
      checkFresh('read');
      const v = await verifiedOf(token);
      const p = v.payload;
      const d = detailOf(p);
      checkCnf(p, ctx?.clientCertificate);
      const auth: SessionAuth = { kind: 'session', ...base(v), tokenType: d.type };
      checkRevoked(p);
      return auth;
    },
  };
}
