// Shared by the SQLite store's tests: temporary directories, and a store on a file with a second,
// read-only connection that sees only what has been committed.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import Database from 'better-sqlite3';
import { SqliteStore, type SqliteStoreOptions } from '../src/store/sqlite.ts';

/** A fresh directory, removed when disposed (`using tmp = tempDir()`). */
export function tempDir(prefix = 'taskpass-store-'): { dir: string; [Symbol.dispose](): void } {
  const dir = mkdtempSync(join(tmpdir(), prefix));
  return { dir, [Symbol.dispose]: () => rmSync(dir, { recursive: true, force: true }) };
}

/** What a second connection to the file sees. */
export interface CommittedView {
  path: string;
  /** Rows of `table` committed so far. */
  committed(table: string): number;
}

/** Runs `fn` on an initialised store on a new file; closes both connections afterwards. */
export async function withFileStore(
  opts: Omit<SqliteStoreOptions, 'path'>,
  fn: (store: SqliteStore, view: CommittedView) => Promise<void>,
): Promise<void> {
  using tmp = tempDir();
  const path = join(tmp.dir, 'broker.db');
  const store = new SqliteStore({ ...opts, path });
  await store.init();
  const other = new Database(path, { readonly: true });
  try {
    await fn(store, {
      path,
      committed: (table) => (other.prepare(`SELECT COUNT(*) AS n FROM ${table}`).get() as { n: number }).n,
    });
  } finally {
    other.close();
    await store.close();
  }
}

/**
 * Takes the file's write lock from another connection until `release()`: a batch sent to the
 * writer thread meanwhile stays in flight (its BEGIN waits), deterministically.
 */
export function holdWriteLock(path: string): { release(): void } {
  const db = new Database(path);
  db.exec('BEGIN IMMEDIATE');
  return {
    release() {
      db.exec('COMMIT');
      db.close();
    },
  };
}
