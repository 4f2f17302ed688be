// The verifier side of the broker's revocation feed (docs/design.md §4): one long-lived SSE stream
// (`GET {broker}/v1/revocations/stream`, format 2), resumed with Last-Event-ID, a snapshot on
// connect in pages (`snapshot-page` events ending with `snapshot`), then one event per revocation,
// key-set changes and heartbeats. Lookups are two Map probes; entries are forgotten once nothing
// they cover can still be valid (`until` plus a margin for clock tolerance).
import {
  FEED_EVENTS,
  FEED_VERSION,
  FEED_VERSION_HEADER,
  isRevocation,
  type Revocation,
} from '@taskpass/contract';
import { createParser, type EventSourceMessage } from 'eventsource-parser';
import { type Dispatcher, fetch as undiciFetch } from 'undici';

/** What the verifier needs from a revocation source: O(1) lookups and the time of the last sign of life. */
export interface RevocationSource {
  /** True when the task `txn` or the token `jti` is revoked. Must be O(1) and synchronous. */
  isRevoked(txn: string, jti: string): boolean;
  /**
   * Epoch ms of the last event (snapshot, revocation or heartbeat); undefined until the source
   * holds a complete snapshot. The verifier refuses every call while it is undefined.
   */
  readonly lastEventAt: number | undefined;
  /**
   * Optional: calls `listener` with the kids of the broker's key set whenever the broker announces
   * it (on connect and on every change). The verifier then refreshes its JWKS from the broker when
   * a kid is new to it; the announcement itself is never trusted as a key. Returns an unsubscribe.
   */
  onKeys?(listener: (kids: string[]) => void): () => void;
}

/** Options shared by the feed client and the pull function. */
export interface BrokerConnection {
  /** The broker base URL, e.g. `https://broker.taskpass.local:8443`. */
  brokerUrl: string;
  /** undici dispatcher, e.g. an Agent with the server's X.509-SVID for mTLS. */
  dispatcher?: Dispatcher;
  /** Extra headers (e.g. `authorization: Bearer <JWT-SVID>`); a function is called per request. */
  headers?: Record<string, string> | (() => Record<string, string> | Promise<Record<string, string>>);
}

/** Options of {@link RevocationFeedClient}. */
export interface RevocationFeedOptions extends BrokerConnection {
  /** Reconnect backoff: first delay and cap, ms (defaults 250 and 10 000; ±20 % jitter). */
  backoff?: { initialMs?: number; maxMs?: number };
  /**
   * Seconds kept past `until` before an entry is forgotten; covers verifiers' clock tolerance
   * (default 60).
   */
  retainSec?: number;
  /** Called on connection errors (never with token material). */
  onError?: (err: Error) => void;
  /** Clock (epoch ms), for tests. */
  now?: () => number;
  /** Start connecting in the constructor (default true). */
  autoStart?: boolean;
  /** Forget revocations past `until` at most this often, on feed events and a timer (ms, default 30 000). */
  sweepEveryMs?: number;
}

/** Pages a catch-up pulls at most before it waits for the next heartbeat. */
const MAX_CATCH_UP_PAGES = 1000;

async function headersOf(h: BrokerConnection['headers']): Promise<Record<string, string>> {
  return typeof h === 'function' ? await h() : (h ?? {});
}

function base(url: string): string {
  return url.replace(/\/+$/, '');
}

/**
 * Pull fallback (`GET /v1/revocations?since=N`), one page: for verifiers that cannot hold a stream
 * open, or to catch up. Apply the result with {@link RevocationFeedClient.apply} or your own store;
 * while `more` is true, ask again from the returned `seq`.
 *
 * @example
 * ```ts
 * let since = 0;
 * for (;;) {
 *   const page = await pullRevocations({ brokerUrl, dispatcher }, since);
 *   apply(page.revocations);
 *   since = page.seq;
 *   if (!page.more) break;
 * }
 * ```
 */
export async function pullRevocations(
  conn: BrokerConnection,
  since = 0,
  signal?: AbortSignal,
  limit?: number,
): Promise<{ seq: number; revocations: Revocation[]; more: boolean }> {
  const query = `since=${since}${limit === undefined ? '' : `&limit=${limit}`}`;
  const res = await undiciFetch(`${base(conn.brokerUrl)}/v1/revocations?${query}`, {
    headers: { ...(await headersOf(conn.headers)), accept: 'application/json' },
    ...(conn.dispatcher ? { dispatcher: conn.dispatcher } : {}),
    ...(signal ? { signal } : {}),
  });
  if (!res.ok) throw new Error(`revocation pull answered HTTP ${res.status}`);
  const body = (await res.json()) as { seq?: unknown; revocations?: unknown; more?: unknown };
  if (!Number.isInteger(body.seq) || !Array.isArray(body.revocations)) {
    throw new Error('revocation pull answered an unexpected body');
  }
  // `seq` is where this page ends; `more` (absent from brokers that answer in one page) asks for the next.
  return {
    seq: body.seq as number,
    revocations: body.revocations.filter(isRevocation),
    more: body.more === true,
  };
}

/**
 * Follows the broker's revocation feed and answers {@link RevocationSource.isRevoked} in O(1).
 * Reconnects with backoff and resumes with `Last-Event-ID`; a heartbeat announcing a newer `seq`
 * than the stream delivered triggers a pull to catch up.
 *
 * @example
 * ```ts
 * const feed = new RevocationFeedClient({ brokerUrl: 'https://broker.taskpass.local:8443', dispatcher });
 * await feed.ready(10_000);   // first snapshot applied
 * const verifier = createVerifier({ ..., revocation: feed });
 * // on shutdown
 * await feed.close();
 * ```
 */
export class RevocationFeedClient implements RevocationSource {
  readonly #tasks = new Map<string, number>();
  readonly #tokens = new Map<string, number>();
  readonly #opts: RevocationFeedOptions;
  readonly #now: () => number;
  readonly #retainSec: number;
  readonly #sweepEveryMs: number;
  #lastSweepAt: number;
  readonly #keyListeners = new Set<(kids: string[]) => void>();
  #seq = 0;
  #lastEventAt: number | undefined;
  #abort: AbortController | undefined;
  #closed = false;
  #running: Promise<void> | undefined;
  #readyResolve!: () => void;
  #readyReject!: (e: Error) => void;
  readonly #ready: Promise<void>;
  #isReady = false;
  #sweepTimer: NodeJS.Timeout | undefined;
  #wake: (() => void) | undefined;
  #catchingUp = false;

  constructor(opts: RevocationFeedOptions) {
    this.#opts = opts;
    this.#now = opts.now ?? Date.now;
    this.#retainSec = opts.retainSec ?? 60;
    this.#sweepEveryMs = opts.sweepEveryMs ?? 30_000;
    this.#lastSweepAt = this.#now();
    this.#ready = new Promise<void>((resolve, reject) => {
      this.#readyResolve = resolve;
      this.#readyReject = reject;
    });
    // ready() may never be awaited; an unobserved rejection on close() must not crash the process.
    this.#ready.catch(() => {});
    if (opts.autoStart !== false) this.start();
  }

  /** Highest revocation seq applied. */
  get seq(): number {
    return this.#seq;
  }

  get lastEventAt(): number | undefined {
    return this.#lastEventAt;
  }

  /** True once a complete snapshot has been applied (it stays true across reconnects). */
  get isReady(): boolean {
    return this.#isReady;
  }

  onKeys(listener: (kids: string[]) => void): () => void {
    this.#keyListeners.add(listener);
    return () => {
      this.#keyListeners.delete(listener);
    };
  }

  /** Number of remembered revocations (tasks + tokens). */
  get size(): number {
    return this.#tasks.size + this.#tokens.size;
  }

  isRevoked(txn: string, jti: string): boolean {
    return this.#tasks.has(txn) || this.#tokens.has(jti);
  }

  /** Records revocations (feed events, pulls, tests). Idempotent; never un-revokes. */
  apply(revocations: Iterable<Revocation>, seq?: number): void {
    for (const r of revocations) {
      const m = r.kind === 'task' ? this.#tasks : this.#tokens;
      const prev = m.get(r.id);
      if (prev === undefined || prev < r.until) m.set(r.id, r.until);
      if (r.seq > this.#seq) this.#seq = r.seq;
    }
    if (seq !== undefined && seq > this.#seq) this.#seq = seq;
  }

  /** Forgets revocations whose `until` (plus the retain margin) has passed. */
  sweep(): void {
    this.#lastSweepAt = this.#now();
    const cutoff = this.#lastSweepAt / 1000 - this.#retainSec;
    for (const m of [this.#tasks, this.#tokens])
      for (const [id, until] of m) if (until < cutoff) m.delete(id);
  }

  /** Resolves once the first snapshot has been applied; rejects on timeout or close. */
  ready(timeoutMs?: number): Promise<void> {
    if (timeoutMs === undefined || this.#isReady) return this.#ready;
    return new Promise<void>((resolve, reject) => {
      const t = setTimeout(
        () => reject(new Error(`revocation feed: no snapshot within ${timeoutMs} ms`)),
        timeoutMs,
      );
      this.#ready.then(
        () => {
          clearTimeout(t);
          resolve();
        },
        (e: Error) => {
          clearTimeout(t);
          reject(e);
        },
      );
    });
  }

  /** Starts following the feed (called by the constructor unless `autoStart: false`). */
  start(): void {
    if (this.#running || this.#closed) return;
    this.#sweepTimer = setInterval(() => this.sweep(), this.#sweepEveryMs);
    this.#sweepTimer.unref();
    this.#running = this.#loop();
  }

  /** Stops following the feed. Lookups keep answering from what is known (and the feed turns stale). */
  async close(): Promise<void> {
    this.#closed = true;
    if (this.#sweepTimer) clearInterval(this.#sweepTimer);
    this.#abort?.abort();
    this.#wake?.();
    this.#readyReject(new Error('revocation feed closed'));
    await this.#running;
  }

  async #loop(): Promise<void> {
    const initial = this.#opts.backoff?.initialMs ?? 250;
    const max = this.#opts.backoff?.maxMs ?? 10_000;
    let delay = initial;
    while (!this.#closed) {
      let gotEvent = false;
      try {
        await this.#connect(() => {
          gotEvent = true;
        });
        if (!this.#closed) this.#opts.onError?.(new Error('revocation feed ended'));
      } catch (e) {
        if (!this.#closed) this.#opts.onError?.(e instanceof Error ? e : new Error(String(e)));
      }
      if (this.#closed) break;
      if (gotEvent) delay = initial;
      const wait = delay * (0.8 + Math.random() * 0.4);
      delay = Math.min(max, delay * 2);
      await new Promise<void>((resolve) => {
        const t = setTimeout(resolve, wait);
        this.#wake = () => {
          clearTimeout(t);
          resolve();
        };
      });
      this.#wake = undefined;
    }
  }

  async #connect(onEvent: () => void): Promise<void> {
    const ac = new AbortController();
    this.#abort = ac;
    const headers: Record<string, string> = {
      ...(await headersOf(this.#opts.headers)),
      accept: 'text/event-stream',
      'cache-control': 'no-cache',
      [FEED_VERSION_HEADER]: FEED_VERSION,
    };
    if (this.#seq > 0) headers['last-event-id'] = String(this.#seq);
    const res = await undiciFetch(`${base(this.#opts.brokerUrl)}/v1/revocations/stream`, {
      headers,
      signal: ac.signal,
      ...(this.#opts.dispatcher ? { dispatcher: this.#opts.dispatcher } : {}),
    });
    if (!res.ok || !res.body) {
      await res.body?.cancel().catch(() => {});
      throw new Error(`revocation feed answered HTTP ${res.status}`);
    }
    const parser = createParser({
      onEvent: (ev) => {
        onEvent();
        this.#onEvent(ev);
      },
    });
    const decoder = new TextDecoder();
    try {
      for await (const chunk of res.body) parser.feed(decoder.decode(chunk, { stream: true }));
    } catch (e) {
      if (!ac.signal.aborted) throw e;
    }
  }

  #onEvent(ev: EventSourceMessage): void {
    let data: unknown;
    try {
      data = JSON.parse(ev.data);
    } catch {
      this.#opts.onError?.(new Error(`revocation feed: unparsable ${ev.event ?? 'message'} event`));
      return;
    }
    const d = data as { seq?: unknown; revocations?: unknown; kids?: unknown };
    switch (ev.event) {
      case FEED_EVENTS.snapshotPage:
      case FEED_EVENTS.snapshot:
        if (!Array.isArray(d.revocations)) return;
        // A page's seq says it is complete up to there, so a stream cut between pages resumes
        // after the last page applied (Last-Event-ID), and the rest of the snapshot follows.
        this.apply(
          d.revocations.filter(isRevocation),
          Number.isInteger(d.seq) ? (d.seq as number) : undefined,
        );
        if (ev.event === FEED_EVENTS.snapshot && !this.#isReady) {
          this.#isReady = true;
          this.#readyResolve();
        }
        this.#markLive();
        return;
      case FEED_EVENTS.revoked:
        if (!isRevocation(data)) return;
        this.apply([data]);
        this.#markLive();
        return;
      case FEED_EVENTS.keys: {
        if (!Array.isArray(d.kids)) return;
        const kids = d.kids.filter((k): k is string => typeof k === 'string');
        for (const l of this.#keyListeners) {
          try {
            l(kids);
          } catch (e) {
            this.#opts.onError?.(e instanceof Error ? e : new Error(String(e)));
          }
        }
        this.#markLive();
        return;
      }
      case FEED_EVENTS.heartbeat:
        this.#markLive();
        if (Number.isInteger(d.seq) && (d.seq as number) > this.#seq && this.#isReady) void this.#catchUp();
        return;
    }
  }

  // Before the first complete snapshot there is no sign of life to report: the verifier refuses
  // every call until then (a partial set would let a revoked token through).
  #markLive(): void {
    if (!this.#isReady) return;
    this.#lastEventAt = this.#now();
    if (this.#lastEventAt - this.#lastSweepAt >= this.#sweepEveryMs) this.sweep();
  }

  // The stream should have delivered everything up to the heartbeat's seq; if a replica dropped an
  // event, a pull closes the gap instead of waiting for a reconnect.
  async #catchUp(): Promise<void> {
    if (this.#catchingUp) return;
    this.#catchingUp = true;
    try {
      for (let i = 0; i < MAX_CATCH_UP_PAGES && !this.#closed; i++) {
        const r = await pullRevocations(this.#opts, this.#seq, AbortSignal.timeout(5000));
        this.apply(r.revocations, r.seq);
        if (!r.more) break;
      }
    } catch (e) {
      this.#opts.onError?.(e instanceof Error ? e : new Error(String(e)));
    } finally {
      this.#catchingUp = false;
    }
  }
}
