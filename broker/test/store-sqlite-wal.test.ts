// The WAL under steady load (store/sqlite-writer.ts): PASSIVE checkpoints copy every frame, but
// only a writer whose transaction begins with every frame copied starts the WAL over, which
// commits back to back almost never allow. Past `walLimitMiB` the checkpoint thread restarts it.
import assert from 'node:assert/strict';
import { statSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { SqliteStore } from '../src/store/sqlite.ts';
import { tempDir } from './sqlite-support.ts';

const walBytes = (path: string) => {
  try {
    return statSync(`${path}-wal`).size;
  } catch {
    return 0;
  }
};

/** Decision records of ~40 KiB, appended back to back (each waits for its commit): ~10 frames each. */
async function load(
  limitMiB: number,
  writer: 'thread' | 'inline' = 'thread',
): Promise<{ most: number; restarts: number; stored: number }> {
  using tmp = tempDir();
  const path = join(tmp.dir, 'broker.db');
  const s = new SqliteStore({ path, checkpointIntervalMs: 5, walLimitMiB: limitMiB, writer });
  await s.init();
  let most = 0;
  try {
    for (let i = 0; i < 600; i++) {
      await s.appendDecisions([
        { at: Date.now(), event: 'token.denied', task: `t${i}`, reason: 'z'.repeat(40_000) },
      ]);
      most = Math.max(most, walBytes(path));
    }
    // Whichever thread restarted it: the writer thread when asked, else the checkpoint thread.
    const restarts = ((await s.writerStats())?.restarts ?? 0) + ((await s.checkpointStats())?.restarts ?? 0);
    return { most, restarts, stored: (await s.decisionHead()).seq };
  } finally {
    await s.close();
  }
}

test('sqlite: under back-to-back commits the WAL is started over near its limit', async () => {
  // The writer thread restarts it when the checkpoint thread asks.
  const limited = await load(1);
  assert.equal(limited.stored, 600, 'every record stored');
  assert.ok(limited.restarts > 0, 'the WAL was started over');
  // 600 records of ~10 frames: ~25 MiB of WAL if it is never started over; the limit is 1 MiB.
  // (With `walLimitMiB: 0` on a quiet machine: 21 MB, against 2.6 MB here. On a busy one the gaps
  // between commits let SQLite start it over by itself now and then, so that is not asserted.)
  assert.ok(limited.most < 4 * 1024 * 1024, `WAL at most ${limited.most} bytes with a 1 MiB limit`);
  assert.equal((await load(0)).restarts, 0, 'no restart asked for without a limit');
});

test("sqlite: with the writer inline, the store's own connection starts the WAL over", async () => {
  const limited = await load(1, 'inline');
  assert.equal(limited.stored, 600, 'every record stored');
  // ~25 MiB of WAL if it is never started over (40 MB measured with `walLimitMiB: 0`, quiet machine).
  assert.ok(limited.most < 4 * 1024 * 1024, `WAL at most ${limited.most} bytes with a 1 MiB limit`);
});

for (const writer of ['thread', 'inline'] as const) {
  test(`sqlite (writer ${writer}): a reader pinning the WAL does not hold the commits; the restart is asked again after it lets go`, async () => {
    using tmp = tempDir();
    const path = join(tmp.dir, 'broker.db');
    const s = new SqliteStore({ path, checkpointIntervalMs: 5, walLimitMiB: 1, writer });
    await s.init();
    let n = 0;
    const append = (bytes: number) =>
      s.appendDecisions([
        { at: Date.now(), event: 'token.denied', task: `t${n++}`, reason: 'z'.repeat(bytes) },
      ]);
    try {
      const commitsIn500ms = async () => {
        let k = 0;
        for (const end = performance.now() + 500; performance.now() < end; k++) await append(100);
        return k;
      };
      // Past the limit, so the checkpoint thread keeps asking for a restart.
      for (let i = 0; i < 60; i++) await append(40_000);
      const free = await commitsIn500ms();
      // A read transaction held open: no restart succeeds while it lasts.
      const reader = new Database(path, { readonly: true });
      reader.exec('BEGIN');
      reader.prepare('SELECT count(*) FROM decisions').get();
      const before = (await s.writerStats())?.restarts ?? 0;
      const pinned = await commitsIn500ms();
      reader.exec('COMMIT');
      reader.close();
      for (let i = 0; i < 100; i++) await append(40_000);
      const after = (await s.writerStats())?.restarts ?? 0;
      console.log('DBG', free, pinned, before, after);
      assert.equal((await s.decisionHead()).seq, n, 'every record stored');
      // Restarts that wait for the reader in SQLite's busy handler (up to 20 ms each) let a fifth
      // as many through (217 against 1,056 here, where 1,390 got through unpinned).
      assert.ok(pinned >= free * 0.4, `${pinned} commits in 500 ms with the WAL pinned, ${free} without`);
      // (The inline writer keeps no statistics; its WAL bound is the test above.)
      if (writer === 'thread')
        assert.ok(after > before, `the WAL was started over once the reader let go (${before} → ${after})`);
    } finally {
      await s.close();
    }
  });
}
