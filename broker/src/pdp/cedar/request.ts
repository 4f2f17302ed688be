// PdpInput → a Cedar authorization request (docs/policy-engines.md, "Cedar"):
//   principal  Taskpass::Agent::"<SPIFFE ID>"        attrs { trust_domain, path }
//   action     Taskpass::Action::"<tool>"            in Taskpass::Action::"<read|write|admin>"
//   resource   Taskpass::Resource::"<resource>"      attrs from entities.json, when it lists it
//   context    { action_class, audience, time (datetime), weekday, templates, user?, task?,
//                calls_of_tool?, arguments?, approval? }
// The user is an entity, Taskpass::User::"<iss>#<sub>" with attrs { iss, sub, claims } and one
// parent Taskpass::Group::"<g>" per entry of its `groups` claim, referenced by context.user.
import { ACTIONS } from '@taskpass/contract';
import { z } from 'zod';
import type { PdpInput } from '../types.ts';
import type { CedarWasm } from './wasm.ts';

type Call = Parameters<CedarWasm['statefulIsAuthorized']>[0];
type EntityJson = Call['entities'][number];
type CedarValue = Call['context'][string];

const NS = 'Taskpass';
const MAX_DEPTH = 32;
/** Keys Cedar's JSON format reads as entity references or extension values. */
const RESERVED_KEYS = new Set(['__entity', '__extn', '__expr']);

const user = z.object({
  iss: z.string().min(1),
  sub: z.string().min(1),
  claims: z.record(z.string(), z.unknown()),
});
const inputSchema = z.object({
  subject: z.object({
    id: z.string().regex(/^spiffe:\/\/[^/]+(\/.*)?$/, 'not a SPIFFE ID'),
    properties: z.object({ user: user.optional() }),
  }),
  action: z.object({
    name: z.string().min(1),
    properties: z.object({ action_class: z.enum(ACTIONS) }),
  }),
  resource: z.object({ id: z.string(), properties: z.object({ audience: z.string().min(1) }) }),
  context: z.object({
    task: z
      .object({ id: z.string(), purpose: z.string().optional(), age_sec: z.number().optional() })
      .optional(),
    calls_of_tool: z.number().int().nonnegative().optional(),
    templates: z.array(z.string()),
    arguments: z.record(z.string(), z.unknown()).optional(),
    approval: z
      .object({ id: z.string(), approver: z.object({ iss: z.string(), sub: z.string() }) })
      .optional(),
    time: z.iso.datetime({ offset: true }),
  }),
});

const uid = (type: string, id: string) => ({ type: `${NS}::${type}`, id });

/**
 * A JSON value as a Cedar value: integers are Longs, other numbers `decimal`s (at most 4 decimal
 * places, else an error), arrays sets, objects records; `null` members are dropped. Throws on what
 * Cedar cannot hold, and on Cedar's reserved keys (an argument must not become an entity reference).
 */
export function toCedarValue(value: unknown, path = 'value', depth = 0): CedarValue {
  if (depth > MAX_DEPTH) throw new Error(`${path}: nested deeper than ${MAX_DEPTH}`);
  if (typeof value === 'string' || typeof value === 'boolean') return value;
  if (typeof value === 'number') {
    if (Number.isSafeInteger(value)) return value;
    if (Number.isFinite(value) && Number(value.toFixed(4)) === value && Math.abs(value) < 9e14) {
      return { __extn: { fn: 'decimal', arg: value.toFixed(4) } };
    }
    throw new Error(`${path}: ${value} is neither an integer nor a decimal with at most 4 places`);
  }
  if (Array.isArray(value)) return value.map((v, i) => toCedarValue(v, `${path}[${i}]`, depth + 1));
  if (value !== null && typeof value === 'object') {
    const out: Record<string, CedarValue> = {};
    for (const [k, v] of Object.entries(value)) {
      if (RESERVED_KEYS.has(k)) throw new Error(`${path}: the key "${k}" is reserved by Cedar`);
      if (v !== null && v !== undefined) out[k] = toCedarValue(v, `${path}.${k}`, depth + 1);
    }
    return out;
  }
  throw new Error(`${path}: ${value === null ? 'null' : typeof value} has no Cedar value`);
}

/** ISO weekday (1 = Monday … 7 = Sunday) of an instant, in UTC. */
const isoWeekday = (d: Date) => ((d.getUTCDay() + 6) % 7) + 1;

/**
 * The Cedar request for one call, with the request's entities added to the static ones. Throws
 * (with a message that names the bad field) on input Cedar cannot represent.
 */
export function toCedarRequest(
  raw: PdpInput,
  staticEntities: readonly EntityJson[],
): Omit<Call, 'preparsedPolicySetId'> {
  const parsed = inputSchema.safeParse(raw);
  if (!parsed.success) {
    const issue = parsed.error.issues[0];
    throw new Error(`invalid input at ${issue?.path.join('.') || '(root)'}: ${issue?.message}`);
  }
  const { subject, action, resource, context: c } = parsed.data;
  const [, trustDomain = '', path = ''] = /^spiffe:\/\/([^/]+)(.*)$/.exec(subject.id) ?? [];
  const agent = uid('Agent', subject.id);
  const tool = uid('Action', action.name);
  const time = new Date(c.time);
  const entities: EntityJson[] = [
    ...staticEntities,
    { uid: agent, attrs: { trust_domain: trustDomain, path }, parents: [] },
    { uid: tool, attrs: {}, parents: [uid('Action', action.properties.action_class)] },
  ];
  const context: Record<string, CedarValue> = {
    action_class: action.properties.action_class,
    audience: resource.properties.audience,
    time: { __extn: { fn: 'datetime', arg: time.toISOString() } },
    weekday: isoWeekday(time),
    templates: [...c.templates],
  };
  const u = subject.properties.user;
  if (u) {
    const userUid = uid('User', `${u.iss}#${u.sub}`);
    const groups = u.claims.groups;
    const parents = (Array.isArray(groups) ? groups : typeof groups === 'string' ? [groups] : [])
      .filter((g): g is string => typeof g === 'string')
      .map((g) => uid('Group', g));
    const claims = toCedarValue(u.claims, 'user.claims');
    entities.push({ uid: userUid, attrs: { iss: u.iss, sub: u.sub, claims }, parents });
    context.user = { __entity: userUid };
  }
  if (c.task) context.task = toCedarValue(c.task, 'task');
  if (c.calls_of_tool !== undefined) context.calls_of_tool = c.calls_of_tool;
  if (c.arguments) context.arguments = toCedarValue(c.arguments, 'arguments');
  if (c.approval) context.approval = toCedarValue(c.approval, 'approval');
  return { principal: agent, action: tool, resource: uid('Resource', resource.id), context, entities };
}
