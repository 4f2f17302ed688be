import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { splitDer } from '../src/internal/der.ts';
import { TestCa } from '../src/testing/ca.ts';

const INVALID = { code: 'ERR_SPIFFE_INVALID_X509_SVID' };

describe('splitDer', () => {
  it('returns nothing for empty input', () => {
    assert.deepEqual(splitDer(new Uint8Array()), []);
  });

  it('splits short-form lengths', () => {
    const der = Uint8Array.from([0x30, 0x03, 1, 2, 3, 0x30, 0x00, 0x30, 0x01, 9]);
    assert.deepEqual(
      splitDer(der).map((p) => [...p]),
      [
        [0x30, 3, 1, 2, 3],
        [0x30, 0],
        [0x30, 1, 9],
      ],
    );
  });

  it('splits long-form lengths (one and two length bytes)', () => {
    const a = Buffer.concat([Buffer.from([0x30, 0x81, 200]), Buffer.alloc(200, 1)]);
    const b = Buffer.concat([Buffer.from([0x30, 0x82, 0x01, 0x2c]), Buffer.alloc(300, 2)]);
    const parts = splitDer(Buffer.concat([a, b]));
    assert.equal(parts.length, 2);
    assert.equal(parts[0]!.length, 203);
    assert.equal(parts[1]!.length, 304);
  });

  it('splits real concatenated certificates that X509Certificate would read as one', async () => {
    const ca = await TestCa.create('example.org');
    const inter = await ca.createChildCa();
    const svid = await inter.createX509Svid('spiffe://example.org/web');
    const parts = splitDer(svid.certsDer);
    assert.equal(parts.length, 2);
    assert.deepEqual(Buffer.from(parts[0]!), svid.certificates[0]!.raw);
    assert.deepEqual(Buffer.from(parts[1]!), inter.certificate.raw);
  });

  it('rejects content truncated before its declared length', () => {
    assert.throws(() => splitDer(Uint8Array.from([0x30, 0x05, 1, 2])), INVALID);
  });

  it('rejects a truncated second object', () => {
    assert.throws(() => splitDer(Uint8Array.from([0x30, 0x00, 0x30, 0x82, 0x01])), INVALID);
  });

  it('rejects a lone trailing byte', () => {
    assert.throws(() => splitDer(Uint8Array.from([0x30, 0x00, 0x30])), INVALID);
  });

  it('rejects indefinite length (BER, not DER)', () => {
    assert.throws(() => splitDer(Uint8Array.from([0x30, 0x80, 0x00, 0x00])), INVALID);
  });

  it('rejects a top-level object that is not a SEQUENCE', () => {
    assert.throws(() => splitDer(Uint8Array.from([0x04, 0x01, 0x00])), INVALID);
  });

  it('uses the error code it is given', () => {
    assert.throws(() => splitDer(Uint8Array.from([0x30, 0x05]), 'ERR_SPIFFE_INVALID_BUNDLE'), {
      code: 'ERR_SPIFFE_INVALID_BUNDLE',
    });
  });
});
