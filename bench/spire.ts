// Section 8 — a call token next to SPIRE (issue #13): one client, sequential requests, in the same
// run on the same machine: a Taskpass call token (POST /v1/tasks/:id/tokens on a kept-alive mTLS
// connection, the full broker path with its durable record) versus a real SPIRE agent's JWT-SVID
// over the Workload API, for a new audience each time (the agent asks the SPIRE server to sign
// one) and for one audience it already holds (the agent's cache). Real SPIRE, broker and store
// (examples/stack.ts), so it starts in ~10 s. The three alternate, so drift hits all of them.
import { createMtlsAgent, matchId, type TlsSource } from '@taskpass/spiffe';
import { WorkloadApiClient } from '@taskpass/spiffe/workload';
import { request } from 'undici';
import { ALICE, startStack } from '../examples/stack.ts';
import { sourceByHint } from '../test/support/workloads.ts';
import { fmtMs, type Percentiles, percentiles, table } from './lib/stats.ts';

export interface SpireBenchResult {
  callToken: Percentiles;
  jwtSvidNewAudience: Percentiles;
  jwtSvidCached: Percentiles;
  errors: number;
}

async function time(fn: () => Promise<boolean>): Promise<number | undefined> {
  const t = performance.now();
  const ok = await fn();
  return ok ? performance.now() - t : undefined;
}

export async function runSpireBench(o: {
  calls: number;
  warmup: number;
  log?: (line: string) => void;
}): Promise<SpireBenchResult> {
  await using stack = await startStack({ brokerLogLevel: 'warn', progress: o.log });
  const agentSource = await sourceByHint(stack, stack.hints.agent);
  const toBroker = createMtlsAgent(agentSource as TlsSource, matchId(stack.ids.broker));
  const workloadApi = new WorkloadApiClient({ address: stack.spire.address });
  const json = { 'content-type': 'application/json' };
  try {
    const opened = await request(`${stack.urls.broker}/v1/tasks`, {
      method: 'POST',
      dispatcher: toBroker,
      headers: json,
      body: JSON.stringify({ purpose: 'bench: next to SPIRE', user_token: await stack.userToken(ALICE) }),
    });
    const { task_id: taskId } = (await opened.body.json()) as { task_id: string };
    if (opened.statusCode !== 201) throw new Error(`open task: HTTP ${opened.statusCode}`);
    const callToken = (i: number) => async () => {
      const r = await request(`${stack.urls.broker}/v1/tasks/${taskId}/tokens`, {
        method: 'POST',
        dispatcher: toBroker,
        headers: json,
        body: JSON.stringify({
          audience: stack.audience,
          tool: 'get_ticket',
          resource: `tickets/T-${i}`,
          action: 'read',
        }),
      });
      const body = (await r.body.json()) as { access_token?: string };
      return r.statusCode === 200 && typeof body.access_token === 'string';
    };
    const svid = (audience: string) => async () =>
      (await workloadApi.fetchJwtSvid({ audience, subject: stack.ids.agent })).token.length > 0;
    const kinds = [
      (i: number) => callToken(i),
      (i: number) => svid(`https://bench-${i}-${Date.now()}.taskpass.local`),
      (_i: number) => svid('https://bench-cached.taskpass.local'),
    ];
    const samples: number[][] = [[], [], []];
    let errors = 0;
    o.log?.(`  ${o.warmup} warm-up rounds, then ${o.calls} measured, the three alternating…`);
    for (let i = 0; i < o.warmup + o.calls; i++) {
      for (let k = 0; k < kinds.length; k++) {
        const which = (i + k) % kinds.length;
        const ms = await time(kinds[which]!(i));
        if (ms === undefined) errors++;
        else if (i >= o.warmup) samples[which]!.push(ms);
      }
    }
    return {
      callToken: percentiles(samples[0]!),
      jwtSvidNewAudience: percentiles(samples[1]!),
      jwtSvidCached: percentiles(samples[2]!),
      errors,
    };
  } finally {
    workloadApi.close();
    await toBroker.close();
    await agentSource.close();
  }
}

export function formatSpireBench(r: SpireBenchResult): string {
  const row = (what: string, p: Percentiles) => [what, fmtMs(p.p50), fmtMs(p.p90), fmtMs(p.p99), String(p.n)];
  return table([
    ['one client, sequential', 'p50', 'p90', 'p99', 'n'],
    row('Taskpass call token (mTLS keep-alive, durable)', r.callToken),
    row('SPIRE JWT-SVID, new audience (server signs)', r.jwtSvidNewAudience),
    row('SPIRE JWT-SVID, cached audience', r.jwtSvidCached),
  ]);
}
