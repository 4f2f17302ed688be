// A redis-server of a test's own, on a free loopback port in a temp dir, that the test may freeze
// (SIGSTOP), thaw, kill and restart — never the shared one on 6379. AOF with fsync always, as the
// broker requires in production, so that what Redis acknowledged survives a kill.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { createConnection } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { freePort } from '../../harness/net.ts';
import { killAndWait } from '../../harness/child.ts';

const REDIS_SERVER = process.env.TASKPASS_REDIS_SERVER ?? '/usr/bin/redis-server';

/** A redis-server child process under the test's control. */
export interface OwnRedis {
  readonly url: string;
  readonly port: number;
  /** SIGSTOP: the port still accepts connections, nothing is answered. */
  freeze(): void;
  /** SIGCONT. */
  thaw(): void;
  /** SIGKILL, and waits for the process to be gone. */
  kill(): Promise<void>;
  /** Starts it again on the same port and dir (the AOF brings back what was acknowledged). */
  restart(): Promise<void>;
  /** Kills it and removes its dir. Idempotent. */
  stop(): Promise<void>;
}

async function answersPing(port: number): Promise<boolean> {
  return new Promise((resolve) => {
    const s = createConnection({ port, host: '127.0.0.1' });
    let got = '';
    const done = (ok: boolean) => {
      s.destroy();
      resolve(ok);
    };
    s.setTimeout(1000, () => done(false));
    s.on('error', () => done(false));
    s.on('data', (d) => {
      got += d.toString();
      if (got.includes('\r\n')) done(got.startsWith('+PONG'));
    });
    s.on('connect', () => s.write('PING\r\n'));
  });
}

/** Starts a redis-server and resolves once it answers PING. */
export async function startRedisServer(): Promise<OwnRedis> {
  const dir = mkdtempSync(join(tmpdir(), 'taskpass-redis-'));
  const port = await freePort();
  let child: ChildProcess | undefined;
  const killOnExit = () => child?.kill('SIGKILL');
  process.once('exit', killOnExit);

  const start = async () => {
    child = spawn(
      REDIS_SERVER,
      [
        '--port',
        String(port),
        '--bind',
        '127.0.0.1',
        '--dir',
        dir,
        '--save',
        '',
        '--appendonly',
        'yes',
        '--appendfsync',
        'always',
      ],
      { stdio: 'ignore' },
    );
    // Bounded: 200 tries, each a connection attempt that fails fast while nothing listens.
    for (let i = 0; i < 200; i++) {
      if (child.exitCode !== null) throw new Error(`redis-server exited with ${child.exitCode}`);
      if (await answersPing(port)) return;
      await new Promise((r) => setTimeout(r, 25));
    }
    throw new Error(`redis-server on port ${port} did not start`);
  };
  const kill = () => killAndWait(child);
  await start();
  return {
    url: `redis://127.0.0.1:${port}`,
    port,
    freeze: () => void child?.kill('SIGSTOP'),
    thaw: () => void child?.kill('SIGCONT'),
    kill,
    restart: start,
    async stop() {
      await kill();
      process.off('exit', killOnExit);
      rmSync(dir, { recursive: true, force: true });
    },
  };
}
