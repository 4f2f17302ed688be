import assert from 'node:assert/strict';
import { createHash, randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import { SignJWT, UnsecuredJWT } from 'jose';
import { createVerifier, type Verifier, type VerifierOptions } from '../src/core.ts';
import type { VerifierErrorCode } from '../src/errors.ts';
import { argsSha256 } from '@taskpass/contract';
import type { RevocationSource } from '../src/revocation.ts';
import { AGENT, AUDIENCE, ISSUER, jwksOf, jwksServer, type Key, mint, newKey, USER } from './support.ts';

let key: Key;
let other: Key;

const tools: VerifierOptions['tools'] = {
  get_ticket: { resource: 'tickets/{ticket_id}', annotations: { readOnlyHint: true } },
  close_ticket: { resource: 'tickets/{ticket_id}', annotations: { destructiveHint: true } },
  purge: { resource: (a) => `tickets/${String(a.ticket_id)}`, action: 'admin' },
  meta_tool: { _meta: { 'dev.taskpass/resource': 'queues/{queue.name}', 'dev.taskpass/action': 'read' } },
};

function make(o: Partial<VerifierOptions> = {}): Verifier {
  return createVerifier({ issuer: ISSUER, audience: AUDIENCE, jwks: jwksOf(key), tools, ...o });
}

async function rejects(p: Promise<unknown>, code: VerifierErrorCode): Promise<void> {
  await assert.rejects(p, (e: { code?: string }) => {
    assert.equal(e.code, code);
    return true;
  });
}

const read = { tool: 'get_ticket', args: { ticket_id: 'T-1' } };
const APPROVAL = 'apr_AAAAAAAAAAAAAAAAAAAAAA';
const approvalClaim = (patch: Record<string, unknown> = {}) => ({
  id: APPROVAL,
  approver: { iss: 'https://idp.test', sub: 'lead-1' },
  approved_at: 1_700_000_000,
  ...patch,
});
const writeDetail = { tool: 'close_ticket', action: 'write' };

before(async () => {
  key = await newKey('k1');
  other = await newKey('k2');
});

describe('verifyCall accepts', () => {
  test('a valid read token and returns who is calling', async () => {
    const v = make();
    const auth = await v.verifyCall(await mint({ key }), read);
    assert.equal(auth.kind, 'call');
    assert.equal(auth.user, USER);
    assert.equal(auth.agent, AGENT);
    assert.deepEqual(auth.actorChain, [AGENT]);
    assert.equal(auth.task, 'task-1');
    assert.equal(auth.tool, 'get_ticket');
    assert.equal(auth.resource, 'tickets/T-1');
    assert.equal(auth.action, 'read');
    assert.equal(auth.clientId, AGENT);
    assert.equal(auth.template, 'tickets-support-read');
    assert.equal(auth.singleUse, false);
    assert.equal(typeof auth.expiresAt, 'number');
  });

  test('a nested actor chain, current actor first', async () => {
    const t = await mint({
      key,
      claims: { client_id: 'spiffe://t/sub', act: { sub: 'spiffe://t/sub', act: { sub: AGENT } } },
    });
    const auth = await make().verifyCall(t, read);
    assert.equal(auth.agent, 'spiffe://t/sub');
    assert.deepEqual(auth.actorChain, ['spiffe://t/sub', AGENT]);
  });

  test('a one-element aud array', async () => {
    await make().verifyCall(await mint({ key, claims: { aud: [AUDIENCE] } }), read);
  });

  test('tools declared by _meta and by function; integer placeholder values', async () => {
    const v = make();
    await v.verifyCall(await mint({ key, detail: { tool: 'meta_tool', resource: 'queues/vip' } }), {
      tool: 'meta_tool',
      args: { queue: { name: 'vip' } },
    });
    await v.verifyCall(
      await mint({ key, detail: { tool: 'purge', resource: 'tickets/7', action: 'admin' } }),
      { tool: 'purge', args: { ticket_id: 7 } },
    );
    await v.verifyCall(await mint({ key, detail: { resource: 'tickets/42' } }), {
      tool: 'get_ticket',
      args: { ticket_id: 42 },
    });
  });

  test('args_sha256 bound to the exact arguments (key order irrelevant)', async () => {
    const args = { ticket_id: 'T-1', note: { b: 1, a: [1, 'x'] } };
    const t = await mint({
      key,
      detail: { args_sha256: argsSha256({ note: { a: [1, 'x'], b: 1 }, ticket_id: 'T-1' }) },
    });
    await make().verifyCall(t, { tool: 'get_ticket', args });
    const t2 = await mint({ key, detail: { args_sha256: argsSha256(args) } });
    await rejects(
      make().verifyCall(t2, { tool: 'get_ticket', args: { ...args, note: 'other' } }),
      'TASKPASS_VERIFY_ARGS_MISMATCH',
    );
  });

  test('args_sha256 refuses the same call with another amount (number, numeric string, extra member)', async () => {
    const args = { ticket_id: 'T-1', amount: 50 };
    const t = () => mint({ key, detail: { ...writeDetail, args_sha256: argsSha256(args) } });
    const close = (a: Record<string, unknown>) => ({ tool: 'close_ticket', args: a });
    await make().verifyCall(await t(), close({ amount: 50, ticket_id: 'T-1' }));
    for (const changed of [{ amount: 500 }, { amount: 50.01 }, { amount: '50' }, { currency: 'EUR' }]) {
      await rejects(
        make().verifyCall(await t(), close({ ...args, ...changed })),
        'TASKPASS_VERIFY_ARGS_MISMATCH',
      );
    }
  });

  test('an approved call: the caller names the approver, the approval id and time', async () => {
    const args = { ticket_id: 'T-1', amount: 500 };
    const approval = {
      id: APPROVAL,
      approver: { iss: 'https://idp.test', sub: 'lead-1' },
      approved_at: 1_700_000_000,
    };
    const t = await mint({ key, detail: { ...writeDetail, args_sha256: argsSha256(args), approval } });
    const auth = await make().verifyCall(t, { tool: 'close_ticket', args });
    assert.deepEqual(auth.approval, {
      id: APPROVAL,
      approver: { iss: 'https://idp.test', sub: 'lead-1' },
      approvedAt: 1_700_000_000,
    });
    // Its arguments changed after approval: refused at the MCP server.
    const t2 = await mint({ key, detail: { ...writeDetail, args_sha256: argsSha256(args), approval } });
    await rejects(
      make().verifyCall(t2, { tool: 'close_ticket', args: { ...args, amount: 5000 } }),
      'TASKPASS_VERIFY_ARGS_MISMATCH',
    );
    // No approval in the token, none for the handler.
    assert.equal((await make().verifyCall(await mint({ key }), read)).approval, undefined);
  });

  test('tokens within the clock tolerance', async () => {
    const v = make({ clockToleranceSec: 5 });
    await v.verifyCall(await mint({ key, iat: -63, ttl: 60 }), read); // expired 3 s ago
    await v.verifyCall(await mint({ key, iat: 3 }), read); // issued 3 s ahead
  });
});

describe('verifyCall refuses', () => {
  const cases: [string, () => Promise<string>, VerifierErrorCode, typeof read?][] = [
    ['no token', async () => '', 'TASKPASS_VERIFY_MISSING_TOKEN'],
    ['garbage', async () => 'not.a.jwt', 'TASKPASS_VERIFY_MALFORMED'],
    ['two segments', async () => 'abc.def', 'TASKPASS_VERIFY_MALFORMED'],
    ['wrong tool', () => mint({ key, detail: writeDetail }), 'TASKPASS_VERIFY_WRONG_TOOL'],
    [
      'wrong resource',
      () => mint({ key, detail: { resource: 'tickets/T-2' } }),
      'TASKPASS_VERIFY_WRONG_RESOURCE',
    ],
    ['wrong action', () => mint({ key, detail: { action: 'write' } }), 'TASKPASS_VERIFY_WRONG_ACTION'],
    [
      'wrong aud',
      () => mint({ key, claims: { aud: 'https://other.test/mcp' } }),
      'TASKPASS_VERIFY_WRONG_AUDIENCE',
    ],
    [
      'aud array of two',
      () => mint({ key, claims: { aud: [AUDIENCE, 'https://other.test/mcp'] } }),
      'TASKPASS_VERIFY_WRONG_AUDIENCE',
    ],
    ['wrong iss', () => mint({ key, claims: { iss: 'https://evil.test' } }), 'TASKPASS_VERIFY_WRONG_ISSUER'],
    ['typ JWT', () => mint({ key, header: { typ: 'JWT' } }), 'TASKPASS_VERIFY_WRONG_TYPE'],
    ['no typ', () => mint({ key, header: { typ: undefined } }), 'TASKPASS_VERIFY_WRONG_TYPE'],
    ['unknown kid', () => mint({ key: other }), 'TASKPASS_VERIFY_UNKNOWN_KID'],
    [
      'kid of key 1, signed by key 2',
      () => mint({ key: { ...other, kid: 'k1' } }),
      'TASKPASS_VERIFY_BAD_SIGNATURE',
    ],
    ['expired', () => mint({ key, iat: -120, ttl: 60 }), 'TASKPASS_VERIFY_EXPIRED'],
    [
      'nbf in the future',
      () => mint({ key, claims: { nbf: Math.floor(Date.now() / 1000) + 60 } }),
      'TASKPASS_VERIFY_NOT_YET_VALID',
    ],
    ['iat in the future', () => mint({ key, iat: 60 }), 'TASKPASS_VERIFY_NOT_YET_VALID'],
    [
      'session token for a call',
      () => mint({ key, claims: { authorization_details: [{ type: 'mcp_session' }] } }),
      'TASKPASS_VERIFY_SESSION_TOKEN_FOR_CALL',
    ],
    [
      'two authorization_details',
      () =>
        mint({
          key,
          claims: {
            authorization_details: [
              { type: 'mcp_tool_call', tool: 'get_ticket', resource: 'tickets/T-1', action: 'read' },
              { type: 'mcp_session' },
            ],
          },
        }),
      'TASKPASS_VERIFY_MALFORMED',
    ],
    ['unknown detail type', () => mint({ key, detail: { type: 'other' } }), 'TASKPASS_VERIFY_MALFORMED'],
    ['bad action value', () => mint({ key, detail: { action: 'root' } }), 'TASKPASS_VERIFY_MALFORMED'],
    ['act without sub', () => mint({ key, claims: { act: { iss: 'x' } } }), 'TASKPASS_VERIFY_MALFORMED'],
    [
      'act.sub is another agent than client_id',
      () => mint({ key, claims: { act: { sub: 'spiffe://taskpass.test/agents/other' } } }),
      'TASKPASS_VERIFY_BAD_ACTOR',
    ],
    [
      'act.sub equal to client_id but not a SPIFFE ID',
      () => mint({ key, claims: { client_id: 'support-bot', act: { sub: 'support-bot' } } }),
      'TASKPASS_VERIFY_BAD_ACTOR',
    ],
    [
      'a nested (earlier) actor that is not a SPIFFE ID',
      () => mint({ key, claims: { act: { sub: AGENT, act: { sub: 'root' } } } }),
      'TASKPASS_VERIFY_BAD_ACTOR',
    ],
    [
      'client_id only as the nested actor, not the current one',
      () => mint({ key, claims: { act: { sub: 'spiffe://taskpass.test/agents/sub', act: { sub: AGENT } } } }),
      'TASKPASS_VERIFY_BAD_ACTOR',
    ],
    ['no kid in the header', () => mint({ key, header: { kid: undefined } }), 'TASKPASS_VERIFY_MALFORMED'],
    [
      'an approval without args_sha256',
      () => mint({ key, detail: { approval: approvalClaim() } }),
      'TASKPASS_VERIFY_APPROVAL_UNBOUND',
    ],
    ...(
      [
        ['an approval id not apr_…', { id: 'apr_short' }],
        ['an approval with an unknown member', { comment: 'ok by me' }],
        ['an approval whose approver has no sub', { approver: { iss: 'https://idp.test' } }],
        [
          'an approver with an extra member',
          { approver: { iss: 'https://idp.test', sub: 'l', admin: true } },
        ],
        ['an approver with an empty iss', { approver: { iss: '', sub: 'lead-1' } }],
        ['approved_at as a string', { approved_at: '1700000000' }],
        ['approved_at not an integer', { approved_at: 1.5 }],
      ] as const
    ).map(([name, patch]): [string, () => Promise<string>, VerifierErrorCode] => [
      name,
      () => mint({ key, detail: { args_sha256: argsSha256(read.args), approval: approvalClaim(patch) } }),
      'TASKPASS_VERIFY_MALFORMED',
    ]),
    [
      'an approval that is not an object',
      () => mint({ key, detail: { args_sha256: argsSha256(read.args), approval: APPROVAL } }),
      'TASKPASS_VERIFY_MALFORMED',
    ],
    [
      'lifetime over the 300 s default cap',
      () => mint({ key, ttl: 301 }),
      'TASKPASS_VERIFY_LIFETIME_TOO_LONG',
    ],
    ['exp not after iat', () => mint({ key, ttl: 0 }), 'TASKPASS_VERIFY_MALFORMED'],
    ['empty txn', () => mint({ key, claims: { txn: '' } }), 'TASKPASS_VERIFY_MALFORMED'],
    [
      'unknown tool',
      () => mint({ key }),
      'TASKPASS_VERIFY_UNKNOWN_TOOL',
      { tool: 'drop_db', args: { ticket_id: 'T-1' } },
    ],
    [
      'resource argument missing',
      () => mint({ key }),
      'TASKPASS_VERIFY_RESOURCE_UNDERIVABLE',
      { tool: 'get_ticket', args: {} as { ticket_id: string } },
    ],
    [
      'resource argument widening the resource',
      () => mint({ key, detail: { resource: 'tickets/T-1/../T-2' } }),
      'TASKPASS_VERIFY_RESOURCE_UNDERIVABLE',
      { tool: 'get_ticket', args: { ticket_id: 'T-1/../T-2' } },
    ],
  ];
  for (const claim of [
    'exp',
    'iat',
    'jti',
    'sub',
    'aud',
    'iss',
    'client_id',
    'txn',
    'act',
    'authorization_details',
  ]) {
    cases.push([`missing ${claim}`, () => mint({ key, drop: [claim] }), 'TASKPASS_VERIFY_MISSING_CLAIM']);
  }
  for (const [name, token, code, call] of cases) {
    test(`${name} → ${code}`, async () => {
      await rejects(make().verifyCall(await token(), call ?? read), code);
    });
  }

  test('alg HS256 (even with the public key material as secret) → BAD_ALGORITHM', async () => {
    const secret = new TextEncoder().encode(JSON.stringify(key.jwk));
    const t = await new SignJWT({ iss: ISSUER, aud: AUDIENCE })
      .setProtectedHeader({ alg: 'HS256', typ: 'at+jwt', kid: 'k1' })
      .sign(secret);
    await rejects(make().verifyCall(t, read), 'TASKPASS_VERIFY_BAD_ALGORITHM');
  });

  test('alg none: unsigned → MALFORMED (empty signature segment); with a kid and a signature → BAD_ALGORITHM', async () => {
    const t = new UnsecuredJWT({ iss: ISSUER, aud: AUDIENCE }).encode();
    await rejects(make().verifyCall(t, read), 'TASKPASS_VERIFY_MALFORMED');
    const [, payload] = t.split('.');
    const header = Buffer.from(JSON.stringify({ alg: 'none', typ: 'at+jwt', kid: 'k1' })).toString(
      'base64url',
    );
    await rejects(make().verifyCall(`${header}.${payload}.AAAA`, read), 'TASKPASS_VERIFY_BAD_ALGORITHM');
  });

  test('a crit header gets its own code, not BAD_ALGORITHM', async () => {
    // jose refuses to sign with an unknown crit, so sign by hand (ES256 = raw r||s, RFC 7518 §3.4).
    const enc = (o: unknown) => Buffer.from(JSON.stringify(o)).toString('base64url');
    const now = Math.floor(Date.now() / 1000);
    const input = `${enc({ alg: 'ES256', typ: 'at+jwt', kid: 'k1', crit: ['exp'], exp: now + 60 })}.${enc({
      iss: ISSUER,
      aud: AUDIENCE,
    })}`;
    const sig = await crypto.subtle.sign(
      { name: 'ECDSA', hash: 'SHA-256' },
      key.privateKey,
      new TextEncoder().encode(input),
    );
    const t = `${input}.${Buffer.from(sig).toString('base64url')}`;
    await rejects(make().verifyCall(t, read), 'TASKPASS_VERIFY_UNSUPPORTED_CRIT');
  });

  test('the token lifetime cap is configurable', async () => {
    const t = await mint({ key, ttl: 600 });
    await rejects(make().verifyCall(t, read), 'TASKPASS_VERIFY_LIFETIME_TOO_LONG');
    await make({ maxTokenLifetimeSec: 600 }).verifyCall(t, read);
    await rejects(
      make({ maxTokenLifetimeSec: 30 }).verifyCall(await mint({ key, ttl: 31 }), read),
      'TASKPASS_VERIFY_LIFETIME_TOO_LONG',
    );
  });

  test('one spelling per token: padding, whitespace and non-canonical last characters are refused', async () => {
    const t = await mint({ key });
    const v = make();
    await v.verifyCall(t, read);
    const [h, p, sig] = t.split('.') as [string, string, string];
    // 64-byte ES256 signature → 86 characters whose last one has 4 unused bits: the next alphabet
    // character decodes to the same bytes, and a lenient decoder verifies the signature.
    const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_';
    const twin = `${sig.slice(0, -1)}${alphabet[alphabet.indexOf(sig.at(-1)!) + 1]}`;
    assert.deepEqual(Buffer.from(twin, 'base64url'), Buffer.from(sig, 'base64url'));
    for (const bad of [
      `${t}==`,
      `${h}.${p}.${sig.slice(0, 40)} ${sig.slice(40)}`,
      `${h}.${p}.${sig.slice(0, 40)}\n${sig.slice(40)}`,
      `${h}==.${p}.${sig}`,
      `${h}.${p}.${twin}`,
      `${h}.${p}.${sig}.`,
      `${h}..${sig}`,
      `${h}.${p}.${sig}.${sig}`,
      // base64 (not base64url) characters; a signature need not contain '-' or '_' to map
      `${h}.${p}.+${sig.slice(1)}`,
      `${h}.${p}.${sig.slice(0, -2)}/${sig.at(-1)}`,
    ]) {
      await rejects(v.verifyCall(bad, read), 'TASKPASS_VERIFY_MALFORMED');
    }
  });

  test('jku/x5u headers are never followed', async () => {
    const jwks = await jwksServer(jwksOf(other));
    try {
      const t = await mint({ key: other, header: { jku: jwks.uri, x5u: jwks.uri } });
      await rejects(make().verifyCall(t, read), 'TASKPASS_VERIFY_UNKNOWN_KID');
      assert.equal(jwks.fetches, 0);
    } finally {
      await jwks.close();
    }
  });
});

describe('single use, revocation, staleness, binding', () => {
  test('a single-use token is refused the second time', async () => {
    const v = make();
    const t = await mint({ key, detail: writeDetail, claims: { single_use: true } });
    const call = { tool: 'close_ticket', args: { ticket_id: 'T-1' } };
    const a = await v.verifyCall(t, call);
    assert.equal(a.singleUse, true);
    await rejects(v.verifyCall(t, call), 'TASKPASS_VERIFY_REPLAYED');
  });

  test('a multi-use read token is not spent; singleUse: "all" spends every call token', async () => {
    const t = await mint({ key });
    const v = make();
    await v.verifyCall(t, read);
    await v.verifyCall(t, read);
    const strict = make({ singleUse: 'all' });
    await strict.verifyCall(t, read);
    await rejects(strict.verifyCall(t, read), 'TASKPASS_VERIFY_REPLAYED');
  });

  test('a refused single-use token is not spent', async () => {
    const v = make();
    const t = await mint({ key, detail: writeDetail, claims: { single_use: true } });
    await rejects(
      v.verifyCall(t, { tool: 'close_ticket', args: { ticket_id: 'T-9' } }),
      'TASKPASS_VERIFY_WRONG_RESOURCE',
    );
    await v.verifyCall(t, { tool: 'close_ticket', args: { ticket_id: 'T-1' } });
  });

  function source(
    revokedTasks: string[],
    revokedJtis: string[],
    lastEventAt: number | undefined,
  ): RevocationSource {
    return {
      isRevoked: (txn, jti) => revokedTasks.includes(txn) || revokedJtis.includes(jti),
      lastEventAt,
    };
  }

  test('revoked by task and by jti', async () => {
    const jti = randomUUID();
    const v = make({ revocation: source(['task-9'], [jti], Date.now()) });
    await rejects(
      v.verifyCall(await mint({ key, claims: { txn: 'task-9' } }), read),
      'TASKPASS_VERIFY_REVOKED',
    );
    await rejects(v.verifyCall(await mint({ key, claims: { jti } }), read), 'TASKPASS_VERIFY_REVOKED');
    await rejects(v.verifySession(await mint({ key, claims: { txn: 'task-9' } })), 'TASKPASS_VERIFY_REVOKED');
    await v.verifyCall(await mint({ key }), read);
  });

  test('stale feed: writes refused, reads allowed; reads denied when configured', async () => {
    const stale = source([], [], Date.now() - 60_000);
    const v = make({ revocation: stale, staleness: { maxFeedAgeMs: 30_000, readsWhenStale: 'allow' } });
    const write = await mint({ key, detail: writeDetail });
    await rejects(
      v.verifyCall(write, { tool: 'close_ticket', args: { ticket_id: 'T-1' } }),
      'TASKPASS_VERIFY_FEED_STALE',
    );
    await v.verifyCall(await mint({ key }), read);
    const strict = make({ revocation: stale, staleness: { maxFeedAgeMs: 30_000, readsWhenStale: 'deny' } });
    await rejects(strict.verifyCall(await mint({ key }), read), 'TASKPASS_VERIFY_FEED_STALE');
    const never = make({ revocation: source([], [], undefined) });
    await rejects(
      never.verifyCall(write, { tool: 'close_ticket', args: { ticket_id: 'T-1' } }),
      'TASKPASS_VERIFY_FEED_NOT_READY',
    );
    await rejects(never.verifyCall(await mint({ key }), read), 'TASKPASS_VERIFY_FEED_NOT_READY');
    await rejects(never.verifySession(await mint({ key })), 'TASKPASS_VERIFY_FEED_NOT_READY');
    const fresh = make({ revocation: source([], [], Date.now()) });
    await fresh.verifyCall(write, { tool: 'close_ticket', args: { ticket_id: 'T-1' } });
  });

  test('cnf: matching certificate accepted, other or no certificate refused, binding of every token optional', async () => {
    const der = Buffer.from('a certificate (DER bytes)');
    const x5t = createHash('sha256').update(der).digest('base64url');
    const bound = await mint({ key, claims: { cnf: { 'x5t#S256': x5t } } });
    const v = make();
    await v.verifyCall(bound, { ...read, clientCertificate: der });
    await v.verifyCall(bound, { ...read, clientCertificate: { x5tS256: x5t } });
    await rejects(
      v.verifyCall(bound, { ...read, clientCertificate: Buffer.from('another certificate') }),
      'TASKPASS_VERIFY_CNF_MISMATCH',
    );
    await rejects(
      v.verifySession(bound, { clientCertificate: Buffer.from('another certificate') }),
      'TASKPASS_VERIFY_CNF_MISMATCH',
    );
    // RFC 8705: a bound token is no bearer token; without a client certificate it is refused.
    await rejects(v.verifyCall(bound, read), 'TASKPASS_VERIFY_CNF_REQUIRED');
    await rejects(v.verifySession(bound), 'TASKPASS_VERIFY_CNF_REQUIRED');
    // unbound tokens stay acceptable with or without a certificate unless binding is required
    await v.verifyCall(await mint({ key }), read);
    await v.verifyCall(await mint({ key }), { ...read, clientCertificate: der });
    const strict = make({ requireCertificateBinding: true });
    await rejects(strict.verifyCall(bound, read), 'TASKPASS_VERIFY_CNF_REQUIRED');
    await rejects(
      strict.verifyCall(await mint({ key }), { ...read, clientCertificate: der }),
      'TASKPASS_VERIFY_CNF_REQUIRED',
    );
    await strict.verifyCall(bound, { ...read, clientCertificate: der });
  });
});

describe('verifyToken (before the body), then verifyCall', () => {
  test('the call is still checked in full; the handle works only with its own verifier, and not past exp', async () => {
    let now = Date.now();
    const v = make({ now: () => now });
    const handle = await v.verifyToken(await mint({ key, now, ttl: 60 }));
    await rejects(
      v.verifyCall(handle, { tool: 'get_ticket', args: { ticket_id: 'T-2' } }),
      'TASKPASS_VERIFY_WRONG_RESOURCE',
    );
    assert.equal((await v.verifyCall(handle, read)).resource, 'tickets/T-1');
    await rejects(make().verifyCall(handle, read), 'TASKPASS_VERIFY_INTERNAL');
    await rejects(make().verifyCall({ token: handle.token }, read), 'TASKPASS_VERIFY_INTERNAL');
    now += 70_000; // the body took longer than the token lived
    await rejects(v.verifyCall(handle, read), 'TASKPASS_VERIFY_EXPIRED');
    await rejects(v.verifyToken(await mint({ key: other })), 'TASKPASS_VERIFY_UNKNOWN_KID');
  });
});

describe('verifySession', () => {
  test('accepts a session token and a call token for this server', async () => {
    const v = make();
    const s = await v.verifySession(
      await mint({ key, claims: { authorization_details: [{ type: 'mcp_session' }] } }),
    );
    assert.equal(s.kind, 'session');
    assert.equal(s.tokenType, 'mcp_session');
    const c = await v.verifySession(await mint({ key }));
    assert.equal(c.tokenType, 'mcp_tool_call');
  });

  test('refuses tokens for another server and missing tokens', async () => {
    await rejects(
      make().verifySession(await mint({ key, claims: { aud: 'https://x.test/mcp' } })),
      'TASKPASS_VERIFY_WRONG_AUDIENCE',
    );
    await rejects(make().verifySession(undefined), 'TASKPASS_VERIFY_MISSING_TOKEN');
  });
});

describe('introspection', () => {
  test('for writes: inactive → REVOKED, unreachable → INTROSPECTION_FAILED, reads not introspected', async () => {
    const calls: string[] = [];
    let active = true;
    let up = true;
    const v = make({
      introspect: {
        endpoint: `${ISSUER}/oauth2/introspect`,
        headers: () => ({ authorization: 'Bearer svid' }),
      },
      fetch: async (url, init) => {
        calls.push(`${url} ${init.body}`);
        assert.equal(init.headers?.authorization, 'Bearer svid');
        if (!up) throw new Error('connect ECONNREFUSED');
        return { ok: true, status: 200, json: async () => ({ active }) };
      },
    });
    const call = { tool: 'close_ticket', args: { ticket_id: 'T-1' } };
    await v.verifyCall(await mint({ key, detail: writeDetail, claims: { single_use: true } }), call);
    assert.equal(calls.length, 1);
    assert.match(calls[0]!, /consume=true/);
    active = false;
    await rejects(v.verifyCall(await mint({ key, detail: writeDetail }), call), 'TASKPASS_VERIFY_REVOKED');
    up = false;
    await rejects(
      v.verifyCall(await mint({ key, detail: writeDetail }), call),
      'TASKPASS_VERIFY_INTROSPECTION_FAILED',
    );
    await v.verifyCall(await mint({ key }), read);
    assert.equal(calls.length, 3);
  });
});

describe('remote JWKS', () => {
  let jwks: Awaited<ReturnType<typeof jwksServer>>;
  before(async () => {
    jwks = await jwksServer(jwksOf(key));
  });
  after(() => jwks.close());

  test('refetches on an unknown kid (rotation), at most once per cooldown', async () => {
    const v = createVerifier({
      issuer: ISSUER,
      audience: AUDIENCE,
      jwksUri: jwks.uri,
      tools,
      jwksCache: { cooldownMs: 300 },
    });
    await v.verifyCall(await mint({ key }), read);
    assert.equal(jwks.fetches, 1);
    // rotation: the broker publishes k2; after the cooldown the first k2 token triggers one refetch
    jwks.set(jwksOf(key, other));
    await new Promise((r) => setTimeout(r, 350));
    await v.verifyCall(await mint({ key: other }), read);
    assert.equal(jwks.fetches, 2);
    // an unknown kid inside the cooldown does not refetch
    const third = await newKey('k3');
    await rejects(v.verifyCall(await mint({ key: third }), read), 'TASKPASS_VERIFY_UNKNOWN_KID');
    await rejects(v.verifyCall(await mint({ key: third }), read), 'TASKPASS_VERIFY_UNKNOWN_KID');
    assert.equal(jwks.fetches, 2);
  });

  test('an unreachable JWKS → JWKS_UNAVAILABLE', async () => {
    const v = createVerifier({
      issuer: ISSUER,
      audience: AUDIENCE,
      jwksUri: 'http://127.0.0.1:9/jwks',
      tools,
    });
    await rejects(v.verifyCall(await mint({ key }), read), 'TASKPASS_VERIFY_JWKS_UNAVAILABLE');
  });
});

describe('configuration fails at start-up', () => {
  const bad: [string, Partial<VerifierOptions>][] = [
    ['no JWKS', { jwks: undefined }],
    ['both JWKS sources', { jwksUri: 'https://b.test/jwks' }],
    ['bad audience', { audience: 'not a url' }],
    ['tool without resource', { tools: { t: { action: 'read' } } }],
    ['bad template', { tools: { t: { resource: 'tickets/{ticket id}' } } }],
    ['template with dot segment', { tools: { t: { resource: 'tickets/../{id}' } } }],
    ['bad action', { tools: { t: { resource: 'x', action: 'root' as 'read' } } }],
    ['bad _meta action', { tools: { t: { resource: 'x', _meta: { 'dev.taskpass/action': 'root' } } } }],
    ['negative tolerance', { clockToleranceSec: -1 }],
  ];
  for (const [name, o] of bad) {
    test(name, () => {
      assert.throws(() => make(o), { code: 'TASKPASS_VERIFY_CONFIG_INVALID' });
    });
  }

  test('action defaults: readOnlyHint → read, destructiveHint or nothing → write, admin only when declared', () => {
    const v = make({
      tools: {
        r: { resource: 'x', annotations: { readOnlyHint: true } },
        d: { resource: 'x', annotations: { readOnlyHint: false, destructiveHint: true } },
        n: { resource: 'x' },
        a: { resource: 'x', action: 'admin', annotations: { destructiveHint: true } },
      },
    });
    assert.deepEqual(
      ['r', 'd', 'n', 'a', 'zz'].map((t) => v.actionOf(t)),
      ['read', 'write', 'write', 'admin', undefined],
    );
  });
});
