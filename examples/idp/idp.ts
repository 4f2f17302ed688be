// A small local OIDC identity provider for the demo: its own ES256 key, a discovery document and a
// JWKS, served on loopback. The broker trusts it exactly as it would trust a real IdP (issuer +
// jwks_uri in its configuration); the demo asks it for Alice's ID token (`idToken()`).
//
// For the console it is also an OpenID Provider for the authorization code flow with PKCE:
// `/authorize` shows a login page listing the demo users (no passwords: a demo), `/token` redeems
// the code for an ID token once, against the S256 code verifier, for a registered client and
// redirect URI only.
import { createHash, randomBytes, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { exportJWK, generateKeyPair, type JWK, SignJWT } from 'jose';

/** A person the demo IdP can sign in. */
export interface IdpUser {
  sub: string;
  name: string;
  email: string;
  groups: string[];
}

/** The demo's people: Alice asks, Bob (a support lead) approves, Olivia administers the broker. */
export const DEMO_USERS: readonly IdpUser[] = [
  { sub: 'alice', name: 'Alice', email: 'alice@taskpass.local', groups: ['support'] },
  { sub: 'bob', name: 'Bob', email: 'bob@taskpass.local', groups: ['support', 'support-leads'] },
  { sub: 'olivia', name: 'Olivia', email: 'olivia@taskpass.local', groups: ['taskpass-admins'] },
];

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
    /** The user's region (the ticket desk's Rego and Cedar rules compare it with the ticket's). */
    region?: string;
    audience: string;
    ttlSec?: number;
  }): Promise<string>;
  /** Lets a relying party (the console) sign people in: its client id and exact redirect URIs. */
  registerClient(client: { clientId: string; redirectUris: string[] }): void;
  close(): Promise<void>;
}

interface PendingCode {
  clientId: string;
  redirectUri: string;
  challenge: string;
  nonce: string | undefined;
  user: IdpUser;
  expires: number;
}

const esc = (s: string): string => s.replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);

async function readForm(req: IncomingMessage): Promise<URLSearchParams> {
  let body = '';
  for await (const chunk of req) {
    body += chunk;
    if (body.length > 16384) throw new Error('form too large');
  }
  return new URLSearchParams(body);
}

export async function startIdp(
  opts: { issuer?: string; host?: string; port?: number; users?: readonly IdpUser[] } = {},
): Promise<Idp> {
  const issuer = opts.issuer ?? 'https://idp.taskpass.local';
  const users = opts.users ?? DEMO_USERS;
  const { privateKey, publicKey } = await generateKeyPair('ES256');
  const kid = `idp-${Date.now().toString(36)}`;
  const jwk: JWK = { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' };
  const clients = new Map<string, Set<string>>();
  const codes = new Map<string, PendingCode>();

  const sign = (claims: Record<string, unknown>, sub: string, audience: string, ttlSec: number) =>
    new SignJWT(claims)
      .setProtectedHeader({ alg: 'ES256', kid, typ: 'JWT' })
      .setIssuer(issuer)
      .setSubject(sub)
      .setAudience(audience)
      .setIssuedAt()
      .setExpirationTime(`${ttlSec}s`)
      .sign(privateKey);

  let base = '';
  const json = (res: ServerResponse, status: number, body: unknown, cache = 'no-store') => {
    res.writeHead(status, { 'content-type': 'application/json', 'cache-control': cache });
    res.end(JSON.stringify(body));
  };

  /** The authorization request, checked; an error message when it cannot be answered at all. */
  const authRequest = (p: URLSearchParams) => {
    const clientId = p.get('client_id') ?? '';
    const redirectUri = p.get('redirect_uri') ?? '';
    // An unknown client or redirect URI is never redirected to (that would be an open redirector).
    if (!clients.get(clientId)?.has(redirectUri)) return { error: 'unknown client or redirect_uri' } as const;
    if (p.get('response_type') !== 'code') return { error: 'response_type must be code' } as const;
    if (
      p.get('code_challenge_method') !== 'S256' ||
      !/^[A-Za-z0-9_-]{43}$/.test(p.get('code_challenge') ?? '')
    ) {
      return { error: 'PKCE with S256 is required' } as const;
    }
    if (!(p.get('scope') ?? '').split(' ').includes('openid'))
      return { error: 'scope must include openid' } as const;
    return {
      clientId,
      redirectUri,
      challenge: p.get('code_challenge') ?? '',
      state: p.get('state') ?? '',
      nonce: p.get('nonce') ?? undefined,
    } as const;
  };

  const loginPage = (p: URLSearchParams): string => {
    const hidden = [...p.entries()]
      .filter(([k]) => k !== 'user')
      .map(([k, v]) => `<input type="hidden" name="${esc(k)}" value="${esc(v)}">`)
      .join('');
    const buttons = users
      .map(
        (u) =>
          `<p><button type="submit" name="user" value="${esc(u.sub)}">Sign in as ${esc(u.name)}</button> <small>${esc(u.email)} · ${esc(u.groups.join(', '))}</small></p>`,
      )
      .join('');
    return `<!doctype html><html lang="en"><meta charset="utf-8"><title>Demo IdP — sign in</title><h1>Demo identity provider</h1><p>Choose who you are (demo users, no password).</p><form method="post" action="/authorize">${hidden}${buttons}</form></html>`;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse): Promise<void> => {
    const url = new URL(req.url ?? '/', base);
    if (req.method === 'GET' && url.pathname === '/.well-known/openid-configuration') {
      return json(
        res,
        200,
        {
          issuer,
          jwks_uri: `${base}/jwks.json`,
          authorization_endpoint: `${base}/authorize`,
          token_endpoint: `${base}/token`,
          id_token_signing_alg_values_supported: ['ES256'],
          subject_types_supported: ['public'],
          response_types_supported: ['code', 'id_token'],
          grant_types_supported: ['authorization_code'],
          code_challenge_methods_supported: ['S256'],
          token_endpoint_auth_methods_supported: ['none'],
          scopes_supported: ['openid', 'profile', 'email', 'groups'],
          authorization_response_iss_parameter_supported: true,
        },
        'max-age=60',
      );
    }
    // Browsers ask every origin for its icon; the demo IdP has none (204 instead of a 404 to log).
    if (url.pathname === '/favicon.ico') {
      res.writeHead(204, { 'cache-control': 'max-age=86400' });
      res.end();
      return;
    }
    if (req.method === 'GET' && url.pathname === '/jwks.json')
      return json(res, 200, { keys: [jwk] }, 'max-age=60');
    if (url.pathname === '/authorize' && (req.method === 'GET' || req.method === 'POST')) {
      const p = req.method === 'GET' ? url.searchParams : await readForm(req);
      const a = authRequest(p);
      if ('error' in a) return json(res, 400, { error: 'invalid_request', error_description: a.error });
      if (req.method === 'GET') {
        res.writeHead(200, {
          'content-type': 'text/html; charset=utf-8',
          'cache-control': 'no-store',
          // The form posts here and is redirected on to the client's registered redirect URI:
          // browsers apply form-action to that redirect too, so its origin is allowed (only it).
          'content-security-policy': `default-src 'none'; form-action 'self' ${new URL(a.redirectUri).origin}; frame-ancestors 'none'`,
          'x-content-type-options': 'nosniff',
        });
        res.end(loginPage(p));
        return;
      }
      const user = users.find((u) => u.sub === p.get('user'));
      if (!user) return json(res, 400, { error: 'invalid_request', error_description: 'unknown user' });
      const code = randomBytes(32).toString('base64url');
      codes.set(code, { ...a, user, expires: Date.now() + 60_000 });
      const back = new URL(a.redirectUri);
      back.searchParams.set('code', code);
      back.searchParams.set('state', a.state);
      back.searchParams.set('iss', issuer);
      res.writeHead(303, { location: back.toString(), 'cache-control': 'no-store' });
      res.end();
      return;
    }
    if (req.method === 'POST' && url.pathname === '/token') {
      const p = await readForm(req);
      const code = p.get('code') ?? '';
      const pending = codes.get(code);
      codes.delete(code); // one use, whatever happens next
      const bad = (why: string) => json(res, 400, { error: 'invalid_grant', error_description: why });
      if (p.get('grant_type') !== 'authorization_code')
        return json(res, 400, { error: 'unsupported_grant_type' });
      if (!pending || pending.expires < Date.now()) return bad('unknown, used or expired code');
      if (p.get('client_id') !== pending.clientId || p.get('redirect_uri') !== pending.redirectUri) {
        return bad('client_id or redirect_uri differ from the authorization request');
      }
      const verifier = p.get('code_verifier') ?? '';
      const computed = Buffer.from(createHash('sha256').update(verifier).digest('base64url'));
      const expected = Buffer.from(pending.challenge);
      if (computed.length !== expected.length || !timingSafeEqual(computed, expected)) {
        return bad('code_verifier does not match the code_challenge');
      }
      const u = pending.user;
      const idToken = await sign(
        {
          name: u.name,
          email: u.email,
          groups: u.groups,
          ...(pending.nonce ? { nonce: pending.nonce } : {}),
        },
        u.sub,
        pending.clientId,
        600,
      );
      return json(res, 200, { id_token: idToken, token_type: 'Bearer', expires_in: 600 });
    }
    return json(res, 404, { error: 'not_found' });
  };

  const server: Server = createServer((req, res) => {
    handle(req, res).catch(() => {
      if (!res.headersSent) json(res, 400, { error: 'invalid_request' });
      else res.end();
    });
  });
  await new Promise<void>((resolve) => server.listen(opts.port ?? 0, opts.host ?? '127.0.0.1', resolve));
  const addr = server.address() as AddressInfo;
  base = `http://${addr.address}:${addr.port}`;

  return {
    issuer,
    jwksUri: `${base}/jwks.json`,
    discoveryUrl: `${base}/.well-known/openid-configuration`,
    async idToken({ sub, email, groups, region, audience, ttlSec = 600 }) {
      const claims = {
        ...(email ? { email } : {}),
        ...(groups ? { groups } : {}),
        ...(region ? { region } : {}),
      };
      return sign(claims, sub, audience, ttlSec);
    },
    registerClient({ clientId, redirectUris }) {
      const set = clients.get(clientId) ?? new Set<string>();
      for (const u of redirectUris) set.add(u);
      clients.set(clientId, set);
    },
    close: () => new Promise<void>((resolve) => server.close(() => resolve())),
  };
}
