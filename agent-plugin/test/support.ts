// A fake broker for the agent plugin tests: node:http on 127.0.0.1:0 implementing the §3 agent
// routes with canned answers, minting real ES256 JWTs (so tests can decode what reached the MCP
// server) and recording every request.
import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type RequestListener, type Server } from 'node:http';
import { createServer as createHttpsServer, type Server as HttpsServer } from 'node:https';
import type { TLSSocket, TlsOptions } from 'node:tls';
import type { AddressInfo } from 'node:net';
import type { KeyObject } from 'node:crypto';
import type { ApprovalStatus, ApprovalView } from '@taskpass/contract';
import { decodeJwt, exportJWK, generateKeyPair, type JWTPayload, SignJWT } from 'jose';

type CryptoKeyLike = Parameters<SignJWT['sign']>[0];

export interface Recorded {
  method: string;
  path: string;
  /** The query string, without `?`. */
  query: string;
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
  /** Call token requests for which this is true need a person's approval (issue #9). */
  needsApproval?: (body: Record<string, unknown>) => boolean;
  /** The ceiling `POST /v1/tasks` answers (default: get_ticket read on tickets/*). */
  ceiling?: unknown[];
}

/** An approval at the fake broker: the ApprovalView it answers, plus who waits on it. */
export interface FakeApproval {
  view: ApprovalView;
  taskId: string;
  waiters: Set<() => void>;
}

export const AGENT_ID = 'spiffe://taskpass.local/agents/support';

export class FakeBroker {
  readonly requests: Recorded[] = [];
  readonly tasks = new Map<string, { status: string; purpose: string; sub: string }>();
  readonly approvals = new Map<string, FakeApproval>();
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

  /**
   * Decides (or expires, cancels) an approval as a person or the broker would; long polls waiting
   * on it return at once.
   */
  decide(id: string, status: ApprovalStatus, comment?: string): void {
    const a = this.approvals.get(id);
    if (!a) throw new Error(`no approval ${id}`);
    a.view.status = status;
    if (status === 'approved' || status === 'denied') {
      a.view.decision = {
        decision: status === 'approved' ? 'approve' : 'deny',
        approver: { iss: 'https://idp.test', sub: 'lead-1' },
        decided_at: this.now(),
        ...(comment ? { comment } : {}),
      };
    }
    for (const w of a.waiters) w();
    a.waiters.clear();
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
    const u = new URL(req.url ?? '/', 'http://x');
    const path = u.pathname;
    this.requests.push({
      method,
      path,
      query: u.search.slice(1),
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
          ceiling: this.#opts.ceiling ?? [
            {
              template: 'tickets-support',
              audience: 'https://tickets.test/mcp',
              tools: [{ tool: 'get_ticket', action: 'read', resources: ['tickets/*'] }],
            },
          ],
        },
      };
    }
    const am = /^\/v1\/approvals\/([^/]+)$/.exec(path);
    if (method === 'GET' && am) return this.#approvalView(am[1]!, Number(u.searchParams.get('wait') ?? 0));
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
      let approval: Record<string, unknown> | undefined;
      if (this.#opts.needsApproval?.(body ?? {})) {
        const a = this.#approvalFor(id, body ?? {});
        if (a.view.status !== 'approved') return this.#approvalAnswer(a);
        a.view.status = 'used'; // one approval, one token
        approval = {
          id: a.view.id,
          approver: a.view.decision!.approver,
          approved_at: a.view.decision!.decided_at,
        };
      }
      const details = {
        type: 'mcp_tool_call',
        tool: body?.tool,
        resource: body?.resource,
        action: body?.action,
        ...(body?.args_sha256 ? { args_sha256: body.args_sha256 } : {}),
        ...(approval ? { approval } : {}),
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

  // The same call (task, tool, resource, digest) while not finished reuses its approval.
  #approvalFor(taskId: string, body: Record<string, unknown>): FakeApproval {
    for (const a of this.approvals.values()) {
      const r = a.view.request;
      if (
        a.taskId === taskId &&
        r.tool === body.tool &&
        r.resource === body.resource &&
        r.args_sha256 === body.args_sha256 &&
        a.view.status !== 'used'
      ) {
        return a;
      }
    }
    const id = `apr_${randomUUID().replace(/-/g, '').slice(0, 22)}`;
    const task = this.tasks.get(taskId)!;
    const a: FakeApproval = {
      taskId,
      waiters: new Set(),
      view: {
        id,
        status: 'pending',
        created_at: this.now(),
        expires_at: this.now() + 600,
        approval_url: `https://broker.test/approvals/${id}`,
        request: {
          agent: AGENT_ID,
          user: task.sub,
          task: { id: taskId, purpose: task.purpose },
          audience: String(body.audience),
          tool: String(body.tool),
          resource: String(body.resource),
          action: body.action as 'write',
          args_sha256: String(body.args_sha256 ?? ''),
          ...(body.arguments ? { arguments: body.arguments as Record<string, unknown> } : {}),
          template: 'shop-refunds',
        },
      },
    };
    this.approvals.set(id, a);
    return a;
  }

  #approvalAnswer(a: FakeApproval): Canned {
    const v = a.view;
    if (v.status === 'pending') {
      return {
        status: 403,
        body: {
          code: 'TASKPASS_APPROVAL_REQUIRED',
          message: 'This call needs a person to approve it.',
          approval_id: v.id,
          approval_url: v.approval_url,
          expires_at: v.expires_at,
          request: v.request,
          template: v.request.template,
        },
      };
    }
    const code = v.status === 'denied' ? 'TASKPASS_APPROVAL_DENIED' : 'TASKPASS_APPROVAL_EXPIRED';
    return {
      status: 403,
      body: { code, message: `the approval is ${v.status}`, template: v.request.template },
    };
  }

  // GET /v1/approvals/:id?wait=s: held until the status changes or the wait is over.
  async #approvalView(id: string, waitSec: number): Promise<Canned> {
    const a = this.approvals.get(id);
    if (!a)
      return { status: 404, body: { code: 'TASKPASS_APPROVAL_NOT_FOUND', message: 'No such approval.' } };
    if (a.view.status === 'pending' && waitSec > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          a.waiters.delete(done);
          resolve();
        }, waitSec * 1000);
        timer.unref(); // a held poll must not keep a finished test alive
        const done = () => {
          clearTimeout(timer);
          resolve();
        };
        a.waiters.add(done);
      });
    }
    return { status: 200, body: a.view };
  }
}

/** The authorization_details[0] of a Bearer header's JWT (or undefined). */
export function detailsOf(authorization: string | undefined): Record<string, unknown> | undefined {
  if (!authorization?.startsWith('Bearer ')) return undefined;
  const claims = decodeJwt(authorization.slice(7));
  return (claims.authorization_details as Record<string, unknown>[] | undefined)?.[0];
}
