import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SqliteStore } from '../src/store/sqlite.ts';
import { keysAtRestContract } from './keys-at-rest.ts';

// A file, not :memory:, so that the test reads what lies on disk: the database and its WAL.
keysAtRestContract('sqlite file', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-keys-'));
  const path = join(dir, 'broker.db');
  const store = new SqliteStore({ path });
  await store.init();
  const read = (p: string) => {
    try {
      return readFileSync(p).toString('latin1');
    } catch {
      return '';
    }
  };
  return {
    store,
    raw: { rawBytes: async () => read(path) + read(`${path}-wal`) },
    cleanup: async () => {
      await store.close();
      rmSync(dir, { recursive: true, force: true });
    },
  };
});
