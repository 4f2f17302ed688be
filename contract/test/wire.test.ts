import assert from 'node:assert/strict';
import { createHash, X509Certificate } from 'node:crypto';
import { readFileSync } from 'node:fs';
import { test } from 'node:test';
import {
  ACTIONS,
  argsSha256,
  CONTRACT_ERRORS,
  canonicalJson,
  FEED_EVENTS,
  isAction,
  isRevocation,
  x5tS256,
} from '../src/index.ts';

test('CONTRACT_ERRORS and the contract section of docs/errors.md list the same codes', () => {
  const md = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  const start = md.indexOf('## Contract (TASKPASS_CONTRACT_*)');
  assert.ok(start >= 0, 'docs/errors.md has a "## Contract (TASKPASS_CONTRACT_*)" section');
  const next = md.indexOf('\n## ', start + 1);
  const section = md.slice(start, next < 0 ? undefined : next);
  const codes = [...section.matchAll(/^\|\s*`(TASKPASS_CONTRACT_[A-Z_]+)`\s*\|/gm)].map((m) => m[1]);
  assert.deepEqual(codes.sort(), Object.keys(CONTRACT_ERRORS).sort());
});

test('action classes', () => {
  assert.deepEqual(ACTIONS, ['read', 'write', 'admin']);
  assert.equal(isAction('admin'), true);
  for (const v of ['delete', 'READ', '', undefined, 1]) assert.equal(isAction(v), false, String(v));
});

test('canonical JSON sorts keys by UTF-16 code units, drops undefined members, refuses non-JSON', () => {
  assert.equal(canonicalJson({ b: 1, a: [true, null, 'x'], c: undefined }), '{"a":[true,null,"x"],"b":1}');
  assert.equal(canonicalJson({ '\u00e9': 1, z: 2, '\u{1F600}': 3 }), '{"z":2,"é":1,"😀":3}');
  assert.throws(() => canonicalJson({ f: () => 1 }), TypeError);
});

test('args_sha256 is base64url(SHA-256(canonical JSON)); missing arguments hash as {}', () => {
  const expected = createHash('sha256').update('{"a":"x","b":1}').digest('base64url');
  assert.equal(argsSha256({ b: 1, a: 'x' }), expected);
  assert.equal(argsSha256(undefined), argsSha256({}));
});

// A self-signed P-256 certificate (openssl req -x509); node:crypto can parse but not create one.
const CERT_PEM = `-----BEGIN CERTIFICATE-----
MIIBgjCCASmgAwIBAgIUTPw5Re9+jTArz92Xu/XRV1hblEIwCgYIKoZIzj0EAwIw
FjEUMBIGA1UEAwwLeDV0LWZpeHR1cmUwIBcNMjYxMjAyMTAxMTU2WhgPMjEyNjEx
MDgxMDExNTZaMBYxFDASBgNVBAMMC3g1dC1maXh0dXJlMFkwEwYHKoZIzj0CAQYI
KoZIzj0DAQcDQgAEuHl9MPWkHbDkdLbA6cZ8Y7cNMBz/uWqpG6CUjrw7tLXNrmlO
9lu3DSEJlEqUD+pvxpOQBr4h9Pf096QxCMtPxKNTMFEwHQYDVR0OBBYEFIE+sFCU
V1+tZEUAbr3Ip11P0TA2MB8GA1UdIwQYMBaAFIE+sFCUV1+tZEUAbr3Ip11P0TA2
MA8GA1UdEwEB/wQFMAMBAf8wCgYIKoZIzj0EAwIDRwAwRAIgKuLbFqEO5pp4qJlD
isRfY1C47qYTS+yeRZoAOfTEKk0CIA7rCaRQK6TIR/iWvpJs5tm5A9yzaOJeorjV
s/SYbcl+
-----END CERTIFICATE-----`;

test('x5t#S256 is base64url(SHA-256(DER)) of a certificate or of its DER', () => {
  const cert = new X509Certificate(CERT_PEM);
  const expected = createHash('sha256').update(cert.raw).digest('base64url');
  assert.equal(x5tS256(cert), expected);
  assert.equal(x5tS256(cert.raw), expected);
  assert.equal(x5tS256(new Uint8Array(cert.raw)), expected);
  assert.match(expected, /^[A-Za-z0-9_-]{43}$/);
});

test('revocation events: the fields a verifier acts on are required', () => {
  assert.equal(isRevocation({ seq: 1, kind: 'task', id: 't', until: 2, reason: 'completed' }), true);
  assert.equal(isRevocation({ seq: 1, kind: 'task', id: 't', until: 2 }), true);
  for (const v of [
    null,
    'x',
    { seq: 1.5, kind: 'task', id: 't', until: 2 },
    { seq: 1, kind: 'user', id: 't', until: 2 },
  ])
    assert.equal(isRevocation(v), false, JSON.stringify(v));
  assert.deepEqual(Object.values(FEED_EVENTS).sort(), [
    'heartbeat',
    'keys',
    'revoked',
    'snapshot',
    'snapshot-page',
  ]);
});
