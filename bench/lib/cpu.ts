// CPU time of the main thread (the one the broker runs on), which a busy neighbour on a shared
// machine does not inflate the way it inflates wall-clock rates: per request, it is what the
// broker costs. Node ≥ 23.9 has process.threadCpuUsage(); before, Linux's /proc gives it (in clock
// ticks, 10 ms, fine over runs of seconds). Undefined where neither is available.
import { readFileSync } from 'node:fs';

const TICK_MS = 10;

/** CPU milliseconds (user + system) the main thread has used so far, or undefined. */
export function mainThreadCpuMs(): number | undefined {
  const p = process as unknown as { threadCpuUsage?: () => { user: number; system: number } };
  if (typeof p.threadCpuUsage === 'function') {
    const u = p.threadCpuUsage();
    return (u.user + u.system) / 1000;
  }
  try {
    // Fields after the command name (which may hold spaces): utime is the 14th, stime the 15th.
    const stat = readFileSync(`/proc/self/task/${process.pid}/stat`, 'utf8');
    const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    return (Number(f[11]) + Number(f[12])) * TICK_MS;
  } catch {
    return undefined;
  }
}

/**
 * Runs `fn`, returning its result, the main thread's CPU milliseconds spent meanwhile, the whole
 * process's (every thread: the event loop, worker threads, V8's GC helpers, libuv's pool), and the
 * event loop's utilisation (the share of the time it was not waiting for I/O or a timer).
 */
export async function withCpu<T>(
  fn: () => Promise<T>,
): Promise<{ result: T; cpuMs: number | undefined; processCpuMs: number; loopUtilisation: number }> {
  const before = mainThreadCpuMs();
  const all = process.cpuUsage();
  const elu = performance.eventLoopUtilization();
  const result = await fn();
  const after = mainThreadCpuMs();
  const used = process.cpuUsage(all);
  return {
    result,
    cpuMs: before === undefined || after === undefined ? undefined : after - before,
    processCpuMs: (used.user + used.system) / 1000,
    loopUtilisation: performance.eventLoopUtilization(elu).utilization,
  };
}

/** CPU milliseconds (user + system, all threads) processes `pids` have used so far, or undefined. */
export function processesCpuMs(pids: readonly number[]): number | undefined {
  try {
    let ms = 0;
    for (const pid of pids) {
      const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
      const f = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      ms += (Number(f[11]) + Number(f[12])) * TICK_MS;
    }
    return ms;
  } catch {
    return undefined;
  }
}
