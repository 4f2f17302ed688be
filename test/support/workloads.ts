/** Workload identities for end-to-end tests on the demo stack (examples/stack.ts). */
import { pickByHint, X509Source } from '@taskpass/spiffe/workload';
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
