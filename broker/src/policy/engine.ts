// The decision engine: an immutable set of compiled templates answering "may this agent, for this
// user, get a token for this call?". Deny by default: a call is allowed only when one template
// matches agent, delegation, user, audience, tool, action and resource and its workflow rules hold.
//
// Denials name the most specific failure. Within one template the checks run in a fixed order —
// agent, delegation, user, audience, tool, action, resource, call limit, prerequisite, task age —
// and the first one that fails gives the code. Across templates (agent covered), the "closest
// template" is the one whose call side (audience → … → prerequisite → task age) got
// furthest, preferring one whose delegation/user conditions hold, then the smallest id. So a
// support user asking for a refund that only a leads-only template allows is told
// TASKPASS_DENIED_USER by that template, not TASKPASS_DENIED_TOOL by an unrelated one.
//
// Overlapping templates never weaken each other. Templates are grants: a call is allowed when at
// least one template allows it (its agent, user, call and workflow conditions all hold); a template
// whose conditions do not hold allows nothing and contributes nothing. When several allow the same
// call, the token gets the strictest facts of those that allow it: the shortest ttl, single use if
// any of them says so. The decision names every allowing template (sorted ids, space-separated, like
// an OAuth scope), so neither the facts nor the name depend on how ids sort or which file loaded
// first. `requires` and `max_calls_per_task` need no combining: each is a condition of its own
// template, so a template whose prerequisite is missing or whose cap is reached is simply not among
// those that allow. Argument binding and approval (docs/approvals.md) are facts of the token too,
// combined the same strict way: the token is bound to the call's arguments if any allowing rule
// binds them, and a person must approve the call if any allowing rule's `approval:` applies to it
// (then the approver must satisfy every such rule). So a lenient template can never quietly lift an
// approval that a stricter one asks for. Quietly widening a stricter template with a lenient one is
// what `taskpass policy validate` warns about (overlap.ts).
//
// Workflow context. A task's history is the list of call tokens already ISSUED in it (IssuedCall),
// whether or not they were used. A "step" for tool T is an issued call token for T on the same MCP
// server (same audience) — and, with `same_resource: true`, for the same resource string.
// IssuedCall carries no audience, so the audience of a past call is that of the template(s) that
// issued it (`IssuedCall.template`, one id or several space-separated; several always share one
// audience). A past call counts towards a call limit when any of its templates has that audience or
// is no longer loaded; it satisfies a prerequisite only when its templates are loaded and all have
// that audience. Both fail closed.
import type { BrokerErrorCode } from '../errors.ts';
import type { CeilingEntry, Action } from '@taskpass/contract';
import type {
  ApprovalRequirement,
  ApproverCheck,
  HistoryQueries,
  PolicyPort,
  PolicyUser,
  TaskHistory,
} from '../ports.ts';
import type { IssuedCall } from '../store/types.ts';
import {
  type CompiledPattern,
  mustCompile,
  type PatternContext,
  parseSpiffeId,
  validateResource,
} from './pattern.ts';
import { findWidenings, type Locate, type PolicyWarning } from './overlap.ts';
import type { ApprovalRule, ArgCondition, Template, TemplateTool, UserConditions } from './schema.ts';

/** The verified delegating user as templates see it. */
export type { PolicyUser } from '../ports.ts';

/** Input of {@link PolicySet.decide}. */
export interface DecideInput {
  /** The agent's SPIFFE ID. */
  agent: string;
  /** The delegating user, or undefined for an autonomous task. */
  user?: PolicyUser | undefined;
  /** The MCP server's resource URI. */
  audience: string;
  tool: string;
  action: Action;
  resource: string;
  /**
   * Call tokens already issued in this task (any order), or the targeted lookups of a
   * {@link TaskHistory} (the broker's path: store queries named by {@link PolicySet.historyQueries}).
   */
  history: readonly IssuedCall[] | TaskHistory;
  /**
   * Seconds since the task was opened. When given, a template allows calls only during the first
   * `max_task_ttl` of a task, and its tokens expire by then (the task itself may live longer when
   * another admitting template has a longer `max_task_ttl`).
   */
  taskAgeSec?: number | undefined;
  /** The `args_sha256` the token would be bound to, when the agent sent one. */
  argsSha256?: string | undefined;
  /**
   * The call's arguments, when the agent sent them (already checked against `argsSha256`). Read only
   * by approval `when:` conditions.
   */
  arguments?: Readonly<Record<string, unknown>> | undefined;
}

/** A {@link TaskHistory} over a list of issued calls (fixtures, tests, small histories). */
export function historyOf(calls: readonly IssuedCall[]): TaskHistory {
  return {
    callCounts(tool) {
      const m = new Map<string, number>();
      for (const c of calls) if (c.tool === tool) m.set(c.template, (m.get(c.template) ?? 0) + 1);
      return m;
    },
    priorTemplates(tool, resource) {
      const s = new Set<string>();
      for (const c of calls) {
        if (c.tool === tool && (resource === undefined || c.resource === resource)) s.add(c.template);
      }
      return s;
    },
  };
}

/**
 * Allowed: the templates that allowed it, their owners, and the strictest token lifetime and
 * single-use flag among them.
 */
export interface Allow {
  allow: true;
  /** Every allowing template id, sorted, space-separated (the token's `tpl`). */
  template: string;
  /** The same ids as a list (sorted). */
  templates: readonly string[];
  /** Their owners, distinct, sorted, comma-separated. */
  owner: string;
  /** The shortest ttl of the allowing templates. */
  ttlSec: number;
  /** True when any allowing template makes the token single use. */
  singleUse: boolean;
  /** True when any allowing rule binds the token to the call's arguments (args_sha256 was given). */
  bindArguments: boolean;
  /** Set when a person must approve this call first: the allowing rules that ask for it. */
  approval?: ApprovalRequirement | undefined;
  /** The decision points the allowing templates name (sorted, distinct); every one must allow too. */
  decisionPoints?: readonly string[];
}

/** `{ decisionPoints }` naming those of `templates` (sorted, distinct), or nothing when none does. */
function decisionPointsOf(templates: readonly Template[]): { decisionPoints?: string[] } {
  const names = [...new Set(templates.flatMap((t) => (t.decisionPoint ? [t.decisionPoint] : [])))].sort();
  return names.length ? { decisionPoints: names } : {};
}

/** The ids named by a decision's or a recorded call's `template` (space-separated). */
export function templateIds(template: string): string[] {
  return template.split(' ').filter((s) => s.length > 0);
}

/** Denied: the most specific code, a human sentence, and the closest template considered. */
export interface Deny {
  allow: false;
  code: BrokerErrorCode;
  reason: string;
  template?: string;
}

/** A decision of {@link PolicySet.decide}. */
export type Decision = Allow | Deny;

/** Result of {@link PolicySet.admits}. */
export type Admission = { ok: true } | { ok: false; code: BrokerErrorCode; reason: string };

interface CompiledTool {
  def: TemplateTool;
  resources: CompiledPattern[];
}

interface CompiledTemplate {
  def: Template;
  agents: CompiledPattern[];
  tools: CompiledTool[];
}

// Stage order = specificity: a later stage is a more specific reason.
const STAGES = [
  'TASKPASS_DENIED_NO_TEMPLATE',
  'TASKPASS_DELEGATION_REQUIRED',
  'TASKPASS_DENIED_USER',
  'TASKPASS_DENIED_AUDIENCE',
  'TASKPASS_DENIED_TOOL',
  'TASKPASS_DENIED_ACTION',
  'TASKPASS_DENIED_RESOURCE',
  'TASKPASS_DENIED_CALL_LIMIT',
  'TASKPASS_DENIED_PREREQUISITE',
  'TASKPASS_DENIED_TASK_AGE',
] as const satisfies readonly BrokerErrorCode[];

type Failure = { stage: number; reason: string };

/** How one template judged a call. */
interface Verdict {
  /** Delegation/user failure (stage 1 or 2), if any. */
  principal: Failure | undefined;
  /** First call-side failure (stage 3..9), if any. */
  call: Failure | undefined;
  /** 0 = audience failed … 7 = every call-side check passed. */
  callDepth: number;
  singleUse: boolean;
  /** Token lifetime this template grants (its ttl, cut to what is left of its max_task_ttl). */
  ttlSec: number;
  /** The tool rule that allowed the call (when every check passed). */
  rule?: TemplateTool | undefined;
}

/**
 * An immutable, compiled set of scope templates. Build it with {@link PolicySet.from} (or through
 * the loader); every method is synchronous and never throws for any input.
 */
export class PolicySet implements PolicyPort {
  /** Templates, sorted by id. */
  readonly templates: readonly Template[];
  /**
   * Templates that widen another's rule for the same agent, tool and resource (overlap.ts), with
   * file and line when the loader built the set. Advisory: they never block loading.
   */
  readonly warnings: readonly PolicyWarning[];
  private readonly compiled: readonly CompiledTemplate[];
  /** The compiled templates of each audience, in the same order (decide's first pass). */
  private readonly byAudience: ReadonlyMap<string, readonly CompiledTemplate[]>;
  private readonly audienceOf: ReadonlyMap<string, string>;

  private constructor(templates: readonly Template[], locate?: Locate) {
    const sorted = [...templates].sort((a, b) => (a.id < b.id ? -1 : a.id > b.id ? 1 : 0));
    const ids = new Set<string>();
    for (const t of sorted) {
      if (ids.has(t.id)) throw new Error(`duplicate template id "${t.id}"`);
      ids.add(t.id);
    }
    this.templates = Object.freeze(sorted.map((t) => deepFreeze(structuredClone(t))));
    this.compiled = this.templates.map((def) => ({
      def,
      agents: def.agents.map((a) => mustCompile(a, 'agent')),
      tools: def.tools.map((tool) => ({
        def: tool,
        resources: tool.resources.map((r) => mustCompile(r, 'resource')),
      })),
    }));
    const byAudience = new Map<string, CompiledTemplate[]>();
    for (const t of this.compiled) {
      const list = byAudience.get(t.def.audience);
      if (list) list.push(t);
      else byAudience.set(t.def.audience, [t]);
    }
    this.byAudience = byAudience;
    this.audienceOf = new Map(this.templates.map((t) => [t.id, t.audience]));
    this.warnings = deepFreeze(findWidenings(this.templates, locate));
  }

  /**
   * Builds a set from parsed templates (see schema.ts). Throws on duplicate ids or patterns that
   * do not compile; the loader reports those as file errors first. `locate` places warnings in
   * their files.
   */
  static from(templates: readonly Template[], opts: { locate?: Locate } = {}): PolicySet {
    return new PolicySet(templates, opts.locate);
  }

  /** A set that denies everything. */
  static empty(): PolicySet {
    return new PolicySet([]);
  }

  /** The template with this id. */
  get(id: string): Template | undefined {
    return this.compiled.find((c) => c.def.id === id)?.def;
  }

  /**
   * The Vault paths a call token's templates name for its tool and action (PolicyPort). A rule is
   * matched by tool and action only: the token already proves its resource was allowed, and a rule's
   * resource patterns may need user claims the token does not carry. Templates reloaded since the
   * token was issued count as they are now: a rule that no longer names a secret gets none.
   */
  vaultSecrets(input: {
    templates: readonly string[];
    agent: string;
    audience: string;
    tool: string;
    action: Action;
  }): string[] {
    const agent = agentSegments(input.agent);
    const paths = new Set<string>();
    for (const t of this.compiled) {
      if (!input.templates.includes(t.def.id) || t.def.audience !== input.audience) continue;
      if (!agent || !t.agents.some((p) => p.matchSegments(agent))) continue;
      for (const tool of t.tools) {
        const d = tool.def;
        if (d.tool === input.tool && d.action === input.action && d.vaultSecret) paths.add(d.vaultSecret);
      }
    }
    return [...paths].sort();
  }

  /**
   * The history lookups {@link decide} may make for this call: call counts of the tool where a
   * template for this audience limits it, and the prerequisites such templates name. Agent, user
   * and resource are not matched here, so this is a superset of what a decision asks.
   */
  historyQueries(input: {
    audience: string;
    tool: string;
    action: Action;
    resource: string;
  }): HistoryQueries {
    const counts = new Set<string>();
    const prior = new Map<string, { tool: string; resource?: string }>();
    for (const t of this.compiled) {
      if (t.def.audience !== input.audience) continue;
      for (const tool of t.tools) {
        if (tool.def.tool !== input.tool || tool.def.action !== input.action) continue;
        if (tool.def.maxCallsPerTask !== undefined) counts.add(input.tool);
        for (const req of tool.def.requires) {
          const q = req.sameResource ? { tool: req.tool, resource: input.resource } : { tool: req.tool };
          prior.set(JSON.stringify([q.tool, q.resource ?? null]), q);
        }
      }
    }
    return { counts: [...counts], prior: [...prior.values()] };
  }

  /** Decides one call token request. Deny by default; see the module comment for the order. */
  decide(input: DecideInput): Decision {
    const res = validateResource(input.resource);
    if (!res.ok) return { allow: false, code: res.code, reason: res.reason };
    const history = Array.isArray(input.history)
      ? historyOf(input.history as readonly IssuedCall[])
      : (input.history as TaskHistory);
    const agent = agentSegments(input.agent);
    const resource = input.resource.split('/');
    const ctx: PatternContext = { user: input.user, agent: input.agent };
    const allowing: { t: CompiledTemplate; singleUse: boolean; ttlSec: number; rule: TemplateTool }[] = [];
    // Every template is weighed, not just the first that allows: the token's facts combine all
    // allowing templates (see the module comment), so they cannot depend on template order. Only a
    // template for the call's audience can allow it, so those are weighed first; the others only
    // matter to explain a denial (the full walk below).
    for (const t of this.byAudience.get(input.audience) ?? []) {
      if (!agent || !t.agents.some((p) => p.matchSegments(agent))) continue;
      const v = this.evaluate(t, resource, ctx, input, history);
      if (!v.principal && !v.call)
        allowing.push({ t, singleUse: v.singleUse, ttlSec: v.ttlSec, rule: v.rule! });
    }
    let best: { verdict: Verdict; rank: number; template: CompiledTemplate } | undefined;
    const considered: string[] = [];
    for (const t of allowing.length ? [] : this.compiled) {
      if (!agent || !t.agents.some((p) => p.matchSegments(agent))) continue;
      considered.push(t.def.id);
      const v = this.evaluate(t, resource, ctx, input, history);
      const rank = v.callDepth * 2 + (v.principal ? 0 : 1);
      if (!best || rank > best.rank) best = { verdict: v, rank, template: t };
    }
    if (allowing.length) {
      const ids = allowing.map((a) => a.t.def.id).sort();
      const bindArguments = allowing.some((a) => a.rule.bindArguments);
      if (bindArguments && !input.argsSha256) {
        const by = allowing.filter((a) => a.rule.bindArguments).map((a) => a.t.def.id);
        return {
          allow: false,
          code: 'TASKPASS_ARGUMENTS_REQUIRED',
          reason: `template "${by.sort().join('", "')}" binds "${input.tool}" tokens to the call's arguments: send args_sha256`,
          template: ids.join(' '),
        };
      }
      const approval = approvalNeeded(allowing, input.arguments);
      if (approval && 'missing' in approval) {
        return {
          allow: false,
          code: 'TASKPASS_ARGUMENTS_REQUIRED',
          reason: `template "${approval.missing}" decides on the arguments whether "${input.tool}" needs approval: send the arguments with the token request`,
          template: ids.join(' '),
        };
      }
      return {
        allow: true,
        template: ids.join(' '),
        templates: ids,
        owner: [...new Set(allowing.map((a) => a.t.def.owner))].sort().join(', '),
        ttlSec: Math.min(...allowing.map((a) => a.ttlSec)),
        singleUse: allowing.some((a) => a.singleUse),
        bindArguments,
        ...(approval ? { approval } : {}),
        ...decisionPointsOf(allowing.map((a) => a.t.def)),
      };
    }
    if (!best) {
      return {
        allow: false,
        code: 'TASKPASS_DENIED_NO_TEMPLATE',
        reason: `no scope template covers agent ${input.agent}; everything is denied by default`,
      };
    }
    const f = (best.verdict.principal ?? best.verdict.call)!;
    // The closest template explains the denial; when several cover the agent, say which were weighed.
    const others = considered.filter((id) => id !== best.template.def.id);
    const reason = others.length ? `${f.reason} (also considered: ${others.join(', ')})` : f.reason;
    return { allow: false, code: STAGES[f.stage]!, reason, template: best.template.def.id };
  }

  /** May this agent open a task, for this user (or autonomously when user is undefined)? */
  admits(agent: string, user: PolicyUser | undefined): Admission {
    const segs = agentSegments(agent);
    let best: Failure | undefined;
    for (const t of this.compiled) {
      const f = admitTemplate(t, segs, user);
      if (!f) return { ok: true };
      if (!best || f.stage > best.stage) best = f;
    }
    if (!best || best.stage === 0) {
      return {
        ok: false,
        code: 'TASKPASS_DENIED_NO_TEMPLATE',
        reason: `no scope template covers agent ${agent}; everything is denied by default`,
      };
    }
    return { ok: false, code: STAGES[best.stage]!, reason: best.reason };
  }

  /**
   * Everything this agent may get for this user: one entry per admitting template, placeholders
   * substituted. Resource patterns whose placeholders have no valid value are left out (they can
   * match nothing), and so are tools left with no resource.
   */
  ceiling(agent: string, user: PolicyUser | undefined): CeilingEntry[] {
    const segs = agentSegments(agent);
    const ctx: PatternContext = { user, agent };
    const out: CeilingEntry[] = [];
    for (const t of this.compiled) {
      if (admitTemplate(t, segs, user)) continue;
      const tools: CeilingEntry['tools'] = [];
      for (const tool of t.tools) {
        const resources = tool.resources
          .map((r) => r.render(ctx))
          .filter((r): r is string => r !== undefined);
        if (!resources.length) continue;
        const rule = tool.def;
        tools.push({
          tool: rule.tool,
          action: rule.action,
          resources,
          ...(rule.bindArguments ? { bind_arguments: true as const } : {}),
          ...(rule.approval?.when.length ? { send_arguments: true as const } : {}),
          ...(rule.approval ? { approval: true as const } : {}),
        });
      }
      if (tools.length) out.push({ template: t.def.id, audience: t.def.audience, tools });
    }
    return out;
  }

  /** Longest task lifetime any admitting template allows (0 when none admits). */
  maxTaskTtlSec(agent: string, user: PolicyUser | undefined): number {
    const segs = agentSegments(agent);
    let max = 0;
    for (const t of this.compiled) {
      if (!admitTemplate(t, segs, user)) max = Math.max(max, t.def.maxTaskTtlSec);
    }
    return max;
  }

  /**
   * Session token (initialize, tools/list; no tool call) for an audience: named after every
   * admitting template for that audience (still within its max_task_ttl when `taskAgeSec` is
   * given), with the shortest of their ttls; undefined if none.
   */
  session(
    agent: string,
    user: PolicyUser | undefined,
    audience: string,
    taskAgeSec?: number,
  ): { template: string; owner: string; ttlSec: number } | undefined {
    const segs = agentSegments(agent);
    const left = (t: CompiledTemplate) =>
      taskAgeSec === undefined ? t.def.ttlSec : Math.min(t.def.ttlSec, t.def.maxTaskTtlSec - taskAgeSec);
    const admitting = this.compiled.filter(
      (t) => t.def.audience === audience && !admitTemplate(t, segs, user) && left(t) > 0,
    );
    if (!admitting.length) return undefined;
    return {
      template: admitting
        .map((t) => t.def.id)
        .sort()
        .join(' '),
      owner: [...new Set(admitting.map((t) => t.def.owner))].sort().join(', '),
      ttlSec: Math.min(...admitting.map(left)),
    };
  }

  /** Could a past call issued by `recorded` (template ids) be for this audience? Unknown: yes. */
  private mayBeFor(recorded: string, audience: string): boolean {
    return templateIds(recorded).some((id) => {
      const aud = this.audienceOf.get(id);
      return aud === undefined || aud === audience;
    });
  }

  /** Is a past call issued by `recorded` (template ids) certainly for this audience? */
  private surelyFor(recorded: string, audience: string): boolean {
    const ids = templateIds(recorded);
    return ids.length > 0 && ids.every((id) => this.audienceOf.get(id) === audience);
  }

  /** Judges a call against one template whose agent patterns match. */
  private evaluate(
    t: CompiledTemplate,
    resource: readonly string[],
    ctx: PatternContext,
    input: DecideInput,
    history: TaskHistory,
  ): Verdict {
    const principal = principalMismatch(t.def, input.user);
    const v = (callDepth: number, call?: Failure, singleUse = false, ttlSec = 0): Verdict => ({
      principal,
      call,
      callDepth,
      singleUse,
      ttlSec,
    });
    const def = t.def;
    if (def.audience !== input.audience) {
      return v(0, {
        stage: 3,
        reason: `template "${def.id}" is for MCP server ${def.audience}, not ${input.audience}`,
      });
    }
    const byName = t.tools.filter((x) => x.def.tool === input.tool);
    if (byName.length === 0) {
      return v(1, {
        stage: 4,
        reason: `template "${def.id}" does not allow tool "${input.tool}" on ${def.audience}`,
      });
    }
    const tool = byName.find((x) => x.def.action === input.action);
    if (!tool) {
      const allowed = byName.map((x) => x.def.action).join(' or ');
      return v(2, {
        stage: 5,
        reason: `template "${def.id}" allows tool "${input.tool}" only with action ${allowed}, not ${input.action}`,
      });
    }
    if (!tool.resources.some((p) => p.matchSegments(resource, ctx))) {
      return v(3, {
        stage: 6,
        reason: `template "${def.id}" allows tool "${input.tool}" only on ${tool.def.resources.join(', ')}, not on ${input.resource}`,
      });
    }
    const limit = tool.def.maxCallsPerTask;
    if (limit !== undefined) {
      // Unknown templates count: a reload must not reset a task's call budget.
      let used = 0;
      for (const [template, n] of history.callCounts(input.tool)) {
        if (this.mayBeFor(template, def.audience)) used += n;
      }
      if (used >= limit) {
        return v(4, {
          stage: 7,
          reason: `template "${def.id}" allows at most ${limit} call(s) of "${input.tool}" per task and ${used} ha${used === 1 ? 's' : 've'} been issued`,
        });
      }
    }
    for (const req of tool.def.requires) {
      let done = false;
      for (const template of history.priorTemplates(
        req.tool,
        req.sameResource ? input.resource : undefined,
      )) {
        if (this.surelyFor(template, def.audience)) {
          done = true;
          break;
        }
      }
      if (!done) {
        return v(5, {
          stage: 8,
          reason: `template "${def.id}" allows "${input.tool}" only after "${req.tool}"${req.sameResource ? ` on the same resource (${input.resource})` : ''} earlier in this task`,
        });
      }
    }
    // A template's grants last for the first max_task_ttl of a task: a longer task, allowed by
    // another template, must not stretch them.
    let ttlSec = def.ttlSec;
    if (input.taskAgeSec !== undefined) {
      const left = def.maxTaskTtlSec - input.taskAgeSec;
      if (!(left > 0)) {
        return v(6, {
          stage: 9,
          reason: `template "${def.id}" allows calls only in the first ${def.maxTaskTtlSec}s of a task (max_task_ttl) and this task was opened ${input.taskAgeSec}s ago`,
        });
      }
      ttlSec = Math.min(ttlSec, left);
    }
    return { ...v(7, undefined, tool.def.singleUse, ttlSec), rule: tool.def };
  }
}

function agentSegments(agent: string): string[] | undefined {
  const id = parseSpiffeId(agent);
  return id && [id.trustDomain, ...id.path];
}

/** Undefined when the template admits this agent and user; else where it stopped and why. */
function admitTemplate(
  t: CompiledTemplate,
  agent: readonly string[] | undefined,
  user: PolicyUser | undefined,
): Failure | undefined {
  if (!agent || !t.agents.some((p) => p.matchSegments(agent))) {
    return { stage: 0, reason: `template "${t.def.id}" does not cover this agent` };
  }
  return principalMismatch(t.def, user);
}

/** Delegation and user conditions (the agent already matched). */
function principalMismatch(def: Template, user: PolicyUser | undefined): Failure | undefined {
  if (def.delegation === 'required' && !user) {
    return {
      stage: 1,
      reason: `template "${def.id}" requires a delegating user token; this task has none`,
    };
  }
  if (def.delegation === 'forbidden' && user) {
    return {
      stage: 2,
      reason: `template "${def.id}" is for autonomous tasks only, but this task acts for user ${user.sub}`,
    };
  }
  if (user && def.users) {
    const why = userMismatch(def, user);
    if (why) {
      return {
        stage: 2,
        reason: `user ${user.sub} does not meet the conditions of template "${def.id}": ${why}`,
      };
    }
  }
  return undefined;
}

function userMismatch(def: Template, user: PolicyUser): string | undefined {
  return conditionsMismatch(def.users!, user);
}

function conditionsMismatch(cond: UserConditions, user: PolicyUser): string | undefined {
  if (cond.issuers && !cond.issuers.includes(user.iss)) {
    return `the user token's issuer must be ${cond.issuers.join(' or ')}`;
  }
  for (const c of cond.claims) {
    const v = c.name === 'sub' ? user.sub : c.name === 'iss' ? user.iss : ownClaim(user.claims, c.name);
    const values = Array.isArray(v) ? v : [v];
    if (!values.some((x) => c.values.includes(x as string | number | boolean))) {
      // Only the claim's name: its values may be personal data.
      return `claim "${c.name}" must ${Array.isArray(v) ? 'contain' : 'be'} one of ${c.values.map((x) => JSON.stringify(x)).join(', ')}`;
    }
  }
  return undefined;
}

function ownClaim(claims: Record<string, unknown>, name: string): unknown {
  return Object.hasOwn(claims, name) ? claims[name] : undefined;
}

function deepFreeze<T>(o: T): T {
  if (o && typeof o === 'object') {
    for (const v of Object.values(o)) deepFreeze(v);
    Object.freeze(o);
  }
  return o;
}

/**
 * Does approval apply to this call? Each allowing rule with `approval:` asks for it when all its
 * `when:` conditions hold (none: always). Undefined when none asks; `missing` (a template id) when a
 * rule's conditions read arguments that were not sent — the caller must send them, never guess.
 */
function approvalNeeded(
  allowing: readonly { t: CompiledTemplate; rule: TemplateTool }[],
  args: Readonly<Record<string, unknown>> | undefined,
): ApprovalRequirement | { missing: string } | undefined {
  const asking: { id: string; rule: ApprovalRule }[] = [];
  for (const a of allowing) {
    const rule = a.rule.approval;
    if (!rule) continue;
    if (rule.when.length && args === undefined) return { missing: a.t.def.id };
    if (rule.when.every((c) => conditionHolds(c, args ?? {}))) asking.push({ id: a.t.def.id, rule });
  }
  if (!asking.length) return undefined;
  return {
    template: asking
      .map((a) => a.id)
      .sort()
      .join(' '),
    ttlSec: Math.min(...asking.map((a) => a.rule.ttlSec)),
    rules: asking.map((a) => a.rule),
  };
}

/** The value at `path` in the arguments (own properties of plain objects only). */
function argAt(args: unknown, path: readonly string[]): { found: false } | { found: true; value: unknown } {
  let cur = args;
  for (const p of path) {
    if (cur === null || typeof cur !== 'object' || Array.isArray(cur) || !Object.hasOwn(cur, p)) {
      return { found: false };
    }
    cur = (cur as Record<string, unknown>)[p];
  }
  return { found: true, value: cur };
}

/**
 * One `when:` condition. `eq` / `in` compare strictly (no type coercion); `exists` tests presence.
 * A comparison (`lt` … `ge`) whose argument is missing or not a finite number HOLDS: the broker
 * cannot show the call is below the limit, so it asks a person (fail closed; a tool that coerces
 * "1000" to 1000 must not slip past an `amount gt 100`).
 */
export function conditionHolds(c: ArgCondition, args: Readonly<Record<string, unknown>>): boolean {
  const a = argAt(args, c.path);
  switch (c.op) {
    case 'exists':
      return a.found === c.value;
    case 'eq':
      return a.found && a.value === c.value;
    case 'in':
      return a.found && c.value.some((v) => v === a.value);
    default: {
      if (!a.found || typeof a.value !== 'number' || !Number.isFinite(a.value)) return true;
      const x = a.value;
      return c.op === 'lt'
        ? x < c.value
        : c.op === 'le'
          ? x <= c.value
          : c.op === 'gt'
            ? x > c.value
            : x >= c.value;
    }
  }
}

/**
 * May `approver` decide an approval asked by these rules, for a task acting for `delegating`? Every
 * rule must admit the approver. The delegating user is refused under separation of duties unless
 * the rule names `delegating_user: true`; anyone else must meet the rule's issuer and claims.
 */
export function approverMayDecide(
  rules: readonly ApprovalRule[],
  approver: PolicyUser,
  delegating: { iss: string; sub: string } | undefined,
): ApproverCheck {
  const isDelegating =
    delegating !== undefined && approver.iss === delegating.iss && approver.sub === delegating.sub;
  for (const rule of rules) {
    const a = rule.approvers;
    if (isDelegating) {
      if (a.delegatingUser) continue;
      if (rule.separationOfDuties) {
        return {
          ok: false,
          code: 'TASKPASS_APPROVAL_SEPARATION_OF_DUTIES',
          reason: 'the user this task acts for cannot approve its own request (separation of duties)',
        };
      }
    }
    if (!a.anyone) {
      return {
        ok: false,
        code: 'TASKPASS_APPROVER_NOT_ALLOWED',
        reason: 'only the user this task acts for may approve this request',
      };
    }
    const why = conditionsMismatch(a, approver);
    if (why) {
      return {
        ok: false,
        code: 'TASKPASS_APPROVER_NOT_ALLOWED',
        reason: `not an approver of this request: ${why}`,
      };
    }
  }
  return { ok: true };
}
