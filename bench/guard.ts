// Section 7 — the guard's added latency (issue #14): tools/call `read_note` on tools/mcp-notes-go
// (the Go MCP SDK server) straight over plain HTTP, versus the same call through `taskpass guard`
// (HTTPS with mTLS from the agent's SVID, the verifier's middleware, forwarding with identity
// headers). Real SPIRE, broker and feed (examples/stack.ts), so it starts in ~10 s.
//
//   npm run bench -- guard [--calls N]      or
//   node --conditions=taskpass:source --import tsx bench/guard.ts [--calls N]
//
// Requests are sequential on keep-alive connections (one in flight: latency, not throughput),
// guard and direct alternating so drift in machine load hits both; p50/p99 of each and their ratio
// are printed. The read token is reused (read tokens are not single use), so issuance is not in it.
import { writeFile } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { BrokerClient } from '@taskpass/agent-plugin';
import { parseGuardConfig, startGuard } from '@taskpass/proxy';
import { createMtlsAgent, matchId, type TlsSource } from '@taskpass/spiffe';
import pino from 'pino';
import { type Dispatcher, Pool, request } from 'undici';
import { ALICE, startStack } from '../examples/stack.ts';
import { startNotesGo } from '../test/support/notes-go.ts';
import { registerWorkload, sourceByHint } from '../test/support/workloads.ts';
import { fmtMs, percentiles, type Percentiles, table } from './lib/stats.ts';

const AUDIENCE = 'https://notes.taskpass.local/mcp';
const GUARD_ID = 'spiffe://taskpass.local/mcp/notes-guard';
const SECRET = 'bench-guard-secret-0123456789';

export interface GuardBenchResult {
  direct: Percentiles;
  guarded: Percentiles;
  ratioP50: number;
  ratioP99: number;
  errors: number;
}

const body = (id: number) =>
  JSON.stringify({
    jsonrpc: '2.0',
    id,
    method: 'tools/call',
    params: { name: 'read_note', arguments: { note_id: 'n-1' } },
  });

async function timed(
  dispatcher: Dispatcher,
  url: string,
  headers: Record<string, string>,
  id: number,
): Promise<number | undefined> {
  const t = performance.now();
  const r = await request(url, { method: 'POST', dispatcher, headers, body: body(id) });
  const text = await r.body.text();
  const ms = performance.now() - t;
  return r.statusCode === 200 && text.includes('buy milk') ? ms : undefined;
}

export async function runGuardBench(o: { calls: number; warmup: number; log?: (l: string) => void }) {
  const log = o.log ?? (() => {});
  await using stack = await startStack({
    brokerLogLevel: 'warn',
    policiesDir: resolve(import.meta.dirname, '..', 'test', 'fixtures', 'guard', 'policies'),
  });
  const secretFile = join(stack.dir, 'guard-secret');
  await writeFile(secretFile, SECRET, { mode: 0o600 });
  const notes = await startNotesGo({ secretFile });
  const guardSource = await registerWorkload(stack, {
    spiffeId: GUARD_ID,
    hint: 'notes-guard',
    entryId: 'taskpass-4-guard',
  });
  const agentSource = await sourceByHint(stack, stack.hints.agent);
  const guard = await startGuard(
    parseGuardConfig({
      listen: { host: '127.0.0.1', port: 0 },
      audience: AUDIENCE,
      broker: { url: stack.urls.broker, issuer: stack.issuer, id: stack.ids.broker },
      upstream: { url: notes.mcpUrl, secretFile },
    }),
    { source: guardSource, logger: pino({ level: 'silent' }) },
  );
  const asAgent = createMtlsAgent(agentSource as TlsSource, matchId(GUARD_ID));
  const direct = new Pool(notes.origin, { connections: 1 });
  const broker = new BrokerClient({
    url: stack.urls.broker,
    auth: { kind: 'mtls', source: agentSource as TlsSource, brokerId: stack.ids.broker },
  });
  try {
    const task = await broker.openTask({
      purpose: 'guard bench',
      userToken: await stack.userToken(ALICE),
      ttlSeconds: 900,
    });
    const json = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
    // What the guard sends upstream, so the direct call does the same work at the Go server.
    const directHeaders = {
      ...json,
      'taskpass-guard-secret': SECRET,
      'taskpass-user': ALICE.sub,
      'taskpass-agent': stack.ids.agent,
      'taskpass-task': task.id,
      'taskpass-tool': 'read_note',
      'taskpass-resource': 'notes/n-1',
      'taskpass-action': 'read',
    };
    const guardHeaders = async () => ({
      ...json,
      // Cached by the task handle while valid (60 s template ttl): issuance stays out of the timing.
      authorization: `Bearer ${(await task.token({ audience: AUDIENCE, tool: 'read_note', resource: 'notes/n-1', action: 'read' })).accessToken}`,
    });
    const sample = { direct: [] as number[], guarded: [] as number[] };
    let errors = 0;
    log(`  ${o.warmup} warm-up calls each, then ${o.calls} measured, alternating…`);
    for (let i = 0; i < o.warmup + o.calls; i++) {
      const gh = await guardHeaders();
      const pair = [
        () => timed(direct, `${notes.origin}/mcp`, directHeaders, i),
        () => timed(asAgent, guard.mcpUrl, gh, i),
      ] as const;
      const order = i % 2 === 0 ? [0, 1] : [1, 0];
      for (const k of order) {
        const ms = await pair[k]!();
        if (ms === undefined) errors++;
        else if (i >= o.warmup) (k === 0 ? sample.direct : sample.guarded).push(ms);
      }
    }
    await task.complete();
    const d = percentiles(sample.direct);
    const g = percentiles(sample.guarded);
    return { direct: d, guarded: g, ratioP50: g.p50 / d.p50, ratioP99: g.p99 / d.p99, errors };
  } finally {
    await broker.close();
    await direct.close();
    await asAgent.close();
    await guard.close();
    await agentSource.close();
    await guardSource.close();
    await notes.close();
  }
}

export function formatGuardBench(r: GuardBenchResult): string {
  return table([
    ['', 'p50', 'p90', 'p99', 'n'],
    [
      'direct (HTTP, Go server)',
      fmtMs(r.direct.p50),
      fmtMs(r.direct.p90),
      fmtMs(r.direct.p99),
      String(r.direct.n),
    ],
    [
      'through taskpass guard (mTLS)',
      fmtMs(r.guarded.p50),
      fmtMs(r.guarded.p90),
      fmtMs(r.guarded.p99),
      String(r.guarded.n),
    ],
    ['ratio guard / direct', `${r.ratioP50.toFixed(2)}×`, '', `${r.ratioP99.toFixed(2)}×`, ''],
    ['added by the guard', fmtMs(r.guarded.p50 - r.direct.p50), '', fmtMs(r.guarded.p99 - r.direct.p99), ''],
  ]);
}

export async function guardMain(argv: string[]): Promise<void> {
  const { values } = parseArgs({
    args: argv,
    options: { calls: { type: 'string' }, quick: { type: 'boolean' } },
    allowPositionals: true,
  });
  const calls = Number(values.calls ?? (values.quick ? 300 : 2000));
  console.log(
    `[7] guard — read_note on the Go MCP server, direct vs through taskpass guard (node ${process.version})`,
  );
  const r = await runGuardBench({ calls, warmup: Math.min(200, calls), log: (l) => console.log(l) });
  console.log(formatGuardBench(r));
  if (r.errors > 0) {
    console.log(`${r.errors} calls failed`);
    process.exitCode = 1;
  }
}

if (process.argv[1] && import.meta.url === pathToFileURL(process.argv[1]).href) {
  await guardMain(process.argv.slice(2));
}
