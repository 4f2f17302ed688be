// The ticket desk's /readyz: ready while its SVID is valid (fresh, or stale with the Workload API
// down) and the revocation feed delivered its snapshot; not ready once the SVID expired or is gone.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { X509SourceHealth } from '@taskpass/spiffe/workload';
import { readiness } from '../examples/ticket-desk/server.ts';

const NOW = Date.parse('2026-12-02T10:00:00Z');

function source(h: Partial<X509SourceHealth>): { health(): X509SourceHealth } {
  return {
    health: () => ({
      workloadApi: 'up',
      lastUpdateAt: undefined,
      lastErrorCode: undefined,
      svid: 'fresh',
      spiffeId: 'spiffe://taskpass.local/mcp/tickets',
      expiresAt: new Date(NOW + 40_000),
      ...h,
    }),
  };
}

const feed = { lastEventAt: NOW - 2_500 };

test('ticket desk readiness: fresh and stale SVIDs are ready (stale says the Workload API is down)', () => {
  const fresh = readiness(source({}), feed, NOW);
  assert.equal(fresh.status, 'ready');
  assert.deepEqual(fresh.svid, {
    state: 'fresh',
    workloadApi: 'up',
    expiresAt: new Date(NOW + 40_000).toISOString(),
    expiresInSeconds: 40,
  });
  assert.equal(fresh.feedAgeSeconds, 2);

  const stale = readiness(source({ svid: 'stale', workloadApi: 'down' }), feed, NOW);
  assert.equal(stale.status, 'ready');
  assert.deepEqual(stale.checks, { svid: true, feed: true });
  assert.equal(stale.svid.state, 'stale');
  assert.equal(stale.svid.workloadApi, 'down');
});

test('ticket desk readiness: an expired or missing SVID, or no feed snapshot yet, is not ready', () => {
  const expired = readiness(
    source({ svid: 'expired', workloadApi: 'down', expiresAt: new Date(NOW - 1_000) }),
    feed,
    NOW,
  );
  assert.equal(expired.status, 'not_ready');
  assert.equal(expired.checks.svid, false);
  assert.equal(expired.svid.expiresInSeconds, -1);

  const missing = readiness(source({ svid: 'missing', expiresAt: undefined }), feed, NOW);
  assert.equal(missing.status, 'not_ready');
  assert.deepEqual(missing.svid, { state: 'missing', workloadApi: 'up' });

  const noFeed = readiness(source({}), { lastEventAt: undefined }, NOW);
  assert.equal(noFeed.status, 'not_ready');
  assert.deepEqual(noFeed.checks, { svid: true, feed: false });
});
