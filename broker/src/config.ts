// Broker configuration: one zod schema with defaults, loaded once from a YAML/JSON file and the
// environment, validated, then deep-frozen. Invalid configuration fails at start-up with
// TASKPASS_CONFIG_INVALID and the path of every offending field, never on the first request.
import { readFileSync } from 'node:fs';
import { availableParallelism } from 'node:os';
import { parseArgs } from 'node:util';
import { parse as parseYaml } from 'yaml';
import { z } from 'zod';
import { BrokerError } from './errors.ts';
import { parseKekRing } from './key-wrap.ts';

const UNIT_SECONDS: Record<string, number> = { ms: 0.001, s: 1, m: 60, h: 3600, d: 86400 };

/**
 * Parses a duration: a number of seconds, or a string like `90s`, `15m`, `24h`, `7d`, `500ms`.
 * Returns whole seconds (rounded up, so `500ms` is 1s), or undefined when malformed.
 */
export function parseDurationSec(v: string | number): number | undefined {
  if (typeof v === 'number') return Number.isFinite(v) && v >= 0 ? Math.ceil(v) : undefined;
  const m = /^(\d+)(ms|s|m|h|d)?$/.exec(v.trim());
  if (!m) return undefined;
  return Math.ceil(Number(m[1]) * (UNIT_SECONDS[m[2] ?? 's'] ?? 1));
}

const Duration = z.union([z.number(), z.string()]).transform((v, ctx) => {
  const sec = parseDurationSec(v);
  if (sec === undefined || sec <= 0) {
    ctx.addIssue({
      code: 'custom',
      message: `invalid duration ${JSON.stringify(v)} (use e.g. 60s, 15m, 24h)`,
    });
    return z.NEVER;
  }
  return sec;
});

const SpiffeIdString = z
  .string()
  .regex(/^spiffe:\/\/[a-z0-9._-]+(\/[A-Za-z0-9._~:@+=*-]+)*$/, 'must be a SPIFFE ID (spiffe://td/path)');
const TrustDomainString = z
  .string()
  .transform((s) => s.replace(/^spiffe:\/\//, ''))
  .pipe(z.string().regex(/^[a-z0-9._-]{1,255}$/, 'must be a trust domain name'));

const TrustedIssuer = z
  .object({
    issuer: z.string().url(),
    audience: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]),
    jwksUri: z.string().url().optional(),
    jwks: z.object({ keys: z.array(z.record(z.string(), z.unknown())).min(1) }).optional(),
    discovery: z.boolean().optional(),
    algorithms: z
      .array(
        z.enum(['RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512', 'ES256', 'ES384', 'ES512', 'EdDSA']),
      )
      .min(1)
      .default(['RS256', 'ES256']),
    clockToleranceSec: z.number().int().min(0).max(300).default(30),
  })
  .strict()
  .refine(
    (t) => [t.jwksUri !== undefined, t.jwks !== undefined, t.discovery === true].filter(Boolean).length === 1,
    {
      message: 'exactly one of jwksUri, jwks or discovery: true is required',
    },
  );

// Who holds a console role: an issuer and claims, matched as templates match `users:` (a claim
// equals, or for arrays contains, one of the values; every listed claim must match).
const ScalarValue = z.union([z.string(), z.number(), z.boolean()]);
const RoleClaims = z
  .object({
    issuer: z.union([z.string().url(), z.array(z.string().url()).min(1)]).optional(),
    claims: z
      .record(
        z.string().regex(/^[A-Za-z0-9_.:-]{1,128}$/, 'claim names are 1-128 characters of [A-Za-z0-9_.:-]'),
        z.union([ScalarValue, z.array(ScalarValue).min(1)]),
      )
      .refine((c) => Object.keys(c).length > 0, 'name at least one claim'),
  })
  .strict();

/** The web console (docs/console.md): its own listener, sign-in through OIDC, roles from claims. */
const ConsoleSchema = z
  .object({
    listen: z
      .object({
        host: z.string().default('127.0.0.1'),
        port: z.coerce.number().int().min(0).max(65535).default(8444),
      })
      .strict()
      .prefault({}),
    /** The URL people open (behind a TLS proxy in production); the OIDC redirect is under it. */
    publicUrl: z.string().url(),
    oidc: z
      .object({
        issuer: z.string().url(),
        /** Where discovery is read; default `<issuer>/.well-known/openid-configuration`. */
        discoveryUrl: z.string().url().optional(),
        clientId: z.string().min(1).max(1024),
        /** A file holding the client secret (confidential clients); public clients use PKCE only. */
        clientSecretFile: z.string().min(1).optional(),
        scopes: z
          .array(z.string().regex(/^[\x21\x23-\x5B\x5D-\x7E]+$/))
          .default(['openid', 'profile', 'email']),
        redirectPath: z
          .string()
          .regex(/^\/[A-Za-z0-9/_.-]*$/)
          .default('/console/auth/callback'),
        algorithms: z
          .array(
            z.enum([
              'RS256',
              'RS384',
              'RS512',
              'PS256',
              'PS384',
              'PS512',
              'ES256',
              'ES384',
              'ES512',
              'EdDSA',
            ]),
          )
          .min(1)
          .default(['RS256', 'ES256']),
        clockToleranceSec: z.number().int().min(0).max(300).default(30),
      })
      .strict(),
    roles: z
      .object({
        /** Who may see everything and revoke. */
        admins: RoleClaims,
        /** Who may see everything (read-only). */
        viewers: RoleClaims.optional(),
      })
      .strict(),
    sessionTtl: Duration.default(8 * 3600),
    /**
     * Cookies without `Secure`: only for a plain-http console on a loopback address in tests;
     * anywhere else the configuration is refused.
     */
    insecureCookies: z.boolean().default(false),
  })
  .strict()
  .refine((c) => c.oidc.scopes.includes('openid'), {
    message: 'console.oidc.scopes must include openid',
    path: ['oidc', 'scopes'],
  })
  .refine(
    (c) =>
      !c.insecureCookies ||
      (/^(127\.\d+\.\d+\.\d+|::1|localhost)$/.test(c.listen.host) && c.publicUrl.startsWith('http://')),
    {
      message:
        'console.insecureCookies is for plain-http loopback tests only (listen.host 127.0.0.1, publicUrl http://)',
      path: ['insecureCookies'],
    },
  )
  .refine((c) => c.insecureCookies || c.publicUrl.startsWith('https://'), {
    message: 'console.publicUrl must be https:// (session cookies are Secure)',
    path: ['publicUrl'],
  });

const DECISION_POINT_NAME = /^[a-z0-9][a-z0-9._-]{0,63}$/;
const decisionPointName = z
  .string()
  .regex(
    DECISION_POINT_NAME,
    'decision point names are 1-64 characters of [a-z0-9._-], starting alphanumeric',
  );
/** Bound of one decision: small by default, an engine is asked on the issuance path. */
const pdpTimeoutMs = z.number().int().min(10).max(10_000).default(250);
const httpUrl = z
  .string()
  .url()
  .refine((u) => /^https?:\/\//.test(u), 'an http(s) URL')
  .transform((u) => u.replace(/\/+$/, ''));
// Header names as HTTP allows them; values are secrets (never logged) and must not break the line.
const pdpHeaders = z.record(
  z.string().regex(/^[A-Za-z0-9!#$%&'*+.^_`|~-]{1,128}$/, 'an HTTP header name'),
  z.string().regex(/^[\t\x20-\x7e]{0,8192}$/, 'printable ASCII'),
);
/** The policy version decisions are cached under (docs/policy-engines.md); absent: never cached. */
const pdpVersion = z.string().min(1).max(256).optional();

/** A decision point behind the templates (docs/policy-engines.md). */
export const DecisionPointSchema = z.discriminatedUnion('kind', [
  z
    .object({
      name: decisionPointName,
      kind: z.literal('opa'),
      /** OPA's base URL, e.g. `http://127.0.0.1:8181`. */
      url: httpUrl,
      /** The rule asked, under /v1/data, e.g. `taskpass/allow`. */
      path: z
        .string()
        .regex(/^[A-Za-z0-9_]+(\/[A-Za-z0-9_]+)*$/, 'a data path such as taskpass/allow (no leading slash)'),
      timeoutMs: pdpTimeoutMs,
      headers: pdpHeaders.optional(),
      version: pdpVersion,
    })
    .strict(),
  z
    .object({
      name: decisionPointName,
      kind: z.literal('authzen'),
      /** The PDP's base URL; requests go to `<url>/access/v1/evaluation`. */
      url: httpUrl,
      timeoutMs: pdpTimeoutMs,
      headers: pdpHeaders.optional(),
      /** A file holding a bearer token sent as `Authorization: Bearer …` (re-read on every call). */
      tokenFile: z.string().min(1).optional(),
      version: pdpVersion,
    })
    .strict(),
  z
    .object({
      name: decisionPointName,
      kind: z.literal('cedar'),
      /** A directory of `.cedar` policy files (hot-reloaded, all-or-nothing). */
      policies: z.string().min(1),
      /** A Cedar schema file the policies are validated against. */
      schema: z.string().min(1).optional(),
    })
    .strict(),
]);
export type DecisionPointConfig = z.output<typeof DecisionPointSchema>;

/** The configuration schema (exported for tests and `taskpass config check`). */
export const ConfigSchema = z
  .object({
    /** The broker's issuer URL: `iss` of every token and base of the RFC 8414 metadata. */
    issuer: z.string().url(),
    listen: z
      .object({
        host: z.string().default('0.0.0.0'),
        port: z.coerce.number().int().min(0).max(65535).default(8443),
      })
      .strict()
      .prefault({}),
    tls: z
      .object({
        /** `spiffe`: serve HTTPS with the broker's own X.509-SVID. `none`: plain HTTP, tests only. */
        mode: z.enum(['spiffe', 'none']).default('spiffe'),
        /** Refuse TLS connections without a client certificate (then JWT-SVID-only agents cannot connect). */
        requireClientCert: z.boolean().default(false),
      })
      .strict()
      .prefault({}),
    workloadApi: z
      .object({
        /** e.g. `unix:///run/spire/agent.sock`; default: SPIFFE_ENDPOINT_SOCKET. */
        address: z.string().min(1).optional(),
        /**
         * Serve the X.509-SVID with this hint (a workload may hold several SVIDs). Default: the
         * first SVID the Workload API sends. A hint that no SVID carries fails start-up.
         */
        hint: z.string().min(1).max(1024).optional(),
        timeoutMs: z.number().int().positive().default(15000),
      })
      .strict()
      .prefault({}),
    trustDomain: TrustDomainString,
    federatedTrustDomains: z.array(TrustDomainString).default([]),
    /** Which workloads count as agents (the /v1 task API). Empty lists: every ID in `trustDomain`. */
    agents: z
      .object({
        trustDomains: z.array(TrustDomainString).default([]),
        /** SPIFFE ID patterns: `*` one segment, `prefix*`, final `**`. */
        ids: z.array(SpiffeIdString).default([]),
      })
      .strict()
      .prefault({}),
    /** Audience a JWT-SVID must carry to authenticate to the broker; default: `issuer`. */
    jwtSvidAudience: z.string().min(1).optional(),
    /** SPIFFE IDs allowed on /admin. */
    admins: z.array(SpiffeIdString).default([]),
    users: z
      .object({ trustedIssuers: z.array(TrustedIssuer).default([]) })
      .strict()
      .prefault({}),
    policiesDir: z.string().min(1).default('policies'),
    /** Engines a template (`decision_point:`) or every call (`decisionPoint`) must also satisfy. */
    decisionPoints: z.array(DecisionPointSchema).max(16).default([]),
    /** The decision point every call a template allows must also pass; absent: only named ones. */
    decisionPoint: decisionPointName.optional(),
    /** Taskpass as an AuthZEN 1.0 PDP (/access/v1/evaluation[s]): who may ask. */
    authzen: z
      .object({
        /** SPIFFE IDs allowed to ask (exact). Empty: nobody; the discovery document stays public. */
        callers: z.array(SpiffeIdString).default([]),
      })
      .strict()
      .prefault({}),
    store: z
      .object({
        sqlite: z
          .object({
            path: z.string().min(1),
            /**
             * SQLite's page cache, MiB (per connection, in the broker's memory). The hot index pages
             * of a large store stay here (docs/performance.md "A growing store").
             */
            cacheMiB: z.number().int().min(2).max(16_384).default(64),
            /**
             * Bytes of the file read through mmap, MiB (0: off): reads of pages not in the cache are
             * memory accesses on the OS page cache instead of read() calls.
             */
            mmapMiB: z.number().int().min(0).max(1_048_576).default(1024),
            /**
             * Where WAL checkpoints run: `background` (a worker thread with its own connection, so
             * requests never wait for one) or `inline` (SQLite's automatic checkpoint, in the
             * COMMIT that crosses 1000 pages). docs/performance.md "Checkpoints off the event loop".
             */
            checkpoint: z.enum(['background', 'inline']).default('background'),
            /**
             * With background checkpoints: the WAL's size, MiB, past which the checkpoint thread
             * also starts it over (under steady load nothing else does). docs/performance.md.
             */
            walLimitMiB: z.number().int().min(1).max(65_536).default(64),
            /**
             * Where issued-call and decision records are committed: `thread` (a writer thread with
             * its own connection; the event loop never waits for the fsync) or `inline` (on the
             * event loop). Either way a token is answered only after its record is durable.
             */
            writer: z.enum(['thread', 'inline']).default('thread'),
          })
          .strict()
          .optional(),
        redis: z
          .object({
            url: z.string().min(1),
            keyPrefix: z.string().default('taskpass:'),
            /** Bound of every Redis call (and connection attempt): past it the request answers 503. */
            timeoutMs: z.number().int().min(50).max(60_000).default(2000),
          })
          .strict()
          .optional(),
      })
      .strict()
      .prefault({})
      .transform((s) =>
        s.sqlite || s.redis
          ? s
          : {
              sqlite: {
                path: 'taskpass.db',
                cacheMiB: 64,
                mmapMiB: 1024,
                writer: 'thread' as const,
                checkpoint: 'background' as const,
                walLimitMiB: 64,
              },
            },
      )
      .refine((s) => !(s.sqlite && s.redis), { message: 'choose one of store.sqlite or store.redis' }),
    tokens: z
      .object({
        /** Used when a template gives no ttl (session tokens). */
        defaultTtl: Duration.default(60),
        /** Hard cap on every token lifetime, whatever a template says. */
        maxTtl: Duration.default(300),
      })
      .strict()
      .prefault({}),
    keys: z
      .object({
        rotateEvery: Duration.default(86400),
        prepublish: Duration.default(3600),
        /** How long verifiers may cache the JWKS (its Cache-Control max-age; the verifier's default
         *  cache is 10 min). A key must be published at least this long before it signs. */
        jwksMaxAge: Duration.default(600),

        /**
         * Key-encryption keys (KEK ring `id:base64url,...`, first = current) that wrap the private
         * signing keys at rest. Prefer `kekFile` or the TASKPASS_KEK variable over a file in git.
         */
        kek: z
          .string()
          .min(1)
          .superRefine((v, ctx) => {
            try {
              parseKekRing(v);
            } catch (e) {
              ctx.addIssue({ code: 'custom', message: (e as Error).message });
            }
          })
          .optional(),
        /** File holding the KEK ring (e.g. a mounted secret). */
        kekFile: z.string().min(1).optional(),
        /** Store signing keys unencrypted when no KEK is configured (relaxes: keys readable from the store). */
        allowPlaintext: z.boolean().default(false),
      })
      .strict()
      .prefault({})
      .refine((k) => [k.kek, k.kekFile].filter((v) => v !== undefined).length <= 1, {
        message: 'choose one of keys.kek or keys.kekFile',
      })
      .refine((k) => !(k.allowPlaintext && (k.kek !== undefined || k.kekFile !== undefined)), {
        message: 'keys.allowPlaintext contradicts a configured KEK (keys.kek / keys.kekFile)',
      }),
    /**
     * Who signs tokens. `local`: the broker's own keys in its store (wrapped under `keys.kek`).
     * `vault-transit`: a Vault Transit key (ecdsa-p256) that never leaves Vault (docs/vault.md);
     * `keys.rotateEvery` / `keys.prepublish` still set the schedule, and `vault` must be configured.
     */
    signing: z
      .discriminatedUnion('kind', [
        z.object({ kind: z.literal('local') }).strict(),
        z
          .object({
            kind: z.literal('vault-transit'),
            /** Transit key name (created as ecdsa-p256 when missing). */
            key: z
              .string()
              .regex(/^[\w-][\w.-]*$/)
              .default('taskpass'),
            /** Transit mount. */
            mount: z
              .string()
              .regex(/^[\w-]+(\/[\w-]+)*$/)
              .default('transit'),
            /** Most signatures in one `batch_input` request. */
            maxBatch: z.number().int().min(1).max(1000).default(64),
            /** Signatures waiting at most; more are refused (TASKPASS_SIGNER_UNAVAILABLE). */
            maxQueue: z.number().int().min(1).max(100_000).default(1024),
          })
          .strict(),
      ])
      .prefault({ kind: 'local' }),
    /** HashiCorp Vault / OpenBao (docs/vault.md): the Transit signer and leased downstream credentials. */
    vault: z
      .object({
        address: z.string().url(),
        auth: z.discriminatedUnion('method', [
          z
            .object({
              /** Vault's JWT auth method with the broker's JWT-SVID (role bound to its SPIFFE ID). */
              method: z.literal('jwt'),
              role: z.string().min(1),
              mount: z.string().min(1).default('jwt'),
              /** Audience of the JWT-SVID (the role's `bound_audiences`). */
              audience: z.string().min(1).default('vault'),
            })
            .strict(),
          z
            .object({
              /** TLS cert auth with the broker's X.509-SVID. */
              method: z.literal('cert'),
              name: z.string().min(1).optional(),
              mount: z.string().min(1).default('cert'),
            })
            .strict(),
          z
            .object({
              /** Development only: a static token. */
              method: z.literal('token'),
              token: z.string().min(1),
            })
            .strict(),
        ]),
        /**
         * MCP servers that may exchange a call token for the Vault secret its tool rule names
         * (POST /v1/credentials): each SPIFFE ID with the resource URIs (token `aud`) it serves.
         * A caller gets a credential only for a token whose audience is listed for it. Empty: nobody.
         */
        credentialClients: z
          .array(
            z
              .object({
                spiffeId: SpiffeIdString,
                audiences: z.array(z.string().url()).min(1),
              })
              .strict(),
          )
          .max(1000)
          .default([]),
        /** CA certificate file (PEM) of Vault's TLS listener. */
        caFile: z.string().min(1).optional(),
        namespace: z.string().min(1).optional(),
        timeoutMs: z.number().int().min(100).max(60_000).default(5000),
      })
      .strict()
      .optional(),
    feed: z
      .object({
        heartbeatMs: z.number().int().min(100).default(5000),
        /** Who may read the revocation feed: `workloads` (any authenticated SPIFFE workload of a
         *  trusted trust domain), `agents` (the agent matcher), or `none` (unauthenticated). */
        auth: z.enum(['workloads', 'agents', 'none']).default('workloads'),
      })
      .strict()
      .prefault({}),
    /**
     * Per-caller request budgets (fixed one-minute windows). Each class has its own budget; with
     * the Redis store the counters live in the same Redis and are shared by every replica.
     */
    rateLimit: z
      .object({
        /** The agent API (/v1/tasks/**) and the token exchange (/oauth2/token), per agent SPIFFE ID. */
        perAgentPerMinute: z.number().int().positive().default(1200),
        /** Introspection and RFC 7009 revocation, per calling workload (verifiers introspect a lot). */
        perWorkloadPerMinute: z.number().int().positive().default(6000),
        /** The admin API, per administrator. */
        perAdminPerMinute: z.number().int().positive().default(600),
        /**
         * Token exchange requests that carry no header credential (no mTLS identity, no bearer
         * JWT-SVID; the actor comes later from the form), per client IP, counted before the form is read.
         */
        perIpPerMinute: z.number().int().positive().default(600),
        /**
         * How long a request waits for the shared (Redis) counter. No answer in time → 503
         * TASKPASS_RATE_LIMIT_UNAVAILABLE: the limiter fails closed.
         */
        redisTimeoutMs: z.number().int().min(10).max(10_000).default(500),
      })
      .strict()
      .prefault({}),
    introspection: z
      .object({
        /** Let callers consume single-use tokens with `consume=true` on /oauth2/introspect. */
        allowConsume: z.boolean().default(true),
      })
      .strict()
      .prefault({}),
    audit: z
      .object({
        /** `log` (the broker log, `audit: true`), `stdout`, `stderr`, or a file path. */
        destination: z.string().min(1).default('log'),
        /** How long the store keeps decision records (the console's timelines); swept after. */
        retention: Duration.default(30 * 86400),
      })
      .strict()
      .prefault({}),
    /** Approvals (docs/approvals.md): people deciding calls that templates mark "not without a human". */
    approvals: z
      .object({
        /**
         * The audience an approver's own token must be minted for. It must differ from every
         * trusted issuer's user-token audience: the agent holds the delegating user's token, and a
         * token it holds must never be able to approve.
         */
        audience: z.string().min(1).max(1024).default('taskpass-approvals'),
        /**
         * Where an approver opens an approval: a URL template with `{id}`, e.g.
         * `https://console.example/approvals/{id}`. Default: `<issuer>/v1/approvals/{id}`.
         */
        url: z
          .string()
          .refine(
            (s) => s.includes('{id}') && URL.canParse(s.replaceAll('{id}', 'apr_x')),
            'an absolute URL template containing {id}',
          )
          .optional(),
      })
      .strict()
      .prefault({}),
    /** The web console; absent: no console listener. */
    console: ConsoleSchema.optional(),
    /**
     * SQLite store: open tasks and their workflow counters held in memory so that issuing a token
     * reads nothing from the store (docs/performance.md). Most tasks held; 0 turns it off. Not
     * used with Redis (other replicas write).
     */
    openTaskCache: z.number().int().min(0).max(10_000_000).default(20_000),
    /** How often expired tasks, replay entries and stale revocations are dropped from the store. */
    sweepEvery: Duration.default(60),
    /**
     * Broker processes (node:cluster) sharing the listening ports, one per core: a number, or
     * `auto` for the machine's available parallelism. More than one needs the Redis store.
     */
    workers: z
      .union([z.literal('auto'), z.number().int().min(1).max(256)])
      .default(1)
      .transform((w) => (w === 'auto' ? availableParallelism() : w)),
    /** Ceiling on every request body; each route has a smaller limit of its own (request-boundary.ts). */
    bodyLimit: z.number().int().min(1024).max(10_485_760).default(65536),
    logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
  })
  .strict()
  .refine((c) => c.keys.prepublish < c.keys.rotateEvery, {
    message: 'keys.prepublish must be shorter than keys.rotateEvery',
    path: ['keys', 'prepublish'],
  })
  .refine((c) => c.signing.kind !== 'vault-transit' || c.vault !== undefined, {
    message: 'signing.kind vault-transit needs the vault section (address, auth)',
    path: ['vault'],
  })
  .superRefine((c, ctx) => {
    // A verifier holding a JWKS fetched just before a key was published would meet tokens of that
    // key before its cache expires (TASKPASS_VERIFY_UNKNOWN_KID after every rotation).
    if (c.keys.prepublish < c.keys.jwksMaxAge) {
      ctx.addIssue({
        code: 'custom',
        path: ['keys', 'prepublish'],
        message:
          `keys.prepublish (${c.keys.prepublish}s) is shorter than keys.jwksMaxAge (${c.keys.jwksMaxAge}s), ` +
          'the JWKS cache lifetime announced to verifiers: they would meet tokens of a key they have not ' +
          'loaded. Raise keys.prepublish or lower keys.jwksMaxAge',
      });
    }
  })
  .superRefine((c, ctx) => {
    for (const [i, t] of c.users.trustedIssuers.entries()) {
      const auds = typeof t.audience === 'string' ? [t.audience] : t.audience;
      if (auds.includes(c.approvals.audience)) {
        ctx.addIssue({
          code: 'custom',
          path: ['approvals', 'audience'],
          message: `approvals.audience "${c.approvals.audience}" is also the user-token audience of users.trustedIssuers[${i}]: a delegation token the agent holds could then approve; mint approver tokens for a distinct audience`,
        });
      }
    }
  })
  .superRefine((c, ctx) => {
    // The console's ID tokens must never double as delegation tokens (the agent holds those) nor
    // as approver tokens: its client id must be an audience of its own.
    const oidc = c.console?.oidc;
    if (!oidc) return;
    const taken = new Set([c.approvals.audience]);
    for (const t of c.users.trustedIssuers) for (const a of [t.audience].flat()) taken.add(a);
    if (taken.has(oidc.clientId)) {
      ctx.addIssue({
        code: 'custom',
        path: ['console', 'oidc', 'clientId'],
        message: `console.oidc.clientId "${oidc.clientId}" is also a user-token or approvals audience; give the console a client id of its own`,
      });
    }
    if (c.console && c.console.listen.port === c.listen.port && c.console.listen.port !== 0) {
      ctx.addIssue({
        code: 'custom',
        path: ['console', 'listen', 'port'],
        message: "the console needs its own port, apart from the agents' API (listen.port)",
      });
    }
  })
  .superRefine((c, ctx) => {
    const names = new Set<string>();
    for (const [i, dp] of c.decisionPoints.entries()) {
      if (names.has(dp.name)) {
        ctx.addIssue({
          code: 'custom',
          path: ['decisionPoints', i, 'name'],
          message: `decision point "${dp.name}" is configured twice`,
        });
      }
      names.add(dp.name);
    }
    if (c.decisionPoint !== undefined && !names.has(c.decisionPoint)) {
      ctx.addIssue({
        code: 'custom',
        path: ['decisionPoint'],
        message: `no decision point is named "${c.decisionPoint}" (decisionPoints: ${[...names].join(', ') || 'none'})`,
      });
    }
  })
  .superRefine((c, ctx) => {
    // One SQLite file has one writer: several processes would wait on each other's lock inside
    // the event loop, each would hold open-task counters the others change, and the revocation
    // events the feed streams are emitted in the process that wrote them (docs/decisions.md).
    if (c.workers > 1 && c.store.sqlite) {
      ctx.addIssue({
        code: 'custom',
        path: ['workers'],
        message:
          `${c.workers} processes need the Redis store: a SQLite file has one writer (the processes would ` +
          "block each other's event loops on its lock, and each would count open tasks' calls the " +
          'others also record), and its revocation events stay in the process that wrote them, so ' +
          'feed subscribers of the other workers would not hear of a revocation. Configure store.redis ' +
          '(shared by every worker and replica), or keep workers: 1',
      });
    }
  })
  .refine((c) => c.tokens.defaultTtl <= c.tokens.maxTtl, {
    message: 'tokens.defaultTtl must not exceed tokens.maxTtl',
    path: ['tokens', 'defaultTtl'],
  })
  .transform((c) => ({ ...c, jwtSvidAudience: c.jwtSvidAudience ?? c.issuer }));

/** The validated, frozen broker configuration. Durations are in seconds. */
export type BrokerConfig = Readonly<z.output<typeof ConfigSchema>>;
/** What a configuration file may contain (durations as `60s` strings or seconds). */
export type BrokerConfigInput = z.input<typeof ConfigSchema>;
/** One trusted user-token issuer. */
export type TrustedIssuerConfig = BrokerConfig['users']['trustedIssuers'][number];

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object' && !Object.isFrozen(o)) {
    Object.freeze(o);
    for (const v of Object.values(o)) deepFreeze(v);
  }
  return o;
}

/** Validates a raw configuration object and returns it frozen; throws TASKPASS_CONFIG_INVALID. */
export function parseConfig(raw: unknown, source = 'configuration'): BrokerConfig {
  const r = ConfigSchema.safeParse(raw);
  if (!r.success) {
    const issues = r.error.issues.map((i) => ({
      path: i.path.map(String).join('.') || '(root)',
      message: i.message,
    }));
    throw new BrokerError(
      'TASKPASS_CONFIG_INVALID',
      `${source} is invalid: ${issues.map((i) => `${i.path}: ${i.message}`).join('; ')}`,
      { issues },
    );
  }
  return deepFreeze(r.data);
}

type Json = Record<string, unknown>;

function setPath(o: Json, path: readonly string[], value: unknown): void {
  let cur = o;
  for (const k of path.slice(0, -1)) {
    const next = cur[k];
    if (next === null || typeof next !== 'object' || Array.isArray(next)) cur[k] = {};
    cur = cur[k] as Json;
  }
  cur[path[path.length - 1]!] = value;
}

const list = (s: string): string[] =>
  s
    .split(',')
    .map((x) => x.trim())
    .filter(Boolean);
const bool = (s: string): boolean | string =>
  s === 'true' || s === '1' ? true : s === 'false' || s === '0' ? false : s;
const int = (s: string): number | string => (/^\d+$/.test(s) ? Number(s) : s);

/** Environment variables and the configuration field each one sets (env wins over the file). */
export const ENV_VARS: Readonly<Record<string, { path: readonly string[]; conv?: (s: string) => unknown }>> =
  {
    TASKPASS_ISSUER: { path: ['issuer'] },
    TASKPASS_LISTEN_HOST: { path: ['listen', 'host'] },
    TASKPASS_LISTEN_PORT: { path: ['listen', 'port'], conv: int },
    TASKPASS_TLS_MODE: { path: ['tls', 'mode'] },
    TASKPASS_TLS_REQUIRE_CLIENT_CERT: { path: ['tls', 'requireClientCert'], conv: bool },
    TASKPASS_WORKLOAD_API_ADDRESS: { path: ['workloadApi', 'address'] },
    TASKPASS_WORKLOAD_API_HINT: { path: ['workloadApi', 'hint'] },
    TASKPASS_TRUST_DOMAIN: { path: ['trustDomain'] },
    TASKPASS_FEDERATED_TRUST_DOMAINS: { path: ['federatedTrustDomains'], conv: list },
    TASKPASS_AGENT_IDS: { path: ['agents', 'ids'], conv: list },
    TASKPASS_JWT_SVID_AUDIENCE: { path: ['jwtSvidAudience'] },
    TASKPASS_ADMINS: { path: ['admins'], conv: list },
    TASKPASS_POLICIES_DIR: { path: ['policiesDir'] },
    TASKPASS_DECISION_POINT: { path: ['decisionPoint'] },
    TASKPASS_AUTHZEN_CALLERS: { path: ['authzen', 'callers'], conv: list },
    TASKPASS_STORE_SQLITE_PATH: { path: ['store', 'sqlite', 'path'] },
    TASKPASS_STORE_REDIS_URL: { path: ['store', 'redis', 'url'] },
    TASKPASS_STORE_REDIS_KEY_PREFIX: { path: ['store', 'redis', 'keyPrefix'] },
    TASKPASS_STORE_REDIS_TIMEOUT_MS: { path: ['store', 'redis', 'timeoutMs'], conv: int },
    TASKPASS_FEED_AUTH: { path: ['feed', 'auth'] },
    TASKPASS_RATE_LIMIT_PER_AGENT_PER_MINUTE: { path: ['rateLimit', 'perAgentPerMinute'], conv: int },
    TASKPASS_RATE_LIMIT_PER_WORKLOAD_PER_MINUTE: { path: ['rateLimit', 'perWorkloadPerMinute'], conv: int },
    TASKPASS_RATE_LIMIT_PER_ADMIN_PER_MINUTE: { path: ['rateLimit', 'perAdminPerMinute'], conv: int },
    TASKPASS_RATE_LIMIT_PER_IP_PER_MINUTE: { path: ['rateLimit', 'perIpPerMinute'], conv: int },
    TASKPASS_AUDIT_DESTINATION: { path: ['audit', 'destination'] },
    TASKPASS_AUDIT_RETENTION: { path: ['audit', 'retention'] },
    TASKPASS_APPROVALS_AUDIENCE: { path: ['approvals', 'audience'] },
    TASKPASS_APPROVALS_URL: { path: ['approvals', 'url'] },
    TASKPASS_SWEEP_EVERY: { path: ['sweepEvery'] },
    TASKPASS_WORKERS: { path: ['workers'], conv: int },
    TASKPASS_BODY_LIMIT: { path: ['bodyLimit'], conv: int },
    TASKPASS_LOG_LEVEL: { path: ['logLevel'] },
    TASKPASS_KEK: { path: ['keys', 'kek'] },
    TASKPASS_KEK_FILE: { path: ['keys', 'kekFile'] },
    TASKPASS_KEYS_ALLOW_PLAINTEXT: { path: ['keys', 'allowPlaintext'], conv: bool },
  };

/**
 * Loads the configuration: the file named by `--config <path>` (or TASKPASS_CONFIG; YAML or JSON),
 * then TASKPASS_* environment variables on top, then validation. Throws TASKPASS_CONFIG_INVALID.
 */
export function loadConfig(
  opts: { argv?: readonly string[]; env?: NodeJS.ProcessEnv; file?: string } = {},
): BrokerConfig {
  const { raw, source } = loadConfigInput(opts);
  return parseConfig(raw, source);
}

/**
 * What {@link loadConfig} validates: the file's contents with the environment on top, and where it
 * came from. `taskpass serve --workers N` hands this to its workers, so that every worker (and a
 * restarted one) parses what the primary validated, not the file as it may read later.
 */
export function loadConfigInput(
  opts: { argv?: readonly string[]; env?: NodeJS.ProcessEnv; file?: string } = {},
): { raw: Record<string, unknown>; source: string } {
  const env = opts.env ?? process.env;
  let file = opts.file;
  if (!file && opts.argv) {
    const { values } = parseArgs({
      args: [...opts.argv],
      options: { config: { type: 'string', short: 'c' } },
      strict: false,
      allowPositionals: true,
    });
    if (typeof values.config === 'string') file = values.config;
  }
  file ??= env.TASKPASS_CONFIG;
  let raw: Json = {};
  if (file) {
    let text: string;
    try {
      text = readFileSync(file, 'utf8');
    } catch (e) {
      throw new BrokerError(
        'TASKPASS_CONFIG_INVALID',
        `cannot read configuration file ${file}: ${(e as Error).message}`,
        {
          file,
        },
      );
    }
    let parsed: unknown;
    try {
      parsed = file.endsWith('.json') ? JSON.parse(text) : parseYaml(text);
    } catch (e) {
      throw new BrokerError('TASKPASS_CONFIG_INVALID', `cannot parse ${file}: ${(e as Error).message}`, {
        file,
      });
    }
    if (parsed !== null && parsed !== undefined) {
      if (typeof parsed !== 'object' || Array.isArray(parsed)) {
        throw new BrokerError('TASKPASS_CONFIG_INVALID', `${file} must contain a mapping at the top level`, {
          file,
        });
      }
      raw = parsed as Json;
    }
  }
  for (const [name, spec] of Object.entries(ENV_VARS)) {
    const v = env[name];
    if (v === undefined || v === '') continue;
    setPath(raw, spec.path, spec.conv ? spec.conv(v) : v);
  }
  return { raw, source: file ?? 'configuration' };
}
