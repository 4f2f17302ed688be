// `taskpass serve --workers 2` as a real child process on one Redis store (issue #13), identities
// from the fake Workload API (test/support/serve.ts). node:cluster hands each new connection to a
// worker; a request on a connection shows which worker serves it (each worker's log lines carry its
// worker id and pid). A task opened through one worker is used and completed through the other, the
// revocation reaches a feed subscriber of the first, /metrics on either answers for both, and
// SIGTERM drains and stops every worker.
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { after, before, describe, test } from 'node:test';
import type { Client } from 'undici';
import { pollUntil } from '../harness/poll.ts';
import {
  AUDIENCE,
  connection,
  dropKeys,
  type ServedBroker,
  type ServeEnv,
  serveBroker,
  startServeEnv,
} from './support/serve.ts';

const keyPrefix = `taskpass-test:workers:${process.pid}:${randomUUID().slice(0, 8)}:`;

interface Conn {
  client: Client;
  /** cluster worker id serving this connection */
  worker: number;
  pid: number;
}

describe('taskpass serve --workers 2 on one Redis store', () => {
  let env: ServeEnv;
  let broker: ServedBroker;
  const clients: Client[] = [];
  /** Total call tokens issued in this run (the metrics test checks the aggregate against it). */
  let issued = 0;
  /** The verifier's revocation feed stream, open from test 2 until SIGTERM drains it. */
  let feed = '';
  let feedEnded: Promise<void> | undefined;

  /** Which worker a connection reached: a request with a unique path, found in the logs. */
  const identify = async (client: Client): Promise<Conn> => {
    const marker = randomUUID();
    const res = await client.request({ method: 'GET', path: `/probe/${marker}` });
    await res.body.text();
    const line = await pollUntil('the probe request in the logs', 10_000, 20, () =>
      broker
        .logs()
        .find(
          (l) =>
            l.msg === 'request completed' &&
            String((l.req as { url?: unknown } | undefined)?.url).includes(marker),
        ),
    );
    return { client, worker: line.worker as number, pid: line.pid as number };
  };
  /** Connections of `pem` until both workers have one: [on worker x, on another worker]. */
  const onBothWorkers = async (pem: ServeEnv['agent']): Promise<[Conn, Conn]> => {
    const seen = new Map<number, Conn>();
    for (let i = 0; i < 16 && seen.size < 2; i++) {
      const c = connection(broker.url, pem);
      clients.push(c);
      const conn = await identify(c);
      if (!seen.has(conn.worker)) seen.set(conn.worker, conn);
    }
    assert.equal(seen.size, 2, 'connections reached both workers');
    return [...seen.values()] as [Conn, Conn];
  };
  const json = async (c: Conn, method: string, path: string, body?: unknown) => {
    const res = await c.client.request({
      method,
      path,
      headers: { 'content-type': 'application/json' },
      ...(body !== undefined ? { body: JSON.stringify(body) } : {}),
    });
    return { status: res.statusCode, body: (await res.body.json()) as Record<string, unknown> };
  };
  const openTask = async (c: Conn) => {
    const r = await json(c, 'POST', '/v1/tasks', {
      purpose: 'workers test',
      user_token: await env.userToken(),
    });
    assert.equal(r.status, 201, JSON.stringify(r.body));
    return r.body.task_id as string;
  };
  const issue = async (c: Conn, taskId: string, ticket: string) => {
    const r = await json(c, 'POST', `/v1/tasks/${taskId}/tokens`, {
      audience: AUDIENCE,
      tool: 'get_ticket',
      resource: `tickets/${ticket}`,
      action: 'read',
    });
    if (r.status === 200) issued++;
    return r;
  };

  before(async () => {
    env = await startServeEnv();
    broker = await serveBroker(env, { workers: 2, keyPrefix });
  });
  after(async () => {
    for (const c of clients) await c.destroy().catch(() => {});
    await broker?.stop('SIGKILL');
    await broker?.dropKeys();
    await env?.close();
  });

  let a: Conn;
  let b: Conn;
  test('both workers serve: connections reach two processes', async () => {
    [a, b] = await onBothWorkers(env.agent);
    const pids = broker.workerPids();
    assert.equal(new Set(pids).size, 2, `two worker pids: ${pids}`);
    assert.notEqual(a.pid, b.pid);
    assert.ok(pids.includes(a.pid) && pids.includes(b.pid));
    assert.ok(!pids.includes(broker.child.pid!), 'the primary serves nothing itself');
  });

  test('a task opened on one worker is used and completed on the other; a feed subscriber of the first hears it', async () => {
    // The verifier's feed stream, on a connection served by worker a.
    const [fa, fb] = await onBothWorkers(env.verifier);
    const feedConn = fa.worker === a.worker ? fa : fb;
    const stream = await feedConn.client.request({
      method: 'GET',
      path: '/v1/revocations/stream',
      headers: { accept: 'text/event-stream' },
    });
    assert.equal(stream.statusCode, 200);
    stream.body.setEncoding('utf8').on('data', (c: string) => {
      feed += c;
    });
    feedEnded = new Promise((resolve) => {
      stream.body.once('end', resolve).once('error', () => resolve());
    });

    const taskId = await openTask(a);
    const first = await issue(b, taskId, 'T-1');
    assert.equal(first.status, 200, JSON.stringify(first.body));
    assert.match(String(first.body.access_token), /^ey/);
    const done = await json(b, 'POST', `/v1/tasks/${taskId}/complete`, { status: 'completed' });
    assert.equal(done.status, 200, JSON.stringify(done.body));
    await pollUntil('the completion on the feed of the other worker', 5000, 20, () =>
      feed.includes(taskId) ? true : undefined,
    );
    // Closed for the worker that opened it too (read from Redis; nothing held in memory).
    const late = await issue(a, taskId, 'T-2');
    assert.equal(late.body.code, 'TASKPASS_TASK_CLOSED', JSON.stringify(late.body));
  });

  test('/metrics on either worker is the aggregate of both', async () => {
    const t1 = await openTask(a);
    const t2 = await openTask(b);
    for (let i = 0; i < 3; i++) assert.equal((await issue(a, t1, `A-${i}`)).status, 200);
    for (let i = 0; i < 5; i++) assert.equal((await issue(b, t2, `B-${i}`)).status, 200);
    /** The sum of the samples of a series (`name`, or `name{label="v"` for those labels). */
    const sample = (text: string, series: string): number =>
      text
        .split('\n')
        .filter((l) =>
          series.includes('{')
            ? l.startsWith(series)
            : l.startsWith(`${series} `) || l.startsWith(`${series}{`),
        )
        .reduce((sum, l) => sum + Number(l.slice(l.lastIndexOf(' ') + 1)), 0);
    for (const c of [a, b]) {
      const res = await c.client.request({ method: 'GET', path: '/metrics' });
      assert.equal(res.statusCode, 200);
      const text = await res.body.text();
      assert.equal(sample(text, 'taskpass_issuance_seconds_count'), issued, `issued on worker ${c.worker}`);
      assert.equal(sample(text, 'taskpass_decisions_total{result="allow"'), issued);
      assert.equal(sample(text, 'taskpass_workers'), 2);
      // Per-process gauges combined: both workers' Workload API streams are up, SVIDs fresh.
      assert.equal(sample(text, 'taskpass_workload_api_up'), 1);
      assert.equal(sample(text, 'taskpass_svid_state{state="fresh"}'), 2);
      assert.ok(sample(text, 'taskpass_svid_expiry_seconds') > 0);
      // The feed stream of test 2, counted once, by the worker that holds it.
      assert.equal(sample(text, 'taskpass_feed_subscribers'), 1);
    }
  });

  test('a worker that dies is replaced; the broker keeps serving', async () => {
    const before = broker.workerPids();
    const victim = before.find((p) => p !== a.pid)!;
    process.kill(victim, 'SIGKILL');
    const replacement = await pollUntil('a new worker listening', 20_000, 50, () =>
      broker.workerPids().find((p) => !before.includes(p)),
    );
    assert.notEqual(replacement, victim);
    assert.ok(
      broker.logs().some((l) => l.msg === 'worker died; restarting it' && l.signal === 'SIGKILL'),
      'the death is logged',
    );
    // New connections reach the new worker too; the task store is the same.
    const c = connection(broker.url, env.agent);
    clients.push(c);
    const fresh = await identify(c);
    assert.equal((await issue(fresh, await openTask(a), 'R-1')).status, 200);
  });

  test('SIGHUP reaches every worker: each reloads its policies', async () => {
    const reloaded = () =>
      new Set(
        broker
          .logs()
          .filter((l) => l.msg === 'policies reloaded')
          .map((l) => l.pid as number),
      );
    const before = reloaded().size;
    broker.child.kill('SIGHUP');
    const pids = await pollUntil('both workers reloaded', 10_000, 50, () => {
      const r = reloaded();
      return r.size >= before + 2 ? r : undefined;
    });
    assert.equal(pids.size, 2);
    assert.equal(broker.child.exitCode, null, 'the primary keeps running');
  });

  test('SIGTERM stops every worker cleanly', async () => {
    const pids = broker.workerPids();
    // The feed stream stays open: draining ends it (the hub closes its streams).
    const { code, signal } = await broker.stop('SIGTERM');
    assert.equal(signal, null);
    assert.equal(code, 0, broker.stderr());
    await feedEnded;
    for (const pid of pids)
      assert.throws(() => process.kill(pid, 0), { code: 'ESRCH' }, `worker ${pid} gone`);
    const stopped = broker.logs().filter((l) => l.msg === 'stopped' && typeof l.worker === 'number');
    assert.equal(stopped.length, 2, 'both workers drained and logged stopped');
  });
});

test('workers that cannot start: one clear error, exit 1', async () => {
  const env = await startServeEnv();
  try {
    const failed = serveBroker(env, {
      workers: 2,
      keyPrefix: `${keyPrefix}fail:`,
      config: { workloadApi: { address: env.fake.address, hint: 'no-such-hint' } },
    });
    const e = (await failed.then(
      () => assert.fail('it should not listen'),
      (err: unknown) => err,
    )) as Error & { exit?: { code: number | null } };
    assert.equal(e.exit?.code, 1, e.message);
    const lines = e.message.split('\n').filter((l) => l.startsWith('taskpass: '));
    assert.equal(lines.length, 1, e.message);
    assert.match(
      lines[0]!,
      /^taskpass: TASKPASS_CONFIG_INVALID: workloadApi.hint "no-such-hint" matches no X.509-SVID/,
    );
  } finally {
    await dropKeys('redis://127.0.0.1:6379', `${keyPrefix}fail:`);
    await env.close();
  }
});
