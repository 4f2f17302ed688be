import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { matchAny, matchId, matchMemberOf, matchOneOf, SpiffeId, TrustDomain } from '../src/id.ts';

const INVALID_ID = { code: 'ERR_SPIFFE_INVALID_ID' };
const INVALID_TD = { code: 'ERR_SPIFFE_INVALID_TRUST_DOMAIN' };

describe('SpiffeId.parse', () => {
  it('accepts a valid ID and splits trust domain and path', () => {
    const id = SpiffeId.parse('spiffe://example.org/ns/prod/sa-1_x.y');
    assert.equal(id.trustDomain.name, 'example.org');
    assert.equal(id.path, '/ns/prod/sa-1_x.y');
    assert.equal(id.toString(), 'spiffe://example.org/ns/prod/sa-1_x.y');
    assert.equal(JSON.stringify({ id }), '{"id":"spiffe://example.org/ns/prod/sa-1_x.y"}');
  });

  it('accepts the trust domain ID itself (empty path)', () => {
    assert.equal(SpiffeId.parse('spiffe://example.org').path, '');
  });

  it('accepts uppercase in path segments', () => {
    assert.equal(SpiffeId.parse('spiffe://example.org/Web/API').path, '/Web/API');
  });

  it('accepts an ID of exactly 2048 bytes and a 255-byte trust domain', () => {
    const td = 'a'.repeat(255);
    const base = `spiffe://${td}/`;
    const id = base + 'b'.repeat(2048 - base.length);
    assert.equal(Buffer.byteLength(id), 2048);
    assert.equal(SpiffeId.parse(id).trustDomain.name, td);
  });

  const rejected: [string, string][] = [
    ['empty string', ''],
    ['wrong scheme', 'https://example.org/web'],
    ['uppercase scheme', 'SPIFFE://example.org/web'],
    ['missing "//"', 'spiffe:example.org/web'],
    ['empty trust domain', 'spiffe:///web'],
    ['uppercase trust domain', 'spiffe://Example.org/web'],
    ['userinfo', 'spiffe://user@example.org/web'],
    ['port', 'spiffe://example.org:8443/web'],
    ['percent-encoded trust domain', 'spiffe://ex%61mple.org/web'],
    ['query', 'spiffe://example.org/web?x=1'],
    ['fragment', 'spiffe://example.org/web#frag'],
    ['percent-encoded path', 'spiffe://example.org/w%65b'],
    ['empty segment', 'spiffe://example.org/a//b'],
    ['trailing slash', 'spiffe://example.org/web/'],
    ['trailing slash on trust domain', 'spiffe://example.org/'],
    ['dot segment', 'spiffe://example.org/a/./b'],
    ['dot-dot segment', 'spiffe://example.org/a/../b'],
    ['space in path', 'spiffe://example.org/a b'],
    ['non-ASCII path', 'spiffe://example.org/café'],
    ['colon in path', 'spiffe://example.org/a:b'],
    ['trust domain longer than 255 bytes', `spiffe://${'a'.repeat(256)}/web`],
    ['ID longer than 2048 bytes', `spiffe://example.org/${'a'.repeat(2048)}`],
  ];
  for (const [name, input] of rejected) {
    it(`rejects ${name}`, () => {
      assert.throws(() => SpiffeId.parse(input), INVALID_ID);
    });
  }
});

describe('SpiffeId.fromSegments', () => {
  const td = TrustDomain.parse('example.org');
  it('joins valid segments', () => {
    assert.equal(SpiffeId.fromSegments(td, 'agents', 'a1').toString(), 'spiffe://example.org/agents/a1');
    assert.equal(SpiffeId.fromSegments(td).toString(), 'spiffe://example.org');
  });
  it('rejects a segment containing "/"', () => {
    assert.throws(() => SpiffeId.fromSegments(td, 'a/b'), INVALID_ID);
  });
  it('rejects an empty segment', () => {
    assert.throws(() => SpiffeId.fromSegments(td, 'a', ''), INVALID_ID);
  });
  it('rejects a ".." segment', () => {
    assert.throws(() => SpiffeId.fromSegments(td, '..'), INVALID_ID);
  });
  it('rejects a segment with a forbidden character', () => {
    assert.throws(() => SpiffeId.fromSegments(td, 'a%2F'), INVALID_ID);
  });
});

describe('TrustDomain', () => {
  it('parses a bare name and the trust domain ID', () => {
    assert.equal(TrustDomain.parse('example.org').name, 'example.org');
    assert.equal(TrustDomain.parse('spiffe://example.org').name, 'example.org');
    assert.equal(TrustDomain.parse('example.org').idString(), 'spiffe://example.org');
    assert.equal(String(TrustDomain.parse('example.org')), 'example.org');
  });
  it('equals compares names', () => {
    assert.ok(TrustDomain.parse('example.org').equals(TrustDomain.parse('spiffe://example.org')));
    assert.ok(!TrustDomain.parse('example.org').equals(TrustDomain.parse('example.com')));
  });
  const rejected: [string, string][] = [
    ['empty name', ''],
    ['uppercase name', 'Example.org'],
    ['name with port', 'example.org:443'],
    ['name with userinfo', 'u@example.org'],
    ['name with slash', 'example.org/x'],
    ['percent-encoded name', 'ex%61mple.org'],
    ['name longer than 255 bytes', 'a'.repeat(256)],
    ['SPIFFE ID with a path', 'spiffe://example.org/web'],
    ['non-spiffe URI', 'https://example.org'],
    ['uppercase trust domain ID', 'spiffe://EXAMPLE.org'],
  ];
  for (const [name, input] of rejected) {
    it(`parse rejects ${name}`, () => {
      assert.throws(() => TrustDomain.parse(input), INVALID_TD);
    });
  }
  it('fromIdOrName takes the trust domain of an ID with a path', () => {
    assert.equal(TrustDomain.fromIdOrName('spiffe://example.org/web/x').name, 'example.org');
    assert.equal(TrustDomain.fromIdOrName('example.org').name, 'example.org');
  });
  it('fromIdOrName rejects an invalid ID', () => {
    assert.throws(() => TrustDomain.fromIdOrName('spiffe://example.org/a//b'), INVALID_TD);
  });
  it('memberOf checks the trust domain', () => {
    const id = SpiffeId.parse('spiffe://example.org/web');
    assert.ok(id.memberOf(TrustDomain.parse('example.org')));
    assert.ok(!id.memberOf(TrustDomain.parse('example.org.evil')));
  });
});

describe('matchers', () => {
  const web = SpiffeId.parse('spiffe://example.org/web');
  const db = SpiffeId.parse('spiffe://example.org/db');
  const foreign = SpiffeId.parse('spiffe://partner.org/web');
  it('matchAny matches everything', () => {
    assert.ok(matchAny()(foreign));
  });
  it('matchId matches only the exact ID', () => {
    const m = matchId('spiffe://example.org/web');
    assert.ok(m(web));
    assert.ok(!m(db));
    assert.ok(!m(foreign));
    assert.ok(!m(SpiffeId.parse('spiffe://example.org/web/sub')));
  });
  it('matchId rejects an invalid ID at creation', () => {
    assert.throws(() => matchId('spiffe://example.org/web/'), INVALID_ID);
  });
  it('matchOneOf matches any listed ID', () => {
    const m = matchOneOf(web, 'spiffe://example.org/db');
    assert.ok(m(web));
    assert.ok(m(db));
    assert.ok(!m(foreign));
  });
  it('matchMemberOf matches by trust domain', () => {
    const m = matchMemberOf('example.org');
    assert.ok(m(web));
    assert.ok(m(db));
    assert.ok(!m(foreign));
    assert.ok(matchMemberOf(TrustDomain.parse('partner.org'))(foreign));
  });
});
