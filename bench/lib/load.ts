// Main-thread side of the load generator (see load-worker.ts): one worker thread per target.
import { Worker } from 'node:worker_threads';

/** One HTTP request, replayed as is. */
export interface PreparedRequest {
  method: string;
  path: string;
  headers: Record<string, string>;
  body?: string;
}

export interface LoadWorkerData {
  /** e.g. `https://127.0.0.1:8443` */
  origin: string;
  /** Client certificate and trust anchors (PEM) for HTTPS targets. */
  tls?: { key: string; cert: string; ca: string };
  /** Keep-alive connections in the pool. */
  connections: number;
}

export type LoadJob =
  | {
      kind: 'closed';
      concurrency: number;
      warmupMs: number;
      durationMs: number;
      requests: PreparedRequest[];
      /** Index of the first request used (requests are used round-robin from here). */
      offset: number;
    }
  | {
      kind: 'open';
      /** Requests started per second. */
      rate: number;
      warmupMs: number;
      durationMs: number;
      requests: PreparedRequest[];
      offset: number;
    };

export interface LoadResult {
  /** 2xx answers inside the measuring window. */
  ok: number;
  /** Non-2xx answers or transport errors inside the window. */
  errors: number;
  statuses: Record<string, number>;
  firstError: string | undefined;
  elapsedMs: number;
  /** Per-request latency (ms) of the measured 2xx answers. */
  latencies: number[];
  /**
   * Open loop: how late the generator itself started each measured request after its scheduled
   * time (ms; part of its latency). Its own stalls show here. Closed loop: empty.
   */
  sendLate: number[];
  /** Requests started in total (warm-up included); advance the next offset by this. */
  sent: number;
}

/**
 * Starts a worker thread running a TypeScript module. On Node 20 a worker does not get the tsx
 * loader from the inherited `--import tsx` in time for its entry point, so a tiny JavaScript entry
 * registers tsx first and then imports the module (`--conditions` is inherited as usual).
 */
export function tsWorker(url: URL, workerData: unknown): Worker {
  const api = JSON.stringify(import.meta.resolve('tsx/esm/api'));
  const boot = `import { register } from ${api}; register(); await import(${JSON.stringify(url.href)});`;
  return new Worker(new URL(`data:text/javascript,${encodeURIComponent(boot)}`), { workerData });
}

/** A load generator bound to one target. */
export class LoadClient {
  readonly #worker: Worker;
  #seq = 0;
  readonly #waiting = new Map<number, { resolve(r: LoadResult): void; reject(e: Error): void }>();

  constructor(data: LoadWorkerData) {
    this.#worker = tsWorker(new URL('./load-worker.ts', import.meta.url), data);
    this.#worker.on('message', (m: { id: number; result: LoadResult }) => {
      this.#waiting.get(m.id)?.resolve(m.result);
      this.#waiting.delete(m.id);
    });
    this.#worker.on('error', (e) => {
      console.error('load worker failed:', e);
      process.exitCode = 1;
      for (const [, w] of this.#waiting) w.reject(e);
      this.#waiting.clear();
    });
  }

  run(job: LoadJob): Promise<LoadResult> {
    const id = ++this.#seq;
    return new Promise((resolve, reject) => {
      this.#waiting.set(id, { resolve, reject });
      this.#worker.postMessage({ id, job });
    });
  }

  async close(): Promise<void> {
    const exited = new Promise((r) => this.#worker.once('exit', r));
    this.#worker.postMessage({ close: true });
    await exited;
  }
}
