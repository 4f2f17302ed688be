// Section 8 — what a decision point behind the templates costs (issue #11): one call decided by
// the templates alone (PolicySet.decide on policies/), then templates + OPA (a real OPA on the
// ticket desk's Rego, over keep-alive HTTP), templates + an AuthZEN 1.0 PDP (our client against a
// minimal in-process PDP: the protocol's cost, not a policy's), and templates + Cedar when the
// Cedar engine is built in (through createDecisionPoint). Sequential calls, one in flight; p50/p99
// of each and their ratio to templates alone, in one run.
//
//   npm run bench -- pdp [--calls N]      or
//   node --conditions=taskpass:source --import tsx bench/pdp.ts [--calls N]
import { createServer } from 'node:http';
import { join, resolve } from 'node:path';
import { pathToFileURL } from 'node:url';
import { parseArgs } from 'node:util';
import { createDecisionPoint, type DecisionPoint, loadPolicyDir, pdpInputOf } from '@taskpass/broker';
import { startOpa } from '../harness/opa.ts';
import { fmtMs, percentiles, table } from './lib/stats.ts';

const root = resolve(import.meta.dirname, '..');
const AGENT = 'spiffe://taskpass.local/agents/support-bot';
const USER = {
  iss: 'https://idp.taskpass.local',
  sub: 'alice',
  claims: { groups: ['support'], region: 'eu' },
};
const CALL = {
  audience: 'https://tickets.taskpass.local/mcp',
  tool: 'get_ticket',
  resource: 'tickets/T-1002',
  action: 'read' as const,
};

/** A minimal AuthZEN 1.0 PDP: every evaluation allowed. */
async function minimalAuthzenPdp(): Promise<{ url: string; close(): Promise<void> }> {
  const srv = createServer((req, res) => {
    req.resume();
    req.on('end', () => {
      res.setHeader('content-type', 'application/json');
      res.end('{"decision":true}');
    });
  });
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  return {
    url: `http://127.0.0.1:${(srv.address() as { port: number }).port}`,
    close: async () => {
      srv.closeAllConnections();
      await new Promise((r) => srv.close(r));
    },
  };
}

export async function runPdpBench(o: { calls: number; log?: (l: string) => void }) {
  const log = o.log ?? (() => {});
  const loaded = await loadPolicyDir(join(root, 'policies'));
  if (!loaded.ok) throw new Error('policies/ does not load');
  const set = loaded.set;
  const templates = () => {
    const d = set.decide({ agent: AGENT, user: USER, ...CALL, history: [] as never });
    if (!d.allow) throw new Error(`templates deny the bench call: ${d.reason}`);
    return d;
  };
  const input = () =>
    pdpInputOf({
      agent: AGENT,
      user: USER,
      task: { id: 'tsk_bench', purpose: 'bench', createdAt: Math.floor(Date.now() / 1000) },
      call: CALL,
      templates: templates().templates,
      now: Date.now(),
    });
  const opa = await startOpa();
  await opa.putData('ticket_desk/business_hours', { start: 0, end: 24 });
  const authzen = await minimalAuthzenPdp();
  const points: [string, DecisionPoint][] = [
    [
      'templates + OPA',
      await createDecisionPoint({
        name: 'desk',
        kind: 'opa',
        url: opa.url,
        path: 'taskpass/ticket_desk/decision',
        timeoutMs: 2000,
      }),
    ],
    [
      'templates + AuthZEN',
      await createDecisionPoint({ name: 'az', kind: 'authzen', url: authzen.url, timeoutMs: 2000 }),
    ],
  ];
  try {
    points.push([
      'templates + Cedar',
      await createDecisionPoint({ name: 'cedar', kind: 'cedar', policies: join(root, 'policies', 'cedar') }),
    ]);
  } catch (e) {
    log(`Cedar not measured: ${(e as Error).message.split('\n')[0]}`);
  }
  const measure = async (decide: () => Promise<boolean>) => {
    for (let i = 0; i < Math.min(200, o.calls); i++) await decide();
    const ms: number[] = [];
    for (let i = 0; i < o.calls; i++) {
      const t = performance.now();
      if (!(await decide())) throw new Error('a bench decision was denied');
      ms.push(performance.now() - t);
    }
    return percentiles(ms);
  };
  try {
    const alone = await measure(async () => templates().allow);
    const rows = [['decision', 'p50', 'p99', 'p50 ÷ templates alone']];
    rows.push(['templates alone', fmtMs(alone.p50), fmtMs(alone.p99), '1.0']);
    for (const [what, dp] of points) {
      const p = await measure(async () => {
        templates();
        return (await dp.decide(input())).allow;
      });
      rows.push([what, fmtMs(p.p50), fmtMs(p.p99), (p.p50 / alone.p50).toFixed(1)]);
    }
    return rows;
  } finally {
    await Promise.all(points.map(([, dp]) => dp.close()));
    await authzen.close();
    await opa.close();
  }
}

export async function pdpMain(argv: readonly string[]): Promise<void> {
  const { values } = parseArgs({ args: [...argv], options: { calls: { type: 'string', default: '2000' } } });
  console.log('[10] decision cost per engine — templates alone vs templates + a decision point');
  const rows = await runPdpBench({ calls: Number(values.calls), log: (l) => console.log(l) });
  console.log(table(rows));
}

if (import.meta.url === pathToFileURL(process.argv[1] ?? '').href) await pdpMain(process.argv.slice(2));
