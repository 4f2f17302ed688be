// Rate limits on the Redis store: replicas share one budget per caller, and a Redis that does not
// answer makes the limiter refuse (503) rather than hang or wave requests through.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { Redis } from 'ioredis';
import { AGENT, OTHER_AGENT, type TestBroker, testBroker } from './app-support.ts';

import { admin, dropPrefix, URL } from './redis-support.ts';
import { freePort } from '../../harness/net.ts';

const onRedis = (url: string, keyPrefix: string, rateLimit: Record<string, number>) =>
  testBroker({ store: { redis: { url, keyPrefix } }, rateLimit });

const getTask = (b: TestBroker, id = AGENT) =>
  b.app.inject({ method: 'GET', url: '/v1/tasks/tsk_x', headers: b.mtls(id) });

test('two broker instances on one Redis prefix share each agent budget', async () => {
  const p = `taskpass-test:${randomUUID()}:`;
  const a = await onRedis(URL, p, { perAgentPerMinute: 3 });
  const b = await onRedis(URL, p, { perAgentPerMinute: 3 });
  const other = await onRedis(URL, `taskpass-test:${randomUUID()}:`, { perAgentPerMinute: 3 });
  try {
    assert.equal((await getTask(a)).statusCode, 404);
    assert.equal((await getTask(b)).statusCode, 404);
    assert.equal((await getTask(a)).statusCode, 404);
    const r = await getTask(b);
    assert.equal(r.statusCode, 429, 'the fourth request, on the second instance');
    assert.equal(r.json().code, 'TASKPASS_RATE_LIMITED');
    const retryAfter = Number(r.headers['retry-after']);
    assert.ok(retryAfter >= 1 && retryAfter <= 60, String(retryAfter));
    assert.match(r.json().message, new RegExp(`retry in ${retryAfter} s`));
    assert.equal((await getTask(a, OTHER_AGENT)).statusCode, 404, 'keyed by agent');
    assert.equal((await getTask(other)).statusCode, 404, 'another deployment (prefix) counts apart');
    assert.ok((await admin.keys(`${p}rl:agent:*`)).length > 0, 'counters live under <prefix>rl:');
  } finally {
    await Promise.all([a.app.close(), b.app.close(), other.app.close()]);
    await dropPrefix(p);
  }
});

/** A private redis-server (this test freezes and kills it; the shared one is never touched). */
async function ownRedis(): Promise<{ url: string; proc: ChildProcess; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-rl-'));
  const port = await freePort();
  const proc = spawn(
    '/usr/bin/redis-server',
    ['--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir],
    { stdio: 'ignore' },
  );
  const url = `redis://127.0.0.1:${port}`;
  const probe = new Redis(url, { lazyConnect: true, retryStrategy: () => null, maxRetriesPerRequest: 0 });
  for (let i = 0; i < 100; i++) {
    try {
      await probe.connect();
      await probe.ping();
      probe.disconnect();
      return { url, proc, dir };
    } catch {
      probe.disconnect();
      await new Promise((r) => setTimeout(r, 50));
    }
  }
  proc.kill('SIGKILL');
  throw new Error('redis-server did not start');
}

test('a frozen or dead Redis: the limiter refuses with 503 TASKPASS_RATE_LIMIT_UNAVAILABLE, it does not hang', async () => {
  const redis = await ownRedis();
  let b: TestBroker | undefined;
  try {
    b = await onRedis(redis.url, 'rl-test:', { perAgentPerMinute: 100, redisTimeoutMs: 200 });
    assert.equal((await getTask(b)).statusCode, 404, 'counted in Redis');
    redis.proc.kill('SIGSTOP');
    const frozen = await getTask(b);
    assert.equal(frozen.statusCode, 503, frozen.body);
    assert.equal(frozen.json().code, 'TASKPASS_RATE_LIMIT_UNAVAILABLE');
    assert.equal(frozen.headers['retry-after'], '1');
    redis.proc.kill('SIGCONT');
    redis.proc.kill('SIGKILL');
    await new Promise((r) => redis.proc.once('exit', r));
    const dead = await getTask(b);
    assert.equal(dead.statusCode, 503, dead.body);
    assert.equal(dead.json().code, 'TASKPASS_RATE_LIMIT_UNAVAILABLE');
  } finally {
    redis.proc.kill('SIGKILL');
    await b?.app.close();
    rmSync(redis.dir, { recursive: true, force: true });
  }
});
