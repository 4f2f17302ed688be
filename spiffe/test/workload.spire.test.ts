// The Workload API client and sources against real SPIRE v1.13.3 (one server + agent for the file).
// Order matters: the last test deletes every entry of this uid.
import assert from 'node:assert/strict';
import { X509Certificate } from 'node:crypto';
import { after, before, test } from 'node:test';
import {
  isSpiffeError,
  parseAndValidateJwtSvid,
  SpiffeId,
  TrustDomain,
  verifyX509Svid,
} from '../src/index.ts';
import { WorkloadApiClient, X509Source } from '../src/workload/index.ts';
import { runAs, type SpireHarness, startSpire } from '../../harness/spire.ts';

const TD = TrustDomain.parse('taskpass.local');
const APP = 'spiffe://taskpass.local/app';
const OTHER = 'spiffe://taskpass.local/app-2';
const AUDIENCE = 'spiffe://taskpass.local/broker';

let spire: SpireHarness;
let client: WorkloadApiClient;
const entries: string[] = [];

function pemCerts(pem: string): X509Certificate[] {
  return (pem.match(/-----BEGIN CERTIFICATE-----[\s\S]+?-----END CERTIFICATE-----/g) ?? []).map(
    (p) => new X509Certificate(p),
  );
}

function until<T>(what: string, timeoutMs: number, poll: () => T | undefined): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  return new Promise((resolve, reject) => {
    const tick = () => {
      let v: T | undefined;
      try {
        v = poll();
      } catch (e) {
        reject(e);
        return;
      }
      if (v !== undefined) resolve(v);
      else if (Date.now() > deadline)
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what}`));
      else setTimeout(tick, 50);
    };
    tick();
  });
}

before(async () => {
  spire = await startSpire();
  // Entry IDs pin the order (SPIRE sorts a workload's SVIDs by entry ID): APP is the default.
  entries.push(await spire.createEntry({ spiffeId: APP, entryId: 'a-app', hint: 'app' }));
  entries.push(await spire.createEntry({ spiffeId: OTHER, entryId: 'b-app-2', hint: 'other' }));
  await spire.waitForIdentity(APP);
  await spire.waitForIdentity(OTHER);
  client = new WorkloadApiClient({ address: spire.address });
});

after(async () => {
  client?.close();
  await spire?.stop();
});

test('fetchX509Context: both SVIDs in entry order, with hints, chained to the served bundle', async () => {
  const ctx = await client.fetchX509Context();
  assert.deepEqual(
    ctx.svids.map((s) => [s.id.toString(), s.hint]),
    [
      [APP, 'app'],
      [OTHER, 'other'],
    ],
  );
  const bundle = ctx.bundles.getX509BundleForTrustDomain(TD);
  assert.ok(bundle, 'bundle for taskpass.local');
  const expected = pemCerts(await spire.bundlePem()).map((c) => c.fingerprint256);
  assert.deepEqual(
    bundle.authorities.map((a) => a.fingerprint256),
    expected,
  );
  const svid = ctx.svids[0]!;
  assert.equal(verifyX509Svid(svid.certificates, ctx.bundles).id.toString(), APP);
  assert.ok(svid.expiresAt.getTime() > Date.now() + 30 * 60_000, 'default TTL is 1h');
  // The private key belongs to the leaf.
  assert.ok(svid.privateKey.asymmetricKeyType);
  assert.doesNotMatch(JSON.stringify(svid), /PRIVATE KEY/);
});

test('fetchX509Bundles and X509Source serve the same trust domain bundle', async () => {
  const bundles = await client.fetchX509Bundles();
  const fromBundles = bundles.getX509BundleForTrustDomain(TD);
  assert.ok(fromBundles);
  await using source = await X509Source.create({ address: spire.address, timeoutMs: 15_000 });
  assert.equal(source.getX509Svid().id.toString(), APP);
  assert.deepEqual(
    source.getX509BundleForTrustDomain(TD)?.authorities.map((a) => a.fingerprint256),
    fromBundles.authorities.map((a) => a.fingerprint256),
  );
  await using picked = await X509Source.create({
    address: spire.address,
    picker: (svids) => svids.find((s) => s.hint === 'other') ?? svids[0]!,
  });
  assert.equal(picked.getX509Svid().id.toString(), OTHER);
});

test('JWT-SVID: our validation against Workload API JWT bundles agrees with SPIRE ValidateJWTSVID', async () => {
  const jwt = await client.fetchJwtSvid({ audience: [AUDIENCE] });
  assert.equal(jwt.id.toString(), APP);
  assert.deepEqual(jwt.audience, [AUDIENCE]);

  const jwtBundles = await client.fetchJwtBundles();
  const ours = await parseAndValidateJwtSvid(jwt.token, jwtBundles, AUDIENCE);
  assert.equal(ours.id.toString(), APP);
  assert.equal(ours.claims.sub, APP);
  assert.ok(ours.expiresAt.getTime() > Date.now());

  const spires = await client.validateJwtSvid(jwt.token, AUDIENCE);
  assert.equal(spires.id.toString(), APP);
  assert.deepEqual(spires.claims.aud, [AUDIENCE]);
  assert.equal(spires.claims.exp, ours.claims.exp);

  // Asking for a specific identity.
  const other = await client.fetchJwtSvid({ audience: [AUDIENCE], subject: SpiffeId.parse(OTHER) });
  assert.equal(other.id.toString(), OTHER);

  // Wrong audience: both refuse.
  await assert.rejects(parseAndValidateJwtSvid(jwt.token, jwtBundles, 'spiffe://taskpass.local/nope'), {
    code: 'ERR_SPIFFE_JWT_AUDIENCE',
  });
  await assert.rejects(client.validateJwtSvid(jwt.token, 'spiffe://taskpass.local/nope'), (e: unknown) =>
    isSpiffeError(e),
  );
  // Tampered signature: both refuse.
  const [h, p, s] = jwt.token.split('.');
  const flipped = `${h}.${p}.${s!.startsWith('A') ? 'B' : 'A'}${s!.slice(1)}`;
  await assert.rejects(parseAndValidateJwtSvid(flipped, jwtBundles, AUDIENCE), (e: unknown) =>
    isSpiffeError(e),
  );
  await assert.rejects(client.validateJwtSvid(flipped, AUDIENCE), (e: unknown) => isSpiffeError(e));
});

test('no entry for the caller: PermissionDenied is "no identity" (client run as uid 65534)', async () => {
  const r = await runAs(
    65534,
    process.execPath,
    ['--conditions=taskpass:source', '--import', 'tsx', 'test/support/no-identity-client.ts'],
    { env: { SPIFFE_ENDPOINT_SOCKET: spire.address, NO_IDENTITY_TIMEOUT_MS: '3000' }, timeoutMs: 30_000 },
  );
  assert.equal(r.code, 0, `client failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as Record<
    string,
    { ok: boolean; code?: string }
  >;
  assert.equal(out.uid, 65534);
  assert.deepEqual(out.fetchX509Context, {
    ...out.fetchX509Context,
    ok: false,
    code: 'ERR_SPIFFE_NO_IDENTITY',
  });
  assert.equal(out.fetchJwtSvid?.ok, false);
  assert.equal(out.source?.ok, false);
  // The source keeps waiting for an identity (PermissionDenied is retried) until its timeout.
  assert.match(String(out.source?.code), /ERR_SPIFFE_(TIMEOUT|NO_IDENTITY)/);
});

test('entries deleted: the source reports the redaction and getX509Svid throws ERR_SPIFFE_NO_IDENTITY', async () => {
  await using source = await X509Source.create({ address: spire.address });
  const first = source.getX509Svid();
  assert.equal(first.id.toString(), APP);
  const events: string[] = [];
  source.on('update', () => events.push('update'));
  source.on('error', (e: Error) => events.push(isSpiffeError(e) ? e.code : e.message));

  for (const id of entries.splice(0)) await spire.deleteEntry(id);
  const err = await until('the SVID to be redacted', 20_000, () => {
    try {
      source.getX509Svid();
      return undefined;
    } catch (e) {
      return e;
    }
  });
  assert.ok(isSpiffeError(err, 'ERR_SPIFFE_NO_IDENTITY'), String(err));
  assert.ok(events.length > 0, 'the source emitted an event for the redaction');
  assert.ok(
    events.includes('ERR_SPIFFE_NO_IDENTITY') || events.includes('update'),
    `events: ${events.join(', ')}`,
  );
  await assert.rejects(client.fetchX509Context(), { code: 'ERR_SPIFFE_NO_IDENTITY' });
});
