// The audit trail: one structured record per decision (task opened, token issued or denied, task
// completed or revoked, token revoked). Records carry identities, task ids and jtis so an incident
// can be reconstructed — never a token, a key or a user-token claim set.
//
// The same records also go to the store as hash-chained decision records (decision-log.ts), kept
// for `audit.retention`, for the console; what follows is about this JSON stream.
//
// Retention: the broker does not delete audit records. To a file it appends JSON lines and, like
// Vault's file audit device or nginx, leaves rotation and retention to logrotate (or the log
// shipper): `reopen()` (SIGUSR2 in `taskpass serve`) makes it continue in a new file after the old
// one was moved away, so no record is lost and none is truncated. See docs/deploy.md "Audit log".
import pino, { type DestinationStream, type Logger } from 'pino';

/** What happened. */
export type AuditEventKind =
  | 'task.opened'
  | 'task.denied'
  | 'token.issued'
  | 'token.denied'
  | 'session.issued'
  | 'task.completed'
  | 'task.revoked'
  | 'token.revoked'
  | 'approval.requested'
  | 'approval.decided'
  | 'approval.refused'
  | 'approval.used'
  | 'approval.cancelled'
  | 'lease.issued'
  | 'lease.revoked'
  | 'lease.revoke_failed'
  | 'credential.denied';

/** One audit record. Only these fields are written (the logger is given nothing else). */
export interface AuditEvent {
  event: AuditEventKind;
  agent?: string | undefined;
  user?: string | undefined;
  task?: string | undefined;
  tool?: string | undefined;
  resource?: string | undefined;
  action?: string | undefined;
  audience?: string | undefined;
  template?: string | undefined;
  owner?: string | undefined;
  code?: string | undefined;
  reason?: string | undefined;
  jti?: string | undefined;
  status?: string | undefined;
  by?: string | undefined;
  exp?: number | undefined;
  /** Approval id. */
  approval?: string | undefined;
  /** The approver, as `sub` at `iss` (never their token or claims). */
  approver?: string | undefined;
  /** approve | deny. */
  decision?: string | undefined;
  /** The call's argument digest (never the arguments: they may be personal data). */
  args_sha256?: string | undefined;
  /** The decision point that denied a call (`opa/<name>`, `cedar/<name>`, `authzen/<name>`). */
  engine?: string | undefined;
  /** A Vault secret path leased to a task (`database/creds/ticket-desk`). */
  path?: string | undefined;
  /** The Vault lease id (an identifier, not the secret: the secret is never recorded). */
  lease?: string | undefined;
  /** Failed revocation attempts of a lease so far. */
  attempts?: number | undefined;
}

/** Writes audit records. */
export interface AuditLog {
  record(e: AuditEvent): void;
  /** Reopens the audit file by its path (after logrotate moved it); no-op for other destinations. */
  reopen?(): void;
  /** Flushes and closes the audit file; no-op for other destinations. */
  close?(): void;
  /**
   * Resolves once every record so far is durable in the store's decision records (the
   * DecisionRecorder; rejects when the store cannot take them). Awaited before answering a
   * revocation or an approval decision; absent on a plain log.
   */
  flush?(): Promise<void>;
}

/** The fields an audit record may carry, and nothing else. */
export const AUDIT_FIELDS: readonly (keyof AuditEvent)[] = [
  'agent',
  'user',
  'task',
  'tool',
  'resource',
  'action',
  'audience',
  'template',
  'owner',
  'code',
  'reason',
  'jti',
  'status',
  'by',
  'exp',
  'approval',
  'approver',
  'decision',
  'args_sha256',
  'path',
  'lease',
  'attempts',
];

/**
 * Creates the audit log. `destination`: `log` (a child of the broker logger with `audit: true`),
 * `stdout`, `stderr`, or a file path (appended, JSON lines).
 */
export function createAuditLog(logger: Logger, destination = 'log'): AuditLog {
  let out: Logger;
  let file: (DestinationStream & { reopen(): void; flushSync(): void; end(): void }) | undefined;
  if (destination === 'log') out = logger.child({ audit: true });
  else {
    if (destination !== 'stdout' && destination !== 'stderr') {
      // sonic-boom: appends, and can reopen the path (SIGUSR2 after logrotate's rename).
      file = pino.destination({ dest: destination, append: true, mkdir: true, sync: false });
    }
    const stream = file ?? pino.destination(destination === 'stdout' ? 1 : 2);
    out = pino({ level: 'info', base: { audit: true } }, stream);
  }
  return {
    reopen() {
      file?.reopen();
    },
    close() {
      if (!file) return;
      try {
        file.flushSync();
      } catch {
        // not yet open, or nothing buffered
      }
      file.end();
    },
    record(e) {
      // Copy whitelisted fields only: an accidental extra property cannot smuggle a token in.
      const rec: Record<string, unknown> = { event: e.event };
      for (const f of AUDIT_FIELDS) if (e[f] !== undefined) rec[f] = e[f];
      out.info(rec, e.event);
    },
  };
}
