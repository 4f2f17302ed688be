// Policy fixtures: example requests with the expected decision, kept next to the templates
// (`<dir>/fixtures/*.yaml`) and run by the unit tests and by `taskpass policy test <dir>`.
//
//   cases:
//     - name: support bot reads a ticket for a support user
//       agent: spiffe://taskpass.local/agents/support-bot
//       user: { iss: https://idp.taskpass.local, sub: alice, claims: { groups: [support] } }
//       audience: https://tickets.taskpass.local/mcp
//       tool: get_ticket
//       action: read
//       resource: tickets/T-1
//       history:                    # earlier steps in the same task, oldest first (optional)
//         - { tool: get_ticket, resource: tickets/T-1 }   # action: read, audience: the case's
//       task_age: 20m               # optional: how long ago the task was opened
//       arguments: { amount: 250 }  # optional: the call's arguments (args_sha256 is their digest)
//       args_sha256: ...            # optional: a digest without the arguments
//       approved: true              # optional: a person approved the call (approval_required → allow)
//       expect: allow               # or approval_required, or a denial code, e.g. TASKPASS_DENIED_RESOURCE
//       template: tickets-support   # optional: the allowing (or closest) template; when several
//                                   # allow, all their ids, sorted, space-separated
//
// A call whose rule asks for a person's approval is `approval_required` unless the case says
// `approved: true`; then it is `allow`.
//
// A history step without `template` is decided against the same policies (with the steps before
// it) and must be allowed; that is how the fixture proves the workflow is reachable. Give
// `template` explicitly to inject a step the policies would not allow.
import { readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { LineCounter, parseDocument } from 'yaml';
import { z } from 'zod';
import { BROKER_ERRORS, type BrokerErrorCode } from '../errors.ts';
import { ACTIONS, argsSha256 } from '@taskpass/contract';
import type { IssuedCall } from '../store/types.ts';
import { type Decision, type PolicySet, templateIds } from './engine.ts';
import { formatPath, loadPolicyDir, type PolicyError } from './loader.ts';
import { parseDuration } from './schema.ts';

const CODES = Object.keys(BROKER_ERRORS) as [BrokerErrorCode, ...BrokerErrorCode[]];

const StepSchema = z.strictObject({
  tool: z.string().min(1),
  resource: z.string().min(1),
  action: z.enum(ACTIONS).default('read'),
  audience: z.string().optional(),
  template: z.string().optional(),
  arguments: z.record(z.string(), z.unknown()).optional(),
});

export const FixtureCaseSchema = z.strictObject({
  name: z.string().min(1),
  agent: z.string().min(1),
  user: z
    .strictObject({
      iss: z.string().min(1),
      sub: z.string().min(1),
      claims: z.record(z.string(), z.unknown()).default({}),
    })
    .optional(),
  audience: z.string().min(1),
  tool: z.string().min(1),
  action: z.enum(ACTIONS),
  resource: z.string(),
  history: z.array(StepSchema).default([]),
  /** How long ago the task was opened (`90s`, `20m`); omitted: the task's age is not checked. */
  task_age: z
    .string()
    .refine((v) => parseDuration(v) !== undefined, 'use a duration such as "90s", "20m" or "1h"')
    .optional(),
  arguments: z.record(z.string(), z.unknown()).optional(),
  args_sha256: z
    .string()
    .regex(/^[A-Za-z0-9_-]{43}$/, 'a base64url SHA-256 (43 characters)')
    .optional(),
  approved: z.boolean().default(false),
  expect: z.union([z.literal('allow'), z.literal('approval_required'), z.enum(CODES)]),
  template: z.string().optional(),
});

const FixtureFileSchema = z.strictObject({ cases: z.array(FixtureCaseSchema).min(1) });

/** One fixture case (parsed). */
export type FixtureCase = z.output<typeof FixtureCaseSchema>;

/** Outcome of one case. */
export interface FixtureCaseResult {
  file: string;
  name: string;
  passed: boolean;
  expected: string;
  /** `allow` or the denial code. */
  actual: string;
  /** Template that allowed it, or the closest one considered. */
  template: string | undefined;
  /** The denial reason, or why the case itself is broken. */
  message: string;
}

/** A failure line, as the CLI prints it. */
export interface FixtureFailure {
  file: string;
  name?: string;
  message: string;
}

/** Result of {@link runFixtures}. */
export interface FixtureRun {
  /** True when the policies load and every case passes. */
  ok: boolean;
  passed: number;
  /** Everything that went wrong: policy load errors, bad fixture files, failed cases. */
  failures: FixtureFailure[];
  cases: FixtureCaseResult[];
  /** Per template: how many allow / deny cases ended on it (deny: as the closest template). */
  coverage: { template: string; allow: number; deny: number }[];
  /** Human-readable report (one line per case, then a summary). */
  report: string;
}

/**
 * Loads the policies of `dir` and runs every case in `dir/fixtures/*.yaml` (or `fixturesDir`).
 * Never throws for bad input: everything is reported in `failures`.
 */
export async function runFixtures(dir: string, opts: { fixturesDir?: string } = {}): Promise<FixtureRun> {
  const loaded = await loadPolicyDir(dir);
  if (!loaded.ok) {
    return finish([], loaded.errors.map(policyFailure), undefined);
  }
  const fdir = opts.fixturesDir ?? join(dir, 'fixtures');
  let names: string[];
  try {
    names = (await readdir(fdir)).filter((n) => !n.startsWith('.') && /\.ya?ml$/.test(n)).sort();
  } catch (err) {
    return finish(
      [],
      [{ file: fdir, message: `cannot read fixtures: ${(err as Error).message}` }],
      loaded.set,
    );
  }
  const failures: FixtureFailure[] = [];
  const results: FixtureCaseResult[] = [];
  for (const name of names) {
    const parsed = parseFixtureText(await readFile(join(fdir, name), 'utf8'), `fixtures/${name}`);
    if (!parsed.ok) {
      failures.push(...parsed.errors.map(policyFailure));
      continue;
    }
    for (const c of parsed.cases) results.push(runCase(loaded.set, c, `fixtures/${name}`));
  }
  if (names.length === 0) failures.push({ file: fdir, message: 'no fixture files (*.yaml)' });
  return finish(results, failures, loaded.set);
}

/** Parses a fixture file's text. */
export function parseFixtureText(
  text: string,
  file: string,
): { ok: true; cases: FixtureCase[] } | { ok: false; errors: PolicyError[] } {
  const lineCounter = new LineCounter();
  const doc = parseDocument(text, { lineCounter, prettyErrors: false });
  if (doc.errors.length) {
    return {
      ok: false,
      errors: doc.errors.map((e) => ({
        file,
        path: '',
        message: `YAML syntax error: ${e.message.split('\n')[0]}`,
        ...lineCounter.linePos(e.pos[0]),
      })),
    };
  }
  const r = FixtureFileSchema.safeParse(doc.toJS({ maxAliasCount: 50 }));
  if (!r.success) {
    return {
      ok: false,
      errors: r.error.issues.map((i) => ({ file, path: formatPath(i.path), message: i.message })),
    };
  }
  return { ok: true, cases: r.data.cases };
}

/** Runs one case against a set. */
export function runCase(set: PolicySet, c: FixtureCase, file = '<inline>'): FixtureCaseResult {
  const history: IssuedCall[] = [];
  const taskAgeSec = c.task_age === undefined ? undefined : parseDuration(c.task_age);
  for (const [i, step] of c.history.entries()) {
    let template = step.template;
    if (template === undefined) {
      const d = set.decide({
        agent: c.agent,
        user: c.user,
        audience: step.audience ?? c.audience,
        tool: step.tool,
        action: step.action,
        resource: step.resource,
        history,
        taskAgeSec,
        // A step that happened was bound and, if it had to be, approved.
        argsSha256: argsSha256(step.arguments ?? {}),
        arguments: step.arguments ?? {},
      });
      if (!d.allow) {
        return {
          file,
          name: c.name,
          passed: false,
          expected: c.expect,
          actual: 'invalid-history',
          template: d.template,
          message: `history[${i}] (${step.tool} on ${step.resource}) would be denied: ${d.code}: ${d.reason}`,
        };
      }
      template = d.template;
    }
    history.push({
      taskId: 'fixture',
      jti: `fixture-${i}`,
      tool: step.tool,
      resource: step.resource,
      action: step.action,
      template,
      issuedAt: i,
      expiresAt: i + 60,
    });
  }
  const d: Decision = set.decide({
    agent: c.agent,
    user: c.user,
    audience: c.audience,
    tool: c.tool,
    action: c.action,
    resource: c.resource,
    history,
    taskAgeSec,
    argsSha256: c.args_sha256 ?? (c.arguments ? argsSha256(c.arguments) : undefined),
    arguments: c.arguments,
  });
  const actual = d.allow ? (d.approval && !c.approved ? 'approval_required' : 'allow') : d.code;
  // An approval is asked by the rules that need it: those templates name the case.
  const template = d.allow && d.approval && !c.approved ? d.approval.template : d.template;
  const problems: string[] = [];
  if (actual !== c.expect) problems.push(`expected ${c.expect}, got ${actual}`);
  if (c.template !== undefined && template !== c.template) {
    problems.push(`expected template ${c.template}, got ${template ?? 'none'}`);
  }
  return {
    file,
    name: c.name,
    passed: problems.length === 0,
    expected: c.expect,
    actual,
    template,
    message: problems.length
      ? `${problems.join('; ')}${d.allow ? '' : ` (${d.reason})`}`
      : d.allow
        ? ''
        : d.reason,
  };
}

function policyFailure(e: PolicyError): FixtureFailure {
  const pos = e.line !== undefined ? `line ${e.line}, col ${e.col ?? 1}: ` : '';
  return { file: e.file, message: `${pos}${e.path ? `${e.path}: ` : ''}${e.message}` };
}

function finish(
  results: FixtureCaseResult[],
  failures: FixtureFailure[],
  set: PolicySet | undefined,
): FixtureRun {
  for (const r of results) {
    if (!r.passed) failures.push({ file: r.file, name: r.name, message: `${r.name}: ${r.message}` });
  }
  const cov = new Map<string, { template: string; allow: number; deny: number }>();
  for (const t of set?.templates ?? []) cov.set(t.id, { template: t.id, allow: 0, deny: 0 });
  for (const r of results) {
    for (const id of r.template !== undefined ? templateIds(r.template) : []) {
      const entry = cov.get(id);
      if (entry) entry[r.actual === 'allow' ? 'allow' : 'deny']++;
    }
  }
  const passed = results.filter((r) => r.passed).length;
  const lines = results.map(
    (r) =>
      `${r.passed ? 'ok  ' : 'FAIL'} ${r.file} ${r.name}: ${r.actual}${r.template ? ` (${r.template})` : ''}${r.passed ? '' : ` — ${r.message}`}`,
  );
  for (const f of failures) if (!f.name) lines.push(`FAIL ${f.file}: ${f.message}`);
  for (const c of cov.values()) {
    if (c.allow === 0 || c.deny === 0) {
      lines.push(`note: template ${c.template} has ${c.allow} allow and ${c.deny} deny case(s)`);
    }
  }
  lines.push(
    `${passed} passed, ${results.length - passed} failed${failures.length > results.length - passed ? `, ${failures.length - (results.length - passed)} error(s)` : ''}`,
  );
  return {
    ok: failures.length === 0,
    passed,
    failures,
    cases: results,
    coverage: [...cov.values()],
    report: lines.join('\n'),
  };
}
