// Any AuthZEN 1.0 PDP as a decision point: `POST {url}/access/v1/evaluation` with the input (it is
// already an evaluation request: subject, action, resource, context); the PDP answers
// `{ decision, context? }`. A bearer token may be read from a file on every call (rotated secrets).
import { readFile } from 'node:fs/promises';
import type { DecisionPointConfig } from '../config.ts';
import { AuthzenResult, decisionOf, unavailable } from './answer.ts';
import { postJson } from './http.ts';
import type { DecisionPoint, PdpDecision, PdpInput } from './types.ts';

export type AuthzenConfig = Extract<DecisionPointConfig, { kind: 'authzen' }>;

export function createAuthzenDecisionPoint(cfg: AuthzenConfig): DecisionPoint {
  const url = `${cfg.url}/access/v1/evaluation`;
  const who = { engine: `authzen/${cfg.name}`, policy: cfg.url };
  async function headers(): Promise<Record<string, string>> {
    if (!cfg.tokenFile) return { ...cfg.headers };
    const token = (await readFile(cfg.tokenFile, 'utf8')).trim();
    return { ...cfg.headers, authorization: `Bearer ${token}` };
  }
  return {
    name: cfg.name,
    kind: 'authzen',
    version: () => cfg.version ?? '',
    async decide(input: PdpInput, signal?: AbortSignal): Promise<PdpDecision> {
      let h: Record<string, string>;
      try {
        h = await headers();
      } catch {
        return unavailable(who, `cannot be asked: its token file is unreadable`);
      }
      const r = await postJson(url, input, { timeoutMs: cfg.timeoutMs, headers: h, signal });
      if (!r.ok) return unavailable(who, r.problem);
      return decisionOf(who, AuthzenResult, r.body);
    },
    async close() {},
  };
}
