// Property-based tests of the broker's request parsing (#7): whatever JSON, query string or form a
// caller sends, the answer is a 4xx `{ code, message }` (OAuth: `{ error, code }`), never a 500,
// and a value of the wrong JSON type is never coerced into the declared one. Valid bodies pass.
import assert from 'node:assert/strict';
import { before, test } from 'node:test';
import fc from 'fast-check';
import { ADMIN, OPS, OPS_AGENT, type TestBroker, testBroker, VERIFIER } from './app-support.ts';

const RUNS = { numRuns: 60 };
let b: TestBroker;
let task: string;

before(async () => {
  b = await testBroker({
    rateLimit: { perAgentPerMinute: 1e6, perWorkloadPerMinute: 1e6, perAdminPerMinute: 1e6 },
  });
  const r = await b.app.inject({
    method: 'POST',
    url: '/v1/tasks',
    headers: b.mtls(OPS_AGENT),
    payload: { purpose: 'p' },
  });
  task = r.json().task_id;
});

/** Strings that a coercing parser would read as numbers, booleans or null. */
const numberish = fc.constantFrom(
  '0x10',
  '1e3',
  ' 1',
  '1 ',
  '+1',
  '01',
  '16',
  '0',
  '-1',
  '1.0',
  'true',
  'false',
  'null',
  '',
  'NaN',
  'Infinity',
);
const numbers = fc.oneof(
  fc.integer(),
  fc.double({ noNaN: true, noDefaultInfinity: true }),
  fc.constantFrom(1e308, -1e308, 2 ** 53 + 2, 0.5, 16.000001, -0),
);
const scalar = fc.oneof(numberish, fc.string({ maxLength: 20 }), numbers, fc.boolean(), fc.constant(null));
/** Nested arrays 1..40 deep around a scalar. */
const nested = fc
  .tuple(fc.integer({ min: 1, max: 40 }), scalar)
  .map(([d, v]) => JSON.parse(`${'['.repeat(d)}${JSON.stringify(v)}${']'.repeat(d)}`) as unknown);
const anyJson = fc.oneof(scalar, nested, fc.jsonValue({ maxDepth: 4 }));

/** JSON values that are not of `type`. */
function notOfType(type: 'string' | 'integer'): fc.Arbitrary<unknown> {
  return anyJson.filter((v) =>
    type === 'string' ? typeof v !== 'string' : !(typeof v === 'number' && Number.isInteger(v)),
  );
}

interface BodyRoute {
  url: () => string;
  headers: () => Record<string, string>;
  valid: Record<string, unknown>;
  fields: Record<string, 'string' | 'integer'>;
  okStatus: number;
  /** Bodies other than `valid` that the schema admits (never counted as refusals). */
  admits?: (v: unknown) => boolean;
}

const routes: Record<string, BodyRoute> = {
  'POST /v1/tasks': {
    url: () => '/v1/tasks',
    headers: () => b.mtls(OPS_AGENT),
    valid: { purpose: 'p', ttl_seconds: 60 },
    fields: { purpose: 'string', user_token: 'string', ttl_seconds: 'integer' },
    okStatus: 201,
  },
  'POST /v1/tasks/:id/tokens': {
    url: () => `/v1/tasks/${task}/tokens`,
    headers: () => b.mtls(OPS_AGENT),
    valid: { audience: OPS, tool: 'restart', resource: 'services/a', action: 'admin' },
    fields: {
      audience: 'string',
      tool: 'string',
      resource: 'string',
      action: 'string',
      args_sha256: 'string',
    },
    okStatus: 200,
    // `arguments` (an object, for approval conditions) is a field too: fast-check's bias toward
    // well-known property names does generate it.
    admits: (v) => {
      const a = (v as { arguments?: unknown } | null)?.arguments;
      return typeof a === 'object' && a !== null && !Array.isArray(a);
    },
  },
  'POST /v1/tasks/:id/session-token': {
    url: () => `/v1/tasks/${task}/session-token`,
    headers: () => b.mtls(OPS_AGENT),
    valid: { audience: OPS },
    fields: { audience: 'string' },
    okStatus: 200,
  },
  'POST /v1/tasks/:id/complete': {
    url: () => `/v1/tasks/${task}/complete`,
    headers: () => b.mtls(OPS_AGENT),
    valid: { status: 'completed' },
    fields: { status: 'string' },
    okStatus: 200,
  },
  'POST /admin/v1/tasks/:id/revoke': {
    url: () => `/admin/v1/tasks/${task}/revoke`,
    headers: () => b.mtls(ADMIN),
    valid: { reason: 'r' },
    fields: { reason: 'string' },
    okStatus: 200,
    admits: (v) =>
      v === null ||
      (typeof v === 'object' &&
        !Array.isArray(v) &&
        Object.entries(v).every(([k, r]) => k === 'reason' && typeof r === 'string' && r.length >= 1)),
  },
};

async function post(route: BodyRoute, payload: string) {
  return b.app.inject({
    method: 'POST',
    url: route.url(),
    headers: { ...route.headers(), 'content-type': 'application/json' },
    payload,
  });
}

function parseOrUndefined(text: string): unknown {
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}

function assertRefused(r: { statusCode: number; body: string }, what: string): void {
  assert.equal(r.statusCode, 400, `${what} → ${r.statusCode} ${r.body}`);
  const body = JSON.parse(r.body) as Record<string, unknown>;
  assert.equal(body.code, 'TASKPASS_BAD_REQUEST', what);
  assert.equal(typeof body.message, 'string', what);
}

for (const [name, route] of Object.entries(routes)) {
  test(`${name}: a field of the wrong JSON type is refused (400), never coerced`, async () => {
    await fc.assert(
      fc.asyncProperty(
        fc
          .constantFrom(...Object.entries(route.fields))
          .chain(([f, type]) => notOfType(type).map((v) => [f, v] as const)),
        async ([field, value]) => {
          const payload = JSON.stringify({ ...route.valid, [field]: value });
          assertRefused(await post(route, payload), payload.slice(0, 200));
        },
      ),
      RUNS,
    );
  });

  test(`${name}: any non-object body, unknown field or deep nesting is refused (400)`, async () => {
    const hostile = fc.oneof(
      anyJson
        .filter((v) => v === null || typeof v !== 'object' || Array.isArray(v))
        .map((v) => JSON.stringify(v)),
      fc
        .tuple(
          fc.string({ minLength: 1, maxLength: 12 }).filter((k) => !(k in route.fields)),
          anyJson,
        )
        .map(([k, v]) => JSON.stringify({ ...route.valid, [k]: v })),
      // Deeper than the limit, small enough for the smallest body limit (4 KiB).
      fc.integer({ min: 9, max: 1500 }).map((d) => `{"x":${'['.repeat(d)}${']'.repeat(d)}}`),
      fc.string({ maxLength: 40 }),
    );
    await fc.assert(
      fc.asyncProperty(hostile, async (payload) => {
        fc.pre(!route.admits?.(parseOrUndefined(payload)));
        const r = await post(route, payload);
        // Unparsable text is a bad request as well; nothing reaches a handler.
        assertRefused(r, payload.slice(0, 200));
      }),
      RUNS,
    );
  });
}

test('POST /v1/tasks: valid bodies still pass', async () => {
  const route = routes['POST /v1/tasks']!;
  await fc.assert(
    fc.asyncProperty(
      fc.string({ minLength: 1, maxLength: 512, unit: 'grapheme-ascii' }),
      fc.option(fc.integer({ min: 1, max: 7 * 86400 }), { nil: undefined }),
      async (purpose, ttl) => {
        const r = await post(
          route,
          JSON.stringify({ purpose, ...(ttl === undefined ? {} : { ttl_seconds: ttl }) }),
        );
        assert.equal(r.statusCode, 201, r.body);
      },
    ),
    { numRuns: 30 },
  );
});

test('GET /admin/v1/tasks?limit=: only a plain decimal in range is a number', async () => {
  const candidate = fc.oneof(
    numberish,
    fc.string({ maxLength: 8 }),
    fc.integer({ min: -5, max: 2000 }).map(String),
    fc.stringMatching(/^[0-9]{1,20}$/),
  );
  await fc.assert(
    fc.asyncProperty(candidate, async (v) => {
      const r = await b.app.inject({
        method: 'GET',
        url: `/admin/v1/tasks?limit=${encodeURIComponent(v)}`,
        headers: b.mtls(ADMIN),
      });
      const ok = /^(0|[1-9][0-9]*)$/.test(v) && Number(v) >= 1 && Number(v) <= 1000;
      assert.equal(r.statusCode, ok ? 200 : 400, `limit=${JSON.stringify(v)} → ${r.body}`);
      if (!ok) assert.equal(r.json().code, 'TASKPASS_BAD_REQUEST');
    }),
    { numRuns: 100 },
  );
});

test('OAuth forms: random fields and repeated keys never make a 500; every refusal is { error, code }', async () => {
  const key = fc.oneof(
    fc.constantFrom(
      'grant_type',
      'token',
      'token_type_hint',
      'consume',
      'resource',
      'authorization_details',
      'subject_token',
      'actor_token',
      'task_id',
    ),
    fc.string({ maxLength: 10 }),
  );
  const value = fc.oneof(
    numberish,
    fc.string({ maxLength: 30 }),
    anyJson.map((v) => JSON.stringify(v)),
  );
  const formBody = fc
    .array(fc.tuple(key, value), { maxLength: 8 })
    .map((pairs) => pairs.map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&'));
  await fc.assert(
    fc.asyncProperty(
      fc.constantFrom('/oauth2/token', '/oauth2/introspect', '/oauth2/revoke'),
      formBody,
      async (url, payload) => {
        const r = await b.app.inject({
          method: 'POST',
          url,
          headers: {
            'content-type': 'application/x-www-form-urlencoded',
            ...b.mtls(url === '/oauth2/token' ? OPS_AGENT : VERIFIER),
          },
          payload,
        });
        assert.ok(r.statusCode < 500, `${url} ${payload} → ${r.statusCode} ${r.body}`);
        if (r.statusCode >= 400) {
          const body = r.json();
          assert.equal(typeof body.error, 'string');
          assert.match(body.code, /^TASKPASS_/);
        }
      },
    ),
    { numRuns: 100 },
  );
});
