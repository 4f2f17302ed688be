import assert from 'node:assert/strict';
import { generateKeyPairSync, sign } from 'node:crypto';
import { test } from 'node:test';
import { createLocalJWKSet, decodeProtectedHeader, exportJWK, generateKeyPair, jwtVerify } from 'jose';
import { mintToken, newJti, prepareToken } from '../src/mint.ts';

const base = {
  issuer: 'https://broker.test',
  kid: 'k1',
  sub: 'alice',
  agent: 'spiffe://td/agents/a',
  audience: 'https://mcp.test/mcp',
  iat: 1_700_000_000,
  exp: 1_700_000_060,
  taskId: 'tsk_1',
  detail: { type: 'mcp_tool_call', tool: 'get_ticket', resource: 'tickets/1', action: 'read' } as const,
  singleUse: false,
  template: 'tpl-a',
};

test('mintToken produces an ES256 at+jwt that jose verifies, with every claim', async () => {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256' };
  const { token, jti } = mintToken({ ...base, privateKey, x5tS256: 'abc', singleUse: true });
  assert.deepEqual(decodeProtectedHeader(token), { alg: 'ES256', typ: 'at+jwt', kid: 'k1' });
  const { payload } = await jwtVerify(token, createLocalJWKSet({ keys: [jwk] }), {
    issuer: base.issuer,
    audience: base.audience,
    typ: 'at+jwt',
    algorithms: ['ES256'],
    currentDate: new Date((base.iat + 1) * 1000),
  });
  assert.deepEqual(payload, {
    iss: base.issuer,
    sub: 'alice',
    act: { sub: base.agent },
    client_id: base.agent,
    aud: base.audience,
    iat: base.iat,
    exp: base.exp,
    jti,
    txn: 'tsk_1',
    authorization_details: [base.detail],
    cnf: { 'x5t#S256': 'abc' },
    single_use: true,
    tpl: 'tpl-a',
  });
  assert.match(jti, /^[A-Za-z0-9_-]{22}$/);
});

test('mintToken accepts a WebCrypto key, omits cnf/single_use when not set, and nests act', async () => {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const { token } = mintToken({ ...base, privateKey, priorAct: { sub: 'spiffe://td/agents/parent' } });
  const { payload } = await jwtVerify(token, publicKey, { currentDate: new Date((base.iat + 1) * 1000) });
  assert.equal(payload.cnf, undefined);
  assert.equal(payload.single_use, undefined);
  assert.deepEqual(payload.act, { sub: base.agent, act: { sub: 'spiffe://td/agents/parent' } });
});

test('mintToken refuses exp <= iat and unique jtis', () => {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  assert.throws(() => mintToken({ ...base, privateKey, exp: base.iat }));
  const a = mintToken({ ...base, privateKey }).jti;
  const b = mintToken({ ...base, privateKey }).jti;
  assert.notEqual(a, b);
});

test('jtis are 128 random bits, never repeated across refills of their pool', () => {
  const seen = new Set<string>();
  const bytes = new Set<number>();
  // 4 000 ids: the pool (256 ids) is refilled 15 times.
  for (let i = 0; i < 4000; i++) {
    const jti = newJti();
    assert.match(jti, /^[A-Za-z0-9_-]{22}$/);
    const raw = Buffer.from(jti, 'base64url');
    assert.equal(raw.length, 16);
    for (const b of raw) bytes.add(b);
    assert.ok(!seen.has(jti), `jti ${jti} repeated after ${i} ids`);
    seen.add(jti);
  }
  // 64 000 random bytes take every value (a pool served without refilling would not).
  assert.equal(bytes.size, 256);
});

test('tokens signed by different keys carry their own kid', () => {
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  for (const kid of ['k1', 'k2', 'k1']) {
    const { token } = mintToken({ ...base, kid, privateKey });
    assert.equal(decodeProtectedHeader(token).kid, kid);
    assert.equal(decodeProtectedHeader(token).typ, 'at+jwt');
  }
});

test('prepareToken: the id and claims first, the signatures of a turn together at its end', async () => {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const order: string[] = [];
  // What the store does: its batch is queued for the end of the turn before the tokens are signed.
  setImmediate(() => order.push('store batch sent'));
  const prepared = ['t/1', 't/2', 't/3'].map((resource) =>
    prepareToken({ kid: 'k1', privateKey }, { ...base, detail: { ...base.detail, resource } }),
  );
  const signing = prepared.map(async (p) => {
    const t = await p.sign();
    order.push(`signed ${p.jti}`);
    return t;
  });
  await Promise.resolve();
  assert.deepEqual(order, [], 'nothing is signed within the turn');
  const tokens = await Promise.all(signing);
  assert.deepEqual(order, ['store batch sent', ...prepared.map((p) => `signed ${p.jti}`)]);
  for (const [i, token] of tokens.entries()) {
    const { payload } = await jwtVerify(token, publicKey, {
      typ: 'at+jwt',
      algorithms: ['ES256'],
      currentDate: new Date((base.iat + 1) * 1000),
    });
    assert.deepEqual(payload, prepared[i]!.claims);
    assert.equal(payload.jti, prepared[i]!.jti);
  }
});

test('prepareToken: a remote signer signs the same input; a key that cannot sign fails its token alone', async () => {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const inputs: string[] = [];
  const remote = {
    kid: 'k1',
    sign: async (input: Buffer) => {
      inputs.push(input.toString());
      return sign('sha256', input, { key: privateKey, dsaEncoding: 'ieee-p1363' });
    },
  };
  const token = await prepareToken(remote, base).sign();
  assert.equal(inputs.length, 1);
  assert.equal(token.slice(0, token.lastIndexOf('.')), inputs[0]);
  await jwtVerify(token, publicKey, { currentDate: new Date((base.iat + 1) * 1000) });

  const ed = generateKeyPairSync('ed25519').privateKey;
  const bad = prepareToken({ kid: 'k2', privateKey: ed }, base).sign();
  const good = prepareToken({ kid: 'k1', privateKey }, base).sign();
  await assert.rejects(bad);
  await jwtVerify(await good, publicKey, { currentDate: new Date((base.iat + 1) * 1000) });
});
