// Single-use enforcement: a jti is remembered until the token it belongs to can no longer be
// accepted (exp + clock tolerance), then forgotten; a cache full of live jtis refuses new ones
// (fail closed) instead of forgetting any. The verifier caps token lifetimes
// (maxTokenLifetimeSec), which bounds how long any entry lives.

/**
 * Where spent jtis are remembered. `markUsed` must be atomic: it returns true the first time a jti
 * is seen and false afterwards, and throw {@link ReplayCacheFullError} rather than forget an
 * unexpired jti. {@link RedisReplayCache} shares single use between replicas of one MCP server.
 */
export interface ReplayCache {
  /** Records `jti` until `untilSec` (epoch seconds); true if it was not recorded yet. */
  markUsed(jti: string, untilSec: number): boolean | Promise<boolean>;
}

/**
 * The one Redis command {@link RedisReplayCache} needs, in ioredis' signature
 * (`redis.eval(script, numKeys, ...keysAndArgs)`). Any client can be adapted to it.
 */
export interface RedisEval {
  eval(script: string, numKeys: number, ...args: (string | number)[]): Promise<unknown>;
}

/** Default cap on remembered jtis (in memory and in Redis). */
export const DEFAULT_REPLAY_MAX_ENTRIES = 1_000_000;

// One sorted set per cache, scored by the epoch second until which each jti must be remembered.
// Every call first drops what the server clock says has expired, so the set only ever holds live
// entries and its size is the number of tokens that could still be replayed. The set itself
// expires with its longest-lived member. Returns 1 (first use), 0 (replay), -1 (full).
const MARK_USED = `
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. now)
if redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[3]) then return -1 end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
local last = redis.call('ZRANGE', KEYS[1], -1, -1, 'WITHSCORES')
redis.call('EXPIREAT', KEYS[1], tonumber(last[2]) + 1)
return 1
`;

/**
 * Replay cache shared by every replica of one MCP server: one Lua script per spent jti over one
 * sorted set (`{keyPrefix}spent`), atomic in Redis. An entry lives until the token could no longer
 * be accepted (exp + clock tolerance, by the Redis clock) and is then dropped; at `maxEntries`
 * live entries new single-use tokens are refused (`TASKPASS_VERIFY_REPLAY_CACHE_FULL`) rather than
 * anything forgotten. When Redis cannot be reached, or does not answer within `timeoutMs` (default
 * 1000; a frozen Redis must not hang the call), the verifier refuses the single-use call
 * (`TASKPASS_VERIFY_REPLAY_UNAVAILABLE`): a replay cache that is down must not turn into "never
 * seen". A mark that reaches Redis after the refusal still spends the jti: the caller gets a new
 * token, never a second use. Redis ≥ 6.2. Run Redis with `maxmemory-policy noeviction`: an
 * evicting policy could drop the set, and with it every spent jti.
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
  readonly #redis: RedisEval;
  readonly #key: string;
  readonly #max: number;
  readonly #timeoutMs: number;

  constructor(redis: RedisEval, opts: { keyPrefix?: string; maxEntries?: number; timeoutMs?: number } = {}) {
    this.#redis = redis;
    this.#key = `${opts.keyPrefix ?? 'taskpass:verifier:jti:'}spent`;
    this.#max = opts.maxEntries ?? DEFAULT_REPLAY_MAX_ENTRIES;
    this.#timeoutMs = opts.timeoutMs ?? 1000;
  }

  /** The Redis key of the sorted set (for operators and tests). */
  get key(): string {
    return this.#key;
  }

  async markUsed(jti: string, untilSec: number): Promise<boolean> {
    const mark = this.#redis.eval(MARK_USED, 1, this.#key, jti, Math.ceil(untilSec), this.#max);
    // Bounded here whatever the client's own options: the promise from Redis may never settle.
    let timer: NodeJS.Timeout | undefined;
    const timeout = new Promise<never>((_, reject) => {
      timer = setTimeout(
        () => reject(new Error(`the replay cache did not answer in ${this.#timeoutMs} ms`)),
        this.#timeoutMs,
      );
    });
    let r: unknown;
    try {
      r = await Promise.race([mark, timeout]);
    } finally {
      clearTimeout(timer);
      mark.catch(() => {}); // a late rejection has no one left to hear it
    }
    if (r === -1) throw new ReplayCacheFullError('replay cache is full');
    return r === 1;
  }
}

/**
 * Thrown (as a plain signal) when a replay cache is full of live entries. The verifier turns
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
 * In-process replay cache. Entries are grouped by the whole second until which they must be kept;
 * once per second every group whose second has passed is dropped, so each entry is deleted once,
 * exactly when it expires, whatever order tokens of different lifetimes arrive in (O(1) amortized
 * per call plus O(live seconds) once a second). When `maxEntries` live entries are held, new ones
 * are refused rather than old ones evicted: forgetting a live jti would allow a replay.
 *
 * @example
 * ```ts
 * const cache = new MemoryReplayCache({ maxEntries: 1_000_000 });
 * cache.markUsed('jti-1', Math.floor(Date.now() / 1000) + 60); // true
 * cache.markUsed('jti-1', Math.floor(Date.now() / 1000) + 60); // false
 * ```
 */
export class MemoryReplayCache implements ReplayCache {
  /** jti → the second until which it is kept. */
  readonly #until = new Map<string, number>();
  /** second → the jtis kept until then. */
  readonly #bySecond = new Map<number, string[]>();
  readonly #max: number;
  readonly #now: () => number;
  #expiredBefore = Number.NEGATIVE_INFINITY;

  constructor(opts: { maxEntries?: number; now?: () => number } = {}) {
    this.#max = opts.maxEntries ?? DEFAULT_REPLAY_MAX_ENTRIES;
    this.#now = opts.now ?? Date.now;
  }

  /** Entries held (expired ones are dropped at most a second late). */
  get size(): number {
    return this.#until.size;
  }

  markUsed(jti: string, untilSec: number): boolean {
    const nowSec = this.#now() / 1000;
    this.#expire(Math.floor(nowSec));
    const seen = this.#until.get(jti);
    if (seen !== undefined && seen >= nowSec) return false;
    if (seen === undefined && this.#until.size >= this.#max) {
      throw new ReplayCacheFullError('replay cache is full');
    }
    const second = Math.ceil(untilSec);
    this.#until.set(jti, second);
    const group = this.#bySecond.get(second);
    if (group) group.push(jti);
    else this.#bySecond.set(second, [jti]);
    return true;
  }

  /** Drops every entry whose second has passed (also done automatically, once a second). */
  sweep(): void {
    this.#expiredBefore = Number.NEGATIVE_INFINITY;
    this.#expire(Math.floor(this.#now() / 1000));
  }

  // Drops the groups of seconds before `second`. A jti re-recorded under a later second (its old
  // entry had expired) stays: only entries still pointing at the dropped second go.
  #expire(second: number): void {
    if (second <= this.#expiredBefore) return;
    this.#expiredBefore = second;
    for (const [s, jtis] of this.#bySecond) {
      if (s >= second) continue;
      for (const jti of jtis) if (this.#until.get(jti) === s) this.#until.delete(jti);
      this.#bySecond.delete(s);
    }
  }
}
