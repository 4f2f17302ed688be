// Federation (issue #3) against real SPIRE v1.13.3, without a second SPIRE: a test CA plays the
// partner trust domain `partner.example`. Its SPIFFE bundle is loaded into the SPIRE server with
// `spire-server bundle set`, and the broker's registration entry federates with it, so SPIRE hands
// the partner's X.509 and JWT authorities to the broker over the Workload API. The brokers here
// are started from config alone (workloadApi.address): every bundle they trust comes from SPIRE.
//
// Two brokers share the SPIRE and the entry (so both receive the partner bundle): `fed` lists
// partner.example in federatedTrustDomains, `plain` does not. Both allow partner agents by ID
// pattern and load a temporary policies dir whose one template lets partner agents run
// autonomous tasks.
import assert from 'node:assert/strict';
import * as https from 'node:https';
import { mkdir, mkdtemp, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import {
  createMtlsAgent,
  createTlsAgent,
  matchId,
  mtlsClientOptions,
  type TlsSource,
  TrustDomain,
  type X509Svid,
} from '@taskpass/spiffe';
import { x5tS256 } from '@taskpass/contract';
import { WorkloadApiClient, X509Source } from '@taskpass/spiffe/workload';
import { TestCa } from '@taskpass/spiffe/testing';
import { createLocalJWKSet, type JWTPayload, jwtVerify } from 'jose';
import pino from 'pino';
import type { Dispatcher } from 'undici';
import { type JsonResponse, jsonRequest } from '../../test/support/http.ts';
import { type SpireHarness, startSpire } from '../../harness/spire.ts';
import { parseConfig } from '../src/config.ts';
import { generateKek } from '../src/key-wrap.ts';
import { type RunningBroker, startBroker } from '../src/server.ts';

const TD = 'taskpass.local';
const PARTNER = 'partner.example';
const PARTNER_TD = TrustDomain.parse(PARTNER);
const BROKER_ID = `spiffe://${TD}/broker`;
const PARTNER_AGENT = `spiffe://${PARTNER}/agents/reporter`;
const ISSUER = 'https://broker.taskpass.local:8443';
const TICKETS = 'https://tickets.taskpass.local/mcp';

const PARTNER_TEMPLATE = `id: partner-reporter
owner: partners@taskpass.local
description: Partner agents list tickets on their own, without a user.
agents: ["spiffe://${PARTNER}/agents/*"]
delegation: forbidden
audience: ${TICKETS}
ttl: 60s
max_task_ttl: 15m
tools:
  - tool: list_tickets
    action: read
    resources: ["tickets"]
`;

let spire: SpireHarness;
let dir: string;
/** The partner trust domain's CA, as loaded into SPIRE (replaced by the rotation test). */
let partner: TestCa;
/** SPIRE's view for this process: used to authenticate the brokers' server certificates. */
let local: X509Source;
let fed: RunningBroker;
let plain: RunningBroker;
let tlsOnly: Dispatcher;
const dispatchers: Dispatcher[] = [];

const logger = pino({ level: process.env.TASKPASS_TEST_LOG ?? 'silent' });

type Res = JsonResponse;

function call(
  broker: RunningBroker,
  dispatcher: Dispatcher,
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Res> {
  return jsonRequest(`${broker.url}${path}`, dispatcher, method, body, headers);
}

const openTask = (broker: RunningBroker, d: Dispatcher, headers: Record<string, string> = {}) =>
  call(broker, d, 'POST', '/v1/tasks', { purpose: 'nightly partner report', ttl_seconds: 600 }, headers);

const listTickets = { audience: TICKETS, tool: 'list_tickets', resource: 'tickets', action: 'read' };

/** A TLS source presenting `svid` (minted outside SPIRE) and trusting SPIRE's bundles for the server. */
function presenting(svid: X509Svid): TlsSource {
  return {
    getX509Svid: () => svid,
    getX509BundleForTrustDomain: (td) => local.getX509BundleForTrustDomain(td),
  };
}

/** An mTLS dispatcher (fresh connections) presenting an SVID minted by `ca` for `id`. */
async function mtlsAs(ca: TestCa, id: string): Promise<Dispatcher> {
  const svid = (await ca.createX509Svid(id)).toX509Svid();
  const d = createMtlsAgent(presenting(svid), matchId(BROKER_ID), serverTrust);
  dispatchers.push(d);
  return d;
}

/** The brokers' certificates chain to taskpass.local, whatever trust domain the client SVID is of. */
const serverTrust = { trustDomains: [TD] };

const bearer = (token: string) => ({ authorization: `Bearer ${token}` });

function assertUnauthenticated(r: Res, what: string): void {
  assert.equal(r.status, 401, `${what}: ${JSON.stringify(r.body)}`);
  assert.equal(r.body.code, 'TASKPASS_UNAUTHENTICATED', what);
}

async function verifyCallToken(broker: RunningBroker, token: string): Promise<JWTPayload> {
  const jwks = await call(broker, tlsOnly, 'GET', '/.well-known/jwks.json');
  assert.equal(jwks.status, 200);
  const { payload } = await jwtVerify(token, createLocalJWKSet(jwks.body as never), {
    issuer: ISSUER,
    audience: TICKETS,
    typ: 'at+jwt',
    algorithms: ['ES256'],
  });
  return payload;
}

/** Loads `ca`'s SPIFFE bundle (X.509 and JWT authorities) into the SPIRE server as partner.example. */
async function setPartnerBundle(ca: TestCa, sequence: number): Promise<void> {
  const path = join(dir, `partner-bundle-${sequence}.json`);
  await writeFile(path, JSON.stringify(ca.spiffeBundle({ sequenceNumber: sequence })));
  await spire.serverCli('bundle', 'set', '-format', 'spiffe', '-id', `spiffe://${PARTNER}`, '-path', path);
}

/** What the Workload API serves this workload for partner.example (X.509 roots, JWT kids). */
async function servedPartnerBundle(): Promise<{ roots: Buffer[]; kids: string[] }> {
  const client = new WorkloadApiClient({ address: spire.address });
  try {
    const signal = AbortSignal.timeout(3_000);
    const ctx = await client.fetchX509Context({ signal });
    const jwt = await client.fetchJwtBundles({ signal });
    return {
      roots: (ctx.bundles.getX509BundleForTrustDomain(PARTNER_TD)?.authorities ?? []).map((c) => c.raw),
      kids: [...(jwt.getJwtBundleForTrustDomain(PARTNER_TD)?.keys.keys() ?? [])],
    };
  } finally {
    client.close();
  }
}

/** Polls the real Workload API until it serves exactly `ca`'s authorities for partner.example. */
async function waitForPartnerBundle(ca: TestCa, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  let last: { roots: Buffer[]; kids: string[] } = { roots: [], kids: [] };
  while (Date.now() < deadline) {
    last = await servedPartnerBundle().catch(() => last);
    if (
      last.roots.length === 1 &&
      last.roots[0]!.equals(ca.certificate.raw) &&
      last.kids.length === 1 &&
      last.kids[0] === ca.jwtKid
    ) {
      return;
    }
    await new Promise((r) => setTimeout(r, 150));
  }
  throw new Error(
    `the Workload API did not serve the partner.example bundle within ${timeoutMs} ms (roots ${last.roots.length}, kids [${last.kids.join(', ')}])\n${spire.logTail()}`,
  );
}

function brokerConfig(name: string, federatedTrustDomains: string[]) {
  return parseConfig({
    issuer: ISSUER,
    listen: { host: '127.0.0.1', port: 0 },
    tls: { mode: 'spiffe' },
    // Everything the broker trusts comes from here: no bundle is handed to it in-process.
    workloadApi: { address: spire.address, hint: 'broker', timeoutMs: 20_000 },
    trustDomain: TD,
    federatedTrustDomains,
    // Partner agents are agents by ID pattern; other partner.example workloads are not.
    agents: { trustDomains: [TD], ids: [`spiffe://${PARTNER}/agents/*`] },
    policiesDir: join(dir, 'policies'),
    store: { sqlite: { path: join(dir, `${name}.db`) } },
    keys: { kek: generateKek('test') },
    logLevel: 'silent',
  });
}

before(
  async () => {
    dir = await mkdtemp(join(tmpdir(), 'tp-fed-'));
    await mkdir(join(dir, 'policies'));
    await writeFile(join(dir, 'policies', 'partner-reporter.yaml'), PARTNER_TEMPLATE);
    [spire, partner] = await Promise.all([startSpire(), TestCa.create(PARTNER)]);
    await setPartnerBundle(partner, 1);
    await spire.createEntry({
      spiffeId: BROKER_ID,
      hint: 'broker',
      entryId: 'a-broker',
      federatesWith: [`spiffe://${PARTNER}`],
    });
    await spire.waitForIdentity(BROKER_ID);
    await waitForPartnerBundle(partner);
    [fed, plain, local] = await Promise.all([
      startBroker(brokerConfig('fed', [PARTNER]), { logger, installSignalHandlers: false }),
      startBroker(brokerConfig('plain', []), { logger, installSignalHandlers: false }),
      X509Source.create({ address: spire.address }),
    ]);
    // Server-auth-only TLS (the broker authenticated by SPIFFE ID), for JWT-SVID bearers.
    tlsOnly = createTlsAgent(local, matchId(BROKER_ID));
    dispatchers.push(tlsOnly);
  },
  { timeout: 60_000 },
);

after(async () => {
  for (const d of dispatchers) await d.destroy().catch(() => {});
  await Promise.all([fed?.close(), plain?.close(), local?.close()]);
  await spire?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('SPIRE serves the partner.example bundle set with `bundle set` to the entry that federates with it', async () => {
  const listed = await spire.serverCli('bundle', 'list', '-id', `spiffe://${PARTNER}`, '-format', 'spiffe');
  assert.match(listed, /x509-svid/);
  assert.match(listed, new RegExp(partner.jwtKid));
  const served = await servedPartnerBundle();
  assert.equal(served.roots.length, 1);
  assert.ok(served.roots[0]!.equals(partner.certificate.raw), 'the partner CA is the X.509 authority');
  assert.deepEqual(served.kids, [partner.jwtKid], 'the partner JWT key is the JWT authority');
});

test('a partner agent with an mTLS X.509-SVID of partner.example opens an autonomous task and gets a bound call token', async () => {
  const svid = (await partner.createX509Svid(PARTNER_AGENT)).toX509Svid();
  const d = createMtlsAgent(presenting(svid), matchId(BROKER_ID), serverTrust);
  dispatchers.push(d);
  const r = await openTask(fed, d);
  assert.equal(r.status, 201, JSON.stringify(r.body));
  assert.equal(r.body.agent, PARTNER_AGENT);
  assert.equal(r.body.sub, PARTNER_AGENT, 'autonomous: the agent is the subject');
  const ceiling = r.body.ceiling as { template: string }[];
  assert.deepEqual(
    ceiling.map((c) => c.template),
    ['partner-reporter'],
  );
  const t = await call(fed, d, 'POST', `/v1/tasks/${r.body.task_id}/tokens`, listTickets);
  assert.equal(t.status, 200, JSON.stringify(t.body));
  assert.equal(t.body.template, 'partner-reporter');
  const claims = await verifyCallToken(fed, t.body.access_token as string);
  assert.equal(claims.client_id, PARTNER_AGENT);
  assert.deepEqual(claims.act, { sub: PARTNER_AGENT });
  assert.deepEqual(claims.cnf, { 'x5t#S256': x5tS256(svid.certificates[0]!) }, 'bound to the partner leaf');
});

test('a partner agent with a JWT-SVID of partner.example for the broker audience opens an autonomous task', async () => {
  const headers = bearer(partner.createJwtSvid(PARTNER_AGENT, ISSUER));
  const r = await openTask(fed, tlsOnly, headers);
  assert.equal(r.status, 201, JSON.stringify(r.body));
  assert.equal(r.body.agent, PARTNER_AGENT);
  const t = await call(fed, tlsOnly, 'POST', `/v1/tasks/${r.body.task_id}/tokens`, listTickets, headers);
  assert.equal(t.status, 200, JSON.stringify(t.body));
  const claims = await verifyCallToken(fed, t.body.access_token as string);
  assert.deepEqual(claims.act, { sub: PARTNER_AGENT });
  assert.equal(claims.cnf, undefined, 'no certificate, no binding');
  // Wrong audience: refused even though the signature is the partner's.
  const other = bearer(partner.createJwtSvid(PARTNER_AGENT, 'https://elsewhere.taskpass.local'));
  assertUnauthenticated(await openTask(fed, tlsOnly, other), 'partner JWT-SVID for another audience');
});

test('a federated partner workload that is not an allowed agent is authenticated but forbidden (403)', async () => {
  const notAgent = `spiffe://${PARTNER}/workloads/db`;
  const viaMtls = await openTask(fed, await mtlsAs(partner, notAgent));
  assert.equal(viaMtls.status, 403, JSON.stringify(viaMtls.body));
  assert.equal(viaMtls.body.code, 'TASKPASS_FORBIDDEN');
  const viaJwt = await openTask(fed, tlsOnly, bearer(partner.createJwtSvid(notAgent, ISSUER)));
  assert.equal(viaJwt.status, 403, JSON.stringify(viaJwt.body));
  assert.equal(viaJwt.body.code, 'TASKPASS_FORBIDDEN');
});

test('a broker without partner.example in federatedTrustDomains refuses the same partner credentials with 401', async () => {
  // Same SPIRE entry: this broker receives the partner bundle too, and its agents list allows the
  // ID. Only the configuration differs.
  const viaMtls = await openTask(plain, await mtlsAs(partner, PARTNER_AGENT));
  assertUnauthenticated(viaMtls, 'partner mTLS, federation not configured');
  const viaJwt = await openTask(plain, tlsOnly, bearer(partner.createJwtSvid(PARTNER_AGENT, ISSUER)));
  assertUnauthenticated(viaJwt, 'partner JWT-SVID, federation not configured');
  // The federated broker still accepts them (nothing else differs).
  assert.equal((await openTask(fed, await mtlsAs(partner, PARTNER_AGENT))).status, 201);
});

test('partner credentials minted by a CA other than the one in the federated bundle are refused with 401', async () => {
  const forger = await TestCa.create(PARTNER);
  const viaMtls = await openTask(fed, await mtlsAs(forger, PARTNER_AGENT));
  assertUnauthenticated(viaMtls, 'forged partner X.509-SVID');
  // The forged token names the real partner key id: only the signature gives it away.
  const forgedJwt = forger.createJwtSvid(PARTNER_AGENT, ISSUER, { headerKid: partner.jwtKid });
  assertUnauthenticated(await openTask(fed, tlsOnly, bearer(forgedJwt)), 'forged partner JWT-SVID');
  const unknownKid = forger.createJwtSvid(PARTNER_AGENT, ISSUER);
  assertUnauthenticated(await openTask(fed, tlsOnly, bearer(unknownKid)), 'partner JWT-SVID, unknown kid');
});

test('the partner CA cannot vouch for a taskpass.local ID: each SVID is checked against its own trust domain bundle', async () => {
  // Signed by the trusted partner CA, but for one of our IDs (an allowed agent pattern if it were
  // valid). Accepting it would mean validating against the union of all bundles.
  const crossId = `spiffe://${TD}/agents/support/1`;
  const viaMtls = await openTask(fed, await mtlsAs(partner, crossId));
  assertUnauthenticated(viaMtls, 'partner-signed X.509-SVID for a taskpass.local ID');
  // Same for a JWT-SVID signed with the partner's (trusted, federated) JWT key.
  const viaJwt = await openTask(fed, tlsOnly, bearer(partner.createJwtSvid(crossId, ISSUER)));
  assertUnauthenticated(viaJwt, 'partner-signed JWT-SVID for a taskpass.local ID');
});

/** Node https request on a keep-alive agent; tells whether the request reused a connection. */
function httpsPost(agent: https.Agent, url: string, body: unknown): Promise<Res & { reused: boolean }> {
  return new Promise((resolve, reject) => {
    const req = https.request(url, {
      method: 'POST',
      agent,
      headers: { 'content-type': 'application/json' },
    });
    req.on('response', (res) => {
      let text = '';
      res.on('data', (c: Buffer) => {
        text += c.toString();
      });
      res.on('end', () =>
        resolve({
          status: res.statusCode ?? 0,
          body: text ? (JSON.parse(text) as Record<string, unknown>) : {},
          reused: req.reusedSocket,
        }),
      );
    });
    req.on('error', reject);
    req.end(JSON.stringify(body));
  });
}

test('the broker follows the partner bundle in SPIRE: after `bundle set` with a new partner CA, the old CA is refused, even on an open connection', {
  timeout: 30_000,
}, async () => {
  const old = partner;
  const oldSvid = (await old.createX509Svid(PARTNER_AGENT)).toX509Svid();
  // One keep-alive connection, opened while the old CA is the federated one.
  const keepAlive = new https.Agent({
    ...mtlsClientOptions(presenting(oldSvid), matchId(BROKER_ID), serverTrust),
    keepAlive: true,
    maxSockets: 1,
  });
  try {
    const url = `${fed.url}/v1/tasks`;
    const task = { purpose: 'nightly partner report', ttl_seconds: 600 };
    const first = await httpsPost(keepAlive, url, task);
    assert.equal(first.status, 201, JSON.stringify(first.body));

    const next = await TestCa.create(PARTNER);
    await setPartnerBundle(next, 2);
    await waitForPartnerBundle(next);
    // The broker's own Workload API streams carry the change; give them a moment to arrive.
    const nextMtls = await mtlsAs(next, PARTNER_AGENT);
    const deadline = Date.now() + 10_000;
    let accepted: Res | undefined;
    while (Date.now() < deadline) {
      accepted = await openTask(fed, nextMtls);
      if (accepted.status === 201) break;
      await new Promise((r) => setTimeout(r, 200));
    }
    assert.equal(accepted?.status, 201, `the new partner CA is trusted: ${JSON.stringify(accepted?.body)}`);
    const nextJwt = bearer(next.createJwtSvid(PARTNER_AGENT, ISSUER));
    assert.equal((await openTask(fed, tlsOnly, nextJwt)).status, 201, 'the new partner JWT key is trusted');

    const again = await httpsPost(keepAlive, url, task);
    assert.ok(again.reused, 'the same TLS connection as before the bundle change');
    assertUnauthenticated(again, 'old partner certificate on its open connection');
    assertUnauthenticated(
      await openTask(fed, await mtlsAs(old, PARTNER_AGENT)),
      'old partner CA, new connection',
    );
    assertUnauthenticated(
      await openTask(fed, tlsOnly, bearer(old.createJwtSvid(PARTNER_AGENT, ISSUER))),
      'old partner JWT key',
    );
    partner = next;
  } finally {
    keepAlive.destroy();
  }
});
