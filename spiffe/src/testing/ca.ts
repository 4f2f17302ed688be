// An in-memory CA for tests, in the spirit of go-spiffe's internal/test/ca.go: an EC P-256 root per
// trust domain, intermediates, good X.509-SVIDs, bad ones named after the rule they break, and
// JWT-SVIDs signed with the trust domain's JWT keys (random kid). Never use it in production.
import {
  generateKeyPairSync,
  type JsonWebKey,
  type KeyObject,
  X509Certificate,
  constants as cryptoConstants,
  createHmac,
  randomBytes,
  sign as cryptoSign,
  webcrypto,
} from 'node:crypto';
import { JwtBundle } from '../bundle/jwt.ts';
import { SpiffeBundle, type SpiffeBundleDocument } from '../bundle/spiffe.ts';
import { X509Bundle } from '../bundle/x509.ts';
import { SpiffeId, TrustDomain } from '../id.ts';
import { X509Svid } from '../svid/x509.ts';

// @peculiar/x509 resolves its algorithm providers through tsyringe, which refuses to load without a
// Reflect metadata API and none is installed. Tests only need the lookups to work, so give them a
// small WeakMap-backed one, only if nothing else has installed a real one.
type MetaStore = WeakMap<object, Map<unknown, unknown>>;
const reflect = Reflect as unknown as Record<string, unknown>;
if (typeof reflect.getMetadata !== 'function') {
  const store: MetaStore = new WeakMap();
  const own = (target: object, create: boolean): Map<unknown, unknown> | undefined => {
    let m = store.get(target);
    if (!m && create) {
      m = new Map();
      store.set(target, m);
    }
    return m;
  };
  reflect.defineMetadata = (key: unknown, value: unknown, target: object) => {
    own(target, true)!.set(key, value);
  };
  reflect.getOwnMetadata = (key: unknown, target: object) => own(target, false)?.get(key);
  reflect.getMetadata = (key: unknown, target: object) => {
    for (let t: object | null = target; t; t = Object.getPrototypeOf(t)) {
      const m = own(t, false);
      if (m?.has(key)) return m.get(key);
    }
    return undefined;
  };
  reflect.hasOwnMetadata = (key: unknown, target: object) => own(target, false)?.has(key) === true;
  reflect.metadata = (key: unknown, value: unknown) => (target: object) => {
    own(target, true)!.set(key, value);
  };
}
const x509 = await import('@peculiar/x509');
const subtle = webcrypto.subtle;
const wc = webcrypto;
type CryptoKeyPair = webcrypto.CryptoKeyPair;

const EC_P256: webcrypto.EcKeyGenParams = { name: 'ECDSA', namedCurve: 'P-256' };
const ECDSA_SHA256 = { name: 'ECDSA', hash: 'SHA-256' };

export type JwtSvidAlgorithm =
  | 'ES256'
  | 'ES384'
  | 'ES512'
  | 'RS256'
  | 'RS384'
  | 'RS512'
  | 'PS256'
  | 'PS384'
  | 'PS512';

interface JwtKey {
  alg: JwtSvidAlgorithm;
  privateKey: KeyObject;
  publicKey: KeyObject;
}

/** Which X509-SVID.md rule a bad SVID breaks (see {@link TestCa.createBadX509Svid}). */
export type BadX509SvidKind =
  | 'two-uri-sans'
  | 'no-uri-san'
  | 'non-spiffe-uri-san'
  | 'ca-leaf'
  | 'key-cert-sign-leaf'
  | 'crl-sign-leaf'
  | 'no-digital-signature'
  | 'no-key-usage'
  | 'expired'
  | 'not-yet-valid'
  | 'wrong-trust-domain'
  | 'key-mismatch';

export interface LeafKeyUsage {
  digitalSignature?: boolean;
  keyEncipherment?: boolean;
  keyAgreement?: boolean;
  keyCertSign?: boolean;
  cRLSign?: boolean;
}

export interface CreateX509SvidOptions {
  hint?: string;
  /** Lifetime from notBefore; default 3600. */
  ttlSec?: number;
  /** Default: now − 10s (SPIRE backdates by 10s). */
  notBefore?: Date;
  notAfter?: Date;
  /** KeyUsage bits; `null` omits the extension. Default: digitalSignature, keyEncipherment, keyAgreement (SPIRE's). */
  keyUsage?: LeafKeyUsage | null;
  /** Replaces the URI SANs entirely (default: just the ID). */
  uriSans?: string[];
  /** Added after the ID's URI SAN. */
  extraSans?: { uris?: string[]; dns?: string[] };
  /** Marks the leaf as a CA (cA=true): a bad SVID. */
  isCA?: boolean;
  /** Sign the leaf's public key but hand back another private key. */
  mismatchedKey?: boolean;
  /** Include this CA's intermediates after the leaf (default true). */
  includeIntermediates?: boolean;
}

/** What the test CA mints: the Workload API's bytes plus parsed views. */
export interface TestX509Svid {
  id: SpiffeId;
  hint: string | undefined;
  /** Leaf, then intermediates. */
  certificates: X509Certificate[];
  /** Concatenated DER chain (the `x509_svid` field). */
  certsDer: Uint8Array;
  /** PKCS#8 DER (the `x509_svid_key` field). */
  keyDer: Uint8Array;
  /** The trust domain's bundle, concatenated DER (the `bundle` field). */
  bundleDer: Uint8Array;
  /** Parses the bytes with {@link X509Svid.parseDer} (throws for bad SVIDs). */
  toX509Svid(): X509Svid;
}

export interface CreateJwtSvidOptions {
  /** Lifetime; default 300 (SPIRE's default). */
  ttlSec?: number;
  /** Issue time; default now. */
  now?: Date;
  /** Which of the CA's JWT keys signs (default: the first one). */
  kid?: string;
  /** Put this kid in the header instead of the signing key's. */
  headerKid?: string;
  omitKid?: boolean;
  /** Header alg. An alg the key cannot produce gives a forged token: `none` → empty signature,
   * `HS*` → HMAC keyed with the public key's PEM (the classic confusion attack). */
  alg?: string;
  /** Header typ; default `JWT`; `null` omits it. */
  typ?: string | null;
  omitExp?: boolean;
  omitAud?: boolean;
  omitSub?: boolean;
  /** Extra or overriding claims. */
  claims?: Record<string, unknown>;
  /** Extra header members (e.g. jku) to check they are ignored. */
  header?: Record<string, unknown>;
}

function b64url(data: Uint8Array | string): string {
  return Buffer.from(data).toString('base64url');
}

function hashOf(alg: string): string {
  return `sha${alg.slice(2)}`;
}

function newJwtKey(alg: JwtSvidAlgorithm): JwtKey {
  const kp =
    alg[0] === 'E'
      ? generateKeyPairSync('ec', {
          namedCurve: { ES256: 'P-256', ES384: 'P-384', ES512: 'P-521' }[alg as 'ES256'],
        })
      : generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { alg, privateKey: kp.privateKey, publicKey: kp.publicKey };
}

function signJws(signingInput: string, alg: string, key: JwtKey): Buffer {
  const data = Buffer.from(signingInput);
  if (alg === 'none') return Buffer.alloc(0);
  if (alg.startsWith('HS')) {
    return createHmac(hashOf(alg), key.publicKey.export({ format: 'pem', type: 'spki' }))
      .update(data)
      .digest();
  }
  if (alg.startsWith('ES'))
    return cryptoSign(hashOf(alg), data, { key: key.privateKey, dsaEncoding: 'ieee-p1363' });
  if (alg.startsWith('PS')) {
    return cryptoSign(hashOf(alg), data, {
      key: key.privateKey,
      padding: cryptoConstants.RSA_PKCS1_PSS_PADDING,
      saltLength: Number(alg.slice(2)) / 8,
    });
  }
  if (alg.startsWith('RS')) return cryptoSign(hashOf(alg), data, key.privateKey);
  // Anything else (EdDSA, made-up names): a signature no verifier can accept.
  return randomBytes(64);
}

let serial = 1;
function nextSerial(): string {
  // Positive, unique within the process; peculiar takes hex.
  return (serial++).toString(16).padStart(2, '0') + randomBytes(8).toString('hex');
}

function toNode(cert: InstanceType<typeof x509.X509Certificate>): X509Certificate {
  return new X509Certificate(Buffer.from(cert.rawData));
}

/**
 * An in-memory CA for one trust domain (a root, or an intermediate made by {@link TestCa.createChildCa}).
 *
 * @example
 * ```ts
 * const ca = await TestCa.create('example.org');
 * const good = await ca.createX509Svid('spiffe://example.org/web');
 * const svid = good.toX509Svid();
 * verifyX509Svid(svid.certificates, ca.x509Bundle());
 * const jwt = ca.createJwtSvid('spiffe://example.org/web', 'https://broker.example.org');
 * ```
 */
export class TestCa {
  readonly trustDomain: TrustDomain;
  /** This CA's certificate. */
  readonly certificate: X509Certificate;
  readonly parent: TestCa | undefined;
  readonly #keys: CryptoKeyPair;
  readonly #subject: string;
  /** Shared by a root and its children: JWT keys belong to the trust domain. */
  readonly #jwtKeys: Map<string, JwtKey>;
  #children = 0;

  private constructor(
    trustDomain: TrustDomain,
    certificate: X509Certificate,
    keys: CryptoKeyPair,
    subject: string,
    parent: TestCa | undefined,
    jwtKeys: Map<string, JwtKey>,
  ) {
    this.trustDomain = trustDomain;
    this.certificate = certificate;
    this.#keys = keys;
    this.#subject = subject;
    this.parent = parent;
    this.#jwtKeys = jwtKeys;
  }

  /** Creates a self-signed EC P-256 root CA (valid from now − 10s for `ttlSec`, default 1 day) with one ES256 JWT key. */
  static async create(
    trustDomain: TrustDomain | string,
    opts: { ttlSec?: number; notBefore?: Date; jwtAlg?: JwtSvidAlgorithm } = {},
  ): Promise<TestCa> {
    const td = typeof trustDomain === 'string' ? TrustDomain.fromIdOrName(trustDomain) : trustDomain;
    const keys = (await subtle.generateKey(EC_P256, true, ['sign', 'verify'])) as CryptoKeyPair;
    const subject = `CN=${td.name} test root, O=SPIFFE`;
    const notBefore = opts.notBefore ?? new Date(Date.now() - 10_000);
    const cert = await x509.X509CertificateGenerator.create(
      {
        serialNumber: nextSerial(),
        subject,
        issuer: subject,
        notBefore,
        notAfter: new Date(notBefore.getTime() + (opts.ttlSec ?? 86_400) * 1000),
        signingAlgorithm: ECDSA_SHA256,
        publicKey: keys.publicKey,
        signingKey: keys.privateKey,
        extensions: [
          new x509.BasicConstraintsExtension(true, undefined, true),
          new x509.KeyUsagesExtension(x509.KeyUsageFlags.keyCertSign | x509.KeyUsageFlags.cRLSign, true),
          await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, wc),
          new x509.SubjectAlternativeNameExtension([{ type: 'url', value: td.idString() }]),
        ],
      },
      wc,
    );
    const jwtKeys = new Map<string, JwtKey>();
    jwtKeys.set(randomBytes(16).toString('hex'), newJwtKey(opts.jwtAlg ?? 'ES256'));
    return new TestCa(td, toNode(cert), keys, subject, undefined, jwtKeys);
  }

  /** The root of this CA's chain. */
  get root(): TestCa {
    return this.parent ? this.parent.root : this;
  }

  /** This CA's certificate and its ancestors' up to, but excluding, the root (what a leaf's chain carries). */
  intermediates(): X509Certificate[] {
    return this.parent ? [this.certificate, ...this.parent.intermediates()] : [];
  }

  /**
   * Creates an intermediate CA signed by this one (cA=true, keyCertSign). Pass `pathLen` to add a
   * pathLenConstraint, `keyUsage: null` / `isCA: false` to mint a bad signing certificate.
   */
  async createChildCa(
    opts: { pathLen?: number; ttlSec?: number; notBefore?: Date; isCA?: boolean; keyCertSign?: boolean } = {},
  ): Promise<TestCa> {
    const keys = (await subtle.generateKey(EC_P256, true, ['sign', 'verify'])) as CryptoKeyPair;
    // Unique names: path building matches issuers by name before checking signatures.
    const subject = `CN=${this.trustDomain.name} test intermediate ${++this.#children} ${randomBytes(4).toString('hex')}, O=SPIFFE`;
    const notBefore = opts.notBefore ?? new Date(Date.now() - 10_000);
    const flags =
      (opts.keyCertSign === false ? 0 : x509.KeyUsageFlags.keyCertSign) |
      x509.KeyUsageFlags.cRLSign |
      x509.KeyUsageFlags.digitalSignature;
    const cert = await x509.X509CertificateGenerator.create(
      {
        serialNumber: nextSerial(),
        subject,
        issuer: this.#subject,
        notBefore,
        notAfter: new Date(notBefore.getTime() + (opts.ttlSec ?? 43_200) * 1000),
        signingAlgorithm: ECDSA_SHA256,
        publicKey: keys.publicKey,
        signingKey: this.#keys.privateKey,
        extensions: [
          new x509.BasicConstraintsExtension(opts.isCA ?? true, opts.pathLen, true),
          new x509.KeyUsagesExtension(flags, true),
          await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, wc),
          await x509.AuthorityKeyIdentifierExtension.create(this.#keys.publicKey, false, wc),
          new x509.SubjectAlternativeNameExtension([{ type: 'url', value: this.trustDomain.idString() }]),
        ],
      },
      wc,
    );
    return new TestCa(this.trustDomain, toNode(cert), keys, subject, this, this.#jwtKeys);
  }

  /**
   * Mints an X.509-SVID for `id` (by default a valid one: one URI SAN, cA=false, digitalSignature,
   * EKU server+client, P-256 key, NotBefore backdated 10s). Options produce the variations tests need.
   */
  async createX509Svid(id: SpiffeId | string, opts: CreateX509SvidOptions = {}): Promise<TestX509Svid> {
    const spiffeId = typeof id === 'string' ? SpiffeId.parse(id) : id;
    const keys = (await subtle.generateKey(EC_P256, true, ['sign', 'verify'])) as CryptoKeyPair;
    const notBefore = opts.notBefore ?? new Date(Date.now() - 10_000);
    const notAfter = opts.notAfter ?? new Date(notBefore.getTime() + (opts.ttlSec ?? 3600) * 1000);
    const ku =
      opts.keyUsage === undefined
        ? { digitalSignature: true, keyEncipherment: true, keyAgreement: true }
        : opts.keyUsage;
    const names: { type: 'url' | 'dns'; value: string }[] = (opts.uriSans ?? [spiffeId.toString()]).map(
      (value) => ({
        type: 'url' as const,
        value,
      }),
    );
    for (const value of opts.extraSans?.uris ?? []) names.push({ type: 'url', value });
    for (const value of opts.extraSans?.dns ?? []) names.push({ type: 'dns', value });
    const extensions: InstanceType<typeof x509.Extension>[] = [
      new x509.BasicConstraintsExtension(opts.isCA ?? false, undefined, true),
      new x509.ExtendedKeyUsageExtension([
        x509.ExtendedKeyUsage.serverAuth,
        x509.ExtendedKeyUsage.clientAuth,
      ]),
      await x509.SubjectKeyIdentifierExtension.create(keys.publicKey, false, wc),
      await x509.AuthorityKeyIdentifierExtension.create(this.#keys.publicKey, false, wc),
    ];
    if (names.length > 0) extensions.push(new x509.SubjectAlternativeNameExtension(names));
    if (ku) {
      const flags =
        (ku.digitalSignature ? x509.KeyUsageFlags.digitalSignature : 0) |
        (ku.keyEncipherment ? x509.KeyUsageFlags.keyEncipherment : 0) |
        (ku.keyAgreement ? x509.KeyUsageFlags.keyAgreement : 0) |
        (ku.keyCertSign ? x509.KeyUsageFlags.keyCertSign : 0) |
        (ku.cRLSign ? x509.KeyUsageFlags.cRLSign : 0);
      extensions.push(new x509.KeyUsagesExtension(flags, true));
    }
    const cert = await x509.X509CertificateGenerator.create(
      {
        serialNumber: nextSerial(),
        subject: 'O=SPIFFE, C=US',
        issuer: this.#subject,
        notBefore,
        notAfter,
        signingAlgorithm: ECDSA_SHA256,
        publicKey: keys.publicKey,
        signingKey: this.#keys.privateKey,
        extensions,
      },
      wc,
    );
    let privateKey = keys.privateKey;
    if (opts.mismatchedKey) {
      privateKey = ((await subtle.generateKey(EC_P256, true, ['sign', 'verify'])) as CryptoKeyPair)
        .privateKey;
    }
    const keyDer = new Uint8Array(await subtle.exportKey('pkcs8', privateKey));
    const certificates = [toNode(cert), ...(opts.includeIntermediates === false ? [] : this.intermediates())];
    const certsDer = new Uint8Array(Buffer.concat(certificates.map((c) => c.raw)));
    const bundleDer = this.x509BundleDer();
    const hint = opts.hint;
    return {
      id: spiffeId,
      hint,
      certificates,
      certsDer,
      keyDer,
      bundleDer,
      toX509Svid: () => X509Svid.parseDer(certsDer, keyDer, hint === undefined ? {} : { hint }),
    };
  }

  /**
   * Mints an SVID that breaks one rule, named after it. `id` defaults to `spiffe://<td>/bad`.
   * `wrong-trust-domain` signs an ID of `other.<td>` with this trust domain's CA.
   */
  createBadX509Svid(kind: BadX509SvidKind, id?: SpiffeId | string): Promise<TestX509Svid> {
    const sid = id ?? SpiffeId.fromSegments(this.trustDomain, 'bad');
    const s = typeof sid === 'string' ? sid : sid.toString();
    const hour = 3_600_000;
    switch (kind) {
      case 'two-uri-sans':
        return this.createX509Svid(sid, { extraSans: { uris: [`${this.trustDomain.idString()}/second`] } });
      case 'no-uri-san':
        return this.createX509Svid(sid, { uriSans: [], extraSans: { dns: ['bad.example'] } });
      case 'non-spiffe-uri-san':
        return this.createX509Svid(sid, { uriSans: ['https://example.org/not-spiffe'] });
      case 'ca-leaf':
        return this.createX509Svid(sid, { isCA: true });
      case 'key-cert-sign-leaf':
        return this.createX509Svid(sid, { keyUsage: { digitalSignature: true, keyCertSign: true } });
      case 'crl-sign-leaf':
        return this.createX509Svid(sid, { keyUsage: { digitalSignature: true, cRLSign: true } });
      case 'no-digital-signature':
        return this.createX509Svid(sid, { keyUsage: { keyEncipherment: true, keyAgreement: true } });
      case 'no-key-usage':
        return this.createX509Svid(sid, { keyUsage: null });
      case 'expired':
        return this.createX509Svid(sid, {
          notBefore: new Date(Date.now() - 2 * hour),
          notAfter: new Date(Date.now() - hour),
        });
      case 'not-yet-valid':
        return this.createX509Svid(sid, { notBefore: new Date(Date.now() + hour) });
      case 'wrong-trust-domain': {
        const other = SpiffeId.parse(
          s.replace(`spiffe://${this.trustDomain.name}`, `spiffe://other.${this.trustDomain.name}`),
        );
        return this.createX509Svid(other);
      }
      case 'key-mismatch':
        return this.createX509Svid(sid, { mismatchedKey: true });
    }
  }

  /** The root certificate(s) of this trust domain as concatenated DER (the Workload API `bundle`). */
  x509BundleDer(): Uint8Array {
    return new Uint8Array(this.root.certificate.raw);
  }

  x509Bundle(): X509Bundle {
    return new X509Bundle(this.trustDomain, [this.root.certificate]);
  }

  /** Adds a JWT signing key to the trust domain and returns its kid (for rotation and alg tests). */
  addJwtKey(alg: JwtSvidAlgorithm = 'ES256', kid: string = randomBytes(16).toString('hex')): string {
    this.#jwtKeys.set(kid, newJwtKey(alg));
    return kid;
  }

  /** Removes a JWT key (the bundle no longer lists it, but tokens can still be signed with it). */
  removeJwtKeyFromBundle(kid: string): void {
    const k = this.#jwtKeys.get(kid);
    if (k) this.#removed.set(kid, k);
    this.#jwtKeys.delete(kid);
  }
  readonly #removed = new Map<string, JwtKey>();

  /** The kid of the default JWT key. */
  get jwtKid(): string {
    return this.#jwtKeys.keys().next().value!;
  }

  /** The standard JWKS the Workload API's FetchJWTBundles returns (no `use`). */
  jwtBundleJwks(): { keys: JsonWebKey[] } {
    return {
      keys: [...this.#jwtKeys].map(([kid, k]) => ({ ...k.publicKey.export({ format: 'jwk' }), kid })),
    };
  }

  jwtBundle(): JwtBundle {
    return new JwtBundle(
      this.trustDomain,
      [...this.#jwtKeys].map(([kid, k]) => [kid, k.publicKey] as const),
    );
  }

  /** Both kinds of authorities in the SPIFFE bundle format. */
  spiffeBundle(opts: { sequenceNumber?: number; refreshHintSec?: number } = {}): SpiffeBundleDocument {
    return new SpiffeBundle(this.trustDomain, {
      x509Authorities: [this.root.certificate],
      jwtAuthorities: [...this.#jwtKeys].map(([kid, k]) => [kid, k.publicKey] as const),
      ...opts,
    }).toDocument();
  }

  /**
   * Mints a JWT-SVID (JWS compact) for `sub` and `aud`, signed with the trust domain's JWT key and
   * header `{ alg, typ: 'JWT', kid }`. Options produce malformed and forged variants.
   */
  createJwtSvid(sub: SpiffeId | string, aud: string | string[], opts: CreateJwtSvidOptions = {}): string {
    const kid = opts.kid ?? this.jwtKid;
    const key = this.#jwtKeys.get(kid) ?? this.#removed.get(kid);
    if (!key) throw new Error(`test CA has no JWT key ${kid}`);
    const alg = opts.alg ?? key.alg;
    const header: Record<string, unknown> = { alg };
    if (opts.typ !== null) header.typ = opts.typ ?? 'JWT';
    if (!opts.omitKid) header.kid = opts.headerKid ?? kid;
    Object.assign(header, opts.header);
    const iat = Math.floor((opts.now ?? new Date()).getTime() / 1000);
    const claims: Record<string, unknown> = {
      sub: sub.toString(),
      aud,
      iat,
      exp: iat + (opts.ttlSec ?? 300),
    };
    if (opts.omitSub) delete claims.sub;
    if (opts.omitAud) delete claims.aud;
    if (opts.omitExp) delete claims.exp;
    Object.assign(claims, opts.claims);
    const input = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
    return `${input}.${b64url(signJws(input, alg, key))}`;
  }
}
