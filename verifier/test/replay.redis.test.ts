// RedisReplayCache against the real Redis at 127.0.0.1:6379: two verifiers (two replicas of one MCP
// server) sharing it spend a single-use token once between them, and an unreachable Redis refuses
// single-use calls instead of letting them through.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, test } from 'node:test';
import { Redis } from 'ioredis';
import { startRedisServer } from '../../test/support/redis-server.ts';
import { createVerifier, type VerifierOptions } from '../src/core.ts';
import { RedisReplayCache, ReplayCacheFullError } from '../src/replay.ts';
import { AUDIENCE, ISSUER, jwksOf, mint, newKey } from './support.ts';

const prefix = `taskpass:test:${randomUUID()}:`;
const redis = new Redis('redis://127.0.0.1:6379', { lazyConnect: true, maxRetriesPerRequest: 1 });

after(async () => {
  const keys = await redis.keys(`${prefix}*`);
  if (keys.length) await redis.del(...keys);
  redis.disconnect();
});

const write = { tool: 'close_ticket', args: { ticket_id: 'T-1' } };
const writeDetail = { tool: 'close_ticket', action: 'write' };

async function replicas(cache: () => VerifierOptions['replayCache']) {
  const key = await newKey('k1');
  const opts = (): VerifierOptions => ({
    issuer: ISSUER,
    audience: AUDIENCE,
    jwks: jwksOf(key),
    tools: { close_ticket: { resource: 'tickets/{ticket_id}', action: 'write' } },
    revocation: { isRevoked: () => false, lastEventAt: Date.now() + 3_600_000 },
    replayCache: cache(),
  });
  return { key, a: createVerifier(opts()), b: createVerifier(opts()) };
}

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (e) {
    return (e as { code?: string }).code;
  }
}

test('a single-use token spent at one replica is refused at the other, and the entry lives until exp + tolerance', async () => {
  await redis.connect();
  const cache = new RedisReplayCache(redis, { keyPrefix: prefix });
  const { key, a, b } = await replicas(() => cache);
  const jti = randomUUID();
  const token = await mint({ key, detail: writeDetail, claims: { single_use: true, jti }, ttl: 30 });
  const auth = await a.verifyCall(token, write);
  assert.equal(auth.singleUse, true);
  assert.equal(await codeOf(b.verifyCall(token, write)), 'TASKPASS_VERIFY_REPLAYED');
  assert.equal(await codeOf(a.verifyCall(token, write)), 'TASKPASS_VERIFY_REPLAYED');
  assert.equal(Number(await redis.zscore(cache.key, jti)), auth.expiresAt + 5, 'kept until exp + tolerance');
  const ttl = await redis.ttl(cache.key);
  assert.ok(ttl > 0 && ttl <= 30 + 5 + 1, `the set expires with its last entry (ttl ${ttl}s)`);
});

test('Redis: expired entries are dropped; at maxEntries live entries new ones are refused, none evicted', async () => {
  const cache = new RedisReplayCache(redis, { keyPrefix: `${prefix}cap:`, maxEntries: 2 });
  const nowSec = Math.floor(Date.now() / 1000);
  assert.equal(await cache.markUsed('gone', nowSec - 10), true);
  assert.equal(await cache.markUsed('a', nowSec + 60), true);
  assert.equal(await cache.markUsed('b', nowSec + 60), true, 'the expired entry no longer counts');
  assert.equal(await redis.zcard(cache.key), 2);
  await assert.rejects(cache.markUsed('c', nowSec + 60), ReplayCacheFullError);
  assert.equal(await cache.markUsed('a', nowSec + 60), false, 'a live entry is never evicted');
  const { key, a } = await replicas(() => cache);
  const token = await mint({ key, detail: writeDetail, claims: { single_use: true } });
  assert.equal(await codeOf(a.verifyCall(token, write)), 'TASKPASS_VERIFY_REPLAY_CACHE_FULL');
});

test('separate in-memory caches would each accept it once (why replicas need the shared cache)', async () => {
  const { key, a, b } = await replicas(() => undefined);
  const token = await mint({ key, detail: writeDetail, claims: { single_use: true } });
  await a.verifyCall(token, write);
  await b.verifyCall(token, write);
  assert.equal(await codeOf(b.verifyCall(token, write)), 'TASKPASS_VERIFY_REPLAYED');
});

test('an unreachable Redis refuses single-use calls with TASKPASS_VERIFY_REPLAY_UNAVAILABLE', async () => {
  const down = new Redis('redis://127.0.0.1:1', {
    lazyConnect: true,
    maxRetriesPerRequest: 0,
    enableOfflineQueue: false,
    retryStrategy: () => null,
  });
  down.on('error', () => {});
  try {
    const { key, a } = await replicas(() => new RedisReplayCache(down));
    const token = await mint({ key, detail: writeDetail, claims: { single_use: true } });
    assert.equal(await codeOf(a.verifyCall(token, write)), 'TASKPASS_VERIFY_REPLAY_UNAVAILABLE');
  } finally {
    down.disconnect();
  }
});

test('a frozen Redis (SIGSTOP) refuses single-use calls with TASKPASS_VERIFY_REPLAY_UNAVAILABLE instead of hanging', async () => {
  const own = await startRedisServer();
  // ioredis' defaults: no command timeout, commands queued while disconnected. The cache bounds it.
  const frozen = new Redis(own.url);
  frozen.on('error', () => {});
  try {
    await frozen.ping();
    const { key, a } = await replicas(() => new RedisReplayCache(frozen, { keyPrefix: prefix }));
    const token = await mint({ key, detail: writeDetail, claims: { single_use: true } });
    own.freeze();
    // The client's own patience, far above the cache's bound: no answer by then is a hang.
    let timer: NodeJS.Timeout | undefined;
    const hang = new Promise<string>((resolve) => {
      timer = setTimeout(() => resolve('no answer within 20 s (hangs)'), 20_000);
    });
    try {
      assert.equal(
        await Promise.race([codeOf(a.verifyCall(token, write)), hang]),
        'TASKPASS_VERIFY_REPLAY_UNAVAILABLE',
      );
    } finally {
      clearTimeout(timer);
      own.thaw();
    }
  } finally {
    frozen.disconnect();
    await own.stop();
  }
});
