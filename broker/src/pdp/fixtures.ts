// Decision point fixtures: example calls with the expected answer, written once per policy and run
// against any engine (policies/cedar/fixtures/*.yaml). One case is one call in the shape of the
// template fixtures (agent, user, tool, action, resource, audience) plus the request time.
import { ACTIONS } from '@taskpass/contract';
import { parse } from 'yaml';
import { z } from 'zod';
import type { DecisionPoint, PdpInput } from './types.ts';

const caseSchema = z.strictObject({
  name: z.string().min(1),
  agent: z.string().min(1),
  user: z.object({ iss: z.string(), sub: z.string(), claims: z.record(z.string(), z.unknown()) }).optional(),
  audience: z.string().min(1),
  tool: z.string().min(1),
  action: z.enum(ACTIONS),
  resource: z.string(),
  time: z.iso.datetime({ offset: true }),
  templates: z.array(z.string()).default([]),
  arguments: z.record(z.string(), z.unknown()).optional(),
  task: z
    .object({ id: z.string(), purpose: z.string().optional(), age_sec: z.number().optional() })
    .optional(),
  /** `allow`, or the denial code (`deny` is short for TASKPASS_PDP_DENIED). */
  expect: z.enum(['allow', 'deny', 'TASKPASS_PDP_DENIED', 'TASKPASS_PDP_UNAVAILABLE']),
  /** The deciding policy ids, when the case pins them. */
  policy: z.string().optional(),
});
const fileSchema = z.strictObject({ cases: z.array(caseSchema).min(1) });

export type PdpFixtureCase = z.infer<typeof caseSchema>;

/** Parses a fixture file (YAML); throws with the case and field on a bad one. */
export function parsePdpFixtures(text: string): PdpFixtureCase[] {
  const r = fileSchema.safeParse(parse(text, { maxAliasCount: 50 }));
  if (!r.success) {
    throw new Error(r.error.issues.map((i) => `${i.path.join('.')}: ${i.message}`).join('\n'));
  }
  return r.data.cases;
}

/** The engine input of a case. */
export function fixtureInput(c: PdpFixtureCase): PdpInput {
  return {
    subject: { type: 'agent', id: c.agent, properties: { user: c.user } },
    action: { name: c.tool, properties: { action_class: c.action } },
    resource: { type: 'mcp_resource', id: c.resource, properties: { audience: c.audience } },
    context: { task: c.task, templates: c.templates, arguments: c.arguments, time: c.time },
  };
}

/** Runs every case; returns the failures, each saying what was expected and what came back. */
export async function runPdpFixtures(dp: DecisionPoint, cases: readonly PdpFixtureCase[]): Promise<string[]> {
  const failures: string[] = [];
  for (const c of cases) {
    const d = await dp.decide(fixtureInput(c));
    const got = d.allow ? 'allow' : d.code;
    const want = c.expect === 'deny' ? 'TASKPASS_PDP_DENIED' : c.expect;
    const reason = d.allow ? `policy ${d.policy ?? '?'}` : d.reason;
    if (got !== want) failures.push(`${c.name}: expected ${want}, got ${got} (${reason})`);
    else if (c.policy !== undefined && d.policy !== c.policy) {
      failures.push(`${c.name}: expected policy ${c.policy}, got ${d.policy ?? 'none'} (${reason})`);
    }
  }
  return failures;
}
