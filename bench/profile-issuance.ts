// Profiles the broker's main thread while the issuance route is under closed-loop load (16
// keep-alive mTLS connections, or CONNS), the measured window only, and prints where its time
// went: self time by package or source file, the top functions, and the inclusive time of
// Taskpass's own functions. The profile is written for DevTools. Like `npm run bench`, it runs the
// built packages (what users run; build first):
//   npm run build && node --import tsx bench/profile-issuance.ts [--bare | --records-off] [seconds] [out.cpuprofile]
// With `--conditions=taskpass:source` it profiles the TypeScript sources through tsx instead.
import { writeFileSync } from 'node:fs';
import { Session } from 'node:inspector/promises';
import { SqliteStore } from '@taskpass/broker';
import { startBaseline } from './issuance.ts';
import { openTasks, startBenchEnv, tokenRequests } from './lib/env.ts';
import { LoadClient } from './lib/load.ts';

interface ProfileNode {
  id: number;
  callFrame: { functionName: string; url: string; lineNumber: number };
  children?: number[];
}
interface Profile {
  nodes: ProfileNode[];
  samples: number[];
  timeDeltas: number[];
}

const args = process.argv.slice(2).filter((a) => !a.startsWith('--'));
const seconds = Number(args[0] ?? 6);
const out = args[1] ?? 'issuance.cpuprofile';
const bare = process.argv.includes('--bare');
const recordsOff = process.argv.includes('--records-off');
const env = await startBenchEnv();
const tasks = await openTasks(env, 500);
// --bare: the bench's bare route (parse, sign, answer) instead of the broker, for comparison.
const baseline = bare ? await startBaseline(env) : undefined;
const requests = bare ? tokenRequests(tasks, () => '/sign') : tokenRequests(tasks);
const tls = { key: env.agent.key, cert: env.agent.cert, ca: env.agent.ca };
const conns = Number(process.env.CONNS ?? 16);
// --records-off: the bench's records-off broker (nothing written, no log lines; bench/lib/env.ts).
const origin = baseline?.origin ?? (recordsOff ? await env.startVariant({ records: false }) : env.brokerUrl);
const load = new LoadClient({ origin, tls, connections: conns });
const job = (durationMs: number, offset: number) =>
  ({ kind: 'closed', concurrency: conns, warmupMs: 0, durationMs, requests, offset }) as const;
const warm = await load.run(job(2000, 0));

const session = new Session();
session.connect();
await session.post('Profiler.enable');
await session.post('Profiler.setSamplingInterval', { interval: 100 });
await session.post('Profiler.start');
const r = await load.run(job(seconds * 1000, warm.sent));
const { profile } = (await session.post('Profiler.stop')) as { profile: Profile };
writeFileSync(out, JSON.stringify(profile));
console.log(`${((r.ok / r.elapsedMs) * 1000).toFixed(0)} tokens/s, ${r.errors} errors; profile in ${out}`);
if (env.store instanceof SqliteStore) console.log('writer thread:', await env.store.writerStats());

const where = (url: string) =>
  url === ''
    ? '(native)'
    : (url.match(/node_modules\/((@[^/]+\/)?[^/]+)/)?.[1] ?? url.replace(/^.*\/work\/[^/]+\//, ''));
const byNode = new Map(profile.nodes.map((n) => [n.id, n]));
const files = new Map<string, number>();
const fns = new Map<string, number>();
let total = 0;
profile.samples.forEach((id, i) => {
  const dt = profile.timeDeltas[i] ?? 0;
  const f = byNode.get(id)!.callFrame;
  total += dt;
  const file = f.url === '' ? `(native) ${f.functionName}` : where(f.url);
  files.set(file, (files.get(file) ?? 0) + dt);
  const fn = `${f.functionName || '(anonymous)'} ${where(f.url)}:${f.lineNumber + 1}`;
  fns.set(fn, (fns.get(fn) ?? 0) + dt);
});
// Inclusive time: each sample counts once for every distinct function on its stack.
const parent = new Map<number, number>();
for (const n of profile.nodes) for (const c of n.children ?? []) parent.set(c, n.id);
const inclusive = new Map<string, number>();
profile.samples.forEach((id, i) => {
  const dt = profile.timeDeltas[i] ?? 0;
  const seen = new Set<string>();
  for (let n: number | undefined = id; n !== undefined; n = parent.get(n)) {
    const f = byNode.get(n)!.callFrame;
    if (!/\/(src|dist)\//.test(f.url) || f.url.includes('node_modules')) continue;
    const fn = `${f.functionName || '(anonymous)'} ${where(f.url)}:${f.lineNumber + 1}`;
    if (seen.has(fn)) continue;
    seen.add(fn);
    inclusive.set(fn, (inclusive.get(fn) ?? 0) + dt);
  }
});
const top = (m: Map<string, number>, n: number) =>
  [...m]
    .sort((a, b) => b[1] - a[1])
    .slice(0, n)
    .map(([k, t]) => `  ${((100 * t) / total).toFixed(1).padStart(5)} %  ${k}`)
    .join('\n');
console.log(`\nself time by package or file:\n${top(files, 25)}\n\ntop functions:\n${top(fns, 25)}`);
console.log(`\ninclusive time, Taskpass's own functions:\n${top(inclusive, 40)}`);
await load.close();
await baseline?.close();
await env.close();
process.exit(0);
