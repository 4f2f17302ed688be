// The whole Taskpass scenario on one host, for the demo and the end-to-end tests: real SPIRE
// (server + agent) issuing the three workload identities, the demo IdP, the broker (in process,
// SQLite in a temporary directory, HTTPS with its own X.509-SVID, the templates of ./policies), and
// the ticket desk MCP server. Everything listens on 127.0.0.1 with ephemeral ports; peers
// authenticate each other by SPIFFE ID, never by host name, so the URLs can be bare addresses while
// `iss` and `aud` keep their canonical names.
//
// With `vault: true` a real Vault (built by scripts/build-vault.mjs) signs the broker's tokens with
// Transit, and the ticket desk keeps its tickets in a PostgreSQL schema of the stack's own (the
// local PostgreSQL, 127.0.0.1:5432) which each call reaches as its task's database user, leased
// through the broker from Vault's database engine and revoked when the task ends.
//
// All processes of this host run as one uid, so every workload matches `unix:uid:<uid>` and gets
// all three SVIDs: each component picks its own by entry hint. Entry IDs are ordered so the
// broker's SVID also comes first, i.e. is the default one.
import { cp, mkdtemp, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  type BrokerConfig,
  generateKek,
  parseConfig,
  type RunningBroker,
  runCli,
  startBroker,
} from '@taskpass/broker';
import pino from 'pino';
import { type Opa, startOpa, TICKET_DESK_REGO } from '../harness/opa.ts';
import { type SpireHarness, startSpire } from '../harness/spire.ts';
import { type DeskDatabase, setUpBrokerVault, setUpDeskDatabaseEngine } from './vault-setup.ts';
import { type OwnVault, startVault } from '../harness/vault.ts';
import { AGENT_ID, type AgentScriptOptions } from './ticket-desk/agent.ts';
import { type Idp, startIdp } from './idp/idp.ts';
import {
  BROKER_ID,
  type RunningTicketDesk,
  startTicketDesk,
  TICKETS_AUDIENCE,
  TICKETS_ID,
} from './ticket-desk/server.ts';
import { freePort } from '../harness/net.ts';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

export const BROKER_ISSUER = 'https://broker.taskpass.local:8443';
export const TRUST_DOMAIN = 'taskpass.local';
/** The broker's administrator (the `admin` service of docker-compose.yml); no entry unless registered. */
export const ADMIN_ID = 'spiffe://taskpass.local/ops/admin';

/** The delegating user of the scenario. */
export interface DemoUser {
  sub: string;
  email: string;
  groups: string[];
  /** Region claim: refunds only for tickets of the user's region under the ticket desk's OPA policy. */
  region?: string;
}

export const ALICE: DemoUser = {
  sub: 'alice',
  email: 'alice@taskpass.local',
  groups: ['support'],
  region: 'eu',
};
/** A support lead: approves refunds above the limit (policies/tickets-refunds.yaml). */
export const BOB: DemoUser = {
  sub: 'bob',
  email: 'bob@taskpass.local',
  groups: ['support', 'support-leads'],
  region: 'eu',
};

/** Options of {@link startStack}. */
export interface StackOptions {
  /** Directory with spire-server and spire-agent (default: $TASKPASS_SPIRE_BIN, else build or reuse). */
  spireBinDir?: string;
  /** Scope templates. Default ./policies of the repository. */
  policiesDir?: string;
  /**
   * `opa`: a real OPA (built from tools/opa) with the ticket desk's Rego (policies/rego) behind
   * every template (config `decisionPoint`), open around the clock. `cedar`: the same rules in
   * Cedar (policies/cedar, evaluated in the broker), open around the clock. Default: templates alone.
   */
  engine?: 'templates' | 'opa' | 'cedar';
  /** The agent's SPIFFE ID. Default spiffe://taskpass.local/agents/support/triage-bot. */
  agentId?: string;
  /** Broker log level; logs go to `broker.log` in the stack's temporary directory. Default `info`. */
  brokerLogLevel?: 'silent' | 'error' | 'warn' | 'info' | 'debug';
  /** The broker's revocation feed heartbeat (config `feed.heartbeatMs`), ms. Default 2000. */
  feedHeartbeatMs?: number;
  /**
   * The broker's store: Redis (config `store.redis`) instead of the default SQLite file in the
   * stack's temporary directory, e.g. to start more replicas on it with `brokerConfig`.
   */
  redis?: { url: string; keyPrefix?: string };
  /** Progress lines ("SPIRE server and agent up in 1.2 s"). */
  progress?: (line: string) => void;
  /**
   * Lifetime of the three workloads' X.509-SVIDs, seconds (entry `-x509SVIDTTL`; SPIRE's default is
   * 1 h). SPIRE backdates notBefore by 10 s and rotates at half of that lifetime.
   */
  x509SvidTtl?: number;
  /** Called as soon as SPIRE runs (e.g. to check later that none of its processes is left). */
  onSpire?: (spire: SpireHarness) => void;
  /** A test context: `stop()` is registered with its `after`. */
  t?: { after(fn: () => unknown): void };
  /**
   * More broker configuration, made once SPIRE runs (e.g. `signing` and `vault` for a Vault that
   * trusts SPIRE's JWT bundle); merged over the stack's own at the top level.
   */
  brokerConfig?: (spire: SpireHarness) => Promise<Record<string, unknown>>;
  /**
   * A real Vault ($TASKPASS_VAULT_BIN, else built or reused): the broker signs with its Transit key
   * and logs in with its JWT-SVID; the ticket desk runs on PostgreSQL (a schema of this stack's own,
   * dropped at stop) as per-task database users leased from Vault's database engine through the
   * broker (`vault.credentialClients` lists the desk for its audience).
   */
  vault?: boolean;
}

/** Durations of start-up phases, ms. */
export interface StackTimings {
  spire: number;
  identities: number;
  idp: number;
  broker: number;
  tickets: number;
  total: number;
}

/** A running stack. */
export interface Stack extends AsyncDisposable {
  readonly spire: SpireHarness;
  readonly idp: Idp;
  readonly broker: RunningBroker;
  /** The OPA behind the templates, with `engine: 'opa'`. */
  readonly opa?: Opa | undefined;
  /** The Vault signing the tokens and leasing the desk's database users, with `vault: true`. */
  readonly vault?: OwnVault | undefined;
  /** The desk's PostgreSQL schema and Vault's database engine, with `vault: true`. */
  readonly deskDatabase?: DeskDatabase | undefined;
  /**
   * The broker's validated configuration for another replica (`startBroker(brokerConfig)`): the
   * same, but its console listens on an ephemeral port.
   */
  readonly brokerConfig: BrokerConfig;
  readonly tickets: RunningTicketDesk;
  readonly ids: { readonly broker: string; readonly tickets: string; readonly agent: string };
  readonly hints: { readonly broker: string; readonly tickets: string; readonly agent: string };
  readonly urls: {
    readonly broker: string;
    readonly mcp: string;
    readonly idpJwks: string;
    /** The web console (sign in as a demo user at the IdP's login page). */
    readonly console: string;
  };
  /** `iss` of the broker's tokens. */
  readonly issuer: string;
  /** The ticket desk's resource URI (token `aud`). */
  readonly audience: string;
  /** The temporary directory (broker database and log). Removed by `stop()`. */
  readonly dir: string;
  readonly timings: StackTimings;
  /** An ID token for a user (issued for the broker): what an agent is given to act for them. */
  userToken(user?: DemoUser): Promise<string>;
  /**
   * An approver's own token (issued for the broker's `approvals.audience`, never the delegation
   * audience): what a person signs approvals with. Default {@link BOB}.
   */
  approverToken(user?: DemoUser): Promise<string>;
  /**
   * Runs `taskpass approvals <argv…>` as a person (default {@link BOB}): their own approver token,
   * the broker trusted through the Workload API's bundle, no client certificate.
   */
  approvalsCli(argv: readonly string[], user?: DemoUser): Promise<{ code: number; lines: string[] }>;
  /** Options for `runAgentScript` against this stack (add `userToken`). */
  agentOptions(): Omit<AgentScriptOptions, 'userToken'>;
  /** Stops everything that was started, in reverse order. Idempotent; never throws. */
  stop(): Promise<void>;
}

const since = (t: number) => Math.round(performance.now() - t);

/** The console's OIDC client id at the demo IdP. */
export const CONSOLE_CLIENT_ID = 'taskpass-console';

/** The ticket desk's Cedar rules (policies/cedar). */
export const TICKET_DESK_CEDAR = join(dirname(fileURLToPath(import.meta.url)), '..', 'policies', 'cedar');

/**
 * A copy of the ticket desk's Cedar rules in `dir` whose business hours cover the whole week, so
 * the demo's writes are allowed at any hour (as the OPA stack sets its hours in OPA's data).
 */
async function openAroundTheClock(dir: string): Promise<string> {
  await cp(TICKET_DESK_CEDAR, dir, { recursive: true });
  const file = join(dir, 'tickets.cedar');
  const rules = await readFile(file, 'utf8');
  const edits: [string, string][] = [
    ['context.weekday <= 5', 'context.weekday <= 7'],
    ['duration("8h")', 'duration("0h")'],
    ['duration("18h")', 'duration("24h")'],
  ];
  let open = rules;
  for (const [from, to] of edits) {
    if (!open.includes(from)) throw new Error(`policies/cedar/tickets.cedar no longer says ${from}`);
    open = open.replace(from, to);
  }
  await writeFile(file, open);
  return dir;
}

/**
 * Starts SPIRE, registers and waits for the three identities, then starts the IdP, the broker and
 * the ticket desk. On any failure, whatever was started is stopped before the error is rethrown.
 *
 * @example
 * ```ts
 * await using stack = await startStack();
 * const t = await runAgentScript({ ...stack.agentOptions(), userToken: await stack.userToken() });
 * ```
 */
export async function startStack(opts: StackOptions = {}): Promise<Stack> {
  const progress = opts.progress ?? (() => {});
  const ids = { broker: BROKER_ID, tickets: TICKETS_ID, agent: opts.agentId ?? AGENT_ID };
  const hints = { broker: 'broker', tickets: 'tickets', agent: 'agent' };
  const t0 = performance.now();
  const stops: { name: string; fn: () => Promise<unknown> }[] = [];
  let stopping: Promise<void> | undefined;
  const stop = () => {
    stopping ??= (async () => {
      for (const s of stops.reverse()) {
        try {
          await s.fn();
        } catch (e) {
          progress(`warning: stopping ${s.name} failed: ${(e as Error).message}`);
        }
      }
    })();
    return stopping;
  };
  opts.t?.after(stop);

  try {
    const dir = await mkdtemp(join(tmpdir(), 'taskpass-stack-'));
    stops.push({ name: 'temporary directory', fn: () => rm(dir, { recursive: true, force: true }) });

    let t = performance.now();
    const spire = await startSpire({
      ...(opts.spireBinDir ? { binDir: opts.spireBinDir } : {}),
      trustDomain: TRUST_DOMAIN,
      logLevel: 'INFO',
    });
    stops.push({ name: 'SPIRE', fn: () => spire.stop() });
    opts.onSpire?.(spire);
    const spireMs = since(t);
    progress(`SPIRE server and agent up in ${(spireMs / 1000).toFixed(1)} s (socket ${spire.socketPath})`);

    t = performance.now();
    // Entry IDs sort the broker first (its SVID is the workload's default).
    const ttl = opts.x509SvidTtl !== undefined ? { x509SvidTtl: opts.x509SvidTtl } : {};
    await spire.createEntry({
      spiffeId: ids.broker,
      hint: hints.broker,
      entryId: 'taskpass-1-broker',
      ...ttl,
    });
    await spire.createEntry({
      spiffeId: ids.tickets,
      hint: hints.tickets,
      entryId: 'taskpass-2-tickets',
      ...ttl,
    });
    await spire.createEntry({ spiffeId: ids.agent, hint: hints.agent, entryId: 'taskpass-3-agent', ...ttl });
    await Promise.all(Object.values(ids).map((id) => spire.waitForIdentity(id)));
    const identitiesMs = since(t);
    progress(`3 registration entries served by the Workload API after ${(identitiesMs / 1000).toFixed(1)} s`);

    t = performance.now();
    const idp = await startIdp();
    stops.push({ name: 'IdP', fn: () => idp.close() });
    const idpMs = since(t);

    let opa: Opa | undefined;
    if (opts.engine === 'opa') {
      t = performance.now();
      opa = await startOpa([TICKET_DESK_REGO]);
      stops.push({ name: 'OPA', fn: () => opa!.close() });
      // The demo runs at any hour: the desk's business hours (OPA data) cover the whole day.
      await opa.putData('ticket_desk/business_hours', { start: 0, end: 24 });
      progress(`OPA with the ticket desk's Rego on ${opa.url} in ${since(t)} ms`);
    }
    const cedarDir = opts.engine === 'cedar' ? await openAroundTheClock(join(dir, 'cedar')) : undefined;
    const decisionPoints = opa
      ? {
          decisionPoints: [
            { name: 'ticket-desk', kind: 'opa', url: opa.url, path: 'taskpass/ticket_desk/decision' },
          ],
          decisionPoint: 'ticket-desk',
        }
      : cedarDir
        ? {
            decisionPoints: [
              {
                name: 'ticket-desk',
                kind: 'cedar',
                policies: cedarDir,
                schema: join(cedarDir, 'tickets.cedarschema'),
              },
            ],
            decisionPoint: 'ticket-desk',
          }
        : {};

    let vault: OwnVault | undefined;
    let deskDatabase: DeskDatabase | undefined;
    let vaultConfig: Record<string, unknown> = {};
    if (opts.vault) {
      t = performance.now();
      const v = await startVault();
      vault = v;
      stops.push({ name: 'Vault', fn: () => v.stop() });
      const brokerVault = await setUpBrokerVault(v, spire, ids.broker);
      const db = await setUpDeskDatabaseEngine(v);
      deskDatabase = db;
      stops.push({ name: 'the desk database', fn: () => db.drop() });
      vaultConfig = {
        ...brokerVault,
        vault: {
          ...(brokerVault.vault as Record<string, unknown>),
          // The desk may exchange call tokens for its audience at POST /v1/credentials.
          credentialClients: [{ spiffeId: ids.tickets, audiences: [TICKETS_AUDIENCE] }],
        },
      };
      progress(
        `Vault on ${v.address} (Transit key, JWT auth for the broker, database engine on schema ${db.schema}) in ${since(t)} ms`,
      );
    }

    t = performance.now();
    const logFile = join(dir, 'broker.log');
    const logger = pino(
      { level: opts.brokerLogLevel ?? 'info', base: { service: 'taskpass-broker' } },
      pino.destination({ dest: logFile, sync: true }),
    );
    // The console on a loopback port of its own (plain HTTP: cookies without Secure, which the
    // configuration allows on loopback only); the demo IdP signs its people in.
    const consolePort = await freePort();
    const consoleUrl = `http://127.0.0.1:${consolePort}`;
    idp.registerClient({
      clientId: CONSOLE_CLIENT_ID,
      redirectUris: [`${consoleUrl}/console/auth/callback`],
    });
    const config = parseConfig(
      {
        issuer: BROKER_ISSUER,
        console: {
          listen: { host: '127.0.0.1', port: consolePort },
          publicUrl: consoleUrl,
          insecureCookies: true,
          oidc: {
            issuer: idp.issuer,
            discoveryUrl: idp.discoveryUrl,
            clientId: CONSOLE_CLIENT_ID,
            scopes: ['openid', 'profile', 'email', 'groups'],
            algorithms: ['ES256'],
          },
          roles: {
            admins: { issuer: idp.issuer, claims: { groups: 'taskpass-admins' } },
            viewers: { issuer: idp.issuer, claims: { groups: ['support-leads'] } },
          },
        },
        // Approval links lead people to the console's approval page.
        approvals: { url: `${consoleUrl}/console/approvals/{id}` },
        listen: { host: '127.0.0.1', port: 0 },
        tls: { mode: 'spiffe' },
        workloadApi: { address: spire.address, hint: hints.broker },
        trustDomain: TRUST_DOMAIN,
        agents: { ids: ['spiffe://taskpass.local/agents/**'] },
        admins: [ADMIN_ID],
        users: {
          trustedIssuers: [
            { issuer: idp.issuer, audience: BROKER_ISSUER, jwksUri: idp.jwksUri, algorithms: ['ES256'] },
          ],
        },
        policiesDir: opts.policiesDir ?? join(repoRoot, 'policies'),
        ...decisionPoints,
        store: opts.redis ? { redis: opts.redis } : { sqlite: { path: join(dir, 'broker.db') } },
        feed: { heartbeatMs: opts.feedHeartbeatMs ?? 2000, auth: 'workloads' },
        // A fresh KEK per stack (its store lives in the stack's temporary directory, or under a
        // test's own Redis prefix); replicas started from brokerConfig share it.
        keys: { kek: generateKek('demo') },
        logLevel: opts.brokerLogLevel ?? 'info',
        ...vaultConfig,
        ...(opts.brokerConfig ? await opts.brokerConfig(spire) : {}),
      },
      'stack broker configuration',
    );
    const broker = await startBroker(config, { logger, installSignalHandlers: false });
    stops.push({ name: 'broker', fn: () => broker.close() });
    const brokerMs = since(t);
    progress(`broker ${ids.broker} listening on ${broker.url} in ${brokerMs} ms`);
    if (broker.console) progress(`console on ${broker.console.url} (sign in as alice, bob or olivia)`);

    t = performance.now();
    const tickets = await startTicketDesk({
      workloadApiAddress: spire.address,
      hint: hints.tickets,
      brokerUrl: broker.url,
      brokerIssuer: BROKER_ISSUER,
      brokerId: ids.broker,
      audience: TICKETS_AUDIENCE,
      ...(deskDatabase ? { database: { schema: deskDatabase.schema } } : {}),
    });
    stops.push({ name: 'ticket desk', fn: () => tickets.close() });
    const ticketsMs = since(t);
    progress(`ticket desk ${tickets.spiffeId} listening on ${tickets.mcpUrl} in ${ticketsMs} ms`);

    const timings: StackTimings = {
      spire: spireMs,
      identities: identitiesMs,
      idp: idpMs,
      broker: brokerMs,
      tickets: ticketsMs,
      total: since(t0),
    };
    const approverToken = (user = BOB) =>
      idp.idToken({
        sub: user.sub,
        email: user.email,
        groups: user.groups,
        audience: config.approvals.audience,
        ttlSec: 300,
      });
    return {
      spire,
      idp,
      broker,
      opa,
      vault,
      deskDatabase,
      // Another replica on this host serves its console on a port of its own (same store: the
      // sessions are shared, so a person signed in at one console is signed in at every one).
      brokerConfig: config.console
        ? { ...config, console: { ...config.console, listen: { ...config.console.listen, port: 0 } } }
        : config,
      tickets,
      ids,
      hints,
      urls: {
        broker: broker.url,
        mcp: tickets.mcpUrl,
        idpJwks: idp.jwksUri,
        console: broker.console?.url ?? `${consoleUrl}/console/`,
      },
      issuer: BROKER_ISSUER,
      audience: TICKETS_AUDIENCE,
      dir,
      timings,
      userToken: (user = ALICE) =>
        idp.idToken({
          sub: user.sub,
          email: user.email,
          groups: user.groups,
          region: user.region,
          audience: BROKER_ISSUER,
        }),
      approverToken,
      async approvalsCli(argv, user = BOB) {
        const env = {
          TASKPASS_BROKER_URL: broker.url,
          TASKPASS_APPROVER_TOKEN: await approverToken(user),
          SPIFFE_ENDPOINT_SOCKET: spire.address,
        };
        const lines: string[] = [];
        const write = (s: string) => lines.push(...s.trimEnd().split('\n'));
        const code = await runCli(['approvals', ...argv], { out: write, err: write, env });
        return { code, lines };
      },
      agentOptions: () => ({
        workloadApiAddress: spire.address,
        hint: hints.agent,
        brokerUrl: broker.url,
        brokerId: ids.broker,
        mcpUrl: tickets.mcpUrl,
        ticketsId: ids.tickets,
        audience: TICKETS_AUDIENCE,
        awaitRevocation: (taskId: string) => tickets.waitRevoked(taskId),
      }),
      stop,
      [Symbol.asyncDispose]: stop,
    };
  } catch (e) {
    await stop();
    throw e;
  }
}
