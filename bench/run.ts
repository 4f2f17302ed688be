// Taskpass benchmarks (issues #3 and #4): `npm run bench`, `npm run bench -- --quick`,
// `npm run bench -- --only issuance,verification,revocation,feed,spire,scale,workers`; the soak (issue #7, 10
// minutes by default): `npm run bench -- soak [--minutes N]`; the guard (issue #14): `npm run bench --
// guard`; decision points (issue #11): `npm run bench -- pdp`; where to sign (issue #13): `npm run bench --
// signing`.
// See bench/README.md.
import { cpus, loadavg, totalmem } from 'node:os';
import { runFeedSnapshot } from './feed-snapshot.ts';
import { guardMain } from './guard.ts';
import { runIssuance } from './issuance.ts';
import { pdpMain } from './pdp.ts';
import { startBenchEnv } from './lib/env.ts';
import { fmtMs, fmtRate, table } from './lib/stats.ts';
import { runRevocation } from './revocation.ts';
import { runScale } from './scale.ts';
import { runTransit } from './transit.ts';
import { signingMain } from './signing.ts';
import { soakMain } from './soak.ts';
import { formatSpireBench, runSpireBench } from './spire.ts';
import { runVerification } from './verification.ts';
import { runWorkers } from './workers.ts';

const args = process.argv.slice(2);
const quick = args.includes('--quick');
const onlyArg = args.find((a) => a.startsWith('--only'));
const only = onlyArg
  ? new Set((onlyArg.includes('=') ? onlyArg.split('=')[1]! : args[args.indexOf(onlyArg) + 1]!).split(','))
  : undefined;
const want = (s: string) => !only || only.has(s);

const indent = (s: string) => s.replace(/^/gm, '  ');

type Row = [what: string, target: string, measured: string, verdict: string];
const verdict = (ok: boolean) => (ok ? 'PASS' : 'MISS');

async function main(): Promise<void> {
  const cpu = cpus();
  const started = performance.now();
  const machine = `node ${process.version}, ${cpu.length} cpus (${cpu[0]?.model.trim() ?? '?'}), ${Math.round(totalmem() / 2 ** 30)} GiB, load average ${loadavg()[0]!.toFixed(2)} at start`;
  console.log(`Taskpass benchmarks${quick ? ' (--quick)' : ''}\n${machine}`);
  const env = await startBenchEnv();
  const rows: Row[] = [];
  const info: string[] = [];
  try {
    if (want('issuance')) {
      console.log('\n[1] issuance — POST /v1/tasks/:id/tokens vs a bare fastify route signing one ES256 JWT');
      const r = await runIssuance(env, {
        rounds: 3,
        roundMs: quick ? 1500 : 3000,
        warmupMs: 500,
        latencyMs: quick ? 2000 : 4000,
        tasks: quick ? 500 : 1500,
        concurrency: 16,
      });
      rows.push([
        'issuance throughput ÷ bare sign route',
        '≥ 0.75',
        `${r.ratio.toFixed(2)} (${fmtRate(r.brokerRate)} vs ${fmtRate(r.baselineRate)})`,
        verdict(r.ratio >= 0.75 && r.errors === 0),
      ]);
      rows.push([
        `issuance p99 at half load (${fmtRate(r.latencyRate)})`,
        '≤ 5 ms',
        `${fmtMs(r.brokerLatency.p99)} (p50 ${fmtMs(r.brokerLatency.p50)}; the disk's fdatasync p99 ${fmtMs(r.fdatasync.p99)})`,
        verdict(r.brokerLatency.p99 <= 5 && r.errors === 0),
      ]);
      if (r.brokerCpuUs !== undefined && r.baselineCpuUs !== undefined) {
        info.push(
          `main-thread CPU per request: broker ${Math.round(r.brokerCpuUs)} µs, bare route ${Math.round(r.baselineCpuUs)} µs (bare ÷ broker = ${(r.baselineCpuUs / r.brokerCpuUs).toFixed(2)})`,
        );
      }
      info.push(
        `for comparison, chain parsed once per connection but verified on every request (no identity cache): issuance ÷ bare = ${r.cachedChainRatio.toFixed(2)} (${fmtRate(r.cachedChainRate)})`,
        `what-if, records off (no issued-call write, audit line, decision record or request line): issuance ÷ bare = ${r.recordsOffRatio.toFixed(2)} (${fmtRate(r.recordsOffRate)}), main-thread CPU ${r.recordsOffCpuUs === undefined ? '—' : `${Math.round(r.recordsOffCpuUs)} µs`} per request, p99 at half load ${fmtMs(r.recordsOffLatency.p99)}`,
      );
      if (r.errors) info.push(`issuance: ${r.errors} failed requests`);
    }
    if (want('verification')) {
      console.log(
        '\n[2] verification — taskpassMiddleware vs raw jose jwtVerify on the same tools/call requests',
      );
      const r = await runVerification(env, {
        rounds: 3,
        roundMs: quick ? 1500 : 3000,
        warmupMs: 500,
        latencyMs: quick ? 2000 : 4000,
        concurrency: 16,
        tokens: 200,
      });
      rows.push([
        'verification throughput ÷ raw jwtVerify',
        '≥ 0.90',
        `${r.ratio.toFixed(2)} (${fmtRate(r.subjectRate)} vs ${fmtRate(r.baselineRate)})`,
        verdict(r.ratio >= 0.9 && r.errors === 0),
      ]);
      rows.push([
        `verification p50 / p99 at half load (${fmtRate(r.latencyRate)})`,
        '—',
        `${fmtMs(r.subjectLatency.p50)} / ${fmtMs(r.subjectLatency.p99)} (raw: ${fmtMs(r.baselineLatency.p50)} / ${fmtMs(r.baselineLatency.p99)})`,
        'info',
      ]);
      if (r.errors) info.push(`verification: ${r.errors} failed requests`);
    }
    if (want('revocation')) {
      console.log(
        '\n[3] revocation propagation — complete a task, time until every verifier refuses its token',
      );
      const r = await runRevocation(env, { verifiers: 100, tasks: quick ? 10 : 30 });
      rows.push([
        `revocation p99, complete returned → refused (${r.fromReturn.n} samples)`,
        '≤ 50 ms',
        `${fmtMs(r.fromReturn.p99)} (p50 ${fmtMs(r.fromReturn.p50)}, max ${fmtMs(r.fromReturn.max)})`,
        verdict(r.fromReturn.p99 <= 50 && r.missed === 0 && r.notRefused === 0),
      ]);
      rows.push([
        'revocation p99, complete sent → refused',
        '—',
        `${fmtMs(r.fromSend.p99)} (p50 ${fmtMs(r.fromSend.p50)}, max ${fmtMs(r.fromSend.max)})`,
        'info',
      ]);
    }
    if (want('feed')) {
      console.log(
        '\n[4] revocation feed snapshot — a fresh verifier at N live revocations (SQLite, loopback)',
      );
      for (const size of quick ? [100_000] : [100_000, 1_000_000]) {
        const r = await runFeedSnapshot(size);
        console.log(
          `  ${size}: broker work per page of 1000 median ${fmtMs(r.pageMedianMs)}, max ${fmtMs(r.pageMaxMs)}; ready in ${fmtMs(r.readyMs)}; broker event-loop delay max ${fmtMs(r.loopMaxMs)} (p99 ${fmtMs(r.loopP99Ms)}; idle max ${fmtMs(r.idleLoopMaxMs)}); ${r.pings} pings meanwhile, slowest ${fmtMs(r.pingMaxMs)}`,
        );
        rows.push([
          `fresh verifier ready at ${size / 1000}k live revocations`,
          '—',
          `${fmtMs(r.readyMs)} (broker loop delay max ${fmtMs(r.loopMaxMs)}, slowest ping ${fmtMs(r.pingMaxMs)})`,
          'info',
        ]);
      }
    }
    if (want('spire')) {
      console.log(
        '\n[8] next to SPIRE — one client, sequential: a call token vs a JWT-SVID from a real SPIRE agent',
      );
      const r = await runSpireBench({
        calls: quick ? 200 : 1000,
        warmup: 50,
        log: (l) => console.log(`  ${l}`),
      });
      console.log(indent(formatSpireBench(r)));
      rows.push([
        'call token p50 (sequential) vs SPIRE JWT-SVID p50, new audience',
        '< SPIRE',
        `${fmtMs(r.callToken.p50)} vs ${fmtMs(r.jwtSvidNewAudience.p50)} (cached audience ${fmtMs(r.jwtSvidCached.p50)})`,
        verdict(r.callToken.p50 < r.jwtSvidNewAudience.p50 && r.errors === 0),
      ]);
      if (r.errors) info.push(`next to SPIRE: ${r.errors} failed requests`);
    }
    if (want('transit')) {
      console.log(
        '\n[11] signing — call tokens minted by Vault Transit vs the local signer (64 concurrent mints)',
      );
      const r = await runTransit({ ms: quick ? 2000 : 5000, concurrency: 64 });
      console.log(
        `  local ${fmtRate(r.localRate)}, Vault Transit ${fmtRate(r.transitRate)} (mean batch_input ${r.meanBatch.toFixed(1)} signatures)`,
      );
      rows.push(['Transit signing ÷ local signing (throughput)', '—', `${r.ratio.toFixed(3)}`, 'info']);
    }
  } finally {
    await env.close();
  }
  if (want('scale')) {
    console.log('\n[9] scale — issuance at a fixed 200/s with N tasks already in the store (SQLite)');
    const scale = await runScale({
      sizes: quick ? [1_000, 100_000] : [1_000, 100_000, 1_000_000],
      rate: 200,
      durationMs: quick ? 3000 : 6000,
      rounds: quick ? 2 : 3,
      log: (l) => console.log(`  ${l}`),
    });
    console.log(
      indent(
        table([
          ['tasks stored', 'p50', 'p99', 'p99 per round', 'max', 'errors', 'store file', 'process RSS'],
          ...scale.map((r) => [
            r.stored.toLocaleString('en'),
            fmtMs(r.latency.p50),
            fmtMs(r.latency.p99),
            r.roundP99s.map((v) => fmtMs(v)).join(', '),
            fmtMs(r.latency.max),
            String(r.errors),
            `${r.fileMiB.toFixed(0)} MiB`,
            `${r.rssMiB.toFixed(0)} MiB`,
          ]),
        ]),
      ),
    );
    const first = scale[0]!;
    const last = scale.at(-1)!;
    const growth = last.latency.p99 / first.latency.p99;
    // Queueing (p50 far above a token's cost) means the machine did not keep up with 200/s: the
    // growth then says nothing about the store.
    const sustained = scale.every((r) => r.latency.p50 < 50);
    rows.push([
      `issuance p99 at 200/s, ${last.stored.toLocaleString('en')} ÷ ${first.stored.toLocaleString('en')} tasks stored`,
      '≤ 1.5×',
      `${growth.toFixed(2)}× (${fmtMs(last.latency.p99)} vs ${fmtMs(first.latency.p99)})`,
      sustained ? verdict(growth <= 1.5 && scale.every((r) => r.errors === 0)) : 'n/a: 200/s not sustained',
    ]);
  }
  if (want('workers')) {
    console.log(
      '\n[12] several cores — issuance saturation, taskpass serve --workers 1 vs --workers 2 (Redis store)',
    );
    const r = await runWorkers(
      {
        rounds: quick ? 4 : 6,
        roundMs: quick ? 1500 : 3000,
        warmupMs: 500,
        tasks: quick ? 300 : 1000,
        concurrency: 16,
      },
      (l) => console.log(`  ${l}`),
    );
    rows.push([
      'issuance saturation, 2 workers ÷ 1 (Redis)',
      '—',
      `${r.ratio.toFixed(2)} (${fmtRate(r.two)} vs ${fmtRate(r.one)}; load ${r.load[0].toFixed(1)})`,
      r.errors ? `info (${r.errors} errors)` : 'info',
    ]);
    if (r.cpuUs[0] !== undefined && r.cpuUs[1] !== undefined) {
      info.push(
        `several cores: broker CPU per token (all processes) ${Math.round(r.cpuUs[0])} µs with 1 worker, ${Math.round(r.cpuUs[1])} µs with 2`,
      );
    }
  }
  console.log(`\nSummary — ${machine}; ${((performance.now() - started) / 1000).toFixed(0)} s`);
  console.log(table([['measure', 'target', 'measured', 'result'], ...rows]));
  for (const l of info) console.log(`  · ${l}`);
  if (rows.some((r) => r[3] === 'MISS'))
    console.log('  (MISS rows are reported, not failures: the exit code stays 0.)');
}

if (args[0] === 'soak') await soakMain(args.slice(1));
else if (args[0] === 'guard') await guardMain(args.slice(1));
else if (args[0] === 'pdp') await pdpMain(args.slice(1));
else if (args[0] === 'signing') await signingMain(args.slice(1));
else await main();
