// Section 2 — verification: an MCP-like node:http server guarded by taskpassMiddleware (the real
// verifier: tool declaration, resource derivation, jose jwtVerify, claim checks, revocation lookup
// in a RevocationFeedClient following the broker's SSE feed) versus the same server doing only
// `jose.jwtVerify` with the same key on the same tools/call requests. Plain HTTP keep-alive on both
// (no TLS on either side: TLS would cost both alike). The broker binds the tokens to the agent's
// certificate (`cnf`), which the verifier enforces, so the subject sits behind a "proxy" on
// loopback that forwards the agent certificate in `Client-Cert` (RFC 9440): the cnf check is measured.
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import { X509Certificate } from 'node:crypto';
import type { AddressInfo } from 'node:net';
import { importJWK, type JWK, jwtVerify } from 'jose';
import {
  createVerifier,
  RevocationFeedClient,
  type TaskpassRequest,
  taskpassMiddleware,
} from '@taskpass/verifier';
import { AUDIENCE, type BenchEnv, ISSUER, issueToken, openTasks } from './lib/env.ts';
import { LoadClient, type LoadResult, type PreparedRequest } from './lib/load.ts';
import { fmtRate, median, type Percentiles, percentiles, table } from './lib/stats.ts';
import { indent, latRow } from './issuance.ts';

export interface VerificationOptions {
  rounds: number;
  roundMs: number;
  warmupMs: number;
  latencyMs: number;
  concurrency: number;
  tokens: number;
}

export interface VerificationResult {
  subjectRate: number;
  baselineRate: number;
  ratio: number;
  roundRatios: number[];
  latencyRate: number;
  subjectLatency: Percentiles;
  baselineLatency: Percentiles;
  errors: number;
}

const result = (id: unknown) =>
  JSON.stringify({ jsonrpc: '2.0', id, result: { content: [{ type: 'text', text: 'ticket: open' }] } });

function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<Server> {
  const server = createServer({ keepAliveTimeout: 60_000 }, handler);
  return new Promise((resolve) => server.listen(0, '127.0.0.1', () => resolve(server)));
}
const originOf = (s: Server) => `http://127.0.0.1:${(s.address() as AddressInfo).port}`;
const closeServer = (s: Server) =>
  new Promise<void>((resolve) => {
    s.closeAllConnections();
    s.close(() => resolve());
  });

export async function runVerification(env: BenchEnv, o: VerificationOptions): Promise<VerificationResult> {
  const feed = new RevocationFeedClient({ brokerUrl: env.brokerUrl, dispatcher: env.verifierDispatcher() });
  await feed.ready(10_000);
  const jwks = env.jwks();
  const verifier = createVerifier({
    issuer: ISSUER,
    audience: AUDIENCE,
    jwks: jwks as never,
    tools: { get_ticket: { action: 'read', resource: 'tickets/{ticket_id}' } },
    revocation: feed,
  });
  const guard = taskpassMiddleware(verifier, { trustedProxies: ['127.0.0.1', '::1'] });
  const clientCert = `:${new X509Certificate(env.agent.cert).raw.toString('base64')}:`;
  const subject = await listen((req, res) =>
    guard(req, res, () => {
      res.writeHead(200, { 'content-type': 'application/json' });
      res.end(result(((req as TaskpassRequest).body as { id?: unknown }).id));
    }),
  );

  // The baseline: the same body handling, then one jose jwtVerify with the current key.
  const kid = env.keys.current().kid;
  const jwk = jwks.keys.find((k) => k.kid === kid) as JWK;
  const key = await importJWK(jwk, 'ES256');
  const baseline = await listen(async (req, res) => {
    const chunks: Buffer[] = [];
    for await (const c of req) chunks.push(c as Buffer);
    const body = JSON.parse(Buffer.concat(chunks).toString('utf8')) as { id?: unknown };
    const auth = req.headers.authorization ?? '';
    try {
      await jwtVerify(auth.slice(7), key, { issuer: ISSUER, audience: AUDIENCE, algorithms: ['ES256'] });
    } catch {
      res.writeHead(401).end();
      return;
    }
    res.writeHead(200, { 'content-type': 'application/json' });
    res.end(result(body.id));
  });

  // Real call tokens from the broker (get_ticket, read: reusable until exp, 60 s). Minted afresh
  // before every run so that none expires mid-run.
  const tasks = await openTasks(env, 20);
  const mint = async (): Promise<PreparedRequest[]> => {
    const out: PreparedRequest[] = [];
    for (let i = 0; i < o.tokens; i++) {
      const ticket = `T-${i}`;
      const t = await issueToken(env, tasks[i % tasks.length]!, ticket);
      out.push({
        method: 'POST',
        path: '/mcp',
        headers: {
          'content-type': 'application/json',
          accept: 'application/json, text/event-stream',
          authorization: `Bearer ${t.access_token}`,
          'client-cert': clientCert,
        },
        body: JSON.stringify({
          jsonrpc: '2.0',
          id: i,
          method: 'tools/call',
          params: { name: 'get_ticket', arguments: { ticket_id: ticket } },
        }),
      });
    }
    return out;
  };

  const subjLoad = new LoadClient({ origin: originOf(subject), connections: o.concurrency });
  const baseLoad = new LoadClient({ origin: originOf(baseline), connections: o.concurrency });
  let errors = 0;
  const run = async (
    what: string,
    c: LoadClient,
    job: Parameters<LoadClient['run']>[0],
  ): Promise<LoadResult> => {
    const r = await c.run(job);
    errors += r.errors;
    if (r.errors)
      console.log(`  ! ${what}: ${r.errors} failed ${JSON.stringify(r.statuses)}: ${r.firstError}`);
    return r;
  };
  const closed = (requests: PreparedRequest[]) => ({
    kind: 'closed' as const,
    concurrency: o.concurrency,
    warmupMs: o.warmupMs,
    durationMs: o.roundMs,
    requests,
    offset: 0,
  });
  const rate = (r: LoadResult) => (r.ok / r.elapsedMs) * 1000;

  const subjRates: number[] = [];
  const baseRates: number[] = [];
  const roundRatios: number[] = [];
  const rows: string[][] = [['round', 'raw jwtVerify', 'taskpassMiddleware', 'ratio']];
  for (let i = 0; i < o.rounds; i++) {
    const reqs = await mint();
    let b: LoadResult;
    let s: LoadResult;
    if (i % 2 === 0) {
      b = await run('raw jwtVerify', baseLoad, closed(reqs));
      s = await run('middleware', subjLoad, closed(reqs));
    } else {
      s = await run('middleware', subjLoad, closed(reqs));
      b = await run('raw jwtVerify', baseLoad, closed(reqs));
    }
    baseRates.push(rate(b));
    subjRates.push(rate(s));
    roundRatios.push(rate(s) / rate(b));
    rows.push([String(i + 1), fmtRate(rate(b)), fmtRate(rate(s)), (rate(s) / rate(b)).toFixed(2)]);
  }
  const subjectRate = median(subjRates);
  const baselineRate = median(baseRates);
  rows.push(['median', fmtRate(baselineRate), fmtRate(subjectRate), median(roundRatios).toFixed(2)]);
  console.log(
    `  saturation, closed loop, ${o.concurrency} keep-alive HTTP connections, ${o.roundMs / 1000} s per run:`,
  );
  console.log(indent(table(rows)));

  const latencyRate = Math.max(50, Math.round(subjectRate / 2));
  const reqs = await mint();
  const open = {
    kind: 'open' as const,
    rate: latencyRate,
    warmupMs: o.warmupMs,
    durationMs: o.latencyMs,
    requests: reqs,
    offset: 0,
  };
  const sl = await run('middleware', subjLoad, open);
  const bl = await run('raw jwtVerify', baseLoad, open);
  const subjectLatency = percentiles(sl.latencies);
  const baselineLatency = percentiles(bl.latencies);
  console.log(
    `  latency at ${fmtRate(latencyRate)} (half the middleware's saturation), open loop, ${o.latencyMs / 1000} s:`,
  );
  console.log(
    indent(
      table([
        ['target', 'n', 'p50', 'p90', 'p99', 'max'],
        latRow('raw jwtVerify', baselineLatency),
        latRow('taskpassMiddleware', subjectLatency),
      ]),
    ),
  );

  await subjLoad.close();
  await baseLoad.close();
  await closeServer(subject);
  await closeServer(baseline);
  await feed.close();
  return {
    subjectRate,
    baselineRate,
    ratio: median(roundRatios),
    roundRatios,
    latencyRate,
    subjectLatency,
    baselineLatency,
    errors,
  };
}
