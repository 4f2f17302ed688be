// Soak (issue #7): one broker and several verifiers under a steady mixed load for minutes, looking
// for errors and for memory that keeps growing.
//
//   npm run bench -- soak                    (10 minutes)
//   npm run bench -- soak --minutes 2
//   node --conditions=taskpass:source --import tsx bench/soak.ts --minutes 10
//
// The broker is the benchmark environment of lib/env.ts (real SQLite store, keys, policies, SSE
// revocation hub, mTLS agent authentication, rate limiter, logs), plus the periodic store sweep
// server.ts runs. The verifiers are in-process `createVerifier`s, each following the broker's
// revocation feed with its own RevocationFeedClient over its own mTLS connection.
//
// One cycle is what an agent does for one short task: open it (POST /v1/tasks with a user token),
// get `tokensPerTask` call tokens, have each verified by one of the verifiers (round-robin), then
// complete the task (a revocation event every verifier receives). Feed churn: every `churnEveryMs`
// one verifier drops its feed and subscribes afresh (snapshot + live).
//
//   1. saturation: `concurrency` cycles back to back for `saturationMs` → cycles/s;
//   2. soak: cycles started on a fixed schedule at half that rate for `durationMs` (bounded: the
//      number of cycles is fixed up front; at most `maxInFlight` run at once, the rest count as
//      "behind"); heap (after a forced GC) and RSS are sampled every `sampleEveryMs`;
//   3. check: every verifier's feed caught up with the store, and the tokens of the last completed
//      tasks are refused by every verifier (TASKPASS_VERIFY_REVOKED).
//
// Errors: any non-2xx answer or exception, a fresh token a verifier refuses, a completed task's
// token a verifier still accepts. Memory is compared after the warm-up: first vs last samples
// (mean of three each) and the least-squares slope, MB per minute.
import { X509Certificate } from 'node:crypto';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { parseArgs } from 'node:util';
import { pathToFileURL } from 'node:url';
import type { Agent } from 'undici';
import { createVerifier, RevocationFeedClient, type Verifier, VerifierError } from '@taskpass/verifier';
import { agentCall, AUDIENCE, type BenchEnv, ISSUER, startBenchEnv } from './lib/env.ts';
import { fmtMs, percentiles, type Percentiles } from './lib/stats.ts';

export interface SoakOptions {
  /** Soak length at half saturation. Default 10 minutes. */
  durationMs?: number;
  /** Saturation measurement before the soak. Default 10 s. */
  saturationMs?: number;
  /** Memory samples before this are warm-up. Default: a fifth of the soak, at most 60 s. */
  warmupMs?: number;
  /** Verifiers following the feed. Default 4. */
  verifiers?: number;
  /** Call tokens per task. Default 3. */
  tokensPerTask?: number;
  /** Closed-loop callers for the saturation measurement. Default 16. */
  concurrency?: number;
  /** Cap on cycles running at once during the soak. Default 64. */
  maxInFlight?: number;
  /** Memory sample interval. Default: 5 s, or a twentieth of the soak when shorter. */
  sampleEveryMs?: number;
  /** One verifier re-subscribes this often. Default 5 s. */
  churnEveryMs?: number;
  /** Task lifetime (the sweeps drop them and their revocations afterwards). Default 30 s. */
  taskTtlSec?: number;
  /** The broker's store sweep interval (server.ts runs it every `sweepEvery`). Default 10 s. */
  sweepEveryMs?: number;
  /** Progress lines. */
  log?: (line: string) => void;
  /** An existing environment (the caller closes it). Default: a fresh one, closed at the end. */
  env?: BenchEnv;
}

export interface MemorySample {
  /** ms since the soak started. */
  t: number;
  heapUsed: number;
  /** Memory outside the V8 heap held by JS objects (Buffers, ArrayBuffers). */
  external: number;
  rss: number;
}

export interface SoakResult {
  saturationRate: number;
  targetRate: number;
  /** Cycles completed during the soak (and how many were attempted). */
  cycles: number;
  attempted: number;
  /** Cycles completed after the warm-up (the work the memory comparison covers). */
  steadyCycles: number;
  /** Cycles that could not start on time because `maxInFlight` were running. */
  behind: number;
  errors: number;
  /** The first few distinct error messages. */
  errorSamples: string[];
  /** Requests answered (broker) and verifications made, in the soak. */
  requests: number;
  verifications: number;
  feedResubscriptions: number;
  cycleLatency: Percentiles;
  samples: MemorySample[];
  /** Samples after the warm-up. */
  steady: MemorySample[];
  heap: { first: number; last: number; slopePerMin: number };
  /** heapUsed + external: what JS objects hold, on and off the V8 heap (the leak check uses this). */
  live: { first: number; last: number; slopePerMin: number };
  rss: { first: number; last: number; slopePerMin: number };
  /** Revoked tokens checked at the end against every verifier. */
  revocationsChecked: number;
  /** Whether gc() could be forced before each sample (heap figures are then live memory). */
  gcForced: boolean;
  durationMs: number;
}

const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));
const MB = 1024 * 1024;

/** `global.gc` without starting node with --expose-gc (so `npm run bench` and tests can use it). */
function forceGc(): (() => void) | undefined {
  try {
    setFlagsFromString('--expose-gc');
    return runInNewContext('gc') as () => void;
  } catch {
    return undefined;
  }
}

/** Least-squares slope of y over t (ms), per minute. */
function slopePerMin(points: { t: number; y: number }[]): number {
  const n = points.length;
  if (n < 2) return Number.NaN;
  const mt = points.reduce((s, p) => s + p.t, 0) / n;
  const my = points.reduce((s, p) => s + p.y, 0) / n;
  let num = 0;
  let den = 0;
  for (const p of points) {
    num += (p.t - mt) * (p.y - my);
    den += (p.t - mt) ** 2;
  }
  return den === 0 ? 0 : (num / den) * 60_000;
}

const mean = (xs: number[]) => xs.reduce((s, x) => s + x, 0) / xs.length;

interface Slot {
  feed: RevocationFeedClient;
  verifier: Verifier;
  dispatcher: Agent;
}

export async function runSoak(o: SoakOptions = {}): Promise<SoakResult> {
  const durationMs = o.durationMs ?? 10 * 60_000;
  const saturationMs = o.saturationMs ?? 10_000;
  const warmupMs = o.warmupMs ?? Math.min(60_000, durationMs / 5);
  const nVerifiers = o.verifiers ?? 4;
  const tokensPerTask = o.tokensPerTask ?? 3;
  const concurrency = o.concurrency ?? 16;
  const maxInFlight = o.maxInFlight ?? 64;
  const sampleEveryMs = o.sampleEveryMs ?? Math.min(5_000, Math.max(250, durationMs / 20));
  const churnEveryMs = o.churnEveryMs ?? 5_000;
  const taskTtlSec = o.taskTtlSec ?? 30;
  const sweepEveryMs = o.sweepEveryMs ?? 10_000;
  const log = o.log ?? (() => {});
  const gc = forceGc();

  const env = o.env ?? (await startBenchEnv());
  const cleanups: (() => Promise<unknown>)[] = [];
  if (!o.env) cleanups.push(() => env.close());
  const sweeper = setInterval(() => {
    env.store.sweep(Math.floor(Date.now() / 1000)).catch(() => undefined);
  }, sweepEveryMs);
  cleanups.push(async () => clearInterval(sweeper));

  const tools = { get_ticket: { action: 'read' as const, resource: 'tickets/{ticket_id}' } };
  const subscribe = async (): Promise<Slot> => {
    const dispatcher = env.verifierDispatcher();
    const feed = new RevocationFeedClient({ brokerUrl: env.brokerUrl, dispatcher });
    await feed.ready(20_000);
    const verifier = createVerifier({
      issuer: ISSUER,
      audience: AUDIENCE,
      jwks: env.jwks() as never,
      tools,
      revocation: feed,
    });
    return { feed, verifier, dispatcher };
  };
  // Call tokens are bound to the agent's certificate (cnf): an MCP server sees it on the connection.
  const clientCertificate = new X509Certificate(env.agent.cert);
  const slots: Slot[] = [];
  for (let i = 0; i < nVerifiers; i++) slots.push(await subscribe());
  cleanups.push(async () => {
    for (const s of slots) {
      await s.feed.close();
      await s.dispatcher.close().catch(() => undefined);
    }
  });

  const userToken = await env.userToken();
  let errors = 0;
  let requests = 0;
  let verifications = 0;
  const errorSamples = new Set<string>();
  const fail = (what: string, e: unknown) => {
    errors++;
    if (errorSamples.size < 5)
      errorSamples.add(`${what}: ${e instanceof Error ? e.message : String(e)}`.slice(0, 300));
  };
  /** Tokens of recently completed tasks (checked at the end). */
  const completed: { task: string; token: string; ticket: string }[] = [];
  let next = 0;

  const cycle = async (): Promise<boolean> => {
    const n = next++;
    let step = 'open';
    try {
      const task = await agentCall<{ task_id: string }>(env, 'POST', '/v1/tasks', {
        purpose: 'soak',
        user_token: userToken,
        ttl_seconds: taskTtlSec,
      });
      requests++;
      let last: { token: string; ticket: string } | undefined;
      for (let k = 0; k < tokensPerTask; k++) {
        step = 'token';
        const ticket = `T-${(n * tokensPerTask + k) % 100_000}`;
        const tok = await agentCall<{ access_token: string }>(
          env,
          'POST',
          `/v1/tasks/${task.task_id}/tokens`,
          {
            audience: AUDIENCE,
            tool: 'get_ticket',
            resource: `tickets/${ticket}`,
            action: 'read',
          },
        );
        requests++;
        step = 'verify';
        const slot = slots[(n + k) % slots.length]!;
        await slot.verifier.verifyCall(tok.access_token, {
          tool: 'get_ticket',
          args: { ticket_id: ticket },
          clientCertificate,
        });
        verifications++;
        last = { token: tok.access_token, ticket };
      }
      step = 'complete';
      await agentCall(env, 'POST', `/v1/tasks/${task.task_id}/complete`, { status: 'completed' });
      requests++;
      if (last) {
        completed.push({ task: task.task_id, ...last });
        if (completed.length > 200) completed.shift();
      }
      return true;
    } catch (e) {
      fail(step, e);
      return false;
    }
  };

  // 1. Saturation: closed loop.
  log(`saturation: ${concurrency} concurrent cycles for ${(saturationMs / 1000).toFixed(0)} s …`);
  let satDone = 0;
  const satEnd = performance.now() + saturationMs;
  const satStart = performance.now();
  await Promise.all(
    Array.from({ length: concurrency }, async () => {
      // Bounded: a cycle takes at least one loopback round trip.
      for (let i = 0; i < 1_000_000 && performance.now() < satEnd; i++) if (await cycle()) satDone++;
    }),
  );
  const saturationRate = satDone / ((performance.now() - satStart) / 1000);
  const targetRate = saturationRate / 2;
  const satErrors = errors;
  log(
    `saturation: ${saturationRate.toFixed(1)} cycles/s (${satErrors} errors); soak at ${targetRate.toFixed(1)} cycles/s`,
  );

  // 2. Soak: open loop at half saturation, bounded.
  requests = 0;
  verifications = 0;
  const attempted = Math.max(1, Math.round((targetRate * durationMs) / 1000));
  const interval = 1000 / targetRate;
  const samples: MemorySample[] = [];
  const latencies: number[] = [];
  let behind = 0;
  let done = 0;
  let steadyCycles = 0;
  let inFlight = 0;
  let resubscriptions = 0;
  const t0 = performance.now();
  const sample = () => {
    gc?.();
    const m = process.memoryUsage();
    samples.push({ t: performance.now() - t0, heapUsed: m.heapUsed, external: m.external, rss: m.rss });
  };
  sample();
  const sampler = setInterval(() => {
    sample();
    const s = samples.at(-1)!;
    if (samples.length % Math.max(1, Math.round(30_000 / sampleEveryMs)) === 0) {
      log(
        `  ${(s.t / 1000).toFixed(0)} s: ${done} cycles, ${errors - satErrors} errors, heap ${(s.heapUsed / MB).toFixed(1)} MB, rss ${(s.rss / MB).toFixed(1)} MB`,
      );
    }
  }, sampleEveryMs);
  let churnIndex = 0;
  let churning: Promise<void> = Promise.resolve();
  const churner = setInterval(() => {
    churning = churning.then(async () => {
      const i = churnIndex++ % slots.length;
      try {
        const fresh = await subscribe();
        const old = slots[i]!;
        slots[i] = fresh;
        resubscriptions++;
        await old.feed.close();
        await old.dispatcher.close().catch(() => undefined);
      } catch (e) {
        fail('resubscribe', e);
      }
    });
  }, churnEveryMs);
  const running = new Set<Promise<void>>();
  for (let i = 0; i < attempted; i++) {
    const due = t0 + i * interval;
    const wait = due - performance.now();
    if (wait > 0) await sleep(wait);
    while (inFlight >= maxInFlight) {
      behind++;
      await Promise.race(running);
    }
    inFlight++;
    const started = performance.now();
    const p: Promise<void> = cycle().then((ok) => {
      inFlight--;
      running.delete(p);
      if (ok) {
        done++;
        if (performance.now() - t0 >= warmupMs) steadyCycles++;
        latencies.push(performance.now() - started);
      }
    });
    running.add(p);
  }
  await Promise.all(running);
  clearInterval(churner);
  await churning;
  clearInterval(sampler);
  sample();
  const soakMs = performance.now() - t0;

  // 3. Every verifier caught up with the store and refuses the completed tasks' tokens.
  const storeSeq = await env.store.currentSeq();
  const deadline = Date.now() + 20_000;
  while (slots.some((s) => s.feed.seq < storeSeq) && Date.now() < deadline) await sleep(50);
  let revocationsChecked = 0;
  for (const c of completed) {
    for (const [i, s] of slots.entries()) {
      try {
        await s.verifier.verifyCall(c.token, {
          tool: 'get_ticket',
          args: { ticket_id: c.ticket },
          clientCertificate,
        });
        fail('revocation', new Error(`verifier ${i} still accepts a token of completed task ${c.task}`));
      } catch (e) {
        if (!(e instanceof VerifierError && e.code === 'TASKPASS_VERIFY_REVOKED')) fail('revocation', e);
      }
      revocationsChecked++;
    }
  }

  for (const c of cleanups.reverse()) await c().catch(() => undefined);

  const steady = samples.filter((s) => s.t >= warmupMs);
  const ends = (of: (s: MemorySample) => number) => {
    const ys = steady.map(of);
    const k = Math.min(3, Math.max(1, Math.floor(ys.length / 3)));
    return {
      first: ys.length ? mean(ys.slice(0, k)) : Number.NaN,
      last: ys.length ? mean(ys.slice(-k)) : Number.NaN,
      slopePerMin: slopePerMin(steady.map((s) => ({ t: s.t, y: of(s) }))),
    };
  };
  return {
    saturationRate,
    targetRate,
    cycles: done,
    attempted,
    steadyCycles,
    behind,
    errors,
    errorSamples: [...errorSamples],
    requests,
    verifications,
    feedResubscriptions: resubscriptions,
    cycleLatency: percentiles(latencies),
    samples,
    steady,
    heap: ends((s) => s.heapUsed),
    live: ends((s) => s.heapUsed + s.external),
    rss: ends((s) => s.rss),
    revocationsChecked,
    gcForced: gc !== undefined,
    durationMs: soakMs,
  };
}

/** The figures, as printed by `npm run bench -- soak` (and pasted into bench/README.md). */
export function formatSoak(r: SoakResult): string {
  const mb = (b: number) => `${(b / MB).toFixed(1)} MB`;
  const slope = (b: number) => `${b >= 0 ? '+' : ''}${(b / MB).toFixed(2)} MB/min`;
  return [
    `saturation (closed loop)     ${r.saturationRate.toFixed(1)} cycles/s`,
    `soak rate (half saturation)  ${r.targetRate.toFixed(1)} cycles/s for ${(r.durationMs / 60_000).toFixed(1)} min`,
    `cycles                       ${r.cycles} of ${r.attempted} (${r.behind} started late), ${r.requests} broker requests, ${r.verifications} verifications, ${r.feedResubscriptions} feed re-subscriptions`,
    `errors                       ${r.errors}${r.errorSamples.length ? ` — ${r.errorSamples.join(' | ')}` : ''}`,
    `cycle latency                p50 ${fmtMs(r.cycleLatency.p50)}, p99 ${fmtMs(r.cycleLatency.p99)}, max ${fmtMs(r.cycleLatency.max)}`,
    `revoked tokens re-checked    ${r.revocationsChecked} (every verifier refused each)`,
    `heap after warm-up${r.gcForced ? ' (after gc)' : ''}      ${mb(r.heap.first)} → ${mb(r.heap.last)}, slope ${slope(r.heap.slopePerMin)} (${r.steady.length} samples)`,
    `heap + external              ${mb(r.live.first)} → ${mb(r.live.last)}, slope ${slope(r.live.slopePerMin)}`,
    `rss after warm-up            ${mb(r.rss.first)} → ${mb(r.rss.last)}, slope ${slope(r.rss.slopePerMin)}`,
  ].join('\n');
}

/** CLI: `--minutes N` (default 10), `--saturation-seconds N` (default 10), `--verifiers N` (default 4). */
export async function soakMain(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: {
      minutes: { type: 'string' },
      'saturation-seconds': { type: 'string' },
      verifiers: { type: 'string' },
    },
    allowPositionals: true,
  });
  const minutes = Number(values.minutes ?? 10);
  const r = await runSoak({
    durationMs: minutes * 60_000,
    saturationMs: Number(values['saturation-seconds'] ?? 10) * 1000,
    verifiers: Number(values.verifiers ?? 4),
    log: (l) => console.log(l),
  });
  console.log(`\nSoak — node ${process.version}\n${formatSoak(r)}`);
  if (r.errors > 0) process.exitCode = 1;
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await soakMain(process.argv.slice(2));
}
