// mTLS between two workloads with SVIDs from real SPIRE v1.13.3: authorization by SPIFFE ID, and
// X.509-SVID rotation under live connections. One SPIRE for the file.
import assert from 'node:assert/strict';
import { once } from 'node:events';
import { createServer, type Server } from 'node:https';
import type { AddressInfo } from 'node:net';
import { after, before, test } from 'node:test';
import * as tls from 'node:tls';
import { type Agent, request } from 'undici';
import {
  createMtlsAgent,
  isSpiffeError,
  type MtlsServerHelper,
  matchId,
  mtlsClientOptions,
  mtlsServerOptions,
} from '../src/index.ts';
import { X509Source } from '../src/workload/index.ts';
import { type SpireHarness, startSpire } from '../../harness/spire.ts';

const SERVER = 'spiffe://taskpass.local/svc/server';
const CLIENT = 'spiffe://taskpass.local/svc/client';
// 20 s X.509-SVIDs (SPIRE backdates NotBefore by 10 s, so they renew ~5 s after issue).
const SERVER_SVID_TTL = 20;

let spire: SpireHarness;
let serverSource: X509Source;
let clientSource: X509Source;
let server: Server;
let mtls: MtlsServerHelper;
let url: string;
const refused: string[] = [];
let connections = 0;

before(async () => {
  spire = await startSpire();
  await spire.createEntry({
    spiffeId: SERVER,
    entryId: 'a-server',
    hint: 'server',
    x509SvidTtl: SERVER_SVID_TTL,
  });
  await spire.createEntry({ spiffeId: CLIENT, entryId: 'b-client', hint: 'client' });
  await spire.waitForIdentity(SERVER);
  await spire.waitForIdentity(CLIENT);
  // Both workloads run in this process (same uid), so each source picks its SVID by hint.
  serverSource = await X509Source.create({
    address: spire.address,
    picker: (svids) => svids.find((s) => s.hint === 'server') ?? svids[0]!,
  });
  clientSource = await X509Source.create({
    address: spire.address,
    picker: (svids) => svids.find((s) => s.hint === 'client') ?? svids[0]!,
  });
  assert.equal(serverSource.getX509Svid().id.toString(), SERVER);
  assert.equal(clientSource.getX509Svid().id.toString(), CLIENT);

  mtls = mtlsServerOptions(serverSource, matchId(CLIENT), {
    onError: (e) => refused.push(isSpiffeError(e) ? e.code : e.message),
  });
  server = createServer(mtls.options, (req, res) => {
    res.end(mtls.peerSpiffeId(req.socket as tls.TLSSocket).toString());
  });
  mtls.attach(server);
  // Keep idle connections longer than the rotation takes, so "old connections keep working" is real.
  server.keepAliveTimeout = 60_000;
  server.on('secureConnection', () => connections++);
  server.listen(0, '127.0.0.1');
  await once(server, 'listening');
  url = `https://127.0.0.1:${(server.address() as AddressInfo).port}/`;
});

after(async () => {
  server?.closeAllConnections();
  server?.close();
  await serverSource?.close();
  await clientSource?.close();
  await spire?.stop();
});

async function get(dispatcher: Agent): Promise<string> {
  const res = await request(url, { dispatcher });
  assert.equal(res.statusCode, 200);
  return res.body.text();
}

/** Connects with tls.connect and returns the serial of the server's leaf certificate. */
async function serverSerial(): Promise<string> {
  const socket = tls.connect({
    host: '127.0.0.1',
    port: (server.address() as AddressInfo).port,
    ...mtlsClientOptions(clientSource, matchId(SERVER)),
  });
  try {
    await once(socket, 'secureConnect');
    return socket.getPeerX509Certificate()!.serialNumber;
  } finally {
    socket.destroy();
  }
}

test('mTLS between two workloads authorized by SPIFFE ID', async () => {
  const agent = createMtlsAgent(clientSource, matchId(SERVER));
  try {
    assert.equal(await get(agent), CLIENT, 'the server saw the client SPIFFE ID');
  } finally {
    await agent.close();
  }
});

test('the client refuses a server with another SPIFFE ID than expected', async () => {
  const agent = createMtlsAgent(clientSource, matchId('spiffe://taskpass.local/svc/impostor'));
  try {
    await assert.rejects(get(agent), (e: Error) => {
      const cause = (e as { cause?: unknown }).cause ?? e;
      return isSpiffeError(cause, 'ERR_SPIFFE_UNAUTHORIZED') || isSpiffeError(e, 'ERR_SPIFFE_UNAUTHORIZED');
    });
  } finally {
    await agent.close();
  }
});

test('the server refuses a valid SVID that its matcher does not authorize', async () => {
  // Present the server's own SVID as a client: valid, same trust domain, but not CLIENT.
  const agent = createMtlsAgent(serverSource, matchId(SERVER));
  const before = refused.length;
  try {
    await assert.rejects(get(agent));
  } finally {
    await agent.close();
  }
  assert.ok(refused.slice(before).includes('ERR_SPIFFE_UNAUTHORIZED'), `refusals: ${refused.join(', ')}`);
});

test('X.509-SVID rotation: new serial from the source, new connections get it, old ones keep working', async () => {
  const keepAlive = createMtlsAgent(clientSource, matchId(SERVER));
  try {
    assert.equal(await get(keepAlive), CLIENT);
    const oldSerial = serverSource.getX509Svid().certificates[0]!.serialNumber;
    assert.equal(await serverSerial(), oldSerial);

    const rotated = await new Promise<string>((resolve, reject) => {
      const deadline = setTimeout(
        () => reject(new Error(`no SVID rotation within ${SERVER_SVID_TTL + 10}s`)),
        (SERVER_SVID_TTL + 10) * 1000,
      );
      const check = () => {
        const serial = serverSource.getX509Svid().certificates[0]!.serialNumber;
        if (serial !== oldSerial) {
          clearTimeout(deadline);
          serverSource.off('update', check);
          resolve(serial);
        }
      };
      serverSource.on('update', check);
    });
    assert.notEqual(rotated, oldSerial);
    assert.equal(serverSource.getX509Svid().id.toString(), SERVER);

    // The running server swapped its secure context: a new connection sees the new certificate.
    assert.equal(await serverSerial(), rotated);
    // The keep-alive connection opened before the rotation still works (no new handshake)…
    const handshakes = connections;
    assert.equal(await get(keepAlive), CLIENT);
    assert.equal(connections, handshakes, 'the request reused the pre-rotation connection');
    // …and a new agent handshakes with the new certificate.
    const fresh = createMtlsAgent(clientSource, matchId(SERVER));
    try {
      assert.equal(await get(fresh), CLIENT);
    } finally {
      await fresh.close();
    }
  } finally {
    await keepAlive.close();
  }
});
