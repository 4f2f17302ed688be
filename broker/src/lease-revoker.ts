// The revocation outbox's worker (docs/vault.md, "Downstream credentials leased to a task"): takes
// the leases the store says are due (their task ended or expired) and revokes them in Vault
// (`sys/leases/revoke`). A lease's record is deleted only once Vault confirmed; a failed attempt
// (Vault down, sealed, refusing) puts it back with exponential backoff. The records are durable,
// so a broker restart, or another replica, carries on where this one stopped; revoking twice is
// harmless (Vault answers 204 for a lease it no longer knows).
import type { Logger } from 'pino';
import type { AuditLog } from './audit.ts';
import type { LeaseRecord, Store } from './store/types.ts';

type LeaseStore = Pick<Store, 'dueLeases' | 'countDueLeases' | 'leaseRevoked' | 'leaseRetry'>;

export interface LeaseRevokerOptions {
  store: LeaseStore;
  /** Revokes one lease in Vault; resolves once Vault confirmed ({@link VaultClient.revokeLease}). */
  revoke: (leaseId: string) => Promise<void>;
  /** Epoch seconds (default: the system clock). */
  now?: () => number;
  /** Pause between passes, ms (default 2000). */
  intervalMs?: number;
  /** Backoff after the n-th failed attempt: min(maxSec, baseSec · 2^(n−1)) (defaults 2 s, 300 s). */
  backoff?: { baseSec: number; maxSec: number };
  /** Most leases one pass takes (default 100). */
  batch?: number;
  /** Called after each pass with the leases still due (the `taskpass_vault_leases_pending` gauge). */
  onPending?: (pending: number) => void;
  audit?: AuditLog;
  logger?: Logger;
}

/** Seconds to wait after the `attempts`-th failure. */
export function backoffSec(attempts: number, b = { baseSec: 2, maxSec: 300 }): number {
  return Math.min(b.maxSec, b.baseSec * 2 ** Math.max(0, attempts - 1));
}

export class LeaseRevoker {
  readonly #o: LeaseRevokerOptions;
  readonly #now: () => number;
  #timer: NodeJS.Timeout | undefined;
  #pass: Promise<unknown> = Promise.resolve();
  #stopped = true;

  constructor(opts: LeaseRevokerOptions) {
    this.#o = opts;
    this.#now = opts.now ?? (() => Math.floor(Date.now() / 1000));
  }

  /** Starts the loop (a first pass right away). */
  start(): void {
    if (!this.#stopped) return;
    this.#stopped = false;
    this.#schedule(0);
  }

  /** Stops the loop and waits for a pass in progress. */
  async stop(): Promise<void> {
    this.#stopped = true;
    if (this.#timer) clearTimeout(this.#timer);
    this.#timer = undefined;
    await this.#pass;
  }

  #schedule(ms: number): void {
    if (this.#stopped) return;
    this.#timer = setTimeout(() => {
      this.#pass = this.runOnce()
        .catch((e: unknown) => this.#o.logger?.warn({ err: e }, 'lease revocation pass failed'))
        .finally(() => this.#schedule(this.#o.intervalMs ?? 2000));
    }, ms);
    this.#timer.unref();
  }

  /** One pass: revokes every lease due now (at most `batch`). Resolves with what happened. */
  async runOnce(): Promise<{ revoked: number; failed: number; pending: number }> {
    const { store } = this.#o;
    const now = this.#now();
    let revoked = 0;
    let failed = 0;
    for (const lease of await store.dueLeases(now, this.#o.batch ?? 100)) {
      if (await this.#revokeOne(lease, now)) revoked++;
      else failed++;
    }
    const pending = await store.countDueLeases(this.#now());
    this.#o.onPending?.(pending);
    return { revoked, failed, pending };
  }

  async #revokeOne(l: LeaseRecord, now: number): Promise<boolean> {
    const { store, audit, logger } = this.#o;
    const fields = { task: l.taskId, path: l.path, lease: l.leaseId };
    try {
      await this.#o.revoke(l.leaseId);
    } catch (e) {
      const attempts = l.attempts + 1;
      await store.leaseRetry(l.taskId, l.path, l.leaseId, now + backoffSec(attempts, this.#o.backoff));
      audit?.record({ event: 'lease.revoke_failed', ...fields, attempts, reason: errorMessage(e) });
      logger?.warn({ ...fields, attempts, err: errorMessage(e) }, 'lease revocation failed; will retry');
      return false;
    }
    await store.leaseRevoked(l.taskId, l.path, l.leaseId);
    audit?.record({ event: 'lease.revoked', ...fields, status: l.state });
    return true;
  }
}

const errorMessage = (e: unknown): string => (e instanceof Error ? e.message : String(e));
