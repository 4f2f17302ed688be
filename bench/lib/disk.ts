// The floor under a durable answer: how long the disk takes to make 4 KiB durable (write, then
// fdatasync), measured on the directory the store's file is in. Every token waits for one such
// sync (its batch's COMMIT), so the broker's latency tail cannot be below the disk's.
import { closeSync, fdatasyncSync, openSync, rmSync, writeSync } from 'node:fs';
import { join } from 'node:path';
import { type Percentiles, percentiles } from './stats.ts';

export function fdatasyncLatency(dir: string, n = 300): Percentiles {
  const path = join(dir, 'fdatasync-probe');
  const fd = openSync(path, 'w');
  const page = Buffer.alloc(4096, 1);
  const ms: number[] = [];
  try {
    for (let i = 0; i < n; i++) {
      writeSync(fd, page);
      const t0 = performance.now();
      fdatasyncSync(fd);
      ms.push(performance.now() - t0);
    }
  } finally {
    closeSync(fd);
    rmSync(path, { force: true });
  }
  return percentiles(ms);
}
