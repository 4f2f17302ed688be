// Per-caller request budgets for every route that creates state or costs a signature. One
// @fastify/rate-limit store serves the whole app, so the task, OAuth and admin scopes count into
// the same budgets; the budget class is part of the key. On the Redis store the counters live in
// that Redis (one Lua INCR/PEXPIRE per request) and every replica shares them.
//
// Fail closed: when Redis does not answer within `rateLimit.redisTimeoutMs` (down, frozen, or not
// yet connected: no offline queue) the request is refused with 503 TASKPASS_RATE_LIMIT_UNAVAILABLE.
// Every limited route needs the same Redis as its store anyway, so failing open would buy no
// availability, and it would lift every limit exactly when Redis is slowest.
import rateLimit from '@fastify/rate-limit';
import type { FastifyBaseLogger, FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { Redis } from 'ioredis';
import type { Logger } from 'pino';
import type { BrokerConfig } from './config.ts';
import { BrokerError } from './errors.ts';

/** Which budget a request counts against. */
export type RateClass = 'agent' | 'workload' | 'admin' | 'ip';

export interface RateLimiter {
  /**
   * Counts one request of `who` (a SPIFFE ID, or an IP for class `ip`) against its budget. Throws
   * TASKPASS_RATE_LIMITED (429, `Retry-After` = seconds until the window resets) or
   * TASKPASS_RATE_LIMIT_UNAVAILABLE (503).
   */
  consume(req: FastifyRequest, reply: FastifyReply, cls: RateClass, who: string): Promise<void>;
}

const WINDOW_MS = 60_000;

// The key of the count in progress: @fastify/rate-limit asks its keyGenerator for it.
const pendingKey = new WeakMap<FastifyRequest, string>();

function budgets(config: BrokerConfig): Record<RateClass, number> {
  const r = config.rateLimit;
  return {
    agent: r.perAgentPerMinute,
    workload: r.perWorkloadPerMinute,
    admin: r.perAdminPerMinute,
    ip: r.perIpPerMinute,
  };
}

/**
 * The Redis client of the limiter when the broker runs on the Redis store: short command timeout,
 * no offline queue (a command while disconnected fails at once rather than waiting for a reconnect).
 */
export function limiterRedis(config: BrokerConfig): Redis | undefined {
  const r = config.store.redis;
  if (!r) return undefined;
  return new Redis(r.url, {
    lazyConnect: true,
    enableOfflineQueue: false,
    maxRetriesPerRequest: 0,
    commandTimeout: config.rateLimit.redisTimeoutMs,
    connectTimeout: Math.max(1000, config.rateLimit.redisTimeoutMs),
  });
}

/**
 * Registers the limiter's store on the root app (call before the route scopes). With `redis`, keys
 * are `<store keyPrefix>rl:<class>:<who>`; the app connects it on ready and disconnects it on close.
 */
export function registerRateLimitStore(
  app: FastifyInstance,
  config: BrokerConfig,
  opts: { redis?: Redis | undefined; logger: Logger },
): void {
  const max = budgets(config);
  const { redis } = opts;
  if (redis) {
    redis.on('error', (err: Error) => opts.logger.warn({ err: err.message }, 'rate limiter redis error'));
    app.addHook('onReady', async () => {
      // Not reachable now: requests answer 503 until ioredis reconnects; start-up goes on (the
      // store decides whether the broker can start).
      await redis.connect().catch((err: Error) => {
        opts.logger.warn({ err: err.message }, 'rate limiter cannot reach redis yet');
      });
    });
    app.addHook('onClose', async () => redis.disconnect());
  }
  app.register(rateLimit, {
    global: false,
    timeWindow: WINDOW_MS,
    max: (_req, key) => max[String(key).slice(0, String(key).indexOf(':')) as RateClass] ?? 0,
    keyGenerator: (req) => pendingKey.get(req) ?? `ip:${req.ip}`,
    skipOnError: false,
    ...(redis ? { redis, nameSpace: `${config.store.redis?.keyPrefix ?? 'taskpass:'}rl:` } : {}),
  });
}

/** The limiter for routes of `scope` (a descendant of the app {@link registerRateLimitStore} ran on). */
export function rateLimiter(scope: FastifyInstance): RateLimiter {
  const count = scope.createRateLimit();
  const logger: FastifyBaseLogger = scope.log;
  return {
    async consume(req, reply, cls, who) {
      pendingKey.set(req, `${cls}:${cls === 'ip' ? rateLimit.normalizeIP(who) : who}`);
      let r: Awaited<ReturnType<typeof count>>;
      try {
        r = await count(req);
      } catch (err) {
        logger.warn({ err: (err as Error).message, class: cls }, 'rate limiter unavailable; refusing');
        reply.header('retry-after', '1');
        throw new BrokerError(
          'TASKPASS_RATE_LIMIT_UNAVAILABLE',
          'the rate limiter is unavailable; retry shortly',
        );
      } finally {
        pendingKey.delete(req);
      }
      if (r.isAllowed || !r.isExceeded) return;
      // The window's remaining time, as the header and the message both say it.
      const retryAfter = Math.max(1, r.ttlInSeconds);
      reply.header('retry-after', String(retryAfter));
      throw new BrokerError(
        'TASKPASS_RATE_LIMITED',
        `rate limit of ${r.max} requests per minute reached; retry in ${retryAfter} s`,
      );
    },
  };
}
