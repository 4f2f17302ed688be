// Store selection: SQLite for one process, Redis for several replicas.
import type { Logger } from 'pino';
import { RedisStore } from './redis.ts';
import { SqliteStore } from './sqlite.ts';
import type { Store } from './types.ts';

export { RedisStore, type RedisStoreOptions } from './redis.ts';
export { defaultSqlitePath, SqliteStore, type SqliteStoreOptions } from './sqlite.ts';
export type * from './types.ts';

/** Which store to use: the explicit form. */
export type StoreConfig = { kind: 'sqlite'; path: string } | { kind: 'redis'; url: string; prefix?: string };

/** The `store` section of the broker configuration file (exactly one of the two is set). */
export interface StoreConfigSection {
  sqlite?:
    | {
        path: string;
        cacheMiB?: number | undefined;
        mmapMiB?: number | undefined;
        checkpoint?: 'background' | 'inline' | undefined;
        walLimitMiB?: number | undefined;
        writer?: 'thread' | 'inline' | undefined;
      }
    | undefined;
  redis?: { url: string; keyPrefix?: string | undefined; timeoutMs?: number | undefined } | undefined;
}

/**
 * Creates (does not initialise) the store. Accepts the explicit `{ kind, ... }` form or the
 * configuration file's `{ sqlite } | { redis }` section. Call `init()` before use.
 */
export function createStore(
  config: StoreConfig | StoreConfigSection,
  opts: { logger?: Logger; decisionRetentionSec?: number } = {},
): Store {
  const logger = {
    ...(opts.logger ? { logger: opts.logger } : {}),
    ...(opts.decisionRetentionSec ? { decisionRetentionSec: opts.decisionRetentionSec } : {}),
  };
  if ('kind' in config) {
    if (config.kind === 'sqlite') return new SqliteStore({ path: config.path, ...logger });
    return new RedisStore({
      url: config.url,
      ...(config.prefix ? { prefix: config.prefix } : {}),
      ...logger,
    });
  }
  if (config.sqlite && config.redis) throw new Error('choose one of store.sqlite or store.redis');
  if (config.redis) {
    const { url, keyPrefix, timeoutMs } = config.redis;
    return new RedisStore({
      url,
      ...(keyPrefix ? { prefix: keyPrefix } : {}),
      ...(timeoutMs ? { timeoutMs } : {}),
      ...logger,
    });
  }
  const sqlite = config.sqlite;
  return new SqliteStore({
    ...(sqlite?.path ? { path: sqlite.path } : {}),
    ...(sqlite?.cacheMiB !== undefined ? { cacheMiB: sqlite.cacheMiB } : {}),
    ...(sqlite?.mmapMiB !== undefined ? { mmapMiB: sqlite.mmapMiB } : {}),
    ...(sqlite?.checkpoint ? { checkpoint: sqlite.checkpoint } : {}),
    ...(sqlite?.walLimitMiB !== undefined ? { walLimitMiB: sqlite.walLimitMiB } : {}),
    ...(sqlite?.writer ? { writer: sqlite.writer } : {}),
    ...logger,
  });
}
