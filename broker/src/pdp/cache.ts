// A small LRU of decisions an engine said may be reused (docs/policy-engines.md "Caching"). Keys
// are (decision point, policy version, canonical JSON of the input without its clock fields), so a
// reload that changes the version never serves an old policy's answer.

export class DecisionCache<V> {
  private readonly entries = new Map<string, { value: V; until: number }>();
  constructor(
    private readonly max: number,
    private readonly now: () => number = Date.now,
  ) {}

  get(key: string): V | undefined {
    const e = this.entries.get(key);
    if (!e) return undefined;
    this.entries.delete(key);
    if (e.until <= this.now()) return undefined;
    // Re-inserted: Map iteration order is insertion order, so the first key is the least recent.
    this.entries.set(key, e);
    return e.value;
  }

  set(key: string, value: V, ttlMs: number): void {
    if (ttlMs <= 0 || this.max <= 0) return;
    this.entries.delete(key);
    this.entries.set(key, { value, until: this.now() + ttlMs });
    while (this.entries.size > this.max) {
      const oldest = this.entries.keys().next().value;
      if (oldest === undefined) break;
      this.entries.delete(oldest);
    }
  }

  get size(): number {
    return this.entries.size;
  }
}
