// The broker against real SPIRE v1.13.3: it serves HTTPS with its own X.509-SVID (picked by hint,
// swapped on rotation), authenticates agents by mTLS (their X.509-SVID, validated against their own
// trust domain's bundle) and by JWT-SVID bearer, opens tasks for a user of the example IdP, mints
// call tokens (cnf bound to the mTLS leaf), denies calls outside the templates, pushes the
// revocation of a completed task on the SSE feed, and keeps keys and revocations across a restart.
// One SPIRE, one IdP and one broker (restarted once, same SQLite file) for the whole file.
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { after, before, test } from 'node:test';
import * as tls from 'node:tls';
import { fileURLToPath } from 'node:url';
import { createMtlsAgent, createTlsAgent, matchId, type TlsSource, type X509Svid } from '@taskpass/spiffe';
import { x5tS256 } from '@taskpass/contract';
import { pickByHint, WorkloadApiClient, X509Source } from '@taskpass/spiffe/workload';
import { TestCa } from '@taskpass/spiffe/testing';
import { createLocalJWKSet, decodeJwt, decodeProtectedHeader, type JWTPayload, jwtVerify } from 'jose';
import pino from 'pino';
import { type Dispatcher, request } from 'undici';
import { type JsonResponse, jsonRequest } from '../../test/support/http.ts';
import { type Idp, startIdp } from '../../examples/idp/idp.ts';
import { runAs, type SpireHarness, startSpire } from '../../harness/spire.ts';
import { type BrokerConfig, parseConfig } from '../src/config.ts';
import { generateKek } from '../src/key-wrap.ts';
import { type RunningBroker, startBroker } from '../src/server.ts';

const here = dirname(fileURLToPath(import.meta.url));
const repoRoot = resolve(here, '..', '..');

const TD = 'taskpass.local';
const BROKER_ID = `spiffe://${TD}/broker`;
const AGENT_ID = `spiffe://${TD}/agents/support/1`;
const ISSUER = 'https://broker.taskpass.local:8443';
const TICKETS = 'https://tickets.taskpass.local/mcp';
const USER_AUDIENCE = 'taskpass';
// SPIRE backdates NotBefore by 10 s and renews at half-life, so a 20 s SVID rotates every ~5 s.
const BROKER_SVID_TTL = 20;

let spire: SpireHarness;
let idp: Idp;
let dir: string;
let config: BrokerConfig;
let broker: RunningBroker;
let agentSource: X509Source;
let mtls: Dispatcher;
let tlsOnly: Dispatcher;
const dispatchers: Dispatcher[] = [];
/** Set by the completion test, read by the restart and rotation tests. */
let completedTask: string | undefined;

const logger = pino({ level: process.env.TASKPASS_TEST_LOG ?? 'silent' });
const byHint = pickByHint;

type Res = JsonResponse;

function call(
  dispatcher: Dispatcher,
  method: 'GET' | 'POST',
  path: string,
  body?: unknown,
  headers: Record<string, string> = {},
): Promise<Res> {
  return jsonRequest(`${broker.url}${path}`, dispatcher, method, body, headers);
}

const userToken = (groups = ['support']) =>
  idp.idToken({ sub: 'alice', email: 'alice@taskpass.local', groups, audience: USER_AUDIENCE });

async function openTask(dispatcher: Dispatcher, headers: Record<string, string> = {}): Promise<string> {
  const r = await call(
    dispatcher,
    'POST',
    '/v1/tasks',
    { purpose: 'answer ticket T-1', user_token: await userToken(), ttl_seconds: 600 },
    headers,
  );
  assert.equal(r.status, 201, JSON.stringify(r.body));
  return r.body.task_id as string;
}

const getTicket = (resource = 'tickets/T-1') => ({
  audience: TICKETS,
  tool: 'get_ticket',
  resource,
  action: 'read',
});

async function brokerJwks() {
  const r = await call(tlsOnly, 'GET', '/.well-known/jwks.json');
  assert.equal(r.status, 200);
  return r.body as { keys: { kid: string }[] };
}

async function verifyCallToken(token: string): Promise<JWTPayload> {
  const { payload, protectedHeader } = await jwtVerify(token, createLocalJWKSet(await brokerJwks()), {
    issuer: ISSUER,
    audience: TICKETS,
    typ: 'at+jwt',
    algorithms: ['ES256'],
  });
  assert.equal(protectedHeader.typ, 'at+jwt');
  return payload;
}

/** The leaf certificate the broker serves on a fresh TLS connection. */
async function servedLeaf(): Promise<tls.PeerCertificate> {
  const port = Number(new URL(broker.url).port);
  return new Promise((res, rej) => {
    const s = tls.connect({ host: '127.0.0.1', port, rejectUnauthorized: false }, () => {
      const cert = s.getPeerCertificate();
      s.end();
      res(cert);
    });
    s.on('error', rej);
  });
}

/** A JWT-SVID from real SPIRE for the entry with `hint`. */
async function jwtSvid(hint: string, audience = ISSUER): Promise<string> {
  const client = new WorkloadApiClient({ address: spire.address });
  try {
    const svids = await client.fetchJwtSvids({ audience: [audience] });
    const svid = svids.find((s) => s.hint === hint);
    assert.ok(svid, `a JWT-SVID with hint ${hint}`);
    return svid.token;
  } finally {
    client.close();
  }
}

/** Server-sent events of a response body, parsed. */
async function* sseEvents(body: AsyncIterable<Buffer | string>) {
  let buf = '';
  for await (const chunk of body) {
    buf += chunk.toString();
    let i = buf.indexOf('\n\n');
    while (i >= 0) {
      const raw = buf.slice(0, i);
      buf = buf.slice(i + 2);
      const ev: { event: string; id?: string; data: string } = { event: 'message', data: '' };
      for (const line of raw.split('\n')) {
        const m = /^([a-z-]+): ?(.*)$/i.exec(line);
        if (!m) continue;
        if (m[1] === 'event') ev.event = m[2]!;
        else if (m[1] === 'id') ev.id = m[2]!;
        else if (m[1] === 'data') ev.data += m[2]!;
      }
      yield ev;
      i = buf.indexOf('\n\n');
    }
  }
}

/** Opens the revocation feed over mTLS; `next(pred)` resolves with the first matching event. */
async function openFeed(query = '') {
  const ac = new AbortController();
  const res = await request(`${broker.url}/v1/revocations/stream${query}`, {
    method: 'GET',
    dispatcher: mtls,
    signal: ac.signal,
    headers: { accept: 'text/event-stream' },
  });
  assert.equal(res.statusCode, 200);
  assert.match(String(res.headers['content-type']), /text\/event-stream/);
  const events = sseEvents(res.body);
  return {
    async next(pred: (e: { event: string; id?: string; data: string }) => boolean, timeoutMs = 5000) {
      const timer = setTimeout(() => ac.abort(), timeoutMs);
      try {
        for (;;) {
          const { value, done } = await events.next();
          if (done) throw new Error('feed ended');
          if (pred(value)) return { ...value, json: JSON.parse(value.data) as Record<string, unknown> };
        }
      } finally {
        clearTimeout(timer);
      }
    },
    close: () => ac.abort(),
  };
}

before(
  async () => {
    spire = await startSpire();
    // Every process here runs as uid 0, so each component has its own entry and picks it by hint.
    await spire.createEntry({
      spiffeId: BROKER_ID,
      hint: 'broker',
      entryId: 'a-broker',
      x509SvidTtl: BROKER_SVID_TTL,
    });
    await spire.createEntry({ spiffeId: AGENT_ID, hint: 'agent', entryId: 'b-agent' });
    await spire.waitForIdentity(BROKER_ID);
    await spire.waitForIdentity(AGENT_ID);
    idp = await startIdp();
    dir = await mkdtemp(join(tmpdir(), 'tp-broker-'));
    config = parseConfig({
      issuer: ISSUER,
      listen: { host: '127.0.0.1', port: 0 },
      tls: { mode: 'spiffe' },
      workloadApi: { address: spire.address, hint: 'broker', timeoutMs: 20_000 },
      trustDomain: TD,
      agents: { ids: [`spiffe://${TD}/agents/**`] },
      users: {
        trustedIssuers: [
          { issuer: idp.issuer, audience: USER_AUDIENCE, jwksUri: idp.jwksUri, algorithms: ['ES256'] },
        ],
      },
      policiesDir: join(repoRoot, 'policies'),
      store: { sqlite: { path: join(dir, 'broker.db') } },
      keys: { kek: generateKek('test') },
      feed: { heartbeatMs: 1000 },
      logLevel: 'silent',
    });
    broker = await startBroker(config, { logger, installSignalHandlers: false });
    agentSource = await X509Source.create({ address: spire.address, picker: byHint('agent') });
    assert.equal(agentSource.getX509Svid().id.toString(), AGENT_ID);
    mtls = createMtlsAgent(agentSource, matchId(BROKER_ID));
    // TLS with the broker authenticated by its SPIFFE ID, but no client certificate (JWT-SVID clients).
    tlsOnly = createTlsAgent(agentSource, matchId(BROKER_ID));
    dispatchers.push(mtls, tlsOnly);
  },
  { timeout: 90_000 },
);

after(async () => {
  for (const d of dispatchers) await d.destroy().catch(() => {});
  await broker?.close();
  await agentSource?.close();
  await idp?.close();
  await spire?.stop();
  if (dir) await rm(dir, { recursive: true, force: true });
});

test('the broker serves its own X.509-SVID, chosen by hint, and is ready', async () => {
  const leaf = await servedLeaf();
  assert.equal(leaf.subjectaltname, `URI:${BROKER_ID}`, 'the hint picked the broker SVID, not the agent one');
  // The agent's client helper authenticates the broker by SPIFFE ID: a wrong expected ID fails.
  const wrong = createTlsAgent(agentSource, matchId(`spiffe://${TD}/not-the-broker`));
  dispatchers.push(wrong);
  await assert.rejects(call(wrong, 'GET', '/healthz'));
  const ready = await call(tlsOnly, 'GET', '/readyz');
  assert.equal(ready.status, 200, JSON.stringify(ready.body));
  assert.deepEqual(ready.body.checks, { store: true, policies: true, svid: true, keys: true });
  assert.equal(ready.body.signing_keys_at_rest, 'encrypted', 'the broker runs with a KEK');
});

test('a workloadApi.hint that no SVID carries stops start-up with TASKPASS_CONFIG_INVALID', async () => {
  const bad = parseConfig({
    issuer: ISSUER,
    trustDomain: TD,
    listen: { host: '127.0.0.1', port: 0 },
    workloadApi: { address: spire.address, hint: 'no-such-hint', timeoutMs: 20_000 },
    policiesDir: join(repoRoot, 'policies'),
    store: { sqlite: { path: join(dir, 'bad-hint.db') } },
    keys: { kek: generateKek('test') },
    logLevel: 'silent',
  });
  await assert.rejects(startBroker(bad, { logger, installSignalHandlers: false }), (e: Error) => {
    assert.equal((e as { code?: string }).code, 'TASKPASS_CONFIG_INVALID');
    assert.match(e.message, /no-such-hint/);
    assert.match(e.message, /"broker"/, 'lists the hints offered');
    return true;
  });
});

test('mTLS agent: opens a task for a user and gets a call token bound to its certificate', async () => {
  const r = await call(mtls, 'POST', '/v1/tasks', {
    purpose: 'answer ticket T-1',
    user_token: await userToken(),
    ttl_seconds: 600,
  });
  assert.equal(r.status, 201, JSON.stringify(r.body));
  assert.equal(r.body.agent, AGENT_ID);
  assert.equal(r.body.sub, 'alice');
  assert.equal(r.body.status, 'open');
  const ceiling = r.body.ceiling as { template: string; audience: string }[];
  assert.ok(ceiling.some((c) => c.template === 'tickets-support-read' && c.audience === TICKETS));
  const taskId = r.body.task_id as string;

  const t = await call(mtls, 'POST', `/v1/tasks/${taskId}/tokens`, getTicket());
  assert.equal(t.status, 200, JSON.stringify(t.body));
  assert.equal(t.body.token_type, 'Bearer');
  assert.equal(t.body.template, 'tickets-support-read');
  assert.equal(t.body.single_use, false);
  const token = t.body.access_token as string;
  const claims = await verifyCallToken(token);
  assert.equal(decodeProtectedHeader(token).typ, 'at+jwt');
  assert.equal(claims.aud, TICKETS);
  assert.equal(claims.sub, 'alice');
  assert.deepEqual(claims.act, { sub: AGENT_ID });
  assert.equal(claims.client_id, AGENT_ID);
  assert.equal(claims.txn, taskId);
  assert.equal(claims.jti, t.body.jti);
  assert.deepEqual(claims.authorization_details, [
    { type: 'mcp_tool_call', tool: 'get_ticket', resource: 'tickets/T-1', action: 'read' },
  ]);
  // cnf: the SHA-256 of the very leaf SPIRE issued to the agent, which it presented over mTLS.
  const leaf = agentSource.getX509Svid().certificates[0]!;
  assert.deepEqual(claims.cnf, { 'x5t#S256': x5tS256(leaf) });
  assert.ok((claims.exp as number) - (claims.iat as number) <= 60, 'template ttl 60s');

  const view = await call(mtls, 'GET', `/v1/tasks/${taskId}`);
  assert.equal(view.status, 200);
  assert.equal(view.body.status, 'open');
});

test('calls outside the templates are denied with 403, a stable code, the reason and the template', async () => {
  const taskId = await openTask(mtls);
  const resource = await call(mtls, 'POST', `/v1/tasks/${taskId}/tokens`, getTicket('users/bob'));
  assert.equal(resource.status, 403, JSON.stringify(resource.body));
  assert.equal(resource.body.code, 'TASKPASS_DENIED_RESOURCE');
  assert.equal(resource.body.template, 'tickets-support-read');
  assert.equal(typeof resource.body.message, 'string');
  assert.ok((resource.body.message as string).length > 0);

  // delete_ticket is in no template: deny by default.
  const tool = await call(mtls, 'POST', `/v1/tasks/${taskId}/tokens`, {
    audience: TICKETS,
    tool: 'delete_ticket',
    resource: 'tickets/T-1',
    action: 'admin',
  });
  assert.equal(tool.status, 403);
  assert.equal(tool.body.code, 'TASKPASS_DENIED_TOOL');

  // A write needs the read first (workflow condition of tickets-support-write).
  const write = await call(mtls, 'POST', `/v1/tasks/${taskId}/tokens`, {
    audience: TICKETS,
    tool: 'close_ticket',
    resource: 'tickets/T-9',
    action: 'write',
  });
  assert.equal(write.status, 403);
  assert.equal(write.body.code, 'TASKPASS_DENIED_PREREQUISITE');
  assert.equal(write.body.template, 'tickets-support-write');

  const audience = await call(mtls, 'POST', `/v1/tasks/${taskId}/tokens`, {
    ...getTicket(),
    audience: 'https://payments.taskpass.local/mcp',
  });
  assert.equal(audience.status, 403);
  assert.equal(audience.body.code, 'TASKPASS_DENIED_AUDIENCE');
});

test('JWT-SVID agent (bearer, no client certificate): task and token without cnf', async () => {
  const bearer = { authorization: `Bearer ${await jwtSvid('agent')}` };
  const taskId = await openTask(tlsOnly, bearer);
  const t = await call(tlsOnly, 'POST', `/v1/tasks/${taskId}/tokens`, getTicket('tickets/T-2'), bearer);
  assert.equal(t.status, 200, JSON.stringify(t.body));
  const claims = await verifyCallToken(t.body.access_token as string);
  assert.deepEqual(claims.act, { sub: AGENT_ID });
  assert.equal(claims.cnf, undefined, 'no certificate, no binding');
  // The task belongs to the agent, whichever way it authenticates.
  const viaMtls = await call(mtls, 'GET', `/v1/tasks/${taskId}`);
  assert.equal(viaMtls.status, 200);
  assert.equal(viaMtls.body.agent, AGENT_ID);

  // No credential at all.
  const none = await call(tlsOnly, 'POST', '/v1/tasks', { purpose: 'x' });
  assert.equal(none.status, 401);
  assert.equal(none.body.code, 'TASKPASS_UNAUTHENTICATED');
  // A real JWT-SVID for another audience.
  const other = { authorization: `Bearer ${await jwtSvid('agent', 'https://elsewhere.taskpass.local')}` };
  const wrongAud = await call(tlsOnly, 'POST', '/v1/tasks', { purpose: 'x' }, other);
  assert.equal(wrongAud.status, 401);
  assert.equal(wrongAud.body.code, 'TASKPASS_UNAUTHENTICATED');
  // A valid JWT-SVID of a workload that is not an agent (the broker's own identity).
  const notAgent = { authorization: `Bearer ${await jwtSvid('broker')}` };
  const forbidden = await call(tlsOnly, 'POST', '/v1/tasks', { purpose: 'x' }, notAgent);
  assert.equal(forbidden.status, 403);
  assert.equal(forbidden.body.code, 'TASKPASS_FORBIDDEN');
});

test('SVIDs from another trust domain, or a foreign CA claiming ours, are refused with 401', async () => {
  const evil = await TestCa.create('evil.example');
  const foreignJwt = evil.createJwtSvid('spiffe://evil.example/agents/support/1', ISSUER);
  const r1 = await call(
    tlsOnly,
    'POST',
    '/v1/tasks',
    { purpose: 'x' },
    { authorization: `Bearer ${foreignJwt}` },
  );
  assert.equal(r1.status, 401);
  assert.equal(r1.body.code, 'TASKPASS_UNAUTHENTICATED');

  // Same trust domain name and agent ID, but not signed by SPIRE's keys.
  const impostor = await TestCa.create(TD);
  const forgedJwt = impostor.createJwtSvid(AGENT_ID, ISSUER);
  const r2 = await call(
    tlsOnly,
    'POST',
    '/v1/tasks',
    { purpose: 'x' },
    { authorization: `Bearer ${forgedJwt}` },
  );
  assert.equal(r2.status, 401);
  assert.equal(r2.body.code, 'TASKPASS_UNAUTHENTICATED');

  // mTLS with an X.509-SVID for our agent ID issued by a foreign CA: TLS accepts the certificate,
  // the broker refuses it after validating against taskpass.local's own bundle.
  const forged = (await impostor.createX509Svid(AGENT_ID)).toX509Svid();
  const forgedSource: TlsSource = {
    getX509Svid: () => forged,
    getX509BundleForTrustDomain: (td) => agentSource.getX509BundleForTrustDomain(td),
  };
  const forgedMtls = createMtlsAgent(forgedSource, matchId(BROKER_ID));
  dispatchers.push(forgedMtls);
  const r3 = await call(forgedMtls, 'POST', '/v1/tasks', { purpose: 'x' });
  assert.equal(r3.status, 401);
  assert.equal(r3.body.code, 'TASKPASS_UNAUTHENTICATED');
});

test('an expired X.509-SVID from SPIRE is refused with 401', { timeout: 60_000 }, async () => {
  const SHORT = `spiffe://${TD}/agents/support/short-lived`;
  const entry = await spire.createEntry({
    spiffeId: SHORT,
    hint: 'short',
    entryId: 'c-short',
    x509SvidTtl: 4,
  });
  let old: X509Svid;
  try {
    await spire.waitForIdentity(SHORT);
    const client = new WorkloadApiClient({ address: spire.address });
    try {
      const ctx = await client.fetchX509Context();
      old = ctx.svids.find((s) => s.hint === 'short')!;
      assert.ok(old, 'SPIRE served the short-lived SVID');
    } finally {
      client.close();
    }
  } finally {
    await spire.deleteEntry(entry);
  }
  const oldSource: TlsSource = {
    getX509Svid: () => old,
    getX509BundleForTrustDomain: (td) => agentSource.getX509BundleForTrustDomain(td),
  };
  const wait = old.expiresAt.getTime() + 1500 - Date.now();
  assert.ok(wait < 10_000, `the SVID lives ${wait} ms more`);
  await new Promise((r) => setTimeout(r, Math.max(0, wait)));
  const expiredMtls = createMtlsAgent(oldSource, matchId(BROKER_ID));
  dispatchers.push(expiredMtls);
  const r = await call(expiredMtls, 'POST', '/v1/tasks', { purpose: 'x' });
  assert.equal(r.status, 401, JSON.stringify(r.body));
  assert.equal(r.body.code, 'TASKPASS_UNAUTHENTICATED');
});

test('completing a task pushes its revocation on the SSE feed; its tokens stop', async () => {
  const taskId = await openTask(mtls);
  const t = await call(mtls, 'POST', `/v1/tasks/${taskId}/tokens`, getTicket());
  assert.equal(t.status, 200);
  const feed = await openFeed();
  try {
    const snap = await feed.next((e) => e.event === 'snapshot');
    assert.equal(typeof snap.json.seq, 'number');
    const done = await call(mtls, 'POST', `/v1/tasks/${taskId}/complete`, { status: 'completed' });
    assert.equal(done.status, 200, JSON.stringify(done.body));
    assert.equal(done.body.status, 'completed');
    const seq = done.body.revocation_seq as number;
    assert.ok(seq > (snap.json.seq as number));
    const ev = await feed.next((e) => e.event === 'revoked' && JSON.parse(e.data).id === taskId);
    assert.equal(ev.id, String(seq));
    assert.equal(ev.json.kind, 'task');
    assert.equal(ev.json.seq, seq);
    assert.ok((ev.json.until as number) >= (decodeJwt(t.body.access_token as string).exp as number));
  } finally {
    feed.close();
  }
  const after = await call(mtls, 'POST', `/v1/tasks/${taskId}/tokens`, getTicket());
  assert.equal(after.status, 409);
  assert.equal(after.body.code, 'TASKPASS_TASK_CLOSED');
  completedTask = taskId;
});

test('a restart on the same SQLite file keeps the signing keys and the revocations', async () => {
  assert.ok(completedTask, 'runs after the completion test');
  const before = await brokerJwks();
  const kidsBefore = before.keys.map((k) => k.kid).sort();
  assert.ok(kidsBefore.length > 0);
  await broker.close();
  broker = await startBroker(config, { logger, installSignalHandlers: false });
  // A fresh dispatcher: the old keep-alive connections went with the old server.
  for (const d of [mtls, tlsOnly]) await d.close().catch(() => {});
  mtls = createMtlsAgent(agentSource, matchId(BROKER_ID));
  tlsOnly = createTlsAgent(agentSource, matchId(BROKER_ID));
  dispatchers.push(mtls, tlsOnly);

  const kidsAfter = (await brokerJwks()).keys.map((k) => k.kid).sort();
  assert.deepEqual(kidsAfter, kidsBefore, 'same keys in the JWKS');
  const pulled = await call(mtls, 'GET', '/v1/revocations');
  assert.equal(pulled.status, 200);
  const revs = pulled.body.revocations as { kind: string; id: string }[];
  assert.ok(revs.some((r) => r.kind === 'task' && r.id === completedTask));
  const feed = await openFeed();
  try {
    const snap = await feed.next((e) => e.event === 'snapshot');
    const list = snap.json.revocations as { id: string }[];
    assert.ok(
      list.some((r) => r.id === completedTask),
      'the feed snapshot still reports it',
    );
  } finally {
    feed.close();
  }
  const view = await call(mtls, 'GET', `/v1/tasks/${completedTask}`);
  assert.equal(view.body.status, 'completed');
  // A new token from the restarted broker verifies with the same JWKS kid set.
  const taskId = await openTask(mtls);
  const t = await call(mtls, 'POST', `/v1/tasks/${taskId}/tokens`, getTicket());
  assert.ok(kidsBefore.includes(decodeProtectedHeader(t.body.access_token as string).kid!));
});

test('the broker swaps its TLS certificate when SPIRE rotates its SVID', { timeout: 30_000 }, async () => {
  const first = await servedLeaf();
  const deadline = Date.now() + 20_000;
  let next = first;
  while (next.serialNumber === first.serialNumber && Date.now() < deadline) {
    await new Promise((r) => setTimeout(r, 300));
    next = await servedLeaf();
  }
  assert.notEqual(next.serialNumber, first.serialNumber, 'a rotated certificate is served');
  assert.equal(next.subjectaltname, `URI:${BROKER_ID}`);
  assert.ok(new Date(next.valid_to).getTime() > Date.now());
  // New connections (which re-check the broker's SPIFFE ID and chain) still work.
  const fresh = createMtlsAgent(agentSource, matchId(BROKER_ID));
  dispatchers.push(fresh);
  const r = await call(fresh, 'GET', `/v1/tasks/${completedTask}`);
  assert.equal(r.status, 200);
  assert.equal((await call(fresh, 'GET', '/readyz')).status, 200);
});

test('a workload with no registration entry gets no SVID and no task', { timeout: 60_000 }, async () => {
  const port = Number(new URL(broker.url).port);
  const r = await runAs(
    65534,
    process.execPath,
    ['--conditions=taskpass:source', '--import', 'tsx', join(here, 'fixtures', 'no-entry-agent.ts')],
    {
      env: {
        SPIFFE_ENDPOINT_SOCKET: spire.address,
        BROKER_URL: `https://127.0.0.1:${port}`,
        BROKER_ID,
        BROKER_AUDIENCE: ISSUER,
        BUNDLE_PEM: await spire.bundlePem(),
        TRUST_DOMAIN: TD,
      },
      timeoutMs: 45_000,
    },
  );
  assert.equal(r.code, 0, `no-entry client failed: ${r.stderr}`);
  const out = JSON.parse(r.stdout.trim().split('\n').pop()!) as {
    uid: number;
    x509: { ok: boolean; code?: string };
    jwt: { ok: boolean; code?: string };
    openTask: { status: number; code?: string };
  };
  assert.equal(out.uid, 65534);
  assert.deepEqual(out.x509, { ok: false, code: 'ERR_SPIFFE_NO_IDENTITY' });
  assert.equal(out.jwt.ok, false);
  assert.deepEqual(out.openTask, { status: 401, code: 'TASKPASS_UNAUTHENTICATED' });
});
