// A tiny Workload API client for "no identity" tests: run it under another uid (see runAs in
// spire.ts) against SPIFFE_ENDPOINT_SOCKET and it prints one JSON line describing what each call
// returned: `{ fetchX509Context, fetchJwtSvid, source }`, each `{ ok: true, ids }` or `{ ok: false, code }`.
import { isSpiffeError } from '@taskpass/spiffe';
import { WorkloadApiClient, X509Source } from '@taskpass/spiffe/workload';

type Outcome = { ok: true; ids: string[] } | { ok: false; code: string; message: string };

async function attempt(fn: () => Promise<string[]>): Promise<Outcome> {
  try {
    return { ok: true, ids: await fn() };
  } catch (e) {
    return {
      ok: false,
      code: isSpiffeError(e) ? e.code : String((e as { code?: unknown }).code ?? 'UNKNOWN'),
      message: (e as Error).message,
    };
  }
}

const timeoutMs = Number(process.env.NO_IDENTITY_TIMEOUT_MS ?? 3000);
const client = new WorkloadApiClient();
const result = {
  uid: process.getuid?.(),
  fetchX509Context: await attempt(async () =>
    (await client.fetchX509Context()).svids.map((s) => s.id.toString()),
  ),
  fetchJwtSvid: await attempt(async () => [
    (await client.fetchJwtSvid({ audience: ['taskpass-test'] })).id.toString(),
  ]),
  source: await attempt(async () => {
    const source = await X509Source.create({ client, timeoutMs });
    try {
      return [source.getX509Svid().id.toString()];
    } finally {
      await source.close();
    }
  }),
};
client.close();
process.stdout.write(`${JSON.stringify(result)}\n`);
process.exit(0);
