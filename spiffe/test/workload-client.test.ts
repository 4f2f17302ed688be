// WorkloadApiClient fetch/validate calls against the fake Workload API (a real gRPC server).
import assert from 'node:assert/strict';
import { after, before, beforeEach, test } from 'node:test';
import { credentials, Client as GrpcClient, Metadata, type ServiceError, status } from '@grpc/grpc-js';
import { isSpiffeError, SpiffeId, TrustDomain } from '../src/index.ts';
import { WorkloadApiClient } from '../src/workload/index.ts';
import { workloadApiService } from '../src/workload/proto.ts';
import { FakeWorkloadApi, fakeStatus, TestCa } from '../src/testing/index.ts';

const TD = TrustDomain.parse('example.org');
const FED = TrustDomain.parse('federated.test');
const WEB = 'spiffe://example.org/web';
const DB = 'spiffe://example.org/db';

let ca: TestCa;
let fedCa: TestCa;
let fake: FakeWorkloadApi;
let client: WorkloadApiClient;

before(async () => {
  ca = await TestCa.create(TD);
  fedCa = await TestCa.create(FED);
  fake = await FakeWorkloadApi.start();
  client = new WorkloadApiClient({ address: fake.address });
});

after(async () => {
  client.close();
  await fake.stop();
});

beforeEach(() => {
  fake.setX509Svids(null);
  fake.setX509Bundles(null);
  fake.setJwtBundles(null);
  fake.setJwtSvidHandler(undefined);
  fake.setValidateHandler(undefined);
});

function rawCall(path: string, md: Metadata): Promise<ServiceError> {
  const def = workloadApiService().FetchX509SVID;
  const raw = new GrpcClient(`unix:${fake.address.slice('unix://'.length)}`, credentials.createInsecure());
  return new Promise((resolve) => {
    const call = raw.makeServerStreamRequest(path, def.requestSerialize, def.responseDeserialize, {}, md);
    call.on('data', () => {});
    call.on('error', (e: ServiceError) => {
      raw.close();
      resolve(e);
    });
  });
}

test('the fake refuses calls without the security header; the client always sends it', async () => {
  fake.setX509Svids({ svids: [await ca.createX509Svid(WEB)] });
  const before = fake.headerlessCalls;
  const err = await rawCall('/SpiffeWorkloadAPI/FetchX509SVID', new Metadata());
  assert.equal(err.code, status.INVALID_ARGUMENT);
  assert.match(err.details, /security header missing/);
  const wrong = new Metadata();
  wrong.set('workload.spiffe.io', 'yes');
  assert.equal((await rawCall('/SpiffeWorkloadAPI/FetchX509SVID', wrong)).code, status.INVALID_ARGUMENT);
  assert.equal(fake.headerlessCalls, before + 2);

  // Every RPC of the client carries it.
  fake.setX509Bundles({ [TD.idString()]: ca.x509BundleDer() });
  fake.setJwtBundles({ [TD.idString()]: ca.jwtBundleJwks() });
  fake.setJwtSvidHandler((req) => [{ spiffeId: WEB, svid: ca.createJwtSvid(WEB, req.audience) }]);
  const token = ca.createJwtSvid(WEB, 'aud');
  fake.setValidateHandler(() => ({ spiffeId: WEB, claims: { sub: WEB, aud: ['aud'], exp: 2e9 } }));
  await client.fetchX509Context();
  await client.fetchX509Bundles();
  await client.fetchJwtBundles();
  await client.fetchJwtSvid({ audience: ['aud'] });
  await client.validateJwtSvid(token, 'aud');
  assert.equal(fake.headerlessCalls, before + 2);
});

test('fetchX509Context: svids[0] is the default, hints kept, spiffe_id checked against the SAN', async () => {
  const web = await ca.createX509Svid(WEB, { hint: 'web' });
  const db = await ca.createX509Svid(DB, { hint: 'db' });
  fake.setX509Svids({ svids: [web, db] });
  const ctx = await client.fetchX509Context();
  assert.deepEqual(
    ctx.svids.map((s) => [s.id.toString(), s.hint]),
    [
      [WEB, 'web'],
      [DB, 'db'],
    ],
  );
  assert.equal(ctx.svids[0]!.certificates[0]!.serialNumber, web.certificates[0]!.serialNumber);
  assert.ok(ctx.bundles.getX509BundleForTrustDomain(TD));
  assert.equal((await client.fetchX509Svid()).id.toString(), WEB);

  // A spiffe_id that differs from the certificate's URI SAN is refused.
  fake.setX509Svids({
    svids: [{ spiffeId: DB, x509Svid: web.certsDer, x509SvidKey: web.keyDer, bundle: web.bundleDer }],
  });
  await assert.rejects(client.fetchX509Context(), { code: 'ERR_SPIFFE_INVALID_X509_SVID' });
});

test('duplicate hints: the first SVID with a hint is kept, later ones dropped', async () => {
  const a = await ca.createX509Svid(WEB, { hint: 'same' });
  const b = await ca.createX509Svid(DB, { hint: 'same' });
  const c = await ca.createX509Svid('spiffe://example.org/c');
  const d = await ca.createX509Svid('spiffe://example.org/d');
  fake.setX509Svids({ svids: [a, b, c, d] });
  const ctx = await client.fetchX509Context();
  // Empty hints are not duplicates of each other.
  assert.deepEqual(
    ctx.svids.map((s) => s.id.toString()),
    [WEB, 'spiffe://example.org/c', 'spiffe://example.org/d'],
  );
});

test('federated bundles: both map-key forms; absent ones are simply not there', async () => {
  const other = await TestCa.create('other.test');
  fake.setX509Svids({
    svids: [await ca.createX509Svid(WEB)],
    federatedBundles: { [FED.idString()]: fedCa.x509BundleDer(), 'other.test': other.x509BundleDer() },
  });
  const ctx = await client.fetchX509Context();
  assert.equal(ctx.bundles.size, 3);
  assert.equal(
    ctx.bundles.getX509BundleForTrustDomain(FED)?.authorities[0]?.fingerprint256,
    fedCa.certificate.fingerprint256,
  );
  assert.ok(ctx.bundles.getX509BundleForTrustDomain(TrustDomain.parse('other.test')));

  fake.setX509Svids({ svids: [await ca.createX509Svid(WEB)] });
  const redacted = await client.fetchX509Context();
  assert.equal(redacted.bundles.size, 1);
  assert.equal(redacted.bundles.getX509BundleForTrustDomain(FED), undefined);

  // An invalid key makes the whole message invalid.
  fake.setX509Svids({
    svids: [await ca.createX509Svid(WEB)],
    federatedBundles: { 'Not A TD': fedCa.x509BundleDer() },
  });
  await assert.rejects(client.fetchX509Context(), { code: 'ERR_SPIFFE_WORKLOAD_API' });
});

test('fetchX509Bundles and fetchJwtBundles accept "spiffe://td" and bare "td" keys', async () => {
  fake.setX509Bundles({ [TD.idString()]: ca.x509BundleDer(), 'federated.test': fedCa.x509BundleDer() });
  const x = await client.fetchX509Bundles();
  assert.equal(x.size, 2);
  assert.equal(x.get(FED)?.authorities[0]?.fingerprint256, fedCa.certificate.fingerprint256);
  assert.equal(x.get(TD)?.authorities[0]?.fingerprint256, ca.certificate.fingerprint256);

  fake.setJwtBundles({
    'example.org': ca.jwtBundleJwks(),
    [FED.idString()]: JSON.stringify(fedCa.jwtBundleJwks()),
  });
  const j = await client.fetchJwtBundles();
  assert.equal(j.size, 2);
  assert.ok(j.get(TD)?.keys.has(ca.jwtKid));
  assert.ok(j.get(FED)?.keys.has(fedCa.jwtKid));
});

test('PermissionDenied is ERR_SPIFFE_NO_IDENTITY for every fetch', async () => {
  await assert.rejects(client.fetchX509Context(), { code: 'ERR_SPIFFE_NO_IDENTITY' });
  await assert.rejects(client.fetchX509Bundles(), { code: 'ERR_SPIFFE_NO_IDENTITY' });
  await assert.rejects(client.fetchJwtBundles(), { code: 'ERR_SPIFFE_NO_IDENTITY' });
  await assert.rejects(client.fetchJwtSvid({ audience: ['a'] }), { code: 'ERR_SPIFFE_NO_IDENTITY' });
  fake.setX509Svids({ svids: [await ca.createX509Svid(WEB)] });
  fake.setError('FetchX509SVID', status.UNAVAILABLE, { times: 1 });
  await assert.rejects(client.fetchX509Context(), (e: unknown) => {
    assert.ok(isSpiffeError(e, 'ERR_SPIFFE_WORKLOAD_API'));
    assert.match(e.message, /UNAVAILABLE/);
    return true;
  });
  assert.equal((await client.fetchX509Context()).svids.length, 1);
});

test('a message without SVIDs is discarded (§4.5): fetch waits for the next one', async () => {
  fake.setX509Svids({ svids: [] });
  const pending = client.fetchX509Context();
  const svid = await ca.createX509Svid(WEB);
  await new Promise((r) => setTimeout(r, 50));
  fake.setX509Svids({ svids: [svid] });
  assert.equal((await pending).svids[0]!.id.toString(), WEB);
});

test('fetchJwtSvid: audience and subject are sent; the token is parsed; spiffe_id must match sub', async () => {
  fake.setJwtSvidHandler((req) => {
    const id = req.spiffeId || WEB;
    return [{ spiffeId: id, svid: ca.createJwtSvid(id, req.audience), hint: 'h' }];
  });
  const svid = await client.fetchJwtSvid({ audience: ['https://broker.test'] });
  assert.equal(svid.id.toString(), WEB);
  assert.deepEqual(svid.audience, ['https://broker.test']);
  assert.equal(svid.hint, 'h');
  assert.deepEqual(fake.lastJwtSvidRequest, { audience: ['https://broker.test'], spiffeId: '' });

  const db = await client.fetchJwtSvid({ audience: 'https://broker.test', subject: SpiffeId.parse(DB) });
  assert.equal(db.id.toString(), DB);
  assert.equal(fake.lastJwtSvidRequest?.spiffeId, DB);

  await assert.rejects(client.fetchJwtSvid({ audience: [] }), { code: 'ERR_SPIFFE_JWT_AUDIENCE' });

  fake.setJwtSvidHandler((req) => [{ spiffeId: DB, svid: ca.createJwtSvid(WEB, req.audience) }]);
  await assert.rejects(client.fetchJwtSvid({ audience: ['a'] }), { code: 'ERR_SPIFFE_WORKLOAD_API' });
  fake.setJwtSvidHandler(() => []);
  await assert.rejects(client.fetchJwtSvid({ audience: ['a'] }), { code: 'ERR_SPIFFE_WORKLOAD_API' });
  fake.setJwtSvidHandler(() => {
    throw fakeStatus(status.UNAVAILABLE, 'could not fetch');
  });
  await assert.rejects(client.fetchJwtSvid({ audience: ['a'] }), { code: 'ERR_SPIFFE_WORKLOAD_API' });
});

test('validateJwtSvid converts the protobuf Struct claims to plain JSON', async () => {
  const token = ca.createJwtSvid(WEB, 'https://broker.test');
  fake.setValidateHandler((req) => ({
    spiffeId: WEB,
    claims: {
      sub: WEB,
      aud: [req.audience],
      exp: 1_900_000_000,
      iat: 1_899_999_700,
      nested: { ok: true, list: [1, 'two', null, { deep: false }] },
      nothing: null,
    },
  }));
  const svid = await client.validateJwtSvid(token, 'https://broker.test');
  assert.equal(svid.id.toString(), WEB);
  assert.equal(svid.token, token);
  assert.deepEqual(svid.audience, ['https://broker.test']);
  assert.equal(svid.expiresAt.getTime(), 1_900_000_000_000);
  assert.deepEqual(svid.claims, {
    sub: WEB,
    aud: ['https://broker.test'],
    exp: 1_900_000_000,
    iat: 1_899_999_700,
    nested: { ok: true, list: [1, 'two', null, { deep: false }] },
    nothing: null,
  });

  // SPIRE answers every validation failure with InvalidArgument.
  fake.setValidateHandler(() => {
    throw fakeStatus(status.INVALID_ARGUMENT, 'token has expired');
  });
  await assert.rejects(client.validateJwtSvid(token, 'https://broker.test'), (e: unknown) => {
    assert.ok(isSpiffeError(e, 'ERR_SPIFFE_INVALID_JWT_SVID'));
    assert.match(e.message, /token has expired/);
    return true;
  });
  fake.setValidateHandler(() => ({ spiffeId: WEB, claims: { sub: WEB } }));
  await assert.rejects(client.validateJwtSvid(token, 'https://broker.test'), {
    code: 'ERR_SPIFFE_WORKLOAD_API',
  });
});

test('calls after close() fail with ERR_SPIFFE_CLOSED; close() cancels a pending fetch', async () => {
  const c = new WorkloadApiClient({ address: fake.address });
  fake.setX509Svids({ svids: [] }); // discarded: the fetch stays pending
  const pending = c.fetchX509Context();
  await new Promise((r) => setTimeout(r, 50));
  c.close();
  c.close();
  await assert.rejects(pending, { code: 'ERR_SPIFFE_CLOSED' });
  await assert.rejects(c.fetchX509Context(), { code: 'ERR_SPIFFE_CLOSED' });
  await assert.rejects(c.fetchJwtSvid({ audience: ['a'] }), { code: 'ERR_SPIFFE_CLOSED' });
  await assert.rejects(c.watchX509Context({ onUpdate() {}, onError() {} }), { code: 'ERR_SPIFFE_CLOSED' });
});

test('an AbortSignal cancels a fetch', async () => {
  fake.setX509Svids({ svids: [] });
  const ac = new AbortController();
  const pending = client.fetchX509Context({ signal: ac.signal });
  ac.abort(new Error('enough'));
  await assert.rejects(pending, /enough/);
});

test('a tcp:// address works too', async () => {
  const tcp = await FakeWorkloadApi.start({ tcp: true });
  try {
    assert.match(tcp.address, /^tcp:\/\/127\.0\.0\.1:\d+$/);
    tcp.setX509Svids({ svids: [await ca.createX509Svid(WEB)] });
    const c = new WorkloadApiClient({ address: tcp.address });
    assert.equal((await c.fetchX509Svid()).id.toString(), WEB);
    c.close();
  } finally {
    await tcp.stop();
  }
});
