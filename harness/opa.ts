/**
 * A real OPA server (github.com/open-policy-agent/opa, built from tools/opa into the tools cache by
 * scripts/build-opa.mjs) as a child process on a loopback port, loaded with policy files, plus the
 * REST calls tests make to it: replace a policy module (PUT /v1/policies) or a data document.
 */
import { type ChildProcess, spawn } from 'node:child_process';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { pollUntil } from './poll.ts';
import { freePort } from './net.ts';

const repoRoot = resolve(dirname(fileURLToPath(import.meta.url)), '..');

/** The ticket desk's Rego policy and its data (policies/rego). */
export const TICKET_DESK_REGO = join(repoRoot, 'policies', 'rego');

export interface Opa {
  /** `http://127.0.0.1:<port>` */
  readonly url: string;
  /** PUT /v1/policies/{id}: OPA compiles it first and refuses a bad module (status 400). */
  putPolicy(id: string, rego: string): Promise<{ status: number; body: unknown }>;
  /** PUT /v1/data/{path}: replaces a data document. */
  putData(path: string, value: unknown): Promise<void>;
  /** Data API queries OPA answered so far (POST /v1/data/…), from its Prometheus metrics. */
  queries(): Promise<number>;
  close(): Promise<void>;
}

/** The opa binary: `$TASKPASS_OPA_BIN/opa`, else built or reused by scripts/build-opa.mjs. */
export async function opaBinary(): Promise<string> {
  let dir = process.env.TASKPASS_OPA_BIN;
  if (!dir) {
    const url = pathToFileURL(join(repoRoot, 'scripts', 'build-opa.mjs')).href;
    const { ensureOpa } = (await import(url)) as { ensureOpa(): Promise<string> };
    dir = await ensureOpa();
  }
  return join(dir, 'opa');
}

/** Starts `opa run --server` on 127.0.0.1 with `paths` (policy and data files or directories). */
export async function startOpa(paths: readonly string[] = [TICKET_DESK_REGO]): Promise<Opa> {
  const bin = await opaBinary();
  const port = await freePort();
  const url = `http://127.0.0.1:${port}`;
  const child: ChildProcess = spawn(
    bin,
    [
      'run',
      '--server',
      '--addr',
      `127.0.0.1:${port}`,
      '--log-level',
      'error',
      '--skip-version-check',
      // The fixtures next to the Rego are `taskpass policy test`'s, not data for OPA.
      '--ignore',
      'fixtures',
      ...paths,
    ],
    { stdio: ['ignore', 'ignore', 'pipe'] },
  );
  let stderr = '';
  child.stderr!.on('data', (d) => {
    stderr = `${stderr}${d}`.slice(-2000);
  });
  const exited = new Promise<void>((res) => child.once('exit', () => res()));
  try {
    await pollUntil(`OPA on ${url}`, 20_000, 50, async () => {
      if (child.exitCode !== null) throw new Error(`opa exited (${child.exitCode}): ${stderr}`);
      const ok = await fetch(`${url}/health`).then(
        (r) => r.ok,
        () => false,
      );
      return ok ? true : undefined;
    });
  } catch (e) {
    child.kill('SIGKILL');
    throw e;
  }
  return {
    url,
    async putPolicy(id, rego) {
      const r = await fetch(`${url}/v1/policies/${id}`, {
        method: 'PUT',
        headers: { 'content-type': 'text/plain' },
        body: rego,
      });
      return { status: r.status, body: await r.json() };
    },
    async putData(path, value) {
      const r = await fetch(`${url}/v1/data/${path}`, {
        method: 'PUT',
        headers: { 'content-type': 'application/json' },
        body: JSON.stringify(value),
      });
      if (r.status !== 204) throw new Error(`PUT /v1/data/${path}: HTTP ${r.status} ${await r.text()}`);
    },
    async queries() {
      const text = await (await fetch(`${url}/metrics`)).text();
      let n = 0;
      for (const m of text.matchAll(
        /^http_request_duration_seconds_count\{[^}]*handler="v1\/data",method="post"[^}]*\} (\d+)/gm,
      )) {
        n += Number(m[1]);
      }
      return n;
    },
    async close() {
      if (child.exitCode === null) child.kill('SIGTERM');
      await exited;
    },
  };
}
