// `taskpass serve --workers N`: one broker process per core (node:cluster) on the same store.
//
// The primary validates the configuration once, forks N workers and hands each the configuration
// input it validated (over IPC: a worker restarted later parses the same input, not the file as it
// may read by then). Every worker runs startBroker and listens on the same ports; the primary
// accepts connections and passes them round robin (node:cluster's default on Linux), so one
// connection — and its cached agent identity — stays with one worker. The primary serves nothing
// itself: it restarts a worker that dies (with backoff), forwards signals, and aggregates the
// workers' metrics for whichever worker a scrape reached.
//
// Several workers need the Redis store (config.ts refuses SQLite): counters, replay entries, the
// rate limiter and the revocation stream are shared there, as between replicas on several hosts.
import cluster, { type Worker } from 'node:cluster';
import type { Logger } from 'pino';
import { createBrokerLogger } from './log.ts';
import {
  AggregatorRegistry,
  Gauge,
  type MetricObjectWithValues,
  type MetricValue,
  Registry,
} from 'prom-client';
import { type BrokerConfig, parseConfig } from './config.ts';
import { BrokerError } from './errors.ts';
import type { RunningBroker } from './server.ts';

/** Set in a forked worker's environment: this process is a broker worker of `taskpass serve`. */
export const WORKER_ENV = 'TASKPASS_CLUSTER_WORKER';

/** A start-up failure of every worker in a row this often (after one was up) ends the primary. */
const MAX_START_FAILURES = 5;
/** Longest wait before restarting a worker. */
const MAX_BACKOFF_MS = 30_000;
/** How long workers may drain after SIGTERM before they are killed. */
const DRAIN_MS = 30_000;
/** How long the primary waits for a worker's metrics (a scrape that cannot see all fails). */
const METRICS_TIMEOUT_MS = 3_000;

/** What a worker needs to start: the configuration input the primary validated. */
interface ConfigInput {
  raw: Record<string, unknown>;
  source: string;
}

/** One worker's registry as JSON (what AggregatorRegistry.aggregate combines). */
type WorkerMetrics = MetricObjectWithValues<MetricValue<string>>[];

type Message =
  // A worker asks for its configuration once it listens for messages (one sent earlier is lost).
  | { type: 'taskpass:config-req' }
  | ({ type: 'taskpass:config' } & ConfigInput)
  | { type: 'taskpass:ready'; url: string }
  | { type: 'taskpass:failed'; code: string | undefined; message: string }
  // A worker answering /metrics asks the primary for the aggregate …
  | { type: 'taskpass:metrics-req'; id: number }
  | { type: 'taskpass:metrics-res'; id: number; text?: string; error?: string }
  // … which asks every ready worker for its own registry.
  | { type: 'taskpass:collect-req'; id: number }
  | { type: 'taskpass:collect-res'; id: number; metrics?: WorkerMetrics; error?: string };

const isMessage = (m: unknown): m is Message =>
  typeof m === 'object' && m !== null && String((m as { type?: unknown }).type).startsWith('taskpass:');

/**
 * The primary: forks `config.workers` workers and supervises them until SIGTERM/SIGINT (resolves 0
 * once all drained) or until they cannot start (resolves 1 after printing the reason once).
 */
export function servePrimary(
  input: ConfigInput,
  config: BrokerConfig,
  io: { err(s: string): void; logger?: Logger },
): Promise<number> {
  const n = config.workers;
  const logger =
    io.logger ??
    createBrokerLogger({ level: config.logLevel, base: { service: 'taskpass-broker', role: 'primary' } });
  /** Worker ids that report listening. */
  const ready = new Set<number>();
  /** What a worker reported before it exited (its start-up error). */
  const failures = new Map<number, string>();
  /** When workers died or failed to start (backoff over the last minute). */
  const deaths: number[] = [];
  let everReady = false;
  let startFailures = 0;
  let stopping = false;
  let exitCode = 0;
  let announced = false;
  const timers = new Set<NodeJS.Timeout>();
  /** Workers forked and not yet exited (cluster.workers may still list an exited one). */
  const alive = new Map<number, Worker>();

  // The primary's own figure, aggregated with the workers' (one process: no such series).
  const own = new Registry();
  new Gauge({
    name: 'taskpass_workers',
    help: 'Broker worker processes listening (taskpass serve --workers).',
    registers: [own],
    collect() {
      this.set(ready.size);
    },
  });

  let seq = 0;
  const pending = new Map<number, (m: Extract<Message, { type: 'taskpass:collect-res' }>) => void>();
  const collectFrom = (w: Worker): Promise<WorkerMetrics> =>
    new Promise((resolve, reject) => {
      const id = ++seq;
      const timer = setTimeout(() => {
        pending.delete(id);
        reject(new Error(`worker ${w.id} did not send its metrics within ${METRICS_TIMEOUT_MS} ms`));
      }, METRICS_TIMEOUT_MS);
      pending.set(id, (m) => {
        clearTimeout(timer);
        pending.delete(id);
        if (m.metrics) resolve(m.metrics);
        else reject(new Error(m.error ?? 'no metrics'));
      });
      w.send({ type: 'taskpass:collect-req', id } satisfies Message);
    });
  const aggregate = async (): Promise<string> => {
    const workers = [...ready].map((id) => alive.get(id)).filter((w) => w?.isConnected()) as Worker[];
    const parts = await Promise.all([own.getMetricsAsJSON(), ...workers.map(collectFrom)]);
    return AggregatorRegistry.aggregate(parts).metrics();
  };

  const fork = (): void => {
    const w = cluster.fork({ [WORKER_ENV]: '1' });
    alive.set(w.id, w);
    w.on('message', (m: unknown) => {
      if (!isMessage(m)) return;
      if (m.type === 'taskpass:config-req') {
        w.send({ type: 'taskpass:config', ...input } satisfies Message);
      } else if (m.type === 'taskpass:ready') {
        ready.add(w.id);
        everReady = true;
        startFailures = 0;
        logger.info({ worker: w.id, pid: w.process.pid }, 'worker listening');
        if (!announced && ready.size === n) {
          announced = true;
          logger.info({ url: m.url, workers: n }, 'taskpass broker listening');
        }
      } else if (m.type === 'taskpass:failed') {
        failures.set(w.id, m.code ? `${m.code}: ${m.message}` : m.message);
      } else if (m.type === 'taskpass:metrics-req') {
        aggregate().then(
          (text) => w.send({ type: 'taskpass:metrics-res', id: m.id, text } satisfies Message),
          (err: Error) =>
            w.send({ type: 'taskpass:metrics-res', id: m.id, error: err.message } satisfies Message),
        );
      } else if (m.type === 'taskpass:collect-res') {
        pending.get(m.id)?.(m);
      }
    });
  };

  return new Promise<number>((resolve) => {
    const signals: [NodeJS.Signals, () => void][] = [];
    const finish = () => {
      if (alive.size > 0) return;
      for (const t of timers) clearTimeout(t);
      for (const [sig, handler] of signals) process.off(sig, handler);
      cluster.off('exit', onExit);
      logger.info({ code: exitCode }, 'stopped');
      resolve(exitCode);
    };
    const stopAll = (reason: string) => {
      if (stopping) return;
      stopping = true;
      logger.info({ reason, workers: alive.size }, 'stopping workers');
      // Each worker drains as a single broker does on SIGTERM (its own handlers, server.ts).
      for (const w of alive.values()) w.process.kill('SIGTERM');
      const kill = setTimeout(() => {
        for (const w of alive.values()) {
          logger.error({ worker: w.id }, `worker still running ${DRAIN_MS} ms after SIGTERM; killed`);
          w.process.kill('SIGKILL');
        }
        exitCode = 1;
      }, DRAIN_MS);
      kill.unref();
      timers.add(kill);
      finish();
    };
    const giveUp = (why: string) => {
      // One clear error, as the single-process `serve` prints it; the other workers are stopped.
      io.err(`taskpass: ${why}`);
      logger.error({ reason: why }, 'workers cannot start; stopping');
      exitCode = 1;
      stopAll('start-up failure');
    };
    const onExit = (w: Worker, code: number | null, signal: string | null) => {
      alive.delete(w.id);
      const wasReady = ready.delete(w.id);
      const failure = failures.get(w.id);
      failures.delete(w.id);
      if (stopping) {
        if (code !== 0) exitCode = 1;
        finish();
        return;
      }
      const now = Date.now();
      deaths.push(now);
      while (deaths.length && now - deaths[0]! > 60_000) deaths.shift();
      if (!wasReady) {
        startFailures++;
        const why = failure ?? `a worker exited (${signal ?? `code ${code}`}) before listening`;
        // The first start fails fast, like a single broker; later, only when starts keep failing.
        if (!everReady || startFailures >= MAX_START_FAILURES) return giveUp(why);
      }
      const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** (deaths.length - 1));
      logger.error(
        { worker: w.id, pid: w.process.pid, code, signal, failure, restartInMs: delay },
        wasReady ? 'worker died; restarting it' : 'worker failed to start; retrying',
      );
      const t = setTimeout(() => {
        timers.delete(t);
        if (!stopping) fork();
      }, delay);
      timers.add(t);
    };
    const forward = (sig: NodeJS.Signals) => () => {
      for (const w of alive.values()) w.process.kill(sig);
    };
    // SIGHUP: every worker reloads its policies; SIGUSR2: every worker reopens the audit file.
    signals.push(
      ['SIGTERM', () => stopAll('SIGTERM')],
      ['SIGINT', () => stopAll('SIGINT')],
      ['SIGHUP', forward('SIGHUP')],
      ['SIGUSR2', forward('SIGUSR2')],
    );
    for (const [sig, handler] of signals) process.on(sig, handler);
    cluster.on('exit', onExit);
    logger.info({ workers: n }, 'starting workers');
    for (let i = 0; i < n; i++) fork();
  });
}

/**
 * A worker: waits for the primary's configuration, starts the broker, reports it listening (or
 * why it could not start), and answers the primary's metric requests. Never resolves on success.
 */
export async function serveWorker(
  start: (config: BrokerConfig, opts: { logger: Logger }) => Promise<RunningBroker>,
): Promise<void> {
  const send = (m: Message) => process.send?.(m);
  // Until the broker installs its handlers, a forwarded SIGHUP or SIGUSR2 must not end the worker
  // (their default action); there is nothing to reload or reopen yet.
  const ignore = () => {};
  process.on('SIGHUP', ignore);
  process.on('SIGUSR2', ignore);
  const input = await new Promise<ConfigInput>((resolve) => {
    const onMessage = (m: unknown) => {
      if (isMessage(m) && m.type === 'taskpass:config') {
        process.off('message', onMessage);
        resolve({ raw: m.raw, source: m.source });
      }
    };
    process.on('message', onMessage);
    send({ type: 'taskpass:config-req' });
  });
  let broker: RunningBroker;
  try {
    const config = parseConfig(input.raw, input.source);
    // Every line says which worker wrote it.
    const logger = createBrokerLogger({
      level: config.logLevel,
      base: { service: 'taskpass-broker', worker: cluster.worker?.id, pid: process.pid },
    });
    broker = await start(config, { logger });
  } catch (e) {
    const code = e instanceof BrokerError ? e.code : undefined;
    // The primary prints it once for all workers; exit once it has been handed over.
    process.send?.(
      { type: 'taskpass:failed', code, message: (e as Error).message } satisfies Message,
      undefined,
      {},
      () => process.exit(1),
    );
    return;
  }
  let seq = 0;
  const waiting = new Map<number, (m: Extract<Message, { type: 'taskpass:metrics-res' }>) => void>();
  process.on('message', (m: unknown) => {
    if (!isMessage(m)) return;
    if (m.type === 'taskpass:collect-req') {
      broker.metrics.registry.getMetricsAsJSON().then(
        (metrics) => send({ type: 'taskpass:collect-res', id: m.id, metrics }),
        (err: Error) => send({ type: 'taskpass:collect-res', id: m.id, error: err.message }),
      );
    } else if (m.type === 'taskpass:metrics-res') {
      waiting.get(m.id)?.(m);
    }
  });
  // /metrics on any worker: the aggregate over all of them.
  broker.metrics.exposition = () =>
    new Promise<string>((resolve, reject) => {
      const id = ++seq;
      const timer = setTimeout(() => {
        waiting.delete(id);
        reject(new Error('the primary did not answer with the aggregated metrics'));
      }, METRICS_TIMEOUT_MS + 1000);
      waiting.set(id, (m) => {
        clearTimeout(timer);
        waiting.delete(id);
        if (m.text !== undefined) resolve(m.text);
        else reject(new Error(`aggregated metrics: ${m.error ?? 'no answer'}`));
      });
      send({ type: 'taskpass:metrics-req', id });
    });
  send({ type: 'taskpass:ready', url: broker.url });
}
