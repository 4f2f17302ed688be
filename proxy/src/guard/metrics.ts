// Prometheus metrics of one guard (one registry each: tests run several guards in one process).
import { Counter, Histogram, Registry } from 'prom-client';

/** The guard's metrics. */
export interface GuardMetrics {
  registry: Registry;
  /** Requests decided at the guard: result = allowed | refused, code = refusal code ("" when allowed). */
  requests: Counter<'result' | 'code'>;
  /** Time from sending a verified request upstream to its answer being complete, by outcome. */
  upstream: Histogram<'outcome'>;
}

/** Creates the metrics. */
export function createGuardMetrics(): GuardMetrics {
  const registry = new Registry();
  return {
    registry,
    requests: new Counter({
      name: 'taskpass_guard_requests_total',
      help: 'MCP requests decided by the guard, by result (allowed, refused) and refusal code.',
      labelNames: ['result', 'code'],
      registers: [registry],
    }),
    upstream: new Histogram({
      name: 'taskpass_guard_upstream_seconds',
      help: 'Upstream time of forwarded requests (until the answer is complete), by outcome (ok or error code).',
      labelNames: ['outcome'],
      buckets: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10],
      registers: [registry],
    }),
  };
}
