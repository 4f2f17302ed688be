import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { connect } from 'node:net';
import { inspect } from 'node:util';
import { SignJWT } from 'jose';
import { Agent } from 'undici';
import { AgentPluginError, BrokerClient, BrokerError, TaskpassDeniedError } from '../src/index.ts';
import { AGENT_ID, FakeBroker } from './support.ts';

const AUD = 'https://tickets.test/mcp';
let broker: FakeBroker;

before(async () => {
  broker = await FakeBroker.start({
    deny: (body) =>
      body.tool === 'delete_ticket'
        ? {
            code: 'TASKPASS_DENIED_ACTION',
            message: 'The tool is allowed, but not with this action class.',
            template: 'tickets-support',
            reason: 'delete_ticket is admin; tickets-support allows write at most',
          }
        : undefined,
  });
});
after(() => broker.close());

const insecure = () => new BrokerClient({ url: broker.url, auth: { kind: 'none-insecure' } });

test('openTask sends purpose, user token and ttl and returns a handle', async () => {
  await using client = insecure();
  const task = await client.openTask({ purpose: 'triage T-42', userToken: 'user.jwt.here', ttlSeconds: 600 });
  const req = broker.requestsTo('/v1/tasks').at(-1)!;
  assert.deepEqual(req.body, { purpose: 'triage T-42', user_token: 'user.jwt.here', ttl_seconds: 600 });
  assert.equal(task.sub, 'user-1');
  assert.equal(task.agent, AGENT_ID);
  assert.equal(task.purpose, 'triage T-42');
  assert.ok(task.expiresAt.getTime() > Date.now());
  assert.equal(task.ceiling[0]?.tools[0]?.tool, 'get_ticket');
  assert.equal(task.state, 'open');

  const info = await client.getTask(task.id);
  assert.deepEqual([info.id, info.status, info.purpose], [task.id, 'open', 'triage T-42']);

  const done = await task.complete();
  assert.deepEqual([done.taskId, done.status], [task.id, 'completed']);
  assert.equal(broker.requestsTo(`/${task.id}/complete`).at(-1)?.body?.status, 'completed');
  assert.equal(task.state, 'completed');
  assert.equal((await client.getTask(task.id)).status, 'completed');
});

test('fail and cancel send their status; a finished task refuses tokens and a second finish', async () => {
  await using client = insecure();
  const a = await client.openTask({ purpose: 'a' });
  await a.fail();
  assert.equal(broker.requestsTo(`/${a.id}/complete`).at(-1)?.body?.status, 'failed');
  const b = await client.openTask({ purpose: 'b' });
  await b.cancel();
  assert.equal(broker.requestsTo(`/${b.id}/complete`).at(-1)?.body?.status, 'cancelled');
  await assert.rejects(
    b.token({ audience: AUD, tool: 'get_ticket', resource: 'tickets/1', action: 'read' }),
    {
      code: 'TASKPASS_AGENT_TASK_NOT_OPEN',
    },
  );
  await assert.rejects(b.complete(), { code: 'TASKPASS_AGENT_TASK_NOT_OPEN' });
  assert.equal(broker.requestsTo(`/${b.id}/complete`).length, 1);
});

test('a 403 is a TaskpassDeniedError with code, reason, template and status', async () => {
  await using client = insecure();
  const task = await client.openTask({ purpose: 'p' });
  const err = await task
    .token({ audience: AUD, tool: 'delete_ticket', resource: 'tickets/1', action: 'admin' })
    .then(
      () => assert.fail('expected a denial'),
      (e: unknown) => e,
    );
  assert.ok(err instanceof TaskpassDeniedError);
  assert.equal(err.code, 'TASKPASS_DENIED_ACTION');
  assert.equal(err.status, 403);
  assert.equal(err.template, 'tickets-support');
  assert.equal(err.reason, 'delete_ticket is admin; tickets-support allows write at most');
  // The task stays usable after a denial.
  assert.equal(task.state, 'open');
});

test('other broker errors are BrokerError; a closed task marks the handle closed', async () => {
  await using client = insecure();
  await assert.rejects(client.getTask('nope'), (e: unknown) => {
    assert.ok(e instanceof BrokerError && !(e instanceof TaskpassDeniedError));
    assert.deepEqual([e.code, e.status], ['TASKPASS_TASK_NOT_FOUND', 404]);
    return true;
  });
  const task = await client.openTask({ purpose: 'p' });
  broker.tasks.get(task.id)!.status = 'revoked'; // an administrator revoked it
  await assert.rejects(task.sessionToken(AUD), { code: 'TASKPASS_TASK_CLOSED', status: 409 });
  assert.equal(task.state, 'closed');
  await task[Symbol.asyncDispose](); // nothing to cancel: no throw, no request
  assert.equal(broker.requestsTo(`/${task.id}/complete`).length, 0);
});

test('malformed broker answers are refused (TASKPASS_AGENT_BAD_RESPONSE)', async (t) => {
  await using client = insecure();
  const task = await client.openTask({ purpose: 'p' });
  const good = {
    access_token: 'a.b.c',
    token_type: 'Bearer',
    expires_in: 60,
    expires_at: broker.now() + 60,
    jti: 'j',
    single_use: false,
    template: 't',
  };
  const cases: [string, unknown, number][] = [
    ['not JSON', 'hello', 200],
    ['missing access_token', { ...good, access_token: undefined }, 200],
    ['token not a JWS', { ...good, access_token: 'opaque' }, 200],
    ['wrong token_type', { ...good, token_type: 'DPoP' }, 200],
    ['string expires_at', { ...good, expires_at: '123' }, 200],
    ['single_use as string', { ...good, single_use: 'false' }, 200],
    ['error without code', { message: 'nope' }, 500],
    ['HTML from a proxy', '<html>bad gateway</html>', 502],
  ];
  t.after(() => {
    broker.override = undefined;
  });
  for (const [name, body, status] of cases) {
    broker.override = (_m, path) => (path.endsWith('/tokens') ? { status, body } : undefined);
    await assert.rejects(
      task.token({ audience: AUD, tool: 'get_ticket', resource: 'tickets/1', action: 'read' }),
      (e: unknown) => e instanceof AgentPluginError && e.code === 'TASKPASS_AGENT_BAD_RESPONSE',
      name,
    );
  }
  broker.override = (m, path) =>
    m === 'POST' && path === '/v1/tasks'
      ? { status: 201, body: { task_id: 'x', status: 'open', expires_at: 1, sub: 's', agent: 'a' } }
      : undefined;
  await assert.rejects(client.openTask({ purpose: 'p' }), { code: 'TASKPASS_AGENT_BAD_RESPONSE' });
  broker.override = undefined;
  assert.equal(
    (await task.token({ audience: AUD, tool: 'get_ticket', resource: 'tickets/1', action: 'read' })).template,
    'tickets-support',
  );
});

test('issued tokens never show up in JSON or inspect output', async () => {
  await using client = insecure();
  const task = await client.openTask({ purpose: 'p' });
  const t = await task.sessionToken(AUD);
  assert.match(t.accessToken, /^ey/);
  assert.ok(!JSON.stringify(t).includes(t.accessToken));
  assert.ok(!inspect(t).includes(t.accessToken));
  assert.ok(!JSON.stringify({ ...t }).includes(t.accessToken));
});

test('connections are kept alive across requests', async () => {
  await using client = insecure();
  const before = broker.connections;
  const task = await client.openTask({ purpose: 'p' });
  for (let i = 0; i < 5; i++) {
    await task.token({ audience: AUD, tool: 'close_ticket', resource: `tickets/${i}`, action: 'write' });
  }
  await task.complete();
  // 7 sequential requests: undici may open a second connection when a request starts in the same
  // tick the previous response ended, but never one per request.
  assert.ok(broker.connections - before <= 2, `${broker.connections - before} connections`);
});

test('unreachable broker and timeouts are TASKPASS_AGENT_BROKER_UNREACHABLE', async () => {
  const dead = await FakeBroker.start();
  const url = dead.url;
  await dead.close();
  await using client = new BrokerClient({ url, auth: { kind: 'none-insecure' }, timeoutMs: 2000 });
  await assert.rejects(client.openTask({ purpose: 'p' }), { code: 'TASKPASS_AGENT_BROKER_UNREACHABLE' });

  const { createServer } = await import('node:http');
  const hang = createServer(() => {
    /* never answers */
  });
  await new Promise<void>((r) => hang.listen(0, '127.0.0.1', r));
  const port = (hang.address() as { port: number }).port;
  await using c2 = new BrokerClient({
    url: `http://127.0.0.1:${port}`,
    auth: { kind: 'none-insecure' },
    timeoutMs: 200,
  });
  await assert.rejects(c2.openTask({ purpose: 'p' }), { code: 'TASKPASS_AGENT_BROKER_UNREACHABLE' });
  hang.closeAllConnections();
  hang.close();
});

test('options are validated at construction', () => {
  const bad = (o: ConstructorParameters<typeof BrokerClient>[0]) =>
    assert.throws(() => new BrokerClient(o), { code: 'TASKPASS_AGENT_CONFIG_INVALID' });
  bad({ url: 'not a url', auth: { kind: 'none-insecure' } });
  bad({
    url: 'http://broker.test',
    auth: { kind: 'jwt-svid', audience: 'a', fetchJwtSvid: async () => 'x' },
  });
  bad({ url: 'https://broker.test', auth: { kind: 'jwt-svid', audience: 'a' } });
  bad({
    url: 'https://broker.test',
    auth: { kind: 'jwt-svid', audience: '', fetchJwtSvid: async () => 'x' },
  });
  bad({ url: 'https://broker.test', auth: { kind: 'none-insecure' }, timeoutMs: 0 });
  bad({ url: 'https://broker.test', auth: { kind: 'nope' } as never });
});

// The JWT-SVID path needs an https:// broker URL; this dispatcher (given as auth.tls, the
// dispatcher that would authenticate the broker's TLS server) connects to the plain fake broker.
function plainConnector(url: string): Agent {
  const port = Number(new URL(url).port);
  return new Agent({
    connect: (_opts, cb) => {
      const s = connect(port, '127.0.0.1');
      s.once('connect', () => cb(null, s));
      s.once('error', (e) => cb(e, null));
    },
  });
}

async function jwtSvid(exp: number, n: number): Promise<string> {
  const key = new TextEncoder().encode('test-only-secret-test-only-secret');
  return new SignJWT({ n })
    .setProtectedHeader({ alg: 'HS256' })
    .setSubject(AGENT_ID)
    .setExpirationTime(exp)
    .sign(key);
}

test('JWT-SVID auth: Authorization: Bearer <JWT-SVID> on every broker request, cached until near expiry', async () => {
  let issued = 0;
  let nowMs = Date.now();
  const nowSec = () => Math.floor(nowMs / 1000);
  const valid = new Set<string>();
  const b = await FakeBroker.start({ requireAuthorization: (h) => h !== undefined && valid.has(h), nowSec });
  try {
    const audiences: string[] = [];
    await using client = new BrokerClient({
      url: b.url.replace('http:', 'https:'),
      auth: {
        kind: 'jwt-svid',
        audience: 'https://broker.test',
        fetchJwtSvid: async (aud) => {
          audiences.push(aud);
          const t = await jwtSvid(nowSec() + 300, ++issued);
          valid.add(`Bearer ${t}`);
          return t;
        },
        tls: plainConnector(b.url),
      },
      clock: () => nowMs,
    });
    const task = await client.openTask({ purpose: 'p' });
    await task.sessionToken('https://tickets.test/mcp');
    assert.equal(issued, 1);
    assert.deepEqual(audiences, ['https://broker.test']);
    for (const r of b.requests) assert.match(r.authorization ?? '', /^Bearer ey/);
    // 300 s JWT-SVID, refreshed 30 s before it expires.
    nowMs += 271_000;
    await client.getTask(task.id);
    assert.equal(issued, 2);
    // The broker refuses the cached one (e.g. it rotated keys): one retry with a fresh SVID.
    valid.clear();
    const n = b.requests.length;
    assert.equal((await client.getTask(task.id)).id, task.id);
    assert.equal(b.requests.length - n, 2);
    assert.equal(issued, 3);
    // A broker that keeps refusing: the 401 surfaces after that one retry.
    const refuse = () => valid.clear();
    b.override = (_m, _p) => {
      refuse();
      return undefined;
    };
    const m = b.requests.length;
    await assert.rejects(client.getTask(task.id), { code: 'TASKPASS_UNAUTHENTICATED', status: 401 });
    assert.equal(b.requests.length - m, 2);
  } finally {
    await b.close();
  }
});

test('JWT-SVID auth from a JwtSource-like object', async () => {
  const b = await FakeBroker.start({ requireAuthorization: (h) => h === 'Bearer h.p.s' });
  const asked: string[][] = [];
  try {
    await using client = new BrokerClient({
      url: 'https://broker.test:8443',
      auth: {
        kind: 'jwt-svid',
        audience: 'https://broker.test',
        jwtSource: {
          fetchJwtSvid: async ({ audience }) => {
            asked.push(audience);
            return { token: 'h.p.s', expiresAt: new Date(Date.now() + 600_000) };
          },
        },
        tls: plainConnector(b.url),
      },
    });
    const task = await client.openTask({ purpose: 'p' });
    await task.complete();
    assert.deepEqual(asked, [['https://broker.test']]);
  } finally {
    await b.close();
  }
  await using failing = new BrokerClient({
    url: 'https://broker.test:8443',
    auth: {
      kind: 'jwt-svid',
      audience: 'https://broker.test',
      fetchJwtSvid: async () => {
        throw new Error('no identity');
      },
    },
  });
  await assert.rejects(failing.openTask({ purpose: 'p' }), { code: 'TASKPASS_AGENT_IDENTITY_UNAVAILABLE' });
});
