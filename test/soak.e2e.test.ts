// A short soak (bench/soak.ts, ~30 s here; `npm run bench -- soak` runs it for 10 minutes): one
// broker and three verifiers following its revocation feed, mixed issuance, verification, task
// completion and feed re-subscriptions at half the saturation measured first. Functional checks
// only, no timing: zero errors, every scheduled cycle done, every revoked token refused, and the
// heap (plus external memory) after warm-up, sampled after a forced GC, does not keep growing beyond a generous bound.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { formatSoak, runSoak } from '../bench/soak.ts';

const MB = 1024 * 1024;

test('soak: zero errors and a heap that stays flat after warm-up', async (t) => {
  const r = await runSoak({
    saturationMs: 3_000,
    durationMs: 25_000,
    warmupMs: 5_000,
    sampleEveryMs: 1_000,
    verifiers: 3,
    churnEveryMs: 3_000,
    log: (l) => t.diagnostic(l),
  });
  for (const line of formatSoak(r).split('\n')) t.diagnostic(line);
  assert.equal(r.errors, 0, r.errorSamples.join('\n'));
  assert.equal(r.cycles, r.attempted, 'every scheduled cycle completed');
  assert.ok(r.cycles >= 20, `a soak needs some load (${r.cycles} cycles)`);
  assert.ok(r.feedResubscriptions >= 3, 'the feed was churned');
  assert.ok(r.revocationsChecked > 0);
  assert.ok(r.steady.length >= 5, `enough samples after warm-up (${r.steady.length})`);
  // Heap plus external memory (a leak of Buffers counts too), 6 MB over the first samples after
  // warm-up: a healthy run grows by well under 1 MB here (revocations are kept until their tasks'
  // lifetime ends). Leaking 8 KB per broker request, on heap or in Buffers, crosses it even at the
  // ~1,500 requests after warm-up of a busy 2-core machine.
  const bound = r.live.first + 6 * MB;
  assert.ok(
    r.live.last <= bound,
    `heap + external grew from ${(r.live.first / MB).toFixed(1)} MB to ${(r.live.last / MB).toFixed(1)} MB after warm-up (bound ${(bound / MB).toFixed(1)} MB)`,
  );
  assert.ok(r.gcForced, 'heap figures are live memory (gc forced before each sample)');
});
