// `taskpass serve` as a real child process (the installed command's entry point, run from source)
// on the Redis store, with identities from the spiffe package's fake Workload API: TestCa SVIDs for
// the broker (hint "broker"), the agent and a verifier, the test CA's bundles, and user tokens from
// examples/idp. Used by test/workers.e2e.test.ts and the bench's workers section.
import { type ChildProcess, spawn } from 'node:child_process';
import type { X509Certificate } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';
import { generateKek } from '@taskpass/broker';
import { FakeWorkloadApi, TestCa } from '@taskpass/spiffe/testing';
import { Redis } from 'ioredis';
import { Agent, Client } from 'undici';
import { type Idp, startIdp } from '../../examples/idp/idp.ts';

export const TRUST_DOMAIN = 'taskpass.local';
export const AGENT_ID = `spiffe://${TRUST_DOMAIN}/agents/support/serve`;
export const VERIFIER_ID = `spiffe://${TRUST_DOMAIN}/mcp/tickets`;
export const BROKER_ID = `spiffe://${TRUST_DOMAIN}/broker`;
export const ISSUER = 'https://broker.taskpass.local:8443';
export const AUDIENCE = 'https://tickets.taskpass.local/mcp';
const ROOT = resolve(import.meta.dirname, '../..');

/** PEM material of one workload. */
export interface Pem {
  key: string;
  cert: string;
  ca: string;
}

export interface ServeEnv {
  fake: FakeWorkloadApi;
  idp: Idp;
  agent: Pem;
  verifier: Pem;
  /** The KEK every broker of this environment wraps its signing keys under (same store, same KEK). */
  kek: string;
  /** A fresh ID token of a support user. */
  userToken(sub?: string): Promise<string>;
  close(): Promise<void>;
}

const pemOf = (certs: readonly X509Certificate[]): string => certs.map((c) => c.toString()).join('');

/** The fake Workload API serving the broker's, the agent's and a verifier's SVIDs, and an IdP. */
export async function startServeEnv(): Promise<ServeEnv> {
  const ca = await TestCa.create(TRUST_DOMAIN);
  const caPem = pemOf(ca.x509Bundle().authorities);
  const broker = await ca.createX509Svid(BROKER_ID, { ttlSec: 3600, hint: 'broker' });
  const agent = await ca.createX509Svid(AGENT_ID, { ttlSec: 3600 });
  const verifier = await ca.createX509Svid(VERIFIER_ID, { ttlSec: 3600 });
  const pem = (s: typeof agent): Pem => {
    const v = s.toX509Svid();
    return { key: v.privateKeyPem(), cert: v.certChainPem(), ca: caPem };
  };
  const fake = await FakeWorkloadApi.start();
  // Every process of the broker asks the same fake: the broker's SVID is picked by its hint.
  fake.setX509Svids({ svids: [broker] });
  fake.setX509Bundles({ [`spiffe://${TRUST_DOMAIN}`]: ca.x509BundleDer() });
  fake.setJwtBundles({ [`spiffe://${TRUST_DOMAIN}`]: ca.jwtBundleJwks() });
  const idp = await startIdp();
  return {
    fake,
    idp,
    agent: pem(agent),
    verifier: pem(verifier),
    kek: generateKek('serve'),
    userToken: (sub = 'alice') =>
      idp.idToken({ sub, groups: ['support'], audience: 'taskpass', ttlSec: 3600 }),
    async close() {
      await idp.close();
      await fake.stop();
    },
  };
}

/** A running `taskpass serve`. */
export interface ServedBroker {
  /** `https://127.0.0.1:<port>` */
  url: string;
  child: ChildProcess;
  /** Every JSON log line so far (stdout), parsed. */
  logs(): Record<string, unknown>[];
  /** What it wrote to stderr. */
  stderr(): string;
  /** The pids of the workers that reported listening (from the primary's log). */
  workerPids(): number[];
  /** Sends `signal` and waits for the process to end. */
  stop(signal?: NodeJS.Signals): Promise<{ code: number | null; signal: NodeJS.Signals | null }>;
  /** Deletes the run's Redis keys. */
  dropKeys(): Promise<void>;
}

export interface ServeOptions {
  workers: number;
  redisUrl?: string;
  keyPrefix: string;
  logLevel?: string;
  /** Merged over the generated configuration. */
  config?: Record<string, unknown>;
  /** Rejects unless it listens within this (default 60 s). */
  timeoutMs?: number;
  /**
   * Stop parsing stdout once it listens (log lines are read and dropped): a benchmark's request
   * lines would cost this process CPU the broker competes for.
   */
  dropLogsAfterStart?: boolean;
}

/** Starts `taskpass serve --workers N` and resolves once it listens (all workers up). */
export async function serveBroker(env: ServeEnv, o: ServeOptions): Promise<ServedBroker> {
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-serve-'));
  const redisUrl = o.redisUrl ?? 'redis://127.0.0.1:6379';
  const file = join(dir, 'taskpass.json');
  writeFileSync(
    file,
    JSON.stringify({
      issuer: ISSUER,
      trustDomain: TRUST_DOMAIN,
      listen: { host: '127.0.0.1', port: 0 },
      tls: { mode: 'spiffe' },
      workloadApi: { address: env.fake.address, hint: 'broker' },
      agents: { ids: [`spiffe://${TRUST_DOMAIN}/agents/**`] },
      users: {
        trustedIssuers: [
          { issuer: env.idp.issuer, audience: 'taskpass', jwksUri: env.idp.jwksUri, algorithms: ['ES256'] },
        ],
      },
      policiesDir: join(ROOT, 'policies'),
      store: { redis: { url: redisUrl, keyPrefix: o.keyPrefix } },
      rateLimit: { perAgentPerMinute: 1_000_000_000 },
      feed: { heartbeatMs: 500 },
      ...o.config,
    }),
  );
  const child = spawn(
    process.execPath,
    [
      '--conditions=taskpass:source',
      '--import',
      'tsx',
      join(ROOT, 'broker/src/bin/taskpass.ts'),
      'serve',
      '--config',
      file,
      '--workers',
      String(o.workers),
    ],
    {
      cwd: ROOT,
      env: {
        ...process.env,
        TASKPASS_KEK: env.kek,
        TASKPASS_LOG_LEVEL: o.logLevel ?? 'info',
      },
      stdio: ['ignore', 'pipe', 'pipe'],
    },
  );
  const lines: Record<string, unknown>[] = [];
  let partial = '';
  let err = '';
  const exited = new Promise<{ code: number | null; signal: NodeJS.Signals | null }>((r) =>
    child.once('exit', (code, signal) => r({ code, signal })),
  );
  let onLine: ((l: Record<string, unknown>) => void) | undefined;
  let dropping = false;
  child.stdout!.setEncoding('utf8').on('data', (chunk: string) => {
    if (dropping) return;
    partial += chunk;
    const parts = partial.split('\n');
    partial = parts.pop()!;
    for (const p of parts) {
      if (!p.trim()) continue;
      try {
        const l = JSON.parse(p) as Record<string, unknown>;
        lines.push(l);
        onLine?.(l);
      } catch {}
    }
  });
  child.stderr!.setEncoding('utf8').on('data', (c: string) => {
    err += c;
  });
  const listening = (l: Record<string, unknown>) =>
    l.msg === 'taskpass broker listening' && typeof l.url === 'string' && !('worker' in l && o.workers > 1);
  const url = await new Promise<string>((resolve, reject) => {
    const timer = setTimeout(
      () =>
        reject(
          new Error(
            `taskpass serve did not listen within ${o.timeoutMs ?? 60_000} ms: ${err} ${JSON.stringify(lines.slice(-20))}`,
          ),
        ),
      o.timeoutMs ?? 60_000,
    );
    const found = lines.find(listening);
    if (found) resolve(found.url as string);
    onLine = (l) => {
      if (listening(l)) {
        clearTimeout(timer);
        resolve(l.url as string);
      }
    };
    void exited.then((exit) => {
      clearTimeout(timer);
      reject(
        Object.assign(
          new Error(`taskpass serve exited (${exit.signal ?? exit.code}) before listening:\n${err}`),
          {
            exit,
          },
        ),
      );
    });
  }).catch(async (e) => {
    child.kill('SIGKILL');
    rmSync(dir, { recursive: true, force: true });
    throw e;
  });
  if (o.dropLogsAfterStart) dropping = true;
  return {
    url: url.replace('://localhost', '://127.0.0.1'),
    child,
    logs: () => lines,
    stderr: () => err,
    workerPids: () =>
      lines
        .filter((l) => l.msg === 'worker listening' && typeof l.pid === 'number')
        .map((l) => l.pid as number),
    async stop(signal = 'SIGTERM') {
      if (child.exitCode === null && child.signalCode === null) child.kill(signal);
      const r = await exited;
      rmSync(dir, { recursive: true, force: true });
      return r;
    },
    dropKeys: () => dropKeys(redisUrl, o.keyPrefix),
  };
}

/** Deletes every Redis key under `prefix`. */
export async function dropKeys(redisUrl: string, prefix: string): Promise<void> {
  const redis = new Redis(redisUrl);
  try {
    let cursor = '0';
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length) await redis.del(...keys);
    } while (cursor !== '0');
  } finally {
    redis.disconnect();
  }
}

const connectOpts = (p: Pem) => ({
  key: p.key,
  cert: p.cert,
  ca: p.ca,
  // SVIDs carry a SPIFFE URI SAN, no DNS/IP SAN: the chain is still verified against `ca`.
  checkServerIdentity: () => undefined,
});

/** One mTLS connection (undici Client: requests on it reach the worker it was handed to). */
export function connection(url: string, p: Pem): Client {
  return new Client(url, { connect: connectOpts(p), pipelining: 1 });
}

/** A pool of mTLS connections. */
export function pool(p: Pem): Agent {
  return new Agent({ connect: connectOpts(p) });
}
