// The SPIFFE-backed workload authenticator (see auth.ts for the types). Kept apart from auth.ts so
// the HTTP layer does not load the SPIFFE library unless the server wires it in.
import {
  type JwtBundleSource,
  parseAndValidateJwtSvid,
  type SpiffeId,
  type X509BundleSource,
  verifyX509Svid,
} from '@taskpass/spiffe';
import type { X509Certificate } from 'node:crypto';
import { x5tS256 } from '@taskpass/contract';
import type { WorkloadAuthenticator, WorkloadIdentity } from './auth.ts';
import { BrokerError } from './errors.ts';

/** Something that announces changes of the X.509 bundles (the X509Source emits 'update'). */
export interface BundleUpdates {
  on(event: 'update', listener: () => void): unknown;
}

// An mTLS identity verified on a connection, valid while the trust bundles are those it was
// verified against (same generation) and `now` lies inside the validity period of every
// certificate of the verified path (leaf, intermediates, root). Inside that window a fresh
// verification of the same chain against the same bundles gives the same answer, so it is skipped.
interface CachedPeer {
  generation: number;
  notBefore: number;
  notAfter: number;
  identity: WorkloadIdentity;
}

const validityWindow = (path: readonly X509Certificate[]): { notBefore: number; notAfter: number } => {
  let notBefore = Number.NEGATIVE_INFINITY;
  let notAfter = Number.POSITIVE_INFINITY;
  for (const c of path) {
    notBefore = Math.max(notBefore, new Date(c.validFrom).getTime());
    notAfter = Math.min(notAfter, new Date(c.validTo).getTime());
  }
  return { notBefore, notAfter };
};

/**
 * Builds the authenticator from bundle sources (live Workload API sources in the server, static
 * bundle sets from the test CA in tests).
 *
 * mTLS identities are cached per connection (`Credentials.connection`, only given for connections
 * whose peer certificate is pinned, see auth.ts `pinPeerIdentity`) when the authenticator can
 * learn of bundle changes: from `x509BundleUpdates`, or from `x509Bundles` itself when it emits
 * 'update' (X509Source). Every 'update' invalidates every cached identity; so does leaving the
 * verified chain's validity period (checked on every request). Without an update signal (a static
 * bundle set that might be mutated in place) nothing is cached.
 */
export function createWorkloadAuthenticator(opts: {
  x509Bundles: X509BundleSource & Partial<BundleUpdates>;
  jwtBundles: JwtBundleSource;
  /** Announces X.509 bundle changes; default: `x509Bundles` when it has `on()`. */
  x509BundleUpdates?: BundleUpdates;
  /** Default audience for JWT-SVIDs (config `jwtSvidAudience`). */
  audience: string;
  /** Trust domains accepted at all (own + federated). */
  trustDomains: readonly string[];
  now?: () => number;
}): WorkloadAuthenticator {
  const tds = new Set(opts.trustDomains);
  const now = opts.now ?? Date.now;
  const updates =
    opts.x509BundleUpdates ??
    (typeof opts.x509Bundles.on === 'function' ? (opts.x509Bundles as BundleUpdates) : undefined);
  let generation = 0;
  updates?.on('update', () => {
    generation++;
  });
  // Keyed by the TLS socket: an entry goes away with its connection.
  const peers = new WeakMap<object, CachedPeer | null>();
  const accept = (id: SpiffeId): void => {
    if (!tds.has(id.trustDomain.name)) {
      throw new BrokerError('TASKPASS_UNAUTHENTICATED', 'the SPIFFE ID belongs to an untrusted trust domain');
    }
  };
  return {
    async authenticate(creds, o) {
      const conn = updates ? creds.connection : undefined;
      const t = now();
      const cached = conn ? peers.get(conn) : undefined;
      let peerChain: readonly X509Certificate[] | undefined;
      if (cached && cached.generation === generation && t >= cached.notBefore && t <= cached.notAfter) {
        return cached.identity;
      }
      // null: this connection presented no client certificate (and cannot present one later).
      if (cached !== null) {
        peerChain = typeof creds.peerChain === 'function' ? creds.peerChain() : creds.peerChain;
        if (conn && (!peerChain || peerChain.length === 0)) peers.set(conn, null);
      }
      if (peerChain && peerChain.length > 0) {
        if (conn) peers.delete(conn);
        const gen = generation;
        let id: SpiffeId;
        let verifiedChain: X509Certificate[];
        try {
          ({ id, verifiedChain } = verifyX509Svid(peerChain, opts.x509Bundles, { now: new Date(t) }));
        } catch (e) {
          throw new BrokerError(
            'TASKPASS_UNAUTHENTICATED',
            'the client certificate is not a valid X.509-SVID',
            undefined,
            {
              cause: e,
            },
          );
        }
        accept(id);
        const identity: WorkloadIdentity = {
          id: id.toString(),
          spiffeId: id,
          trustDomain: id.trustDomain.name,
          method: 'mtls',
          x5tS256: x5tS256(peerChain[0]!),
        };
        if (conn) peers.set(conn, { generation: gen, ...validityWindow(verifiedChain), identity });
        return identity;
      }
      if (creds.jwtSvid) {
        const aud = o?.audience ?? opts.audience;
        let id: SpiffeId;
        try {
          const svid = await parseAndValidateJwtSvid(
            creds.jwtSvid,
            opts.jwtBundles,
            typeof aud === 'string' ? aud : [...aud],
            { now: new Date(now()) },
          );
          id = svid.id;
        } catch (e) {
          throw new BrokerError(
            'TASKPASS_UNAUTHENTICATED',
            'the JWT-SVID is not valid for this broker',
            undefined,
            {
              cause: e,
            },
          );
        }
        accept(id);
        return { id: id.toString(), spiffeId: id, trustDomain: id.trustDomain.name, method: 'jwt-svid' };
      }
      throw new BrokerError(
        'TASKPASS_UNAUTHENTICATED',
        'authenticate with an mTLS X.509-SVID or Authorization: Bearer <JWT-SVID>',
      );
    },
  };
}
