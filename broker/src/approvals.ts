// Approvals (docs/approvals.md): a call that a template marks "not without a human" waits for a
// person with their own verified identity. The token side (asking, consuming) lives in service.ts
// `issueCall`; this module holds what the approval routes need: who is asking or deciding, views,
// visibility, the decision itself, and waiting for a change.
import { randomBytes } from 'node:crypto';
import type { ApprovalSubject, ApprovalView, ApproverRef } from '@taskpass/contract';
import type { AuditLog } from './audit.ts';
import type { WorkloadIdentity } from './auth.ts';
import type { BrokerConfig } from './config.ts';
import { BrokerError } from './errors.ts';
import type { BrokerMetrics } from './metrics.ts';
import { approverMayDecide } from './policy/engine.ts';
import type { PolicyUser } from './ports.ts';
import { type ApprovalRecord, effectiveStatus, type Store } from './store/types.ts';
import type { UserTokenVerifier, VerifiedUser } from './user-tokens.ts';

/** Approval ids: `apr_` + 128 random bits. */
export const newApprovalId = (): string => `apr_${randomBytes(16).toString('base64url')}`;

/** Where an approver opens approval `id` (`approvals.url`, default under the broker's issuer). */
export function approvalUrl(config: BrokerConfig, id: string): string {
  const template = config.approvals.url ?? `${config.issuer.replace(/\/$/, '')}/v1/approvals/{id}`;
  return template.replaceAll('{id}', encodeURIComponent(id));
}

/** What an approval asks, as approvers and the agent are shown it. */
export function approvalSubject(a: ApprovalRecord): ApprovalSubject {
  return {
    agent: a.agent,
    user: a.sub,
    task: { id: a.taskId, purpose: a.purpose },
    audience: a.audience,
    tool: a.tool,
    resource: a.resource,
    action: a.action,
    args_sha256: a.argsSha256,
    ...(a.arguments !== undefined ? { arguments: a.arguments } : {}),
    template: a.template,
  };
}

/** `GET /v1/approvals/:id` and each event of its stream. */
export function approvalView(config: BrokerConfig, a: ApprovalRecord, now: number): ApprovalView {
  return {
    id: a.id,
    status: effectiveStatus(a, now),
    created_at: a.createdAt,
    expires_at: a.expiresAt,
    approval_url: approvalUrl(config, a.id),
    request: approvalSubject(a),
    ...(a.approver && a.decidedAt !== undefined
      ? {
          decision: {
            decision: a.status === 'denied' ? ('deny' as const) : ('approve' as const),
            approver: a.approver,
            decided_at: a.decidedAt,
            ...(a.comment !== undefined ? { comment: a.comment } : {}),
          },
        }
      : {}),
  };
}

/** Is the approval still moving (pending or approved, not past its expiry)? */
export const isLive = (a: ApprovalRecord, now: number): boolean => {
  const s = effectiveStatus(a, now);
  return s === 'pending' || s === 'approved';
};

/** Who is calling an approval route: the agent that asked, or a person with their own token. */
export type ApprovalCaller =
  | { kind: 'agent'; agent: WorkloadIdentity }
  | { kind: 'approver'; user: VerifiedUser };

const approverRef = (u: VerifiedUser): ApproverRef => ({ iss: u.iss, sub: u.sub });
const asPolicyUser = (u: VerifiedUser): PolicyUser => ({ iss: u.iss, sub: u.sub, claims: u.claims });
const delegatingUser = (a: ApprovalRecord) => (a.userIssuer ? { iss: a.userIssuer, sub: a.sub } : undefined);

/**
 * Verifies an approver's own token: a user token of a trusted issuer minted for `approvals.audience`
 * (the verifier is built for that audience). A token that is ALSO valid for the delegation audience
 * is refused: the agent may hold such a token, and the agent must never approve. Subjects that are
 * SPIFFE IDs are workloads, not people.
 */
export async function verifyApprover(
  verifier: UserTokenVerifier,
  token: string,
  delegationAudiences: ReadonlySet<string>,
): Promise<VerifiedUser> {
  let user: VerifiedUser;
  try {
    user = await verifier.verify(token);
  } catch (e) {
    const why =
      e instanceof BrokerError ? e.message.replace(/^the user token/, 'the approver token') : 'invalid';
    throw new BrokerError('TASKPASS_APPROVER_TOKEN_INVALID', why, undefined, { cause: e });
  }
  const aud = user.claims.aud;
  const auds = Array.isArray(aud) ? aud : [aud];
  if (auds.some((x) => typeof x === 'string' && delegationAudiences.has(x))) {
    throw new BrokerError(
      'TASKPASS_APPROVER_TOKEN_INVALID',
      'the approver token is also a delegation token (its audience includes the user-token audience); approver tokens must be for the approvals audience only',
    );
  }
  if (user.sub.startsWith('spiffe://')) {
    throw new BrokerError('TASKPASS_APPROVER_IS_WORKLOAD', 'a workload identity cannot approve');
  }
  return user;
}

/** Everything the approval operations need. */
export interface ApprovalDeps {
  config: BrokerConfig;
  store: Store;
  audit: AuditLog;
  metrics: BrokerMetrics;
  /** Epoch milliseconds. */
  now: () => number;
}

/** Reading, listing and deciding approvals. */
export class ApprovalService {
  constructor(private readonly d: ApprovalDeps) {}

  nowSec(): number {
    return Math.floor(this.d.now() / 1000);
  }

  /** The approval, if this caller may see it: the agent that asked, or a person who may decide it. */
  async visible(caller: ApprovalCaller, id: string): Promise<ApprovalRecord> {
    const a = await this.d.store.getApproval(id);
    // Not found and not yours look the same: approval ids are not disclosed to other callers.
    if (!a || !this.mayView(caller, a)) {
      throw new BrokerError('TASKPASS_APPROVAL_NOT_FOUND', `no approval ${id} for this caller`);
    }
    return a;
  }

  mayView(caller: ApprovalCaller, a: ApprovalRecord): boolean {
    if (caller.kind === 'agent') return caller.agent.id === a.agent;
    return approverMayDecide(a.rules, asPolicyUser(caller.user), delegatingUser(a)).ok;
  }

  /** Pending approvals this person may decide (oldest expiry first). */
  async pendingFor(user: VerifiedUser, limit: number): Promise<ApprovalRecord[]> {
    const now = this.nowSec();
    // The store lists every pending approval; who may decide is a matter of each one's rules.
    const all = await this.d.store.listPendingApprovals(now, 1000);
    return all
      .filter((a) => approverMayDecide(a.rules, asPolicyUser(user), delegatingUser(a)).ok)
      .slice(0, limit);
  }

  /** Records a person's decision; the first decision wins. Durable before it resolves. */
  async decide(
    user: VerifiedUser,
    id: string,
    input: { decision: 'approve' | 'deny'; comment?: string | undefined },
  ): Promise<ApprovalRecord> {
    const refuse = (e: BrokerError, a?: ApprovalRecord): never => {
      this.d.metrics.approvalDecisions.inc({
        result: e.code === 'TASKPASS_APPROVAL_ALREADY_DECIDED' ? 'lost' : 'refused',
      });
      this.d.audit.record({
        event: 'approval.refused',
        approval: id,
        approver: `${user.sub} at ${user.iss}`,
        decision: input.decision,
        task: a?.taskId,
        code: e.code,
        reason: e.message,
      });
      throw e;
    };
    const a = await this.d.store.getApproval(id);
    if (!a) return refuse(new BrokerError('TASKPASS_APPROVAL_NOT_FOUND', `no approval ${id}`));
    const may = approverMayDecide(a.rules, asPolicyUser(user), delegatingUser(a));
    if (!may.ok) return refuse(new BrokerError(may.code, may.reason), a);
    const now = this.nowSec();
    const closed = (cur: ApprovalRecord): BrokerError => {
      const status = effectiveStatus(cur, now);
      return status === 'expired'
        ? new BrokerError('TASKPASS_APPROVAL_EXPIRED', `approval ${id} expired before it was decided`)
        : new BrokerError(
            'TASKPASS_APPROVAL_ALREADY_DECIDED',
            `approval ${id} is ${status}, no longer pending`,
            {
              status,
            },
          );
    };
    if (effectiveStatus(a, now) !== 'pending') return refuse(closed(a), a);
    let r: Awaited<ReturnType<Store['decideApproval']>>;
    try {
      r = await this.d.store.decideApproval(
        id,
        {
          status: input.decision === 'approve' ? 'approved' : 'denied',
          approver: approverRef(user),
          decidedAt: now,
          comment: input.comment,
        },
        now,
      );
    } catch (e) {
      if (e instanceof BrokerError) throw e;
      throw new BrokerError(
        'TASKPASS_STORE_UNAVAILABLE',
        'the store could not record the decision',
        undefined,
        {
          cause: e,
        },
      );
    }
    if (!r) return refuse(new BrokerError('TASKPASS_APPROVAL_NOT_FOUND', `no approval ${id}`));
    if (!r.decided) return refuse(closed(r.approval), r.approval);
    const result = r.approval.status;
    this.d.metrics.approvalDecisions.inc({ result });
    this.d.metrics.approvalTimeToDecide.observe({ result }, Math.max(0, now - a.createdAt));
    this.d.audit.record({
      event: 'approval.decided',
      approval: id,
      agent: a.agent,
      user: a.sub,
      task: a.taskId,
      tool: a.tool,
      resource: a.resource,
      action: a.action,
      audience: a.audience,
      template: a.template,
      args_sha256: a.argsSha256,
      approver: `${user.sub} at ${user.iss}`,
      decision: input.decision,
      status: result,
    });
    // A person's decision is not answered before its record is durable.
    try {
      await this.d.audit.flush?.();
    } catch (e) {
      throw new BrokerError(
        'TASKPASS_STORE_UNAVAILABLE',
        'the decision is recorded but its audit record is not stored yet; it is retried',
        undefined,
        { cause: e },
      );
    }
    return r.approval;
  }

  /**
   * Resolves when approval `id` changes (any replica), after `ms`, or when `signal` aborts —
   * whichever comes first. Subscribe-then-read: call it, then read the approval, then await.
   */
  waitForChange(
    id: string,
    ms: number,
    signal?: AbortSignal,
  ): { changed: Promise<void>; cancel: () => void } {
    let cancel: () => void = () => {};
    const changed = new Promise<void>((resolve) => {
      const off = this.d.store.onApprovalChange((x) => {
        if (x === id) done();
      });
      const timer = setTimeout(done, Math.max(0, ms));
      const onAbort = () => done();
      signal?.addEventListener('abort', onAbort, { once: true });
      function done() {
        off();
        clearTimeout(timer);
        signal?.removeEventListener('abort', onAbort);
        resolve();
      }
      cancel = done;
    });
    return { changed, cancel };
  }
}
