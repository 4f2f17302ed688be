// The SPIFFE-backed workload authenticator (see auth.ts for the types). Kept apart from auth.ts so
// the HTTP layer does not load the SPIFFE library unless the server wires it in.
import {
  type JwtBundleSource,
  parseAndValidateJwtSvid,
  type SpiffeId,
  type X509BundleSource,
  verifyX509Svid,
  x5tS256,
} from '@taskpass/spiffe';
import type { WorkloadAuthenticator } from './auth.ts';
import { TaskpassError } from './errors.ts';

/**
 * Builds the authenticator from bundle sources (live Workload API sources in the server, static
 * bundle sets from the test CA in tests).
 */
export function createWorkloadAuthenticator(opts: {
  x509Bundles: X509BundleSource;
  jwtBundles: JwtBundleSource;
  /** Default audience for JWT-SVIDs (config `jwtSvidAudience`). */
  audience: string;
  /** Trust domains accepted at all (own + federated). */
  trustDomains: readonly string[];
  now?: () => number;
}): WorkloadAuthenticator {
  const tds = new Set(opts.trustDomains);
  const now = opts.now ?? Date.now;
  const accept = (id: SpiffeId): void => {
    if (!tds.has(id.trustDomain.name)) {
      throw new TaskpassError(
        'TASKPASS_UNAUTHENTICATED',
        'the SPIFFE ID belongs to an untrusted trust domain',
      );
    }
  };
  return {
    async authenticate(creds, o) {
      if (creds.peerChain && creds.peerChain.length > 0) {
        let id: SpiffeId;
        try {
          id = verifyX509Svid(creds.peerChain, opts.x509Bundles, { now: new Date(now()) }).id;
        } catch (e) {
          throw new TaskpassError(
            'TASKPASS_UNAUTHENTICATED',
            'the client certificate is not a valid X.509-SVID',
            undefined,
            {
              cause: e,
            },
          );
        }
        accept(id);
        return {
          id: id.toString(),
          spiffeId: id,
          trustDomain: id.trustDomain.name,
          method: 'mtls',
          x5tS256: x5tS256(creds.peerChain[0]!),
        };
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
          throw new TaskpassError(
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
      throw new TaskpassError(
        'TASKPASS_UNAUTHENTICATED',
        'authenticate with an mTLS X.509-SVID or Authorization: Bearer <JWT-SVID>',
      );
    },
  };
}
