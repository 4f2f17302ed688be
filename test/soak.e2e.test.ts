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
  // Heap plus external memory (a leak of Buffers counts too) after warm-up may grow by 4 MB plus
  // 4 KB per cycle done meanwhile. A healthy run grows by about 1.2 KB per cycle here (revocations
  // are kept until their tasks' lifetime ends, the hub keeps the last 10,000), so the bound holds
  // on faster machines too; a leak of 8 KB per broker request (40 KB per cycle), on heap or in
  // Buffers, crosses it even on a busy 2-core machine.
  const bound = r.live.first + 4 * MB + 4096 * r.steadyCycles;
  assert.ok(
    r.live.last <= bound,
    `heap + external grew from ${(r.live.first / MB).toFixed(1)} MB to ${(r.live.last / MB).toFixed(1)} MB over ${r.steadyCycles} cycles after warm-up (bound ${(bound / MB).toFixed(1)} MB)`,
  );
  assert.ok(r.gcForced, 'heap figures are live memory (gc forced before each sample)');
});
