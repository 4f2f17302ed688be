// Decision records in the store (docs/console.md, docs/decisions.md "Decision records, chained by
// hash"): every audit event goes to the JSON audit log as before AND into the store's hash chain.
// This is the one hook: the service, the approval service and the routes all record through the
// AuditLog they are given, and buildApp gives them this one.
//
// Group commit: records are queued and appended in batches (one store round trip, one fsync per
// batch), so issuing a token never waits for its record. What must not be lost waits: `flush()`
// resolves once every record queued so far is durable, and the service awaits it before answering
// a revocation or an approval decision. A failed append keeps the batch at the head of the queue
// and retries it; the JSON audit log has every record either way.
import { EventEmitter } from 'node:events';
import type { Logger } from 'pino';
import { AUDIT_FIELDS, type AuditEvent, type AuditLog } from './audit.ts';
import type { DecisionInput, DecisionRecord, DecisionStore } from './store/types.ts';

export interface DecisionRecorderOptions {
  store: DecisionStore;
  /** The JSON audit log, written first and unchanged. */
  log: AuditLog;
  logger?: Logger | undefined;
  /** Epoch milliseconds. */
  now?: () => number;
  /** How long a record waits for others to share its batch, ms (default 20). */
  groupMs?: number;
  /** Most records per append (default 256). */
  maxBatch?: number;
  /**
   * Most records held while the store refuses them (default 100 000); past it the oldest are
   * dropped from the store's records (never from the JSON log) and an error is logged.
   */
  maxQueue?: number;
}

/** An AuditLog that also appends every event to the store's decision chain. */
export class DecisionRecorder implements AuditLog {
  readonly #store: DecisionStore;
  readonly #log: AuditLog;
  readonly #logger: Logger | undefined;
  readonly #now: () => number;
  readonly #groupMs: number;
  readonly #maxBatch: number;
  readonly #maxQueue: number;
  readonly #events = new EventEmitter();
  #queue: DecisionInput[] = [];
  // Records ever queued / ever stored (or dropped): flush() waits until stored reaches queued.
  #queued = 0;
  #done = 0;
  #running: Promise<void> | undefined;
  #timer: NodeJS.Timeout | undefined;
  #failures = 0;

  constructor(opts: DecisionRecorderOptions) {
    this.#store = opts.store;
    this.#log = opts.log;
    this.#logger = opts.logger;
    this.#now = opts.now ?? Date.now;
    this.#groupMs = Math.max(0, opts.groupMs ?? 20);
    this.#maxBatch = Math.max(1, opts.maxBatch ?? 256);
    this.#maxQueue = Math.max(1, opts.maxQueue ?? 100_000);
    this.#events.setMaxListeners(0);
  }

  record(e: AuditEvent): void {
    this.#log.record(e);
    // The same whitelist as the JSON log: nothing but the audit fields reaches the store.
    const rec: Record<string, string | number> = { at: this.#now(), event: e.event };
    for (const f of AUDIT_FIELDS) {
      const v = e[f];
      if (v !== undefined) rec[f] = v;
    }
    this.#queue.push(rec as DecisionInput);
    this.#queued++;
    if (this.#queue.length > this.#maxQueue) {
      const dropped = this.#queue.splice(0, this.#queue.length - this.#maxQueue);
      this.#done += dropped.length;
      this.#logger?.error(
        { dropped: dropped.length },
        'decision records dropped: the store has refused them for too long (the JSON audit log has them)',
      );
    }
    this.#schedule(this.#groupMs);
  }

  /** Records waiting for the store (metrics: a growing number means the store refuses them). */
  get queued(): number {
    return this.#queued - this.#done;
  }

  /** Resolves once every record queued before the call is in the store; rejects if it cannot be. */
  async flush(): Promise<void> {
    const target = this.#queued;
    while (this.#done < target) await this.#commit();
  }

  /** Stored records, as they are appended by this process (seq order). Returns an unsubscribe. */
  onRecord(listener: (r: DecisionRecord) => void): () => void {
    this.#events.on('record', listener);
    return () => {
      this.#events.off('record', listener);
    };
  }

  reopen(): void {
    this.#log.reopen?.();
  }

  close(): void {
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    this.#log.close?.();
  }

  /** Appends what is queued, then stops the timer (shutdown, before the store closes). */
  async drain(): Promise<void> {
    try {
      await this.flush();
    } catch (err) {
      this.#logger?.error({ err, left: this.#queue.length }, 'decision records not stored at shutdown');
    }
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
  }

  #schedule(ms: number): void {
    if (this.#timer || this.#queue.length === 0) return;
    this.#timer = setTimeout(() => {
      this.#timer = undefined;
      this.#commit().then(
        () => {
          this.#failures = 0;
          this.#schedule(0);
        },
        (err: unknown) => {
          // Backs off up to 5 s while the store refuses; the queue keeps the records in order.
          this.#failures++;
          if (this.#failures === 1 || this.#failures % 50 === 0) {
            this.#logger?.warn(
              { err, queued: this.#queue.length },
              'decision records not stored yet (retrying)',
            );
          }
          this.#schedule(Math.min(5000, 50 * 2 ** Math.min(this.#failures, 7)));
        },
      );
    }, ms);
    this.#timer.unref?.();
  }

  // One append at a time in this process: batches keep their order and do not race each other
  // for the chain's head (other replicas may; the store's compare-and-set sorts that out).
  #commit(): Promise<void> {
    if (!this.#running) {
      const run = this.#append();
      this.#running = run;
      // Cleared after it settles (never synchronously: an empty queue settles at once).
      run.then(
        () => this.#clear(run),
        () => this.#clear(run),
      );
    }
    return this.#running;
  }

  #clear(run: Promise<void>): void {
    if (this.#running === run) this.#running = undefined;
  }

  async #append(): Promise<void> {
    const batch = this.#queue.splice(0, this.#maxBatch);
    if (batch.length === 0) return;
    let stored: DecisionRecord[];
    try {
      stored = await this.#store.appendDecisions(batch);
    } catch (e) {
      this.#queue.unshift(...batch);
      throw e;
    }
    this.#done += batch.length;
    for (const r of stored) {
      try {
        this.#events.emit('record', r);
      } catch (err) {
        this.#logger?.error({ err }, 'decision record listener threw');
      }
    }
  }
}
