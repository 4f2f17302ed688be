// The shared Redis of the Redis-backed tests (127.0.0.1:6379). Each test uses its own key prefix
// and removes it afterwards; nothing here flushes or pauses the shared server.
import { after } from 'node:test';
import { Redis } from 'ioredis';

export const URL = 'redis://127.0.0.1:6379';

/** A client for assertions and clean-up, closed after the test file. */
export const admin = new Redis(URL);
after(() => admin.quit());

/** Deletes every key under `prefix`. */
export async function dropPrefix(prefix: string): Promise<void> {
  let cursor = '0';
  do {
    const [next, keys] = await admin.scan(cursor, 'MATCH', `${prefix}*`, 'COUNT', 500);
    cursor = next;
    if (keys.length) await admin.del(...keys);
  } while (cursor !== '0');
}
