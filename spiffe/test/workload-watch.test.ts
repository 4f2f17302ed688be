// Watches and live sources against the fake Workload API: first-update gate, rotation pushed to
// open streams, redaction on PermissionDenied, retry policy and backoff, clean close.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { after, before, beforeEach, test } from 'node:test';
import { status } from '@grpc/grpc-js';
import { isSpiffeError, TrustDomain } from '../src/index.ts';
import {
  type Backoff,
  type BackoffStrategy,
  BundleSource,
  JwtSource,
  linearBackoff,
  pickByHint,
  WorkloadApiClient,
  type X509Context,
  X509Source,
} from '../src/workload/index.ts';
import { FakeWorkloadApi, TestCa } from '../src/testing/index.ts';

const TD = TrustDomain.parse('example.org');
const FED = TrustDomain.parse('federated.test');
const WEB = 'spiffe://example.org/web';
const DB = 'spiffe://example.org/db';

let ca: TestCa;
let fedCa: TestCa;
let fake: FakeWorkloadApi;

/** A backoff that records its use and waits only a few ms. */
function recordingBackoff(delayMs = 10): BackoffStrategy & { nexts: number; resets: number } {
  const strategy = Object.assign(
    (): Backoff => ({
      next: () => {
        strategy.nexts++;
        return delayMs;
      },
      reset: () => {
        strategy.resets++;
      },
    }),
    { nexts: 0, resets: 0 },
  );
  return strategy;
}

function until<T>(what: string, poll: () => T | undefined, timeoutMs = 5000): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const tick = () => {
      const v = poll();
      if (v !== undefined) resolve(v);
      else if (Date.now() > deadline) reject(new Error(`timed out waiting for ${what}`));
      else setTimeout(tick, 10);
    };
    tick();
  });
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

before(async () => {
  ca = await TestCa.create(TD);
  fedCa = await TestCa.create(FED);
  fake = await FakeWorkloadApi.start();
});

after(async () => {
  await fake.stop();
});

beforeEach(() => {
  fake.setX509Svids(null);
  fake.setX509Bundles(null);
  fake.setJwtBundles(null);
  for (const rpc of ['FetchX509SVID', 'FetchX509Bundles', 'FetchJWTBundles'] as const)
    fake.setError(rpc, null);
});

test('linearBackoff: 1s, 2s, … capped at 30s, back to 1s after reset', () => {
  const b = linearBackoff()();
  const seq = Array.from({ length: 32 }, () => b.next());
  assert.deepEqual(seq.slice(0, 3), [1000, 2000, 3000]);
  assert.equal(seq[29], 30_000);
  assert.equal(seq[31], 30_000);
  b.reset();
  assert.equal(b.next(), 1000);
});

test('X509Source.create waits for the first update (PermissionDenied is retried meanwhile)', async () => {
  const backoff = recordingBackoff();
  const creating = X509Source.create({ address: fake.address, backoff });
  let settled = false;
  void creating.then(() => {
    settled = true;
  });
  await until('a few PermissionDenied retries', () => (backoff.nexts >= 3 ? true : undefined));
  assert.equal(settled, false);
  const svid = await ca.createX509Svid(WEB);
  fake.setX509Svids({ svids: [svid] });
  await using source = await creating;
  assert.equal(source.getX509Svid().certificates[0]!.serialNumber, svid.certificates[0]!.serialNumber);
  assert.ok(source.getX509BundleForTrustDomain(TD));
  assert.equal(source.getX509Context().svids.length, 1);
});

test('X509Source.create with timeoutMs rejects with ERR_SPIFFE_TIMEOUT, the last error as cause', async () => {
  await assert.rejects(
    X509Source.create({ address: fake.address, backoff: recordingBackoff(), timeoutMs: 200 }),
    (e: unknown) => {
      assert.ok(isSpiffeError(e, 'ERR_SPIFFE_TIMEOUT'));
      assert.ok(isSpiffeError(e.cause, 'ERR_SPIFFE_NO_IDENTITY'));
      return true;
    },
  );
});

test('rotation: a new SVID pushed to the open stream replaces the state and emits update', async () => {
  const first = await ca.createX509Svid(WEB);
  fake.setX509Svids({ svids: [first] });
  await using source = await X509Source.create({ address: fake.address, backoff: recordingBackoff() });
  const held = source.getX509Context();
  assert.equal(source.getX509Svid().certificates[0]!.serialNumber, first.certificates[0]!.serialNumber);

  const rotated = await ca.createX509Svid(WEB);
  const serial = new Promise<string>((resolve) =>
    source.once('update', () => resolve(source.getX509Svid().certificates[0]!.serialNumber)),
  );
  fake.setX509Svids({ svids: [rotated] });
  assert.equal(await serial, rotated.certificates[0]!.serialNumber);
  assert.notEqual(rotated.certificates[0]!.serialNumber, first.certificates[0]!.serialNumber);
  // The earlier snapshot is untouched: state is swapped, never mutated.
  assert.equal(held.svids[0]!.certificates[0]!.serialNumber, first.certificates[0]!.serialNumber);
  assert.equal(fake.openStreams('FetchX509SVID'), 1);
});

test('redaction: PermissionDenied drops the SVID and bundles, then a new identity comes back', async () => {
  fake.setX509Svids({
    svids: [await ca.createX509Svid(WEB)],
    federatedBundles: { 'federated.test': fedCa.x509BundleDer() },
  });
  await using source = await X509Source.create({ address: fake.address, backoff: recordingBackoff(20) });
  const events: string[] = [];
  source.on('update', () => events.push('update'));
  source.on('error', (e) => events.push(isSpiffeError(e) ? e.code : e.message));

  fake.setX509Svids(null);
  await until('redaction', () => (events.includes('ERR_SPIFFE_NO_IDENTITY') ? true : undefined));
  assert.deepEqual(events.slice(0, 2), ['ERR_SPIFFE_NO_IDENTITY', 'update']);
  assert.throws(() => source.getX509Svid(), { code: 'ERR_SPIFFE_NO_IDENTITY' });
  assert.throws(() => source.getX509Context(), { code: 'ERR_SPIFFE_NO_IDENTITY' });
  assert.equal(source.getX509BundleForTrustDomain(TD), undefined);
  assert.equal(source.getX509BundleForTrustDomain(FED), undefined);
  assert.equal(source.getX509Bundles().size, 0);

  // The source keeps retrying and picks the identity up again.
  fake.setX509Svids({ svids: [await ca.createX509Svid(DB)] });
  const back = await until('the new identity', () => {
    try {
      return source.getX509Svid();
    } catch {
      return undefined;
    }
  });
  assert.equal(back.id.toString(), DB);
});

test('health: fresh while the stream is up; stale (still valid) while the Workload API is down; fresh again on the next message', async () => {
  const first = await ca.createX509Svid(WEB, { ttlSec: 600 });
  fake.setX509Svids({ svids: [first] });
  await using source = await X509Source.create({ address: fake.address, backoff: recordingBackoff(20) });
  const up = source.health();
  assert.equal(up.workloadApi, 'up');
  assert.equal(up.svid, 'fresh');
  assert.equal(up.spiffeId, WEB);
  assert.equal(up.expiresAt?.getTime(), source.getX509Svid().expiresAt.getTime());
  assert.ok(up.lastUpdateAt);

  // The agent goes away: the open stream ends and every reconnect fails.
  fake.setError('FetchX509SVID', status.UNAVAILABLE, { details: 'agent stopped' });
  fake.endStreams('FetchX509SVID');
  const down = await until('the stream failure', () => {
    const h = source.health();
    return h.workloadApi === 'down' ? h : undefined;
  });
  assert.equal(down.svid, 'stale');
  assert.equal(down.lastErrorCode, 'ERR_SPIFFE_WORKLOAD_API');
  // The cached SVID is still served: nothing was redacted.
  assert.equal(source.getX509Svid().certificates[0]!.serialNumber, first.certificates[0]!.serialNumber);

  // The agent is back: the next message makes the source up and the SVID fresh again.
  const rotated = await ca.createX509Svid(WEB, { ttlSec: 600 });
  fake.setX509Svids({ svids: [rotated] });
  fake.setError('FetchX509SVID', null);
  const back = await until('the agent to be back', () => {
    const h = source.health();
    return h.workloadApi === 'up' ? h : undefined;
  });
  assert.equal(back.svid, 'fresh');
  assert.equal(back.lastErrorCode, undefined);
  assert.equal(source.getX509Svid().certificates[0]!.serialNumber, rotated.certificates[0]!.serialNumber);
});

test('health: stale once a rotation is overdue, expired past notAfter, missing when redacted or closed', async () => {
  const svid = await ca.createX509Svid(WEB, { ttlSec: 100 });
  fake.setX509Svids({ svids: [svid] });
  const source = await X509Source.create({ address: fake.address, backoff: recordingBackoff(20) });
  const leaf = source.getX509Svid().certificates[0]!;
  const notBefore = Date.parse(leaf.validFrom);
  const notAfter = Date.parse(leaf.validTo);
  const at = (share: number) => notBefore + (notAfter - notBefore) * share;
  // A hung agent keeps the stream open but never rotates: the SVID turns stale before it expires.
  assert.equal(source.health(at(0.5)).svid, 'fresh');
  assert.equal(source.health(at(0.8)).svid, 'stale');
  assert.equal(source.health(at(0.8)).workloadApi, 'up');
  assert.equal(source.health(notAfter).svid, 'expired');
  assert.equal(source.health(notBefore - 1000).svid, 'expired');

  fake.setX509Svids(null);
  await until('redaction', () => (source.health().svid === 'missing' ? true : undefined));
  assert.equal(source.health().spiffeId, undefined);
  assert.equal(source.health().lastErrorCode, 'ERR_SPIFFE_NO_IDENTITY');

  fake.setX509Svids({ svids: [svid] });
  await until('the identity back', () => (source.health().svid === 'fresh' ? true : undefined));
  await source.close();
  assert.deepEqual(
    { workloadApi: source.health().workloadApi, svid: source.health().svid },
    { workloadApi: 'down', svid: 'missing' },
  );
});

test('empty federated_bundles in a later message drops the federated bundles', async () => {
  fake.setX509Svids({
    svids: [await ca.createX509Svid(WEB)],
    federatedBundles: { [FED.idString()]: fedCa.x509BundleDer() },
  });
  await using source = await X509Source.create({ address: fake.address, backoff: recordingBackoff() });
  assert.ok(source.getX509BundleForTrustDomain(FED));
  const updated = new Promise<void>((r) => source.once('update', () => r()));
  fake.setX509Svids({ svids: [await ca.createX509Svid(WEB)] });
  await updated;
  assert.equal(source.getX509BundleForTrustDomain(FED), undefined);
  assert.ok(source.getX509BundleForTrustDomain(TD));
});

test('a message without SVIDs is discarded and an invalid one reported; the state is kept', async () => {
  const good = await ca.createX509Svid(WEB);
  fake.setX509Svids({ svids: [good] });
  await using source = await X509Source.create({ address: fake.address, backoff: recordingBackoff() });
  const errors: string[] = [];
  source.on('error', (e) => errors.push(isSpiffeError(e) ? e.code : e.message));
  let updates = 0;
  source.on('update', () => updates++);
  fake.setX509Svids({ svids: [] });
  const bad = await ca.createBadX509Svid('ca-leaf', WEB);
  fake.setX509Svids({ svids: [bad] });
  await until('the invalid message to be reported', () => (errors.length > 0 ? true : undefined));
  assert.deepEqual(errors, ['ERR_SPIFFE_INVALID_X509_SVID']);
  assert.equal(updates, 0);
  assert.equal(source.getX509Svid().certificates[0]!.serialNumber, good.certificates[0]!.serialNumber);
});

test('picker chooses a non-default SVID by hint; duplicate hints keep the first', async () => {
  const web = await ca.createX509Svid(WEB, { hint: 'web' });
  const db = await ca.createX509Svid(DB, { hint: 'db' });
  const dup = await ca.createX509Svid('spiffe://example.org/dup', { hint: 'db' });
  fake.setX509Svids({ svids: [web, db, dup] });
  await using source = await X509Source.create({
    address: fake.address,
    picker: pickByHint('db'),
  });
  assert.equal(source.getX509Svid().id.toString(), DB);
  assert.equal(source.getX509Context().svids.length, 2);

  await using none = await X509Source.create({ address: fake.address, picker: () => undefined });
  assert.throws(() => none.getX509Svid(), { code: 'ERR_SPIFFE_NO_IDENTITY' });
});

test('InvalidArgument stops the watch: reported once, the promise rejects, no more attempts', async () => {
  fake.setError('FetchX509SVID', status.INVALID_ARGUMENT, { details: 'bad request' });
  const backoff = recordingBackoff();
  const client = new WorkloadApiClient({ address: fake.address, backoff });
  const errors: Error[] = [];
  const callsBefore = fake.calls.FetchX509SVID;
  await assert.rejects(
    client.watchX509Context({ onUpdate() {}, onError: (e) => errors.push(e) }),
    (e: unknown) => isSpiffeError(e, 'ERR_SPIFFE_WORKLOAD_API') && /INVALID_ARGUMENT/.test(e.message),
  );
  await sleep(100);
  assert.equal(fake.calls.FetchX509SVID - callsBefore, 1);
  assert.equal(errors.length, 1);
  assert.equal(backoff.nexts, 0);
  // A source gives up the same way instead of waiting forever.
  await assert.rejects(X509Source.create({ client }), { code: 'ERR_SPIFFE_WORKLOAD_API' });
  client.close();
});

test('Unimplemented is not retried either', async () => {
  fake.setError('FetchJWTBundles', status.UNIMPLEMENTED);
  await assert.rejects(JwtSource.create({ address: fake.address, backoff: recordingBackoff() }), {
    code: 'ERR_SPIFFE_WORKLOAD_API',
  });
});

test('Unavailable is retried with backoff, reset after each message', async () => {
  fake.setX509Svids({ svids: [await ca.createX509Svid(WEB)] });
  fake.setError('FetchX509SVID', status.UNAVAILABLE, { times: 3 });
  const backoff = recordingBackoff();
  const client = new WorkloadApiClient({ address: fake.address, backoff });
  const updates: X509Context[] = [];
  const errors: string[] = [];
  const ac = new AbortController();
  const watching = client.watchX509Context(
    { onUpdate: (c) => updates.push(c), onError: (e) => errors.push(isSpiffeError(e) ? e.code : e.message) },
    ac.signal,
  );
  await until('the first update', () => (updates.length === 1 ? true : undefined));
  assert.equal(backoff.nexts, 3);
  assert.deepEqual(errors, ['ERR_SPIFFE_WORKLOAD_API', 'ERR_SPIFFE_WORKLOAD_API', 'ERR_SPIFFE_WORKLOAD_API']);
  assert.ok(backoff.resets >= 1);

  // The agent restarts: the stream drops, the watch reconnects and gets the state again.
  const resetsBefore = backoff.resets;
  fake.endStreams('FetchX509SVID', status.UNAVAILABLE);
  await until('the update after reconnecting', () => (updates.length === 2 ? true : undefined));
  assert.equal(backoff.nexts, 4);
  assert.ok(backoff.resets > resetsBefore);

  ac.abort();
  await watching; // resolves on abort
  client.close();
});

test('a missing socket is Unavailable and retried until the server appears', async () => {
  const backoff = recordingBackoff(20);
  const client = new WorkloadApiClient({ address: 'unix:///tmp/taskpass-no-such-agent.sock', backoff });
  await assert.rejects(client.fetchX509Context(), { code: 'ERR_SPIFFE_WORKLOAD_API' });
  const errors: string[] = [];
  const ac = new AbortController();
  const watching = client.watchX509Context(
    { onUpdate() {}, onError: (e) => errors.push(e.message) },
    ac.signal,
  );
  await until('retries', () => (backoff.nexts >= 2 ? true : undefined));
  assert.match(errors[0]!, /UNAVAILABLE/);
  ac.abort();
  await watching;
  client.close();
});

test('JwtSource: bundles follow the stream (both key forms), redaction drops them; fetch delegates', async () => {
  fake.setJwtBundles({ 'example.org': ca.jwtBundleJwks() });
  fake.setJwtSvidHandler((req) => [{ spiffeId: WEB, svid: ca.createJwtSvid(WEB, req.audience) }]);
  await using source = await JwtSource.create({ address: fake.address, backoff: recordingBackoff() });
  assert.ok(source.getJwtBundleForTrustDomain(TD)?.keys.has(ca.jwtKid));
  assert.equal((await source.fetchJwtSvid({ audience: ['aud'] })).id.toString(), WEB);

  const kid = ca.addJwtKey();
  const updated = new Promise<void>((r) => source.once('update', () => r()));
  fake.setJwtBundles({ [TD.idString()]: ca.jwtBundleJwks(), [FED.idString()]: fedCa.jwtBundleJwks() });
  await updated;
  assert.ok(source.getJwtBundleForTrustDomain(TD)?.keys.has(kid));
  assert.ok(source.getJwtBundleForTrustDomain(FED));
  assert.equal(source.getJwtBundles().size, 2);

  const redacted = new Promise<void>((r) => source.once('update', () => r()));
  source.on('error', () => {});
  fake.setJwtBundles(null);
  await redacted;
  assert.equal(source.getJwtBundleForTrustDomain(TD), undefined);
});

test('BundleSource: waits for both kinds, serves both, and drops them on PermissionDenied', async () => {
  fake.setX509Bundles({ [TD.idString()]: ca.x509BundleDer() });
  const creating = BundleSource.create({ address: fake.address, backoff: recordingBackoff() });
  await sleep(100);
  fake.setJwtBundles({ [TD.idString()]: ca.jwtBundleJwks() });
  await using source = await creating;
  assert.equal(
    source.getX509BundleForTrustDomain(TD)?.authorities[0]?.fingerprint256,
    ca.certificate.fingerprint256,
  );
  assert.ok(source.getJwtBundleForTrustDomain(TD)?.keys.has(ca.jwtKid));
  assert.equal(source.getX509Bundles().size, 1);

  const errors: string[] = [];
  source.on('error', (e) => errors.push(isSpiffeError(e) ? e.code : e.message));
  fake.setX509Bundles(null);
  await until('X.509 redaction', () => (source.getX509BundleForTrustDomain(TD) ? undefined : true));
  assert.ok(errors.includes('ERR_SPIFFE_NO_IDENTITY'));
  assert.ok(source.getJwtBundleForTrustDomain(TD), 'the JWT stream is independent');
});

test('close() is idempotent, cancels the streams and makes getters throw ERR_SPIFFE_CLOSED', async () => {
  fake.setX509Svids({ svids: [await ca.createX509Svid(WEB)] });
  const client = new WorkloadApiClient({ address: fake.address });
  const source = await X509Source.create({ client });
  assert.equal(fake.openStreams('FetchX509SVID'), 1);
  await Promise.all([source.close(), source.close()]);
  await source.close();
  await source[Symbol.asyncDispose]();
  assert.throws(() => source.getX509Svid(), { code: 'ERR_SPIFFE_CLOSED' });
  await until('the stream to be cancelled', () =>
    fake.openStreams('FetchX509SVID') === 0 ? true : undefined,
  );
  // A borrowed client stays usable.
  assert.equal((await client.fetchX509Svid()).id.toString(), WEB);
  client.close();
  client.close();

  // Closing before the first update rejects create() instead of leaving it pending.
  const pending = X509Source.create({ address: fake.address, backoff: recordingBackoff() });
  fake.setX509Svids(null);
  const c2 = new WorkloadApiClient({ address: fake.address, backoff: recordingBackoff() });
  const p2 = X509Source.create({ client: c2 });
  c2.close();
  await assert.rejects(p2, { code: 'ERR_SPIFFE_CLOSED' });
  fake.setX509Svids({ svids: [await ca.createX509Svid(WEB)] });
  await (await pending).close();
});

test('after close() nothing keeps the process alive (the child exits on its own)', async () => {
  const index = fileURLToPath(new URL('../src/workload/index.ts', import.meta.url));
  const testing = fileURLToPath(new URL('../src/testing/index.ts', import.meta.url));
  const script = `
    import { WorkloadApiClient, X509Source, JwtSource, BundleSource, linearBackoff } from ${JSON.stringify(index)};
    import { FakeWorkloadApi, TestCa } from ${JSON.stringify(testing)};
    const ca = await TestCa.create('example.org');
    const fake = await FakeWorkloadApi.start();
    fake.setX509Svids({ svids: [await ca.createX509Svid('spiffe://example.org/web')] });
    fake.setX509Bundles({ 'example.org': ca.x509BundleDer() });
    fake.setJwtBundles({ 'example.org': ca.jwtBundleJwks() });
    const x = await X509Source.create({ address: fake.address });
    const j = await JwtSource.create({ address: fake.address });
    const b = await BundleSource.create({ address: fake.address });
    // A watch in backoff (its timer must be cleared on close) and a pending fetch.
    fake.setError('FetchX509SVID', 14);
    const client = new WorkloadApiClient({ address: fake.address, backoff: linearBackoff({ initialMs: 60000 }) });
    const watching = client.watchX509Context({ onUpdate() {}, onError() {} });
    await new Promise((r) => setTimeout(r, 100));
    await Promise.all([x.close(), j.close(), b.close()]);
    client.close();
    await watching;
    await fake.stop();
    console.log('closed');
  `;
  const child = spawn(
    process.execPath,
    ['--conditions=taskpass:source', '--import', 'tsx', '--input-type=module', '-e', script],
    { stdio: ['ignore', 'pipe', 'pipe'] },
  );
  let out = '';
  let err = '';
  child.stdout.on('data', (d) => {
    out += d;
  });
  child.stderr.on('data', (d) => {
    err += d;
  });
  const code = await new Promise<number | null>((resolve) => {
    const t = setTimeout(() => {
      child.kill('SIGKILL');
      resolve(null);
    }, 20_000);
    child.on('exit', (c) => {
      clearTimeout(t);
      resolve(c);
    });
  });
  assert.equal(code, 0, `child did not exit cleanly: ${err}`);
  assert.match(out, /closed/);
});
