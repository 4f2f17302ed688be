import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { createVerifier } from '../src/core.ts';
import { MemoryReplayCache } from '../src/replay.ts';
import { pullRevocations, RevocationFeedClient } from '../src/revocation.ts';
import { AUDIENCE, feedServer, ISSUER, jwksOf, type Key, mint, newKey, until } from './support.ts';

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

  test('pullRevocations', async () => {
    const r = await pullRevocations({ brokerUrl: feed.url }, 0);
    assert.ok(r.seq >= 1);
    assert.ok(r.revocations.some((x) => x.id === 'task-old'));
    const later = await pullRevocations({ brokerUrl: feed.url }, r.seq);
    assert.deepEqual(later.revocations, []);
  });
});

describe('verifier with a live feed', () => {
  test('refuses tokens as soon as their task or jti is revoked; stale feed refuses writes only', async () => {
    const feed = await feedServer();
    const client = new RevocationFeedClient({ brokerUrl: feed.url, backoff: { initialMs: 20, maxMs: 50 } });
    try {
      await client.ready(3000);
      let clock = Date.now();
      const v = createVerifier({
        issuer: ISSUER,
        audience: AUDIENCE,
        jwks: jwksOf(key),
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
