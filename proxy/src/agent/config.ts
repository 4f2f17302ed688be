// The agent-side proxy's configuration: one strict zod schema, loaded from a YAML or JSON file and
// validated at start, so a typo fails the start with the file and the field instead of running with
// a looser setting than the person meant.
import { homedir } from 'node:os';
import { dirname, isAbsolute, resolve } from 'node:path';
import { ACTIONS, compileResourceTemplate } from '@taskpass/contract';
import { SpiffeId } from '@taskpass/spiffe';
import { z } from 'zod';
import { issuesOf, parsedBy, readConfigFile } from '../config-file.ts';
import { isLoopbackHost } from '../guard/config.ts';
import { ProxyError } from './errors.ts';

const httpUrl = z.url({ protocol: /^https?$/ });
const httpsUrl = z.url({ protocol: /^https$/ });

// http only on loopback (a local IdP or broker in development); anything that crosses a network is https.
const secureUrl = httpUrl.refine(
  (v) => {
    const u = new URL(v);
    return u.protocol === 'https:' || isLoopbackHost(u.hostname);
  },
  { message: 'must be https (plain http only on loopback)' },
);

const spiffeId = parsedBy((v) => SpiffeId.parse(v), 'not a SPIFFE ID (spiffe://trust-domain/path)');

const resourceTemplate = parsedBy(
  compileResourceTemplate,
  'not a resource template (e.g. tickets/{ticket_id})',
);

const ToolSchema = z.strictObject({
  resource: resourceTemplate,
  action: z.enum(ACTIONS),
  /** Bind the token to the call's exact arguments (args_sha256). */
  bindArgs: z.boolean().optional(),
});

// MCP tool names: letters, digits, `_`, `-`, `.`, `/` (the prefix is part of the exposed name).
const TOOL_NAME_CHARS = /^[A-Za-z0-9_.\-/]*$/;

const UpstreamSchema = z.strictObject({
  /** The upstream's Streamable HTTP MCP endpoint (mTLS with the agent's X.509-SVID). */
  url: httpsUrl,
  /** Its SPIFFE ID: its TLS certificate must name it. */
  spiffeId,
  /** Its resource URI as the broker's templates name it (the token `aud`). Default `url`. */
  audience: httpUrl.optional(),
  /** Put before each of its tool names; default none with one upstream, `<name>.` with several. */
  prefix: z.string().max(64).regex(TOOL_NAME_CHARS, 'only letters, digits and _ - . /').optional(),
  /** Resource mappers and action classes by (upstream) tool name; others come from server hints. */
  tools: z.record(z.string().min(1), ToolSchema).default({}),
  /** Use the resource/action hints the server publishes in tools/list (default true). */
  useServerHints: z.boolean().default(true),
});

const OidcDeviceSchema = z.strictObject({
  /** The OIDC issuer; its discovery document names the device authorization endpoint. */
  issuer: secureUrl,
  clientId: z.string().min(1),
  scope: z.string().min(1).default('openid profile email'),
  /** Which token of the answer is the user token the broker verifies. Default the ID token. */
  token: z.enum(['id_token', 'access_token']).default('id_token'),
  /** Give up the login after this long (default: the device code's own expiry). */
  timeoutMs: z.number().int().min(1).optional(),
});

const UserSchema = z
  .strictObject({
    /** A file holding the user's token (re-read whenever a task is opened). */
    tokenFile: z.string().min(1).optional(),
    /** An environment variable holding it. */
    tokenEnv: z.string().min(1).optional(),
    /** An OIDC device login (RFC 8628): the URL and code are printed on stderr. */
    oidc: OidcDeviceSchema.optional(),
    /** No user: an autonomous task, if the broker's templates allow the agent one. */
    autonomous: z.literal(true).optional(),
  })
  .refine(
    (u) => [u.tokenFile, u.tokenEnv, u.oidc, u.autonomous].filter((v) => v !== undefined).length === 1,
    {
      message: 'give exactly one of tokenFile, tokenEnv, oidc and autonomous: true',
    },
  );

const HttpSchema = z.strictObject({
  /** Loopback only: the proxy holds the user's task, so it must not be reachable from the network. */
  host: z.string().min(1).default('127.0.0.1').refine(isLoopbackHost, {
    message: 'the proxy listens on loopback only (127.0.0.1, ::1 or localhost)',
  }),
  port: z.number().int().min(0).max(65_535).default(8765),
  path: z.string().startsWith('/').default('/mcp'),
  /** Browser origins allowed to call (requests with any other Origin are refused). Default none. */
  allowedOrigins: z.array(z.url()).default([]),
});

export const ProxyConfigSchema = z.strictObject({
  /** The task's purpose, as the broker records it and approvers see it. */
  purpose: z.string().min(1).max(500),
  /** Requested task lifetime (the templates' max_task_ttl may cut it). */
  ttlSeconds: z.number().int().min(1).optional(),
  broker: z.strictObject({
    url: secureUrl,
    /** The broker's SPIFFE ID: its TLS certificate must name it. */
    id: spiffeId,
  }),
  /** Where the agent's X.509-SVID comes from (default SPIFFE_ENDPOINT_SOCKET; hint picks the entry). */
  workloadApi: z
    .strictObject({ address: z.string().min(1).optional(), hint: z.string().min(1).optional() })
    .default({}),
  user: UserSchema,
  upstreams: z
    .record(
      z.string().regex(/^[A-Za-z0-9_-]+$/, 'upstream names are letters, digits, _ and -'),
      UpstreamSchema,
    )
    .refine((u) => Object.keys(u).length > 0, { message: 'configure at least one upstream MCP server' }),
  approvals: z
    .strictObject({
      /** wait: the call blocks until a person decides; fail: the host gets the approval URL at once. */
      mode: z.enum(['wait', 'fail']).default('fail'),
      /** How long a call waits for a decision (wait mode). */
      timeoutMs: z
        .number()
        .int()
        .min(1)
        .default(10 * 60_000),
    })
    .default({ mode: 'fail', timeoutMs: 10 * 60_000 }),
  /** The task is completed after this long without a call; the next request opens a new one. */
  idleTimeoutMs: z
    .number()
    .int()
    .min(1)
    .default(15 * 60_000),
  /** Longest wait for an upstream's answer to one tools/call (approval waits come on top). */
  callTimeoutMs: z.number().int().min(1).default(60_000),
  /** Serve MCP over Streamable HTTP on loopback instead of stdio. */
  http: HttpSchema.optional(),
  logLevel: z.enum(['fatal', 'error', 'warn', 'info', 'debug', 'trace', 'silent']).default('info'),
});

export type ProxyConfigInput = z.input<typeof ProxyConfigSchema>;

/** One upstream, validated, with its name and the prefix it exposes tools under. */
export interface ProxyUpstreamConfig extends z.infer<typeof UpstreamSchema> {
  name: string;
  prefix: string;
  audience: string;
}

/** The validated configuration; relative paths are resolved against the file's directory. */
export type ProxyConfig = Omit<z.infer<typeof ProxyConfigSchema>, 'upstreams'> & {
  upstreams: ProxyUpstreamConfig[];
};

function invalid(message: string): ProxyError {
  return new ProxyError('TASKPASS_PROXY_CONFIG_INVALID', message);
}

function expandPath(p: string, baseDir: string): string {
  if (p === '~' || p.startsWith('~/')) return resolve(homedir(), p.slice(2));
  return isAbsolute(p) ? p : resolve(baseDir, p);
}

/**
 * Validates a configuration object. `source` names it in errors (`proxy.yaml: upstreams.tickets.url: …`);
 * `baseDir` resolves a relative `user.tokenFile`. Throws TASKPASS_PROXY_CONFIG_INVALID.
 *
 * @example
 * ```ts
 * const config = parseProxyConfig({ purpose, broker: { url, id }, user: { tokenEnv: 'ID_TOKEN' }, upstreams: { tickets: { url, spiffeId } } });
 * ```
 */
export function parseProxyConfig(
  raw: unknown,
  source = 'proxy configuration',
  opts: { baseDir?: string } = {},
): ProxyConfig {
  const r = ProxyConfigSchema.safeParse(raw);
  if (!r.success) {
    throw invalid(`${source} is invalid: ${issuesOf(r.error)}`);
  }
  const { upstreams, ...rest } = r.data;
  const names = Object.keys(upstreams);
  const list: ProxyUpstreamConfig[] = names.map((name) => {
    const u = upstreams[name]!;
    return {
      ...u,
      name,
      audience: u.audience ?? u.url,
      prefix: u.prefix ?? (names.length > 1 ? `${name}.` : ''),
    };
  });
  // With several upstreams an empty prefix would let two servers claim one name; the exposed names
  // are checked again once the tools are listed (tools.ts), this catches the certain cases early.
  const seen = new Map<string, string>();
  for (const u of list) {
    const other = seen.get(u.prefix);
    if (other !== undefined) {
      throw invalid(
        `${source}: upstreams.${u.name}.prefix: "${u.prefix}" is also the prefix of upstreams.${other}`,
      );
    }
    seen.set(u.prefix, u.name);
  }
  const user = rest.user.tokenFile
    ? { ...rest.user, tokenFile: expandPath(rest.user.tokenFile, opts.baseDir ?? process.cwd()) }
    : rest.user;
  return { ...rest, user, upstreams: list };
}

/**
 * Loads and validates a YAML or JSON configuration file (JSON when it ends in `.json`).
 *
 * @example
 * ```ts
 * const config = loadProxyConfig('proxy.yaml');
 * ```
 */
export function loadProxyConfig(file: string): ProxyConfig {
  const raw = readConfigFile(file, invalid);
  return parseProxyConfig(raw, file, { baseDir: dirname(resolve(file)) });
}

/** An example proxy.yaml (printed by `taskpass proxy --print-config yaml`). */
export const EXAMPLE_PROXY_CONFIG = `# taskpass proxy: an MCP host talks to this proxy as if it were the MCP server; every tools/call
# it forwards carries a fresh Taskpass call token for the task below.
purpose: "Support work on the ticket desk"      # the task's purpose (approvers see it)
# ttlSeconds: 900                               # requested task lifetime
broker:
  url: https://broker.example.com:8443
  id: spiffe://taskpass.local/broker            # the broker's TLS certificate must name it
workloadApi: { hint: agent }                    # address: default $SPIFFE_ENDPOINT_SOCKET
user:
  tokenFile: ~/.config/taskpass/id-token        # or tokenEnv: TASKPASS_USER_TOKEN
  # oidc: { issuer: https://idp.example.com, clientId: taskpass-proxy }   # device login on stderr
  # autonomous: true                            # no user, if the templates allow it
upstreams:
  tickets:
    url: https://tickets.example.com/mcp        # Streamable HTTP over mTLS with the agent's SVID
    spiffeId: spiffe://taskpass.local/tickets   # its TLS certificate must name it
    audience: https://tickets.taskpass.local/mcp # token aud (default: url)
    # prefix: "tickets."                        # default: none with one upstream, "<name>." with several
    tools:                                      # optional; others use the server's published hints
      get_ticket: { resource: "tickets/{ticket_id}", action: read }
approvals: { mode: fail, timeoutMs: 600000 }    # wait: the call blocks until a person decides
idleTimeoutMs: 900000                           # complete the task after 15 min without calls
callTimeoutMs: 60000
# http: { host: 127.0.0.1, port: 8765, path: /mcp }   # Streamable HTTP on loopback instead of stdio
logLevel: info                                  # JSON logs on stderr, never tokens
`;

/** Hosts `--print-config` knows. */
export const CONFIG_HOSTS = ['claude-desktop', 'vscode', 'cursor', 'stdio', 'yaml'] as const;
export type ConfigHost = (typeof CONFIG_HOSTS)[number];

/** What `--print-config <host>` prints: where it goes (a hint for people) and the text to paste. */
export interface HostConfig {
  where: string;
  text: string;
}

/**
 * A ready-to-paste host configuration that launches the proxy over stdio (`yaml`: an example
 * proxy.yaml). `configPath` is the proxy.yaml the host should pass (absolute). The text alone is
 * valid for its file (no comments in JSON), so it can be redirected into place.
 *
 * @example
 * ```ts
 * const { where, text } = hostConfig('claude-desktop', '/home/alice/.config/taskpass/proxy.yaml');
 * ```
 */
export function hostConfig(host: ConfigHost, configPath: string, command = 'taskpass'): HostConfig {
  const args = ['proxy', '--config', configPath];
  const entry = { command, args };
  const json = (v: unknown) => JSON.stringify(v, null, 2);
  switch (host) {
    case 'claude-desktop':
      return {
        where:
          'claude_desktop_config.json (Claude Desktop: Settings → Developer → Edit Config); merge into "mcpServers"',
        text: json({ mcpServers: { taskpass: entry } }),
      };
    case 'vscode':
      return {
        where: '.vscode/mcp.json in the workspace; merge into "servers"',
        text: json({ servers: { taskpass: { type: 'stdio', ...entry } } }),
      };
    case 'cursor':
      return {
        where: '~/.cursor/mcp.json (or .cursor/mcp.json in a project); merge into "mcpServers"',
        text: json({ mcpServers: { taskpass: entry } }),
      };
    case 'stdio':
      return {
        where: 'any MCP host that launches a stdio server: this command and its arguments',
        text: [command, ...args]
          .map((a) => (/^[\w@%+=:,./-]+$/.test(a) ? a : `'${a.replaceAll("'", "'\\''")}'`))
          .join(' '),
      };
    case 'yaml':
      return { where: 'proxy.yaml (pass it with --config)', text: EXAMPLE_PROXY_CONFIG };
  }
}
