// WAL checkpoints off the event loop (issue #13). SQLite's automatic checkpoint runs inside the
// COMMIT that crosses `wal_autocheckpoint` pages: it copies the WAL into the database file and
// fsyncs it, on the thread that committed. On the broker that is the event loop, which then holds
// every request for the length of the copy: the issuance bench measured p99 87 ms at half load
// with it and 11 ms without it. Here the store's connection has the automatic checkpoint off and a
// worker thread with its own connection to the same file runs PASSIVE checkpoints instead: they
// never wait for a lock and never block the writer, readers or each other, and they change no
// data (durability is the COMMIT's fsync of the WAL, as before; docs/decisions.md).
//
// The worker's code is a short CommonJS script run with `eval`, so that it loads the same way from
// the TypeScript sources (tests) and from the published package, with no loader in the worker; it
// is given better-sqlite3's resolved path.
import { createRequire } from 'node:module';
import { Worker } from 'node:worker_threads';
import type { Logger } from 'pino';

export interface CheckpointerOptions {
  /** The database file (never `:memory:`: a second connection could not see it). */
  path: string;
  /** How often the worker checkpoints, ms. */
  intervalMs: number;
  logger?: Logger | undefined;
  /** Called once when the worker stopped unexpectedly (the store checkpoints inline again). */
  onFailure(err: Error): void;
}

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const Database = require(workerData.betterSqlite3);
const db = new Database(workerData.path, { fileMustExist: true });
db.pragma('busy_timeout = 0');
const checkpoint = db.prepare('PRAGMA wal_checkpoint(PASSIVE)');
let frames = 0;
let runs = 0;
let errors = 0;
let lastError;
function run() {
  try {
    const r = checkpoint.get();
    runs++;
    frames += r.checkpointed > 0 ? r.checkpointed : 0;
  } catch (e) {
    // Retried at the next tick; reported through stats (the store logs it).
    errors++;
    lastError = String(e && e.message ? e.message : e);
  }
}
const timer = setInterval(run, workerData.intervalMs);
parentPort.on('message', (m) => {
  if (m === 'stats') parentPort.postMessage({ runs, frames, errors, lastError });
  if (m === 'close') {
    clearInterval(timer);
    db.close();
    parentPort.close();
  }
});
parentPort.postMessage('ready');
`;

/** Statistics of the worker's checkpoints so far. */
export interface CheckpointStats {
  /** Checkpoints run. */
  runs: number;
  /** WAL frames copied into the database file. */
  frames: number;
  /** Checkpoints that failed (each retried at the next tick), and the last one's message. */
  errors: number;
  lastError?: string | undefined;
}

/** The background checkpointer of one SQLite file. */
export class Checkpointer {
  readonly #worker: Worker;
  #closing = false;

  private constructor(worker: Worker) {
    this.#worker = worker;
  }

  /** Starts the worker; resolves once its connection is open. */
  static async start(o: CheckpointerOptions): Promise<Checkpointer> {
    const betterSqlite3 = createRequire(import.meta.url).resolve('better-sqlite3');
    const worker = new Worker(WORKER, {
      eval: true,
      workerData: { path: o.path, intervalMs: o.intervalMs, betterSqlite3 },
      // Its own small heap: it holds one connection and a prepared statement.
      resourceLimits: { maxOldGenerationSizeMb: 64 },
    });
    const early = (code: number) => new Error(`checkpoint worker exited with code ${code}`);
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
    worker.unref();
    const c = new Checkpointer(worker);
    const failed = (err: Error) => {
      if (c.#closing) return;
      c.#closing = true;
      o.logger?.error({ err, store: 'sqlite' }, 'background checkpoint worker stopped; checkpointing inline');
      o.onFailure(err);
    };
    worker.on('error', failed);
    worker.on('exit', (code) => failed(new Error(`checkpoint worker exited with code ${code}`)));
    return c;
  }

  /** The worker's checkpoints so far. */
  stats(): Promise<CheckpointStats> {
    // Held while an answer is awaited (the worker is unref'd: it never keeps a process alive).
    this.#worker.ref();
    return new Promise((resolve) => {
      this.#worker.once('message', (m: CheckpointStats) => {
        this.#worker.unref();
        resolve(m);
      });
      this.#worker.postMessage('stats');
    });
  }

  /** Test seam: ends the worker as a crash would (the failure path runs). */
  terminateForTest(): void {
    void this.#worker.terminate();
  }

  /** Stops the worker (its last checkpoint is the store connection's own, at close). */
  async close(): Promise<void> {
    if (this.#closing) return;
    this.#closing = true;
    const exited = new Promise((r) => this.#worker.once('exit', r));
    this.#worker.ref();
    this.#worker.postMessage('close');
    await exited;
  }
}
