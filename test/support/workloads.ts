/** Workload identities for end-to-end tests on the demo stack (examples/stack.ts). */
import { BrokerClient } from '@taskpass/agent-plugin';
import { createMtlsAgent, matchId, type TlsSource } from '@taskpass/spiffe';
import { pickByHint, X509Source } from '@taskpass/spiffe/workload';
import type { Agent } from 'undici';
import type { Stack } from '../../examples/stack.ts';

/** A live X.509 source on the stack's Workload API that presents the SVID of the entry with `hint`. */
export function sourceByHint(stack: Stack, hint: string): Promise<X509Source> {
  return X509Source.create({ address: stack.spire.address, picker: pickByHint(hint) });
}

/**
 * Registers one more workload on the stack's SPIRE (as the same uid, told apart by `hint`), waits
 * until the Workload API serves it, and returns its source.
 */
export async function registerWorkload(
  stack: Stack,
  entry: { spiffeId: string; hint: string; entryId: string },
): Promise<X509Source> {
  await stack.spire.createEntry(entry);
  await stack.spire.waitForIdentity(entry.spiffeId);
  return sourceByHint(stack, entry.hint);
}

/** The demo agent's side of a stack: its live SVID, an mTLS connection to the desk, a broker client. */
export interface AgentSide {
  source: X509Source;
  /** The agent's mTLS connection to the ticket desk (the desk authenticated by its SPIFFE ID). */
  toDesk: Agent;
  /** The agent's broker client over mTLS. */
  broker: BrokerClient;
  close(): Promise<void>;
}

/** Connects as the stack's agent (its entry's hint): what most end-to-end tests start with. */
export async function agentSide(stack: Stack): Promise<AgentSide> {
  const source = await sourceByHint(stack, stack.hints.agent);
  const toDesk = createMtlsAgent(source as TlsSource, matchId(stack.ids.tickets));
  const broker = new BrokerClient({
    url: stack.urls.broker,
    auth: { kind: 'mtls', source: source as TlsSource, brokerId: stack.ids.broker },
  });
  return {
    source,
    toDesk,
    broker,
    async close() {
      await broker.close();
      await toDesk.close();
      await source.close();
    },
  };
}
