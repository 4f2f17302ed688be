// The scope-template file format (docs/design.md §5), as a strict zod schema. Parsing yields
// camelCase `Template` objects with defaults applied and durations in seconds; every pattern is
// compiled once here so a template that loads is a template that can be matched.
import { z } from 'zod';
import { ACTIONS, type Action, VAULT_PATH_PATTERN } from '@taskpass/contract';
import { compilePattern } from './pattern.ts';

/** Longest token lifetime a template may grant (tokens are meant to live seconds, not hours). */
export const MAX_TOKEN_TTL_SEC = 3600;
/** Longest task a template may allow. */
export const MAX_TASK_TTL_SEC = 24 * 3600;

const DURATION = /^([1-9][0-9]{0,6})(s|m|h)$/;
const UNIT_SEC = { s: 1, m: 60, h: 3600 } as const;

/**
 * Parses a duration such as `"60s"`, `"15m"` or `"1h"` to seconds; undefined when malformed.
 * One unit only: `"1h30m"` is rejected rather than guessed at.
 */
export function parseDuration(s: string): number | undefined {
  const m = DURATION.exec(s);
  if (!m) return undefined;
  return Number(m[1]) * UNIT_SEC[m[2] as keyof typeof UNIT_SEC];
}

const duration = (max: number) =>
  z.string().transform((s, ctx) => {
    const sec = parseDuration(s);
    if (sec === undefined) {
      ctx.addIssue({ code: 'custom', message: `invalid duration "${s}": use e.g. "60s", "15m" or "1h"` });
      return z.NEVER;
    }
    if (sec > max) {
      ctx.addIssue({ code: 'custom', message: `duration "${s}" exceeds the maximum of ${max}s` });
      return z.NEVER;
    }
    return sec;
  });

const pattern = (kind: 'resource' | 'agent') =>
  z.string().superRefine((s, ctx) => {
    const r = compilePattern(s, kind);
    if (!r.ok) ctx.addIssue({ code: 'custom', message: r.reason });
  });

/** Operators of an approval `when:` condition. */
export const CONDITION_OPS = ['eq', 'in', 'lt', 'le', 'gt', 'ge', 'exists'] as const;

const TEMPLATE_ID = /^[a-z0-9][a-z0-9._-]{0,127}$/;
const TOOL_NAME = /^[A-Za-z0-9_.:-]{1,128}$/;
const CLAIM_NAME = /^[A-Za-z0-9_.:-]{1,128}$/;

const toolName = z.string().regex(TOOL_NAME, 'tool names are 1-128 characters of [A-Za-z0-9_.:-]');
const scalar = z.union([z.string(), z.number(), z.boolean()]);

/** Actions in increasing power. */

const RequireSchema = z
  .strictObject({
    tool: toolName,
    same_resource: z.boolean().default(false),
  })
  .transform((r) => ({ tool: r.tool, sameResource: r.same_resource }));

const userConditions = {
  issuer: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
  claims: z
    .record(
      z.string().regex(CLAIM_NAME, 'claim names are 1-128 characters of [A-Za-z0-9_.:-]'),
      z.union([scalar, z.array(scalar).min(1)]),
    )
    .optional(),
};

const userConditionsOf = (u: {
  issuer?: string | string[] | undefined;
  claims?: Record<string, Scalar | Scalar[]> | undefined;
}): UserConditions => ({
  issuers: u.issuer === undefined ? undefined : typeof u.issuer === 'string' ? [u.issuer] : u.issuer,
  claims: Object.entries(u.claims ?? {}).map(([name, v]) => ({
    name,
    values: Array.isArray(v) ? v : [v],
  })),
});

const UsersSchema = z.strictObject(userConditions).transform(userConditionsOf);

// An argument path: dot-separated names, no prototype keys (arguments are plain JSON objects, and
// a path must never reach into Object.prototype).
const ARG_PATH = /^[A-Za-z0-9_-]{1,64}(\.[A-Za-z0-9_-]{1,64}){0,7}$/;
const FORBIDDEN_SEGMENTS = new Set(['__proto__', 'prototype', 'constructor']);

const ConditionSchema = z
  .strictObject({
    arg: z
      .string()
      .regex(ARG_PATH, 'arg is a dotted path of argument names, e.g. "amount" or "order.total"')
      .refine((s) => !s.split('.').some((p) => FORBIDDEN_SEGMENTS.has(p)), 'arg names a prototype key'),
    op: z.enum(CONDITION_OPS),
    value: z.union([scalar, z.array(scalar)]).optional(),
  })
  .superRefine((c, ctx) => {
    const v = c.value;
    const bad = (message: string) => ctx.addIssue({ code: 'custom', path: ['value'], message });
    if (c.op === 'exists') {
      if (v !== undefined && typeof v !== 'boolean') bad('exists takes value true, false or none (true)');
    } else if (c.op === 'in') {
      if (!Array.isArray(v) || v.length === 0) bad('in takes a non-empty list of literals');
    } else if (c.op === 'eq') {
      if (v === undefined || Array.isArray(v)) bad('eq takes one literal (string, number or boolean)');
    } else if (typeof v !== 'number' || !Number.isFinite(v)) {
      bad(`${c.op} takes a number`);
    }
  })
  .transform((c): ArgCondition => {
    const path = c.arg.split('.');
    switch (c.op) {
      case 'exists':
        return { path, op: 'exists', value: c.value !== false };
      case 'in':
        return { path, op: 'in', value: c.value as Scalar[] };
      case 'eq':
        return { path, op: 'eq', value: c.value as Scalar };
      default:
        return { path, op: c.op, value: c.value as number };
    }
  });

const ApprovalSchema = z
  .strictObject({
    approvers: z
      .strictObject({ ...userConditions, delegating_user: z.boolean().default(false) })
      .refine(
        (a) => a.issuer !== undefined || a.claims !== undefined || a.delegating_user,
        'name who may approve: an issuer, claims, or delegating_user: true',
      ),
    when: z.array(ConditionSchema).max(16).default([]),
    ttl: duration(MAX_TASK_TTL_SEC).default(600),
    separation_of_duties: z.boolean().default(true),
  })
  .transform(
    (a): ApprovalRule => ({
      approvers: {
        ...userConditionsOf(a.approvers),
        // Without issuer or claims, only the delegating user may decide (when allowed to).
        anyone: a.approvers.issuer !== undefined || a.approvers.claims !== undefined,
        delegatingUser: a.approvers.delegating_user,
      },
      when: a.when,
      ttlSec: a.ttl,
      separationOfDuties: a.separation_of_duties,
    }),
  );

/** A Vault path to read a leased secret from (`database/creds/ticket-desk`): plain segments only. */
const vaultPath = z
  .string()
  .max(256)
  .regex(
    VAULT_PATH_PATTERN,
    'a Vault path of two or more segments of [A-Za-z0-9._-] (e.g. database/creds/ticket-desk), no "." or ".."',
  );

const ToolSchema = z
  .strictObject({
    tool: toolName,
    action: z.enum(ACTIONS),
    resources: z.array(pattern('resource')).min(1, 'list at least one resource pattern'),
    single_use: z.boolean().optional(),
    max_calls_per_task: z.number().int().positive().max(10_000).optional(),
    requires: z.array(RequireSchema).default([]),
    bind_arguments: z.boolean().optional(),
    approval: ApprovalSchema.optional(),
    vault_secret: vaultPath.optional(),
  })
  .superRefine((t, ctx) => {
    if (t.bind_arguments === true && t.action === 'read') {
      ctx.addIssue({
        code: 'custom',
        path: ['bind_arguments'],
        message: 'bind_arguments is for write and admin rules (reads are not bound to their arguments)',
      });
    }
    if (t.approval && t.bind_arguments === false) {
      ctx.addIssue({
        code: 'custom',
        path: ['bind_arguments'],
        message: 'a rule with approval always binds its arguments; drop bind_arguments: false',
      });
    }
  })
  .transform((t) => ({
    tool: t.tool,
    action: t.action,
    resources: t.resources,
    // Write/admin tokens default to single use: a replayed write is the costly mistake.
    singleUse: t.single_use ?? t.action !== 'read',
    maxCallsPerTask: t.max_calls_per_task,
    requires: t.requires,
    // An approval is for one exact call: the token must carry the digest of that call's arguments.
    bindArguments: t.bind_arguments === true || t.approval !== undefined,
    approval: t.approval,
    // The Vault secret the MCP server may get, leased to the task, for this call (docs/vault.md).
    vaultSecret: t.vault_secret,
  }));

/** One scope template, as written in YAML (before defaults and transforms). */
export const TemplateSchema = z
  .strictObject({
    id: z.string().regex(TEMPLATE_ID, 'ids are 1-128 characters of [a-z0-9._-], starting alphanumeric'),
    owner: z.string().min(1),
    description: z.string().optional(),
    agents: z.array(pattern('agent')).min(1, 'list at least one agent pattern'),
    delegation: z.enum(['required', 'optional', 'forbidden']).default('required'),
    users: UsersSchema.optional(),
    audience: z.string().refine((s) => URL.canParse(s) && !/\s/.test(s), 'audience must be an absolute URI'),
    ttl: duration(MAX_TOKEN_TTL_SEC).default(60),
    max_task_ttl: duration(MAX_TASK_TTL_SEC).default(900),
    tools: z.array(ToolSchema).min(1, 'list at least one tool'),
    /** A decision point (broker config `decisionPoints`) that must also allow this template's calls. */
    decision_point: z
      .string()
      .regex(/^[a-z0-9][a-z0-9._-]{0,63}$/, 'a decision point name from the broker configuration')
      .optional(),
  })
  .superRefine((t, ctx) => {
    if (t.delegation === 'forbidden') {
      if (t.users) {
        ctx.addIssue({
          code: 'custom',
          path: ['users'],
          message: 'user conditions make no sense with delegation: forbidden (autonomous tasks have no user)',
        });
      }
      for (const [i, tool] of t.tools.entries()) {
        if (tool.approval?.approvers.delegatingUser) {
          ctx.addIssue({
            code: 'custom',
            path: ['tools', i, 'approval', 'approvers', 'delegating_user'],
            message: 'autonomous tasks (delegation: forbidden) have no delegating user to approve',
          });
        }
        for (const [j, r] of tool.resources.entries()) {
          if (r.includes('{user.')) {
            ctx.addIssue({
              code: 'custom',
              path: ['tools', i, 'resources', j],
              message: '{user.*} placeholders can never match with delegation: forbidden',
            });
          }
        }
      }
    }
    if (t.ttl > t.max_task_ttl) {
      ctx.addIssue({ code: 'custom', path: ['ttl'], message: 'ttl must not exceed max_task_ttl' });
    }
    const seen = new Set<string>();
    t.tools.forEach((tool, i) => {
      const key = `${tool.tool}\u0000${tool.action}`;
      if (seen.has(key)) {
        ctx.addIssue({
          code: 'custom',
          path: ['tools', i],
          message: `tool "${tool.tool}" with action "${tool.action}" is listed twice; merge the entries`,
        });
      }
      seen.add(key);
      tool.requires.forEach((r, j) => {
        if (r.tool === tool.tool) {
          ctx.addIssue({
            code: 'custom',
            path: ['tools', i, 'requires', j, 'tool'],
            message: `tool "${tool.tool}" cannot require itself`,
          });
        }
      });
    });
  })
  .transform(
    (t): Template => ({
      id: t.id,
      owner: t.owner,
      description: t.description,
      agents: t.agents,
      delegation: t.delegation,
      users: t.users,
      audience: t.audience,
      ttlSec: t.ttl,
      maxTaskTtlSec: t.max_task_ttl,
      tools: t.tools,
      decisionPoint: t.decision_point,
    }),
  );

/** A template file: one template, or `templates: [...]`. */
export const TemplateFileSchema = z.union([
  z.strictObject({ templates: z.array(TemplateSchema).min(1, 'list at least one template') }),
  TemplateSchema,
]);

/** A requirement on earlier steps of the same task. */
export interface ToolRequirement {
  tool: string;
  /** The earlier step must be for the same resource string. */
  sameResource: boolean;
}

/** One tool entry of a template (after defaults). */
export interface TemplateTool {
  tool: string;
  action: Action;
  /** Resource patterns (pattern.ts language). */
  resources: string[];
  singleUse: boolean;
  maxCallsPerTask: number | undefined;
  requires: ToolRequirement[];
  /** Tokens carry the call's `args_sha256` (always with `approval`). */
  bindArguments: boolean;
  /** A person must approve each call (or those `approval.when` selects). */
  approval: ApprovalRule | undefined;
  /** The Vault path whose leased secret the MCP server may get for this call (docs/vault.md). */
  vaultSecret: string | undefined;
}

type Scalar = string | number | boolean;

/**
 * One `when:` condition on a call's arguments, compiled: `path` into the arguments object. No code
 * is evaluated; see engine.ts `conditionHolds` for what each operator means.
 */
export type ArgCondition =
  | { path: string[]; op: 'eq'; value: Scalar }
  | { path: string[]; op: 'in'; value: Scalar[] }
  | { path: string[]; op: 'lt' | 'le' | 'gt' | 'ge'; value: number }
  | { path: string[]; op: 'exists'; value: boolean };

/** Issuer and claim conditions on a verified user token (`users:`, `approvers:`). */
export interface UserConditions {
  issuers: string[] | undefined;
  claims: ClaimCondition[];
}

/** Who may decide an approval. */
export interface ApproverConditions extends UserConditions {
  /** Issuer/claims were given: any person whose token meets them may approve. */
  anyone: boolean;
  /** The delegating user of the task may approve (also under separation of duties). */
  delegatingUser: boolean;
}

/** A tool rule's `approval:` (defaults applied, ttl in seconds). */
export interface ApprovalRule {
  approvers: ApproverConditions;
  /** All must hold for approval to be needed; empty: always needed. */
  when: ArgCondition[];
  ttlSec: number;
  separationOfDuties: boolean;
}

/** A claim condition: the user's claim must equal (or, for arrays, contain) one of `values`. */
export interface ClaimCondition {
  name: string;
  values: (string | number | boolean)[];
}

/** A parsed scope template (durations in seconds, defaults applied). */
export interface Template {
  id: string;
  owner: string;
  description: string | undefined;
  /** SPIFFE ID patterns. */
  agents: string[];
  delegation: 'required' | 'optional' | 'forbidden';
  users: UserConditions | undefined;
  audience: string;
  /** Max call/session token lifetime. */
  ttlSec: number;
  maxTaskTtlSec: number;
  tools: TemplateTool[];
  /** The decision point that must also allow the calls this template allows (docs/policy-engines.md). */
  decisionPoint?: string | undefined;
}

/** The YAML shape accepted by {@link TemplateSchema} (snake_case, durations as strings). */
export type TemplateInput = z.input<typeof TemplateSchema>;

/**
 * Parses one file's data (already YAML-decoded) into templates. Issues carry zod paths relative
 * to the file root (`templates[0].tools[1]...` for list files).
 */
export function parseTemplateFile(
  data: unknown,
):
  | { ok: true; templates: Template[]; list: boolean }
  | { ok: false; issues: { path: PropertyKey[]; message: string }[] } {
  // A list file is recognised by its key so that its errors are not buried under the single-
  // template branch's "unknown key templates" (and vice versa).
  const isList = typeof data === 'object' && data !== null && !Array.isArray(data) && 'templates' in data;
  const schema = isList
    ? z.strictObject({ templates: z.array(TemplateSchema).min(1, 'list at least one template') })
    : TemplateSchema;
  const r = schema.safeParse(data);
  if (!r.success) {
    return { ok: false, issues: r.error.issues.map((i) => ({ path: i.path, message: i.message })) };
  }
  const out = r.data;
  return 'templates' in out
    ? { ok: true, templates: out.templates, list: true }
    : { ok: true, templates: [out], list: false };
}
