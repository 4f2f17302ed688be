// Single-use enforcement: a jti is remembered until the token it belongs to can no longer be
// accepted (exp + clock tolerance), then forgotten.

/**
 * Where spent jtis are remembered. `markUsed` must be atomic: it returns true the first time a jti
 * is seen and false afterwards. Implement it over Redis (`SET key 1 NX EXAT until`) to share
 * single use between replicas of one MCP server.
 */
export interface ReplayCache {
  /** Records `jti` until `untilSec` (epoch seconds); true if it was not recorded yet. */
  markUsed(jti: string, untilSec: number): boolean | Promise<boolean>;
}

/**
 * The one Redis command {@link RedisReplayCache} needs, in ioredis' signature
 * (`redis.set(key, value, 'EXAT', untilSec, 'NX')`). Any client can be adapted to it.
 */
export interface RedisSetNx {
  set(key: string, value: string, exat: 'EXAT', untilSec: number, nx: 'NX'): Promise<'OK' | null>;
}

/**
 * Replay cache shared by every replica of one MCP server: one `SET key 1 EXAT until NX` per spent
 * jti, atomic in Redis, forgotten by Redis itself when the token could no longer be accepted. When
 * Redis cannot be reached, or does not answer within `timeoutMs` (default 1000; a frozen Redis
 * must not hang the call), the verifier refuses the single-use call
 * (`TASKPASS_VERIFY_REPLAY_UNAVAILABLE`): a replay cache that is down must not turn into "never
 * seen". A mark that reaches Redis after the refusal still spends the jti: the caller gets a new
 * token, never a second use. Redis ≥ 6.2 (EXAT).
 *
 * Give it a client that does not queue commands while disconnected, so that an outage fails at
 * once instead of after `timeoutMs` for every call.
 *
 * @example
 * ```ts
 * import { Redis } from 'ioredis';
 * const redis = new Redis(url, { enableOfflineQueue: false, commandTimeout: 1000, maxRetriesPerRequest: 0 });
 * const verifier = createVerifier({ ..., replayCache: new RedisReplayCache(redis) });
 * ```
 */
export class RedisReplayCache implements ReplayCache {
  readonly #redis: RedisSetNx;
  readonly #prefix: string;
  readonly #timeoutMs: number;

  constructor(redis: RedisSetNx, opts: { keyPrefix?: string; timeoutMs?: number } = {}) {
    this.#redis = redis;
    this.#prefix = opts.keyPrefix ?? 'taskpass:verifier:jti:';
    this.#timeoutMs = opts.timeoutMs ?? 1000;
  }

  async markUsed(jti: string, untilSec: number): Promise<boolean> {
    const set = this.#redis.set(this.#prefix + jti, '1', 'EXAT', Math.ceil(untilSec), 'NX');
    // Bounded here whatever the client's own options: the promise from Redis may never settle.
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`the replay cache did not answer in ${this.#timeoutMs} ms`)),
        this.#timeoutMs,
      );
    });
    try {
      return (await Promise.race([set, timeout])) === 'OK';
    } finally {
      clearTimeout(timer);
      set.catch(() => {}); // a late rejection has no one left to hear it
    }
  }
}

/**
 * Thrown (as a plain signal) when the in-memory cache is full of live entries. The verifier turns
 * it into a 503 `TASKPASS_VERIFY_REPLAY_CACHE_FULL`.
 *
 * @example
 * ```ts
 * const cache = new MemoryReplayCache({ maxEntries: 1 });
 * cache.markUsed('jti-1', Math.floor(Date.now() / 1000) + 60); // true
 * cache.markUsed('jti-2', Math.floor(Date.now() / 1000) + 60); // throws ReplayCacheFullError
 * ```
 */
export class ReplayCacheFullError extends Error {
  override readonly name = 'ReplayCacheFullError';
}

/**
 * In-process replay cache: a Map in insertion order. Tokens live seconds and are inserted roughly
 * in expiry order, so each insert drops a few expired entries from the front (amortized O(1)); a
 * full sweep runs only when the map doubles. When `maxEntries` live entries are held, new ones are
 * refused rather than old ones evicted: forgetting a live jti would allow a replay.
 *
 * @example
 * ```ts
 * const cache = new MemoryReplayCache({ maxEntries: 1_000_000 });
 * cache.markUsed('jti-1', Math.floor(Date.now() / 1000) + 60); // true
 * cache.markUsed('jti-1', Math.floor(Date.now() / 1000) + 60); // false
 * ```
 */
export class MemoryReplayCache implements ReplayCache {
  readonly #entries = new Map<string, number>();
  readonly #max: number;
  readonly #now: () => number;
  #sweepAt = 1024;

  constructor(opts: { maxEntries?: number; now?: () => number } = {}) {
    this.#max = opts.maxEntries ?? 1_000_000;
    this.#now = opts.now ?? Date.now;
  }

  get size(): number {
    return this.#entries.size;
  }

  markUsed(jti: string, untilSec: number): boolean {
    const nowSec = this.#now() / 1000;
    const seen = this.#entries.get(jti);
    if (seen !== undefined && seen >= nowSec) return false;
    this.#dropFront(nowSec, 4);
    if (this.#entries.size >= this.#sweepAt) this.sweep();
    if (this.#entries.size >= this.#max) throw new ReplayCacheFullError('replay cache is full');
    this.#entries.delete(jti);
    this.#entries.set(jti, untilSec);
    return true;
  }

  /** Drops every expired entry (O(n); called automatically when the map doubles). */
  sweep(): void {
    const nowSec = this.#now() / 1000;
    for (const [k, until] of this.#entries) if (until < nowSec) this.#entries.delete(k);
    this.#sweepAt = Math.max(1024, this.#entries.size * 2);
  }

  #dropFront(nowSec: number, n: number): void {
    for (const [k, until] of this.#entries) {
      if (n-- <= 0 || until >= nowSec) return;
      this.#entries.delete(k);
    }
  }
}
