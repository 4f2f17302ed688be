// The scope-template file format (docs/design.md §5), as a strict zod schema. Parsing yields
// camelCase `Template` objects with defaults applied and durations in seconds; every pattern is
// compiled once here so a template that loads is a template that can be matched.
import { z } from 'zod';
import { ACTIONS, type Action } from '@taskpass/contract';
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

const ToolSchema = z
  .strictObject({
    tool: toolName,
    action: z.enum(ACTIONS),
    resources: z.array(pattern('resource')).min(1, 'list at least one resource pattern'),
    single_use: z.boolean().optional(),
    max_calls_per_task: z.number().int().positive().max(10_000).optional(),
    requires: z.array(RequireSchema).default([]),
  })
  .transform((t) => ({
    tool: t.tool,
    action: t.action,
    resources: t.resources,
    // Write/admin tokens default to single use: a replayed write is the costly mistake.
    singleUse: t.single_use ?? t.action !== 'read',
    maxCallsPerTask: t.max_calls_per_task,
    requires: t.requires,
  }));

const UsersSchema = z
  .strictObject({
    issuer: z.union([z.string().min(1), z.array(z.string().min(1)).min(1)]).optional(),
    claims: z
      .record(
        z.string().regex(CLAIM_NAME, 'claim names are 1-128 characters of [A-Za-z0-9_.:-]'),
        z.union([scalar, z.array(scalar).min(1)]),
      )
      .optional(),
  })
  .transform((u) => ({
    issuers: u.issuer === undefined ? undefined : typeof u.issuer === 'string' ? [u.issuer] : u.issuer,
    claims: Object.entries(u.claims ?? {}).map(([name, v]) => ({
      name,
      values: Array.isArray(v) ? v : [v],
    })),
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
  users: { issuers: string[] | undefined; claims: ClaimCondition[] } | undefined;
  audience: string;
  /** Max call/session token lifetime. */
  ttlSec: number;
  maxTaskTtlSec: number;
  tools: TemplateTool[];
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
