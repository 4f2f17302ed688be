// The revocation feed: one subscription to the store per process, fanned out to every SSE stream.
//
// A revocation reaches subscribers only from store.onRevocation, i.e. after the store made it
// durable. Each stream is switched from snapshot to live without losing or repeating an event:
// it subscribes first, reads its snapshot and the seq the snapshot is complete up to, then passes
// on only live events with a higher seq. The store assigns a seq and stores its revocation in one
// atomic step, so a snapshot that contains seq N contains every live revocation up to N.
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import type { Logger } from 'pino';
import type { Revocation, Store } from './store/types.ts';

/** Options of {@link RevocationHub}. */
export interface RevocationHubOptions {
  /** Must be initialised. */
  store: Store;
  logger?: Logger;
  /** Default heartbeat period of the SSE streams (ms). Default 5000. */
  heartbeatMs?: number;
  /** Recent revocations kept in memory to serve resumes without reading the store. Default 10000. */
  ringSize?: number;
  /** Clock, epoch milliseconds. Default `Date.now`. */
  now?: () => number;
}

/** What a stream starts from: the revocations to send and the seq they are complete up to. */
export interface FeedSnapshot {
  seq: number;
  revocations: Revocation[];
}

/** One open feed stream, as the hub sees it. */
interface StreamHandle {
  end(): void;
}

/**
 * Fans revocations out from the store to feed streams, keeps a ring of recent ones for resumes,
 * and tracks open streams so that shutdown can end them.
 */
export class RevocationHub {
  readonly store: Store;
  readonly heartbeatMs: number;
  readonly #logger: Logger | undefined;
  readonly #ringSize: number;
  readonly #now: () => number;
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
    this.#logger = opts.logger;
    this.#ringSize = Math.max(1, opts.ringSize ?? 10_000);
    this.#now = opts.now ?? Date.now;
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

  #onRevocation(r: Revocation): void {
    if (r.seq <= this.#seq) return;
    if (r.seq > this.#seq) this.#seq = r.seq;
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
   * undefined, else those after `since`), then `onLive` for each later revocation, never one the
   * snapshot already covered. A `since` beyond the store's seq (a store that was reset, or a
   * client of another deployment) gets the full snapshot: a verifier must never skip a seq.
   */
  async open(
    since: number | undefined,
    onLive: (r: Revocation) => void,
  ): Promise<{ snapshot: FeedSnapshot; unsubscribe: () => void }> {
    await this.#ready;
    const now = Math.floor(this.#now() / 1000);
    let sent = 0;
    let buffered: Revocation[] | undefined = [];
    const forward = (r: Revocation) => {
      if (buffered) buffered.push(r);
      else if (r.seq > sent) {
        sent = r.seq;
        onLive(r);
      }
    };
    const unsubscribe = this.subscribe(forward);
    try {
      let snapshot: FeedSnapshot;
      if (since !== undefined && since >= this.#ringLow && since <= this.#seq) {
        // Served from memory: nothing can arrive between reading the ring and the switch.
        snapshot = {
          seq: this.#seq,
          revocations: this.#ring.filter((r) => r.seq > since && r.until > now),
        };
      } else {
        snapshot = await this.snapshot(since, now);
      }
      sent = snapshot.seq;
      const pending = buffered;
      buffered = undefined;
      for (const r of pending) forward(r);
      return { snapshot, unsubscribe };
    } catch (e) {
      unsubscribe();
      throw e;
    }
  }

  /**
   * Reads a snapshot from the store: revocations after `since` (all live ones when undefined)
   * and the seq it is complete up to. Used by the pull endpoint and by streams the ring cannot
   * serve.
   */
  async snapshot(since: number | undefined, nowSec = Math.floor(this.#now() / 1000)): Promise<FeedSnapshot> {
    // The seq first: the list read after it contains at least everything up to it.
    const current = await this.store.currentSeq();
    const from = since === undefined || since > current ? 0 : since;
    const revocations = await this.store.revocationsSince(from, nowSec);
    const seq = Math.max(current, revocations.at(-1)?.seq ?? 0);
    return { seq, revocations };
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

/** Options of {@link revocationFeedRoutes}. */
export interface RevocationFeedOptions {
  hub: RevocationHub;
  /** Heartbeat period of each stream (ms). Default: the hub's. */
  heartbeatMs?: number;
  /** The store (default: the hub's); only read through the hub. */
  store?: Store;
  /** Authentication hook run before both routes (the app decides who may read the feed). */
  preHandler?: (req: FastifyRequest, reply: FastifyReply) => Promise<void>;
  /** A stream whose client does not read is cut beyond this many buffered bytes. Default 1 MiB. */
  maxBufferedBytes?: number;
  /** Clock, epoch milliseconds (heartbeat `now`). Default `Date.now`. */
  now?: () => number;
}

const RevocationSchema = {
  type: 'object',
  required: ['seq', 'kind', 'id', 'until', 'reason'],
  properties: {
    seq: { type: 'integer' },
    kind: { type: 'string', enum: ['task', 'token'] },
    id: { type: 'string' },
    until: { type: 'integer', description: 'Epoch seconds after which the revocation can be forgotten' },
    reason: { type: 'string' },
  },
} as const;

const FeedPage = {
  type: 'object',
  required: ['seq', 'revocations'],
  properties: {
    seq: { type: 'integer', description: 'The list is complete up to this seq; resume from it' },
    revocations: { type: 'array', items: RevocationSchema },
  },
} as const;

const SinceQuery = {
  type: 'object',
  properties: {
    since: {
      type: 'integer',
      minimum: 0,
      description: 'Only revocations with a higher seq (default: every live revocation)',
    },
  },
  additionalProperties: false,
} as const;

const security: Record<string, string[]>[] = [{ mtls: [] }, { jwtSvid: [] }];

function lastEventId(req: FastifyRequest): number | undefined {
  const h = req.headers['last-event-id'];
  const v = Array.isArray(h) ? h[0] : h;
  if (v === undefined || !/^\d{1,15}$/.test(v.trim())) return undefined;
  return Number(v.trim());
}

const sse = (event: string, data: unknown, id?: number): string =>
  `event: ${event}\n${id === undefined ? '' : `id: ${id}\n`}data: ${JSON.stringify(data)}\n\n`;

/**
 * Fastify plugin: `GET /v1/revocations/stream` (SSE, design §4) and `GET /v1/revocations?since=N`
 * (pull). Streams end on client disconnect and when the server closes.
 */
export async function revocationFeedRoutes(
  fastify: FastifyInstance,
  opts: RevocationFeedOptions,
): Promise<void> {
  const { hub } = opts;
  const heartbeatMs = opts.heartbeatMs ?? hub.heartbeatMs;
  const maxBuffered = opts.maxBufferedBytes ?? 1 << 20;
  const now = opts.now ?? Date.now;
  const preHandler = opts.preHandler ? { preHandler: opts.preHandler } : {};

  // preClose: open streams would otherwise keep server.close() waiting forever.
  fastify.addHook('preClose', async () => hub.endStreams());
  fastify.addHook('onClose', async () => hub.endStreams());

  fastify.get<{ Querystring: { since?: number } }>(
    '/v1/revocations',
    {
      ...preHandler,
      schema: {
        summary: 'Revocations after a seq (pull; all live ones without `since`)',
        tags: ['revocations'],
        security,
        querystring: SinceQuery,
        response: { 200: FeedPage },
      },
    },
    async (req) => hub.snapshot(req.query.since),
  );

  fastify.get<{ Querystring: { since?: number } }>(
    '/v1/revocations/stream',
    {
      ...preHandler,
      schema: {
        summary: 'Revocation feed (Server-Sent Events): snapshot, then revoked and heartbeat events',
        description:
          'Resume with `Last-Event-ID` (or `?since=`). Events: `snapshot` {seq, revocations}, ' +
          '`revoked` Revocation (id = seq), `heartbeat` {seq, now}.',
        tags: ['revocations'],
        security,
        querystring: SinceQuery,
        headers: {
          type: 'object',
          properties: { 'last-event-id': { type: 'string', description: 'Last seq received' } },
        },
        response: {
          200: {
            description: 'text/event-stream',
            content: { 'text/event-stream': { schema: { type: 'string' } } },
          },
        },
      },
    },
    async (req, reply) => {
      const since = lastEventId(req) ?? req.query.since;
      const res = reply.raw;
      let ended = false;
      let heartbeat: NodeJS.Timeout | undefined;
      let unsubscribe: () => void = () => {};
      let untrack: () => void = () => {};
      const end = (closeConnection = false) => {
        if (ended) return;
        ended = true;
        if (heartbeat) clearInterval(heartbeat);
        unsubscribe();
        untrack();
        if (res.writableEnded) return;
        // On shutdown the connection goes too: a keep-alive socket left idle after the stream
        // would hold server.close() until the keep-alive timeout.
        res.end(closeConnection ? () => req.raw.socket?.end() : undefined);
      };
      const write = (chunk: string) => {
        if (ended) return;
        res.write(chunk);
        // A client that stops reading would make the broker buffer without bound; it resumes later.
        if (res.writableLength > maxBuffered) {
          req.log.warn(
            { buffered: res.writableLength },
            'revocation feed client too slow; closing its stream',
          );
          end();
          res.destroy();
        }
      };
      let sent = 0;
      const pending: Revocation[] = [];
      let live = false;
      const onLive = (r: Revocation) => {
        if (!live) {
          pending.push(r);
          return;
        }
        sent = r.seq;
        write(sse('revoked', r, r.seq));
      };

      reply.hijack();
      untrack = hub.track({ end: () => end(true) });
      req.raw.on('close', () => end());
      res.on('close', () => end());
      if (ended) return;
      try {
        const opened = await hub.open(since, onLive);
        unsubscribe = opened.unsubscribe;
        if (ended) {
          unsubscribe();
          return;
        }
        res.writeHead(200, {
          'content-type': 'text/event-stream; charset=utf-8',
          'cache-control': 'no-cache, no-store, no-transform',
          'x-accel-buffering': 'no',
        });
        sent = opened.snapshot.seq;
        write(sse('snapshot', opened.snapshot, opened.snapshot.seq));
        live = true;
        for (const r of pending.splice(0)) onLive(r);
        heartbeat = setInterval(() => {
          write(sse('heartbeat', { seq: Math.max(sent, hub.seq), now: Math.floor(now() / 1000) }));
        }, heartbeatMs);
        heartbeat.unref();
      } catch (err) {
        req.log.error({ err }, 'revocation feed: cannot open the stream');
        if (!res.headersSent && !ended) {
          res.writeHead(503, { 'content-type': 'application/json' });
          res.end(
            JSON.stringify({
              code: 'TASKPASS_STORE_UNAVAILABLE',
              message: 'the revocation feed is unavailable',
            }),
          );
        }
        end();
      }
    },
  );
}
