// Downstream credentials leased to a task (docs/vault.md): the broker reads a Vault secret for a
// task (e.g. `database/creds/ticket-desk`, a per-task PostgreSQL user), with a lease no longer than
// the task has left, records the lease on the task (never the secret) and hands the secret out
// once per task and path. The task's end makes the lease due in the revocation outbox
// (lease-revoker.ts).
import type { Logger } from 'pino';
import type { AuditLog } from './audit.ts';
import { BrokerError } from './errors.ts';
import type { Store, TaskRecord } from './store/types.ts';
import type { VaultClient, VaultResponse } from './vault.ts';

/** A secret leased to a task, as handed out (once) to the MCP server. */
export interface LeasedCredential {
  taskId: string;
  path: string;
  leaseId: string;
  /** The secret (e.g. `{ username, password }`). Never logged, never stored. */
  data: Record<string, unknown>;
  /** Epoch seconds: the lease's end (≤ the task's expiry). */
  expiresAt: number;
}

export interface LeasedCredentialsOptions {
  store: Pick<Store, 'getLease' | 'recordLease'>;
  vault: Pick<VaultClient, 'read' | 'write' | 'revokeLease'>;
  audit?: AuditLog;
  logger?: Logger;
}

export class LeasedCredentials {
  readonly #o: LeasedCredentialsOptions;

  constructor(opts: LeasedCredentialsOptions) {
    this.#o = opts;
  }

  /**
   * Leases the secret at `path` to the open `task` at `now` (epoch s). Throws TASKPASS_TASK_CLOSED /
   * TASKPASS_TASK_EXPIRED, TASKPASS_CREDENTIAL_ALREADY_ISSUED while the task holds a live lease on
   * the path, and TASKPASS_CREDENTIAL_UNAVAILABLE when Vault cannot lease it within the task's time.
   */
  async issue(
    task: TaskRecord,
    path: string,
    now: number,
    /** For the audit: the MCP server it is handed to, and the call token it was exchanged for. */
    on: { by?: string; jti?: string } = {},
  ): Promise<LeasedCredential> {
    assertOpen(task, now);
    const { store } = this.#o;
    if (((await store.getLease(task.id, path))?.expiresAt ?? 0) > now) throw alreadyIssued(path);
    const secret = await this.#lease(path, task.expiresAt - now);
    const credential: LeasedCredential = {
      taskId: task.id,
      path,
      leaseId: secret.leaseId,
      data: secret.data,
      expiresAt: now + secret.ttl,
    };
    const { recorded, lease } = await store
      .recordLease(
        { taskId: task.id, path, leaseId: secret.leaseId, issuedAt: now, expiresAt: credential.expiresAt },
        now,
      )
      .catch(async (e: unknown) => {
        await this.#revokeUnrecorded(credential);
        throw e;
      });
    if (!recorded) {
      // A concurrent request, or the task's end, came first: this lease is nobody's.
      await this.#revokeUnrecorded(credential);
      if (lease && lease.state === 'active') throw alreadyIssued(path);
      throw new BrokerError('TASKPASS_TASK_CLOSED', `task ${task.id} ended while its credential was leased`);
    }
    this.#o.audit?.record({
      event: 'lease.issued',
      task: task.id,
      agent: task.agent,
      path,
      lease: secret.leaseId,
      exp: credential.expiresAt,
      by: on.by,
      jti: on.jti,
    });
    return credential;
  }

  /** Reads a leased secret whose lease ends within `maxTtl` seconds (shortened by renewal if need be). */
  async #lease(
    path: string,
    maxTtl: number,
  ): Promise<{ leaseId: string; data: Record<string, unknown>; ttl: number }> {
    const { vault } = this.#o;
    let res: VaultResponse;
    try {
      res = await vault.read(path);
    } catch (e) {
      throw unavailable(path, e);
    }
    const leaseId = res.lease_id;
    if (!leaseId || !res.data) throw unavailable(path, new Error('Vault answered without a lease'));
    let ttl = res.lease_duration ?? Number.POSITIVE_INFINITY;
    try {
      if (ttl > maxTtl) {
        // Vault's lease manager sets the lease to end `increment` seconds from now.
        const renewed = await vault.write('sys/leases/renew', { lease_id: leaseId, increment: maxTtl });
        ttl = renewed.lease_duration ?? Number.POSITIVE_INFINITY;
      }
      if (ttl > maxTtl || ttl <= 0) throw new Error(`lease of ${ttl}s, the task has ${maxTtl}s left`);
    } catch (e) {
      await this.#revokeUnrecorded({ path, leaseId });
      throw unavailable(path, e);
    }
    return { leaseId, data: res.data, ttl };
  }

  // A lease that is on no task: revoked now, at best (it ends with its TTL, ≤ the task's, anyway).
  async #revokeUnrecorded(l: { path: string; leaseId: string }): Promise<void> {
    try {
      await this.#o.vault.revokeLease(l.leaseId);
    } catch (e) {
      this.#o.logger?.warn(
        { path: l.path, lease: l.leaseId, err: e instanceof Error ? e.message : String(e) },
        'could not revoke an unrecorded lease; it ends with its TTL',
      );
    }
  }
}

function assertOpen(task: TaskRecord, now: number): void {
  if (task.status !== 'open')
    throw new BrokerError('TASKPASS_TASK_CLOSED', `task ${task.id} is ${task.status}`);
  if (task.expiresAt <= now) throw new BrokerError('TASKPASS_TASK_EXPIRED', `task ${task.id} has expired`);
}

const alreadyIssued = (path: string) =>
  new BrokerError(
    'TASKPASS_CREDENTIAL_ALREADY_ISSUED',
    `the task already holds a live lease on ${path}; its secret is handed out once`,
  );

const unavailable = (path: string, e: unknown) =>
  new BrokerError(
    'TASKPASS_CREDENTIAL_UNAVAILABLE',
    `Vault could not lease ${path}: ${e instanceof Error ? e.message : String(e)}`,
  );
