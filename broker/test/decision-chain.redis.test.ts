import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { test } from 'node:test';
import { runCli } from '../src/cli.ts';
import { verifyChain } from '../src/decision-chain.ts';
import { RedisStore } from '../src/store/redis.ts';
import { append, decisionContract, inputs } from './decision-chain.ts';
import { admin, dropPrefix, URL } from './redis-support.ts';

const prefix = () => `taskpass-test:${randomUUID()}:`;

decisionContract('redis', async () => {
  const p = prefix();
  const store = new RedisStore({ url: URL, prefix: p });
  await store.init();
  return {
    store,
    cleanup: async () => {
      await store.close();
      await dropPrefix(p);
    },
  };
});

test('redis, two replicas: concurrent appends make one chain; a deleted or edited record is detected exactly', async () => {
  const p = prefix();
  const a = new RedisStore({ url: URL, prefix: p });
  const b = new RedisStore({ url: URL, prefix: p });
  await a.init();
  await b.init();
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-audit-redis-'));
  try {
    await Promise.all(Array.from({ length: 8 }, (_, i) => append(i % 2 ? a : b, inputs(5, `tsk_${i}`))));
    const v = await verifyChain(b);
    assert.ok(v.ok && v.count === 40, JSON.stringify(v));
    // Each task's timeline is complete and in order, whichever replica wrote it.
    const tl = await a.decisionsOfTask('tsk_3', 10);
    assert.equal(tl.length, 5);
    assert.deepEqual(
      tl.map((r) => r.jti ?? r.code),
      ['j0', 'TASKPASS_DENIED_TOOL', 'j2', 'TASKPASS_DENIED_TOOL', 'j4'],
    );

    const config = join(dir, 'broker.yaml');
    writeFileSync(
      config,
      `issuer: https://broker.test\ntrustDomain: td\nstore:\n  redis:\n    url: ${URL}\n    keyPrefix: "${p}"\n`,
    );
    const io = () => {
      const out: string[] = [];
      const err: string[] = [];
      return { io: { out: (s: string) => out.push(s), err: (s: string) => err.push(s), env: {} }, out, err };
    };
    const ok = io();
    assert.equal(await runCli(['audit', 'verify', '--config', config], ok.io), 0, ok.err.join('\n'));
    assert.match(ok.out[0] ?? '', /^ok: 40 record\(s\) 1\.\.40 verified; last hash [0-9a-f]{64}$/);

    await admin.hdel(`${p}dec:rec`, '17');
    const gap = io();
    assert.equal(await runCli(['audit', 'verify', '--config', config], gap.io), 1);
    assert.match(gap.err[0] ?? '', /^BROKEN at record 17: record 17 is missing \(the next record is 18\)/);

    const twenty = JSON.parse((await admin.hget(`${p}dec:rec`, '20')) ?? '{}');
    await admin.hset(`${p}dec:rec`, '20', JSON.stringify({ ...twenty, user: 'mallory' }));
    const edited = await verifyChain(a, { from: 19 });
    assert.ok(
      !edited.ok && edited.seq === 20 && /record 20 was altered/.test(edited.problem),
      JSON.stringify(edited),
    );

    // The newest record deleted: the head still names it.
    await admin.hdel(`${p}dec:rec`, '40');
    const tail = await verifyChain(a, { from: 21 });
    assert.ok(!tail.ok && tail.seq === 40 && /record 40 is missing/.test(tail.problem), JSON.stringify(tail));
  } finally {
    rmSync(dir, { recursive: true, force: true });
    await a.close();
    await b.close();
    await dropPrefix(p);
  }
});
