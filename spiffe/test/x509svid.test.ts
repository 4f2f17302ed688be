import assert from 'node:assert/strict';
import { inspect } from 'node:util';
import { describe, it } from 'node:test';
import { X509Bundle, X509BundleSet } from '../src/bundle/index.ts';
import { SpiffeId, TrustDomain } from '../src/id.ts';
import { verifyX509Svid, X509Svid } from '../src/svid/index.ts';
import { type BadX509SvidKind, TestCa } from '../src/testing/ca.ts';

const INVALID = { code: 'ERR_SPIFFE_INVALID_X509_SVID' };
const VERIFY_FAILED = { code: 'ERR_SPIFFE_X509_VERIFY_FAILED' };
const NO_BUNDLE = { code: 'ERR_SPIFFE_NO_BUNDLE' };

const ca = await TestCa.create('example.org');
const partner = await TestCa.create('partner.org');
const bundles = new X509BundleSet([ca.x509Bundle(), partner.x509Bundle()]);
const WEB = 'spiffe://example.org/web';

describe('X509Svid.parseDer', () => {
  it('parses a leaf-only SVID', async () => {
    const s = await ca.createX509Svid(WEB, { hint: 'internal' });
    const svid = X509Svid.parseDer(s.certsDer, s.keyDer, { hint: 'internal', expectedId: WEB });
    assert.equal(svid.id.toString(), WEB);
    assert.equal(svid.hint, 'internal');
    assert.equal(svid.certificates.length, 1);
    assert.equal(svid.privateKey.type, 'private');
    assert.equal(svid.expiresAt.getTime(), new Date(s.certificates[0]!.validTo).getTime());
    assert.match(svid.certChainPem(), /^-----BEGIN CERTIFICATE-----/);
    assert.match(svid.privateKeyPem(), /^-----BEGIN PRIVATE KEY-----/);
    assert.deepEqual(svid.certChainDer(), Buffer.from(s.certsDer));
  });

  it('parses every certificate of a concatenated chain (leaf first)', async () => {
    const inter = await (await ca.createChildCa()).createChildCa();
    const s = await inter.createX509Svid(WEB);
    const svid = X509Svid.parseDer(s.certsDer, s.keyDer);
    assert.equal(svid.certificates.length, 3);
    assert.equal(svid.certificates[1]!.subject, inter.certificate.subject);
  });

  it('parsePem reads the PEM forms', async () => {
    const svid = (await ca.createX509Svid(WEB)).toX509Svid();
    const again = X509Svid.parsePem(svid.certChainPem(), svid.privateKeyPem());
    assert.ok(again.id.equals(svid.id));
  });

  it('an empty hint means no hint', async () => {
    const s = await ca.createX509Svid(WEB);
    assert.equal(X509Svid.parseDer(s.certsDer, s.keyDer, { hint: '' }).hint, undefined);
  });

  const bad: [BadX509SvidKind, string][] = [
    ['two-uri-sans', 'rejects a leaf with two URI SANs'],
    ['no-uri-san', 'rejects a leaf without a URI SAN'],
    ['non-spiffe-uri-san', 'rejects a leaf whose URI SAN is not a SPIFFE ID'],
    ['ca-leaf', 'rejects a leaf with cA=true'],
    ['key-cert-sign-leaf', 'rejects a leaf with keyCertSign'],
    ['crl-sign-leaf', 'rejects a leaf with cRLSign'],
    ['no-digital-signature', 'rejects a leaf without digitalSignature'],
    ['no-key-usage', 'rejects a leaf without a KeyUsage extension'],
    ['key-mismatch', 'rejects a private key that does not match the leaf'],
  ];
  for (const [kind, name] of bad) {
    it(name, async () => {
      const s = await ca.createBadX509Svid(kind);
      assert.throws(() => X509Svid.parseDer(s.certsDer, s.keyDer), INVALID);
    });
  }

  it('rejects a leaf whose SPIFFE ID is the trust domain itself', async () => {
    const s = await ca.createX509Svid('spiffe://example.org');
    assert.throws(() => X509Svid.parseDer(s.certsDer, s.keyDer), INVALID);
  });

  it('rejects a spiffe_id field that differs from the URI SAN', async () => {
    const s = await ca.createX509Svid(WEB);
    assert.throws(
      () => X509Svid.parseDer(s.certsDer, s.keyDer, { expectedId: 'spiffe://example.org/other' }),
      INVALID,
    );
    assert.throws(() => X509Svid.parseDer(s.certsDer, s.keyDer, { expectedId: 'not an id' }), INVALID);
  });

  it('rejects a signing certificate that is not a CA', async () => {
    const notCa = await ca.createChildCa({ isCA: false });
    const s = await notCa.createX509Svid(WEB);
    assert.throws(() => X509Svid.parseDer(s.certsDer, s.keyDer), INVALID);
  });

  it('rejects a signing certificate without keyCertSign', async () => {
    const noSign = await ca.createChildCa({ keyCertSign: false });
    const s = await noSign.createX509Svid(WEB);
    assert.throws(() => X509Svid.parseDer(s.certsDer, s.keyDer), INVALID);
  });

  it('rejects a key that is not PKCS#8 DER', async () => {
    const s = await ca.createX509Svid(WEB);
    assert.throws(() => X509Svid.parseDer(s.certsDer, Buffer.from('not a key')), INVALID);
  });

  it('rejects an empty certificate chain', async () => {
    const s = await ca.createX509Svid(WEB);
    assert.throws(() => X509Svid.parseDer(new Uint8Array(), s.keyDer), INVALID);
  });

  it('rejects a truncated certificate chain', async () => {
    const s = await ca.createX509Svid(WEB);
    assert.throws(() => X509Svid.parseDer(s.certsDer.subarray(0, s.certsDer.length - 3), s.keyDer), INVALID);
  });

  it('never exposes the private key through JSON, toString or inspect', async () => {
    const svid = (await ca.createX509Svid(WEB, { hint: 'h' })).toX509Svid();
    const keyB64 = svid.privateKeyPem().split('\n')[1]!;
    const json = JSON.stringify({ svid });
    assert.deepEqual(JSON.parse(json).svid, { id: WEB, expiresAt: svid.expiresAt.toISOString(), hint: 'h' });
    for (const out of [
      json,
      String(svid),
      inspect(svid, { depth: 10, showHidden: true }),
      inspect({ svid }),
    ]) {
      assert.ok(!out.includes(keyB64), out);
      assert.ok(!out.includes('PRIVATE KEY'), out);
      assert.ok(out.includes(WEB), out);
    }
    assert.ok(!Object.keys(svid).includes('privateKey'));
    assert.ok(!('privateKey' in { ...svid }));
  });
});

describe('verifyX509Svid', () => {
  it('verifies a leaf signed by the root', async () => {
    const svid = (await ca.createX509Svid(WEB)).toX509Svid();
    const r = verifyX509Svid(svid.certificates, bundles);
    assert.equal(r.id.toString(), WEB);
    assert.equal(r.verifiedChain.length, 2);
    assert.ok(r.verifiedChain[1]!.raw.equals(ca.certificate.raw));
  });

  it('verifies through two intermediates', async () => {
    const i2 = await (await ca.createChildCa()).createChildCa();
    const s = await i2.createX509Svid(WEB);
    assert.equal(verifyX509Svid(s.certificates, bundles).verifiedChain.length, 4);
  });

  it('accepts intermediates out of order and a concatenated DER chain', async () => {
    const i1 = await ca.createChildCa();
    const i2 = await i1.createChildCa();
    const s = await i2.createX509Svid(WEB);
    const [leaf, a, b] = s.certificates;
    assert.equal(verifyX509Svid([leaf!, b!, a!], bundles).verifiedChain.length, 4);
    assert.equal(verifyX509Svid([s.certsDer], bundles).id.toString(), WEB);
  });

  it('verifies against any root of a bundle that holds several (CA rotation)', async () => {
    const next = await TestCa.create('example.org');
    const s = await next.createX509Svid(WEB);
    const rotated = new X509Bundle(ca.trustDomain, [ca.certificate, next.certificate]);
    assert.equal(verifyX509Svid(s.certificates, rotated).id.toString(), WEB);
  });

  it('rejects a chain signed by an unknown authority of the same trust domain', async () => {
    const impostor = await TestCa.create('example.org');
    const s = await impostor.createX509Svid(WEB);
    assert.throws(() => verifyX509Svid(s.certificates, bundles), VERIFY_FAILED);
  });

  it('rejects a chain missing its intermediate', async () => {
    const i1 = await ca.createChildCa();
    const s = await i1.createX509Svid(WEB, { includeIntermediates: false });
    assert.throws(() => verifyX509Svid(s.certificates, bundles), VERIFY_FAILED);
  });

  it('rejects a wrong-trust-domain leaf when no bundle exists for its trust domain', async () => {
    const s = await ca.createBadX509Svid('wrong-trust-domain');
    assert.equal(s.id.trustDomain.name, 'other.example.org');
    assert.throws(() => verifyX509Svid(s.certificates, bundles), NO_BUNDLE);
  });

  it("rejects a leaf of one trust domain signed by another trust domain's CA (no cross-domain issuance)", async () => {
    // partner.org's CA mints an ID in example.org; both bundles are known, so a pooled root list would accept it.
    const s = await partner.createX509Svid(WEB);
    assert.throws(() => verifyX509Svid(s.certificates, bundles), VERIFY_FAILED);
  });

  it('rejects an expired leaf', async () => {
    const s = await ca.createBadX509Svid('expired');
    assert.throws(() => verifyX509Svid(s.certificates, bundles), VERIFY_FAILED);
  });

  it('rejects a not-yet-valid leaf', async () => {
    const s = await ca.createBadX509Svid('not-yet-valid');
    assert.throws(() => verifyX509Svid(s.certificates, bundles), VERIFY_FAILED);
  });

  it('uses opts.now for validity windows', async () => {
    const s = await ca.createX509Svid(WEB, { ttlSec: 60 });
    const later = new Date(Date.now() + 3_600_000);
    assert.throws(() => verifyX509Svid(s.certificates, bundles, { now: later }), VERIFY_FAILED);
    assert.equal(verifyX509Svid(s.certificates, bundles, { now: new Date() }).id.toString(), WEB);
  });

  it('rejects an expired intermediate', async () => {
    const i1 = await ca.createChildCa({ notBefore: new Date(Date.now() - 7_200_000), ttlSec: 3600 });
    const s = await i1.createX509Svid(WEB, { notBefore: new Date(Date.now() - 60_000) });
    assert.throws(() => verifyX509Svid(s.certificates, bundles), VERIFY_FAILED);
  });

  it('rejects an expired root', async () => {
    const old = await TestCa.create('old.org', { notBefore: new Date(Date.now() - 7_200_000), ttlSec: 3600 });
    const s = await old.createX509Svid('spiffe://old.org/web', { notBefore: new Date(Date.now() - 60_000) });
    assert.throws(() => verifyX509Svid(s.certificates, old.x509Bundle()), VERIFY_FAILED);
  });

  it('rejects an intermediate that is not a CA', async () => {
    const notCa = await ca.createChildCa({ isCA: false });
    const s = await notCa.createX509Svid(WEB);
    assert.throws(() => verifyX509Svid(s.certificates, bundles), VERIFY_FAILED);
  });

  it('rejects an intermediate without keyCertSign', async () => {
    const noSign = await ca.createChildCa({ keyCertSign: false });
    const s = await noSign.createX509Svid(WEB);
    assert.throws(() => verifyX509Svid(s.certificates, bundles), VERIFY_FAILED);
  });

  it('rejects a path longer than a pathLenConstraint allows', async () => {
    const i1 = await ca.createChildCa({ pathLen: 0 });
    const i2 = await i1.createChildCa();
    const s = await i2.createX509Svid(WEB);
    assert.throws(() => verifyX509Svid(s.certificates, bundles), VERIFY_FAILED);
  });

  it('accepts a path within its pathLenConstraint', async () => {
    const i1 = await ca.createChildCa({ pathLen: 1 });
    const i2 = await i1.createChildCa({ pathLen: 0 });
    const s = await i2.createX509Svid(WEB);
    assert.equal(verifyX509Svid(s.certificates, bundles).verifiedChain.length, 4);
  });

  const leafRules: BadX509SvidKind[] = [
    'two-uri-sans',
    'no-uri-san',
    'ca-leaf',
    'key-cert-sign-leaf',
    'no-digital-signature',
  ];
  for (const kind of leafRules) {
    it(`rejects a peer leaf that breaks the SVID rules: ${kind}`, async () => {
      const s = await ca.createBadX509Svid(kind);
      assert.throws(() => verifyX509Svid(s.certificates, bundles), INVALID);
    });
  }

  it('rejects an empty chain', () => {
    assert.throws(() => verifyX509Svid([], bundles), VERIFY_FAILED);
  });

  it('looks bundles up by the leaf trust domain only', async () => {
    const s = await partner.createX509Svid('spiffe://partner.org/api');
    assert.equal(verifyX509Svid(s.certificates, bundles).id.toString(), 'spiffe://partner.org/api');
    assert.throws(() => verifyX509Svid(s.certificates, ca.x509Bundle()), NO_BUNDLE);
    assert.ok(SpiffeId.parse('spiffe://partner.org/api').memberOf(TrustDomain.parse('partner.org')));
  });
});
