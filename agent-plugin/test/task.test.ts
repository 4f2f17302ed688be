import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { after, before, test } from 'node:test';
import type { TlsSource } from '@taskpass/spiffe';
import { Agent } from 'undici';
import { BrokerClient, type Task } from '../src/index.ts';
import { FakeBroker } from './support.ts';

const AUD = 'https://tickets.test/mcp';
let broker: FakeBroker;
let nowMs = Date.now();

before(async () => {
  broker = await FakeBroker.start({ ttlSec: 60, nowSec: () => Math.floor(nowMs / 1000) });
});
after(() => broker.close());

const client = () =>
  new BrokerClient({ url: broker.url, auth: { kind: 'none-insecure' }, clock: () => nowMs });
const read = (resource = 'tickets/1') => ({
  audience: AUD,
  tool: 'get_ticket',
  resource,
  action: 'read' as const,
});
const write = (resource = 'tickets/1') => ({
  audience: AUD,
  tool: 'close_ticket',
  resource,
  action: 'write' as const,
});

test('Symbol.asyncDispose exists on this Node (no polyfill needed for await using)', () => {
  assert.equal(typeof Symbol.asyncDispose, 'symbol');
});

test('await using cancels the task when the code throws', async () => {
  await using c = client();
  let id = '';
  await assert.rejects(
    (async () => {
      await using task = await c.openTask({ purpose: 'p' });
      id = task.id;
      await task.token(read());
      throw new Error('agent code failed');
    })(),
    /agent code failed/,
  );
  const finishes = broker.requestsTo(`/${id}/complete`);
  assert.equal(finishes.length, 1);
  assert.equal(finishes[0]?.body?.status, 'cancelled');
  assert.equal(broker.tasks.get(id)?.status, 'cancelled');
});

test('await using cancels a task left open at the end of the scope', async () => {
  await using c = client();
  let id = '';
  {
    await using task = await c.openTask({ purpose: 'p' });
    id = task.id;
  }
  assert.equal(broker.tasks.get(id)?.status, 'cancelled');
});

test('await using does nothing after an explicit complete (or fail)', async () => {
  await using c = client();
  let t1: Task | undefined;
  {
    await using task = await c.openTask({ purpose: 'p' });
    t1 = task;
    await task.complete();
  }
  assert.equal(broker.requestsTo(`/${t1.id}/complete`).length, 1);
  assert.equal(broker.tasks.get(t1.id)?.status, 'completed');
  let t2: Task | undefined;
  await assert.rejects(
    (async () => {
      await using task = await c.openTask({ purpose: 'p' });
      t2 = task;
      await task.fail();
      throw new Error('after fail');
    })(),
    /after fail/,
  );
  assert.equal(broker.requestsTo(`/${t2!.id}/complete`).length, 1);
  assert.equal(broker.tasks.get(t2!.id)?.status, 'failed');
});

test('read tokens are reused while valid (minus the margin); single-use tokens never', async () => {
  await using c = client();
  await using task = await c.openTask({ purpose: 'p' });
  const calls = () => broker.requestsTo(`/${task.id}/tokens`).length;

  const r1 = await task.token(read());
  const r2 = await task.token(read());
  assert.equal(r1.singleUse, false);
  assert.equal(r2.jti, r1.jti);
  assert.equal(calls(), 1);
  // Another resource, tool, action or argument hash is another token.
  assert.notEqual((await task.token(read('tickets/2'))).jti, r1.jti);
  assert.notEqual((await task.token({ ...read(), argsSha256: 'A'.repeat(43) })).jti, r1.jti);
  assert.notEqual((await task.token({ ...read(), audience: 'https://other.test/mcp' })).jti, r1.jti);
  assert.equal(calls(), 4);

  const w1 = await task.token(write());
  const w2 = await task.token(write());
  assert.equal(w1.singleUse, true);
  assert.notEqual(w1.jti, w2.jti);
  assert.equal(calls(), 6);

  // 60 s tokens with a 5 s margin: still reused at +54 s, not at +55 s.
  const start = nowMs;
  try {
    nowMs = start + 54_000;
    assert.equal((await task.token(read())).jti, r1.jti);
    nowMs = start + 55_000;
    assert.notEqual((await task.token(read())).jti, r1.jti);
  } finally {
    nowMs = start;
  }
});

test('concurrent requests for the same read token share one broker request; single-use ones do not', async () => {
  await using c = client();
  await using task = await c.openTask({ purpose: 'p' });
  const reads = await Promise.all([
    task.token(read('tickets/9')),
    task.token(read('tickets/9')),
    task.token(read('tickets/9')),
  ]);
  assert.equal(new Set(reads.map((t) => t.jti)).size, 1);
  assert.equal(broker.requestsTo(`/${task.id}/tokens`).length, 1);
  const writes = await Promise.all([task.token(write('tickets/9')), task.token(write('tickets/9'))]);
  assert.equal(new Set(writes.map((t) => t.jti)).size, 2);
});

test('session tokens are cached per audience while valid', async () => {
  await using c = client();
  await using task = await c.openTask({ purpose: 'p' });
  const s1 = await task.sessionToken(AUD);
  assert.equal((await task.sessionToken(AUD)).jti, s1.jti);
  assert.notEqual((await task.sessionToken('https://other.test/mcp')).jti, s1.jti);
  assert.equal(broker.requestsTo(`/${task.id}/session-token`).length, 2);
  assert.deepEqual(broker.requestsTo(`/${task.id}/session-token`)[0]?.body, { audience: AUD });
});

test('cached tokens are dropped once the task is finished, and no token is handed out while finishing', async () => {
  await using c = client();
  const task = await c.openTask({ purpose: 'p' });
  await task.token(read());
  const done = task.complete();
  await assert.rejects(task.token(read()), { code: 'TASKPASS_AGENT_TASK_NOT_OPEN' });
  await done;
  await assert.rejects(task.sessionToken(AUD), { code: 'TASKPASS_AGENT_TASK_NOT_OPEN' });
});

test('a failed complete (broker unreachable) leaves the task open for a retry', async () => {
  const b = await FakeBroker.start();
  const c = new BrokerClient({ url: b.url, auth: { kind: 'none-insecure' }, timeoutMs: 300 });
  const task = await c.openTask({ purpose: 'p' });
  b.override = (_m, path) =>
    path.endsWith('/complete')
      ? { status: 503, body: { code: 'TASKPASS_STORE_UNAVAILABLE', message: 'x' } }
      : undefined;
  await assert.rejects(task.complete(), { code: 'TASKPASS_STORE_UNAVAILABLE', status: 503 });
  assert.equal(task.state, 'open');
  // Disposal then still tries to cancel, and reports that it could not.
  await assert.rejects(task[Symbol.asyncDispose](), { code: 'TASKPASS_STORE_UNAVAILABLE' });
  b.override = undefined;
  await task[Symbol.asyncDispose]();
  assert.equal(task.state, 'cancelled');
  await c.close();
  await b.close();
});

class FakeX509Source extends EventEmitter {
  fingerprint = 'AA';
  getX509Svid() {
    return { certificates: [{ fingerprint256: this.fingerprint }] };
  }
  getX509BundleForTrustDomain() {
    return undefined;
  }
}

test('mTLS: after the X.509-SVID rotates, tokens bound to the old certificate are not reused', async () => {
  const source = new FakeX509Source();
  const dispatcher = new Agent();
  const c = new BrokerClient({
    url: broker.url.replace('http:', 'https:'),
    auth: {
      kind: 'mtls',
      source: source as unknown as TlsSource,
      brokerId: 'spiffe://taskpass.local/broker',
    },
    // A plain-http dispatcher stands in for createMtlsAgent (the TLS itself is @taskpass/spiffe's).
    dispatcher: new Agent({
      connect: (_o, cb) => {
        const { port } = new URL(broker.url);
        import('node:net').then(({ connect }) => {
          const s = connect(Number(port), '127.0.0.1');
          s.once('connect', () => cb(null, s));
          s.once('error', (e) => cb(e, null));
        });
      },
    }),
    clock: () => nowMs,
  });
  const task = await c.openTask({ purpose: 'p' });
  const t1 = await task.token(read());
  source.emit('update'); // bundle-only update: same leaf
  assert.equal(c.identityEpoch, 0);
  assert.equal((await task.token(read())).jti, t1.jti);
  source.fingerprint = 'BB';
  source.emit('update');
  assert.equal(c.identityEpoch, 1);
  assert.notEqual((await task.token(read())).jti, t1.jti);
  await task.complete();
  await c.close();
  assert.equal(source.listenerCount('update'), 0);
  await dispatcher.close();
});
