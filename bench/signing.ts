// Where ES256 signing is cheapest for the broker's event loop (issue #13): node:crypto's
// synchronous sign on the main thread (what the broker does) against handing the signing input to
// a worker thread and awaiting the signature (16 in flight, as the issuance bench's callers).
// Prints tokens per second and the main thread's CPU per token for both, in one run.
//   npm run bench -- signing [--seconds N]
import { generateKeyPairSync, sign } from 'node:crypto';
import { Worker } from 'node:worker_threads';
import { mainThreadCpuMs } from './lib/cpu.ts';
import { fmtRate, table } from './lib/stats.ts';

// A call token's signing input is about 700 characters (header and claims, base64url).
const INPUT = Buffer.from(`${'eyJhbGciOiJFUzI1NiIsInR5cCI6ImF0K2p3dCJ9'}.${'x'.repeat(660)}`);

const WORKER = `
const { parentPort, workerData } = require('node:worker_threads');
const { sign } = require('node:crypto');
parentPort.on('message', (m) => {
  if (m === 'close') return parentPort.close();
  const sig = sign('sha256', m.input, { key: workerData.key, dsaEncoding: 'ieee-p1363' });
  parentPort.postMessage({ id: m.id, sig });
});
`;

interface Run {
  rate: number;
  cpuUs: number | undefined;
}

async function measure(seconds: number, signOne: () => Promise<Buffer>, inFlight: number): Promise<Run> {
  const end = performance.now() + seconds * 1000;
  const cpu0 = mainThreadCpuMs();
  const t0 = performance.now();
  let n = 0;
  await Promise.all(
    Array.from({ length: inFlight }, async () => {
      while (performance.now() < end) {
        await signOne();
        n++;
      }
    }),
  );
  const ms = performance.now() - t0;
  const cpu1 = mainThreadCpuMs();
  return {
    rate: (n / ms) * 1000,
    cpuUs: cpu0 === undefined || cpu1 === undefined ? undefined : ((cpu1 - cpu0) * 1000) / n,
  };
}

export async function signingMain(args: string[]): Promise<void> {
  const i = args.indexOf('--seconds');
  const seconds = i >= 0 ? Number(args[i + 1]) : 3;
  const { privateKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const inline = () => Promise.resolve(sign('sha256', INPUT, { key: privateKey, dsaEncoding: 'ieee-p1363' }));

  const worker = new Worker(WORKER, { eval: true, workerData: { key: privateKey } });
  const waiting = new Map<number, (sig: Buffer) => void>();
  worker.on('message', (m: { id: number; sig: Uint8Array }) => {
    waiting.get(m.id)?.(Buffer.from(m.sig));
    waiting.delete(m.id);
  });
  let seq = 0;
  const inWorker = () =>
    new Promise<Buffer>((resolve) => {
      const id = ++seq;
      waiting.set(id, resolve);
      worker.postMessage({ id, input: INPUT });
    });

  console.log(
    `Signing: main thread vs a worker thread, ${seconds} s per run, 16 in flight, 3 rounds alternating`,
  );
  const rows: string[][] = [['round', 'main thread', 'CPU/token', 'worker thread', 'main CPU/token']];
  await measure(0.5, inline, 16);
  await measure(0.5, inWorker, 16);
  for (let r = 1; r <= 3; r++) {
    const runs = r % 2 ? [inline, inWorker] : [inWorker, inline];
    const out = new Map<unknown, Run>();
    for (const f of runs) out.set(f, await measure(seconds, f, 16));
    const a = out.get(inline)!;
    const b = out.get(inWorker)!;
    const us = (x: number | undefined) => (x === undefined ? '—' : `${x.toFixed(1)} µs`);
    rows.push([String(r), fmtRate(a.rate), us(a.cpuUs), fmtRate(b.rate), us(b.cpuUs)]);
  }
  console.log(table(rows));
  worker.postMessage('close');
  await new Promise((r) => worker.once('exit', r));
}
