// OPA as a decision point: `POST {url}/v1/data/{path}` with `{ input }` (OPA's REST Data API). The
// rule answers `true`/`false` or `{ allow, reason?, cache_ttl_sec? }`; an undefined rule (no
// `result`: the policy is not loaded or the path is wrong), an error or a timeout fails closed.
import type { DecisionPointConfig } from '../config.ts';
import { decisionOf, OpaResult, unavailable } from './answer.ts';
import { postJson } from './http.ts';
import type { DecisionPoint, PdpDecision, PdpInput } from './types.ts';

export type OpaConfig = Extract<DecisionPointConfig, { kind: 'opa' }>;

export function createOpaDecisionPoint(cfg: OpaConfig): DecisionPoint {
  const url = `${cfg.url}/v1/data/${cfg.path}`;
  const who = { engine: `opa/${cfg.name}`, policy: cfg.path };
  return {
    name: cfg.name,
    kind: 'opa',
    version: () => cfg.version ?? '',
    async decide(input: PdpInput, signal?: AbortSignal): Promise<PdpDecision> {
      const r = await postJson(url, { input }, { timeoutMs: cfg.timeoutMs, headers: cfg.headers, signal });
      if (!r.ok) return unavailable(who, r.problem);
      const body = r.body as { result?: unknown } | null;
      if (body === null || typeof body !== 'object' || !('result' in body)) {
        return unavailable(who, 'has no such rule (result undefined: policy not loaded or wrong path)');
      }
      return decisionOf(who, OpaResult, body.result);
    },
    async close() {},
  };
}
