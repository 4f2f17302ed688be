// TLS helpers with the in-memory test CA and static sources: real node:tls/https servers and undici
// clients on 127.0.0.1.
import assert from 'node:assert/strict';
import { EventEmitter, once } from 'node:events';
import { createServer as createHttpsServer } from 'node:https';
import type { AddressInfo } from 'node:net';
import { before, test } from 'node:test';
import * as tls from 'node:tls';
import { request } from 'undici';
import {
  createMtlsAgent,
  createTlsAgent,
  isSpiffeError,
  matchId,
  matchMemberOf,
  mtlsClientOptions,
  mtlsServerOptions,
  type TlsSource,
  TrustDomain,
  trustedAuthorities,
  type X509Bundle,
  X509BundleSet,
  type X509Svid,
} from '../src/index.ts';
import { TestCa } from '../src/testing/index.ts';

const SERVER = 'spiffe://a.org/server';
const CLIENT = 'spiffe://a.org/client';
const A = TrustDomain.parse('a.org');

/** A static source whose SVID a test can swap, emitting 'update' like X509Source does. */
class StaticSource extends EventEmitter implements TlsSource {
  #svid: X509Svid;
  readonly bundles: X509BundleSet;
  constructor(svid: X509Svid, bundles: X509BundleSet) {
    super();
    this.#svid = svid;
    this.bundles = bundles;
  }
  getX509Svid(): X509Svid {
    return this.#svid;
  }
  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined {
    return this.bundles.getX509BundleForTrustDomain(td);
  }
  getX509Bundles(): Iterable<X509Bundle> {
    return this.bundles;
  }
  setSvid(svid: X509Svid): void {
    this.#svid = svid;
    this.emit('update');
  }
}

let caA: TestCa;
let caB: TestCa;
let bundles: X509BundleSet;

async function svid(ca: TestCa, id: string): Promise<X509Svid> {
  return (await ca.createX509Svid(id)).toX509Svid();
}

async function source(ca: TestCa, id: string): Promise<StaticSource> {
  return new StaticSource(await svid(ca, id), bundles);
}

/**
 * An https server with mTLS that answers with the client's verified SPIFFE ID and the thumbprint of
 * its certificate, and closes each connection (so every request is a new handshake).
 */
async function startServer(src: StaticSource, authorize = matchId(CLIENT)) {
  const refused: string[] = [];
  const mtls = mtlsServerOptions(src, authorize, {
    onError: (e) => refused.push(isSpiffeError(e) ? e.code : e.message),
  });
  const keepAlive = { value: false };
  const server = createHttpsServer(mtls.options, (req, res) => {
    const socket = req.socket as tls.TLSSocket;
    if (!keepAlive.value) res.setHeader('connection', 'close');
    res.end(
      JSON.stringify({
        id: mtls.peerSpiffeId(socket).toString(),
        x5t: socket.getPeerX509Certificate()!.fingerprint256,
      }),
    );
  });
  mtls.attach(server);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const port = (server.address() as AddressInfo).port;
  return {
    port,
    url: `https://127.0.0.1:${port}/`,
    refused,
    keepAlive,
    async close() {
      server.closeAllConnections();
      server.close();
      await once(server, 'close');
    },
  };
}

async function get(url: string, dispatcher: ReturnType<typeof createMtlsAgent>) {
  const res = await request(url, { dispatcher });
  assert.equal(res.statusCode, 200);
  return (await res.body.json()) as { id: string; x5t: string };
}

/** Handshakes with tls.connect and returns the server's leaf serial (or the error). */
async function handshake(port: number, opts: tls.ConnectionOptions): Promise<string> {
  const socket = tls.connect({ host: '127.0.0.1', port, ...opts });
  try {
    await once(socket, 'secureConnect');
    return socket.getPeerX509Certificate()!.serialNumber;
  } finally {
    socket.destroy();
  }
}

const refusedWith =
  (code: string) =>
  (e: unknown): boolean =>
    isSpiffeError(e) && e.code === code;

before(async () => {
  caA = await TestCa.create('a.org');
  caB = await TestCa.create('b.org');
  bundles = new X509BundleSet([caA.x509Bundle(), caB.x509Bundle()]);
});

test('an authorized client and server connect; the server sees the client SPIFFE ID', async () => {
  const srv = await startServer(await source(caA, SERVER));
  const client = await source(caA, CLIENT);
  const agent = createMtlsAgent(client, matchId(SERVER));
  try {
    const body = await get(srv.url, agent);
    assert.equal(body.id, CLIENT);
    assert.equal(body.x5t, client.getX509Svid().certificates[0]!.fingerprint256);
    assert.deepEqual(srv.refused, []);
  } finally {
    await agent.close();
    await srv.close();
  }
});

test('a client SVID from an intermediate CA of the same trust domain is accepted', async () => {
  const child = await caA.createChildCa();
  const srv = await startServer(await source(caA, SERVER), matchMemberOf(A));
  const client = new StaticSource(await svid(child, CLIENT), bundles);
  assert.equal(client.getX509Svid().certificates.length, 2);
  const agent = createMtlsAgent(client, matchId(SERVER));
  try {
    assert.equal((await get(srv.url, agent)).id, CLIENT);
  } finally {
    await agent.close();
    await srv.close();
  }
});

test('the client refuses a server with another SPIFFE ID than expected', async () => {
  const srv = await startServer(await source(caA, SERVER));
  const client = await source(caA, CLIENT);
  const agent = createMtlsAgent(client, matchId('spiffe://a.org/other'));
  try {
    await assert.rejects(get(srv.url, agent), refusedWith('ERR_SPIFFE_UNAUTHORIZED'));
    await assert.rejects(
      handshake(srv.port, mtlsClientOptions(client, matchId('spiffe://a.org/other'))),
      refusedWith('ERR_SPIFFE_UNAUTHORIZED'),
    );
  } finally {
    await agent.close();
    await srv.close();
  }
});

test('the server refuses a valid client SVID its matcher does not authorize', async () => {
  const srv = await startServer(await source(caA, SERVER));
  const agent = createMtlsAgent(await source(caA, 'spiffe://a.org/intruder'), matchId(SERVER));
  try {
    await assert.rejects(get(srv.url, agent));
    assert.deepEqual(srv.refused, ['ERR_SPIFFE_UNAUTHORIZED']);
  } finally {
    await agent.close();
    await srv.close();
  }
});

test('a certificate for a.org issued by b.org’s CA is refused although both CAs are in the ca list', async () => {
  // Node's handshake accepts it (caB is in the pooled `ca`); the per-trust-domain check must not.
  const srv = await startServer(await source(caA, SERVER), matchMemberOf(A));
  assert.equal(trustedAuthorities(new StaticSource(await svid(caA, SERVER), bundles)).length, 2);
  const forged = new StaticSource(await svid(caB, CLIENT), bundles);
  const agent = createMtlsAgent(forged, matchId(SERVER));
  try {
    await assert.rejects(get(srv.url, agent));
    assert.deepEqual(srv.refused, ['ERR_SPIFFE_X509_VERIFY_FAILED']);
  } finally {
    await agent.close();
    await srv.close();
  }

  // And the other way round: a server presenting a.org's ID from b.org's CA.
  const forgedServer = await startServer(new StaticSource(await svid(caB, SERVER), bundles));
  const client = await source(caA, CLIENT);
  const agent2 = createMtlsAgent(client, matchId(SERVER));
  try {
    await assert.rejects(get(forgedServer.url, agent2), refusedWith('ERR_SPIFFE_X509_VERIFY_FAILED'));
  } finally {
    await agent2.close();
    await forgedServer.close();
  }
});

test('a client from another trust domain is verified against its own bundle and then authorized', async () => {
  const srv = await startServer(await source(caA, SERVER), matchMemberOf(A));
  const client = await source(caB, 'spiffe://b.org/client');
  const agent = createMtlsAgent(client, matchId(SERVER));
  try {
    await assert.rejects(get(srv.url, agent));
    assert.deepEqual(srv.refused, ['ERR_SPIFFE_UNAUTHORIZED']);
  } finally {
    await agent.close();
    await srv.close();
  }
  const both = await startServer(await source(caA, SERVER), matchId('spiffe://b.org/client'));
  const agent2 = createMtlsAgent(client, matchId(SERVER));
  try {
    assert.equal((await get(both.url, agent2)).id, 'spiffe://b.org/client');
  } finally {
    await agent2.close();
    await both.close();
  }
});

test('server SVID rotation: new connections get the new certificate, open ones keep working', async () => {
  const serverSource = await source(caA, SERVER);
  const srv = await startServer(serverSource);
  srv.keepAlive.value = true;
  const client = await source(caA, CLIENT);
  const agent = createMtlsAgent(client, matchId(SERVER));
  try {
    const oldSerial = serverSource.getX509Svid().certificates[0]!.serialNumber;
    assert.equal(await handshake(srv.port, mtlsClientOptions(client, matchId(SERVER))), oldSerial);
    assert.equal((await get(srv.url, agent)).id, CLIENT);

    serverSource.setSvid(await svid(caA, SERVER));
    const newSerial = serverSource.getX509Svid().certificates[0]!.serialNumber;
    assert.notEqual(newSerial, oldSerial);
    assert.equal(await handshake(srv.port, mtlsClientOptions(client, matchId(SERVER))), newSerial);
    // The keep-alive connection opened before the swap still serves requests.
    assert.equal((await get(srv.url, agent)).id, CLIENT);
  } finally {
    await agent.close();
    await srv.close();
  }
});

test('client SVID rotation: createMtlsAgent presents the current SVID on each new connection', async () => {
  const srv = await startServer(await source(caA, SERVER));
  const client = await source(caA, CLIENT);
  const agent = createMtlsAgent(client, matchId(SERVER));
  try {
    const first = (await get(srv.url, agent)).x5t;
    assert.equal(first, client.getX509Svid().certificates[0]!.fingerprint256);
    client.setSvid(await svid(caA, CLIENT));
    const second = (await get(srv.url, agent)).x5t;
    assert.notEqual(second, first);
    assert.equal(second, client.getX509Svid().certificates[0]!.fingerprint256);
  } finally {
    await agent.close();
    await srv.close();
  }
});

test('client SVID rotation: a kept-alive connection is not reused with the old SVID (token binding follows the new one)', async () => {
  const srv = await startServer(await source(caA, SERVER));
  srv.keepAlive.value = true;
  const client = await source(caA, CLIENT);
  const agent = createMtlsAgent(client, matchId(SERVER));
  try {
    const first = (await get(srv.url, agent)).x5t;
    assert.equal((await get(srv.url, agent)).x5t, first, 'kept alive: same connection, same SVID');
    client.setSvid(await svid(caA, CLIENT));
    // A broker binds the next call token to the new SVID (cnf); a request on a connection that
    // still presents the old one would be refused by the verifier.
    const second = (await get(srv.url, agent)).x5t;
    assert.equal(second, client.getX509Svid().certificates[0]!.fingerprint256);
    assert.notEqual(second, first);
  } finally {
    await agent.close();
    await srv.close();
  }
});

test('server-auth-only TLS: createTlsAgent authenticates the server by SPIFFE ID', async () => {
  const serverSvid = await svid(caA, SERVER);
  const server = createHttpsServer(
    { cert: serverSvid.certChainPem(), key: serverSvid.privateKeyPem() },
    (_q, res) => res.end('ok'),
  );
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  const url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/`;
  const good = createTlsAgent(bundles, matchId(SERVER));
  const bad = createTlsAgent(caA.x509Bundle(), matchId('spiffe://a.org/other'));
  try {
    const res = await request(url, { dispatcher: good });
    assert.equal(await res.body.text(), 'ok');
    await assert.rejects(request(url, { dispatcher: bad }), refusedWith('ERR_SPIFFE_UNAUTHORIZED'));
  } finally {
    await good.close();
    await bad.close();
    server.closeAllConnections();
    server.close();
  }
});

test('an mTLS server connection is pinned: a TLS 1.2 client that renegotiates is disconnected', async () => {
  const server = await startServer(await source(caA, SERVER));
  server.keepAlive.value = true;
  const client = await svid(caA, CLIENT);
  const sock = tls.connect({
    host: '127.0.0.1',
    port: server.port,
    key: client.privateKeyPem(),
    cert: client.certChainPem(),
    ca: caA.x509Bundle().authorities.map((c) => c.toString()),
    maxVersion: 'TLSv1.2',
    checkServerIdentity: () => undefined,
  });
  try {
    sock.on('error', () => {});
    await once(sock, 'secureConnect');
    sock.write('GET / HTTP/1.1\r\nHost: x\r\n\r\n');
    const [first] = await once(sock, 'data');
    assert.match(String(first), /^HTTP\/1\.1 200/, 'the pinned connection serves requests');
    const closed = once(sock, 'close');
    // With renegotiation allowed the client could now present another certificate on a connection
    // whose identity has been verified (and cached) already.
    sock.renegotiate({ rejectUnauthorized: false }, () => {});
    const outcome = await Promise.race([
      closed.then(() => 'closed'),
      new Promise((r) => setTimeout(r, 5000, 'still open')),
    ]);
    assert.equal(outcome, 'closed');
    assert.ok(sock.destroyed);
  } finally {
    sock.destroy();
    await server.close();
  }
});
