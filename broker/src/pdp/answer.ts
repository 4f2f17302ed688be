// Reading an engine's answer: the shapes OPA and AuthZEN PDPs may answer, as zod schemas, and the
// decisions they become. Anything that does not match is garbage: TASKPASS_PDP_UNAVAILABLE.
import { z } from 'zod';
import type { PdpDecision } from './types.ts';

/** Longest reuse an engine may ask for; a policy change is never hidden for longer than this. */
export const MAX_CACHE_TTL_SEC = 300;

const cacheTtl = z.number().int().min(0).max(MAX_CACHE_TTL_SEC).optional();
const reasonText = z.string().max(1024).optional();

/** OPA's `result`: a boolean rule, or an object rule `{ allow, reason?, cache_ttl_sec? }`. */
export const OpaResult = z.union([
  z.boolean().transform((allow) => ({ allow, reason: undefined, cache_ttl_sec: undefined })),
  z.looseObject({ allow: z.boolean(), reason: reasonText, cache_ttl_sec: cacheTtl }),
]);

/** An AuthZEN 1.0 evaluation response: `{ decision, context? }`. */
export const AuthzenResult = z
  .looseObject({
    decision: z.boolean(),
    context: z
      .looseObject({
        reason: reasonText,
        reason_user: z.looseObject({}).optional(),
        cache_ttl_sec: cacheTtl,
      })
      .optional(),
  })
  .transform((r) => ({
    allow: r.decision,
    reason: r.context?.reason,
    cache_ttl_sec: r.context?.cache_ttl_sec,
  }));

/** The fields every engine's answer is reduced to. */
export interface EngineVerdict {
  allow: boolean;
  reason?: string | undefined;
  cache_ttl_sec?: number | undefined;
}

/** Who answered: engine kind and name (`opa/tickets`) and the policy asked. */
export interface Answerer {
  engine: string;
  policy?: string | undefined;
}

const named = (a: Answerer) => `${a.engine}${a.policy ? ` (policy ${a.policy})` : ''}`;

/** The decision for an engine that could not decide (fail closed). */
export function unavailable(a: Answerer, problem: string): PdpDecision {
  return {
    allow: false,
    code: 'TASKPASS_PDP_UNAVAILABLE',
    reason: `decision point ${named(a)} ${problem}; denied (fail closed)`,
    engine: a.engine,
    policy: a.policy,
  };
}

/** Parses `raw` with `schema` into a decision; a mismatch is an unavailable engine. */
export function decisionOf(a: Answerer, schema: z.ZodType<EngineVerdict>, raw: unknown): PdpDecision {
  const r = schema.safeParse(raw);
  if (!r.success) return unavailable(a, 'answered something that is not a decision');
  const v = r.data;
  if (!v.allow) {
    return {
      allow: false,
      code: 'TASKPASS_PDP_DENIED',
      reason: `decision point ${named(a)} denied the call${v.reason ? `: ${v.reason}` : ''}`,
      engine: a.engine,
      policy: a.policy,
    };
  }
  return {
    allow: true,
    engine: a.engine,
    policy: a.policy,
    ...(v.cache_ttl_sec ? { cacheable: true, cacheTtlSec: v.cache_ttl_sec } : {}),
  };
}
