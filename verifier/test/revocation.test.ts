import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { createVerifier } from '../src/core.ts';
import { MemoryReplayCache } from '../src/replay.ts';
import { pullRevocations, RevocationFeedClient } from '../src/revocation.ts';
import {
  AUDIENCE,
  feedServer,
  ISSUER,
  jwksOf,
  jwksServer,
  type Key,
  mint,
  newKey,
  until,
  verifierFor,
} from './support.ts';

let key: Key;
before(async () => {
  key = await newKey('k1');
});

describe('RevocationFeedClient', () => {
  let feed: Awaited<ReturnType<typeof feedServer>>;
  before(async () => {
    feed = await feedServer();
  });
  after(() => feed.close());

  test('snapshot, live events, resume with Last-Event-ID after a drop, heartbeat catch-up', async () => {
    const early = feed.revoke('task', 'task-old');
    const client = new RevocationFeedClient({ brokerUrl: feed.url, backoff: { initialMs: 20, maxMs: 50 } });
    try {
      assert.equal(client.lastEventAt, undefined);
      await client.ready(3000);
      assert.ok(client.lastEventAt !== undefined);
      assert.equal(client.isRevoked('task-old', 'x'), true);
      assert.equal(client.isRevoked('task-new', 'x'), false);
      assert.equal(client.seq, early.seq);

      feed.revoke('token', 'jti-1');
      await until(() => client.isRevoked('t', 'jti-1'));

      // broker restarts the stream; the client resumes from the last seq it saw
      const connects = feed.connects.length;
      feed.dropStreams();
      feed.revoke('task', 'task-while-down');
      await until(() => client.isRevoked('task-while-down', 'x'));
      assert.equal(feed.connects.length, connects + 1);
      assert.equal(feed.connects.at(-1)!.lastEventId, String(client.seq - 1));

      // an event lost between replicas: the next heartbeat names a newer seq, the client pulls
      feed.revoke('token', 'jti-lost', { silent: true });
      await until(() => feed.streams === 1);
      feed.heartbeat();
      await until(() => client.isRevoked('t', 'jti-lost'));
    } finally {
      await client.close();
    }
  });

  test('ready() rejects on timeout when the broker is unreachable, and on close', async () => {
    const errors: Error[] = [];
    const client = new RevocationFeedClient({
      brokerUrl: 'http://127.0.0.1:9',
      backoff: { initialMs: 10, maxMs: 20 },
      onError: (e) => errors.push(e),
    });
    await assert.rejects(client.ready(200), /no snapshot/);
    assert.ok(errors.length > 0);
    assert.equal(client.lastEventAt, undefined);
    const r = client.ready();
    await client.close();
    await assert.rejects(r, /closed/);
  });

  test('sweep forgets revocations whose until (plus margin) has passed', () => {
    let now = 1_000_000_000;
    const client = new RevocationFeedClient({
      brokerUrl: 'http://127.0.0.1:9',
      autoStart: false,
      now: () => now,
      retainSec: 10,
    });
    client.apply([
      { seq: 1, kind: 'task', id: 'a', until: 1_000_000 + 5, reason: '' },
      { seq: 2, kind: 'token', id: 'b', until: 1_000_000 + 100, reason: '' },
    ]);
    assert.equal(client.size, 2);
    now += 20_000;
    client.sweep();
    assert.equal(client.isRevoked('a', 'z'), false);
    assert.equal(client.isRevoked('z', 'b'), true);
    assert.equal(client.seq, 2);
  });

  test('sweeping needs no manual call: feed events past the sweep period forget expired entries', async () => {
    let now = Date.now();
    const f = await feedServer();
    const client = new RevocationFeedClient({
      brokerUrl: f.url,
      now: () => now,
      retainSec: 10,
      sweepEveryMs: 60_000,
    });
    try {
      const r = f.revoke('task', 'task-short');
      await client.ready(3000);
      assert.equal(client.isRevoked('task-short', 'x'), true);
      // Past its until (+ the retain margin) and past the sweep period: the next heartbeat sweeps.
      now = (r.until + 11) * 1000;
      f.heartbeat();
      await until(() => !client.isRevoked('task-short', 'x'));
      assert.equal(client.size, 0, 'the set does not grow without bound');
    } finally {
      await client.close();
      await f.close();
    }
  });

  test('a paged snapshot cut halfway resumes after the last page; not ready (no sign of life) until complete', async () => {
    const f = await feedServer({ pageSize: 2, cutFirstStreamAfterPages: 2 });
    for (let i = 0; i < 7; i++) f.revoke('task', `task-${i}`);
    const client = new RevocationFeedClient({
      brokerUrl: f.url,
      backoff: { initialMs: 20, maxMs: 50 },
      autoStart: false,
    });
    try {
      client.start();
      await client.ready(3000);
      assert.equal(f.connects.length, 2);
      assert.equal(f.connects[0]!.lastEventId, undefined);
      assert.equal(f.connects[1]!.lastEventId, '4', 'resumed after the second page');
      assert.equal(client.size, 7);
      assert.equal(client.seq, 7);
      assert.ok(client.lastEventAt !== undefined);
    } finally {
      await client.close();
      await f.close();
    }
    // Pages alone (no final snapshot event) are no sign of life: the verifier stays gated.
    const cut = await feedServer({ pageSize: 2, cutFirstStreamAfterPages: 2 });
    for (let i = 0; i < 7; i++) cut.revoke('task', `task-${i}`);
    const partial = new RevocationFeedClient({
      brokerUrl: cut.url,
      backoff: { initialMs: 5_000, maxMs: 5_000 },
    });
    try {
      await until(() => partial.size === 4);
      assert.equal(partial.lastEventAt, undefined);
      assert.equal(partial.isReady, false);
    } finally {
      await partial.close();
      await cut.close();
    }
  });

  test('pullRevocations', async () => {
    const r = await pullRevocations({ brokerUrl: feed.url }, 0);
    assert.ok(r.seq >= 1);
    assert.ok(r.revocations.some((x) => x.id === 'task-old'));
    const later = await pullRevocations({ brokerUrl: feed.url }, r.seq);
    assert.deepEqual(later.revocations, []);
  });
});

describe('verifier with a live feed', () => {
  test('a keys event naming a new kid makes the verifier refetch the JWKS from the broker; no other key is trusted', async () => {
    const k2 = await newKey('k2');
    const k3 = await newKey('k3');
    const jwks = await jwksServer(jwksOf(key));
    const feed = await feedServer();
    const client = new RevocationFeedClient({ brokerUrl: feed.url, backoff: { initialMs: 20, maxMs: 50 } });
    try {
      await client.ready(3000);
      const v = createVerifier({
        issuer: ISSUER,
        audience: AUDIENCE,
        jwksUri: jwks.uri,
        tools: { get_ticket: { resource: 'tickets/{ticket_id}', annotations: { readOnlyHint: true } } },
        revocation: client,
      });
      const read = { tool: 'get_ticket', args: { ticket_id: 'T-1' } };
      await v.verifyCall(await mint({ key }), read);
      assert.equal(jwks.fetches, 1);

      // The broker publishes k2 (it will sign a prepublish period later) and says so on the feed.
      jwks.set(jwksOf(key, k2));
      feed.event('keys', { kids: ['k1', 'k2'] });
      await until(() => jwks.fetches === 2);
      // Within jose's 30 s refetch cooldown: without the refresh this was UNKNOWN_KID.
      await v.verifyCall(await mint({ key: k2 }), read);

      // Known kids only: no refetch. A kid announced but absent from the JWKS is still unknown.
      feed.event('keys', { kids: ['k1', 'k2'] });
      feed.event('keys', { kids: ['k1', 'k2', 'k3'] });
      await until(() => jwks.fetches === 3);
      await assert.rejects(v.verifyCall(await mint({ key: k3 }), read), {
        code: 'TASKPASS_VERIFY_UNKNOWN_KID',
      });
      assert.equal(jwks.fetches, 3, 'the refused kid did not trigger another fetch (cooldown)');
    } finally {
      await client.close();
      await feed.close();
      await jwks.close();
    }
  });

  test('refuses tokens as soon as their task or jti is revoked; stale feed refuses writes only', async () => {
    const feed = await feedServer();
    const client = new RevocationFeedClient({ brokerUrl: feed.url, backoff: { initialMs: 20, maxMs: 50 } });
    try {
      await client.ready(3000);
      let clock = Date.now();
      const v = verifierFor(key, {
        tools: {
          get_ticket: { resource: 'tickets/{ticket_id}', annotations: { readOnlyHint: true } },
          close_ticket: { resource: 'tickets/{ticket_id}', action: 'write' },
        },
        revocation: client,
        staleness: { maxFeedAgeMs: 5000 },
        now: () => clock,
        replayCache: new MemoryReplayCache(),
      });
      const read = { tool: 'get_ticket', args: { ticket_id: 'T-1' } };
      const write = { tool: 'close_ticket', args: { ticket_id: 'T-1' } };
      const jti = randomUUID();
      const t = await mint({ key, claims: { jti, txn: 'task-7' } });
      await v.verifyCall(t, read);

      feed.revoke('token', jti);
      await until(() => client.isRevoked('', jti));
      await assert.rejects(v.verifyCall(t, read), { code: 'TASKPASS_VERIFY_REVOKED' });

      const t2 = await mint({ key, claims: { txn: 'task-8' } });
      await v.verifyCall(t2, read);
      feed.revoke('task', 'task-8');
      await until(() => client.isRevoked('task-8', ''));
      await assert.rejects(v.verifyCall(t2, read), { code: 'TASKPASS_VERIFY_REVOKED' });

      // the feed goes silent: 6 s later writes fail closed, reads go on
      const w = await mint({ key, detail: { tool: 'close_ticket', action: 'write' } });
      clock += 6000;
      await assert.rejects(v.verifyCall(w, write), { code: 'TASKPASS_VERIFY_FEED_STALE' });
      await v.verifyCall(await mint({ key, now: clock }), read);
      // a heartbeat makes it fresh again
      feed.heartbeat();
      const before = client.lastEventAt!;
      await until(() => client.lastEventAt! > before);
      clock = Date.now();
      await v.verifyCall(w, write);
    } finally {
      await client.close();
      await feed.close();
    }
  });
});
