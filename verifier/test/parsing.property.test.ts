// Property-based tests (fast-check) of what the verifier parses from an attacker: token strings
// (every mutation of a valid token's spelling is refused; the strict parser agrees with a
// reference base64url decode on canonical input) and HTTP requests (bodies of any shape, depth
// and size never crash the middleware or produce a 500; without a Bearer token the body is never
// read). numRuns keeps each property well under 2 s on one shared core.
import assert from 'node:assert/strict';
import { before, describe, test } from 'node:test';
import fc from 'fast-check';
import type { Verifier } from '../src/core.ts';
import { VERIFIER_ERRORS, VerifierError } from '../src/errors.ts';
import { parseCompactJws } from '../src/jws.ts';
import { type Key, mint, newKey, runMiddleware, verifierFor } from './support.ts';

const B64URL = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
const read = { tool: 'get_ticket', args: { ticket_id: 'T-1' } };

let key: Key;
let verifier: Verifier;
let token: string;

before(async () => {
  key = await newKey('k1');
  verifier = verifierFor(key, {
    tools: { get_ticket: { resource: 'tickets/{ticket_id}', action: 'read' } },
  });
  token = await mint({ key, ttl: 300 });
});

/** The verifier's verdict: 'accepted' or the refusal code (anything else is a crash and fails). */
async function verdict(t: string): Promise<string> {
  try {
    await verifier.verifyCall(t, read);
    return 'accepted';
  } catch (e) {
    if (!(e instanceof VerifierError)) throw e;
    return e.code;
  }
}

const b64 = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');

describe('token strings (properties)', () => {
  test('the unmutated token is accepted (the mutations below are what gets refused)', async () => {
    assert.equal(await verdict(token), 'accepted');
  });

  test('any single changed character, in any segment, is refused', async () => {
    await fc.assert(
      fc.asyncProperty(fc.nat(), fc.constantFrom(...B64URL, '.', '=', '+', '/', ' '), async (i, c) => {
        const at = i % token.length;
        fc.pre(token[at] !== c);
        const t = token.slice(0, at) + c + token.slice(at + 1);
        assert.notEqual(await verdict(t), 'accepted', t);
      }),
      { numRuns: 150 },
    );
  });

  test('a last character that decodes to the same bytes (other unused bits) is refused as MALFORMED', async () => {
    const parts = token.split('.');
    await fc.assert(
      fc.asyncProperty(fc.constantFrom(0, 1, 2), fc.integer({ min: 1, max: 15 }), async (seg, k) => {
        const part = parts[seg]!;
        const unusedBits = { 0: 0, 2: 4, 3: 2 }[(part.length % 4) as 0 | 2 | 3];
        fc.pre(unusedBits > 0 && k < 2 ** unusedBits);
        const twin = part.slice(0, -1) + B64URL[B64URL.indexOf(part.at(-1)!) + k];
        assert.deepEqual(Buffer.from(twin, 'base64url'), Buffer.from(part, 'base64url'));
        const t = parts.map((p, i) => (i === seg ? twin : p)).join('.');
        assert.equal(await verdict(t), 'TASKPASS_VERIFY_MALFORMED');
      }),
      { numRuns: 40 },
    );
  });

  test('padding or whitespace inserted anywhere is refused as MALFORMED', async () => {
    await fc.assert(
      fc.asyncProperty(
        fc.nat(),
        fc.constantFrom('=', '==', ' ', '\t', '\n', '\r\n', '\u00a0'),
        async (i, ins) => {
          const at = i % (token.length + 1);
          const t = token.slice(0, at) + ins + token.slice(at);
          assert.equal(await verdict(t), 'TASKPASS_VERIFY_MALFORMED', JSON.stringify(t));
        },
      ),
      { numRuns: 100 },
    );
  });

  test('extra or missing segments are refused as MALFORMED', async () => {
    const parts = token.split('.');
    await fc.assert(
      fc.asyncProperty(
        fc.array(fc.constantFrom(...parts, '', 'e30'), { minLength: 0, maxLength: 6 }),
        async (segments) => {
          const t = segments.join('.');
          fc.pre(segments.length !== 3 && t !== ''); // '' is no token at all: MISSING_TOKEN
          assert.equal(await verdict(t), 'TASKPASS_VERIFY_MALFORMED');
        },
      ),
      { numRuns: 60 },
    );
  });

  test('a re-encoded header (same fields, another spelling) is refused', async () => {
    const [h, p, s] = token.split('.') as [string, string, string];
    const header = JSON.parse(Buffer.from(h, 'base64url').toString()) as Record<string, unknown>;
    await fc.assert(
      fc.asyncProperty(
        fc.shuffledSubarray(Object.keys(header), { minLength: Object.keys(header).length }),
        fc.constantFrom(0, 1, 2),
        async (order, indent) => {
          const reordered = Object.fromEntries(order.map((k) => [k, header[k]]));
          const json = JSON.stringify(reordered, null, indent);
          fc.pre(json !== JSON.stringify(header));
          const t = `${Buffer.from(json).toString('base64url')}.${p}.${s}`;
          assert.notEqual(await verdict(t), 'accepted');
        },
      ),
      { numRuns: 30 },
    );
  });

  test('on canonical input the strict parser agrees with a reference decode', () => {
    fc.assert(
      fc.property(
        fc.dictionary(fc.string({ maxLength: 8 }), fc.jsonValue({ maxDepth: 2 }), { maxKeys: 4 }),
        fc.string({ minLength: 1, maxLength: 16 }),
        fc.uint8Array({ minLength: 1, maxLength: 96 }),
        (extra, kid, sig) => {
          delete extra.crit;
          const header = { ...extra, alg: 'ES256', kid };
          const t = `${b64(header)}.${b64({ a: 1 })}.${Buffer.from(sig).toString('base64url')}`;
          const reference = JSON.parse(JSON.stringify(header));
          assert.deepEqual(parseCompactJws(t), reference);
        },
      ),
      { numRuns: 300 },
    );
  });

  test('a segment is accepted exactly when it is the reference encoding of its own decoding', () => {
    const h = b64({ alg: 'ES256', kid: 'k1' });
    fc.assert(
      fc.property(
        fc.string({ unit: fc.constantFrom(...B64URL, '=', '+', ' '), minLength: 1, maxLength: 12 }),
        (s) => {
          const canonical = Buffer.from(s, 'base64url').toString('base64url') === s;
          let accepted = true;
          try {
            parseCompactJws(`${h}.${h}.${s}`);
          } catch (e) {
            assert.equal((e as VerifierError).code, 'TASKPASS_VERIFY_MALFORMED');
            accepted = false;
          }
          assert.equal(accepted, canonical, s);
        },
      ),
      { numRuns: 500 },
    );
  });
});

describe('HTTP requests (properties)', () => {
  const codes = new Set(Object.keys(VERIFIER_ERRORS));
  // A body: JSON of any shape, JSON-RPC-shaped messages with odd params, raw deep nesting, or bytes.
  const jsonRpc = fc.record(
    {
      jsonrpc: fc.oneof(fc.constant('2.0'), fc.jsonValue()),
      id: fc.jsonValue({ maxDepth: 1 }),
      method: fc.oneof(fc.constantFrom('tools/call', 'tools/list', 'initialize'), fc.string()),
      params: fc.oneof(
        fc.record(
          {
            name: fc.oneof(fc.constant('get_ticket'), fc.jsonValue({ maxDepth: 1 })),
            arguments: fc.oneof(
              fc.record({ ticket_id: fc.oneof(fc.constant('T-1'), fc.jsonValue({ maxDepth: 2 })) }),
              fc.jsonValue({ maxDepth: 3 }),
            ),
            _meta: fc.jsonValue({ maxDepth: 2 }),
          },
          { requiredKeys: [] },
        ),
        fc.jsonValue({ maxDepth: 3 }),
      ),
    },
    { requiredKeys: ['jsonrpc'] },
  );
  const body = fc.oneof(
    jsonRpc.map((m) => JSON.stringify(m)),
    fc.array(jsonRpc, { maxLength: 3 }).map((m) => JSON.stringify(m)),
    fc.jsonValue({ maxDepth: 6 }).map((v) => JSON.stringify(v)),
    fc
      .tuple(fc.integer({ min: 1, max: 400 }), fc.constantFrom('[', '{"a":', '[{"b":'))
      .map(
        ([n, open]) => open.repeat(n) + '1' + (open === '[' ? ']' : open === '{"a":' ? '}' : '}]').repeat(n),
      ),
    fc.string({ maxLength: 300 }),
    fc.uint8Array({ maxLength: 300 }).map((b) => Buffer.from(b).toString('latin1')),
  );

  test('with a valid token: never a crash or a 500, always a stable code', async () => {
    await fc.assert(
      fc.asyncProperty(body, fc.constantFrom('POST', 'GET', 'DELETE'), async (b, method) => {
        const r = await runMiddleware(verifier, {
          method,
          headers: { authorization: `Bearer ${token}`, 'content-type': 'application/json' },
          body: b,
        });
        assert.ok([200, 400, 401, 403].includes(r.status), `status ${r.status} for ${b.slice(0, 80)}`);
        if (r.status !== 200) {
          const code = r.json?.code ?? r.json?.error?.data?.code;
          assert.ok(code !== undefined && codes.has(code), `code ${code}`);
        }
      }),
      { numRuns: 200 },
    );
  });

  test('without a Bearer token: 401 MISSING_TOKEN and the body is never read', async () => {
    await fc.assert(
      fc.asyncProperty(
        body,
        fc.option(fc.constantFrom('Basic dXNlcjpwYXNz', 'Bearer', 'Bearer ', 'bearer', 'Token abc', ''), {
          nil: undefined,
        }),
        fc.dictionary(
          fc.constantFrom('x-a', 'cookie', 'content-type', 'mcp-method'),
          fc.string({ maxLength: 20 }),
        ),
        async (b, authorization, headers) => {
          const r = await runMiddleware(verifier, {
            headers: authorization === undefined ? headers : { ...headers, authorization },
            body: b,
          });
          assert.equal(r.status, 401);
          assert.equal(r.json?.code, 'TASKPASS_VERIFY_MISSING_TOKEN');
          assert.equal(r.wasRead, false);
        },
      ),
      { numRuns: 150 },
    );
  });
});
