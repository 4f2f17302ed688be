// Task and token logic shared by the /v1 API and the OAuth token exchange: open a task, check that a
// task is usable by its caller, decide + mint + record a call token, complete or revoke a task.
// Every state change is durable in the store before the caller is answered.
import { randomBytes } from 'node:crypto';
import {
  type Action,
  type ApprovalClaim,
  type ApprovalRequiredBody,
  type AuthorizationDetail,
  argsSha256,
  type CeilingEntry,
  checkResource,
  type Revocation,
} from '@taskpass/contract';
import { approvalSubject, approvalUrl, newApprovalId } from './approvals.ts';
import type { AuditLog } from './audit.ts';
import type { WorkloadIdentity } from './auth.ts';
import type { BrokerConfig } from './config.ts';
import { BrokerError } from './errors.ts';
import type { BrokerMetrics } from './metrics.ts';
import { mintTokenWith, prepareToken } from './mint.ts';
import { type DecisionPoints, type PdpVerdict, pdpInputOf } from './pdp/index.ts';
import type {
  ApprovalRequirement,
  HistoryQueries,
  KeysPort,
  PolicyAllow,
  PolicyPort,
  PolicyUser,
  TaskHistory,
} from './ports.ts';
import {
  type ApprovalRecord,
  type ClosingStatus,
  effectiveStatus,
  type Store,
  type TaskRecord,
} from './store/types.ts';
import type { VerifiedUser } from './user-tokens.ts';

/** A token the broker minted and what the client needs to know about it. */
export interface MintedToken {
  accessToken: string;
  jti: string;
  expiresAt: number;
  expiresIn: number;
  singleUse: boolean;
  template: string;
  detail: AuthorizationDetail;
}

/**
 * Fetches exactly the workflow facts a decision may ask for (targeted store queries; a task's whole
 * history is never read on the issuance path). A lookup that was not fetched throws, so a policy
 * that asks for more than its `historyQueries` named fails the request instead of deciding on
 * missing facts.
 */
/** Decisions retried when a concurrent one recorded a call of the same capped tool first. */
const MAX_CAS_ATTEMPTS = 5;

export async function loadHistory(store: Store, taskId: string, q: HistoryQueries): Promise<TaskHistory> {
  const priorKey = (tool: string, resource: string | undefined) => JSON.stringify([tool, resource ?? null]);
  const [counts, prior] = await Promise.all([
    Promise.all(q.counts.map(async (tool) => [tool, await store.countIssued(taskId, tool)] as const)),
    Promise.all(
      q.prior.map(
        async (p) =>
          [priorKey(p.tool, p.resource), await store.issuedTemplates(taskId, p.tool, p.resource)] as const,
      ),
    ),
  ]);
  const countsByTool = new Map(counts);
  const priorBy = new Map(prior);
  return {
    callCounts(tool) {
      const m = countsByTool.get(tool);
      if (!m) throw new Error(`history lookup not fetched: call counts of ${JSON.stringify(tool)}`);
      return m;
    },
    priorTemplates(tool, resource) {
      const s = priorBy.get(priorKey(tool, resource));
      if (!s) throw new Error(`history lookup not fetched: prior calls of ${JSON.stringify(tool)}`);
      return s;
    },
  };
}

/** Task ids: `tsk_` + 128 random bits. */
export const newTaskId = (): string => `tsk_${randomBytes(16).toString('base64url')}`;

async function durable<T>(what: string, p: Promise<T>): Promise<T> {
  try {
    return await p;
  } catch (e) {
    if (e instanceof BrokerError) throw e;
    throw new BrokerError(
      'TASKPASS_STORE_UNAVAILABLE',
      `the store could not ${what}; nothing was recorded`,
      undefined,
      {
        cause: e,
      },
    );
  }
}

/** Everything the service needs. */
export interface ServiceDeps {
  config: BrokerConfig;
  store: Store;
  keys: KeysPort;
  policies: { current(): PolicyPort };
  audit: AuditLog;
  metrics: BrokerMetrics;
  /** Decision points behind the templates (docs/policy-engines.md); absent: templates alone. */
  decisionPoints?: DecisionPoints | undefined;
  /** Epoch milliseconds. */
  now: () => number;
}

/** One call as the templates and decision points see it. */
export interface CallRequest {
  audience: string;
  tool: string;
  resource: string;
  action: Action;
}

/** A decision point's denial as the agent gets it: like a template denial, naming the engine. */
export function pdpDenial(v: Extract<PdpVerdict, { allow: false }>, template: string): BrokerError {
  return new BrokerError(v.code, v.reason, {
    template,
    reason: v.reason,
    engine: v.engine,
    ...(v.policy !== undefined ? { policy: v.policy } : {}),
  });
}

/** The user a task acts for, as templates see it (undefined for autonomous tasks). */
export function taskUser(task: TaskRecord): PolicyUser | undefined {
  return task.userIssuer ? { iss: task.userIssuer, sub: task.sub, claims: task.userClaims ?? {} } : undefined;
}

/** Task and token operations. */
export class TaskService {
  constructor(private readonly d: ServiceDeps) {}

  private nowSec(): number {
    return Math.floor(this.d.now() / 1000);
  }

  /** Opens a task for `agent`, on behalf of `user` when given. */
  async openTask(
    agent: WorkloadIdentity,
    input: { purpose: string; ttlSec?: number | undefined },
    user: VerifiedUser | undefined,
  ): Promise<{ task: TaskRecord; ceiling: CeilingEntry[] }> {
    const now = this.nowSec();
    const policy = this.d.policies.current();
    const pu: PolicyUser | undefined = user
      ? { iss: user.iss, sub: user.sub, claims: user.claims }
      : undefined;
    const admit = policy.admits(agent.id, pu);
    if (!admit.ok) {
      this.d.audit.record({
        event: 'task.denied',
        agent: agent.id,
        user: user?.sub,
        code: admit.code,
        reason: admit.reason,
      });
      throw new BrokerError(admit.code, admit.reason);
    }
    const maxTtl = policy.maxTaskTtlSec(agent.id, pu);
    let expiresAt = now + Math.min(input.ttlSec ?? maxTtl, maxTtl);
    if (user) expiresAt = Math.min(expiresAt, user.exp);
    if (expiresAt <= now) throw new BrokerError('TASKPASS_USER_TOKEN_INVALID', 'the user token has expired');
    const task: TaskRecord = {
      id: newTaskId(),
      agent: agent.id,
      sub: user?.sub ?? agent.id,
      purpose: input.purpose,
      status: 'open',
      createdAt: now,
      expiresAt,
    };
    if (user) {
      task.userIssuer = user.iss;
      task.userClaims = user.claims;
    }
    const ceiling = policy.ceiling(agent.id, pu);
    await durable('record the task', this.d.store.createTask(task));
    this.d.audit.record({
      event: 'task.opened',
      agent: agent.id,
      user: task.sub,
      task: task.id,
      exp: expiresAt,
    });
    return { task, ceiling };
  }

  /** Loads a task the caller owns: 404, then ownership, then closed, then expired. */
  async usableTask(agent: WorkloadIdentity, id: string): Promise<TaskRecord> {
    const task = await this.ownedTask(agent, id);
    if (task.status !== 'open') {
      throw new BrokerError('TASKPASS_TASK_CLOSED', `task ${id} is ${task.status}; its tokens are revoked`);
    }
    if (task.expiresAt <= this.nowSec())
      throw new BrokerError('TASKPASS_TASK_EXPIRED', `task ${id} has expired`);
    return task;
  }

  /** Loads a task and checks it belongs to the caller (status not checked). */
  async ownedTask(agent: WorkloadIdentity, id: string): Promise<TaskRecord> {
    const task = await this.d.store.getTask(id);
    if (!task) throw new BrokerError('TASKPASS_TASK_NOT_FOUND', `no task ${id}`);
    if (task.agent !== agent.id)
      throw new BrokerError('TASKPASS_TASK_NOT_OWNED', `task ${id} belongs to another agent`);
    return task;
  }

  private tokenExp(now: number, ttlSec: number, task: TaskRecord): number {
    return Math.min(now + Math.min(ttlSec, this.d.config.tokens.maxTtl), task.expiresAt);
  }

  /**
   * The history lookups for a call: the templates' own, plus the tool's call count when decision
   * points are configured (their input carries it).
   */
  private historyQueriesOf(policy: PolicyPort, req: CallRequest): HistoryQueries {
    const q = policy.historyQueries(req);
    if (!this.d.decisionPoints?.configured || q.counts.includes(req.tool)) return q;
    return { ...q, counts: [...q.counts, req.tool] };
  }

  /**
   * Asks the decision points a call allowed by the templates needs (the global one and those the
   * allowing templates name). Templates stay the ceiling: this only ever takes an allow away.
   */
  private async askDecisionPoints(
    agent: string,
    task: TaskRecord,
    req: CallRequest & { arguments?: Record<string, unknown> | undefined },
    allow: PolicyAllow,
    history: TaskHistory,
    approval?: ApprovalClaim | undefined,
  ): Promise<PdpVerdict> {
    const dps = this.d.decisionPoints;
    const names = dps?.needed(allow.decisionPoints ?? []) ?? [];
    if (!dps || names.length === 0) return { allow: true, asked: [] };
    let callsOfTool: number | undefined;
    try {
      callsOfTool = 0;
      for (const n of history.callCounts(req.tool).values()) callsOfTool += n;
    } catch {
      callsOfTool = undefined;
    }
    const input = pdpInputOf({
      agent,
      user: taskUser(task),
      task,
      call: req,
      templates: allow.template.split(' '),
      callsOfTool,
      arguments: allow.bindArguments ? req.arguments : undefined,
      approval: approval ? { id: approval.id, approver: approval.approver } : undefined,
      now: this.d.now(),
    });
    return dps.decide(names, input);
  }

  /**
   * The digest the token would be bound to: `args_sha256` as sent, checked against the arguments
   * when they were sent too (or computed from them when only they were sent).
   */
  private boundDigest(req: {
    args_sha256?: string | undefined;
    arguments?: Record<string, unknown> | undefined;
  }) {
    if (req.arguments === undefined) return req.args_sha256;
    let digest: string;
    try {
      digest = argsSha256(req.arguments);
    } catch {
      throw new BrokerError('TASKPASS_BAD_REQUEST', 'arguments must be JSON');
    }
    if (req.args_sha256 !== undefined && req.args_sha256 !== digest) {
      throw new BrokerError(
        'TASKPASS_ARGUMENTS_MISMATCH',
        'the arguments sent do not hash to args_sha256 (canonical JSON, SHA-256, base64url)',
      );
    }
    return digest;
  }

  /**
   * The approval of this exact call (asked now if none is live), or an error that says where it
   * stands: TASKPASS_APPROVAL_REQUIRED while pending, _DENIED, _EXPIRED. Resolves only with an
   * approved approval, whose one token the caller may now issue.
   */
  private async approvalOf(
    agent: WorkloadIdentity,
    task: TaskRecord,
    req: { audience: string; tool: string; resource: string; action: Action },
    digest: string,
    args: Record<string, unknown> | undefined,
    need: ApprovalRequirement,
  ): Promise<ApprovalRecord> {
    const now = this.nowSec();
    const asked: ApprovalRecord = {
      id: newApprovalId(),
      taskId: task.id,
      agent: agent.id,
      sub: task.sub,
      ...(task.userIssuer ? { userIssuer: task.userIssuer } : {}),
      purpose: task.purpose,
      audience: req.audience,
      tool: req.tool,
      resource: req.resource,
      action: req.action,
      argsSha256: digest,
      ...(args !== undefined ? { arguments: args } : {}),
      template: need.template,
      rules: [...need.rules],
      status: 'pending',
      createdAt: now,
      // A pending approval never outlives its task.
      expiresAt: Math.min(now + need.ttlSec, task.expiresAt),
    };
    const { approval: a, created } = await durable(
      'record the approval',
      this.d.store.requestApproval(asked, now),
    );
    const base = {
      approval: a.id,
      agent: agent.id,
      user: task.sub,
      task: task.id,
      tool: req.tool,
      resource: req.resource,
      action: req.action,
      audience: req.audience,
      template: a.template,
      args_sha256: digest,
    };
    if (created) {
      this.d.metrics.approvalRequests.inc();
      this.d.audit.record({ event: 'approval.requested', ...base, exp: a.expiresAt });
    }
    const status = effectiveStatus(a, now);
    if (status === 'approved') return a;
    this.d.metrics.decisions.inc({ result: 'deny', reason: approvalCode(status) });
    if (status === 'denied') {
      throw new BrokerError(
        'TASKPASS_APPROVAL_DENIED',
        `${a.approver ? `${a.approver.sub} ` : 'an approver '}denied this call${a.comment ? `: ${a.comment}` : ''}`,
        {
          approval_id: a.id,
          template: a.template,
          // `reason` is what the agent shows (the plugin's TaskpassDeniedError.reason): the
          // approver's own words when given, as the approval's long poll reports them too.
          ...(a.comment !== undefined ? { comment: a.comment, reason: a.comment } : {}),
        },
      );
    }
    if (status === 'expired') {
      throw new BrokerError(
        'TASKPASS_APPROVAL_EXPIRED',
        `approval ${a.id} expired before it was ${a.status === 'approved' ? 'used' : 'decided'}; ask again`,
        { approval_id: a.id, template: a.template },
      );
    }
    const body: Omit<ApprovalRequiredBody, 'code' | 'message'> = {
      approval_id: a.id,
      approval_url: approvalUrl(this.d.config, a.id),
      expires_at: a.expiresAt,
      request: approvalSubject(a),
      template: a.template,
    };
    throw new BrokerError(
      'TASKPASS_APPROVAL_REQUIRED',
      `a person must approve this call first (template ${a.template}); ask again once approval ${a.id} is approved`,
      { ...body },
    );
  }

  /** Decides, mints and records one call token. */
  async issueCall(
    agent: WorkloadIdentity,
    task: TaskRecord,
    req: {
      audience: string;
      tool: string;
      resource: string;
      action: Action;
      args_sha256?: string | undefined;
      arguments?: Record<string, unknown> | undefined;
    },
  ): Promise<MintedToken> {
    const started = performance.now();
    const grammar = checkResource(req.resource);
    if (!grammar.ok) throw new BrokerError('TASKPASS_INVALID_RESOURCE', grammar.reason);
    const digest = this.boundDigest(req);
    const policy = this.d.policies.current();
    const queries = this.historyQueriesOf(policy, req);
    const base = {
      agent: agent.id,
      user: task.sub,
      task: task.id,
      tool: req.tool,
      resource: req.resource,
      action: req.action,
      audience: req.audience,
    };
    // A cap (max_calls_per_task) is decided on counts read before the decision, so the record is a
    // compare-and-set on those counts: when another decision on this task recorded a call of this
    // tool in between (this process or another replica), decide again on the new counts.
    const capped = queries.counts.includes(req.tool);
    for (let attempt = 1; ; attempt++) {
      const history = await loadHistory(this.d.store, task.id, queries);
      const decision = policy.decide({
        agent: agent.id,
        user: taskUser(task),
        audience: req.audience,
        tool: req.tool,
        action: req.action,
        resource: req.resource,
        history,
        taskAgeSec: this.nowSec() - task.createdAt,
        argsSha256: digest,
        arguments: req.arguments,
      });
      if (!decision.allow) {
        this.d.metrics.decisions.inc({ result: 'deny', reason: decision.code });
        this.d.audit.record({
          event: 'token.denied',
          ...base,
          template: decision.template,
          code: decision.code,
          reason: decision.reason,
        });
        throw new BrokerError(
          decision.code,
          decision.reason,
          decision.template
            ? { template: decision.template, reason: decision.reason }
            : { reason: decision.reason },
        );
      }
      // Past the policy, a call that needs a person stops here until one approved it.
      const approval =
        decision.approval && digest
          ? await this.approvalOf(agent, task, req, digest, req.arguments, decision.approval)
          : undefined;
      if (decision.approval && !approval) {
        // The engine asks for args_sha256 whenever a rule binds arguments; never mint unbound.
        throw new BrokerError('TASKPASS_ARGUMENTS_REQUIRED', 'this call must be bound to its arguments');
      }
      const claim: ApprovalClaim | undefined =
        approval?.approver && approval.decidedAt !== undefined
          ? { id: approval.id, approver: approval.approver, approved_at: approval.decidedAt }
          : undefined;
      // Past the templates (and a person, when one had to approve), the decision points behind them.
      const pdp = await this.askDecisionPoints(agent.id, task, req, decision, history, claim);
      if (!pdp.allow) {
        this.d.metrics.decisions.inc({ result: 'deny', reason: pdp.code });
        this.d.audit.record({
          event: 'token.denied',
          ...base,
          template: decision.template,
          code: pdp.code,
          reason: pdp.reason,
          engine: pdp.engine,
        });
        throw pdpDenial(pdp, decision.template);
      }
      const now = this.nowSec();
      const exp = this.tokenExp(now, decision.ttlSec, task);
      const detail: AuthorizationDetail = {
        type: 'mcp_tool_call',
        tool: req.tool,
        resource: req.resource,
        action: req.action,
        ...(digest ? { args_sha256: digest } : {}),
        ...(claim ? { approval: claim } : {}),
      };
      const key = this.d.keys.current();
      const prepared = prepareToken(key, {
        issuer: this.d.config.issuer,
        sub: task.sub,
        agent: agent.id,
        audience: req.audience,
        iat: now,
        exp,
        taskId: task.id,
        detail,
        ...(agent.x5tS256 ? { x5tS256: agent.x5tS256 } : {}),
        singleUse: decision.singleUse,
        template: decision.template,
      });
      let toolCount: number | undefined;
      if (capped) {
        toolCount = 0;
        for (const n of history.callCounts(req.tool).values()) toolCount += n;
      }
      const { jti } = prepared;
      // A remote signer (Vault Transit) can fail: it signs before the call is recorded, so that a
      // failure leaves nothing behind. An in-process key signs at the end of the turn, after the
      // record has left for the store (mint.ts, prepareToken).
      const signedFirst = key.privateKey ? undefined : await prepared.sign();
      const recording = durable(
        'record the issued call',
        this.d.store.recordIssued(
          {
            taskId: task.id,
            jti,
            tool: req.tool,
            resource: req.resource,
            action: req.action,
            template: decision.template,
            issuedAt: now,
            expiresAt: exp,
          },
          {
            ...(toolCount === undefined ? {} : { ifToolCount: toolCount }),
            // One approval, one token: used in the same atomic step that records the call.
            ...(approval ? { consumeApproval: { id: approval.id, now } } : {}),
          },
        ),
      );
      const signing = signedFirst === undefined ? prepared.sign() : Promise.resolve(signedFirst);
      // Not awaited when the record fails (and a local signature does not fail).
      signing.catch(() => {});
      const recorded = await recording;
      if (!recorded) {
        // The minted token was never handed out; it dies here. (Had its approval been used by a
        // concurrent request, the next attempt finds it used and asks for a new one.)
        if (attempt < MAX_CAS_ATTEMPTS) continue;
        throw new BrokerError(
          'TASKPASS_STORE_UNAVAILABLE',
          'the task changed concurrently on every attempt to record this call; try again',
        );
      }
      const token = await signing;
      this.d.metrics.decisions.inc({ result: 'allow', reason: 'allowed' });
      this.d.metrics.issuance.observe((performance.now() - started) / 1000);
      this.d.audit.record({
        event: 'token.issued',
        ...base,
        template: decision.template,
        owner: decision.owner,
        jti,
        exp,
        ...(approval ? { approval: approval.id, args_sha256: digest } : {}),
        ...(claim ? { approver: `${claim.approver.sub} at ${claim.approver.iss}` } : {}),
      });
      if (approval) {
        this.d.audit.record({
          event: 'approval.used',
          ...base,
          approval: approval.id,
          approver: claim ? `${claim.approver.sub} at ${claim.approver.iss}` : undefined,
          template: approval.template,
          args_sha256: digest,
          jti,
        });
      }
      return {
        accessToken: token,
        jti,
        expiresAt: exp,
        expiresIn: exp - now,
        singleUse: decision.singleUse,
        template: decision.template,
        detail,
      };
    }
  }

  /**
   * Decides a call as issuance would — templates, the task's workflow state, the decision points
   * behind them — without minting, recording or asking anyone to approve (Taskpass as an AuthZEN
   * PDP, routes/authzen.ts). A call that needs a person's approval is not allowed here: only the
   * token request asks for it.
   */
  async evaluateCall(
    agent: string,
    taskId: string,
    req: CallRequest & { arguments?: Record<string, unknown> | undefined },
  ): Promise<{ allow: true } | { allow: false; code: string; reason: string; engine?: string | undefined }> {
    const task = await this.d.store.getTask(taskId);
    if (!task || task.agent !== agent) {
      return { allow: false, code: 'TASKPASS_TASK_NOT_FOUND', reason: `no task ${taskId} of ${agent}` };
    }
    if (task.status !== 'open') {
      return { allow: false, code: 'TASKPASS_TASK_CLOSED', reason: `task ${taskId} is ${task.status}` };
    }
    if (task.expiresAt <= this.nowSec()) {
      return { allow: false, code: 'TASKPASS_TASK_EXPIRED', reason: `task ${taskId} has expired` };
    }
    const grammar = checkResource(req.resource);
    if (!grammar.ok) return { allow: false, code: 'TASKPASS_INVALID_RESOURCE', reason: grammar.reason };
    let digest: string | undefined;
    try {
      digest = this.boundDigest(req);
    } catch (e) {
      return { allow: false, code: (e as BrokerError).code, reason: (e as Error).message };
    }
    const policy = this.d.policies.current();
    const history = await loadHistory(this.d.store, task.id, this.historyQueriesOf(policy, req));
    const decision = policy.decide({
      agent,
      user: taskUser(task),
      ...req,
      history,
      taskAgeSec: this.nowSec() - task.createdAt,
      argsSha256: digest,
    });
    if (!decision.allow) return { allow: false, code: decision.code, reason: decision.reason };
    if (decision.approval) {
      return {
        allow: false,
        code: 'TASKPASS_APPROVAL_REQUIRED',
        reason: `a person must approve this call first (template ${decision.approval.template}); its token request asks`,
      };
    }
    const pdp = await this.askDecisionPoints(agent, task, req, decision, history);
    return pdp.allow
      ? { allow: true }
      : { allow: false, code: pdp.code, reason: pdp.reason, engine: pdp.engine };
  }

  /** Mints a session token (permits no tool call) for an audience in the task's ceiling. */
  async issueSession(agent: WorkloadIdentity, task: TaskRecord, audience: string): Promise<MintedToken> {
    const s = this.d.policies
      .current()
      .session(agent.id, taskUser(task), audience, this.nowSec() - task.createdAt);
    if (!s) {
      this.d.metrics.decisions.inc({ result: 'deny', reason: 'TASKPASS_DENIED_AUDIENCE' });
      this.d.audit.record({
        event: 'token.denied',
        agent: agent.id,
        user: task.sub,
        task: task.id,
        audience,
        code: 'TASKPASS_DENIED_AUDIENCE',
      });
      throw new BrokerError('TASKPASS_DENIED_AUDIENCE', `no template allows this agent to call ${audience}`);
    }
    const now = this.nowSec();
    const exp = this.tokenExp(now, s.ttlSec || this.d.config.tokens.defaultTtl, task);
    const detail: AuthorizationDetail = { type: 'mcp_session' };
    const key = this.d.keys.current();
    const { token, jti } = await mintTokenWith(key, {
      issuer: this.d.config.issuer,
      sub: task.sub,
      agent: agent.id,
      audience,
      iat: now,
      exp,
      taskId: task.id,
      detail,
      ...(agent.x5tS256 ? { x5tS256: agent.x5tS256 } : {}),
      singleUse: false,
      template: s.template,
    });
    this.d.audit.record({
      event: 'session.issued',
      agent: agent.id,
      user: task.sub,
      task: task.id,
      audience,
      template: s.template,
      owner: s.owner,
      jti,
      exp,
    });
    return {
      accessToken: token,
      jti,
      expiresAt: exp,
      expiresIn: exp - now,
      singleUse: false,
      template: s.template,
      detail,
    };
  }

  /**
   * Completes (or, for an admin, revokes) a task; resolves after the revocation and its record are
   * durable. `by`: the agent or admin workload, or a console admin (`console:<sub> at <iss>`).
   */
  async complete(
    by: Pick<WorkloadIdentity, 'id'>,
    id: string,
    status: ClosingStatus,
    reason: string,
  ): Promise<{ task: TaskRecord; revocation: Revocation }> {
    const r = await durable(
      'record the revocation',
      this.d.store.completeTask(id, status, this.nowSec(), reason),
    );
    if (!r.alreadyCompleted) this.d.metrics.revocations.inc({ kind: 'task' });
    for (const approval of r.cancelledApprovals) {
      this.d.audit.record({
        event: 'approval.cancelled',
        approval,
        agent: r.task.agent,
        user: r.task.sub,
        task: id,
        status: r.task.status,
        by: by.id,
      });
    }
    this.d.audit.record({
      event: status === 'revoked' ? 'task.revoked' : 'task.completed',
      agent: r.task.agent,
      user: r.task.sub,
      task: id,
      status: r.task.status,
      reason,
      by: by.id,
    });
    // A revocation's record is evidence the console and `audit verify` must have: durable first.
    await durable('record the decision', this.d.audit.flush?.() ?? Promise.resolve());
    return { task: r.task, revocation: r.revocation };
  }

  /** Revokes one token by jti (RFC 7009 / admin), durably. */
  async revokeToken(
    by: Pick<WorkloadIdentity, 'id'>,
    jti: string,
    until: number,
    task?: string,
  ): Promise<Revocation> {
    const r = await durable(
      'record the revocation',
      this.d.store.revokeToken(jti, until, `revoked by ${by.id}`),
    );
    this.d.metrics.revocations.inc({ kind: 'token' });
    this.d.audit.record({ event: 'token.revoked', jti, task, by: by.id });
    await durable('record the decision', this.d.audit.flush?.() ?? Promise.resolve());
    return r;
  }
}

function approvalCode(status: string): string {
  return status === 'denied'
    ? 'TASKPASS_APPROVAL_DENIED'
    : status === 'expired'
      ? 'TASKPASS_APPROVAL_EXPIRED'
      : 'TASKPASS_APPROVAL_REQUIRED';
}
