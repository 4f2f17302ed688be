// Console sessions and request security (docs/console.md "Security"): an opaque random session id
// in an HttpOnly, Secure, SameSite=Strict cookie; the store keeps only its SHA-256 (replicas share
// sessions, a reader of the store cannot take one over); a synchronizer CSRF token per session,
// required on every state change; roles from the ID token's claims.
import { createHash, timingSafeEqual } from 'node:crypto';
import type { FastifyReply, FastifyRequest } from 'fastify';
import type { BrokerConfig } from '../config.ts';
import { BrokerError } from '../errors.ts';
import type { ApprovalCaller } from '../approvals.ts';
import type { Store } from '../store/types.ts';
import { type ConsoleIdentity, type LoginState, randomToken } from './oidc.ts';

type ConsoleConfig = NonNullable<BrokerConfig['console']>;
type RoleConfig = ConsoleConfig['roles']['admins'];

/** What a signed-in person may do. */
export interface ConsoleRoles {
  /** Sees everything and revokes. */
  admin: boolean;
  /** Sees everything, changes nothing (admins are viewers too). */
  viewer: boolean;
}

/** A live session, as the routes see it. */
export interface ConsoleSession {
  /** The store key (hash of the cookie value). */
  key: string;
  identity: ConsoleIdentity;
  csrf: string;
  roles: ConsoleRoles;
  expiresAt: number;
}

const hashId = (kind: 'session' | 'login', v: string): string =>
  `${kind}:${createHash('sha256').update(v).digest('base64url')}`;

/** Does the identity meet a role's issuer and claim conditions (as templates' `users:` match)? */
export function hasRole(role: RoleConfig | undefined, who: ConsoleIdentity): boolean {
  if (!role) return false;
  if (role.issuer !== undefined && ![role.issuer].flat().includes(who.iss)) return false;
  for (const [name, want] of Object.entries(role.claims)) {
    const v = Object.hasOwn(who.claims, name) ? who.claims[name] : undefined;
    const have = Array.isArray(v) ? v : [v];
    const wanted = [want].flat();
    if (!have.some((x) => wanted.includes(x as string | number | boolean))) return false;
  }
  return true;
}

export function rolesOf(cfg: ConsoleConfig, who: ConsoleIdentity): ConsoleRoles {
  const admin = hasRole(cfg.roles.admins, who);
  return { admin, viewer: admin || hasRole(cfg.roles.viewers, who) };
}

/** The person as the approval service sees an approver (the session's verified ID token). */
export function approverOf(s: ConsoleSession): Extract<ApprovalCaller, { kind: 'approver' }> {
  const { iss, sub, claims, exp } = s.identity;
  return { kind: 'approver', user: { iss, sub, claims, exp } };
}

/** Reads one cookie from the Cookie header (no parsing library: names are ours, values opaque). */
export function readCookie(req: FastifyRequest, name: string): string | undefined {
  const header = req.headers.cookie;
  if (!header) return undefined;
  for (const part of header.split(';')) {
    const eq = part.indexOf('=');
    if (eq < 0) continue;
    if (part.slice(0, eq).trim() === name) {
      const v = part.slice(eq + 1).trim();
      return /^[A-Za-z0-9_-]{16,128}$/.test(v) ? v : undefined;
    }
  }
  return undefined;
}

const sameSecret = (a: string, b: string): boolean => {
  const x = Buffer.from(a);
  const y = Buffer.from(b);
  return x.length === y.length && timingSafeEqual(x, y);
};

/** Sessions, sign-in states and their cookies. */
export class ConsoleSessions {
  readonly #cfg: ConsoleConfig;
  readonly #store: Store;
  readonly #now: () => number;
  /** `__Host-` names pin the cookie to this origin, path / and Secure; not possible without Secure. */
  readonly sessionCookie: string;
  readonly loginCookie: string;
  readonly #secure: boolean;

  constructor(cfg: ConsoleConfig, store: Store, now: () => number) {
    this.#cfg = cfg;
    this.#store = store;
    this.#now = now;
    this.#secure = !cfg.insecureCookies;
    this.sessionCookie = this.#secure ? '__Host-taskpass-console' : 'taskpass-console';
    this.loginCookie = this.#secure ? '__Host-taskpass-signin' : 'taskpass-signin';
  }

  #nowSec(): number {
    return Math.floor(this.#now() / 1000);
  }

  #cookie(name: string, value: string, maxAge: number, sameSite: 'Strict' | 'Lax'): string {
    return [
      `${name}=${value}`,
      'Path=/',
      `Max-Age=${maxAge}`,
      'HttpOnly',
      ...(this.#secure ? ['Secure'] : []),
      `SameSite=${sameSite}`,
    ].join('; ');
  }

  /**
   * Keeps a sign-in in progress for 10 minutes and binds it to this browser. The cookie is
   * SameSite=Lax: the identity provider's redirect back is a cross-site navigation, on which a
   * Strict cookie would not be sent.
   */
  async saveLogin(reply: FastifyReply, state: string, login: LoginState): Promise<void> {
    const ttl = 600;
    await this.#store.putConsoleSession({
      id: hashId('login', state),
      expiresAt: this.#nowSec() + ttl,
      data: { ...login },
    });
    reply.header('set-cookie', this.#cookie(this.loginCookie, state, ttl, 'Lax'));
  }

  /** The sign-in this callback answers: its state must be this browser's and is used once. */
  async takeLogin(req: FastifyRequest, reply: FastifyReply, state: string): Promise<LoginState> {
    const mine = readCookie(req, this.loginCookie);
    reply.header('set-cookie', this.#cookie(this.loginCookie, '', 0, 'Lax'));
    if (!mine || !sameSecret(mine, state)) {
      throw new BrokerError(
        'TASKPASS_CONSOLE_SIGNIN_FAILED',
        'this sign-in was not started in this browser (state does not match); start again',
      );
    }
    const r = await this.#store.takeConsoleSession(hashId('login', state), this.#nowSec());
    if (!r) {
      throw new BrokerError(
        'TASKPASS_CONSOLE_SIGNIN_FAILED',
        'unknown, used or expired sign-in; start again',
      );
    }
    return r.data as unknown as LoginState;
  }

  /** Opens a session for a verified person and sets its cookie. */
  async open(reply: FastifyReply, identity: ConsoleIdentity): Promise<ConsoleSession> {
    const id = randomToken();
    const key = hashId('session', id);
    const expiresAt = this.#nowSec() + this.#cfg.sessionTtl;
    const csrf = randomToken();
    await this.#store.putConsoleSession({ id: key, expiresAt, data: { identity, csrf } });
    reply.header('set-cookie', this.#cookie(this.sessionCookie, id, this.#cfg.sessionTtl, 'Strict'));
    return { key, identity, csrf, roles: rolesOf(this.#cfg, identity), expiresAt };
  }

  /** The request's session, or undefined. */
  async current(req: FastifyRequest): Promise<ConsoleSession | undefined> {
    const id = readCookie(req, this.sessionCookie);
    if (!id) return undefined;
    const r = await this.#store.getConsoleSession(hashId('session', id), this.#nowSec());
    if (!r) return undefined;
    const { identity, csrf } = r.data as { identity: ConsoleIdentity; csrf: string };
    return { key: r.id, identity, csrf, roles: rolesOf(this.#cfg, identity), expiresAt: r.expiresAt };
  }

  async close(reply: FastifyReply, s: ConsoleSession | undefined): Promise<void> {
    if (s) await this.#store.deleteConsoleSession(s.key);
    reply.header('set-cookie', this.#cookie(this.sessionCookie, '', 0, 'Strict'));
  }

  /**
   * Refuses a state change without the session's CSRF token (header `X-CSRF-Token`, or the
   * `_csrf` field of an HTML form) or from
   * another origin (`Origin`, when the browser sends it, must be the console's).
   */
  checkCsrf(req: FastifyRequest, s: ConsoleSession): void {
    const origin = req.headers.origin;
    if (origin !== undefined && origin !== new URL(this.#cfg.publicUrl).origin) {
      throw new BrokerError('TASKPASS_CONSOLE_CSRF', 'this request comes from another origin');
    }
    // The pages' HTML forms carry the same token in a `_csrf` field (they cannot set headers).
    const header = req.headers['x-csrf-token'];
    const form = (req.headers['content-type'] ?? '').startsWith('application/x-www-form-urlencoded')
      ? (req.body as Record<string, unknown> | undefined)?._csrf
      : undefined;
    const sent = typeof header === 'string' ? header : form;
    if (typeof sent !== 'string' || !sameSecret(sent, s.csrf)) {
      throw new BrokerError(
        'TASKPASS_CONSOLE_CSRF',
        "missing or wrong CSRF token: X-CSRF-Token (GET /console/api/session gives it) or a form's _csrf field",
      );
    }
  }
}
