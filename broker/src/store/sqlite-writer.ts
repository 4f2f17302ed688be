// The SQLite store's writer thread (issue #13). Two kinds of work left the event loop here:
//
// - Group commits of the hot path's records: issued calls (one per token) and decision records.
//   The store sends one message per event-loop turn; the worker writes every message that arrived
//   while it was busy in one transaction and answers once its COMMIT (synchronous = FULL: the WAL
//   fsynced) returned. A token is still handed out only after its record is durable; the event
//   loop no longer executes the statements, waits for the fsync or hashes nothing for them.
// - WAL checkpoints: SQLite's automatic checkpoint copies the WAL into the database file inside
//   the COMMIT that crosses 1000 pages, on the thread that committed. Here the connections that
//   commit have it off and a second worker of the same script, with its own connection and no
//   statements, runs a PASSIVE checkpoint every `checkpointIntervalMs`: it never waits for a lock
//   and never blocks a writer. (Run between the writer's own commits, a checkpoint held every
//   token of its 10–40 ms for as long as it copied: p99 at half load 65 ms in one run.)
//   A PASSIVE checkpoint copies frames but never starts the WAL over: only a writer does, when
//   its transaction begins with every frame already copied, and with a commit every millisecond
//   that almost never happens — under steady load the WAL grew by the megabyte a second (512 MB
//   in 22 s at 1,200 tokens/s) and every commit extended the file. So once a PASSIVE run finds
//   `restartFrames` frames, the checkpoint thread raises a flag shared with the committing
//   connection (a SharedArrayBuffer), which after its next COMMIT runs a RESTART checkpoint itself
//   — the writer thread, or the store's own connection with `writer: inline`: it copies the
//   frames committed since and, unless a read is on the WAL (then it is asked again after the next
//   commit: it never waits), its next commit writes from the start of the file, which then stays
//   at about that size. The committer does it, not the checkpoint thread: a RESTART holds the
//   write lock, and a writer waiting for a lock sleeps in SQLite's busy handler in steps of 1, 2,
//   5, 10… ms (tried that way, the checkpoint thread's restarts mostly gave up on a busy writer).
//
// The worker's code is a short CommonJS script run with `eval`, so that it loads the same way from
// the TypeScript sources (tests) and from the published package with no loader in the worker. It
// is given better-sqlite3's resolved path and the SQL of its statements (the store's own text).
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';
import { ALLOWED_EVENTS, DENIED_EVENTS } from '../decision-chain.ts';
import type { DecisionInput, IssuedCall } from './types.ts';

/** One record of a batch. */
export type WriterOp =
  | { kind: 'issued'; call: IssuedCall }
  /** Decision records, chained by the worker after the head it finds in its transaction. */
  | { kind: 'decisions'; inputs: readonly DecisionInput[] };

/** Where the worker chained one `decisions` op: the first seq, its prev_hash, every record's hash. */
export interface Chained {
  seq: number;
  prev: string;
  hashes: string[];
}

/** What the worker answers for one batch. */
export type BatchOutcome =
  | {
      ok: true;
      /** Per op: null, or the message of the op that failed alone (nothing of it written). */
      errors: (string | null)[];
      /** Per op: for `decisions`, where they were chained; null otherwise. */
      chained: (Chained | null)[];
    }
  | { ok: false; error: string };

export interface WriterOptions {
  path: string;
  /** Group commits on the worker (`false`: the worker only checkpoints). */
  writes: boolean;
  /** The statements' SQL, by name: insertIssued, bumpIssuedCount, insertIssuedPrior, decisionHead, insertDecision, setDecisionHead, setMark. */
  sql: Record<string, string>;
  /** How often the worker runs a PASSIVE checkpoint, ms (0: never). */
  checkpointIntervalMs: number;
  /** WAL frames past which a checkpoint also restarts the WAL (0: never). */
  restartFrames: number;
  /** One Int32 shared by the store's connections: the checkpoint thread asks for a WAL restart. */
  restartFlag: SharedArrayBuffer;
  /** SQLite's automatic checkpoint on this worker's own commits. */
  autocheckpoint: boolean;
  busyTimeoutMs: number;
  logger?: Logger | undefined;
  /** Called once when the worker stopped unexpectedly. */
  onFailure(err: Error): void;
}

const WORKER = `
const crypto = require('node:crypto');
const { parentPort, workerData: w } = require('node:worker_threads');
const Database = require(w.betterSqlite3);
const db = new Database(w.path, { fileMustExist: true });
db.pragma('synchronous = FULL');
db.pragma('wal_autocheckpoint = ' + (w.autocheckpoint ? 1000 : 0));
db.pragma('busy_timeout = ' + w.busyTimeoutMs);
const st = {};
for (const [name, sql] of Object.entries(w.sql)) st[name] = db.prepare(sql);
const begin = db.prepare('BEGIN IMMEDIATE');
const commit = db.prepare('COMMIT');
const checkpoint = db.prepare('PRAGMA wal_checkpoint(PASSIVE)');
const restart = db.prepare('PRAGMA wal_checkpoint(RESTART)');
const message = (e) => String(e && e.message ? e.message : e);
// Nested in the batch's transaction this is a savepoint: an issued call is all or nothing.
const issued = db.transaction((c) => {
  st.insertIssued.run(c.jti, c.taskId, c.tool, c.resource, c.action, c.template, c.issuedAt, c.expiresAt);
  st.bumpIssuedCount.run(c.taskId, c.tool, c.template);
  st.insertIssuedPrior.run(c.taskId, c.tool, c.resource, c.template);
});
const stats = { runs: 0, frames: 0, restarts: 0, errors: 0, lastError: undefined, commits: 0, batches: 0 };
const restartWanted = new Int32Array(w.restartFlag);
let queue = [];
let scheduled = false;
let copied = 0;

// The decision chain (decision-chain.ts chainAfter and recordHash; the cross-check is
// store-sqlite-writer.test.ts): SHA-256 over the canonical JSON of the record without its hash.
// canonical() is @taskpass/contract's canonicalJson, which this script cannot import; flat() is
// the same for a record of strings and numbers (all of them), in one JSON.stringify of the
// fields in sorted order: an object keeps string keys in insertion order, except keys that look
// like array indices, which go first (those, and __proto__, take canonical()).
function canonical(v) {
  if (v === null || typeof v !== 'object') {
    const s = JSON.stringify(v);
    if (s === undefined) throw new TypeError('a decision record field has no JSON form');
    return s;
  }
  if (Array.isArray(v)) return '[' + v.map(canonical).join(',') + ']';
  const keys = Object.keys(v).sort();
  let out = '';
  for (const k of keys) {
    if (v[k] === undefined) continue;
    out += (out ? ',' : '') + JSON.stringify(k) + ':' + canonical(v[k]);
  }
  return '{' + out + '}';
}
const INDEX = /^(?:0|[1-9][0-9]*)$/;
function flat(r) {
  const keys = Object.keys(r).sort();
  const o = {};
  for (const k of keys) {
    const v = r[k];
    if (v === undefined) continue;
    if ((v !== null && typeof v === 'object') || INDEX.test(k) || k === '__proto__') return canonical(r);
    o[k] = v;
  }
  return JSON.stringify(o);
}
// One call per record, without a Hash object (crypto.hash: Node 20.12 and later; engines says 20.19).
const sha256 = (s) => crypto.hash('sha256', s, 'hex');
const allowed = new Set(w.allowedEvents);
const denied = new Set(w.deniedEvents);
const str = (v) => (typeof v === 'string' ? v : null);
// insertDecision's parameters for the records of one op, chained after head (nothing written).
function chain(head, inputs) {
  let seq = head.seq;
  let prev = head.hash;
  const rows = [];
  const hashes = [];
  for (const input of inputs) {
    const r = { ...input, seq: ++seq, prev_hash: prev };
    const body = flat(r);
    prev = sha256(body);
    const outcome = allowed.has(r.event) ? 'allowed' : denied.has(r.event) ? 'denied' : null;
    const countKey = typeof r.code === 'string' ? r.code : outcome === 'allowed' ? 'issued' : null;
    // The stored JSON is the hashed one with the hash added last (no second serialization).
    const data = body.slice(0, -1) + ',"hash":"' + prev + '"}';
    rows.push([r.seq, r.at, r.event, str(r.task), str(r.agent), str(r.user), str(r.code), outcome, countKey, prev, data]);
    hashes.push(prev);
  }
  return { rows, chained: { seq: head.seq + 1, prev: head.hash, hashes }, head: { seq, hash: prev } };
}

function write() {
  scheduled = false;
  const batches = queue;
  queue = [];
  parentPort.postMessage({ answers: commitBatches(batches) });
  // After the answers are out: the tokens of this batch do not wait for it, the next batch does.
  if (Atomics.exchange(restartWanted, 0, 0) === 1) restartWal();
}

// One transaction for every batch queued: the answers (a batch that failed fails them all).
function commitBatches(batches) {
  const done = [];
  try {
    begin.run();
    // The chain's head as this transaction finds it: a batch that failed left it as it was.
    let head;
    for (const b of batches) {
      const errors = [];
      const chained = [];
      for (const op of b.ops) {
        if (op.kind === 'issued') {
          chained.push(null);
          try {
            issued(op.call);
            errors.push(null);
          } catch (e) {
            errors.push(message(e));
          }
          continue;
        }
        head ??= st.decisionHead.get();
        let c;
        try {
          c = chain(head, op.inputs);
        } catch (e) {
          errors.push(message(e));
          chained.push(null);
          continue;
        }
        for (const row of c.rows) st.insertDecision.run(...row);
        head = c.head;
        errors.push(null);
        chained.push(c.chained);
      }
      done.push({ id: b.id, ok: true, errors, chained });
    }
    if (head) st.setDecisionHead.run(head.seq, head.hash);
    st.setMark.run(batches[batches.length - 1].id);
    commit.run();
    stats.commits++;
    stats.batches += batches.length;
    return done;
  } catch (e) {
    try {
      if (db.inTransaction) db.exec('ROLLBACK');
    } catch {}
    return batches.map((b) => ({ id: b.id, ok: false, error: message(e) }));
  }
}

// Copies what is left of the WAL and starts it over, without waiting: the tokens of the next
// batch wait for it. Busy (the checkpoint thread copying, a read on the WAL): asked again after
// the next commit; failed: at the checkpoint thread's next run. (Waiting up to 20 ms for a busy
// checkpoint thread held every token that long.)
function restartWal() {
  db.pragma('busy_timeout = 0');
  try {
    const r = restart.get();
    if (r.busy === 0) {
      stats.restarts++;
      stats.frames += Math.max(0, r.checkpointed - copied);
      copied = 0;
    } else Atomics.store(restartWanted, 0, 1);
  } catch (e) {
    // Asked again by the checkpoint thread's next run, not after every commit.
    stats.errors++;
    stats.lastError = message(e);
  } finally {
    db.pragma('busy_timeout = ' + w.busyTimeoutMs);
  }
}

function runCheckpoint() {
  try {
    const r = checkpoint.get();
    stats.runs++;
    // r.checkpointed counts from the start of the WAL: what is new since the last run was copied now.
    if (r.checkpointed > 0) stats.frames += r.checkpointed >= copied ? r.checkpointed - copied : r.checkpointed;
    copied = Math.max(0, r.checkpointed);
    if (w.restartFrames > 0 && r.log >= w.restartFrames) {
      // The connection that commits starts it over (an idle WAL is started over by its next
      // commit anyway: that transaction begins with every frame copied).
      Atomics.store(restartWanted, 0, 1);
    }
  } catch (e) {
    // Retried at the next tick; reported through stats.
    stats.errors++;
    stats.lastError = message(e);
  }
}
const timer = w.checkpointIntervalMs > 0 ? setInterval(runCheckpoint, w.checkpointIntervalMs) : undefined;

parentPort.on('message', (m) => {
  if (m.ops) {
    queue.push(m);
    if (!scheduled) {
      scheduled = true;
      setImmediate(write);
    }
  } else if (m === 'stats') parentPort.postMessage({ stats });
  else if (m === 'autocheckpoint') db.pragma('wal_autocheckpoint = 1000');
  else if (m === 'close') {
    if (scheduled) write();
    clearInterval(timer);
    db.close();
    parentPort.close();
  }
});
parentPort.postMessage('ready');
`;

/** Statistics of the worker so far. */
export interface WriterStats {
  /** Checkpoints run, WAL frames they copied into the database file, WAL restarts, and failed ones. */
  runs: number;
  frames: number;
  restarts: number;
  errors: number;
  lastError?: string | undefined;
  /** Transactions committed, and the batches (event-loop turns of the store) they held. */
  commits: number;
  batches: number;
}

interface Pending {
  resolve(o: BatchOutcome): void;
}

/** The worker thread of one SQLite file. */
export class SqliteWriter {
  readonly #worker: Worker;
  readonly #pending = new Map<number, Pending>();
  readonly #statsWaiters: ((s: WriterStats) => void)[] = [];
  #nextId: number;
  #closing = false;

  private constructor(worker: Worker, firstId: number) {
    this.#worker = worker;
    this.#nextId = firstId;
  }

  /**
   * Starts the worker; resolves once its connection is open. `firstId`: above every batch id
   * already marked in the file.
   */
  static async start(o: WriterOptions, firstId: number): Promise<SqliteWriter> {
    const betterSqlite3 = createRequire(import.meta.url).resolve('better-sqlite3');
    const worker = new Worker(WORKER, {
      eval: true,
      workerData: {
        path: o.path,
        sql: o.writes ? o.sql : {},
        checkpointIntervalMs: o.checkpointIntervalMs,
        restartFrames: o.restartFrames,
        restartFlag: o.restartFlag,
        autocheckpoint: o.autocheckpoint,
        busyTimeoutMs: o.busyTimeoutMs,
        betterSqlite3,
        allowedEvents: [...ALLOWED_EVENTS],
        deniedEvents: [...DENIED_EVENTS],
      },
    });
    const early = (code: number) => new Error(`store writer thread exited with code ${code}`);
    let onError: (e: Error) => void = () => {};
    let onExit: (code: number) => void = () => {};
    try {
      await new Promise<void>((resolve, reject) => {
        onError = reject;
        onExit = (code) => reject(early(code));
        worker.once('message', () => resolve());
        worker.once('error', onError);
        worker.once('exit', onExit);
      });
    } finally {
      worker.off('error', onError);
      worker.off('exit', onExit);
    }
    const writer = new SqliteWriter(worker, firstId);
    worker.unref();
    worker.on('message', (m: { answers?: ({ id: number } & BatchOutcome)[]; stats?: WriterStats }) =>
      writer.#answer(m),
    );
    const failed = (err: Error) => {
      if (writer.#closing) return;
      writer.#closing = true;
      o.logger?.error(
        { err, store: 'sqlite' },
        'store writer thread stopped; writing and checkpointing inline',
      );
      writer.#failAll(err.message);
      o.onFailure(err);
    };
    worker.on('error', failed);
    worker.on('exit', (code) => failed(early(code)));
    return writer;
  }

  /** Batches sent and not answered yet. */
  get inFlight(): number {
    return this.#pending.size;
  }

  /** Sends batch `id` (from {@link nextId}); resolves with its outcome (never rejects). */
  send(id: number, ops: WriterOp[]): Promise<BatchOutcome> {
    if (this.#closing) return Promise.resolve({ ok: false, error: 'the store writer thread is stopped' });
    if (this.#pending.size === 0) this.#worker.ref();
    return new Promise((resolve) => {
      this.#pending.set(id, { resolve });
      this.#worker.postMessage({ id, ops });
    });
  }

  /** The id of the next batch. */
  nextId(): number {
    return this.#nextId++;
  }

  #answer(m: { answers?: ({ id: number } & BatchOutcome)[]; stats?: WriterStats }): void {
    if (m.stats) {
      for (const w of this.#statsWaiters.splice(0)) w(m.stats);
      this.#unrefWhenIdle();
      return;
    }
    for (const a of m.answers ?? []) {
      const p = this.#pending.get(a.id);
      this.#pending.delete(a.id);
      p?.resolve(a);
    }
    this.#unrefWhenIdle();
  }

  #unrefWhenIdle(): void {
    if (this.#pending.size === 0 && this.#statsWaiters.length === 0) this.#worker.unref();
  }

  #failAll(error: string): void {
    for (const [, p] of this.#pending) p.resolve({ ok: false, error });
    this.#pending.clear();
  }

  /** The worker's statistics so far. */
  stats(): Promise<WriterStats> {
    this.#worker.ref();
    return new Promise((resolve) => {
      this.#statsWaiters.push(resolve);
      this.#worker.postMessage('stats');
    });
  }

  /** Turns SQLite's automatic checkpoint on for the worker's commits (the checkpointer stopped). */
  checkpointInline(): void {
    if (!this.#closing) this.#worker.postMessage('autocheckpoint');
  }

  /** Test seam: ends the worker as a crash would (the failure path runs). */
  terminateForTest(): void {
    void this.#worker.terminate();
  }

  /** Stops the worker once every batch sent was answered (closing the store's connection last checkpoints). */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    const exited = new Promise((r) => this.#worker.once('exit', r));
    this.#worker.ref();
    this.#worker.postMessage('close');
    await exited;
  }
}
