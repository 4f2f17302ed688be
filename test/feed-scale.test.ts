// The revocation feed at production scale (issue #7, finding 0): 100k and 1M live revocations in a
// real SQLite store, served by the real hub and routes on loopback, read by the real verifier.
// Before the fix the whole snapshot was written as one event, the stream was cut as a "slow
// reader" beyond 1 MiB, and a fresh verifier never got ready (and accepted reads meanwhile).
import assert from 'node:assert/strict';
import { generateKeyPairSync, randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { type IncomingMessage, get as httpGet } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { createVerifier, RevocationFeedClient } from '@taskpass/verifier';
import Database from 'better-sqlite3';
import Fastify, { type FastifyInstance } from 'fastify';
import { exportJWK, SignJWT } from 'jose';
import { Agent, fetch } from 'undici';
import { RevocationHub, revocationRoutes, SqliteStore } from '@taskpass/broker';

const ISSUER = 'https://broker.taskpass.test';
const AUDIENCE = 'https://tickets.taskpass.test/mcp';
const PAGE = 1000;
const nowSec = () => Math.floor(Date.now() / 1000);
const taskId = (i: number) => `task-${i}`;

interface Broker {
  url: string;
  store: SqliteStore;
  hub: RevocationHub;
  /** Snapshot pages the hub has read from the store so far. */
  readonly pagesRead: number;
  close(): Promise<void>;
}

/** A broker feed over a SQLite store seeded with `n` live task revocations (seq 1..n), in bulk. */
async function seededBroker(n: number): Promise<Broker> {
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-feed-scale-'));
  const path = join(dir, 'broker.db');
  const store = new SqliteStore({ path });
  await store.init();
  const db = new Database(path);
  const until = nowSec() + 3600;
  const insert = db.prepare(
    "INSERT INTO revocations (seq, kind, id, until, reason) VALUES (?, 'task', ?, ?, 'completed')",
  );
  db.transaction(() => {
    for (let i = 1; i <= n; i++) insert.run(i, taskId(i), until);
    db.prepare("UPDATE counters SET value = ? WHERE name = 'revocation_seq'").run(n);
  })();
  db.close();

  let pagesRead = 0;
  const readPage = store.revocationsPage.bind(store);
  store.revocationsPage = (after, now, limit) => {
    pagesRead++;
    return readPage(after, now, limit);
  };
  const hub = new RevocationHub({ store, heartbeatMs: 60_000, pageSize: PAGE });
  const app: FastifyInstance = Fastify();
  await app.register(revocationRoutes, { hub });
  app.get('/ping', async () => ({ pong: true }));
  const url = await app.listen({ host: '127.0.0.1', port: 0 });
  return {
    url,
    store,
    hub,
    get pagesRead() {
      return pagesRead;
    },
    async close() {
      await app.close();
      await hub.close();
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
}

const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };

function readToken(txn: string): Promise<string> {
  const iat = nowSec();
  return new SignJWT({
    client_id: 'spiffe://taskpass.test/agent',
    act: { sub: 'spiffe://taskpass.test/agent' },
    txn,
    authorization_details: [
      { type: 'mcp_tool_call', tool: 'get_ticket', resource: 'tickets/T-1', action: 'read' },
    ],
  })
    .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: 'k1' })
    .setIssuer(ISSUER)
    .setAudience(AUDIENCE)
    .setSubject('alice')
    .setJti(randomUUID())
    .setIssuedAt(iat)
    .setExpirationTime(iat + 60)
    .sign(privateKey);
}

const read = { tool: 'get_ticket', args: { ticket_id: 'T-1' } };

/** A fresh verifier on the feed: gated until ready, then refuses a revoked task's token. */
async function freshVerifierGetsReady(b: Broker, n: number, t: { diagnostic(m: string): void }) {
  const dispatcher = new Agent();
  const feed = new RevocationFeedClient({ brokerUrl: b.url, dispatcher, autoStart: false });
  try {
    const v = createVerifier({
      issuer: ISSUER,
      audience: AUDIENCE,
      jwks: { keys: [jwk] },
      tools: { get_ticket: { resource: 'tickets/{ticket_id}', action: 'read' } },
      revocation: feed,
    });
    const revoked = await readToken(taskId(n - 7));
    // Never synced: even a read is refused (it was accepted before the readiness gate).
    await assert.rejects(v.verifyCall(revoked, read), { code: 'TASKPASS_VERIFY_FEED_NOT_READY' });
    const t0 = performance.now();
    feed.start();
    await feed.ready(120_000);
    t.diagnostic(
      `fresh verifier ready at ${n} live revocations in ${(performance.now() - t0).toFixed(0)} ms`,
    );
    assert.equal(feed.size, n);
    assert.equal(feed.seq, n);
    await assert.rejects(v.verifyCall(revoked, read), { code: 'TASKPASS_VERIFY_REVOKED' });
    await assert.rejects(v.verifyCall(await readToken(taskId(1)), read), { code: 'TASKPASS_VERIFY_REVOKED' });
    await v.verifyCall(await readToken('task-still-open'), read);
  } finally {
    await feed.close();
    await dispatcher.destroy();
  }
}

interface RawEvent {
  event: string;
  id?: string;
  data: string;
}

/** A raw SSE reader on node:http that can stop reading (a slow verifier). */
function rawStream(url: string, headers: Record<string, string>) {
  const events: RawEvent[] = [];
  let buf = '';
  let res: IncomingMessage | undefined;
  let onEvent: (() => void) | undefined;
  const req = httpGet(`${url}/v1/revocations/stream`, { headers }, (r) => {
    res = r;
    r.setEncoding('utf8');
    r.on('data', (chunk: string) => {
      buf += chunk;
      let i = buf.indexOf('\n\n');
      let start = 0;
      while (i >= 0) {
        const ev: RawEvent = { event: 'message', data: '' };
        for (const line of buf.slice(start, i).split('\n')) {
          const colon = line.indexOf(': ');
          const k = line.slice(0, colon);
          const v = line.slice(colon + 2);
          if (k === 'event') ev.event = v;
          else if (k === 'id') ev.id = v;
          else if (k === 'data') ev.data = v;
        }
        events.push(ev);
        start = i + 2;
        i = buf.indexOf('\n\n', start);
      }
      buf = buf.slice(start);
      onEvent?.();
    });
  });
  req.on('error', () => {});
  return {
    events,
    pause: () => res?.pause(),
    resume: () => res?.resume(),
    close: () => req.destroy(),
    /** Resolves once `pred` holds for the events received (re-checked on every chunk). */
    until(pred: (evs: RawEvent[]) => boolean): Promise<void> {
      return new Promise((resolve, reject) => {
        const check = () => {
          if (pred(events)) {
            onEvent = undefined;
            resolve();
          }
        };
        onEvent = check;
        req.on('close', () => (pred(events) ? resolve() : reject(new Error('stream closed'))));
        check();
      });
    },
  };
}

const snapshotDone = (evs: RawEvent[]) => evs.some((e) => e.event === 'snapshot');

describe('revocation feed at 100k live revocations', () => {
  let b: Broker;
  before(async () => {
    b = await seededBroker(100_000);
  });
  after(() => b.close());

  test('a fresh verifier gets ready and refuses a revoked token; reads are refused until then', (t) =>
    freshVerifierGetsReady(b, 100_000, t));

  test('a format-1 client (no version header) still gets one snapshot event with every revocation', async () => {
    const s = rawStream(b.url, {});
    try {
      await s.until(snapshotDone);
      const snap = s.events.find((e) => e.event === 'snapshot')!;
      assert.equal(s.events.filter((e) => e.event.startsWith('snapshot')).length, 1);
      assert.equal(snap.id, '100000');
      const body = JSON.parse(snap.data) as { seq: number; revocations: { seq: number }[] };
      assert.equal(body.seq, 100_000);
      assert.equal(body.revocations.length, 100_000);
      assert.equal(body.revocations.at(-1)?.seq, 100_000);
    } finally {
      s.close();
    }
  });

  test('the pull endpoint answers one bounded page at a time and says where to go on', async () => {
    const dispatcher = new Agent();
    try {
      let since = 0;
      let total = 0;
      let pages = 0;
      for (;;) {
        const res = await fetch(`${b.url}/v1/revocations?since=${since}&limit=10000`, { dispatcher });
        const page = (await res.json()) as { seq: number; revocations: unknown[]; more: boolean };
        assert.ok(page.revocations.length <= 10_000);
        total += page.revocations.length;
        pages++;
        since = page.seq;
        if (!page.more) break;
      }
      assert.equal(total, 100_000);
      assert.equal(since, 100_000);
      assert.ok(pages >= 10 && pages <= 11, `${pages} pages`);
      const tooBig = await fetch(`${b.url}/v1/revocations?limit=10001`, { dispatcher });
      assert.equal(tooBig.status, 400);
      await tooBig.body?.cancel();
    } finally {
      await dispatcher.destroy();
    }
  });
});

describe('revocation feed at 1M live revocations', () => {
  const N = 1_000_000;
  let b: Broker;
  before(async () => {
    b = await seededBroker(N);
  });
  after(() => b.close());

  test('a fresh verifier gets ready and refuses a revoked token', (t) => freshVerifierGetsReady(b, N, t));

  test('a reader that stops is waited for, not cut off; the broker answers other requests meanwhile; nothing is lost or repeated', async () => {
    const startPages = b.pagesRead;
    const s = rawStream(b.url, { 'taskpass-feed-version': '2' });
    try {
      await s.until((evs) => evs.some((e) => e.event === 'snapshot-page'));
      s.pause();
      // While this client reads nothing, the broker serves another request and records a
      // revocation; the ~95 MB snapshot cannot have been written (socket buffers are far smaller).
      const dispatcher = new Agent();
      const ping = await fetch(`${b.url}/ping`, { dispatcher });
      assert.deepEqual(await ping.json(), { pong: true });
      await dispatcher.destroy();
      const live = await b.store.revokeToken('jti-during-snapshot', nowSec() + 60, 'test');
      const pages = b.pagesRead - startPages;
      assert.ok(pages < N / PAGE, `the snapshot was still streaming (${pages} pages read)`);
      assert.equal(b.hub.subscriberCount(), 1, 'the paused reader was not cut off');
      assert.ok(!snapshotDone(s.events));

      s.resume();
      await s.until((evs) => snapshotDone(evs) && evs.some((e) => e.data.includes('jti-during-snapshot')));
      let count = 0;
      let lastSeq = 0;
      let seen = 0;
      for (const e of s.events) {
        if (e.event !== 'snapshot-page' && e.event !== 'snapshot' && e.event !== 'revoked') continue;
        const body = JSON.parse(e.data) as { seq: number; revocations?: { seq: number; id: string }[] };
        const rs = e.event === 'revoked' ? [body as { seq: number; id: string }] : body.revocations!;
        for (const r of rs) {
          assert.ok(r.seq > lastSeq, `seq ${r.seq} after ${lastSeq}: in order, none twice`);
          lastSeq = r.seq;
          count++;
          if (r.id === 'jti-during-snapshot') seen++;
        }
        // A page's id is the seq it is complete up to: a client cut here resumes after it.
        if (e.event !== 'revoked') assert.equal(e.id, String(body.seq));
      }
      assert.equal(count, N + 1);
      assert.equal(seen, 1);
      assert.equal(lastSeq, live.seq);
    } finally {
      s.close();
    }
  });
});
