// A frozen (SIGSTOP) or dead (SIGKILL) Redis never hangs the broker: every route that touches the
// store answers 503 TASKPASS_STORE_UNAVAILABLE (OAuth routes: RFC 6749 temporarily_unavailable),
// /readyz answers 503 with store: false, the broker recovers by itself when Redis is back, and a
// write the client was told 503 about is not applied when a frozen Redis resumes.
//
// Runs its own redis-server (never the shared one on 6379). The only time figure here is the
// client's own patience (HANG_MS), far above the store bound: it tells "answered" from "hangs".
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, test } from 'node:test';
import type { InjectOptions, LightMyRequestResponse as Response } from 'fastify';
import { pollUntil } from '../../harness/poll.ts';
import { type OwnRedis, startRedisServer } from '../../test/support/redis-server.ts';
import { RedisStore } from '../src/store/redis.ts';
import type { ClosingStatus, IssuedCall, TaskRecord } from '../src/store/types.ts';
import { ADMIN, AGENT, type TestBroker, TICKETS, testBroker } from './app-support.ts';

const STORE_TIMEOUT_MS = 2000; // the default
const HANG_MS = 20_000;

/**
 * RedisStore that can freeze Redis right before one of its writes: after the route's reads
 * succeeded, with the write itself sent into the frozen socket (the case a deadline must cover).
 */
class FreezingStore extends RedisStore {
  freezeBefore: { op: 'createTask' | 'recordIssued' | 'completeTask'; freeze: () => void } | undefined;
  #trip(op: string): void {
    if (this.freezeBefore?.op !== op) return;
    const { freeze } = this.freezeBefore;
    this.freezeBefore = undefined;
    freeze();
  }
  override createTask(task: TaskRecord): Promise<void> {
    this.#trip('createTask');
    return super.createTask(task);
  }
  override recordIssued(call: IssuedCall, opts?: { ifToolCount?: number }): Promise<boolean> {
    this.#trip('recordIssued');
    return super.recordIssued(call, opts);
  }
  override completeTask(id: string, status: ClosingStatus, at: number, reason: string) {
    this.#trip('completeTask');
    return super.completeTask(id, status, at, reason);
  }
}

let redis: OwnRedis;
let store: FreezingStore;
let b: TestBroker<FreezingStore>;

before(async () => {
  redis = await startRedisServer();
  store = new FreezingStore({
    url: redis.url,
    prefix: `outage:${randomUUID()}:`,
    timeoutMs: STORE_TIMEOUT_MS,
  });
  await store.init();
  b = await testBroker({}, { store });
});

after(async () => {
  await b?.app.close();
  await store?.close();
  await redis?.stop();
});

/** inject() with the client's own patience: no answer within HANG_MS fails as a hang. */
async function ask(opts: InjectOptions): Promise<Response> {
  let timer: NodeJS.Timeout | undefined;
  const hang = new Promise<never>((_, reject) => {
    timer = setTimeout(
      () =>
        reject(new Error(`${opts.method} ${opts.url}: no answer within ${HANG_MS} ms (the broker hangs)`)),
      HANG_MS,
    );
  });
  try {
    return await Promise.race([b.app.inject(opts), hang]);
  } finally {
    clearTimeout(timer);
  }
}

const FORM = { 'content-type': 'application/x-www-form-urlencoded' };
const form = (o: Record<string, string>) => new URLSearchParams(o).toString();
const read = { audience: TICKETS, tool: 'get_ticket', resource: 'tickets/1', action: 'read' };
const write = { audience: TICKETS, tool: 'close_ticket', resource: 'tickets/1', action: 'write' };

async function openTask(): Promise<string> {
  const r = await ask({
    method: 'POST',
    url: '/v1/tasks',
    headers: b.jwt(AGENT),
    payload: { purpose: 'outage', user_token: await b.user.sign({}) },
  });
  assert.equal(r.statusCode, 201, r.body);
  return r.json().task_id;
}

async function callToken(task: string, body: Record<string, string> = read): Promise<Response> {
  return ask({ method: 'POST', url: `/v1/tasks/${task}/tokens`, headers: b.jwt(AGENT), payload: body });
}

const complete = (task: string) =>
  ask({
    method: 'POST',
    url: `/v1/tasks/${task}/complete`,
    headers: b.jwt(AGENT),
    payload: { status: 'completed' },
  });

const taskStatus = async (task: string): Promise<string> => {
  const r = await ask({ method: 'GET', url: `/v1/tasks/${task}`, headers: b.jwt(AGENT) });
  assert.equal(r.statusCode, 200, r.body);
  return r.json().status;
};

/** Waits (bounded) until the broker reports the store ready again. */
const recovered = () =>
  pollUntil('the broker is ready again', HANG_MS, 50, async () =>
    (await ask({ method: 'GET', url: '/readyz' })).statusCode === 200 ? true : undefined,
  );

/** Every route that touches the store, as a request built from a live task and a valid token. */
async function storeRoutes(): Promise<[name: string, InjectOptions][]> {
  const task = await openTask();
  const tokenRes = await callToken(task);
  assert.equal(tokenRes.statusCode, 200, tokenRes.body);
  const token = tokenRes.json().access_token as string;
  const agent = b.jwt(AGENT);
  return [
    [
      'open task',
      {
        method: 'POST',
        url: '/v1/tasks',
        headers: agent,
        payload: { purpose: 'p', user_token: await b.user.sign({}) },
      },
    ],
    ['get task', { method: 'GET', url: `/v1/tasks/${task}`, headers: agent }],
    ['call token', { method: 'POST', url: `/v1/tasks/${task}/tokens`, headers: agent, payload: read }],
    [
      'session token',
      {
        method: 'POST',
        url: `/v1/tasks/${task}/session-token`,
        headers: agent,
        payload: { audience: TICKETS },
      },
    ],
    [
      'oauth token exchange',
      {
        method: 'POST',
        url: '/oauth2/token',
        headers: { ...FORM, ...agent },
        payload: form({
          grant_type: 'urn:ietf:params:oauth:grant-type:token-exchange',
          resource: TICKETS,
          task_id: task,
          authorization_details: JSON.stringify([
            { type: 'mcp_tool_call', tool: read.tool, resource: read.resource, action: read.action },
          ]),
        }),
      },
    ],
    [
      'introspect',
      { method: 'POST', url: '/oauth2/introspect', headers: { ...FORM, ...agent }, payload: form({ token }) },
    ],
    [
      'revoke',
      { method: 'POST', url: '/oauth2/revoke', headers: { ...FORM, ...agent }, payload: form({ token }) },
    ],
    ['admin list', { method: 'GET', url: '/admin/v1/tasks', headers: b.jwt(ADMIN) }],
    ['revocation pull', { method: 'GET', url: '/v1/revocations', headers: agent }],
    ['readyz', { method: 'GET', url: '/readyz' }],
    // Last, so that the requests above still find the task open when Redis is up.
    [
      'complete',
      { method: 'POST', url: `/v1/tasks/${task}/complete`, headers: agent, payload: { status: 'completed' } },
    ],
    [
      'admin revoke',
      { method: 'POST', url: `/admin/v1/tasks/${task}/revoke`, headers: b.jwt(ADMIN), payload: {} },
    ],
  ];
}

function assertUnavailable(name: string, r: Response): void {
  assert.equal(r.statusCode, 503, `${name}: ${r.statusCode} ${r.body}`);
  const body = r.json();
  if (name === 'readyz') {
    assert.equal(body.checks.store, false, name);
    return;
  }
  assert.equal(body.code, 'TASKPASS_STORE_UNAVAILABLE', `${name}: ${r.body}`);
  if (name === 'oauth token exchange' || name === 'introspect' || name === 'revoke') {
    assert.equal(body.error, 'temporarily_unavailable', `${name} keeps the RFC 6749 shape`);
  }
}

/** All at once: each answers by itself (none waits for another's timeout). */
async function assertAllUnavailable(routes: [string, InjectOptions][]): Promise<void> {
  const answers = await Promise.all(routes.map(async ([name, req]) => [name, await ask(req)] as const));
  for (const [name, r] of answers) assertUnavailable(name, r);
}

/** After an outage: the broker serves again, with no restart. */
async function assertServes(): Promise<void> {
  await recovered();
  const task = await openTask();
  assert.equal((await callToken(task)).statusCode, 200);
  const done = await complete(task);
  assert.equal(done.statusCode, 200, done.body);
  assert.equal(await taskStatus(task), 'completed');
}

test('the routes answer normally while Redis is up (the requests below are valid)', async () => {
  for (const [name, req] of await storeRoutes()) {
    const r = await ask(req);
    assert.ok(r.statusCode < 300, `${name}: ${r.statusCode} ${r.body}`);
  }
});

test('Redis frozen (SIGSTOP): every store route answers 503 with the store code, then recovers on SIGCONT', async () => {
  const routes = await storeRoutes();
  redis.freeze();
  try {
    await assertAllUnavailable(routes);
  } finally {
    redis.thaw();
  }
  await assertServes();
});

test('Redis killed (SIGKILL): every store route answers 503 with the store code, then recovers on restart', async () => {
  const routes = await storeRoutes();
  const kept = await openTask();
  await redis.kill();
  try {
    await assertAllUnavailable(routes);
  } finally {
    await redis.restart();
  }
  await assertServes();
  // Acknowledged before the kill (AOF, fsync always): still there.
  assert.equal(await taskStatus(kept), 'open');
});

test('a complete sent during a freeze is not applied when Redis resumes: the 503 was the truth, a retry completes it once', async () => {
  const warm = await openTask();
  assert.equal((await complete(warm)).statusCode, 200); // the script is cached in Redis
  const task = await openTask();

  // Plain: frozen before the request.
  redis.freeze();
  try {
    assertUnavailable('complete', await complete(task));
  } finally {
    redis.thaw();
  }
  await recovered();
  assert.equal(await taskStatus(task), 'open');

  // Frozen after the ownership read, with the revocation script itself in Redis' socket.
  const seqBefore = await store.currentSeq();
  store.freezeBefore = { op: 'completeTask', freeze: () => redis.freeze() };
  try {
    assertUnavailable('complete', await complete(task));
  } finally {
    redis.thaw();
  }
  await recovered();
  assert.equal(await taskStatus(task), 'open', 'the late revocation script changed nothing');
  assert.equal(await store.currentSeq(), seqBefore, 'no revocation seq was spent');

  const retry = await complete(task);
  assert.equal(retry.statusCode, 200, retry.body);
  assert.equal(retry.json().revocation_seq, seqBefore + 1);
  assert.equal(await taskStatus(task), 'completed');
  const again = await complete(task);
  assert.equal(again.json().revocation_seq, seqBefore + 1, 'a second retry answers the same revocation');
});

test('a call token refused with 503 during a freeze does not spend the task’s call budget when Redis resumes', async () => {
  const task = await openTask();
  assert.equal((await callToken(task)).statusCode, 200); // get_ticket, the prerequisite of close_ticket
  // close_ticket is capped at one call per task (TinyPolicy).
  store.freezeBefore = { op: 'recordIssued', freeze: () => redis.freeze() };
  try {
    assertUnavailable('call token', await callToken(task, write));
  } finally {
    redis.thaw();
  }
  await recovered();
  const retry = await callToken(task, write);
  assert.equal(retry.statusCode, 200, `the one close_ticket call is still available: ${retry.body}`);
  assert.equal((await callToken(task, write)).json().code, 'TASKPASS_DENIED_CALL_LIMIT');
});

test('a task refused with 503 during a freeze is not created when Redis resumes', async () => {
  const before = (await store.listTasks({ limit: 10_000 })).length;
  store.freezeBefore = { op: 'createTask', freeze: () => redis.freeze() };
  try {
    const r = await ask({
      method: 'POST',
      url: '/v1/tasks',
      headers: b.jwt(AGENT),
      payload: { purpose: 'outage', user_token: await b.user.sign({}) },
    });
    assertUnavailable('open task', r);
  } finally {
    redis.thaw();
  }
  await recovered();
  assert.equal((await store.listTasks({ limit: 10_000 })).length, before);
});

test('store level: a token revocation and a single-use mark sent into a frozen Redis are not applied later', async () => {
  const until = Math.floor(Date.now() / 1000) + 60;
  await store.revokeToken('warm', until, 'warm'); // both scripts cached in Redis
  await store.markUsed('warm', until);
  redis.freeze();
  try {
    // Together, so that both are written into the frozen socket before either times out.
    const settled = await Promise.allSettled([
      store.revokeToken('late', until, 'x'),
      store.markUsed('late', until),
    ]);
    for (const s of settled) {
      assert.equal(s.status, 'rejected');
      assert.equal((s as PromiseRejectedResult).reason.code, 'TASKPASS_STORE_UNAVAILABLE');
    }
  } finally {
    redis.thaw();
  }
  await recovered();
  assert.equal(await store.isRevoked('token', 'late'), false);
  assert.equal(await store.markUsed('late', until), true, 'the jti was not spent by the late command');
});

test('the bounds cannot be switched off through redisOptions', async () => {
  const lax = new RedisStore({
    url: redis.url,
    prefix: `outage:${randomUUID()}:`,
    timeoutMs: STORE_TIMEOUT_MS,
    redisOptions: { commandTimeout: 3_600_000, enableOfflineQueue: true, maxRetriesPerRequest: 20 },
  });
  await lax.init();
  redis.freeze();
  try {
    let timer: NodeJS.Timeout | undefined;
    const hang = new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve('hangs'), HANG_MS);
    });
    const answer = lax.currentSeq().then(
      () => 'answered',
      (e: { code?: string }) => e.code,
    );
    assert.equal(await Promise.race([answer, hang]), 'TASKPASS_STORE_UNAVAILABLE');
    clearTimeout(timer);
  } finally {
    redis.thaw();
    await lax.close();
  }
});

const aTask = (id: string): TaskRecord => {
  const now = Math.floor(Date.now() / 1000);
  return { id, agent: AGENT, sub: 'u', purpose: 'p', status: 'open', createdAt: now, expiresAt: now + 60 };
};

test('deadlines are in Redis time: a broker clock 10 s behind Redis still writes (its offset is measured)', async () => {
  const behind = new RedisStore({
    url: redis.url,
    prefix: `outage:${randomUUID()}:`,
    now: () => Date.now() - 10_000,
  });
  await behind.init();
  try {
    await behind.createTask(aTask('t1'));
    assert.equal((await behind.completeTask('t1', 'completed', 0, 'done')).task.status, 'completed');
  } finally {
    await behind.close();
  }
});

test('a stalled clock sample (slow event loop at start-up) is not taken for skew', async () => {
  let calls = 0;
  // The first sample's round trip looks 4 s long, as if the reply waited behind a busy loop.
  const stalled = new RedisStore({
    url: redis.url,
    prefix: `outage:${randomUUID()}:`,
    now: () => Date.now() + (++calls === 2 ? 4000 : 0),
  });
  await stalled.init();
  try {
    await stalled.createTask(aTask('t1'));
    assert.equal((await stalled.completeTask('t1', 'completed', 0, 'done')).task.status, 'completed');
  } finally {
    await stalled.close();
  }
});
