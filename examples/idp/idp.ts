// A small local OIDC-style identity provider for the demo: its own ES256 key, a discovery document
// and a JWKS, served on loopback. The broker trusts it exactly as it would trust a real IdP (issuer +
// jwks_uri in its configuration); the demo asks it for Alice's ID token.
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';

export interface Idp {
  /** The issuer identifier (`iss`). */
  readonly issuer: string;
  /** Where the JWKS is served (loopback). */
  readonly jwksUri: string;
  readonly discoveryUrl: string;
  /** Mints an ID token for a user. */
  idToken(user: {
    sub: string;
    email?: string;
    groups?: string[];
    audience: string;
    ttlSec?: number;
  }): Promise<string>;
  close(): Promise<void>;
}

export async function startIdp(opts: { issuer?: string; host?: string; port?: number } = {}): Promise<Idp> {
  const issuer = opts.issuer ?? 'https://idp.taskpass.local';
  const { privateKey, publicKey } = await generateKeyPair('ES256');
  const kid = `idp-${Date.now().toString(36)}`;
  const jwk: JWK = { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' };

  let base = '';
  const server: Server = createServer((req, res) => {
    const json = (status: number, body: unknown) => {
      res.writeHead(status, { 'content-type': 'application/json', 'cache-control': 'max-age=60' });
      res.end(JSON.stringify(body));
    };
    if (req.method !== 'GET') return json(405, { error: 'method_not_allowed' });
    if (req.url === '/.well-known/openid-configuration') {
      return json(200, {
        issuer,
        jwks_uri: `${base}/jwks.json`,
        id_token_signing_alg_values_supported: ['ES256'],
        subject_types_supported: ['public'],
        response_types_supported: ['id_token'],
      });
    }
    if (req.url === '/jwks.json') return json(200, { keys: [jwk] });
    return json(404, { error: 'not_found' });
  });
  await new Promise<void>((resolve) => server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', resolve));
  const addr = server.address() as AddressInfo;
  base = `http://${addr.address}:${addr.port}`;

  return {
    issuer,
    jwksUri: `${base}/jwks.json`,
    discoveryUrl: `${base}/.well-known/openid-configuration`,
    async idToken({ sub, email, groups, audience, ttlSec = 600 }) {
      return new SignJWT({ ...(email ? { email } : {}), ...(groups ? { groups } : {}) })
        .setProtectedHeader({ alg: 'ES256', kid, typ: 'JWT' })
        .setIssuer(issuer)
        .setSubject(sub)
        .setAudience(audience)
        .setIssuedAt()
        .setExpirationTime(`${ttlSec}s`)
        .sign(privateKey);
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
