// The console's live events (GET /console/api/events, Server-Sent Events): new decision records
// (every replica's: the chain is tailed from the store, woken at once by this process's own
// records), and approval changes. Admins and viewers get every record; anyone else only the
// changes of approvals they may decide.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import { safeJson } from './app.ts';
import type { ConsoleApiDeps } from './api.ts';
import { approverOf, type ConsoleSession } from './session.ts';

const sse = (event: string, data: unknown, id?: number): string =>
  `${id !== undefined ? `id: ${id}\n` : ''}event: ${event}\ndata: ${safeJson(data)}\n\n`;

export function consoleEvents(
  app: FastifyInstance,
  d: ConsoleApiDeps,
  session: (req: FastifyRequest) => ConsoleSession,
): void {
  const pollMs = d.eventsPollMs ?? 1000;
  // Open streams, ended when the console closes (a hijacked stream would hold close() forever).
  const open = new Set<() => void>();
  app.addHook('onClose', async () => {
    for (const end of [...open]) end();
  });
  app.get('/console/api/events', async (req, reply) => {
    const s = session(req);
    const seesAll = s.roles.viewer;
    const res = reply.raw;
    const last = Number(req.headers['last-event-id']);
    let seq = Number.isSafeInteger(last) && last >= 0 ? last : (await d.store.decisionHead()).seq;
    let ended = false;
    let busy = false;
    let again = false;
    const write = (chunk: string) => {
      if (ended) return;
      res.write(chunk);
      // A page that stopped reading is cut; it reconnects with Last-Event-ID.
      if (res.writableLength > 1_000_000) end();
    };
    // Reads what the chain holds past `seq`, in order; overlapping wake-ups coalesce.
    const tail = async (): Promise<void> => {
      if (!seesAll || ended) return;
      if (busy) {
        again = true;
        return;
      }
      busy = true;
      try {
        do {
          again = false;
          for (;;) {
            const recs = await d.store.decisionsRange(seq, 200);
            for (const r of recs) {
              write(sse('decision', r, r.seq));
              seq = r.seq;
            }
            if (recs.length < 200) break;
          }
        } while (again && !ended);
      } catch (err) {
        req.log.warn({ err }, 'console events: cannot read decision records (retrying)');
      } finally {
        busy = false;
      }
    };
    const offRecord = d.services.recorder.onRecord(() => void tail());
    const offApproval = d.store.onApprovalChange((id) => {
      void (async () => {
        try {
          const a = await d.services.approvals.visible(approverOf(s), id);
          write(sse('approval', { id, status: a.status }));
        } catch {
          // not this person's to see
        }
      })();
    });
    const poll = setInterval(() => void tail(), pollMs);
    const heartbeat = setInterval(() => write(sse('keepalive', { at: d.now() })), 15_000);
    poll.unref();
    heartbeat.unref();
    open.add(end);
    function end() {
      if (ended) return;
      ended = true;
      clearInterval(poll);
      clearInterval(heartbeat);
      offRecord();
      offApproval();
      open.delete(end);
      if (!res.writableEnded) res.end();
    }
    reply.hijack();
    req.raw.on('close', end);
    res.writeHead(200, {
      'content-type': 'text/event-stream; charset=utf-8',
      'cache-control': 'no-cache, no-store, no-transform',
      'x-accel-buffering': 'no',
      'content-security-policy': "default-src 'none'; frame-ancestors 'none'",
      'x-content-type-options': 'nosniff',
      'referrer-policy': 'same-origin',
    });
    write(sse('ready', { seq, sees: seesAll ? 'all' : 'approvals' }));
    void tail();
  });
}
