// Section 3 — revocation propagation: one broker (in-process: real store, hub, SSE feed) and N
// verifiers in a worker thread, each with its own RevocationFeedClient on its own mTLS connection
// to /v1/revocations/stream. For each of `tasks` tasks: open it, get a call token, check that every
// verifier accepts it, POST /v1/tasks/:id/complete, and time until each verifier refuses it.
import type { Worker } from 'node:worker_threads';
import { AUDIENCE, type BenchEnv, ISSUER, agentCall, issueToken, openTasks } from './lib/env.ts';
import { tsWorker } from './lib/load.ts';
import type {
  RevocationWorkerData,
  RevocationWorkerMsg,
  RevocationWorkerReply,
} from './lib/revocation-worker.ts';
import { type Percentiles, percentiles, table, fmtMs } from './lib/stats.ts';
import { indent } from './issuance.ts';

export interface RevocationOptions {
  verifiers: number;
  tasks: number;
}

export interface RevocationResult {
  fromReturn: Percentiles;
  fromSend: Percentiles;
  completeCall: Percentiles;
  missed: number;
  notRefused: number;
}

function next(w: Worker): Promise<RevocationWorkerReply> {
  return new Promise((resolve, reject) => {
    const onMsg = (m: RevocationWorkerReply) => {
      w.off('error', onErr);
      if (m.type === 'error') reject(new Error(m.message));
      else resolve(m);
    };
    const onErr = (e: Error) => {
      w.off('message', onMsg);
      reject(e);
    };
    w.once('message', onMsg);
    w.once('error', onErr);
  });
}

export async function runRevocation(env: BenchEnv, o: RevocationOptions): Promise<RevocationResult> {
  const now = () => performance.timeOrigin + performance.now();
  const data: RevocationWorkerData = {
    brokerUrl: env.brokerUrl,
    tls: env.verifier,
    agentCert: env.agent.cert,
    issuer: ISSUER,
    audience: AUDIENCE,
    jwks: env.jwks(),
    verifiers: o.verifiers,
  };
  const w = tsWorker(new URL('./lib/revocation-worker.ts', import.meta.url), data);
  const t0 = now();
  await next(w);
  console.log(
    `  ${o.verifiers} verifiers subscribed (${o.verifiers} mTLS SSE streams) in ${((now() - t0) / 1000).toFixed(1)} s; hub subscribers: ${env.hub.subscriberCount()}`,
  );

  const tasks = await openTasks(env, o.tasks, 4);
  const fromReturn: number[] = [];
  const fromSend: number[] = [];
  const completeMs: number[] = [];
  let missed = 0;
  let notRefused = 0;
  for (const [i, task] of tasks.entries()) {
    const ticket = `T-${i}`;
    const tok = await issueToken(env, task, ticket);
    const send = (m: RevocationWorkerMsg) => w.postMessage(m);
    send({ type: 'arm', token: tok.access_token, ticket, task, jti: tok.jti });
    await next(w); // armed: every verifier accepted the token
    const observed = next(w);
    const sent = now();
    await agentCall(env, 'POST', `/v1/tasks/${task}/complete`, { status: 'completed' });
    const returned = now();
    completeMs.push(returned - sent);
    const r = (await observed) as Extract<RevocationWorkerReply, { type: 'observed' }>;
    notRefused += r.notRefused;
    for (const at of r.at) {
      if (Number.isNaN(at)) {
        missed++;
        continue;
      }
      // A verifier may see the event before the HTTP answer reaches the agent: clamp at 0.
      fromReturn.push(Math.max(0, at - returned));
      fromSend.push(at - sent);
    }
  }
  const res = {
    fromReturn: percentiles(fromReturn),
    fromSend: percentiles(fromSend),
    completeCall: percentiles(completeMs),
    missed,
    notRefused,
  };
  const row = (name: string, p: Percentiles) => [
    name,
    String(p.n),
    fmtMs(p.p50),
    fmtMs(p.p90),
    fmtMs(p.p99),
    fmtMs(p.max),
  ];
  console.log(`  ${o.tasks} tasks completed × ${o.verifiers} verifiers:`);
  console.log(
    indent(
      table([
        ['interval', 'n', 'p50', 'p90', 'p99', 'max'],
        row('complete sent → refused', res.fromSend),
        row('complete returned → refused', res.fromReturn),
        row('complete call itself', res.completeCall),
      ]),
    ),
  );
  if (missed || notRefused)
    console.log(`  ! ${missed} samples never saw the revocation; ${notRefused} verifiers did not refuse`);
  w.postMessage({ type: 'close' } satisfies RevocationWorkerMsg);
  await new Promise((r) => w.once('exit', r));
  return res;
}
