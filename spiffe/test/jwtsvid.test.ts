import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { describe, it } from 'node:test';
import { JwtBundle, JwtBundleSet } from '../src/bundle/index.ts';
import { parseAndValidateJwtSvid, parseInsecureJwtSvid } from '../src/svid/index.ts';
import { TestCa } from '../src/testing/ca.ts';

const INVALID = { code: 'ERR_SPIFFE_INVALID_JWT_SVID' };
const VERIFY_FAILED = { code: 'ERR_SPIFFE_JWT_VERIFY_FAILED' };
const EXPIRED = { code: 'ERR_SPIFFE_JWT_EXPIRED' };
const AUDIENCE = { code: 'ERR_SPIFFE_JWT_AUDIENCE' };
const NO_BUNDLE = { code: 'ERR_SPIFFE_NO_BUNDLE' };

const ca = await TestCa.create('example.org');
const partner = await TestCa.create('partner.org');
const bundles = new JwtBundleSet([
  JwtBundle.fromJwks(ca.trustDomain, ca.jwtBundleJwks()),
  JwtBundle.fromJwks(partner.trustDomain, partner.jwtBundleJwks()),
]);
const SUB = 'spiffe://example.org/agents/a1';
const AUD = 'https://broker.example.org';

function validate(token: string, audience: string | string[] = AUD, opts = {}) {
  return parseAndValidateJwtSvid(token, bundles, audience, opts);
}

describe('parseAndValidateJwtSvid', () => {
  it('accepts a valid ES256 JWT-SVID', async () => {
    const svid = await validate(ca.createJwtSvid(SUB, AUD));
    assert.equal(svid.id.toString(), SUB);
    assert.deepEqual(svid.audience, [AUD]);
    assert.equal(svid.claims.sub, SUB);
    assert.ok(svid.expiresAt.getTime() > Date.now());
  });

  for (const alg of ['ES384', 'ES512', 'RS256', 'RS384', 'RS512', 'PS256', 'PS384', 'PS512'] as const) {
    it(`accepts ${alg}`, async () => {
      const other = await TestCa.create('algs.example');
      const kid = other.addJwtKey(alg);
      const set = new JwtBundleSet([JwtBundle.fromJwks(other.trustDomain, other.jwtBundleJwks())]);
      const token = other.createJwtSvid('spiffe://algs.example/w', AUD, { kid });
      assert.equal((await parseAndValidateJwtSvid(token, set, AUD)).id.toString(), 'spiffe://algs.example/w');
    });
  }

  it('accepts typ JOSE and a missing typ', async () => {
    await validate(ca.createJwtSvid(SUB, AUD, { typ: 'JOSE' }));
    await validate(ca.createJwtSvid(SUB, AUD, { typ: null }));
  });

  it('accepts when aud is a list containing the expected audience', async () => {
    const svid = await validate(ca.createJwtSvid(SUB, ['other', AUD]));
    assert.deepEqual(svid.audience, ['other', AUD]);
  });

  it('accepts when any of several expected audiences is present', async () => {
    await validate(ca.createJwtSvid(SUB, AUD), ['https://old.example.org', AUD]);
  });

  it('rejects alg none', async () => {
    await assert.rejects(validate(ca.createJwtSvid(SUB, AUD, { alg: 'none' })), INVALID);
  });

  it('rejects HS256 keyed with the public key (algorithm confusion)', async () => {
    await assert.rejects(validate(ca.createJwtSvid(SUB, AUD, { alg: 'HS256' })), INVALID);
  });

  it('rejects EdDSA', async () => {
    await assert.rejects(validate(ca.createJwtSvid(SUB, AUD, { alg: 'EdDSA' })), INVALID);
  });

  it('rejects an allowed alg that does not match the key (RS256 header on an EC key)', async () => {
    await assert.rejects(validate(ca.createJwtSvid(SUB, AUD, { alg: 'RS256' })), VERIFY_FAILED);
  });

  it('rejects typ at+jwt', async () => {
    await assert.rejects(validate(ca.createJwtSvid(SUB, AUD, { typ: 'at+jwt' })), INVALID);
  });

  it('rejects a token without kid', async () => {
    await assert.rejects(validate(ca.createJwtSvid(SUB, AUD, { omitKid: true })), INVALID);
  });

  it('rejects a kid that is not in the bundle', async () => {
    await assert.rejects(validate(ca.createJwtSvid(SUB, AUD, { headerKid: 'unknown' })), VERIFY_FAILED);
  });

  it("looks the kid up only in the bundle of sub's trust domain", async () => {
    // Signed by partner.org's key and naming partner's kid, but claiming an example.org identity.
    const token = partner.createJwtSvid(SUB, AUD);
    await assert.rejects(validate(token), VERIFY_FAILED);
  });

  it("rejects a token signed by another key under a kid of sub's trust domain", async () => {
    const token = partner.createJwtSvid(SUB, AUD, { headerKid: ca.jwtKid });
    await assert.rejects(validate(token), VERIFY_FAILED);
  });

  it('rejects a tampered payload', async () => {
    const [h, , s] = ca.createJwtSvid(SUB, AUD).split('.');
    const forged = Buffer.from(
      JSON.stringify({ sub: 'spiffe://example.org/admin', aud: AUD, exp: 9e9 }),
    ).toString('base64url');
    await assert.rejects(validate(`${h}.${forged}.${s}`), VERIFY_FAILED);
  });

  it('rejects a token after its key left the bundle', async () => {
    const rotating = await TestCa.create('rot.example');
    const old = rotating.jwtKid;
    const token = rotating.createJwtSvid('spiffe://rot.example/w', AUD);
    rotating.addJwtKey();
    rotating.removeJwtKeyFromBundle(old);
    const set = new JwtBundleSet([rotating.jwtBundle()]);
    await assert.rejects(parseAndValidateJwtSvid(token, set, AUD), VERIFY_FAILED);
  });

  it('never follows jku: the key still comes from the bundle', async () => {
    const token = partner.createJwtSvid(SUB, AUD, { header: { jku: 'http://127.0.0.1:1/jwks.json' } });
    await assert.rejects(validate(token), VERIFY_FAILED);
    await validate(ca.createJwtSvid(SUB, AUD, { header: { jku: 'http://127.0.0.1:1/jwks.json' } }));
  });

  it('rejects a token for a trust domain without a bundle', async () => {
    const stranger = await TestCa.create('stranger.org');
    await assert.rejects(validate(stranger.createJwtSvid('spiffe://stranger.org/x', AUD)), NO_BUNDLE);
  });

  it('rejects a missing sub', async () => {
    await assert.rejects(validate(ca.createJwtSvid(SUB, AUD, { omitSub: true })), INVALID);
  });

  it('rejects a sub that is not a SPIFFE ID', async () => {
    await assert.rejects(validate(ca.createJwtSvid('user@example.org', AUD)), INVALID);
    await assert.rejects(validate(ca.createJwtSvid('spiffe://Example.org/a1', AUD)), INVALID);
  });

  it('rejects a missing aud', async () => {
    await assert.rejects(validate(ca.createJwtSvid(SUB, AUD, { omitAud: true })), INVALID);
  });

  it('rejects an empty aud list', async () => {
    await assert.rejects(validate(ca.createJwtSvid(SUB, [])), INVALID);
  });

  it('rejects a wrong audience', async () => {
    await assert.rejects(validate(ca.createJwtSvid(SUB, 'https://other.example.org')), AUDIENCE);
  });

  it('rejects an empty expected audience (would accept any)', async () => {
    await assert.rejects(validate(ca.createJwtSvid(SUB, AUD), []), AUDIENCE);
    await assert.rejects(validate(ca.createJwtSvid(SUB, AUD), ''), AUDIENCE);
  });

  it('rejects a missing exp', async () => {
    await assert.rejects(validate(ca.createJwtSvid(SUB, AUD, { omitExp: true })), INVALID);
  });

  it('rejects a non-numeric exp', async () => {
    await assert.rejects(validate(ca.createJwtSvid(SUB, AUD, { claims: { exp: '9999999999' } })), INVALID);
  });

  it('rejects a token expired beyond the 60s leeway', async () => {
    const token = ca.createJwtSvid(SUB, AUD, { now: new Date(Date.now() - 400_000), ttlSec: 300 });
    await assert.rejects(validate(token), EXPIRED);
  });

  it('accepts a token expired within the 60s leeway, and not with leeway 0', async () => {
    const token = ca.createJwtSvid(SUB, AUD, { now: new Date(Date.now() - 330_000), ttlSec: 300 });
    await validate(token);
    await assert.rejects(validate(token, AUD, { clockToleranceSec: 0 }), EXPIRED);
  });

  it('uses opts.now', async () => {
    const token = ca.createJwtSvid(SUB, AUD);
    await assert.rejects(validate(token, AUD, { now: new Date(Date.now() + 3_600_000) }), EXPIRED);
  });

  it('rejects an nbf in the future beyond the leeway', async () => {
    const nbf = Math.floor(Date.now() / 1000) + 600;
    await assert.rejects(validate(ca.createJwtSvid(SUB, AUD, { claims: { nbf } })), INVALID);
  });

  it('rejects a token that is not a compact JWS', async () => {
    await assert.rejects(validate('abc'), INVALID);
    await assert.rejects(validate('a.b.c'), INVALID);
    const [h, p] = ca.createJwtSvid(SUB, AUD).split('.');
    await assert.rejects(validate(`${h}.${p}`), INVALID);
  });

  it('never exposes the token through JSON, toString or inspect', async () => {
    const token = ca.createJwtSvid(SUB, AUD);
    const svid = await validate(token);
    assert.equal(svid.token, token);
    const sig = token.split('.')[2]!;
    for (const out of [
      JSON.stringify({ svid }),
      String(svid),
      inspect(svid, { showHidden: true }),
      inspect({ svid }),
    ]) {
      assert.ok(!out.includes(sig), out);
      assert.ok(out.includes(SUB), out);
    }
    assert.ok(!('token' in { ...svid }));
  });
});

describe('parseInsecureJwtSvid', () => {
  it('parses without a bundle and keeps the hint', () => {
    const token = ca.createJwtSvid(SUB, AUD);
    const svid = parseInsecureJwtSvid(token, AUD, { hint: 'primary' });
    assert.equal(svid.id.toString(), SUB);
    assert.equal(svid.hint, 'primary');
    assert.equal(svid.token, token);
  });

  it('does not require kid (the Workload API vouches for the token)', () => {
    assert.equal(parseInsecureJwtSvid(ca.createJwtSvid(SUB, AUD, { omitKid: true }), AUD).id.toString(), SUB);
  });

  it('still rejects a disallowed alg', () => {
    assert.throws(() => parseInsecureJwtSvid(ca.createJwtSvid(SUB, AUD, { alg: 'none' }), AUD), INVALID);
  });

  it('still rejects a wrong audience', () => {
    assert.throws(() => parseInsecureJwtSvid(ca.createJwtSvid(SUB, 'other'), AUD), AUDIENCE);
  });

  it('still rejects an expired token', () => {
    const token = ca.createJwtSvid(SUB, AUD, { now: new Date(Date.now() - 600_000), ttlSec: 60 });
    assert.throws(() => parseInsecureJwtSvid(token, AUD), EXPIRED);
  });

  it('still rejects a missing exp', () => {
    assert.throws(() => parseInsecureJwtSvid(ca.createJwtSvid(SUB, AUD, { omitExp: true }), AUD), INVALID);
  });
});
