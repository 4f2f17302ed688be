// Request timeouts hold while the garbage collector runs: on Node 20, AbortSignal.any() does not
// keep an AbortSignal.timeout() alive, and a collected timeout never fires (src/signals.ts).
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';
import { BrokerClient } from '../src/index.ts';

test('a broker that never answers: the request times out beside a caller signal, under GC', async (t) => {
  const held: import('node:http').ServerResponse[] = [];
  const server = createServer((_req, res) => void held.push(res)); // accepts, never answers
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  t.after(() => {
    for (const res of held) res.destroy();
    server.close();
  });
  const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  setFlagsFromString('--expose-gc');
  const gc = runInNewContext('gc') as () => void;
  const collecting = setInterval(gc, 5);
  t.after(() => clearInterval(collecting));
  await using c = new BrokerClient({ url, auth: { kind: 'none-insecure' }, timeoutMs: 300 });
  const t0 = Date.now();
  await assert.rejects(
    c.getApproval('apr_AAAAAAAAAAAAAAAAAAAAAA', { waitSec: 0, signal: new AbortController().signal }),
    { code: 'TASKPASS_AGENT_BROKER_UNREACHABLE' },
  );
  assert.ok(Date.now() - t0 < 3000, `timed out after ${Date.now() - t0} ms`);
});
