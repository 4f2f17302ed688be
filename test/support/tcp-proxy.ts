/**
 * A loopback TCP proxy that a test can cut and restore, to simulate a network partition between two
 * processes that talk TLS end to end (the proxy only copies bytes, so mTLS and SPIFFE
 * authorization are unaffected).
 *
 * @example
 * ```ts
 * await using proxy = await startTcpProxy({ port: brokerPort });
 * // point the verifier's feed at `https://127.0.0.1:${proxy.port}`
 * proxy.cut();      // destroys open connections and refuses new ones
 * proxy.restore();  // accepts and forwards again
 * ```
 */
import { connect, createServer, type Socket } from 'node:net';

export interface TcpProxy {
  /** The port the proxy listens on (127.0.0.1). */
  readonly port: number;
  /** Whether connections are currently forwarded. */
  readonly open: boolean;
  /** Connections forwarded so far. */
  readonly connections: number;
  /** Destroys every open connection and refuses (resets) new ones until {@link TcpProxy.restore}. */
  cut(): void;
  restore(): void;
  close(): Promise<void>;
  [Symbol.asyncDispose](): Promise<void>;
}

/** Starts a proxy from an ephemeral 127.0.0.1 port to `host:port` (default host 127.0.0.1). */
export async function startTcpProxy(target: { port: number; host?: string }): Promise<TcpProxy> {
  const host = target.host ?? '127.0.0.1';
  const live = new Set<Socket>();
  let open = true;
  let connections = 0;

  const server = createServer((client) => {
    if (!open) {
      client.resetAndDestroy();
      return;
    }
    connections++;
    const upstream = connect({ host, port: target.port });
    live.add(client);
    live.add(upstream);
    const drop = () => {
      client.destroy();
      upstream.destroy();
      live.delete(client);
      live.delete(upstream);
    };
    client.on('error', drop).on('close', drop);
    upstream.on('error', drop).on('close', drop);
    client.pipe(upstream);
    upstream.pipe(client);
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(0, '127.0.0.1', () => resolve());
  });
  const address = server.address();
  if (address === null || typeof address === 'string') throw new Error('proxy has no TCP address');

  const proxy: TcpProxy = {
    port: address.port,
    get open() {
      return open;
    },
    get connections() {
      return connections;
    },
    cut() {
      open = false;
      for (const s of live) s.resetAndDestroy();
      live.clear();
    },
    restore() {
      open = true;
    },
    async close() {
      proxy.cut();
      await new Promise<void>((resolve) => server.close(() => resolve()));
    },
    [Symbol.asyncDispose]() {
      return proxy.close();
    },
  };
  return proxy;
}
