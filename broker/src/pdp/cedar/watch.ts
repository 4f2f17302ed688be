// Calls `onChange` once things settle after any change to the watched paths (debounced).
import { type FSWatcher, watch } from 'node:fs';

/** Watches `paths` (directories or files); returns the function that stops watching. */
export function watchPaths(
  paths: readonly string[],
  debounceMs: number,
  onChange: () => void,
  onError: (err: Error) => void,
): () => void {
  let timer: NodeJS.Timeout | undefined;
  const fire = () => {
    if (timer) clearTimeout(timer);
    timer = setTimeout(() => {
      timer = undefined;
      onChange();
    }, debounceMs);
    timer.unref?.();
  };
  // Any event counts (not just *.cedar): Kubernetes ConfigMaps swap a "..data" symlink.
  const watchers: FSWatcher[] = paths.map((p) => watch(p, { persistent: false }, fire).on('error', onError));
  return () => {
    if (timer) clearTimeout(timer);
    for (const w of watchers) w.close();
  };
}
