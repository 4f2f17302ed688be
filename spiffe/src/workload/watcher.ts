// Private machinery behind the watch calls and the sources: one stream at a time, reconnect with
// backoff, give up only where the spec says retrying cannot help, and a first-update gate.
//
// Retry policy (SPIFFE_Workload_Endpoint.md §6 / App. A, as go-spiffe's client.go does it):
//   INVALID_ARGUMENT, UNIMPLEMENTED → stop (the request itself is wrong; retrying cannot help).
//   CANCELLED after our own abort   → stop quietly.
//   PERMISSION_DENIED               → "no identity (yet)": report, let the sources redact, retry.
//   anything else (UNAVAILABLE, …)  → report, back off, retry.
import { type ClientReadableStream, type ServiceError, status } from '@grpc/grpc-js';
import { SpiffeError } from '../errors.ts';

/** One reconnect sequence: `next()` gives the delay before the next attempt; `reset()` after success. */
export interface Backoff {
  next(): number;
  reset(): void;
}

/** Makes a fresh {@link Backoff} for each watch. */
export type BackoffStrategy = () => Backoff;

/**
 * go-spiffe's default: 1s, 2s, 3s, … capped at 30s, back to 1s after every message received.
 *
 * @example
 * ```ts
 * new WorkloadApiClient({ backoff: linearBackoff({ initialMs: 50, maxMs: 200 }) });
 * ```
 */
export function linearBackoff(opts: { initialMs?: number; maxMs?: number } = {}): BackoffStrategy {
  const initial = opts.initialMs ?? 1000;
  const max = opts.maxMs ?? 30_000;
  return () => {
    let n = 0;
    return {
      next: () => Math.min(initial * ++n, max),
      reset: () => {
        n = 0;
      },
    };
  };
}

/** A pino-compatible logger subset. Only IDs, codes and messages are logged, never key material. */
export interface WorkloadApiLogger {
  debug?(obj: Record<string, unknown>, msg: string): void;
  warn?(obj: Record<string, unknown>, msg: string): void;
}

/** Receives a watch's updates and errors (every failed attempt is reported; most are retried). */
export interface Watcher<T> {
  onUpdate(value: T): void;
  onError(err: Error): void;
}

const STATUS_NAMES = new Map<number, string>(
  Object.entries(status)
    .filter(([, v]) => typeof v === 'number')
    .map(([k, v]) => [v as number, k]),
);

export function isServiceError(e: unknown): e is ServiceError {
  return e instanceof Error && typeof (e as Partial<ServiceError>).code === 'number';
}

/** The gRPC status code behind a Workload API error (from its cause), if there is one. */
export function grpcCodeOf(e: unknown): number | undefined {
  if (isServiceError(e)) return e.code;
  if (e instanceof Error && e.cause !== undefined) return grpcCodeOf(e.cause);
  return undefined;
}

/** Maps a gRPC failure to this package's errors: PERMISSION_DENIED is "no identity". */
export function toSpiffeError(err: ServiceError, what: string): SpiffeError {
  const name = STATUS_NAMES.get(err.code) ?? String(err.code);
  const detail = err.details || name;
  if (err.code === status.PERMISSION_DENIED) {
    return new SpiffeError('ERR_SPIFFE_NO_IDENTITY', `${what}: ${name}: ${detail}`, { cause: err });
  }
  return new SpiffeError('ERR_SPIFFE_WORKLOAD_API', `${what}: ${name}: ${detail}`, { cause: err });
}

/** A status the client must not retry (App. A): the request itself is wrong. */
export function isFatalStatus(code: number): boolean {
  return code === status.INVALID_ARGUMENT || code === status.UNIMPLEMENTED;
}

export interface WatchLoopOptions<Raw, T> {
  /** Human-readable name for messages, e.g. "FetchX509SVID". */
  what: string;
  open(): ClientReadableStream<Raw>;
  /** Returns undefined to discard a message (§4.5); throws when the message is invalid. */
  parse(raw: Raw): T | undefined;
  watcher: Watcher<T>;
  backoff: Backoff;
  signal: AbortSignal;
  logger?: WorkloadApiLogger | undefined;
}

function safely(logger: WorkloadApiLogger | undefined, what: string, fn: () => void): void {
  try {
    fn();
  } catch (e) {
    // A throwing callback must not kill the stream (or surface inside grpc-js's event emitter).
    logger?.warn?.({ err: e instanceof Error ? e.message : String(e) }, `${what}: watcher callback threw`);
  }
}

/** Waits `ms` or until `signal` aborts, leaving no timer behind either way. */
export function sleep(ms: number, signal: AbortSignal): Promise<void> {
  return new Promise((resolve) => {
    if (signal.aborted) {
      resolve();
      return;
    }
    const done = () => {
      clearTimeout(timer);
      signal.removeEventListener('abort', done);
      resolve();
    };
    const timer = setTimeout(done, ms);
    signal.addEventListener('abort', done, { once: true });
  });
}

/** Runs one stream to its end; resolves with the status error, or undefined for a clean end. */
function streamOnce<Raw, T>(o: WatchLoopOptions<Raw, T>): Promise<ServiceError | undefined> {
  return new Promise((resolve) => {
    let settled = false;
    const call = o.open();
    const onAbort = () => call.cancel();
    const finish = (err: ServiceError | undefined) => {
      if (settled) return;
      settled = true;
      o.signal.removeEventListener('abort', onAbort);
      resolve(err);
    };
    o.signal.addEventListener('abort', onAbort, { once: true });
    call.on('data', (raw: Raw) => {
      // A message arrived, so the connection works: the next failure starts from the shortest delay.
      o.backoff.reset();
      let value: T | undefined;
      try {
        value = o.parse(raw);
      } catch (e) {
        const err = e instanceof Error ? e : new Error(String(e));
        o.logger?.warn?.({ err: err.message }, `${o.what}: invalid message ignored`);
        safely(o.logger, o.what, () => o.watcher.onError(err));
        return;
      }
      if (value === undefined) {
        o.logger?.debug?.({}, `${o.what}: message without mandatory fields discarded`);
        return;
      }
      const v = value;
      safely(o.logger, o.what, () => o.watcher.onUpdate(v));
    });
    // grpc-js emits 'error' as soon as the status arrives, possibly before buffered messages are
    // delivered; settling on 'end' keeps "last data, then PermissionDenied" in order. 'status' is
    // the backstop should 'end' never come.
    let failure: ServiceError | undefined;
    call.on('error', (e: ServiceError) => {
      failure = e;
    });
    call.on('end', () => finish(failure));
    call.on('status', () => setImmediate(() => finish(failure)));
  });
}

/**
 * Keeps a stream open until `signal` aborts: every message goes to `watcher.onUpdate`, every
 * failure to `watcher.onError`, then back off and reconnect. Resolves when aborted; rejects (after
 * reporting) on a status that must not be retried.
 */
export async function watchLoop<Raw, T>(o: WatchLoopOptions<Raw, T>): Promise<void> {
  while (!o.signal.aborted) {
    const err = await streamOnce(o);
    if (o.signal.aborted) return;
    let spiffeErr: SpiffeError;
    if (err === undefined) {
      // The server closed the stream cleanly; go-spiffe treats this (io.EOF) as a retryable error.
      spiffeErr = new SpiffeError('ERR_SPIFFE_WORKLOAD_API', `${o.what}: the server ended the stream`);
    } else {
      spiffeErr = toSpiffeError(err, o.what);
      if (isFatalStatus(err.code)) {
        safely(o.logger, o.what, () => o.watcher.onError(spiffeErr));
        throw spiffeErr;
      }
    }
    const delay = o.backoff.next();
    o.logger?.warn?.(
      { code: spiffeErr.code, err: spiffeErr.message, retryInMs: delay },
      `${o.what}: retrying`,
    );
    safely(o.logger, o.what, () => o.watcher.onError(spiffeErr));
    await sleep(delay, o.signal);
  }
}

/**
 * Runs a watch for a source and gates on its first update. `ready` resolves on the first update and
 * rejects on close, on a fatal error, or when `timeoutMs` passes first (ERR_SPIFFE_TIMEOUT, with
 * the last error as the cause).
 */
export class FirstUpdateGate {
  readonly ready: Promise<void>;
  #resolve!: () => void;
  #reject!: (e: Error) => void;
  #done = false;
  #timer: NodeJS.Timeout | undefined;
  #lastError: Error | undefined;

  constructor(what: string, timeoutMs?: number) {
    this.ready = new Promise<void>((resolve, reject) => {
      this.#resolve = resolve;
      this.#reject = reject;
    });
    // Callers may never await `ready` (e.g. close() before it settles); don't turn that into an
    // unhandled rejection.
    this.ready.catch(() => {});
    if (timeoutMs !== undefined) {
      this.#timer = setTimeout(() => {
        const last = this.#lastError;
        this.fail(
          new SpiffeError(
            'ERR_SPIFFE_TIMEOUT',
            `${what}: no update within ${timeoutMs} ms` + (last ? ` (last error: ${last.message})` : ''),
            last ? { cause: last } : undefined,
          ),
        );
      }, timeoutMs);
    }
  }

  get settled(): boolean {
    return this.#done;
  }

  updated(): void {
    if (this.#done) return;
    this.#done = true;
    clearTimeout(this.#timer);
    this.#resolve();
  }

  noteError(e: Error): void {
    this.#lastError = e;
  }

  fail(e: Error): void {
    if (this.#done) return;
    this.#done = true;
    clearTimeout(this.#timer);
    this.#reject(e);
  }
}
