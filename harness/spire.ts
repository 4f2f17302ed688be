/**
 * Real SPIRE on one host, for integration tests and the demo.
 *
 * `startSpire()` runs a SPIRE server (sqlite, join_token, disk or memory KeyManager) and one agent
 * (join_token, unix workload attestor) from the binaries in `TASKPASS_SPIRE_BIN` (set by
 * scripts/test.mjs; otherwise built or reused via scripts/build-spire.mjs). Everything lives in
 * one short temporary directory (UDS paths must stay under 108 bytes), SPIRE logs go to files in
 * it, and `stop()` kills both process groups and removes it. Harnesses still running when the
 * process exits are killed by an exit hook, so a failed test never leaves SPIRE behind.
 *
 * Timing (SPIFFE-NOTES §3.4): the server reloads its entry cache and the agent syncs every 1s, so a
 * new entry is served in about 1–2s; {@link SpireHarness.waitForIdentity} polls the real Workload
 * API instead of sleeping.
 *
 * @example
 * ```ts
 * let spire: SpireHarness;
 * before(async () => { spire = await startSpire(); });
 * after(() => spire.stop());
 * test('fetches', async () => {
 *   await spire.createEntry({ spiffeId: 'spiffe://taskpass.local/app' });
 *   await spire.waitForIdentity('spiffe://taskpass.local/app');
 *   // new WorkloadApiClient({ address: spire.address }) …
 * });
 * ```
 */
import { type ChildProcess, execFile, spawn } from 'node:child_process';
import { accessSync, constants, closeSync, existsSync, openSync, readFileSync, rmSync } from 'node:fs';
import { chmod, mkdir, mkdtemp, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { delimiter, dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { isSpiffeError } from '@taskpass/spiffe';
import { WorkloadApiClient } from '@taskpass/spiffe/workload';
import { freePort } from './net.ts';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** Options of {@link startSpire}. */
export interface StartSpireOptions {
  /** Trust domain name. Default `taskpass.local`. */
  trustDomain?: string;
  /** Server KeyManager: `disk` keeps the CA across server restarts, `memory` mints a new one. Default `disk`. */
  keyManager?: 'disk' | 'memory';
  /** Server CA lifetime (`ca_ttl`, e.g. `"1m"` for CA rotation tests). Default `"24h"`. */
  caTtl?: string;
  /** Default X.509-SVID lifetime (`default_x509_svid_ttl`). Default `"1h"`. */
  defaultX509SvidTtl?: string;
  /** Default JWT-SVID lifetime (`default_jwt_svid_ttl`). Default `"5m"`. */
  defaultJwtSvidTtl?: string;
  /** SPIRE log level. Default `DEBUG` (logs stay in files; they help when something fails). */
  logLevel?: 'DEBUG' | 'INFO' | 'WARN' | 'ERROR';
  /** Directory holding spire-server and spire-agent. Default `$TASKPASS_SPIRE_BIN`, else build/reuse. */
  binDir?: string;
  /** Path segment of the agent alias (`spiffe://<td>/<alias>`), the parent of created entries. Default `host`. */
  agentAlias?: string;
  /** Time allowed for server and agent to become healthy. Default 30 s. */
  startTimeoutMs?: number;
  /**
   * A test context (or anything with `after`), e.g. node:test's `t` or the module-level `after`.
   * `stop()` is registered with it, so SPIRE is stopped even when the test fails.
   */
  t?: { after(fn: () => unknown): void };
}

/** Options of {@link SpireHarness.createEntry}. */
export interface CreateEntryOptions {
  /** The workload SPIFFE ID, `spiffe://<td>/…`. */
  spiffeId: string;
  /** Selectors `type:value`. Default `unix:uid:<this process's uid>`. */
  selectors?: string[];
  /** Lifetime of X.509-SVIDs for this entry, in seconds (`-x509SVIDTTL`). */
  x509SvidTtl?: number;
  /** Lifetime of JWT-SVIDs for this entry, in seconds (`-jwtSVIDTTL`). */
  jwtSvidTtl?: number;
  /** Entry hint (`-hint`). */
  hint?: string;
  /** Custom entry ID (`-entryID`); SPIRE orders a workload's identities by ascending entry ID. */
  entryId?: string;
  /** Trust domains (`spiffe://…` IDs) whose bundles the workload receives (`-federatesWith`). */
  federatesWith?: string[];
  /** DNS SANs (`-dns`). */
  dnsNames?: string[];
}

/** Result of a command run by {@link runAs} or the harness CLIs. */
export interface CommandResult {
  code: number | null;
  signal: NodeJS.Signals | null;
  stdout: string;
  stderr: string;
}

/** Options of {@link SpireHarness.waitForIdentity}. */
export interface WaitOptions {
  /** Give up after this long. Default 20 s. */
  timeoutMs?: number;
  /** Poll interval. Default 100 ms. */
  intervalMs?: number;
}

/** A running SPIRE server and agent. */
export interface SpireHarness extends AsyncDisposable {
  /** Trust domain name, e.g. `taskpass.local`. */
  readonly trustDomain: string;
  /** Absolute path of the agent's Workload API socket (world-accessible). */
  readonly socketPath: string;
  /** Workload API address for clients: `unix://<socketPath>` (a `SPIFFE_ENDPOINT_SOCKET` value). */
  readonly address: string;
  /** Absolute path of the server API socket (for `spire-server … -socketPath`). */
  readonly serverSocketPath: string;
  /** SPIFFE ID of the agent alias; the parent ID of created entries. */
  readonly agentAliasId: string;
  /** The harness's temporary directory (configs, data, logs). Removed by `stop()`. */
  readonly dir: string;
  /** Directory holding spire-server and spire-agent. */
  readonly binDir: string;
  /** Registers a workload entry and returns its entry ID. Does not wait for it to be served. */
  createEntry(opts: CreateEntryOptions): Promise<string>;
  /** Deletes a registration entry. */
  deleteEntry(entryId: string): Promise<void>;
  /** Polls the real Workload API (as this process's uid) until it serves an X.509-SVID for `spiffeId`. */
  waitForIdentity(spiffeId: string, opts?: WaitOptions): Promise<void>;
  /** Polls the Workload API until it no longer serves `spiffeId` to this process's uid. */
  waitForIdentityGone(spiffeId: string, opts?: WaitOptions): Promise<void>;
  /** The trust domain's X.509 bundle as PEM (`spire-server bundle show -format pem`). */
  bundlePem(): Promise<string>;
  /** Runs `spire-server <args…> -socketPath <server socket>`; rejects with stderr on a non-zero exit. */
  serverCli(...args: string[]): Promise<string>;
  /** Runs `spire-agent <args…> -socketPath <workload socket>`; rejects with stderr on a non-zero exit. */
  agentCli(...args: string[]): Promise<string>;
  /**
   * Stops the agent (its process group: SIGTERM, SIGKILL after 3 s), as an agent outage. The
   * Workload API socket goes away; workloads keep their cached SVIDs. The server keeps running.
   */
  stopAgent(): Promise<void>;
  /**
   * Starts the agent again after {@link stopAgent}: it re-attests with a new join token (join
   * tokens are single-use and the agent's memory KeyManager lost its key), so its data directory
   * is wiped first. The new agent ID gets the same alias, so every entry created under the alias
   * is served again. Resolves once the agent is healthy (not once SVIDs are served).
   */
  startAgent(): Promise<void>;
  /**
   * Freezes the agent (SIGSTOP to its process group): a hung agent whose Workload API streams stay
   * open but answer nothing. {@link resumeAgent} (SIGCONT) lets it go on.
   */
  pauseAgent(): void;
  resumeAgent(): void;
  /** The last lines of the server and agent logs (for error messages). */
  logTail(lines?: number): string;
  /** Kills both processes (process groups) and removes the temporary directory. Idempotent. */
  stop(): Promise<void>;
}

const live = new Set<Harness>();
let exitHookInstalled = false;

function installExitHook(): void {
  if (exitHookInstalled) return;
  exitHookInstalled = true;
  process.once('exit', () => {
    for (const h of live) h.stopSync();
  });
  for (const sig of ['SIGINT', 'SIGTERM', 'SIGHUP'] as const) {
    process.once(sig, () => {
      for (const h of live) h.stopSync();
      // Re-raise with the default action now that our handler is gone.
      process.kill(process.pid, sig);
    });
  }
}

/** Resolves the SPIRE bin directory: option, `$TASKPASS_SPIRE_BIN`, or scripts/build-spire.mjs. */
export async function resolveSpireBin(binDir?: string): Promise<string> {
  let dir = binDir ?? process.env.TASKPASS_SPIRE_BIN;
  if (!dir) {
    const url = pathToFileURL(join(repoRoot, 'scripts', 'build-spire.mjs')).href;
    const mod = (await import(url)) as { ensureSpire(): Promise<string> };
    dir = await mod.ensureSpire();
  }
  for (const tool of ['spire-server', 'spire-agent']) {
    try {
      accessSync(join(dir, tool), constants.X_OK);
    } catch {
      throw new Error(
        `SPIRE binary ${join(dir, tool)} is missing or not executable; run \`node scripts/build-spire.mjs\``,
      );
    }
  }
  return dir;
}

function run(cmd: string, args: readonly string[], timeoutMs = 15_000): Promise<CommandResult> {
  return new Promise((res) => {
    execFile(cmd, args, { timeout: timeoutMs, maxBuffer: 16 * 1024 * 1024 }, (err, stdout, stderr) => {
      const e = err as (Error & { code?: number | string; signal?: NodeJS.Signals | null }) | null;
      res({
        code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
        signal: e?.signal ?? null,
        stdout: String(stdout),
        stderr: String(stderr) || (e && typeof e.code !== 'number' ? e.message : ''),
      });
    });
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

function tail(file: string, lines: number): string {
  try {
    const all = readFileSync(file, 'utf8').trimEnd().split('\n');
    return all.slice(-lines).join('\n');
  } catch {
    return '(no log)';
  }
}

/** Short base directory: UDS paths must fit in 108 bytes, and macOS/CI TMPDIRs can be long. */
function baseTmp(): string {
  const t = tmpdir();
  return t.length <= 40 ? t : '/tmp';
}

function hcl(s: string): string {
  return JSON.stringify(s);
}

class Harness implements SpireHarness {
  readonly trustDomain: string;
  readonly socketPath: string;
  readonly address: string;
  readonly serverSocketPath: string;
  readonly agentAliasId: string;
  readonly dir: string;
  readonly binDir: string;
  server?: ChildProcess;
  agent?: ChildProcess;
  private stopped = false;
  private readonly serverLog: string;
  private readonly agentLog: string;

  constructor(dir: string, binDir: string, trustDomain: string, alias: string) {
    this.dir = dir;
    this.binDir = binDir;
    this.trustDomain = trustDomain;
    // In a 0755 subdirectory of the 0711 temp dir: other uids (runAs) can reach the socket only.
    this.socketPath = join(dir, 'public', 'agent.sock');
    this.address = `unix://${this.socketPath}`;
    this.serverSocketPath = join(dir, 'server.sock');
    this.agentAliasId = `spiffe://${trustDomain}/${alias}`;
    this.serverLog = join(dir, 'server.log');
    this.agentLog = join(dir, 'agent.log');
  }

  get serverBin(): string {
    return join(this.binDir, 'spire-server');
  }

  get agentBin(): string {
    return join(this.binDir, 'spire-agent');
  }

  logTail(lines = 25): string {
    return (
      `--- spire-server log (${this.serverLog}) ---\n${tail(this.serverLog, lines)}\n` +
      `--- spire-agent log (${this.agentLog}) ---\n${tail(this.agentLog, lines)}`
    );
  }

  fail(message: string, cause?: unknown): Error {
    return new Error(`${message}\n${this.logTail()}`, cause === undefined ? undefined : { cause });
  }

  spawnLogged(bin: string, args: string[], logFile: string): ChildProcess {
    const fd = openSync(logFile, 'a');
    try {
      // detached: own process group, so stop() can kill the whole group.
      const child = spawn(bin, args, { cwd: this.dir, detached: true, stdio: ['ignore', fd, fd] });
      child.on('error', () => {});
      return child;
    } finally {
      closeSync(fd);
    }
  }

  async waitHealthy(
    which: 'server' | 'agent',
    child: ChildProcess,
    args: string[],
    timeoutMs: number,
  ): Promise<void> {
    const bin = which === 'server' ? this.serverBin : this.agentBin;
    const deadline = Date.now() + timeoutMs;
    let last: CommandResult | undefined;
    while (Date.now() < deadline) {
      if (child.exitCode !== null || child.signalCode !== null) {
        throw this.fail(
          `spire-${which} exited during start-up (code ${child.exitCode}, signal ${child.signalCode})`,
        );
      }
      last = await run(bin, args, 5_000);
      if (last.code === 0) return;
      await sleep(100);
    }
    throw this.fail(
      `spire-${which} did not become healthy within ${timeoutMs} ms (last healthcheck: ${last?.stderr.trim() || last?.stdout.trim()})`,
    );
  }

  async serverCli(...args: string[]): Promise<string> {
    const [a, b] = args;
    // Flags go after the (sub)command words: `entry create -x …`.
    const words = b !== undefined && !b.startsWith('-') ? 2 : a !== undefined && !a.startsWith('-') ? 1 : 0;
    const argv = [...args.slice(0, words), '-socketPath', this.serverSocketPath, ...args.slice(words)];
    const r = await run(this.serverBin, argv);
    if (r.code !== 0) {
      throw this.fail(
        `spire-server ${args.slice(0, words).join(' ')} failed: ${r.stderr.trim() || r.stdout.trim()}`,
      );
    }
    return r.stdout;
  }

  async agentCli(...args: string[]): Promise<string> {
    const isFlag = (s: string | undefined) => s === undefined || s.startsWith('-');
    let words = 0;
    while (words < args.length && !isFlag(args[words])) words++;
    const argv = [...args.slice(0, words), '-socketPath', this.socketPath, ...args.slice(words)];
    const r = await run(this.agentBin, argv);
    if (r.code !== 0) {
      throw new Error(
        `spire-agent ${args.slice(0, words).join(' ')} failed: ${r.stderr.trim() || r.stdout.trim()}`,
      );
    }
    return r.stdout;
  }

  async createEntry(opts: CreateEntryOptions): Promise<string> {
    const uid = process.getuid?.() ?? 0;
    const args = [
      'entry',
      'create',
      '-output',
      'json',
      '-parentID',
      this.agentAliasId,
      '-spiffeID',
      opts.spiffeId,
    ];
    for (const s of opts.selectors ?? [`unix:uid:${uid}`]) args.push('-selector', s);
    if (opts.x509SvidTtl !== undefined) args.push('-x509SVIDTTL', String(opts.x509SvidTtl));
    if (opts.jwtSvidTtl !== undefined) args.push('-jwtSVIDTTL', String(opts.jwtSvidTtl));
    if (opts.hint !== undefined) args.push('-hint', opts.hint);
    if (opts.entryId !== undefined) args.push('-entryID', opts.entryId);
    for (const td of opts.federatesWith ?? []) args.push('-federatesWith', td);
    for (const d of opts.dnsNames ?? []) args.push('-dns', d);
    const out = await this.serverCli(...args);
    const parsed = JSON.parse(out) as {
      results?: { status?: { code?: number; message?: string }; entry?: { id?: string } }[];
    };
    const r = parsed.results?.[0];
    if (!r || (r.status?.code ?? 0) !== 0 || !r.entry?.id) {
      throw this.fail(`entry create for ${opts.spiffeId} failed: ${r?.status?.message ?? out.trim()}`);
    }
    return r.entry.id;
  }

  async deleteEntry(entryId: string): Promise<void> {
    const out = await this.serverCli('entry', 'delete', '-output', 'json', '-entryID', entryId);
    const parsed = JSON.parse(out) as { results?: { status?: { code?: number; message?: string } }[] };
    const status = parsed.results?.[0]?.status;
    if ((status?.code ?? 0) !== 0) throw this.fail(`entry delete ${entryId} failed: ${status?.message}`);
  }

  /**
   * SPIFFE IDs the Workload API currently serves to this process, through our own client (one
   * FetchX509SVID stream, first message), or the error code it answers with.
   */
  async servedIds(): Promise<{ ids: string[]; error?: string }> {
    const client = new WorkloadApiClient({ address: this.address });
    try {
      // SPIRE holds the first message until every SVID of the workload is signed; don't wait forever.
      const ctx = await client.fetchX509Context({ signal: AbortSignal.timeout(3_000) });
      return { ids: ctx.svids.map((s) => s.id.toString()) };
    } catch (e) {
      return { ids: [], error: isSpiffeError(e) ? `${e.code}: ${e.message}` : String(e) };
    } finally {
      client.close();
    }
  }

  async waitForIdentity(spiffeId: string, opts: WaitOptions = {}): Promise<void> {
    const { timeoutMs = 20_000, intervalMs = 100 } = opts;
    const deadline = Date.now() + timeoutMs;
    let last: { ids: string[]; error?: string } = { ids: [] };
    while (Date.now() < deadline) {
      last = await this.servedIds();
      if (last.ids.includes(spiffeId)) return;
      await sleep(intervalMs);
    }
    throw this.fail(
      `the Workload API did not serve ${spiffeId} within ${timeoutMs} ms (last answer: ${last.error ?? `ids [${last.ids.join(', ')}]`})`,
    );
  }

  async waitForIdentityGone(spiffeId: string, opts: WaitOptions = {}): Promise<void> {
    const { timeoutMs = 20_000, intervalMs = 100 } = opts;
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      const { ids } = await this.servedIds();
      if (!ids.includes(spiffeId)) return;
      await sleep(intervalMs);
    }
    throw this.fail(`the Workload API still serves ${spiffeId} after ${timeoutMs} ms`);
  }

  async bundlePem(): Promise<string> {
    return this.serverCli('bundle', 'show', '-format', 'pem');
  }

  pauseAgent(): void {
    if (this.agent?.pid !== undefined) process.kill(-this.agent.pid, 'SIGSTOP');
  }

  resumeAgent(): void {
    if (this.agent?.pid !== undefined) process.kill(-this.agent.pid, 'SIGCONT');
  }

  async stopAgent(): Promise<void> {
    if (this.agent) await killGroup(this.agent);
  }

  async startAgent(timeoutMs = 30_000): Promise<void> {
    if (this.stopped) throw new Error('the harness is stopped');
    if (this.agent && this.agent.exitCode === null && this.agent.signalCode === null) {
      throw new Error('the agent is still running; stopAgent() first');
    }
    await spawnAgent(this, timeoutMs);
  }

  stopSync(): void {
    if (this.stopped) return;
    this.stopped = true;
    live.delete(this);
    for (const child of [this.agent, this.server]) {
      if (child?.pid !== undefined && child.exitCode === null && child.signalCode === null) {
        try {
          process.kill(-child.pid, 'SIGKILL');
        } catch {}
      }
    }
    rmSync(this.dir, { recursive: true, force: true });
  }

  async stop(): Promise<void> {
    if (this.stopped) return;
    this.stopped = true;
    live.delete(this);
    await Promise.all([this.agent, this.server].map((c) => (c ? killGroup(c) : undefined)));
    rmSync(this.dir, { recursive: true, force: true });
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.stop();
  }
}

async function killGroup(child: ChildProcess, graceMs = 3_000): Promise<void> {
  const pid = child.pid;
  if (pid === undefined || child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise<void>((r) => child.once('exit', () => r()));
  const signal = (sig: NodeJS.Signals) => {
    try {
      process.kill(-pid, sig);
    } catch {}
  };
  // A paused (SIGSTOPped) process would not act on SIGTERM before the SIGKILL.
  signal('SIGCONT');
  signal('SIGTERM');
  const timer = setTimeout(() => signal('SIGKILL'), graceMs);
  await exited;
  clearTimeout(timer);
}

function serverConfig(o: {
  dir: string;
  port: number;
  trustDomain: string;
  keyManager: 'disk' | 'memory';
  caTtl: string;
  x509Ttl: string;
  jwtTtl: string;
  logLevel: string;
  socketPath: string;
}): string {
  const data = join(o.dir, 'server');
  const keyManager =
    o.keyManager === 'disk'
      ? `  KeyManager "disk" {\n    plugin_data {\n      keys_path = ${hcl(join(data, 'keys.json'))}\n    }\n  }`
      : `  KeyManager "memory" {\n    plugin_data {}\n  }`;
  return `server {
  bind_address = "127.0.0.1"
  bind_port = "${o.port}"
  trust_domain = ${hcl(o.trustDomain)}
  data_dir = ${hcl(data)}
  log_level = ${hcl(o.logLevel)}
  socket_path = ${hcl(o.socketPath)}
  ca_ttl = ${hcl(o.caTtl)}
  default_x509_svid_ttl = ${hcl(o.x509Ttl)}
  default_jwt_svid_ttl = ${hcl(o.jwtTtl)}
  experimental {
    # Entry changes become visible in ~1s instead of ~5s.
    cache_reload_interval = "1s"
  }
}

plugins {
  DataStore "sql" {
    plugin_data {
      database_type = "sqlite3"
      connection_string = ${hcl(join(data, 'datastore.sqlite3'))}
    }
  }

  NodeAttestor "join_token" {
    plugin_data {}
  }

${keyManager}
}
`;
}

function agentConfig(o: {
  dir: string;
  port: number;
  trustDomain: string;
  logLevel: string;
  socketPath: string;
  bundlePath: string;
}): string {
  return `agent {
  data_dir = ${hcl(join(o.dir, 'agent'))}
  log_level = ${hcl(o.logLevel)}
  server_address = "127.0.0.1"
  server_port = "${o.port}"
  socket_path = ${hcl(o.socketPath)}
  trust_domain = ${hcl(o.trustDomain)}
  trust_bundle_path = ${hcl(o.bundlePath)}
  experimental {
    # Sync with the server every 1s (default 5s) so new and deleted entries show quickly.
    sync_interval = "1s"
  }
}

plugins {
  NodeAttestor "join_token" {
    plugin_data {}
  }

  KeyManager "memory" {
    plugin_data {}
  }

  WorkloadAttestor "unix" {
    plugin_data {}
  }
}
`;
}

/**
 * Starts a SPIRE server and agent and resolves once both are healthy and the agent is attested.
 * Throws with the tail of the SPIRE logs if either fails to start.
 */
export async function startSpire(opts: StartSpireOptions = {}): Promise<SpireHarness> {
  const binDir = await resolveSpireBin(opts.binDir);
  const trustDomain = opts.trustDomain ?? 'taskpass.local';
  const timeoutMs = opts.startTimeoutMs ?? 30_000;
  const logLevel = opts.logLevel ?? 'DEBUG';
  const dir = await mkdtemp(join(baseTmp(), 'tps-'));
  const h = new Harness(dir, binDir, trustDomain, opts.agentAlias ?? 'host');
  if (Buffer.byteLength(h.socketPath) >= 100) {
    rmSync(dir, { recursive: true, force: true });
    throw new Error(`socket path ${h.socketPath} is too long for a unix socket (limit 108 bytes)`);
  }
  installExitHook();
  live.add(h);
  opts.t?.after(() => h.stop());
  try {
    await Promise.all(['server', 'agent'].map((d) => mkdir(join(dir, d), { recursive: true })));
    await mkdir(join(dir, 'public'), { mode: 0o755 });
    await chmod(join(dir, 'public'), 0o755);
    await chmod(dir, 0o711);

    // The free port can be taken between probing and binding; retry a couple of times.
    let port = 0;
    for (let attempt = 1; ; attempt++) {
      port = await freePort();
      const conf = join(dir, 'server.conf');
      await writeFile(
        conf,
        serverConfig({
          dir,
          port,
          trustDomain,
          keyManager: opts.keyManager ?? 'disk',
          caTtl: opts.caTtl ?? '24h',
          x509Ttl: opts.defaultX509SvidTtl ?? '1h',
          jwtTtl: opts.defaultJwtSvidTtl ?? '5m',
          logLevel,
          socketPath: h.serverSocketPath,
        }),
      );
      h.server = h.spawnLogged(h.serverBin, ['run', '-config', conf], join(dir, 'server.log'));
      try {
        await h.waitHealthy(
          'server',
          h.server,
          ['healthcheck', '-socketPath', h.serverSocketPath],
          timeoutMs,
        );
        break;
      } catch (e) {
        const inUse = /address already in use/.test(tail(join(dir, 'server.log'), 50));
        if (!inUse || attempt >= 3) throw e;
        await killGroup(h.server);
        rmSync(join(dir, 'server'), { recursive: true, force: true });
        await mkdir(join(dir, 'server'));
      }
    }

    const bundlePath = join(dir, 'bootstrap.pem');
    await writeFile(bundlePath, await h.bundlePem());
    await writeFile(
      join(dir, 'agent.conf'),
      agentConfig({ dir, port, trustDomain, logLevel, socketPath: h.socketPath, bundlePath }),
    );
    await spawnAgent(h, timeoutMs);
    return h;
  } catch (e) {
    await h.stop();
    throw e;
  }
}

/**
 * Attests a fresh agent with a new join token (aliased to the harness's agent alias) from an empty
 * data directory, and waits until it is healthy.
 */
async function spawnAgent(h: Harness, timeoutMs: number): Promise<void> {
  const tokenOut = await h.serverCli('token', 'generate', '-output', 'json', '-spiffeID', h.agentAliasId);
  const token = (JSON.parse(tokenOut) as { value?: string }).value;
  if (!token) throw h.fail(`token generate printed no token`);
  const tokenPath = join(h.dir, 'join-token');
  await writeFile(tokenPath, token, { mode: 0o600 });
  rmSync(join(h.dir, 'agent'), { recursive: true, force: true });
  await mkdir(join(h.dir, 'agent'), { recursive: true });
  // -joinTokenFile keeps the token out of `ps`.
  h.agent = h.spawnLogged(
    h.agentBin,
    ['run', '-config', join(h.dir, 'agent.conf'), '-joinTokenFile', tokenPath],
    join(h.dir, 'agent.log'),
  );
  await h.waitHealthy('agent', h.agent, ['healthcheck', '-socketPath', h.socketPath], timeoutMs);
}

/** Finds an executable on PATH (or returns undefined). */
function which(name: string): string | undefined {
  for (const d of (process.env.PATH ?? '').split(delimiter)) {
    const p = join(d, name);
    if (d && existsSync(p)) return p;
  }
  return undefined;
}

/**
 * Runs a command as another uid/gid, e.g. to get a workload with **no** registration entry: as
 * root, `unix:uid:0` matches everything this process starts, so a PermissionDenied test runs its
 * client as `nobody` (65534). Needs root and util-linux `setpriv`. The Workload API socket is
 * world-accessible, and the repository must be readable by that uid.
 *
 * @example
 * ```ts
 * const r = await runAs(65534, process.execPath, ['--conditions=taskpass:source', '--import', 'tsx', 'client.ts'],
 *   { env: { SPIFFE_ENDPOINT_SOCKET: spire.address } });
 * ```
 */
export async function runAs(
  uid: number,
  command: string,
  args: readonly string[] = [],
  opts: { env?: NodeJS.ProcessEnv; cwd?: string; timeoutMs?: number; gid?: number } = {},
): Promise<CommandResult> {
  const setpriv = which('setpriv');
  if (!setpriv) throw new Error('runAs needs util-linux `setpriv` on PATH');
  if (process.getuid?.() !== 0) throw new Error('runAs needs root to switch uid');
  const gid = opts.gid ?? uid;
  return new Promise((res) => {
    execFile(
      setpriv,
      [`--reuid=${uid}`, `--regid=${gid}`, '--clear-groups', '--', command, ...args],
      {
        cwd: opts.cwd ?? repoRoot,
        // HOME must be somewhere the other uid can use (tsx and npm look there).
        env: { ...process.env, HOME: '/tmp', ...opts.env },
        timeout: opts.timeoutMs ?? 30_000,
        maxBuffer: 16 * 1024 * 1024,
      },
      (err, stdout, stderr) => {
        const e = err as (Error & { code?: number | string; signal?: NodeJS.Signals | null }) | null;
        res({
          code: e ? (typeof e.code === 'number' ? e.code : null) : 0,
          signal: e?.signal ?? null,
          stdout: String(stdout),
          stderr: String(stderr),
        });
      },
    );
  });
}
