// The audit trail: one structured record per decision (task opened, token issued or denied, task
// completed or revoked, token revoked). Records carry identities, task ids and jtis so an incident
// can be reconstructed — never a token, a key or a user-token claim set.
import { createWriteStream } from 'node:fs';
import pino, { type Logger } from 'pino';

/** What happened. */
export type AuditEventKind =
  | 'task.opened'
  | 'task.denied'
  | 'token.issued'
  | 'token.denied'
  | 'session.issued'
  | 'task.completed'
  | 'task.revoked'
  | 'token.revoked';

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
}

/** Writes audit records. */
export interface AuditLog {
  record(e: AuditEvent): void;
}

const FIELDS: readonly (keyof AuditEvent)[] = [
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
];

/**
 * Creates the audit log. `destination`: `log` (a child of the broker logger with `audit: true`),
 * `stdout`, `stderr`, or a file path (appended, JSON lines).
 */
export function createAuditLog(logger: Logger, destination = 'log'): AuditLog {
  let out: Logger;
  if (destination === 'log') out = logger.child({ audit: true });
  else {
    const stream =
      destination === 'stdout'
        ? pino.destination(1)
        : destination === 'stderr'
          ? pino.destination(2)
          : createWriteStream(destination, { flags: 'a' });
    out = pino({ level: 'info', base: { audit: true } }, stream);
  }
  return {
    record(e) {
      // Copy whitelisted fields only: an accidental extra property cannot smuggle a token in.
      const rec: Record<string, unknown> = { event: e.event };
      for (const f of FIELDS) if (e[f] !== undefined) rec[f] = e[f];
      out.info(rec, e.event);
    },
  };
}
