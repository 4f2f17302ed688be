// The embedded store: one SQLite file, one broker process. WAL with synchronous=FULL, so a
// committed transaction (a revocation in particular) has been fsynced before the promise resolves;
// issued-call records are group-committed (one fsync per event-loop turn, still before any of them
// resolves; see SqliteStore). better-sqlite3 is synchronous; every method does its work before
// returning its promise, which keeps each call atomic with respect to the others in this process.
import { EventEmitter } from 'node:events';
import { mkdirSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import Database from 'better-sqlite3';
import type { Logger } from 'pino';
import { BrokerError } from '../errors.ts';
import type { Action, Revocation } from '@taskpass/contract';
import {
  type ApprovalDecisionInput,
  type ApprovalRecord,
  approvalCallKey,
  type ClosingStatus,
  type IssuedCall,
  type LeaseRecord,
  type NewLease,
  type ChainHead,
  type ConsoleSessionRecord,
  type DecisionFilter,
  type DecisionInput,
  type DecisionRecord,
  GENESIS_HASH,
  REVOCATION_GRACE_SEC,
  type Store,
  type StoredSigningKey,
  type TaskRecord,
  type TaskStatus,
} from './types.ts';
import { chainAfter, countKeyOf, outcomeOf } from '../decision-chain.ts';
import { type Chained, SqliteWriter, type WriterOp, type WriterStats } from './sqlite-writer.ts';
import { mapStoreFailures } from './unavailable.ts';

/** Options of {@link SqliteStore}. */
export interface SqliteStoreOptions {
  /** Database file; `":memory:"` for tests. Default: {@link defaultSqlitePath}. */
  path?: string;
  logger?: Logger;
  /**
   * Seconds a task (and its issued calls) is kept after it expired before `sweep` drops it, so
   * that status queries shortly after expiry still answer. Default 300.
   */
  taskRetentionSec?: number;
  /**
   * Most rows one sweep transaction deletes (default 500): the sweep runs in batches of this size
   * and yields to the event loop between them, so that it never holds the loop for long.
   */
  sweepBatchRows?: number;
  /** Most free pages one `incremental_vacuum` step returns to the file system (default 256). */
  vacuumStepPages?: number;
  /**
   * How long a statement waits for another connection's write lock before the request is answered
   * 503 TASKPASS_STORE_UNAVAILABLE, ms (default 5000).
   */
  busyTimeoutMs?: number;
  /** Seconds decision records are kept (`audit.retention`). Default 30 days. */
  decisionRetentionSec?: number;
  /** SQLite's page cache, MiB (default 64). */
  cacheMiB?: number;
  /** Bytes of the file read through mmap, MiB (default 1024; 0: off). */
  mmapMiB?: number;
  /**
   * Where WAL checkpoints run: `background` (default for a file: the writer thread, with its own
   * connection, so the event loop never copies the WAL; store/sqlite-writer.ts) or `inline`
   * (SQLite's automatic checkpoint in the COMMIT that crosses 1000 pages; always for `:memory:`).
   */
  checkpoint?: 'background' | 'inline';
  /** How often the background checkpoint runs, ms (default 100). */
  checkpointIntervalMs?: number;
  /**
   * The WAL's size, MiB, past which the background checkpoint also starts it over (default 64; a
   * PASSIVE checkpoint alone never does under steady load, see store/sqlite-writer.ts).
   */
  walLimitMiB?: number;
  /**
   * Where the hot path's group commits (issued calls, decision records) run: `thread` (default
   * for a file: the writer thread's connection; store/sqlite-writer.ts) or `inline` (this
   * connection, on the event loop; always for `:memory:`).
   */
  writer?: 'thread' | 'inline';
}

/** `$TASKPASS_DATA_DIR/taskpass.db`, or `./taskpass.db` when the variable is unset. */
export function defaultSqlitePath(): string {
  return join(resolve(process.env.TASKPASS_DATA_DIR ?? '.'), 'taskpass.db');
}

// Append-only: a released schema is never edited, only followed by a new step.
const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE tasks (
    id          TEXT PRIMARY KEY,
    agent       TEXT NOT NULL,
    sub         TEXT NOT NULL,
    user_issuer TEXT,
    user_claims TEXT,
    purpose     TEXT NOT NULL,
    status      TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    expires_at  INTEGER NOT NULL,
    finished_at INTEGER,
    revocation_seq INTEGER
  ) STRICT;
  CREATE INDEX tasks_created ON tasks (created_at DESC);
  CREATE INDEX tasks_expires ON tasks (expires_at);
  CREATE TABLE issued (
    jti        TEXT PRIMARY KEY,
    task_id    TEXT NOT NULL,
    tool       TEXT NOT NULL,
    resource   TEXT NOT NULL,
    action     TEXT NOT NULL,
    template   TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL
  ) STRICT;
  CREATE INDEX issued_task ON issued (task_id);
  -- The last seq handed out lives in its own row: revocations are swept, seqs are never reused.
  CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) STRICT;
  INSERT INTO counters (name, value) VALUES ('revocation_seq', 0);
  CREATE TABLE revocations (
    seq    INTEGER PRIMARY KEY,
    kind   TEXT NOT NULL,
    id     TEXT NOT NULL,
    until  INTEGER NOT NULL,
    reason TEXT NOT NULL
  ) STRICT;
  CREATE INDEX revocations_subject ON revocations (kind, id);
  CREATE INDEX revocations_until ON revocations (until);
  CREATE TABLE used (jti TEXT PRIMARY KEY, until INTEGER NOT NULL) STRICT;
  CREATE INDEX used_until ON used (until);
  CREATE TABLE signing_keys (
    kid         TEXT PRIMARY KEY,
    alg         TEXT NOT NULL,
    private_jwk TEXT NOT NULL,
    public_jwk  TEXT NOT NULL,
    created_at  INTEGER NOT NULL,
    active_from INTEGER NOT NULL,
    retire_at   INTEGER NOT NULL
  ) STRICT;
  `,
  // Workflow lookups without reading a task's whole history: calls per (task, tool, template), and
  // which templates issued a call of a tool on a resource. Backfilled from the issued log.
  `
  CREATE TABLE issued_counts (
    task_id  TEXT NOT NULL,
    tool     TEXT NOT NULL,
    template TEXT NOT NULL,
    n        INTEGER NOT NULL,
    PRIMARY KEY (task_id, tool, template)
  ) STRICT, WITHOUT ROWID;
  INSERT INTO issued_counts (task_id, tool, template, n)
    SELECT task_id, tool, template, COUNT(*) FROM issued GROUP BY task_id, tool, template;
  CREATE TABLE issued_prior (
    task_id  TEXT NOT NULL,
    tool     TEXT NOT NULL,
    resource TEXT NOT NULL,
    template TEXT NOT NULL,
    PRIMARY KEY (task_id, tool, resource, template)
  ) STRICT, WITHOUT ROWID;
  INSERT INTO issued_prior (task_id, tool, resource, template)
    SELECT DISTINCT task_id, tool, resource, template FROM issued;
  `,
  // Approvals (docs/approvals.md): the record as JSON, with the columns queries need; and which
  // approval each call (task, audience, tool, resource, action, args_sha256) currently has.
  `
  CREATE TABLE approvals (
    id         TEXT PRIMARY KEY,
    task_id    TEXT NOT NULL,
    status     TEXT NOT NULL,
    expires_at INTEGER NOT NULL,
    data       TEXT NOT NULL
  ) STRICT;
  CREATE INDEX approvals_task ON approvals (task_id);
  CREATE INDEX approvals_status ON approvals (status, expires_at);
  CREATE TABLE approval_calls (
    call_key    TEXT PRIMARY KEY,
    task_id     TEXT NOT NULL,
    approval_id TEXT NOT NULL
  ) STRICT, WITHOUT ROWID;
  CREATE INDEX approval_calls_task ON approval_calls (task_id);
  `,
  // Decision records (docs/decisions.md "Decision records, chained by hash"): the record as
  // stored (JSON, hashed), with the columns the console's queries filter on; the anchor (the last
  // swept record) the first remaining record links to; console sessions shared by nothing but
  // this process, kept here so that a restart does not sign everyone out.
  `
  CREATE TABLE decisions (
    seq     INTEGER PRIMARY KEY,
    at      INTEGER NOT NULL,
    event   TEXT NOT NULL,
    task    TEXT,
    agent   TEXT,
    user    TEXT,
    code    TEXT,
    outcome TEXT,
    count_key TEXT,
    hash    TEXT NOT NULL,
    data    TEXT NOT NULL
  ) STRICT;
  CREATE INDEX decisions_task ON decisions (task, seq);
  CREATE INDEX decisions_at ON decisions (at);
  -- 'head': the last record appended (so that deleting the newest records is detected too);
  -- 'anchor': the last record swept.
  CREATE TABLE decision_chain (
    name TEXT PRIMARY KEY,
    seq  INTEGER NOT NULL,
    hash TEXT NOT NULL
  ) STRICT;
  INSERT INTO decision_chain (name, seq, hash) VALUES ('head', 0, '${GENESIS_HASH}'), ('anchor', 0, '${GENESIS_HASH}');
  CREATE TABLE console_sessions (
    id         TEXT PRIMARY KEY,
    expires_at INTEGER NOT NULL,
    data       TEXT NOT NULL
  ) STRICT;
  CREATE INDEX console_sessions_expires ON console_sessions (expires_at);
  `,
  // Vault leases held for tasks, and the revocation outbox (docs/vault.md): a row lives until Vault
  // confirmed its revocation; due_at is when the revoker takes it (task end or expiry, then backoff).
  `
  CREATE TABLE leases (
    task_id    TEXT NOT NULL,
    path       TEXT NOT NULL,
    lease_id   TEXT NOT NULL,
    issued_at  INTEGER NOT NULL,
    expires_at INTEGER NOT NULL,
    state      TEXT NOT NULL,
    due_at     INTEGER NOT NULL,
    attempts   INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (task_id, path)
  ) STRICT;
  CREATE INDEX leases_due ON leases (due_at);
  `,
];

interface TaskRow {
  id: string;
  agent: string;
  sub: string;
  user_issuer: string | null;
  user_claims: string | null;
  purpose: string;
  status: string;
  created_at: number;
  expires_at: number;
  finished_at: number | null;
  revocation_seq: number | null;
}
interface IssuedRow {
  jti: string;
  task_id: string;
  tool: string;
  resource: string;
  action: string;
  template: string;
  issued_at: number;
  expires_at: number;
}
interface RevocationRow {
  seq: number;
  kind: string;
  id: string;
  until: number;
  reason: string;
}
interface KeyRow {
  kid: string;
  alg: string;
  private_jwk: string;
  public_jwk: string;
  created_at: number;
  active_from: number;
  retire_at: number;
}

interface LeaseRow {
  task_id: string;
  path: string;
  lease_id: string;
  issued_at: number;
  expires_at: number;
  state: LeaseRecord['state'];
  due_at: number;
  attempts: number;
}

function leaseFromRow(r: LeaseRow): LeaseRecord {
  return {
    taskId: r.task_id,
    path: r.path,
    leaseId: r.lease_id,
    issuedAt: r.issued_at,
    expiresAt: r.expires_at,
    state: r.state,
    dueAt: r.due_at,
    attempts: r.attempts,
  };
}

function taskFromRow(r: TaskRow): TaskRecord {
  const t: TaskRecord = {
    id: r.id,
    agent: r.agent,
    sub: r.sub,
    purpose: r.purpose,
    status: r.status as TaskStatus,
    createdAt: r.created_at,
    expiresAt: r.expires_at,
  };
  if (r.user_issuer !== null) t.userIssuer = r.user_issuer;
  if (r.user_claims !== null) t.userClaims = JSON.parse(r.user_claims) as Record<string, unknown>;
  if (r.finished_at !== null) t.finishedAt = r.finished_at;
  return t;
}

const revocationFromRow = (r: RevocationRow): Revocation => ({
  seq: r.seq,
  kind: r.kind as Revocation['kind'],
  id: r.id,
  until: r.until,
  reason: r.reason,
});

const issuedFromRow = (r: IssuedRow): IssuedCall => ({
  taskId: r.task_id,
  jti: r.jti,
  tool: r.tool,
  resource: r.resource,
  action: r.action as Action,
  template: r.template,
  issuedAt: r.issued_at,
  expiresAt: r.expires_at,
});

// Every statement the store runs, prepared once per connection.
/** The statements of the hot path's records, shared with the writer thread (sqlite-writer.ts). */
const WRITER_SQL = {
  insertIssued: `INSERT INTO issued (jti, task_id, tool, resource, action, template, issued_at, expires_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?)`,
  bumpIssuedCount: `INSERT INTO issued_counts (task_id, tool, template, n) VALUES (?, ?, ?, 1)
       ON CONFLICT (task_id, tool, template) DO UPDATE SET n = n + 1`,
  insertIssuedPrior:
    'INSERT OR IGNORE INTO issued_prior (task_id, tool, resource, template) VALUES (?, ?, ?, ?)',
  decisionHead: "SELECT seq, hash FROM decision_chain WHERE name = 'head'",
  insertDecision: `INSERT INTO decisions (seq, at, event, task, agent, user, code, outcome, count_key, hash, data)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
  setDecisionHead: "UPDATE decision_chain SET seq = ?, hash = ? WHERE name = 'head'",
  // The last batch the writer thread committed, in the same transaction (#withPending).
  setMark: `INSERT INTO counters (name, value) VALUES ('writer_batch', ?)
       ON CONFLICT (name) DO UPDATE SET value = excluded.value`,
} as const;

/** insertDecision's parameters for one record. */
function decisionRow(r: DecisionRecord): unknown[] {
  const str = (v: unknown) => (typeof v === 'string' ? v : null);
  return [
    r.seq,
    r.at,
    r.event,
    str(r.task),
    str(r.agent),
    str(r.user),
    str(r.code),
    outcomeOf(r.event) ?? null,
    countKeyOf(r) ?? null,
    r.hash,
    JSON.stringify(r),
  ];
}

/** A batch for the writer thread, filled during one event-loop turn. */
interface OutgoingBatch {
  id: number;
  ops: WriterOp[];
  /** Per op: resolved with where its records were chained (decisions), or null. */
  waiters: { resolve: (chained: Chained | null) => void; reject: (e: Error) => void }[];
}

/** An issued call sent to the writer thread, by the batch it went in. */
interface PendingCall {
  batch: number;
  call: IssuedCall;
}

function prepareStatements(db: Database.Database) {
  const p = (sql: string) => db.prepare(sql);
  return {
    begin: p('BEGIN IMMEDIATE'),
    commit: p('COMMIT'),
    insertTask: p(
      `INSERT INTO tasks (id, agent, sub, user_issuer, user_claims, purpose, status, created_at, expires_at, finished_at)
       VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)`,
    ),
    getTask: p('SELECT * FROM tasks WHERE id = ?'),
    completeTask: p('UPDATE tasks SET status = ?, finished_at = ?, revocation_seq = ? WHERE id = ?'),
    taskStatus: p('SELECT status FROM tasks WHERE id = ?'),
    nextSeq: p("UPDATE counters SET value = value + 1 WHERE name = 'revocation_seq' RETURNING value"),
    currentSeq: p("SELECT value FROM counters WHERE name = 'revocation_seq'"),
    insertRevocation: p('INSERT INTO revocations (seq, kind, id, until, reason) VALUES (?, ?, ?, ?, ?)'),
    revocationBySeq: p('SELECT * FROM revocations WHERE seq = ?'),
    revocationsSince: p('SELECT * FROM revocations WHERE seq > ? AND until > ? ORDER BY seq'),
    revocationSeqsPage: p('SELECT seq, until FROM revocations WHERE seq > ? ORDER BY seq LIMIT ?'),
    revocationsBetween: p('SELECT * FROM revocations WHERE seq > ? AND seq <= ? AND until > ? ORDER BY seq'),
    revokedSubject: p('SELECT 1 FROM revocations WHERE kind = ? AND id = ? LIMIT 1'),
    insertIssued: p(WRITER_SQL.insertIssued),
    bumpIssuedCount: p(WRITER_SQL.bumpIssuedCount),
    insertIssuedPrior: p(WRITER_SQL.insertIssuedPrior),
    writerMark: p("SELECT value FROM counters WHERE name = 'writer_batch'"),
    listIssued: p('SELECT * FROM issued WHERE task_id = ? ORDER BY rowid'),
    countIssued: p('SELECT template, n FROM issued_counts WHERE task_id = ? AND tool = ?'),
    totalIssuedOfTool: p('SELECT COALESCE(SUM(n), 0) AS n FROM issued_counts WHERE task_id = ? AND tool = ?'),
    issuedTemplatesOn: p('SELECT template FROM issued_prior WHERE task_id = ? AND tool = ? AND resource = ?'),
    markUsed: p('INSERT OR IGNORE INTO used (jti, until) VALUES (?, ?)'),
    loadKeys: p('SELECT * FROM signing_keys ORDER BY active_from, kid'),
    saveKey: p(
      `INSERT INTO signing_keys (kid, alg, private_jwk, public_jwk, created_at, active_from, retire_at)
       VALUES (?, ?, ?, ?, ?, ?, ?)
       ON CONFLICT (kid) DO UPDATE SET alg = excluded.alg, private_jwk = excluded.private_jwk,
         public_jwk = excluded.public_jwk, created_at = excluded.created_at,
         active_from = excluded.active_from, retire_at = excluded.retire_at`,
    ),
    insertKey: p(
      `INSERT INTO signing_keys (kid, alg, private_jwk, public_jwk, created_at, active_from, retire_at)
       VALUES (?, ?, ?, ?, ?, ?, ?)`,
    ),
    countKeys: p('SELECT COUNT(*) AS n FROM signing_keys'),
    countKeysAfter: p('SELECT COUNT(*) AS n FROM signing_keys WHERE active_from > ?'),
    deleteKey: p('DELETE FROM signing_keys WHERE kid = ?'),
    // The sweep, in bounded steps; each is an index range scan (EXPLAIN QUERY PLAN is pinned by
    // store-sqlite.test.ts): tasks_expires, issued_task, the task_id prefix of the primary keys
    // of issued_counts / issued_prior, revocations_until, used_until.
    expiredTasks: p('SELECT id FROM tasks WHERE expires_at <= ? ORDER BY expires_at LIMIT ?'),
    sweepIssuedOf: p('DELETE FROM issued WHERE task_id = ? LIMIT ?'),
    sweepIssuedCountsOf: p('DELETE FROM issued_counts WHERE task_id = ? LIMIT ?'),
    sweepIssuedPriorOf: p('DELETE FROM issued_prior WHERE task_id = ? LIMIT ?'),
    sweepTask: p('DELETE FROM tasks WHERE id = ?'),
    getLease: p('SELECT * FROM leases WHERE task_id = ? AND path = ?'),
    putLease: p(
      `INSERT OR REPLACE INTO leases (task_id, path, lease_id, issued_at, expires_at, state, due_at, attempts)
       VALUES (?, ?, ?, ?, ?, 'active', ?, 0)`,
    ),
    endLeasesOf: p("UPDATE leases SET state = 'revoking', due_at = MIN(due_at, ?) WHERE task_id = ?"),
    dueLeases: p('SELECT * FROM leases WHERE due_at <= ? ORDER BY due_at LIMIT ?'),
    countDueLeases: p("SELECT COUNT(*) AS n FROM leases WHERE due_at <= ? OR state = 'revoking'"),
    deleteLease: p('DELETE FROM leases WHERE task_id = ? AND path = ? AND lease_id = ?'),
    retryLease: p(
      "UPDATE leases SET state = 'revoking', due_at = ?, attempts = attempts + 1 WHERE task_id = ? AND path = ? AND lease_id = ?",
    ),
    sweepRevocations: p('DELETE FROM revocations WHERE until <= ? LIMIT ?'),
    sweepUsed: p('DELETE FROM used WHERE until <= ? LIMIT ?'),
    freePages: p('PRAGMA freelist_count'),
    insertApproval: p('INSERT INTO approvals (id, task_id, status, expires_at, data) VALUES (?, ?, ?, ?, ?)'),
    updateApproval: p('UPDATE approvals SET status = ?, data = ? WHERE id = ?'),
    getApproval: p('SELECT data FROM approvals WHERE id = ?'),
    openApprovalsOfTask: p(
      "SELECT data FROM approvals WHERE task_id = ? AND status IN ('pending', 'approved')",
    ),
    pendingApprovals: p(
      "SELECT data FROM approvals WHERE status = 'pending' AND expires_at > ? ORDER BY expires_at LIMIT ?",
    ),
    approvalOfCall: p('SELECT approval_id FROM approval_calls WHERE call_key = ?'),
    setApprovalOfCall: p(
      `INSERT INTO approval_calls (call_key, task_id, approval_id) VALUES (?, ?, ?)
       ON CONFLICT (call_key) DO UPDATE SET approval_id = excluded.approval_id`,
    ),
    releaseCall: p('DELETE FROM approval_calls WHERE call_key = ?'),
    sweepApprovalsOf: p('DELETE FROM approvals WHERE task_id = ? LIMIT ?'),
    sweepApprovalCallsOf: p('DELETE FROM approval_calls WHERE task_id = ? LIMIT ?'),
    decisionHead: p("SELECT seq, hash FROM decision_chain WHERE name = 'head'"),
    decisionAnchor: p("SELECT seq, hash FROM decision_chain WHERE name = 'anchor'"),
    setDecisionHead: p(WRITER_SQL.setDecisionHead),
    insertDecision: p(WRITER_SQL.insertDecision),
    decisionsRange: p('SELECT data FROM decisions WHERE seq > ? AND seq <= ? ORDER BY seq'),
    decisionsOfTask: p('SELECT data FROM decisions WHERE task = ? ORDER BY seq LIMIT ?'),
    decisionCounts: p(
      `SELECT count_key, COUNT(*) AS n FROM decisions
       WHERE at >= ? AND at < ? AND count_key IS NOT NULL GROUP BY count_key`,
    ),
    decisionCountsByMinute: p(
      `SELECT at / 60000 AS minute, count_key, COUNT(*) AS n FROM decisions
       WHERE at >= ? AND at < ? AND count_key IS NOT NULL GROUP BY minute, count_key ORDER BY minute`,
    ),
    oldDecisions: p('SELECT seq, hash FROM decisions WHERE at < ? ORDER BY seq LIMIT ?'),
    sweepDecisionsUpTo: p('DELETE FROM decisions WHERE seq <= ?'),
    setDecisionAnchor: p("UPDATE decision_chain SET seq = ?, hash = ? WHERE name = 'anchor'"),
    putSession: p(
      `INSERT INTO console_sessions (id, expires_at, data) VALUES (?, ?, ?)
       ON CONFLICT (id) DO UPDATE SET expires_at = excluded.expires_at, data = excluded.data`,
    ),
    getSession: p('SELECT * FROM console_sessions WHERE id = ? AND expires_at > ?'),
    deleteSession: p('DELETE FROM console_sessions WHERE id = ?'),
    sweepSessions: p('DELETE FROM console_sessions WHERE expires_at <= ? LIMIT ?'),
  };
}
type Statements = ReturnType<typeof prepareStatements>;

const keyArgs = (key: StoredSigningKey) =>
  [
    key.kid,
    key.alg,
    JSON.stringify(key.privateJwk),
    JSON.stringify(key.publicJwk),
    key.createdAt,
    key.activeFrom,
    key.retireAt,
  ] as const;

/**
 * {@link Store} on one SQLite file (better-sqlite3): the single-process default.
 *
 * Durability: `synchronous = FULL` for everything, so every acknowledged write has been fsynced.
 * Issued-call records — one per token, the hot path — are group-committed: the first record of an
 * event-loop turn opens a write transaction, every record of the same turn joins it, and one
 * COMMIT (one fsync) at the end of the turn (setImmediate) makes all of them durable before any of
 * their promises resolves, i.e. before any of those tokens is handed out. While the batch is open
 * its rows are visible to this connection's reads, so call limits and prerequisites see every call
 * already decided, exactly as with one transaction per record. Decision records (the audit
 * chain) join the same batch, so they cost no fsync of their own. Any other write commits the open
 * batch first and then runs in its own transaction. A failed COMMIT rejects the whole batch (no
 * token of it is handed out; the rows are rolled back). See docs/decisions.md.
 */
export class SqliteStore implements Store {
  readonly path: string;
  readonly #logger: Logger | undefined;
  readonly #retention: number;
  readonly #decisionRetention: number;
  readonly #batchRows: number;
  readonly #vacuumPages: number;
  readonly #busyTimeoutMs: number;
  readonly #cacheMiB: number;
  readonly #mmapMiB: number;
  readonly #checkpoint: 'background' | 'inline';
  readonly #checkpointIntervalMs: number;
  readonly #walLimitMiB: number;
  /** Raised by the checkpoint thread: the committing connection starts the WAL over (store/sqlite-writer.ts). */
  readonly #restartWanted = new Int32Array(new SharedArrayBuffer(4));
  readonly #writerMode: 'thread' | 'inline';
  // The writer thread (undefined: everything inline). With it, the turn's records wait in #out,
  // are sent at the end of the turn, and stay in #pendingIssued until their batch was answered.
  #writer: SqliteWriter | undefined;
  #checkpointer: SqliteWriter | undefined;
  #out: OutgoingBatch | undefined;
  #idleWaiters: (() => void)[] = [];
  readonly #pendingIssued = new Map<string, PendingCall[]>();
  readonly #pendingJtis = new Set<string>();
  #sweeping: Promise<void> | undefined;
  readonly #events = new EventEmitter();
  #db: Database.Database | undefined;
  #stmts: Statements | undefined;
  #listTasks = new Map<string, Database.Statement>();
  #recordIssued: ((call: IssuedCall, used?: ApprovalRecord) => void) | undefined;
  // Waiters of the open group-commit batch (undefined: no batch open).
  #batch: { resolve: () => void; reject: (e: unknown) => void }[] | undefined;

  constructor(opts: SqliteStoreOptions = {}) {
    this.path = opts.path ?? defaultSqlitePath();
    this.#logger = opts.logger;
    this.#retention = opts.taskRetentionSec ?? 300;
    this.#decisionRetention = opts.decisionRetentionSec ?? 30 * 86400;
    this.#batchRows = Math.max(1, Math.floor(opts.sweepBatchRows ?? 100));
    this.#vacuumPages = Math.max(1, Math.floor(opts.vacuumStepPages ?? 64));
    this.#busyTimeoutMs = Math.max(0, Math.floor(opts.busyTimeoutMs ?? 5000));
    this.#cacheMiB = Math.max(2, Math.floor(opts.cacheMiB ?? 64));
    this.#mmapMiB = Math.max(0, Math.floor(opts.mmapMiB ?? 1024));
    this.#checkpoint = this.path === ':memory:' ? 'inline' : (opts.checkpoint ?? 'background');
    this.#checkpointIntervalMs = Math.max(1, Math.floor(opts.checkpointIntervalMs ?? 100));
    this.#walLimitMiB = Math.max(0, opts.walLimitMiB ?? 64);
    this.#writerMode = this.path === ':memory:' ? 'inline' : (opts.writer ?? 'thread');
    // Every feed subscriber (SSE stream) goes through the hub, not here; a handful of listeners.
    this.#events.setMaxListeners(0);
  }

  get #conn(): Database.Database {
    if (!this.#db) throw new Error('SqliteStore: init() has not been called (or the store is closed)');
    return this.#db;
  }

  get #s(): Statements {
    if (!this.#stmts) throw new Error('SqliteStore: init() has not been called (or the store is closed)');
    return this.#stmts;
  }

  async init(): Promise<void> {
    if (this.#db) return;
    if (this.path !== ':memory:') mkdirSync(dirname(resolve(this.path)), { recursive: true });
    const db = new Database(this.path);
    try {
      this.#incrementalVacuum(db);
      db.pragma('journal_mode = WAL');
      db.pragma('synchronous = FULL');
      db.pragma('foreign_keys = ON');
      db.pragma(`busy_timeout = ${this.#busyTimeoutMs}`);
      // A large store's hot index pages in memory, the rest read through mmap (no read() per page).
      db.pragma(`cache_size = ${-1024 * this.#cacheMiB}`);
      db.pragma(`mmap_size = ${1024 * 1024 * this.#mmapMiB}`);
      this.#migrate(db);
      const s = prepareStatements(db);
      // Nested in the group-commit transaction, this runs as a savepoint: a record is all or nothing.
      this.#recordIssued = db.transaction((call: IssuedCall, used?: ApprovalRecord) => {
        if (used) s.updateApproval.run(used.status, JSON.stringify(used), used.id);
        s.insertIssued.run(
          call.jti,
          call.taskId,
          call.tool,
          call.resource,
          call.action,
          call.template,
          call.issuedAt,
          call.expiresAt,
        );
        s.bumpIssuedCount.run(call.taskId, call.tool, call.template);
        s.insertIssuedPrior.run(call.taskId, call.tool, call.resource, call.template);
      });
      this.#stmts = s;
    } catch (e) {
      db.close();
      throw e;
    }
    this.#db = db;
    await this.#startWriter(db);
  }

  /**
   * Starts the writer thread (group commits) and the checkpoint thread, as configured. Either one
   * that cannot start, or stops, hands its work back to this connection (the writer thread's
   * checkpoints to itself while it runs).
   */
  async #startWriter(db: Database.Database): Promise<void> {
    const writes = this.#writerMode === 'thread';
    const background = this.#checkpoint === 'background';
    const start = (role: 'writer' | 'checkpointer', onFailure: () => void, firstId = 1) =>
      SqliteWriter.start(
        {
          path: this.path,
          writes: role === 'writer',
          sql: WRITER_SQL,
          checkpointIntervalMs: role === 'checkpointer' ? this.#checkpointIntervalMs : 0,
          restartFlag: this.#restartWanted.buffer as SharedArrayBuffer,
          restartFrames: Math.ceil(
            (this.#walLimitMiB * 1024 * 1024) / (db.pragma('page_size', { simple: true }) as number),
          ),
          autocheckpoint: role === 'writer' && !background,
          busyTimeoutMs: this.#busyTimeoutMs,
          logger: this.#logger,
          onFailure,
        },
        firstId,
      ).catch((err) => {
        this.#logger?.warn(
          { err, store: 'sqlite', role },
          `store ${role} thread did not start; working inline`,
        );
        return undefined;
      });
    if (background) {
      this.#checkpointer = await start('checkpointer', () => {
        this.#checkpointer = undefined;
        if (db.open) db.pragma('wal_autocheckpoint = 1000');
        this.#writer?.checkpointInline();
      });
      if (this.#checkpointer) db.pragma('wal_autocheckpoint = 0');
    }
    if (writes) {
      const mark = this.#s.writerMark.get() as { value: number } | undefined;
      this.#writer = await start(
        'writer',
        () => {
          this.#writer = undefined;
        },
        (mark?.value ?? 0) + 1,
      );
      if (this.#writer && !this.#checkpointer) this.#writer.checkpointInline();
    }
  }

  /** Test seam: the writer thread (or the checkpoint thread) stops as if it had crashed. */
  stopWriterForTest(which: 'writer' | 'checkpointer' = 'writer'): void {
    (which === 'writer' ? this.#writer : this.#checkpointer)?.terminateForTest();
  }

  /** The writer thread's statistics (undefined: no writer thread). */
  async writerStats(): Promise<WriterStats | undefined> {
    return this.#writer?.stats();
  }

  /** The checkpoint thread's statistics (undefined: checkpoints run inline). */
  async checkpointStats(): Promise<WriterStats | undefined> {
    return this.#checkpointer?.stats();
  }

  /**
   * Before any other write: the records of this turn and every earlier one are committed (and
   * their promises settled), so that writes land in the order they were made. Undefined when
   * nothing is outstanding.
   */
  #settle(): Promise<void> | undefined {
    const writer = this.#writer;
    if (!writer) {
      this.#commitBatch();
      return undefined;
    }
    this.#send();
    if (writer.inFlight === 0) return undefined;
    return new Promise((resolve) => this.#idleWaiters.push(resolve));
  }

  /** Adds `op` to this turn's batch for the writer thread (sent at the end of the turn). */
  #enqueue(writer: SqliteWriter, op: WriterOp): { batch: number; done: Promise<Chained | null> } {
    let out = this.#out;
    if (!out) {
      out = { id: writer.nextId(), ops: [], waiters: [] };
      this.#out = out;
      setImmediate(() => this.#send());
    }
    out.ops.push(op);
    const batch = out;
    const done = new Promise<Chained | null>((resolve, reject) => batch.waiters.push({ resolve, reject }));
    return { batch: batch.id, done };
  }

  #send(): void {
    const out = this.#out;
    const writer = this.#writer;
    if (!out || !writer) return;
    this.#out = undefined;
    void writer.send(out.id, out.ops).then((o) => {
      this.#forgetPending(out);
      if (!o.ok) {
        this.#logger?.error(
          { err: new Error(o.error), records: out.ops.length },
          'store batch not committed',
        );
        for (const w of out.waiters) w.reject(new Error(o.error));
      } else {
        out.waiters.forEach((w, i) => {
          const error = o.errors[i];
          if (error) w.reject(new Error(error));
          else w.resolve(o.chained[i] ?? null);
        });
      }
      if (writer.inFlight === 0 && !this.#out) for (const r of this.#idleWaiters.splice(0)) r();
    });
  }

  #addPending(batch: number, call: IssuedCall): void {
    const list = this.#pendingIssued.get(call.taskId);
    if (list) list.push({ batch, call });
    else this.#pendingIssued.set(call.taskId, [{ batch, call }]);
    this.#pendingJtis.add(call.jti);
  }

  /** The batch's calls are in the file now (or never will be): reads stop adding them. */
  #forgetPending(out: OutgoingBatch): void {
    for (const op of out.ops) {
      if (op.kind !== 'issued') continue;
      this.#pendingJtis.delete(op.call.jti);
      const rest = this.#pendingIssued.get(op.call.taskId)?.filter((p) => p.batch !== out.id) ?? [];
      if (rest.length === 0) this.#pendingIssued.delete(op.call.taskId);
      else this.#pendingIssued.set(op.call.taskId, rest);
    }
  }

  /**
   * `read` against the file, and the task's calls sent to the writer thread and not in the file
   * yet (both from one read transaction: the writer's mark says which batches the file holds).
   */
  #withPending<T>(taskId: string, read: () => T): { value: T; pending: IssuedCall[] } {
    const list = this.#pendingIssued.get(taskId);
    if (!list) return { value: read(), pending: [] };
    return this.#conn.transaction(() => {
      const mark = (this.#s.writerMark.get() as { value: number } | undefined)?.value ?? 0;
      return { value: read(), pending: list.filter((p) => p.batch > mark).map((p) => p.call) };
    })();
  }

  // Swept rows leave free pages; with auto_vacuum = INCREMENTAL the sweep hands them back to the
  // file system in small steps (`incremental_vacuum(N)`), so the file does not stay at its
  // high-water mark. A new database gets the mode before its first table; a database created
  // before it (auto_vacuum = NONE) is converted once with VACUUM, at start-up, before serving.
  #incrementalVacuum(db: Database.Database): void {
    if (db.pragma('auto_vacuum', { simple: true }) === 2) return;
    db.pragma('auto_vacuum = INCREMENTAL');
    const empty = db.prepare('SELECT COUNT(*) AS n FROM sqlite_schema').get() as { n: number };
    if (empty.n === 0 || this.path === ':memory:') return;
    const t0 = Date.now();
    db.exec('VACUUM');
    this.#logger?.info(
      { store: 'sqlite', ms: Date.now() - t0 },
      'store converted to auto_vacuum = INCREMENTAL',
    );
  }

  #migrate(db: Database.Database): void {
    db.exec('CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)');
    const row = db.prepare('SELECT version FROM schema_version').get() as { version: number } | undefined;
    let version = row?.version ?? 0;
    if (!row) db.prepare('INSERT INTO schema_version (version) VALUES (0)').run();
    if (version > MIGRATIONS.length) {
      throw new Error(
        `SqliteStore: ${this.path} has schema version ${version}, newer than this broker (${MIGRATIONS.length})`,
      );
    }
    for (; version < MIGRATIONS.length; version++) {
      const sql = MIGRATIONS[version] as string;
      db.transaction(() => {
        db.exec(sql);
        db.prepare('UPDATE schema_version SET version = ?').run(version + 1);
      }).immediate();
      this.#logger?.info({ store: 'sqlite', version: version + 1 }, 'store schema migrated');
    }
  }

  async close(): Promise<void> {
    await this.#settle();
    // The threads go first: closing the last connection checkpoints the WAL into the file.
    const threads = [this.#writer, this.#checkpointer];
    this.#writer = undefined;
    this.#checkpointer = undefined;
    for (const t of threads) await t?.close();
    this.#commitBatch();
    const db = this.#db;
    this.#db = undefined;
    this.#stmts = undefined;
    this.#recordIssued = undefined;
    this.#listTasks.clear();
    db?.close();
  }

  /**
   * With `writer: inline` and background checkpoints: starts the WAL over when the checkpoint
   * thread asked (what the writer thread does otherwise; store/sqlite-writer.ts). Never waits:
   * busy (the checkpoint thread copying, a read on the WAL), it is asked again after the next
   * commit; failed, at the checkpoint thread's next run.
   */
  #restartWal(db: Database.Database): void {
    db.pragma('busy_timeout = 0');
    try {
      const busy = (db.pragma('wal_checkpoint(RESTART)') as { busy: number }[])[0]?.busy !== 0;
      if (busy) Atomics.store(this.#restartWanted, 0, 1);
    } catch (err) {
      // Asked again by the checkpoint thread's next run, not after every commit.
      this.#logger?.warn({ err, store: 'sqlite' }, 'WAL restart failed (asked again later)');
    } finally {
      db.pragma(`busy_timeout = ${this.#busyTimeoutMs}`);
    }
  }

  /** Commits the open group-commit batch (if any) and settles its waiters. */
  #commitBatch(): void {
    const batch = this.#batch;
    if (!batch) return;
    this.#batch = undefined;
    const db = this.#db;
    try {
      if (!db || !this.#stmts) throw new Error('SqliteStore: closed with issued calls not committed');
      this.#stmts.commit.run();
    } catch (e) {
      try {
        if (db?.inTransaction) db.exec('ROLLBACK');
      } catch (rollbackError) {
        this.#logger?.error({ err: rollbackError }, 'rollback of a failed issued-call batch failed');
      }
      this.#logger?.error({ err: e, records: batch.length }, 'issued-call batch not committed');
      for (const w of batch) w.reject(e);
      return;
    }
    for (const w of batch) w.resolve();
    // The waiters are settled first (they continue after this turn); the next batch waits for it.
    if (Atomics.exchange(this.#restartWanted, 0, 0) === 1) this.#restartWal(db);
  }

  async createTask(task: TaskRecord): Promise<void> {
    await this.#settle();
    this.#s.insertTask.run(
      task.id,
      task.agent,
      task.sub,
      task.userIssuer ?? null,
      task.userClaims === undefined ? null : JSON.stringify(task.userClaims),
      task.purpose,
      task.status,
      task.createdAt,
      task.expiresAt,
      task.finishedAt ?? null,
    );
  }

  async getTask(id: string): Promise<TaskRecord | undefined> {
    const r = this.#s.getTask.get(id) as TaskRow | undefined;
    return r && taskFromRow(r);
  }

  async listTasks(
    filter: { status?: TaskStatus; agent?: string; limit?: number } = {},
  ): Promise<TaskRecord[]> {
    const where: string[] = [];
    const args: (string | number)[] = [];
    if (filter.status) {
      where.push('status = ?');
      args.push(filter.status);
    }
    if (filter.agent) {
      where.push('agent = ?');
      args.push(filter.agent);
    }
    args.push(Math.max(0, Math.floor(filter.limit ?? 100)));
    const sql = `SELECT * FROM tasks ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
                 ORDER BY created_at DESC, rowid DESC LIMIT ?`;
    let stmt = this.#listTasks.get(sql);
    if (!stmt) {
      stmt = this.#conn.prepare(sql);
      this.#listTasks.set(sql, stmt);
    }
    return (stmt.all(...args) as TaskRow[]).map(taskFromRow);
  }

  async completeTask(
    id: string,
    status: ClosingStatus,
    at: number,
    reason: string,
  ): Promise<{
    task: TaskRecord;
    revocation: Revocation;
    alreadyCompleted: boolean;
    cancelledApprovals: string[];
  }> {
    await this.#settle();
    const db = this.#conn;
    const s = this.#s;
    const result = db
      .transaction(() => {
        const row = s.getTask.get(id) as TaskRow | undefined;
        if (!row) throw new BrokerError('TASKPASS_TASK_NOT_FOUND', `no task ${id}`);
        if (row.status !== 'open') {
          return {
            task: taskFromRow(row),
            revocation: this.#earlierRevocation(row),
            alreadyCompleted: true,
            cancelledApprovals: [],
          };
        }
        const seq = this.#nextSeq();
        const revocation: Revocation = { seq, kind: 'task', id, until: row.expires_at, reason };
        this.#insertRevocation(revocation);
        s.completeTask.run(status, at, seq, id);
        // The revocation outbox: the task's leases are due for revocation from its end.
        s.endLeasesOf.run(at, id);
        // Nothing the task asked for may be approved or used once it is closed.
        const cancelled: string[] = [];
        for (const { data } of s.openApprovalsOfTask.all(id) as { data: string }[]) {
          const a = JSON.parse(data) as ApprovalRecord;
          this.#saveApproval({ ...a, status: 'cancelled' });
          cancelled.push(a.id);
        }
        return {
          task: taskFromRow({ ...row, status, finished_at: at, revocation_seq: seq }),
          revocation,
          alreadyCompleted: false,
          cancelledApprovals: cancelled,
        };
      })
      .immediate();
    if (!result.alreadyCompleted) this.#emit(result.revocation);
    for (const a of result.cancelledApprovals) this.#approvalChanged(a);
    return result;
  }

  #saveApproval(a: ApprovalRecord): void {
    this.#s.updateApproval.run(a.status, JSON.stringify(a), a.id);
  }

  #approval(id: string): ApprovalRecord | undefined {
    const r = this.#s.getApproval.get(id) as { data: string } | undefined;
    return r && (JSON.parse(r.data) as ApprovalRecord);
  }

  #approvalChanged(id: string): void {
    try {
      this.#events.emit('approval', id);
    } catch (err) {
      this.#logger?.error({ err, approval: id }, 'approval listener threw');
    }
  }

  async requestApproval(
    a: ApprovalRecord,
    now: number,
  ): Promise<{ approval: ApprovalRecord; created: boolean }> {
    await this.#settle();
    const s = this.#s;
    const key = approvalCallKey(a);
    return this.#conn
      .transaction(() => {
        // Asked only while the task is open: completeTask cancels what exists, nothing comes after.
        const task = s.taskStatus.get(a.taskId) as { status: string } | undefined;
        if (!task) throw new BrokerError('TASKPASS_TASK_NOT_FOUND', `no task ${a.taskId}`);
        if (task.status !== 'open') {
          throw new BrokerError('TASKPASS_TASK_CLOSED', `task ${a.taskId} is closed; its tokens are revoked`);
        }
        const cur = s.approvalOfCall.get(key) as { approval_id: string } | undefined;
        const existing = cur && this.#approval(cur.approval_id);
        if (existing) {
          const open = existing.status === 'pending' || existing.status === 'approved';
          if ((open && existing.expiresAt > now) || existing.status === 'denied') {
            return { approval: existing, created: false };
          }
          if (open) {
            const expired: ApprovalRecord = { ...existing, status: 'expired' };
            this.#saveApproval(expired);
            s.releaseCall.run(key);
            return { approval: expired, created: false };
          }
        }
        s.insertApproval.run(a.id, a.taskId, a.status, a.expiresAt, JSON.stringify(a));
        s.setApprovalOfCall.run(key, a.taskId, a.id);
        return { approval: a, created: true };
      })
      .immediate();
  }

  async getApproval(id: string): Promise<ApprovalRecord | undefined> {
    return this.#approval(id);
  }

  async decideApproval(
    id: string,
    d: ApprovalDecisionInput,
    now: number,
  ): Promise<{ decided: boolean; approval: ApprovalRecord } | undefined> {
    await this.#settle();
    const r = this.#conn
      .transaction(() => {
        const a = this.#approval(id);
        if (!a) return undefined;
        if (a.status !== 'pending' || a.expiresAt <= now) return { decided: false, approval: a };
        const decided: ApprovalRecord = {
          ...a,
          status: d.status,
          decidedAt: d.decidedAt,
          approver: d.approver,
          ...(d.comment !== undefined ? { comment: d.comment } : {}),
        };
        this.#saveApproval(decided);
        return { decided: true, approval: decided };
      })
      .immediate();
    if (r?.decided) this.#approvalChanged(id);
    return r;
  }

  async listPendingApprovals(now: number, limit: number): Promise<ApprovalRecord[]> {
    return (this.#s.pendingApprovals.all(now, Math.max(0, Math.floor(limit))) as { data: string }[]).map(
      (r) => JSON.parse(r.data) as ApprovalRecord,
    );
  }

  onApprovalChange(listener: (id: string) => void): () => void {
    this.#events.on('approval', listener);
    return () => {
      this.#events.off('approval', listener);
    };
  }

  // The revocation row may already have been swept (its `until` passed); the task row still says
  // which seq it had, and a swept revocation covers nothing any more, so rebuilding it is exact.
  #earlierRevocation(row: TaskRow): Revocation {
    const seq = row.revocation_seq ?? 0;
    const r = this.#s.revocationBySeq.get(seq) as RevocationRow | undefined;
    return r
      ? revocationFromRow(r)
      : { seq, kind: 'task', id: row.id, until: row.expires_at, reason: row.status };
  }

  #nextSeq(): number {
    return (this.#s.nextSeq.get() as { value: number }).value;
  }

  #insertRevocation(r: Revocation): void {
    this.#s.insertRevocation.run(r.seq, r.kind, r.id, r.until, r.reason);
  }

  #emit(r: Revocation): void {
    try {
      this.#events.emit('revocation', { ...r });
    } catch (err) {
      // A failing listener must not turn a durable revocation into a reported failure.
      this.#logger?.error({ err, seq: r.seq }, 'revocation listener threw');
    }
  }

  async recordIssued(
    call: IssuedCall,
    opts: { ifToolCount?: number; consumeApproval?: { id: string; now: number } } = {},
  ): Promise<boolean> {
    const record = this.#recordIssued as (call: IssuedCall, consume?: ApprovalRecord) => void;
    // A call that uses an approval is written here, in its own transaction, after everything sent
    // to the writer thread (rare: one per approval).
    const writer = opts.consumeApproval ? undefined : this.#writer;
    if (opts.consumeApproval) await this.#settle();
    // Checked and written (or queued) in one synchronous step, counting the calls decided and not
    // yet committed, so that no other decision of this process can slip in between.
    if (opts.ifToolCount !== undefined && this.#totalOfTool(call.taskId, call.tool) !== opts.ifToolCount) {
      return false;
    }
    if (writer) {
      if (this.#pendingJtis.has(call.jti)) throw new Error('UNIQUE constraint failed: issued.jti');
      const { batch, done } = this.#enqueue(writer, { kind: 'issued', call });
      this.#addPending(batch, call);
      await done;
      return true;
    }
    let used: ApprovalRecord | undefined;
    if (opts.consumeApproval) {
      // Same synchronous step: approved → used at most once, together with the call's record.
      const a = this.#approval(opts.consumeApproval.id);
      if (a?.status !== 'approved' || a.expiresAt <= opts.consumeApproval.now) return false;
      used = { ...a, status: 'used', usedAt: opts.consumeApproval.now, jti: call.jti };
    }
    if (this.#writer) this.#recordAlone(call, used);
    else await this.#inBatch(() => record(call, used));
    if (used) this.#approvalChanged(used.id);
    return true;
  }

  /** One issued call in its own transaction on this connection (writer thread running). */
  #recordAlone(call: IssuedCall, used: ApprovalRecord | undefined): void {
    const record = this.#recordIssued as ((c: IssuedCall, u?: ApprovalRecord) => void) & {
      immediate(c: IssuedCall, u?: ApprovalRecord): void;
    };
    record.immediate(call, used);
  }

  /** Calls of `tool` in the task: in the file, and sent to the writer thread but not in it yet. */
  #totalOfTool(taskId: string, tool: string): number {
    const { value, pending } = this.#withPending(
      taskId,
      () => (this.#s.totalIssuedOfTool.get(taskId, tool) as { n: number }).n,
    );
    return value + pending.filter((c) => c.tool === tool).length;
  }

  /**
   * Runs `write` in the open group-commit batch (opening one for this event-loop turn if none is)
   * and resolves with its result once the batch's COMMIT returned. `write` throwing rejects this
   * call only (run it as a nested transaction, i.e. a savepoint); the batch goes on.
   */
  async #inBatch<T>(write: () => T): Promise<T> {
    if (!this.#batch) {
      this.#s.begin.run();
      this.#batch = [];
      setImmediate(() => this.#commitBatch());
    }
    const batch = this.#batch;
    const result = write();
    await new Promise<void>((resolve, reject) => {
      batch.push({ resolve, reject });
    });
    return result;
  }

  // Reads of the issued calls include those sent to the writer thread and not committed yet, as
  // they include the open batch's rows when the batch is this connection's.
  async listIssued(taskId: string): Promise<IssuedCall[]> {
    const { value, pending } = this.#withPending(taskId, () =>
      (this.#s.listIssued.all(taskId) as IssuedRow[]).map(issuedFromRow),
    );
    return [...value, ...pending];
  }

  async countIssued(taskId: string, tool: string): Promise<Map<string, number>> {
    const { value, pending } = this.#withPending(
      taskId,
      () => this.#s.countIssued.all(taskId, tool) as { template: string; n: number }[],
    );
    const counts = new Map(value.map((r) => [r.template, r.n]));
    for (const c of pending) if (c.tool === tool) counts.set(c.template, (counts.get(c.template) ?? 0) + 1);
    return counts;
  }

  async issuedTemplates(taskId: string, tool: string, resource?: string): Promise<Set<string>> {
    const { value, pending } = this.#withPending(
      taskId,
      () =>
        (resource === undefined
          ? this.#s.countIssued.all(taskId, tool)
          : this.#s.issuedTemplatesOn.all(taskId, tool, resource)) as { template: string }[],
    );
    const templates = new Set(value.map((r) => r.template));
    for (const c of pending) {
      if (c.tool === tool && (resource === undefined || c.resource === resource)) templates.add(c.template);
    }
    return templates;
  }

  // ---- Vault leases and their revocation outbox ----

  async recordLease(
    l: NewLease,
    now: number,
  ): Promise<{ recorded: boolean; lease: LeaseRecord | undefined }> {
    await this.#settle();
    const s = this.#s;
    return this.#conn
      .transaction(() => {
        const task = s.getTask.get(l.taskId) as TaskRow | undefined;
        if (!task) throw new BrokerError('TASKPASS_TASK_NOT_FOUND', `no task ${l.taskId}`);
        const existing = s.getLease.get(l.taskId, l.path) as LeaseRow | undefined;
        if (task.status !== 'open' || task.expires_at <= now) {
          return { recorded: false, lease: existing && leaseFromRow(existing) };
        }
        if (existing && existing.expires_at > now) return { recorded: false, lease: leaseFromRow(existing) };
        s.putLease.run(l.taskId, l.path, l.leaseId, l.issuedAt, l.expiresAt, task.expires_at);
        return { recorded: true, lease: leaseFromRow(s.getLease.get(l.taskId, l.path) as LeaseRow) };
      })
      .immediate();
  }

  async getLease(taskId: string, path: string): Promise<LeaseRecord | undefined> {
    const r = this.#s.getLease.get(taskId, path) as LeaseRow | undefined;
    return r && leaseFromRow(r);
  }

  async dueLeases(now: number, limit: number): Promise<LeaseRecord[]> {
    return (this.#s.dueLeases.all(now, limit) as LeaseRow[]).map(leaseFromRow);
  }

  async countDueLeases(now: number): Promise<number> {
    return (this.#s.countDueLeases.get(now) as { n: number }).n;
  }

  async leaseRevoked(taskId: string, path: string, leaseId: string): Promise<void> {
    await this.#settle();
    this.#s.deleteLease.run(taskId, path, leaseId);
  }

  async leaseRetry(taskId: string, path: string, leaseId: string, retryAt: number): Promise<void> {
    await this.#settle();
    this.#s.retryLease.run(retryAt, taskId, path, leaseId);
  }

  async revokeToken(jti: string, until: number, reason: string): Promise<Revocation> {
    await this.#settle();
    const db = this.#conn;
    const revocation = db
      .transaction(() => {
        const r: Revocation = { seq: this.#nextSeq(), kind: 'token', id: jti, until, reason };
        this.#insertRevocation(r);
        return r;
      })
      .immediate();
    this.#emit(revocation);
    return revocation;
  }

  async revocationsSince(since: number, now: number): Promise<Revocation[]> {
    return (this.#s.revocationsSince.all(since, now) as RevocationRow[]).map(revocationFromRow);
  }

  async revocationsPage(
    after: number,
    now: number,
    limit: number,
  ): Promise<{ revocations: Revocation[]; next: number | undefined }> {
    // The scan is bounded by seqs (the primary key), not by live rows: a page never walks an
    // unbounded run of swept-late revocations.
    const scanned = this.#s.revocationSeqsPage.all(after, limit) as { seq: number }[];
    const last = scanned.at(-1)?.seq;
    if (last === undefined) return { revocations: [], next: undefined };
    const rows = this.#s.revocationsBetween.all(after, last, now) as RevocationRow[];
    return { revocations: rows.map(revocationFromRow), next: scanned.length < limit ? undefined : last };
  }

  async currentSeq(): Promise<number> {
    return (this.#s.currentSeq.get() as { value: number }).value;
  }

  async isRevoked(kind: 'task' | 'token', id: string): Promise<boolean> {
    const s = this.#s;
    if (s.revokedSubject.get(kind, id)) return true;
    // A finished task stays revoked after its revocation row was swept.
    if (kind === 'task') {
      const t = s.taskStatus.get(id) as { status: string } | undefined;
      return t !== undefined && t.status !== 'open';
    }
    return false;
  }

  async markUsed(jti: string, until: number): Promise<boolean> {
    await this.#settle();
    return this.#s.markUsed.run(jti, until).changes === 1;
  }

  async loadSigningKeys(): Promise<StoredSigningKey[]> {
    return (this.#s.loadKeys.all() as KeyRow[]).map((r) => ({
      kid: r.kid,
      alg: 'ES256',
      privateJwk: JSON.parse(r.private_jwk) as Record<string, unknown>,
      publicJwk: JSON.parse(r.public_jwk) as Record<string, unknown>,
      createdAt: r.created_at,
      activeFrom: r.active_from,
      retireAt: r.retire_at,
    }));
  }

  async saveSigningKey(key: StoredSigningKey): Promise<void> {
    await this.#settle();
    this.#scrubbing(() => this.#s.saveKey.run(...keyArgs(key)));
  }

  /**
   * Runs a write that replaces or deletes key material so that the old bytes do not stay on disk:
   * `secure_delete` zeroes the freed cell content, and a TRUNCATE checkpoint moves the pages into
   * the database file and empties the WAL, which still held the old page images. (Only here: on
   * the sweep's deletes, zeroing would be I/O spent on data that is not secret.)
   */
  #scrubbing(write: () => unknown): void {
    const db = this.#conn;
    db.pragma('secure_delete = ON');
    try {
      write();
    } finally {
      db.pragma('secure_delete = OFF');
    }
    if (this.path === ':memory:') return;
    const [r] = db.pragma('wal_checkpoint(TRUNCATE)') as { busy: number }[];
    if (r?.busy)
      this.#logger?.warn(
        'signing key write: WAL checkpoint incomplete; old key bytes may stay in the WAL until the next one',
      );
  }

  async addSigningKeyIfLatest(key: StoredSigningKey, activeAfter: number | undefined): Promise<boolean> {
    await this.#settle();
    const db = this.#conn;
    const s = this.#s;
    return db
      .transaction(() => {
        const later = (activeAfter === undefined ? s.countKeys.get() : s.countKeysAfter.get(activeAfter)) as {
          n: number;
        };
        if (later.n > 0) return false;
        s.insertKey.run(...keyArgs(key));
        return true;
      })
      .immediate();
  }

  async deleteSigningKey(kid: string): Promise<void> {
    await this.#settle();
    this.#scrubbing(() => this.#s.deleteKey.run(kid));
  }

  // ---- decision records (serialized: one IMMEDIATE transaction reads the head and appends) ----

  #head(s: Statements): ChainHead {
    return s.decisionHead.get() as ChainHead;
  }

  // Decision records join the issued-call group commit: the fsync that makes a turn's tokens
  // durable makes the records appended in that turn durable too (docs/decisions.md). With the
  // writer thread, the thread chains and hashes them, after the head its transaction finds.
  async appendDecisions(inputs: readonly DecisionInput[]): Promise<DecisionRecord[]> {
    if (inputs.length === 0) return [];
    const s = this.#s;
    const writer = this.#writer;
    if (writer) {
      const at = (await this.#enqueue(writer, { kind: 'decisions', inputs }).done) as Chained;
      return inputs.map(
        (input, i) =>
          ({
            ...input,
            seq: at.seq + i,
            prev_hash: i === 0 ? at.prev : at.hashes[i - 1],
            hash: at.hashes[i],
          }) as DecisionRecord,
      );
    }
    const append = this.#conn.transaction(() => {
      const records = chainAfter(this.#head(s), inputs);
      for (const r of records) s.insertDecision.run(...decisionRow(r));
      const last = records.at(-1);
      if (last) s.setDecisionHead.run(last.seq, last.hash);
      return records;
    });
    return this.#inBatch(append);
  }

  async decisionHead(): Promise<ChainHead> {
    return this.#head(this.#s);
  }

  async decisionAnchor(): Promise<ChainHead> {
    return this.#s.decisionAnchor.get() as ChainHead;
  }

  async decisionsRange(after: number, limit: number): Promise<DecisionRecord[]> {
    const rows = this.#s.decisionsRange.all(after, after + Math.max(0, limit)) as { data: string }[];
    return rows.map((r) => JSON.parse(r.data) as DecisionRecord);
  }

  async decisionsOfTask(taskId: string, limit: number): Promise<DecisionRecord[]> {
    const rows = this.#s.decisionsOfTask.all(taskId, Math.max(0, limit)) as { data: string }[];
    return rows.map((r) => JSON.parse(r.data) as DecisionRecord);
  }

  async recentDecisions(f: DecisionFilter): Promise<{ records: DecisionRecord[]; next: number | undefined }> {
    const where: string[] = [];
    const args: (string | number)[] = [];
    const eq = (col: string, v: string | number | undefined) => {
      if (v === undefined) return;
      where.push(`${col} = ?`);
      args.push(v);
    };
    eq('agent', f.agent);
    eq('user', f.user);
    eq('task', f.task);
    eq('code', f.code);
    eq('outcome', f.outcome);
    if (f.before !== undefined) {
      where.push('seq < ?');
      args.push(f.before);
    }
    const limit = Math.max(1, Math.min(500, Math.floor(f.limit ?? 50)));
    args.push(limit);
    // Columns are fixed names, values are bound: the statement text only varies by which filters.
    const sql = `SELECT data FROM decisions ${where.length ? `WHERE ${where.join(' AND ')}` : ''}
                 ORDER BY seq DESC LIMIT ?`;
    let stmt = this.#listTasks.get(sql);
    if (!stmt) {
      stmt = this.#conn.prepare(sql);
      this.#listTasks.set(sql, stmt);
    }
    const records = (stmt.all(...args) as { data: string }[]).map(
      (r) => JSON.parse(r.data) as DecisionRecord,
    );
    return { records, next: records.length === limit ? records.at(-1)?.seq : undefined };
  }

  async decisionCounts(fromMs: number, toMs: number): Promise<Record<string, number>> {
    const rows = this.#s.decisionCounts.all(fromMs, toMs) as { count_key: string; n: number }[];
    return Object.fromEntries(rows.map((r) => [r.count_key, r.n]));
  }

  async decisionCountsByMinute(
    fromMs: number,
    toMs: number,
  ): Promise<{ minute: number; counts: Record<string, number> }[]> {
    const rows = this.#s.decisionCountsByMinute.all(fromMs, toMs) as {
      minute: number;
      count_key: string;
      n: number;
    }[];
    const out: { minute: number; counts: Record<string, number> }[] = [];
    for (const r of rows) {
      let last = out.at(-1);
      if (last?.minute !== r.minute) {
        last = { minute: r.minute, counts: {} };
        out.push(last);
      }
      last.counts[r.count_key] = r.n;
    }
    return out;
  }

  async sweepDecisions(beforeMs: number): Promise<number> {
    await this.#settle();
    const s = this.#s;
    const db = this.#conn;
    db.pragma('synchronous = NORMAL');
    try {
      return db
        .transaction(() => {
          // The anchor moves with the deletion, in one step: the chain stays verifiable.
          const old = s.oldDecisions.all(beforeMs, this.#batchRows) as ChainHead[];
          const last = old.at(-1);
          if (!last) return 0;
          s.sweepDecisionsUpTo.run(last.seq);
          s.setDecisionAnchor.run(last.seq, last.hash);
          return old.length;
        })
        .immediate();
    } finally {
      db.pragma('synchronous = FULL');
    }
  }

  async putConsoleSession(r: ConsoleSessionRecord): Promise<void> {
    await this.#settle();
    this.#s.putSession.run(r.id, r.expiresAt, JSON.stringify(r.data));
  }

  async getConsoleSession(id: string, now: number): Promise<ConsoleSessionRecord | undefined> {
    const r = this.#s.getSession.get(id, now) as { id: string; expires_at: number; data: string } | undefined;
    return r && { id: r.id, expiresAt: r.expires_at, data: JSON.parse(r.data) as Record<string, unknown> };
  }

  async takeConsoleSession(id: string, now: number): Promise<ConsoleSessionRecord | undefined> {
    await this.#settle();
    return this.#conn
      .transaction(() => {
        const r = this.#s.getSession.get(id, now) as
          | { id: string; expires_at: number; data: string }
          | undefined;
        this.#s.deleteSession.run(id);
        return (
          r && { id: r.id, expiresAt: r.expires_at, data: JSON.parse(r.data) as Record<string, unknown> }
        );
      })
      .immediate();
  }

  async deleteConsoleSession(id: string): Promise<void> {
    await this.#settle();
    this.#s.deleteSession.run(id);
  }

  onRevocation(listener: (r: Revocation) => void): () => void {
    this.#events.on('revocation', listener);
    return () => {
      this.#events.off('revocation', listener);
    };
  }

  /**
   * Drops, in this order: tasks expired for longer than the retention with their issued calls,
   * revocations past `until`, replay markers past `until`; then returns the freed pages to the file
   * system. Each step is one transaction of at most `sweepBatchRows` deletions (or
   * `vacuumStepPages` pages), and the sweep yields to the event loop between steps (setImmediate),
   * so requests keep being served while a large backlog is swept. A sweep called while one runs
   * joins it.
   */
  sweep(now: number): Promise<void> {
    this.#sweeping ??= this.#sweep(now).finally(() => {
      this.#sweeping = undefined;
    });
    return this.#sweeping;
  }

  async #sweep(now: number): Promise<void> {
    const cutoff = now - this.#retention;
    const n = this.#batchRows;
    // Each step: a fresh transaction on the current connection (close() may run between steps),
    // committed without its own fsync (synchronous = NORMAL, restored before anything else runs):
    // the fsync was most of a step's time. Nothing is lost by it — a sweep lost to a power cut
    // only leaves expired rows to the next sweep, and the next FULL commit (any acknowledged
    // write) fsyncs the WAL up to and including the sweep's frames.
    const relaxed = <T>(fn: () => T): T => {
      this.#commitBatch();
      const db = this.#conn;
      db.pragma('synchronous = NORMAL');
      try {
        return fn();
      } finally {
        db.pragma('synchronous = FULL');
      }
    };
    const step = (work: (s: Statements) => boolean): boolean =>
      relaxed(() => {
        const s = this.#s;
        return this.#conn.transaction(() => work(s)).immediate();
      });
    const yieldToLoop = () => new Promise<void>((r) => setImmediate(r));

    // Expired tasks: their issued calls first, then the task row once nothing of it is left.
    for (let more = true; more; await yieldToLoop()) {
      more = step((s) => {
        let left = n;
        for (const { id } of s.expiredTasks.all(cutoff, n) as { id: string }[]) {
          for (const del of [
            s.sweepIssuedOf,
            s.sweepIssuedCountsOf,
            s.sweepIssuedPriorOf,
            s.sweepApprovalsOf,
            s.sweepApprovalCallsOf,
          ]) {
            left -= del.run(id, left).changes;
            if (left <= 0) return true;
          }
          s.sweepTask.run(id);
          if (--left <= 0) return true;
        }
        return left < n;
      });
    }
    for (let more = true; more; await yieldToLoop()) {
      more = step((s) => s.sweepSessions.run(now, n).changes === n);
    }
    const decisionsBefore = (now - this.#decisionRetention) * 1000;
    while ((await this.sweepDecisions(decisionsBefore)) > 0) await yieldToLoop();
    for (const del of ['sweepRevocations', 'sweepUsed'] as const) {
      for (let more = true; more; await yieldToLoop()) {
        const horizon = del === 'sweepRevocations' ? now - REVOCATION_GRACE_SEC : now;
        more = step((s) => s[del].run(horizon, n).changes === n);
      }
    }
    // Free pages back to the file system (autocommit: incremental_vacuum is its own transaction).
    for (;;) {
      this.#commitBatch();
      if ((this.#s.freePages.get() as { freelist_count: number }).freelist_count === 0) break;
      relaxed(() => this.#conn.pragma(`incremental_vacuum(${this.#vacuumPages})`));
      await yieldToLoop();
    }
  }
}

// SQLite result codes that mean "the database cannot serve this now" (another writer held the lock
// past busy_timeout, the disk is full or failing), not "this request or our code is wrong".
const SQLITE_UNAVAILABLE = /^SQLITE_(BUSY|LOCKED|FULL|IOERR|CANTOPEN|READONLY|PROTOCOL)/;

/** What a failed SQLite call becomes: TASKPASS_STORE_UNAVAILABLE (503) for those; others unchanged. */
function sqliteFailure(e: unknown): unknown {
  if (e instanceof Database.SqliteError && SQLITE_UNAVAILABLE.test(e.code)) {
    return new BrokerError(
      'TASKPASS_STORE_UNAVAILABLE',
      'the database is busy or cannot be written; nothing was acknowledged',
      undefined,
      { cause: e },
    );
  }
  return e;
}
mapStoreFailures(SqliteStore.prototype, sqliteFailure);
