import assert from 'node:assert/strict';
import { test } from 'node:test';
import Fastify, { type FastifyInstance } from 'fastify';
import { Agent, fetch } from 'undici';
import { FeedOverflowError, type KeySetSource, RevocationHub } from '../src/revocation-hub.ts';
import { revocationRoutes } from '../src/routes/revocations.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import type { Revocation } from '@taskpass/contract';
import { REVOCATION_GRACE_SEC } from '../src/store/types.ts';

interface SseEvent {
  event: string;
  id?: string;
  data: unknown;
}

const nowSec = () => Math.floor(Date.now() / 1000);

/** Reads SSE events from a fetch response, one at a time. */
function sseReader(res: { body: unknown }) {
  const queue: SseEvent[] = [];
  let ended = false;
  let wake: (() => void) | undefined;
  let buf = '';
  const done = (async () => {
    const decoder = new TextDecoder();
    try {
      for await (const chunk of res.body as unknown as AsyncIterable<Uint8Array>) {
        buf += decoder.decode(chunk, { stream: true });
        let i = buf.indexOf('\n\n');
        while (i >= 0) {
          const block = buf.slice(0, i);
          buf = buf.slice(i + 2);
          const ev: SseEvent = { event: 'message', data: undefined };
          for (const line of block.split('\n')) {
            const [k, ...rest] = line.split(': ');
            const v = rest.join(': ');
            if (k === 'event') ev.event = v;
            else if (k === 'id') ev.id = v;
            else if (k === 'data') ev.data = JSON.parse(v);
          }
          queue.push(ev);
          i = buf.indexOf('\n\n');
        }
        wake?.();
      }
    } catch {
      // aborted
    } finally {
      ended = true;
      wake?.();
    }
  })();
  return {
    get ended() {
      return ended;
    },
    done,
    async next(timeoutMs = 2000, skipHeartbeats = true): Promise<SseEvent> {
      const end = Date.now() + timeoutMs;
      for (;;) {
        while (queue.length) {
          const e = queue.shift() as SseEvent;
          if (!(skipHeartbeats && e.event === 'heartbeat')) return e;
        }
        if (ended) throw new Error('stream ended');
        const left = end - Date.now();
        if (left <= 0) throw new Error('no event in time');
        await new Promise<void>((r) => {
          const t = setTimeout(r, left);
          wake = () => {
            clearTimeout(t);
            r();
          };
        });
        wake = undefined;
      }
    },
  };
}

async function setup(
  opts: {
    heartbeatMs?: number;
    ringSize?: number;
    pageSize?: number;
    deny?: boolean;
    keys?: KeySetSource;
  } = {},
) {
  const store = new SqliteStore({ path: ':memory:' });
  await store.init();
  const hub = new RevocationHub({
    store,
    heartbeatMs: opts.heartbeatMs ?? 60_000,
    ...(opts.ringSize ? { ringSize: opts.ringSize } : {}),
    ...(opts.pageSize ? { pageSize: opts.pageSize } : {}),
    ...(opts.keys ? { keys: opts.keys } : {}),
  });
  const app: FastifyInstance = Fastify();
  await app.register(revocationRoutes, {
    hub,
    heartbeatMs: opts.heartbeatMs ?? 60_000,
    preHandler: async (req) => {
      if (opts.deny && req.headers.authorization !== 'Bearer ok') {
        throw Object.assign(new Error('no credential'), { statusCode: 401 });
      }
    },
  });
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  const controllers: AbortController[] = [];
  // One client pool per test, dropped at the end, so no connection outlives its server.
  const dispatcher = new Agent();
  const stream = async (headers: Record<string, string> = {}, query = '') => {
    const ac = new AbortController();
    controllers.push(ac);
    const res = await fetch(`${url}/v1/revocations/stream${query}`, {
      headers,
      signal: ac.signal,
      dispatcher,
    });
    return { res, sse: res.ok ? sseReader(res) : undefined, abort: () => ac.abort() };
  };
  let n = 0;
  const openTask = async (ttl = 600) => {
    const id = `t${++n}`;
    await store.createTask({
      id,
      agent: 'a',
      sub: 'u',
      purpose: 'p',
      status: 'open',
      createdAt: nowSec(),
      expiresAt: nowSec() + ttl,
    });
    return id;
  };
  const close = async () => {
    for (const c of controllers) c.abort();
    await dispatcher.destroy();
    await app.close();
    await hub.close();
    await store.close();
  };
  return { store, hub, app, url, stream, openTask, close, dispatcher };
}

test('feed: snapshot of live revocations, then each new revocation once its store call returned', async () => {
  const f = await setup();
  try {
    const live = await f.store.revokeToken('j-live', nowSec() + 60, 'x');
    await f.store.revokeToken('j-expired', nowSec() - REVOCATION_GRACE_SEC - 1, 'x');
    const { res, sse } = await f.stream();
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/event-stream/);
    const snap = await sse!.next();
    assert.equal(snap.event, 'snapshot');
    assert.equal(snap.id, '2');
    assert.deepEqual(snap.data, { seq: 2, revocations: [live] });
    assert.equal(f.hub.subscriberCount(), 1);

    const id = await f.openTask();
    const { revocation } = await f.store.completeTask(id, 'completed', nowSec(), 'task completed');
    const ev = await sse!.next();
    assert.equal(ev.event, 'revoked');
    assert.equal(ev.id, String(revocation.seq));
    assert.deepEqual(ev.data, revocation);
  } finally {
    await f.close();
  }
});

test('feed: resume with Last-Event-ID (or ?since) gets only later events', async () => {
  const f = await setup();
  try {
    const until = nowSec() + 60;
    const r1 = await f.store.revokeToken('j1', until, 'x');
    const r2 = await f.store.revokeToken('j2', until, 'x');
    const r3 = await f.store.revokeToken('j3', until, 'x');
    const a = await f.stream({ 'last-event-id': String(r1.seq) });
    assert.deepEqual((await a.sse!.next()).data, { seq: 3, revocations: [r2, r3] });
    const b = await f.stream({}, `?since=${r3.seq}`);
    const snapB = await b.sse!.next();
    assert.deepEqual(snapB.data, { seq: 3, revocations: [] });
    assert.equal(snapB.id, '3');
    // Last-Event-ID wins over the ?since of the original URL (EventSource reconnects keep both).
    const c = await f.stream({ 'last-event-id': '2' }, '?since=0');
    assert.deepEqual((await c.sse!.next()).data, { seq: 3, revocations: [r3] });
    const r4 = await f.store.revokeToken('j4', until, 'x');
    for (const s of [a, b, c]) assert.deepEqual((await s.sse!.next()).data, r4);
  } finally {
    await f.close();
  }
});

test('feed: a resume point older than the ring, or beyond the store, is served from the store', async () => {
  const f = await setup({ ringSize: 2 });
  try {
    await f.hub.ready();
    const until = nowSec() + 60;
    const rs: Revocation[] = [];
    for (let i = 0; i < 5; i++) rs.push(await f.store.revokeToken(`j${i}`, until, 'x'));
    const old = await f.stream({ 'last-event-id': '1' });
    assert.deepEqual((await old.sse!.next()).data, { seq: 5, revocations: rs.slice(1) });
    // A seq this store never handed out (store reset, other deployment): everything live again.
    const ahead = await f.stream({ 'last-event-id': '999' });
    assert.deepEqual((await ahead.sse!.next()).data, { seq: 5, revocations: rs });
  } finally {
    await f.close();
  }
});

test('feed: format 2 sends the snapshot in pages, each with the seq it is complete up to; resumes page too', async () => {
  const f = await setup({ pageSize: 2 });
  try {
    await f.hub.ready();
    const until = nowSec() + 60;
    const rs: Revocation[] = [];
    for (let i = 0; i < 5; i++) rs.push(await f.store.revokeToken(`j${i}`, until, 'x'));
    const v2 = { 'taskpass-feed-version': '2' };
    // From the store (no resume point): pages of two seqs each.
    const a = await f.stream(v2);
    const got = [await a.sse!.next(), await a.sse!.next(), await a.sse!.next()];
    assert.deepEqual(
      got.map((e) => [e.event, e.id, e.data]),
      [
        ['snapshot-page', '2', { seq: 2, revocations: rs.slice(0, 2) }],
        ['snapshot-page', '4', { seq: 4, revocations: rs.slice(2, 4) }],
        ['snapshot', '5', { seq: 5, revocations: rs.slice(4) }],
      ],
    );
    // A client cut after the first page resumes from its id and gets the rest (here from the ring).
    const b = await f.stream({ ...v2, 'last-event-id': '2' });
    const rest = [await b.sse!.next(), await b.sse!.next()];
    assert.deepEqual(
      rest.map((e) => [e.event, e.id, e.data]),
      [
        ['snapshot-page', '4', { seq: 4, revocations: rs.slice(2, 4) }],
        ['snapshot', '5', { seq: 5, revocations: rs.slice(4) }],
      ],
    );
    // Format 1 (no header): the same revocations in one snapshot event.
    const c = await f.stream();
    assert.deepEqual((await c.sse!.next()).data, { seq: 5, revocations: rs });
    const r6 = await f.store.revokeToken('j6', until, 'x');
    for (const s of [a, b, c]) assert.deepEqual((await s.sse!.next()).data, r6);
  } finally {
    await f.close();
  }
});

test('feed: the signing-key set is announced after the snapshot and on every change', async () => {
  let kids = ['k1'];
  const listeners = new Set<() => void>();
  const keys: KeySetSource = {
    kids: () => kids,
    onChange(l) {
      listeners.add(l);
      return () => listeners.delete(l);
    },
  };
  const f = await setup({ keys });
  try {
    const s = await f.stream();
    assert.equal((await s.sse!.next()).event, 'snapshot');
    assert.deepEqual(await s.sse!.next(), { event: 'keys', data: { kids: ['k1'] } });
    kids = ['k1', 'k2'];
    for (const l of listeners) l();
    assert.deepEqual(await s.sse!.next(), { event: 'keys', data: { kids: ['k1', 'k2'] } });
    s.abort();
    await s.sse!.done;
    const deadline = Date.now() + 2000;
    while (listeners.size > 0 && Date.now() < deadline) await new Promise((r) => setTimeout(r, 5));
    assert.equal(listeners.size, 0, 'a closed stream stops listening for key changes');
  } finally {
    await f.close();
  }
});

test('feed: a view that holds back too many live revocations during its snapshot overflows', async () => {
  const store = new SqliteStore({ path: ':memory:' });
  await store.init();
  const hub = new RevocationHub({ store, maxPending: 2, pageSize: 1 });
  try {
    await store.revokeToken('j0', nowSec() + 60, 'x');
    let overflowed = 0;
    const view = await hub.open(undefined, () => overflowed++);
    for (let i = 1; i <= 3; i++) await store.revokeToken(`j${i}`, nowSec() + 60, 'x');
    assert.equal(overflowed, 1, 'reported at once, not at the next page');
    await store.revokeToken('j4', nowSec() + 60, 'x');
    assert.equal(overflowed, 1, 'once');
    await assert.rejects(
      (async () => {
        for await (const _ of view.pages());
      })(),
      FeedOverflowError,
    );
    view.close();
    // A view within the limit switches to live with what it held back.
    const ok = await hub.open(undefined);
    const pages: number[] = [];
    for await (const p of ok.pages()) pages.push(...p.revocations.map((r) => r.seq));
    const r6 = await store.revokeToken('j6', nowSec() + 60, 'x');
    const live: number[] = [];
    ok.live((r) => live.push(r.seq));
    assert.deepEqual([pages, live], [[1, 2, 3, 4, 5], [r6.seq]]);
    ok.close();
  } finally {
    await hub.close();
    await store.close();
  }
});

test('feed: heartbeats carry the seq and the time', async () => {
  const f = await setup({ heartbeatMs: 40 });
  try {
    await f.store.revokeToken('j', nowSec() + 60, 'x');
    const { sse } = await f.stream();
    await sse!.next();
    const hb = await sse!.next(1000, false);
    assert.equal(hb.event, 'heartbeat');
    assert.equal(hb.id, undefined);
    const d = hb.data as { seq: number; now: number };
    assert.equal(d.seq, 1);
    assert.ok(Math.abs(d.now - nowSec()) <= 2);
  } finally {
    await f.close();
  }
});

test('feed: switching from snapshot to live loses and repeats nothing under concurrent revocations', async () => {
  const f = await setup({ ringSize: 3, pageSize: 4 });
  try {
    const until = nowSec() + 60;
    let stop = false;
    let made = 0;
    const writer = (async () => {
      while (!stop) {
        await f.store.revokeToken(`j${made++}`, until, 'x');
        await new Promise((r) => setImmediate(r));
      }
    })();
    const streams = [];
    for (let i = 0; i < 8; i++) {
      streams.push(
        await f.stream({
          ...(i % 2 ? { 'last-event-id': String(Math.max(0, made - 2)) } : {}),
          ...(i % 4 >= 2 ? { 'taskpass-feed-version': '2' } : {}),
        }),
      );
      await new Promise((r) => setTimeout(r, 3));
    }
    stop = true;
    await writer;
    const total = await f.store.currentSeq();
    for (const s of streams) {
      const seen: number[] = [];
      let last = 0;
      for (;;) {
        const ev = await s.sse!.next();
        const page = ev.data as { seq: number; revocations: Revocation[] };
        assert.ok(page.seq >= last, 'pages are complete up to a growing seq');
        last = page.seq;
        seen.push(...page.revocations.map((r) => r.seq));
        if (ev.event === 'snapshot') break;
        assert.equal(ev.event, 'snapshot-page');
      }
      while (last < total) {
        const ev = await s.sse!.next();
        assert.equal(ev.event, 'revoked');
        const r = ev.data as Revocation;
        assert.equal(r.seq, last + 1, 'live events follow the snapshot seq without gap or repeat');
        last = r.seq;
        seen.push(r.seq);
      }
      assert.equal(new Set(seen).size, seen.length, 'no duplicates');
      assert.equal(seen.at(-1), total);
    }
  } finally {
    await f.close();
  }
});

test('feed: pull endpoint', async () => {
  const f = await setup();
  try {
    const until = nowSec() + 60;
    const r1 = await f.store.revokeToken('j1', until, 'x');
    const r2 = await f.store.revokeToken('j2', until, 'x');
    // Just past `until`: a verifier may still accept its tokens within its clock tolerance.
    const r3 = await f.store.revokeToken('j3', nowSec() - 5, 'within the grace');
    await f.store.revokeToken('j4', nowSec() - REVOCATION_GRACE_SEC - 5, 'expired');
    const all = await fetch(`${f.url}/v1/revocations`, { dispatcher: f.dispatcher });
    assert.equal(all.status, 200);
    assert.deepEqual(await all.json(), { seq: 4, revocations: [r1, r2, r3], more: false });
    const later = await fetch(`${f.url}/v1/revocations?since=1`, { dispatcher: f.dispatcher });
    assert.deepEqual(await later.json(), { seq: 4, revocations: [r2, r3], more: false });
    assert.equal((await fetch(`${f.url}/v1/revocations?since=-1`, { dispatcher: f.dispatcher })).status, 400);
    assert.equal(
      (await fetch(`${f.url}/v1/revocations?since=abc`, { dispatcher: f.dispatcher })).status,
      400,
    );
  } finally {
    await f.close();
  }
});

test('feed: the preHandler guards both routes', async () => {
  const f = await setup({ deny: true });
  try {
    assert.equal((await fetch(`${f.url}/v1/revocations`, { dispatcher: f.dispatcher })).status, 401);
    const { res } = await f.stream();
    assert.equal(res.status, 401);
    await res.body?.cancel();
    assert.equal(f.hub.subscriberCount(), 0);
    const ok = await f.stream({ authorization: 'Bearer ok' });
    assert.equal(ok.res.status, 200);
    assert.equal((await ok.sse!.next()).event, 'snapshot');
  } finally {
    await f.close();
  }
});

test('feed: a client disconnect releases its stream; closing the server ends the others', async () => {
  const f = await setup({ heartbeatMs: 30 });
  const a = await f.stream();
  const b = await f.stream();
  await a.sse!.next();
  await b.sse!.next();
  assert.equal(f.hub.subscriberCount(), 2);
  a.abort();
  const until = Date.now() + 2000;
  while (f.hub.subscriberCount() !== 1 && Date.now() < until) await new Promise((r) => setTimeout(r, 5));
  assert.equal(f.hub.subscriberCount(), 1);

  const started = Date.now();
  const closing = f.app.close();
  await b.sse!.done;
  assert.ok(Date.now() - started < 1000, 'the server ended the open stream at once');
  assert.equal(b.sse!.ended, true);
  assert.equal(f.hub.subscriberCount(), 0);
  // The client pool may hold a spare connection that never carried a request; it is the
  // client's to drop, not the feed's.
  await f.dispatcher.destroy();
  await closing;
  await f.hub.close();
  await f.store.close();
});

test('feed: hub.close() ends open streams and refuses new ones', async () => {
  const f = await setup();
  try {
    const a = await f.stream();
    await a.sse!.next();
    await f.hub.close();
    await a.sse!.done;
    const b = await f.stream();
    if (b.sse) await b.sse.done;
    assert.equal(f.hub.subscriberCount(), 0);
  } finally {
    await f.close();
  }
});
