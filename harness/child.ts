import type { ChildProcess } from 'node:child_process';
import { once } from 'node:events';

/** SIGKILL, and waits until the process is gone (nothing to do when it already is). */
export async function killAndWait(c: ChildProcess | undefined): Promise<void> {
  if (!c || c.exitCode !== null || c.signalCode !== null) return;
  const gone = once(c, 'exit');
  c.kill('SIGKILL');
  await gone;
}
