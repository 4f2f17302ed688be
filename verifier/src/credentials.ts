// The MCP server's side of downstream credentials leased to a task (docs/vault.md): for a call the
// verifier accepted, exchange its call token at the broker (`POST /v1/credentials`, the server's
// own SVID over mTLS as the actor) for the Vault secret the call's tool rule names, e.g. a per-task
// PostgreSQL user. The broker hands a secret out once per task and path, so this process keeps it
// in memory until its lease ends and every later call of the task reuses it; concurrent calls of
// one task share the one request. Nothing here logs: the secret and the token never leave the
// objects that carry them.
import { inspect } from 'node:util';
import {
  CREDENTIALS_PATH,
  type CredentialRequest,
  isVaultPath,
  SUBJECT_TOKEN_TYPE_ACCESS,
} from '@taskpass/contract';
import { type Dispatcher, fetch as undiciFetch } from 'undici';
import { z } from 'zod';
import type { CallAuth, FetchLike } from './core.ts';
import type { RevocationSource } from './revocation.ts';
import { callerOf, type ExtraLike } from './sdk-v1.ts';

/** A verified call given directly: its raw call token and what the verifier made of it. */
export interface VerifiedCall {
  token: string;
  auth: CallAuth;
}

/**
 * A leased credential, in memory only. `toJSON()` and `util.inspect` leave out `data`, so logging
 * the object by mistake does not log the secret.
 */
export class LeasedCredential {
  /** The task (`txn`) the lease belongs to; it ends with the task at the latest. */
  readonly task: string;
  /** The Vault path, e.g. `database/creds/ticket-desk`. */
  readonly path: string;
  /** Vault's lease id (for audit: the broker revokes it when the task ends). */
  readonly leaseId: string;
  /** Epoch seconds: the lease's end. */
  readonly expiresAt: number;
  /** The secret itself, e.g. `{ username, password }`. */
  readonly data: Readonly<Record<string, unknown>>;

  constructor(v: {
    task: string;
    path: string;
    leaseId: string;
    expiresAt: number;
    data: Record<string, unknown>;
  }) {
    this.task = v.task;
    this.path = v.path;
    this.leaseId = v.leaseId;
    this.expiresAt = v.expiresAt;
    this.data = Object.freeze({ ...v.data });
    Object.freeze(this);
  }

  toJSON(): Record<string, unknown> {
    return {
      task: this.task,
      path: this.path,
      leaseId: this.leaseId,
      expiresAt: this.expiresAt,
      data: '[redacted]',
    };
  }

  [inspect.custom](): string {
    return `LeasedCredential ${JSON.stringify(this.toJSON())}`;
  }
}

/**
 * A credential could not be had. `code` is the broker's when it answered one
 * (`TASKPASS_CREDENTIAL_ALREADY_ISSUED`, `TASKPASS_CREDENTIAL_UNAVAILABLE`,
 * `TASKPASS_CREDENTIAL_FORBIDDEN`, `TASKPASS_CREDENTIAL_NOT_IN_TEMPLATE`,
 * `TASKPASS_CREDENTIAL_SUBJECT_INVALID`, `TASKPASS_TASK_CLOSED`, `TASKPASS_TASK_EXPIRED`, …), and
 * otherwise one of: `TASKPASS_CREDENTIAL_UNAVAILABLE` (broker unreachable, timed out, or an answer
 * without a code or of the wrong shape; 503), `TASKPASS_VERIFY_REVOKED` (the revocation feed says
 * the task is revoked; 401), `TASKPASS_VERIFY_MISSING_TOKEN` (the handler was given no verified
 * call; 401). Match on `code`, never on `message`.
 */
export class CredentialError extends Error {
  override readonly name = 'CredentialError';
  readonly code: string;
  /** The broker's HTTP status, or the status that code stands for. */
  readonly status: number;

  constructor(code: string, status: number, message: string, options?: { cause?: unknown }) {
    super(message, options?.cause === undefined ? undefined : { cause: options.cause });
    this.code = code;
    this.status = status;
  }

  /** The broker said asking again later may succeed (503: Vault or the broker is unavailable). */
  get retryable(): boolean {
    return this.status === 503;
  }

  toJSON(): { code: string; message: string } {
    return { code: this.code, message: this.message };
  }
}

/** Options of {@link TaskCredentials}. */
export interface TaskCredentialsOptions {
  /** The broker base URL, e.g. `https://broker.taskpass.local:8443`. */
  brokerUrl: string;
  /**
   * undici dispatcher with this server's X.509-SVID (mTLS): the broker authenticates the MCP
   * server by it and checks that it is the call token's audience (`vault.credentialClients`).
   */
  dispatcher?: Dispatcher;
  /** Replaces the HTTP client (tests, other runtimes); `dispatcher` is then ignored. */
  fetch?: FetchLike;
  /** A credential is handed out until this long before its lease ends, ms (default 2000). */
  expiryMarginMs?: number;
  /** Most credentials held at once (default 10 000); past it, new ones are refused, none dropped. */
  maxEntries?: number;
  /** Per broker request, ms (default 5000). */
  timeoutMs?: number;
  /** The verifier's revocation source: a credential of a revoked task is dropped, never handed out. */
  revocation?: Pick<RevocationSource, 'isRevoked'>;
  /**
   * Drop the credentials of ended leases and revoked tasks at most this often, on calls (ms, default
   * 30 000), so secrets of finished tasks do not stay in memory until the cache fills.
   */
  sweepEveryMs?: number;
  /** Clock (epoch ms), for tests. */
  now?: () => number;
}

const ResponseSchema = z.object({
  task_id: z.string().min(1),
  path: z.string().refine(isVaultPath, 'not a Vault path'),
  lease_id: z.string().min(1),
  lease_duration: z.number().nonnegative(),
  expires_at: z.number().int().positive(),
  data: z.record(z.string(), z.unknown()),
});

const ErrorSchema = z.object({ code: z.string().regex(/^TASKPASS_[A-Z0-9_]+$/), message: z.string() });

interface Entry {
  /** Settles with the credential; shared by every caller that asked while it was in flight. */
  promise: Promise<LeasedCredential>;
  value?: LeasedCredential;
  /** The same credential under its second key (the default path's name); not counted in `size`. */
  alias?: true;
}

// The default path (no `path` asked: the rule's one vault_secret) is cached under this key too.
const DEFAULT_PATH = '';

/**
 * Gets the leased credential for a verified call and caches it per task and path until its lease
 * ends (less `expiryMarginMs`). Create one per MCP server process; give it the same mTLS dispatcher
 * and revocation feed as the verifier.
 *
 * @example
 * ```ts
 * const credentials = new TaskCredentials({ brokerUrl, dispatcher: brokerDispatcher, revocation: feed });
 * mcp.registerTool('get_ticket', config, async ({ ticket_id }, extra) => {
 *   const { data } = await credentials.forCall(extra); // { username, password } of this task's user
 *   const db = new pg.Client({ ...pgOptions, user: String(data.username), password: String(data.password) });
 *   …
 * });
 * ```
 */
export class TaskCredentials {
  readonly #url: string;
  readonly #fetch: FetchLike;
  readonly #margin: number;
  readonly #max: number;
  readonly #timeoutMs: number;
  readonly #revocation: Pick<RevocationSource, 'isRevoked'> | undefined;
  readonly #now: () => number;
  readonly #sweepEveryMs: number;
  #lastSweepAt: number;
  /** task → path (or {@link DEFAULT_PATH}) → entry. */
  readonly #tasks = new Map<string, Map<string, Entry>>();
  #size = 0;

  constructor(opts: TaskCredentialsOptions) {
    if (!/^https?:\/\//.test(opts.brokerUrl)) throw new TypeError('brokerUrl must be an http(s) URL');
    this.#url = `${opts.brokerUrl.replace(/\/+$/, '')}${CREDENTIALS_PATH}`;
    const dispatcher = opts.dispatcher;
    this.#fetch =
      opts.fetch ??
      (dispatcher
        ? (url, init) => undiciFetch(url, { ...init, dispatcher })
        : (url, init) => fetch(url, init));
    this.#margin = opts.expiryMarginMs ?? 2000;
    this.#max = opts.maxEntries ?? 10_000;
    this.#timeoutMs = opts.timeoutMs ?? 5000;
    this.#revocation = opts.revocation;
    this.#now = opts.now ?? Date.now;
    this.#sweepEveryMs = opts.sweepEveryMs ?? 30_000;
    this.#lastSweepAt = this.#now();
  }

  /** Credentials held or being fetched. */
  get size(): number {
    return this.#size;
  }

  /**
   * The credential for this call: from the cache while its lease lasts, else from the broker.
   * `call` is the tool handler's SDK `extra` (1.x `extra.authInfo`, 2.x `ctx.http.authInfo`) or
   * `{ token, auth }`. `path` is the Vault path; without it, the one the call's tool rule names.
   * Throws {@link CredentialError}.
   */
  async forCall(call: ExtraLike | VerifiedCall | undefined, path?: string): Promise<LeasedCredential> {
    const { token, auth } = subjectOf(call);
    if (path !== undefined && !isVaultPath(path)) throw new TypeError(`not a Vault path: ${path}`);
    const task = auth.task;
    if (this.#now() - this.#lastSweepAt >= this.#sweepEveryMs) this.sweep();
    if (this.#revocation?.isRevoked(task, auth.jti)) {
      this.#forgetTask(task);
      throw new CredentialError('TASKPASS_VERIFY_REVOKED', 401, `task ${task} is revoked`);
    }
    const key = path ?? DEFAULT_PATH;
    const held = this.#tasks.get(task)?.get(key);
    if (held) {
      if (!held.value) return held.promise; // in flight: share it (the broker hands out once)
      if (this.#fresh(held.value)) return held.value;
      this.#drop(task, held.value);
    }
    if (this.#size >= this.#max) this.sweep();
    if (this.#size >= this.#max) {
      throw new CredentialError(
        'TASKPASS_CREDENTIAL_UNAVAILABLE',
        503,
        `the credential cache holds ${this.#max} live credentials; none is dropped, so new ones wait`,
      );
    }
    const entry: Entry = { promise: this.#ask(token, task, path) };
    this.#set(task, key, entry);
    try {
      const value = await entry.promise;
      entry.value = value;
      // A call asking for the default path learns which path that is: cache it under both.
      if (key !== value.path && !this.#tasks.get(task)?.has(value.path)) {
        this.#set(task, value.path, { promise: entry.promise, value, alias: true });
      }
      if (this.#revocation?.isRevoked(task, auth.jti)) {
        this.#forgetTask(task);
        throw new CredentialError('TASKPASS_VERIFY_REVOKED', 401, `task ${task} is revoked`);
      }
      return value;
    } catch (e) {
      if (this.#tasks.get(task)?.get(key) === entry) this.#delete(task, key);
      throw e;
    }
  }

  /** Drops credentials whose lease ended and those of revoked tasks (also done when the cache is full). */
  sweep(): void {
    this.#lastSweepAt = this.#now();
    for (const [task, paths] of this.#tasks) {
      if (this.#revocation?.isRevoked(task, '')) {
        this.#forgetTask(task);
        continue;
      }
      for (const e of paths.values()) if (e.value && !this.#fresh(e.value)) this.#drop(task, e.value);
    }
  }

  /** Forgets every credential of a task (e.g. when the server learns it ended). */
  forgetTask(task: string): void {
    this.#forgetTask(task);
  }

  #fresh(c: LeasedCredential): boolean {
    return this.#now() < c.expiresAt * 1000 - this.#margin;
  }

  #set(task: string, key: string, entry: Entry): void {
    let paths = this.#tasks.get(task);
    if (!paths) {
      paths = new Map();
      this.#tasks.set(task, paths);
    }
    const old = paths.get(key);
    if (old && !old.alias) this.#size--;
    if (!entry.alias) this.#size++;
    paths.set(key, entry);
  }

  #delete(task: string, key: string): void {
    const paths = this.#tasks.get(task);
    const e = paths?.get(key);
    if (!paths || !e) return;
    paths.delete(key);
    if (!e.alias) this.#size--;
    if (paths.size === 0) this.#tasks.delete(task);
  }

  /** Deletes a credential under every key it is held by. */
  #drop(task: string, value: LeasedCredential): void {
    for (const [key, e] of this.#tasks.get(task) ?? []) if (e.value === value) this.#delete(task, key);
  }

  #forgetTask(task: string): void {
    const paths = this.#tasks.get(task);
    if (!paths) return;
    for (const e of paths.values()) if (!e.alias) this.#size--;
    this.#tasks.delete(task);
  }

  async #ask(token: string, task: string, path: string | undefined): Promise<LeasedCredential> {
    const body: CredentialRequest = {
      subject_token: token,
      subject_token_type: SUBJECT_TOKEN_TYPE_ACCESS,
      ...(path !== undefined ? { path } : {}),
    };
    let res: Awaited<ReturnType<FetchLike>>;
    try {
      res = await this.#fetch(this.#url, {
        method: 'POST',
        headers: { 'content-type': 'application/json', accept: 'application/json' },
        body: JSON.stringify(body),
        signal: AbortSignal.timeout(this.#timeoutMs),
      });
    } catch (e) {
      throw new CredentialError('TASKPASS_CREDENTIAL_UNAVAILABLE', 503, 'the broker could not be reached', {
        cause: e,
      });
    }
    let json: unknown;
    try {
      json = await res.json();
    } catch {
      json = undefined;
    }
    if (!res.ok) {
      const err = ErrorSchema.safeParse(json);
      if (!err.success) {
        throw new CredentialError(
          'TASKPASS_CREDENTIAL_UNAVAILABLE',
          res.status >= 500 ? 503 : res.status,
          `the broker answered HTTP ${res.status} without an error code`,
        );
      }
      const { code, message } = err.data;
      if (code === 'TASKPASS_CREDENTIAL_ALREADY_ISSUED') {
        // The broker gave this task's secret to a request of ours this process no longer holds
        // (a restart, another replica, an eviction): it will not hand it out again.
        throw new CredentialError(
          code,
          res.status,
          `the broker already handed out the credential for task ${task}${path ? ` and ${path}` : ''} and this process does not hold it (restarted, or another replica asked): only a new task gets one`,
        );
      }
      throw new CredentialError(code, res.status, message);
    }
    const ok = ResponseSchema.safeParse(json);
    if (!ok.success) {
      // Never echo the body: it may hold the secret.
      throw new CredentialError(
        'TASKPASS_CREDENTIAL_UNAVAILABLE',
        503,
        `the broker's credential answer has an unexpected shape (${ok.error.issues.map((i) => i.path.join('.') || '(root)').join(', ')})`,
      );
    }
    const r = ok.data;
    if (r.task_id !== task || (path !== undefined && r.path !== path)) {
      throw new CredentialError(
        'TASKPASS_CREDENTIAL_UNAVAILABLE',
        503,
        "the broker's credential answer names another task or path than the call's",
      );
    }
    return new LeasedCredential({
      task: r.task_id,
      path: r.path,
      leaseId: r.lease_id,
      expiresAt: r.expires_at,
      data: r.data,
    });
  }
}

function subjectOf(call: ExtraLike | VerifiedCall | undefined): VerifiedCall {
  if (call && 'token' in call && 'auth' in call) {
    if (typeof call.token === 'string' && call.token !== '' && call.auth?.kind === 'call') return call;
  } else if (call) {
    const auth = callerOf(call as ExtraLike);
    const token = ((call as ExtraLike).authInfo ?? (call as ExtraLike).http?.authInfo)?.token;
    if (auth && typeof token === 'string' && token !== '') return { token, auth };
  }
  throw new CredentialError(
    'TASKPASS_VERIFY_MISSING_TOKEN',
    401,
    'no verified call token on this request (is the verifier in front of the tool?)',
  );
}
