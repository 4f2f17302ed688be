// Section 5 — signing: call tokens minted with the Vault Transit signer (a real Vault of its own,
// loopback HTTP, kept-alive connections, batch_input) next to the broker's local signer, the same
// claims and the same number of concurrent mints, in one run: the ratio is what signing in Vault
// costs per token. The Vault is started with a root token (a bench, not a deployment).
import {
  AesGcmKeyWrapper,
  generateKek,
  mintTokenWith,
  SigningKeys,
  SqliteStore,
  TransitSigner,
  VaultClient,
} from '@taskpass/broker';
import { startVault } from '../harness/vault.ts';

export interface TransitResult {
  localRate: number;
  transitRate: number;
  /** transit ÷ local throughput. */
  ratio: number;
  /** Mean signatures per batch_input request. */
  meanBatch: number;
}

type Key = Parameters<typeof mintTokenWith>[0];

/** Mints with `concurrency` callers for `ms`; tokens per second. */
async function rate(current: () => Key, ms: number, concurrency: number): Promise<number> {
  const until = performance.now() + ms;
  let n = 0;
  const worker = async () => {
    while (performance.now() < until) {
      const iat = Math.floor(Date.now() / 1000);
      await mintTokenWith(current(), {
        issuer: 'https://broker.bench',
        sub: 'alice',
        agent: 'spiffe://taskpass.local/agents/support/triage-bot',
        audience: 'https://tickets.taskpass.local/mcp',
        iat,
        exp: iat + 60,
        taskId: 'tsk_bench',
        detail: { type: 'mcp_tool_call', tool: 'get_ticket', resource: 'tickets/T-1', action: 'read' },
        singleUse: false,
        template: 'tickets-support-read',
      });
      n++;
    }
  };
  const started = performance.now();
  await Promise.all(Array.from({ length: concurrency }, worker));
  return (n * 1000) / (performance.now() - started);
}

export async function runTransit(opts: { ms: number; concurrency: number }): Promise<TransitResult> {
  const vault = await startVault();
  const store = new SqliteStore({ path: ':memory:' });
  try {
    await vault.api('POST', 'sys/mounts/transit', { type: 'transit' });
    const client = await VaultClient.connect({
      address: vault.address,
      auth: { method: 'token', token: vault.rootToken },
    });
    const schedule = { rotateEverySec: 86400, prepublishSec: 3600, maxTokenTtlSec: 300, autoStart: false };
    const transit = await TransitSigner.open(client, { ...schedule, key: 'bench' });
    await store.init();
    const local = await SigningKeys.open(store, {
      ...schedule,
      wrapper: new AesGcmKeyWrapper(generateKek('bench')),
    });
    // Warm-up of both (connections, JIT), then the measured runs back to back.
    await rate(() => transit.current(), 300, opts.concurrency);
    await rate(() => local.current(), 300, opts.concurrency);
    const localRate = await rate(() => local.current(), opts.ms, opts.concurrency);
    transit.batches.length = 0;
    const transitRate = await rate(() => transit.current(), opts.ms, opts.concurrency);
    const meanBatch = transit.batches.reduce((a, b) => a + b, 0) / Math.max(1, transit.batches.length);
    client.close();
    return { localRate, transitRate, ratio: transitRate / localRate, meanBatch };
  } finally {
    await store.close();
    await vault.stop();
  }
}
