// The guard's configuration: one strict zod schema, loaded from a YAML or JSON file and validated at
// start, so a typo fails the start with the path of the field instead of loosening enforcement.
import { readFileSync } from 'node:fs';
import { isIP } from 'node:net';
import { dirname, resolve } from 'node:path';
import { ACTIONS, compileResourceTemplate } from '@taskpass/contract';
import { SpiffeId, TrustDomain } from '@taskpass/spiffe';
import { z } from 'zod';
import { issuesOf, parsedBy, readConfigFile } from '../config-file.ts';
import { GuardError } from './errors.ts';

const httpUrl = z.url({ protocol: /^https?$/ });

const spiffeId = parsedBy((v) => SpiffeId.parse(v), 'not a SPIFFE ID (spiffe://trust-domain/path)');

const trustDomain = parsedBy((v) => TrustDomain.parse(v), 'not a trust domain name');

const resourceTemplate = parsedBy(compileResourceTemplate, 'not a resource template (e.g. notes/{note_id})');

const UpstreamSchema = z
  .strictObject({
    /** A Streamable HTTP MCP endpoint, e.g. http://127.0.0.1:9000/mcp. */
    url: httpUrl.optional(),
    /** Or a stdio MCP server the guard launches: argv, no shell. */
    command: z.array(z.string().min(1)).min(1).optional(),
    env: z.record(z.string(), z.string()).optional(),
    cwd: z.string().min(1).optional(),
    /** Longest wait for the upstream's answer to start (HTTP) or arrive (stdio). */
    timeoutMs: z.number().int().min(1).max(600_000).default(30_000),
    /** How long start-up waits for the upstream to answer tools/list. */
    startTimeoutMs: z.number().int().min(1).max(600_000).default(15_000),
    /** File holding the shared secret sent as Taskpass-Guard-Secret (or TASKPASS_GUARD_SECRET_FILE). */
    secretFile: z.string().min(1).optional(),
  })
  .refine((u) => (u.url === undefined) !== (u.command === undefined), {
    message: 'give exactly one of url (Streamable HTTP) and command (stdio)',
  });

const ToolSchema = z.strictObject({
  resource: resourceTemplate,
  action: z.enum(ACTIONS),
});

export const GuardConfigSchema = z.strictObject({
  listen: z
    .strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      port: z.number().int().min(0).max(65_535).default(8445),
    })
    .default({ host: '127.0.0.1', port: 8445 }),
  /** The Workload API serving the guard's own X.509-SVID (default SPIFFE_ENDPOINT_SOCKET). */
  workloadApi: z
    .strictObject({ address: z.string().min(1).optional(), hint: z.string().min(1).optional() })
    .default({}),
  /** Clients from these trust domains may connect (the token then decides). Default: the guard's own. */
  clientTrustDomains: z.array(trustDomain).min(1).optional(),
  /** This resource's canonical URI: the `aud` of the tokens it accepts; its path is the MCP endpoint. */
  audience: httpUrl,
  broker: z.strictObject({
    /** Where the broker is reached (JWKS, revocation feed). */
    url: httpUrl,
    /** The broker's `iss`; default `url`. */
    issuer: httpUrl.optional(),
    /** The broker's SPIFFE ID: its TLS certificate must name it. */
    id: spiffeId,
  }),
  upstream: UpstreamSchema,
  /** Tool declarations; tools not declared here are learned from the upstream's tools/list hints. */
  tools: z.record(z.string().min(1), ToolSchema).default({}),
  /** Learn undeclared tools from the upstream's `_meta` "dev.taskpass/*" hints (default true). */
  learnTools: z.boolean().default(true),
  /** Where spent single-use jtis are kept: in memory (default), or Redis shared by guard replicas. */
  replay: z
    .strictObject({
      redis: z.strictObject({ url: z.string().min(1), keyPrefix: z.string().min(1).optional() }),
    })
    .optional(),
  requireMcpHeaders: z.boolean().default(false),
  /** Every token must be bound to the client certificate of the connection (default true). */
  requireCertificateBinding: z.boolean().default(true),
  staleness: z
    .strictObject({
      maxFeedAgeMs: z.number().int().min(1).optional(),
      readsWhenStale: z.enum(['allow', 'deny']).optional(),
    })
    .optional(),
  /** Largest request body, bytes (default the verifier's 1 MiB). */
  maxBodyBytes: z.number().int().min(1).optional(),
  /** Wait this long for the first revocation snapshot before serving. */
  feedReadyTimeoutMs: z.number().int().min(1).default(10_000),
  /** A plain-HTTP listener for /metrics, /healthz and /readyz (keep it on loopback or a private network). */
  admin: z
    .strictObject({
      host: z.string().min(1).default('127.0.0.1'),
      port: z.number().int().min(0).max(65_535),
    })
    .optional(),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});

/** The validated configuration, plus the shared secret read from its file. */
export type GuardConfig = z.infer<typeof GuardConfigSchema> & {
  /** The Taskpass-Guard-Secret value, when configured (never logged). */
  secret?: string | undefined;
};

/** The raw configuration as written (before defaults). */
export type GuardConfigInput = z.input<typeof GuardConfigSchema>;

const MIN_SECRET_LENGTH = 16;

function invalid(message: string): GuardError {
  return new GuardError('TASKPASS_GUARD_CONFIG_INVALID', message);
}

/** Is this URL host a loopback address (or `localhost`)? */
export function isLoopbackHost(host: string): boolean {
  const h = host.replace(/^\[|\]$/g, '');
  if (h === 'localhost') return true;
  if (isIP(h) === 4) return h.startsWith('127.');
  return h === '::1';
}

/**
 * Validates a configuration object. `source` names it in errors (`guard.yaml: upstream.url: …`);
 * `baseDir` resolves a relative `upstream.secretFile`. Throws TASKPASS_GUARD_CONFIG_INVALID.
 *
 * @example
 * ```ts
 * const config = parseGuardConfig({ audience, broker: { url, id }, upstream: { url: 'http://127.0.0.1:9000/mcp' } });
 * ```
 */
export function parseGuardConfig(
  raw: unknown,
  source = 'guard configuration',
  opts: { baseDir?: string; env?: NodeJS.ProcessEnv } = {},
): GuardConfig {
  const r = GuardConfigSchema.safeParse(raw);
  if (!r.success) {
    throw invalid(`${source} is invalid: ${issuesOf(r.error)}`);
  }
  const config: GuardConfig = r.data;
  const env = opts.env ?? process.env;
  const secretFile = config.upstream.secretFile ?? env.TASKPASS_GUARD_SECRET_FILE;
  if (secretFile) {
    const path = resolve(opts.baseDir ?? process.cwd(), secretFile);
    let secret: string;
    try {
      secret = readFileSync(path, 'utf8').trim();
    } catch (e) {
      throw invalid(`${source}: upstream.secretFile: cannot read ${path}: ${(e as Error).message}`);
    }
    if (secret.length < MIN_SECRET_LENGTH || /[^\x21-\x7e]/.test(secret)) {
      throw invalid(
        `${source}: upstream.secretFile: the secret must be at least ${MIN_SECRET_LENGTH} printable ASCII characters`,
      );
    }
    config.secret = secret;
  }
  // Fail closed: identity headers crossing a network are believable only with the shared secret.
  if (config.upstream.url && !config.secret && !isLoopbackHost(new URL(config.upstream.url).hostname)) {
    throw invalid(
      `${source}: upstream.secretFile: an upstream that is not on loopback needs the shared secret (Taskpass-Guard-Secret)`,
    );
  }
  const audiencePath = new URL(config.audience).pathname;
  if (audiencePath === '/' || audiencePath === '') {
    throw invalid(`${source}: audience: the resource URI needs a path (the MCP endpoint, e.g. /mcp)`);
  }
  return config;
}

/**
 * Loads and validates a YAML or JSON configuration file (JSON when it ends in `.json`).
 *
 * @example
 * ```ts
 * const config = loadGuardConfig('guard.yaml');
 * ```
 */
export function loadGuardConfig(file: string, env: NodeJS.ProcessEnv = process.env): GuardConfig {
  const raw = readConfigFile(file, invalid);
  return parseGuardConfig(raw, file, { baseDir: dirname(resolve(file)), env });
}

/** An example configuration (printed by `taskpass-proxy guard --print-config`). */
export const EXAMPLE_CONFIG = `# taskpass guard: an enforcing reverse proxy in front of an MCP server.
listen: { host: 0.0.0.0, port: 8445 }          # HTTPS with mTLS (the guard's own X.509-SVID)
workloadApi: { hint: notes }                    # address: default $SPIFFE_ENDPOINT_SOCKET
clientTrustDomains: [taskpass.local]            # default: the guard's own trust domain
audience: https://notes.example.com/mcp         # token aud; its path is the MCP endpoint
broker:
  url: https://broker.example.com:8443
  issuer: https://broker.example.com:8443       # default: url
  id: spiffe://taskpass.local/broker
upstream:
  url: http://127.0.0.1:9000/mcp                # Streamable HTTP; or
  # command: [python, -m, notes_server]         # a stdio server the guard launches
  timeoutMs: 30000
  secretFile: /run/secrets/taskpass-guard       # sent as Taskpass-Guard-Secret
tools:                                          # optional; others are learned from tools/list
  read_note: { resource: "notes/{note_id}", action: read }
  delete_note: { resource: "notes/{note_id}", action: write }
learnTools: true
# replay: { redis: { url: redis://127.0.0.1:6379, keyPrefix: "guard:notes:" } }
requireMcpHeaders: false
requireCertificateBinding: true
admin: { host: 127.0.0.1, port: 9465 }          # /metrics, /healthz, /readyz over plain HTTP
logLevel: info
`;
