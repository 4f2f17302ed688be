// Decision points behind the templates: building them from configuration, and asking the ones a
// call needs (the global one and those its allowing templates name), all of which must allow.
import { canonicalJson } from '@taskpass/contract';
import type { DecisionPointConfig } from '../config.ts';
import { createAuthzenDecisionPoint } from './authzen.ts';
import { DecisionCache } from './cache.ts';
import { createOpaDecisionPoint } from './opa.ts';
import type { PolicyLogger } from '../policy/loader.ts';
import type { CedarReloadReport } from './cedar.ts';
import type { DecisionPoint, PdpDecision, PdpInput } from './types.ts';

export { pdpInputOf } from './input.ts';
export type { DecisionPoint, PdpDecision, PdpInput } from './types.ts';

/** Builds one configured decision point. Cedar is loaded only when configured. */
export async function createDecisionPoint(
  cfg: DecisionPointConfig,
  opts: { onReload?: ((r: CedarReloadReport) => void) | undefined } = {},
): Promise<DecisionPoint> {
  switch (cfg.kind) {
    case 'opa':
      return createOpaDecisionPoint(cfg);
    case 'authzen':
      return createAuthzenDecisionPoint(cfg);
    case 'cedar': {
      // Loaded only when configured: the Cedar engine brings its WebAssembly module with it.
      const { createCedarDecisionPoint } = await import('./cedar.ts');
      return createCedarDecisionPoint({
        name: cfg.name,
        policies: cfg.policies,
        schema: cfg.schema,
        ...(opts.onReload ? { onReload: opts.onReload } : {}),
      });
    }
  }
}

/** The verdict on one call: allowed by every decision point asked, or the first that said no. */
export type PdpVerdict = { allow: true; asked: readonly string[] } | Extract<PdpDecision, { allow: false }>;

/** How many reusable answers are kept (all decision points together). */
const CACHE_ENTRIES = 1000;
/** How long an answer is reused when the engine said `cacheable` without a ttl. */
const DEFAULT_CACHE_TTL_SEC = 60;

/**
 * The configured decision points. `global` (config `decisionPoint`) applies to every call; a
 * template's `decision_point` to the calls it allows. Answers are reused only when the engine
 * said so and its policy has a version (the cache key), never across a version change.
 */
export class DecisionPoints {
  private readonly byName: ReadonlyMap<string, DecisionPoint>;
  private readonly cache: DecisionCache<PdpDecision>;

  constructor(
    points: readonly DecisionPoint[],
    private readonly opts: { global?: string | undefined; now?: () => number } = {},
  ) {
    this.byName = new Map(points.map((p) => [p.name, p]));
    this.cache = new DecisionCache(CACHE_ENTRIES, opts.now);
  }

  /** Builds every configured decision point. */
  static async fromConfig(
    config: { decisionPoints: readonly DecisionPointConfig[]; decisionPoint?: string | undefined },
    opts: { now?: () => number; logger?: PolicyLogger | undefined } = {},
  ): Promise<DecisionPoints> {
    const points: DecisionPoint[] = [];
    // A policy reload (Cedar) says what it loaded, or exactly what is wrong and where while the
    // last good set stays in force.
    const onReload = (name: string) => (r: CedarReloadReport) =>
      r.ok
        ? opts.logger?.info(
            { decisionPoint: name, version: r.version, files: r.files },
            'decision point policies loaded',
          )
        : opts.logger?.error(
            { decisionPoint: name, errors: r.errors },
            `decision point ${name}: policies NOT reloaded, the last good set stays in force: ${r.errors
              .map(
                (e) =>
                  `${e.file}${e.line ? `:${e.line}${e.column ? `:${e.column}` : ''}` : ''}: ${e.message}`,
              )
              .join('; ')}`,
          );
    try {
      for (const c of config.decisionPoints)
        points.push(await createDecisionPoint(c, { onReload: onReload(c.name) }));
    } catch (e) {
      await Promise.all(points.map((p) => p.close()));
      throw e;
    }
    return new DecisionPoints(points, {
      global: config.decisionPoint,
      ...(opts.now ? { now: opts.now } : {}),
    });
  }

  /** The configured names (the loader refuses templates naming any other). */
  names(): string[] {
    return [...this.byName.keys()];
  }

  /** Whether any call may need a decision point (then the issuance path fetches its facts). */
  get configured(): boolean {
    return this.byName.size > 0;
  }

  /** The decision points a call allowed by templates naming `named` must pass, in order. */
  needed(named: readonly string[]): string[] {
    const all = this.opts.global ? [this.opts.global, ...named] : [...named];
    return [...new Set(all)];
  }

  /**
   * Asks every decision point in `names` (concurrently); the first in order that does not allow
   * decides. A name not configured is a denial (the loader refuses such templates; this is the
   * fail-closed backstop for a policy set loaded before a configuration change).
   */
  async decide(names: readonly string[], input: PdpInput, signal?: AbortSignal): Promise<PdpVerdict> {
    if (names.length === 0) return { allow: true, asked: [] };
    const decisions = await Promise.all(names.map((n) => this.ask(n, input, signal)));
    const no = decisions.find((d): d is Extract<PdpDecision, { allow: false }> => !d.allow);
    return no ?? { allow: true, asked: names };
  }

  private async ask(name: string, input: PdpInput, signal?: AbortSignal): Promise<PdpDecision> {
    const dp = this.byName.get(name);
    if (!dp) {
      return {
        allow: false,
        code: 'TASKPASS_PDP_UNAVAILABLE',
        reason: `decision point "${name}" is not configured; denied (fail closed)`,
        engine: name,
      };
    }
    const version = dp.version();
    const key = version ? cacheKey(name, version, input) : undefined;
    const hit = key ? this.cache.get(key) : undefined;
    if (hit) return hit;
    let d: PdpDecision;
    try {
      d = await dp.decide(input, signal);
    } catch (e) {
      // Implementations never throw; one that does still fails closed.
      d = {
        allow: false,
        code: 'TASKPASS_PDP_UNAVAILABLE',
        reason: `decision point ${dp.kind}/${name} failed: ${(e as Error).message}; denied (fail closed)`,
        engine: `${dp.kind}/${name}`,
      };
    }
    if (key && d.allow && d.cacheable) {
      this.cache.set(key, d, (d.cacheTtlSec ?? DEFAULT_CACHE_TTL_SEC) * 1000);
    }
    return d;
  }

  async close(): Promise<void> {
    await Promise.all([...this.byName.values()].map((p) => p.close()));
  }
}

/**
 * The cache key: decision point, policy version and the input without its clock fields (`time`,
 * `task.age_sec`). An engine that marks an answer reusable vouches for it over its ttl, clock included.
 */
function cacheKey(name: string, version: string, input: PdpInput): string {
  const { time: _t, task, ...context } = input.context;
  const timeless = {
    ...input,
    context: { ...context, ...(task ? { task: { id: task.id, purpose: task.purpose } } : {}) },
  };
  return `${name}\u0000${version}\u0000${canonicalJson(timeless)}`;
}
