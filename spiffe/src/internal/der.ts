// Minimal DER reading. Node's X509Certificate reads only the first certificate of concatenated DER
// and exposes neither KeyUsage bits nor BasicConstraints, so we split and read extensions here
// instead of pulling a decorator-based ASN.1 library (and its global Reflect polyfill) into
// production code. Only what X509-SVID.md needs is decoded; everything else is skipped by length.
import { SpiffeError, type SpiffeErrorCode } from '../errors.ts';

export interface Tlv {
  tag: number;
  /** Offset of the first content byte. */
  start: number;
  /** Offset just past the last content byte. */
  end: number;
}

/** Reads one DER TLV at `offset` (single-byte tags only; X.509 never needs more). */
export function readTlv(
  buf: Uint8Array,
  offset: number,
  limit = buf.length,
  code: SpiffeErrorCode = 'ERR_SPIFFE_INVALID_X509_SVID',
): Tlv {
  if (offset + 2 > limit) throw new SpiffeError(code, 'DER is truncated (no room for tag and length)');
  const tag = buf[offset]!;
  if ((tag & 0x1f) === 0x1f) throw new SpiffeError(code, 'DER uses a multi-byte tag');
  const first = buf[offset + 1]!;
  let len: number;
  let start: number;
  if (first < 0x80) {
    len = first;
    start = offset + 2;
  } else {
    const n = first & 0x7f;
    // 0x80 is BER's indefinite length, which DER forbids; more than 4 length bytes cannot fit.
    if (n === 0 || n > 4) throw new SpiffeError(code, 'DER has an invalid length encoding');
    if (offset + 2 + n > limit) throw new SpiffeError(code, 'DER is truncated inside a length');
    len = 0;
    for (let i = 0; i < n; i++) len = len * 256 + buf[offset + 2 + i]!;
    start = offset + 2 + n;
  }
  const end = start + len;
  if (end > limit)
    throw new SpiffeError(code, `DER is truncated: needs ${end - offset} bytes, has ${limit - offset}`);
  return { tag, start, end };
}

/**
 * Splits concatenated DER objects (certificates in an X509SVID response or bundle) by the length
 * of each top-level SEQUENCE. Empty input gives an empty list.
 */
export function splitDer(
  der: Uint8Array,
  code: SpiffeErrorCode = 'ERR_SPIFFE_INVALID_X509_SVID',
): Uint8Array[] {
  const out: Uint8Array[] = [];
  let off = 0;
  while (off < der.length) {
    const tlv = readTlv(der, off, der.length, code);
    if (tlv.tag !== 0x30) {
      throw new SpiffeError(
        code,
        `expected a DER SEQUENCE at byte ${off}, found tag 0x${tlv.tag.toString(16)}`,
      );
    }
    out.push(der.subarray(off, tlv.end));
    off = tlv.end;
  }
  return out;
}

/** Children of a constructed TLV. */
export function children(buf: Uint8Array, parent: Tlv, code?: SpiffeErrorCode): Tlv[] {
  const out: Tlv[] = [];
  let off = parent.start;
  while (off < parent.end) {
    const t = readTlv(buf, off, parent.end, code);
    out.push(t);
    off = t.end;
  }
  return out;
}

export function decodeOid(buf: Uint8Array, t: Tlv): string {
  const parts: number[] = [];
  let v = 0;
  for (let i = t.start; i < t.end; i++) {
    const b = buf[i]!;
    v = v * 128 + (b & 0x7f);
    if ((b & 0x80) === 0) {
      if (parts.length === 0) {
        const first = v < 80 ? Math.floor(v / 40) : 2;
        parts.push(first, v - first * 40);
      } else parts.push(v);
      v = 0;
    }
  }
  return parts.join('.');
}

export interface CertExtension {
  critical: boolean;
  /** Contents of the extnValue OCTET STRING (the DER of the extension itself). */
  value: Uint8Array;
}

/**
 * Extensions of one DER certificate, keyed by OID. A repeated OID is an error (RFC 5280 §4.2), and
 * being lenient there would let a second SAN extension hide from a check.
 */
export function certExtensions(cert: Uint8Array): Map<string, CertExtension> {
  const code: SpiffeErrorCode = 'ERR_SPIFFE_INVALID_X509_SVID';
  const certTlv = readTlv(cert, 0, cert.length, code);
  const tbs = children(cert, certTlv, code)[0];
  if (tbs?.tag !== 0x30) throw new SpiffeError(code, 'certificate has no TBSCertificate');
  const out = new Map<string, CertExtension>();
  for (const field of children(cert, tbs, code)) {
    if (field.tag !== 0xa3) continue; // [3] EXPLICIT Extensions
    const seq = readTlv(cert, field.start, field.end, code);
    for (const ext of children(cert, seq, code)) {
      const parts = children(cert, ext, code);
      const oidTlv = parts[0];
      if (oidTlv?.tag !== 0x06) throw new SpiffeError(code, 'extension has no OID');
      let critical = false;
      let valueTlv = parts[1];
      if (valueTlv?.tag === 0x01) {
        critical = cert[valueTlv.start] !== 0;
        valueTlv = parts[2];
      }
      if (valueTlv?.tag !== 0x04) throw new SpiffeError(code, 'extension has no value');
      const oid = decodeOid(cert, oidTlv);
      if (out.has(oid)) throw new SpiffeError(code, `certificate repeats extension ${oid}`);
      out.set(oid, { critical, value: cert.subarray(valueTlv.start, valueTlv.end) });
    }
  }
  return out;
}

export const OID_KEY_USAGE = '2.5.29.15';
export const OID_SUBJECT_ALT_NAME = '2.5.29.17';
export const OID_BASIC_CONSTRAINTS = '2.5.29.19';

/** KeyUsage bits as named in RFC 5280 §4.2.1.3 (bit 0 is the MSB of the first byte). */
export interface KeyUsage {
  digitalSignature: boolean;
  keyCertSign: boolean;
  cRLSign: boolean;
}

export function decodeKeyUsage(value: Uint8Array): KeyUsage {
  const t = readTlv(value, 0);
  if (t.tag !== 0x03 || t.end - t.start < 1) {
    throw new SpiffeError('ERR_SPIFFE_INVALID_X509_SVID', 'KeyUsage is not a BIT STRING');
  }
  const b0 = t.end - t.start > 1 ? value[t.start + 1]! : 0;
  return {
    digitalSignature: (b0 & 0x80) !== 0,
    keyCertSign: (b0 & 0x04) !== 0,
    cRLSign: (b0 & 0x02) !== 0,
  };
}

export interface BasicConstraints {
  ca: boolean;
  pathLen?: number;
}

export function decodeBasicConstraints(value: Uint8Array): BasicConstraints {
  const seq = readTlv(value, 0);
  if (seq.tag !== 0x30)
    throw new SpiffeError('ERR_SPIFFE_INVALID_X509_SVID', 'BasicConstraints is not a SEQUENCE');
  const out: BasicConstraints = { ca: false };
  for (const t of children(value, seq)) {
    if (t.tag === 0x01) out.ca = value[t.start] !== 0;
    else if (t.tag === 0x02) {
      let n = 0;
      for (let i = t.start; i < t.end; i++) n = n * 256 + value[i]!;
      out.pathLen = n;
    }
  }
  return out;
}

/** URI names (GeneralName [6] IA5String) of a SubjectAltName extension, in order. */
export function decodeSanUris(value: Uint8Array): string[] {
  const seq = readTlv(value, 0);
  if (seq.tag !== 0x30)
    throw new SpiffeError('ERR_SPIFFE_INVALID_X509_SVID', 'SubjectAltName is not a SEQUENCE');
  const out: string[] = [];
  for (const t of children(value, seq)) {
    if (t.tag === 0x86) out.push(Buffer.from(value.subarray(t.start, t.end)).toString('latin1'));
  }
  return out;
}
