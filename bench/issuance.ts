// Section 1 — issuance: POST /v1/tasks/:id/tokens through the real broker versus a bare fastify
// route that signs one ES256 JWT with the same signer (broker/src/mint.ts, node:crypto), on the
// same kind of connection: HTTPS with the same server certificate, the client presenting its
// X.509-SVID, keep-alive connections reused from an undici Pool in a worker thread.
import type { X509Certificate } from 'node:crypto';
import { statSync } from 'node:fs';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { dirname } from 'node:path';
import Fastify, { type FastifyRequest, type FastifyServerFactory } from 'fastify';
import { mintToken, peerChainFromSocket } from '@taskpass/broker';
import { AUDIENCE, AGENT_ID, type BenchEnv, ISSUER, openTasks, tokenRequests } from './lib/env.ts';
import { withCpu } from './lib/cpu.ts';
import { fdatasyncLatency } from './lib/disk.ts';
import { LoadClient, type LoadResult, type PreparedRequest } from './lib/load.ts';
import { fmtMs, fmtRate, median, type Percentiles, percentiles, table } from './lib/stats.ts';

export interface IssuanceOptions {
  rounds: number;
  roundMs: number;
  warmupMs: number;
  latencyMs: number;
  tasks: number;
  /** Calls spread over each task before the list wraps (history per task stays small). */
  concurrency: number;
}

export interface IssuanceResult {
  /** What-if: the broker with the peer chain parsed once per TLS connection (see README). */
  cachedChainRate: number;
  cachedChainRatio: number;
  /** What-if: the broker with its records off (no issued-call write, audit, decision record or request line). */
  recordsOffRate: number;
  recordsOffRatio: number;
  brokerRate: number;
  baselineRate: number;
  ratio: number;
  roundRatios: number[];
  latencyRate: number;
  brokerLatency: Percentiles;
  baselineLatency: Percentiles;
  recordsOffLatency: Percentiles;
  recordsOffCpuUs: number | undefined;
  /** The disk's own 4 KiB write + fdatasync on the store's directory, right after the latency run. */
  fdatasync: Percentiles;
  /** Main-thread CPU per request (µs, medians over rounds; undefined where not measurable). */
  brokerCpuUs: number | undefined;
  baselineCpuUs: number | undefined;
  errors: number;
}

/** The bare route: parse the JSON body, sign one token with the broker's key, answer JSON. */
export async function startBaseline(env: BenchEnv): Promise<{ origin: string; close(): Promise<void> }> {
  const serverFactory: FastifyServerFactory = (handler) =>
    createHttpsServer(env.httpsOptions, handler) as unknown as ReturnType<FastifyServerFactory>;
  const app = Fastify({ logger: false, serverFactory });
  app.post<{ Body: { resource: string; tool: string } }>('/sign', async (req) => {
    const now = Math.floor(Date.now() / 1000);
    const key = env.keys.current();
    const { token, jti } = mintToken({
      issuer: ISSUER,
      kid: key.kid,
      privateKey: key.privateKey,
      sub: 'alice',
      agent: AGENT_ID,
      audience: AUDIENCE,
      iat: now,
      exp: now + 60,
      taskId: 'tsk_baseline',
      detail: { type: 'mcp_tool_call', tool: req.body.tool, resource: req.body.resource, action: 'read' },
      singleUse: false,
      template: 'tickets-support-read',
    });
    return { access_token: token, token_type: 'Bearer', expires_in: 60, jti };
  });
  await app.listen({ host: '127.0.0.1', port: 0 });
  const port = (app.server.address() as AddressInfo).port;
  return { origin: `https://127.0.0.1:${port}`, close: () => app.close() };
}

/**
 * Comparison seam (AppDeps.peerCertificates): the peer chain of a TLS connection extracted and
 * parsed once per socket, but verified against the bundle on every request (a seam disables the
 * broker's per-connection identity cache). Shows what the identity cache saves beyond parsing.
 */
function cachedPeerChain(): (req: FastifyRequest) => readonly X509Certificate[] | undefined {
  const chains = new WeakMap<object, readonly X509Certificate[] | null>();
  return (req) => {
    const socket = req.raw.socket;
    let c = chains.get(socket);
    if (c === undefined) {
      c = peerChainFromSocket(socket) ?? null;
      chains.set(socket, c);
    }
    return c ?? undefined;
  };
}

function rate(r: LoadResult): number {
  return (r.ok / r.elapsedMs) * 1000;
}

/**
 * CPU per request sent (µs), one entry per run: the main thread's, and every thread's of the
 * process; and the event loop's utilisation in each run.
 */
interface CpuLists {
  main: number[];
  all: number[];
  loop: number[];
}
const cpuLists = (): CpuLists => ({ main: [], all: [], loop: [] });

/** Runs one load job and pushes its rate, its CPU per request sent and its loop utilisation. */
async function measured(run: () => Promise<LoadResult>, rates: number[], cpu: CpuLists): Promise<void> {
  const { result, cpuMs, processCpuMs, loopUtilisation } = await withCpu(run);
  rates.push(rate(result));
  cpu.loop.push(loopUtilisation);
  if (result.sent === 0) return;
  if (cpuMs !== undefined) cpu.main.push((cpuMs * 1000) / result.sent);
  cpu.all.push((processCpuMs * 1000) / result.sent);
}

const fmtUs = (us: number | undefined) => (us === undefined ? '—' : `${Math.round(us)} µs`);

function check(what: string, r: LoadResult): void {
  if (r.errors > 0) {
    console.log(`  ! ${what}: ${r.errors} failed requests ${JSON.stringify(r.statuses)}: ${r.firstError}`);
  }
}

export async function runIssuance(env: BenchEnv, o: IssuanceOptions): Promise<IssuanceResult> {
  const baseline = await startBaseline(env);
  const brokerOrigin = env.brokerUrl;
  const tls = { key: env.agent.key, cert: env.agent.cert, ca: env.agent.ca };

  const t0 = performance.now();
  const tasks = await openTasks(env, o.tasks);
  console.log(
    `  opened ${tasks.length} tasks in ${((performance.now() - t0) / 1000).toFixed(1)} s (POST /v1/tasks)`,
  );

  const brokerReqs: PreparedRequest[] = tokenRequests(tasks);
  const baselineReqs: PreparedRequest[] = tokenRequests(tasks, () => '/sign');

  const conns = o.concurrency;
  const brokerLoad = new LoadClient({ origin: brokerOrigin, tls, connections: conns });
  const baseLoad = new LoadClient({ origin: baseline.origin, tls, connections: conns });
  const cachedOrigin = await env.startVariant({ peerCertificates: cachedPeerChain() });
  const cachedLoad = new LoadClient({ origin: cachedOrigin, tls, connections: conns });
  const recordsOffOrigin = await env.startVariant({ records: false });
  const recordsOffLoad = new LoadClient({ origin: recordsOffOrigin, tls, connections: conns });
  let brokerOffset = 0;
  let errors = 0;
  // The broker apps share one store and one list of requests: each run goes on where the last stopped.
  const brokerRunner = (load: LoadClient, what: string) => async (job: Parameters<LoadClient['run']>[0]) => {
    const r = await load.run({ ...job, offset: brokerOffset });
    brokerOffset += r.sent;
    errors += r.errors;
    check(what, r);
    return r;
  };
  const runBroker = brokerRunner(brokerLoad, 'broker');
  const runCached = brokerRunner(cachedLoad, 'broker (chain cached)');
  const runRecordsOff = brokerRunner(recordsOffLoad, 'broker (records off)');
  const runBase = async (job: Parameters<LoadClient['run']>[0]) => {
    const r = await baseLoad.run(job);
    errors += r.errors;
    check('baseline', r);
    return r;
  };

  const closedJob = (requests: PreparedRequest[]) => ({
    kind: 'closed' as const,
    concurrency: conns,
    warmupMs: o.warmupMs,
    durationMs: o.roundMs,
    requests,
    offset: 0,
  });

  // Saturation: rotate the order of the three targets from round to round, so that drift in the
  // machine's load (other processes, GC, the growing tables) hits all of them alike.
  const brokerRates: number[] = [];
  const baseRates: number[] = [];
  const cachedRates: number[] = [];
  const recordsOffRates: number[] = [];
  const roundRatios: number[] = [];
  const cachedRatios: number[] = [];
  const recordsOffRatios: number[] = [];
  const baseCpu = cpuLists();
  const brokerCpu = cpuLists();
  const recordsOffCpu = cpuLists();
  const rows: string[][] = [
    [
      'round',
      'bare sign route',
      'broker issuance',
      'ratio',
      'verify every request',
      'ratio',
      'records off',
      'ratio',
      'CPU/req bare',
      'CPU/req broker',
      'CPU/req records off',
    ],
  ];
  for (let i = 0; i < o.rounds; i++) {
    const runs = [
      () => measured(() => runBase(closedJob(baselineReqs)), baseRates, baseCpu),
      () => measured(() => runBroker(closedJob(brokerReqs)), brokerRates, brokerCpu),
      async () => cachedRates.push(rate(await runCached(closedJob(brokerReqs)))),
      () => measured(() => runRecordsOff(closedJob(brokerReqs)), recordsOffRates, recordsOffCpu),
    ];
    for (let k = 0; k < runs.length; k++) await runs[(i + k) % runs.length]!();
    const b = baseRates[i]!;
    const s1 = brokerRates[i]!;
    const s2 = cachedRates[i]!;
    const s3 = recordsOffRates[i]!;
    roundRatios.push(s1 / b);
    cachedRatios.push(s2 / b);
    recordsOffRatios.push(s3 / b);
    rows.push([
      String(i + 1),
      fmtRate(b),
      fmtRate(s1),
      (s1 / b).toFixed(2),
      fmtRate(s2),
      (s2 / b).toFixed(2),
      fmtRate(s3),
      (s3 / b).toFixed(2),
      fmtUs(baseCpu.main[i]),
      fmtUs(brokerCpu.main[i]),
      fmtUs(recordsOffCpu.main[i]),
    ]);
  }
  const baselineCpuUs = baseCpu.main.length ? median(baseCpu.main) : undefined;
  const brokerCpuUs = brokerCpu.main.length ? median(brokerCpu.main) : undefined;
  const recordsOffCpuUs = recordsOffCpu.main.length ? median(recordsOffCpu.main) : undefined;
  const brokerRate = median(brokerRates);
  const baselineRate = median(baseRates);
  const cachedChainRate = median(cachedRates);
  const recordsOffRate = median(recordsOffRates);
  rows.push([
    'median',
    fmtRate(baselineRate),
    fmtRate(brokerRate),
    median(roundRatios).toFixed(2),
    fmtRate(cachedChainRate),
    median(cachedRatios).toFixed(2),
    fmtRate(recordsOffRate),
    median(recordsOffRatios).toFixed(2),
    fmtUs(baselineCpuUs),
    fmtUs(brokerCpuUs),
    fmtUs(recordsOffCpuUs),
  ]);
  console.log(
    `  saturation, closed loop, ${conns} keep-alive mTLS connections, ${o.roundMs / 1000} s per run:`,
  );
  console.log(indent(table(rows)));
  if (baselineCpuUs !== undefined && brokerCpuUs !== undefined) {
    console.log(
      `  main-thread CPU per request: bare ÷ broker = ${(baselineCpuUs / brokerCpuUs).toFixed(2)} (the throughput ratio when the broker's thread, not a neighbour, is the limit)`,
    );
  }
  // On two cores everything but the event loop shares the other core: the store's writer and
  // checkpoint threads, V8's GC helpers, libuv's pool, and the load generator's own thread.
  const allCpu = [baseCpu, brokerCpu, recordsOffCpu].map((c) =>
    fmtUs(c.all.length ? median(c.all) : undefined),
  );
  console.log(
    `  CPU per request, every thread of the process (event loop, store writer and checkpoints, GC helpers, the load generator): bare ${allCpu[0]}, broker ${allCpu[1]}, records off ${allCpu[2]}`,
  );
  // The throughput ratio is about the CPU ratio times the ratio of the two event loops' busy
  // shares: a loop that waits for commits with every caller's request in them sits idle.
  const [bareLoop = 0, brokerLoop = 0, offLoop = 0] = [baseCpu, brokerCpu, recordsOffCpu].map((c) =>
    c.loop.length ? median(c.loop) : 0,
  );
  let factors = '';
  if (baselineCpuUs !== undefined && brokerCpuUs !== undefined && bareLoop > 0) {
    const cpuRatio = baselineCpuUs / brokerCpuUs;
    const loopRatio = brokerLoop / bareLoop;
    factors = `; CPU ratio × utilisation ratio = ${cpuRatio.toFixed(2)} × ${loopRatio.toFixed(2)} = ${(cpuRatio * loopRatio).toFixed(2)}`;
  }
  console.log(
    `  event-loop utilisation (the share of time not spent waiting): bare ${bareLoop.toFixed(2)}, broker ${brokerLoop.toFixed(2)}, records off ${offLoop.toFixed(2)}${factors}`,
  );

  // Latency at half the broker's saturation rate (open loop, scheduled sends), both targets.
  const latencyRate = Math.max(50, Math.round(brokerRate / 2));
  const openJob = (requests: PreparedRequest[]) => ({
    kind: 'open' as const,
    rate: latencyRate,
    warmupMs: o.warmupMs,
    durationMs: o.latencyMs,
    requests,
    offset: 0,
  });
  const sl = await runBroker(openJob(brokerReqs));
  const bl = await runBase(openJob(baselineReqs));
  const rl = await runRecordsOff(openJob(brokerReqs));
  const brokerLatency = percentiles(sl.latencies);
  const baselineLatency = percentiles(bl.latencies);
  const recordsOffLatency = percentiles(rl.latencies);
  console.log(
    `  latency at ${fmtRate(latencyRate)} (half the broker's saturation), open loop, ${o.latencyMs / 1000} s:`,
  );
  console.log(
    indent(
      table([
        ['target', 'n', 'p50', 'p90', 'p99', 'max'],
        latRow('bare sign route', baselineLatency),
        latRow('broker issuance', brokerLatency),
        latRow('records off', recordsOffLatency),
      ]),
    ),
  );
  const late = [bl, sl, rl].map((r) => percentiles(r.sendLate));
  console.log(
    `  the load generator's own lateness in sending (counted in the latencies above; its thread shares the cores): p99 ${late.map((p) => fmtMs(p.p99)).join(' / ')}, max ${late.map((p) => fmtMs(p.max)).join(' / ')} (bare / broker / records off)`,
  );
  const fdatasync = fdatasyncLatency(dirname(env.config.store.sqlite?.path ?? '.'));
  console.log(
    `  the disk under the store: 4 KiB write + fdatasync, ${fdatasync.n} times: p50 ${fmtMs(fdatasync.p50)}, p99 ${fmtMs(fdatasync.p99)}, max ${fmtMs(fdatasync.max)} (every token waits for one sync)`,
  );
  console.log(`  calls per task at the end: ~${Math.round(brokerOffset / tasks.length)}`);
  // Under steady load only the WAL restarts keep this near store.sqlite.walLimitMiB.
  const wal = statSync(`${env.config.store.sqlite?.path}-wal`, { throwIfNoEntry: false })?.size ?? 0;
  console.log(
    `  the store's WAL file at the end: ${(wal / 2 ** 20).toFixed(1)} MiB (started over past store.sqlite.walLimitMiB, ${env.config.store.sqlite?.walLimitMiB ?? 64} MiB)`,
  );

  await brokerLoad.close();
  await baseLoad.close();
  await cachedLoad.close();
  await recordsOffLoad.close();
  await baseline.close();
  return {
    cachedChainRate,
    cachedChainRatio: median(cachedRatios),
    recordsOffRate,
    recordsOffRatio: median(recordsOffRatios),
    recordsOffLatency,
    recordsOffCpuUs,
    brokerRate,
    baselineRate,
    ratio: median(roundRatios),
    roundRatios,
    latencyRate,
    brokerLatency,
    baselineLatency,
    fdatasync,
    brokerCpuUs,
    baselineCpuUs,
    errors,
  };
}

export function latRow(name: string, p: Percentiles): string[] {
  return [name, String(p.n), fmtMs(p.p50), fmtMs(p.p90), fmtMs(p.p99), fmtMs(p.max)];
}

export const indent = (s: string): string =>
  s
    .split('\n')
    .map((l) => `    ${l}`)
    .join('\n');
