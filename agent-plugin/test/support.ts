// A fake broker for the agent plugin tests: node:http on 127.0.0.1:0 implementing the §3 agent
// routes with canned answers, minting real ES256 JWTs (so tests can decode what reached the MCP
// server) and recording every request.
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type RequestListener, type Server } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { TLSSocket, TlsOptions } from 'node:tls';
import type { AddressInfo } from 'node:net';
import type { KeyObject } from 'node:crypto';
import { decodeJwt, exportJWK, generateKeyPair, type JWTPayload, SignJWT } from 'jose';

type CryptoKeyLike = Parameters<SignJWT['sign']>[0];

export interface Recorded {
  method: string;
  path: string;
  authorization: string | undefined;
  port: number | undefined;
  /** SHA-256 fingerprint of the client certificate (mTLS). */
  peer: string | undefined;
  body: Record<string, unknown> | undefined;
}

export interface Denial {
  status?: number;
  code: string;
  message: string;
  template?: string;
  reason?: string;
}

export interface Canned {
  status: number;
  body: unknown;
}

export interface FakeBrokerOptions {
  /** Refuse a token request (call or session) by returning an error body. */
  deny?: (body: Record<string, unknown>, kind: 'call' | 'session') => Denial | undefined;
  /** Token lifetime in seconds (default 60). */
  ttlSec?: number;
  /** Require this exact Authorization header on /v1 routes (JWT-SVID tests). */
  requireAuthorization?: (authorization: string | undefined) => boolean;
  /** Clock in epoch seconds (default real time). */
  nowSec?: () => number;
  /** Serve HTTPS with these options (mTLS tests); `attach` wires SVID rotation on the server. */
  tls?: { options: TlsOptions; attach?(server: HttpsServer): unknown };
}

export const AGENT_ID = 'spiffe://taskpass.local/agents/support';

export class FakeBroker {
  readonly requests: Recorded[] = [];
  readonly tasks = new Map<string, { status: string; purpose: string; sub: string }>();
  /** Answers this instead of the route's own, when it returns something. */
  override: ((method: string, path: string) => Canned | undefined) | undefined;
  connections = 0;
  url = '';
  #server: Server;
  #opts: FakeBrokerOptions;
  #key: KeyObject | CryptoKeyLike | undefined;
  #seq = 0;

  private constructor(opts: FakeBrokerOptions) {
    this.#opts = opts;
    const listener: RequestListener = (req, res) => {
      this.#handle(req)
        .then(({ status, body }) => {
          res.writeHead(status, { 'content-type': 'application/json' });
          res.end(typeof body === 'string' ? body : JSON.stringify(body));
        })
        .catch((e: unknown) => {
          res.writeHead(500, { 'content-type': 'application/json' });
          res.end(JSON.stringify({ code: 'TASKPASS_INTERNAL', message: String(e) }));
        });
    };
    if (opts.tls) {
      const https = createHttpsServer(opts.tls.options, listener);
      opts.tls.attach?.(https);
      this.#server = https;
    } else this.#server = createServer(listener);
    this.#server.on('connection', () => {
      this.connections++;
    });
  }

  static async start(opts: FakeBrokerOptions = {}): Promise<FakeBroker> {
    const b = new FakeBroker(opts);
    const { privateKey } = await generateKeyPair('ES256', { extractable: true });
    b.#key = privateKey as KeyObject | CryptoKeyLike;
    await exportJWK(privateKey); // fail early if the key is unusable
    await new Promise<void>((resolve) => b.#server.listen(0, '127.0.0.1', resolve));
    b.url = `${opts.tls ? 'https' : 'http'}://127.0.0.1:${(b.#server.address() as AddressInfo).port}`;
    return b;
  }

  now(): number {
    return this.#opts.nowSec?.() ?? Math.floor(Date.now() / 1000);
  }

  /** Requests to a path suffix, e.g. '/tokens'. */
  requestsTo(suffix: string): Recorded[] {
    return this.requests.filter((r) => r.path.endsWith(suffix));
  }

  async close(): Promise<void> {
    this.#server.closeAllConnections();
    await new Promise<void>((resolve) => this.#server.close(() => resolve()));
  }

  async #mint(taskId: string, aud: string, details: Record<string, unknown>, singleUse: boolean) {
    const now = this.now();
    const ttl = this.#opts.ttlSec ?? 60;
    const jti = randomUUID();
    const claims: JWTPayload = {
      sub: this.tasks.get(taskId)?.sub ?? 'user-1',
      act: { sub: AGENT_ID },
      client_id: AGENT_ID,
      txn: taskId,
      authorization_details: [details],
      tpl: 'tickets-support',
      ...(singleUse ? { single_use: true } : {}),
    };
    const token = await new SignJWT(claims)
      .setProtectedHeader({ alg: 'ES256', typ: 'at+jwt', kid: 'k1' })
      .setIssuer('https://broker.test')
      .setAudience(aud)
      .setIssuedAt(now)
      .setExpirationTime(now + ttl)
      .setJti(jti)
      .sign(this.#key!);
    return {
      access_token: token,
      token_type: 'Bearer',
      expires_in: ttl,
      expires_at: now + ttl,
      jti,
      single_use: singleUse,
      template: 'tickets-support',
    };
  }

  async #handle(req: IncomingMessage): Promise<Canned> {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const text = Buffer.concat(chunks).toString('utf8');
    const body = text ? (JSON.parse(text) as Record<string, unknown>) : undefined;
    const method = req.method ?? 'GET';
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    this.requests.push({
      method,
      path,
      authorization: req.headers.authorization,
      port: req.socket.remotePort,
      peer: (req.socket as Partial<TLSSocket>).getPeerCertificate?.()?.fingerprint256,
      body,
    });
    const canned = this.override?.(method, path);
    if (canned) return canned;
    if (this.#opts.requireAuthorization && !this.#opts.requireAuthorization(req.headers.authorization)) {
      return {
        status: 401,
        body: { code: 'TASKPASS_UNAUTHENTICATED', message: 'no valid agent credential' },
      };
    }

    if (method === 'POST' && path === '/v1/tasks') {
      const id = `task-${randomUUID().slice(0, 8)}`;
      const sub = body?.user_token ? 'user-1' : AGENT_ID;
      this.tasks.set(id, { status: 'open', purpose: String(body?.purpose), sub });
      return {
        status: 201,
        body: {
          task_id: id,
          status: 'open',
          expires_at: this.now() + 900,
          sub,
          agent: AGENT_ID,
          ceiling: [
            {
              template: 'tickets-support',
              audience: 'https://tickets.test/mcp',
              tools: [{ tool: 'get_ticket', action: 'read', resources: ['tickets/*'] }],
            },
          ],
        },
      };
    }
    const m = /^\/v1\/tasks\/([^/]+)(\/[a-z-]+)?$/.exec(path);
    const task = m ? this.tasks.get(m[1]!) : undefined;
    if (!m || !task)
      return { status: 404, body: { code: 'TASKPASS_TASK_NOT_FOUND', message: 'No such task.' } };
    const id = m[1]!;
    const sub = m[2];
    if (method === 'GET' && sub === undefined) {
      return {
        status: 200,
        body: {
          task_id: id,
          status: task.status,
          agent: AGENT_ID,
          sub: task.sub,
          purpose: task.purpose,
          created_at: this.now() - 1,
          expires_at: this.now() + 900,
        },
      };
    }
    if (task.status !== 'open') {
      return { status: 409, body: { code: 'TASKPASS_TASK_CLOSED', message: `the task is ${task.status}` } };
    }
    if (method === 'POST' && (sub === '/tokens' || sub === '/session-token')) {
      const kind = sub === '/tokens' ? 'call' : 'session';
      const d = this.#opts.deny?.(body ?? {}, kind);
      if (d) {
        const { status = 403, ...rest } = d;
        return { status, body: rest };
      }
      if (kind === 'session') {
        return {
          status: 200,
          body: await this.#mint(id, String(body?.audience), { type: 'mcp_session' }, false),
        };
      }
      const details = {
        type: 'mcp_tool_call',
        tool: body?.tool,
        resource: body?.resource,
        action: body?.action,
        ...(body?.args_sha256 ? { args_sha256: body.args_sha256 } : {}),
      };
      return {
        status: 200,
        body: await this.#mint(id, String(body?.audience), details, body?.action !== 'read'),
      };
    }
    if (method === 'POST' && sub === '/complete') {
      task.status = String(body?.status);
      return { status: 200, body: { task_id: id, status: task.status, revocation_seq: ++this.#seq } };
    }
    return { status: 404, body: { code: 'TASKPASS_BAD_REQUEST', message: 'unknown route' } };
  }
}

/** The authorization_details[0] of a Bearer header's JWT (or undefined). */
export function detailsOf(authorization: string | undefined): Record<string, unknown> | undefined {
  if (!authorization?.startsWith('Bearer ')) return undefined;
  const claims = decodeJwt(authorization.slice(7));
  return (claims.authorization_details as Record<string, unknown>[] | undefined)?.[0];
}
