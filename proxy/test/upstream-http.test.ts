// The HTTP upstream: answers are streamed as they arrive (an SSE event reaches the caller before
// the upstream has finished), hop-by-hop headers stay behind, and an upstream that is down or slow
// becomes a GuardError with a stable code before any answer has started.
import assert from 'node:assert/strict';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { AddressInfo } from 'node:net';
import { after, describe, test } from 'node:test';
import { request } from 'undici';
import { GuardError } from '../src/index.ts';
import { HttpUpstream } from '../src/guard/upstream-http.ts';

function listen(handler: (req: IncomingMessage, res: ServerResponse) => void): Promise<Server> {
  const s = createServer(handler);
  return new Promise((resolve) => s.listen(0, '127.0.0.1', () => resolve(s)));
}
const urlOf = (s: Server, path = '/mcp') => `http://127.0.0.1:${(s.address() as AddressInfo).port}${path}`;
const closeAll = (s: Server) =>
  new Promise<void>((resolve) => {
    s.closeAllConnections();
    s.close(() => resolve());
  });

const rpc = { jsonrpc: '2.0', id: 1, method: 'tools/call', params: { name: 't', arguments: {} } };

describe('HTTP upstream', () => {
  const servers: Server[] = [];
  after(async () => {
    for (const s of servers) await closeAll(s);
  });

  test('an SSE answer is streamed through, not buffered; the upstream sees the guard headers only', async () => {
    let release!: () => void;
    const released = new Promise<void>((r) => {
      release = r;
    });
    let seen: IncomingMessage['headers'] | undefined;
    let body = '';
    const upstreamServer = await listen((req, res) => {
      seen = req.headers;
      req.on('data', (d) => {
        body += d;
      });
      req.on('end', async () => {
        res.writeHead(200, {
          'content-type': 'text/event-stream',
          'proxy-connection': 'keep-alive',
          'x-upstream': 'yes',
        });
        res.write('event: message\ndata: {"first":true}\n\n');
        await released;
        res.end('event: message\ndata: {"last":true}\n\n');
      });
    });
    servers.push(upstreamServer);
    const upstream = new HttpUpstream({ url: urlOf(upstreamServer, '/inner/mcp'), timeoutMs: 5000 });
    // The guard side: a real node:http response for the upstream to stream into.
    const front = await listen((_req, res) => {
      void upstream
        .forward(
          {
            method: 'POST',
            url: '/mcp',
            headers: { 'content-type': 'application/json', 'taskpass-user': 'alice' },
            body: rpc,
            signal: new AbortController().signal,
          },
          res,
        )
        .catch(() => res.destroy());
    });
    servers.push(front);
    const r = await request(urlOf(front), { method: 'POST', body: '{}' });
    assert.equal(r.statusCode, 200);
    assert.equal(r.headers['x-upstream'], 'yes');
    assert.equal(r.headers['proxy-connection'], undefined, 'hop-by-hop headers are not copied');
    const chunks: string[] = [];
    for await (const chunk of r.body) {
      chunks.push(String(chunk));
      // The first event arrived while the upstream still holds the rest back.
      if (chunks.length === 1) {
        assert.match(chunks[0]!, /"first":true/);
        release();
      }
    }
    assert.match(chunks.join(''), /"last":true/);
    assert.equal(JSON.parse(body).params.name, 't');
    assert.equal(seen?.['taskpass-user'], 'alice');
    assert.equal(seen?.authorization, undefined);
    await upstream.close();
  });

  test('an upstream that is down is TASKPASS_GUARD_UPSTREAM_UNAVAILABLE; a slow one TASKPASS_GUARD_UPSTREAM_TIMEOUT', async () => {
    const dead = await listen(() => {});
    const deadUrl = urlOf(dead);
    await closeAll(dead);
    const forward = (u: HttpUpstream) =>
      u.forward(
        { method: 'POST', url: '/mcp', headers: {}, body: rpc, signal: new AbortController().signal },
        { headersSent: false } as ServerResponse,
      );
    const down = new HttpUpstream({ url: deadUrl, timeoutMs: 1000 });
    await assert.rejects(
      forward(down),
      (e: unknown) =>
        e instanceof GuardError && e.code === 'TASKPASS_GUARD_UPSTREAM_UNAVAILABLE' && e.status === 502,
    );
    await down.close();

    const slowServer = await listen(() => {
      // never answers
    });
    servers.push(slowServer);
    const slow = new HttpUpstream({ url: urlOf(slowServer), timeoutMs: 200 });
    await assert.rejects(
      forward(slow),
      (e: unknown) =>
        e instanceof GuardError && e.code === 'TASKPASS_GUARD_UPSTREAM_TIMEOUT' && e.status === 504,
    );
    await slow.close();
  });

  test('tools are learned over a stateful session: initialize, its session id, paginated tools/list, DELETE', async () => {
    const log: string[] = [];
    const s = await listen((req, res) => {
      let raw = '';
      req.on('data', (d) => {
        raw += d;
      });
      req.on('end', () => {
        const sid = req.headers['mcp-session-id'];
        if (req.method === 'DELETE') {
          log.push(`DELETE ${sid}`);
          return res.writeHead(200).end();
        }
        const m = JSON.parse(raw);
        log.push(`${m.method} ${sid ?? '-'}`);
        if (m.method === 'initialize') {
          res.writeHead(200, { 'content-type': 'application/json', 'mcp-session-id': 's-1' });
          return res.end(
            JSON.stringify({ jsonrpc: '2.0', id: m.id, result: { protocolVersion: '2025-06-18' } }),
          );
        }
        if (m.method === 'notifications/initialized') return res.writeHead(202).end();
        const page =
          m.params.cursor === 'p2'
            ? { tools: [{ name: 'b', _meta: { 'dev.taskpass/resource': 'x' } }] }
            : { tools: [{ name: 'a', annotations: { readOnlyHint: true } }], nextCursor: 'p2' };
        // SSE answer, as many servers send it.
        res.writeHead(200, { 'content-type': 'text/event-stream' });
        res.end(`event: message\ndata: ${JSON.stringify({ jsonrpc: '2.0', id: m.id, result: page })}\n\n`);
      });
    });
    servers.push(s);
    const u = new HttpUpstream({ url: urlOf(s), timeoutMs: 2000 });
    const tools = await u.listTools({ 'taskpass-guard-secret': 'x' });
    assert.deepEqual(tools, [
      { name: 'a', annotations: { readOnlyHint: true } },
      { name: 'b', _meta: { 'dev.taskpass/resource': 'x' } },
    ]);
    assert.deepEqual(log, [
      'initialize -',
      'notifications/initialized s-1',
      'tools/list s-1',
      'tools/list s-1',
      'DELETE s-1',
    ]);
    await u.close();
  });
});
