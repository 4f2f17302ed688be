// Test fixtures for the broker app: an in-memory store, a tiny policy engine with two templates,
// static signing keys, a feed stub, a fake workload authenticator, and a local user-token issuer.
import { generateKeyPairSync, type KeyObject } from 'node:crypto';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { exportJWK, SignJWT } from 'jose';
import pino from 'pino';
import { type AppDeps, type BrokerServices, buildApp, buildServices } from '../src/app.ts';
import { chainAfter, countKeyOf, outcomeOf } from '../src/decision-chain.ts';
import type { WorkloadAuthenticator, WorkloadIdentity } from '../src/auth.ts';
import { type BrokerConfig, parseConfig } from '../src/config.ts';
import { BrokerError } from '../src/errors.ts';
import { LeasedCredentials, type LeasedCredentialsOptions } from '../src/leased-credentials.ts';
import { historyOf } from '../src/policy/engine.ts';
import type { HistoryQueries, PolicyDecision, PolicyDeny, PolicyPort, PolicyUser } from '../src/ports.ts';
import { RevocationHub } from '../src/revocation-hub.ts';
import type { Revocation } from '@taskpass/contract';
import {
  type ApprovalDecisionInput,
  type ApprovalRecord,
  approvalCallKey,
  type ChainHead,
  type ClosingStatus,
  type ConsoleSessionRecord,
  type DecisionFilter,
  type DecisionInput,
  type DecisionRecord,
  GENESIS_HASH,
  type IssuedCall,
  type LeaseRecord,
  leaseKey,
  type NewLease,
  type Store,
  type StoredSigningKey,
  type TaskRecord,
} from '../src/store/types.ts';
import { createUserTokenVerifier } from '../src/user-tokens.ts';

export const TD = 'taskpass.local';
export const AGENT = `spiffe://${TD}/agents/support/1`;
export const OTHER_AGENT = `spiffe://${TD}/agents/support/2`;
export const OPS_AGENT = `spiffe://${TD}/agents/ops`;
export const ADMIN = `spiffe://${TD}/admin/alice`;
export const VERIFIER = `spiffe://${TD}/mcp/tickets`;
export const ISSUER = 'https://broker.test';
export const IDP = 'https://idp.test';
export const TICKETS = 'https://tickets.test/mcp';
export const OPS = 'https://ops.test/mcp';
/** The Vault path TinyPolicy names for get_ticket. */
export const TICKETS_DB = 'database/creds/tickets';

/** In-memory Store (same contract as store/types.ts). */
export class MemoryStore implements Store {
  tasks = new Map<string, TaskRecord>();
  issued: IssuedCall[] = [];
  revs: Revocation[] = [];
  used = new Set<string>();
  keys: StoredSigningKey[] = [];
  listeners = new Set<(r: Revocation) => void>();
  failWrites = false;
  leases = new Map<string, LeaseRecord>();
  async init() {}
  async recordLease(l: NewLease, now: number) {
    const t = this.tasks.get(l.taskId);
    if (!t) throw new Error('no task');
    const existing = this.leases.get(leaseKey(l));
    if (t.status !== 'open' || t.expiresAt <= now || (existing && existing.expiresAt > now)) {
      return { recorded: false, lease: existing && structuredClone(existing) };
    }
    const lease: LeaseRecord = { ...l, state: 'active', dueAt: t.expiresAt, attempts: 0 };
    this.leases.set(leaseKey(l), lease);
    return { recorded: true, lease: structuredClone(lease) };
  }
  async getLease(taskId: string, path: string) {
    const l = this.leases.get(leaseKey({ taskId, path }));
    return l && structuredClone(l);
  }
  async dueLeases(now: number, limit: number) {
    const due = [...this.leases.values()].filter((l) => l.dueAt <= now).sort((a, b) => a.dueAt - b.dueAt);
    return structuredClone(due.slice(0, limit));
  }
  async countDueLeases(now: number) {
    return [...this.leases.values()].filter((l) => l.dueAt <= now || l.state === 'revoking').length;
  }
  async leaseRevoked(taskId: string, path: string, leaseId: string) {
    const k = leaseKey({ taskId, path });
    if (this.leases.get(k)?.leaseId === leaseId) this.leases.delete(k);
  }
  async leaseRetry(taskId: string, path: string, leaseId: string, retryAt: number) {
    const l = this.leases.get(leaseKey({ taskId, path }));
    if (l?.leaseId === leaseId)
      Object.assign(l, { state: 'revoking', dueAt: retryAt, attempts: l.attempts + 1 });
  }
  async close() {}
  async createTask(t: TaskRecord) {
    if (this.failWrites) throw new Error('disk full');
    this.tasks.set(t.id, structuredClone(t));
  }
  async getTask(id: string) {
    const t = this.tasks.get(id);
    return t ? structuredClone(t) : undefined;
  }
  async listTasks(f: { status?: TaskRecord['status']; agent?: string; limit?: number } = {}) {
    return [...this.tasks.values()]
      .filter((t) => (!f.status || t.status === f.status) && (!f.agent || t.agent === f.agent))
      .slice(0, f.limit ?? 100);
  }
  private push(r: Omit<Revocation, 'seq'>): Revocation {
    const rev = { ...r, seq: this.revs.length + 1 };
    this.revs.push(rev);
    for (const l of this.listeners) l(rev);
    return rev;
  }
  async completeTask(id: string, status: ClosingStatus, at: number, reason: string) {
    if (this.failWrites) throw new Error('disk full');
    const t = this.tasks.get(id);
    if (!t) throw new Error('no task');
    if (t.status !== 'open') {
      const r = this.revs.find((x) => x.kind === 'task' && x.id === id)!;
      return { task: structuredClone(t), revocation: r, alreadyCompleted: true, cancelledApprovals: [] };
    }
    t.status = status;
    t.finishedAt = at;
    const cancelledApprovals: string[] = [];
    for (const a of this.approvals.values()) {
      if (a.taskId === id && (a.status === 'pending' || a.status === 'approved')) {
        a.status = 'cancelled';
        cancelledApprovals.push(a.id);
      }
    }
    for (const a of cancelledApprovals) this.approvalChanged(a);
    for (const l of this.leases.values()) {
      if (l.taskId === id) Object.assign(l, { state: 'revoking', dueAt: Math.min(l.dueAt, at) });
    }
    return {
      task: structuredClone(t),
      revocation: this.push({ kind: 'task', id, until: t.expiresAt, reason }),
      alreadyCompleted: false,
      cancelledApprovals,
    };
  }
  async recordIssued(
    c: IssuedCall,
    opts: { ifToolCount?: number; consumeApproval?: { id: string; now: number } } = {},
  ) {
    if (this.failWrites) throw new Error('disk full');
    if (
      opts.ifToolCount !== undefined &&
      this.issued.filter((x) => x.taskId === c.taskId && x.tool === c.tool).length !== opts.ifToolCount
    ) {
      return false;
    }
    const consume = opts.consumeApproval;
    const a = consume && this.approvals.get(consume.id);
    if (consume && (a?.status !== 'approved' || a.expiresAt <= consume.now)) return false;
    if (a) Object.assign(a, { status: 'used', usedAt: consume!.now, jti: c.jti });
    this.issued.push(c);
    if (a) this.approvalChanged(a.id);
    return true;
  }
  async listIssued(taskId: string) {
    return this.issued.filter((c) => c.taskId === taskId);
  }
  async countIssued(taskId: string, tool: string) {
    return historyOf(await this.listIssued(taskId)).callCounts(tool) as Map<string, number>;
  }
  async issuedTemplates(taskId: string, tool: string, resource?: string) {
    return historyOf(await this.listIssued(taskId)).priorTemplates(tool, resource) as Set<string>;
  }
  async revokeToken(jti: string, until: number, reason: string) {
    return this.push({ kind: 'token', id: jti, until, reason });
  }
  async revocationsSince(since: number, now: number) {
    return this.revs.filter((r) => r.seq > since && r.until > now);
  }
  async revocationsPage(after: number, now: number, limit: number) {
    const scanned = this.revs.filter((r) => r.seq > after).slice(0, limit);
    return {
      revocations: scanned.filter((r) => r.until > now),
      next: scanned.length < limit ? undefined : scanned.at(-1)?.seq,
    };
  }
  async currentSeq() {
    return this.revs.length;
  }
  async isRevoked(kind: 'task' | 'token', id: string) {
    return this.revs.some((r) => r.kind === kind && r.id === id);
  }
  async markUsed(jti: string) {
    if (this.used.has(jti)) return false;
    this.used.add(jti);
    return true;
  }
  async loadSigningKeys() {
    return this.keys;
  }
  async saveSigningKey(k: StoredSigningKey) {
    this.keys.push(k);
  }
  async addSigningKeyIfLatest(k: StoredSigningKey, activeAfter: number | undefined) {
    if (this.keys.some((x) => activeAfter === undefined || x.activeFrom > activeAfter)) return false;
    this.keys.push(k);
    return true;
  }
  async deleteSigningKey(kid: string) {
    this.keys = this.keys.filter((k) => k.kid !== kid);
  }
  approvals = new Map<string, ApprovalRecord>();
  approvalOfCall = new Map<string, string>();
  approvalListeners = new Set<(id: string) => void>();
  private approvalChanged(id: string) {
    for (const l of this.approvalListeners) l(id);
  }
  async requestApproval(a: ApprovalRecord, now: number) {
    const t = this.tasks.get(a.taskId);
    if (!t) throw new BrokerError('TASKPASS_TASK_NOT_FOUND', 'no task');
    if (t.status !== 'open') throw new BrokerError('TASKPASS_TASK_CLOSED', 'closed');
    const key = approvalCallKey(a);
    const cur = this.approvals.get(this.approvalOfCall.get(key) ?? '');
    if (cur) {
      const open = cur.status === 'pending' || cur.status === 'approved';
      if ((open && cur.expiresAt > now) || cur.status === 'denied') {
        return { approval: structuredClone(cur), created: false };
      }
      if (open) {
        cur.status = 'expired';
        this.approvalOfCall.delete(key);
        return { approval: structuredClone(cur), created: false };
      }
    }
    this.approvals.set(a.id, structuredClone(a));
    this.approvalOfCall.set(key, a.id);
    return { approval: structuredClone(a), created: true };
  }
  async getApproval(id: string) {
    const a = this.approvals.get(id);
    return a && structuredClone(a);
  }
  async decideApproval(id: string, d: ApprovalDecisionInput, now: number) {
    const a = this.approvals.get(id);
    if (!a) return undefined;
    if (a.status !== 'pending' || a.expiresAt <= now) return { decided: false, approval: structuredClone(a) };
    Object.assign(a, { status: d.status, approver: d.approver, decidedAt: d.decidedAt });
    if (d.comment !== undefined) a.comment = d.comment;
    this.approvalChanged(id);
    return { decided: true, approval: structuredClone(a) };
  }
  async listPendingApprovals(now: number, limit: number) {
    return [...this.approvals.values()]
      .filter((a) => a.status === 'pending' && a.expiresAt > now)
      .slice(0, limit)
      .map((a) => structuredClone(a));
  }
  onApprovalChange(l: (id: string) => void) {
    this.approvalListeners.add(l);
    return () => this.approvalListeners.delete(l);
  }
  onRevocation(l: (r: Revocation) => void) {
    this.listeners.add(l);
    return () => this.listeners.delete(l);
  }
  async sweep() {}

  // Decision records and console sessions: the same contract, in arrays.
  decisions: DecisionRecord[] = [];
  anchor: ChainHead = { seq: 0, hash: GENESIS_HASH };
  sessions = new Map<string, ConsoleSessionRecord>();
  async appendDecisions(inputs: readonly DecisionInput[]) {
    if (this.failWrites) throw new Error('disk full');
    const recs = chainAfter(await this.decisionHead(), inputs);
    this.decisions.push(...recs.map((r) => structuredClone(r)));
    return recs;
  }
  async decisionHead() {
    const last = this.decisions.at(-1);
    return last ? { seq: last.seq, hash: last.hash } : { ...this.anchor };
  }
  async decisionAnchor() {
    return { ...this.anchor };
  }
  async decisionsRange(after: number, limit: number) {
    return this.decisions
      .filter((r) => r.seq > after && r.seq <= after + limit)
      .map((r) => structuredClone(r));
  }
  async decisionsOfTask(task: string, limit: number) {
    return this.decisions.filter((r) => r.task === task).slice(0, limit);
  }
  async recentDecisions(f: DecisionFilter) {
    const limit = f.limit ?? 50;
    const all = [...this.decisions]
      .reverse()
      .filter(
        (r) =>
          (f.before === undefined || r.seq < f.before) &&
          (f.agent === undefined || r.agent === f.agent) &&
          (f.user === undefined || r.user === f.user) &&
          (f.task === undefined || r.task === f.task) &&
          (f.code === undefined || r.code === f.code) &&
          (f.outcome === undefined || outcomeOf(r.event) === f.outcome),
      );
    const records = all.slice(0, limit);
    return { records, next: all.length > limit ? records.at(-1)?.seq : undefined };
  }
  async decisionCounts(fromMs: number, toMs: number) {
    const out: Record<string, number> = {};
    for (const r of this.decisions) {
      const k = countKeyOf(r);
      if (k && r.at >= fromMs && r.at < toMs) out[k] = (out[k] ?? 0) + 1;
    }
    return out;
  }
  async decisionCountsByMinute(fromMs: number, toMs: number) {
    const by = new Map<number, Record<string, number>>();
    for (const r of this.decisions) {
      const k = countKeyOf(r);
      if (!k || r.at < fromMs || r.at >= toMs) continue;
      const m = Math.floor(r.at / 60000);
      const c = by.get(m) ?? {};
      c[k] = (c[k] ?? 0) + 1;
      by.set(m, c);
    }
    return [...by.entries()].sort((a, b) => a[0] - b[0]).map(([minute, counts]) => ({ minute, counts }));
  }
  async sweepDecisions(beforeMs: number) {
    let n = 0;
    while (this.decisions[0] && this.decisions[0].at < beforeMs) {
      const r = this.decisions.shift()!;
      this.anchor = { seq: r.seq, hash: r.hash };
      n++;
    }
    return n;
  }
  async putConsoleSession(r: ConsoleSessionRecord) {
    this.sessions.set(r.id, structuredClone(r));
  }
  async getConsoleSession(id: string, now: number) {
    const r = this.sessions.get(id);
    return r && r.expiresAt > now ? structuredClone(r) : undefined;
  }
  async takeConsoleSession(id: string, now: number) {
    const r = await this.getConsoleSession(id, now);
    this.sessions.delete(id);
    return r;
  }
  async deleteConsoleSession(id: string) {
    this.sessions.delete(id);
  }
}

/** Two templates: delegated ticket support (read + single-use write after a read), autonomous ops. */
export class TinyPolicy implements PolicyPort {
  private support(agent: string) {
    return agent.startsWith(`spiffe://${TD}/agents/support/`);
  }
  admits(agent: string, user: PolicyUser | undefined) {
    if (this.support(agent)) {
      if (!user)
        return {
          ok: false as const,
          code: 'TASKPASS_DELEGATION_REQUIRED' as const,
          reason: 'tickets-support requires a user',
        };
      const groups = user.claims.groups;
      if (user.iss !== IDP || !Array.isArray(groups) || !groups.includes('support')) {
        return {
          ok: false as const,
          code: 'TASKPASS_DENIED_USER' as const,
          reason: 'user is not in group support',
        };
      }
      return { ok: true as const };
    }
    if (agent === OPS_AGENT) return { ok: true as const };
    return {
      ok: false as const,
      code: 'TASKPASS_DENIED_NO_TEMPLATE' as const,
      reason: 'no template for this agent',
    };
  }
  ceiling(agent: string) {
    if (this.support(agent)) {
      return [
        {
          template: 'tickets-support',
          audience: TICKETS,
          tools: [
            { tool: 'get_ticket', action: 'read' as const, resources: ['tickets/*'] },
            { tool: 'close_ticket', action: 'write' as const, resources: ['tickets/*'] },
          ],
        },
      ];
    }
    return [
      {
        template: 'ops-auto',
        audience: OPS,
        tools: [{ tool: 'restart', action: 'admin' as const, resources: ['services/*'] }],
      },
    ];
  }
  maxTaskTtlSec() {
    return 900;
  }
  historyQueries(i: Parameters<PolicyPort['historyQueries']>[0]): HistoryQueries {
    return i.tool === 'close_ticket'
      ? { counts: ['close_ticket'], prior: [{ tool: 'get_ticket', resource: i.resource }] }
      : { counts: [], prior: [] };
  }
  decide(i: Parameters<PolicyPort['decide']>[0]): PolicyDecision {
    const deny = (code: PolicyDeny['code'], reason: string, template?: string): PolicyDecision => ({
      allow: false,
      code,
      reason,
      template,
    });
    const a = this.admits(i.agent, i.user);
    if (!a.ok) return deny(a.code, a.reason);
    const tpl = this.support(i.agent) ? 'tickets-support' : 'ops-auto';
    const aud = this.support(i.agent) ? TICKETS : OPS;
    if (i.audience !== aud) return deny('TASKPASS_DENIED_AUDIENCE', `no template allows ${i.audience}`);
    const tools = this.ceiling(i.agent)[0]!.tools;
    const t = tools.filter((x) => x.tool === i.tool);
    if (t.length === 0) return deny('TASKPASS_DENIED_TOOL', `tool ${i.tool} not allowed`, tpl);
    const ta = t.find((x) => x.action === i.action);
    if (!ta) return deny('TASKPASS_DENIED_ACTION', `action ${i.action} not allowed for ${i.tool}`, tpl);
    const prefix = ta.resources[0]!.slice(0, -1);
    if (!i.resource.startsWith(prefix) || i.resource.slice(prefix.length).includes('/')) {
      return deny('TASKPASS_DENIED_RESOURCE', `resource ${i.resource} not allowed`, tpl);
    }
    if (i.tool === 'close_ticket') {
      if ([...i.history.callCounts('close_ticket').values()].reduce((a, b) => a + b, 0) >= 1) {
        return deny('TASKPASS_DENIED_CALL_LIMIT', 'close_ticket at most once per task', tpl);
      }
      if (i.history.priorTemplates('get_ticket', i.resource).size === 0) {
        return deny('TASKPASS_DENIED_PREREQUISITE', 'get_ticket on the same resource must come first', tpl);
      }
    }
    return {
      allow: true,
      template: tpl,
      owner: 'support-platform@example.com',
      ttlSec: 60,
      singleUse: i.action !== 'read',
    };
  }
  /** `tickets-support` leases `database/creds/tickets` for get_ticket (docs/vault.md). */
  vaultSecrets(i: Parameters<NonNullable<PolicyPort['vaultSecrets']>>[0]): string[] {
    const named = i.templates.includes('tickets-support') && this.support(i.agent) && i.audience === TICKETS;
    return named && i.tool === 'get_ticket' && i.action === 'read' ? [TICKETS_DB] : [];
  }
  session(agent: string, _u: PolicyUser | undefined, audience: string) {
    const c = this.ceiling(agent).find((x) => x.audience === audience);
    return c ? { template: c.template, ttlSec: 120 } : undefined;
  }
}

/** A fake authenticator: the "JWT-SVID" `tsvid.<base64url id>` and the "chain" marker are trusted. */
export function fakeAuth(): WorkloadAuthenticator {
  const identity = (id: string, method: 'mtls' | 'jwt-svid'): WorkloadIdentity => {
    const m = /^spiffe:\/\/([^/]+)(\/.*)$/.exec(id);
    if (!m) throw new BrokerError('TASKPASS_UNAUTHENTICATED', 'bad id');
    const spiffeId = {
      trustDomain: { name: m[1]! },
      path: m[2]!,
      toString: () => id,
    } as unknown as WorkloadIdentity['spiffeId'];
    return {
      id,
      spiffeId,
      trustDomain: m[1]!,
      method,
      ...(method === 'mtls' ? { x5tS256: 'thumb-of-' + id } : {}),
    };
  };
  return {
    async authenticate(c) {
      const chain = typeof c.peerChain === 'function' ? c.peerChain() : c.peerChain;
      if (chain?.length) return identity((chain[0] as unknown as { id: string }).id, 'mtls');
      if (c.jwtSvid?.startsWith('tsvid.'))
        return identity(Buffer.from(c.jwtSvid.slice(6), 'base64url').toString(), 'jwt-svid');
      throw new BrokerError('TASKPASS_UNAUTHENTICATED', 'no credential');
    },
  };
}

/** A local user-token issuer with a static JWKS. */
export async function userIssuer() {
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const jwk = { ...(await exportJWK(publicKey)), kid: 'idp-1', alg: 'ES256' };
  const sign = (
    claims: Record<string, unknown>,
    opts: { exp?: number; iss?: string; aud?: string; key?: KeyObject } = {},
  ) =>
    new SignJWT({ groups: ['support'], ...claims })
      .setProtectedHeader({ alg: 'ES256', kid: 'idp-1' })
      .setIssuer(opts.iss ?? IDP)
      .setAudience(opts.aud ?? 'taskpass')
      .setSubject(typeof claims.sub === 'string' ? claims.sub : 'alice')
      .setIssuedAt()
      .setExpirationTime(opts.exp ?? Math.floor(Date.now() / 1000) + 3600)
      .sign(opts.key ?? privateKey);
  return { jwk, sign };
}

/** A fake JWT-SVID for `id` (accepted by fakeAuth). */
export const svid = (id: string): string => `tsvid.${Buffer.from(id).toString('base64url')}`;

export interface TestBroker<S extends Store = MemoryStore> {
  app: FastifyInstance;
  store: S;
  config: BrokerConfig;
  publicJwk: Record<string, unknown>;
  user: Awaited<ReturnType<typeof userIssuer>>;
  clock: { now: number };
  /** Headers for a JWT-SVID-authenticated agent. */
  jwt(id: string): Record<string, string>;
  /** Headers that make the peer-cert seam present an mTLS chain for `id`. */
  mtls(id: string): Record<string, string>;
  /** What the app was built from and with (the console shares them). */
  deps: AppDeps;
  services: BrokerServices;
  hub: RevocationHub;
}

/**
 * Builds the app with the fakes above; `x-test-peer` drives the peer-certificate seam. With
 * `opts.store` (an initialised real store) the app uses it instead of the in-memory fake.
 */
export async function testBroker<S extends Store = MemoryStore>(
  extra: Record<string, unknown> = {},
  opts: {
    store?: S;
    policy?: PolicyPort;
    keysProtection?: 'encrypted' | 'plaintext';
    /** The signing key the broker uses (default: an in-process P-256 key, kid `k1`). */
    signingKey?: ReturnType<AppDeps['keys']['current']>;
    /** Receives the audit records (default: the silent logger). */
    audit?: Parameters<typeof buildApp>[0]['audit'];
    /** Adds to the fake authenticator (e.g. a `svidHealth` for readiness tests). */
    identity?: Omit<Parameters<typeof buildApp>[0]['identity'], 'agentAuth'>;
    /** Decision points behind the templates (docs/policy-engines.md). */
    decisionPoints?: AppDeps['decisionPoints'];
    /** A (fake) Vault: the app then leases credentials at /v1/credentials (docs/vault.md). */
    vault?: LeasedCredentialsOptions['vault'];
    /** Vault's health as readiness sees it. */
    vaultHealth?: AppDeps['vaultHealth'];
    /** The broker's logger (default: silent). */
    logger?: AppDeps['logger'];
  } = {},
): Promise<TestBroker<S>> {
  const user = await userIssuer();
  const config = parseConfig({
    issuer: ISSUER,
    trustDomain: TD,
    tls: { mode: 'none' },
    admins: [ADMIN],
    agents: { ids: [`spiffe://${TD}/agents/**`] },
    users: {
      trustedIssuers: [
        { issuer: IDP, audience: 'taskpass', jwks: { keys: [user.jwk] }, algorithms: ['ES256'] },
      ],
    },
    rateLimit: { perAgentPerMinute: 1000 },
    ...extra,
  });
  const store = opts.store ?? new MemoryStore();
  const hub = new RevocationHub({ store });
  const { privateKey, publicKey } = generateKeyPairSync('ec', { namedCurve: 'P-256' });
  const publicJwk = { ...(await exportJWK(publicKey)), kid: 'k1', alg: 'ES256', use: 'sig' };
  const clock = { now: Date.now() };
  const policy = opts.policy ?? new TinyPolicy();
  const deps: AppDeps = {
    config,
    store,
    keys: {
      current: () => opts.signingKey ?? { kid: 'k1', privateKey },
      jwks: () => ({ keys: [publicJwk] }),
      ...(opts.keysProtection ? { protection: opts.keysProtection } : {}),
    },
    policies: { current: () => policy },
    identity: { agentAuth: fakeAuth(), ...opts.identity },
    ...(opts.audit ? { audit: opts.audit } : {}),
    ...(opts.decisionPoints ? { decisionPoints: opts.decisionPoints } : {}),
    ...(opts.vaultHealth ? { vaultHealth: opts.vaultHealth } : {}),
    userTokens: createUserTokenVerifier(config.users.trustedIssuers, { now: () => clock.now }),
    hub,
    logger: opts.logger ?? pino({ level: 'silent' }),
    now: () => clock.now,
    peerCertificates: (req: FastifyRequest) => {
      const id = req.headers['x-test-peer'];
      return typeof id === 'string' ? ([{ id }] as never) : undefined;
    },
  };
  const services = buildServices(deps);
  if (opts.vault)
    deps.credentials = new LeasedCredentials({ store, vault: opts.vault, audit: services.recorder });
  const app = buildApp(deps, services);
  app.addHook('onClose', () => hub.close());
  await app.ready();
  return {
    app,
    store: store as S,
    config,
    publicJwk,
    user,
    clock,
    jwt: (id) => ({ authorization: `Bearer ${svid(id)}` }),
    mtls: (id) => ({ 'x-test-peer': id }),
    deps,
    services,
    hub,
  };
}
