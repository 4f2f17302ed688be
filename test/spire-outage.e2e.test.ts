// The SPIRE agent goes away under load (issue #7): real SPIRE, the demo stack (broker, ticket desk)
// with short-lived X.509-SVIDs, and a bounded loop of real agent calls (open a task, get a call
// token, call the tool over mTLS, complete the task) running the whole time.
//
//   0. first a routine rotation under load (all three SVIDs rotate at half-life): zero failed calls;
//   1. agent stopped for 30 s while every SVID is still valid: zero failed calls; the broker's and
//      the desk's readiness stay green and say `svid.state: "stale"`, `workloadApi: "down"`; the
//      broker's metrics say `taskpass_workload_api_up 0`;
//   2. the agent stays down until the SVIDs expire: readiness 503 (`expired`), a new TLS connection
//      presenting an expired certificate is refused by its peer, and no call succeeds;
//   3. the agent comes back (re-attested, new join token): every component picks up its new SVID
//      from the Workload API without a restart, readiness is green again and calls succeed.
//
// SVID lifetime: SPIRE backdates notBefore by 10 s and rotates at half of notAfter − notBefore, so
// with a 50 s TTL an SVID has 50 s left when issued and about 30 s when it is rotated. The outage
// starts right after the rotation of phase 0, and only once every SVID has at least OUTAGE + MARGIN
// seconds left, so phase 1 is about the outage, not about luck.
import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { BrokerClient } from '@taskpass/agent-plugin';
import { createMtlsAgent, matchId, type TlsSource } from '@taskpass/spiffe';
import type { X509Source } from '@taskpass/spiffe/workload';
import { Agent, fetch, request } from 'undici';
import { ALICE, type Stack, startStack } from '../examples/stack.ts';
import { rawToolCall } from './support/mcp-raw.ts';
import { pollUntil, sleep } from '../harness/poll.ts';
import { sourceByHint } from './support/workloads.ts';

const SVID_TTL_S = 50;
const OUTAGE_MS = 30_000;
const MARGIN_MS = 5_000;
const WORKERS = 2;
/**
 * Each worker starts an iteration (4 broker/desk requests) at most every PACE_MS: 2 workers × 2/s ×
 * 4 = 16 requests/s per agent, under the broker's default per-agent rate limit (1200/min), which
 * would otherwise be what fails.
 */
const PACE_MS = 500;
/** Upper bound of iterations per worker, so the load loop ends even if the stop flag never comes. */
const MAX_ITERATIONS = 5_000;

type Phase = 'warm' | 'rotation' | 'outage' | 'expiring' | 'expired' | 'recovering' | 'recovered';

interface Outcome {
  phase: Phase;
  ok: boolean;
  /** Where it failed: open, token, call, complete. */
  step?: string;
  error?: string;
}

let stack: Stack;
let agentSource: X509Source;
let broker: BrokerClient;
let toDesk: Agent;
/** Reads public endpoints whatever the certificates say (readiness must be readable when expired). */
const anyCert = new Agent({ connect: { rejectUnauthorized: false } });
const outcomes: Outcome[] = [];
let phase: Phase = 'warm';
let stopLoad = false;
let load: Promise<void> | undefined;

async function oneCall(): Promise<Outcome> {
  const at = phase;
  let step = 'open';
  try {
    const task = await broker.openTask({
      purpose: 'read T-1001 while the SPIRE agent may be down',
      userToken: await stack.userToken(ALICE),
      ttlSeconds: 120,
    });
    step = 'token';
    const token = await broker.callToken(task.id, {
      audience: stack.audience,
      tool: 'get_ticket',
      resource: 'tickets/T-1001',
      action: 'read',
    });
    step = 'call';
    const r = await rawToolCall(toDesk, stack.urls.mcp, token.accessToken, 'get_ticket', {
      ticket_id: 'T-1001',
    });
    if (r.status !== 200 || r.result?.isError)
      throw new Error(`tools/call answered ${r.status} ${r.code ?? ''}`);
    step = 'complete';
    await broker.complete(task.id, 'completed');
    return { phase: at, ok: true };
  } catch (e) {
    const err = e as Error & { code?: string; cause?: { code?: string } };
    return {
      phase: at,
      ok: false,
      step,
      error: `${err.code ?? err.cause?.code ?? ''} ${err.message}`.trim(),
    };
  }
}

async function worker(): Promise<void> {
  for (let i = 0; i < MAX_ITERATIONS && !stopLoad; i++) {
    const started = performance.now();
    outcomes.push(await oneCall());
    await sleep(Math.max(0, PACE_MS - (performance.now() - started)));
  }
}

function tally(p: Phase): { ok: number; failed: number; errors: string[] } {
  const of = outcomes.filter((o) => o.phase === p);
  const failed = of.filter((o) => !o.ok);
  return {
    ok: of.length - failed.length,
    failed: failed.length,
    errors: [...new Set(failed.map((o) => `${o.step}: ${o.error}`))].slice(0, 5),
  };
}

interface Readiness {
  status: number;
  body: {
    status: string;
    checks: Record<string, boolean>;
    svid: { state: string; workloadApi: string; expiresAt?: string; expiresInSeconds?: number };
  };
}

async function brokerReadiness(): Promise<Readiness> {
  const res = await request(`${stack.urls.broker}/readyz`, { dispatcher: anyCert });
  return { status: res.statusCode, body: (await res.body.json()) as Readiness['body'] };
}

async function brokerMetric(name: string): Promise<number | undefined> {
  const res = await request(`${stack.urls.broker}/metrics`, { dispatcher: anyCert });
  const m = new RegExp(`^${name} (\\S+)$`, 'm').exec(await res.body.text());
  return m ? Number(m[1]) : undefined;
}

/** Seconds left of the SVID each component presents now (broker, desk, agent). */
async function secondsLeft(): Promise<{ broker: number; desk: number; agent: number }> {
  const left = (iso: string | undefined) => (iso ? (Date.parse(iso) - Date.now()) / 1000 : Number.NaN);
  const b = await brokerReadiness();
  return {
    broker: left(b.body.svid.expiresAt),
    desk: left(stack.tickets.readiness().svid.expiresAt),
    agent: left(agentSource.health().expiresAt?.toISOString()),
  };
}

before(async () => {
  stack = await startStack({ x509SvidTtl: SVID_TTL_S, brokerLogLevel: 'warn', feedHeartbeatMs: 1000 });
  agentSource = await sourceByHint(stack, stack.hints.agent);
  broker = new BrokerClient({
    url: stack.urls.broker,
    auth: { kind: 'mtls', source: agentSource as TlsSource, brokerId: stack.ids.broker },
  });
  toDesk = createMtlsAgent(agentSource as TlsSource, matchId(stack.ids.tickets));
});

after(async () => {
  stopLoad = true;
  await load;
  await broker?.close().catch(() => undefined);
  await toDesk?.close().catch(() => undefined);
  await anyCert.close().catch(() => undefined);
  await agentSource?.close();
  await stack?.stop();
});

test('SPIRE agent outage under load: stale SVIDs keep serving, expired ones fail closed, the agent’s return heals without a restart', async (t) => {
  load = Promise.all(Array.from({ length: WORKERS }, () => worker())).then(() => undefined);
  await pollUntil('the first successful calls', 30_000, 100, () =>
    outcomes.filter((o) => o.ok).length >= 4 ? true : undefined,
  );
  const fresh = await brokerReadiness();
  assert.equal(fresh.status, 200, JSON.stringify(fresh.body));
  assert.deepEqual(
    { state: fresh.body.svid.state, api: fresh.body.svid.workloadApi },
    { state: 'fresh', api: 'up' },
  );
  assert.equal(await brokerMetric('taskpass_workload_api_up'), 1);
  assert.equal(tally('warm').failed, 0, tally('warm').errors.join('; '));

  // 0. A routine rotation of all three SVIDs under load.
  phase = 'rotation';
  // secondsLeft() of an SVID falls by one every second; a rotated one jumps back up.
  const expiries = async () => {
    const l = await secondsLeft();
    const now = Date.now() / 1000;
    return { broker: now + l.broker, desk: now + l.desk, agent: now + l.agent };
  };
  const issued = await expiries();
  await pollUntil('all three SVIDs to rotate', 60_000, 250, async () => {
    const e = await expiries();
    return e.broker > issued.broker + 5 && e.desk > issued.desk + 5 && e.agent > issued.agent + 5
      ? true
      : undefined;
  });
  // Calls started before the last rotation landed; give a few more after it.
  const atRotation = outcomes.length;
  await pollUntil('calls after the rotation', 20_000, 100, () =>
    outcomes.length >= atRotation + 8 ? true : undefined,
  );
  const rotation = tally('rotation');
  t.diagnostic(`rotation: ${rotation.ok} calls ok, ${rotation.failed} failed`);
  assert.equal(rotation.failed, 0, `calls failed across a routine rotation: ${rotation.errors.join('; ')}`);

  // Start the outage when every SVID outlives it (just after the rotation).
  phase = 'warm';
  const needS = (OUTAGE_MS + MARGIN_MS) / 1000;
  const left = await pollUntil(`every SVID with ≥ ${needS} s left`, 60_000, 250, async () => {
    const l = await secondsLeft();
    return Math.min(l.broker, l.desk, l.agent) >= needS ? l : undefined;
  });
  const servedBefore = (await brokerReadiness()).body.svid.expiresAt;
  t.diagnostic(`SVID seconds left at the outage: ${JSON.stringify(left)}`);

  // 1. The agent is gone for 30 s; every SVID is still valid the whole time.
  await stack.spire.stopAgent();
  phase = 'outage';
  const outageEnds = Date.now() + OUTAGE_MS;
  await pollUntil('the broker to notice the Workload API is down', 10_000, 100, async () =>
    (await brokerReadiness()).body.svid.workloadApi === 'down' ? true : undefined,
  );
  let checks = 0;
  while (Date.now() < outageEnds) {
    const r = await brokerReadiness();
    assert.equal(r.status, 200, `broker not ready during the outage: ${JSON.stringify(r.body)}`);
    assert.deepEqual(
      { state: r.body.svid.state, api: r.body.svid.workloadApi, checks: r.body.checks.svid },
      { state: 'stale', api: 'down', checks: true },
    );
    assert.equal(await brokerMetric('taskpass_workload_api_up'), 0);
    assert.ok(((await brokerMetric('taskpass_svid_expiry_seconds')) ?? 0) > 0);
    const desk = await fetch(`${stack.tickets.origin}/readyz`, { dispatcher: toDesk });
    const deskBody = (await desk.json()) as Readiness['body'];
    assert.equal(desk.status, 200, JSON.stringify(deskBody));
    assert.deepEqual(
      { state: deskBody.svid.state, api: deskBody.svid.workloadApi },
      { state: 'stale', api: 'down' },
    );
    checks++;
    await sleep(2_000);
  }
  const during = tally('outage');
  t.diagnostic(`outage: ${during.ok} calls ok, ${during.failed} failed, ${checks} readiness checks`);
  assert.equal(during.failed, 0, `calls failed while every SVID was valid: ${during.errors.join('; ')}`);
  assert.ok(during.ok >= 20, `too few calls during the outage (${during.ok}) to call it load`);

  // 2. Still down: the SVIDs expire, and nothing serves with them.
  phase = 'expiring';
  const expired = await pollUntil('the broker to report its SVID expired', 60_000, 250, async () => {
    const r = await brokerReadiness();
    return r.body.svid.state === 'expired' ? r : undefined;
  });
  assert.equal(expired.status, 503, JSON.stringify(expired.body));
  assert.equal(expired.body.status, 'not_ready');
  assert.equal(expired.body.checks.svid, false);
  await pollUntil('the desk to report its SVID expired', 15_000, 250, () =>
    stack.tickets.readiness().svid.state === 'expired' ? true : undefined,
  );
  const deskExpired = stack.tickets.readiness();
  assert.equal(deskExpired.status, 'not_ready');
  await pollUntil('the agent SVID to expire', 15_000, 250, () =>
    agentSource.health().svid === 'expired' ? true : undefined,
  );
  phase = 'expired';
  // A new TLS connection with the broker's expired certificate is refused by the agent…
  const fresh1 = createMtlsAgent(agentSource as TlsSource, matchId(stack.ids.broker));
  try {
    await assert.rejects(
      request(`${stack.urls.broker}/healthz`, { dispatcher: fresh1 }),
      (e: Error & { code?: string }) => /CERT_HAS_EXPIRED|expired/i.test(`${e.code} ${e.message}`),
    );
  } finally {
    await fresh1.close();
  }
  // …one presenting the agent's expired certificate is refused by the desk in the handshake…
  const expiredClient = agentSource.getX509Svid();
  const toDeskExpired = new Agent({
    connect: {
      rejectUnauthorized: false,
      cert: expiredClient.certChainPem(),
      key: expiredClient.privateKeyPem(),
    },
  });
  try {
    await assert.rejects(request(`${stack.tickets.origin}/healthz`, { dispatcher: toDeskExpired }));
  } finally {
    await toDeskExpired.close();
  }
  // …and by the broker (which lets certificate-less clients connect) with 401.
  const svid = agentSource.getX509Svid();
  const presentsExpired = new Agent({
    connect: {
      rejectUnauthorized: false,
      cert: svid.certChainPem(),
      key: svid.privateKeyPem(),
    },
  });
  try {
    const res = await request(`${stack.urls.broker}/v1/tasks`, {
      dispatcher: presentsExpired,
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ purpose: 'with an expired certificate', ttl_seconds: 60 }),
    });
    const body = (await res.body.json()) as { code?: string };
    assert.equal(res.statusCode, 401, JSON.stringify(body));
    assert.equal(body.code, 'TASKPASS_UNAUTHENTICATED');
  } finally {
    await presentsExpired.close();
  }
  const outcomesAtExpiry = outcomes.length;
  await pollUntil('a few calls attempted with expired SVIDs', 20_000, 100, () =>
    outcomes.length >= outcomesAtExpiry + 4 ? true : undefined,
  );
  const whileExpired = tally('expired');
  t.diagnostic(
    `expired: ${whileExpired.ok} ok, ${whileExpired.failed} refused (${whileExpired.errors.join('; ')})`,
  );
  assert.equal(whileExpired.ok, 0, 'a call succeeded with expired SVIDs');

  // 3. The agent comes back; every component picks up its new SVID from the Workload API.
  await stack.spire.startAgent();
  phase = 'recovering';
  const green = await pollUntil('the broker to be ready with a fresh SVID', 60_000, 250, async () => {
    const r = await brokerReadiness();
    return r.status === 200 && r.body.svid.state === 'fresh' && r.body.svid.workloadApi === 'up'
      ? r
      : undefined;
  });
  assert.ok(
    Date.parse(green.body.svid.expiresAt ?? '') > Date.parse(servedBefore ?? ''),
    'the broker serves a new SVID',
  );
  await pollUntil('the desk to be ready with a fresh SVID', 60_000, 250, () => {
    const r = stack.tickets.readiness();
    return r.status === 'ready' && r.svid.state === 'fresh' ? true : undefined;
  });
  await pollUntil('the agent to hold a fresh SVID', 60_000, 250, () =>
    agentSource.health().svid === 'fresh' ? true : undefined,
  );
  assert.equal(await brokerMetric('taskpass_workload_api_up'), 1);
  const recovering = tally('recovering');
  t.diagnostic(
    `recovering: ${recovering.ok} ok, ${recovering.failed} failed (${recovering.errors.join('; ')})`,
  );
  phase = 'recovered';
  // Counted by the phase a call started in: one started while recovering may finish after this.
  await pollUntil('calls after recovery', 30_000, 100, () =>
    tally('recovered').ok + tally('recovered').failed >= 10 ? true : undefined,
  );
  stopLoad = true;
  await load;
  const healed = tally('recovered');
  t.diagnostic(`recovered: ${healed.ok} ok, ${healed.failed} failed`);
  assert.equal(healed.failed, 0, `calls failed after recovery: ${healed.errors.join('; ')}`);
  assert.ok(healed.ok >= 10);
});

test('a hung SPIRE agent (SIGSTOP: streams open, nothing sent) turns the SVID stale once its rotation is overdue; SIGCONT makes it fresh again', async (t) => {
  // After the first test every SVID is fresh and rotates at half-life; a frozen agent misses that,
  // and with less than a quarter of the lifetime left the sources call the SVID stale.
  await pollUntil('the broker to be fresh', 60_000, 250, async () =>
    (await brokerReadiness()).body.svid.state === 'fresh' ? true : undefined,
  );
  stack.spire.pauseAgent();
  try {
    // Both are watched from the pause on: each SVID was issued at its own moment, and one may pass
    // its whole stale window (a quarter of the lifetime) while the other is still fresh.
    const [stale, desk] = await Promise.all([
      pollUntil('the broker to report a stale SVID', 60_000, 250, async () => {
        const r = await brokerReadiness();
        return r.body.svid.state === 'stale' ? r : undefined;
      }),
      pollUntil('the desk to report a stale SVID', 60_000, 250, () => {
        const r = stack.tickets.readiness();
        return r.svid.state === 'stale' ? r : undefined;
      }),
    ]);
    t.diagnostic(`hung agent: stale with ${stale.body.svid.expiresInSeconds} s left`);
    assert.equal(stale.status, 200, 'still valid: still ready');
    assert.equal(stale.body.svid.workloadApi, 'up', 'the stream of a hung agent looks open');
    assert.ok((stale.body.svid.expiresInSeconds ?? 0) > 0);
    assert.equal(desk.status, 'ready', 'still valid: the desk stays ready');
    assert.equal(await brokerMetric('taskpass_workload_api_up'), 1);
  } finally {
    stack.spire.resumeAgent();
  }
  await pollUntil('the broker to be fresh after SIGCONT', 30_000, 250, async () =>
    (await brokerReadiness()).body.svid.state === 'fresh' ? true : undefined,
  );
  await pollUntil('the desk to be fresh after SIGCONT', 30_000, 250, () =>
    stack.tickets.readiness().svid.state === 'fresh' ? true : undefined,
  );
});
