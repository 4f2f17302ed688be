// The load generator, run in a worker thread so that it has its own event loop (and, on a 2-core
// machine, its own core) instead of competing with the server it measures. One undici Pool of
// keep-alive connections per worker; requests are replayed round-robin from a prepared list.
//
//  closed loop: `concurrency` callers, each sends its next request when the previous one answered.
//               Completed requests inside the measuring window / window length = saturation rate.
//  open loop:   requests are started on a fixed schedule (`rate` per second) whatever the answers;
//               latency is measured from the *scheduled* start, so queueing is not hidden
//               (no coordinated omission).
import { parentPort, workerData } from 'node:worker_threads';
import { Pool } from 'undici';
import type { LoadJob, LoadResult, LoadWorkerData, PreparedRequest } from './load.ts';

const data = workerData as LoadWorkerData;
const pool = new Pool(data.origin, {
  connections: data.connections,
  pipelining: 1,
  keepAliveTimeout: 60_000,
  ...(data.tls
    ? {
        connect: {
          key: data.tls.key,
          cert: data.tls.cert,
          ca: data.tls.ca,
          // SVIDs carry a SPIFFE URI SAN, no DNS/IP SAN: the chain is still verified against `ca`.
          checkServerIdentity: () => undefined,
        },
      }
    : {}),
});

interface Tally {
  ok: number;
  errors: number;
  statuses: Record<string, number>;
  firstError: string | undefined;
}

async function send(r: PreparedRequest, t: Tally): Promise<boolean> {
  try {
    const res = await pool.request({
      origin: data.origin,
      method: r.method,
      path: r.path,
      headers: r.headers,
      ...(r.body !== undefined ? { body: r.body } : {}),
    });
    const text = await res.body.text();
    const ok = res.statusCode >= 200 && res.statusCode < 300;
    if (!ok) {
      t.statuses[res.statusCode] = (t.statuses[res.statusCode] ?? 0) + 1;
      t.firstError ??= `HTTP ${res.statusCode} ${text.slice(0, 300)}`;
    }
    return ok;
  } catch (e) {
    t.statuses.exception = (t.statuses.exception ?? 0) + 1;
    t.firstError ??= String(e);
    return false;
  }
}

async function closed(job: Extract<LoadJob, { kind: 'closed' }>): Promise<LoadResult> {
  const t: Tally = { ok: 0, errors: 0, statuses: {}, firstError: undefined };
  const reqs = job.requests;
  let next = job.offset;
  let counting = false;
  let stop = false;
  const lat: number[] = [];
  const caller = async () => {
    while (!stop) {
      const r = reqs[next++ % reqs.length]!;
      const t0 = performance.now();
      const ok = await send(r, t);
      if (counting && !stop) {
        if (ok) {
          t.ok++;
          lat.push(performance.now() - t0);
        } else t.errors++;
      }
    }
  };
  const callers = Array.from({ length: job.concurrency }, caller);
  await new Promise((r) => setTimeout(r, job.warmupMs));
  counting = true;
  const start = performance.now();
  await new Promise((r) => setTimeout(r, job.durationMs));
  stop = true;
  const elapsedMs = performance.now() - start;
  await Promise.all(callers);
  return { ...t, elapsedMs, latencies: lat, sendLate: [], sent: next - job.offset };
}

async function open(job: Extract<LoadJob, { kind: 'open' }>): Promise<LoadResult> {
  const t: Tally = { ok: 0, errors: 0, statuses: {}, firstError: undefined };
  const reqs = job.requests;
  const interval = 1000 / job.rate;
  const total = Math.floor(((job.warmupMs + job.durationMs) / 1000) * job.rate);
  const warm = Math.floor((job.warmupMs / 1000) * job.rate);
  const lat: number[] = [];
  const sendLate: number[] = [];
  const pending: Promise<void>[] = [];
  const start = performance.now();
  let i = 0;
  while (i < total) {
    const due = Math.min(total, Math.floor((performance.now() - start) / interval) + 1);
    for (; i < due; i++) {
      const scheduled = start + i * interval;
      const measured = i >= warm;
      const r = reqs[(job.offset + i) % reqs.length]!;
      if (measured) sendLate.push(performance.now() - scheduled);
      pending.push(
        send(r, t).then((ok) => {
          if (!measured) return;
          if (ok) {
            t.ok++;
            lat.push(performance.now() - scheduled);
          } else t.errors++;
        }),
      );
    }
    // Sleep until the next request is due (timers are ~1 ms coarse; late sends count as latency).
    const wait = start + i * interval - performance.now();
    await new Promise((r) => setTimeout(r, Math.max(0, wait)));
  }
  await Promise.all(pending);
  return { ...t, elapsedMs: job.durationMs, latencies: lat, sendLate, sent: total };
}

parentPort!.on('message', async (msg: { id: number; job: LoadJob } | { close: true }) => {
  if ('close' in msg) {
    await pool.close();
    parentPort!.close();
    return;
  }
  const result = msg.job.kind === 'closed' ? await closed(msg.job) : await open(msg.job);
  parentPort!.postMessage({ id: msg.id, result });
});
