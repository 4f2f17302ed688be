// Starts a throwaway SPIRE (server + agent), registers this uid as spiffe://taskpass.local/whoami,
// and prints what our Workload API client sees: SPIFFE ID, trust domain, X.509-SVID expiry and
// serial, bundle size, and the claims of a JWT-SVID (never the token or any key). Then stops SPIRE.
//
//   node --conditions=taskpass:source --import tsx scripts/whoami.ts
import { TrustDomain } from '@taskpass/spiffe';
import { WorkloadApiClient, X509Source } from '@taskpass/spiffe/workload';
import { startSpire } from '../harness/spire.ts';

const ID = 'spiffe://taskpass.local/whoami';
const AUDIENCE = 'taskpass-demo';

const out = (line: string) => process.stdout.write(`${line}\n`);

async function main(): Promise<void> {
  const started = Date.now();
  await using spire = await startSpire();
  out(`SPIRE up in ${Date.now() - started} ms; Workload API at ${spire.address}`);
  const uid = process.getuid?.() ?? 0;
  await spire.createEntry({ spiffeId: ID, selectors: [`unix:uid:${uid}`] });
  await spire.waitForIdentity(ID);

  await using source = await X509Source.create({ address: spire.address, timeoutMs: 20_000 });
  const svid = source.getX509Svid();
  const td = TrustDomain.parse(spire.trustDomain);
  const bundle = source.getX509BundleForTrustDomain(td);
  out(`SPIFFE ID:       ${svid.id.toString()}`);
  out(`trust domain:    ${svid.id.trustDomain.toString()}`);
  out(
    `X.509-SVID:      serial ${svid.certificates[0]?.serialNumber}, expires ${svid.expiresAt.toISOString()}`,
  );
  out(
    `X.509 bundle:    ${bundle?.authorities.length ?? 0} authorit${bundle?.authorities.length === 1 ? 'y' : 'ies'}`,
  );

  const client = new WorkloadApiClient({ address: spire.address });
  try {
    const jwt = await client.fetchJwtSvid({ audience: [AUDIENCE] });
    const exp = jwt.claims.exp;
    out(
      `JWT-SVID claims: sub=${String(jwt.claims.sub)} aud=${JSON.stringify(jwt.claims.aud)} exp=${String(exp)} (${jwt.expiresAt.toISOString()})`,
    );
  } finally {
    client.close();
  }
}

main().then(
  () => process.exit(0),
  (err: unknown) => {
    process.stderr.write(
      `whoami failed: ${err instanceof Error ? (err.stack ?? err.message) : String(err)}\n`,
    );
    process.exit(1);
  },
);
