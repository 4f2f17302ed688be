import { randomUUID } from 'node:crypto';
import { after } from 'node:test';
import { Redis } from 'ioredis';
import { RedisStore } from '../src/store/redis.ts';
import { keysAtRestContract } from './keys-at-rest.ts';

const URL = 'redis://127.0.0.1:6379';
const admin = new Redis(URL);
after(() => admin.quit());

keysAtRestContract('redis', async () => {
  const prefix = `taskpass-test:${randomUUID()}:`;
  const store = new RedisStore({ url: URL, prefix });
  await store.init();
  return {
    store,
    // What an RDB/AOF file or a replica would hold for the keys hash.
    raw: {
      rawBytes: async () =>
        Object.entries(await admin.hgetall(`${prefix}keys`))
          .flat()
          .join('\n'),
    },
    cleanup: async () => {
      await store.close();
      await admin.del(`${prefix}keys`, `${prefix}seq`);
    },
  };
});
