// One place where a store's failures become answers: every method of a store class — those added
// later too — rejects with what `toAnswer` makes of its error, so an outage (Redis gone, SQLite
// busy or out of disk) is TASKPASS_STORE_UNAVAILABLE (503, Retry-After) on every route and never a
// 500, while programming errors pass through unchanged.

/** Wraps every method of `proto` so that what it throws or rejects with passes through `toAnswer`. */
export function mapStoreFailures(proto: object, toAnswer: (e: unknown) => unknown): void {
  for (const name of Object.getOwnPropertyNames(proto)) {
    const method = Object.getOwnPropertyDescriptor(proto, name)?.value as unknown;
    if (name === 'constructor' || typeof method !== 'function') continue;
    const guarded = function (this: unknown, ...args: unknown[]): unknown {
      let out: unknown;
      try {
        out = method.apply(this, args);
      } catch (e) {
        throw toAnswer(e);
      }
      return out instanceof Promise
        ? out.catch((e: unknown) => {
            throw toAnswer(e);
          })
        : out;
    };
    Object.defineProperty(proto, name, { value: guarded, writable: true, configurable: true });
  }
}
