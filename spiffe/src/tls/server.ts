// mTLS server side: options built from the current X.509-SVID and bundles, kept current on a
// running server across SVID and bundle rotation, and a post-handshake check of each client.
import type { SecureContextOptions, Server, TLSSocket, TlsOptions } from 'node:tls';
import type { X509Bundle, X509BundleSource } from '../bundle/index.ts';
import { SpiffeError } from '../errors.ts';
import { type SpiffeId, TrustDomain } from '../id.ts';
import type { X509SvidSource } from '../svid/index.ts';
import { type Authorizer, peerSpiffeId, pinPeerCertificate, type VerifyPeerOptions } from './authorize.ts';

/**
 * What the TLS helpers need: the current SVID and bundles, and (for live sources such as
 * `X509Source`) `'update'` events on rotation. Static sources without `on` simply never rotate.
 */
export type TlsSource = X509SvidSource &
  X509BundleSource & {
    on?(event: 'update', listener: () => void): unknown;
    off?(event: 'update', listener: () => void): unknown;
  };

/** Options shared by the server and client helpers. */
export interface TlsHelperOptions {
  /**
   * Trust domains whose bundles go into the handshake's `ca` list. Default: every bundle the
   * source can enumerate (an iterable source such as `X509BundleSet`, or a source with
   * `getX509Bundles()`), else the SVID's own trust domain. Each peer is still validated against
   * its own domain's bundle afterwards.
   */
  trustDomains?: readonly (TrustDomain | string)[];
}

/** Options of {@link mtlsServerOptions}. */
export interface MtlsServerOptions extends TlsHelperOptions, VerifyPeerOptions {
  /** Called when a client is refused after the handshake, or the source has no identity on update. */
  onError?(err: Error, socket?: TLSSocket): void;
}

/** Returned by {@link mtlsServerOptions}. */
export interface MtlsServerHelper {
  /**
   * Options for `tls.createServer` / `https.createServer`: `cert`/`key` from the current SVID,
   * `ca` = the trusted bundles' authorities, `requestCert: true`, `rejectUnauthorized: true`.
   * A snapshot: call {@link MtlsServerHelper.attach} to follow rotation.
   */
  readonly options: TlsOptions;
  /** Secure-context options from the source's current state (what `attach` installs on each update). */
  secureContextOptions(): SecureContextOptions;
  /**
   * Wires a server: swaps its secure context (`server.setSecureContext`) on every source
   * `'update'`, so new connections use the current SVID and bundles, and destroys each connection
   * whose client fails {@link peerSpiffeId} (wrong trust domain chain or refused by `authorize`)
   * before any application data is read. Returns a function that detaches; closing the server
   * detaches too.
   */
  attach<S extends Server>(server: S): () => void;
  /** The verified, authorized SPIFFE ID of a connection's client. @throws SpiffeError */
  peerSpiffeId(socket: TLSSocket): SpiffeId;
}

function isIterableBundles(x: unknown): x is Iterable<X509Bundle> {
  return typeof (x as Partial<Iterable<unknown>>)?.[Symbol.iterator] === 'function';
}

function isBundle(x: unknown): x is X509Bundle {
  const b = x as Partial<X509Bundle>;
  return Array.isArray(b.authorities) && b.trustDomain !== undefined;
}

/**
 * The authorities that go into the handshake `ca` list, as PEM strings.
 *
 * @example
 * ```ts
 * const ca = trustedAuthorities(source, { trustDomains: ['taskpass.local', 'partner.example'] });
 * ```
 * @throws SpiffeError `ERR_SPIFFE_NO_BUNDLE` when the source cannot list its bundles and no
 *   `trustDomains` are given.
 */
export function trustedAuthorities(
  source: X509BundleSource & Partial<X509SvidSource>,
  opts: TlsHelperOptions = {},
): string[] {
  let bundles: X509Bundle[];
  if (opts.trustDomains) {
    bundles = opts.trustDomains
      .map((td) => source.getX509BundleForTrustDomain(typeof td === 'string' ? TrustDomain.parse(td) : td))
      .filter((b): b is X509Bundle => b !== undefined);
  } else {
    const listing = source as { getX509Bundles?(): Iterable<X509Bundle> };
    if (typeof listing.getX509Bundles === 'function') bundles = [...listing.getX509Bundles()];
    else if (isBundle(source)) bundles = [source];
    else if (isIterableBundles(source)) bundles = [...source];
    else if (typeof source.getX509Svid === 'function') {
      const own = source.getX509BundleForTrustDomain(source.getX509Svid().id.trustDomain);
      bundles = own ? [own] : [];
    } else {
      throw new SpiffeError(
        'ERR_SPIFFE_NO_BUNDLE',
        'the bundle source cannot list its bundles; pass trustDomains',
      );
    }
  }
  const pems = new Set<string>();
  for (const b of bundles) for (const a of b.authorities) pems.add(a.toString());
  return [...pems];
}

/**
 * Key, chain and trusted CAs from the source's current state.
 *
 * @example
 * ```ts
 * source.on('update', () => server.setSecureContext(currentSecureContextOptions(source)));
 * ```
 */
export function currentSecureContextOptions(
  source: TlsSource,
  opts: TlsHelperOptions = {},
): SecureContextOptions {
  const svid = source.getX509Svid();
  return { cert: svid.certChainPem(), key: svid.privateKeyPem(), ca: trustedAuthorities(source, opts) };
}

/**
 * mTLS server options that follow a live X.509 source.
 *
 * @example
 * ```ts
 * const source = await X509Source.create();
 * const mtls = mtlsServerOptions(source, matchMemberOf('taskpass.local'));
 * const server = https.createServer(mtls.options, (req, res) => {
 *   res.end(`hello ${mtls.peerSpiffeId(req.socket as TLSSocket)}`);
 * });
 * mtls.attach(server);
 * server.listen(8443);
 * ```
 */
export function mtlsServerOptions(
  source: TlsSource,
  authorize: Authorizer,
  opts: MtlsServerOptions = {},
): MtlsServerHelper {
  const secureContextOptions = () => currentSecureContextOptions(source, opts);
  const verifyOpts: VerifyPeerOptions = opts.now ? { now: opts.now } : {};
  const verify = (socket: TLSSocket) => peerSpiffeId(socket, source, authorize, verifyOpts);
  return {
    options: { ...secureContextOptions(), requestCert: true, rejectUnauthorized: true },
    secureContextOptions,
    peerSpiffeId: verify,
    attach(server) {
      const onUpdate = () => {
        try {
          server.setSecureContext(secureContextOptions());
        } catch (e) {
          // No identity (redacted) or a bad update: keep the last good context; the source reports it.
          opts.onError?.(e as Error);
        }
      };
      const onSecureConnection = (socket: TLSSocket) => {
        // The identity verified now is cached for the connection: the certificate must not change.
        pinPeerCertificate(socket);
        try {
          verify(socket);
        } catch (e) {
          opts.onError?.(e as Error, socket);
          socket.destroy();
        }
      };
      // Prepended so it runs before https' own listener starts reading the request.
      server.prependListener('secureConnection', onSecureConnection);
      source.on?.('update', onUpdate);
      const detach = () => {
        server.off('secureConnection', onSecureConnection);
        source.off?.('update', onUpdate);
      };
      server.once('close', detach);
      return detach;
    },
  };
}
