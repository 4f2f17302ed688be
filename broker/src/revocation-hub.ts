// The revocation feed's engine: one subscription to the store per process, fanned out to every
// feed stream (the HTTP side is routes/revocations.ts).
//
// A revocation reaches subscribers only from store.onRevocation, i.e. after the store made it
// durable. Each stream is switched from snapshot to live without losing or repeating an event: it
// subscribes first (live events wait in the view's one buffer), reads its snapshot page by page,
// then passes on only buffered and later events with a higher seq than the snapshot covered. The
// store assigns a seq and stores its revocation in one atomic step, so a page that contains seq N
// has been preceded by every live revocation up to N.
//
// Snapshots are read in pages and handed out one page at a time, so a snapshot of any size costs
// the broker one page of memory and one page of event-loop time per step (issue #7: a 5 MB
// snapshot written at once stalled the broker and was cut off as a slow reader, forever).
import { setImmediate as yieldToEventLoop } from 'node:timers/promises';
import type { Logger } from 'pino';
import type { Revocation } from '@taskpass/contract';
import { REVOCATION_GRACE_SEC, type Store } from './store/types.ts';

/** The broker's signing-key set as the feed sees it: the kids it publishes and when that changes. */
export interface KeySetSource {
  /** Kids in the broker's JWKS now. */
  kids(): string[];
  /** Calls `listener` after the published key set changed. Returns an unsubscribe function. */
  onChange(listener: () => void): () => void;
}

/** Options of {@link RevocationHub}. */
export interface RevocationHubOptions {
  /** Must be initialised. */
  store: Store;
  logger?: Logger;
  /** Default heartbeat period of the SSE streams (ms). Default 5000. */
  heartbeatMs?: number;
  /** Recent revocations kept in memory to serve resumes without reading the store. Default 10000. */
  ringSize?: number;
  /** Revocations per snapshot page (one store read, one SSE event). Default 1000. */
  pageSize?: number;
  /**
   * Live revocations one stream may hold back while its snapshot is being sent; beyond it the
   * stream ends and its client resumes from the last page it got. Default 100 000.
   */
  maxPending?: number;
  /** The signing keys: a change of the published set is pushed to every stream (`keys` event). */
  keys?: KeySetSource;
  /** Clock, epoch milliseconds. Default `Date.now`. */
  now?: () => number;
}

/** One page of a snapshot: every live revocation with seq ≤ `upTo` has been handed out with it. */
export interface FeedPage {
  revocations: Revocation[];
  upTo: number;
}

/** A stream's consistent view of the feed: its snapshot in pages, then live revocations. */
export interface FeedView {
  /** The snapshot in seq order. Throws {@link FeedOverflowError} when the stream fell too far behind. */
  pages(): AsyncGenerator<FeedPage, void, void>;
  /** The seq the snapshot is complete up to (final once `pages()` is exhausted). */
  readonly seq: number;
  /** Ends the snapshot: calls `onLive` for each held-back and later revocation the snapshot did not cover. */
  live(onLive: (r: Revocation) => void): void;
  /** Stops listening. Idempotent. */
  close(): void;
}

/** A stream held back more live revocations than `maxPending` while its snapshot was sent. */
export class FeedOverflowError extends Error {
  constructor() {
    super('revocation feed: too many revocations arrived while the snapshot was sent');
    this.name = 'FeedOverflowError';
  }
}

/** One open feed stream, as the hub sees it. */
interface StreamHandle {
  end(): void;
  /** Who reads it and how far it got (the console's "verifiers subscribed and their lag"). */
  info?(): StreamInfo;
}

/** A feed stream as the console shows it. */
export interface StreamInfo {
  /** The reader's SPIFFE ID (undefined when the feed needs no authentication). */
  subscriber: string | undefined;
  /** The last seq written to it (its snapshot's, then each live revocation's). */
  seq: number;
  /** Bytes written but not yet taken by the client. */
  buffered: number;
  /** Epoch ms it opened. */
  since: number;
}

/**
 * Fans revocations and key-set changes out to feed streams, keeps a ring of recent revocations
 * for resumes, and tracks open streams so that shutdown can end them.
 */
export class RevocationHub {
  readonly store: Store;
  readonly heartbeatMs: number;
  readonly pageSize: number;
  readonly #logger: Logger | undefined;
  readonly #ringSize: number;
  readonly #maxPending: number;
  readonly #now: () => number;
  readonly #keys: KeySetSource | undefined;
  readonly #listeners = new Set<(r: Revocation) => void>();
  readonly #streams = new Set<StreamHandle>();
  // The ring holds every revocation with ringLow < seq <= seq (once ready).
  #ring: Revocation[] = [];
  #ringLow = Number.POSITIVE_INFINITY;
  #seq = 0;
  readonly #ready: Promise<void>;
  readonly #unsubscribe: () => void;
  #closed = false;

  constructor(opts: RevocationHubOptions) {
    this.store = opts.store;
    this.heartbeatMs = opts.heartbeatMs ?? 5000;
    this.pageSize = Math.max(1, opts.pageSize ?? 1000);
    this.#logger = opts.logger;
    this.#ringSize = Math.max(1, opts.ringSize ?? 10_000);
    this.#maxPending = Math.max(1, opts.maxPending ?? 100_000);
    this.#now = opts.now ?? Date.now;
    this.#keys = opts.keys;
    // Subscribed before reading the starting seq: every revocation after it arrives here.
    this.#unsubscribe = this.store.onRevocation((r) => this.#onRevocation(r));
    this.#ready = this.store.currentSeq().then(
      (s) => {
        this.#ringLow = s;
        this.#ring = this.#ring.filter((r) => r.seq > s);
        if (s > this.#seq) this.#seq = s;
      },
      (err: unknown) => {
        // The ring stays unusable; every stream reads its snapshot from the store.
        this.#logger?.error({ err }, 'revocation hub: cannot read the current seq');
      },
    );
  }

  /** Resolves once the hub knows where the store's sequence starts. */
  ready(): Promise<void> {
    return this.#ready;
  }

  /** Highest revocation seq this process has seen. */
  get seq(): number {
    return this.#seq;
  }

  /** Open feed streams (for the subscribers gauge). */
  subscriberCount(): number {
    return this.#streams.size;
  }

  /** Open feed streams with their lag: revocations this process has seen that a stream has not. */
  subscribers(): (StreamInfo & { lag: number })[] {
    const out: (StreamInfo & { lag: number })[] = [];
    for (const s of this.#streams) {
      const i = s.info?.();
      if (i) out.push({ ...i, lag: Math.max(0, this.#seq - i.seq) });
    }
    return out;
  }

  /** Kids of the broker's published key set (empty without a key source). */
  kids(): string[] {
    return this.#keys?.kids() ?? [];
  }

  /** Calls `listener` when the published key set changes. Returns an unsubscribe function. */
  onKeysChange(listener: () => void): () => void {
    return this.#keys?.onChange(listener) ?? (() => {});
  }

  #onRevocation(r: Revocation): void {
    if (r.seq <= this.#seq) return;
    this.#seq = r.seq;
    this.#ring.push(r);
    if (this.#ring.length > this.#ringSize) {
      const dropped = this.#ring.splice(0, this.#ring.length - this.#ringSize);
      const last = dropped.at(-1);
      if (last) this.#ringLow = Math.max(this.#ringLow, last.seq);
    }
    for (const l of this.#listeners) {
      try {
        l(r);
      } catch (err) {
        this.#logger?.error({ err, seq: r.seq }, 'revocation subscriber threw');
      }
    }
  }

  /** Live revocations, in seq order, from now on. Returns an unsubscribe function. */
  subscribe(listener: (r: Revocation) => void): () => void {
    this.#listeners.add(listener);
    return () => {
      this.#listeners.delete(listener);
    };
  }

  /**
   * Opens a consistent view of the feed: a snapshot (all live revocations when `since` is
   * undefined, else those after `since`) in pages, then live revocations, never one the snapshot
   * already covered. A `since` beyond the store's seq (a store that was reset, or a client of
   * another deployment) gets the full snapshot: a verifier must never skip a seq. `onOverflow`
   * is called (once) if more than `maxPending` live revocations arrive before `live()`: the
   * caller should end the stream at once, even while it waits for a client that does not read.
   */
  async open(since: number | undefined, onOverflow?: () => void): Promise<FeedView> {
    await this.#ready;
    // Served until `until` + grace: verifiers accept tokens that long past their exp.
    const nowSec = Math.floor(this.#now() / 1000) - REVOCATION_GRACE_SEC;
    const pageSize = this.pageSize;
    const maxPending = this.#maxPending;
    let covered = 0;
    let pending: Revocation[] = [];
    let overflow = false;
    let onLive: ((r: Revocation) => void) | undefined;
    const unsubscribe = this.subscribe((r) => {
      if (r.seq <= covered) return;
      if (onLive) {
        covered = r.seq;
        onLive(r);
      } else if (pending.length < maxPending) pending.push(r);
      else if (!overflow) {
        overflow = true;
        pending = [];
        onOverflow?.();
      }
    });
    const trim = (upTo: number) => {
      if (upTo > covered) covered = upTo;
      if (pending.length > 0 && pending[0]!.seq <= covered) pending = pending.filter((r) => r.seq > covered);
    };

    let source: () => AsyncGenerator<FeedPage, void, void>;
    if (since !== undefined && since >= this.#ringLow && since <= this.#seq) {
      // Served from memory: copied now, so nothing can fall between the copy and the buffer.
      const items = this.#ring.filter((r) => r.seq > since && r.until > nowSec);
      const upTo = this.#seq;
      source = async function* () {
        for (let i = 0; i < items.length || i === 0; i += pageSize) {
          const revocations = items.slice(i, i + pageSize);
          yield { revocations, upTo: i + pageSize >= items.length ? upTo : revocations.at(-1)!.seq };
        }
      };
    } else {
      let current: number;
      try {
        // The seq first: pages read after it reach at least everything up to it.
        current = await this.store.currentSeq();
      } catch (e) {
        unsubscribe();
        throw e;
      }
      const from = since === undefined || since > current ? 0 : since;
      const store = this.store;
      source = async function* () {
        let after = from;
        for (;;) {
          const page = await store.revocationsPage(after, nowSec, pageSize);
          const last = page.revocations.at(-1)?.seq ?? 0;
          if (page.next === undefined) {
            yield { revocations: page.revocations, upTo: Math.max(current, last, after) };
            return;
          }
          yield { revocations: page.revocations, upTo: page.next };
          after = page.next;
          // One page per turn: requests and other streams are served between pages.
          await yieldToEventLoop();
        }
      };
    }

    let closed = false;
    return {
      get seq() {
        return covered;
      },
      async *pages() {
        for await (const page of source()) {
          if (overflow) throw new FeedOverflowError();
          trim(page.upTo);
          yield page;
        }
      },
      live(listener) {
        if (overflow) throw new FeedOverflowError();
        const held = pending;
        pending = [];
        onLive = listener;
        for (const r of held) {
          if (r.seq <= covered) continue;
          covered = r.seq;
          listener(r);
        }
      },
      close() {
        if (closed) return;
        closed = true;
        unsubscribe();
      },
    };
  }

  /**
   * One page of revocations after `since` (all live ones when undefined), for the pull endpoint:
   * `seq` is the point they are complete up to (resume from it) and `more` says whether another
   * page follows.
   */
  async page(
    since: number | undefined,
    limit: number,
  ): Promise<{ seq: number; revocations: Revocation[]; more: boolean }> {
    // Served until `until` + grace: verifiers accept tokens that long past their exp.
    const nowSec = Math.floor(this.#now() / 1000) - REVOCATION_GRACE_SEC;
    const current = await this.store.currentSeq();
    const from = since === undefined || since > current ? 0 : since;
    const page = await this.store.revocationsPage(from, nowSec, limit);
    if (page.next !== undefined) return { seq: page.next, revocations: page.revocations, more: true };
    const last = page.revocations.at(-1)?.seq ?? 0;
    return { seq: Math.max(current, last, from), revocations: page.revocations, more: false };
  }

  /** Registers an open stream so that `close()` can end it. Returns the deregistration. */
  track(stream: StreamHandle): () => void {
    if (this.#closed) {
      stream.end();
      return () => {};
    }
    this.#streams.add(stream);
    return () => {
      this.#streams.delete(stream);
    };
  }

  /** Ends every open stream (server shutdown). New streams are refused afterwards. */
  endStreams(): void {
    for (const s of [...this.#streams]) {
      try {
        s.end();
      } catch {
        // already gone
      }
    }
    this.#streams.clear();
  }

  /** Ends every stream and stops listening to the store. Idempotent. */
  async close(): Promise<void> {
    this.#closed = true;
    this.endStreams();
    this.#listeners.clear();
    this.#unsubscribe();
  }
}
