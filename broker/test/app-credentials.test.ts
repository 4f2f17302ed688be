// POST /v1/credentials (docs/vault.md): an MCP server exchanges the call token it verified for the
// Vault secret the call's tool rule names. Only a listed credential client that is the token's
// audience gets anything; every refusal has its code, leases nothing and is audited.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { AuditEvent } from '../src/audit.ts';
import { VaultUnavailableError } from '../src/vault.ts';
import {
  AGENT,
  OPS,
  OTHER_AGENT,
  type TestBroker,
  TICKETS,
  TICKETS_DB,
  testBroker,
  VERIFIER,
} from './app-support.ts';

const OTHER_SERVER = 'spiffe://taskpass.local/mcp/ops';

/** A Vault that leases `{ username, password }` for an hour; `down` makes every call fail. */
function fakeVault() {
  const v = {
    down: false,
    reads: [] as string[],
    revoked: [] as string[],
    n: 0,
    async read(path: string) {
      if (v.down) throw new VaultUnavailableError('vault read: connect ECONNREFUSED');
      v.reads.push(path);
      v.n++;
      return {
        lease_id: `${path}/lease-${v.n}`,
        lease_duration: 3600,
        renewable: true,
        data: { username: `v-task-${v.n}`, password: `pw-${v.n}` },
      };
    },
    async write(path: string, data: Record<string, unknown>) {
      if (v.down) throw new VaultUnavailableError('vault write: connect ECONNREFUSED');
      assert.equal(path, 'sys/leases/renew');
      return { lease_id: String(data.lease_id), lease_duration: Number(data.increment) };
    },
    async revokeLease(id: string) {
      v.revoked.push(id);
    },
  };
  return v;
}

async function setUp(credentialClients = [{ spiffeId: VERIFIER, audiences: [TICKETS] }]) {
  const vault = fakeVault();
  const events: AuditEvent[] = [];
  const b = await testBroker(
    { vault: { address: 'http://127.0.0.1:1', auth: { method: 'token', token: 'dev' }, credentialClients } },
    { vault, audit: { record: (e) => void events.push(e) } },
  );
  return { b, vault, events };
}

async function openTask(b: TestBroker): Promise<string> {
  const r = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: b.mtls(AGENT),
    payload: { purpose: 'answer ticket', user_token: await b.user.sign({}), ttl_seconds: 600 },
  });
  assert.equal(r.statusCode, 201, r.body);
  return r.json().task_id;
}

async function callToken(b: TestBroker, task: string, tool = 'get_ticket', action = 'read'): Promise<string> {
  const r = await b.app.inject({
    method: 'POST',
    url: `/v1/tasks/${task}/tokens`,
    headers: b.mtls(AGENT),
    payload: { audience: TICKETS, tool, resource: 'tickets/7', action },
  });
  assert.equal(r.statusCode, 200, r.body);
  return r.json().access_token;
}

const exchange = (b: TestBroker, caller: string, body: Record<string, unknown>) =>
  b.app.inject({ method: 'POST', url: '/v1/credentials', headers: b.mtls(caller), payload: body });

test('the MCP server that is the audience gets the secret once per task and path; the lease is on the task', async () => {
  const { b, vault, events } = await setUp();
  const task = await openTask(b);
  const token = await callToken(b, task);
  const r = await exchange(b, VERIFIER, {
    subject_token: token,
    subject_token_type: 'urn:ietf:params:oauth:token-type:access_token',
  });
  assert.equal(r.statusCode, 200, r.body);
  assert.equal(r.headers['cache-control'], 'no-store');
  const c = r.json();
  assert.equal(c.task_id, task);
  assert.equal(c.path, TICKETS_DB);
  assert.deepEqual(c.data, { username: 'v-task-1', password: 'pw-1' });
  // The task had 600 s left: Vault's hour was cut to it.
  assert.ok(c.lease_duration <= 600 && c.lease_duration >= 598, String(c.lease_duration));
  assert.equal(c.expires_at, Math.floor(b.clock.now / 1000) + c.lease_duration);
  assert.deepEqual(vault.reads, [TICKETS_DB]);
  assert.equal((await b.store.getLease(task, TICKETS_DB))?.leaseId, c.lease_id);
  const issued = events.find((e) => e.event === 'lease.issued');
  assert.equal(issued?.by, VERIFIER);
  assert.equal(issued?.task, task);
  assert.ok(!JSON.stringify(events).includes('pw-1'), 'the secret is never audited');

  // Named explicitly: the same rule's path. A second exchange in the task (a later call): handed out once.
  const again = await exchange(b, VERIFIER, { subject_token: await callToken(b, task), path: TICKETS_DB });
  assert.equal(again.statusCode, 409, again.body);
  assert.equal(again.json().code, 'TASKPASS_CREDENTIAL_ALREADY_ISSUED');
  assert.equal(vault.reads.length, 1);
  await b.app.close();
});

test('a workload that is not the token audience gets nothing, and nothing is leased', async () => {
  const { b, vault, events } = await setUp([
    { spiffeId: VERIFIER, audiences: [TICKETS] },
    { spiffeId: OTHER_SERVER, audiences: [OPS] },
  ]);
  const task = await openTask(b);
  const token = await callToken(b, task);
  for (const caller of [OTHER_SERVER, AGENT, OTHER_AGENT]) {
    const r = await exchange(b, caller, { subject_token: token });
    assert.equal(r.statusCode, 403, `${caller}: ${r.body}`);
    assert.equal(r.json().code, 'TASKPASS_CREDENTIAL_FORBIDDEN');
  }
  // With a JWT-SVID instead of mTLS: the same.
  const viaJwt = await b.app.inject({
    method: 'POST',
    url: '/v1/credentials',
    headers: b.jwt(OTHER_SERVER),
    payload: { subject_token: token },
  });
  assert.equal(viaJwt.json().code, 'TASKPASS_CREDENTIAL_FORBIDDEN');
  const anonymous = await b.app.inject({
    method: 'POST',
    url: '/v1/credentials',
    payload: { subject_token: token },
  });
  assert.equal(anonymous.statusCode, 401);
  assert.equal(anonymous.json().code, 'TASKPASS_UNAUTHENTICATED');
  assert.deepEqual(vault.reads, []);
  assert.equal(await b.store.getLease(task, TICKETS_DB), undefined);
  const denied = events.filter((e) => e.event === 'credential.denied');
  assert.equal(denied.length, 4);
  assert.ok(denied.every((e) => e.code === 'TASKPASS_CREDENTIAL_FORBIDDEN'));
  await b.app.close();
});

test('the subject must be a live call token of this broker', async () => {
  const { b, vault } = await setUp();
  const task = await openTask(b);
  const token = await callToken(b, task);
  const [h, p, s] = token.split('.');
  const claims = JSON.parse(Buffer.from(p!, 'base64url').toString());
  const forged = `${h}.${Buffer.from(JSON.stringify({ ...claims, aud: TICKETS, txn: 'tsk_other' })).toString('base64url')}.${s}`;
  const session = await b.app.inject({
    method: 'POST',
    url: `/v1/tasks/${task}/session-token`,
    headers: b.mtls(AGENT),
    payload: { audience: TICKETS },
  });
  assert.equal(session.statusCode, 200, session.body);
  for (const [what, body] of [
    ['garbage', { subject_token: 'not.a.jwt' }],
    ['forged payload', { subject_token: forged }],
    ['a session token', { subject_token: session.json().access_token }],
    [
      'another token type',
      { subject_token: token, subject_token_type: 'urn:ietf:params:oauth:token-type:id_token' },
    ],
  ] as const) {
    const r = await exchange(b, VERIFIER, body);
    assert.equal(r.statusCode, 400, `${what}: ${r.body}`);
    assert.equal(r.json().code, 'TASKPASS_CREDENTIAL_SUBJECT_INVALID', what);
  }
  // Expired: the clock moves past the token's life.
  b.clock.now += 61_000;
  const late = await exchange(b, VERIFIER, { subject_token: token });
  assert.equal(late.json().code, 'TASKPASS_CREDENTIAL_SUBJECT_INVALID');
  b.clock.now -= 61_000;
  // Ended task: its tokens are revoked.
  const done = await b.app.inject({
    method: 'POST',
    url: `/v1/tasks/${task}/complete`,
    headers: b.mtls(AGENT),
    payload: { status: 'completed' },
  });
  assert.equal(done.statusCode, 200, done.body);
  const after = await exchange(b, VERIFIER, { subject_token: token });
  assert.equal(after.statusCode, 400);
  assert.equal(after.json().code, 'TASKPASS_CREDENTIAL_SUBJECT_INVALID');
  assert.match(after.json().message, /revoked/);
  assert.deepEqual(vault.reads, []);
  await b.app.close();
});

test('only a path a rule of the token names: none for close_ticket, not another path', async () => {
  const { b, vault } = await setUp();
  const task = await openTask(b);
  await callToken(b, task); // close_ticket needs a prior get_ticket on the resource
  const close = await callToken(b, task, 'close_ticket', 'write');
  const none = await exchange(b, VERIFIER, { subject_token: close });
  assert.equal(none.statusCode, 403, none.body);
  assert.equal(none.json().code, 'TASKPASS_CREDENTIAL_NOT_IN_TEMPLATE');
  const other = await exchange(b, VERIFIER, {
    subject_token: await callToken(b, task),
    path: 'database/creds/admin',
  });
  assert.equal(other.statusCode, 403, other.body);
  assert.equal(other.json().code, 'TASKPASS_CREDENTIAL_NOT_IN_TEMPLATE');
  const bad = await exchange(b, VERIFIER, { subject_token: close, unknown: 1 });
  assert.equal(bad.statusCode, 400);
  assert.equal(bad.json().code, 'TASKPASS_BAD_REQUEST');
  assert.deepEqual(vault.reads, []);
  await b.app.close();
});

test('Vault down: 503 TASKPASS_CREDENTIAL_UNAVAILABLE with Retry-After, nothing recorded, and a retry works', async () => {
  const { b, vault } = await setUp();
  const task = await openTask(b);
  const token = await callToken(b, task);
  vault.down = true;
  const r = await exchange(b, VERIFIER, { subject_token: token });
  assert.equal(r.statusCode, 503, r.body);
  assert.equal(r.json().code, 'TASKPASS_CREDENTIAL_UNAVAILABLE');
  assert.equal(r.headers['retry-after'], '1');
  assert.equal(await b.store.getLease(task, TICKETS_DB), undefined);
  vault.down = false;
  const retry = await exchange(b, VERIFIER, { subject_token: token });
  assert.equal(retry.statusCode, 200, retry.body);
  await b.app.close();
});

test('without Vault configured there is no credential endpoint', async () => {
  const b = await testBroker();
  const r = await b.app.inject({
    method: 'POST',
    url: '/v1/credentials',
    headers: b.mtls(VERIFIER),
    payload: { subject_token: 'x' },
  });
  assert.equal(r.statusCode, 404);
  assert.equal(r.json().code, 'TASKPASS_NOT_FOUND');
  await b.app.close();
});
