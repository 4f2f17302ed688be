// The revocation feed over HTTP (docs/design.md §4): `GET /v1/revocations/stream` (SSE) and the
// pull endpoint `GET /v1/revocations?since=N&limit=M`. The hub (revocation-hub.ts) supplies each
// stream's snapshot in pages and then its live revocations; this file only writes them.
//
// A snapshot is written page by page, waiting for `drain` whenever the socket buffer is full, so a
// verifier that reads slowly gets it at its own pace instead of being cut off (it used to be cut
// beyond 1 MiB and restart from nothing, forever). Once live, a client that stops reading is still
// cut beyond `maxBufferedBytes`: it resumes cheaply with Last-Event-ID.
import { FEED_EVENTS, FEED_VERSION, FEED_VERSION_HEADER, type Revocation } from '@taskpass/contract';
import type { FastifyInstance, FastifyReply, FastifyRequest } from 'fastify';
import { FeedOverflowError, type RevocationHub } from '../revocation-hub.ts';

/** Options of {@link revocationRoutes}. */
export interface RevocationRoutesOptions {
  hub: RevocationHub;
  /** Heartbeat period of each stream (ms). Default: the hub's. */
  heartbeatMs?: number;
  /** Authentication hook run before both routes (the app decides who may read the feed). */
  preHandler?: (req: FastifyRequest, reply: FastifyReply) => Promise<void>;
  /** A live stream whose client does not read is cut beyond this many buffered bytes. Default 1 MiB. */
  maxBufferedBytes?: number;
  /** Clock, epoch milliseconds (heartbeat `now`). Default `Date.now`. */
  now?: () => number;
}

/** Largest page the pull endpoint answers. */
export const MAX_PULL_LIMIT = 10_000;

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

const PullPage = {
  type: 'object',
  required: ['seq', 'revocations', 'more'],
  properties: {
    seq: { type: 'integer', description: 'The list is complete up to this seq; resume from it' },
    revocations: { type: 'array', items: RevocationSchema },
    more: { type: 'boolean', description: 'Another page follows: ask again with since = seq' },
  },
} as const;

const since = {
  type: 'integer',
  minimum: 0,
  description: 'Only revocations with a higher seq (default: every live revocation)',
} as const;

const PullQuery = {
  type: 'object',
  properties: {
    since,
    limit: {
      type: 'integer',
      minimum: 1,
      maximum: MAX_PULL_LIMIT,
      default: 1000,
      description: 'Most revocation seqs scanned for this page',
    },
  },
  additionalProperties: false,
} as const;

const StreamQuery = { type: 'object', properties: { since }, additionalProperties: false } as const;

const security: Record<string, string[]>[] = [{ mtls: [] }, { jwtSvid: [] }];

function lastEventId(req: FastifyRequest): number | undefined {
  const h = req.headers['last-event-id'];
  const v = Array.isArray(h) ? h[0] : h;
  if (v === undefined || !/^\d{1,15}$/.test(v.trim())) return undefined;
  return Number(v.trim());
}

const sse = (event: string, data: unknown, id?: number): string =>
  `event: ${event}\n${id === undefined ? '' : `id: ${id}\n`}data: ${JSON.stringify(data)}\n\n`;

const items = (rs: readonly Revocation[]): string => rs.map((r) => JSON.stringify(r)).join(',');

/**
 * Fastify plugin: `GET /v1/revocations/stream` (SSE, design §4) and `GET /v1/revocations` (pull,
 * paged). Streams end on client disconnect and when the server closes.
 */
export async function revocationRoutes(app: FastifyInstance, opts: RevocationRoutesOptions): Promise<void> {
  const { hub } = opts;
  const heartbeatMs = opts.heartbeatMs ?? hub.heartbeatMs;
  const maxBuffered = opts.maxBufferedBytes ?? 1 << 20;
  const now = opts.now ?? Date.now;
  const preHandler = opts.preHandler ? { preHandler: opts.preHandler } : {};

  // preClose: open streams would otherwise keep server.close() waiting forever.
  app.addHook('preClose', async () => hub.endStreams());
  app.addHook('onClose', async () => hub.endStreams());

  app.get<{ Querystring: { since?: number; limit: number } }>(
    '/v1/revocations',
    {
      ...preHandler,
      schema: {
        summary: 'Revocations after a seq, one page at a time (pull; all live ones without `since`)',
        tags: ['revocations'],
        security,
        querystring: PullQuery,
        response: { 200: PullPage },
      },
    },
    async (req) => hub.page(req.query.since, req.query.limit),
  );

  app.get<{ Querystring: { since?: number } }>(
    '/v1/revocations/stream',
    {
      ...preHandler,
      schema: {
        summary: 'Revocation feed (Server-Sent Events): snapshot, then revoked, keys and heartbeat events',
        description:
          'Resume with `Last-Event-ID` (or `?since=`). Events: `snapshot-page` {seq, revocations} ' +
          '(format 2 only, id = seq), `snapshot` {seq, revocations} (id = seq), `revoked` Revocation ' +
          '(id = seq), `keys` {kids}, `heartbeat` {seq, now}.',
        tags: ['revocations'],
        security,
        querystring: StreamQuery,
        headers: {
          type: 'object',
          properties: {
            'last-event-id': { type: 'string', description: 'Last seq received' },
            [FEED_VERSION_HEADER]: {
              type: 'string',
              description: '2: the snapshot comes as snapshot-page events ending with snapshot',
            },
          },
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
      const from = lastEventId(req) ?? req.query.since;
      const paged = req.headers[FEED_VERSION_HEADER] === FEED_VERSION;
      const res = reply.raw;
      let ended = false;
      let heartbeat: NodeJS.Timeout | undefined;
      let view: Awaited<ReturnType<RevocationHub['open']>> | undefined;
      let offKeys: () => void = () => {};
      let untrack: () => void = () => {};
      let wake: (() => void) | undefined;
      // How far this stream got, for the console (hub.subscribers()).
      let delivered = 0;
      const opened = now();
      const end = (closeConnection = false) => {
        if (ended) return;
        ended = true;
        if (heartbeat) clearInterval(heartbeat);
        view?.close();
        offKeys();
        untrack();
        wake?.();
        if (res.writableEnded) return;
        // On shutdown the connection goes too: a keep-alive socket left idle after the stream
        // would hold server.close() until the keep-alive timeout.
        res.end(closeConnection ? () => req.raw.socket?.end() : undefined);
      };
      // Snapshot writes: wait for the client to take what it was sent (back-pressure).
      const send = async (chunk: string) => {
        if (ended || res.write(chunk)) return;
        await new Promise<void>((resolve) => {
          wake = resolve;
          res.once('drain', resolve);
        });
        wake = undefined;
      };
      // Live writes are small; a client that stops reading is cut and resumes later.
      const write = (chunk: string) => {
        if (ended) return;
        res.write(chunk);
        if (res.writableLength > maxBuffered) {
          req.log.warn(
            { buffered: res.writableLength },
            'revocation feed client too slow; closing its stream',
          );
          end();
          res.destroy();
        }
      };
      const keysEvent = () => {
        const kids = hub.kids();
        if (kids.length > 0) write(sse(FEED_EVENTS.keys, { kids }));
      };

      reply.hijack();
      untrack = hub.track({
        end: () => end(true),
        info: () => ({
          subscriber: req.workload?.id,
          seq: delivered,
          buffered: res.writableLength,
          since: opened,
        }),
      });
      req.raw.on('close', () => end());
      res.on('close', () => end());
      if (ended) return;
      try {
        view = await hub.open(from, () => {
          // Its snapshot is not taken up while revocations keep coming: let it resume later.
          req.log.warn('revocation feed: stream fell behind during its snapshot; closing it');
          end();
          res.destroy();
        });
        if (ended) {
          view.close();
          return;
        }
        res.writeHead(200, {
          'content-type': 'text/event-stream; charset=utf-8',
          'cache-control': 'no-cache, no-store, no-transform',
          'x-accel-buffering': 'no',
        });
        if (paged) {
          // Each page is its own event with the seq it is complete up to: a client cut off halfway
          // resumes from the last page it applied. The last page is the `snapshot` event.
          let held: { revocations: Revocation[]; upTo: number } | undefined;
          for await (const page of view.pages()) {
            if (ended) return;
            if (held)
              await send(
                sse(FEED_EVENTS.snapshotPage, { seq: held.upTo, revocations: held.revocations }, held.upTo),
              );
            held = page;
          }
          if (ended) return;
          await send(
            sse(FEED_EVENTS.snapshot, { seq: view.seq, revocations: held?.revocations ?? [] }, view.seq),
          );
        } else {
          // Format 1: one `snapshot` event, as before, but written page by page. Its seq comes
          // last (SSE allows `id:` after `data:`), once the pages have said how far it reaches.
          await send('event: snapshot\ndata: {"revocations":[');
          let first = true;
          for await (const page of view.pages()) {
            if (ended) return;
            if (page.revocations.length === 0) continue;
            await send(`${first ? '' : ','}${items(page.revocations)}`);
            first = false;
          }
          if (ended) return;
          await send(`],"seq":${view.seq}}\nid: ${view.seq}\n\n`);
        }
        if (ended) return;
        delivered = view.seq;
        view.live((r) => {
          delivered = r.seq;
          write(sse(FEED_EVENTS.revoked, r, r.seq));
        });
        keysEvent();
        offKeys = hub.onKeysChange(keysEvent);
        heartbeat = setInterval(() => {
          write(
            sse(FEED_EVENTS.heartbeat, {
              seq: Math.max(view?.seq ?? 0, hub.seq),
              now: Math.floor(now() / 1000),
            }),
          );
        }, heartbeatMs);
        heartbeat.unref();
      } catch (err) {
        if (err instanceof FeedOverflowError) req.log.warn('revocation feed: stream fell behind; closing it');
        else req.log.error({ err }, 'revocation feed: cannot serve the stream');
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
