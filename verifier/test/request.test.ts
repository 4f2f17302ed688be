// taskpassMiddleware driven directly with node:http-shaped requests: what it reads before deciding
// (never the body of a request without a token), body bounds, ambiguous credentials, and where the
// client certificate may come from (the TLS connection, or RFC 9440 Client-Cert from a trusted
// proxy only).
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import type { ServerResponse } from 'node:http';
import { request as httpRequest } from 'node:http';
import { before, describe, test } from 'node:test';
import type { Verifier } from '../src/core.ts';
import { taskpassMiddleware } from '../src/http.ts';
import { fakeRequest, type Key, listen, mint, newKey, runMiddleware, verifierFor } from './support.ts';

let key: Key;
let verifier: Verifier;

before(async () => {
  key = await newKey('k1');
  verifier = verifierFor(key, {
    tools: { get_ticket: { resource: 'tickets/{ticket_id}', action: 'read' } },
  });
});

const call = (args: unknown = { ticket_id: 'T-1' }, extra: Record<string, unknown> = {}) =>
  JSON.stringify({
    jsonrpc: '2.0',
    id: 1,
    method: 'tools/call',
    params: { name: 'get_ticket', arguments: args, ...extra },
  });
const nested = (depth: number) => '['.repeat(depth) + ']'.repeat(depth);

describe('before the body', () => {
  test('a request without a token is refused without reading its body', async () => {
    const r = await runMiddleware(verifier, { body: nested(500_000) });
    assert.equal(r.status, 401);
    assert.equal(r.json?.code, 'TASKPASS_VERIFY_MISSING_TOKEN');
    assert.equal(r.wasRead, false);
  });

  test('a token that is not a compact JWS is refused without reading the body', async () => {
    const r = await runMiddleware(verifier, {
      headers: { authorization: 'Bearer not-a-token' },
      body: nested(500_000),
    });
    assert.equal(r.status, 401);
    assert.equal(r.json?.code, 'TASKPASS_VERIFY_MALFORMED');
    assert.equal(r.wasRead, false);
  });

  test('a well-formed token with a bad signature is refused without reading the body', async () => {
    const forged = await mint({ key: { ...(await newKey('k1')), kid: 'k1' } });
    const r = await runMiddleware(verifier, {
      headers: { authorization: `Bearer ${forged}` },
      body: call({ ticket_id: 'T-1', n: JSON.parse(nested(60)) }),
    });
    assert.equal(r.status, 401);
    assert.equal(r.json?.code, 'TASKPASS_VERIFY_BAD_SIGNATURE');
    assert.equal(r.wasRead, false);
  });

  test('a declared content-length above the limit is refused without reading the body', async () => {
    const r = await runMiddleware(verifier, {
      headers: { authorization: `Bearer ${await mint({ key })}`, 'content-length': String(2 << 20) },
      body: call(),
    });
    assert.equal(r.status, 400);
    assert.equal(r.json?.error?.data?.code, 'TASKPASS_VERIFY_BAD_REQUEST');
    assert.equal(r.wasRead, false);
  });
});

describe('body bounds (defaults: 1 MiB, depth 64)', () => {
  test('a call whose arguments nest deeper than 64 levels is refused; 60 levels pass', async () => {
    const deep = (n: number): unknown => (n === 0 ? 'x' : { a: deep(n - 1) });
    const token = async () => `Bearer ${await mint({ key })}`;
    const ok = await runMiddleware(verifier, {
      headers: { authorization: await token() },
      body: call({ ticket_id: 'T-1', note: deep(60) }),
    });
    assert.equal(ok.status, 200);
    const r = await runMiddleware(verifier, {
      headers: { authorization: await token() },
      body: call({ ticket_id: 'T-1', note: deep(100) }),
    });
    assert.equal(r.status, 400);
    assert.equal(r.json?.error?.data?.code, 'TASKPASS_VERIFY_BAD_REQUEST');
    // brackets inside strings do not count
    const s = await runMiddleware(verifier, {
      headers: { authorization: await token() },
      body: call({ ticket_id: 'T-1', note: '[{'.repeat(1000) }),
    });
    assert.equal(s.status, 200);
  });

  test('a body over 1 MiB is refused even without content-length; limits are options', async () => {
    const big = call({ ticket_id: 'T-1', note: 'x'.repeat(1100 * 1024) });
    const r = await runMiddleware(verifier, {
      headers: { authorization: `Bearer ${await mint({ key })}` },
      body: big,
    });
    assert.equal(r.status, 400);
    assert.equal(r.json?.error?.data?.code, 'TASKPASS_VERIFY_BAD_REQUEST');
    const allowed = await runMiddleware(
      verifier,
      { headers: { authorization: `Bearer ${await mint({ key })}` }, body: big },
      { maxBodyBytes: 2 << 20 },
    );
    assert.equal(allowed.status, 200);
  });

  test('a body parsed before the middleware (express.json) is still held to the depth limit', async () => {
    const { req } = fakeRequest({ headers: { authorization: `Bearer ${await mint({ key })}` } });
    (req as { body?: unknown }).body = JSON.parse(call({ ticket_id: 'T-1', note: JSON.parse(nested(80)) }));
    let status = 0;
    const res = {
      writeHead: (s: number) => {
        status = s;
        return res;
      },
      end: () => {},
    } as unknown as ServerResponse;
    await taskpassMiddleware(verifier)(req, res, () => {
      status = 200;
    });
    assert.equal(status, 400);
  });
});

describe('ambiguous credentials → 400 invalid_request challenge with { code, message }', () => {
  const expectAmbiguous = (r: Awaited<ReturnType<typeof runMiddleware>>) => {
    assert.equal(r.status, 400);
    assert.equal(r.json?.code, 'TASKPASS_VERIFY_AMBIGUOUS_TOKEN');
    assert.match(r.headers['www-authenticate'] ?? '', /^Bearer error="invalid_request"/);
  };

  test('two Authorization headers (node:http would keep only the first)', async () => {
    const a = await mint({ key });
    const b = await mint({ key });
    expectAmbiguous(
      await runMiddleware(verifier, {
        headers: { authorization: [`Bearer ${a}`, `Bearer ${b}`] },
        body: call(),
      }),
    );
  });

  test('a token in the header and in params._meta', async () => {
    const t = await mint({ key });
    expectAmbiguous(
      await runMiddleware(verifier, {
        headers: { authorization: `Bearer ${t}` },
        body: call(undefined, { _meta: { 'dev.taskpass/token': await mint({ key }) } }),
      }),
    );
  });

  test('a token in the header and in the query', async () => {
    const t = await mint({ key });
    expectAmbiguous(
      await runMiddleware(verifier, {
        headers: { authorization: `Bearer ${t}` },
        url: `/mcp?access_token=${t}`,
        body: call(),
      }),
    );
  });

  test('over a real socket: two Authorization headers reach the middleware as two', async () => {
    const guard = taskpassMiddleware(verifier);
    const server = await listen((req, res) => void guard(req, res, () => res.writeHead(200).end('{}')));
    try {
      const a = await mint({ key });
      const payload = call();
      const { status, body } = await new Promise<{ status: number; body: string }>((resolve, reject) => {
        const req = httpRequest(
          `${server.url}/mcp`,
          {
            method: 'POST',
            // raw header list: node:http sends each pair as its own line (and then adds no Host)
            headers: [
              'host',
              new URL(server.url).host,
              'authorization',
              `Bearer ${a}`,
              'authorization',
              'Bearer other',
              'content-type',
              'application/json',
              'content-length',
              String(Buffer.byteLength(payload)),
            ],
          },
          (res) => {
            let b = '';
            res.on('data', (c) => {
              b += c;
            });
            res.on('end', () => resolve({ status: res.statusCode ?? 0, body: b }));
          },
        );
        req.on('error', reject);
        req.end(payload);
      });
      assert.equal(status, 400, body);
      assert.equal((JSON.parse(body) as { code: string }).code, 'TASKPASS_VERIFY_AMBIGUOUS_TOKEN');
    } finally {
      await server.close();
    }
  });
});

describe('client certificate: the TLS connection, or Client-Cert (RFC 9440) from a trusted proxy only', () => {
  const der = Buffer.from('the agent leaf certificate (DER)');
  const x5t = createHash('sha256').update(der).digest('base64url');
  const clientCert = `:${der.toString('base64')}:`;
  const bound = () => mint({ key, claims: { cnf: { 'x5t#S256': x5t } } });

  test('a bound token with the certificate forwarded by a trusted proxy is accepted', async () => {
    const r = await runMiddleware(
      verifier,
      {
        headers: { authorization: `Bearer ${await bound()}`, 'client-cert': clientCert },
        remoteAddress: '10.1.2.3',
        body: call(),
      },
      { trustedProxies: ['10.0.0.0/8'] },
    );
    assert.equal(r.status, 200);
  });

  test('the same header from an untrusted peer is ignored: the bound token is refused', async () => {
    for (const trustedProxies of [undefined, ['10.0.0.0/8']]) {
      const r = await runMiddleware(
        verifier,
        {
          headers: { authorization: `Bearer ${await bound()}`, 'client-cert': clientCert },
          remoteAddress: '192.0.2.7',
          body: call(),
        },
        trustedProxies ? { trustedProxies } : {},
      );
      assert.equal(r.status, 401);
      assert.equal(r.json?.code, 'TASKPASS_VERIFY_CNF_REQUIRED');
    }
  });

  test('another certificate from the trusted proxy → CNF_MISMATCH; none → CNF_REQUIRED', async () => {
    const opts = { trustedProxies: ['::1', '127.0.0.1'] };
    const other = await runMiddleware(
      verifier,
      {
        headers: {
          authorization: `Bearer ${await bound()}`,
          'client-cert': `:${Buffer.from('another').toString('base64')}:`,
        },
        remoteAddress: '::ffff:127.0.0.1',
        body: call(),
      },
      opts,
    );
    assert.equal(other.json?.code, 'TASKPASS_VERIFY_CNF_MISMATCH');
    const none = await runMiddleware(
      verifier,
      { headers: { authorization: `Bearer ${await bound()}` }, remoteAddress: '::1', body: call() },
      opts,
    );
    assert.equal(none.json?.code, 'TASKPASS_VERIFY_CNF_REQUIRED');
  });

  test('a malformed Client-Cert from the trusted proxy is refused, not guessed at', async () => {
    for (const value of [
      der.toString('base64'), // not a byte sequence
      `:${der.toString('base64url')}:`, // base64url is not sf-binary
      `${clientCert}, ${clientCert}`, // two headers
      `${clientCert};a=1`, // parameters
      '::',
    ]) {
      const r = await runMiddleware(
        verifier,
        {
          headers: { authorization: `Bearer ${await bound()}`, 'client-cert': value },
          remoteAddress: '10.0.0.1',
          body: call(),
        },
        { trustedProxies: ['10.0.0.1'] },
      );
      assert.equal(r.status, 400, value);
      assert.equal(r.json?.error?.data?.code, 'TASKPASS_VERIFY_BAD_REQUEST', value);
    }
  });

  test('trustedProxies entries must be addresses or CIDR ranges', () => {
    for (const bad of ['localhost', '10.0.0.0/33', '10.0.0.0/8/1', '::1/129', '*']) {
      assert.throws(
        () => taskpassMiddleware(verifier, { trustedProxies: [bad] }),
        (e: { code?: string }) => e.code === 'TASKPASS_VERIFY_CONFIG_INVALID',
        bad,
      );
    }
  });
});

describe('MCP 2026-07-28 standard headers (Mcp-Method, Mcp-Name)', () => {
  let strict: Verifier;
  before(() => {
    strict = verifierFor(key, {
      tools: { get_ticket: { resource: 'tickets/{ticket_id}', action: 'read' } },
      requireMcpHeaders: true,
    });
  });
  const session = () => mint({ key, claims: { authorization_details: [{ type: 'mcp_session' }] } });
  const codeOf = (r: Awaited<ReturnType<typeof runMiddleware>>) => r.json?.error?.data?.code;
  const rpcCodeOf = (r: Awaited<ReturnType<typeof runMiddleware>>) =>
    (r.json as { error?: { code?: number } } | undefined)?.error?.code;

  test('requireMcpHeaders: a tools/call without Mcp-Method or without Mcp-Name → 400 -32020', async () => {
    const partial: Record<string, string>[] = [
      { 'mcp-name': 'get_ticket' },
      { 'mcp-method': 'tools/call' },
      {},
    ];
    for (const headers of partial) {
      const r = await runMiddleware(strict, {
        headers: { authorization: `Bearer ${await mint({ key })}`, ...headers },
        body: call(),
      });
      assert.equal(r.status, 400, JSON.stringify(headers));
      assert.equal(codeOf(r), 'TASKPASS_VERIFY_HEADER_MISMATCH');
      assert.equal(rpcCodeOf(r), -32020);
      assert.match(
        (r.json as { error: { message: string } }).error.message,
        /required Mcp-(Method|Name) header is missing/,
      );
    }
    const ok = await runMiddleware(strict, {
      headers: {
        authorization: `Bearer ${await mint({ key })}`,
        'mcp-method': 'tools/call',
        'mcp-name': 'get_ticket',
      },
      body: call(),
    });
    assert.equal(ok.status, 200);
  });

  test('requireMcpHeaders: any other request needs Mcp-Method; notifications, responses and GET do not', async () => {
    const list = JSON.stringify({ jsonrpc: '2.0', id: 2, method: 'tools/list' });
    const bare = await runMiddleware(strict, {
      headers: { authorization: `Bearer ${await session()}` },
      body: list,
    });
    assert.equal(bare.status, 400);
    assert.equal(codeOf(bare), 'TASKPASS_VERIFY_HEADER_MISMATCH');
    const withMethod = await runMiddleware(strict, {
      headers: { authorization: `Bearer ${await session()}`, 'mcp-method': 'tools/list' },
      body: list,
    });
    assert.equal(withMethod.status, 200);
    for (const body of [
      { jsonrpc: '2.0', method: 'notifications/initialized' },
      { jsonrpc: '2.0', id: 7, result: {} },
    ]) {
      const r = await runMiddleware(strict, {
        headers: { authorization: `Bearer ${await session()}` },
        body: JSON.stringify(body),
      });
      assert.equal(r.status, 200, JSON.stringify(body));
    }
    const get = await runMiddleware(strict, {
      method: 'GET',
      headers: { authorization: `Bearer ${await session()}` },
    });
    assert.equal(get.status, 200);
  });

  test('by default a missing header passes (SDK 1.x clients send none); a disagreeing one never does', async () => {
    const r = await runMiddleware(verifier, {
      headers: { authorization: `Bearer ${await mint({ key })}` },
      body: call(),
    });
    assert.equal(r.status, 200);
    const bad = await runMiddleware(verifier, {
      headers: {
        authorization: `Bearer ${await mint({ key })}`,
        'mcp-method': 'tools/call',
        'mcp-name': 'close_ticket',
      },
      body: call(),
    });
    assert.equal(bad.status, 400);
    assert.equal(codeOf(bad), 'TASKPASS_VERIFY_HEADER_MISMATCH');
  });

  test('Mcp-Name in the =?base64?…?= form is compared decoded; a non-canonical or wrong one is refused', async () => {
    const uri = 'tickets://T-1/résumé';
    const read = JSON.stringify({ jsonrpc: '2.0', id: 3, method: 'resources/read', params: { uri } });
    const b64 = Buffer.from(uri).toString('base64');
    const send = async (name: string) =>
      runMiddleware(strict, {
        headers: {
          authorization: `Bearer ${await session()}`,
          'mcp-method': 'resources/read',
          'mcp-name': name,
        },
        body: read,
      });
    assert.equal((await send(`=?base64?${b64}?=`)).status, 200);
    for (const name of [
      `=?base64?${b64.replace(/=+$/, '')}?=`, // padding dropped: not canonical
      `=?base64?${Buffer.from('tickets://T-2').toString('base64')}?=`,
      `=?base64?${Buffer.from([0xff, 0xfe]).toString('base64')}?=`, // not UTF-8
      '=?base64?=',
    ]) {
      const r = await send(name);
      assert.equal(r.status, 400, name);
      assert.equal(codeOf(r), 'TASKPASS_VERIFY_HEADER_MISMATCH', name);
    }
  });

  test('tasks/* requests: Mcp-Name mirrors params.taskId', async () => {
    const get = JSON.stringify({ jsonrpc: '2.0', id: 4, method: 'tasks/get', params: { taskId: 't-1' } });
    const send = async (headers: Record<string, string>) =>
      runMiddleware(strict, {
        headers: { authorization: `Bearer ${await session()}`, 'mcp-method': 'tasks/get', ...headers },
        body: get,
      });
    assert.equal((await send({ 'mcp-name': 't-1' })).status, 200);
    assert.equal((await send({ 'mcp-name': 't-2' })).status, 400);
    assert.equal((await send({})).status, 400);
  });
});
