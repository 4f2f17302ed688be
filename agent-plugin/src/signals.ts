// Timeouts combined with a caller's signal. Not AbortSignal.timeout(): once combined by
// AbortSignal.any(), Node 20 lets the garbage collector take a timeout signal nothing else holds,
// and the wait or request would never time out. Here a timer holds the controller.

/** A signal that aborts with a `TimeoutError` after `ms`, or when `signal` aborts; `clear()` ends the timer. */
export function timeoutSignal(ms: number, signal?: AbortSignal): { signal: AbortSignal; clear(): void } {
  const timeout = new AbortController();
  const timer = setTimeout(
    () => timeout.abort(new DOMException('The operation was aborted due to timeout', 'TimeoutError')),
    ms,
  );
  timer.unref();
  return {
    signal: signal ? AbortSignal.any([signal, timeout.signal]) : timeout.signal,
    clear: () => clearTimeout(timer),
  };
}
