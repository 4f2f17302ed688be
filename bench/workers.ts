// Section 12 — several cores: issuance saturation of `taskpass serve --workers 1` and
// `--workers 2`, both real child processes on the same Redis store (test/support/serve.ts: the
// fake Workload API hands out TestCa SVIDs; the agent presents its X.509-SVID over mTLS from the
// load generator's worker thread, as in lib/env.ts). Both brokers run for the whole section and
// their rounds alternate (order swapped every round), so drift in the machine's load hits both;
// the figure is the median of the per-round ratios 2 ÷ 1.
import { randomUUID } from 'node:crypto';
import { loadavg } from 'node:os';
import { Pool } from 'undici';
import { type ServedBroker, type ServeEnv, serveBroker, startServeEnv } from '../test/support/serve.ts';
import { processesCpuMs } from './lib/cpu.ts';
import { tokenRequests } from './lib/env.ts';
import { LoadClient, type LoadResult, type PreparedRequest } from './lib/load.ts';
import { fmtRate, median, table } from './lib/stats.ts';

export interface WorkersOptions {
  rounds: number;
  roundMs: number;
  warmupMs: number;
  /** Tasks opened before measuring (requests go round robin over them). */
  tasks: number;
  /** Keep-alive connections and closed-loop callers per run. */
  concurrency: number;
  redisUrl?: string;
}

export interface WorkersResult {
  /** Median saturation rates (tokens/s) of 1 and 2 workers. */
  one: number;
  two: number;
  /** Median of the per-round ratios two ÷ one. */
  ratio: number;
  /**
   * Broker CPU per token (µs, primary and workers, every thread; medians over rounds), undefined
   * without /proc. What the second process costs, apart from what the neighbours take.
   */
  cpuUs: [number | undefined, number | undefined];
  roundRatios: number[];
  errors: number;
  /** 1-minute load average when the measuring started and ended. */
  load: [number, number];
}

async function openTasks(env: ServeEnv, url: string, n: number): Promise<string[]> {
  const pool = new Pool(url, {
    connections: 8,
    connect: { ...env.agent, checkServerIdentity: () => undefined },
  });
  const userToken = await env.userToken();
  const ids: string[] = [];
  try {
    let next = 0;
    const opener = async () => {
      while (next++ < n) {
        const res = await pool.request({
          method: 'POST',
          path: '/v1/tasks',
          headers: { 'content-type': 'application/json' },
          body: JSON.stringify({ purpose: 'benchmark', user_token: userToken }),
        });
        const body = (await res.body.json()) as { task_id?: string };
        if (res.statusCode !== 201 || !body.task_id) throw new Error(`open task: HTTP ${res.statusCode}`);
        ids.push(body.task_id);
      }
    };
    await Promise.all(Array.from({ length: 8 }, opener));
  } finally {
    await pool.close();
  }
  return ids;
}

export async function runWorkers(o: WorkersOptions, log: (l: string) => void): Promise<WorkersResult> {
  const env = await startServeEnv();
  // One store for both: they are two deployments of the same broker (shared keys and tasks).
  const keyPrefix = `taskpass-bench:workers:${process.pid}:${randomUUID().slice(0, 8)}:`;
  const brokers: ServedBroker[] = [];
  const clients: LoadClient[] = [];
  try {
    const serve = async (workers: number) => {
      const b = await serveBroker(env, {
        workers,
        keyPrefix,
        ...(o.redisUrl ? { redisUrl: o.redisUrl } : {}),
        // Request lines at info, as a deployment logs them; this process drops them unread.
        logLevel: 'info',
        dropLogsAfterStart: true,
      });
      brokers.push(b);
      return b;
    };
    const one = await serve(1);
    const two = await serve(2);
    const t0 = performance.now();
    const tasks = await openTasks(env, one.url, o.tasks);
    log(`opened ${tasks.length} tasks in ${((performance.now() - t0) / 1000).toFixed(1)} s (POST /v1/tasks)`);
    const requests: PreparedRequest[] = tokenRequests(tasks);
    const tls = { key: env.agent.key, cert: env.agent.cert, ca: env.agent.ca };
    const load1 = new LoadClient({ origin: one.url, tls, connections: o.concurrency });
    const load2 = new LoadClient({ origin: two.url, tls, connections: o.concurrency });
    clients.push(load1, load2);

    let offset = 0;
    let errors = 0;
    // The broker's processes: the primary (idle after handing connections over) and its workers.
    const pidsOf = (b: ServedBroker) => [b.child.pid!, ...b.workerPids()];
    const cpu = new Map<LoadClient, { pids: number[]; us: number[] }>([
      [load1, { pids: pidsOf(one), us: [] }],
      [load2, { pids: pidsOf(two), us: [] }],
    ]);
    const run = async (client: LoadClient, what: string, durationMs = o.roundMs): Promise<number> => {
      const c = cpu.get(client)!;
      const before = processesCpuMs(c.pids);
      const r: LoadResult = await client.run({
        kind: 'closed',
        concurrency: o.concurrency,
        warmupMs: o.warmupMs,
        durationMs,
        requests,
        offset,
      });
      offset += r.sent;
      errors += r.errors;
      const after = processesCpuMs(c.pids);
      if (before !== undefined && after !== undefined && r.sent > 0)
        c.us.push(((after - before) * 1000) / r.sent);
      if (r.errors)
        log(`! ${what}: ${r.errors} failed requests ${JSON.stringify(r.statuses)}: ${r.firstError}`);
      return (r.ok / r.elapsedMs) * 1000;
    };
    // One unmeasured run of 3 s each first: every worker process compiles its hot paths (JIT) on
    // its own, so two workers would otherwise pay twice the warm-up inside the measured rounds.
    await run(load1, '1 worker (warm-up)', 3000);
    await run(load2, '2 workers (warm-up)', 3000);
    for (const c of cpu.values()) c.us.length = 0;
    const loadStart = loadavg()[0]!;
    const rates1: number[] = [];
    const rates2: number[] = [];
    const ratios: number[] = [];
    const rows: string[][] = [['round', '1 worker', '2 workers', '2 ÷ 1', 'CPU/token 1', 'CPU/token 2']];
    const us = (c: LoadClient, i: number) => {
      const v = cpu.get(c)!.us[i];
      return v === undefined ? '—' : `${Math.round(v)} µs`;
    };
    for (let i = 0; i < o.rounds; i++) {
      if (i % 2 === 0) {
        rates1.push(await run(load1, '1 worker'));
        rates2.push(await run(load2, '2 workers'));
      } else {
        rates2.push(await run(load2, '2 workers'));
        rates1.push(await run(load1, '1 worker'));
      }
      ratios.push(rates2[i]! / rates1[i]!);
      rows.push([
        String(i + 1),
        fmtRate(rates1[i]!),
        fmtRate(rates2[i]!),
        ratios[i]!.toFixed(2),
        us(load1, i),
        us(load2, i),
      ]);
    }
    const result: WorkersResult = {
      one: median(rates1),
      two: median(rates2),
      ratio: median(ratios),
      roundRatios: ratios,
      cpuUs: [load1, load2].map((c) => {
        const v = cpu.get(c)!.us;
        return v.length === o.rounds ? median(v) : undefined;
      }) as [number | undefined, number | undefined],
      errors,
      load: [loadStart, loadavg()[0]!],
    };
    const fmtUs = (v: number | undefined) => (v === undefined ? '—' : `${Math.round(v)} µs`);
    rows.push([
      'median',
      fmtRate(result.one),
      fmtRate(result.two),
      result.ratio.toFixed(2),
      fmtUs(result.cpuUs[0]),
      fmtUs(result.cpuUs[1]),
    ]);
    log(
      `saturation, closed loop, ${o.concurrency} keep-alive mTLS connections, ${o.roundMs / 1000} s per run (Redis store):`,
    );
    for (const l of table(rows).split('\n')) log(`  ${l}`);
    log(`load average ${result.load[0].toFixed(2)} → ${result.load[1].toFixed(2)} while measuring`);
    return result;
  } finally {
    for (const c of clients) await c.close();
    for (const b of brokers) await b.stop('SIGTERM');
    await brokers[0]?.dropKeys();
    await env.close();
  }
}
