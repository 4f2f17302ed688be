// The broker's own log: pino JSON lines on stdout (or a file), written without blocking the event
// loop. pino's default destination writes each line with its own synchronous write(2); on the
// issuance path that is one call per request line and audit record (docs/performance.md). Lines
// are collected up to 4 KiB and written asynchronously, at most 100 ms after they were logged;
// pino flushes what is left when the process exits.
import pino, { type Logger, type LoggerOptions } from 'pino';

const FLUSH_EVERY_MS = 100;

/** A pino logger writing to `dest` (a file descriptor, default stdout, or a path), buffered. */
export function createBrokerLogger(options: LoggerOptions, dest: number | string = 1): Logger {
  const stream = pino.destination({ dest, sync: false, minLength: 4096 });
  const timer = setInterval(() => {
    try {
      stream.flush();
    } catch {
      // closed: nothing left to write
      clearInterval(timer);
    }
  }, FLUSH_EVERY_MS);
  timer.unref();
  stream.on('close', () => clearInterval(timer));
  return pino(options, stream);
}
