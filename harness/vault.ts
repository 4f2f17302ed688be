// A real Vault server of a test's own (scripts/build-vault.mjs builds it into the tools cache): file
// storage in a temp dir, on a free loopback port, initialised with one unseal key, so a test may
// seal it, unseal it, kill it and start it again with everything it stored (restart tests).
// Every call here is Vault's HTTP API with the root token; the broker talks to it as a workload.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { Agent as UndiciAgent, fetch as undiciFetch } from 'undici';
import { freePort } from './net.ts';
import { killAndWait } from './child.ts';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** The path of the vault binary: $TASKPASS_VAULT_BIN, else built or reused (scripts/build-vault.mjs). */
export async function vaultBinary(): Promise<string> {
  if (process.env.TASKPASS_VAULT_BIN) return process.env.TASKPASS_VAULT_BIN;
  const url = pathToFileURL(join(repoRoot, 'scripts', 'build-vault.mjs')).href;
  const { ensureVault } = (await import(url)) as { ensureVault(): Promise<string> };
  return ensureVault();
}

/** A vault server child process under the test's control. */
export interface OwnVault {
  /** `http://127.0.0.1:<port>`, or `https://…` when started with `tls`. */
  readonly address: string;
  /** With `tls`: the listener's self-signed certificate, the CA to trust. */
  readonly caPem: string | undefined;
  readonly rootToken: string;
  /** Calls Vault's HTTP API as root; rejects on a status other than 2xx. */
  api(method: string, path: string, body?: unknown): Promise<Record<string, unknown> | undefined>;
  seal(): Promise<void>;
  unseal(): Promise<void>;
  /** SIGKILL, and waits for the process to be gone. */
  kill(): Promise<void>;
  /** Starts it again on the same port and storage, and unseals it. */
  restart(): Promise<void>;
  /** The last lines of its log (for error messages). */
  logTail(): string;
  /** Kills it and removes its dir. Idempotent. */
  stop(): Promise<void>;
}

/** Starts, initialises and unseals a Vault server. */
export async function startVault(opts: { binary?: string; tls?: boolean } = {}): Promise<OwnVault> {
  const binary = opts.binary ?? (await vaultBinary());
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-vault-'));
  const port = await freePort();
  const address = `${opts.tls ? 'https' : 'http'}://127.0.0.1:${port}`;
  const config = join(dir, 'vault.json');
  // TLS (cert auth needs it): a self-signed P-256 certificate for 127.0.0.1, which is its own CA.
  let caPem: string | undefined;
  let dispatcher: UndiciAgent | undefined;
  if (opts.tls) {
    execFileSync(
      'openssl',
      [
        'req',
        '-x509',
        '-newkey',
        'ec',
        '-pkeyopt',
        'ec_paramgen_curve:P-256',
        '-nodes',
        '-days',
        '1',
        '-subj',
        '/CN=127.0.0.1',
        '-addext',
        'subjectAltName=IP:127.0.0.1',
        '-keyout',
        join(dir, 'tls.key'),
        '-out',
        join(dir, 'tls.pem'),
      ],
      { stdio: 'ignore' },
    );
    caPem = readFileSync(join(dir, 'tls.pem'), 'utf8');
    dispatcher = new UndiciAgent({ connect: { ca: caPem } });
  }
  const listener = opts.tls
    ? {
        address: `127.0.0.1:${port}`,
        tls_cert_file: join(dir, 'tls.pem'),
        tls_key_file: join(dir, 'tls.key'),
      }
    : { address: `127.0.0.1:${port}`, tls_disable: true };
  const get = (url: string, init: Parameters<typeof undiciFetch>[1] = {}) =>
    undiciFetch(url, { ...init, ...(dispatcher ? { dispatcher } : {}) });
  writeFileSync(
    config,
    JSON.stringify({
      storage: { file: { path: join(dir, 'data') } },
      listener: { tcp: listener },
      disable_mlock: true,
      api_addr: address,
      ui: false,
    }),
  );
  let child: ChildProcess | undefined;
  let log = '';
  const killOnExit = () => child?.kill('SIGKILL');
  process.once('exit', killOnExit);
  let rootToken = '';
  let unsealKey = '';

  const api: OwnVault['api'] = async (method, path, body) => {
    const res = await get(`${address}/v1/${path}`, {
      method,
      headers: { ...(rootToken ? { 'x-vault-token': rootToken } : {}), 'content-type': 'application/json' },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    const text = await res.text();
    if (!res.ok) throw new Error(`vault ${method} ${path}: HTTP ${res.status} ${text}`);
    return text ? (JSON.parse(text) as Record<string, unknown>) : undefined;
  };

  const start = async () => {
    const c = spawn(binary, ['server', `-config=${config}`], { stdio: ['ignore', 'pipe', 'pipe'] });
    child = c;
    const append = (d: Buffer) => {
      log = `${log}${d.toString()}`.slice(-8000);
    };
    c.stdout?.on('data', append);
    c.stderr?.on('data', append);
    // Bounded: 300 tries of a request that fails fast while nothing listens.
    for (let i = 0; i < 300; i++) {
      if (c.exitCode !== null) throw new Error(`vault exited with ${c.exitCode}:\n${log}`);
      try {
        await api('GET', 'sys/seal-status');
        return;
      } catch {
        await new Promise((r) => setTimeout(r, 50));
      }
    }
    throw new Error(`vault on port ${port} did not start:\n${log}`);
  };
  const unseal = async () => {
    await api('PUT', 'sys/unseal', { key: unsealKey });
    // Active once it answers health as unsealed and active (200).
    for (let i = 0; i < 300; i++) {
      const res = await get(`${address}/v1/sys/health`);
      if (res.status === 200) return;
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`vault did not become active:\n${log}`);
  };
  const kill = () => killAndWait(child);

  try {
    await start();
    const init = (await api('PUT', 'sys/init', { secret_shares: 1, secret_threshold: 1 })) as {
      keys: string[];
      root_token: string;
    };
    unsealKey = init.keys[0] as string;
    rootToken = init.root_token;
    await unseal();
  } catch (e) {
    await kill();
    rmSync(dir, { recursive: true, force: true });
    throw e;
  }
  return {
    address,
    caPem,
    get rootToken() {
      return rootToken;
    },
    api,
    seal: async () => {
      await api('PUT', 'sys/seal');
    },
    unseal,
    kill,
    restart: async () => {
      await start();
      await unseal();
    },
    logTail: () => log.split('\n').slice(-30).join('\n'),
    async stop() {
      await kill();
      await dispatcher?.close();
      process.off('exit', killOnExit);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
