// The broker's state, behind one interface with two implementations: SQLite (embedded default,
// one process) and Redis (several replicas). Every method that records a revocation resolves only
// once the revocation is durable; callers answer the client after that, never before. A store that
// cannot be reached, or does not answer within its bound, rejects with TASKPASS_STORE_UNAVAILABLE
// (a BrokerError: 503 on every route) rather than hang — RedisStore does, and explains late writes.

import type { Action, ApprovalStatus, ApproverRef, CompletionStatus, Revocation } from '@taskpass/contract';
import type { ApprovalRule } from '../policy/schema.ts';

export type TaskStatus = 'open' | CompletionStatus | 'revoked';
/** How a task ends: what its agent reports on `complete`, or `revoked` by an admin. */
export type ClosingStatus = CompletionStatus | 'revoked';

export interface TaskRecord {
  id: string;
  /** Agent SPIFFE ID (the caller that opened the task). */
  agent: string;
  /** Delegating user's subject, or the agent's SPIFFE ID for autonomous tasks. */
  sub: string;
  /** Issuer of the user token, when there was one. */
  userIssuer?: string;
  /** Verified claims of the user token that templates may use (groups, roles, email, ...). */
  userClaims?: Record<string, unknown>;
  purpose: string;
  status: TaskStatus;
  /** Epoch seconds. */
  createdAt: number;
  expiresAt: number;
  finishedAt?: number;
}

/** One call token issued inside a task; the workflow context ("steps taken") is built from these. */
export interface IssuedCall {
  taskId: string;
  jti: string;
  tool: string;
  resource: string;
  action: Action;
  template: string;
  /** Epoch seconds. */
  issuedAt: number;
  expiresAt: number;
}

/**
 * A Vault lease held for a task (docs/vault.md, "Downstream credentials leased to a task"). The
 * secret itself is never stored: only what is needed to find the lease again and to revoke it.
 * A lease is `active` while its task is open; the task's end (complete, fail, cancel, revoke) turns
 * it `revoking` with `dueAt` = the end, in the same atomic step; an active lease is due at its task's
 * expiry. The revocation outbox hands out due leases ({@link Store.dueLeases}) until one is
 * confirmed revoked in Vault ({@link Store.leaseRevoked}), which deletes the record.
 */
export interface LeaseRecord {
  taskId: string;
  /** The Vault path read, e.g. `database/creds/ticket-desk`. */
  path: string;
  leaseId: string;
  /** Epoch seconds. */
  issuedAt: number;
  /** The lease's end (Vault revokes it by itself then). */
  expiresAt: number;
  state: 'active' | 'revoking';
  /** Epoch seconds from which the outbox revokes it (the task's end or expiry, then backoff). */
  dueAt: number;
  /** Failed revocation attempts so far. */
  attempts: number;
}

/** What the broker records after reading a leased secret. */
export type NewLease = Pick<LeaseRecord, 'taskId' | 'path' | 'leaseId' | 'issuedAt' | 'expiresAt'>;

/** The one string a lease is known by in the outbox. */
export const leaseKey = (l: Pick<LeaseRecord, 'taskId' | 'path'>): string =>
  JSON.stringify([l.taskId, l.path]);

/** The call an approval is for: asking again for the same call finds the same approval. */
export interface ApprovalCallKey {
  taskId: string;
  audience: string;
  tool: string;
  resource: string;
  action: Action;
  argsSha256: string;
}

/**
 * A request for a person's approval of one call (docs/approvals.md). Created `pending`; then
 * `approved` or `denied` by the first decision; `approved` becomes `used` when its one token is
 * issued; `cancelled` when its task closes. `expired` is recorded lazily: a pending or approved
 * approval past `expiresAt` is expired whatever its stored status says (see {@link effectiveStatus}).
 */
export interface ApprovalRecord extends ApprovalCallKey {
  id: string;
  agent: string;
  /** The task's `sub` (the delegating user, or the agent for autonomous tasks). */
  sub: string;
  /** Issuer of the delegating user's token (undefined for autonomous tasks). */
  userIssuer?: string;
  purpose: string;
  /** The arguments, when the agent sent them. */
  arguments?: Record<string, unknown>;
  /** Ids of the templates whose rules ask for approval, space-separated. */
  template: string;
  /** Those rules as they were when asked: the decision is checked against them. */
  rules: ApprovalRule[];
  status: ApprovalStatus;
  /** Epoch seconds. */
  createdAt: number;
  expiresAt: number;
  decidedAt?: number;
  approver?: ApproverRef;
  comment?: string;
  usedAt?: number;
  /** The jti of the token it yielded. */
  jti?: string;
}

/** The one string an approval's call is known by (the store's index of "this call's approval"). */
export const approvalCallKey = (k: ApprovalCallKey): string =>
  JSON.stringify([k.taskId, k.audience, k.tool, k.resource, k.action, k.argsSha256]);

/** The status an approval has now: pending or approved past its expiry counts as expired. */
export function effectiveStatus(a: ApprovalRecord, now: number): ApprovalStatus {
  return (a.status === 'pending' || a.status === 'approved') && a.expiresAt <= now ? 'expired' : a.status;
}

/** The first decision on an approval. */
export interface ApprovalDecisionInput {
  status: 'approved' | 'denied';
  approver: ApproverRef;
  /** Epoch seconds. */
  decidedAt: number;
  comment?: string | undefined;
}

/**
 * Seconds a revocation is still served (feed snapshots, pull pages) and kept by the sweep after its
 * `until`. Verifiers accept a token up to their clock tolerance after `exp` (at most 300 s, see the
 * verifier's `clockToleranceSec`), so a verifier that connects just after `until` must still learn
 * of it.
 */
export const REVOCATION_GRACE_SEC = 300;

export interface StoredSigningKey {
  kid: string;
  alg: 'ES256';
  /**
   * The private key as its KeyWrapper stored it (keys.ts, key-wrap.ts): an AES-256-GCM envelope
   * `{ enc, kek, iv, ct, tag }`, or a plain private JWK in plaintext mode and in stores written
   * before keys were wrapped. Opaque to the store; never logged, never served.
   */
  privateJwk: Record<string, unknown>;
  publicJwk: Record<string, unknown>;
  /** Epoch seconds: published from createdAt, signs from activeFrom, stops signing at retireAt,
   *  and is removed from the JWKS once retireAt + max token lifetime has passed. */
  createdAt: number;
  activeFrom: number;
  retireAt: number;
}

export interface Store extends DecisionStore {
  /** Creates schema / connects. Idempotent. */
  init(): Promise<void>;
  close(): Promise<void>;

  createTask(task: TaskRecord): Promise<void>;
  getTask(id: string): Promise<TaskRecord | undefined>;
  listTasks(filter?: { status?: TaskStatus; agent?: string; limit?: number }): Promise<TaskRecord[]>;
  /**
   * Marks an open task completed (or revoked) and appends a durable task revocation in one atomic step.
   * Resolves with the revocation (and `alreadyCompleted: true` with the earlier one when the task
   * was already closed). Rejects when the task does not exist.
   */
  completeTask(
    id: string,
    status: ClosingStatus,
    at: number,
    reason: string,
  ): Promise<{
    task: TaskRecord;
    revocation: Revocation;
    alreadyCompleted: boolean;
    /** Ids of the task's pending or approved approvals, cancelled in the same atomic step. */
    cancelledApprovals: string[];
  }>;

  /**
   * Records an issued call token (workflow context and per-task counts). Resolves once durable,
   * like every write: the token is handed out only after.
   *
   * With `ifToolCount`, a compare-and-set: the call is recorded only if the task has exactly that
   * many issued calls of `call.tool` (all templates together) at the moment of writing; otherwise
   * nothing is written and it resolves `false`. A decision that read the counts for a
   * `max_calls_per_task` cap passes the total it read, so two concurrent decisions (one process or
   * several replicas) can never both spend the last call.
   *
   * With `consumeApproval`, the same atomic step turns that approval from `approved` (and not
   * expired at `now`) into `used`, recording the call's jti; if it is not approved any more (used by
   * a concurrent request, cancelled, expired) nothing is written and it resolves `false`. One
   * approval yields one token.
   */
  recordIssued(
    call: IssuedCall,
    opts?: { ifToolCount?: number; consumeApproval?: { id: string; now: number } },
  ): Promise<boolean>;
  /**
   * Calls issued so far in a task (oldest first). The whole history: for inspection, not for
   * decisions (those use {@link countIssued} and {@link issuedTemplates}).
   */
  listIssued(taskId: string): Promise<IssuedCall[]>;
  /**
   * How many calls of `tool` were issued in a task, per issuing template id (templates with none
   * are absent). Cost independent of the number of calls in the task.
   */
  countIssued(taskId: string, tool: string): Promise<Map<string, number>>;
  /**
   * Ids of the templates that issued at least one call of `tool` in a task — on exactly `resource`
   * when given, on any resource otherwise. Cost independent of the number of calls in the task.
   */
  issuedTemplates(taskId: string, tool: string, resource?: string): Promise<Set<string>>;

  /**
   * Creates the approval for `a`'s call, or returns the one its call already has, in one atomic step
   * (concurrent requests for the same call, on any replica, get the same approval):
   *  - pending or approved, not expired at `now`, or denied: that one (`created: false`);
   *  - pending or approved past its expiry: marked `expired`, released from the call, and returned
   *    (`created: false`): the caller reports the expiry and the next request asks anew;
   *  - none, used, expired or cancelled: `a` is stored and becomes the call's approval (`created: true`).
   */
  requestApproval(a: ApprovalRecord, now: number): Promise<{ approval: ApprovalRecord; created: boolean }>;
  getApproval(id: string): Promise<ApprovalRecord | undefined>;
  /**
   * Records the first decision: a compare-and-set on `status = pending` and `expiresAt > now`
   * (atomic across replicas). `decided: false` with the approval as it is when another decision
   * came first, it expired, or it was cancelled; undefined when there is no such approval.
   */
  decideApproval(
    id: string,
    d: ApprovalDecisionInput,
    now: number,
  ): Promise<{ decided: boolean; approval: ApprovalRecord } | undefined>;
  /** Approvals pending at `now` (oldest first, at most `limit`), for approvers' lists. */
  listPendingApprovals(now: number, limit: number): Promise<ApprovalRecord[]>;
  /**
   * Ids of approvals whose status changed (decided, used, cancelled), from any replica (Redis
   * pub/sub; in-process for SQLite). Returns an unsubscribe function.
   */
  onApprovalChange(listener: (id: string) => void): () => void;

  /**
   * Records a lease on an open task, unless the task already holds a lease on that path that lives
   * at `now` (one lease per task and path; compare-and-set across replicas). Resolves with the
   * task's lease on the path and whether it is the one given (`recorded: false`: the caller revokes
   * what it read and hands out the existing one). Rejects with TASKPASS_TASK_NOT_FOUND when the task
   * does not exist, and resolves `{ recorded: false, lease: undefined }` when it is not open.
   */
  recordLease(l: NewLease, now: number): Promise<{ recorded: boolean; lease: LeaseRecord | undefined }>;
  /** The task's lease on `path` (active or revoking), if any. */
  getLease(taskId: string, path: string): Promise<LeaseRecord | undefined>;
  /** Leases due for revocation at `now` (earliest due first, at most `limit`). */
  dueLeases(now: number, limit: number): Promise<LeaseRecord[]>;
  /**
   * How many lease revocations are pending at `now` (the metric): leases due, and leases `revoking`
   * (their task ended, or an attempt failed) that wait for their next attempt.
   */
  countDueLeases(now: number): Promise<number>;
  /** Vault confirmed the revocation of this lease id: its record is deleted. */
  leaseRevoked(taskId: string, path: string, leaseId: string): Promise<void>;
  /**
   * A revocation attempt failed: the lease (if it is still this lease id) turns `revoking`, with one
   * more attempt, due again at `retryAt`.
   */
  leaseRetry(taskId: string, path: string, leaseId: string, retryAt: number): Promise<void>;

  /** Appends a durable token revocation (RFC 7009, admin). */
  revokeToken(jti: string, until: number, reason: string): Promise<Revocation>;
  /** Revocations with seq > since whose `until` is after `now` (all live ones when since = 0). */
  revocationsSince(since: number, now: number): Promise<Revocation[]>;
  /**
   * One page of {@link revocationsSince}: revocations with seq > `after` whose `until` is after
   * `now`, in seq order, scanning at most `limit` seqs (revocations past `until` that are not swept
   * yet count towards it, so a page may hold fewer). `next` is the `after` of the following page,
   * undefined when the scan reached the last seq. Every revocation with seq ≤ the last one scanned
   * that still lives is in this page or an earlier one (seqs are stored in one atomic step with
   * their revocation), so a reader can page a large set without holding it in memory.
   */
  revocationsPage(
    after: number,
    now: number,
    limit: number,
  ): Promise<{ revocations: Revocation[]; next: number | undefined }>;
  /** Highest revocation seq so far (0 when none). */
  currentSeq(): Promise<number>;
  /** Is this task id or jti revoked (used by introspection)? */
  isRevoked(kind: 'task' | 'token', id: string): Promise<boolean>;

  /**
   * Single-use bookkeeping at the broker (introspection): true the first time a jti is seen,
   * false after; entries may be dropped after `until`.
   */
  markUsed(jti: string, until: number): Promise<boolean>;

  loadSigningKeys(): Promise<StoredSigningKey[]>;
  /** Inserts or replaces a key (the whole record: schedule and wrapped private key). */
  saveSigningKey(key: StoredSigningKey): Promise<void>;
  /**
   * Saves a new key only if no stored key activates after `activeAfter` (epoch s), or, when
   * `activeAfter` is undefined, only if the store holds no key at all. Resolves true when saved.
   * Atomic, so that of replicas racing to publish the successor of the same key (or the first
   * key), exactly one does.
   */
  addSigningKeyIfLatest(key: StoredSigningKey, activeAfter: number | undefined): Promise<boolean>;
  deleteSigningKey(kid: string): Promise<void>;

  /**
   * Revocations appended by any replica, pushed to this process (Redis pub/sub between replicas;
   * an in-process emitter for SQLite). Returns an unsubscribe function.
   */
  onRevocation(listener: (r: Revocation) => void): () => void;

  /** Drops expired tasks' bookkeeping, old replay entries and revocations past `until`. */
  sweep(now: number): Promise<void>;
}

/**
 * One decision record (docs/console.md, docs/decisions.md "Decision records, chained by hash"):
 * what the audit log says about a decision, kept in the store for the console and chained to the
 * record before it, so that an edited or deleted record is detectable (`taskpass audit verify`).
 * `hash` = SHA-256 (hex) of the canonical JSON of every other field, `prev_hash` included.
 */
export interface DecisionRecord {
  seq: number;
  /** Epoch milliseconds, by the clock of the replica that recorded it. */
  at: number;
  event: string;
  /** The audit event's fields (agent, user, task, tool, resource, code, reason, jti, ...). */
  [field: string]: string | number | undefined;
  prev_hash: string;
  hash: string;
}

/** A record before it is chained: the event, its fields and when. */
export type DecisionInput = Omit<DecisionRecord, 'seq' | 'prev_hash' | 'hash'>;

/** The last record of the chain (or, before any, the anchor: the last swept one, or genesis). */
export interface ChainHead {
  seq: number;
  hash: string;
}

/** `prev_hash` of the first record ever. */
export const GENESIS_HASH = '0'.repeat(64);

/** Filters of {@link DecisionStore.recentDecisions}. */
export interface DecisionFilter {
  agent?: string | undefined;
  user?: string | undefined;
  task?: string | undefined;
  code?: string | undefined;
  /** allowed: tokens issued; denied: tokens and tasks refused. */
  outcome?: 'allowed' | 'denied' | undefined;
  /** Only records with seq below this (the `next` of the previous page). */
  before?: number | undefined;
  limit?: number | undefined;
}

/** A console sign-in session or a sign-in in progress, shared by replicas through the store. */
export interface ConsoleSessionRecord {
  /** SHA-256 (base64url) of the cookie's random id: a reader of the store cannot take it over. */
  id: string;
  /** Epoch seconds. */
  expiresAt: number;
  /** The session (identity, CSRF token) or the sign-in state (nonce, PKCE verifier), as JSON. */
  data: Record<string, unknown>;
}

/** Decision records and console sessions. */
export interface DecisionStore {
  /**
   * Chains `inputs` after the current head (seq = head.seq + 1 ..., the first prev_hash =
   * head.hash, each hash as decision-chain.ts `recordHash`) and appends them in one atomic step: serialized on
   * SQLite (where the writer thread does the hashing), a compare-and-set on the head in Redis,
   * retried when another replica appended first. Resolves with what was stored, once durable;
   * inputs that cannot be hashed (no JSON form) reject this append only.
   */
  appendDecisions(inputs: readonly DecisionInput[]): Promise<DecisionRecord[]>;
  /** The chain's last record (or the anchor when none is left). */
  decisionHead(): Promise<ChainHead>;
  /** The hash of the last swept record, which the first remaining record links to. */
  decisionAnchor(): Promise<ChainHead>;
  /**
   * Records with seq in (after, after + limit], in seq order, as stored. A record that is missing
   * is absent (the verifier reports the gap).
   */
  decisionsRange(after: number, limit: number): Promise<DecisionRecord[]>;
  /** A task's records, in order (at most `limit`, oldest first). */
  decisionsOfTask(taskId: string, limit: number): Promise<DecisionRecord[]>;
  /** Newest first, filtered; `next` continues below the last one (undefined at the end). */
  recentDecisions(f: DecisionFilter): Promise<{ records: DecisionRecord[]; next: number | undefined }>;
  /** How many records per code (`issued` for tokens issued) with `at` in [fromMs, toMs). */
  decisionCounts(fromMs: number, toMs: number): Promise<Record<string, number>>;
  /**
   * The same per minute (epoch minute = floor(at / 60 000)), for the minutes from `fromMs` to
   * `toMs` that have records, oldest first: the console's charts of the last hour.
   */
  decisionCountsByMinute(
    fromMs: number,
    toMs: number,
  ): Promise<{ minute: number; counts: Record<string, number> }[]>;
  /** Drops records older than `beforeMs`, oldest first, moving the anchor to the last dropped. */
  sweepDecisions(beforeMs: number): Promise<number>;

  putConsoleSession(s: ConsoleSessionRecord): Promise<void>;
  /** The session, unless missing or expired at `now` (epoch seconds). */
  getConsoleSession(id: string, now: number): Promise<ConsoleSessionRecord | undefined>;
  /** Deletes and returns it (single use: a sign-in state is consumed by its callback). */
  takeConsoleSession(id: string, now: number): Promise<ConsoleSessionRecord | undefined>;
  deleteConsoleSession(id: string): Promise<void>;
}
