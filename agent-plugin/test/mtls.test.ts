// The mTLS path with real TLS: @taskpass/spiffe's createMtlsAgent on the client, its
// mtlsServerOptions on the fake broker, SVIDs from the spiffe test CA. A rotation of the agent's
// X.509-SVID makes the next broker request present the new certificate.
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import { test } from 'node:test';
import {
  matchId,
  matchMemberOf,
  mtlsServerOptions,
  type TrustDomain,
  type X509Bundle,
  type X509Svid,
} from '@taskpass/spiffe';
import type { JwtSource } from '@taskpass/spiffe/workload';
import { TestCa } from '@taskpass/spiffe/testing';
import { BrokerClient, type JwtSvidSource } from '../src/index.ts';
import { FakeBroker } from './support.ts';

class StaticSource extends EventEmitter {
  constructor(
    public svid: X509Svid,
    readonly bundle: X509Bundle,
  ) {
    super();
  }
  getX509Svid(): X509Svid {
    return this.svid;
  }
  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined {
    return td.equals(this.bundle.trustDomain) ? this.bundle : undefined;
  }
  rotate(svid: X509Svid): void {
    this.svid = svid;
    this.emit('update');
  }
}

// Compile-time check: the spiffe JwtSource fits the plugin's JwtSvidSource.
const _jwtSourceFits = (s: JwtSource): JwtSvidSource => s;
void _jwtSourceFits;

test('mTLS with a live source: the broker sees the current SVID, also after rotation', async () => {
  const ca = await TestCa.create('taskpass.local');
  const bundle = ca.x509Bundle();
  const brokerSource = new StaticSource(
    (await ca.createX509Svid('spiffe://taskpass.local/broker')).toX509Svid(),
    bundle,
  );
  const server = mtlsServerOptions(brokerSource, matchMemberOf('taskpass.local'));
  const broker = await FakeBroker.start({
    tls: { options: server.options, attach: (s) => server.attach(s) },
  });
  const first = (await ca.createX509Svid('spiffe://taskpass.local/agents/support')).toX509Svid();
  const agentSource = new StaticSource(first, bundle);
  const client = new BrokerClient({
    url: broker.url,
    auth: { kind: 'mtls', source: agentSource, brokerId: 'spiffe://taskpass.local/broker' },
  });
  try {
    const task = await client.openTask({ purpose: 'p' });
    await task.sessionToken('https://tickets.test/mcp');
    assert.deepEqual(
      [...new Set(broker.requests.map((r) => r.peer))],
      [first.certificates[0]!.fingerprint256],
    );
    const second = (await ca.createX509Svid('spiffe://taskpass.local/agents/support')).toX509Svid();
    agentSource.rotate(second);
    assert.equal(client.identityEpoch, 1);
    await task.complete();
    assert.equal(broker.requests.at(-1)?.peer, second.certificates[0]!.fingerprint256);
  } finally {
    await client.close();
    await broker.close();
  }
});

test('mTLS: a broker with another SPIFFE ID is refused (BROKER_UNREACHABLE, TLS cause)', async () => {
  const ca = await TestCa.create('taskpass.local');
  const bundle = ca.x509Bundle();
  const impostor = new StaticSource(
    (await ca.createX509Svid('spiffe://taskpass.local/not-broker')).toX509Svid(),
    bundle,
  );
  const server = mtlsServerOptions(impostor, matchMemberOf('taskpass.local'));
  const broker = await FakeBroker.start({
    tls: { options: server.options, attach: (s) => server.attach(s) },
  });
  const agent = new StaticSource(
    (await ca.createX509Svid('spiffe://taskpass.local/agents/support')).toX509Svid(),
    bundle,
  );
  const client = new BrokerClient({
    url: broker.url,
    auth: { kind: 'mtls', source: agent, brokerId: matchId('spiffe://taskpass.local/broker') },
  });
  try {
    await assert.rejects(client.openTask({ purpose: 'p' }), { code: 'TASKPASS_AGENT_BROKER_UNREACHABLE' });
    assert.equal(broker.requests.length, 0);
  } finally {
    await client.close();
    await broker.close();
  }
});
