// X.509-SVIDs (X509-SVID.md): parsing the Workload API's concatenated DER, the document rules for
// leaf and signing certificates, and RFC 5280 path validation against the leaf's own trust domain.
import { createPrivateKey, createPublicKey, type KeyObject, X509Certificate } from 'node:crypto';
import { inspect } from 'node:util';
import type { X509BundleSource } from '../bundle/x509.ts';
import { SpiffeError } from '../errors.ts';
import { SpiffeId } from '../id.ts';
import {
  type CertExtension,
  certExtensions,
  decodeBasicConstraints,
  decodeKeyUsage,
  decodeSanUris,
  OID_BASIC_CONSTRAINTS,
  OID_KEY_USAGE,
  OID_SUBJECT_ALT_NAME,
  splitDer,
} from '../internal/der.ts';

/** Anything that holds the workload's current X.509-SVID (a static SVID, a live X509Source). */
export interface X509SvidSource {
  /** @throws SpiffeError `ERR_SPIFFE_NO_IDENTITY` when the identity was redacted. */
  getX509Svid(): X509Svid;
}

export interface ParseX509SvidOptions {
  /** The Workload API's `hint` for this SVID. */
  hint?: string;
  /** The Workload API's `spiffe_id` field; it must equal the leaf's URI SAN. */
  expectedId?: SpiffeId | string;
}

/**
 * An X.509-SVID: the certificate chain (leaf first) and its private key. Logging it is safe:
 * `toJSON()`, `toString()` and `util.inspect` show only the ID, expiry and hint.
 *
 * @example
 * ```ts
 * const svid = X509Svid.parseDer(resp.x509_svid, resp.x509_svid_key, { hint: resp.hint, expectedId: resp.spiffe_id });
 * tls.createSecureContext({ cert: svid.certChainPem(), key: svid.privateKeyPem() });
 * ```
 */
export class X509Svid implements X509SvidSource {
  readonly id: SpiffeId;
  readonly certificates: readonly X509Certificate[];
  readonly hint: string | undefined;
  readonly expiresAt: Date;
  readonly #privateKey: KeyObject;

  private constructor(
    id: SpiffeId,
    certificates: X509Certificate[],
    privateKey: KeyObject,
    hint: string | undefined,
  ) {
    this.id = id;
    this.certificates = Object.freeze(certificates);
    this.#privateKey = privateKey;
    this.hint = hint;
    this.expiresAt = new Date(certificates[0]!.validTo);
  }

  /** The private key. A getter over a private field, so spreading or inspecting the SVID skips it. */
  get privateKey(): KeyObject {
    return this.#privateKey;
  }

  get leaf(): X509Certificate {
    return this.certificates[0]!;
  }

  /**
   * Parses an SVID from concatenated DER certificates (leaf first) and a PKCS#8 DER private key,
   * and checks every X509-SVID.md rule that needs no trust bundle: exactly one URI SAN that is a
   * SPIFFE ID with a path; leaf `cA=false`, KeyUsage with `digitalSignature` and without
   * `keyCertSign`/`cRLSign`; signing certificates `cA=true` with `keyCertSign`; the key matches the
   * leaf; and the SAN equals `opts.expectedId` when given.
   *
   * @throws SpiffeError `ERR_SPIFFE_INVALID_X509_SVID`
   */
  static parseDer(certsDer: Uint8Array, keyDer: Uint8Array, opts: ParseX509SvidOptions = {}): X509Svid {
    const certs = parseChain(certsDer);
    const id = validateLeaf(certs[0]!);
    for (const c of certs.slice(1)) validateSigningCert(c);
    if (opts.expectedId !== undefined) {
      const want = typeof opts.expectedId === 'string' ? parseResponseId(opts.expectedId) : opts.expectedId;
      if (!want.equals(id)) {
        throw new SpiffeError(
          'ERR_SPIFFE_INVALID_X509_SVID',
          `spiffe_id ${want.toString()} does not match the certificate's URI SAN ${id.toString()}`,
        );
      }
    }
    let key: KeyObject;
    try {
      key = createPrivateKey({ key: Buffer.from(keyDer), format: 'der', type: 'pkcs8' });
    } catch (e) {
      throw new SpiffeError('ERR_SPIFFE_INVALID_X509_SVID', 'private key is not PKCS#8 DER', { cause: e });
    }
    const fromKey = createPublicKey(key).export({ format: 'der', type: 'spki' });
    const fromCert = certs[0]!.publicKey.export({ format: 'der', type: 'spki' });
    if (!fromKey.equals(fromCert)) {
      throw new SpiffeError(
        'ERR_SPIFFE_INVALID_X509_SVID',
        'private key does not match the leaf certificate',
      );
    }
    return new X509Svid(id, certs, key, opts.hint === '' ? undefined : opts.hint);
  }

  /**
   * Like {@link X509Svid.parseDer} for PEM input (certificates and a `PRIVATE KEY` block).
   *
   * @example
   * ```ts
   * const svid = X509Svid.parsePem(readFileSync('svid.pem', 'utf8'), readFileSync('svid.key', 'utf8'));
   * ```
   */
  static parsePem(certsPem: string, keyPem: string, opts: ParseX509SvidOptions = {}): X509Svid {
    const blocks = [...certsPem.matchAll(/-----BEGIN CERTIFICATE-----([^-]*)-----END CERTIFICATE-----/g)];
    const der = Buffer.concat(blocks.map((m) => Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64')));
    const key = /-----BEGIN PRIVATE KEY-----([^-]*)-----END PRIVATE KEY-----/.exec(keyPem);
    if (!key) throw new SpiffeError('ERR_SPIFFE_INVALID_X509_SVID', 'no PKCS#8 PRIVATE KEY block found');
    return X509Svid.parseDer(der, Buffer.from(key[1]!.replace(/\s+/g, ''), 'base64'), opts);
  }

  /** Leaf first, then intermediates, as PEM (for `tls.createSecureContext({ cert })`). */
  certChainPem(): string {
    return this.certificates.map((c) => c.toString()).join('');
  }

  /** Concatenated DER, the Workload API wire form. */
  certChainDer(): Buffer {
    return Buffer.concat(this.certificates.map((c) => c.raw));
  }

  /** PKCS#8 PEM of the private key (for `tls.createSecureContext({ key })`). Never log it. */
  privateKeyPem(): string {
    return this.#privateKey.export({ format: 'pem', type: 'pkcs8' }).toString();
  }

  /** An SVID is its own {@link X509SvidSource}, so static configurations need no wrapper. */
  getX509Svid(): X509Svid {
    return this;
  }

  toJSON(): { id: string; expiresAt: string; hint?: string } {
    const out: { id: string; expiresAt: string; hint?: string } = {
      id: this.id.toString(),
      expiresAt: this.expiresAt.toISOString(),
    };
    if (this.hint !== undefined) out.hint = this.hint;
    return out;
  }

  toString(): string {
    return `X509Svid(${this.id.toString()}, expires ${this.expiresAt.toISOString()})`;
  }

  [inspect.custom](): string {
    return `X509Svid ${JSON.stringify(this.toJSON())}`;
  }
}

function parseResponseId(s: string): SpiffeId {
  try {
    return SpiffeId.parse(s);
  } catch (e) {
    throw new SpiffeError('ERR_SPIFFE_INVALID_X509_SVID', 'the spiffe_id field is not a valid SPIFFE ID', {
      cause: e,
    });
  }
}

/** Splits and parses concatenated DER certificates, leaf first. */
function parseChain(der: Uint8Array): X509Certificate[] {
  const parts = splitDer(der, 'ERR_SPIFFE_INVALID_X509_SVID');
  if (parts.length === 0) throw new SpiffeError('ERR_SPIFFE_INVALID_X509_SVID', 'no certificates');
  return parts.map((p) => {
    try {
      return new X509Certificate(p);
    } catch (e) {
      throw new SpiffeError('ERR_SPIFFE_INVALID_X509_SVID', 'unparseable certificate', { cause: e });
    }
  });
}

function extensions(cert: X509Certificate): Map<string, CertExtension> {
  return certExtensions(cert.raw);
}

/**
 * Checks the leaf rules of X509-SVID.md and returns its SPIFFE ID.
 *
 * @throws SpiffeError `ERR_SPIFFE_INVALID_X509_SVID`
 */
export function validateLeaf(leaf: X509Certificate): SpiffeId {
  const ext = extensions(leaf);
  const san = ext.get(OID_SUBJECT_ALT_NAME);
  const uris = san ? decodeSanUris(san.value) : [];
  if (uris.length !== 1) {
    throw new SpiffeError(
      'ERR_SPIFFE_INVALID_X509_SVID',
      `an X.509-SVID must have exactly one URI SAN, found ${uris.length}`,
    );
  }
  let id: SpiffeId;
  try {
    id = SpiffeId.parse(uris[0]!);
  } catch (e) {
    throw new SpiffeError('ERR_SPIFFE_INVALID_X509_SVID', 'the URI SAN is not a valid SPIFFE ID', {
      cause: e,
    });
  }
  if (id.path === '') {
    throw new SpiffeError(
      'ERR_SPIFFE_INVALID_X509_SVID',
      'a leaf SVID must not carry the trust domain ID itself',
    );
  }
  const bc = ext.get(OID_BASIC_CONSTRAINTS);
  if (bc && decodeBasicConstraints(bc.value).ca) {
    throw new SpiffeError('ERR_SPIFFE_INVALID_X509_SVID', 'leaf certificate must not be a CA (cA=true)');
  }
  const kuExt = ext.get(OID_KEY_USAGE);
  const ku = kuExt ? decodeKeyUsage(kuExt.value) : undefined;
  if (!ku?.digitalSignature) {
    throw new SpiffeError(
      'ERR_SPIFFE_INVALID_X509_SVID',
      'leaf certificate must have the digitalSignature key usage',
    );
  }
  if (ku.keyCertSign) {
    throw new SpiffeError(
      'ERR_SPIFFE_INVALID_X509_SVID',
      'leaf certificate must not have the keyCertSign key usage',
    );
  }
  if (ku.cRLSign) {
    throw new SpiffeError(
      'ERR_SPIFFE_INVALID_X509_SVID',
      'leaf certificate must not have the cRLSign key usage',
    );
  }
  return id;
}

/** Signing (intermediate) certificates must be CAs allowed to sign certificates (§3.2, §4.3). */
function validateSigningCert(cert: X509Certificate): { pathLen?: number } {
  const ext = extensions(cert);
  const bc = ext.get(OID_BASIC_CONSTRAINTS);
  const constraints = bc ? decodeBasicConstraints(bc.value) : { ca: false };
  if (!constraints.ca) {
    throw new SpiffeError(
      'ERR_SPIFFE_INVALID_X509_SVID',
      `signing certificate ${subjectOf(cert)} is not a CA (cA=false)`,
    );
  }
  const ku = ext.get(OID_KEY_USAGE);
  if (!ku || !decodeKeyUsage(ku.value).keyCertSign) {
    throw new SpiffeError(
      'ERR_SPIFFE_INVALID_X509_SVID',
      `signing certificate ${subjectOf(cert)} lacks the keyCertSign key usage`,
    );
  }
  return constraints.pathLen === undefined ? {} : { pathLen: constraints.pathLen };
}

// Extensions whose semantics we implement (or that carry no constraint). RFC 5280 §4.2: a
// certificate with any other critical extension must be rejected. Name constraints are not
// implemented, so a critical NameConstraints extension is refused rather than ignored.
const HANDLED_CRITICAL = new Set([
  OID_KEY_USAGE,
  OID_BASIC_CONSTRAINTS,
  OID_SUBJECT_ALT_NAME,
  '2.5.29.37', // extendedKeyUsage: SPIFFE verification accepts any (go-spiffe uses ExtKeyUsageAny)
  '2.5.29.14', // subjectKeyIdentifier
  '2.5.29.35', // authorityKeyIdentifier
]);

function checkCriticalExtensions(cert: X509Certificate): void {
  for (const [oid, e] of extensions(cert)) {
    if (e.critical && !HANDLED_CRITICAL.has(oid)) {
      throw new SpiffeError(
        'ERR_SPIFFE_X509_VERIFY_FAILED',
        `${subjectOf(cert)} has unhandled critical extension ${oid}`,
      );
    }
  }
}

function checkValidity(cert: X509Certificate, now: Date, what: string): void {
  const from = new Date(cert.validFrom).getTime();
  const to = new Date(cert.validTo).getTime();
  if (now.getTime() < from) {
    throw new SpiffeError(
      'ERR_SPIFFE_X509_VERIFY_FAILED',
      `${what} is not valid yet (notBefore ${cert.validFrom})`,
    );
  }
  if (now.getTime() > to) {
    throw new SpiffeError('ERR_SPIFFE_X509_VERIFY_FAILED', `${what} has expired (notAfter ${cert.validTo})`);
  }
}

function issued(issuer: X509Certificate, child: X509Certificate): boolean {
  // checkIssued compares names (and key identifiers); verify() checks the signature itself.
  return child.checkIssued(issuer) && child.verify(issuer.publicKey);
}

/** Node separates RDNs with newlines; one line reads better in an error message. */
function subjectOf(c: X509Certificate): string {
  return c.subject.replace(/\n/g, ', ');
}

function isSelfIssued(c: X509Certificate): boolean {
  return c.subject === c.issuer;
}

export interface VerifyX509SvidOptions {
  /** Verification time; defaults to now. */
  now?: Date;
}

export interface VerifiedX509Svid {
  id: SpiffeId;
  /** Leaf, intermediates, and the bundle authority that anchors the path. */
  verifiedChain: X509Certificate[];
}

/**
 * Verifies an X.509-SVID chain (leaf first, then any intermediates in any order) against the
 * bundle of the leaf's **own** trust domain only (X509-SVID.md §5.1): signatures, validity windows,
 * CA basic constraints and keyCertSign on intermediates, pathLenConstraint, and the leaf rules.
 *
 * @example
 * ```ts
 * const { id } = verifyX509Svid([socket.getPeerX509Certificate()!], bundles);
 * if (!matchMemberOf('example.org')(id)) throw new Error('forbidden');
 * ```
 * @throws SpiffeError `ERR_SPIFFE_INVALID_X509_SVID` (leaf rules), `ERR_SPIFFE_NO_BUNDLE`,
 *   `ERR_SPIFFE_X509_VERIFY_FAILED`
 */
export function verifyX509Svid(
  chain: readonly (X509Certificate | Uint8Array)[],
  bundles: X509BundleSource,
  opts: VerifyX509SvidOptions = {},
): VerifiedX509Svid {
  const now = opts.now ?? new Date();
  const certs = chain.flatMap((c) => (c instanceof X509Certificate ? [c] : parseChain(c)));
  const leaf = certs[0];
  if (!leaf) throw new SpiffeError('ERR_SPIFFE_X509_VERIFY_FAILED', 'empty certificate chain');
  const id = validateLeaf(leaf);
  const bundle = bundles.getX509BundleForTrustDomain(id.trustDomain);
  if (!bundle) {
    throw new SpiffeError('ERR_SPIFFE_NO_BUNDLE', `no X.509 bundle for trust domain ${id.trustDomain.name}`);
  }
  checkCriticalExtensions(leaf);
  checkValidity(leaf, now, 'leaf certificate');

  const intermediates = certs.slice(1);
  let lastError: SpiffeError | undefined;

  // Depth-first path building: chains are short, and trying every candidate issuer keeps us right
  // when a bundle holds several roots during CA rotation or the peer sent extra certificates.
  const build = (
    current: X509Certificate,
    path: X509Certificate[],
    used: Set<number>,
  ): X509Certificate[] | undefined => {
    for (const root of bundle.authorities) {
      if (!issued(root, current)) continue;
      const full = [...path, root];
      try {
        checkValidity(root, now, `bundle authority ${subjectOf(root)}`);
        checkPathLen(full);
        return full;
      } catch (e) {
        if (e instanceof SpiffeError) lastError = e;
        else throw e;
      }
    }
    if (path.length > 16) return undefined;
    for (let i = 0; i < intermediates.length; i++) {
      const cand = intermediates[i]!;
      if (used.has(i) || !issued(cand, current)) continue;
      try {
        validateSigningCertForPath(cand);
        checkCriticalExtensions(cand);
        checkValidity(cand, now, `intermediate ${subjectOf(cand)}`);
      } catch (e) {
        if (e instanceof SpiffeError) {
          lastError = e;
          continue;
        }
        throw e;
      }
      const found = build(cand, [...path, cand], new Set(used).add(i));
      if (found) return found;
    }
    return undefined;
  };

  const verified = build(leaf, [leaf], new Set());
  if (!verified) {
    throw (
      lastError ??
      new SpiffeError(
        'ERR_SPIFFE_X509_VERIFY_FAILED',
        `certificate signed by unknown authority (trust domain ${id.trustDomain.name})`,
      )
    );
  }
  return { id, verifiedChain: verified };
}

function validateSigningCertForPath(cert: X509Certificate): void {
  try {
    validateSigningCert(cert);
  } catch (e) {
    if (e instanceof SpiffeError) throw new SpiffeError('ERR_SPIFFE_X509_VERIFY_FAILED', e.message);
    throw e;
  }
}

/**
 * RFC 5280 §4.2.1.9: a CA's pathLenConstraint bounds the number of non-self-issued intermediates
 * that follow it (below it) in the path, not counting the leaf.
 */
function checkPathLen(path: X509Certificate[]): void {
  // path = [leaf, int1, ..., root]; for CA at index i, intermediates below it are path[1..i-1].
  for (let i = 1; i < path.length; i++) {
    const ca = path[i]!;
    const bc = extensions(ca).get(OID_BASIC_CONSTRAINTS);
    const pathLen = bc ? decodeBasicConstraints(bc.value).pathLen : undefined;
    if (pathLen === undefined) continue;
    const below = path.slice(1, i).filter((c) => !isSelfIssued(c)).length;
    if (below > pathLen) {
      throw new SpiffeError(
        'ERR_SPIFFE_X509_VERIFY_FAILED',
        `${subjectOf(ca)} allows ${pathLen} intermediate(s) below it, the path has ${below}`,
      );
    }
  }
}
