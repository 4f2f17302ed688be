// The in-memory replay cache: an entry lives exactly until its token could no longer be accepted,
// whatever order tokens of different lifetimes arrive in, and a cache full of live entries refuses
// new single-use tokens instead of forgetting a spent one.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import type { VerifierOptions } from '../src/core.ts';
import { MemoryReplayCache, ReplayCacheFullError } from '../src/replay.ts';
import { type Key, mint, newKey, verifierFor } from './support.ts';

let key: Key;
before(async () => {
  key = await newKey('k1');
});

const T0 = 1_900_000_000_000; // epoch ms, fixed
const write = { tool: 'close_ticket', args: { ticket_id: 'T-1' } };
const writeDetail = { tool: 'close_ticket', action: 'write' };

function verifier(o: Partial<VerifierOptions>) {
  return verifierFor(key, {
    tools: { close_ticket: { resource: 'tickets/{ticket_id}', action: 'write' } },
    ...o,
  });
}

async function codeOf(p: Promise<unknown>): Promise<string | undefined> {
  try {
    await p;
    return undefined;
  } catch (e) {
    return (e as { code?: string }).code;
  }
}

test('short-lived entries behind a long-lived one are forgotten when they expire', () => {
  let now = T0;
  const cache = new MemoryReplayCache({ maxEntries: 3, now: () => now });
  const s = T0 / 1000;
  assert.equal(cache.markUsed('long', s + 300), true);
  assert.equal(cache.markUsed('a', s + 5), true);
  assert.equal(cache.markUsed('b', s + 5), true);
  assert.throws(() => cache.markUsed('c', s + 5), ReplayCacheFullError);
  now = T0 + 10_000; // a and b expired; long did not
  assert.equal(cache.markUsed('c', s + 20), true);
  assert.equal(cache.size, 2);
  assert.equal(cache.markUsed('long', s + 300), false, 'the live entry was not evicted');
  assert.equal(cache.markUsed('a', s + 20), true, 'an expired jti is no longer remembered');
});

test('an entry is kept until exp + clock tolerance, then dropped', async () => {
  let now = T0;
  const cache = new MemoryReplayCache({ now: () => now });
  const v = verifier({ replayCache: cache, now: () => now, clockToleranceSec: 5 });
  const token = await mint({ key, now: T0, ttl: 60, detail: writeDetail, claims: { single_use: true } });
  await v.verifyCall(token, write);
  now = T0 + 64_000; // past exp, within the tolerance: still acceptable, so still remembered
  assert.equal(await codeOf(v.verifyCall(token, write)), 'TASKPASS_VERIFY_REPLAYED');
  assert.equal(cache.size, 1);
  now = T0 + 67_000; // past exp + tolerance: the token is refused as expired and its jti forgotten
  assert.equal(await codeOf(v.verifyCall(token, write)), 'TASKPASS_VERIFY_EXPIRED');
  cache.markUsed('other', now / 1000 + 60);
  assert.equal(cache.size, 1);
});

test('full of live entries: single-use tokens are refused with REPLAY_CACHE_FULL, nothing is evicted', async () => {
  const cache = new MemoryReplayCache({ maxEntries: 1 });
  const v = verifier({ replayCache: cache });
  const first = await mint({ key, detail: writeDetail, claims: { single_use: true } });
  const second = await mint({ key, detail: writeDetail, claims: { single_use: true } });
  await v.verifyCall(first, write);
  assert.equal(await codeOf(v.verifyCall(second, write)), 'TASKPASS_VERIFY_REPLAY_CACHE_FULL');
  assert.equal(await codeOf(v.verifyCall(first, write)), 'TASKPASS_VERIFY_REPLAYED');
});
