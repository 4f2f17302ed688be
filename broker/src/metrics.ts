// Prometheus metrics. One registry per app (tests build many apps in one process).
import { Counter, Gauge, Histogram, Registry } from 'prom-client';

/** The broker's metrics. */
export interface BrokerMetrics {
  registry: Registry;
  /** Token decisions: result = allow | deny, reason = template id or error code. */
  decisions: Counter<'result' | 'reason'>;
  issuance: Histogram<string>;
  revocations: Counter<'kind'>;
  feedSubscribers: Gauge<string>;
}

/** Creates the metrics; `subscribers` is read at scrape time for the feed gauge. */
export function createMetrics(subscribers: () => number = () => 0): BrokerMetrics {
  const registry = new Registry();
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
  };
}
