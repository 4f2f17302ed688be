// Test fixtures: a broker signing key with its JWKS, a token minter shaped like broker/src/mint.ts,
// and tiny HTTP servers (JWKS, revocation feed) on 127.0.0.1:0.
import { randomUUID, type webcrypto } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { Readable } from 'node:stream';
import { exportJWK, generateKeyPair, type JSONWebKeySet, type JWK, SignJWT } from 'jose';
import { createVerifier, type Verifier, type VerifierOptions } from '../src/core.ts';
import { type MiddlewareOptions, taskpassMiddleware } from '../src/http.ts';
import type { Revocation } from '@taskpass/contract';

export const ISSUER = 'https://broker.taskpass.test';
export const AUDIENCE = 'https://tickets.taskpass.test/mcp';
export const AGENT = 'spiffe://taskpass.test/agents/support/a1';
export const USER = 'alice';

export interface Key {
  kid: string;
  privateKey: webcrypto.CryptoKey;
  jwk: JWK;
}

export async function newKey(kid: string = randomUUID()): Promise<Key> {
  const { privateKey, publicKey } = await generateKeyPair('ES256', { extractable: true });
  const jwk = { ...(await exportJWK(publicKey)), kid, alg: 'ES256', use: 'sig' };
  return { kid, privateKey, jwk };
}

export const jwksOf = (...keys: Key[]): JSONWebKeySet => ({ keys: keys.map((k) => k.jwk) });

/** A verifier for this file's issuer and audience, trusting `key`. */
export function verifierFor(
  key: Key,
  options: Omit<VerifierOptions, 'issuer' | 'audience' | 'jwks'>,
): Verifier {
  return createVerifier({ issuer: ISSUER, audience: AUDIENCE, jwks: jwksOf(key), ...options });
}

export interface MintOptions {
  key: Key;
  claims?: Record<string, unknown>;
  /** Claims to delete after defaults are applied. */
  drop?: string[];
  header?: Record<string, unknown>;
  detail?: Record<string, unknown>;
  /** Seconds relative to now. */
  iat?: number;
  ttl?: number;
  now?: number;
}

/** Mints a Taskpass call token (defaults: get_ticket read on tickets/T-1). */
export async function mint(o: MintOptions): Promise<string> {
  const now = Math.floor((o.now ?? Date.now()) / 1000);
  const iat = now + (o.iat ?? 0);
  const claims: Record<string, unknown> = {
    iss: ISSUER,
    sub: USER,
    act: { sub: AGENT },
    client_id: AGENT,
    aud: AUDIENCE,
    iat,
    exp: iat + (o.ttl ?? 60),
    jti: randomUUID(),
    txn: 'task-1',
    authorization_details: [
      { type: 'mcp_tool_call', tool: 'get_ticket', resource: 'tickets/T-1', action: 'read', ...o.detail },
    ],
    tpl: 'tickets-support-read',
    ...o.claims,
  };
  for (const d of o.drop ?? []) delete claims[d];
  return new SignJWT(claims)
    .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: o.key.kid, ...o.header })
    .sign(o.key.privateKey);
}

export async function listen(
  handler: (req: IncomingMessage, res: ServerResponse) => void,
): Promise<{ server: Server; url: string; close(): Promise<void> }> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const { port } = server.address() as AddressInfo;
  return {
    server,
    url: `http://127.0.0.1:${port}`,
    close: () =>
      new Promise<void>((r) => {
        server.closeAllConnections();
        server.close(() => r());
      }),
  };
}

/** A JWKS server whose key set can be swapped; counts fetches. */
export async function jwksServer(initial: JSONWebKeySet) {
  let jwks = initial;
  let fetches = 0;
  const s = await listen((_req, res) => {
    fetches++;
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(jwks));
  });
  return {
    ...s,
    uri: `${s.url}/.well-known/jwks.json`,
    set(j: JSONWebKeySet) {
      jwks = j;
    },
    get fetches() {
      return fetches;
    },
  };
}

/** A fake broker revocation feed (SSE per docs/design.md §4) plus the pull route. */
export async function feedServer(
  opts: {
    /** Format 2 (when the client asks for it): snapshot pages of this many revocations. */
    pageSize?: number;
    /** Cut the first stream after this many snapshot pages (a connection lost mid-snapshot). */
    cutFirstStreamAfterPages?: number;
  } = {},
) {
  const log: Revocation[] = [];
  const streams = new Set<ServerResponse>();
  const connects: { lastEventId: string | undefined }[] = [];
  let seq = 0;
  const send = (res: ServerResponse, event: string, data: unknown, id?: number) =>
    res.write(`event: ${event}\n${id === undefined ? '' : `id: ${id}\n`}data: ${JSON.stringify(data)}\n\n`);
  const s = await listen((req, res) => {
    const url = new URL(req.url ?? '/', 'http://x');
    if (url.pathname === '/v1/revocations') {
      const since = Number(url.searchParams.get('since') ?? 0);
      res
        .writeHead(200, { 'content-type': 'application/json' })
        .end(JSON.stringify({ seq, revocations: log.filter((r) => r.seq > since) }));
      return;
    }
    if (url.pathname !== '/v1/revocations/stream') {
      res.writeHead(404).end();
      return;
    }
    const last = req.headers['last-event-id'];
    connects.push({ lastEventId: typeof last === 'string' ? last : undefined });
    const since = typeof last === 'string' ? Number(last) : 0;
    res.writeHead(200, { 'content-type': 'text/event-stream', 'cache-control': 'no-cache' });
    const snapshot = log.filter((r) => r.seq > since);
    if (opts.pageSize && req.headers['taskpass-feed-version'] === '2') {
      let pages = 0;
      while (snapshot.length > opts.pageSize) {
        const page = snapshot.splice(0, opts.pageSize);
        send(res, 'snapshot-page', { seq: page.at(-1)!.seq, revocations: page }, page.at(-1)!.seq);
        if (connects.length === 1 && ++pages === opts.cutFirstStreamAfterPages) {
          res.end();
          return;
        }
      }
    }
    send(res, 'snapshot', { seq, revocations: snapshot }, seq);
    streams.add(res);
    res.on('close', () => streams.delete(res));
  });
  return {
    ...s,
    connects,
    get streams() {
      return streams.size;
    },
    /** Records a revocation; `silent` keeps it off open streams (a dropped event). */
    revoke(kind: 'task' | 'token', id: string, opts: { silent?: boolean } = {}): Revocation {
      const r: Revocation = {
        seq: ++seq,
        kind,
        id,
        until: Math.floor(Date.now() / 1000) + 120,
        reason: 'test',
      };
      log.push(r);
      if (!opts.silent) for (const res of streams) send(res, 'revoked', r, r.seq);
      return r;
    },
    /** Sends any event to every open stream. */
    event(name: string, data: unknown) {
      for (const res of streams) send(res, name, data);
    },
    heartbeat() {
      for (const res of streams) send(res, 'heartbeat', { seq, now: Math.floor(Date.now() / 1000) });
    },
    /** Drops every open stream (the client should reconnect and resume). */
    dropStreams() {
      for (const res of streams) res.destroy();
      streams.clear();
    },
  };
}

/** Polls until `f` is true (or fails after `ms`). */
export async function until(f: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('condition not met in time');
    await new Promise((r) => setTimeout(r, 10));
  }
}

export interface FakeRequest {
  headers?: Record<string, string | string[]>;
  body?: string | Buffer;
  remoteAddress?: string;
  url?: string;
  method?: string;
}

/** A node:http-shaped request whose body records whether anyone read it. */
export function fakeRequest(o: FakeRequest) {
  const chunks = o.body === undefined ? [] : [Buffer.from(o.body)];
  let read = false;
  const stream = Readable.from(
    (function* () {
      read = true;
      yield* chunks;
    })(),
  );
  const rawHeaders: string[] = [];
  for (const [k, v] of Object.entries(o.headers ?? {})) for (const one of [v].flat()) rawHeaders.push(k, one);
  const headers: Record<string, string> = {};
  const distinct: Record<string, string[]> = {};
  for (let i = 0; i < rawHeaders.length; i += 2) {
    const k = rawHeaders[i]!.toLowerCase();
    distinct[k] = [...(distinct[k] ?? []), rawHeaders[i + 1]!];
    headers[k] ??= rawHeaders[i + 1]!; // node:http keeps the first Authorization
  }
  const req = Object.assign(stream, {
    method: o.method ?? 'POST',
    url: o.url ?? '/mcp',
    headers,
    rawHeaders,
    headersDistinct: distinct,
    socket: { remoteAddress: o.remoteAddress ?? '127.0.0.1' },
  }) as unknown as IncomingMessage;
  return { req, wasRead: () => read };
}

/** Runs taskpassMiddleware on a fake request; status 200 when it called next(). */
export async function runMiddleware(verifier: Verifier, o: FakeRequest, opts: MiddlewareOptions = {}) {
  const { req, wasRead } = fakeRequest(o);
  let status = 0;
  let headers: Record<string, string> = {};
  let body = '';
  let nextCalled = false;
  const res = {
    writeHead(s: number, h: Record<string, string>) {
      status = s;
      headers = h;
      return res;
    },
    end(b: string) {
      body = b;
    },
  } as unknown as ServerResponse;
  await taskpassMiddleware(verifier, opts)(req, res, () => {
    nextCalled = true;
  });
  return {
    status: nextCalled ? 200 : status,
    headers,
    json: body ? (JSON.parse(body) as { code?: string; error?: { data?: { code?: string } } }) : undefined,
    wasRead: wasRead(),
    req: req as IncomingMessage & { auth?: { extra?: { taskpass?: { agent?: string } } } },
  };
}
