import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { inspect } from 'node:util';
import { after, before, beforeEach, describe, test } from 'node:test';
import type { CallAuth } from '../src/core.ts';
import { CredentialError, TaskCredentials } from '../src/credentials.ts';
import type { TaskpassAuthExtra } from '../src/request.ts';

const PATH = 'database/creds/ticket-desk';
const nowSec = () => Math.floor(Date.now() / 1000);

const auth = (task = 'task-1', jti = 'jti-1'): CallAuth => ({
  kind: 'call',
  user: 'alice',
  agent: 'spiffe://taskpass.test/agents/a1',
  actorChain: ['spiffe://taskpass.test/agents/a1'],
  task,
  jti,
  expiresAt: nowSec() + 60,
  clientId: 'spiffe://taskpass.test/agents/a1',
  tool: 'get_ticket',
  resource: 'tickets/T-1',
  action: 'read',
  singleUse: false,
});

/** The SDK 1.x `extra` a tool handler gets once the middleware verified the call. */
const extraOf = (a: CallAuth, token = `tok-${a.jti}`) => ({
  authInfo: {
    token,
    clientId: a.clientId,
    scopes: [],
    extra: { taskpass: a } satisfies TaskpassAuthExtra as unknown as Record<string, unknown>,
  },
});

/** A fake of the broker's `POST /v1/credentials`: once per task and path, like the real one. */
function fakeBroker() {
  const issued = new Set<string>();
  const requests: { body: Record<string, unknown> }[] = [];
  let answer: ((body: Record<string, unknown>) => { status: number; body: unknown }) | undefined;
  let delayMs = 0;
  let leaseSec = 600;
  // A request still delayed when its test ended (the client gave up) must not issue into the next
  // test's state: reset() starts a new generation, and an older request answers without issuing.
  let generation = 0;
  const server = createServer((req: IncomingMessage, res: ServerResponse) => {
    let raw = '';
    req.on('data', (d) => {
      raw += d;
    });
    req.on('end', () => {
      const arrived = generation;
      const body = JSON.parse(raw) as Record<string, unknown>;
      requests.push({ body });
      const send = (status: number, b: unknown) =>
        res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(b));
      setTimeout(() => {
        if (arrived !== generation) return send(503, { code: 'TASKPASS_TEST_STALE', message: 'stale' });
        if (req.url !== '/v1/credentials' || req.method !== 'POST') return send(404, { error: 'not_found' });
        if (answer) {
          const a = answer(body);
          return send(a.status, a.body);
        }
        const task = String(body.subject_token).split(':')[0] as string;
        const path = (body.path as string | undefined) ?? PATH;
        const key = `${task} ${path}`;
        if (issued.has(key)) {
          return send(409, { code: 'TASKPASS_CREDENTIAL_ALREADY_ISSUED', message: 'handed out once' });
        }
        issued.add(key);
        send(200, {
          task_id: task,
          path,
          lease_id: `${path}/lease-${issued.size}`,
          lease_duration: leaseSec,
          expires_at: nowSec() + leaseSec,
          data: { username: `v-${task}-${issued.size}`, password: 's3cret' },
        });
      }, delayMs);
    });
  });
  return {
    server,
    requests,
    issued,
    set answer(f: typeof answer) {
      answer = f;
    },
    set delayMs(ms: number) {
      delayMs = ms;
    },
    set leaseSec(s: number) {
      leaseSec = s;
    },
    reset() {
      generation++;
      issued.clear();
      requests.length = 0;
      answer = undefined;
      delayMs = 0;
      leaseSec = 600;
    },
  };
}

describe('TaskCredentials', () => {
  const broker = fakeBroker();
  let url: string;
  before(async () => {
    await new Promise<void>((r) => broker.server.listen(0, '127.0.0.1', r));
    url = `http://127.0.0.1:${(broker.server.address() as AddressInfo).port}`;
  });
  after(() => new Promise<void>((r) => broker.server.close(() => r())));
  beforeEach(() => broker.reset());

  // The fake reads the task from the token: "<task>:<jti>".
  const call = (task = 'task-1', jti = 'jti-1') => ({ token: `${task}:${jti}`, auth: auth(task, jti) });

  test('asks the broker once per task, then answers from the cache (SDK 1.x and 2.x extra, or { token, auth })', async () => {
    const creds = new TaskCredentials({ brokerUrl: `${url}/` });
    const a = auth('task-1', 'jti-1');
    const first = await creds.forCall(extraOf(a, 'task-1:jti-1'));
    assert.equal(first.task, 'task-1');
    assert.equal(first.path, PATH);
    assert.equal(first.data.username, 'v-task-1-1');
    assert.deepEqual(broker.requests[0]?.body, {
      subject_token: 'task-1:jti-1',
      subject_token_type: 'urn:ietf:params:oauth:token-type:access_token',
    });
    // Another call of the task, with another token: the cached credential, no request.
    const b = auth('task-1', 'jti-2');
    const v2 = { http: { authInfo: extraOf(b, 'task-1:jti-2').authInfo } };
    assert.equal(await creds.forCall(v2), first);
    // The default path was learned: asking for it by name is a cache hit too.
    assert.equal(await creds.forCall(call('task-1', 'jti-3'), PATH), first);
    assert.equal(broker.requests.length, 1);
    // Another task gets its own.
    const other = await creds.forCall(call('task-2'));
    assert.equal(other.data.username, 'v-task-2-2');
    assert.equal(creds.size, 2, 'one credential per task, whichever key found it');
  });

  test('sends the path when given', async () => {
    const creds = new TaskCredentials({ brokerUrl: url });
    const c = await creds.forCall(call(), 'database/creds/other');
    assert.equal(c.path, 'database/creds/other');
    assert.equal(broker.requests[0]?.body.path, 'database/creds/other');
    await assert.rejects(creds.forCall(call(), '../sys/raw'), TypeError);
  });

  test('a credential is used until its lease ends less the margin, then asked again', async () => {
    let now = Date.now();
    const creds = new TaskCredentials({ brokerUrl: url, now: () => now, expiryMarginMs: 2000 });
    broker.leaseSec = 10;
    const first = await creds.forCall(call());
    now = first.expiresAt * 1000 - 2001;
    assert.equal(await creds.forCall(call()), first);
    now = first.expiresAt * 1000 - 2000;
    // Past the margin the cache asks again; this broker refuses (once per task), and says so.
    await assert.rejects(creds.forCall(call()), (e: unknown) => {
      assert.ok(e instanceof CredentialError);
      assert.equal(e.code, 'TASKPASS_CREDENTIAL_ALREADY_ISSUED');
      assert.equal(e.status, 409);
      assert.match(e.message, /does not hold it/);
      return true;
    });
    assert.equal(broker.requests.length, 2);
    assert.equal(creds.size, 0);
  });

  test('concurrent calls of one task share one broker request', async () => {
    const creds = new TaskCredentials({ brokerUrl: url });
    broker.delayMs = 50;
    const all = await Promise.all(
      Array.from({ length: 20 }, (_, i) => creds.forCall(call('task-1', `jti-${i}`))),
    );
    assert.equal(broker.requests.length, 1);
    for (const c of all) assert.equal(c, all[0]);
  });

  test('a failed request is not cached: the next call asks again', async () => {
    const creds = new TaskCredentials({ brokerUrl: url });
    broker.answer = () => ({
      status: 503,
      body: { code: 'TASKPASS_CREDENTIAL_UNAVAILABLE', message: 'Vault is sealed' },
    });
    await assert.rejects(creds.forCall(call()), (e: unknown) => {
      assert.ok(e instanceof CredentialError);
      assert.equal(e.code, 'TASKPASS_CREDENTIAL_UNAVAILABLE');
      assert.equal(e.status, 503);
      assert.equal(e.retryable, true);
      assert.equal(e.message, 'Vault is sealed');
      return true;
    });
    assert.equal(creds.size, 0);
    broker.answer = undefined;
    assert.equal((await creds.forCall(call())).task, 'task-1');
  });

  test('a revoked task gets no credential, cached or not', async () => {
    const revoked = new Set<string>();
    const creds = new TaskCredentials({
      brokerUrl: url,
      revocation: { isRevoked: (task, jti) => revoked.has(task) || revoked.has(jti) },
    });
    await creds.forCall(call('task-1'));
    revoked.add('task-1');
    await assert.rejects(
      creds.forCall(call('task-1', 'jti-2')),
      (e: unknown) =>
        e instanceof CredentialError && e.code === 'TASKPASS_VERIFY_REVOKED' && e.status === 401,
    );
    assert.equal(creds.size, 0, 'the revoked task was forgotten');
    revoked.add('jti-9');
    await assert.rejects(creds.forCall(call('task-2', 'jti-9')), CredentialError);
    assert.equal(broker.requests.length, 1, 'nothing asked for a revoked task');

    // Revoked while the request was in flight: dropped, not handed out.
    broker.delayMs = 30;
    const pending = creds.forCall(call('task-3'));
    setTimeout(() => revoked.add('task-3'), 5);
    await assert.rejects(pending, (e: unknown) => (e as CredentialError).code === 'TASKPASS_VERIFY_REVOKED');
    assert.equal(creds.size, 0);
  });

  test("the broker's error codes come through with their status", async () => {
    const creds = new TaskCredentials({ brokerUrl: url });
    const cases: [number, string][] = [
      [403, 'TASKPASS_CREDENTIAL_FORBIDDEN'],
      [403, 'TASKPASS_CREDENTIAL_NOT_IN_TEMPLATE'],
      [400, 'TASKPASS_CREDENTIAL_SUBJECT_INVALID'],
      [409, 'TASKPASS_TASK_CLOSED'],
      [403, 'TASKPASS_TASK_EXPIRED'],
    ];
    for (const [status, code] of cases) {
      broker.answer = () => ({ status, body: { code, message: `because ${code}` } });
      await assert.rejects(creds.forCall(call()), (e: unknown) => {
        assert.ok(e instanceof CredentialError);
        assert.deepEqual(
          [e.status, e.code, e.message, e.retryable],
          [status, code, `because ${code}`, false],
        );
        return true;
      });
    }
    // No code: unavailable, with the status seen.
    broker.answer = () => ({ status: 404, body: { error: 'not_found' } });
    await assert.rejects(
      creds.forCall(call()),
      (e: unknown) =>
        e instanceof CredentialError && e.code === 'TASKPASS_CREDENTIAL_UNAVAILABLE' && e.status === 404,
    );
    broker.answer = () => ({ status: 502, body: 'bad gateway' });
    await assert.rejects(
      creds.forCall(call()),
      (e: unknown) => e instanceof CredentialError && e.status === 503 && e.retryable,
    );
    assert.equal(creds.size, 0);
  });

  test('the broker unreachable or too slow is unavailable (503)', async () => {
    const down = new TaskCredentials({ brokerUrl: 'http://127.0.0.1:1' });
    await assert.rejects(
      down.forCall(call()),
      (e: unknown) =>
        e instanceof CredentialError && e.code === 'TASKPASS_CREDENTIAL_UNAVAILABLE' && e.retryable,
    );
    broker.delayMs = 300;
    const slow = new TaskCredentials({ brokerUrl: url, timeoutMs: 50 });
    await assert.rejects(
      slow.forCall(call()),
      (e: unknown) => e instanceof CredentialError && e.code === 'TASKPASS_CREDENTIAL_UNAVAILABLE',
    );
  });

  test('an answer of the wrong shape, task or path is refused without echoing it', async () => {
    const creds = new TaskCredentials({ brokerUrl: url });
    const good = {
      task_id: 'task-1',
      path: PATH,
      lease_id: 'l1',
      lease_duration: 60,
      expires_at: nowSec() + 60,
      data: { username: 'u', password: 'leaky-secret' },
    };
    const bad: unknown[] = [
      { ...good, data: 'leaky-secret' },
      { ...good, expires_at: 'soon' },
      { ...good, lease_id: '' },
      { ...good, path: '../x' },
      { ...good, task_id: 'task-other' },
      [good],
      'leaky-secret',
    ];
    for (const body of bad) {
      broker.answer = () => ({ status: 200, body });
      await assert.rejects(creds.forCall(call()), (e: unknown) => {
        assert.ok(e instanceof CredentialError);
        assert.equal(e.code, 'TASKPASS_CREDENTIAL_UNAVAILABLE');
        assert.doesNotMatch(e.message, /leaky-secret/);
        return true;
      });
    }
    broker.answer = () => ({ status: 200, body: { ...good, path: 'database/creds/other' } });
    await assert.rejects(creds.forCall(call(), PATH), CredentialError);
    assert.equal(creds.size, 0);
  });

  test('no verified call: refused before anything is asked', async () => {
    const creds = new TaskCredentials({ brokerUrl: url });
    for (const c of [undefined, {}, { authInfo: { token: 't', clientId: 'c', scopes: [] } }]) {
      await assert.rejects(
        creds.forCall(c as never),
        (e: unknown) => e instanceof CredentialError && e.code === 'TASKPASS_VERIFY_MISSING_TOKEN',
      );
    }
    const session = { ...auth(), kind: 'session', tokenType: 'mcp_session' };
    await assert.rejects(creds.forCall({ token: 't', auth: session as never }), CredentialError);
    assert.equal(broker.requests.length, 0);
  });

  test('a full cache drops what ended and refuses new tasks rather than forget a live credential', async () => {
    let now = Date.now();
    const creds = new TaskCredentials({ brokerUrl: url, maxEntries: 2, now: () => now });
    broker.leaseSec = 30;
    const one = await creds.forCall(call('task-1'));
    await creds.forCall(call('task-2'));
    await assert.rejects(
      creds.forCall(call('task-3')),
      (e: unknown) => e instanceof CredentialError && e.code === 'TASKPASS_CREDENTIAL_UNAVAILABLE',
    );
    assert.equal(await creds.forCall(call('task-1')), one, 'the live credentials stay');
    now = one.expiresAt * 1000;
    assert.equal((await creds.forCall(call('task-3'))).task, 'task-3');
    assert.equal(creds.size, 1);
  });

  test('credentials of revoked tasks and ended leases are swept on later calls', async () => {
    let now = Date.now();
    const revoked = new Set<string>();
    const creds = new TaskCredentials({
      brokerUrl: url,
      now: () => now,
      sweepEveryMs: 30_000,
      revocation: { isRevoked: (task) => revoked.has(task) },
    });
    broker.leaseSec = 3600;
    await creds.forCall(call('task-1'));
    broker.leaseSec = 20;
    await creds.forCall(call('task-2'));
    revoked.add('task-1');
    now += 29_000;
    broker.leaseSec = 3600;
    const four = await creds.forCall(call('task-4'));
    assert.equal(creds.size, 3, 'not swept yet');
    now += 1_000;
    assert.equal(await creds.forCall(call('task-4')), four);
    assert.equal(creds.size, 1, 'task-1 revoked and task-2 ended were dropped');
  });

  test('the secret is left out of JSON and inspect', async () => {
    const creds = new TaskCredentials({ brokerUrl: url });
    const c = await creds.forCall(call());
    assert.equal(c.data.password, 's3cret');
    assert.doesNotMatch(JSON.stringify(c), /s3cret/);
    assert.doesNotMatch(inspect(c), /s3cret/);
    assert.doesNotMatch(JSON.stringify({ c }), /s3cret/);
    assert.throws(() => {
      (c.data as Record<string, unknown>).password = 'x';
    });
  });
});
