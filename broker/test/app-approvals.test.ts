// The approval API on the SQLite store (the Redis run is app-approvals.redis.test.ts).
import { SqliteStore } from '../src/store/sqlite.ts';
import { approvalApiTests } from './app-approvals.ts';

approvalApiTests('approvals (sqlite)', async () => {
  const store = new SqliteStore({ path: ':memory:' });
  await store.init();
  return { store, cleanup: () => store.close() };
});
