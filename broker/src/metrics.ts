// Prometheus metrics. One registry per app (tests build many apps in one process). Under
// `taskpass serve --workers N` every worker keeps its own registry and /metrics answers the sum over
// the workers (cluster.ts): counters and histograms add up; each per-process gauge says below how
// its values combine (prom-client's `aggregator`, which one process ignores).
import { Counter, Gauge, Histogram, Registry } from 'prom-client';
import type { SvidHealth } from './routes/context.ts';

/** The broker's metrics. */
export interface BrokerMetrics {
  registry: Registry;
  /** Token decisions: result = allow | deny, reason = template id or error code. */
  decisions: Counter<'result' | 'reason'>;
  issuance: Histogram<string>;
  revocations: Counter<'kind'>;
  feedSubscribers: Gauge<string>;
  svidExpiry: Gauge<string>;
  workloadApiUp: Gauge<string>;
  svidState: Gauge<'state'>;
  /** Approvals asked (a new approval created for a call). */
  approvalRequests: Counter<string>;
  /** Decision attempts: result = approved | denied | lost (someone else decided first) | refused. */
  approvalDecisions: Counter<'result'>;
  /** Seconds from request to decision. */
  approvalTimeToDecide: Histogram<'result'>;
  /** Vault leases due for revocation and not yet confirmed by Vault (set by the LeaseRevoker). */
  vaultLeasesPending: Gauge<string>;
  /**
   * What /metrics answers, when not this registry alone: a cluster worker's asks the primary for
   * the aggregate over every worker (cluster.ts).
   */
  exposition?: () => Promise<string>;
}

const SVID_STATES = ['fresh', 'stale', 'expired', 'missing'] as const;

/** Creates the metrics; `subscribers` and `svidHealth` are read at scrape time. */
export function createMetrics(
  subscribers: () => number = () => 0,
  svidHealth?: () => SvidHealth,
): BrokerMetrics {
  const registry = new Registry();
  // Without a live source (tests) the SVID counts as fresh; a failing one counts as missing.
  const health = (): SvidHealth => {
    if (!svidHealth) return { svid: 'fresh', workloadApi: 'up', expiresAt: undefined };
    try {
      return svidHealth();
    } catch {
      return { svid: 'missing', workloadApi: 'down', expiresAt: undefined };
    }
  };
  return {
    registry,
    decisions: new Counter({
      name: 'taskpass_decisions_total',
      help: 'Call-token decisions by result and reason (error code on deny, "allowed" on allow).',
      labelNames: ['result', 'reason'],
      registers: [registry],
    }),
    issuance: new Histogram({
      name: 'taskpass_issuance_seconds',
      help: 'Time to decide, mint and record one call token.',
      buckets: [0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25],
      registers: [registry],
    }),
    revocations: new Counter({
      name: 'taskpass_revocations_total',
      help: 'Revocations recorded by this broker (task or token).',
      labelNames: ['kind'],
      registers: [registry],
    }),
    feedSubscribers: new Gauge({
      name: 'taskpass_feed_subscribers',
      help: 'Open revocation feed streams on this broker.',
      registers: [registry],
      collect() {
        this.set(subscribers());
      },
    }),
    svidExpiry: new Gauge({
      name: 'taskpass_svid_expiry_seconds',
      help: "Seconds until the broker's served X.509-SVID expires (negative once expired, 0 without one).",
      registers: [registry],
      // Workers: the SVID that expires first.
      aggregator: 'min',
      collect() {
        const at = health().expiresAt;
        this.set(at ? (at.getTime() - Date.now()) / 1000 : 0);
      },
    }),
    workloadApiUp: new Gauge({
      name: 'taskpass_workload_api_up',
      help: 'Whether the SPIFFE Workload API stream of the broker is up (1) or failing (0).',
      registers: [registry],
      // Workers: down as soon as one worker's stream is.
      aggregator: 'min',
      collect() {
        this.set(health().workloadApi === 'up' ? 1 : 0);
      },
    }),
    approvalRequests: new Counter({
      name: 'taskpass_approval_requests_total',
      help: 'Approvals asked: a call needed a person and no approval for it was pending.',
      registers: [registry],
    }),
    approvalDecisions: new Counter({
      name: 'taskpass_approval_decisions_total',
      help: 'Approval decision attempts by result: approved, denied, lost (decided first by someone else), refused (not an approver, expired, invalid).',
      labelNames: ['result'],
      registers: [registry],
    }),
    approvalTimeToDecide: new Histogram({
      name: 'taskpass_approval_time_to_decide_seconds',
      help: 'Seconds from an approval request to its decision, by result (approved, denied).',
      labelNames: ['result'],
      buckets: [5, 15, 30, 60, 120, 300, 600, 1800, 3600],
      registers: [registry],
    }),
    svidState: new Gauge({
      name: 'taskpass_svid_state',
      help: "1 for the state of the broker's X.509-SVID: fresh, stale (valid, Workload API down or rotation overdue), expired, missing.",
      labelNames: ['state'],
      registers: [registry],
      // Workers: how many are in each state (one process: 1 for its state), so that an alert on
      // `{state="expired"} > 0` fires when any worker serves an expired SVID.
      aggregator: 'sum',
      collect() {
        const current = health().svid;
        for (const s of SVID_STATES) this.set({ state: s }, s === current ? 1 : 0);
      },
    }),
    vaultLeasesPending: new Gauge({
      name: 'taskpass_vault_leases_pending',
      help: 'Vault leases of ended or expired tasks whose revocation Vault has not confirmed yet.',
      registers: [registry],
      // Every worker counts the same outbox in the shared store: the largest (latest) count.
      aggregator: 'max',
    }),
  };
}
