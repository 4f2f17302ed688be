// The mTLS identity cache of the workload authenticator (one verification per TLS connection) and
// the connection pinning that makes it sound (no renegotiation, so no certificate change).
import assert from 'node:assert/strict';
import type { X509Certificate } from 'node:crypto';
import { EventEmitter, once } from 'node:events';
import { test } from 'node:test';
import * as tls from 'node:tls';
import { JwtBundleSet, type TrustDomain, X509BundleSet } from '@taskpass/spiffe';
import { TestCa } from '@taskpass/spiffe/testing';
import { isPeerIdentityPinned, pinPeerIdentity } from '../src/auth.ts';
import { createWorkloadAuthenticator } from '../src/workload-auth.ts';

const TD = 'taskpass.local';
const AGENT = `spiffe://${TD}/agents/support/1`;

async function setup(opts: { ttlSec?: number } = {}) {
  const ca = await TestCa.create(TD);
  const svid = await ca.createX509Svid(AGENT, opts.ttlSec ? { ttlSec: opts.ttlSec } : {});
  const set = new X509BundleSet([ca.x509Bundle()]);
  // Counts bundle lookups: one per verification.
  let lookups = 0;
  const x509Bundles = {
    getX509BundleForTrustDomain: (td: TrustDomain) => {
      lookups++;
      return set.getX509BundleForTrustDomain(td);
    },
  };
  const updates = new EventEmitter();
  const clock = { ms: Date.now() };
  const auth = createWorkloadAuthenticator({
    x509Bundles,
    x509BundleUpdates: updates,
    jwtBundles: new JwtBundleSet([ca.jwtBundle()]),
    audience: 'https://broker.taskpass.local',
    trustDomains: [TD],
    now: () => clock.ms,
  });
  let reads = 0;
  const peerChain = (): readonly X509Certificate[] => {
    reads++;
    return svid.certificates;
  };
  return {
    ca,
    svid,
    set,
    updates,
    clock,
    auth,
    peerChain,
    counts: () => ({ reads, lookups }),
  };
}

test('an mTLS identity is verified once per pinned connection and then reused', async () => {
  const s = await setup();
  const conn = {};
  const first = await s.auth.authenticate({ peerChain: s.peerChain, connection: conn });
  assert.equal(first.id, AGENT);
  assert.equal(first.method, 'mtls');
  assert.deepEqual(s.counts(), { reads: 1, lookups: 1 });
  for (let i = 0; i < 5; i++) {
    const again = await s.auth.authenticate({ peerChain: s.peerChain, connection: conn });
    assert.equal(again, first);
  }
  // Neither read from the socket nor verified again.
  assert.deepEqual(s.counts(), { reads: 1, lookups: 1 });
  // Another connection is verified on its own.
  await s.auth.authenticate({ peerChain: s.peerChain, connection: {} });
  assert.deepEqual(s.counts(), { reads: 2, lookups: 2 });
});

test('without a connection (not pinned) every request is verified', async () => {
  const s = await setup();
  await s.auth.authenticate({ peerChain: s.peerChain });
  await s.auth.authenticate({ peerChain: s.peerChain });
  await s.auth.authenticate({ peerChain: s.svid.certificates });
  assert.deepEqual(s.counts(), { reads: 2, lookups: 3 });
});

test('without a bundle update signal nothing is cached', async () => {
  const ca = await TestCa.create(TD);
  const svid = await ca.createX509Svid(AGENT);
  const set = new X509BundleSet([ca.x509Bundle()]);
  const auth = createWorkloadAuthenticator({
    x509Bundles: set,
    jwtBundles: new JwtBundleSet([ca.jwtBundle()]),
    audience: 'a',
    trustDomains: [TD],
  });
  const conn = {};
  await auth.authenticate({ peerChain: svid.certificates, connection: conn });
  // The set is mutated in place with no event: the next request must see it.
  set.remove(ca.x509Bundle().trustDomain);
  await assert.rejects(auth.authenticate({ peerChain: svid.certificates, connection: conn }), {
    code: 'TASKPASS_UNAUTHENTICATED',
  });
});

test('a bundle update forces re-verification: a peer whose CA was removed is refused on the same connection', async () => {
  const s = await setup();
  const conn = {};
  await s.auth.authenticate({ peerChain: s.peerChain, connection: conn });
  // An update that keeps the CA: verified again, still accepted.
  s.updates.emit('update');
  assert.equal((await s.auth.authenticate({ peerChain: s.peerChain, connection: conn })).id, AGENT);
  assert.deepEqual(s.counts(), { reads: 2, lookups: 2 });
  // The CA is replaced by another one (rotation without overlap), and the source says so.
  const other = await TestCa.create(TD);
  s.set.add(other.x509Bundle());
  s.updates.emit('update');
  await assert.rejects(s.auth.authenticate({ peerChain: s.peerChain, connection: conn }), {
    code: 'TASKPASS_UNAUTHENTICATED',
  });
  // And it stays refused (a failure is not cached as a success).
  await assert.rejects(s.auth.authenticate({ peerChain: s.peerChain, connection: conn }), {
    code: 'TASKPASS_UNAUTHENTICATED',
  });
  // The trust domain's bundle removed altogether: refused as well.
  s.set.remove(other.x509Bundle().trustDomain);
  s.updates.emit('update');
  await assert.rejects(s.auth.authenticate({ peerChain: s.peerChain, connection: conn }), {
    code: 'TASKPASS_UNAUTHENTICATED',
  });
});

test('an expired leaf is refused on the same connection', async () => {
  const s = await setup({ ttlSec: 60 });
  const conn = {};
  const notAfter = new Date(s.svid.certificates[0]!.validTo).getTime();
  s.clock.ms = notAfter - 5_000;
  await s.auth.authenticate({ peerChain: s.peerChain, connection: conn });
  s.clock.ms = notAfter; // still valid (notAfter is inclusive)
  await s.auth.authenticate({ peerChain: s.peerChain, connection: conn });
  assert.deepEqual(s.counts(), { reads: 1, lookups: 1 });
  s.clock.ms = notAfter + 1_000;
  await assert.rejects(s.auth.authenticate({ peerChain: s.peerChain, connection: conn }), {
    code: 'TASKPASS_UNAUTHENTICATED',
  });
  assert.equal(s.counts().lookups, 2);
});

test('a connection without a client certificate falls back to the JWT-SVID on every request', async () => {
  const s = await setup();
  const conn = {};
  const jwt = s.ca.createJwtSvid(AGENT, 'https://broker.taskpass.local');
  let reads = 0;
  const none = () => {
    reads++;
    return undefined;
  };
  for (let i = 0; i < 3; i++) {
    const id = await s.auth.authenticate({ peerChain: none, connection: conn, jwtSvid: jwt });
    assert.equal(id.method, 'jwt-svid');
  }
  assert.equal(reads, 1);
  await assert.rejects(s.auth.authenticate({ peerChain: none, connection: conn }), {
    code: 'TASKPASS_UNAUTHENTICATED',
  });
});

test('pinPeerIdentity: a TLS 1.2 client cannot renegotiate on a pinned connection', async () => {
  const ca = await TestCa.create(TD);
  const server = (await ca.createX509Svid(`spiffe://${TD}/broker`)).toX509Svid();
  const client = (await ca.createX509Svid(AGENT)).toX509Svid();
  const caPem = ca
    .x509Bundle()
    .authorities.map((c) => c.toString())
    .join('');
  const pinned: tls.TLSSocket[] = [];
  const srv = tls.createServer(
    {
      key: server.privateKeyPem(),
      cert: server.certChainPem(),
      ca: caPem,
      requestCert: true,
      rejectUnauthorized: false,
      minVersion: 'TLSv1.2',
    },
    (socket) => {
      socket.on('data', (d) => socket.write(d));
    },
  );
  const errors: string[] = [];
  srv.on('secureConnection', (socket: tls.TLSSocket) => {
    socket.on('error', (e: NodeJS.ErrnoException) => errors.push(String(e.code)));
    pinPeerIdentity(socket);
    pinned.push(socket);
  });
  srv.on('tlsClientError', (e: NodeJS.ErrnoException) => errors.push(String(e.code)));
  srv.listen(0, '127.0.0.1');
  await once(srv, 'listening');
  try {
    const port = (srv.address() as { port: number }).port;
    const sock = tls.connect({
      host: '127.0.0.1',
      port,
      key: client.privateKeyPem(),
      cert: client.certChainPem(),
      ca: caPem,
      maxVersion: 'TLSv1.2',
      checkServerIdentity: () => undefined,
    });
    sock.on('error', () => {});
    await once(sock, 'secureConnect');
    sock.write('ping');
    await once(sock, 'data');
    assert.equal(pinned.length, 1);
    assert.ok(isPeerIdentityPinned(pinned[0]));
    assert.ok(!isPeerIdentityPinned({}));
    // (events.once would reject on the 'error' that comes first.)
    const closed = new Promise((resolve) => pinned[0]!.on('close', resolve));
    sock.renegotiate({ rejectUnauthorized: false }, () => {});
    // The server side refuses the renegotiation by closing the connection.
    await closed;
    assert.ok(pinned[0]!.destroyed);
    assert.deepEqual(errors, ['ERR_TLS_RENEGOTIATION_DISABLED']);
    sock.destroy();
  } finally {
    srv.close();
  }
});
