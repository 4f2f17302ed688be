import assert from 'node:assert/strict';
import { generateKeyPairSync } from 'node:crypto';
import { describe, it } from 'node:test';
import { JwtBundle, JwtBundleSet, SpiffeBundle, X509Bundle, X509BundleSet } from '../src/bundle/index.ts';
import { TrustDomain } from '../src/id.ts';
import { TestCa } from '../src/testing/ca.ts';

const INVALID_BUNDLE = { code: 'ERR_SPIFFE_INVALID_BUNDLE' };
const td = TrustDomain.parse('example.org');
const ca = await TestCa.create(td);
const ca2 = await TestCa.create(td);

function ecJwk(extra: Record<string, unknown> = {}): Record<string, unknown> {
  const { publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  return { ...publicKey.export({ format: 'jwk' }), ...extra };
}

describe('X509Bundle', () => {
  it('fromDer reads every certificate of concatenated DER', () => {
    const der = Buffer.concat([ca.x509BundleDer(), ca2.x509BundleDer()]);
    const b = X509Bundle.fromDer(td, der);
    assert.equal(b.authorities.length, 2);
    assert.ok(b.hasAuthority(ca.certificate));
    assert.ok(b.hasAuthority(ca2.certificate));
    assert.deepEqual(Buffer.from(b.toDer()), der);
  });

  it('fromDer of empty bytes is an empty bundle', () => {
    assert.equal(X509Bundle.fromDer(td, new Uint8Array()).authorities.length, 0);
  });

  it('fromDer rejects truncated DER', () => {
    const der = ca.x509BundleDer();
    assert.throws(() => X509Bundle.fromDer(td, der.subarray(0, der.length - 1)), INVALID_BUNDLE);
  });

  it('fromDer rejects a SEQUENCE that is not a certificate', () => {
    assert.throws(
      () => X509Bundle.fromDer(td, Uint8Array.from([0x30, 0x03, 0x02, 0x01, 0x00])),
      INVALID_BUNDLE,
    );
  });

  it('fromPem reads every CERTIFICATE block and ignores others', () => {
    const pem = `junk\n${ca.certificate.toString()}-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n${ca2.certificate.toString()}`;
    const b = X509Bundle.fromPem(td, pem);
    assert.equal(b.authorities.length, 2);
    assert.equal(X509Bundle.fromPem(td, b.toPem()).authorities.length, 2);
  });

  it('fromPem rejects input without certificates', () => {
    assert.throws(() => X509Bundle.fromPem(td, 'nothing here'), INVALID_BUNDLE);
  });

  it('is a source for its own trust domain only', () => {
    const b = ca.x509Bundle();
    assert.equal(b.getX509BundleForTrustDomain(td), b);
    assert.equal(b.getX509BundleForTrustDomain(TrustDomain.parse('other.org')), undefined);
  });
});

describe('X509BundleSet', () => {
  it('adds, replaces, looks up and removes by trust domain', () => {
    const other = TrustDomain.parse('partner.org');
    const set = new X509BundleSet([ca.x509Bundle(), new X509Bundle(other)]);
    assert.equal(set.size, 2);
    assert.equal(
      set.getX509BundleForTrustDomain(TrustDomain.parse('spiffe://example.org'))?.authorities.length,
      1,
    );
    set.add(new X509Bundle(td, [ca.certificate, ca2.certificate]));
    assert.equal(set.size, 2);
    assert.equal(set.get(td)?.authorities.length, 2);
    assert.ok(set.remove(other));
    assert.equal(set.getX509BundleForTrustDomain(other), undefined);
    assert.deepEqual(
      [...set].map((b) => b.trustDomain.name),
      ['example.org'],
    );
  });
});

describe('JwtBundle.fromJwks', () => {
  it('accepts the standard JWKS the Workload API returns (no use)', () => {
    const jwks = ca.jwtBundleJwks();
    assert.ok(jwks.keys.every((k) => !('use' in k)));
    const b = JwtBundle.fromJwks(td, JSON.stringify(jwks));
    assert.equal(b.keys.size, 1);
    assert.ok(b.findJwtAuthority(ca.jwtKid));
  });

  it('accepts JWKS as bytes and as an object', () => {
    assert.equal(JwtBundle.fromJwks(td, Buffer.from(JSON.stringify(ca.jwtBundleJwks()))).keys.size, 1);
    assert.equal(JwtBundle.fromJwks(td, ca.jwtBundleJwks()).keys.size, 1);
  });

  it('accepts SPIFFE-format keys (use: jwt-svid) and skips x509-svid keys', () => {
    const b = JwtBundle.fromJwks(td, ca.spiffeBundle());
    assert.deepEqual([...b.keys.keys()], [ca.jwtKid]);
  });

  it('accepts RSA keys', () => {
    const { publicKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
    const b = JwtBundle.fromJwks(td, { keys: [{ ...publicKey.export({ format: 'jwk' }), kid: 'r1' }] });
    assert.equal(b.findJwtAuthority('r1')?.asymmetricKeyType, 'rsa');
  });

  it('rejects a JWT key without kid', () => {
    assert.throws(() => JwtBundle.fromJwks(td, { keys: [ecJwk()] }), INVALID_BUNDLE);
  });

  it('rejects a jwt-svid key without kid', () => {
    assert.throws(() => JwtBundle.fromJwks(td, { keys: [ecJwk({ use: 'jwt-svid' })] }), INVALID_BUNDLE);
  });

  it('rejects a repeated kid', () => {
    assert.throws(
      () => JwtBundle.fromJwks(td, { keys: [ecJwk({ kid: 'a' }), ecJwk({ kid: 'a' })] }),
      INVALID_BUNDLE,
    );
  });

  it('ignores keys with an unknown use', () => {
    const b = JwtBundle.fromJwks(td, {
      keys: [ecJwk({ kid: 'a', use: 'enc' }), ecJwk({ kid: 'b', use: 'wit-svid' })],
    });
    assert.equal(b.keys.size, 0);
  });

  it('ignores keys with an unknown kty', () => {
    const b = JwtBundle.fromJwks(td, {
      keys: [
        { kty: 'OKP', crv: 'Ed25519', x: 'AAAA', kid: 'ed' },
        { kty: 'oct', k: 'AAAA', kid: 'h' },
        ecJwk({ kid: 'e' }),
      ],
    });
    assert.deepEqual([...b.keys.keys()], ['e']);
  });

  it('rejects a known key type with broken key material', () => {
    assert.throws(
      () => JwtBundle.fromJwks(td, { keys: [{ kty: 'EC', crv: 'P-256', x: 'AA', y: 'AA', kid: 'x' }] }),
      INVALID_BUNDLE,
    );
  });

  it('imports only the public part of a JWK that carries a private key', () => {
    const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
    const b = JwtBundle.fromJwks(td, { keys: [{ ...privateKey.export({ format: 'jwk' }), kid: 'p' }] });
    assert.equal(b.findJwtAuthority('p')?.type, 'public');
  });

  it('rejects invalid JSON', () => {
    assert.throws(() => JwtBundle.fromJwks(td, '{not json'), INVALID_BUNDLE);
  });

  it('rejects a document without a keys array', () => {
    assert.throws(() => JwtBundle.fromJwks(td, { keys: 'x' }), INVALID_BUNDLE);
    assert.throws(() => JwtBundle.fromJwks(td, '[]'), INVALID_BUNDLE);
  });

  it('round-trips through toJwks', () => {
    const b = JwtBundle.fromJwks(td, ca.jwtBundleJwks());
    const again = JwtBundle.fromJwks(td, b.toJwks());
    assert.ok(again.findJwtAuthority(ca.jwtKid)?.equals(b.findJwtAuthority(ca.jwtKid)!));
  });
});

describe('JwtBundleSet', () => {
  it('looks up by trust domain', () => {
    const set = new JwtBundleSet([ca.jwtBundle()]);
    assert.equal(set.size, 1);
    assert.ok(set.getJwtBundleForTrustDomain(td));
    assert.equal(set.getJwtBundleForTrustDomain(TrustDomain.parse('partner.org')), undefined);
    assert.ok(set.has(td));
    set.remove(td);
    assert.equal(set.size, 0);
  });
});

describe('SpiffeBundle', () => {
  it('parses both kinds of authorities, sequence and refresh hint', () => {
    const doc = ca.spiffeBundle({ sequenceNumber: 7, refreshHintSec: 300 });
    assert.deepEqual(
      doc.keys.map((k) => k.use),
      ['x509-svid', 'jwt-svid'],
    );
    assert.equal(doc.keys[0]!.kid, undefined);
    assert.equal(doc.keys[0]!.x5c?.length, 1);
    const b = SpiffeBundle.parse(td, JSON.stringify(doc));
    assert.equal(b.sequenceNumber, 7);
    assert.equal(b.refreshHintSec, 300);
    assert.ok(b.x509Bundle.hasAuthority(ca.certificate));
    assert.ok(b.jwtBundle.findJwtAuthority(ca.jwtKid));
  });

  it('round-trips through marshal', () => {
    const b = SpiffeBundle.parse(td, ca.spiffeBundle({ sequenceNumber: 1 }));
    const again = SpiffeBundle.parse(td, b.marshal());
    assert.ok(again.x509Bundle.equals(b.x509Bundle));
    assert.equal(again.jwtBundle.keys.size, 1);
    assert.equal(again.sequenceNumber, 1);
  });

  it('accepts empty keys (the trust domain is untrusted)', () => {
    const b = SpiffeBundle.parse(td, '{"keys":[]}');
    assert.equal(b.x509Bundle.authorities.length, 0);
    assert.equal(b.jwtBundle.keys.size, 0);
  });

  it('ignores keys with an unknown or missing use', () => {
    const b = SpiffeBundle.parse(td, { keys: [ecJwk({ kid: 'a' }), ecJwk({ kid: 'b', use: 'sig' })] });
    assert.equal(b.jwtBundle.keys.size, 0);
  });

  it('rejects an x509-svid key with two certificates in x5c', () => {
    const doc = ca.spiffeBundle();
    doc.keys[0]!.x5c = [ca.certificate.raw.toString('base64'), ca2.certificate.raw.toString('base64')];
    assert.throws(() => SpiffeBundle.parse(td, doc), INVALID_BUNDLE);
  });

  it('rejects an x509-svid key whose x5c entry holds two concatenated certificates', () => {
    const doc = ca.spiffeBundle();
    doc.keys[0]!.x5c = [Buffer.concat([ca.certificate.raw, ca2.certificate.raw]).toString('base64')];
    assert.throws(() => SpiffeBundle.parse(td, doc), INVALID_BUNDLE);
  });

  it('rejects an x509-svid key without x5c', () => {
    const doc = ca.spiffeBundle();
    delete doc.keys[0]!.x5c;
    assert.throws(() => SpiffeBundle.parse(td, doc), INVALID_BUNDLE);
  });

  it('rejects a jwt-svid key without kid', () => {
    const doc = ca.spiffeBundle();
    delete doc.keys[1]!.kid;
    assert.throws(() => SpiffeBundle.parse(td, doc), INVALID_BUNDLE);
  });

  it('rejects a non-integer spiffe_sequence', () => {
    assert.throws(() => SpiffeBundle.parse(td, { keys: [], spiffe_sequence: '1' }), INVALID_BUNDLE);
    assert.throws(() => SpiffeBundle.parse(td, { keys: [], spiffe_refresh_hint: -1 }), INVALID_BUNDLE);
  });
});
