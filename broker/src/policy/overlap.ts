// Overlap analysis for `taskpass policy validate` and the loaded policy set: which template widens
// another's rule for the same agent, tool and resource.
//
// Decisions combine the templates that allow a call strictly (engine.ts): where two templates both
// allow, the token takes the shorter ttl and single use. So a lenient template weakens a stricter
// one only where it allows a call the stricter one refuses although both cover the agent, tool and
// resource: when it lacks a prerequisite, has a higher (or no) call cap, a longer max_task_ttl, or
// asks less of the user (delegation, issuer, claims). Those calls then also get the lenient template's longer ttl or
// reusable token, which the warning lists too. A longer ttl or a reusable token alone is not a
// widening (wherever the lenient template allows, the stricter one does too, and its facts win).
//
// Overlap of agents and resources is over-approximated (placeholders count as any value), so a
// warning means "may widen"; no warning means the rule is never widened.
import { mustCompile, patternsOverlap } from './pattern.ts';
import type { Template, TemplateTool } from './schema.ts';

/** Where something is in the policy directory, as far as the loader knows. */
export interface SourceLocation {
  /** File name relative to the policy directory. */
  file: string;
  /** JSON path in the file, e.g. `tools[1]` or `templates[0].tools[1]`. */
  path: string;
  line?: number;
  col?: number;
}

/** One way the wider template's rule is weaker. */
export interface Widened {
  condition:
    | 'requires'
    | 'max_calls_per_task'
    | 'max_task_ttl'
    | 'delegation'
    | 'users'
    | 'ttl'
    | 'single_use';
  /** What exactly, e.g. `no prerequisite "get_ticket" on the same resource`. */
  detail: string;
}

/** `template` widens `widens`'s rule for `tool`/`action` on `audience`. Never blocks loading. */
export interface PolicyWarning {
  kind: 'overlap-widens';
  /** The template that allows more. */
  template: string;
  /** The template whose stricter rule it widens. */
  widens: string;
  audience: string;
  tool: string;
  action: TemplateTool['action'];
  widened: Widened[];
  /** One line: which templates, which tool, what is widened (and where, when known). */
  message: string;
  /** The wider template's tool entry. */
  at?: SourceLocation | undefined;
  /** The stricter template's tool entry. */
  other?: SourceLocation | undefined;
}

/** Locates a path inside a template's source (the loader provides it; absent for in-memory sets). */
export type Locate = (templateId: string, path: readonly (string | number)[]) => SourceLocation | undefined;

/** Every widening among `templates`, in a stable order (by wider id, stricter id, tool). */
export function findWidenings(templates: readonly Template[], locate?: Locate): PolicyWarning[] {
  const sorted = [...templates].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
  const agents = new Map(sorted.map((t) => [t.id, t.agents.map((a) => mustCompile(a, 'agent'))]));
  const out: PolicyWarning[] = [];
  for (const wide of sorted) {
    for (const strict of sorted) {
      if (wide === strict || wide.audience !== strict.audience) continue;
      const agentsMeet = agents
        .get(wide.id)!
        .some((a) => agents.get(strict.id)!.some((b) => patternsOverlap(a, b)));
      if (!agentsMeet) continue;
      for (const [wi, wt] of wide.tools.entries()) {
        const si = strict.tools.findIndex((t) => t.tool === wt.tool && t.action === wt.action);
        if (si < 0) continue;
        const st = strict.tools[si]!;
        if (!resourcesMeet(wt, st)) continue;
        const gating = [
          ...principalWidenings(wide, strict),
          ...workflowWidenings(wt, st),
          ...(wide.maxTaskTtlSec > strict.maxTaskTtlSec
            ? [
                {
                  condition: 'max_task_ttl' as const,
                  detail: `allows calls up to ${wide.maxTaskTtlSec}s into a task, not ${strict.maxTaskTtlSec}s`,
                },
              ]
            : []),
        ];
        if (!gating.length) continue;
        const widened = [...gating, ...factWidenings(wide, wt, strict, st)];
        const at = locate?.(wide.id, ['tools', wi]);
        const other = locate?.(strict.id, ['tools', si]);
        out.push({
          kind: 'overlap-widens',
          template: wide.id,
          widens: strict.id,
          audience: wide.audience,
          tool: wt.tool,
          action: wt.action,
          widened,
          message:
            `template "${wide.id}" widens template "${strict.id}"${other ? ` (${where(other)})` : ''} ` +
            `for tool "${wt.tool}" (${wt.action}) on ${wide.audience}: ` +
            widened.map((w) => w.detail).join('; '),
          at,
          other,
        });
      }
    }
  }
  return out;
}

/** `file:line:col path`, or as much of it as is known. */
export function where(l: SourceLocation): string {
  const pos = l.line !== undefined ? `:${l.line}:${l.col ?? 1}` : '';
  return `${l.file}${pos}${l.path ? ` ${l.path}` : ''}`;
}

function resourcesMeet(a: TemplateTool, b: TemplateTool): boolean {
  const pa = a.resources.map((r) => mustCompile(r, 'resource'));
  const pb = b.resources.map((r) => mustCompile(r, 'resource'));
  return pa.some((x) => pb.some((y) => patternsOverlap(x, y)));
}

function principalWidenings(wide: Template, strict: Template): Widened[] {
  const out: Widened[] = [];
  if (strict.delegation === 'required' && wide.delegation !== 'required') {
    out.push({
      condition: 'delegation',
      detail: `delegation ${wide.delegation}: allows autonomous tasks where "${strict.id}" requires a delegating user`,
    });
  }
  if (strict.delegation === 'forbidden' && wide.delegation !== 'forbidden') {
    out.push({
      condition: 'delegation',
      detail: `delegation ${wide.delegation}: allows tasks acting for a user where "${strict.id}" is autonomous only`,
    });
  }
  // User conditions only matter for calls with a user, which both must admit.
  const su = strict.users;
  if (!su || strict.delegation === 'forbidden' || wide.delegation === 'forbidden') return out;
  const wu = wide.users;
  if (su.issuers && !wu?.issuers?.every((i) => su.issuers!.includes(i))) {
    out.push({
      condition: 'users',
      detail: wu?.issuers
        ? `accepts user tokens from ${wu.issuers.filter((i) => !su.issuers!.includes(i)).join(', ')} (not only ${su.issuers.join(', ')})`
        : `accepts user tokens from any trusted issuer (not only ${su.issuers.join(', ')})`,
    });
  }
  for (const c of su.claims) {
    const wc = wu?.claims.find((x) => x.name === c.name);
    if (!wc) {
      out.push({ condition: 'users', detail: `no condition on user claim "${c.name}"` });
      continue;
    }
    const extra = wc.values.filter((v) => !c.values.includes(v));
    if (extra.length) {
      out.push({
        condition: 'users',
        detail: `user claim "${c.name}" may also be ${extra.map((v) => JSON.stringify(v)).join(', ')}`,
      });
    }
  }
  return out;
}

function workflowWidenings(wt: TemplateTool, st: TemplateTool): Widened[] {
  const out: Widened[] = [];
  for (const r of st.requires) {
    const same = wt.requires.find((x) => x.tool === r.tool);
    if (!same) {
      out.push({
        condition: 'requires',
        detail: `no prerequisite "${r.tool}"${r.sameResource ? ' on the same resource' : ''}`,
      });
    } else if (r.sameResource && !same.sameResource) {
      out.push({
        condition: 'requires',
        detail: `prerequisite "${r.tool}" on any resource, not the same one`,
      });
    }
  }
  const cap = st.maxCallsPerTask;
  if (cap !== undefined && (wt.maxCallsPerTask === undefined || wt.maxCallsPerTask > cap)) {
    out.push({
      condition: 'max_calls_per_task',
      detail:
        wt.maxCallsPerTask === undefined
          ? `no call cap (the other allows ${cap} per task)`
          : `call cap ${wt.maxCallsPerTask} per task, higher than ${cap}`,
    });
  }
  return out;
}

function factWidenings(wide: Template, wt: TemplateTool, strict: Template, st: TemplateTool): Widened[] {
  const out: Widened[] = [];
  if (wide.ttlSec > strict.ttlSec) {
    out.push({ condition: 'ttl', detail: `then tokens live ${wide.ttlSec}s, not ${strict.ttlSec}s` });
  }
  if (st.singleUse && !wt.singleUse) {
    out.push({ condition: 'single_use', detail: 'then tokens are reusable, not single use' });
  }
  return out;
}
