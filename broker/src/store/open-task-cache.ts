// Open tasks held in memory (issue #13): the issuance path reads a task and its workflow counters on
// every token; for an open task both are answered from here, so a token needs no store read. The
// store stays the source of truth: an entry is filled from it, changed only after the store accepted
// the change, and dropped when the task closes (here, or wherever the store reports it: its
// revocation events) or expires. The broker uses it on SQLite only (docs/performance.md).
import type { IssuedCall, Store, TaskRecord } from './types.ts';

export interface OpenTaskCacheOptions {
  /** Most open tasks held (least recently used dropped first). 0: no cache. */
  maxTasks: number;
  /**
   * Also hold the workflow counters (`countIssued`, `issuedTemplates`). Only when this process is
   * the store's one writer (SQLite): where other processes record calls, counters must be read
   * from the store, whose compare-and-set keeps them atomic.
   */
  counters: boolean;
  /** Epoch seconds (for dropping expired entries). */
  nowSec?: () => number;
}

interface Entry {
  task: TaskRecord;
  /** Per tool: calls per issuing template (absent: not known here, ask the store). */
  counts: Map<string, Map<string, number>>;
  /** Per `[tool, resource]` (resource null: any): templates that issued such a call. */
  prior: Map<string, Set<string>>;
  /** Every counter is here (a task created by this process): absent means none. */
  complete: boolean;
  /** Records of this task being written now: counters are read from the store meanwhile. */
  writing: number;
  /** Bumped by every write: a store read that overlapped one is not kept. */
  version: number;
}

const priorKey = (tool: string, resource: string | undefined) => JSON.stringify([tool, resource ?? null]);

/** The counter under `key`, made empty when every counter is held; undefined when not known. */
function held<T>(e: Entry, m: Map<string, T>, key: string, empty: () => T): T | undefined {
  let v = m.get(key);
  if (v === undefined && e.complete) {
    v = empty();
    m.set(key, v);
  }
  return v;
}

/** The store with open tasks (and, when allowed, their counters) answered from memory. */
export class OpenTaskCache {
  readonly #store: Store;
  readonly #entries = new Map<string, Entry>();
  readonly #o: Required<OpenTaskCacheOptions>;
  readonly #unsubscribe: () => void;
  /** Bumped by every close seen: a task read that overlapped one is not kept (it may be stale). */
  #closings = 0;

  constructor(store: Store, o: OpenTaskCacheOptions) {
    this.#store = store;
    this.#o = { nowSec: () => Math.floor(Date.now() / 1000), ...o };
    // Closed anywhere (this process, another replica, an admin): the feed says so.
    this.#unsubscribe = store.onRevocation((r) => {
      if (r.kind === 'task') this.#closed(r.id);
    });
  }

  /** Open tasks held now. */
  get size(): number {
    return this.#entries.size;
  }

  close(): void {
    this.#unsubscribe();
    this.#entries.clear();
  }

  /** An open, unexpired entry (refreshed as most recently used), or undefined. */
  #entry(id: string): Entry | undefined {
    const e = this.#entries.get(id);
    if (!e) return undefined;
    this.#entries.delete(id);
    if (e.task.status !== 'open' || e.task.expiresAt <= this.#o.nowSec()) return undefined;
    this.#entries.set(id, e);
    return e;
  }

  #closed(id: string): void {
    this.#closings++;
    this.#entries.delete(id);
  }

  #hold(task: TaskRecord, fresh: boolean): void {
    if (task.status !== 'open' || task.expiresAt <= this.#o.nowSec()) return;
    // A task just created has no calls: every counter is known (empty).
    const e: Entry = { task, counts: new Map(), prior: new Map(), complete: fresh, writing: 0, version: 0 };
    this.#entries.delete(task.id);
    this.#entries.set(task.id, e);
    while (this.#entries.size > this.#o.maxTasks) {
      const oldest = this.#entries.keys().next().value as string;
      this.#entries.delete(oldest);
    }
  }

  async createTask(task: TaskRecord): Promise<void> {
    await this.#store.createTask(task);
    this.#hold(task, true);
  }

  async getTask(id: string): Promise<TaskRecord | undefined> {
    const held = this.#entry(id);
    if (held) return held.task;
    const closings = this.#closings;
    const task = await this.#store.getTask(id);
    if (task && closings === this.#closings && !this.#entries.has(id)) this.#hold(task, false);
    return task;
  }

  async completeTask(...args: Parameters<Store['completeTask']>): ReturnType<Store['completeTask']> {
    this.#closed(args[0]);
    try {
      return await this.#store.completeTask(...args);
    } finally {
      this.#closed(args[0]);
    }
  }

  /** From memory when known and nothing of the task is being written; else read and kept. */
  async #counter<T>(
    taskId: string,
    pick: (e: Entry) => Map<string, T>,
    key: string,
    empty: () => T,
    read: () => Promise<T>,
    copy: (v: T) => T,
  ): Promise<T> {
    const e = this.#o.counters ? this.#entry(taskId) : undefined;
    if (!e || e.writing > 0) return read();
    const known = pick(e).get(key);
    if (known !== undefined) return copy(known);
    if (e.complete) return empty();
    const version = e.version;
    const v = await read();
    if (e.version === version && e.writing === 0) pick(e).set(key, copy(v));
    return v;
  }

  countIssued(taskId: string, tool: string): Promise<Map<string, number>> {
    return this.#counter(
      taskId,
      (e) => e.counts,
      tool,
      () => new Map(),
      () => this.#store.countIssued(taskId, tool),
      (m) => new Map(m),
    );
  }

  issuedTemplates(taskId: string, tool: string, resource?: string): Promise<Set<string>> {
    return this.#counter(
      taskId,
      (e) => e.prior,
      priorKey(tool, resource),
      () => new Set(),
      () => this.#store.issuedTemplates(taskId, tool, resource),
      (s) => new Set(s),
    );
  }

  async recordIssued(...args: Parameters<Store['recordIssued']>): Promise<boolean> {
    const [call] = args;
    const e = this.#entries.get(call.taskId);
    if (!e) return this.#store.recordIssued(...args);
    e.writing++;
    let recorded = false;
    try {
      recorded = await this.#store.recordIssued(...args);
    } finally {
      e.writing--;
      e.version++;
      // Lost a compare-and-set or failed: what this process knew is not the store's any more.
      if (recorded) this.#count(e, call);
      else this.#forgetCounters(e);
    }
    return recorded;
  }

  /** A recorded call, counted where it is known (or, when every counter is, everywhere). */
  #count(e: Entry, call: IssuedCall): void {
    held(e, e.counts, call.tool, () => new Map<string, number>())?.set(
      call.template,
      (e.counts.get(call.tool)?.get(call.template) ?? 0) + 1,
    );
    for (const key of [priorKey(call.tool, undefined), priorKey(call.tool, call.resource)]) {
      held(e, e.prior, key, () => new Set<string>())?.add(call.template);
    }
  }

  #forgetCounters(e: Entry): void {
    e.complete = false;
    e.counts.clear();
    e.prior.clear();
  }
}

/**
 * `store` with {@link OpenTaskCache} in front of the calls the issuance path makes; every other
 * method is the store's own. Returns `store` itself when `maxTasks` is 0.
 */
export function withOpenTaskCache(
  store: Store,
  o: OpenTaskCacheOptions,
): Store & { openTasks?: OpenTaskCache } {
  if (o.maxTasks === 0) return store;
  const cache = new OpenTaskCache(store, o);
  const own: Record<string | symbol, unknown> = {
    openTasks: cache,
    createTask: cache.createTask.bind(cache),
    getTask: cache.getTask.bind(cache),
    completeTask: cache.completeTask.bind(cache),
    countIssued: cache.countIssued.bind(cache),
    issuedTemplates: cache.issuedTemplates.bind(cache),
    recordIssued: cache.recordIssued.bind(cache),
    close: async () => {
      cache.close();
      await store.close();
    },
  };
  const bound = new Map<string | symbol, unknown>();
  return new Proxy(store, {
    get(target, prop) {
      if (prop in own) return own[prop];
      let v = bound.get(prop);
      if (v !== undefined) return v;
      v = Reflect.get(target, prop, target);
      if (typeof v !== 'function') return v;
      // The store's methods use its private fields: call them on the store, not on the proxy.
      v = (v as (...a: unknown[]) => unknown).bind(target);
      bound.set(prop, v);
      return v;
    },
  }) as Store & { openTasks?: OpenTaskCache };
}
