// Two broker replicas on one Redis store, end to end on real SPIRE. Replica A is the stack's broker
// (examples/stack.ts with `redis`), replica B is a second `startBroker` in this process with the
// same configuration: same SPIRE, same broker SPIFFE ID (entry hint), same Redis key prefix. The
// stack's ticket desk takes its JWKS and revocation feed from A; a second desk ("desk B") takes
// both from B. The agent talks to either replica with the agent plugin's BrokerClient, and calls
// tools with raw JSON-RPC POSTs over its own mTLS connection (test/support/mcp-raw.ts).
//
// Every run uses its own Redis key prefixes and deletes them afterwards.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { BrokerClient, BrokerError, TaskpassDeniedError } from '@taskpass/agent-plugin';
import {
  AesGcmKeyWrapper,
  type BrokerConfig,
  generateKek,
  RedisStore,
  type RunningBroker,
  SigningKeys,
  type SigningKeysOptions,
  startBroker,
} from '@taskpass/broker';
import { createMtlsAgent, matchId, type TlsSource } from '@taskpass/spiffe';
import type { X509Source } from '@taskpass/spiffe/workload';
import { RedisReplayCache } from '@taskpass/verifier';
import { Redis } from 'ioredis';
import { createLocalJWKSet, decodeProtectedHeader, type JSONWebKeySet, jwtVerify } from 'jose';
import pino from 'pino';
import { type Agent, fetch } from 'undici';
import { ALICE, type Stack, startStack } from '../examples/stack.ts';
import { type RunningTicketDesk, startTicketDesk } from '../examples/ticket-desk/server.ts';
import { assertAccepted, assertRefused, rawToolCall } from './support/mcp-raw.ts';
import { registerWorkload, sourceByHint } from './support/workloads.ts';
import { pollUntil, sleep } from '../harness/poll.ts';

const REDIS_URL = 'redis://127.0.0.1:6379';
const OTHER_AGENT_ID = 'spiffe://taskpass.local/agents/support/other-bot';
const HEARTBEAT_MS = 250;
/** Short key schedule of the rotation test (config minimum check interval is 1 s). */
const ROTATE_SEC = 3;
const PREPUBLISH_SEC = 2;

const runId = `taskpass-test:replicas:${process.pid}:${randomUUID().slice(0, 8)}`;
const prefixes: string[] = [];
const newPrefix = (name: string): string => {
  const p = `${runId}:${name}:`;
  prefixes.push(p);
  return p;
};

const isDenied = (code: string) => (e: unknown) => e instanceof TaskpassDeniedError && e.code === code;
const kidOf = (token: string): string => decodeProtectedHeader(token).kid as string;

async function verifiesWith(jwks: JSONWebKeySet, token: string): Promise<boolean> {
  try {
    await jwtVerify(token, createLocalJWKSet(jwks), { algorithms: ['ES256'] });
    return true;
  } catch {
    return false;
  }
}

describe('two broker replicas on one Redis store (real SPIRE)', () => {
  let stack: Stack;
  let admin: Redis;
  let agentSource: X509Source;
  let otherSource: X509Source;
  /** The agent's mTLS connection to the ticket desks. */
  let asAgent: Agent;
  /** The agent's mTLS connection to the brokers (JWKS, revocations, introspection). */
  let agentToBroker: Agent;
  let brokerB: RunningBroker;
  let deskB: RunningTicketDesk;
  /** The agent's clients of replica A and replica B; another agent's client of replica B. */
  let viaA: BrokerClient;
  let viaB: BrokerClient;
  let otherViaB: BrokerClient;
  let config: BrokerConfig;
  const cleanups: (() => Promise<unknown>)[] = [];
  /** A task completed on A in test 4, checked again after B restarted. */
  let completedTask: { id: string; token: string } | undefined;

  const brokerLogger = (name: string) =>
    pino({ level: 'warn' }, pino.destination({ dest: join(stack.dir, `${name}.log`), sync: true }));
  const startReplica = (name: string, overrides: Partial<BrokerConfig> = {}) =>
    startBroker({ ...config, ...overrides }, { logger: brokerLogger(name), installSignalHandlers: false });
  const clientOf = (url: string, source: X509Source) =>
    new BrokerClient({
      url,
      auth: { kind: 'mtls', source: source as TlsSource, brokerId: stack.ids.broker },
    });
  const getJson = async (url: string): Promise<unknown> => {
    const res = await fetch(url, { dispatcher: agentToBroker });
    assert.equal(res.status, 200, `GET ${url}: ${res.status}`);
    return res.json();
  };
  const jwksOf = async (brokerUrl: string) =>
    (await getJson(`${brokerUrl}/.well-known/jwks.json`)) as JSONWebKeySet;
  const kidsOf = (jwks: JSONWebKeySet) => jwks.keys.map((k) => k.kid as string).sort();
  const introspect = async (brokerUrl: string, token: string, consume: boolean) => {
    const res = await fetch(`${brokerUrl}/oauth2/introspect`, {
      method: 'POST',
      dispatcher: agentToBroker,
      headers: { 'content-type': 'application/x-www-form-urlencoded' },
      body: new URLSearchParams({ token, ...(consume ? { consume: 'true' } : {}) }).toString(),
    });
    assert.equal(res.status, 200);
    return (await res.json()) as { active: boolean };
  };
  const read = (broker: BrokerClient, taskId: string, ticket: string) =>
    broker.callToken(taskId, {
      audience: stack.audience,
      tool: 'get_ticket',
      resource: `tickets/${ticket}`,
      action: 'read',
    });
  const write = (broker: BrokerClient, taskId: string, tool: string, ticket: string) =>
    broker.callToken(taskId, {
      audience: stack.audience,
      tool,
      resource: `tickets/${ticket}`,
      action: 'write',
    });
  const openTask = async (broker: BrokerClient, purpose: string) =>
    broker.openTask({ purpose, userToken: await stack.userToken(ALICE), ttlSeconds: 300 });

  before(async () => {
    admin = new Redis(REDIS_URL);
    stack = await startStack({
      brokerLogLevel: 'warn',
      feedHeartbeatMs: HEARTBEAT_MS,
      redis: { url: REDIS_URL, keyPrefix: newPrefix('shared') },
    });
    config = stack.brokerConfig;
    agentSource = await sourceByHint(stack, stack.hints.agent);
    cleanups.push(() => agentSource.close());
    otherSource = await registerWorkload(stack, {
      spiffeId: OTHER_AGENT_ID,
      hint: 'other-agent',
      entryId: 'taskpass-4-other',
    });
    cleanups.push(() => otherSource.close());
    asAgent = createMtlsAgent(agentSource as TlsSource, matchId(stack.ids.tickets));
    cleanups.push(() => asAgent.close());
    agentToBroker = createMtlsAgent(agentSource as TlsSource, matchId(stack.ids.broker));
    cleanups.push(() => agentToBroker.close());

    brokerB = await startReplica('broker-b');
    cleanups.push(() => brokerB.close());
    deskB = await startTicketDesk({
      workloadApiAddress: stack.spire.address,
      hint: stack.hints.tickets,
      brokerUrl: brokerB.url,
      brokerIssuer: stack.issuer,
      brokerId: stack.ids.broker,
      audience: stack.audience,
    });
    cleanups.push(() => deskB.close());
    viaA = clientOf(stack.urls.broker, agentSource);
    viaB = clientOf(brokerB.url, agentSource);
    otherViaB = clientOf(brokerB.url, otherSource);
    cleanups.push(
      () => viaA.close(),
      () => viaB.close(),
      () => otherViaB.close(),
    );
  });

  after(async () => {
    for (const c of cleanups.reverse()) await c().catch(() => undefined);
    await stack?.stop();
    for (const p of prefixes) {
      let cursor = '0';
      do {
        const [next, keys] = await admin.scan(cursor, 'MATCH', `${p}*`, 'COUNT', 500);
        cursor = next;
        if (keys.length) await admin.del(...keys);
      } while (cursor !== '0');
    }
    await admin?.quit();
  });

  test('1. both replicas publish the same JWKS, and a token minted by A verifies at a desk fed by B', async () => {
    assert.notEqual(brokerB.url, stack.urls.broker, 'two listeners');
    const [a, b] = await Promise.all([jwksOf(stack.urls.broker), jwksOf(brokerB.url)]);
    assert.ok(a.keys.length >= 1);
    assert.deepEqual(kidsOf(b), kidsOf(a));
    assert.deepEqual(b, a, 'the same public keys, field for field');

    const task = await openTask(viaA, 'read T-1001 through A, call a desk fed by B');
    const issued = await read(viaA, task.id, 'T-1001');
    assert.ok(kidsOf(b).includes(kidOf(issued.accessToken)), "A's signing key is in B's JWKS");
    const out = assertAccepted(
      await rawToolCall(asAgent, deskB.mcpUrl, issued.accessToken, 'get_ticket', { ticket_id: 'T-1001' }),
    );
    assert.equal((out.ticket as { id: string }).id, 'T-1001');
    await task.complete();
  });

  test('2. a task opened on A is visible and usable on B, for its owner only', async () => {
    const task = await openTask(viaA, 'opened on A, used through B');
    const seen = await viaB.getTask(task.id);
    assert.equal(seen.id, task.id);
    assert.equal(seen.status, 'open');
    assert.equal(seen.agent, stack.ids.agent);
    assert.equal(seen.sub, ALICE.sub);

    const issued = await read(viaB, task.id, 'T-1002');
    const out = assertAccepted(
      await rawToolCall(asAgent, stack.urls.mcp, issued.accessToken, 'get_ticket', { ticket_id: 'T-1002' }),
    );
    assert.equal((out.caller as { task: string }).task, task.id);

    // Another agent of the same trust domain, through the same replica B: not its task.
    await assert.rejects(
      otherViaB.getTask(task.id),
      (e) => e instanceof BrokerError && e.code === 'TASKPASS_TASK_NOT_OWNED',
    );
    await assert.rejects(
      read(otherViaB, task.id, 'T-1002'),
      (e) => e instanceof BrokerError && e.code === 'TASKPASS_TASK_NOT_OWNED',
    );
    await assert.rejects(
      otherViaB.complete(task.id, 'cancelled'),
      (e) => e instanceof BrokerError && e.code === 'TASKPASS_TASK_NOT_OWNED',
    );
    assert.equal((await viaA.getTask(task.id)).status, 'open', 'the other agent changed nothing');
    await task.complete();
  });

  test('3. workflow state is shared: requires and max_calls_per_task see tokens issued by the other replica', async () => {
    const task = await openTask(viaA, 'close T-1003');
    // tickets-support-write: close_ticket requires a get_ticket of the same ticket, at most 3 per task.
    await assert.rejects(
      write(viaB, task.id, 'close_ticket', 'T-1003'),
      isDenied('TASKPASS_DENIED_PREREQUISITE'),
    );
    await read(viaA, task.id, 'T-1003');
    const granted = [];
    for (const via of [viaB, viaA, viaB]) granted.push(await write(via, task.id, 'close_ticket', 'T-1003'));
    assert.equal(new Set(granted.map((g) => g.jti)).size, 3);
    await assert.rejects(
      write(viaA, task.id, 'close_ticket', 'T-1003'),
      isDenied('TASKPASS_DENIED_CALL_LIMIT'),
    );
    await assert.rejects(
      write(viaB, task.id, 'close_ticket', 'T-1003'),
      isDenied('TASKPASS_DENIED_CALL_LIMIT'),
    );
    await task.complete();
  });

  test('3c. max_calls_per_task holds under concurrency: 12 simultaneous requests on both replicas get exactly 3 tokens', async () => {
    const task = await openTask(viaA, 'close T-1001, concurrently');
    // Warm connections first (reads have no cap), so the writes arrive together instead of being
    // spread out by TLS handshakes.
    await Promise.all(Array.from({ length: 12 }, (_, i) => read(i % 2 ? viaA : viaB, task.id, 'T-1001')));
    const results = await Promise.allSettled(
      Array.from({ length: 12 }, (_, i) => write(i % 2 ? viaA : viaB, task.id, 'close_ticket', 'T-1001')),
    );
    const granted = results.filter((r) => r.status === 'fulfilled');
    const refused = results.filter((r) => r.status === 'rejected');
    assert.equal(granted.length, 3, 'the cap of tickets-support-write');
    for (const r of refused) assert.ok(isDenied('TASKPASS_DENIED_CALL_LIMIT')(r.reason), String(r.reason));
    await task.complete();
  });

  test('3b. single use: the broker’s consume is shared by the replicas; MCP server replicas share a RedisReplayCache', async () => {
    const task = await openTask(viaB, 'comment on T-1002 (single use)');
    await read(viaB, task.id, 'T-1002');
    // Broker side (RFC 7662 introspection with consume=true): markUsed lives in Redis.
    const consumed = await write(viaA, task.id, 'update_ticket', 'T-1002');
    assert.equal(consumed.singleUse, true);
    assert.equal((await introspect(stack.urls.broker, consumed.accessToken, true)).active, true);
    assert.equal(
      (await introspect(brokerB.url, consumed.accessToken, true)).active,
      false,
      'spent on A, refused on B',
    );

    // Verifier side: replay is enforced by each MCP server's verifier (an in-memory cache by default).
    const issued = await write(viaA, task.id, 'update_ticket', 'T-1002');
    const args = { ticket_id: 'T-1002', comment: 'minted by A, used at the desk fed by B' };
    assertAccepted(await rawToolCall(asAgent, deskB.mcpUrl, issued.accessToken, 'update_ticket', args));
    assertRefused(
      await rawToolCall(asAgent, deskB.mcpUrl, issued.accessToken, 'update_ticket', args),
      401,
      'TASKPASS_VERIFY_REPLAYED',
    );
    // The broker replicas share no state with the verifiers: a second instance of the same MCP
    // server (same audience) with its own default cache accepts the replay...
    const before = stack.tickets.desk.get('T-1002').comments.length;
    assertAccepted(await rawToolCall(asAgent, stack.urls.mcp, issued.accessToken, 'update_ticket', args));
    assert.equal(stack.tickets.desk.get('T-1002').comments.length, before + 1);

    // ...so MCP server replicas share a replay cache: two desks on one RedisReplayCache spend the
    // token once between them.
    const shared = new RedisReplayCache(admin, { keyPrefix: newPrefix('jti') });
    const deskOpts = {
      workloadApiAddress: stack.spire.address,
      hint: stack.hints.tickets,
      brokerUrl: brokerB.url,
      brokerIssuer: stack.issuer,
      brokerId: stack.ids.broker,
      audience: stack.audience,
      replayCache: shared,
    };
    const desk1 = await startTicketDesk(deskOpts);
    const desk2 = await startTicketDesk({ ...deskOpts, desk: desk1.desk });
    try {
      const once = await write(viaA, task.id, 'update_ticket', 'T-1002');
      assertAccepted(await rawToolCall(asAgent, desk1.mcpUrl, once.accessToken, 'update_ticket', args));
      assertRefused(
        await rawToolCall(asAgent, desk2.mcpUrl, once.accessToken, 'update_ticket', args),
        401,
        'TASKPASS_VERIFY_REPLAYED',
      );
    } finally {
      await desk2.close();
      await desk1.close();
    }
    await task.complete();
  });

  test('4. complete on A: the desk fed by B refuses the leftover token', async (t) => {
    const task = await openTask(viaA, 'read T-1003');
    const token = (await read(viaA, task.id, 'T-1003')).accessToken;
    assertAccepted(await rawToolCall(asAgent, deskB.mcpUrl, token, 'get_ticket', { ticket_id: 'T-1003' }));

    const done = await viaA.complete(task.id, 'completed');
    const t0 = performance.now();
    completedTask = { id: task.id, token };
    assert.equal(done.status, 'completed');
    let accepted = 0;
    const refused = await pollUntil('desk B refuses the leftover token', 5000, 0, async () => {
      const r = await rawToolCall(asAgent, deskB.mcpUrl, token, 'get_ticket', { ticket_id: 'T-1003' });
      if (r.status === 200) {
        accepted++;
        return undefined;
      }
      return r;
    });
    const ms = performance.now() - t0;
    t.diagnostic(
      `complete() on A -> refused at the desk fed by B after ${ms.toFixed(1)} ms (${accepted} calls accepted before)`,
    );
    assertRefused(refused, 401, 'TASKPASS_VERIFY_REVOKED');
    assert.ok(ms < 2000, `refused only after ${ms.toFixed(0)} ms`);
    assert.equal((await viaB.getTask(task.id)).status, 'completed');
  });

  test('5. restarting replica B loses nothing: revocations (also those made while it was down) and JWKS', async (t) => {
    assert.ok(completedTask, 'test 4 completed a task');
    const kidsBefore = kidsOf(await jwksOf(brokerB.url));
    const port = Number(new URL(brokerB.url).port);
    await brokerB.close();

    // While B is down, A finishes another task.
    const task = await openTask(viaA, 'read T-1001 while B is down');
    const token = (await read(viaA, task.id, 'T-1001')).accessToken;
    assertAccepted(await rawToolCall(asAgent, stack.urls.mcp, token, 'get_ticket', { ticket_id: 'T-1001' }));
    const done = await viaA.complete(task.id, 'completed');

    const t0 = performance.now();
    brokerB = await startReplica('broker-b2', { listen: { ...config.listen, port } });
    assert.equal(brokerB.url, `https://127.0.0.1:${port}`);
    assert.deepEqual(kidsOf(await jwksOf(brokerB.url)), kidsBefore, 'JWKS unchanged');

    const snapshot = (await getJson(`${brokerB.url}/v1/revocations?since=0`)) as {
      seq: number;
      revocations: { seq: number; kind: string; id: string }[];
    };
    const ids = snapshot.revocations.filter((r) => r.kind === 'task').map((r) => r.id);
    assert.ok(ids.includes(completedTask.id), 'the revocation from before the restart');
    assert.ok(ids.includes(task.id), 'the revocation made while B was down');
    assert.ok(snapshot.seq >= done.revocationSeq);

    // Desk B's feed reconnects to the new B (same address) and catches up from its last seq.
    const refused = await pollUntil(
      'desk B refuses the task finished while B was down',
      10_000,
      50,
      async () => {
        const r = await rawToolCall(asAgent, deskB.mcpUrl, token, 'get_ticket', { ticket_id: 'T-1001' });
        return r.status === 200 ? undefined : r;
      },
    );
    assertRefused(refused, 401, 'TASKPASS_VERIFY_REVOKED');
    t.diagnostic(`desk B refused it ${(performance.now() - t0).toFixed(0)} ms after B started again`);
    assertRefused(
      await rawToolCall(asAgent, deskB.mcpUrl, completedTask.token, 'get_ticket', { ticket_id: 'T-1003' }),
      401,
      'TASKPASS_VERIFY_REVOKED',
    );
    // And B serves again: a token from the new B for an open task works at the desk fed by A.
    const open = await openTask(viaB, 'after the restart');
    assertAccepted(
      await rawToolCall(
        asAgent,
        stack.urls.mcp,
        (await read(viaB, open.id, 'T-1002')).accessToken,
        'get_ticket',
        {
          ticket_id: 'T-1002',
        },
      ),
    );
    await open.complete();
  });

  test('6a. two replicas rotating at the same instant publish one key (SigningKeys on two Redis connections)', async () => {
    const prefix = newPrefix('race');
    const stores = [new RedisStore({ url: REDIS_URL, prefix }), new RedisStore({ url: REDIS_URL, prefix })];
    await Promise.all(stores.map((s) => s.init()));
    try {
      let nowMs = 1_800_000_000_000;
      const opts: SigningKeysOptions = {
        rotateEverySec: 1000,
        prepublishSec: 100,
        maxTokenTtlSec: 50,
        autoStart: false,
        now: () => nowMs,
        wrapper: new AesGcmKeyWrapper(generateKek('replicas-test')),
      };
      // Both start on an empty store at once (a fresh deployment of two replicas).
      const [a, b] = (await Promise.all(stores.map((s) => SigningKeys.open(s, opts)))) as [
        SigningKeys,
        SigningKeys,
      ];
      const stored = async () => (await stores[0]!.loadSigningKeys()).map((k) => k.activeFrom).sort();
      assert.equal((await stored()).length, 1, 'one first key, not one per replica');
      await Promise.all([a.rotateIfDue(), b.rotateIfDue()]);
      assert.equal(a.current().kid, b.current().kid);

      // Both reach the rotation point together.
      nowMs += 900_000;
      await Promise.all([a.rotateIfDue(nowMs), b.rotateIfDue(nowMs)]);
      const schedule = await stored();
      assert.equal(
        schedule.length,
        2,
        `one successor, not one per replica (activeFrom: ${schedule.join(', ')})`,
      );
      await Promise.all([a.rotateIfDue(nowMs), b.rotateIfDue(nowMs)]);
      assert.deepEqual(a.schedule(), b.schedule());
      await Promise.all([a.close(), b.close()]);
    } finally {
      await Promise.all(stores.map((s) => s.close()));
    }
  });

  test(`6. key rotation (rotateEvery ${ROTATE_SEC}s, prepublish ${PREPUBLISH_SEC}s): the replicas agree on keys`, async (t) => {
    const prefix = newPrefix('rotation');
    const rotating: Partial<BrokerConfig> = {
      store: { redis: { url: REDIS_URL, keyPrefix: prefix, timeoutMs: 2000 } },
      keys: { ...config.keys, rotateEvery: ROTATE_SEC, prepublish: PREPUBLISH_SEC, jwksMaxAge: 1 },
    };
    // Started together on an empty store, like a fresh deployment.
    const [a, b] = await Promise.all([startReplica('rot-a', rotating), startReplica('rot-b', rotating)]);
    cleanups.push(
      () => a.close(),
      () => b.close(),
    );
    const ca = clientOf(a.url, agentSource);
    const cb = clientOf(b.url, agentSource);
    cleanups.push(
      () => ca.close(),
      () => cb.close(),
    );
    const task = await openTask(ca, 'watch the keys rotate');

    interface Sample {
      at: number;
      signA: string;
      signB: string;
      kidsA: string[];
      kidsB: string[];
      okAatB: boolean;
      okBatA: boolean;
    }
    const samples: Sample[] = [];
    const t0 = performance.now();
    const observeMs = (2 * ROTATE_SEC + 1) * 1000;
    while (performance.now() - t0 < observeMs) {
      const [ta, tb] = await Promise.all([read(ca, task.id, 'T-1001'), read(cb, task.id, 'T-1001')]);
      const [ja, jb] = await Promise.all([jwksOf(a.url), jwksOf(b.url)]);
      samples.push({
        at: performance.now() - t0,
        signA: kidOf(ta.accessToken),
        signB: kidOf(tb.accessToken),
        kidsA: kidsOf(ja),
        kidsB: kidsOf(jb),
        okAatB: await verifiesWith(jb, ta.accessToken),
        okBatA: await verifiesWith(ja, tb.accessToken),
      });
      await sleep(100);
    }
    await task.complete();

    const signing = [...new Set(samples.flatMap((s) => [s.signA, s.signB]))];
    const stored = (await admin.hvals(`${prefix}keys`)).map(
      (j) => JSON.parse(j) as { kid: string; activeFrom: number },
    );
    t.diagnostic(
      `${samples.length} samples over ${observeMs} ms: ${signing.length} signing keys, ${stored.length} keys stored`,
    );
    assert.ok(signing.length >= 2, 'the keys rotated at least once while observed');

    // Every token either replica signed verified against the other replica's JWKS of that moment.
    const unverifiable = samples.filter((s) => !s.okAatB || !s.okBatA);
    assert.deepEqual(unverifiable, [], 'a token one replica signed is unknown to the other');

    // A key published by one replica but not the other: never for longer than the prepublish window.
    const firstOnlyOne = new Map<string, number>();
    let longest = 0;
    for (const s of samples) {
      for (const kid of new Set([...s.kidsA, ...s.kidsB])) {
        const both = s.kidsA.includes(kid) && s.kidsB.includes(kid);
        const since = firstOnlyOne.get(kid);
        if (!both && since === undefined) firstOnlyOne.set(kid, s.at);
        if (since !== undefined) longest = Math.max(longest, s.at - since);
        if (both) firstOnlyOne.delete(kid);
      }
    }
    t.diagnostic(`longest time a key was published by one replica only: ${longest.toFixed(0)} ms`);
    assert.ok(
      longest < PREPUBLISH_SEC * 1000,
      `a key was published by one replica only for ${longest.toFixed(0)} ms`,
    );

    // The same key signs on both, except for samples that straddle a switch (within 1 s of one).
    const switches = samples
      .filter((s, i) => i > 0 && (s.signA !== samples[i - 1]!.signA || s.signB !== samples[i - 1]!.signB))
      .map((s) => s.at);
    const disagree = samples.filter(
      (s) => s.signA !== s.signB && !switches.some((w) => Math.abs(w - s.at) <= 1000),
    );
    assert.deepEqual(disagree, [], 'the replicas signed with different keys away from a switch');
    assert.equal(samples.at(-1)?.signA, samples.at(-1)?.signB, 'converged at the end');

    // One key per rotation: no two stored keys share an activation time.
    const activations = stored.map((k) => k.activeFrom);
    assert.equal(
      new Set(activations).size,
      activations.length,
      `duplicate activeFrom: ${activations.sort().join(', ')}`,
    );
  });
});
