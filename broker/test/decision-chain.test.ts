import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import Database from 'better-sqlite3';
import { runCli } from '../src/cli.ts';
import { verifyChain } from '../src/decision-chain.ts';
import { SqliteStore } from '../src/store/sqlite.ts';
import { append, decisionContract, inputs } from './decision-chain.ts';

decisionContract('sqlite :memory:', async () => {
  const store = new SqliteStore({ path: ':memory:' });
  await store.init();
  return { store, cleanup: () => store.close() };
});

function io(env: NodeJS.ProcessEnv) {
  const out: string[] = [];
  const err: string[] = [];
  return { io: { out: (s: string) => out.push(s), err: (s: string) => err.push(s), env }, out, err };
}

test('taskpass audit verify: ok on an intact chain; an edited or deleted record is reported exactly', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-audit-'));
  try {
    const path = join(dir, 'broker.db');
    const store = new SqliteStore({ path });
    await store.init();
    const recs = await append(store, inputs(6));
    await store.close();
    const env = {
      TASKPASS_ISSUER: 'https://broker.test',
      TASKPASS_TRUST_DOMAIN: 'td',
      TASKPASS_STORE_SQLITE_PATH: path,
    };

    const ok = io(env);
    assert.equal(await runCli(['audit', 'verify'], ok.io), 0, ok.err.join('\n'));
    assert.equal(ok.out[0], `ok: 6 record(s) 1..6 verified; last hash ${recs[5]?.hash}`);
    const range = io(env);
    assert.equal(await runCli(['audit', 'verify', '--from', '2', '--to', '4'], range.io), 0);
    assert.match(range.out[0] ?? '', /^ok: 3 record\(s\) 2\.\.4 verified/);
    assert.equal(await runCli(['audit', 'verify', '--from', 'x'], io(env).io), 2);

    // Someone with write access to the file softens a denial's reason.
    const db = new Database(path);
    const row = db.prepare('SELECT data FROM decisions WHERE seq = 4').get() as { data: string };
    const edited = { ...JSON.parse(row.data), reason: 'allowed after all' };
    db.prepare('UPDATE decisions SET data = ? WHERE seq = 4').run(JSON.stringify(edited));
    db.close();
    const bad = io(env);
    assert.equal(await runCli(['audit', 'verify'], bad.io), 1);
    assert.match(
      bad.err[0] ?? '',
      /^BROKEN at record 4: record 4 was altered: .* \(3 record\(s\) verified before it\)$/,
    );
    // Before the edit, the chain still verifies.
    assert.equal(await runCli(['audit', 'verify', '--to', '3'], io(env).io), 0);

    // Re-hashing the edited record does not help: the next one no longer links to it.
    const db2 = new Database(path);
    const { recordHash } = await import('../src/decision-chain.ts');
    const rehashed = { ...edited, hash: recordHash(edited) };
    db2
      .prepare('UPDATE decisions SET data = ?, hash = ? WHERE seq = 4')
      .run(JSON.stringify(rehashed), rehashed.hash);
    db2.close();
    const relinked = io(env);
    assert.equal(await runCli(['audit', 'verify', '--json'], relinked.io), 1);
    const v = JSON.parse(relinked.out[0] ?? '{}');
    assert.equal(v.seq, 5);
    assert.match(v.problem, /record 5 does not link to record 4/);

    // A deleted record.
    const db3 = new Database(path);
    db3.prepare('DELETE FROM decisions WHERE seq = 2').run();
    db3.close();
    const gap = io(env);
    assert.equal(await runCli(['audit', 'verify'], gap.io), 1);
    assert.match(gap.err[0] ?? '', /^BROKEN at record 2: record 2 is missing \(the next record is 3\)/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('deleting the newest record is detected: the head still names the last one appended', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-audit-'));
  try {
    const path = join(dir, 'broker.db');
    const store = new SqliteStore({ path });
    await store.init();
    const recs = await append(store, inputs(3));
    assert.deepEqual(await store.decisionHead(), { seq: 3, hash: recs[2]?.hash });
    const db = new Database(path);
    db.prepare('DELETE FROM decisions WHERE seq = 3').run();
    db.close();
    const v = await verifyChain(store);
    assert.ok(!v.ok && v.seq === 3 && /record 3 is missing/.test(v.problem), JSON.stringify(v));
    await store.close();
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('a store that refuses records: flush rejects, the batch stays queued in order, and lands once the store is back', async () => {
  const store = new SqliteStore({ path: ':memory:' });
  await store.init();
  let refuse = 2;
  const flaky = new Proxy(store, {
    get(target, prop, receiver) {
      if (prop === 'appendDecisions') {
        return (inputs: Parameters<SqliteStore['appendDecisions']>[0]) => {
          if (refuse-- > 0) return Promise.reject(new Error('disk full'));
          return target.appendDecisions(inputs);
        };
      }
      const v = Reflect.get(target, prop, receiver);
      return typeof v === 'function' ? v.bind(target) : v;
    },
  });
  const { DecisionRecorder } = await import('../src/decision-log.ts');
  const rec = new DecisionRecorder({ store: flaky, log: { record() {} }, groupMs: 1_000_000 });
  try {
    rec.record({ event: 'task.opened', task: 'tsk_f' });
    rec.record({ event: 'task.revoked', task: 'tsk_f' });
    await assert.rejects(rec.flush(), /disk full/);
    await assert.rejects(rec.flush(), /disk full/);
    rec.record({ event: 'token.revoked', task: 'tsk_f', jti: 'j' });
    await rec.flush();
    const tl = await store.decisionsOfTask('tsk_f', 10);
    assert.deepEqual(
      tl.map((r) => [r.seq, r.event]),
      [
        [1, 'task.opened'],
        [2, 'task.revoked'],
        [3, 'token.revoked'],
      ],
    );
    assert.ok((await verifyChain(store)).ok);
  } finally {
    await rec.drain();
    await store.close();
  }
});
