// X.509 bundles: the CA certificates a trust domain's X.509-SVIDs chain up to.
import { X509Certificate } from 'node:crypto';
import { SpiffeError } from '../errors.ts';
import type { TrustDomain } from '../id.ts';
import { splitDer } from '../internal/der.ts';

/** Anything that can hand out the X.509 bundle of a trust domain (a static set, a live source). */
export interface X509BundleSource {
  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined;
}

/**
 * The X.509 authorities of one trust domain.
 *
 * @example
 * ```ts
 * const bundle = X509Bundle.fromDer(TrustDomain.parse('example.org'), bundleBytes);
 * bundle.authorities.length; // number of CA certificates
 * ```
 */
export class X509Bundle implements X509BundleSource {
  readonly trustDomain: TrustDomain;
  readonly authorities: readonly X509Certificate[];

  constructor(trustDomain: TrustDomain, authorities: readonly X509Certificate[] = []) {
    this.trustDomain = trustDomain;
    this.authorities = Object.freeze([...authorities]);
  }

  /**
   * Parses concatenated DER certificates (the Workload API's `bundle` and `federated_bundles`
   * values). Node's `X509Certificate` would silently read only the first one, so the bytes are
   * split by ASN.1 length first. Empty input gives an empty bundle.
   *
   * @throws SpiffeError `ERR_SPIFFE_INVALID_BUNDLE`
   */
  static fromDer(trustDomain: TrustDomain, der: Uint8Array): X509Bundle {
    const parts = splitDer(der, 'ERR_SPIFFE_INVALID_BUNDLE');
    return new X509Bundle(trustDomain, parts.map(parseCert));
  }

  /**
   * Parses PEM `CERTIFICATE` blocks; other block types are ignored. At least one certificate is
   * required, because a PEM file without one is almost always the wrong file.
   *
   * @example
   * ```ts
   * const bundle = X509Bundle.fromPem(td, readFileSync('bundle.pem', 'utf8'));
   * ```
   * @throws SpiffeError `ERR_SPIFFE_INVALID_BUNDLE`
   */
  static fromPem(trustDomain: TrustDomain, pem: string): X509Bundle {
    const certs: X509Certificate[] = [];
    const re = /-----BEGIN CERTIFICATE-----([^-]*)-----END CERTIFICATE-----/g;
    for (const m of pem.matchAll(re)) {
      const der = Buffer.from(m[1]!.replace(/\s+/g, ''), 'base64');
      const parts = splitDer(der, 'ERR_SPIFFE_INVALID_BUNDLE');
      if (parts.length !== 1) {
        throw new SpiffeError(
          'ERR_SPIFFE_INVALID_BUNDLE',
          'a PEM CERTIFICATE block must hold exactly one certificate',
        );
      }
      certs.push(parseCert(parts[0]!));
    }
    if (certs.length === 0)
      throw new SpiffeError('ERR_SPIFFE_INVALID_BUNDLE', 'no certificates found in PEM');
    return new X509Bundle(trustDomain, certs);
  }

  /** True if `cert` is one of the authorities (byte-for-byte). */
  hasAuthority(cert: X509Certificate): boolean {
    return this.authorities.some((a) => a.raw.equals(cert.raw));
  }

  /** Concatenated DER, the Workload API wire form. */
  toDer(): Uint8Array {
    return Buffer.concat(this.authorities.map((a) => a.raw));
  }

  toPem(): string {
    return this.authorities.map((a) => a.toString()).join('');
  }

  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined {
    return td.equals(this.trustDomain) ? this : undefined;
  }

  equals(o: X509Bundle): boolean {
    return (
      o.trustDomain.equals(this.trustDomain) &&
      o.authorities.length === this.authorities.length &&
      o.authorities.every((a, i) => a.raw.equals(this.authorities[i]!.raw))
    );
  }
}

function parseCert(der: Uint8Array): X509Certificate {
  try {
    return new X509Certificate(der);
  } catch (e) {
    throw new SpiffeError('ERR_SPIFFE_INVALID_BUNDLE', 'bundle holds an unparseable certificate', {
      cause: e,
    });
  }
}

/**
 * X.509 bundles of several trust domains, keyed by trust domain. A static {@link X509BundleSource}.
 *
 * @example
 * ```ts
 * const set = new X509BundleSet([localBundle, federatedBundle]);
 * set.getX509BundleForTrustDomain(TrustDomain.parse('partner.org'));
 * ```
 */
export class X509BundleSet implements X509BundleSource, Iterable<X509Bundle> {
  private readonly byName = new Map<string, X509Bundle>();

  constructor(bundles: Iterable<X509Bundle> = []) {
    for (const b of bundles) this.add(b);
  }

  /** Adds or replaces the bundle of `bundle.trustDomain`. */
  add(bundle: X509Bundle): void {
    this.byName.set(bundle.trustDomain.name, bundle);
  }

  remove(td: TrustDomain): boolean {
    return this.byName.delete(td.name);
  }

  get(td: TrustDomain): X509Bundle | undefined {
    return this.byName.get(td.name);
  }

  has(td: TrustDomain): boolean {
    return this.byName.has(td.name);
  }

  get size(): number {
    return this.byName.size;
  }

  getX509BundleForTrustDomain(td: TrustDomain): X509Bundle | undefined {
    return this.get(td);
  }

  [Symbol.iterator](): Iterator<X509Bundle> {
    return this.byName.values();
  }
}
